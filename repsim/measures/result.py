"""The layer-by-layer map of one measure between two networks, with what defines it."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["UNCERTAINTY_ARRAYS", "SimilarityResult"]

UNCERTAINTY_ARRAYS = ("low", "high", "baseline_mean", "baseline_high", "calibrated", "p",
                      "p_adjusted")


@dataclass(frozen=True, kw_only=True)
class SimilarityResult:
    """A (len(layers_a), len(layers_b)) map: rows are network a's layers, columns b's.

    ``matrix`` float64, read-only; ``n`` inputs; ``measure`` the registry name, ``label`` its
    axis name ("linear CKA"), ``direction`` "similarity" or "distance", ``value_range`` and
    ``identical`` (the value of identical representations) from the measure; ``settings``
    every parameter that defines the values (JSON-ready); ``reduction`` how stored layers were
    reduced to (n, p) (None for arrays taken as given); ``provenance_a``/``provenance_b`` the
    sources' metadata (checkpoint digest, dataset, split, …).
    """

    matrix: np.ndarray
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    n: int
    measure: str
    label: str
    direction: str
    value_range: tuple[float, float]
    identical: float
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    reduction: str | None = None
    provenance_a: dict[str, Any] = field(default_factory=dict)
    provenance_b: dict[str, Any] = field(default_factory=dict)
    # uncertainty (repsim.stats), each (La, Lb) or None when not asked for
    low: np.ndarray | None = None            # interval bounds at ``level``
    high: np.ndarray | None = None
    baseline_mean: np.ndarray | None = None  # the value with b's inputs shuffled: mean,
    baseline_high: np.ndarray | None = None  # and the end 95 % of shuffles do not pass
    calibrated: np.ndarray | None = None     # (value − baseline mean) / (identical − mean)
    p: np.ndarray | None = None              # permutation p of "more alike than shuffled"
    p_adjusted: np.ndarray | None = None     # p, Holm-adjusted over all cells of the map
    uncertainty: dict[str, Any] = field(default_factory=dict)  # level, method, n_perm, seed

    def __post_init__(self):
        for name in ("matrix", *UNCERTAINTY_ARRAYS):
            value = getattr(self, name)
            if value is not None:
                value.setflags(write=False)

    @property
    def axis_label(self) -> str:
        """e.g. "linear CKA (similarity, 1 = identical)"."""
        return f"{self.label} ({self.direction}, {self.identical:g} = identical)"

    @property
    def colour_range(self) -> tuple[float, float]:
        """Heatmap colour scale: the value range, or [0, 1] past an infinite end."""
        low, high = self.value_range
        return (low if math.isfinite(low) else 0.0, high if math.isfinite(high) else 1.0)

    def diagonal(self) -> np.ndarray:
        """(L,) value of layer i of a with layer i of b; needs equally long layer lists."""
        if len(self.layers_a) != len(self.layers_b):
            raise ValueError(
                f"diagonal() needs as many layers in a as in b, got {len(self.layers_a)} and "
                f"{len(self.layers_b)}; select matching layers with layers_a=/layers_b=")
        return np.diagonal(self.matrix).copy()

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN entries (e.g. constant layers) and infinite range ends become None."""
        return {
            "quantity": self.description or self.axis_label,
            "measure": self.measure,
            "direction": self.direction,
            "range": [_json_number(v) for v in self.value_range],
            "matrix": _json_matrix(self.matrix),
            "rows": "layers_a",
            "columns": "layers_b",
            "layers_a": list(self.layers_a),
            "layers_b": list(self.layers_b),
            "n": self.n,
            "reduction": self.reduction,
            **self.settings,
            **({"uncertainty": self.uncertainty} if self.uncertainty else {}),
            **{name: _json_matrix(values) for name, values in self._uncertainty().items()},
            "provenance_a": self.provenance_a,
            "provenance_b": self.provenance_b,
        }

    def _uncertainty(self) -> dict[str, np.ndarray]:
        """The uncertainty arrays that were computed, by field name."""
        return {name: getattr(self, name) for name in UNCERTAINTY_ARRAYS
                if getattr(self, name) is not None}

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per layer pair with columns layer_a, layer_b, depth_a,
        depth_b (positions in the layer lists), value, the uncertainty columns that were
        computed (low, high, baseline_mean, baseline_high, calibrated, p, p_adjusted), then
        measure, direction, n, reduction and one column per setting."""
        depth_a, depth_b = np.meshgrid(np.arange(len(self.layers_a)),
                                       np.arange(len(self.layers_b)), indexing="ij")
        frame = pd.DataFrame({
            "layer_a": np.asarray(self.layers_a, dtype=object)[depth_a.ravel()],
            "layer_b": np.asarray(self.layers_b, dtype=object)[depth_b.ravel()],
            "depth_a": depth_a.ravel(),
            "depth_b": depth_b.ravel(),
            "value": self.matrix.ravel(),
            **{name: values.ravel() for name, values in self._uncertainty().items()},
        })
        constants = {"measure": self.measure, "direction": self.direction, "n": self.n,
                     "reduction": self.reduction, **self.settings}
        return frame.assign(**{key: [value] * len(frame) for key, value in constants.items()})

    def write_csv(self, path: str | Path) -> Path:
        """The matrix as CSV: a header row of b's layers, then one row per layer of a."""
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer_a \\ layer_b", *self.layers_b])
            for name, row in zip(self.layers_a, self.matrix):
                writer.writerow([name, *(f"{v:.10g}" for v in row)])
        return path


def _json_number(value: float) -> float | None:
    """Strict JSON has no NaN or infinity: they become null."""
    return value if math.isfinite(value) else None


def _json_matrix(values: np.ndarray) -> list[list[float | None]]:
    return [[_json_number(v) for v in row] for row in values.tolist()]
