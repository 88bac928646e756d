"""The geometry of each layer: effective dimensionality and class separation.

Three numbers per layer, each from float64 sums over row blocks of an activation source
(:mod:`repsim.sources`), so a layer never has to fit in memory (the blocks fit
``max_memory``), and each cheap enough to run on every layer of every model:

* **participation ratio** PR = (Σλ)² / Σλ² of the eigenvalues λ of the covariance of the
  (n, D) activations X (Gao et al. 2017; Recanatesi et al. 2019): 1 when all variance lies
  along one direction, D when it is spread evenly over D. Since Σλ = tr C and Σλ² = tr C²,
  no eigendecomposition is needed: with Xc the column-centred rows,
  PR = ‖Xc‖⁴_F / ‖XcᵀXc‖²_F = ‖Xc‖⁴_F / ‖XcXcᵀ‖²_F. The covariance form sums XcᵀXc (D × D)
  over blocks; the Gram form, used when n < D, sums ‖Xc_i Xc_jᵀ‖²_F over pairs of blocks and
  never holds more than two blocks. PR lies in [1, min(n − 1, D)] and is invariant to
  rotations, isotropic scaling and translations of the features. It is a sample estimate,
  biased down unless n ≫ D: for isotropic Gaussian data its value is about D(n − 1)/(n + D).
* **trace ratio** tr S_B / tr S_W of the between-class scatter S_B = Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ
  and the within-class scatter S_W = Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ: how far apart the
  class centres are against the spread around them (0: all centres coincide).
* **nearest-class-centre (NCC) accuracy**: the class centres of a train split classify a
  held-out test split by the nearest centre in Euclidean distance (as scikit-learn's
  ``NearestCentroid``; ties go to the first class), with its Wilson interval over the test
  inputs. A linear probe learns its readout; NCC asks whether the raw geometry already
  separates the classes (Papyan et al. 2020's neural collapse measures the same tendency).

All three use the raw features (no standardisation). :func:`layer_geometry` computes the
first two on the test split and NCC with centres from the train split, for every layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from repsim.measures.pairing import check_provenance
from repsim.probe.features import ProbeError, StreamedFeatures, check_finite, feature_width
from repsim.sources import ActivationSource, as_source, check_layer_names
from repsim.stats.intervals import check_level, wilson_interval

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GeometryError", "GeometryRow", "GeometryTable", "layer_geometry",
           "nearest_centre_accuracy", "participation_ratio", "trace_ratio"]

DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of float64 blocks held at a time
MIN_PER_CLASS = 2                 # rows of each class: a class centre and its spread


class GeometryError(ValueError):
    """Activations or labels whose geometry cannot be measured; the message says how to fix
    it."""


class _Rows:
    """The (n, D) rows of an array or of :class:`StreamedFeatures`, read as float64 blocks."""

    def __init__(self, x: Any, what: str):
        self.what = what
        if isinstance(x, StreamedFeatures):
            self.n, self.dim = x.shape
            self._read = lambda rows: x.source.read(x.layer, x.reduction, rows)
            self.block_rows = x.block_rows
        else:
            x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
            self.dim = _width(x, what)
            self.n = len(x)
            self._read = x.__getitem__
            self.block_rows = block_rows_for(self.dim, DEFAULT_MAX_MEMORY)
        if self.n < 2:
            raise GeometryError(f"{what} has {self.n} row(s); its geometry needs at least 2 "
                                "inputs: extract more inputs")

    @property
    def starts(self) -> range:
        return range(0, self.n, self.block_rows)

    def block(self, start: int, mean: np.ndarray | None = None) -> np.ndarray:
        """Rows start … start+block_rows−1 as float64, minus ``mean`` when given."""
        block = np.asarray(self._read(slice(start, start + self.block_rows)))
        check_finite(block, start, self.what)
        block = block.astype(np.float64)
        return block if mean is None else block - mean

    def blocks(self, mean: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for start in self.starts:
            yield start, self.block(start, mean)

    def mean(self) -> np.ndarray:
        return sum(b.sum(0) for _, b in self.blocks()) / self.n


def block_rows_for(width: int, max_memory: int) -> int:
    """Rows per block of a layer of ``width`` features such that what is held at a time, two
    float64 blocks and their Gram product (at most a third block's size, as the Gram form is
    used only when a block has fewer rows than features), fits ``max_memory`` bytes."""
    return max(1, max_memory // (24 * max(width, 1)))


def participation_ratio(x: Any, *, form: str = "auto", what: str = "the features") -> float:
    """PR = (Σλ)² / Σλ² of the covariance spectrum of x (n, D), an array or
    :class:`StreamedFeatures`; ``form``: "covariance" (D × D sums), "gram" (pairs of row
    blocks) or "auto" (the Gram form when n < D). NaN, with a warning, for constant rows."""
    rows = x if isinstance(x, _Rows) else _Rows(x, what)
    if form not in ("auto", "covariance", "gram"):
        raise GeometryError(f"form must be 'auto', 'covariance' or 'gram', got {form!r}")
    mean = rows.mean()
    gram = form == "gram" or (form == "auto" and rows.n < rows.dim)
    total, squares = _gram_traces(rows, mean) if gram else _covariance_traces(rows, mean)
    if squares == 0:
        warnings.warn(f"{rows.what} is constant (zero variance): its participation ratio is "
                      "undefined (NaN)", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(total * total / squares)


def _covariance_traces(rows: _Rows, mean: np.ndarray) -> tuple[float, float]:
    """(tr XcᵀXc, ‖XcᵀXc‖²_F) from the D × D sum over blocks."""
    scatter = np.zeros((rows.dim, rows.dim))
    for _, block in rows.blocks(mean):
        scatter += block.T @ block
    return float(np.trace(scatter)), float(np.sum(scatter * scatter))


def _gram_traces(rows: _Rows, mean: np.ndarray) -> tuple[float, float]:
    """(tr XcXcᵀ, ‖XcXcᵀ‖²_F) from the Gram blocks Xc_i Xc_jᵀ, j ≥ i, two blocks at a time."""
    total = squares = 0.0
    for i in rows.starts:
        first = rows.block(i, mean)
        total += float(np.sum(first * first))
        for j in rows.starts[rows.starts.index(i):]:
            second = first if j == i else rows.block(j, mean)
            product = first @ second.T
            squares += (1 if j == i else 2) * float(np.sum(product * product))
    return total, squares


def _class_codes(y: Any, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes (K,), codes (n,)) of labels y (n,), refusing fewer than 2 classes or a class
    of fewer than :data:`MIN_PER_CLASS` rows."""
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise GeometryError(f"labels of {what} must have shape ({n},), one per row, got "
                            f"{labels.shape}")
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise GeometryError(f"{what} holds {len(classes)} class(es) {classes.tolist()}; class "
                            "separation needs at least 2: pass inputs of several classes")
    rare = counts < MIN_PER_CLASS
    if rare.any():
        raise GeometryError(f"class(es) {classes[rare].tolist()} of {what} have only "
                            f"{counts[rare].tolist()} row(s); a class centre and its spread "
                            f"need at least {MIN_PER_CLASS}: use more inputs (a balanced "
                            "subset) or drop those classes")
    return classes, codes


def _class_means(rows: _Rows, codes: np.ndarray, k: int) -> np.ndarray:
    """(K, D) float64 mean of each class code's rows."""
    sums = np.zeros((k, rows.dim))
    for start, block in rows.blocks():
        np.add.at(sums, codes[start:start + len(block)], block)
    return sums / np.bincount(codes, minlength=k)[:, None]


def trace_ratio(x: Any, y: Any, *, what: str = "the features") -> float:
    """tr S_B / tr S_W of x (n, D) (an array or :class:`StreamedFeatures`) with labels y (n,):
    between- over within-class scatter. NaN, with a warning, for constant rows."""
    rows = x if isinstance(x, _Rows) else _Rows(x, what)
    classes, codes = _class_codes(y, rows.n, what)
    means = _class_means(rows, codes, len(classes))
    counts = np.bincount(codes)
    centre = counts @ means / rows.n
    between = float(counts @ np.sum((means - centre) ** 2, axis=1))
    within = sum(float(np.sum((block - means[codes[start:start + len(block)]]) ** 2))
                 for start, block in rows.blocks())
    if within == 0:
        warnings.warn(f"{rows.what} has no within-class spread: its trace ratio is undefined "
                      "(NaN)", RuntimeWarning, stacklevel=2)
        return float("nan")
    return between / within


def nearest_centre_accuracy(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                            what: str = "the features") -> float:
    """Accuracy on (x_test (m, D), y_test (m,)) of the nearest class centre (Euclidean) of
    (x_train (n, D), y_train (n,)); arrays or :class:`StreamedFeatures`."""
    train = x_train if isinstance(x_train, _Rows) else _Rows(x_train, f"train {what}")
    test = x_test if isinstance(x_test, _Rows) else _Rows(x_test, f"test {what}")
    if train.dim != test.dim:
        raise GeometryError(f"train and test {what} have {train.dim} and {test.dim} features; "
                            "pass the same layer and reduction of both splits")
    classes, codes = _class_codes(y_train, train.n, f"train {what}")
    labels = np.asarray(y_test)
    if labels.shape != (test.n,):
        raise GeometryError(f"labels of test {what} must have shape ({test.n},), got "
                            f"{labels.shape}")
    unseen = np.setdiff1d(labels, classes)
    if unseen.size:
        raise GeometryError(f"test labels {unseen.tolist()} never occur in the train split "
                            f"(classes {classes.tolist()}); pass splits of one dataset")
    means = _class_means(train, codes, len(classes))
    squared_norms = np.sum(means * means, axis=1)
    correct = 0
    for start, block in test.blocks():
        nearest = np.argmin(squared_norms - 2 * block @ means.T, axis=1)
        correct += int(np.sum(classes[nearest] == labels[start:start + len(block)]))
    return correct / test.n


@dataclass(frozen=True)
class GeometryRow:
    """The geometry of one layer."""

    layer: str
    depth: int                  # position in the test source's layer order
    rel_depth: float            # depth / (L − 1) (0 when L = 1)
    dim: int                    # feature dimension D
    participation_ratio: float  # (Σλ)²/Σλ² of the test split's covariance
    pr_fraction: float          # participation_ratio / min(n_test − 1, D), in (0, 1]
    trace_ratio: float          # tr S_B / tr S_W on the test split
    ncc_acc: float              # nearest-centre accuracy on test, centres from train
    ncc_low: float              # Wilson interval of ncc_acc over the test inputs
    ncc_high: float
    n_train: int
    n_test: int


class LayerTable:
    """What a table of per-layer rows (dataclasses, in ``self.rows``) offers: its records,
    one field as a column, iteration over the rows and their count."""

    rows: tuple

    def records(self) -> list[dict]:
        """The rows as dicts (e.g. for ``csv.DictWriter``)."""
        return [asdict(row) for row in self.rows]

    def column(self, name: str) -> np.ndarray:
        """(L,) values of one field over the layers."""
        return np.array([getattr(row, name) for row in self.rows])

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class GeometryTable(LayerTable):
    """One :class:`GeometryRow` per layer, in the order measured."""

    rows: tuple[GeometryRow, ...]
    reduction: str
    level: float  # of the NCC accuracies' intervals

    def to_frame(self) -> pd.DataFrame:
        """A :class:`pandas.DataFrame`, one row per layer, plus ``reduction`` and ``level``."""
        import pandas as pd

        frame = pd.DataFrame(self.records(), columns=[f.name for f in fields(GeometryRow)])
        frame["reduction"], frame["level"] = self.reduction, self.level
        return frame


def layer_geometry(train: Any, test: Any, *, reduction: str = "gap",
                   layers: Sequence[str] | None = None, level: float = 0.95,
                   max_memory: int = DEFAULT_MAX_MEMORY, progress: bool = False
                   ) -> GeometryTable:
    """Participation ratio, trace ratio (both on ``test``) and NCC accuracy (centres from
    ``train``, scored on ``test``) of every layer (or ``layers``) of two activation sources
    with labels (:mod:`repsim.sources`; a dict name → (n, D) array is not enough, as it has
    no labels). Each layer is read in row blocks of float64 that fit ``max_memory`` bytes.
    Refuses sources of different datasets, missing layers, unlabelled sources, fewer than 2
    rows, a class of fewer than 2 rows and NaN or infinite values, naming the layer."""
    check_level(level)
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) \
            or max_memory < 1:
        raise GeometryError(f"max_memory must be a positive number of bytes, got "
                            f"{max_memory!r}")
    train, test = as_source(train, "train"), as_source(test, "test")
    check_provenance((train, "train"), (test, "test"),
                     {"dataset": "measure two splits of one dataset", "split": None},
                     error=GeometryError)
    names = check_layer_names(train, test, layers, GeometryError, "measure")
    y_train, y_test = (_labels_of(s, role) for s, role in ((train, "train"), (test, "test")))
    order = list(test.layers)
    rows = []
    for name in tqdm(names, desc="layer geometry", disable=not progress):
        what = f"layer {name!r} ({reduction})"
        x_train, x_test = (_streamed(s, name, reduction, max_memory, role, what)
                           for s, role in ((train, "train"), (test, "test")))
        ncc = nearest_centre_accuracy(x_train, y_train, x_test, y_test, what=what)
        low, high = wilson_interval(round(ncc * x_test.n), x_test.n, level)
        pr = participation_ratio(x_test)
        depth = order.index(name)
        rows.append(GeometryRow(
            layer=name, depth=depth, rel_depth=depth / max(len(order) - 1, 1), dim=x_test.dim,
            participation_ratio=pr, pr_fraction=pr / min(x_test.n - 1, x_test.dim),
            trace_ratio=trace_ratio(x_test, y_test), ncc_acc=ncc, ncc_low=float(low),
            ncc_high=float(high), n_train=x_train.n, n_test=x_test.n))
    return GeometryTable(tuple(rows), reduction, level)


def _labels_of(source: ActivationSource, role: str) -> np.ndarray:
    if source.labels is None:
        raise GeometryError(f"the {role} set has no labels, and class separation needs the "
                            "class of every row; pass labels=(N,) to the ActivationSet")
    return np.asarray(source.labels)


def _streamed(source: ActivationSource, layer: str, reduction: str, max_memory: int,
              role: str, what: str) -> _Rows:
    """The layer's rows in blocks that fit ``max_memory`` (:func:`block_rows_for`)."""
    width = _width(tuple(source.shape(layer, reduction)), what)
    return _Rows(StreamedFeatures(source, layer, reduction, block_rows_for(width, max_memory)),
                 f"{role} {what}")


def _width(x: Any, what: str) -> int:
    """D of an (n, D) array or shape, as :func:`repsim.probe.features.feature_width` checks
    it, refused as a :class:`GeometryError`."""
    try:
        return feature_width(x, what)
    except ProbeError as err:
        raise GeometryError(str(err)) from None
