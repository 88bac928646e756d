"""Per-layer activations of any ``nn.Module``, captured with forward hooks and streamed to HDF5.

>>> extract(model.eval(), batches, ["layer1.0", "layer4"], "acts/bp__test.h5",
...         reductions=("flatten", "gap"), meta={"dataset": "cifar10", "split": "test"})
...                                                                     # doctest: +SKIP

``batches`` yields ``(inputs, labels, dataset_indices)``; each batch's reduced outputs go, as
numpy arrays, to :class:`repsim.store.ActivationWriter`, so the split is never held in memory.
This module is about the model (reductions, argument checks, hooks, batches); the file
format (layout, writer and reader :class:`repsim.store.ActivationFile`) is in
:mod:`repsim.store`. On NFS and some cluster file systems set
``HDF5_USE_FILE_LOCKING=FALSE`` in the environment, or HDF5 fails to lock the file.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from repsim.store import ActivationFileError, ActivationWriter, check_compression, check_meta


class ExtractError(ValueError):
    """Bad arguments to :func:`extract`, or a model/batch that cannot be extracted safely."""


@dataclass(frozen=True)
class Reduction:
    """How a (B, C, *spatial) layer output becomes a (B, D) matrix.

    ``flatten``: D = C·H·W; ``gap``: mean over the spatial axes, D = C;
    ``pool<k>``: adaptive average pool to k×k, D = C·k·k, for maps of at least k×k.
    """

    name: str
    pool_size: int | None = None  # k of pool<k>; None for flatten and gap

    def apply(self, out: torch.Tensor, layer: str) -> np.ndarray:
        """(B, *S) tensor → (B, D) float32 array, always a copy on the CPU (so an in-place
        op later in the forward pass cannot change it)."""
        if self.name == "flatten":
            reduced = out.flatten(1)
        elif self.name == "gap":
            self._require_spatial(out, layer, min_dim=3)
            reduced = out.flatten(2).mean(2)  # on CPU several times faster than mean(dim=(2, 3))
        else:
            self._require_spatial(out, layer, min_dim=4, max_dim=4)
            self._require_pool_fits(out, layer)
            reduced = F.adaptive_avg_pool2d(out, self.pool_size).flatten(1)
        return reduced.to(device="cpu", dtype=torch.float32, copy=True).numpy()

    def _require_spatial(self, out: torch.Tensor, layer: str, min_dim: int,
                         max_dim: int | None = None) -> None:
        if out.dim() < min_dim or (max_dim is not None and out.dim() > max_dim):
            want = "(B, C, H, W)" if max_dim == 4 else "(B, C, *spatial)"
            raise ExtractError(
                f"reduction {self.name!r} needs a {want} output, but layer {layer!r} gave "
                f"shape {tuple(out.shape)}; use reductions=('flatten',) for this layer or "
                "drop it from the list"
            )


    def _require_pool_fits(self, out: torch.Tensor, layer: str) -> None:
        """Refuse a k×k pool larger than the (H, W) map: adaptive pooling would repeat values
        (upsample) instead of averaging them."""
        h, w = out.shape[2:]
        if self.pool_size > min(h, w):
            raise ExtractError(
                f"reduction {self.name!r} needs a feature map of at least "
                f"{self.pool_size}×{self.pool_size}, but the map of layer {layer!r} is {h}×{w} "
                f"(pooling would repeat values, not average them); use pool<k> with "
                f"k ≤ {min(h, w)}, or 'gap' or 'flatten'"
            )


def parse_reduction(name: str) -> Reduction:
    """``"flatten"``, ``"gap"`` or ``"pool<k>"`` (k ≥ 1) → :class:`Reduction`."""
    if name in ("flatten", "gap"):
        return Reduction(name)
    match = re.fullmatch(r"pool([0-9]+)", name) if isinstance(name, str) else None
    if match and int(match.group(1)) >= 1:
        return Reduction(name, int(match.group(1)))
    raise ExtractError(
        f"unknown reduction {name!r}; use 'flatten', 'gap' or 'pool<k>' with k >= 1 "
        "(e.g. 'pool2' = adaptive average pool to 2×2)"
    )


@dataclass(frozen=True)
class ExtractSettings:
    """Checked arguments of :func:`extract`."""

    layers: tuple[str, ...]  # module names of the unwrapped model, in file order
    reductions: tuple[Reduction, ...]
    compression: str | None  # "lzf", "gzip" (level 4) or None
    device: torch.device  # where the inputs go; the model must already be there
    meta: dict  # provenance, JSON-serialisable values


def unwrap(model: nn.Module) -> nn.Module:
    """The wrapped module of ``DataParallel``/``DistributedDataParallel`` (else ``model``):
    hooks on replicas would see only a slice of the batch."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def check_settings(model: nn.Module, layers: Sequence[str], reductions: Sequence[str],
                   compression: str | None, device: str | torch.device, meta: dict | None,
                   *, wrapped: bool = False) -> ExtractSettings:
    """Validate every argument of :func:`extract` against the (unwrapped) ``model``."""
    if isinstance(layers, str) or not layers:
        raise ExtractError(
            f"layers must be a non-empty list of module names, got {layers!r}; "
            "e.g. layers=['layer1.0', 'layer4']"
        )
    _check_unique(layers, "layers")
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in layers:
        if name not in modules:
            raise ExtractError(_unknown_layer_message(name, list(modules), wrapped))
    if isinstance(reductions, str) or not reductions:
        raise ExtractError(
            f"reductions must be a non-empty list, got {reductions!r}; e.g. ('flatten', 'gap')"
        )
    _check_unique(reductions, "reductions")
    with _as_extract_error():
        check_compression(compression)
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if training:
        raise ExtractError(
            f"model is in training mode ({len(training)} modules, e.g. {training[:3]}): "
            "extracting would update BatchNorm running statistics and apply dropout; "
            "call model.eval() first"
        )
    device = torch.device(device)
    param = next(model.parameters(), None)
    if param is not None and not _same_device(param.device, device):
        raise ExtractError(
            f"model parameters are on {param.device} but device={str(device)!r}; "
            f"call model.to({str(device)!r}) or pass device={str(param.device)!r}"
        )
    with _as_extract_error():
        meta = check_meta(meta)
    return ExtractSettings(tuple(layers), tuple(parse_reduction(r) for r in reductions),
                           compression, device, meta)


@contextlib.contextmanager
def _as_extract_error() -> Iterator[None]:
    """Report a refusal of the file format (:mod:`repsim.store`) as an ExtractError, with
    the same message."""
    try:
        yield
    except ActivationFileError as err:
        raise ExtractError(str(err)) from None


def _check_unique(names: Sequence[str], what: str) -> None:
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ExtractError(f"{what} lists {repeated} more than once; list each once")


def _unknown_layer_message(name: str, known: list[str], wrapped: bool) -> str:
    close = difflib.get_close_matches(name, known, n=5)
    hint = (f"close matches: {close}" if close
            else "list(dict(model.named_modules())) lists the names")
    if wrapped:
        hint += "; names are those of the unwrapped model (no 'module.' prefix)"
    return f"layer {name!r} is not a module of the model; {hint}"


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    return actual.type == wanted.type and wanted.index in (None, actual.index)


class _Capture:
    """Forward hooks that keep each requested layer's reduced output of one forward pass."""

    def __init__(self, layers: tuple[str, ...], reductions: tuple[Reduction, ...]):
        self.layers = layers
        self.reductions = reductions
        self._acts: dict[str, dict[str, np.ndarray]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def hook(self, name: str):
        def record(module: nn.Module, args, output) -> None:
            if name in self._acts:
                parent = name.rpartition(".")[0] or "<the enclosing module>"
                raise ExtractError(
                    f"module {name!r} ran more than once in one forward pass (a module reused "
                    "inside the network, e.g. torchvision ResNet's shared ReLU), so its output "
                    f"is ambiguous; hook a module that runs once, e.g. {parent!r}"
                )
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                raise ExtractError(
                    f"layer {name!r} returned {type(out).__name__}, not a tensor; "
                    "hook a module that outputs a tensor"
                )
            self._shapes[name] = tuple(out.shape)
            self._acts[name] = {r.name: r.apply(out.detach(), name) for r in self.reductions}
        return record

    def take(self, batch_size: int) -> tuple[dict[str, dict[str, np.ndarray]],
                                             dict[str, tuple[int, ...]]]:
        """This forward's {layer: {reduction: (B, D) array}} and {layer: per-sample shape};
        checks every layer fired with the batch's size, then resets for the next forward."""
        acts, shapes = self._acts, self._shapes
        self._acts, self._shapes = {}, {}
        for name in self.layers:
            if name not in acts:
                raise ExtractError(
                    f"layer {name!r} never ran during the forward pass (a module that is "
                    "registered but not on the forward path); remove it from layers"
                )
            if shapes[name][0] != batch_size:
                raise ExtractError(
                    f"layer {name!r} output has shape {shapes[name]}, whose first axis is not "
                    f"the batch of {batch_size} inputs; hook modules whose output keeps the "
                    "batch as its first axis"
                )
        return acts, {name: shape[1:] for name, shape in shapes.items()}


@contextlib.contextmanager
def capture(model: nn.Module, layers: tuple[str, ...],
            reductions: tuple[Reduction, ...]) -> Iterator[_Capture]:
    """Hooks on ``layers`` of ``model`` for the duration of the ``with`` block."""
    modules = dict(model.named_modules(remove_duplicate=False))
    cap = _Capture(layers, reductions)
    handles = []
    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(cap.hook(name)))
        yield cap
    finally:
        for handle in handles:
            handle.remove()


def check_batch(batch, position: int, last_index: int | None) -> tuple[torch.Tensor, np.ndarray,
                                                                        np.ndarray]:
    """``(inputs, labels, dataset_indices)`` → (inputs (B, ...), labels (B,) int64,
    indices (B,) int64), checking sizes and that indices continue strictly ascending."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        got = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(
            batch, (tuple, list)) else type(batch).__name__
        raise ExtractError(
            f"batch {position} is {got}; each batch must be (inputs, labels, dataset_indices), "
            "e.g. from a Dataset whose __getitem__(i) returns (x, y, i)"
        )
    inputs, labels, indices = batch
    if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0:
        raise ExtractError(
            f"batch {position}: inputs must be a (B, ...) tensor, got {type(inputs).__name__}"
        )
    labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)
    size = inputs.shape[0]
    if labels.shape != (size,) or indices.shape != (size,):
        raise ExtractError(
            f"batch {position}: {size} inputs but labels of shape {labels.shape} and indices "
            f"of shape {indices.shape}; give one label and one dataset index per input"
        )
    previous = np.array([] if last_index is None else [last_index], dtype=np.int64)
    steps = np.diff(np.concatenate([previous, indices]))
    if size == 0 or (steps <= 0).any():
        raise ExtractError(
            f"batch {position}: dataset indices {indices[:8].tolist()}... (after {last_index}) "
            "are empty or not strictly ascending; rows must come in dataset order without "
            "repeats: use shuffle=False, and sort a Subset's indices"
        )
    return inputs, labels, indices


def extract(model: nn.Module, batches: Iterable, layers: Sequence[str],
            out_path: str | os.PathLike, *, reductions: Sequence[str] = ("flatten",),
            meta: dict | None = None, compression: str | None = "lzf",
            device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Run ``model`` over ``batches`` and write the outputs of ``layers`` to one HDF5 file.

    model: any ``nn.Module`` in eval mode, already on ``device`` (``DataParallel``/DDP are
        unwrapped; name layers as in the unwrapped model).
    batches: iterable of ``(inputs (B, ...), labels (B,), dataset_indices (B,))``, indices
        strictly ascending across the whole iterable; its length need not be known.
    layers: module names (``dict(model.named_modules())`` keys), each run once per forward;
        tuple outputs contribute ``out[0]``.
    reductions: each of ``flatten`` (B, C·H·W), ``gap`` (B, C), ``pool<k>`` (B, C·k·k,
        refused for a layer whose map is smaller than k×k), applied to every layer.
    meta: provenance (checkpoint sha256, dataset, split, arch, method, epoch, ...), stored as
        JSON attributes of ``/model``.
    compression: ``"lzf"`` (fast), ``"gzip"`` (smaller, slower) or None.

    The file is written by :class:`repsim.store.ActivationWriter`: under a temporary name
    beside ``out_path``, renamed only once complete (replacing any older file); on any error,
    Ctrl-C or SIGTERM the temporary file is removed and the error propagates (SIGTERM as
    ``SystemExit(143)``). Returns ``out_path`` as a Path.
    Set ``HDF5_USE_FILE_LOCKING=FALSE`` on NFS. Read it with
    :class:`repsim.store.ActivationFile`.
    """
    inner = unwrap(model)
    settings = check_settings(inner, layers, reductions, compression, device, meta,
                              wrapped=inner is not model)
    out_path = Path(out_path)
    total = len(batches) if hasattr(batches, "__len__") else None
    with (_as_extract_error(),
          ActivationWriter(out_path, settings.layers, [r.name for r in settings.reductions],
                           meta=settings.meta, compression=settings.compression,
                           versions={"torch": torch.__version__}) as writer,
          capture(inner, settings.layers, settings.reductions) as cap):
        last_index = None
        for position, batch in enumerate(tqdm(batches, total=total, disable=not progress,
                                              desc=f"extract {out_path.name}", unit="batch")):
            inputs, labels, indices = check_batch(batch, position, last_index)
            with torch.inference_mode():
                inner(inputs.to(settings.device))
            acts, shapes = cap.take(len(labels))
            writer.append(acts, shapes, labels, indices)
            last_index = int(indices[-1])
        if writer.n == 0:
            raise ExtractError("batches yielded no batch; nothing to extract")
    return out_path
