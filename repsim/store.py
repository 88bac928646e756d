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

Every dataset carries a checksum per chunk (HDF5's fletcher32 filter, after the compression),
so bytes damaged on disk or in a copy are detected when they are read: reading them raises
:class:`ActivationFileError` naming the file, the layer and the fix (extract again).

:class:`ActivationWriter` writes a file batch by batch (:func:`repsim.extract.extract` feeds
it from forward hooks): under a temporary name beside the target, renamed when complete, and
``complete`` is set last, so a reader that finds the file can trust every dataset. The
temporary file is removed when the writing fails, is interrupted (SIGINT) or terminated
(SIGTERM, which raises ``SystemExit(143)`` while a writer is open in the main thread and
SIGTERM has its default action); the temporary files of writers killed without any chance to
clean up (SIGKILL, power loss) are removed by the next successful write of the same target.

:class:`ActivationFile` reads a file back. Opening it reads metadata only (plus the index and
labels) and checks the structure: format, version, complete flag, JSON attributes, every
listed layer and reduction present as an (N, D) float32 dataset of N rows with its checksum,
nothing unlisted; anything else is refused with a message naming what is wrong. Format
versions: 2 (this one) checksums every dataset; 1 (before checksums) is still read, with an
:class:`UncheckedFileWarning`, since damage in it would be read as data (extract it again to
add checksums). This module works on numpy arrays only; it does not import torch.

HDF5 locks a file while a process writes it: opening a file that another process holds for
writing is refused as "in use" (wait for that process). On NFS and some cluster file systems
HDF5's file locking fails ("unable to lock file"); set the environment variable
``HDF5_USE_FILE_LOCKING=FALSE`` before opening the file.
h5py handles cannot be pickled: an :class:`ActivationFile` pickles as its path and reopens
itself, so it can be handed to DataLoader workers.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import glob
import json
import os
import platform
import re
import signal
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

import repsim
from repsim.sources import check_block_rows

FORMAT = "repsim-activations"
FORMAT_VERSION = 2  # 2: a fletcher32 checksum on every dataset; 1: none
READ_VERSIONS = (1, 2)
COMPRESSIONS = ("lzf", "gzip", None)  # h5py filters; gzip at h5py's default level 4
INDEX_CHUNK_ROWS = 2**17  # int64 rows in a 1 MiB chunk of /data/index and /data/label
MAX_META_BYTES = 32 * 2**10  # HDF5 attributes above ~64 KiB fail; stay well below


class ActivationFileError(ValueError):
    """An activation file that is incomplete, damaged, malformed, locked, of another format,
    or misused."""


class UncheckedFileWarning(UserWarning):
    """An activation file of format version 1, without checksums: damaged bytes in it would be
    read as data."""


def layer_group(k: int, name: str) -> str:
    """Path of the group that holds layer ``k`` (module name ``name``; a ``/``, which torch
    allows in module names but HDF5 reads as a subgroup, is written ``%2F``)."""
    return f"layers/{k:02d}_{name.replace('/', '%2F')}"


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
        if not isinstance(key, str) or not key:
            raise ActivationFileError(f"meta keys must be non-empty strings, got {key!r}")
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
        beside it (``.<name>.<host>.<pid>.<random>.tmp``), which a ``with`` block that ends
        without an exception flushes, marks complete, closes and renames to ``path``
        (replacing any older file), then removes temporary files of ``path`` that writers on
        this host left when they were killed; an exception in the block or while finishing
        removes the temporary file and propagates. While the writer is open in the main
        thread, SIGTERM (if it has its default action) raises ``SystemExit(143)``, so the
        temporary file is removed as on Ctrl-C; the default action returns afterwards.
    layers: module names, in file order. reductions: names stored for every layer.
    meta: provenance (checkpoint sha256, dataset, split, ...), JSON-serialisable values,
        stored as attributes of ``/model``.
    compression: ``"lzf"`` (fast), ``"gzip"`` (smaller, slower) or None.
    versions: versions of the further libraries that computed the values (e.g. torch),
        recorded with those of repsim, numpy, h5py, HDF5 and Python.
    n: rows appended so far.
    """

    fletcher32 = True  # a checksum per chunk; off only to measure its cost (benchmarks/)

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
        self._tmp = _temp_path(self.path)
        self._h5: h5py.File | None = None
        self._sigterm_caught = _catch_sigterm()
        try:
            self._h5 = h5py.File(self._tmp, "w-")
            self._h5.attrs.update(_header(self._layers, self._reductions, compression, versions))
            self._h5.create_group("model").attrs.update(
                {k: json.dumps(v) for k, v in meta.items()})
        except BaseException:
            self._abort()
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
        if len(labels) == 0:
            raise ActivationFileError(f"a batch of 0 rows was appended to {self.path}; append "
                                      "batches of at least one row")
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
            self._abort()
            return
        try:
            self._finish()
            self._h5.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._abort()
            raise
        try:
            _remove_stale_temps(self.path)
        finally:
            self._release_sigterm()

    def _create(self, acts: dict[str, dict[str, np.ndarray]],
                shapes: dict[str, tuple[int, ...]]) -> None:
        """The datasets, at the first batch (when each D is known)."""
        filters = {"compression": self._compression, "fletcher32": self.fletcher32}
        for path in ("data/label", "data/index"):
            self._appenders[path] = _RowAppender(self._h5.create_dataset(
                path, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(INDEX_CHUNK_ROWS,),
                **filters,
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
                    chunks=(rows_per_chunk(d), d), **filters,
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

    def _abort(self) -> None:
        """Close and remove the temporary file; give SIGTERM back its default action."""
        try:
            if self._h5 is not None:
                self._h5.close()
        finally:
            self._tmp.unlink(missing_ok=True)
            self._release_sigterm()

    def _release_sigterm(self) -> None:
        _restore_sigterm(self._sigterm_caught)
        self._sigterm_caught = False


def _temp_path(target: Path) -> Path:
    """A new temporary path beside ``target`` that names the host and process writing it, so a
    later write can tell a dead writer's leftover from a live writer's file."""
    return target.parent / (f".{target.name}.{_host()}.{os.getpid()}."
                            f"{uuid.uuid4().hex[:12]}.tmp")


def _host() -> str:
    """This machine's name, reduced to letters, digits and ``-`` (one field of a file name)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "unknown"


def _remove_stale_temps(target: Path) -> None:
    """Remove the temporary files of ``target`` whose writer, a process on this host, no
    longer runs (killed by SIGKILL, a crash, power loss). Those of running writers, of other
    hosts (which cannot be checked from here) and of other names are kept."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?P<host>[A-Za-z0-9-]+)"
                         r"\.(?P<pid>[0-9]+)\.[0-9a-f]{12}\.tmp")
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        match = pattern.fullmatch(tmp.name)
        if match and match["host"] == _host() and not _running(int(match["pid"])):
            with contextlib.suppress(OSError):  # cleaning up after others is best effort
                tmp.unlink()


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_on_sigterm(signum: int, frame) -> None:
    """SIGTERM handler: exit as a shell reports a process the signal ended (status 143),
    by an exception, so ``finally`` blocks and context managers clean up."""
    raise SystemExit(128 + signum)


_sigterm_holders = 0  # open writers (and sigterm_exits blocks) that rely on _exit_on_sigterm


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """In the block, SIGTERM raises ``SystemExit(143)`` as the writers' handler does, so a
    killed command unwinds as an interrupted one: temporary files and folders removed, locks
    released (main thread, where SIGTERM has its default action; restored after)."""
    caught = _catch_sigterm()
    try:
        yield
    finally:
        _restore_sigterm(caught)


def _catch_sigterm() -> bool:
    """Install :func:`_exit_on_sigterm` where SIGTERM has its default action (which would end
    the process without cleanup) and this is the main thread (the only one where Python runs
    handlers); a handler of the caller or an ignored SIGTERM is left alone. Returns whether
    this writer holds it; it stays installed while any writer holds it."""
    global _sigterm_holders
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGTERM)
    if handler is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    elif handler is not _exit_on_sigterm:
        return False
    _sigterm_holders += 1
    return True


def _restore_sigterm(caught: bool) -> None:
    """Undo :func:`_catch_sigterm` (``caught``: what it returned) once no writer holds the
    handler, unless someone has replaced it since."""
    global _sigterm_holders
    if not caught:
        return
    _sigterm_holders -= 1
    if _sigterm_holders == 0 and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
        # a copy: the caller may refill its buffer (e.g. a loader's labels) before the write
        self._pending.append(np.array(values, copy=True))
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
        self._h5 = _open(self.path)
        try:
            contents = _read_contents(self._h5, self.path)
        except BaseException:
            self._h5.close()
            raise
        self._layers, self._reductions = contents.layers, contents.reductions
        self._labels, self._indices = contents.labels, contents.indices
        self._meta, self._versions = contents.meta, contents.versions
        self._original_shapes = contents.original_shapes

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
        return copy.deepcopy(self._meta)

    @property
    def attrs(self) -> dict:
        """Root attributes: format, format_version, versions (dict), created, …"""
        return {**self._h5.attrs, "versions": dict(self._versions)}

    def shape(self, layer: str, reduction: str) -> tuple[int, int]:
        """(N, D) of the stored matrix of ``layer`` under ``reduction``."""
        return tuple(self._dataset(layer, reduction).shape)

    def original_shape(self, layer: str) -> tuple[int, ...]:
        """Per-sample shape of the module's output before reduction, e.g. (C, H, W)."""
        return self._original_shapes[self._layer_position(layer)]

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
            raise _damaged(self.path, f"layer {layer!r} ({reduction})", dataset, err) from err

    def iter_blocks(self, layer: str, reduction: str, block_rows: int) -> Iterator[np.ndarray]:
        """Consecutive (≤ block_rows, D) float32 blocks covering all N rows in order."""
        block_rows = check_block_rows(block_rows, ActivationFileError)
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


@dataclass(frozen=True)
class _Contents:
    """What opening a file reads and checks: metadata, index and labels."""

    layers: list[str]
    reductions: list[str]
    meta: dict
    versions: dict
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) int64, strictly ascending
    original_shapes: list[tuple[int, ...]]  # per layer, in file order


def _open(path: Path) -> h5py.File:
    """``path`` opened read-only, or a message saying why it cannot be."""
    if not path.exists():
        raise FileNotFoundError(
            f"activation file {path} does not exist; create it with repsim.extract.extract"
        )
    if path.is_dir():
        raise ActivationFileError(f"{path} is a folder, not an activation file; pass the .h5 "
                                  "file inside it")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        if "unable to lock file" not in str(err).lower():
            raise _damaged(path, "the file", None, err) from err
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise ActivationFileError(
                f"{path} is in use by another process, which holds it open for writing (e.g. "
                "a program or an extraction writing it), so HDF5 cannot lock it; wait until "
                "that process has finished, or, on NFS and other file systems whose locks "
                "are unreliable, set the environment variable HDF5_USE_FILE_LOCKING=FALSE"
            ) from err
        raise ActivationFileError(
            f"{path} cannot be locked on this file system (HDF5 said: {err}); set the "
            "environment variable HDF5_USE_FILE_LOCKING=FALSE (needed on NFS)"
        ) from err


def _damaged(path: Path, what: str, dataset: h5py.Dataset | None,
             err: OSError) -> ActivationFileError:
    """The error for an HDF5 read of ``what`` (``dataset``, None for the whole file) that
    failed: a checksum that does not match (a checked dataset whose filters fail) or damage."""
    if dataset is not None and dataset.fletcher32 and "filter returned failure" in str(err):
        problem = (f"{what} fails its checksum: its bytes changed after they were written "
                   "(a disk, transfer or copy error)")
    else:
        problem = f"{what} is damaged or truncated and cannot be read"
    return ActivationFileError(
        f"{path}: {problem} (HDF5 said: {err}); delete the file and extract again"
    )


def _malformed(path: Path, problem: str) -> ActivationFileError:
    return ActivationFileError(
        f"{path}: {problem}; the file is damaged or was not written by "
        "repsim.store.ActivationWriter: delete it and extract again"
    )


def _read_contents(h5: h5py.File, path: Path) -> _Contents:
    """Check the structure of an open file (metadata only) and read index and labels."""
    root = {key: _plain(value) for key, value in h5.attrs.items()}
    version = _check_header(root, path)
    layers = _json_attr(root, "layers", "/", path, _is_names, "a list of names")
    reductions = _json_attr(root, "reductions", "/", path, _is_names, "a list of names")
    versions = _json_attr(root, "versions", "/", path, lambda v: isinstance(v, dict),
                          "a JSON object")
    model = h5.get("model")
    if not isinstance(model, h5py.Group):
        raise _malformed(path, "it has no /model group (the provenance)")
    meta = {key: _json_attr(model.attrs, key, "/model", path) for key in model.attrs}
    indices = _read_vector(h5, "data/index", path, version)
    labels = _read_vector(h5, "data/label", path, version)
    if len(labels) != len(indices):
        raise _malformed(path, f"data/label has {len(labels)} rows but data/index has "
                               f"{len(indices)}")
    descending = np.flatnonzero(np.diff(indices) <= 0)
    if len(descending):
        row = int(descending[0])
        raise _malformed(path, f"data/index is not strictly ascending (row {row}: "
                               f"{indices[row]}, then {indices[row + 1]})")
    shapes = [_check_layer(h5, path, k, name, reductions, len(indices), version)
              for k, name in enumerate(layers)]
    listed = {layer_group(k, name).partition("/")[2] for k, name in enumerate(layers)}
    stored = h5.get("layers")
    unlisted = sorted(set(stored if isinstance(stored, h5py.Group) else ()) - listed)
    if unlisted:
        raise _malformed(path, f"/layers holds {unlisted}, which attribute 'layers' does not "
                               "list")
    if version == 1:
        warnings.warn(
            f"{path} has format version 1, which has no checksums: damaged bytes in it would "
            "be read as data; extract it again with this repsim to add them",
            UncheckedFileWarning, stacklevel=3)
    return _Contents(layers, reductions, meta, versions, labels, indices, shapes)


def _check_header(attrs: dict, path: Path) -> int:
    """The format version of a complete file of this format; refuses anything else."""
    if attrs.get("format") != FORMAT:
        raise ActivationFileError(
            f"{path} is not a repsim activation file (format attribute "
            f"{attrs.get('format')!r}, expected {FORMAT!r})"
        )
    version = attrs.get("format_version")
    if version not in READ_VERSIONS:
        raise ActivationFileError(
            f"{path} has format version {version!r} but this repsim reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}; extract it again with this version of "
            "repsim"
        )
    if not attrs.get("complete", False):
        raise ActivationFileError(
            f"{path} is incomplete (its writer did not finish); delete it and extract again"
        )
    return version


def _json_attr(attrs, key: str, where: str, path: Path,
               valid: Callable[[object], bool] | None = None, kind: str = ""):
    """The JSON attribute ``key`` of the object ``where``, parsed, and ``valid`` if given
    (``kind`` says what a valid value is)."""
    if key not in attrs:
        raise _malformed(path, f"attribute {key!r} of {where} is missing")
    try:
        value = json.loads(attrs[key])
    except (TypeError, ValueError) as err:
        raise _malformed(path, f"attribute {key!r} of {where} is not valid JSON ({err})") \
            from None
    if valid is not None and not valid(value):
        raise _malformed(path, f"attribute {key!r} of {where} must be {kind}, got "
                               f"{json.dumps(value)[:80]}")
    return value


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_dataset(h5: h5py.File, name: str, path: Path, version: int, ndim: int,
                   dtype: type, kind: str) -> h5py.Dataset:
    """The dataset ``name``, checked to exist with ``ndim`` axes of ``dtype`` (``kind`` says
    so in words) and, from format version 2, a checksum."""
    dataset = h5.get(name)
    if not isinstance(dataset, h5py.Dataset):
        raise _malformed(path, f"{name} is missing")
    if dataset.ndim != ndim or dataset.dtype != dtype:
        raise _malformed(path, f"{name} must be {kind}, found shape {dataset.shape} "
                               f"{dataset.dtype}")
    if version >= 2 and not dataset.fletcher32:
        raise _malformed(path, f"{name} has no checksum, though every dataset of a "
                               f"format-version-{version} file has one")
    return dataset


def _read_vector(h5: h5py.File, name: str, path: Path, version: int) -> np.ndarray:
    """(N,) int64 values of ``data/index`` or ``data/label``."""
    dataset = _check_dataset(h5, name, path, version, 1, np.int64, "an (N,) int64 vector")
    try:
        return np.asarray(dataset[()], dtype=np.int64)
    except OSError as err:
        raise _damaged(path, name, dataset, err) from err


def _check_layer(h5: h5py.File, path: Path, k: int, name: str, reductions: list[str], n: int,
                 version: int) -> tuple[int, ...]:
    """Check that layer ``k`` (``name``) holds exactly ``reductions``, each of ``n`` rows;
    returns its original shape."""
    group_name = layer_group(k, name)
    group = h5.get(group_name)
    if not isinstance(group, h5py.Group):
        raise _malformed(path, f"group {group_name} of layer {name!r} is missing")
    try:
        shape = tuple(int(s) for s in group.attrs["original_shape"])
    except KeyError:
        raise _malformed(path, f"{group_name} has no 'original_shape' attribute") from None
    except (TypeError, ValueError):
        raise _malformed(path, f"'original_shape' of {group_name} must be a list of ints, "
                               f"got {group.attrs['original_shape']!r}") from None
    unlisted = sorted(set(group) - set(reductions))
    if unlisted:
        raise _malformed(path, f"{group_name} holds {unlisted}, which attribute 'reductions' "
                               "does not list")
    for reduction in reductions:
        dataset = _check_dataset(h5, f"{group_name}/{reduction}", path, version, 2,
                                 np.float32, "an (N, D) float32 matrix")
        if dataset.shape[0] != n:
            raise _malformed(path, f"{dataset.name.lstrip('/')} has {dataset.shape[0]} rows "
                                   f"but data/index has {n}")
    return shape


def _plain(value):
    """numpy scalars as Python scalars, so messages read ``99``, not ``np.int64(99)``."""
    return value.item() if isinstance(value, np.generic) else value
