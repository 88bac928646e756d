"""Layer-by-layer maps of any registered similarity measure between networks.

    python -m analyses.similarity --a bp.pt --b auglocal.pt [dgl.pt ...] \\
        [--measure pwcca procrustes rsa:compare=pearson ...] [--out similarity-out]

``--a`` and each ``--b`` are checkpoints (their dataset's test split is extracted once into
``--cache``, shared with ``analyses.cka`` and ``analyses.probe``, and read by every measure) or
activation files (``.h5``). ``--measure`` lists measures of the registry
(:data:`repsim.measures.MEASURES`), each ``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE...]`` with the
measure's parameters; a value is read as true/false, none, an integer or a number where it is
one, as text otherwise (``shape_metric:alpha=0.5``, ``mutual_knn:k=20``,
``rsa:compare=pearson``). A measure may be listed again with other parameters. An unknown
measure or parameter, or a bad value, is a usage error.

Writes, for every measure, a folder named after it (``rsa-compare=pearson`` with parameters)
holding per pair ``<a>__vs__<b>.png`` (rows: A's layers, columns: B's; colour scale and bar
label from the measure's range and direction), ``.csv`` (the matrix) and ``.json`` (with the
measure's settings, e.g. a reduction it applied, and both files' provenance); for models with
equally many layers, ``layer_matched__<b>.png`` (one panel per measure: its value of each layer
of A with the same layer of B, on the measure's own scale and labelled with its direction) and
``layer_matched.csv`` (one row per model, measure and layer), printed as tables too.

Uncertainty (:mod:`repsim.stats`, through the registry, for every measure): ``--intervals``
adds the delete-one jackknife interval over inputs at ``--level`` to every map, ``--n-perm N``
its baseline from N shuffles of B's inputs (``low``/``high``, ``baseline_mean``,
``baseline_high``, ``calibrated``, ``p``, ``p_adjusted`` in the JSON).

``--reduction`` (default ``gap``) applies to every measure: the CCA family needs fewer features
than inputs, which ``gap`` and small ``pool<k>`` give for the usual widths and ``flatten``
rarely does. ``--out`` holds one run's files: an earlier run's folder is replaced as a whole,
and only with ``--overwrite`` (see :mod:`analyses.paths`).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from analyses.activations import DEFAULT_CACHE, activations_of, check_distinct_names, model_label
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.outputs import title_of, write_similarity
from analyses.paths import run_folder
from repsim import plot
from repsim.measures import MEASURES, Measure, SimilarityResult, get_measure, similarity_matrix
from repsim.stats.maps import check_uncertainty
from repsim.store import ActivationFile

DEFAULT_MEASURES = ("linear_cka", "pwcca", "procrustes", "rsa", "mutual_knn")
PANELS_PER_ROW = 3  # of the layer-matched figure


@dataclass(frozen=True)
class MeasureSpec:
    """One ``--measure`` entry: a registered measure's ``name`` and its ``params``, as
    (key, value) pairs in the order given."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MeasureSpec:
        """``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE...]``, checked by building the measure."""
        name, colon, rest = text.partition(":")
        if colon and not rest:
            raise ValueError(f"{text!r} has a ':' but no parameters; write NAME:KEY=VALUE or "
                             "just NAME")
        params = [_parameter(item, text) for item in rest.split(",")] if rest else []
        keys = [key for key, _ in params]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"{text!r} sets {repeated} more than once; give each parameter "
                             "once")
        spec = cls(name.strip(), tuple(params))
        spec.build()
        return spec

    def build(self) -> Measure:
        """The configured measure; unknown names and parameters, or bad values, raise
        ValueError (naming the known measures, or the parameter)."""
        try:
            return get_measure(self.name, **dict(self.params))
        except ValueError as err:
            raise ValueError(f"{str(self)!r}: {err}") from None

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{key}={_text(value)}" for key, value in self.params)

    @property
    def folder(self) -> str:
        """The output folder of this measure: 'rsa', 'rsa-compare=pearson'."""
        return str(self).replace(":", "-").replace(",", "-")


def _parameter(item: str, text: str) -> tuple[str, Any]:
    key, equals, value = (part.strip() for part in item.partition("="))
    if not equals or not key.isidentifier():
        raise ValueError(f"{text!r}: parameter {item.strip()!r} is not KEY=VALUE; write e.g. "
                         "rsa:compare=pearson")
    return key, _value(value)


def _value(text: str) -> Any:
    """A parameter value: true/false → bool, none → None, then int, float, else the text."""
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _text(value: Any) -> str:
    """The inverse of :func:`_value`: the text that reads back as ``value``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def measure_option(text: str) -> str:
    """argparse type of ``--measure``: a spec :meth:`MeasureSpec.parse` accepts, in its
    canonical form."""
    try:
        return str(MeasureSpec.parse(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    a: str                                      # reference model: checkpoint or .h5 file
    b: tuple[str, ...]                          # models compared with a: checkpoints or .h5
    out: str = "similarity-out"                 # output folder
    measure: tuple[str, ...] = DEFAULT_MEASURES  # NAME or NAME:KEY=VALUE,... (MeasureSpec)
    n: int = 2000                               # inputs (0: the whole split)
    seed: int = 0                               # which inputs, when n is a subset
    split: str = "test"                         # "train" or "test"
    reduction: str = "gap"                      # flatten, gap or pool<k>, for every measure
    layers: tuple[str, ...] | None = None       # module names (None: each file's)
    level: float = 0.95                         # of the intervals (--intervals)
    intervals: bool = False                     # jackknife intervals over inputs on every map
    n_perm: int = 0                             # shuffles of B's inputs per map (0: none)
    cache: str = str(DEFAULT_CACHE)             # activation cache folder
    data_root: str | None = None                # dataset folder
    device: str = "cpu"                         # torch device of extraction and measures
    threads: int | None = None                  # torch CPU threads (None: torch's choice)
    overwrite: bool = False                     # replace an earlier run's --out

    def __post_init__(self):  # refused before any work: a bad or repeated measure, ...
        self.specs()
        check_uncertainty(self.level, self.n_perm)  # ... a bad level or number of shuffles

    def specs(self) -> tuple[MeasureSpec, ...]:
        """The parsed ``measure`` entries: at least one, none listed twice."""
        if isinstance(self.measure, str) or not self.measure:
            raise ValueError(f"measure must be a non-empty list of measure specs, got "
                             f"{self.measure!r}; e.g. ('linear_cka', 'rsa:compare=pearson')")
        specs = tuple(MeasureSpec.parse(text) for text in self.measure)
        texts = [str(spec) for spec in specs]
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise ValueError(f"--measure lists {repeated} more than once; list each measure "
                             "(with its parameters) once")
        return specs


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.similarity", __doc__, Settings)
    p.add("a", help="reference model: checkpoint or .h5 file")
    p.add("b", nargs="+", help="models to compare with --a")
    p.add("out", help="output folder (%(default)s)")
    known = ", ".join(f"{name} ({cls.direction})" for name, cls in sorted(MEASURES.items()))
    p.add("measure", nargs="+", type=measure_option, metavar="NAME[:KEY=VALUE,...]",
          help=f"measures and their parameters; registered: {known} (default: "
               f"{' '.join(DEFAULT_MEASURES)})")
    p.shared("n", "seed", "split", "reduction", "layers", "level",
             n={"help": "test inputs (%(default)s; 0: all)"},
             seed={"help": "which inputs when --n is a subset, and the shuffles of --n-perm "
                           "(%(default)s)"},
             reduction={"help": "flatten, gap or pool<k> (k >= 1) of each conv layer, for "
                                "every measure (%(default)s)"})
    p.add("intervals", action="store_true",
          help="jackknife intervals over inputs on every map, at --level")
    p.shared("n_perm", "cache", "data_root", "device", "threads", "overwrite")
    return p


def direction_label(result: SimilarityResult) -> str:
    """'similarity, higher = more alike' or 'distance, lower = more alike'."""
    return ("similarity, higher" if result.direction == "similarity"
            else "distance, lower") + " = more alike"


def layer_matched_figure(results: Mapping[str, SimilarityResult], *, name_a: str,
                         name_b: str) -> plt.Figure:
    """One panel per measure ({spec: (L, L) result}): its value of layer i of a with layer i of
    b against i, on the measure's declared range (an infinite end left to the data), with a
    dashed line at its value for identical representations, its direction on the y axis and
    its interval as a band where the results have one."""
    first = next(iter(results.values()))
    columns = min(len(results), PANELS_PER_ROW)
    rows = math.ceil(len(results) / columns)
    width = max(3.2, 0.25 * len(first.layers_a) + 1.5)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 2.9 * rows),
                             squeeze=False, layout="constrained")
    x = np.arange(len(first.layers_a))
    for ax, (spec, result) in zip(axes.flat, results.items()):
        ax.plot(x, result.diagonal(), marker="o", markersize=3)
        if result.low is not None:  # --intervals
            ax.fill_between(x, np.diagonal(result.low), np.diagonal(result.high), alpha=0.25,
                            linewidth=0)
        ax.axhline(result.identical, color="0.4", linestyle="--", linewidth=1)
        low, high = result.value_range
        pad = 0.03 * (high - low) if math.isfinite(high - low) else 0.0
        ax.set_ylim(low - pad if math.isfinite(low) else None,
                    high + pad if math.isfinite(high) else None)
        ax.set_title(spec if spec == result.measure else f"{result.label}: {spec}", fontsize=9)
        ax.set_ylabel(f"{result.label}\n({direction_label(result)})", fontsize=8)
        ax.set_xticks(x, plot.short_labels(first.layers_a), rotation=90, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    fig.suptitle(f"same layer of {name_a} and {name_b} ({first.reduction}, n={first.n}); "
                 "dashed: identical", fontsize=10)
    return fig


def layer_matched(results: Mapping[str, Mapping[str, SimilarityResult]]
                  ) -> dict[str, Mapping[str, SimilarityResult]]:
    """The models ({stem: {spec: result}}) with as many layers as the reference (whose maps'
    diagonals are the layer-matched values)."""
    return {stem: maps for stem, maps in results.items()
            if all(len(r.layers_a) == len(r.layers_b) for r in maps.values())}


def write_layer_matched(results: Mapping[str, Mapping[str, SimilarityResult]],
                        names: Mapping[str, str], reference: str, out: Path) -> None:
    """For each model ({stem: {spec: result}}) with as many layers as the reference:
    ``layer_matched__<stem>.png`` and a printed table, and all of them in
    ``layer_matched.csv``; ``names`` labels each stem."""
    same = layer_matched(results)
    if not same:
        return
    with (out / "layer_matched.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "measure", "direction", "depth", "layer", "value"])
        for stem, maps in same.items():
            plot.save_figure(layer_matched_figure(maps, name_a=reference, name_b=names[stem]),
                             out / f"layer_matched__{stem}.png")
            for spec, result in maps.items():
                writer.writerows([names[stem], spec, result.direction, i, layer, f"{v:.10g}"]
                                 for i, (layer, v) in enumerate(zip(result.layers_a,
                                                                    result.diagonal())))
            print_layer_matched(maps, reference, names[stem])


def print_layer_matched(maps: Mapping[str, SimilarityResult], reference: str, name: str) -> None:
    first = next(iter(maps.values()))
    print(f"\nsame layer of {reference} and {name} ({first.reduction}, n={first.n}):")
    print(f"{'layer':>16} " + " ".join(f"{spec[:22]:>22}" for spec in maps))
    print(f"{'':>16} " + " ".join(f"{r.direction:>22}" for r in maps.values()))
    diagonals = [r.diagonal() for r in maps.values()]
    for i, layer in enumerate(plot.short_labels(first.layers_a)):
        print(f"{layer:>16} " + " ".join(f"{d[i]:>22.4f}" for d in diagonals))


def compare(a: ActivationFile, b: ActivationFile, specs: Sequence[MeasureSpec], stem: str,
            settings: Settings, out: Path) -> dict[str, SimilarityResult]:
    """Every measure of ``specs`` between ``a`` and ``b``, each written to its folder."""
    results = {}
    for spec in specs:
        try:
            result = similarity_matrix(a, b, spec.build(), reduction=settings.reduction,
                                       layers_a=settings.layers, layers_b=settings.layers,
                                       device=settings.device,
                                       level=settings.level if settings.intervals else None,
                                       n_perm=settings.n_perm, seed=settings.seed)
        except NotImplementedError as err:  # a measure without the resampling they need
            raise ValueError(f"--intervals/--n-perm: {err}") from None
        folder = out / spec.folder
        folder.mkdir(exist_ok=True)
        write_similarity(result, stem, folder, name_a=model_label(a), name_b=model_label(b))
        print(f"{title_of(result)}: {model_label(a)} vs {model_label(b)}")
        results[str(spec)] = result
    return results


def run(settings: Settings, *,
        into: Path | None = None) -> dict[str, dict[str, SimilarityResult]]:
    """Compare ``settings.a`` with each of ``settings.b`` by every measure into
    ``settings.out``; ``into``: the folder to write in instead, when a caller (the report)
    stages the run. Returns {file stem of b: {measure spec: result}}."""
    specs = settings.specs()
    sources = list(dict.fromkeys([settings.a, *settings.b]))
    check_distinct_names(sources)
    reductions = tuple(sorted({settings.reduction, "gap"}))  # gap too: the probe reuses it
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--a": [settings.a], "--b": settings.b},
                    data_root=settings.data_root, cache=settings.cache) as out, \
            ExitStack() as files:
        acts = {source: files.enter_context(activations_of(
                    source, settings.split, n=settings.n, seed=settings.seed,
                    reductions=reductions, cache=settings.cache, data_root=settings.data_root,
                    device=settings.device)) for source in sources}
        results, names = {}, {}
        for source in dict.fromkeys(settings.b):
            stem = Path(source).stem
            names[stem] = model_label(acts[source])
            results[stem] = compare(acts[settings.a], acts[source], specs,
                                    f"{Path(settings.a).stem}__vs__{stem}", settings, out)
        write_layer_matched(results, names, model_label(acts[settings.a]), out)
        write_settings(settings, out)
    print(f"\nwrote {Path(settings.out)}/")
    return results


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
