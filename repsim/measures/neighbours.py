"""Nearest-neighbour measures between the layers of two networks: mutual k-NN alignment and
k-NN Jaccard similarity.

Each layer X (n, p) gives every input i its k nearest neighbours N_k(i): the k other inputs
whose rows have the largest cosine similarity xᵢ·xⱼ / (‖xᵢ‖ ‖xⱼ‖) with row i, the input itself
excluded (platonic-rep normalises the rows and takes the largest inner products with the
diagonal masked; ReSi asks scikit-learn's cosine ``NearestNeighbors`` for k + 1 and drops the
first, the input itself). Ties are broken deterministically: among equal similarities the
input with the lower row index is the nearer (a duplicate input has similarity 1, the largest,
so the copies of an input are each other's nearest neighbours). With c_i = |N_k^X(i) ∩ N_k^Y(i)|:

* ``"mutual_knn"`` (:class:`MutualKNN`; Huh, Cheung, Wang & Isola 2024, "The Platonic
  Representation Hypothesis", ICML; platonic-rep's ``mutual_knn``): (1/n) Σᵢ cᵢ / k;
* ``"knn_jaccard"`` (:class:`KNNJaccard`; Klabunde, Schumacher, Strohmaier & Lemmerich 2023,
  "Similarity of neural network models: a survey of functional and representational measures",
  and their ReSi benchmark's ``jaccard_similarity``): (1/n) Σᵢ |N^X(i) ∩ N^Y(i)| / |N^X(i) ∪
  N^Y(i)| = (1/n) Σᵢ cᵢ / (2k − cᵢ).

Both are similarities in [0, 1], 1 for layers with the same neighbourhoods; unrelated layers
give about k/(n − 1) (mutual k-NN) and k/(2(n − 1)) (Jaccard) by chance. They are invariant to
rotations and isotropic scaling of a layer's features and to permuting its units, not to
translation (cosine similarity is taken about the origin, as both peers do; platonic-rep also
clips outlying features first, which is not done here).

Computation: per layer once (:meth:`MutualKNN.prepare`): the rows scaled to unit norm (each
first by a power of two, exactly, so no norm under- or overflows), the (n, n) cosine Gram
matrix, and each row's k + 1 nearest other rows in order (``torch.topk`` for the (k+1)-th
value, then the tie rule), kept as (n, k + 1) indices: the first k are the neighbourhood, the
last is who joins it when one of them is left out. Per map: for each layer of a, an (n, n)
indicator of its neighbourhoods gathered at the neighbours of every layer of b gives all cᵢ at
once.

Degenerate layers give NaN with a :class:`ConstantRepresentationWarning` naming them: a layer
constant across inputs (every similarity ties), and a layer with an all-zero row (its cosine
similarity is undefined; drop those inputs). k ≥ n − 1 is refused: every neighbourhood would
hold all other inputs, and the value would be 1 whatever the layers.

Resampling (:meth:`MutualKNN.resample`): a permutation of all n inputs relabels the stored
neighbourhoods (ties keep the order of the original rows); a subset that takes at most one of
each input's k + 1 stored neighbours away (e.g. leaving one input out) keeps, per input, the
first k of its stored neighbours that remain: exactly what :meth:`MutualKNN.prepare` gives on
the subset. Larger subsets are refused (their neighbourhoods depend on similarities to inputs
beyond the stored ones; compute the measure on the subset's activations instead), and so are
repeated inputs: the copies of an input are each other's nearest neighbours in every layer,
which inflates the agreement, so bootstrap draws of inputs mean nothing here. The delete-one
jackknife (:meth:`MutualKNN.jackknife`) has a closed form: leaving input d out removes its own
term and changes cᵢ only for the inputs i with d among their neighbours in either layer, where
d's place goes to the (k+1)-th neighbour; all n leave-one-out maps cost O(La·Lb·n·k).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repsim.measures.base import Comparison, Measure, distinct_rows, register
from repsim.measures.cka import ConstantRepresentationWarning, _gram

__all__ = ["KNNJaccard", "MutualKNN", "Neighbourhoods", "nearest_neighbours"]


@dataclass(frozen=True)
class Neighbourhoods:
    """The L layers of one side as neighbourhoods.

    ranked: (L, m, kept) int64, each input's kept ≥ k nearest other inputs in each layer
        (rows of the same side), nearest first; the first k are its neighbourhood (k + 1 are
        kept when prepared, k after a subset)
    degenerate: (L,) bool, the layer has no defined neighbourhoods (values NaN)
    """

    ranked: torch.Tensor
    degenerate: torch.Tensor


class _NeighbourMeasure(Measure):
    """A measure of the overlaps cᵢ = |N_k^X(i) ∩ N_k^Y(i)| (see the module docstring):
    the mean over inputs of a score of cᵢ that subclasses give."""

    direction = "similarity"
    value_range = (0.0, 1.0)
    identical = 1.0

    def __init__(self, *, k: int = 10):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int (the neighbours per input), got {k!r}")
        self.k = int(k)

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "similarity": "cosine"}

    def check(self, comparison: Comparison) -> None:
        if self.k >= comparison.n - 1:
            raise ValueError(
                f"k={self.k} nearest neighbours among the other inputs need k < n - 1 (with "
                f"k >= n - 1 every neighbourhood holds all other inputs and the value is 1 "
                f"whatever the layers), got n={comparison.n}; use k <= {comparison.n - 2} (k is "
                f"usually much smaller than n, e.g. 10) or more inputs")

    def prepare(self, layers: Iterable[torch.Tensor], names: Sequence[str],
                comparison: Comparison) -> Neighbourhoods:
        """Each (n, p) layer's k + 1 nearest neighbours per input, in order, once."""
        ranked, degenerate = [], []
        for name, x in zip(names, layers):
            problem = _problem(x)
            degenerate.append(problem is not None)
            if problem is None:
                ranked.append(nearest_neighbours(x, self.k + 1))
            else:
                ranked.append(torch.zeros(len(x), self.k + 1, dtype=torch.int64,
                                          device=x.device))
                warnings.warn(f"{name} {problem}: its {self.label} values are NaN",
                              ConstantRepresentationWarning, stacklevel=2)
            del x  # hold one copy of the layer, not two, while the next one is read
        return Neighbourhoods(ranked=torch.stack(ranked),
                              degenerate=torch.tensor(degenerate, device=comparison.device))

    def resample(self, side: Neighbourhoods, rows: np.ndarray,
                 comparison: Comparison) -> Neighbourhoods:
        """The side for distinct inputs ``rows``: a permutation of all n (row u is input
        rows[u]), or a subset that takes at most one of each input's stored neighbours away
        (e.g. the jackknife's); neighbours are renumbered the same way. Repeated inputs and
        larger subsets are refused (see the module docstring)."""
        rows = np.asarray(rows)
        repeats = len(rows) - len(np.unique(rows))
        if repeats:
            raise ValueError(
                f"{self.label} cannot resample inputs with repeats ({repeats} of {len(rows)} "
                f"rows repeat an input): the copies of an input are each other's nearest "
                f"neighbours in every layer, which inflates the agreement, so bootstrap "
                f"intervals of k-NN measures are meaningless; use permutations (a permutation "
                f"baseline) or the delete-one jackknife")
        rows = torch.as_tensor(distinct_rows(rows, comparison.n, self.name),
                               device=side.ranked.device)
        n, kept = side.ranked.shape[1:]
        position = torch.full((n,), -1, dtype=torch.int64, device=rows.device)
        position[rows] = torch.arange(len(rows), device=rows.device)
        ranked = position[side.ranked[:, rows]]  # (L, m, kept), −1: left out
        gone = (ranked < 0) & ~side.degenerate[:, None, None]
        most = int(gone.sum(2).max())
        if kept - most < self.k:
            raise ValueError(
                f"{self.label} can resample a permutation or a subset that leaves out at most "
                f"{kept - self.k} of each input's {kept} stored nearest neighbours, but these "
                f"{len(rows)} of n={n} inputs leave out {most} of some input's: its "
                f"neighbourhood within the subset depends on inputs beyond the stored ones; "
                f"compute the measure on the subset's activations instead")
        # each input's stored neighbours that remain, nearest first
        order = torch.argsort(gone.to(torch.int8), dim=2, stable=True)
        ranked = ranked.gather(2, order)[:, :, :kept - most].clamp_min(0)
        return Neighbourhoods(ranked=ranked, degenerate=side.degenerate)

    def compare(self, a: Neighbourhoods, b: Neighbourhoods,
                comparison: Comparison) -> torch.Tensor:
        """(La, Lb) values from the overlaps of every pair; NaN where a layer is degenerate."""
        k, n = self.k, a.ranked.shape[1]
        values = torch.empty(len(a.ranked), len(b.ranked), dtype=torch.float64,
                             device=a.ranked.device)
        within_b = b.ranked[:, :, :k]
        for i, ranked in enumerate(a.ranked):
            hits = _members(ranked[:, :k], n).expand(len(b.ranked), n, n).gather(2, within_b)
            values[i] = self._score(hits.sum(2)).mean(1)
        return _nan_where_degenerate(values, a, b)

    def jackknife(self, a: Neighbourhoods, b: Neighbourhoods,
                  comparison: Comparison) -> np.ndarray:
        """(n, La, Lb) values with input d left out, in closed form (see the module
        docstring)."""
        if min(a.ranked.shape[2], b.ranked.shape[2]) <= self.k:
            raise ValueError(f"the {self.label} jackknife needs each input's k + 1 nearest "
                             f"neighbours, which prepared sides keep and resampled subsets do "
                             f"not; pass the sides of prepare()")
        n = a.ranked.shape[1]
        members_b = [_members(ranked[:, :self.k], n) for ranked in b.ranked]
        out = torch.empty(n, len(a.ranked), len(b.ranked), dtype=torch.float64,
                          device=a.ranked.device)
        for i, ranked_a in enumerate(a.ranked):
            member_a = _members(ranked_a[:, :self.k], n)
            for j, ranked_b in enumerate(b.ranked):
                out[:, i, j] = self._leave_one_out(ranked_a, member_a, ranked_b, members_b[j])
        return _nan_where_degenerate(out, a, b).cpu().numpy()

    def _leave_one_out(self, ranked_a: torch.Tensor, member_a: torch.Tensor,
                       ranked_b: torch.Tensor, member_b: torch.Tensor) -> torch.Tensor:
        """(n,) values of one pair of layers with input d left out, d = 0…n−1, from each
        input's k + 1 nearest neighbours in a and b ((n, k + 1), nearest first) and the
        (n, n) indicators of the first k."""
        k, n = self.k, len(ranked_a)
        inputs = torch.arange(n, device=ranked_a.device)
        near_a, near_b = ranked_a[:, :k], ranked_b[:, :k]
        next_a, next_b = ranked_a[:, k], ranked_b[:, k]  # who joins when a neighbour leaves
        a_in_b = member_b.gather(1, near_a)  # (n, k)
        overlap = a_in_b.sum(1)
        score = self._score(overlap)
        joins_b = member_b[inputs, next_a].to(torch.int64)  # a's next is in b's neighbourhood
        joins_a = member_a[inputs, next_b].to(torch.int64)
        same_next = (next_a == next_b).to(torch.int64)
        # d a neighbour of i in a (and maybe in b): i's overlap without d
        without_a = torch.where(a_in_b, (overlap - 1 + joins_a + joins_b + same_next)[:, None],
                                (overlap + joins_b)[:, None])
        change = torch.zeros(n, dtype=torch.float64, device=ranked_a.device)
        change.index_add_(0, near_a.flatten(), (self._score(without_a) - score[:, None]).flatten())
        # d a neighbour of i in b only
        only_b = ~member_a.gather(1, near_b)
        change.index_add_(0, near_b.flatten(), ((self._score(overlap + joins_a) - score)[:, None]
                                                * only_b).flatten())
        return (score.sum() - score + change) / (n - 1)

    def _score(self, overlaps: torch.Tensor) -> torch.Tensor:
        """Overlaps cᵢ (integers, any shape) → each input's score, float64."""
        raise NotImplementedError


@register
class MutualKNN(_NeighbourMeasure):
    """Mutual k-NN alignment (Huh et al. 2024): mean over inputs of |N^X ∩ N^Y| / k."""

    name = "mutual_knn"
    label = "mutual k-NN"
    description = ("mutual k-NN alignment: mean fraction of each input's k nearest neighbours "
                   "(cosine) that both layers share (1 = same neighbourhoods; chance ≈ k/(n−1); "
                   "a similarity)")

    def _score(self, overlaps):
        return overlaps.to(torch.float64) / self.k


@register
class KNNJaccard(_NeighbourMeasure):
    """k-NN Jaccard similarity (Klabunde et al. 2023, ReSi): mean over inputs of
    |N^X ∩ N^Y| / |N^X ∪ N^Y|."""

    name = "knn_jaccard"
    label = "k-NN Jaccard"
    description = ("k-NN Jaccard similarity: mean |N∩N'|/|N∪N'| of each input's k nearest "
                   "neighbours (cosine) in the two layers (1 = same neighbourhoods; a similarity)")

    def _score(self, overlaps):
        overlaps = overlaps.to(torch.float64)
        return overlaps / (2 * self.k - overlaps)


def nearest_neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, p) rows with no all-zero row → (n, k) int64: each row's k nearest other rows by
    cosine similarity, nearest first; among equal similarities the lower row index is nearer."""
    # each row's largest magnitude into [½, 1) by a power of two, in two exact factors
    exponent = torch.frexp(x.abs().amax(1, keepdim=True)).exponent.to(x.dtype)
    half = torch.div(exponent, 2, rounding_mode="floor")
    scaled = x * torch.exp2(-half) * torch.exp2(half - exponent)
    similarity = _gram(scaled / torch.linalg.vector_norm(scaled, dim=1, keepdim=True))
    similarity.fill_diagonal_(-math.inf)
    kth = torch.topk(similarity, k, dim=1).values[:, -1:]
    above = similarity > kth
    tied = similarity == kth
    # of the ties at the k-th value, the lowest indices that complete k
    chosen = above | (tied & (torch.cumsum(tied, 1) <= k - above.sum(1, keepdim=True)))
    found = chosen.nonzero()[:, 1].view(len(x), k)  # ascending index
    # nearest first; the stable sort keeps the lower index first among ties
    order = torch.argsort(similarity.gather(1, found), dim=1, descending=True, stable=True)
    return found.gather(1, order)


def _members(ranked: torch.Tensor, n: int) -> torch.Tensor:
    """(n, k) neighbours → (n, n) bool indicator, row i true at i's neighbours."""
    return torch.zeros(n, n, dtype=torch.bool, device=ranked.device).scatter_(1, ranked, True)


def _nan_where_degenerate(values: torch.Tensor, a: Neighbourhoods,
                          b: Neighbourhoods) -> torch.Tensor:
    """values (…, La, Lb) with NaN where a layer of a or b is degenerate."""
    return values.masked_fill(a.degenerate[:, None] | b.degenerate[None, :], math.nan)


def _problem(x: torch.Tensor) -> str | None:
    """Why the (n, p) layer has no neighbourhoods, or None."""
    if bool((x == x[:1]).all()):
        return "is constant across all rows (zero variance), so every similarity ties"
    zero = int((x == 0).all(1).sum())
    if zero:
        return (f"has {zero} all-zero row(s), whose cosine similarity is undefined; drop those "
                f"inputs")
    return None
