"""The files of one layer-by-layer comparison of two models, for any measure:
``<stem>.png`` (the heatmap, rows model A's layers, columns model B's, coloured on the
measure's range and labelled with its direction), ``<stem>.csv`` (the matrix) and
``<stem>.json`` (the matrix with the measure's settings and both sources' provenance)."""

from __future__ import annotations

import json
from pathlib import Path

from repsim import plot
from repsim.cka import CKAResult
from repsim.measures import SimilarityResult


def title_of(result: SimilarityResult) -> str:
    """Heatmap title: the estimator, reduction and n, e.g. 'linear CKA (flatten, n=2000)'."""
    if not isinstance(result, CKAResult):
        return f"{result.label} ({result.reduction}, n={result.n})"
    kind = "debiased " if result.debiased else ""
    estimator = f", minibatch {result.batch_size}" if result.estimator == "minibatch" else ""
    return f"{kind}{result.kernel} CKA ({result.reduction}{estimator}, n={result.n})"


def write_similarity(result: SimilarityResult, stem: str, out: Path, *, name_a: str,
                     name_b: str, calibrated: bool = False,
                     alpha: float | None = None) -> list[Path]:
    """Write ``out/<stem>.png``, ``.csv`` and ``.json`` of ``result``; ``name_a``/``name_b``
    label the axes and go into the JSON beside the result's own record. ``calibrated`` and
    ``alpha``: the heatmap's options of :func:`repsim.plot.result_heatmap`."""
    png, table, record = (out / f"{stem}{suffix}" for suffix in (".png", ".csv", ".json"))
    plot.save_figure(plot.result_heatmap(result, name_a=name_a, name_b=name_b,
                                         title=title_of(result), calibrated=calibrated,
                                         alpha=alpha), png)
    result.write_csv(table)
    record.write_text(json.dumps({**result.to_dict(), "model_a": name_a, "model_b": name_b},
                                 indent=1))
    return [png, table, record]
