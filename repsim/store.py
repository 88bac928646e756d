"""The activation file format: its layout, its writer and its reader.

One file holds one model's activations on one dataset split, N rows in dataset order::

    /                                attrs: format, format_version, versions (json), created,
                                            layers (json list), reductions (json list),
                                            compression, complete
    /data/index                      (N,) int64  dataset index of each row, ascending
    /data/label                      (N,) int64
    /model                           attrs: one JSON string per provenance key (``meta``)
    /layers/<k:02d>_<name>           attrs: module, original_shape (per-sample C, H, W)
    /layers/<k:02d>_<name>/<red>     (N, D) float32, row-block chunks of ~1 MiB,
                                            attrs: module, original_shape, reduction

:class:`ActivationWriter` writes a file batch by batch (:func:`repsim.extract.extract` feeds
it from forward hooks): under a temporary name beside the target, renamed when complete, and
``complete`` is set last, so a reader that finds the file can trust every dataset.
:class:`ActivationFile` reads it back and refuses incomplete, damaged or foreign files. This
module works on numpy arrays only; it does not import torch.

On NFS and some cluster file systems HDF5's file locking fails ("unable to lock file");
set the environment variable ``HDF5_USE_FILE_LOCKING=FALSE`` before opening the file.
h5py handles cannot be pickled: an :class:`ActivationFile` pickles as its path and reopens
itself, so it can be handed to DataLoader workers.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

import repsim

FORMAT = "repsim-activations"
FORMAT_VERSION = 1
COMPRESSIONS = ("lzf", "gzip", None)  # h5py filters; gzip at h5py's default level 4
INDEX_CHUNK_ROWS = 2**17  # int64 rows in a 1 MiB chunk of /data/index and /data/label
MAX_META_BYTES = 32 * 2**10  # HDF5 attributes above ~64 KiB fail; stay well below


class ActivationFileError(ValueError):
    """An activation file that is incomplete, damaged, of another format, or misused."""


def layer_group(k: int, name: str) -> str:
    """Path of the group that holds layer ``k`` (module name ``name``)."""
    return f"layers/{k:02d}_{name}"


def rows_per_chunk(d: int) -> int:
    """Rows in one ~1 MiB chunk of a (N, d) float32 dataset."""
    return max(1, 2**20 // (d * 4))


def check_compression(compression: str | None) -> None:
    """Refuse a compression other than those in :data:`COMPRESSIONS`."""
    if compression not in COMPRESSIONS:
        raise ActivationFileError(
            f"compression must be one of {COMPRESSIONS}, got {compression!r}"
        )


def check_meta(meta: dict | None) -> dict:
    """``meta`` (None or empty for none) as a new dict, checked to fit the JSON attributes of
    ``/model``: string keys, JSON-serialisable values of at most :data:`MAX_META_BYTES`."""
    meta = meta or {}
    if not isinstance(meta, dict):
        raise ActivationFileError(f"meta must be a dict, got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise ActivationFileError(f"meta keys must be strings, got {key!r}")
        try:
            encoded = json.dumps(value)
        except TypeError as err:
            raise ActivationFileError(
                f"meta[{key!r}] is not JSON-serialisable ({err}); convert it to "
                "str/number/list/dict first"
            ) from None
        if len(encoded) > MAX_META_BYTES:
            raise ActivationFileError(
                f"meta[{key!r}] is {len(encoded)} bytes as JSON, over the "
                f"{MAX_META_BYTES}-byte limit for HDF5 attributes; store a digest instead"
            )
    return dict(meta)


class ActivationWriter:
    """Writes one activation file batch by batch; use as a context manager.

    >>> with ActivationWriter("acts/bp__test.h5", ["layer1", "layer4"], ["gap"],
    ...                       meta={"split": "test"}) as writer:  # doctest: +SKIP
    ...     for acts, shapes, labels, indices in batches:
    ...         writer.append(acts, shapes, labels, indices)

    path: the file to write; missing parent folders are created. Rows go to a temporary file
        beside it, which a ``with`` block that ends without an exception flushes, marks
        complete, closes and renames to ``path`` (replacing any older file); an exception in
        the block or while finishing removes the temporary file and propagates.
    layers: module names, in file order. reductions: names stored for every layer.
    meta: provenance (checkpoint sha256, dataset, split, ...), JSON-serialisable values,
        stored as attributes of ``/model``.
    compression: ``"lzf"`` (fast), ``"gzip"`` (smaller, slower) or None.
    versions: versions of the further libraries that computed the values (e.g. torch),
        recorded with those of repsim, numpy, h5py, HDF5 and Python.
    n: rows appended so far.
    """

    def __init__(self, path: str | os.PathLike, layers: Sequence[str],
                 reductions: Sequence[str], *, meta: dict | None = None,
                 compression: str | None = "lzf", versions: dict[str, str] | None = None):
        check_compression(compression)
        meta = check_meta(meta)
        self.path = Path(path)
        self.n = 0
        self._layers = list(layers)
        self._reductions = list(reductions)
        self._compression = compression
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._appenders: dict[str, _RowAppender] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp"
        self._h5 = h5py.File(self._tmp, "w-")
        try:
            self._h5.attrs.update(_header(self._layers, self._reductions, compression, versions))
            self._h5.create_group("model").attrs.update(
                {k: json.dumps(v) for k, v in meta.items()})
        except BaseException:
            self._discard()
            raise

    def append(self, acts: dict[str, dict[str, np.ndarray]], shapes: dict[str, tuple[int, ...]],
               labels: np.ndarray, indices: np.ndarray) -> None:
        """Add one batch of B rows, given as numpy arrays.

        acts: {layer: {reduction: (B, D) float32}} for every layer and reduction, D fixed per
            dataset by the first batch. shapes: {layer: per-sample output shape before
            reduction, e.g. (C, H, W)}, the same in every batch. labels, indices: (B,) int64;
            indices continue strictly ascending (:func:`repsim.extract.check_batch` checks
            sizes and order).
        """
        if self.n == 0:
            self._create(acts, shapes)
        for name in self._layers:
            if shapes[name] != self._shapes[name]:
                raise ActivationFileError(
                    f"layer {name!r} output shape changed from {self._shapes[name]} to "
                    f"{shapes[name]} between batches; feed inputs of one size"
                )
        self._appenders["data/label"].append(labels)
        self._appenders["data/index"].append(indices)
        for k, name in enumerate(self._layers):
            for reduction in self._reductions:
                self._appenders[f"{layer_group(k, name)}/{reduction}"].append(
                    acts[name][reduction])
        self.n += len(labels)

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._finish()
            self._h5.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def _create(self, acts: dict[str, dict[str, np.ndarray]],
                shapes: dict[str, tuple[int, ...]]) -> None:
        """The datasets, at the first batch (when each D is known)."""
        for path in ("data/label", "data/index"):
            self._appenders[path] = _RowAppender(self._h5.create_dataset(
                path, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(INDEX_CHUNK_ROWS,),
                compression=self._compression,
            ))
        for k, name in enumerate(self._layers):
            self._shapes[name] = shapes[name]
            group = self._h5.create_group(layer_group(k, name))
            group.attrs["module"] = name
            group.attrs["original_shape"] = np.array(shapes[name], dtype=np.int64)
            for reduction in self._reductions:
                d = acts[name][reduction].shape[1]
                dataset = group.create_dataset(
                    reduction, shape=(0, d), maxshape=(None, d), dtype=np.float32,
                    chunks=(rows_per_chunk(d), d), compression=self._compression,
                )
                dataset.attrs.update(group.attrs)
                dataset.attrs["reduction"] = reduction
                self._appenders[dataset.name.lstrip("/")] = _RowAppender(dataset)

    def _finish(self) -> None:
        """Write what is still buffered, then mark the file complete (last)."""
        if self.n == 0:
            raise ActivationFileError(
                f"no batch was appended to {self.path}; an activation file needs at least "
                "one row"
            )
        for appender in self._appenders.values():
            appender.flush()
        self._h5.attrs["complete"] = True

    def _discard(self) -> None:
        try:
            self._h5.close()
        finally:
            self._tmp.unlink(missing_ok=True)


class _RowAppender:
    """Appends rows to a resizable (N, ...) dataset in whole chunks only.

    A chunk written in parts would be compressed, read back and recompressed once per part
    (slow), and the file would keep every stale copy; so rows wait here until they fill a
    chunk, and :meth:`flush` writes the last, partial one.
    """

    def __init__(self, dataset: h5py.Dataset):
        self.dataset = dataset
        self.chunk_rows = dataset.chunks[0]
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def append(self, values: np.ndarray) -> None:
        self._pending.append(values)
        self._pending_rows += len(values)
        if self._pending_rows >= self.chunk_rows:
            self._write(self._pending_rows // self.chunk_rows * self.chunk_rows)

    def flush(self) -> None:
        if self._pending_rows:
            self._write(self._pending_rows)

    def _write(self, n_rows: int) -> None:
        block = np.concatenate(self._pending)
        start = self.dataset.shape[0]
        self.dataset.resize(start + n_rows, axis=0)
        self.dataset[start:start + n_rows] = block[:n_rows]
        rest = block[n_rows:]
        self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)


def _header(layers: list[str], reductions: list[str], compression: str | None,
            versions: dict[str, str] | None) -> dict:
    versions = {
        "repsim": repsim.__version__, **(versions or {}), "numpy": np.__version__,
        "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
        "python": platform.python_version(),
    }
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "versions": json.dumps(versions),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layers": json.dumps(layers), "reductions": json.dumps(reductions),
        "compression": str(compression), "complete": False,
    }


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
        """Provenance given to the writer (``extract(meta=...)``): checkpoint sha256, dataset,
        split, …"""
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
