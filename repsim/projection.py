"""Seeded Gaussian random projections, for probes of dimension-matched features.

A wider layer is more linearly separable for its width alone, so probes of layers of
different widths compare more than their representations. ``probe_layers(match_dim=d)``
probes every layer of D > d features on x @ R instead, R (D, d) drawn by
:func:`projection_matrix`; pairwise distances are kept to within a factor 1 ± ε for d of
order log(n)/ε² (Johnson-Lindenstrauss), so the projected layer keeps its geometry but not its
width.

R depends only on (D, d, seed), never on the data: the train and test splits, every model
with a layer of that width and every run use the same matrix.
"""

from __future__ import annotations

import numpy as np

from repsim.probe.features import ProbeError, StreamedFeatures

__all__ = ["project", "projection_matrix", "projection_memory"]


def check_match(match_dim: int, match_seed: int) -> None:
    """Refuse a match_dim that is not a positive int or a match_seed that is not an int ≥ 0."""
    for name, value, least, example in (
            ("match_dim", match_dim, 1, "256 (the features every wider layer is projected to)"),
            ("match_seed", match_seed, 0, "0")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or value < least:
            kind = "a positive" if least else "a non-negative"
            raise ProbeError(f"{name} must be {kind} int, got {value!r}; e.g. {name}={example}")


def projection_matrix(dim: int, match_dim: int, seed: int = 0) -> np.ndarray:
    """R (dim, match_dim) float32 with entries N(0, 1/match_dim), the same for every call:

    ``np.random.default_rng(seed).standard_normal((dim, match_dim), dtype=np.float32)
    / np.float32(np.sqrt(match_dim))``, drawn on the CPU. Holding it takes 4·dim·match_dim
    bytes. E‖xR‖² = ‖x‖² for every x (dim,).
    """
    check_match(match_dim, seed)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim, match_dim), dtype=np.float32) / np.float32(np.sqrt(match_dim))


def project(features: StreamedFeatures, matrix: np.ndarray) -> np.ndarray:
    """features @ matrix (N, d), in one pass over the row blocks of features (N, D).

    matrix (D, d). N and D come from the source's metadata, so a matrix drawn for another
    width is refused before any row is read. Each block is multiplied into its rows of the
    result, so the pass holds one block, the matrix and the result (:func:`projection_memory`).
    The result has the floating type of a block times the matrix (float32 for float32 files)."""
    n, width = features.shape
    if width != len(matrix):
        raise ProbeError(f"{features.layer!r} ({features.reduction}) has {width} "
                         f"features here but the projection was drawn for "
                         f"{len(matrix)}; project the same layer of train and test")
    projected = None
    for start, block in features.blocks():
        if projected is None:
            projected = np.empty((n, matrix.shape[1]), np.result_type(block, matrix))
        np.matmul(block, matrix, out=projected[start:start + len(block)])
    return projected


def projection_memory(dim: int, match_dim: int, n: int, block_rows: int) -> int:
    """Bytes :func:`project` holds at most for n rows of float32 features, dim → match_dim.

    R, 4·dim·match_dim; the projected rows, 4·n·match_dim; per row of a block, the block
    read, 4·dim, and its finiteness mask, 1·dim (the product is written in place).
    """
    return 4 * dim * match_dim + 4 * n * match_dim + block_rows * 5 * dim
