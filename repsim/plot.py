"""Publication figures: heatmaps of CKA and the other measures, layer-matched CKA lines, probe
accuracy by depth.

Every function returns a matplotlib ``Figure`` (shown inline in Jupyter) and draws only what
it is given; the numbers behind each figure are written as data by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from repsim.measures.result import SimilarityResult

ANNOTATE_UP_TO = 12   # layers per side below which heatmap cells show their values


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
                label: str = "CKA") -> plt.Figure:
    """Heatmap of a (La, Lb) map: rows are model A's layers, columns model B's.

    The colour scale is fixed to ``value_range`` ([0, 1] for CKA) so maps are comparable, and
    the colour bar is labelled ``label``; NaN cells (a constant layer) stay grey.
    """
    matrix = np.asarray(matrix, dtype=float)
    la, lb = matrix.shape
    if annotate is None:
        annotate = max(la, lb) <= ANNOTATE_UP_TO
    size = (max(4.0, 0.35 * lb + 2.5), max(3.5, 0.35 * la + 1.8))
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set_facecolor("0.8")
    sns.heatmap(matrix, vmin=value_range[0], vmax=value_range[1], cmap="magma", square=True, ax=ax,
                annot=annotate, fmt=".2f", annot_kws={"fontsize": 7},
                xticklabels=short_labels(layers_b), yticklabels=short_labels(layers_a),
                cbar_kws={"label": label, "shrink": 0.8})
    ax.set_xlabel(f"{name_b}: layer")
    ax.set_ylabel(f"{name_a}: layer")
    ax.set_title(f"{name_a} vs {name_b}\n{title}", fontsize=10)
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)
    return fig


def result_heatmap(result: SimilarityResult, *, name_a: str, name_b: str, title: str,
                   annotate: bool | None = None) -> plt.Figure:
    """:func:`cka_heatmap` of any measure's result, with the colour scale and bar label its
    measure declares (e.g. "linear CKA (similarity, 1 = identical)")."""
    return cka_heatmap(result.matrix, result.layers_a, result.layers_b, name_a=name_a,
                       name_b=name_b, title=title, annotate=annotate,
                       value_range=result.colour_range, label=result.axis_label)


def layer_matched_plot(diagonals: Mapping[str, Sequence[float]], layers: Sequence[str], *,
                       reference: str, title: str = "CKA") -> plt.Figure:
    """CKA of layer i of ``reference`` with layer i of each other model: one line per model.

    ``diagonals`` maps a legend label (e.g. "AugLocal") to its L values.
    """
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(layers) + 2), 3.6), layout="constrained")
    x = np.arange(len(layers))
    for label, values in diagonals.items():
        ax.plot(x, values, marker="o", markersize=3, label=label)
    ax.set_xticks(x, short_labels(layers), rotation=90)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("CKA with the same layer")
    ax.set_title(f"{title}\nreference: {reference}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def probe_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
               chance: float, reduction: str, match_dim: int | None = None) -> plt.Figure:
    """Linear-probe test accuracy against relative depth (0 = first layer, 1 = last).

    ``curves`` maps a model label to (relative depths, test accuracies); ``match_dim``: the
    wider layers were probed on a random projection to this many features (in the title).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for label, (depth, accuracy) in curves.items():
        ax.plot(depth, accuracy, marker="o", markersize=3, label=label)
    ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("relative depth")
    ax.set_ylabel(f"linear probe test accuracy ({reduction})")
    ax.set_ylim(0, 1.02)
    if match_dim is not None:
        ax.set_title(f"layers wider than {match_dim}: random projection to {match_dim}",
                     fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write a PNG (or any format matplotlib knows by suffix) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
