"""Linear regression fit R² between the layers of two networks (Kornblith et al. 2019's
baseline).

``"linear_regression_r2"`` (:class:`LinearRegressionR2`): entry (i, j) of a map is the R² of
predicting layer j of **b** (all its centred neurons at once) from layer i of **a** by least
squares with an intercept: rows predict columns. With Q_a an orthonormal basis of a's centred
column space (:mod:`repsim.measures.cca`) and Y b's centred layer,

    R² = 1 − min_B ‖Y − X_a B‖²_F / ‖Y‖²_F = ‖Q_aᵀY‖²_F / ‖Y‖²_F,

the fraction of b's total variance that a linear map of a explains. Not symmetric: swap a and
b for the other direction. In [0, 1], 1 for identical layers; invariant to any invertible
linear map of the predicting layer (a) and to orthogonal maps, isotropic scaling and
translation of the predicted one (b), not to other linear maps of b (they reweigh its
neurons' variances).

Each layer is prepared as in the CCA family (its SVD once, Y = Q_b S_b V_bᵀ, so
‖Q_aᵀY‖²_F = ‖Q_aᵀQ_b S_b‖²_F) and all pairs come from one GEMM. ``max_dims=k`` keeps every
layer's top k principal directions on both sides: a predicts b's top-k part from its own.
Too few inputs: a layer a whose d kept directions fill the n − 1 dimensions of the centred
inputs predicts anything with R² = 1; such pairs are refused (name the fixes: a smaller
reduction, more inputs, ``max_dims``); short of that, R² of unrelated layers is about
d_a/(n − 1), so compare with a permutation baseline. A constant layer on either side gives
NaN with a warning naming it (a constant predictor's least-squares R² would be 0, a constant
target's 0/0). Bootstrap replicates resample inputs within the kept subspaces, as for CCA.
"""

from __future__ import annotations

import numpy as np

from repsim.measures.base import register
from repsim.measures.cca import BasisMeasure, block_sums

__all__ = ["LinearRegressionR2"]


@register
class LinearRegressionR2(BasisMeasure):
    """R² of predicting layer j of b from layer i of a by least squares: ‖Q_aᵀY_b‖²_F /
    ‖Y_b‖²_F (module docstring); ``max_dims`` keeps each layer's top principal directions."""

    name = "linear_regression_r2"
    label = "linear regression R² (a predicts b)"
    description = ("R² of predicting b's layer (column) from a's layer (row) by least squares "
                   "(similarity, 1 = b is a linear map of a; not symmetric; not a distance)")

    def settings(self):
        return {**super().settings(), "predicts": "rows (layers of a) predict columns (b)"}

    def _values(self, a, b, cross):
        variance = b.scales.square()
        return (block_sums(cross.square() * variance, a.dims, b.dims)
                / block_sums(variance[None, :], (1,), b.dims))

    def _degenerate(self, dims_a, dims_b, room):
        return np.broadcast_to(dims_a[:, None] >= room, (len(dims_a), len(dims_b)))

    def _why_degenerate(self, da, db, room):
        return (f"a's {da} dimensions span all {room} dimensions of the centred inputs, so they "
                f"predict any layer with R² = 1 whatever the data")
