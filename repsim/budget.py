"""Memory budgets: one rule family for every analysis that works on b rows at a time.

Minibatch CKA (:func:`repsim.cka.minibatch_memory`), the streamed probe
(:func:`repsim.probe.probe_memory`) and the random projection
(:func:`repsim.projection.projection_memory`) each state a *memory rule*: the bytes their
arrays hold at most when they work on b rows at a time. Given ``max_memory`` they take the
largest b whose rule fits, found by :func:`largest_fitting`, and refuse a budget that cannot
hold even the smallest b, saying what it must hold (sizes written by :func:`format_bytes`).

The promise, for a budget B: the peak RSS of the process grows by at most
``GROWTH_FACTOR · B + FIXED_OVERHEAD`` while the analysis runs. The rules count the arrays;
on top come freed blocks glibc's allocator keeps (up to 32 MiB each) and BLAS and HDF5
buffers. Measured (README, "Analyses over activation files larger than memory"): minibatch
CKA grew by 1.75 × a 64 MiB budget (1.28 × at 256 MiB, 25 MiB at 8 MiB), the streamed probe
by 1.4 × a 12 MiB budget; ``tests/test_budget.py`` checks the promise for both in a fresh
process. Give ``max_memory`` about half of what may be used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FIXED_OVERHEAD", "GROWTH_FACTOR", "check_budget", "format_bytes", "largest_fitting"]

MIB = 2**20
GROWTH_FACTOR = 2.0          # peak RSS growth per byte of budget, at most
FIXED_OVERHEAD = 32 * MIB    # bytes on top: BLAS and HDF5 buffers, the allocator's cached blocks
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")  # of format_bytes, each 1024 of the one before


def check_budget(max_memory: Any, error: type[Exception] = ValueError) -> int:
    """``max_memory`` as a positive int of bytes; anything else raises ``error``."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) \
            or max_memory <= 0:
        raise error(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    return int(max_memory)


def largest_fitting(memory: Callable[[int], int], budget: int, low: int, high: int) -> int:
    """The largest b in [low, high] with ``memory(b) <= budget``, for a rule that does not
    decrease with b on that range (binary search); ``low - 1`` when not even b = low fits."""
    if high < low or memory(low) > budget:
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        if memory(mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def format_bytes(n: float) -> str:
    """``n`` bytes for a message, to 3 significant digits in the smallest binary unit that
    keeps the number under 1000: 100 → "100 B", 1536 → "1.5 KiB", 2**20 → "1 MiB"."""
    value = float(n)
    for unit in UNITS:
        text = f"{value:.3g}"
        if float(text) < 1000 or unit == UNITS[-1]:
            return f"{text} {unit}"
        value /= 1024
