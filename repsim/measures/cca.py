"""Canonical correlation analysis (CCA) between the layers of two networks: mean ρ, R²_CCA,
SVCCA and PWCCA.

``X`` (n, p₁) and ``Y`` (n, p₂) are two layers on the same n inputs. Centre the columns and
take each layer's thin SVD, X = U S Vᵀ; Q_x = U restricted to the d_x kept directions is an
orthonormal basis of the centred layer's column space. The canonical correlations
ρ₁ ≥ … ≥ ρ_m, m = min(d_x, d_y), are the singular values of Q_xᵀQ_y (the cosines of the
principal angles between the two column spaces, Björck & Golub 1973): the same numbers as
Hotelling's Σxx^−½ Σxy Σyy^−½, without inverting a covariance.

* ``"cca_mean_rho"`` (:class:`CCAMeanRho`): ρ̄ = (1/m) Σ ρ_i (Kornblith et al. 2019's ρ̄_CCA).
* ``"cca_r2"`` (:class:`CCAR2`): R²_CCA = (1/m) Σ ρ_i² = ‖Q_xᵀQ_y‖²_F / m (Kornblith et al.
  2019), no SVD per pair.
* ``"svcca"`` (:class:`SVCCA`, Raghu et al. 2017): each layer keeps its top singular directions
  explaining ``variance`` (default 0.99) of its variance (the fewest k with
  Σ_{i≤k} s_i² ≥ variance · Σ s_i²), then ρ̄ of the kept parts.
* ``"pwcca"`` (:class:`PWCCA`, Morcos, Raghu & Bengio 2018): Σ α_i ρ_i with weights
  α_i ∝ Σ_j |⟨h_i, x_j⟩| (Σ α_i = 1), h_i the i-th canonical variate of one layer (unit norm)
  and x_j that layer's j-th centred neuron (column). Not symmetric: the weights come from the
  layer with fewer kept directions, a's on ties, as google/svcca's ``compute_pwcca`` chooses
  by neuron count. With Q_xᵀQ_y = A diag(ρ) Bᵀ the canonical variates of x are H = Q_x A, so
  ⟨h_i, x_j⟩ = (Aᵀ S_x V_xᵀ)_ij. google/svcca's ``compute_pwcca`` differs: it projects the
  activations on the singular vectors A of the whitened cross-covariance without Σxx^−½ (so
  its "directions" are not the canonical variates unless Σxx ∝ I), adds the neuron means back
  before orthonormalising and weighs with uncentred neurons, and its branch for a y with
  fewer neurons reads x's activations (PR #9). The two agree when x is centred and white.

Each layer's SVD is computed once (:meth:`BasisMeasure.prepare`); the pairs of a whole map come
from one GEMM of the bases side by side and, for ρ̄ and PWCCA, one small SVD per pair.
float64 throughout; nothing is clamped (ρ can exceed 1 by rounding).

Kept directions: the numerical rank of the centred layer, d = #{s_i > s₁ · max(n, p) · ε}
(NumPy's ``matrix_rank`` rule; duplicated or constant columns do not count), capped at
``max_dims`` when it is set (the top ``max_dims`` principal directions). A constant layer has
d = 0: its values are NaN, with a :class:`ConstantRepresentationWarning` naming it. Activations
stored in float32 carry rounding noise at about 1e−7 of their scale, which this rule counts as
directions when a layer is rank-deficient in exact arithmetic; SVCCA or ``max_dims`` drop them.

Too few inputs: the centred inputs span n − 1 dimensions, so two layers with
d_x + d_y > n − 1 share at least d_x + d_y − n + 1 directions whatever the data, each a
canonical correlation of 1 (every ρ is 1 once one layer has d ≥ n − 1, e.g. p ≥ n). Such a
pair is refused with an error that names the layers and the fixes (a smaller reduction such as
``--reduction gap`` or ``pool<k>``, more inputs, or ``max_dims=k`` with 2k < n), never
returned as a meaningless 1. Short of that, ρ is still biased upwards by about (d_x + d_y)/n
for unrelated layers; compare with a permutation baseline (:mod:`repsim.stats`).

Invariances (with ``max_dims=None``): ρ̄, R²_CCA and the ρ of PWCCA are invariant to any
invertible linear map of either layer's neurons (translation, scaling, rotation, permutation);
SVCCA with ``variance < 1`` and every measure with ``max_dims`` only to orthogonal maps and
isotropic scaling (the kept directions depend on the metric); PWCCA's weights only to
permuting, flipping the sign of and isotropically scaling the weighting layer's neurons.

Bootstrap (:meth:`BasisMeasure.resample`): a replicate resamples the inputs *within the
subspaces kept on all n inputs* (SVCCA's and ``max_dims``' choices are not made again), so an
interval covers the variability of the canonical correlations over inputs given those
subspaces. A bootstrap draw holds about 0.63 n distinct inputs, so the upward bias above is
larger in replicates than in the estimate, and replicates whose distinct inputs are too few for
the kept dimensions are refused like the estimate.

References: Hotelling (1936), Biometrika 28; Björck & Golub (1973), Math. Comp. 27; Raghu,
Gilmer, Yosinski & Sohl-Dickstein (2017), NeurIPS; Morcos, Raghu & Bengio (2018), NeurIPS;
Kornblith, Norouzi, Lee & Hinton (2019), ICML.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from repsim.measures.base import Comparison, Measure, register
from repsim.measures.cka import ConstantRepresentationWarning, _centre, _segment_ids

__all__ = ["BasisMeasure", "Bases", "CCAMeanRho", "CCAR2", "PWCCA", "SVCCA", "block_sums"]

EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Bases:
    """The L layers of one side reduced to orthonormal bases of their kept directions.

    bases: (m, Σ d_l) float64, the columns of layer l's Q_l side by side (orthonormal, each
        column orthogonal to the ones vector: the layer is centred)
    dims: d_l of each layer (0: the layer is constant)
    scales: (Σ d_l,) singular values S_l of each centred layer, in the same order (each layer
        scaled by a power of two, which no measure here sees)
    axes: per layer the (d_l, p_l) right singular vectors V_lᵀ, so that the centred layer's
        part in its kept directions is Q_l S_l V_lᵀ; None when the measure needs no neurons
    names: each layer's name for messages ("layer 'fc' of a")
    rows: (m,) which of the n inputs each row is (0…n−1 when prepared; a resample's draw)
    """

    bases: torch.Tensor
    dims: tuple[int, ...]
    scales: torch.Tensor
    axes: tuple[torch.Tensor, ...] | None
    names: tuple[str, ...]
    rows: np.ndarray

    def blocks(self) -> list[slice]:
        """Column slice of each layer in ``bases`` and ``scales``."""
        ends = np.cumsum((0, *self.dims))
        return [slice(int(s), int(e)) for s, e in zip(ends[:-1], ends[1:])]


class BasisMeasure(Measure):
    """A measure read from each layer's orthonormal basis (see the module docstring);
    subclasses give the values of all pairs from the (Σd_a, Σd_b) product Q_aᵀQ_b."""

    direction = "similarity"
    value_range = (0.0, 1.0)
    identical = 1.0
    keeps_axes: ClassVar[bool] = False  # whether pairs need each layer's neurons (PWCCA)

    def __init__(self, *, max_dims: int | None = None):
        self.max_dims = _check_max_dims(max_dims)

    def settings(self) -> dict[str, Any]:
        return {"max_dims": self.max_dims}

    def prepare(self, layers: Iterable[torch.Tensor], names: Sequence[str],
                comparison: Comparison) -> Bases:
        """Each (n, p) layer's SVD once: its basis, singular values (and axes for PWCCA)."""
        parts = []
        for x in layers:
            u, s, vh = _svd(x)
            del x  # hold one copy of the layer, not two, while the next one is read
            d = self._kept(s)
            parts.append((u[:, :d], s[:d], vh[:d].clone() if self.keeps_axes else None))
        return self._side(parts, tuple(names), np.arange(comparison.n))

    def resample(self, side: Bases, rows: np.ndarray, comparison: Comparison) -> Bases:
        """The side for inputs ``rows`` ((m,) indices, repeats allowed) within its kept
        subspaces: layer l's kept part Q_l S_l V_lᵀ at those rows, centred again, and its SVD
        (directions that vanish, e.g. when a draw repeats inputs, drop out by the rank rule).
        A permutation needs no SVD: the permuted basis is still orthonormal and centred."""
        rows = np.asarray(rows)
        index = torch.as_tensor(rows, device=side.bases.device)
        if len(rows) == len(side.rows) and np.array_equal(np.sort(rows), np.arange(len(rows))):
            return replace(side, bases=side.bases[index], rows=side.rows[rows])
        parts = []
        for i, cols in enumerate(side.blocks()):
            u, s, vh = _svd(side.bases[index, cols] * side.scales[cols])
            parts.append((u, s, None if side.axes is None else vh @ side.axes[i]))
        return self._side(parts, side.names, side.rows[rows])

    def compare(self, a: Bases, b: Bases, comparison: Comparison) -> torch.Tensor:
        """(La, Lb) values; NaN where a layer is constant; refuses degenerate pairs."""
        self._refuse_degenerate(a, b)
        values = self._values(a, b, a.bases.T @ b.bases)
        constant = (torch.tensor(a.dims, device=values.device) == 0)[:, None] | \
            (torch.tensor(b.dims, device=values.device) == 0)[None, :]
        return values.masked_fill(constant, math.nan)

    def _values(self, a: Bases, b: Bases, cross: torch.Tensor) -> torch.Tensor:
        """(La, Lb) values from cross = Q_aᵀQ_b, (Σd_a, Σd_b)."""
        raise NotImplementedError

    def _kept(self, s: torch.Tensor) -> int:
        """How many of a layer's leading directions (singular values ``s``, cut at the
        numerical rank) are kept: all, at most ``max_dims``."""
        return len(s) if self.max_dims is None else min(len(s), self.max_dims)

    def _side(self, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
              names: tuple[str, ...], rows: np.ndarray) -> Bases:
        for name, (u, _, _) in zip(names, parts):
            if u.shape[1] == 0:
                warnings.warn(f"{name} is constant across all rows (zero variance): its "
                              f"{self.label} values are NaN", ConstantRepresentationWarning,
                              stacklevel=3)
        return Bases(bases=torch.cat([u for u, _, _ in parts], 1),
                     dims=tuple(u.shape[1] for u, _, _ in parts),
                     scales=torch.cat([s for _, s, _ in parts]),
                     axes=tuple(v for _, _, v in parts) if self.keeps_axes else None,
                     names=names, rows=rows)

    # -- too few inputs for the kept dimensions ---------------------------------------------

    def _degenerate(self, dims_a: np.ndarray, dims_b: np.ndarray, room: int) -> np.ndarray:
        """(La, Lb) bool: pairs whose value the dimensions alone fix. CCA: the column spaces
        meet in d_a + d_b − room > 0 dimensions of the room-dimensional centred inputs."""
        return dims_a[:, None] + dims_b[None, :] > room

    def _why_degenerate(self, da: int, db: int, room: int) -> str:
        return (f"they share at least {da + db - room} of the {room} dimensions of the centred "
                f"inputs, each a canonical correlation of 1 whatever the data")

    def _refuse_degenerate(self, a: Bases, b: Bases) -> None:
        distinct = len(np.unique(np.stack([a.rows, b.rows]), axis=1).T)
        da, db = np.array(a.dims), np.array(b.dims)
        bad = self._degenerate(da, db, distinct - 1) & (da[:, None] > 0) & (db[None, :] > 0)
        if not bad.any():
            return
        i, j = np.argwhere(bad)[0]
        more = f" ({int(bad.sum()) - 1} more pairs like it)" if bad.sum() > 1 else ""
        raise ValueError(
            f"{self.label} is meaningless for {a.names[i]} ({da[i]} dimensions) and "
            f"{b.names[j]} ({db[j]} dimensions) on {distinct} distinct inputs: "
            f"{self._why_degenerate(int(da[i]), int(db[j]), distinct - 1)}{more}. Read the "
            f"layers at a smaller reduction (--reduction gap or pool<k>), use more inputs, or "
            f"set max_dims=k (on the command line --measure {self.name}:max_dims=k) to keep "
            f"each layer's top k principal directions (2k < {distinct})")


@register
class CCAMeanRho(BasisMeasure):
    """Mean canonical correlation ρ̄ = (1/m) Σ ρ_i, m = min(d_a, d_b) (Kornblith et al. 2019's
    ρ̄_CCA); ``max_dims`` caps each layer's kept directions (module docstring)."""

    name = "cca_mean_rho"
    label = "mean CCA ρ"
    description = ("mean canonical correlation (similarity, 1 = same up to an invertible "
                   "linear map; not a distance)")

    def _values(self, a, b, cross):
        out = torch.full((len(a.dims), len(b.dims)), math.nan, dtype=cross.dtype,
                         device=cross.device)
        for i, j, block in _pair_blocks(a, b, cross):
            out[i, j] = torch.linalg.svdvals(block).mean()
        return out


@register
class CCAR2(BasisMeasure):
    """R²_CCA = (1/m) Σ ρ_i² = ‖Q_aᵀQ_b‖²_F / m, m = min(d_a, d_b) (Kornblith et al. 2019);
    ``max_dims`` caps each layer's kept directions (module docstring)."""

    name = "cca_r2"
    label = "CCA R² (mean ρ²)"
    description = ("mean squared canonical correlation R²_CCA (similarity, 1 = same up to an "
                   "invertible linear map; not a distance)")

    def _values(self, a, b, cross):
        dims_a = torch.tensor(a.dims, dtype=cross.dtype, device=cross.device)
        dims_b = torch.tensor(b.dims, dtype=cross.dtype, device=cross.device)
        return block_sums(cross.square(), a.dims, b.dims) / torch.minimum(dims_a[:, None],
                                                                           dims_b[None, :])


@register
class SVCCA(CCAMeanRho):
    """SVCCA (Raghu et al. 2017): each layer keeps its fewest top singular directions that
    explain ``variance`` (in (0, 1]) of its variance, then ρ̄ of the kept parts; ``max_dims``
    caps them further. ``variance=1`` keeps every direction (up to the rank): plain ρ̄."""

    name = "svcca"
    label = "SVCCA (mean ρ)"
    description = ("mean canonical correlation of each layer's top principal directions "
                   "(similarity, 1 = same up to rotation and scale; not a distance)")

    def __init__(self, *, variance: float = 0.99, max_dims: int | None = None):
        super().__init__(max_dims=max_dims)
        self.variance = _check_variance(variance)

    def settings(self) -> dict[str, Any]:
        return {"variance": self.variance, **super().settings()}

    def _kept(self, s):
        if len(s) == 0 or self.variance == 1:  # all, even directions too small to add up
            return super()._kept(s)
        explained = torch.cumsum(s.square(), 0)
        enough = int(torch.searchsorted(explained, self.variance * explained[-1])) + 1
        return super()._kept(s[:min(enough, len(s))])


@register
class PWCCA(BasisMeasure):
    """Projection-weighted CCA (Morcos et al. 2018): Σ α_i ρ_i, α_i ∝ Σ_j |⟨h_i, x_j⟩| over
    the canonical variates h_i and centred neurons x_j of the side with fewer kept
    directions (a's on ties, as google/svcca); see the module docstring for the formula and
    how google/svcca's ``compute_pwcca`` differs. ``max_dims`` caps each layer's kept
    directions (the weights then read the neurons' parts in them, which is all h_i sees)."""

    name = "pwcca"
    label = "PWCCA"
    description = ("projection-weighted mean canonical correlation (similarity, 1 = same up to "
                   "an invertible linear map; not symmetric; not a distance)")
    keeps_axes = True

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weights": "side with fewer kept directions, a on ties"}

    def _values(self, a, b, cross):
        out = torch.full((len(a.dims), len(b.dims)), math.nan, dtype=cross.dtype,
                         device=cross.device)
        blocks_a, blocks_b = a.blocks(), b.blocks()
        for i, j, block in _pair_blocks(a, b, cross):
            if a.dims[i] <= b.dims[j]:
                out[i, j] = _projection_weighted(block, a.scales[blocks_a[i]], a.axes[i])
            else:
                out[i, j] = _projection_weighted(block.T, b.scales[blocks_b[j]], b.axes[j])
        return out


def _projection_weighted(cross: torch.Tensor, scales: torch.Tensor, axes: torch.Tensor
                         ) -> torch.Tensor:
    """PWCCA of one pair weighted by layer x: cross = Q_xᵀQ_y (d_x, d_y), d_x ≤ d_y, and x's
    singular values S_x (d_x,) and axes V_xᵀ (d_x, p_x)."""
    left, rho, _ = torch.linalg.svd(cross, full_matrices=False)
    # ⟨h_i, x_j⟩ = (Aᵀ S_x V_xᵀ)_ij for the canonical variates h_i = Q_x a_i and neurons x_j
    alpha = (left.T @ (scales[:, None] * axes)).abs().sum(1)
    return (alpha * rho).sum() / alpha.sum()


# ---------------------------------------------------------------------------------------------
# Helpers shared with repsim.measures.regression
# ---------------------------------------------------------------------------------------------


def block_sums(values: torch.Tensor, dims_a: Sequence[int], dims_b: Sequence[int]
               ) -> torch.Tensor:
    """(Σd_a, Σd_b) → (La, Lb) sums over each (d_a, d_b) block."""
    per_row = torch.zeros(len(dims_a), values.shape[1], dtype=values.dtype,
                          device=values.device)
    per_row.index_add_(0, _segment_ids(tuple(dims_a), values.device), values)
    out = torch.zeros(len(dims_a), len(dims_b), dtype=values.dtype, device=values.device)
    return out.index_add_(1, _segment_ids(tuple(dims_b), values.device), per_row)


def _pair_blocks(a: Bases, b: Bases, cross: torch.Tensor
                 ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(i, j, Q_iᵀQ_j) for every pair of non-constant layers."""
    blocks_b = b.blocks()
    for i, rows in enumerate(a.blocks()):
        for j, cols in enumerate(blocks_b):
            if a.dims[i] and b.dims[j]:
                yield i, j, cross[rows, cols]


def _svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of the centred (n, p) x, cut at its numerical rank r:
    U (n, r), s (r,), Vᵀ (r, p); r = #{s_i > s₁ · max(n, p) · ε}, 0 for a constant x."""
    xc, _, _ = _centre(x)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    rank = int((s > s[:1] * max(xc.shape) * EPS).sum())
    return u[:, :rank], s[:rank], vh[:rank]


def _check_max_dims(max_dims: Any) -> int | None:
    if max_dims is not None and (isinstance(max_dims, bool) or not isinstance(
            max_dims, (int, np.integer)) or max_dims < 1):
        raise ValueError(f"max_dims must be a positive int (the top principal directions kept "
                         f"per layer) or None (all), got {max_dims!r}")
    return None if max_dims is None else int(max_dims)


def _check_variance(variance: Any) -> float:
    if isinstance(variance, bool) or not isinstance(variance, (int, float, np.floating)) \
            or not 0 < variance <= 1:
        raise ValueError(f"variance must be a fraction in (0, 1] (of each layer's variance "
                         f"that SVCCA keeps, e.g. 0.99), got {variance!r}")
    return float(variance)
