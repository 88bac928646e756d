"""Extract a checkpoint's layer activations on a dataset split into one HDF5 file.

    python -m analyses.extract --ckpt bp.pt --split test --n 2000 --reduction flatten gap \\
        --out acts/bp__test.h5

The checkpoint's dataset is used; ``--n`` and ``--seed`` pick a class-balanced subset, the
same rows for every checkpoint. Layers default to the checkpoint's own list.
"""

from __future__ import annotations

import argparse

from analyses.activations import InputSelection, extract_checkpoint
from analyses.cli import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analyses.extract", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by training.train")
    p.add_argument("--out", required=True, help="activation file to write (.h5)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=2000, help="inputs (0: the whole split)")
    p.add_argument("--seed", type=int, default=0, help="which inputs when --n is a subset")
    p.add_argument("--reduction", nargs="+", default=["flatten", "gap"],
                   help="flatten, gap, pool<k> (one or more)")
    p.add_argument("--layers", nargs="+", help="module names (default: the checkpoint's)")
    p.add_argument("--data-root", help="dataset folder (see training.train --help)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    selection = InputSelection(args.split, args.n or None, args.seed, args.data_root,
                               args.batch_size)
    path = extract_checkpoint(args.ckpt, args.out, selection, reductions=tuple(args.reduction),
                              layers=args.layers, device=args.device)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, run, argv)


if __name__ == "__main__":
    main()
