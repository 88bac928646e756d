"""The geometry of every layer, for one or more checkpoints or seed groups.

    python -m analyses.geometry --ckpt bp.pt auglocal.pt dgl.pt [--n-train 10000] [--n-test 2000]
        [--reduction gap] [--max-memory MIB] [--out geometry-out]
    python -m analyses.geometry --ckpt bp=bp_s0.pt,bp_s1.pt auglocal=al_s0.pt,al_s1.pt

Per layer (:mod:`repsim.geometry`): the participation ratio (Σλ)²/Σλ² of the covariance
spectrum on the test inputs (effective dimensionality), the trace ratio of between- to
within-class scatter on the test inputs, and the nearest-class-centre accuracy on the test
inputs with centres from the train inputs, all on the raw ``--reduction`` features. The
activations come through the same cache as ``analyses.probe`` (with the same ``--n-train``,
``--n-test`` and ``--seed`` nothing is extracted again). Each ``--ckpt`` entry is a checkpoint
or the seeds of one method, ``NAME=FILE,FILE,...`` (:mod:`analyses.groups`).

Writes ``geometry.csv`` (one row per model and layer; ``ncc_low``/``ncc_high`` the Wilson
interval over the test inputs at ``--level``), ``geometry_groups.csv`` (per group, metric and
layer: mean, low, high; over seeds a Student-t interval, for one network the Wilson interval
of the NCC accuracy and none for the other two), ``geometry.json`` (the same curves with how
each interval was computed), ``geometry.png`` (the three metrics against relative depth, one
line per group with its interval as a band) and ``args.json``, and prints the table. ``--out``
holds one run's files: an earlier run's folder is replaced as a whole, and only with
``--overwrite`` (see :mod:`analyses.paths`).
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyses.activations import DEFAULT_CACHE, activations_of, check_distinct_names, model_label
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.groups import (
    GroupedSettings,
    SeedGroup,
    check_each_network_once,
    count,
    group_option,
    seeded,
)
from analyses.paths import run_folder
from repsim import plot
from repsim.geometry import DEFAULT_MAX_MEMORY, GeometryTable, layer_geometry
from repsim.stats.intervals import t_interval
from training.checks import Range

COLUMNS = ("model", "group", "layer", "depth", "rel_depth", "dim", "participation_ratio",
           "pr_fraction", "trace_ratio", "ncc_acc", "ncc_low", "ncc_high", "n_train", "n_test")


@dataclass(frozen=True)
class Metric:
    """A per-layer number plotted against depth: the ``field`` of a table's records, the
    ``label`` of its axis, and the fields ``low``/``high`` of one network's own interval
    (None: it has none), computed as ``interval`` says ({n}: the records' ``n_test``)."""

    field: str
    label: str
    low: str | None = None
    high: str | None = None
    interval: str = "none (one network)"


METRICS = (Metric("participation_ratio", "participation ratio (effective dim.)"),
           Metric("trace_ratio", "between / within-class variance"),
           Metric("ncc_acc", "nearest-class-centre accuracy", "ncc_low", "ncc_high",
                  "Wilson over {n} test inputs"))


@dataclass(frozen=True, kw_only=True)
class Settings(GroupedSettings):
    ckpt: tuple[str, ...]                  # to measure: FILE or NAME=FILE,FILE,... (SeedGroup)
    out: str = "geometry-out"              # output folder
    n_train: int = 10000                   # train inputs for the class centres (0: all)
    n_test: int = 2000                     # test inputs (0: the whole split)
    seed: int = 0                          # which inputs are sampled
    reduction: str = "gap"                 # gap, pool<k> or flatten
    layers: tuple[str, ...] | None = None  # module names (None: each checkpoint's)
    cache: str = str(DEFAULT_CACHE)        # activation cache folder
    data_root: str | None = None           # dataset folder
    max_memory: int = DEFAULT_MAX_MEMORY   # bytes of float64 row blocks (--max-memory: MiB)
    level: float = 0.95                    # of the intervals (over test inputs; over seeds)
    device: str = "cpu"                    # torch device of extraction
    threads: int | None = None             # torch CPU threads (None: torch's choice)
    overwrite: bool = False                # replace an earlier run's --out


@dataclass(frozen=True)
class MetricCurve:
    """One group's values of one metric by layer: ``mean``, ``low``, ``high`` (L,) over its
    networks (NaN bounds: no interval), ``interval`` how the bounds were computed."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    interval: str


@dataclass(frozen=True)
class DepthCurves:
    """A group's curves: its ``layers``, their ``rel_depth``, ``seeds`` networks, and one
    :class:`MetricCurve` per metric, by its field."""

    layers: tuple[str, ...]
    rel_depth: tuple[float, ...]
    seeds: int
    metrics: dict[str, MetricCurve]


@dataclass(frozen=True)
class GeometryRun:
    """What :func:`run` computed: a table per network (by model label) and curves per group."""

    tables: dict[str, GeometryTable]
    curves: dict[str, DepthCurves]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.geometry", __doc__, Settings)
    p.add("ckpt", nargs="+", type=group_option, metavar="FILE|NAME=FILE,FILE,...",
          help="checkpoints to measure: a file, or the seeds of one method")
    p.add("out", help="output folder (%(default)s)")
    p.shared("n_train", "n_test", "seed", "reduction", "layers", "cache", "data_root",
             "max_memory", "level", "device", "threads", "overwrite",
             n_train={"help": "train inputs for the class centres (%(default)s; 0: all)"},
             n_test={"help": "test inputs (%(default)s; 0: all)"},
             seed={"help": "which inputs are sampled (%(default)s)"},
             max_memory={"help": "read each layer in float64 row blocks that fit this many MiB "
                                 "(default: 256)"},
             level={"type": Range(float, 0, 1, low_open=True, high_open=True).parse,
                    "help": "level of the intervals: NCC accuracy over test inputs (Wilson), "
                            "every metric over seeds (Student-t) (%(default)s)"},
             device={"help": "extraction (%(default)s)"})
    return p


def measure_checkpoint(ckpt: str, settings: Settings) -> tuple[str, GeometryTable]:
    """(model label, per-layer table) of one checkpoint."""
    common = {"seed": settings.seed, "reductions": (settings.reduction,),
              "layers": settings.layers, "cache": settings.cache,
              "data_root": settings.data_root, "device": settings.device}
    with activations_of(ckpt, "train", n=settings.n_train, **common) as train, \
            activations_of(ckpt, "test", n=settings.n_test, **common) as test:
        table = layer_geometry(train, test, reduction=settings.reduction,
                               layers=settings.layers, level=settings.level,
                               max_memory=settings.max_memory, progress=True)
        return model_label(test), table


# ---------------------------------------------------------------------------------------------
# Per-layer metrics of seed groups against depth: shared with analyses.information
# ---------------------------------------------------------------------------------------------


def group_curves(name: str, tables: Sequence[Sequence[dict]], metrics: Sequence[Metric],
                 level: float) -> DepthCurves:
    """A group's curves from its networks' records (one list of per-layer dicts per seed,
    each with ``layer``, ``rel_depth``, ``n_test`` and the metrics' fields): means with a
    Student-t interval over seeds, or one network's values with its own interval."""
    layers = {tuple(r["layer"] for r in t) for t in tables}
    if len(layers) > 1:
        raise ValueError(f"the networks of {name!r} have different layers ({sorted(layers)}): "
                         "the seeds of one group must share one architecture; put the others "
                         "in a group of their own")
    first = tables[0]

    def column(records, field):
        return np.array([r[field] for r in records], dtype=np.float64)

    curves = {}
    for m in metrics:
        values = np.array([column(t, m.field) for t in tables])
        if len(tables) > 1:
            curves[m.field] = MetricCurve(*t_interval(values, level),
                                          f"Student-t over {len(tables)} seeds")
        elif m.low is not None:
            curves[m.field] = MetricCurve(values[0], column(first, m.low),
                                          column(first, m.high),
                                          m.interval.format(n=first[0]["n_test"]))
        else:
            nan = np.full(len(first), np.nan)
            curves[m.field] = MetricCurve(values[0], nan, nan, m.interval)
    return DepthCurves(layers.pop(), tuple(r["rel_depth"] for r in first), len(tables), curves)


def write_records(path: Path, columns: Sequence[str], tables: dict[str, Sequence[dict]],
                  members: dict[str, str]) -> None:
    """One CSV row per network and layer: ``tables`` model label → records; ``members`` the
    group of each model label."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for label, records in tables.items():
            for record in records:
                writer.writerow({"model": label, "group": members[label], **record})


def write_curves(curves: dict[str, DepthCurves], metrics: Sequence[Metric], stem: str,
                 out: Path, *, level: float, title: str, record: dict,
                 references: dict[str, tuple[float, str]] | None = None) -> None:
    """``<stem>_groups.csv`` (per group, metric and layer: mean, low, high), ``<stem>.json``
    (``record`` and the curves) and ``<stem>.png`` (one panel per metric against relative
    depth, one line per group with its interval as a band; ``references``: metric field →
    (value, label) of a dashed line)."""
    with (out / f"{stem}_groups.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "metric", "layer", "rel_depth", "seeds", "mean", "low", "high",
                         "level", "interval"])
        for name, c in curves.items():
            for field, m in c.metrics.items():
                writer.writerows([name, field, layer, f"{d:.10g}", c.seeds, f"{v:.10g}",
                                  f"{lo:.10g}", f"{hi:.10g}", level, m.interval]
                                 for layer, d, v, lo, hi in zip(c.layers, c.rel_depth, m.mean,
                                                                m.low, m.high))
    groups = {name: {"layers": list(c.layers), "rel_depth": list(c.rel_depth),
                     "seeds": c.seeds,
                     **{field: {"mean": _listed(m.mean), "low": _listed(m.low),
                                "high": _listed(m.high), "interval": m.interval}
                        for field, m in c.metrics.items()}}
              for name, c in curves.items()}
    (out / f"{stem}.json").write_text(json.dumps({**record, "level": level, "groups": groups},
                                                 indent=1))
    intervals = "; ".join(dict.fromkeys(m.interval for c in curves.values()
                                        for m in c.metrics.values()))
    plot.save_figure(plot.depth_panels(
        {m.label: {name: (c.rel_depth, c.metrics[m.field].mean) for name, c in curves.items()}
         for m in metrics},
        bands={m.label: {name: (c.metrics[m.field].low, c.metrics[m.field].high)
                         for name, c in curves.items()} for m in metrics},
        references={m.label: references[m.field] for m in metrics
                    if m.field in (references or {})},
        title=f"{title}; bands: {level:.0%} intervals, {intervals}"), out / f"{stem}.png")


def _listed(values: np.ndarray) -> list[float | None]:
    """Values for JSON, NaN as null."""
    return [None if np.isnan(v) else float(v) for v in values]


def print_curves(curves: dict[str, DepthCurves]) -> None:
    """Each group's metrics per layer: 'mean [low, high]'."""
    print("\nseed groups: mean [interval]")
    for name, c in curves.items():
        print(f"{name} ({count(c.seeds, 'seed')}): "
              + "; ".join(dict.fromkeys(m.interval for m in c.metrics.values())))
        print(f"{'layer':>16} " + " ".join(f"{field[:26]:>26}" for field in c.metrics))
        for i, layer in enumerate(plot.short_labels(c.layers)):
            print(f"{layer:>16} " + " ".join(
                f"{f'{m.mean[i]:.4f} [{m.low[i]:.3f}, {m.high[i]:.3f}]':>26}"
                for m in c.metrics.values()))


def groups_of(groups: Sequence[SeedGroup], measured: dict[str, tuple[str, Sequence[dict]]],
              metrics: Sequence[Metric], level: float
              ) -> tuple[dict[str, str], dict[str, DepthCurves]]:
    """(group of each model label, curves of each group) from ``measured``: file → (model
    label, records)."""
    members, curves = {}, {}
    for group in groups:
        labels = [measured[f][0] for f in group.files]
        name = group.name or labels[0]
        members.update(dict.fromkeys(labels, name))
        curves[name] = group_curves(name, [measured[f][1] for f in group.files], metrics,
                                    level)
    return members, curves


@contextlib.contextmanager
def measured_run(settings: Any, measure: Callable[[str, Any], Any], into: Path | None
                 ) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(the run's folder, {file: measure(file, settings)}) for every network of a command's
    ``settings.ckpt`` groups, each file once; files that share a name, or, with seed
    groups, one given twice, are refused first. ``into``: as :func:`analyses.paths.run_folder`.
    """
    groups = settings.groups()
    files = list(dict.fromkeys(f for g in groups for f in g.files))
    check_distinct_names(files)
    if seeded(groups):
        check_each_network_once([f for g in groups for f in g.files])
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--ckpt": files}, data_root=settings.data_root,
                    cache=settings.cache) as out:
        yield out, {f: measure(f, settings) for f in files}


def print_tables(tables: dict[str, GeometryTable]) -> None:
    for label, table in tables.items():
        first = table.rows[0]
        print(f"\n{label}: layer geometry ({table.reduction}), n_train {first.n_train}, "
              f"n_test {first.n_test}")
        print(f"{'layer':>16} {'depth':>5} {'dim':>6} {'PR':>8} {'PR/max':>7} {'B/W':>8} "
              f"{'NCC':>7} {f'{table.level:.0%} interval':>16}")
        for row, name in zip(table, plot.short_labels([r.layer for r in table])):
            print(f"{name:>16} {row.depth:>5} {row.dim:>6} {row.participation_ratio:>8.3f} "
                  f"{row.pr_fraction:>7.3f} {row.trace_ratio:>8.4f} {row.ncc_acc:>7.4f} "
                  f"{f'[{row.ncc_low:.3f}, {row.ncc_high:.3f}]':>16}")


def run(settings: Settings, *, into: Path | None = None) -> GeometryRun:
    """Measure every layer of each network of ``settings.ckpt`` into ``settings.out``;
    ``into``: the folder to write in instead, when a caller (the report) stages the run."""
    groups = settings.groups()
    with measured_run(settings, measure_checkpoint, into) as (out, measured):
        tables = dict(measured.values())
        members, curves = groups_of(groups, {f: (label, table.records())
                                             for f, (label, table) in measured.items()},
                                    METRICS, settings.level)
        write_records(out / "geometry.csv", COLUMNS,
                      {label: t.records() for label, t in tables.items()}, members)
        write_curves(curves, METRICS, "geometry", out, level=settings.level,
                     title=f"layer geometry ({settings.reduction})",
                     record={"reduction": settings.reduction})
        write_settings(settings, out)
    print_tables(tables)
    if seeded(groups):
        print_curves(curves)
    print(f"\nwrote {Path(settings.out)}/")
    return GeometryRun(tables, curves)


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
