"""Linear probe of a layer whose train activations are larger than the memory it may use.

    python -m benchmarks.probe_large [--budget-mib 12] [--n-train 60000] [--reduction pool2]
                                     [--folder DIR] [--keep]

Writes the train and test activation files of one layer (``layers.s3b1`` of a randomly
initialised ResNet-8 of width 16, ``pool2``: 64 channels × 2 × 2 = 256 features) on
Fashion-MNIST, uncompressed, then probes that layer, each run in a fresh process:

* streamed: ``probe_layers(train, test, max_memory=budget)``, which reads row blocks as
  large as ``repsim.probe.probe_memory`` allows, again for every evaluation of the objective;
* in memory: ``probe_layers(train, test)``, which reads the layer whole (the baseline),

and prints the file sizes, each run's seconds, RSS before the probe (interpreter, PyTorch,
h5py, the labels, and the code a tiny warm-up probe loads), peak RSS and the growth between
them, with the chosen C, the accuracies
and the largest difference between the two fits' test accuracies. Timings are of this
process only (1 thread, as the probe's default).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.rss import MIB, child, peak_rss, scratch_folder

LAYER = "layers.s3b1"


def write_files(folder: Path, n_train: int, reduction: str) -> dict[str, str]:
    import torch

    from repsim.extract import extract
    from training.data import balanced_subset, eval_batches, load_split, take
    from training.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", width=16, in_channels=1, num_classes=10).eval()
    paths = {}
    for split, n in (("train", n_train), ("test", None)):
        data = load_split("fashion-mnist", split)
        if n is not None and n < len(data):
            data = take(data, balanced_subset(data.labels, n, seed=0))
        paths[split] = str(folder / f"{split}.h5")
        extract(model, eval_batches(data, 500), [LAYER], paths[split], reductions=(reduction,),
                compression=None, progress=False,
                meta={"dataset": "fashion-mnist", "split": split, "benchmark": "probe_large"})
    return paths


def warm_up() -> None:
    """A tiny streamed and in-memory probe, so the libraries' lazily loaded code (LAPACK's
    eigh, L-BFGS, scikit-learn's folds) is resident before the measured run starts."""
    import numpy as np

    from repsim.probe import ActivationSet, probe_layers

    rng = np.random.default_rng(0)
    sets = [ActivationSet({LAYER: rng.standard_normal((200, 8), dtype=np.float32)},
                          np.arange(200) % 10, {"split": split}) for split in ("train", "test")]
    for budget in (None, 40_000):  # 40 kB: blocks of 46 of the 200 rows
        probe_layers(*sets, max_memory=budget, Cs=(1.0,))


def compute(train_path: str, test_path: str, mode: str, reduction: str, budget: int) -> dict:
    """One probe in this process; the numbers as a dict (printed as JSON by --compute)."""
    import torch

    from repsim.probe import probe_block_rows, probe_layers
    from repsim.store import ActivationFile

    torch.set_num_threads(1)
    warm_up()
    with ActivationFile(train_path) as train, ActivationFile(test_path) as test:
        n, dim = train.shape(LAYER, reduction)
        before = peak_rss()
        start = time.perf_counter()
        table = probe_layers(train, test, reduction=reduction,
                             max_memory=budget if mode == "streamed" else None)
        seconds = time.perf_counter() - start
    row = table.rows[0]
    return {"mode": mode, "seconds": seconds, "rss_before": before, "peak_rss": peak_rss(),
            "block_rows": probe_block_rows(dim, n, 10, budget) if mode == "streamed" else n,
            "dim": dim, "C": row.C, "train_acc": row.train_acc, "test_acc": row.test_acc}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-mib", type=float, default=12.0,
                   help="memory the streamed probe may use (12 MiB)")
    p.add_argument("--n-train", type=int, default=60000, help="train rows (60000: all)")
    p.add_argument("--reduction", default="pool2", help="reduction of the layer (pool2)")
    p.add_argument("--folder", help="where to write the files (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--compute", nargs=3, metavar=("MODE", "TRAIN", "TEST"),
                   help=argparse.SUPPRESS)
    p.add_argument("--budget-bytes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--write", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write:
        print(json.dumps(write_files(Path(args.write), args.n_train, args.reduction)))
        return
    if args.compute:
        mode, train, test = args.compute
        print(json.dumps(compute(train, test, mode, args.reduction, args.budget_bytes)))
        return

    budget = int(args.budget_mib * MIB)
    with scratch_folder(args.folder, args.keep, "probe-large-", ("train.h5", "test.h5")) as folder:
        start = time.perf_counter()
        paths = child("benchmarks.probe_large", "--write", str(folder), "--n-train",
                      str(args.n_train), "--reduction", args.reduction)
        print(f"wrote the activation files in {time.perf_counter() - start:.0f} s")
        sizes = {split: os.path.getsize(path) for split, path in paths.items()}
        runs = [child("benchmarks.probe_large", "--compute", mode, paths["train"],
                      paths["test"], "--reduction", args.reduction, "--budget-bytes", str(budget))
                for mode in ("streamed", "in-memory")]
    print(f"files: train {sizes['train'] / MIB:,.1f} MiB ({sizes['train'] / budget:.1f}× the "
          f"{budget / MIB:g} MiB budget), test {sizes['test'] / MIB:,.1f} MiB; "
          f"{runs[0]['dim']} features")
    print("| run | block rows | seconds | RSS before MiB | peak RSS MiB | growth MiB | C "
          "| train acc | test acc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['mode']} | {r['block_rows']:,} | {r['seconds']:.1f} | "
              f"{r['rss_before'] / MIB:.0f} | {r['peak_rss'] / MIB:.0f} | "
              f"{(r['peak_rss'] - r['rss_before']) / MIB:.0f} | {r['C']:g} | "
              f"{r['train_acc']:.4f} | {r['test_acc']:.4f} |")
    streamed, loaded = runs
    growth = (streamed["peak_rss"] - streamed["rss_before"]) / budget
    print(f"growth / budget: streamed {growth:.2f}; seconds streamed / in memory: "
          f"{streamed['seconds'] / loaded['seconds']:.2f}; "
          f"|test accuracy difference| {abs(streamed['test_acc'] - loaded['test_acc']):.4f}")


if __name__ == "__main__":
    main()
