"""What one training step costs: peak memory held for backward, and forward multiply-adds.

The saved-tensor peak is counted exactly with ``torch.autograd.graph.saved_tensors_hooks``:
every tensor autograd saves for backward is charged once per underlying storage (views and
repeated saves of one tensor share it) from the moment it is saved until the graph holding it
is freed. Parameter storages are not charged there: they are counted once, with gradients and
optimiser state, in the step's total. Transient tensors that no backward needs (a layer's
output already consumed, gradient buffers during backward) are not counted.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn


class SavedTensorTracker:
    """Live and peak bytes of the distinct storages autograd holds for backward.

    Use through :func:`track_saved_tensors`. ``exclude`` holds storage pointers never charged
    (the parameters). Thread-safe: CUDA backward frees graphs on the engine's threads.
    """

    def __init__(self, exclude: Iterable[int] = ()):
        self.exclude = frozenset(exclude)
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer → [live saves, bytes]
        self._lock = threading.Lock()

    def pack(self, tensor: torch.Tensor) -> _SavedHandle:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.exclude or storage.nbytes() == 0:
            return _SavedHandle(tensor, None, None)
        with self._lock:
            entry = self._refs.setdefault(ptr, [0, storage.nbytes()])
            if entry[0] == 0:
                self.live_bytes += entry[1]
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            entry[0] += 1
        return _SavedHandle(tensor, self, ptr)

    def release(self, ptr: int) -> None:
        with self._lock:
            entry = self._refs[ptr]
            entry[0] -= 1
            if entry[0] == 0:
                self.live_bytes -= entry[1]
                del self._refs[ptr]


class _SavedHandle:
    """What autograd stores instead of a saved tensor; its death releases the charge."""

    __slots__ = ("tensor", "tracker", "ptr")

    def __init__(self, tensor: torch.Tensor, tracker: SavedTensorTracker | None, ptr: int | None):
        self.tensor, self.tracker, self.ptr = tensor, tracker, ptr

    def __del__(self):
        if self.tracker is not None:
            self.tracker.release(self.ptr)


@contextmanager
def track_saved_tensors(exclude: Iterable[nn.Parameter] = ()) -> Iterator[SavedTensorTracker]:
    """Count tensors saved for backward inside the block; ``exclude``: parameters not charged.

    ``tracker.peak_bytes`` is the high-water mark; ``tracker.live_bytes`` what is still held.
    """
    tracker = SavedTensorTracker(p.untyped_storage().data_ptr() for p in exclude)
    with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda handle: handle.tensor):
        yield tracker


@dataclass(frozen=True)
class MemoryReport:
    """Memory of one training step, in bytes."""

    saved_peak_bytes: int      # high-water mark of non-parameter tensors held for backward
    params_bytes: int          # every trained parameter
    grads_bytes: int           # their .grad tensors after the step
    optimizer_bytes: int       # optimiser state tensors after one optimiser step
    total_peak_bytes: int      # the sum of the four above
    cuda_peak_bytes: int | None  # torch.cuda.max_memory_allocated over the step (CUDA only)

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state`` (e.g. SGD momentum buffers)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))


def measure_step_memory(step: Any, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                        y: torch.Tensor) -> MemoryReport:
    """Run one training step (zero_grad, ``step(x, y)``, ``optimizer.step()``) and report memory.

    ``step`` follows :mod:`training.step`'s protocol. The total adds parameters, gradients and
    optimiser state (measured after the optimiser step, when e.g. SGD momentum exists) to the
    saved-tensor peak: what a steady-state step holds at its worst moment.
    """
    params = list(step.trainable.parameters())
    optimizer.zero_grad(set_to_none=True)
    on_cuda = x.is_cuda
    if on_cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
    with track_saved_tensors(exclude=params) as tracker:
        step(x, y)
    optimizer.step()
    cuda_peak = torch.cuda.max_memory_allocated(x.device) if on_cuda else None
    sizes = (tracker.peak_bytes, tensor_bytes(params),
             tensor_bytes(p.grad for p in params if p.grad is not None),
             optimizer_state_bytes(optimizer))
    return MemoryReport(*sizes, total_peak_bytes=sum(sizes), cuda_peak_bytes=cuda_peak)


def forward_macs(modules: nn.Module, run: Callable[[], Any]) -> int:
    """Multiply-accumulates per input sample of the Conv2d and Linear layers inside
    ``modules`` during ``run()`` (forward passes only; backward runs no forward hooks).

    Conv: output elements × (C_in / groups) × k_h × k_w. Linear: output elements × in_features.
    """
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            total += per_sample * module.in_channels // module.groups * k_h * k_w
        else:
            total += per_sample * module.in_features

    handles = [m.register_forward_hook(count) for m in modules.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total
