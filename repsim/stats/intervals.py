"""Intervals: the delete-one jackknife over inputs, Wilson intervals for accuracies, and
Student-t intervals over seeds.

Why the jackknife and not the bootstrap: a bootstrap draw repeats inputs, and CKA counts a
repeated input's pairing with itself, so replicates are biased upwards against the estimate.
In this toolkit's simulations (``benchmarks/coverage.py``) percentile and basic bootstrap
intervals of linear CKA covered the population value in as few as 0–76 % of draws, while the
jackknife interval of debiased CKA covered it in 91–98 % at every n and width tried, p ≫ n
included. The interval is centred at the jackknife's bias-corrected estimate n·θ̂ − (n−1)·θ̄₍·₎
with half-width z·se, se² = (n−1)/n · Σᵢ(θ₍ᵢ₎ − θ̄₍·₎)²: it covers the population value of the
measure (for linear CKA ‖Σxy‖²_F / (‖Σxx‖_F ‖Σyy‖_F)) over the draw of inputs, for fixed
networks. The biased CKA estimator is biased upwards by O(p/n); where its jackknife bias
estimate exceeds its standard error the interval can miss, and :class:`BiasWarning` says so.
Measures without a closed-form delete-one jackknife use the grouped jackknife (inputs dealt
into at most 100 groups, :meth:`repsim.measures.Measure.jackknife`); its coverage is shown by
simulation for CKA only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["BiasWarning", "Interval", "check_level", "jackknife_bounds", "jackknife_method",
           "t_interval", "wilson_interval"]

JACKKNIFE = "delete-one jackknife over inputs, bias-corrected, normal quantiles"


class BiasWarning(RuntimeWarning):
    """An estimator's bias is large against its sampling error, so its interval may not cover."""


@dataclass(frozen=True)
class Interval:
    """One value with its interval: ``estimate`` (the estimator asked for), ``low``/``high``
    the bounds at ``level``, ``centre`` the bias-corrected estimate they surround, ``se`` the
    standard error, ``method`` how they were computed and ``covers`` what they cover."""

    estimate: float
    low: float
    high: float
    centre: float
    se: float
    level: float
    method: str
    covers: str


def check_level(level: float) -> float:
    """``level`` as a float in (0, 1), or a ValueError naming the fix."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a probability in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def jackknife_method(replicates: int, n: int) -> str:
    """How an interval from ``replicates`` leave-out values over n inputs was computed."""
    if replicates == n:
        return JACKKNIFE
    return (f"grouped jackknife over inputs ({replicates} groups), bias-corrected, normal "
            "quantiles")


def jackknife_bounds(estimate: np.ndarray, leave_one_out: np.ndarray, level: float, *,
                     what: str = "the estimate") -> tuple[np.ndarray, ...]:
    """(centre, se, low, high), each shaped like ``estimate``, from the (G, ...) values with
    input (or equal group of inputs) g left out: the delete-one jackknife for G = n, the
    grouped one otherwise. Warns (:class:`BiasWarning`) where |bias| > se for some entry."""
    n = len(leave_one_out)
    mean = leave_one_out.mean(0)
    se = np.sqrt((n - 1) / n * np.square(leave_one_out - mean).sum(0))
    centre = n * estimate - (n - 1) * mean
    half = scipy_stats.norm.ppf(0.5 + check_level(level) / 2) * se
    with np.errstate(invalid="ignore"):
        biased = np.abs(estimate - centre) > se
    if np.any(biased):
        warnings.warn(f"{what}: the jackknife bias estimate exceeds the standard error in "
                      f"{int(np.sum(biased))} of {biased.size} values, so their intervals may "
                      "not cover; use more inputs or a smaller reduction such as 'gap' (for "
                      "CKA: debiased=True, whose intervals cover at any width)",
                      BiasWarning, stacklevel=3)
    return centre, se, centre - half, centre + half


def wilson_interval(correct: int | np.ndarray, n: int, level: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of an accuracy ``correct``/``n`` (independent test inputs)."""
    z = scipy_stats.norm.ppf(0.5 + check_level(level) / 2)
    if n < 1:
        raise ValueError(f"an accuracy interval needs at least one test input, got n={n}")
    p = np.asarray(correct, dtype=np.float64) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def t_interval(values: np.ndarray, level: float,
               value_range: tuple[float, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over axis 0 of ``values`` (k, ...): Student-t with k − 1 degrees of
    freedom, for k ≥ 2 independent replicates (e.g. seeds).

    With a finite ``value_range`` (lo, hi) (a measure's, e.g. CKA's (0, 1)) the interval is
    computed on the logit scale of (v − lo) / (hi − lo) (for a measure in (−1, 1) that is
    Fisher's z up to a factor) and mapped back, so it stays inside the range and is
    asymmetric near its ends; where some value lies on or outside an end (a debiased estimate
    just below 0), the plain interval is cut to the range instead, which keeps its coverage
    (the true value lies in the range). The mean is the plain mean either way."""
    values = np.asarray(values, dtype=np.float64)
    k = len(values)
    if k < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds, got {k}; train more "
                         "seeds or use the interval over inputs")
    check_level(level)
    mean = values.mean(0)
    if value_range is None or not all(map(math.isfinite, value_range)):
        return (mean, *_t_bounds(values, level))
    lo, hi = value_range
    u = (values - lo) / (hi - lo)
    inside = np.all((u > 0) & (u < 1), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = _t_bounds(np.log(u / (1 - u)), level)
        logistic = [lo + (hi - lo) / (1 + np.exp(-b)) for b in (low, high)]
    plain = [np.clip(b, lo, hi) for b in _t_bounds(values, level)]
    return (mean, *(np.where(inside, a, b) for a, b in zip(logistic, plain)))


def _t_bounds(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The Student-t bounds of the mean over axis 0 of ``values`` (k, ...)."""
    k = len(values)
    half = (scipy_stats.t.ppf(0.5 + level / 2, k - 1) * values.std(0, ddof=1) / math.sqrt(k))
    mean = values.mean(0)
    return mean - half, mean + half
