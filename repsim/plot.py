"""Publication figures: heatmaps of CKA and the other measures, layer-matched CKA lines, probe
accuracy by depth, each optionally with its uncertainty (interval bands, a noise-ceiling band,
marked layers, heatmap cells greyed out where not above their permutation baseline).

Every function returns a matplotlib ``Figure`` (shown inline in Jupyter) and draws only what
it is given; the numbers behind each figure are written as data by the caller.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from repsim.measures.result import SimilarityResult

Bands = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # label → (low, high), each (L,)

ANNOTATE_UP_TO = 12   # layers per side below which heatmap cells show their values
BAND_ALPHA = 0.2      # opacity of interval bands

# One colour per training method in every figure (the tab10 colours); a line whose label
# starts with a method's name ("auglocal", "AugLocal (3 seeds)", "bp_seed1") gets its colour.
METHOD_COLOURS = {"bp": "#1f77b4", "auglocal": "#d62728", "dgl": "#2ca02c",
                  "infopro": "#9467bd", "predsim": "#ff7f0e", "man": "#8c564b",
                  "hpff": "#e377c2", "mlaan": "#17becf"}
OTHER_COLOURS = ("#7f7f7f", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39")


def colour_of(label: str) -> str:
    """The colour of a line labelled ``label``: its method's (:data:`METHOD_COLOURS`, by the
    label's first word), else one of :data:`OTHER_COLOURS` chosen by the label itself, so a
    label has one colour in every figure whatever else the figure shows."""
    first = re.split(r"[^a-z0-9]", label.lower(), maxsplit=1)[0]
    if first in METHOD_COLOURS:
        return METHOD_COLOURS[first]
    return OTHER_COLOURS[zlib.crc32(label.encode()) % len(OTHER_COLOURS)]


def short_labels(names: Sequence[str]) -> list[str]:
    """Drop the module-path prefix all names share: ['layers.stem', 'layers.s1b1'] →
    ['stem', 's1b1']."""
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def cka_heatmap(matrix: np.ndarray, layers_a: Sequence[str], layers_b: Sequence[str], *,
                name_a: str, name_b: str, title: str = "CKA",
                annotate: bool | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                label: str = "CKA", mask: np.ndarray | None = None) -> plt.Figure:
    """Heatmap of a (La, Lb) map: rows are model A's layers, columns model B's.

    The colour scale is fixed to ``value_range`` ([0, 1] for CKA) so maps are comparable, and
    the colour bar is labelled ``label``; NaN cells (a constant layer) and the cells where the
    (La, Lb) boolean ``mask`` is True stay grey.
    """
    matrix = np.asarray(matrix, dtype=float)
    la, lb = matrix.shape
    if annotate is None:
        annotate = max(la, lb) <= ANNOTATE_UP_TO
    size = (max(4.0, 0.35 * lb + 2.5), max(3.5, 0.35 * la + 1.8))
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set_facecolor("0.8")
    sns.heatmap(matrix, vmin=value_range[0], vmax=value_range[1], cmap="magma", square=True, ax=ax,
                mask=mask, annot=annotate, fmt=".2f", annot_kws={"fontsize": 7},
                xticklabels=short_labels(layers_b), yticklabels=short_labels(layers_a),
                cbar_kws={"label": label, "shrink": 0.8})
    ax.set_xlabel(f"{name_b}: layer")
    ax.set_ylabel(f"{name_a}: layer")
    ax.set_title(f"{name_a} vs {name_b}\n{title}", fontsize=10)
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)
    return fig


def result_heatmap(result: SimilarityResult, *, name_a: str, name_b: str, title: str,
                   annotate: bool | None = None, calibrated: bool = False,
                   alpha: float | None = None) -> plt.Figure:
    """:func:`cka_heatmap` of any measure's result, with the colour scale and bar label its
    measure declares (e.g. "linear CKA (similarity, 1 = identical)").

    From a result with its permutation baseline (``n_perm`` > 0): ``calibrated`` shows the
    calibrated score (0 = the shuffled-input baseline, 1 = identical) on [0, 1]; ``alpha``
    greys out the cells whose Holm-adjusted p exceeds it (not above their baseline).
    """
    matrix, value_range, label = result.matrix, result.colour_range, result.axis_label
    if calibrated:
        matrix = _baseline_field(result, "calibrated", "calibrated")
        value_range = (0.0, 1.0)
        label = f"calibrated {result.label}\n(0 = shuffled inputs, 1 = identical)"
    mask = None
    if alpha is not None:
        with np.errstate(invalid="ignore"):
            mask = ~(_baseline_field(result, "p_adjusted", "alpha") <= alpha)
        title = f"{title}\ngrey: Holm p > {alpha:g} vs shuffled inputs"
    return cka_heatmap(matrix, result.layers_a, result.layers_b, name_a=name_a,
                       name_b=name_b, title=title, annotate=annotate, value_range=value_range,
                       label=label, mask=mask)


def _baseline_field(result: SimilarityResult, field: str, option: str) -> np.ndarray:
    values = getattr(result, field)
    if values is None:
        raise ValueError(f"{option}= needs the result's permutation baseline, which it lacks; "
                         "compute the map with n_perm > 0 (e.g. n_perm=1000)")
    return values


def layer_matched_plot(diagonals: Mapping[str, Sequence[float]], layers: Sequence[str], *,
                       reference: str, title: str = "CKA", bands: Bands | None = None,
                       ceiling: tuple[Sequence[float], Sequence[float], Sequence[float]] |
                       None = None, ceiling_label: str = "noise ceiling (reference seeds)",
                       marked: Mapping[str, Sequence[bool]] | None = None,
                       marked_label: str = "significant") -> plt.Figure:
    """CKA of layer i of ``reference`` with layer i of each other model: one line per model.

    ``diagonals`` maps a legend label (e.g. "AugLocal") to its L values; ``bands`` maps a label
    to its (low, high) interval, each (L,), shaded in the line's colour; ``ceiling`` (mean,
    low, high), each (L,), is a grey band around a dashed line; ``marked`` maps a label to (L,)
    booleans, the layers drawn with a star (e.g. where a test is significant), explained in
    the legend by ``marked_label``.
    """
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(layers) + 2), 3.6), layout="constrained")
    x = np.arange(len(layers))
    if ceiling is not None:
        mean, low, high = ceiling
        ax.fill_between(x, low, high, color="0.5", alpha=BAND_ALPHA, linewidth=0,
                        label=ceiling_label)
        ax.plot(x, mean, color="0.4", linestyle="--", linewidth=1)
    star = {"linestyle": "none", "marker": "*", "markersize": 11, "markeredgecolor": "black",
            "markeredgewidth": 0.5}
    for label, values in diagonals.items():
        line = _line_with_band(ax, x, values, label, (bands or {}).get(label))
        hits = np.asarray((marked or {}).get(label, np.zeros(len(x))), dtype=bool)
        if hits.any():
            ax.plot(x[hits], np.asarray(values)[hits], color=line.get_color(), **star)
    if marked and any(np.any(m) for m in marked.values()):
        ax.plot([], [], color="0.7", label=marked_label, **star)  # the legend's entry
    ax.set_xticks(x, short_labels(layers), rotation=90)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("CKA with the same layer")
    ax.set_title(f"{title}\nreference: {reference}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def probe_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
               chance: float, reduction: str, match_dim: int | None = None,
               bands: Bands | None = None, band_label: str | None = None) -> plt.Figure:
    """Linear-probe test accuracy against relative depth (0 = first layer, 1 = last).

    ``curves`` maps a model label to (relative depths, test accuracies); ``bands`` maps a
    label to the (low, high) interval of its accuracies, shaded in the line's colour;
    ``match_dim``: the wider layers were probed on a random projection to this many features
    (in the title); ``band_label`` says what the bands are (the legend's title).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for label, (depth, accuracy) in curves.items():
        _line_with_band(ax, depth, accuracy, label, (bands or {}).get(label))
    ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("relative depth")
    ax.set_ylabel(f"linear probe test accuracy ({reduction})")
    ax.set_ylim(0, 1.02)
    if match_dim is not None:
        ax.set_title(f"layers wider than {match_dim}: random projection to {match_dim}",
                     fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, title=band_label, title_fontsize=7)
    return fig


def _line_with_band(ax: plt.Axes, x: Sequence[float], values: Sequence[float], label: str,
                    band: tuple[Sequence[float], Sequence[float]] | None) -> plt.Line2D:
    """A line with point markers in the label's colour (:func:`colour_of`) and, when ``band``
    (low, high) is given, its shaded interval."""
    line, = ax.plot(x, values, marker="o", markersize=3, label=label, color=colour_of(label))
    if band is not None:
        ax.fill_between(x, band[0], band[1], color=line.get_color(), alpha=BAND_ALPHA,
                        linewidth=0)
    return line


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write a PNG (or any format matplotlib knows by suffix) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def depth_panels(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                 *, bands: Mapping[str, Bands] | None = None, title: str | None = None,
                 references: Mapping[str, tuple[float, str]] | None = None) -> plt.Figure:
    """Several per-layer quantities against relative depth, one panel each, side by side.

    ``panels`` maps a panel's y-axis label to its curves, label → (relative depths, values),
    in the same order in every panel (so a label has the same colour in each). ``bands``
    maps a panel's label to the (low, high) interval of its curves (NaN bounds draw
    nothing); ``references`` maps a panel's label to (value, legend label) of a dashed
    horizontal line (e.g. chance).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.4),
                             layout="constrained", squeeze=False)
    for ax, (ylabel, curves) in zip(axes[0], panels.items()):
        for label, (depth, values) in curves.items():
            _line_with_band(ax, depth, values, label, (bands or {}).get(ylabel, {}).get(label))
        if ylabel in (references or {}):
            value, legend = references[ylabel]
            ax.axhline(value, color="0.4", linestyle="--", linewidth=1, label=legend)
        ax.set_xlabel("relative depth")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def reconstruction_grid(originals: np.ndarray, rows: Mapping[str, np.ndarray], *,
                        title: str | None = None) -> plt.Figure:
    """Images in a grid: the first row ``originals`` (k, C, H, W), then one row per entry of
    ``rows`` (label → (k, C, H, W), e.g. a layer's reconstructions), pixels in [0, 1]
    (clipped); one channel is drawn in grey, three as RGB."""
    k = len(originals)
    named = {"input": originals, **rows}
    fig, axes = plt.subplots(len(named), k, figsize=(0.9 * k + 1.2, 0.9 * len(named) + 0.4),
                             layout="constrained", squeeze=False)
    for ax_row, (label, images) in zip(axes, named.items()):
        for ax, image in zip(ax_row, np.clip(np.asarray(images), 0, 1)):
            grey = image.shape[0] == 1
            ax.imshow(image[0] if grey else image.transpose(1, 2, 0), cmap="gray" if grey
                      else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
