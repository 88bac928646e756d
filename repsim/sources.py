"""Activation sources: the one interface that CKA, probes and every other measure read.

A source holds the (N, D) activation matrices of one model's layers on N inputs, under one or
more reductions (``flatten``, ``gap``, ``pool<k>``), with what is known about the rows:

* ``layers`` (names in depth order), ``reductions``, ``n`` = N;
* ``shape(layer, reduction)`` = (N, D) and ``original_shape(layer)`` (per input, e.g.
  (C, H, W)), from metadata: learning a width never reads a row;
* ``labels`` (N,) int64 or None, ``indices`` (N,) dataset indices or None, ``meta`` the
  provenance (checkpoint digest, dataset, split, …);
* ``read(layer, reduction, rows=slice)`` → (rows, D) array and
  ``iter_blocks(layer, reduction, block_rows)`` → consecutive (≤ block_rows, D) blocks.

Two implementations: :class:`repsim.store.ActivationFile` (HDF5, larger than memory) and
:class:`ActivationSet` (arrays in memory). :func:`as_source` wraps a plain ``{layer: array}``
dict once, so every analysis accepts dicts as a convenience.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ActivationSet", "ActivationSource", "SourceError", "as_source", "check_block_rows"]


class SourceError(ValueError):
    """Arrays that do not make a valid activation source, or a read it cannot serve."""


@runtime_checkable
class ActivationSource(Protocol):
    """What an analysis reads; see the module docstring for the meaning of each member."""

    @property
    def layers(self) -> list[str]: ...

    @property
    def reductions(self) -> list[str]: ...

    @property
    def n(self) -> int: ...

    @property
    def labels(self) -> np.ndarray | None: ...

    @property
    def indices(self) -> np.ndarray | None: ...

    @property
    def meta(self) -> dict: ...

    def shape(self, layer: str, reduction: str) -> tuple[int, ...]: ...

    def original_shape(self, layer: str) -> tuple[int, ...]: ...

    def read(self, layer: str, reduction: str, rows: slice | None = None) -> np.ndarray: ...

    def iter_blocks(self, layer: str, reduction: str, block_rows: int
                    ) -> Iterator[np.ndarray]: ...


class ActivationSet:
    """An in-memory :class:`ActivationSource`: layer name → (N, D) array, all of one reduction.

    ``layers``: name → (N, D) array or tensor, in depth order; ``labels`` (N,) or None;
    ``meta``: provenance (e.g. dataset, split); ``indices`` (N,) dataset indices or None;
    ``reduction``: what the arrays are (e.g. "gap"); None for arrays taken as they are, which
    then serve any reduction asked for. ``name`` is used in error messages.

    >>> acts = ActivationSet.from_arrays({"block1": x1, "block2": x2}, labels=y,
    ...                                  meta={"split": "test"})            # doctest: +SKIP
    """

    def __init__(self, layers: Mapping[str, Any], labels: Any = None,
                 meta: Mapping[str, Any] | None = None, indices: Any = None,
                 reduction: str | None = "gap", *, name: str = "the activation set"):
        if not isinstance(layers, Mapping):
            raise SourceError(f"{name} must map layer names to (N, D) arrays, got "
                              f"{type(layers).__name__}")
        if not layers:
            raise SourceError(f"{name} has no layers; pass a dict name → (n, p) array")
        shapes = {layer: tuple(np.shape(x)) for layer, x in layers.items()}
        rows = {s[0] if s else 0 for s in shapes.values()}
        if len(rows) > 1:
            raise SourceError(f"the layers of {name} have different row counts {shapes}; every "
                              "layer must hold the same n inputs")
        self._arrays = dict(layers)
        self._shapes = shapes
        self._n = rows.pop()
        self._labels = _vector(labels, "labels", self._n, name)
        self._indices = _vector(indices, "indices", self._n, name)
        self._meta = dict(meta or {})
        self.reduction = reduction
        self.name = name

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], *, labels: Any = None, indices: Any = None,
                    meta: Mapping[str, Any] | None = None, reduction: str | None = "gap",
                    name: str = "the activation set") -> ActivationSet:
        """The same as the constructor, with every argument but the arrays by keyword."""
        return cls(arrays, labels, meta, indices, reduction, name=name)

    @property
    def layers(self) -> list[str]:
        return list(self._arrays)

    @property
    def reductions(self) -> list[str]:
        return [] if self.reduction is None else [self.reduction]

    @property
    def n(self) -> int:
        return self._n

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._labels is None else self._labels.copy()

    @property
    def indices(self) -> np.ndarray | None:
        return None if self._indices is None else self._indices.copy()

    @property
    def meta(self) -> dict:
        return dict(self._meta)

    @property
    def arrays(self) -> dict[str, Any]:
        """The arrays as given, name → (N, D)."""
        return dict(self._arrays)

    def shape(self, layer: str, reduction: str | None = None) -> tuple[int, ...]:
        """The stored array's shape, (N, D) for a matrix."""
        self._check(layer, reduction)
        return self._shapes[layer]

    def original_shape(self, layer: str) -> tuple[int, ...]:
        """Per-input shape: in memory only the reduced one, (D,), is known."""
        return self.shape(layer)[1:]

    def read(self, layer: str, reduction: str | None = None,
             rows: slice | None = None) -> Any:
        """(rows, D) activations of ``layer`` as stored (a view, not a copy)."""
        self._check(layer, reduction)
        return self._arrays[layer][slice(None) if rows is None else rows]

    def iter_blocks(self, layer: str, reduction: str | None, block_rows: int
                    ) -> Iterator[Any]:
        """Consecutive (≤ block_rows, D) views covering all N rows in order."""
        block_rows = check_block_rows(block_rows)
        self._check(layer, reduction)
        return (self.read(layer, reduction, slice(start, start + block_rows))
                for start in range(0, self._n, block_rows))

    def __repr__(self) -> str:
        return (f"ActivationSet(n={self._n}, layers={len(self._arrays)}, "
                f"reduction={self.reduction!r})")

    def _check(self, layer: str, reduction: str | None) -> None:
        if layer not in self._arrays:
            raise SourceError(f"layer {layer!r} is not in {self.name}; it has {self.layers}")
        if reduction is not None and self.reduction is not None and reduction != self.reduction:
            raise SourceError(f"these in-memory activations are {self.reduction!r} features, "
                              f"not {reduction!r}; pass reduction={self.reduction!r}")


def as_source(obj: Any, role: str) -> ActivationSource:
    """``obj`` as an :class:`ActivationSource`: sources as they are, a plain dict
    name → (n, p) array wrapped once as an :class:`ActivationSet` of arrays taken as they
    are. ``role`` names the argument in error messages (e.g. "a")."""
    if isinstance(obj, Mapping):
        return ActivationSet.from_arrays(obj, reduction=None, name=role)
    if not isinstance(obj, ActivationSource):
        raise TypeError(f"{role} must be a dict name → (n, p) array or an activation source "
                        f"(ActivationFile, ActivationSet); got {type(obj).__name__}")
    return obj


def check_layer_names(train: ActivationSource, test: ActivationSource,
                      layers: Sequence[str] | None, error: type[Exception],
                      verb: str) -> list[str]:
    """``layers`` (None: all of ``train``'s), each of which both sets must hold; otherwise
    ``error`` naming the missing layers and the set's own, or that there is nothing to
    ``verb`` (e.g. "probe")."""
    names = list(train.layers) if layers is None else list(layers)
    if not names:
        raise error(f"no layers to {verb}: layers is empty")
    for role, source in (("train", train), ("test", test)):
        missing = [name for name in names if name not in source.layers]
        if missing:
            raise error(f"layer(s) {missing} are not in the {role} set, which has "
                        f"{list(source.layers)}; extract them or pass layers=[...]")
    return names


def check_block_rows(block_rows: Any, error: type[Exception] = SourceError) -> int:
    """``block_rows`` of a block iteration as a positive int; anything else raises ``error``."""
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) \
            or block_rows < 1:
        raise error(f"block_rows must be a positive int, got {block_rows!r}")
    return int(block_rows)


def _vector(values: Any, what: str, n: int, name: str) -> np.ndarray | None:
    """(n,) copy of labels or indices (as given: labels may be any class names), or None."""
    if values is None:
        return None
    vector = np.asarray(values)
    if vector.shape != (n,):
        raise SourceError(f"{what} of {name} must have shape ({n},), one per row, got "
                          f"{vector.shape}")
    return vector.copy()
