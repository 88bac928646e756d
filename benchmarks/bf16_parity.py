"""Does bf16 training change what the networks learn? Accuracy and layer-matched CKA of
float32 and bf16 + channels-last runs of the same seeds, against the seed-to-seed spread.

    python benchmarks/bf16_parity.py                      # the demo's schedule on 10,000
                                                          # images, 3 seeds, ≈ 20 min on 2 cores
    python benchmarks/bf16_parity.py --seeds 3 --subset 20000 --methods bp auglocal

Trains, per method and seed, one network in float32 and one with ``--amp bf16
--channels-last`` (same seed, so the same initialisation and batch order), ResNet-20 width 16
on Fashion-MNIST as ``make demo`` does, and reuses the checkpoints ``--out`` already holds.
Then prints, per method:

* test accuracy (float32 evaluation of all 10,000 test images) of both precisions per seed,
  the Welch 95 % interval of mean bf16 − mean float32 and the paired (same seed) interval;
* per layer, linear CKA (flatten, ``--n`` test inputs) of each seed's float32 network with
  its bf16 twin (the precision's noise) against the float32 networks of two different seeds
  (the seed noise, the BP–BP ceiling of the reproduction): the largest bf16 distance 1 − CKA
  over seeds beside the smallest seed distance.
"""

from __future__ import annotations

import argparse
import itertools
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from analyses.activations import activations_of
from analyses.verdicts import welch
from repsim.measures.matrix import similarity_matrix
from repsim.stats.intervals import t_interval
from training import checkpoint_meta
from training.train import TrainConfig, train

PRECISIONS = {"fp32": {"amp": "none"}, "bf16": {"amp": "bf16", "channels_last": True}}


def trained(method: str, seed: int, precision: str, args: argparse.Namespace) -> str:
    """The checkpoint of one run, trained unless --out holds it."""
    path = Path(args.out) / f"{method}_{precision}_s{seed}.pt"
    train(TrainConfig(method=method, arch="resnet20", width=16, subset=args.subset,
                      epochs=args.epochs, batch_size=128, lr=0.1, seed=seed,
                      eval_images=2000, threads=args.threads, out=str(path), resume=True,
                      progress=False, **PRECISIONS[precision]))
    return str(path)


def accuracy_lines(method: str, files: dict) -> list[str]:
    acc = {p: np.array([checkpoint_meta(f)["metrics"]["test_acc"] for f in files[p]])
           for p in PRECISIONS}
    unpaired = welch(acc["bf16"], acc["fp32"])
    mean, low, high = t_interval(acc["bf16"] - acc["fp32"], 0.95)
    return [f"{method}: test accuracy fp32 {', '.join(f'{a:.4f}' for a in acc['fp32'])}; "
            f"bf16 {', '.join(f'{a:.4f}' for a in acc['bf16'])}",
            f"  bf16 − fp32: {unpaired['difference'] * 100:+.2f} points, Welch 95 % "
            f"[{unpaired['low'] * 100:+.2f}, {unpaired['high'] * 100:+.2f}], paired 95 % "
            f"[{low * 100:+.2f}, {high * 100:+.2f}]"]


def cka_lines(method: str, files: dict, args: argparse.Namespace) -> list[str]:
    with ExitStack() as opened:
        acts = {p: [opened.enter_context(activations_of(f, n=args.n, reductions=("flatten",),
                                                        cache=Path(args.out) / "acts",
                                                        progress=False)) for f in group]
                for p, group in files.items()}

        def matched(a, b) -> np.ndarray:
            return similarity_matrix(a, b, "linear_cka", reduction="flatten").diagonal()

        twins = np.stack([matched(a, b) for a, b in zip(acts["fp32"], acts["bf16"])])
        seeds = np.stack([matched(a, b) for a, b in itertools.combinations(acts["fp32"], 2)])
        layers = acts["fp32"][0].layers
    lines = [f"{method}: layer-matched linear CKA (n = {args.n}, flatten)",
             "| layer | fp32 vs bf16, same seed (min) | fp32 vs fp32, other seeds (max) | "
             "bf16 distance / seed distance |", "|---|---|---|---|"]
    for i, layer in enumerate(layers):
        ratio = (1 - twins[:, i].min()) / (1 - seeds[:, i].max())
        lines.append(f"| {layer} | {twins[:, i].min():.4f} | {seeds[:, i].max():.4f} | "
                     f"{ratio:.2f} |")
    worst = ((1 - twins.min(0)) / (1 - seeds.max(0))).max()
    lines.append(f"largest ratio over layers: {worst:.2f} (below 1: bf16 moves a layer less "
                 "than another seed does)")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["bp", "auglocal"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=500, help="test inputs of the CKA")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bf16-parity-out")
    args = p.parse_args(argv)
    Path(args.out).mkdir(exist_ok=True)
    report = []
    for method in args.methods:
        files = {prec: [trained(method, s, prec, args) for s in range(args.seeds)]
                 for prec in PRECISIONS}
        report += [*accuracy_lines(method, files), "", *cka_lines(method, files, args), ""]
    print(f"ResNet-20 width 16, Fashion-MNIST, {args.subset} images, {args.epochs} epochs, "
          f"{args.seeds} seeds, {args.threads} threads\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
