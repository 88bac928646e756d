"""Two activation sources as the rows-paired inputs of a layer-by-layer measure.

Every check that does not depend on the measure is here, once: the sources, the reduction
each one is read at, the layers selected, and that both hold the same inputs in the same
order: the same dataset and split where their provenance (``meta``) records them, and the same
dataset indices where both know them. Layers are read as float64 tensors, all finite.

Provenance known on one side only (e.g. an activation file against arrays in memory) cannot be
checked: the sources are compared with a :class:`ProvenanceWarning` naming what is unknown.
:func:`check_provenance` is the rule, also used by the probes for their train and test splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repsim.sources import ActivationSource, as_source

__all__ = ["Pairing", "ProvenanceWarning", "Side", "as_float64", "check_layer_list",
           "check_provenance", "pair_sources"]

FLATTEN = "flatten"  # the reduction read from sources with stored reductions when none is given
# provenance that row-paired sources must share, and the fix when they do not
SAME_INPUTS = dict.fromkeys(("dataset", "split"), "the measure compares the same inputs "
                            "through two networks; extract both on one split of one dataset")

ArrayLike = Any  # numpy.ndarray | torch.Tensor of shape (n, p)


class ProvenanceWarning(UserWarning):
    """One of two sources records where its rows come from (e.g. its dataset) and the other
    does not, so whether they belong together cannot be checked."""


@dataclass(frozen=True)
class Side:
    """One source read at one reduction; ``role`` ("a" or "b") names it in messages."""

    source: ActivationSource
    role: str
    reduction: str | None  # None: in-memory arrays taken as they are

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.source.layers)

    def read(self, layer: str, rows: slice | None = None, device: torch.device | None = None):
        """(rows, p) activations; as a float64 tensor on ``device`` when one is given."""
        x = self.source.read(layer, self.reduction, rows)
        return x if device is None else as_float64(x, f"layer {layer!r} of {self.role}", device)

    def read_all(self, layers: Sequence[str], device: torch.device,
                 tick=lambda: None) -> Iterator[torch.Tensor]:
        """Each layer's (n, p) float64 activations in turn, calling ``tick`` after each."""
        for layer in layers:
            yield self.read(layer, None, device)
            tick()

    def width(self, layer: str) -> int:
        """p of ``layer`` from the source's metadata; -1 for a layer that is not a matrix
        (refused when it is read)."""
        shape = self.source.shape(layer, self.reduction)
        return shape[1] if len(shape) == 2 else -1


@dataclass(frozen=True)
class Pairing:
    """Two sides with the selected layers of each and their shared row count n."""

    a: Side
    b: Side
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    n: int

    @property
    def reduction(self) -> str | None:
        return self.a.reduction or self.b.reduction

    def widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (tuple(self.a.width(m) for m in self.layers_a),
                tuple(self.b.width(m) for m in self.layers_b))


def pair_sources(a: Any, b: Any, *, reduction: str | None = None,
                 layers_a: Sequence[str] | None = None,
                 layers_b: Sequence[str] | None = None) -> Pairing:
    """Check and pair two sources (or ``{layer: (n, p) array}`` dicts).

    Sources with stored reductions are read at ``reduction`` (default "flatten", or the only
    reduction a source stores); in-memory
    arrays are taken as they are. Both must hold the same n inputs, and the same dataset
    indices in the same order where both know them.
    """
    side_a = _side(as_source(a, "a"), "a", reduction)
    side_b = _side(as_source(b, "b"), "b", reduction)
    if reduction is not None and side_a.reduction is None and side_b.reduction is None:
        raise ValueError(f"reduction={reduction!r} applies to activation files, but a and b are "
                         f"both dicts of (n, p) arrays, which are already reduced; omit it")
    names_a = _select_layers(layers_a, side_a, "layers_a")
    names_b = _select_layers(layers_b, side_b, "layers_b")
    check_provenance((side_a.source, "a"), (side_b.source, "b"), SAME_INPUTS)
    return Pairing(side_a, side_b, names_a, names_b, _check_rows(side_a, side_b))


def check_provenance(first: tuple[ActivationSource, str], second: tuple[ActivationSource, str],
                     rules: Mapping[str, str | None], *,
                     error: type[Exception] = ValueError) -> None:
    """Check the provenance of two (source, role) pairs, ``meta[key]`` for each key of ``rules``.

    Values known on both sides that differ raise ``error`` naming both and the fix
    ``rules[key]`` (``None``: they may differ, e.g. the splits of a train and a test set).
    Values known on one side only are named in one :class:`ProvenanceWarning`: the sources are
    used, but whether they belong together cannot be checked.
    """
    (a, role_a), (b, role_b) = first, second
    meta_a, meta_b = a.meta, b.meta  # read once: a file parses its attributes on each access
    unknown = []
    for key, fix in rules.items():
        value_a, value_b = meta_a.get(key), meta_b.get(key)
        if value_a is not None and value_b is not None:
            if fix is not None and value_a != value_b:
                raise error(f"{_described(a, role_a)} and {_described(b, role_b)} hold "
                            f"different {key}s ({value_a!r} vs {value_b!r}): {fix}")
        elif value_a is not None or value_b is not None:
            lacking, role, value = ((second, role_a, value_a) if value_b is None
                                    else (first, role_b, value_b))
            unknown.append(f"{_described(*lacking)} records no {key} but {role} records "
                           f"{value!r}")
    if unknown:
        warnings.warn(f"{'; '.join(unknown)}: whether they belong together cannot be checked; "
                      "record the provenance in both sources' meta", ProvenanceWarning,
                      stacklevel=3)


def as_float64(x: ArrayLike, what: str, device: str | torch.device) -> torch.Tensor:
    """(n, p) ndarray or tensor → (n, p) float64 tensor on ``device``, all finite."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.require(arr, np.float64, ["C", "W"]))
    if t.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, p), got shape {tuple(t.shape)}; flatten the "
                         f"trailing axes first, e.g. x.reshape(len(x), -1)")
    t = t.to(device=device, dtype=torch.float64)
    if not torch.isfinite(t.sum()):  # a cheap pass; locate the culprits only when it fails
        bad = ~torch.isfinite(t)
        if bad.any():
            raise ValueError(
                f"{what} has {int(bad.sum())} NaN or infinite entries (first in row "
                f"{int(bad.any(1).nonzero()[0, 0])}); similarity is undefined for them: drop "
                f"or repair those rows")
    return t


def check_layer_list(layers: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(layers, str):
        raise TypeError(f"{what} must be a list of layer names, got the string {layers!r}; "
                        f"write [{layers!r}]")
    names = tuple(layers)
    if not names:
        raise ValueError(f"{what} is empty; give at least one layer name")
    return names


def _described(source: ActivationSource, role: str) -> str:
    """``role``, with the file's path for a source read from a file: "a (acts/bp.h5)"."""
    path = getattr(source, "path", None)
    return role if path is None else f"{role} ({path})"


def _side(source: ActivationSource, role: str, reduction: str | None) -> Side:
    """``source`` read at ``reduction``; by default "flatten", or the only one it stores."""
    stored = list(source.reductions)
    if not stored:
        return Side(source, role, None)
    if reduction is None:
        reduction = stored[0] if len(stored) == 1 else FLATTEN
    return Side(source, role, reduction)


def _select_layers(requested: Sequence[str] | None, side: Side, what: str) -> tuple[str, ...]:
    if requested is None:
        return side.layers
    names = check_layer_list(requested, what)
    unknown = [m for m in names if m not in side.layers]
    if unknown:
        raise ValueError(f"{what} names unknown layers {unknown}; {side.role} has "
                         f"{list(side.layers)}")
    return names


def _check_rows(a: Side, b: Side) -> int:
    """n shared by both sides; both must also hold the same dataset indices in the same order."""
    if a.source.n != b.source.n:
        raise ValueError(f"a has {a.source.n} rows and b has {b.source.n}; the measure needs "
                         f"both networks' activations on the same inputs in the same order")
    idx_a, idx_b = a.source.indices, b.source.indices
    if idx_a is not None and idx_b is not None:
        differ = np.flatnonzero(np.asarray(idx_a) != np.asarray(idx_b))
        if differ.size:
            i = differ[0]
            raise ValueError(
                f"a and b hold different inputs: {differ.size} of {a.source.n} rows differ, "
                f"first row {i} (dataset index {idx_a[i]} in a, {idx_b[i]} in b); "
                f"extract both files from the same split with the same indices")
    return a.source.n
