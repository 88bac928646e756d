"""Training steps: what one mini-batch does between ``zero_grad`` and ``optimizer.step``.

The loop in :mod:`training.train` is method-agnostic; a method is a *step* object:

* ``step.model``: the primary network (what checkpoints store and analyses load);
* ``step.trainable``: the ``nn.Module`` holding every parameter the optimiser updates
  (the primary network plus any auxiliary networks);
* ``step(x, y) -> StepOutput``: forward pass(es) and backward pass(es), no optimiser step;
* ``step.aux_state_dict()`` / ``step.load_aux_state_dict(d)``: auxiliary weights for resuming
  (``None`` / no-op when there are none);
* ``step.precision``: the :class:`training.precision.Precision` its forwards autocast under and
  its backwards scale by; the loop steps the optimiser through ``step.precision.step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.precision import FULL, Precision


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor    # () detached: the output-head loss of the batch
    logits: torch.Tensor  # (B, num_classes) detached: the primary network's output


class BackpropStep:
    """End-to-end backprop: one forward, one cross-entropy loss, one backward."""

    def __init__(self, model: nn.Module, precision: Precision = FULL):
        self.model = model
        self.trainable = model
        self.precision = precision

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        with self.precision.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.precision.backward(loss)
        return StepOutput(loss.detach(), logits.detach())

    def aux_state_dict(self) -> dict | None:
        return None

    def load_aux_state_dict(self, state: dict | None) -> None:
        if state:
            raise ValueError("a backprop run has no auxiliary networks, but the checkpoint has")
