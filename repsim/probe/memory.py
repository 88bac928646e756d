"""The memory rule of a streamed probe fit and of a projected layer, and the largest row
blocks that fit a budget (what ``probe_layers(max_memory=...)`` reads at a time), found by
the toolkit's one budget solver (:mod:`repsim.budget`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# a module, not its names: repsim.projection imports repsim.probe.features, so when it is
# imported first it is only partly initialised while this package loads
from repsim import projection
from repsim.budget import check_budget, format_bytes, largest_fitting
from repsim.probe.estimator import PRECONDITION_MAX_DIM
from repsim.probe.features import ProbeError

__all__ = ["probe_block_rows", "probe_memory", "projection_block_rows"]


def probe_memory(dim: int, n: int, n_classes: int, block_rows: int,
                 dtype: str = "float32") -> int:
    """Bytes the arrays of a streamed probe fit of n rows × dim features take at most (not
    counted: the interpreter and libraries, freed blocks the allocator keeps, and what the
    caller holds; measured, RSS grew by about 1.4× this; give ``max_memory`` half of what may
    be used).

    * per row of a block: the block read, 4·D (float32), its finiteness mask, 1·D, the kept
      rows' copy, 4·D, and the standardised rows with their temporary, 8·D (float64 during
      :func:`~repsim.probe.features.column_moments`, the same bytes); float64 fits add the
      solver's copy, 8·D; logits and their gradient, 3·K'·8;
    * per row of the file: labels, codes, fold indices and masks, 64 bytes;
    * per feature: Σ, its eigenvectors, the preconditioner and its inverse, 5·D²·s (s the
      solver's bytes per number; none above
      :data:`~repsim.probe.estimator.PRECONDITION_MAX_DIM` features), and the
      weights, gradients and L-BFGS's 10 pairs of history, 26·D·K'·s.
    """
    outputs = 1 if n_classes == 2 else n_classes
    size = 8 if dtype == "float64" else 4
    per_block_row = (17 if size == 4 else 25) * dim + 24 * outputs
    preconditioner = 5 * dim * dim * size if dim <= PRECONDITION_MAX_DIM else 0
    return block_rows * per_block_row + 64 * n + preconditioner + 26 * dim * outputs * size


def probe_block_rows(dim: int, n: int, n_classes: int, max_memory: int,
                     dtype: str = "float32") -> int:
    """The largest block (≤ n rows) whose :func:`probe_memory` fits in ``max_memory`` bytes."""
    rows = _largest_block(lambda b: probe_memory(dim, n, n_classes, b, dtype), n, max_memory)
    if rows < 1:
        need = probe_memory(dim, n, n_classes, 1, dtype)
        held = (f"the {dim}×{dim} preconditioner and per-row labels"
                if dim <= PRECONDITION_MAX_DIM else "per-row labels, folds and the weights")
        raise ProbeError(f"max_memory={format_bytes(max_memory)} cannot hold a probe of "
                         f"{dim} features and {n} rows (at least {format_bytes(need)}: {held}); "
                         "raise max_memory or probe a smaller reduction (e.g. gap or pool2)")
    return int(rows)


def projection_block_rows(dim: int, match_dim: int, n: int, n_classes: int, max_memory: int,
                          dtype: str = "float32") -> int:
    """The largest block (≤ n rows) whose one-pass projection of n rows, dim → match_dim
    features (:func:`repsim.projection.projection_memory`), fits in ``max_memory`` bytes.

    The projected (n, match_dim) features are then probed in memory, which must fit too
    (:func:`probe_memory` with one block of n rows); a budget that cannot hold both is refused.
    """
    rows = _largest_block(lambda b: projection.projection_memory(dim, match_dim, n, b), n,
                          max_memory)
    fit = probe_memory(match_dim, n, n_classes, n, dtype)
    if rows < 1 or fit > max_memory:
        need = max(projection.projection_memory(dim, match_dim, n, 1), fit)
        raise ProbeError(f"max_memory={format_bytes(max_memory)} cannot hold the random "
                         f"projection of {dim} features to match_dim={match_dim} for {n} rows "
                         f"and the in-memory probe of it (at least {format_bytes(need)}: the "
                         f"{dim}×{match_dim} float32 matrix, the projected rows and the probe); "
                         "raise max_memory or lower match_dim")
    return int(rows)


def _largest_block(memory: Callable[[int], int], n: int, max_memory: Any) -> int:
    """The largest b ≤ n with memory(b) ≤ max_memory, by the toolkit's one budget solver
    (:func:`repsim.budget.largest_fitting`); 0 when not even b = 1 fits."""
    return largest_fitting(memory, check_budget(max_memory, ProbeError), 1, n)
