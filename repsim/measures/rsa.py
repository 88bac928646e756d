"""Representational similarity analysis (RSA; Kriegeskorte, Mur & Bandettini 2008, Frontiers in
Systems Neuroscience) between the layers of two networks, with rsatoolbox's conventions.

Each layer X (n, p) gives a representational dissimilarity matrix (RDM) over its n inputs:

* ``rdm="correlation"``: D_ij = 1 − Pearson correlation of rows x_i and x_j across the p
  features (rsatoolbox ``calc_rdm(method="correlation")``: each row centred, scaled to unit
  norm);
* ``rdm="euclidean"``: D_ij = ‖x_i − x_j‖² / p, the squared Euclidean distance per feature
  (rsatoolbox ``calc_rdm(method="euclidean")``, which is squared and divided by p).

Two layers are compared through the upper triangles of their RDMs (the N = n(n − 1)/2 entries
i < j, row by row, as rsatoolbox's ``get_vectors``):

* ``compare="spearman"``: Pearson correlation of the entries' ranks, ties given their average
  rank (rsatoolbox ``compare(method="spearman")``, which ranks with ``scipy.stats.rankdata``);
* ``compare="pearson"``: Pearson correlation of the entries (rsatoolbox ``method="corr"``).

The value is a similarity in [−1, 1], 1 for layers with the same dissimilarity structure.
Both RDMs are invariant to permuting a layer's units and to isotropic scaling; Euclidean RDMs
also to rotations and translations of the feature space, correlation RDMs instead to shifting
and scaling each input's pattern (centring a pattern across the features singles out the
all-ones direction, so a rotation changes them). Defaults: correlation RDMs compared by
Spearman, the usual choice for networks.

Computation: per layer once (:meth:`RSA.prepare`): the RDM from the Gram matrix of the centred
features (euclidean: Dᵢⱼ = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ, as rsatoolbox; the centring and a power-of-two
scale, exact, change no correlation), its upper triangle, ranked for Spearman, centred and
scaled to unit norm. Per map: one GEMM of those vectors, (La, N) · (N, Lb). float64
throughout; entries equal in exact arithmetic but computed by different roundings (e.g. the
distances of several copies of an input) are not tied. Memory: two (L, N) float64 arrays per
side (the entries and the compared vectors), 16·L·N bytes, e.g. 490 MiB for 16 layers at
n = 2,000.

Degenerate layers give NaN with a :class:`ConstantRepresentationWarning` naming them: a layer
constant across inputs, an RDM with one value for all pairs, and for correlation RDMs a layer
where some input's pattern is the same in every feature (e.g. all zeros after a ReLU): its
correlation distances are undefined (rsatoolbox gives NaN entries there and refuses to compare
RDMs whose NaN entries differ); use ``rdm="euclidean"`` or drop those inputs.

Resampling (:meth:`RSA.resample`): a replicate's RDM entries are read from the stored RDM
(the distance of inputs i and j does not depend on the other inputs), re-ranked and
standardised; a permutation of all n inputs permutes the entries, ranks included, so it is a
gather of the compared vectors. Pairs of an input with its own copy (a bootstrap draw repeats
inputs) are the RDM's diagonal, not dissimilarities: they are left out, as rsatoolbox's
bootstrap over patterns leaves them out, so a replicate with repeats differs from
:meth:`RSA.prepare` on the repeated rows, which would count them as zero distances. A subset
(e.g. the delete-one jackknife's) ranks and standardises every layer's entries again: the
jackknife of :mod:`repsim.stats` (n replicates) costs about n times the ranking of
:meth:`RSA.prepare`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from repsim.measures.base import Comparison, Measure, register
from repsim.measures.cka import ConstantRepresentationWarning, _centre, _gram

__all__ = ["RDMs", "RSA", "average_ranks"]

RDM_METHODS = ("correlation", "euclidean")
COMPARE_METHODS = ("spearman", "pearson")


@dataclass(frozen=True)
class RDMs:
    """The L layers of one side as RDM entries.

    stored: (L, N₀) the RDM entries of the n prepared inputs over their pairs i < j (row by
        row), each layer's up to a positive factor (no correlation sees it); NaN where
        undefined. Shared, not copied, by resampled sides.
    pairs: (N,) positions in ``stored`` of this side's pairs (a resample's), or None: all N₀
    kept: (N,) bool, the pairs compared (pairs of an input with its own copy are not), or
        None: all
    vectors: (L, K) the compared vectors over the K kept pairs: entries (ranked for Spearman)
        centred and scaled to unit norm; NaN for a degenerate layer
    n: the number of inputs of this side's rows
    """

    stored: torch.Tensor
    pairs: torch.Tensor | None
    kept: torch.Tensor | None
    vectors: torch.Tensor
    n: int

    @property
    def entries(self) -> torch.Tensor:
        """(L, N) this side's RDM entries."""
        return self.stored if self.pairs is None else self.stored[:, self.pairs]


@register
class RSA(Measure):
    """Correlation of two layers' RDMs (rsatoolbox's conventions; see the module docstring)."""

    name = "rsa"
    label = "RSA"
    direction = "similarity"
    value_range = (-1.0, 1.0)
    identical = 1.0
    description = ("RSA: correlation between the two layers' dissimilarity matrices over the "
                   "inputs (1 = same dissimilarity structure; a similarity, not a distance)")

    def __init__(self, *, rdm: Literal["correlation", "euclidean"] = "correlation",
                 compare: Literal["spearman", "pearson"] = "spearman"):
        self.rdm = _check_choice(rdm, "rdm", RDM_METHODS)
        self.compare_by = _check_choice(compare, "compare", COMPARE_METHODS)

    def settings(self) -> dict[str, Any]:
        return {"rdm": self.rdm, "compare": self.compare_by}

    def check(self, comparison: Comparison) -> None:
        if comparison.n < 3:
            raise ValueError(f"RSA correlates the entries of RDMs over pairs of inputs and needs "
                             f"at least 3 inputs (3 pairs), got n={comparison.n}; use more inputs")
        # a width of -1 (not a matrix) is refused when the layer is read
        narrow = min((w for w in (*comparison.widths_a, *comparison.widths_b) if w >= 0),
                     default=2)
        if self.rdm == "correlation" and narrow < 2:
            raise ValueError(f"rdm='correlation' correlates each input's pattern across a "
                             f"layer's features, which needs at least 2 features, but a layer "
                             f"has {narrow}; use rdm='euclidean' or a larger reduction")

    def prepare(self, layers: Iterable[torch.Tensor], names: Sequence[str],
                comparison: Comparison) -> RDMs:
        """Each (n, p) layer's RDM upper triangle and compared vector, once."""
        rows = []
        for name, x in zip(names, layers):
            entries, problem = self._rdm(x)
            del x  # hold one copy of the layer, not two, while the next one is read
            rows.append(entries)
            if problem is None and bool(_constant(entries[None]).item()):
                problem = "has one RDM value for all pairs of inputs"
            if problem is not None:
                warnings.warn(f"{name} {problem}: its {self.label} values are NaN",
                              ConstantRepresentationWarning, stacklevel=2)
        entries = torch.stack(rows)
        return RDMs(stored=entries, pairs=None, kept=None, vectors=self._vectors(entries),
                    n=comparison.n)

    def resample(self, side: RDMs, rows: np.ndarray, comparison: Comparison) -> RDMs:
        """The side for inputs ``rows`` ((m,) indices, repeats allowed): the stored RDM's
        entries of the pairs of those inputs, without pairs of an input with its own copy,
        standardised again (a permutation of all inputs: the compared vectors, permuted)."""
        if side.kept is not None:
            raise ValueError("a resampled RSA side cannot be resampled again; resample the "
                             "prepared side with the composed rows instead")
        rows = np.asarray(rows)
        pairs, same = _pair_indices(rows, side.n)
        pairs = torch.as_tensor(pairs, device=side.stored.device)
        if len(rows) == side.n and not same.any():  # a permutation
            return RDMs(stored=side.stored, pairs=pairs if side.pairs is None else
                        side.pairs[pairs], kept=None, vectors=side.vectors[:, pairs], n=side.n)
        kept = torch.as_tensor(~same, device=side.stored.device)
        entries = side.entries[:, pairs]
        return RDMs(stored=entries, pairs=None, kept=kept,
                    vectors=self._vectors(entries[:, kept]), n=len(rows))

    def compare(self, a: RDMs, b: RDMs, comparison: Comparison) -> torch.Tensor:
        """(La, Lb) correlations of the compared vectors; NaN where a layer is degenerate."""
        if a.n != b.n:
            raise ValueError(f"the two sides hold RDMs of different numbers of inputs ({a.n} "
                             f"and {b.n}); resample both with the same number of rows")
        if _same_pairs(a.kept, b.kept):
            return a.vectors @ b.vectors.T
        common = _all_kept(a) & _all_kept(b)
        return self._vectors(a.entries[:, common]) @ self._vectors(b.entries[:, common]).T

    def _rdm(self, x: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """(n, p) layer → (N,) RDM upper triangle (up to a positive factor) and what makes it
        degenerate (its entries are then NaN), or None."""
        problem = None
        if bool((x == x[:1]).all()):
            problem = "is constant across all rows (zero variance)"
        elif self.rdm == "euclidean":
            xc, _, _ = _centre(x)
            g = _gram(xc)
            squares = g.diagonal()
            return _upper(squares[:, None] + squares[None, :] - 2 * g) / x.shape[1], None
        else:
            patterns, _, _ = _centre(x.T)  # each input's pattern centred across the features
            norms = torch.linalg.vector_norm(patterns, dim=0)
            flat = int((norms == 0).sum())
            if not flat:
                return _upper(1 - _gram((patterns / norms).T)), None
            problem = (f"has {flat} input(s) whose pattern is the same in every feature (e.g. "
                       f"all zeros), where correlation distance is undefined; use "
                       f"rdm='euclidean' or drop those inputs")
        return torch.full((_pair_count(len(x)),), math.nan, dtype=torch.float64,
                          device=x.device), problem

    def _vectors(self, entries: torch.Tensor) -> torch.Tensor:
        """(L, K) entries → (L, K) compared vectors, one layer at a time: ranked (Spearman),
        centred, unit norm; NaN for a layer whose entries hold NaN or one value."""
        vectors = torch.empty_like(entries)
        for out, row in zip(vectors, entries):
            if self.compare_by == "spearman":
                row = average_ranks(row)
            # the mean of equal floats can be off by an ulp: one value must centre to exact 0
            centred = row - (row[0] if bool(_constant(row[None])) else row.mean())
            out.copy_(centred / torch.linalg.vector_norm(centred))
        return vectors.masked_fill_(torch.isnan(entries).any(1, keepdim=True), math.nan)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(K,) → (K,) float64 ranks 1…K, tied values sharing the mean of their ranks
    (``scipy.stats.rankdata(method="average")``)."""
    ordered, order = torch.sort(values)  # the order within ties does not matter: one rank
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(starts, 0) - 1
    first = torch.nonzero(starts).squeeze(1)
    last = torch.cat([first[1:], first.new_tensor([len(values)])]) - 1
    ranked = ((first + last).to(torch.float64) / 2 + 1)[group]  # mean rank of each group
    ranks = torch.empty_like(ranked)
    ranks[order] = ranked
    return ranks


def _upper(d: torch.Tensor) -> torch.Tensor:
    """(n, n) → (n(n−1)/2,) entries i < j, row by row."""
    return d[torch.ones_like(d, dtype=torch.bool).triu_(1)]


def _pair_count(n: int) -> int:
    return n * (n - 1) // 2


def _pair_indices(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For inputs ``rows`` (m,) of n: the position in the n-input upper triangle of each pair
    u < v of the m rows, (m(m−1)/2,), and which pairs are an input with itself (position 0)."""
    u, v = np.triu_indices(len(rows), 1)
    low, high = np.minimum(rows[u], rows[v]), np.maximum(rows[u], rows[v])
    same = low == high
    pairs = low * n - low * (low + 1) // 2 + high - low - 1
    return np.where(same, 0, pairs), same


def _constant(entries: torch.Tensor) -> torch.Tensor:
    """(L, K) → (L,) whether each row has one value."""
    return (entries == entries[:, :1]).all(1)


def _same_pairs(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(torch.equal(a, b))


def _all_kept(side: RDMs) -> torch.Tensor:
    if side.kept is not None:
        return side.kept
    return torch.ones(_pair_count(side.n), dtype=torch.bool, device=side.stored.device)


def _check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value
