"""Uncertainty for every number: intervals over inputs (delete-one jackknife), permutation
baselines, intervals and tests over seeds, and Holm's correction for many layers.

* :func:`cka_ci`: one CKA value with its interval.
* ``level=`` / ``n_perm=`` of :func:`repsim.similarity_matrix` and :func:`repsim.cka.cka_matrix`:
  the same for whole maps (:func:`map_uncertainty`), for any registered measure.
* :mod:`repsim.stats.groups`: seed groups, the reference's noise ceiling, and tests per layer.
"""

from repsim.stats.intervals import (
    BiasWarning,
    Interval,
    jackknife_bounds,
    t_interval,
    wilson_interval,
)
from repsim.stats.maps import map_uncertainty
from repsim.stats.pair import cka_ci
from repsim.stats.permutation import permutation_baseline
from repsim.stats.tests import holm

__all__ = ["BiasWarning", "Interval", "cka_ci", "holm", "jackknife_bounds", "map_uncertainty",
           "permutation_baseline", "t_interval", "wilson_interval"]
