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
  tensor cores prefer; the values are the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_problem(amp: str | None, device: str) -> str | None:
    """Why ``--amp amp`` cannot run on ``device``, in one line; None when it can."""
    if amp is not None and amp not in AMP_DTYPES:
        return f"--amp {amp!r}: choose one of {', '.join(AMP_DTYPES)} (or leave it out)"
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
        if problem:
            raise ValueError(problem)
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
