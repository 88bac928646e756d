"""Multiple-comparison correction and one-line verdicts."""

from __future__ import annotations

import numpy as np

__all__ = ["holm"]


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of the p-values ``p`` (any shape) as one family; NaN
    entries are left out of the family and stay NaN. Controls the family-wise error rate."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    valid = np.flatnonzero(~np.isnan(flat))
    order = valid[np.argsort(flat[valid], kind="stable")]
    m = len(order)
    stepped = np.maximum.accumulate((m - np.arange(m)) * flat[order])
    adjusted = np.full_like(flat, np.nan)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.reshape(p.shape)
