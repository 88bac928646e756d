"""Data with a known population CKA, to check by simulation that intervals cover it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["latent_factor_pair"]


def latent_factor_pair(rng: np.random.Generator, n: int, p: int, *, factors: int = 5,
                       signal: float = 0.5
                       ) -> tuple[Callable[[np.random.Generator], tuple[np.ndarray, ...]], float]:
    """A sampler of (x, y), each (n, p), and their population linear CKA.

    x = zA + e and y = zB + f with z ~ N(0, I_factors) shared and unit Gaussian noise e, f;
    A, B (factors, p) are drawn once from ``rng`` (B partly a rotation of A). Population CKA
    is ‖Σxy‖²_F / (‖Σxx‖_F ‖Σyy‖_F) with Σxx = AᵀA + I, Σyy = BᵀB + I, Σxy = AᵀB.
    """
    a = rng.standard_normal((factors, p)) * signal
    b = (a @ np.linalg.qr(rng.standard_normal((p, p)))[0] * 0.7
         + rng.standard_normal((factors, p)) * signal * 0.7)
    sxx, syy, sxy = a.T @ a + np.eye(p), b.T @ b + np.eye(p), a.T @ b
    truth = float(np.square(sxy).sum() / np.sqrt(np.square(sxx).sum() * np.square(syy).sum()))

    def draw(r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z = r.standard_normal((n, factors))
        return z @ a + r.standard_normal((n, p)), z @ b + r.standard_normal((n, p))
    return draw, truth
