"""``cka_ci``: one CKA value of two representations with its interval over inputs."""

from __future__ import annotations

from typing import Any

import torch

from repsim.measures.cka import LinearCKA, RBFCKA, prepared_pair
from repsim.stats.intervals import JACKKNIFE, Interval, jackknife_bounds

__all__ = ["cka_ci"]


def cka_ci(x: Any, y: Any, *, level: float = 0.95, debiased: bool = False,
           kernel: str = "linear", threshold: float = 1.0,
           device: str | torch.device = "cpu") -> Interval:
    """CKA of x (n, p₁) and y (n, p₂), rows paired, with its ``level`` interval.

    The interval is the delete-one jackknife's (:mod:`repsim.stats.intervals`): it covers the
    population CKA over the draw of the n inputs. With ``debiased=True`` it did so in ≥ 90 %
    of simulated draws at every n and width tested; the biased estimator is biased upwards at
    few inputs for wide layers, and where that bias exceeds the standard error a
    :class:`~repsim.stats.BiasWarning` says the interval may not cover. For the RBF kernel
    the bandwidth stays the one chosen from all n inputs.
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    measure = (LinearCKA(debiased=debiased) if kernel == "linear"
               else RBFCKA(threshold=threshold, debiased=debiased))
    a, b, comparison = prepared_pair(measure, x, y, device)
    estimate = measure.compare(a, b, comparison).cpu().numpy()
    centre, se, low, high = (float(v[0, 0]) for v in jackknife_bounds(
        estimate, measure.jackknife(a, b, comparison), level, what="cka_ci"))
    return Interval(estimate=float(estimate[0, 0]), low=low, high=high, centre=centre, se=se,
                    level=level, method=JACKKNIFE,
                    covers="population CKA over the draw of inputs, for fixed networks")
