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
raises separability; the ``probe_dim`` column says what each layer was probed at. ``--out``
holds one run's files: an earlier run's folder is replaced as a whole, and only with
``--overwrite`` (see :mod:`analyses.paths`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from analyses.activations import DEFAULT_CACHE, activations_of, check_distinct_names, model_label
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.paths import run_folder
from repsim import plot
from repsim.probe import ProbeTable, probe_layers
from repsim.projection import check_match

COLUMNS = ("model", "layer", "depth", "rel_depth", "dim", "probe_dim", "C", "train_acc",
           "test_acc", "chance", "n_train", "n_test", "solver")


@dataclass(frozen=True, kw_only=True)
class Settings:
    ckpt: tuple[str, ...]                  # checkpoints to probe
    out: str = "probe-out"                 # output folder
    n_train: int = 10000                   # train inputs (0: the whole split)
    n_test: int = 2000                     # test inputs (0: the whole split)
    seed: int = 0                          # which inputs are sampled
    reduction: str = "gap"                 # gap, pool<k> or flatten
    layers: tuple[str, ...] | None = None  # module names (None: each checkpoint's)
    folds: int = 3                         # cross-validation folds on train
    cache: str = str(DEFAULT_CACHE)        # activation cache folder
    data_root: str | None = None           # dataset folder
    max_memory: int | None = None          # bytes of row blocks (--max-memory: MiB; None: whole)
    match_dim: int | None = None           # features of the random projection (None: none)
    match_seed: int = 0                    # seed of the match_dim projection
    device: str = "cpu"                    # torch device of extraction and the torch solver
    threads: int | None = None             # torch CPU threads (None: torch's choice)
    overwrite: bool = False                # replace an earlier run's --out


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.probe", __doc__, Settings)
    p.add("ckpt", nargs="+", help="checkpoints to probe")
    p.add("out", help="output folder (%(default)s)")
    p.shared("n_train", "n_test", "seed", "reduction", "layers",
             seed={"help": "which inputs are sampled (%(default)s)"})
    p.add("folds", type=int, help="cross-validation folds on train (%(default)s)")
    p.shared("cache", "data_root", "max_memory",
             max_memory={"help": "stream each layer from the files in row blocks whose arrays "
                                 "fit in this many MiB (repsim.probe.probe_memory; the process "
                                 "grows by about 1.4x that, give half of what may be used), "
                                 "for features larger than memory; default: read each layer "
                                 "whole"})
    p.add("match_dim", type=int, metavar="D",
          help="probe every layer of more than D features on a seeded Gaussian random "
               "projection to D features (a higher dimension alone raises separability); "
               "default: every layer as it is")
    p.add("match_seed", type=int, metavar="S", help="seed of the --match-dim projection "
                                                    "(%(default)s)")
    p.shared("device", "threads", "overwrite",
             device={"help": "extraction and the torch probe solver (%(default)s)"})
    return p


def probe_checkpoint(ckpt: str, settings: Settings) -> tuple[str, ProbeTable]:
    """(model label, per-layer table) of one checkpoint."""
    common = {"seed": settings.seed, "reductions": (settings.reduction,),
              "layers": settings.layers, "cache": settings.cache,
              "data_root": settings.data_root, "device": settings.device}
    with activations_of(ckpt, "train", n=settings.n_train, **common) as train, \
            activations_of(ckpt, "test", n=settings.n_test, **common) as test:
        table = probe_layers(train, test, reduction=settings.reduction, layers=settings.layers,
                             cv=settings.folds, device=settings.device,
                             max_memory=settings.max_memory, match_dim=settings.match_dim,
                             match_seed=settings.match_seed, progress=True)
        return model_label(train), table


def write_outputs(tables: dict[str, ProbeTable], settings: Settings, out: Path) -> None:
    with (out / "probe.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for label, table in tables.items():
            for record in table.records():
                writer.writerow({"model": label, **record})
    curves = {label: ([r.rel_depth for r in t], [r.test_acc for r in t])
              for label, t in tables.items()}
    chance = max(r.chance for t in tables.values() for r in t)
    plot.save_figure(plot.probe_plot(curves, chance=chance, reduction=settings.reduction,
                                     match_dim=settings.match_dim), out / "probe.png")
    write_settings(settings, out)


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


def run(settings: Settings, *, into: Path | None = None) -> dict[str, ProbeTable]:
    """Probe every layer of each of ``settings.ckpt`` into ``settings.out``; ``into``: the
    folder to write in instead, when a caller (the report) stages the run."""
    check_distinct_names(settings.ckpt)
    if settings.match_dim is not None:  # before any extraction
        check_match(settings.match_dim, settings.match_seed)
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--ckpt": settings.ckpt}, data_root=settings.data_root,
                    cache=settings.cache) as out:
        tables = dict(probe_checkpoint(ckpt, settings) for ckpt in settings.ckpt)
        write_outputs(tables, settings, out)
    print_table(tables)
    print(f"\nwrote {Path(settings.out)}/")
    return tables


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
