"""Reading activation files written by :func:`repsim.extract.extract`.

Layout of one file (one model, one dataset split, N rows in dataset order)::

    /                                attrs: format, format_version, versions (json), created,
                                            layers (json list), reductions (json list), complete
    /data/index                      (N,) int64  dataset index of each row, ascending
    /data/label                      (N,) int64
    /model                           attrs: one JSON string per provenance key (``meta``)
    /layers/<k:02d>_<name>           attrs: module, original_shape (per-sample C, H, W)
    /layers/<k:02d>_<name>/<red>     (N, D) float32, row-block chunks of ~1 MiB,
                                            attrs: module, original_shape, reduction

The file is written under a temporary name and renamed when complete, and ``complete`` is set
last, so a reader that finds it can trust every dataset.

On NFS and some cluster file systems HDF5's file locking fails ("unable to lock file");
set the environment variable ``HDF5_USE_FILE_LOCKING=FALSE`` before opening the file.
h5py handles cannot be pickled: an :class:`ActivationFile` pickles as its path and reopens
itself, so it can be handed to DataLoader workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

FORMAT = "repsim-activations"
FORMAT_VERSION = 1


class ActivationFileError(ValueError):
    """An activation file that is incomplete, damaged, of another format, or misused."""


def layer_group(k: int, name: str) -> str:
    """Path of the group that holds layer ``k`` (module name ``name``)."""
    return f"layers/{k:02d}_{name}"


def rows_per_chunk(d: int) -> int:
    """Rows in one ~1 MiB chunk of a (N, d) float32 dataset."""
    return max(1, 2**20 // (d * 4))


class ActivationFile:
    """Read-only view of one activation file; use as a context manager or call :meth:`close`.

    >>> with ActivationFile("acts/bp__test.h5") as f:         # doctest: +SKIP
    ...     x = f.read(f.layers[3], "gap")                      # (N, C) float32
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._h5 = _open_checked(self.path)
        try:
            self._layers: list[str] = json.loads(self._h5.attrs["layers"])
            self._reductions: list[str] = json.loads(self._h5.attrs["reductions"])
            self._labels = _read_vector(self._h5, "data/label", self.path)
            self._indices = _read_vector(self._h5, "data/index", self.path)
        except BaseException:
            self._h5.close()
            raise

    @property
    def layers(self) -> list[str]:
        """Module names of the stored layers, in the order they were requested."""
        return list(self._layers)

    @property
    def reductions(self) -> list[str]:
        """Reductions stored for every layer, e.g. ``["flatten", "gap"]``."""
        return list(self._reductions)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 label of each row."""
        return self._labels.copy()

    @property
    def indices(self) -> np.ndarray:
        """(N,) int64 dataset index of each row, ascending."""
        return self._indices.copy()

    @property
    def n(self) -> int:
        """Number of rows N."""
        return len(self._indices)

    @property
    def meta(self) -> dict:
        """Provenance given to ``extract(meta=...)``: checkpoint sha256, dataset, split, …"""
        return {key: json.loads(value) for key, value in self._h5["model"].attrs.items()}

    @property
    def attrs(self) -> dict:
        """Root attributes: format, format_version, versions (dict), created, …"""
        out = dict(self._h5.attrs)
        out["versions"] = json.loads(out["versions"])
        return out

    def shape(self, layer: str, reduction: str) -> tuple[int, int]:
        """(N, D) of the stored matrix of ``layer`` under ``reduction``."""
        return tuple(self._dataset(layer, reduction).shape)

    def original_shape(self, layer: str) -> tuple[int, ...]:
        """Per-sample shape of the module's output before reduction, e.g. (C, H, W)."""
        group = self._h5[layer_group(self._layer_position(layer), layer)]
        return tuple(int(s) for s in group.attrs["original_shape"])

    def read(self, layer: str, reduction: str, rows: slice | None = None) -> np.ndarray:
        """(rows, D) float32 activations; ``rows`` (a slice) reads only those rows."""
        if rows is None:
            rows = slice(None)
        if not isinstance(rows, slice):
            raise ActivationFileError(
                f"rows must be a slice (e.g. slice(0, 1000)), got {type(rows).__name__}; "
                "read a slice and index it in memory for arbitrary rows"
            )
        dataset = self._dataset(layer, reduction)
        try:
            return np.asarray(dataset[rows], dtype=np.float32)
        except OSError as err:
            raise _damaged(self.path, err) from err

    def iter_blocks(self, layer: str, reduction: str, block_rows: int) -> Iterator[np.ndarray]:
        """Consecutive (≤ block_rows, D) float32 blocks covering all N rows in order."""
        if not isinstance(block_rows, int) or block_rows < 1:
            raise ActivationFileError(f"block_rows must be a positive int, got {block_rows!r}")
        self._dataset(layer, reduction)  # fail on a bad name now, not at the first next()
        return (self.read(layer, reduction, slice(start, start + block_rows))
                for start in range(0, self.n, block_rows))

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> ActivationFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return (
            f"ActivationFile({str(self.path)!r}, n={self.n}, layers={len(self._layers)}, "
            f"reductions={self._reductions})"
        )

    def _layer_position(self, layer: str) -> int:
        if layer not in self._layers:
            raise ActivationFileError(
                f"layer {layer!r} is not in {self.path}; stored layers: {self._layers}"
            )
        return self._layers.index(layer)

    def _dataset(self, layer: str, reduction: str) -> h5py.Dataset:
        k = self._layer_position(layer)
        if reduction not in self._reductions:
            raise ActivationFileError(
                f"reduction {reduction!r} is not in {self.path}; stored reductions: "
                f"{self._reductions} (extract again with reductions=(..., {reduction!r}))"
            )
        return self._h5[f"{layer_group(k, layer)}/{reduction}"]


def _damaged(path: Path, err: OSError) -> ActivationFileError:
    return ActivationFileError(
        f"{path} is damaged or truncated and cannot be read (HDF5 said: {err}); "
        "delete it and extract again"
    )


def _open_checked(path: Path) -> h5py.File:
    """Open ``path`` read-only and check it is a complete file of this format and version."""
    if not path.exists():
        raise FileNotFoundError(
            f"activation file {path} does not exist; create it with repsim.extract.extract"
        )
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise _damaged(path, err) from err
    try:
        _check_header({k: _plain(v) for k, v in h5.attrs.items()}, path)
    except BaseException:
        h5.close()
        raise
    return h5


def _check_header(attrs: dict, path: Path) -> None:
    if attrs.get("format") != FORMAT:
        raise ActivationFileError(
            f"{path} is not a repsim activation file (format attribute "
            f"{attrs.get('format')!r}, expected {FORMAT!r})"
        )
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise ActivationFileError(
            f"{path} has format version {version!r} but this repsim reads version "
            f"{FORMAT_VERSION}; extract it again with this version of repsim"
        )
    if not attrs.get("complete", False):
        raise ActivationFileError(
            f"{path} is incomplete (its writer did not finish); delete it and extract again"
        )


def _plain(value):
    """numpy scalars as Python scalars, so messages read ``99``, not ``np.int64(99)``."""
    return value.item() if isinstance(value, np.generic) else value


def _read_vector(h5: h5py.File, name: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(h5[name][()], dtype=np.int64)
    except OSError as err:
        raise _damaged(path, err) from err
