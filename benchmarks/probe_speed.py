"""Seconds and test accuracy of our linear probes against scikit-learn's LogisticRegressionCV.

    python benchmarks/probe_speed.py [--ckpt bp.pt] [--n-train 10000] [--n-test 2000]

Global-average-pooled features of every layer of a ResNet (the checkpoint's, or a randomly
initialised resnet32 on Fashion-MNIST when no --ckpt is given) on a class-balanced subset of
the train split and of the test split. Both methods probe the same features in the same run:

* ours: ``repsim.probe.probe_layers`` with its defaults (standardise on train, C from 6 values
  by stratified 3-fold CV on train, refit, score on test);
* baseline: ``StandardScaler`` fitted on train, then ``LogisticRegressionCV`` with its default
  settings (10 Cs, stratified 5-fold CV, lbfgs, max_iter=100, accuracy), run with one BLAS
  thread: its small GEMMs got much slower with more threads on our 2 busy cores.

Goal: all layers in under 30 s at an accuracy equal to or better than the baseline's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import training
from repsim.probe import ActivationSet, probe_layers
from training import data as datasets
from training.models import build_model


@contextlib.contextmanager
def gap_hooks(model: torch.nn.Module, names: list[str]):
    """Collect the global average pool (B, C) of each named module's (B, C, H, W) output."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def hook(name):
        def record(module, inputs, out):
            out = out[0] if isinstance(out, tuple) else out
            store[name].append(out.mean(dim=(2, 3)))  # reduce now: a later in-place op can't
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def gap_features(model, names, images: datasets.ImageSet, batch_size: int) -> dict:
    """{layer: (N, C) float32} for every image of ``images``, in order."""
    model.eval()
    with gap_hooks(model, names) as store, torch.inference_mode():
        for x, _, _ in tqdm(datasets.eval_batches(images, batch_size), leave=False,
                            desc="features", total=-(-len(images) // batch_size)):
            model(x)
    return {name: torch.cat(store[name]).numpy() for name in names}


def load_model(ckpt: str | None, seed: int):
    """(model, layer names, dataset name, description)."""
    if ckpt:
        model, meta = training.load_checkpoint(ckpt)
        return model, meta["layers"], meta["dataset"]["name"], f"checkpoint {ckpt}"
    torch.manual_seed(seed)
    model = build_model("resnet32", width=16, in_channels=1, num_classes=10)
    return model, model.layer_names, "fashion-mnist", "randomly initialised resnet32"


def activation_set(model, names, dataset: str, split: str, n: int, seed: int,
                   batch_size: int) -> ActivationSet:
    full = datasets.load_split(dataset, split)
    images = datasets.take(full, datasets.balanced_subset(full.labels, n, seed))
    return ActivationSet(gap_features(model, names, images, batch_size), images.labels.numpy(),
                         {"dataset": dataset, "split": split}, images.indices.numpy())


def baseline(train: ActivationSet, test: ActivationSet, name: str) -> tuple[float, float, int]:
    """(test accuracy, chosen C, fits that hit max_iter) of LogisticRegressionCV."""
    scaler = StandardScaler().fit(train.read(name))
    # l1_ratios, scoring and use_legacy_attributes spelled out as their current defaults
    # only to silence scikit-learn 1.9's FutureWarnings about them
    model = LogisticRegressionCV(l1_ratios=(0.0,), scoring=None, use_legacy_attributes=False)
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(scaler.transform(train.read(name)), train.labels)
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    accuracy = model.score(scaler.transform(test.read(name)), test.labels)
    return float(accuracy), float(np.ravel(model.C_)[0]), unconverged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint from training (default: random resnet32)")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=2_000)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the forward passes")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device of our probes' torch path")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, names, dataset, described = load_model(args.ckpt, args.seed)
    train, test = (activation_set(model, names, dataset, split, n, args.seed, args.batch_size)
                   for split, n in (("train", args.n_train), ("test", args.n_test)))

    start = time.perf_counter()
    ours = probe_layers(train, test, device=args.device)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = [baseline(train, test, name) for name in tqdm(names, leave=False, desc="baseline")]
    theirs_s = time.perf_counter() - start

    load = os.getloadavg()[0]
    print(f"{described}, {dataset}, gap features of {len(names)} layers, "
          f"{len(train.labels)} train / {len(test.labels)} test inputs; features extracted "
          f"with {args.threads} threads, both probes fitted with 1 thread; our device "
          f"{args.device}; load average {load:.1f} on {os.cpu_count()} CPUs\n")
    print("| layer | D | ours C | ours test acc | LRCV C | LRCV test acc | LRCV fits at "
          "max_iter |\n|---|---|---|---|---|---|---|")
    for row, (accuracy, c, unconverged) in zip(ours, theirs):
        print(f"| {row.layer} | {row.dim} | {row.C:g} | {row.test_acc:.4f} | {c:.3g} | "
              f"{accuracy:.4f} | {unconverged} |")
    difference = np.mean([row.test_acc - acc for row, (acc, _, _) in zip(ours, theirs)])
    print(f"\n| method | total s (wall) | mean test acc |\n|---|---|---|\n"
          f"| ours (probe_layers) | {ours_s:.1f} | "
          f"{np.mean([row.test_acc for row in ours]):.4f} |\n"
          f"| LogisticRegressionCV | {theirs_s:.1f} | "
          f"{np.mean([acc for acc, _, _ in theirs]):.4f} |\n")
    print(f"speed-up LRCV / ours: {theirs_s / ours_s:.1f}×; mean test accuracy ours − LRCV: "
          f"{100 * difference:+.2f} points (goal: under 30 s, difference ≥ 0)")


if __name__ == "__main__":
    main()
