"""Permutation baselines: a measure between two layers when one side's inputs are shuffled.

Shuffling the rows of b breaks the pairing of inputs while keeping each layer's geometry, so
the shuffled values are what the measure gives for unrelated inputs at this n and these widths
(for wide layers at small n, biased CKA of unrelated inputs is far above 0). From ``n_perm``
shuffles per layer pair: the baseline's mean and upper quantile, the p-value of "more alike
than unrelated inputs", (1 + #{shuffled at least as alike}) / (1 + n_perm), which is valid
(uniform or conservative) under the null for any n_perm, and the calibrated score
(value − baseline mean) / (identical − baseline mean): 0 at the baseline, 1 at identity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from repsim.measures.base import Comparison, Measure

__all__ = ["BASELINE_QUANTILE", "check_n_perm", "permutation_baseline", "permutations"]

BASELINE_QUANTILE = 0.95  # the baseline's upper end: 95 % of shuffles are less alike
PERMUTATION_CHUNK = 64  # shuffles compared at once: bounds the memory of resampled sides


def check_n_perm(n_perm: int) -> int:
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 0:
        raise ValueError(f"n_perm must be a whole number of shuffles ≥ 0 (0: no baseline), "
                         f"got {n_perm!r}")
    return int(n_perm)


def permutations(n: int, n_perm: int, seed: int) -> np.ndarray:
    """(n_perm, n) row orders, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(n_perm)]) if n_perm else \
        np.empty((0, n), dtype=np.int64)


def permutation_baseline(measure: Measure, a: Any, b: Any, comparison: Comparison,
                         observed: np.ndarray, *, n_perm: int, seed: int) -> dict[str, Any]:
    """Baseline fields of a (La, Lb) map ``observed`` from ``n_perm`` shuffles of b's rows:
    ``baseline_mean``, ``baseline_high`` (the 95 % quantile of the shuffles' values, the
    5 % quantile for a distance), ``p`` and ``calibrated``, each (La, Lb), with ``n_perm``
    and ``seed``."""
    orders = permutations(comparison.n, check_n_perm(n_perm), seed)
    null = np.concatenate([measure.replicates(a, b, None, orders[i:i + PERMUTATION_CHUNK],
                                              comparison)
                           for i in range(0, n_perm, PERMUTATION_CHUNK)])
    similarity = measure.direction == "similarity"
    as_alike = null >= observed if similarity else null <= observed
    p = (1 + as_alike.sum(0)) / (1 + n_perm)
    mean = null.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        calibrated = (observed - mean) / (measure.identical - mean)
    quantile = BASELINE_QUANTILE if similarity else 1 - BASELINE_QUANTILE
    return {"baseline_mean": mean, "baseline_high": np.quantile(null, quantile, axis=0),
            "p": np.where(np.isnan(observed), np.nan, p), "calibrated": calibrated,
            "n_perm": n_perm, "seed": seed}
