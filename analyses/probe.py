"""Linear-probe separability of every layer, for one or more checkpoints.

    python -m analyses.probe --ckpt bp.pt auglocal.pt dgl.pt [--n-train 10000] [--n-test 2000]
        [--reduction gap] [--max-memory MIB] [--match-dim D [--match-seed S]] [--out probe-out]

Each checkpoint's train and test splits are extracted through the same cache as
``analyses.cka``. Per layer: standardise on train, multinomial logistic regression with the
L2 strength chosen by cross-validation on train only, one evaluation on test (see
:mod:`repsim.probe`). Writes ``probe.csv`` (one row per model and layer), ``probe.png``
(test accuracy against relative depth, one line per model, dashed chance line) and
``args.json``, and prints the table. ``--max-memory`` streams each layer's features from the
cached files in row blocks that fit the budget (:func:`repsim.probe.probe_memory`), for
activations larger than memory. ``--match-dim D`` probes every layer wider than D features on
its seeded random projection to D (:mod:`repsim.projection`), since a higher dimension alone
raises separability; the ``probe_dim`` column says what each layer was probed at.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from analyses.activations import (
    DEFAULT_CACHE,
    InputSelection,
    check_distinct_names,
    model_label,
    open_activations,
)
from analyses.cli import mebibytes, run_cli
from repsim import plot
from repsim.probe import ProbeTable, probe_layers
from repsim.projection import check_match

COLUMNS = ("model", "layer", "depth", "rel_depth", "dim", "probe_dim", "C", "train_acc",
           "test_acc", "chance", "n_train", "n_test", "solver")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analyses.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, nargs="+", help="checkpoints to probe")
    p.add_argument("--out", default="probe-out", help="output folder (probe-out)")
    p.add_argument("--n-train", type=int, default=10000, help="train inputs (10000; 0: all)")
    p.add_argument("--n-test", type=int, default=2000, help="test inputs (2000; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="which inputs are sampled")
    p.add_argument("--reduction", default="gap", help="gap (default), pool<k> or flatten")
    p.add_argument("--layers", nargs="+", help="module names (default: each checkpoint's)")
    p.add_argument("--folds", type=int, default=3, help="cross-validation folds on train (3)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="activation cache (acts)")
    p.add_argument("--data-root", help="dataset folder (see training.train --help)")
    p.add_argument("--max-memory", type=mebibytes, metavar="MIB",
                   help="stream each layer from the files in row blocks whose arrays fit in "
                        "this many MiB (repsim.probe.probe_memory; the process grows by about "
                        "1.4x that, give half of what may be used), for features larger than "
                        "memory; default: read each layer whole")
    p.add_argument("--match-dim", type=int, metavar="D",
                   help="probe every layer of more than D features on a seeded Gaussian random "
                        "projection to D features (a higher dimension alone raises "
                        "separability); default: every layer as it is")
    p.add_argument("--match-seed", type=int, default=0, metavar="S",
                   help="seed of the --match-dim projection (0)")
    p.add_argument("--device", default="cpu", help="extraction and the torch probe solver")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def probe_checkpoint(ckpt: str, args: argparse.Namespace) -> tuple[str, ProbeTable]:
    """(model label, per-layer table) of one checkpoint."""
    common = {"reductions": (args.reduction,), "layers": args.layers, "cache": args.cache,
              "device": args.device}
    splits = {split: InputSelection(split, n or None, args.seed, args.data_root)
              for split, n in (("train", args.n_train), ("test", args.n_test))}
    with open_activations(ckpt, splits["train"], **common) as train, \
            open_activations(ckpt, splits["test"], **common) as test:
        table = probe_layers(train, test, reduction=args.reduction, layers=args.layers,
                             cv=args.folds, device=args.device,
                             max_memory=args.max_memory, match_dim=args.match_dim,
                             match_seed=args.match_seed, progress=True)
        return model_label(train), table


def write_outputs(tables: dict[str, ProbeTable], args: argparse.Namespace, out: Path) -> None:
    with (out / "probe.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for label, table in tables.items():
            for record in table.records():
                writer.writerow({"model": label, **record})
    curves = {label: ([r.rel_depth for r in t], [r.test_acc for r in t])
              for label, t in tables.items()}
    chance = max(r.chance for t in tables.values() for r in t)
    plot.save_figure(plot.probe_plot(curves, chance=chance, reduction=args.reduction,
                                     match_dim=args.match_dim), out / "probe.png")
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))


def print_table(tables: dict[str, ProbeTable]) -> None:
    for label, table in tables.items():
        projection = "" if table.match_dim is None else \
            f", random projection to {table.match_dim} (seed {table.match_seed})"
        print(f"\n{label}: linear probe ({table.reduction}{projection}), n_train "
              f"{table.rows[0].n_train}, n_test {table.rows[0].n_test}, chance "
              f"{table.rows[0].chance:.3f}")
        print(f"{'layer':>16} {'depth':>5} {'dim':>6} {'probed':>6} {'C':>8} {'train':>7} "
              f"{'test':>7}")
        for row, name in zip(table, plot.short_labels([r.layer for r in table])):
            print(f"{name:>16} {row.depth:>5} {row.dim:>6} {row.probe_dim:>6} {row.C:>8.3g} "
                  f"{row.train_acc:>7.4f} {row.test_acc:>7.4f}")


def run(args: argparse.Namespace) -> dict[str, ProbeTable]:
    check_distinct_names(args.ckpt)
    if args.match_dim is not None:  # before any extraction
        check_match(args.match_dim, args.match_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = dict(probe_checkpoint(ckpt, args) for ckpt in args.ckpt)
    write_outputs(tables, args, out)
    print_table(tables)
    print(f"\nwrote {out}/")
    return tables


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, run, argv)


if __name__ == "__main__":
    main()
