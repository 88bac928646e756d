"""Leave-one-out CKA for every layer pair, in closed form from the prepared Gram matrices.

The delete-one jackknife (:mod:`repsim.stats`) needs CKA with each input i left out, for all
n inputs and all (La, Lb) pairs. Recomputing is n full CKA maps; here each left-out value comes
from sums that every i shares, so the whole (n, La, Lb) array costs about one GEMM over the
Grams (O(n²·La·Lb)). With K, L one pair's Grams (n, n), k = K1, l = L1, r_i = Σ_j K_ij L_ij:

* biased CKA (re-centred without i, m = n − 1 rows):
  ⟨H K₋ᵢ H, L₋ᵢ⟩ = S_KL − (2/m)·S₂ + S_K·S_L / m², with
  S_KL = 1ᵀ(K∘L)1 − 2rᵢ + KᵢᵢLᵢᵢ, S_K = 1ᵀK1 − 2kᵢ + Kᵢᵢ and
  S₂ = Σ_{j≠i} (kⱼ − Kⱼᵢ)(lⱼ − Lⱼᵢ) = k·l − (Kl)ᵢ − (Lk)ᵢ + rᵢ − (kᵢ − Kᵢᵢ)(lᵢ − Lᵢᵢ);
* debiased CKA: Song et al.'s HSIC₁ on n − 1 rows, whose terms are the same sums of the Grams
  with zero diagonal (tr(K̃L̃) − 2r̃ᵢ, 1ᵀK̃1 − 2k̃ᵢ and the S₂ form above).

Centring commutes with leaving rows out (H₋ᵢ (HKH)₋ᵢ H₋ᵢ = H₋ᵢ K₋ᵢ H₋ᵢ), so the biased
estimator's stored, centred Grams serve as they are. Feature-form sides (every p < n) never
form a Gram: rᵢ = xᵢᵀ(XᵀY)yᵢ and (Kv)ᵢ = xᵢᵀ(Xᵀv), O(n·p_a·p_b) per pair and O(n·p) memory.
"""

from __future__ import annotations

import torch

__all__ = ["leave_one_out_cka"]

ROW_CHUNK = 256  # rows of the (rows, La, Lb) products formed at once: bounds the copies


def leave_one_out_cka(a, b, n: int, *, debiased: bool) -> torch.Tensor:
    """(n, La, Lb) CKA of every layer pair with input i left out, from two prepared sides
    (:class:`repsim.measures.cka._Kernelised`) of the same ``debiased`` estimator."""
    cross = _loo_terms(a, b, n, debiased)
    self_a = torch.diagonal(_loo_terms(a, a, n, debiased), dim1=1, dim2=2)  # (n, La)
    self_b = torch.diagonal(_loo_terms(b, b, n, debiased), dim1=1, dim2=2)
    return cross / torch.sqrt(self_a[:, :, None] * self_b[:, None, :])


def _loo_terms(a, b, n: int, debiased: bool) -> torch.Tensor:
    """(n, La, Lb) HSIC terms of every pair (K of side a, L of side b) with row i left out;
    the debiased estimator's are those of K̃ = K − diag(K), L̃ likewise."""
    dk, dl = a.diag, b.diag                                       # (La, n), (Lb, n)
    k, l = a.rowsum, b.rowsum                                     # K1, L1
    r = _row_inner(a, b)                                          # (n, La, Lb)
    if debiased:
        k, l = k - dk, l - dl
        r = r - dk.T[:, :, None] * dl.T[:, None, :]
    k_l = _times(a, l.T) - (dk.T[:, :, None] * l.T[:, None, :] if debiased else 0)  # (K l)ᵢ
    l_k = (_times(b, k.T) - (dl.T[:, :, None] * k.T[:, None, :] if debiased else 0)
           ).transpose(1, 2)                                      # (L k)ᵢ
    if debiased:
        dk, dl = torch.zeros_like(dk), torch.zeros_like(dl)
    total = r.sum(0)                                              # 1ᵀ(K∘L)1
    ki, li = k.T[:, :, None], l.T[:, None, :]                     # (n, La, 1), (n, 1, Lb)
    dki, dli = dk.T[:, :, None], dl.T[:, None, :]
    s2 = k @ l.T - k_l - l_k + r - (ki - dki) * (li - dli)
    sum_k = k.sum(1)[None, :, None] - 2 * ki + dki
    sum_l = l.sum(1)[None, None, :] - 2 * li + dli
    m = n - 1
    if debiased:
        trace = total - 2 * r
        return (trace + sum_k * sum_l / ((m - 1) * (m - 2)) - 2 / (m - 2) * s2) / (m * (m - 3))
    return total - 2 * r + dki * dli - 2 / m * s2 + sum_k * sum_l / m**2


def _times(side, v: torch.Tensor) -> torch.Tensor:
    """Columns v (n, m) → (n, L, m): (K_l v)ᵢ for every layer l of ``side``."""
    if side.grams is not None:
        return torch.einsum("lij,jm->ilm", side.grams, v)
    return torch.stack([x @ (x.T @ v) for x in _blocks(side)], 1)


def _row_inner(a, b) -> torch.Tensor:
    """(n, La, Lb) r_i = Σ_j K_ij L_ij of every pair: batched GEMMs over row chunks of the
    Grams, or, in feature form, r_i = x_iᵀ (XᵀY) y_i without forming a Gram."""
    if a.grams is None:
        blocks_b = _blocks(b)
        return torch.stack([torch.stack([((x @ (x.T @ y)) * y).sum(1) for y in blocks_b], 1)
                            for x in _blocks(a)], 1)
    n = a.grams.shape[1]
    out = torch.empty(n, a.grams.shape[0], b.grams.shape[0], dtype=a.grams.dtype,
                      device=a.grams.device)
    for start in range(0, n, ROW_CHUNK):
        rows = slice(start, min(start + ROW_CHUNK, n))
        out[rows] = torch.bmm(a.grams[:, rows].transpose(0, 1), b.grams[:, rows].permute(1, 2, 0))
    return out


def _blocks(side) -> tuple[torch.Tensor, ...]:
    """The (n, p_l) centred features of each layer of a feature-form side."""
    return torch.split(side.features, list(side.widths), dim=1)
