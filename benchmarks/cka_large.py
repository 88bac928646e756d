"""Minibatch CKA over two activation files larger than the memory it may use.

    python -m benchmarks.cka_large [--budget-mib 64] [--ratio 5] [--folder DIR] [--keep]

Writes two HDF5 activation files with ``repsim.extract`` (two ResNet-8s of width 16 with
different seeds, 4 layers, ``flatten``, uncompressed, random 3×32×32 inputs) of at least
``--ratio`` × ``--budget-mib`` each, then, each in a fresh process, computes their 4×4
minibatch CKA matrix

* streamed: ``cka_matrix(a, b, max_memory=budget)``, which picks the batch size from the
  memory rule (``repsim.cka.minibatch_memory``) and reads row blocks from both files;
* the same with ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment: glibc then returns
  every freed block of 1 MiB or more at once, where by default it raises that threshold (up
  to 32 MiB) and serves later blocks from a heap that does not shrink;
* baseline: both files read into memory first, then the same minibatch CKA with the same
  batch size,

and prints the file sizes, each run's peak RSS (``resource.getrusage``), its RSS before the
CKA (interpreter, PyTorch, h5py: not part of the budget), the growth between the two, the
ratio of the peaks, and the largest difference between the two matrices. The files are
written by a child process too (see :mod:`benchmarks.rss`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from benchmarks.rss import MIB, child, peak_rss, scratch_folder


def write_files(folder: Path, rows: int, batch: int = 100) -> tuple[Path, Path]:
    import torch

    from repsim.extract import extract
    from training.models import build_model

    paths = []
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = build_model("resnet8", width=16, in_channels=3, num_classes=10).eval()

        def batches():
            gen = torch.Generator().manual_seed(123)  # the same inputs for both models
            for start in range(0, rows, batch):
                b = min(batch, rows - start)
                yield (torch.randn(b, 3, 32, 32, generator=gen), torch.zeros(b, dtype=torch.long),
                       torch.arange(start, start + b))

        path = folder / f"{name}.h5"
        extract(model, batches(), model.layer_names, path, reductions=("flatten",),
                compression=None, meta={"benchmark": "cka_large", "seed": seed},
                progress=False)
        paths.append(path)
    return paths[0], paths[1]


def compute(a_path: str, b_path: str, mode: str, budget: int, batch_size: int | None) -> dict:
    """One CKA run in this process; the numbers as a dict (printed as JSON by --compute)."""
    import numpy as np
    import torch

    from repsim.cka import cka_matrix
    from repsim.store import ActivationFile

    torch.set_num_threads(2)
    with ActivationFile(a_path) as a, ActivationFile(b_path) as b:
        before = peak_rss()
        start = time.perf_counter()
        if mode.startswith("streamed"):
            result = cka_matrix(a, b, max_memory=budget)
        else:  # everything in memory first
            xa = {m: a.read(m, "flatten") for m in a.layers}
            xb = {m: b.read(m, "flatten") for m in b.layers}
            result = cka_matrix(xa, xb, batch_size=batch_size)
        seconds = time.perf_counter() - start
    return {"mode": mode, "batch_size": result.batch_size, "seconds": seconds,
            "rss_before": before, "peak_rss": peak_rss(),
            "matrix": np.asarray(result.matrix).tolist()}


def run_child(a: Path, b: Path, mode: str, budget: int, batch_size: int | None,
              env: dict[str, str] | None = None) -> dict:
    extra = [] if batch_size is None else ["--batch-size", str(batch_size)]
    return child("benchmarks.cka_large", "--compute", mode, str(a), str(b), "--budget-bytes",
                 str(budget), *extra, env=env)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-mib", type=float, default=64.0,
                   help="memory the streamed CKA may use (64 MiB)")
    p.add_argument("--ratio", type=float, default=5.0,
                   help="each file at least this many times the budget (5)")
    p.add_argument("--folder", help="where to write the files (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--compute", nargs=3, metavar=("MODE", "A", "B"), help=argparse.SUPPRESS)
    p.add_argument("--budget-bytes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--write", nargs=2, metavar=("FOLDER", "ROWS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write:
        start = time.perf_counter()
        a, b = write_files(Path(args.write[0]), int(args.write[1]))
        print(json.dumps({"a": str(a), "b": str(b), "seconds": time.perf_counter() - start,
                          "peak_rss": peak_rss()}))
        return
    if args.compute:
        mode, a, b = args.compute
        print(json.dumps(compute(a, b, mode, args.budget_bytes, args.batch_size)))
        return

    budget = int(args.budget_mib * MIB)
    row_bytes = 4 * (16 * 32 * 32 * 2 + 32 * 16 * 16 + 64 * 8 * 8)  # resnet8 width 16, flatten
    rows = math.ceil(args.ratio * budget / row_bytes / 100) * 100 + 100
    with scratch_folder(args.folder, args.keep, "cka-large-", ("a.h5", "b.h5")) as folder:
        written = child("benchmarks.cka_large", "--write", str(folder), str(rows))
        a, b = Path(written["a"]), Path(written["b"])
        print(f"wrote {rows:,} rows × {row_bytes // 4:,} features per file in "
              f"{written['seconds']:.0f} s (writer's peak RSS "
              f"{written['peak_rss'] / MIB:.0f} MiB)")
        sizes = [os.path.getsize(a), os.path.getsize(b)]
        streamed = run_child(a, b, "streamed", budget, None)
        trimmed = run_child(a, b, "streamed, MALLOC_MMAP_THRESHOLD_=1048576", budget, None,
                            env={"MALLOC_MMAP_THRESHOLD_": str(MIB)})
        loaded = run_child(a, b, "in-memory", budget, streamed["batch_size"])
    diff = max(abs(x - y) for run in (streamed, trimmed)
               for ra, rb in zip(run["matrix"], loaded["matrix"]) for x, y in zip(ra, rb))
    print(f"files: a {sizes[0] / MIB:,.0f} MiB, b {sizes[1] / MIB:,.0f} MiB "
          f"({min(sizes) / budget:.1f}× the {budget / MIB:.0f} MiB budget each)")
    print("| run | batch | seconds | RSS before CKA MiB | peak RSS MiB | growth MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (streamed, trimmed, loaded):
        print(f"| {r['mode']} | {r['batch_size']} | {r['seconds']:.1f} | "
              f"{r['rss_before'] / MIB:.0f} | {r['peak_rss'] / MIB:.0f} | "
              f"{(r['peak_rss'] - r['rss_before']) / MIB:.0f} |")
    growth = [(r["peak_rss"] - r["rss_before"]) / budget for r in (streamed, trimmed)]
    print(f"growth / budget: streamed {growth[0]:.2f}, with the threshold {growth[1]:.2f}; "
          f"streamed peak / in-memory peak: {streamed['peak_rss'] / loaded['peak_rss']:.2f}; "
          f"max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
