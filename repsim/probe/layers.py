"""Probing every layer of a train and a test activation source: :func:`probe_layers`.

Both splits are activation sources (:mod:`repsim.sources`): an activation file, in-memory
arrays, or anything else with that protocol. Each layer is read whole, streamed in row blocks
within ``max_memory`` (:mod:`repsim.probe.memory`), or randomly projected, and probed by
:class:`repsim.probe.LinearProbe`; the widths that decide which come from the sources'
metadata (``n`` and ``shape``), without reading a row.

Dimension matching: a wider layer is more separable for its width alone.
``probe_layers(match_dim=d, match_seed=s)`` probes every layer of D > d features on x @ R, R
(D, d) the seeded Gaussian matrix of :func:`repsim.projection.projection_matrix` (the same for
train and test, every model and every run); narrower layers are probed as they are. R
multiplies the raw features, whose distances it keeps (Johnson–Lindenstrauss); the probe then
standardises the projected ones as any others. A projected layer is read in one pass of row
blocks (within ``max_memory`` when given, see :func:`repsim.probe.projection_block_rows`) into
an (N, d) array that is probed in memory.

Test accuracy comes with its Wilson score interval over the test inputs (``test_low``,
``test_high``, at the table's ``level``): the uncertainty of the accuracy of this fitted probe
on the population the test inputs are drawn from (not of the network's seed, nor of the fit).

Chance level, as reported by :func:`probe_layers`: the test accuracy of always predicting the
most frequent train class (ties: the smallest label). It is what a probe that learnt nothing
but the train class frequencies scores, and it differs from 1/K on unbalanced splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

# a module, not its names: repsim.projection imports repsim.probe.features, so when it is
# imported first it is only partly initialised while this package loads
from repsim import projection
from repsim.measures.pairing import check_provenance
from repsim.probe.estimator import LinearProbe, ProbeSettings, _check_labels
from repsim.probe.features import (
    ProbeError,
    StreamedFeatures,
    check_finite,
    describe_layer,
    feature_width,
)
from repsim.probe.memory import probe_block_rows, projection_block_rows
from repsim.sources import ActivationSet, ActivationSource, check_layer_names
from repsim.stats.intervals import check_level, wilson_interval

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GAP", "ProbeRow", "ProbeTable", "probe_layers"]

GAP = "gap"  # the default reduction for probes
# the provenance train and test are checked on, with the fix where both record it and it
# differs (None: it may differ; train and test of one split must not share rows); a key that
# only one of them records is probed with a ProvenanceWarning naming it
PROVENANCE = {"dataset": "probe two splits of one dataset", "split": None}


@dataclass(frozen=True)
class ProbeRow:
    """The probe of one layer."""

    layer: str
    depth: int            # position of the layer in the train file's layer order
    rel_depth: float      # depth / (L − 1), L layers in the file (0 when L = 1)
    dim: int              # the layer's feature dimension D
    probe_dim: int        # features probed: match_dim for a randomly projected layer, else D
    C: float              # chosen inverse L2 strength
    train_acc: float      # accuracy of the refit on the train split
    test_acc: float
    test_low: float       # Wilson interval of test_acc over the test inputs, at the table's level
    test_high: float
    chance: float         # test accuracy of always predicting the most frequent train class
    n_train: int
    n_test: int
    solver: str           # "sklearn" | "torch"


@dataclass(frozen=True)
class ProbeTable:
    """One :class:`ProbeRow` per probed layer, in the order probed, with the protocol used."""

    rows: tuple[ProbeRow, ...]
    reduction: str
    settings: ProbeSettings
    match_dim: int | None = None  # features of the random projection of wider layers; None: off
    match_seed: int = 0           # seed of that projection
    level: float = 0.95           # of the test accuracies' intervals

    def records(self) -> list[dict]:
        """The rows as dicts (e.g. for ``csv.DictWriter`` or ``pandas.DataFrame``)."""
        return [asdict(row) for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        """A tidy :class:`pandas.DataFrame`, one row per probed layer, in the table's order.

        Columns: every :class:`ProbeRow` field (``solver`` is the solver a layer was fitted
        with; ``test_low``/``test_high`` the interval at ``self.level``), then the protocol,
        the same on every row: ``reduction``, ``match_dim`` (nullable Int64, <NA> when off),
        ``match_seed``, and the settings ``cv``, ``Cs`` (the grid as a string, e.g.
        ``"0.1,1.0"``), ``solver_setting`` ("auto" | "sklearn" | "torch"), ``dtype`` and
        ``random_state``. Frames of several tables concatenate (``pandas.concat``) into one
        long table to group by any of these columns; group by ``match_dim`` with
        ``dropna=False`` to keep the unprojected tables.
        """
        import pandas as pd

        frame = pd.DataFrame(self.records(), columns=[f.name for f in fields(ProbeRow)])
        protocol = {
            "reduction": self.reduction,
            "match_dim": self.match_dim,
            "match_seed": self.match_seed,
            "cv": self.settings.cv,
            "Cs": ",".join(repr(c) for c in self.settings.Cs),
            "solver_setting": self.settings.solver,
            "dtype": self.settings.dtype,
            "random_state": self.settings.random_state,
        }
        for name, value in protocol.items():
            frame[name] = pd.Series([value] * len(frame), index=frame.index,
                                    dtype="Int64" if name == "match_dim" else None)
        return frame

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def probe_layers(train: Any, test: Any, *, reduction: str = GAP,
                 layers: Sequence[str] | None = None, progress: bool = False,
                 max_memory: int | None = None, match_dim: int | None = None,
                 match_seed: int = 0, level: float = 0.95, **probe_kwargs: Any) -> ProbeTable:
    """Probe every layer (or ``layers``) of a train and a test activation source.

    ``train``/``test``: :class:`repsim.store.ActivationFile`,
    :class:`repsim.sources.ActivationSet`, any other :class:`repsim.sources.ActivationSource`
    with labels, or a dict ``{"layers": {name: (N, D)}, "labels": (N,), "meta": {...},
    "indices": (N,), "reduction": "gap"}`` (the last three optional), taken as
    ``ActivationSet(**d)``.
    ``max_memory`` (bytes): stream each layer that does not fit this budget from the sources
    in row blocks as large as :func:`repsim.probe.probe_memory` allows (for files larger than
    memory; the torch solver is used); a layer that fits is read whole. ``match_dim``: probe
    every layer of more than match_dim features on its seeded random projection to match_dim
    features (:mod:`repsim.projection`, seed ``match_seed``), so layers of different widths
    are compared at one dimension. ``level``: of the Wilson interval of each test accuracy
    over the test inputs (``test_low``, ``test_high``). ``probe_kwargs`` go to
    :class:`LinearProbe`. Refuses sources of different datasets, test classes the train split
    lacks, missing layers, the same rows used as train and test, and NaN or infinite values
    (naming the layer, the reduction and the set); a dataset or split that only one source
    records is probed with a :class:`ProvenanceWarning` naming it.
    """
    train, test = _as_source(train, "train"), _as_source(test, "test")
    settings = ProbeSettings(**probe_kwargs)
    check_level(level)
    if match_dim is not None:
        projection.check_match(match_dim, match_seed)
    names = _check_pair(train, test, layers, settings.cv)
    y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
    chance = float(np.mean(y_test == _most_frequent(y_train)))
    order = list(train.layers)
    rows = []
    reader = _LayerReader(reduction, max_memory, len(np.unique(y_train)), settings.dtype,
                          match_dim, match_seed)
    for name in tqdm(names, desc="probing layers", disable=not progress):
        x_train, dim = reader.read(train, name)
        probe = LinearProbe(**asdict(settings)).fit(x_train, y_train)
        probe_dim, train_acc = np.shape(x_train)[1], float(probe.score(x_train, y_train))
        del x_train  # the test split is read once the train split is let go (max_memory)
        x_test, test_dim = reader.read(test, name)
        if test_dim != dim:
            raise ProbeError(f"layer {name!r} has {dim} features in the train set but "
                             f"{test_dim} in the test set; extract both splits from the same "
                             "model with the same reduction")
        depth = order.index(name)
        test_acc = float(probe.score(x_test, y_test))
        low, high = wilson_interval(round(test_acc * len(y_test)), len(y_test), level)
        rows.append(ProbeRow(
            layer=name, depth=depth, rel_depth=depth / max(len(order) - 1, 1), dim=dim,
            probe_dim=probe_dim, C=probe.C_, train_acc=train_acc, test_acc=test_acc,
            test_low=float(low), test_high=float(high), chance=chance, n_train=len(y_train),
            n_test=len(y_test), solver=probe.solver_,
        ))
    return ProbeTable(tuple(rows), reduction, settings, match_dim, match_seed, level)


@dataclass(frozen=True)
class _LayerReader:
    """How :func:`probe_layers` reads a layer's features: whole, streamed or projected."""

    reduction: str
    max_memory: int | None  # bytes; None: read every layer whole
    n_classes: int
    dtype: str              # of the probe's fits
    match_dim: int | None   # project layers wider than this; None: never
    match_seed: int

    def read(self, source: ActivationSource, layer: str) -> tuple[Any, int]:
        """The (N, D') features of ``layer`` as probed (an array or :class:`StreamedFeatures`)
        and the layer's own width D, which comes from the source's metadata.

        A layer that fits the budget in one block is read whole, so it is read once rather
        than at every evaluation of the objective (the in-memory fit holds about 12·D bytes
        per row, less than the rule's 17·D)."""
        n = source.n
        width = feature_width(tuple(source.shape(layer, self.reduction)),
                              f"{layer!r} ({self.reduction})")
        if self.match_dim is not None and width > self.match_dim:
            return self._projected(source, layer, n, width), width
        block_rows = n if self.max_memory is None else probe_block_rows(
            width, n, self.n_classes, self.max_memory, self.dtype)
        if block_rows >= n:
            x = source.read(layer, self.reduction)
            check_finite(x, 0, describe_layer(source, layer, self.reduction))
            return x, width
        return StreamedFeatures(source, layer, self.reduction, block_rows), width

    def _projected(self, source: ActivationSource, layer: str, n: int, width: int
                   ) -> np.ndarray:
        """x @ R (N, match_dim) of one layer, read in row blocks that fit ``max_memory`` (one
        block of all N rows without it). R depends only on (D, match_dim, match_seed), so the
        train and test splits are projected alike although R is drawn again for each."""
        matrix = projection.projection_matrix(width, self.match_dim, self.match_seed)
        block_rows = n if self.max_memory is None else projection_block_rows(
            width, self.match_dim, n, self.n_classes, self.max_memory, self.dtype)
        return projection.project(StreamedFeatures(source, layer, self.reduction, block_rows),
                                  matrix)


def _as_source(source: Any, role: str) -> ActivationSource:
    """``source`` as an :class:`ActivationSource` with labels: sources as they are, the dict
    form as an :class:`ActivationSet`."""
    if isinstance(source, Mapping):
        unknown = set(source) - {"layers", "labels", "meta", "indices", "reduction"}
        if unknown or not {"layers", "labels"} <= set(source):
            raise ProbeError(f"the {role} dict needs keys 'layers' and 'labels' (optional: "
                             f"'meta', 'indices', 'reduction'), got {sorted(source)}")
        source = ActivationSet(**source, name=f"the {role} set")
    elif not isinstance(source, ActivationSource):
        raise ProbeError(f"the {role} set must be an ActivationFile, an ActivationSet (or "
                         f"another repsim.sources.ActivationSource) or a dict of layers and "
                         f"labels, got {type(source).__name__}")
    if source.labels is None:
        raise ProbeError(f"the {role} set has no labels, and a probe needs the class of every "
                         "row; pass labels=(N,) to the ActivationSet")
    return source


def _check_pair(train: ActivationSource, test: ActivationSource,
                layers: Sequence[str] | None, cv: int) -> list[str]:
    """The layer names to probe, after checking that train and test belong together: their
    provenance (:data:`PROVENANCE`) and that they do not share rows."""
    check_provenance((train, "train"), (test, "test"), PROVENANCE, error=ProbeError)
    _check_disjoint(train, test, train.meta.get("split"), test.meta.get("split"))
    y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
    _check_labels(y_train, cv)
    unseen = np.setdiff1d(y_test, y_train)
    if unseen.size:
        raise ProbeError(f"test labels {unseen.tolist()} never occur in the train split "
                         f"(train classes {np.unique(y_train).tolist()}); the label sets must "
                         "match: were the files made from different datasets or label maps?")
    return check_layer_names(train, test, layers, ProbeError, "probe")


def _check_disjoint(train: ActivationSource, test: ActivationSource, split_train: Any,
                    split_test: Any) -> None:
    """Refuse train and test that are the same rows of the same split.

    Files of different splits (e.g. "train" and "test") may share dataset indices, which
    count from 0 in each split; files of the same or unknown split must not share any.
    """
    same_split = split_train is not None and split_train == split_test
    idx_train, idx_test = train.indices, test.indices
    if same_split and (idx_train is None or idx_test is None):
        raise ProbeError(f"train and test are both split {split_train!r} and have no dataset "
                         "indices to show they are disjoint; pass the train split as train")
    if (same_split or split_train is None or split_test is None) \
            and idx_train is not None and idx_test is not None:
        shared = np.intersect1d(idx_train, idx_test)
        if shared.size:
            raise ProbeError(f"train and test share {shared.size} rows (dataset indices "
                             f"{shared[:5].tolist()}…) of split {split_train!r}; the test "
                             "accuracy would be a train accuracy: pass disjoint splits")


def _most_frequent(y: np.ndarray) -> Any:
    """The most frequent label of y (n,); ties go to the smallest label."""
    classes, counts = np.unique(y, return_counts=True)
    return classes[np.argmax(counts)]
