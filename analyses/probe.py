"""Linear-probe separability of every layer, for one or more checkpoints or seed groups.

    python -m analyses.probe --ckpt bp.pt auglocal.pt dgl.pt [--n-train 10000] [--n-test 2000]
        [--reduction gap] [--max-memory MIB] [--match-dim D [--match-seed S]] [--out probe-out]
    python -m analyses.probe --ckpt bp=bp_s0.pt,bp_s1.pt auglocal=al_s0.pt,al_s1.pt dgl.pt

Each checkpoint's train and test splits are extracted through the same cache as
``analyses.cka``. Per layer: standardise on train, multinomial logistic regression with the
L2 strength chosen by cross-validation on train only, one evaluation on test (see
:mod:`repsim.probe`). Each ``--ckpt`` entry is a checkpoint or the seeds of one method,
``NAME=FILE,FILE,...`` (:mod:`analyses.groups`). Writes ``probe.csv`` (one row per model and
layer, with ``test_low``/``test_high``, the Wilson interval of the test accuracy over the test
inputs at ``--level``), ``probe.png`` (test accuracy against relative depth, one line per
group with its interval as a band: over seeds, Student-t, for a group of several networks,
the Wilson interval for one; dashed chance line) and ``args.json``, and prints the table; with
seed groups also ``probe_groups.csv`` (per group and layer: mean over seeds, low, high).
``--max-memory`` streams each layer's features from the cached files in row blocks that fit
the budget (:func:`repsim.probe.probe_memory`), for activations larger than memory.
``--match-dim D`` probes every layer wider than D features on its seeded random projection to
D (:mod:`repsim.projection`), since a higher dimension alone raises separability; the
``probe_dim`` column says what each layer was probed at. ``--out`` holds one run's files: an
earlier run's folder is replaced as a whole, and only with ``--overwrite`` (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.activations import DEFAULT_CACHE, activations_of, check_distinct_names, model_label
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.groups import (
    GroupedSettings,
    check_each_network_once,
    count,
    group_option,
    seeded,
)
from analyses.paths import run_folder
from repsim import plot
from repsim.probe import ProbeTable, probe_layers
from repsim.projection import check_match
from repsim.stats.intervals import t_interval
from training.checks import Range

COLUMNS = ("model", "group", "layer", "depth", "rel_depth", "dim", "probe_dim", "C",
           "train_acc", "test_acc", "test_low", "test_high", "chance", "n_train", "n_test",
           "solver")
GROUP_COLUMNS = ("group", "layer", "depth", "rel_depth", "seeds", "mean", "low", "high",
                 "level", "interval")


@dataclass(frozen=True, kw_only=True)
class Settings(GroupedSettings):
    ckpt: tuple[str, ...]                  # to probe: FILE or NAME=FILE,FILE,... (SeedGroup)
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
    level: float = 0.95                    # of the intervals (over test inputs; over seeds)
    device: str = "cpu"                    # torch device of extraction and the torch solver
    threads: int | None = None             # torch CPU threads (None: torch's choice)
    overwrite: bool = False                # replace an earlier run's --out


@dataclass(frozen=True)
class ProbeCurve:
    """One group's test accuracy by layer: ``mean``, ``low``, ``high`` (L,) over its ``seeds``
    networks, the bounds at ``level``, ``interval`` how they were computed."""

    layers: tuple[str, ...]
    rel_depth: tuple[float, ...]
    seeds: int
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    interval: str


@dataclass(frozen=True)
class ProbeRun:
    """What :func:`run` computed: a table per network (by model label) and a curve per group
    (by the group's name, or the model label of a group of one)."""

    tables: dict[str, ProbeTable]
    curves: dict[str, ProbeCurve]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.probe", __doc__, Settings)
    p.add("ckpt", nargs="+", type=group_option, metavar="FILE|NAME=FILE,FILE,...",
          help="checkpoints to probe: a file, or the seeds of one method")
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
    p.add("level", type=Range(float, 0, 1, low_open=True, high_open=True).parse,
          help="level of the intervals: over test inputs (Wilson) and over seeds (Student-t) "
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
                             match_seed=settings.match_seed, level=settings.level,
                             progress=True)
        return model_label(train), table


def group_curve(name: str, tables: Sequence[ProbeTable], level: float) -> ProbeCurve:
    """The curve of a group's tables (one per seed): the mean test accuracy with a Student-t
    interval over the seeds, or for one network its accuracy and Wilson interval."""
    layers = {tuple(r.layer for r in t) for t in tables}
    if len(layers) > 1:
        raise ValueError(f"the networks of {name!r} have different layers ({sorted(layers)}): "
                         "the seeds of one group must share one architecture; put the others "
                         "in a group of their own")
    first = tables[0]
    accuracy = np.array([[r.test_acc for r in t] for t in tables])
    if len(tables) > 1:
        mean, low, high = t_interval(accuracy, level, (0.0, 1.0))
        interval = f"Student-t over {len(tables)} seeds"
    else:
        mean = accuracy[0]
        low, high = (np.array([getattr(r, f) for r in first]) for f in ("test_low", "test_high"))
        interval = f"Wilson over {first.rows[0].n_test} test inputs"
    return ProbeCurve(layers=layers.pop(), rel_depth=tuple(r.rel_depth for r in first),
                      seeds=len(tables), mean=mean, low=low, high=high, level=level,
                      interval=interval)


def write_outputs(tables: dict[str, ProbeTable], curves: dict[str, ProbeCurve],
                  members: Mapping[str, str], settings: Settings, out: Path) -> None:
    """``probe.csv`` (``members``: the group of each table), ``probe.png`` and, when a group
    has several seeds, ``probe_groups.csv``."""
    with (out / "probe.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for label, table in tables.items():
            for record in table.records():
                writer.writerow({"model": label, "group": members[label], **record})
    if any(c.seeds > 1 for c in curves.values()):
        with (out / "probe_groups.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(GROUP_COLUMNS)
            for name, c in curves.items():
                writer.writerows([name, layer, i, f"{d:.10g}", c.seeds, f"{m:.10g}",
                                  f"{lo:.10g}", f"{hi:.10g}", c.level, c.interval]
                                 for i, (layer, d, m, lo, hi) in enumerate(
                                     zip(c.layers, c.rel_depth, c.mean, c.low, c.high)))
    chance = max(r.chance for t in tables.values() for r in t)
    plot.save_figure(plot.probe_plot(
        {name: (c.rel_depth, c.mean) for name, c in curves.items()}, chance=chance,
        reduction=settings.reduction, match_dim=settings.match_dim,
        bands={name: (c.low, c.high) for name, c in curves.items()},
        band_label=f"bands: {settings.level:.0%} intervals, "
                   + "; ".join(dict.fromkeys(c.interval for c in curves.values()))),
        out / "probe.png")
    write_settings(settings, out)


def print_table(tables: dict[str, ProbeTable]) -> None:
    for label, table in tables.items():
        projection = "" if table.match_dim is None else \
            f", random projection to {table.match_dim} (seed {table.match_seed})"
        print(f"\n{label}: linear probe ({table.reduction}{projection}), n_train "
              f"{table.rows[0].n_train}, n_test {table.rows[0].n_test}, chance "
              f"{table.rows[0].chance:.3f}")
        print(f"{'layer':>16} {'depth':>5} {'dim':>6} {'probed':>6} {'C':>8} {'train':>7} "
              f"{'test':>7} {f'{table.level:.0%} interval':>16}")
        for row, name in zip(table, plot.short_labels([r.layer for r in table])):
            print(f"{name:>16} {row.depth:>5} {row.dim:>6} {row.probe_dim:>6} {row.C:>8.3g} "
                  f"{row.train_acc:>7.4f} {row.test_acc:>7.4f} "
                  f"{f'[{row.test_low:.3f}, {row.test_high:.3f}]':>16}")


def cells(curve: ProbeCurve) -> list[str]:
    """One 'mean [low, high]' text per layer of ``curve``."""
    return [f"{m:.4f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(curve.mean, curve.low,
                                                                  curve.high)]


def print_curves(curves: dict[str, ProbeCurve]) -> None:
    print("\nseed groups: mean test accuracy [interval]")
    for name, curve in curves.items():
        print(f"{name} ({count(curve.seeds, 'seed')}): {curve.level:.0%} interval, "
              f"{curve.interval}")
        for layer, cell in zip(plot.short_labels(curve.layers), cells(curve)):
            print(f"{layer:>16} {cell:>26}")


def run(settings: Settings, *, into: Path | None = None) -> ProbeRun:
    """Probe every layer of each network of ``settings.ckpt`` into ``settings.out``; ``into``:
    the folder to write in instead, when a caller (the report) stages the run."""
    groups = settings.groups()
    files = list(dict.fromkeys(f for g in groups for f in g.files))
    check_distinct_names(files)
    if seeded(groups):
        check_each_network_once([f for g in groups for f in g.files])
    if settings.match_dim is not None:  # before any extraction
        check_match(settings.match_dim, settings.match_seed)
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--ckpt": files}, data_root=settings.data_root,
                    cache=settings.cache) as out:
        probed = {f: probe_checkpoint(f, settings) for f in files}
        tables = dict(probed.values())
        members, curves = {}, {}
        for group in groups:
            labels = [probed[f][0] for f in group.files]
            name = group.name or labels[0]
            members.update(dict.fromkeys(labels, name))
            curves[name] = group_curve(name, [probed[f][1] for f in group.files],
                                       settings.level)
        write_outputs(tables, curves, members, settings, out)
    print_table(tables)
    if seeded(groups):
        print_curves(curves)
    print(f"\nwrote {Path(settings.out)}/")
    return ProbeRun(tables, curves)


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
