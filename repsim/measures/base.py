"""The measure registry: what a similarity measure declares and how it computes a layer map.

A measure is one small class registered under a name (``@register``). It declares

* ``name`` (the registry key, e.g. ``"linear_cka"``) and ``label`` (for axes: "linear CKA");
* ``direction``: ``"similarity"`` (higher = more alike) or ``"distance"`` (lower = more alike),
  ``value_range`` (low, high) and ``identical``, the value of two identical representations;
* ``needs``: what it reads besides each layer's (n, p) features: ``"labels"`` of the rows;
* how it computes a whole (La, Lb) map with the per-layer work shared across pairs:
  :meth:`Measure.prepare` turns the layers of one side into whatever the pairs need (e.g. one
  Gram matrix per layer), once, and :meth:`Measure.compare` forms every pair from two such
  sides. :class:`PairwiseMeasure` is the simple case: a per-layer step and a per-pair value.

Instances carry the measure's parameters (e.g. ``debiased``), checked in ``__init__``;
:func:`get_measure` builds one from a name and keyword parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch

__all__ = ["MEASURES", "Comparison", "Measure", "PairwiseMeasure", "distinct_rows", "get_measure",
           "register"]

Direction = Literal["similarity", "distance"]


@dataclass(frozen=True)
class Comparison:
    """What a measure knows before it reads a layer.

    n: rows (the same inputs on both sides); widths_a, widths_b: feature count p of each
    selected layer (from metadata); labels: (n,) row labels or None; device: where tensors go.
    """

    n: int
    widths_a: tuple[int, ...]
    widths_b: tuple[int, ...]
    labels: np.ndarray | None
    device: torch.device


class Measure:
    """Base class of registered measures; subclasses set the class attributes below."""

    name: ClassVar[str]
    label: ClassVar[str]
    direction: ClassVar[Direction]
    value_range: ClassVar[tuple[float, float]]
    identical: ClassVar[float]
    needs: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""  # one line for JSON outputs: what the number means

    def settings(self) -> dict[str, Any]:
        """The parameters that define the value (JSON-ready), e.g. {"debiased": False}."""
        return {}

    def check(self, comparison: Comparison) -> None:
        """Refuse, before any layer is read, a comparison the measure cannot make (e.g. too
        few rows); the default accepts every one."""

    def prepare(self, layers: Iterable[torch.Tensor], names: Sequence[str],
                comparison: Comparison) -> Any:
        """One side's per-layer work: ``layers`` yields each (n, p) float64 tensor in turn
        (``names`` describe them for messages, e.g. "layer 'fc' of a")."""
        raise NotImplementedError

    def compare(self, a: Any, b: Any, comparison: Comparison) -> torch.Tensor | np.ndarray:
        """(La, Lb) values of every pair from two prepared sides."""
        raise NotImplementedError

    def resample(self, side: Any, rows: np.ndarray, comparison: Comparison) -> Any:
        """One prepared side for the inputs ``rows`` ((m,) int indices into the n rows, repeats
        allowed: a bootstrap draw, a permutation), as :meth:`prepare` would have made it from
        those rows of each layer (within what was kept: a side reduced to a subspace stays in
        it). The statistics (:mod:`repsim.stats`) draw intervals and permutation baselines
        through it without reading a layer again."""
        raise NotImplementedError(
            f"measure {self.name!r} cannot resample inputs, so it has no bootstrap intervals or "
            "permutation baselines; use a measure that can (e.g. 'linear_cka')")

    def replicates(self, a: Any, b: Any, rows_a: np.ndarray | None, rows_b: np.ndarray,
                   comparison: Comparison) -> np.ndarray:
        """(R, La, Lb) values of R resampled comparisons: replicate r pairs rows ``rows_a[r]``
        of a (None: a's rows as they are) with rows ``rows_b[r]`` of b, each (R, m) indices
        into the n rows of ``comparison``.

        The default resamples both prepared sides and compares them; measures override it
        when a whole batch of replicates has a faster form (e.g. CKA's GEMMs)."""
        values = []
        resampled = replace(comparison, n=np.shape(rows_b)[1])
        for r, rows in enumerate(rows_b):
            side_a = a if rows_a is None else self.resample(a, rows_a[r], comparison)
            pair = self.compare(side_a, self.resample(b, rows, comparison), resampled)
            values.append(pair.cpu().numpy() if isinstance(pair, torch.Tensor) else pair)
        return np.asarray(values, dtype=np.float64).reshape(len(rows_b), *np.shape(values[0]))

    def jackknife(self, a: Any, b: Any, comparison: Comparison) -> np.ndarray:
        """(G, La, Lb) values with group g of the inputs left out, for the jackknife.

        The default is the grouped (delete-h) jackknife: the n inputs are dealt into
        G = min(n, :data:`JACKKNIFE_GROUPS`) groups (input i to group i mod G), and each
        replicate compares resampled sides without one group, so its cost is G maps whatever
        n is. Measures with a closed form override it with the delete-one jackknife (G = n;
        CKA's costs about one GEMM)."""
        n = comparison.n
        groups = np.arange(n) % min(n, JACKKNIFE_GROUPS)
        rows = [np.flatnonzero(groups != g) for g in range(groups.max() + 1)]
        if len({len(r) for r in rows}) == 1:
            return self.replicates(a, b, np.array(rows), np.array(rows), comparison)
        return np.concatenate([self.replicates(a, b, r[None], r[None], comparison)
                               for r in rows])


class PairwiseMeasure(Measure):
    """A measure given by a per-layer step :meth:`layer` and a per-pair value :meth:`pair`."""

    def layer(self, x: torch.Tensor) -> Any:
        """What the pairs need of one (n, p) float64 layer (default: the layer itself)."""
        return x

    def pair(self, a: Any, b: Any) -> float:
        raise NotImplementedError

    def prepare(self, layers, names, comparison):
        return [self.layer(x) for x in layers]

    def compare(self, a, b, comparison):
        return np.array([[self.pair(x, y) for y in b] for x in a], dtype=np.float64)


MEASURES: dict[str, type[Measure]] = {}
JACKKNIFE_GROUPS = 100  # replicates of the default (grouped) jackknife


def register(cls: type[Measure]) -> type[Measure]:
    """Class decorator: make ``cls`` available as ``similarity_matrix(measure=cls.name)``."""
    for attr in ("name", "label", "direction", "value_range", "identical"):
        if not hasattr(cls, attr):
            raise TypeError(f"measure {cls.__name__} must declare {attr}")
    if cls.direction not in ("similarity", "distance"):
        raise TypeError(f"measure {cls.name!r}: direction must be 'similarity' or 'distance', "
                        f"got {cls.direction!r}")
    if cls.name in MEASURES and MEASURES[cls.name] is not cls:
        raise ValueError(f"a measure named {cls.name!r} is already registered "
                         f"({MEASURES[cls.name].__name__}); choose another name")
    MEASURES[cls.name] = cls
    return cls


def get_measure(measure: str | Measure, **params: Any) -> Measure:
    """A configured measure: an instance as it is, or the registered class ``measure`` built
    with ``params``."""
    if isinstance(measure, Measure):
        if params:
            raise ValueError(f"parameters {sorted(params)} were given with a measure instance; "
                             "set them when constructing it")
        return measure
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; registered measures: "
                         f"{sorted(MEASURES)}")
    try:
        return MEASURES[measure](**params)
    except TypeError as err:
        raise ValueError(f"measure {measure!r} does not take these parameters "
                         f"{sorted(params)} ({err})") from None


def distinct_rows(rows: np.ndarray, n: int, measure: str) -> np.ndarray:
    """``rows`` as (m,) int indices into n rows, checked to be distinct (a permutation or a
    subset), for measures whose :meth:`Measure.resample` cannot take repeated inputs."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be a 1-d array of integer indices, got shape {rows.shape} "
                         f"of {rows.dtype}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must index the {n} inputs (0 to {n - 1}), got values from "
                         f"{rows.min()} to {rows.max()}")
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"measure {measure!r} resamples distinct inputs only (a permutation or "
                         "a subset), got repeated rows (a bootstrap draw); its intervals come "
                         "from the delete-one jackknife (repsim.stats)")
    return rows
