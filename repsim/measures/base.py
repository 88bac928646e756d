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
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

__all__ = ["MEASURES", "Comparison", "Measure", "PairwiseMeasure", "get_measure", "register"]

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
