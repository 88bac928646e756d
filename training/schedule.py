"""The learning-rate schedule of the AugLocal code: linear warm-up from 0.01, then cosine.

The authors set it once per epoch e = 1…E (``docs/auglocal.md``, section "Optimiser and
learning-rate schedule", which also compares the two curves). We evaluate the same curve per
iteration at the fractional epoch t = (e − 1) + i/steps ∈ [0, E): with 400 epochs the two
agree to well under one epoch's step, and short CPU runs do not spend their whole last epoch
at lr = 0 as the per-epoch formula would (it gives 0 at e = E).
"""

from __future__ import annotations

import math

WARMUP_START_LR = 0.01


def learning_rate(t: float, *, lr: float, epochs: int, warmup_epochs: int) -> float:
    """lr at fractional epoch ``t`` in [0, epochs)."""
    cosine = 0.5 * lr * (1 + math.cos(math.pi * t / epochs))
    if t < warmup_epochs:
        frac = t / warmup_epochs
        return cosine * frac + WARMUP_START_LR * (1 - frac)
    return cosine


def default_warmup_epochs(epochs: int) -> int:
    """10 % of the run, rounded (the paper warms up for 10 of 400 epochs: pass 10 for that)."""
    return round(0.1 * epochs)
