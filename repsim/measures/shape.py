"""Shape metrics between the layers of two networks: the angular Procrustes distance and the
partial-whitening family between it and CCA (Williams, Kunz, Kornblith & Linderman 2021,
"Generalized shape metrics on neural representations", NeurIPS; netrep's ``LinearMetric``).

``X`` (n, p₁) and ``Y`` (n, p₂) are two layers on the same n inputs. Each is centred (columns)
and scaled to unit Frobenius norm, X̂ = Xc / ‖Xc‖_F, then partially whitened as netrep's
``whiten`` does it, with X̂ᵀX̂ = V diag(λ) Vᵀ:

    X̂_α = X̂ V diag(α + (1 − α) / √max(λ_i, 10⁻⁷)) Vᵀ,

and the distance is the angle between the two after the best rotation Q:

    θ_α(X, Y) = arccos max_Q ⟨X̂_α Q, Ŷ_α⟩ / (‖X̂_α‖_F ‖Ŷ_α‖_F)
              = arccos ‖X̂_αᵀ Ŷ_α‖_* / (‖X̂_α‖_F ‖Ŷ_α‖_F)      (‖·‖_*: nuclear norm)

in radians, in [0, π/2]: 0 for layers equal up to translation, rotation and isotropic scaling
(α = 1; up to any invertible linear map for α = 0), π/2 for orthogonal ones; a metric
(symmetric, triangle inequality). ``"procrustes"`` (:class:`Procrustes`) is α = 1, the angular
Procrustes distance; ``"shape_metric"`` (:class:`ShapeMetric`) takes α ∈ [0, 1] (α = 0 is
CCA-like: the mean canonical correlation of full-rank layers of equal width is cos θ₀).

Conventions against netrep: netrep whitens the raw centred layer, so for 0 < α < 1 its value
changes when a layer is rescaled (the two terms of α + (1 − α)λ^−½ scale differently); here
each layer is first scaled to unit norm, which makes every α invariant to isotropic scaling and
changes nothing at α = 0 and α = 1 (scale-free in netrep too): the value is netrep's
``LinearMetric(alpha, score_method="angular")`` of the centred unit-norm layers, its
eigenvalue floor 10⁻⁷ (``eigval_tol``: directions with less than 10⁻⁷ of a layer's variance
are whitened less, so noise directions are not blown up) included. netrep zero-pads the
narrower layer to a common width; that is not needed: the (p₁, p₂) product has a nuclear norm
for any widths and zero columns do not change it. netrep clips the cosine into [−1, 1]; here
see "Rounding".

Computation: per layer once (:meth:`ShapeMetric.prepare`): centre; a layer with p > n is
reduced to n coordinates (Xcᵀ = QR, so Xc = RᵀQᵀ and the angle sees only Rᵀ: Qᵀ has
orthonormal rows); normalise; whiten (eigh of the (r, r) X̂ᵀX̂, r = min(n, p)). Per pair: the
singular values of the (r₁, r₂) product X̂_αᵀŶ_α, from one GEMM of each layer of a with all
layers of b side by side. float64 throughout.

Rounding: ‖X̂ᵀŶ‖_* ≤ ‖X̂‖_F ‖Ŷ‖_F holds exactly, but the computed cosine carries an error of
order r·ε, which arccos turns into an angle error of order √(r·ε) near 0 (and into NaN for a
cosine a rounding above 1). A cosine within ``ROUNDING``·r·ε of 1 therefore reads as θ = 0:
angles below √(2·ROUNDING·r·ε) (3·10⁻⁶ at r = 1,024) cannot be resolved from the cosine;
identical layers give exactly 0.
Nothing else is clamped: a cosine further above 1 would be a bug and gives NaN.

Degenerate cases: a constant layer gives NaN with a :class:`ConstantRepresentationWarning`
naming it. α = 0 with a layer of p ≥ n − 1 features is refused: full whitening turns such a
layer into an orthonormal basis of all n − 1 dimensions of the centred inputs, so its distance
to any layer depends only on the widths.

Resampling (:meth:`ShapeMetric.resample`): each layer's centred unit-norm coordinates (in
which the layer is exact) are kept; a replicate takes their rows, centres, normalises and
whitens them again: what :meth:`ShapeMetric.prepare` gives on the resampled rows of the layer
(repeated rows allowed), up to rounding; a permutation only permutes them. Every replicate
still needs every pair's SVD, so a permutation baseline or the delete-one jackknife of
:mod:`repsim.stats` (n replicates) costs about one map per replicate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from repsim.measures.base import Comparison, Measure, register
from repsim.measures.cka import ConstantRepresentationWarning, _centre

__all__ = ["EIGENVALUE_FLOOR", "ROUNDING", "Procrustes", "ShapeMetric"]

EIGENVALUE_FLOOR = 1e-7  # netrep's eigval_tol, here relative to the layer's total variance
ROUNDING = 16  # cosines within ROUNDING·r·ε of 1 read as angle 0 (see the module docstring)
EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Shapes:
    """The L layers of one side in the form the pair values need.

    coords: per layer the (m, r_l) centred unit-norm coordinates X̂ (the layer up to an
        orthonormal map; r_l = min(m, p_l), 0 for a constant layer): what resampling draws
        rows from
    whitened: (m, Σ r_l) the X̂_α of all layers side by side (unit Frobenius norm each)
    widths: r_l of each block of ``whitened``
    norms: (L,) ‖X̂_α‖_F of each block (1 up to rounding; 0 for a constant layer)
    """

    coords: tuple[torch.Tensor, ...]
    whitened: torch.Tensor
    widths: tuple[int, ...]
    norms: torch.Tensor


@register
class ShapeMetric(Measure):
    """Angular shape distance θ_α of Williams et al. (2021) with partial whitening α ∈ [0, 1]
    (netrep's ``LinearMetric``; see the module docstring): α = 1 Procrustes, α = 0 CCA-like."""

    name = "shape_metric"
    label = "shape metric"
    direction = "distance"
    value_range = (0.0, math.pi / 2)
    identical = 0.0
    description = ("angular shape distance in radians (0 = same up to translation, rotation and "
                   "scale after partial whitening α; π/2 = orthogonal; a distance)")

    def __init__(self, *, alpha: float = 1.0):
        self.alpha = _check_alpha(alpha)

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def check(self, comparison: Comparison) -> None:
        if comparison.n < 2:
            raise ValueError(f"{self.label} needs at least 2 inputs, got n={comparison.n}; use "
                             "more inputs")
        self._refuse_full_whitening(max([*comparison.widths_a, *comparison.widths_b]),
                                    comparison.n)

    def prepare(self, layers: Iterable[torch.Tensor], names: Sequence[str],
                comparison: Comparison) -> Shapes:
        """Each (n, p) layer centred, reduced to min(n, p) coordinates, normalised and
        whitened, once."""
        coords = []
        for name, x in zip(names, layers):
            coords.append(_coordinates(x))
            del x  # hold one copy of the layer, not two, while the next one is read
            if coords[-1].shape[1] == 0:
                warnings.warn(f"{name} is constant across all rows (zero variance): its "
                              f"{self.label} values are NaN", ConstantRepresentationWarning,
                              stacklevel=2)
        return self._side(coords)

    def resample(self, side: Shapes, rows: np.ndarray, comparison: Comparison) -> Shapes:
        """The side for inputs ``rows`` ((m,) indices, repeats allowed): each layer's
        coordinates at those rows, centred, normalised and whitened again (a permutation of
        all inputs only permutes them)."""
        rows = np.asarray(rows)
        distinct = len(np.unique(rows))
        self._refuse_full_whitening(max(side.widths), distinct)
        index = torch.as_tensor(rows, device=side.whitened.device)
        if distinct == len(rows) == len(side.whitened):  # a permutation: nothing to redo
            return replace(side, coords=tuple(c[index] for c in side.coords),
                           whitened=side.whitened[index])
        return self._side([_coordinates(c[index]) for c in side.coords])

    def compare(self, a: Shapes, b: Shapes, comparison: Comparison) -> torch.Tensor:
        """(La, Lb) angles θ_α; NaN where a layer is constant."""
        nuclear = torch.empty(len(a.widths), len(b.widths), dtype=torch.float64,
                              device=a.whitened.device)
        for i, block in enumerate(a.whitened.split(a.widths, 1)):
            products = (block.T @ b.whitened).split(b.widths, 1)
            for j, product in enumerate(products):
                nuclear[i, j] = torch.linalg.svdvals(product).sum()
        cosine = nuclear / (a.norms[:, None] * b.norms[None, :])
        ranks = torch.maximum(torch.tensor(a.widths, device=cosine.device)[:, None],
                              torch.tensor(b.widths, device=cosine.device)[None, :])
        unresolved = (cosine - 1).abs() <= ROUNDING * ranks * EPS  # False for NaN
        return torch.where(unresolved, torch.zeros_like(cosine), torch.arccos(cosine))

    def _refuse_full_whitening(self, widest: int, inputs: int) -> None:
        """α = 0 with a layer of ``widest`` ≥ inputs − 1 features: meaningless, refused."""
        if self.alpha == 0 and widest >= inputs - 1:
            raise ValueError(
                f"alpha=0 (full whitening) is meaningless for a layer with {widest} features on "
                f"{inputs} distinct inputs: it whitens a layer of p >= n - 1 features into all "
                f"{inputs - 1} dimensions of the centred inputs, so its distances depend only "
                f"on the widths; use alpha > 0, a smaller reduction (--reduction gap or "
                f"pool<k>), or more than {widest + 1} inputs")

    def _side(self, coords: list[torch.Tensor]) -> Shapes:
        whitened = [_whiten(c, self.alpha) for c in coords]
        widths = tuple(w.shape[1] for w in whitened)
        norms = torch.stack([torch.linalg.matrix_norm(w) for w in whitened])
        joined = torch.cat(whitened, 1)
        del whitened
        # α = 1 whitens nothing: keep one copy, the coordinates as views of the joined blocks
        kept = joined.split(widths, 1) if self.alpha == 1 else tuple(coords)
        return Shapes(coords=kept, whitened=joined, widths=widths, norms=norms)


@register
class Procrustes(ShapeMetric):
    """Angular Procrustes distance arccos ‖X̂ᵀŶ‖_* of the centred unit-norm layers (Williams
    et al. 2021; netrep's ``LinearMetric(alpha=1)``): :class:`ShapeMetric` with α = 1."""

    name = "procrustes"
    label = "Procrustes distance"
    description = ("angular Procrustes distance in radians (0 = same up to translation, "
                   "rotation and scale; π/2 = orthogonal; a distance, not a similarity)")

    def __init__(self):
        super().__init__(alpha=1.0)


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """(m, p) layer → (m, min(m, p)) coordinates X̂ of the centred layer scaled to unit
    Frobenius norm, in which the layer is exact up to an orthonormal map; (m, 0) when the
    layer is constant."""
    xc, constant, _ = _centre(x)
    if constant:
        return xc[:, :0]
    if xc.shape[1] > xc.shape[0]:
        xc = torch.linalg.qr(xc.T, mode="r").R.T  # Xc = RᵀQᵀ, Q with orthonormal columns
    return xc / torch.linalg.matrix_norm(xc)


def _whiten(coords: torch.Tensor, alpha: float) -> torch.Tensor:
    """X̂_α of netrep's ``whiten`` (without its trailing rotation Vᵀ, which the angle does not
    see), scaled to unit Frobenius norm; X̂ itself for α = 1."""
    if alpha == 1 or coords.shape[1] == 0:
        return coords
    eigenvalues, vectors = torch.linalg.eigh(coords.T @ coords)
    weights = alpha + (1 - alpha) * eigenvalues.clamp_min(EIGENVALUE_FLOOR).rsqrt()
    whitened = (coords @ vectors) * weights
    return whitened / torch.linalg.matrix_norm(whitened)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (1: Procrustes, rotations only; 0: "
                         f"full whitening, CCA-like), got {alpha!r}")
    return float(alpha)
