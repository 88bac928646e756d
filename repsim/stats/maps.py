"""Uncertainty of a whole layer-by-layer map, through the measure registry: the intervals
and permutation baselines of :func:`repsim.similarity_matrix` and :func:`repsim.cka.cka_matrix`
(``level=``, ``n_perm=``), from the sides the map was computed from, so no replicate reads a
layer or recomputes a Gram matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from repsim.measures.base import Comparison, Measure
from repsim.stats.intervals import check_level, jackknife_bounds, jackknife_method
from repsim.stats.permutation import check_n_perm, permutation_baseline
from repsim.stats.tests import holm

__all__ = ["check_uncertainty", "map_uncertainty"]


def check_uncertainty(level: float | None, n_perm: int) -> None:
    """Refuse a bad ``level`` or ``n_perm`` before any layer is read."""
    if level is not None:
        check_level(level)
    check_n_perm(n_perm)


def map_uncertainty(measure: Measure, a: Any, b: Any, comparison: Comparison,
                    estimate: np.ndarray, *, level: float | None, n_perm: int,
                    seed: int) -> dict[str, Any]:
    """The :class:`repsim.measures.SimilarityResult` uncertainty fields of the (La, Lb) map
    ``estimate`` of two prepared sides: ``low``/``high`` (jackknife over inputs, when ``level``
    is given) and the permutation baseline with ``p``/``p_adjusted`` (Holm over all cells)
    from ``n_perm`` shuffles of b's inputs drawn with ``seed`` (when ``n_perm`` > 0)."""
    fields: dict[str, Any] = {}
    uncertainty: dict[str, Any] = {}
    if level is not None:
        leave_out = measure.jackknife(a, b, comparison)
        _, _, low, high = jackknife_bounds(estimate, leave_out, level,
                                           what=f"{measure.label} intervals")
        fields.update(low=low, high=high)
        uncertainty.update(level=level, interval=jackknife_method(len(leave_out), comparison.n))
    if n_perm:
        baseline = permutation_baseline(measure, a, b, comparison, estimate, n_perm=n_perm,
                                        seed=seed)
        uncertainty.update(n_perm=baseline.pop("n_perm"), seed=baseline.pop("seed"),
                           p_adjusted="Holm over all cells of the map")
        fields.update(baseline, p_adjusted=holm(baseline["p"]))
    return {**fields, "uncertainty": uncertainty} if uncertainty else {}
