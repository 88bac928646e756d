"""Feature matrices for the linear probe, in memory or streamed from a source in row blocks.

A probe of a layer whose train features do not fit in memory reads them from the activation
source in blocks of rows, again for every evaluation of the objective: only one block, the
D × D preconditioner and a few vectors per row are held at a time
(:func:`repsim.probe.probe_memory`).

* :class:`StreamedFeatures` (public) names the (N, D) matrix of one layer and reduction of an
  activation source (:class:`repsim.sources.ActivationSource`: an activation file, in-memory
  arrays, …) and the block size; :class:`repsim.probe.LinearProbe` fits, predicts and scores
  it like an array.
* :func:`column_moments` gives the standardisation of such a matrix in two passes.
* :class:`MemoryRows` and :class:`StreamedRows` are what the torch solver iterates over:
  standardised blocks (b, D) on the solver's device with their class codes (b,).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repsim.sources import ActivationSource, check_block_rows

__all__ = ["ProbeError", "StreamedFeatures", "check_finite", "column_moments", "describe_layer",
           "feature_width"]

# Rows per block when an in-memory matrix is reduced column-wise (the standardisation):
# bounds the float64 temporaries to 8·ROW_BLOCK·D bytes, whatever N is.
ROW_BLOCK = 8192


class ProbeError(ValueError):
    """Inputs a linear probe cannot be fitted or evaluated on; the message says how to fix it.

    Public as :class:`repsim.probe.ProbeError`; defined here, where the first checks run."""


@dataclass(frozen=True)
class StreamedFeatures:
    """The (N, D) features of ``layer`` under ``reduction`` in ``source``, read in row blocks.

    ``source``: a :class:`repsim.sources.ActivationSource` (e.g. a
    :class:`repsim.store.ActivationFile` or a :class:`repsim.sources.ActivationSet`).
    ``block_rows``: rows read at a time; :func:`repsim.probe.probe_block_rows` picks it from
    a memory budget.

    >>> probe = LinearProbe().fit(StreamedFeatures(train, "layers.s3b4", "flatten", 2048),
    ...                           train.labels)                          # doctest: +SKIP
    """

    source: ActivationSource
    layer: str
    reduction: str
    block_rows: int

    def __post_init__(self):
        object.__setattr__(self, "block_rows", check_block_rows(self.block_rows, ProbeError))

    @property
    def shape(self) -> tuple[int, int]:
        """(N, D), from the source's metadata (``n`` and ``shape``); no row is read."""
        width = feature_width(tuple(self.source.shape(self.layer, self.reduction)),
                              f"{self.layer!r} ({self.reduction})")
        return int(self.source.n), width

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, (≤ block_rows, D) float array) for consecutive blocks covering all rows,
        read with the source's ``iter_blocks``."""
        start = 0
        what = describe_layer(self.source, self.layer, self.reduction)
        for block in self.source.iter_blocks(self.layer, self.reduction, self.block_rows):
            block = np.asarray(block)
            check_finite(block, start, what)
            yield start, block
            start += len(block)


def feature_width(x: Any, what: str = "features") -> int:
    """D of an (n, D) array ``x``, or of the array a source describes when ``x`` is its shape
    (a tuple, e.g. ``source.shape(layer, reduction)``); anything else is refused with the fix."""
    shape = tuple(int(s) for s in x) if isinstance(x, tuple) else np.shape(x)
    if len(shape) != 2:
        raise ProbeError(f"{what} must be an (n_samples, n_features) array, got shape {shape}. "
                         "Reshape your data: x.reshape(len(x), -1) for per-sample maps, "
                         "x.reshape(-1, 1) for one feature, x.reshape(1, -1) for one sample; "
                         "or extract the layer with a reduction")
    return int(shape[1])


def array_blocks(x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, view) for blocks of :data:`ROW_BLOCK` rows of an in-memory x (N, D)."""
    for start in range(0, len(x), ROW_BLOCK):
        yield start, x[start:start + ROW_BLOCK]


def describe_layer(source: ActivationSource, layer: str, reduction: str) -> str:
    """A layer of a source for messages: "'s2b1' (gap) of runs/bp__test.h5" (a file), or of an
    in-memory set, by its name ("'s2b1' (gap) of the train set")."""
    where = getattr(source, "path", None) or getattr(source, "name", None) \
        or type(source).__name__
    return f"{layer!r} ({reduction}) of {where}"


def check_finite(block: Any, start: int, what: str) -> None:
    """Refuse NaN or infinite values in the float rows ``block`` (b, D) (an array or tensor),
    rows start … start+b−1 of the matrix ``what`` (e.g. :func:`describe_layer`); other dtypes
    are checked on fitting."""
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu().numpy()
    block = np.asarray(block)
    if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
        bad = ~np.isfinite(block)
        row = start + int(np.argwhere(bad)[0, 0])
        raise ProbeError(f"{what} has {int(bad.sum())} NaN or infinite values in rows "
                         f"{start}…{start + len(block) - 1}, the first in row {row}; check the "
                         "layer's activations")


def column_moments(blocks: Callable[[], Iterable[tuple[int, np.ndarray]]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (D,) float64 of the rows that ``blocks()`` yields.

    Two passes (the mean first, then the squared deviations from it) with float64 sums, so
    the result does not depend on the block size beyond rounding. A feature whose variance is
    within rounding error of 0 gets scale 1, by scikit-learn's ``StandardScaler`` rule, so it
    standardises to 0 rather than to noise or NaN.
    """
    n, total = 0, 0.0
    for _, block in blocks():
        n += len(block)
        total = total + block.sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = 0.0
    for _, block in blocks():
        squares = squares + _squared_deviations(block, mean)
    var = squares / n
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return mean, np.where(constant, 1.0, np.sqrt(var))


def _squared_deviations(block: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Σ over rows of (block − mean)², (D,) float64, for block (b, D): a function so that the
    float64 deviations (8·b·D bytes) are freed before the next block is read."""
    deviation = block - mean
    return np.einsum("ij,ij->j", deviation, deviation)


def standardise(block: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(block − mean) / scale, block (b, D), in the block's precision (at least float32): a
    float64 copy of a large float32 layer would double its memory."""
    dtype = np.promote_types(block.dtype, np.float32)
    return (block - mean.astype(dtype)) / scale.astype(dtype)


# ---------------------------------------------------------------------------------------------
# What the torch solver iterates over
# ---------------------------------------------------------------------------------------------


class MemoryRows:
    """Standardised features z (n, D), already on the solver's device, and codes (n,)."""

    def __init__(self, z: torch.Tensor, codes: np.ndarray):
        self.z, self.codes = z, np.asarray(codes)
        self._targets = torch.as_tensor(self.codes, device=z.device)

    @property
    def n(self) -> int:
        return len(self.codes)

    @property
    def dim(self) -> int:
        return self.z.shape[1]

    def subset(self, rows: np.ndarray) -> MemoryRows:
        """These rows (positions 0 … n−1) alone, as a copy."""
        return MemoryRows(self.z[torch.as_tensor(rows, device=self.z.device)], self.codes[rows])

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One block: all of z (n, D) and the codes (n,) as a tensor."""
        yield self.z, self._targets


class StreamedRows:
    """Rows ``keep`` (N,) bool of streamed features, standardised block by block on reading."""

    def __init__(self, features: StreamedFeatures, mean: np.ndarray, scale: np.ndarray,
                 codes: np.ndarray, keep: np.ndarray, *, dtype: torch.dtype,
                 device: torch.device):
        self.features, self.mean, self.scale = features, mean, scale
        self.all_codes, self.keep = np.asarray(codes), np.asarray(keep, dtype=bool)
        self.dtype, self.device = dtype, device
        self.codes = self.all_codes[self.keep]

    @property
    def n(self) -> int:
        return len(self.codes)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def subset(self, rows: np.ndarray) -> StreamedRows:
        """These rows (positions 0 … n−1 among the kept ones) alone; nothing is read."""
        keep = np.zeros_like(self.keep)
        keep[np.flatnonzero(self.keep)[rows]] = True
        return StreamedRows(self.features, self.mean, self.scale, self.all_codes, keep,
                            dtype=self.dtype, device=self.device)

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Standardised kept rows (b, D) of each block read, and their codes (b,)."""
        for start, block in self.features.blocks():
            stop = start + len(block)
            mask = self.keep[start:stop]
            if not mask.any():
                continue
            z = standardise(block if mask.all() else block[mask], self.mean, self.scale)
            yield (torch.as_tensor(z, dtype=self.dtype, device=self.device),
                   torch.as_tensor(self.all_codes[start:stop][mask], device=self.device))
