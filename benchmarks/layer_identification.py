"""Layer identification (Kornblith et al. 2019, §6.1): does a measure pick, in a network trained
from another seed, the layer that corresponds to a given layer?

    python benchmarks/layer_identification.py   # ≈ 15 min on 2 cores (training ≈ 8), then
                                                # the checkpoints and activations are reused
    python benchmarks/layer_identification.py --networks 5 --n 2000 --reductions gap pool4

Trains --networks ResNet-20s (width 8; 10 layers: the stem and nine residual blocks) with
backprop on one class-balanced subset of Fashion-MNIST (--subset images, --epochs), seeds
0, 1, …, so that only the initialisation and the batch order differ, and reuses the checkpoints
--out already holds when their training settings match. Each network's --n test inputs (the
same for all) are extracted once, at every reduction of --reductions, into --out/acts.

For every registered measure (:data:`repsim.measures.MEASURES`) at its default parameters and
every reduction, each network's layers are prepared once (``Measure.prepare``); then, for every
ordered pair (i, j) of networks and every layer l of i, the case counts as identified when layer
l of j is the one most similar to it, alone: the largest value of row l of the map of i against
j for a similarity, the smallest for a distance (an asymmetric measure reads i as its a side;
NaN counts as not identified). Accuracy = identified cases / N(N−1)·L; chance is 1/L. A measure
that refuses a reduction (e.g. the CCA family on layers about as wide as the inputs) shows
"refused". No measure is tuned to this table.
"""

from __future__ import annotations

import argparse
import itertools
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from analyses.activations import activations_of
from repsim.measures import MEASURES, Comparison, Measure, get_measure
from repsim.store import ActivationFile
from training import checkpoint_meta
from training.train import TrainConfig, train

# the training settings that make two checkpoints interchangeable here
TRAINED_BY = ("method", "arch", "width", "dataset", "subset", "subset_seed", "epochs",
              "batch_size", "lr", "seed")


@dataclass(frozen=True)
class Score:
    """One measure at one reduction: identified cases of all, or why it refused."""

    identified: int = 0
    cases: int = 0
    refused: str | None = None

    def cell(self) -> str:
        if self.refused is not None:
            return "refused"
        return f"{self.identified / self.cases:.3f}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", type=int, default=5, help="networks, seeds 0..N-1 (5)")
    p.add_argument("--arch", default="resnet20", help="architecture (resnet20)")
    p.add_argument("--width", type=int, default=8, help="base channels (8)")
    p.add_argument("--subset", type=int, default=10000, help="training images (10000)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (3)")
    p.add_argument("--n", type=int, default=2000, help="test inputs compared (2000)")
    p.add_argument("--reductions", nargs="+", default=["gap", "pool2"],
                   help="reductions of every layer, one column each (gap pool2; pool4 and "
                        "flatten cost minutes per measure at n = 2,000)")
    p.add_argument("--measures", nargs="+", default=None,
                   help="registered measure names (default: all)")
    p.add_argument("--out", default="layer-identification-out",
                   help="checkpoints and the activation cache (%(default)s)")
    p.add_argument("--data-root", default=None, help="dataset folder")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    args = p.parse_args(argv)
    if args.networks < 2:
        p.error(f"--networks must be at least 2 (pairs of networks), got {args.networks}")
    return args


def checkpoints(args: argparse.Namespace) -> list[Path]:
    """The --networks trained networks in --out: reused when present, finished when an earlier
    run stopped part way, trained otherwise."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(args.networks):
        config = TrainConfig(arch=args.arch, width=args.width, dataset="fashion-mnist",
                             data_root=args.data_root, subset=args.subset, epochs=args.epochs,
                             seed=seed, out=str(out / f"seed{seed}.pt"), threads=args.threads,
                             progress=False)
        path = Path(config.out)
        epoch = trained_epochs(path, config)
        if epoch == config.epochs:
            print(f"reusing {path}")
        else:
            print(f"training {path} from epoch {epoch} ...", flush=True)
            train(replace(config, resume=epoch > 0))
        paths.append(path)
    return paths


def trained_epochs(path: Path, config: TrainConfig) -> int:
    """Epochs ``path`` holds of the training ``config`` asks for (0: no such file)."""
    if not path.exists():
        return 0
    meta = checkpoint_meta(path)
    found = {key: meta["config"].get(key) for key in TRAINED_BY}
    wanted = {key: getattr(config, key) for key in TRAINED_BY}
    if found != wanted:
        raise SystemExit(f"{path} was trained with {found}, but this run asks for {wanted}: "
                         "delete it or choose another --out")
    return meta["epoch"]


def identified(values: np.ndarray, direction: str) -> np.ndarray:
    """(L,) bool: is layer l of b, alone, the most alike to layer l of a in the (L, L) map?"""
    alike = np.where(np.isnan(values), -np.inf, values if direction == "similarity" else -values)
    best = alike.max(axis=1)
    return (np.diagonal(alike) == best) & ((alike == best[:, None]).sum(axis=1) == 1) \
        & np.isfinite(np.diagonal(alike))


def score(measure: Measure, files: list[ActivationFile], reduction: str) -> Score:
    """Prepare each network's layers once, then count the identified layers of every ordered
    pair of networks."""
    layers = files[0].layers
    widths = tuple(files[0].shape(layer, reduction)[1] for layer in layers)
    comparison = Comparison(n=files[0].n, widths_a=widths, widths_b=widths,
                            labels=np.asarray(files[0].labels), device=torch.device("cpu"))
    try:
        measure.check(comparison)
        sides = [measure.prepare(
            (torch.from_numpy(f.read(layer, reduction).astype(np.float64)) for layer in layers),
            [f"layer {layer!r} of seed {k}" for layer in layers], comparison)
            for k, f in enumerate(files)]
        hits = sum(int(identified(np.asarray(measure.compare(sides[i], sides[j], comparison),
                                              dtype=np.float64), measure.direction).sum())
                   for i, j in itertools.permutations(range(len(files)), 2))
    except ValueError as err:  # the measure refuses these layers (e.g. CCA: too few inputs)
        return Score(refused=" ".join(str(err).split()))
    return Score(hits, len(files) * (len(files) - 1) * len(layers))


def table(scores: dict[str, dict[str, Score]], reductions: list[str]) -> str:
    lines = ["| measure | direction | " + " | ".join(reductions) + " |",
             "|---|---|" + "---:|" * len(reductions)]
    for name, row in scores.items():
        cls = MEASURES[name]
        lines.append(f"| {cls.label} (`{name}`) | {cls.direction} | "
                     + " | ".join(row[r].cell() for r in reductions) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.measures or sorted(MEASURES)
    measures = {name: get_measure(name) for name in names}  # unknown names fail before training
    start = time.perf_counter()
    paths = checkpoints(args)
    trained = time.perf_counter()
    with ExitStack() as stack:
        files = [stack.enter_context(activations_of(
            path, "test", n=args.n, reductions=args.reductions, cache=Path(args.out) / "acts",
            data_root=args.data_root, progress=False)) for path in paths]
        extracted = time.perf_counter()
        scores = {}
        for name, measure in measures.items():
            began = time.perf_counter()
            scores[name] = {r: score(measure, files, r) for r in args.reductions}
            print(f"{name}: {time.perf_counter() - began:.1f} s", flush=True)
        layers = len(files[0].layers)
    accuracy = [checkpoint_meta(p)["metrics"]["test_acc"] for p in paths]
    print(f"\n{args.networks} × {args.arch} (width {args.width}), Fashion-MNIST, {args.subset} "
          f"training images, {args.epochs} epochs; test accuracy "
          f"{min(accuracy):.3f}–{max(accuracy):.3f}; n = {args.n} test inputs; {layers} "
          f"layers; {args.networks * (args.networks - 1) * layers} cases per cell; chance "
          f"{1 / layers:.3f}.")
    print(f"training {trained - start:.0f} s, extraction {extracted - trained:.0f} s, "
          f"measures {time.perf_counter() - extracted:.0f} s, {args.threads} threads\n")
    print(table(scores, args.reductions))
    for name, row in scores.items():
        for reduction, s in row.items():
            if s.refused is not None:
                print(f"\n{name} at {reduction} refused: {s.refused}")


if __name__ == "__main__":
    main()
