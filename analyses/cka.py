"""Layer-by-layer CKA between networks, or seed groups of them: heatmaps, their numbers, and the
layer-matched comparison with its uncertainty.

    python -m analyses.cka --a bp.pt --b auglocal.pt [dgl.pt ...] [--out cka-out]
    python -m analyses.cka --a bp_s0.pt bp_s1.pt bp_s2.pt \\
        --b auglocal=al_s0.pt,al_s1.pt dgl=dgl_s0.pt,dgl_s1.pt [--n-perm 1000]

``--a`` lists the reference's networks (one per seed); each ``--b`` entry is a network, ``FILE``,
or the seeds of one method, ``NAME=FILE,FILE,...`` (:mod:`analyses.groups`). Files are
checkpoints (their dataset's test split is extracted once into ``--cache`` and reused) or
activation files (``.h5``).

One network each: for every ``--b``, ``<a>__vs__<b>.png`` (rows: A's layers, columns: B's),
``.csv`` (the matrix) and ``.json`` (the matrix with all settings and both files'
provenance); when the models have equally many layers, ``layer_matched.png``/``.csv`` show CKA
of each layer with the same layer of A, one line per B. ``--a x.pt --b x.pt`` gives the
self-similarity map.

Seed groups (several networks in ``--a`` or in a ``--b`` group, or ``--intervals``): the same
three files for the first network of each group, and for the reference's second network, each
against the reference's first; then the seed-group comparison
(:func:`repsim.stats.groups.seed_groups`), which needs one architecture throughout:
``layer_matched.png`` (per group the mean over all (reference, group) network pairs with its
interval as a band, the reference's noise ceiling, the range over pairs of its distinct seeds,
as a grey band, and a star on layers where the group differs from the ceiling, Holm-adjusted
p ≤ 0.05), ``layer_matched.csv`` (one row per group and layer: mean, low, high, the ceiling,
each test's p and p_adjusted) and ``tests.csv`` (one row per test and layer with the test's
name and the printed one-line verdict). The ceiling and the tests against it need two or
more reference networks; without them the rest is written and a line says what is missing.

Uncertainty. ``--level`` (0.95) is the level of every interval. Over seeds the interval is
Student-t over a group's seeds. ``--intervals`` adds the delete-one jackknife interval over
inputs to every map (``low``/``high`` in the JSON) and, with one network per group, makes the
comparison the seed-group one with jackknife bands and z-tests over inputs, which leave seed
variation out. It is off by default: it costs about as much again as the map, and biased CKA
of wide layers at few inputs is biased by more than its interval is wide (a warning says when;
``--debiased`` is the estimator whose interval covers). ``--n-perm N`` compares every map with
N shuffles of B's inputs: ``baseline_mean``, ``baseline_high``, ``calibrated``, ``p`` and
``p_adjusted`` (Holm over the map's cells) in the JSON, and a printed count of the cells above
the baseline; ``--calibrated`` colours the heatmaps by the calibrated score (0: the shuffled
baseline, 1: identical), ``--grey-insignificant`` greys the cells not above their baseline.
``--out`` holds one run's files: an earlier run's folder is replaced as a whole, and only with
``--overwrite`` (see :mod:`analyses.paths`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from analyses.activations import DEFAULT_CACHE, activations_of, check_distinct_names, model_label
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.groups import (
    SeedGroup,
    check_each_network_once,
    count,
    group_option,
    parse_groups,
    seeded,
)
from analyses.outputs import title_of, write_similarity
from analyses.paths import run_folder
from repsim import plot
from repsim.cka import CKAResult, cka_matrix
from repsim.stats.groups import ALPHA, SeedGroups, seed_groups
from repsim.stats.intervals import check_level
from repsim.stats.permutation import check_n_perm
from repsim.store import ActivationFile
from training.checks import Range

NO_CEILING = ("no noise ceiling and no test against it: --a has one network; give two or more "
              "reference seeds (--a bp_s0.pt bp_s1.pt ...) for them")


@dataclass(frozen=True, kw_only=True)
class Settings:
    a: tuple[str, ...]                     # reference networks, one per seed: checkpoints/.h5
    b: tuple[str, ...]                     # compared: FILE or NAME=FILE,FILE,... (SeedGroup)
    out: str = "cka-out"                   # output folder
    kernel: str = "linear"                 # "linear" or "rbf"
    threshold: float = 1.0                 # RBF: sigma = threshold × median distance
    debiased: bool = False                 # unbiased HSIC (Song et al. 2012)
    batch_size: int | None = None          # minibatch CKA rows per batch (None: full batch)
    max_memory: int | None = None          # bytes of minibatch working memory (--max-memory: MiB)
    level: float = 0.95                    # of every interval (over seeds; --intervals)
    intervals: bool = False                # jackknife intervals over inputs on every map
    n_perm: int = 0                        # shuffles of B's inputs per map (0: no baseline)
    calibrated: bool = False               # heatmaps coloured by the calibrated score
    grey_insignificant: bool = False       # heatmaps grey the cells not above their baseline
    input_test: bool = False               # one seed per method: test pairs over inputs only
    n: int = 2000                          # inputs (0: the whole split)
    seed: int = 0                          # which inputs, when n is a subset; the shuffles
    split: str = "test"                    # "train" or "test"
    reduction: str = "flatten"             # flatten, gap or pool<k>
    layers: tuple[str, ...] | None = None  # module names (None: each file's)
    cache: str = str(DEFAULT_CACHE)        # activation cache folder
    data_root: str | None = None           # dataset folder
    device: str = "cpu"                    # torch device of extraction and CKA
    threads: int | None = None             # torch CPU threads (None: torch's choice)
    overwrite: bool = False                # replace an earlier run's --out

    def __post_init__(self):
        if isinstance(self.a, str):  # one reference network: Settings(a="bp.pt", ...)
            object.__setattr__(self, "a", (self.a,))
        if not self.a:
            raise ValueError("--a needs at least one reference network")
        self.groups()
        check_level(self.level)
        check_n_perm(self.n_perm)
        for flag, given in (("--calibrated", self.calibrated),
                            ("--grey-insignificant", self.grey_insignificant)):
            if given and not self.n_perm:
                raise ValueError(f"{flag} needs the permutation baseline: add --n-perm N "
                                 "(e.g. --n-perm 1000)")
        if self.batch_size is not None or self.max_memory is not None:
            if self.compares_groups() or self.n_perm:
                raise ValueError("--batch-size/--max-memory select the minibatch estimator, "
                                 "which has no intervals, permutation baselines or seed-group "
                                 "comparison; omit them (--reduction gap makes full maps "
                                 "small)")

    def groups(self) -> tuple[SeedGroup, ...]:
        """The parsed ``b`` entries."""
        return parse_groups(self.b, "--b")

    def compares_groups(self) -> bool:
        """Whether the layer-matched comparison is the seed-group one."""
        return len(self.a) > 1 or seeded(self.groups()) or self.intervals

    def measure(self) -> tuple[str, dict]:
        """The registered measure of these settings and its parameters."""
        if self.kernel == "linear":
            return "linear_cka", {"debiased": self.debiased}
        return "rbf_cka", {"threshold": self.threshold, "debiased": self.debiased}


@dataclass(frozen=True)
class CKARun:
    """What :func:`run` computed: the heatmaps' ``maps`` and the ``stems`` of their files, both
    by the label of their B network, and the seed-group comparison (None: one network each)."""

    maps: dict[str, CKAResult]
    stems: dict[str, str]
    groups: SeedGroups | None


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.cka", __doc__, Settings)
    p.add("a", nargs="+", help="reference networks, one per seed: checkpoints or .h5 files")
    p.add("b", nargs="+", type=group_option, metavar="FILE|NAME=FILE,FILE,...",
          help="networks to compare with --a: a file, or the seeds of one method")
    p.add("out", help="output folder (%(default)s)")
    p.add("kernel", choices=["linear", "rbf"])
    p.add("threshold", type=float,
          help="RBF bandwidth: sigma = threshold × median distance (%(default)s)")
    p.add("debiased", action="store_true",
          help="unbiased HSIC estimator (Song et al. 2012) in CKA")
    p.add("level", type=Range(float, 0, 1, low_open=True, high_open=True).parse,
          help="level of every interval (%(default)s)")
    p.add("intervals", action="store_true",
          help="jackknife intervals over inputs on every map; with one network per group, "
               "the seed-group comparison over inputs")
    p.add("n_perm", type=Range(int, 0, note="0: no baseline").parse, metavar="N",
          help="compare every map with N shuffles of B's inputs: p-values, calibrated score")
    p.add("calibrated", action="store_true",
          help="heatmaps show the calibrated score (0: shuffled baseline, 1: identical); "
               "needs --n-perm")
    p.add("grey_insignificant", action="store_true",
          help=f"heatmaps grey the cells not above their shuffled baseline (Holm p > {ALPHA}); "
               "needs --n-perm")
    p.add("input_test", action="store_true",
          help="with one seed per method, test each pair of methods over inputs (a z-test "
               "with jackknife standard errors, seed variation left out); without it such "
               "pairs are reported as not testable")
    p.shared("batch_size", "max_memory", "n", "seed", "split", "reduction", "layers", "cache",
             "data_root", "device", "threads", "overwrite",
             max_memory={"help": "minibatch CKA with the largest batch whose working memory "
                                 "fits in this many MiB (repsim.cka.minibatch_memory): for "
                                 "activation files larger than memory; instead of "
                                 "--batch-size"},
             n={"help": "test inputs (%(default)s; 0: all)"},
             seed={"help": "which inputs when --n is a subset, and the --n-perm shuffles "
                           "(%(default)s)"})
    return p


def compare(a: ActivationFile, b: ActivationFile, stem: str, settings: Settings,
            out: Path) -> CKAResult:
    """The map of ``a`` with ``b``, written as ``out/<stem>.png``, ``.csv`` and ``.json``;
    with ``--n-perm``, a printed line on how many cells are above their baseline."""
    result = cka_matrix(a, b, kernel=settings.kernel, debiased=settings.debiased,
                        batch_size=settings.batch_size, threshold=settings.threshold,
                        reduction=settings.reduction, layers_a=settings.layers,
                        layers_b=settings.layers, device=settings.device,
                        max_memory=settings.max_memory,
                        level=settings.level if settings.intervals else None,
                        n_perm=settings.n_perm, seed=settings.seed)
    name_a, name_b = model_label(a), model_label(b)
    write_similarity(result, stem, out, name_a=name_a, name_b=name_b,
                     calibrated=settings.calibrated,
                     alpha=ALPHA if settings.grey_insignificant else None)
    if settings.n_perm:
        above = int((result.p_adjusted <= ALPHA).sum())
        print(f"{name_a} vs {name_b}: {above} of {result.matrix.size} cells above the "
              f"shuffled-input baseline (Holm p <= {ALPHA}, {settings.n_perm} shuffles); "
              f"baseline mean {result.baseline_mean.min():.3f} to "
              f"{result.baseline_mean.max():.3f}")
    return result


def check_resolution(settings: Settings, pairs: Sequence[tuple[ActivationFile, ActivationFile]]
                     ) -> None:
    """Refuse ``--grey-insignificant`` when no cell of a map could pass: with m cells and N
    shuffles the smallest Holm-adjusted p is m / (N + 1)."""
    if not settings.grey_insignificant:
        return
    for a, b in pairs:
        cells = math.prod(len(settings.layers or f.layers) for f in (a, b))
        if cells / (settings.n_perm + 1) > ALPHA:
            raise ValueError(
                f"--grey-insignificant: a map of {cells} cells with --n-perm "
                f"{settings.n_perm} reaches Holm-adjusted p >= {cells / (settings.n_perm + 1):.3g} "
                f"at best, so every cell would be grey; use --n-perm "
                f"{math.ceil(cells / ALPHA) - 1} or more")


def layer_matched(results: dict[str, CKAResult]) -> dict[str, CKAResult]:
    """The results whose two models have equally many layers (whose diagonal is the
    layer-matched CKA)."""
    return {label: r for label, r in results.items() if len(r.layers_a) == len(r.layers_b)}


def write_layer_matched(results: dict[str, CKAResult], reference: str, out: Path) -> None:
    """Diagonals of the same-length maps: a line plot and its CSV."""
    same = layer_matched(results)
    if not same:
        return
    layers = next(iter(same.values())).layers_a
    diagonals = {label: r.diagonal() for label, r in same.items()}
    title = title_of(next(iter(same.values())))
    plot.save_figure(plot.layer_matched_plot(diagonals, layers, reference=reference,
                                             title=title), out / "layer_matched.png")
    with (out / "layer_matched.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", *diagonals])
        for i, name in enumerate(layers):
            writer.writerow([name, *(f"{d[i]:.10g}" for d in diagonals.values())])
    print(f"\nlayer-matched CKA with {reference} ({title}):")
    print(f"{'layer':>16} " + " ".join(f"{label[:22]:>22}" for label in diagonals))
    for i, name in enumerate(plot.short_labels(layers)):
        print(f"{name:>16} " + " ".join(f"{d[i]:>22.4f}" for d in diagonals.values()))


def write_seed_groups(result: SeedGroups, title: str, out: Path) -> None:
    """The seed-group comparison: ``layer_matched.png``, ``layer_matched.csv``, ``tests.csv``
    and the printed table with the one-line verdicts."""
    level = next(iter(result.groups.values())).level
    ceiling = result.ceiling
    plot.save_figure(plot.layer_matched_plot(
        {name: g.mean for name, g in result.groups.items()}, result.layers,
        reference=result.reference, title=f"{title}; bands: {level:.0%} intervals",
        bands={name: (g.low, g.high) for name, g in result.groups.items()},
        ceiling=None if ceiling is None else (ceiling.mean, ceiling.low, ceiling.high),
        marked={t.first: t.p_adjusted <= ALPHA for t in result.tests if t.second == "ceiling"},
        ceiling_label="ceiling: range over pairs of reference seeds",
        marked_label=f"differs from the ceiling (Holm p <= {ALPHA})"), out / "layer_matched.png")
    result.to_frame().to_csv(out / "layer_matched.csv", index=False)
    with (out / "tests.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "layer", "statistic", "p", "p_adjusted", "test",
                         "smallest_p", "verdict"])
        for test in result.tests:
            writer.writerows([test.question, layer, f"{s:.10g}", f"{p:.10g}", f"{q:.10g}",
                              test.test, f"{test.smallest_p:.10g}", verdict]
                             for layer, s, p, q, verdict in zip(
                                 test.layers, test.statistic, test.p, test.p_adjusted,
                                 test.verdicts()))
    print_seed_groups(result, title)


def seed_group_table(result: SeedGroups) -> dict[str, list[str]]:
    """Column label → one 'mean [low, high]' cell per layer, for each group and the ceiling."""
    columns = {f"{name} ({count(g.values.shape[1], 'seed')})": list(zip(g.mean, g.low, g.high))
               for name, g in result.groups.items()}
    if result.ceiling is not None:
        c = result.ceiling
        columns[f"ceiling ({count(len(c.values), 'pair')})"] = list(zip(c.mean, c.low, c.high))
    return {label: [f"{m:.4f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else
                    f"{m:.4f} (one pair: no interval)" for m, lo, hi in cells]
            for label, cells in columns.items()}


def seed_group_notes(result: SeedGroups) -> list[str]:
    """How the intervals were computed, what the ceiling's range is, or why it is missing."""
    notes = [f"{name}: {g.level:.0%} interval, {g.interval}" for name, g in result.groups.items()]
    notes.append(NO_CEILING if result.ceiling is None else
                 "ceiling: mean and range over the pairs of distinct reference seeds")
    return notes


def print_seed_groups(result: SeedGroups, title: str) -> None:
    columns = seed_group_table(result)
    print(f"\nlayer-matched {title} with {result.reference}: mean [interval]")
    print(f"{'layer':>16} " + " ".join(f"{label[:26]:>26}" for label in columns))
    for i, name in enumerate(plot.short_labels(result.layers)):
        print(f"{name:>16} " + " ".join(f"{cells[i]:>26}" for cells in columns.values()))
    print("\n".join(seed_group_notes(result)))
    for test in result.tests:
        print(f"\n{test.question} (p Holm-adjusted over {len(test.layers)} layers):")
        print("\n".join("  " + line for line in test.verdicts()))


def labels_of(groups: Sequence[SeedGroup], acts: Mapping[str, ActivationFile]) -> list[str]:
    """One distinct label per group: its name or model label, with the file stem where two
    would read alike (checkpoints of one name in different folders)."""
    labels = []
    for group in groups:
        label = group.label(acts[group.files[0]])
        labels.append(label if label not in labels else f"{label} [{Path(group.files[0]).stem}]")
    return labels


def reference_label(files: Sequence[ActivationFile]) -> str:
    """The reference's model label, and how many more seeds it has."""
    extra = len(files) - 1
    return model_label(files[0]) + (f" and {count(extra, 'more seed')}" if extra else "")


def heatmaps(settings: Settings, pairs: Mapping[str, tuple[str, str]],
             acts: Mapping[str, ActivationFile], out: Path) -> tuple[dict, dict]:
    """The maps of ``pairs`` (label → (file a, file b)) and their file stems, by label."""
    maps, stems = {}, {}
    for label, (a, b) in pairs.items():
        stems[label] = f"{Path(a).stem}__vs__{Path(b).stem}"
        maps[label] = compare(acts[a], acts[b], stems[label], settings, out)
    return maps, stems


def compare_groups(settings: Settings, groups: Sequence[SeedGroup], labels: Sequence[str],
                   acts: Mapping[str, ActivationFile], out: Path) -> CKARun:
    """The seed-group comparison and the heatmaps of each group's first network (and the
    reference's second) with the reference's first."""
    reference = [acts[f] for f in settings.a]
    name = reference_label(reference)
    if name in labels:
        raise ValueError(f"a --b group is named {name!r} like the reference; name it otherwise")
    measure, params = settings.measure()
    result = seed_groups(reference, {label: [acts[f] for f in g.files]
                                     for label, g in zip(labels, groups)},
                         reference_name=name, measure=measure, level=settings.level,
                         reduction=settings.reduction, layers=settings.layers,
                         device=settings.device, seed=settings.seed,
                         input_test=settings.input_test, **params)
    pairs = {label: (settings.a[0], g.files[0]) for label, g in zip(labels, groups)}
    if len(settings.a) > 1:
        pairs[model_label(reference[1])] = settings.a[:2]
    maps, stems = heatmaps(settings, pairs, acts, out)
    write_seed_groups(result, title_of(next(iter(maps.values()))), out)
    return CKARun(maps, stems, result)


def run(settings: Settings, *, into: Path | None = None) -> CKARun:
    """Compare ``settings.a`` with each of ``settings.b`` into ``settings.out``; ``into``: the
    folder to write in instead, when a caller (the report) stages the run."""
    groups = settings.groups()
    compared = [f for g in groups for f in g.files]
    files = list(dict.fromkeys([*settings.a, *compared]))
    check_distinct_names(files)
    if settings.compares_groups():
        check_each_network_once([*settings.a, *compared])
    reductions = tuple(sorted({settings.reduction, "gap"}))  # gap too: the probe reuses it
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--a": settings.a, "--b": compared},
                    data_root=settings.data_root, cache=settings.cache) as out, \
            ExitStack() as opened:
        acts = {f: opened.enter_context(activations_of(
                    f, settings.split, n=settings.n, seed=settings.seed, reductions=reductions,
                    cache=settings.cache, data_root=settings.data_root,
                    device=settings.device)) for f in files}
        labels = labels_of(groups, acts)
        check_resolution(settings, [(acts[settings.a[0]], acts[f]) for f in files])
        if settings.compares_groups():
            outcome = compare_groups(settings, groups, labels, acts, out)
        else:
            maps, stems = heatmaps(settings, {label: (settings.a[0], g.files[0])
                                              for label, g in zip(labels, groups)}, acts, out)
            write_layer_matched(maps, model_label(acts[settings.a[0]]), out)
            outcome = CKARun(maps, stems, None)
        write_settings(settings, out)
    print(f"\nwrote {Path(settings.out)}/")
    return outcome


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
