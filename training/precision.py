"""Mixed precision and memory layout of training steps (``--amp``, ``--channels-last``).

A :class:`Precision` is handed to a step (:mod:`training.step`, :class:`training.local.
LocalStep`), which runs each forward under :meth:`Precision.autocast` and each backward through
:meth:`Precision.backward`; the loop steps the optimiser through :meth:`Precision.step`.

* ``amp="bf16"``: forwards autocast to bfloat16 (CUDA or CPU); no loss scaling is needed.
* ``amp="fp16"``: forwards autocast to float16 and every loss is multiplied by a
  ``GradScaler``'s scale before its backward, so a step with several local backwards scales
  each; :meth:`step` unscales, skips steps with non-finite gradients and updates the scale.
  CUDA only.
* ``channels_last``: modules and input batches in NHWC memory layout (:meth:`layout`), which
  tensor cores and the CPU's bf16 kernels prefer; the values are the same.
* ``amp="auto"`` (:func:`resolve_precision`): bf16 + channels-last where the hardware has
  bf16 matrix units (a CPU with AVX-512 BF16 or AMX, a CUDA GPU that supports bf16), float32
  otherwise; ``amp="none"`` is float32. On this project's CPUs bf16 + channels-last ran a
  ResNet-32 training step in about a third of the float32 time at the same accuracy (README,
  benchmarks/step_time.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("auto", "none", *AMP_DTYPES)  # what --amp accepts


def bf16_hardware(device: str) -> str | None:
    """The bf16 units of ``device`` that make bf16 autocast fast, in words ("AVX-512 BF16",
    "AMX", "CUDA bf16"); None where it has none."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "CUDA bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
            else None
    if kind != "cpu":
        return None
    units = [name for name, check in (("AMX", "_is_amx_tile_supported"),
                                      ("AVX-512 BF16", "_is_avx512_bf16_supported"))
             if getattr(torch.cpu, check, lambda: False)()]
    return " and ".join(units) or None


def precision_label(amp: str | None, channels_last: bool) -> str:
    """How a run computes, in words: "bf16 + channels-last", "float32"."""
    return (amp or "float32") + (" + channels-last" if channels_last else "")


def resolve_precision(amp: str | None, channels_last: bool, device: str
                      ) -> tuple[str | None, bool, str]:
    """(amp, channels_last, why) that a run with ``--amp amp`` computes in: ``"auto"`` becomes
    bf16 + channels-last on hardware with bf16 units (:func:`bf16_hardware`), float32
    otherwise; ``"none"`` becomes None (float32); other values stay. ``why``: one line for the
    run to print."""
    if amp == "auto":
        units = bf16_hardware(device)
        if units:
            return "bf16", True, f"precision: bf16 autocast + channels-last (--amp auto: " \
                                 f"{units} found; --amp none for float32)"
        return None, channels_last, ("precision: float32 (--amp auto: no bf16 units on "
                                     f"{device})")
    amp = None if amp == "none" else amp
    return amp, channels_last, f"precision: {precision_label(amp, channels_last)}"


def precision_problem(amp: str | None, device: str) -> str | None:
    """Why ``--amp amp`` cannot run on ``device``, in one line; None when it can."""
    if amp is not None and amp not in AMP_CHOICES:
        return f"--amp {amp!r}: choose one of {', '.join(AMP_CHOICES)}"
    if amp == "fp16" and torch.device(device).type != "cuda":
        return (f"--amp fp16 needs a CUDA device (its loss scaling is CUDA's), not {device!r}; "
                "use --amp bf16 on CPU")
    return None


@dataclass
class Precision:
    """How a step computes: ``amp`` None | "bf16" | "fp16", ``channels_last``, and the
    ``device_type`` ("cpu", "cuda") its tensors live on."""

    amp: str | None = None
    channels_last: bool = False
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        problem = precision_problem(self.amp, self.device_type)
        if problem or self.amp in ("auto", "none"):
            raise ValueError(problem or f"Precision(amp={self.amp!r}): resolve it first with "
                             "resolve_precision")
        if self.amp == "fp16":
            self.scaler = torch.amp.GradScaler(self.device_type)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of a forward pass: autocast to the amp dtype, or nothing."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.amp])

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, of the scaled loss under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 through the scaler (unscale, skip if non-finite,
        update the scale)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def layout(self, x: torch.Tensor | nn.Module) -> torch.Tensor | nn.Module:
        """A 4-d batch or a module in channels-last layout when asked; otherwise as it is."""
        if not self.channels_last or (isinstance(x, torch.Tensor) and x.dim() != 4):
            return x
        return x.to(memory_format=torch.channels_last)


FULL = Precision()  # float32, NCHW: what steps use unless given another
