"""Linear probes: protocol properties, solver agreement, leakage and every error path."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from repsim.probe import (
    ActivationSet,
    LinearProbe,
    ProbeError,
    ProbeSettings,
    ProvenanceWarning,
    estimator,
    probe_layers,
)
from repsim.sources import ActivationSource, SourceError


def blobs(n_per_class, centres, *, seed, spread=1.0):
    """Gaussian blobs: x (K·n, D) around the rows of ``centres`` (K, D), y (K·n,)."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=float)
    y = np.repeat(np.arange(len(centres)), n_per_class)
    return centres[y] + spread * rng.standard_normal((len(y), centres.shape[1])), y


def separable(seed, n_per_class=60, dim=6, classes=3):
    """Well-separated blobs; the centres are the same for every seed (train and test)."""
    centres = 8.0 * np.random.default_rng(100).standard_normal((classes, dim))
    return blobs(n_per_class, centres, seed=seed, spread=0.5)


def overlapping(seed, n_per_class=80):
    """Three classes that no linear map separates perfectly, so C matters."""
    return blobs(n_per_class, [[0, 0, 0, 0], [1.5, 0, 0, 0], [0, 1.5, 0, 0]], seed=seed)


# ---------------------------------------------------------------------------------------------
# What a probe learns
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_linearly_separable_classes_are_found(solver):
    x, y = separable(0)
    x_test, y_test = separable(1)
    probe = LinearProbe(solver=solver).fit(x, y)
    assert probe.solver_ == solver
    assert probe.score(x_test, y_test) >= 0.99
    assert probe.score(x, y) == 1.0


def test_random_labels_give_chance_accuracy_on_test():
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((600, 10)), rng.standard_normal((900, 10))
    y, y_test = rng.integers(0, 3, 600), rng.integers(0, 3, 900)
    accuracy = LinearProbe().fit(x, y).score(x_test, y_test)
    # binomial sd of an accuracy of 1/3 on 900 rows is 0.016: a ±0.07 band is > 4 sd
    assert abs(accuracy - 1 / 3) < 0.07


def test_two_classes_use_one_logit_like_sklearn():
    x, y = separable(0, classes=2)
    probe = LinearProbe().fit(x, np.where(y == 1, 7, -2))
    assert probe.coef_.shape == (1, x.shape[1]) and probe.intercept_.shape == (1,)
    assert set(probe.predict(x)) == {7, -2}
    assert probe.decision_function(x).shape == (len(x),)


def test_labels_keep_their_values_and_order():
    x, y = separable(0)
    names = np.array(["cat", "dog", "eel"])[y]
    probe = LinearProbe().fit(x, names)
    assert probe.classes_.tolist() == ["cat", "dog", "eel"]
    assert (probe.predict(x) == names).all()


def test_zero_variance_features_keep_scale_one_and_give_no_nan():
    x, y = separable(0)
    x = np.column_stack([x, np.full(len(x), 3.25), np.zeros(len(x))]).astype(np.float32)
    probe = LinearProbe().fit(x, y)
    assert probe.scale_[-2:].tolist() == [1.0, 1.0]
    assert np.isfinite(probe.coef_).all()
    assert np.isfinite(probe.decision_function(x)).all()


def test_follows_sklearn_estimator_conventions():
    probe = LinearProbe(Cs=(0.1, 1.0), cv=4)
    assert clone(probe).get_params() == probe.get_params()
    x, y = overlapping(0)
    probe.fit(x, y)
    assert probe.cv_scores_.shape == (4, 2)
    assert probe.C_ == (0.1, 1.0)[int(np.argmax(probe.cv_scores_.mean(0)))]


# ---------------------------------------------------------------------------------------------
# The two solver paths against scikit-learn's LogisticRegression
# ---------------------------------------------------------------------------------------------


def sklearn_reference(x, y, C):
    """LogisticRegression on features standardised by hand: an independent computation."""
    z = (x - x.mean(0)) / x.std(0)
    return LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(z, y)


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("precondition", [True, False])
def test_solver_matches_sklearn_at_the_same_c(solver, classes, precondition, monkeypatch):
    if not precondition:
        monkeypatch.setattr(estimator, "PRECONDITION_MAX_DIM", 0)
    x, y = overlapping(1)
    x, y = x[y < classes], y[y < classes]
    reference = sklearn_reference(x, y, C=0.5)
    probe = LinearProbe(Cs=(0.5,), solver=solver, dtype="float64", tol=1e-8,
                        max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(probe.coef_, reference.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probe.intercept_, reference.intercept_, rtol=1e-4, atol=1e-5)


def test_torch_and_sklearn_paths_agree_on_accuracy_and_chosen_c():
    x, y = overlapping(2, n_per_class=150)
    x_test, y_test = overlapping(3, n_per_class=150)
    fitted = {s: LinearProbe(solver=s).fit(x, y) for s in ("sklearn", "torch")}
    np.testing.assert_allclose(fitted["torch"].cv_scores_, fitted["sklearn"].cv_scores_,
                               atol=0.02)
    accuracy = {s: p.score(x_test, y_test) for s, p in fitted.items()}
    assert abs(accuracy["torch"] - accuracy["sklearn"]) <= 0.01


def test_auto_uses_torch_above_the_threshold_only():
    x, y = separable(0, dim=6)
    assert LinearProbe(torch_threshold=6).fit(x, y).solver_ == "sklearn"
    assert LinearProbe(torch_threshold=5).fit(x, y).solver_ == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_gives_the_cpu_fit():
    x, y = overlapping(4)
    cpu = LinearProbe(solver="torch", dtype="float64").fit(x, y)
    gpu = LinearProbe(solver="torch", dtype="float64", device="cuda").fit(x, y)
    assert gpu.C_ == cpu.C_
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# No leakage: only the train split shapes the standardisation and the choice of C
# ---------------------------------------------------------------------------------------------


def test_standardisation_uses_the_train_split_exactly():
    x, y = overlapping(5)
    probe = LinearProbe().fit(x, y)
    np.testing.assert_allclose(probe.mean_, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(probe.scale_, x.std(axis=0), rtol=1e-12)


def test_cross_validation_sees_only_train_rows(monkeypatch):
    x, y = overlapping(6)
    seen = []
    real_path = estimator._SOLVER_PATHS["torch"]

    def spy(rows, *args):
        seen.append(rows.z.numpy() * probe.scale_ + probe.mean_)  # back to raw features
        return real_path(rows, *args)

    monkeypatch.setitem(estimator._SOLVER_PATHS, "torch", spy)
    probe = LinearProbe(solver="torch", dtype="float64", cv=3)
    probe.fit(x, y)
    assert [len(rows) for rows in seen] == [160, 160, 160, 240]  # 3 folds of 2/3, then refit
    train_rows = {tuple(np.round(row, 8)) for row in x}
    for rows in seen:
        assert {tuple(np.round(row, 8)) for row in rows} <= train_rows
    fold_rows = [{tuple(np.round(row, 8)) for row in rows} for rows in seen[:3]]
    assert len(set.union(*fold_rows)) == 240  # each row is held out exactly once


def test_a_shifted_test_set_changes_nothing_but_test_accuracy():
    x, y = separable(0)
    x_test, y_test = separable(1)
    train = {"layers": {"a": x}, "labels": y}
    clean = probe_layers(train, {"layers": {"a": x_test}, "labels": y_test}).rows[0]
    shifted = probe_layers(train, {"layers": {"a": 1e3 + 50 * x_test},
                                   "labels": y_test}).rows[0]
    assert (shifted.C, shifted.train_acc) == (clean.C, clean.train_acc)
    assert clean.test_acc >= 0.99
    # standardised with the test split's own statistics this set would score as well as the
    # clean one; with the train statistics the huge shift ruins it
    assert shifted.test_acc < 0.7


# ---------------------------------------------------------------------------------------------
# probe_layers
# ---------------------------------------------------------------------------------------------


def layered(seed, n_per_class=40, meta=None):
    """Three layers that get more separable with depth, as an in-memory dict."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    signal = np.eye(3)[y]
    layers = {name: np.column_stack([gain * signal, rng.standard_normal((len(y), width))])
              for name, gain, width in (("stem", 0.0, 4), ("block1", 1.0, 6), ("block2", 6.0, 8))}
    return {"layers": layers, "labels": y, "meta": meta or {}}


def test_probe_layers_gives_one_documented_row_per_layer_in_order():
    train, test = layered(0), layered(1)
    keep = np.r_[0:40, 40:65, 80:105]  # 40, 25 and 25 rows of classes 0, 1, 2
    test = {"layers": {k: v[keep] for k, v in test["layers"].items()},
            "labels": test["labels"][keep]}
    table = probe_layers(train, test)
    assert [row.layer for row in table] == ["stem", "block1", "block2"]
    assert [row.depth for row in table] == [0, 1, 2]
    assert [row.rel_depth for row in table] == [0.0, 0.5, 1.0]
    assert [row.dim for row in table] == [7, 9, 11]
    assert [row.probe_dim for row in table] == [7, 9, 11]  # no match_dim: probed as they are
    assert (table.match_dim, table.match_seed) == (None, 0)
    # train classes are balanced, so the most frequent is the smallest label, 0
    assert all(row.chance == pytest.approx(40 / 90) for row in table)
    assert all((row.n_train, row.n_test) == (120, 90) for row in table)
    assert all(row.C in ProbeSettings().Cs for row in table)
    assert table.rows[2].test_acc >= 0.95 and table.rows[0].test_acc < 0.6
    assert table.reduction == "gap"
    assert list(table.records()[0]) == ["layer", "depth", "rel_depth", "dim", "probe_dim", "C",
                                        "train_acc", "test_acc", "test_low", "test_high",
                                        "chance", "n_train", "n_test", "solver"]


def test_to_frame_has_one_row_per_layer_with_the_records_and_the_protocol():
    table = probe_layers(layered(0), layered(1), Cs=(0.1, 1.0), cv=4, solver="sklearn",
                         dtype="float64", random_state=3)
    frame = table.to_frame()
    records = table.records()
    assert list(frame.columns) == list(records[0]) + [
        "reduction", "match_dim", "match_seed", "cv", "Cs", "solver_setting", "dtype",
        "random_state"]
    assert frame[list(records[0])].to_dict("records") == records
    assert len(frame) == 3 and frame["layer"].tolist() == ["stem", "block1", "block2"]
    protocol = frame.drop(columns=list(records[0])).drop_duplicates()
    assert len(protocol) == 1
    assert protocol.drop(columns="match_dim").iloc[0].to_dict() == {
        "reduction": "gap", "match_seed": 0, "cv": 4, "Cs": "0.1,1.0",
        "solver_setting": "sklearn", "dtype": "float64", "random_state": 3}
    assert frame["match_dim"].dtype == "Int64" and frame["match_dim"].isna().all()
    assert [float(c) for c in frame["Cs"][0].split(",")] == list(table.settings.Cs)


def test_frames_of_several_tables_concatenate_and_group():
    train, test = layered(0), layered(1)
    plain = probe_layers(train, test, Cs=(1.0,))
    matched = probe_layers(train, test, Cs=(1.0,), match_dim=8, match_seed=2)
    both = pd.concat([plain.to_frame(), matched.to_frame()], ignore_index=True)
    assert len(both) == 6 and both["match_dim"].dtype == "Int64"
    by_match = both.groupby("match_dim", dropna=False)["probe_dim"].apply(list).to_dict()
    assert by_match[8] == [7, 8, 8]
    assert [value for key, value in by_match.items() if pd.isna(key)] == [[7, 9, 11]]
    by_layer = both.groupby("layer", sort=False)["test_acc"].mean()
    for layer in ("stem", "block1", "block2"):
        accs = [row.test_acc for table in (plain, matched) for row in table
                if row.layer == layer]
        assert by_layer[layer] == pytest.approx(np.mean(accs))


def test_to_frame_of_an_empty_table_keeps_the_columns():
    table = probe_layers(layered(0), layered(1), Cs=(1.0,))
    empty = type(table)((), table.reduction, table.settings)
    assert list(empty.to_frame().columns) == list(table.to_frame().columns)
    assert len(empty.to_frame()) == 0


def test_probe_layers_takes_a_subset_and_keeps_file_depths():
    table = probe_layers(layered(0), layered(1), layers=["block2", "stem"], Cs=(1.0,))
    assert [(row.layer, row.depth) for row in table] == [("block2", 2), ("stem", 0)]
    assert table.settings.Cs == (1.0,)


def test_probe_layers_reads_any_activation_source():
    class FakeFile:  # the ActivationSource protocol, implemented from scratch
        def __init__(self, data, split):
            self.layers, self.reductions = list(data["layers"]), ["pool2"]
            self.labels, self.n = data["labels"], len(data["labels"])
            self.indices, self.meta = np.arange(self.n), {"split": split}
            self.data, self.reads = data["layers"], []

        def shape(self, layer, reduction):
            return self.data[layer].shape

        def original_shape(self, layer):
            return self.data[layer].shape[1:]

        def read(self, layer, reduction, rows=None):
            self.reads.append((layer, reduction))
            return self.data[layer][rows or slice(None)].astype(np.float32)

        def iter_blocks(self, layer, reduction, block_rows):
            return (self.read(layer, reduction, slice(s, s + block_rows))
                    for s in range(0, self.n, block_rows))

    train, test = FakeFile(layered(0), "train"), FakeFile(layered(1), "test")
    assert isinstance(train, ActivationSource)
    table = probe_layers(train, test, reduction="pool2", layers=["block1"])
    assert train.reads == test.reads == [("block1", "pool2")]
    assert table.rows[0].test_acc > 0.8


def test_the_dict_form_and_an_activation_set_give_the_same_table():
    train, test = layered(0), layered(1)
    as_dicts = probe_layers(train, test, Cs=(0.1, 1.0))
    as_sets = probe_layers(ActivationSet(**train), ActivationSet(**test), Cs=(0.1, 1.0))
    assert as_dicts == as_sets


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, match", [
    ({"Cs": (1.0, 0.1)}, "ascending"),
    ({"Cs": (-1.0,)}, "positive"),
    ({"Cs": ()}, "positive"),
    ({"cv": 1}, "at least 2 folds"),
    ({"cv": 2.5}, "cv must be an int"),
    ({"max_iter": 0}, "max_iter >= 1"),
    ({"tol": 0.0}, "tol must be positive"),
    ({"solver": "saga"}, "solver must be"),
    ({"dtype": "float16"}, "dtype must be"),
    ({"threads": 0}, "threads must be a positive int or None"),
    ({"device": "abacus"}, "not a torch device"),
])
def test_bad_settings_are_refused(settings, match):
    x, y = separable(0)
    with pytest.raises(ProbeError, match=match):
        LinearProbe(**settings).fit(x, y)


@pytest.mark.parametrize("transform, match", [
    (lambda x, y: (x, np.zeros_like(y)), r"at least 2 classes to probe, got only \[0\]"),
    (lambda x, y: (x[:-58], y[:-58]), r"needs at least 3 train samples per class; .*\[2\] "
                                      r"have \[2\]"),
    (lambda x, y: (x[:, 0], y), r"\(n_samples, n_features\)"),
    (lambda x, y: (x.astype(str), y), "features must be numbers, got dtype <U"),
    (lambda x, y: (x, y[:-1]), r"labels must have shape \(180,\)"),
    (lambda x, y: (np.where(x > 5, np.nan, x), y), "NaN or infinite"),
])
def test_bad_training_data_is_refused(transform, match):
    x, y = transform(*separable(0))
    with pytest.raises(ProbeError, match=match):
        LinearProbe().fit(x, y)


def test_features_of_another_width_are_refused_at_predict():
    x, y = separable(0)
    probe = LinearProbe().fit(x, y)
    with pytest.raises(ProbeError, match="have 5 columns but the probe was fitted on 6"):
        probe.predict(x[:, :5])


def with_meta(data, **meta):
    return {**data, "meta": meta}


@pytest.mark.parametrize("make_test, match", [
    (lambda d: with_meta(d, dataset="cifar10", split="test"),
     r"train and test hold different datasets \('fashion-mnist' vs 'cifar10'\): probe two "
     "splits of one dataset"),
    (lambda d: {**d, "labels": d["labels"] + 1}, r"test labels \[3\] never occur"),
    (lambda d: {**d, "layers": {k: v for k, v in d["layers"].items() if k != "block1"}},
     r"layer\(s\) \['block1'\] are not in the test set"),
    (lambda d: with_meta(d, dataset="fashion-mnist", split="train"),
     "both split 'train' and have no dataset indices"),
])
def test_mismatched_train_and_test_are_refused(make_test, match):
    train = with_meta(layered(0), dataset="fashion-mnist", split="train")
    test = make_test(with_meta(layered(1), dataset="fashion-mnist", split="test"))
    with pytest.raises(ProbeError, match=match):
        probe_layers(train, test)


def test_the_same_rows_as_train_and_test_are_refused():
    data = {**layered(0), "indices": np.arange(120)}
    with pytest.raises(ProbeError, match=r"share 120 rows \(dataset indices \[0, 1, 2, 3, 4\]"):
        probe_layers(data, data)
    train = with_meta({**data, "indices": np.arange(0, 240, 2)}, split="train")
    held_out = with_meta({**layered(1), "indices": np.arange(1, 240, 2)}, split="train")
    assert len(probe_layers(train, held_out, Cs=(1.0,))) == 3  # disjoint rows of one split
    other_split = with_meta(data, split="test")
    assert len(probe_layers(train, other_split, Cs=(1.0,))) == 3  # indices count per split


@pytest.mark.parametrize("call, match", [
    (lambda tr, te: probe_layers(tr, te, layers=["head"]),
     r"layer\(s\) \['head'\] are not in the train set"),
    (lambda tr, te: probe_layers(tr, te, layers=[]), "no layers to probe"),
    (lambda tr, te: probe_layers({**tr, "labels": np.zeros(120, int)}, te),
     r"at least 2 classes"),
    (lambda tr, te: probe_layers(tr, te, cv=50), "needs at least 50 train samples per class"),
    (lambda tr, te: probe_layers({**tr, "acts": 1}, te), "needs keys 'layers' and 'labels'"),
    (lambda tr, te: probe_layers([tr], te), "must be an ActivationFile"),
    (lambda tr, te: probe_layers(tr, ActivationSet(te["layers"])),
     "the test set has no labels, and a probe needs the class of every row"),
])
def test_bad_probe_layers_calls_are_refused(call, match):
    with pytest.raises(ProbeError, match=match):
        call(layered(0), layered(1))


def test_a_reduction_the_in_memory_set_lacks_is_refused():
    with pytest.raises((ProbeError, SourceError),
                       match="'gap' features, not 'flatten'; pass reduction='gap'"):
        probe_layers(layered(0), layered(1), reduction="flatten")


def test_a_dict_whose_layers_have_different_row_counts_is_refused():
    data = layered(0)
    data["layers"]["stem"] = data["layers"]["stem"][:-1]
    with pytest.raises((ProbeError, SourceError), match="the train set have different row "
                                                        "counts"):
        probe_layers(data, layered(1))


def test_activation_set_reads_like_a_file():
    data = layered(0)
    acts = ActivationSet(**data)
    np.testing.assert_array_equal(acts.read("block1", "gap", slice(0, 5)),
                                  data["layers"]["block1"][:5])


# ---------------------------------------------------------------------------------------------
# Provenance and the messages about a layer's values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("meta_train, meta_test, match", [
    ({"dataset": "fashion-mnist", "split": "train"}, {"split": "test"},
     "test records no dataset but train records 'fashion-mnist'"),
    ({"split": "train"}, {"dataset": "fashion-mnist", "split": "test"},
     "train records no dataset but test records 'fashion-mnist'"),
    ({"dataset": "fashion-mnist", "split": "train"}, {"dataset": "fashion-mnist"},
     "test records no split but train records 'train'"),
])
def test_provenance_known_on_one_side_only_is_probed_with_a_warning(meta_train, meta_test,
                                                                    match):
    with pytest.warns(ProvenanceWarning, match=match):
        table = probe_layers(with_meta(layered(0), **meta_train),
                             with_meta(layered(1), **meta_test), Cs=(1.0,))
    assert len(table) == 3


def test_sources_without_provenance_are_probed_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe_layers(layered(0), layered(1), Cs=(1.0,))
        probe_layers(with_meta(layered(0), dataset="d", split="train"),
                     with_meta(layered(1), dataset="d", split="test"), Cs=(1.0,))


def with_nan(data, layer):
    x = data["layers"][layer].copy()
    x[17, 1] = np.inf
    return {**data, "layers": {**data["layers"], layer: x}}


@pytest.mark.parametrize("options", [{}, {"max_memory": 15_000}, {"match_dim": 2}])
@pytest.mark.parametrize("side", ["train", "test"])
def test_nan_in_a_layer_names_the_layer_the_reduction_and_the_set(options, side):
    train, test = layered(0), layered(1)
    if side == "train":
        train = with_nan(train, "block1")
    else:
        test = with_nan(test, "block1")
    with pytest.raises(ProbeError, match=rf"'block1' \(gap\) of the {side} set has 1 NaN or "
                                         r"infinite values.*row 17"):
        probe_layers(train, test, Cs=(1.0,), **options)
