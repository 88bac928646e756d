"""Layer geometry (repsim.geometry) and its command (analyses.geometry)."""
import csv
import json
import warnings

import numpy as np
import pytest
from scipy.stats import ortho_group
from sklearn.neighbors import NearestCentroid

from analyses import geometry as geometry_cli
from repsim.geometry import (
    GeometryError,
    layer_geometry,
    nearest_centre_accuracy,
    participation_ratio,
    trace_ratio,
)
from repsim.probe import StreamedFeatures
from repsim.sources import ActivationSet
from repsim.stats.intervals import wilson_interval
from repsim.store import ActivationFile


def _blobs(n, dim, k, seed, spread=1.0):
    """n rows (n, dim) around k random class centres, and their labels (n,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.standard_normal((k, dim)) * 3
    return centres[y] + spread * rng.standard_normal((n, dim)), y


def _eigen_pr(x):
    """The participation ratio from the covariance's eigenvalues (the definition)."""
    values = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    return values.sum() ** 2 / np.sum(values ** 2)


# --- participation ratio ---------------------------------------------------------------------

def test_participation_ratio_of_isotropic_data_is_its_dimension():
    x = np.random.default_rng(0).standard_normal((20000, 10))
    assert participation_ratio(x) == pytest.approx(10, rel=0.01)


@pytest.mark.parametrize("n", [300, 20])   # covariance form, then Gram form (n < D)
def test_participation_ratio_of_rank_one_data_is_one(n):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 1)) @ rng.standard_normal((1, 40)) + 5.0
    assert participation_ratio(x) == pytest.approx(1.0, abs=1e-9)


def test_participation_ratio_of_isotropic_samples_shows_the_documented_bias():
    """Isotropic Gaussian data, n not ≫ D: about D(n − 1)/(n + D), well below D."""
    d, n = 50, 200
    values = [participation_ratio(np.random.default_rng(s).standard_normal((n, d)))
              for s in range(5)]
    assert np.mean(values) == pytest.approx(d * (n - 1) / (n + d), rel=0.05)


@pytest.mark.parametrize("shape", [(60, 12), (15, 40)])
def test_gram_and_covariance_forms_agree_with_the_eigenvalues(shape):
    x = np.random.default_rng(2).standard_normal(shape) * np.linspace(0.2, 3, shape[1])
    expected = _eigen_pr(x)
    assert participation_ratio(x, form="gram") == pytest.approx(expected, rel=1e-10)
    assert participation_ratio(x, form="covariance") == pytest.approx(expected, rel=1e-10)


def test_participation_ratio_is_invariant_to_rotation_scale_and_translation():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 16)) * np.linspace(0.1, 2, 16)
    rotation = ortho_group.rvs(16, random_state=4)
    moved = 7.5 * x @ rotation + rng.standard_normal(16) * 100
    assert participation_ratio(moved) == pytest.approx(participation_ratio(x), rel=1e-9)
    # a general linear map changes it
    assert participation_ratio(x @ rng.standard_normal((16, 16))) != pytest.approx(
        participation_ratio(x), rel=1e-3)


def test_streamed_blocks_give_the_whole_layers_values():
    x, y = _blobs(53, 70, 4, seed=5)
    source = ActivationSet.from_arrays({"l": x}, labels=y)
    streamed = StreamedFeatures(source, "l", "gap", 7)   # 8 blocks, Gram form (53 < 70)
    assert participation_ratio(streamed) == pytest.approx(_eigen_pr(x), rel=1e-10)
    assert participation_ratio(streamed, form="covariance") == pytest.approx(_eigen_pr(x),
                                                                             rel=1e-10)
    assert trace_ratio(streamed, y) == pytest.approx(trace_ratio(x, y), rel=1e-12)


def test_constant_features_give_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(participation_ratio(np.ones((10, 3))))
    with pytest.warns(RuntimeWarning, match="no within-class spread"):
        assert np.isnan(trace_ratio(np.ones((10, 3)), np.arange(10) % 2))


# --- class separation ------------------------------------------------------------------------

def test_trace_ratio_against_the_scatter_matrices():
    x, y = _blobs(90, 6, 3, seed=6)
    mu = x.mean(0)
    between = np.zeros((6, 6))
    within = np.zeros((6, 6))
    for c in np.unique(y):
        rows = x[y == c]
        d = rows.mean(0) - mu
        between += len(rows) * np.outer(d, d)
        within += (rows - rows.mean(0)).T @ (rows - rows.mean(0))
    assert trace_ratio(x, y) == pytest.approx(np.trace(between) / np.trace(within), rel=1e-12)


def test_trace_ratio_grows_as_classes_separate():
    tight, y = _blobs(120, 5, 3, seed=7, spread=0.3)
    loose, _ = _blobs(120, 5, 3, seed=7, spread=3.0)
    assert trace_ratio(tight, y) > 10 * trace_ratio(loose, y)


def test_nearest_centre_accuracy_matches_sklearn():
    x, y = _blobs(400, 8, 5, seed=8, spread=3.0)
    sk = NearestCentroid().fit(x[:300], y[:300])
    expected = np.mean(sk.predict(x[300:]) == y[300:])
    assert 0.3 < expected < 1   # a case with errors
    assert nearest_centre_accuracy(x[:300], y[:300], x[300:], y[300:]) == pytest.approx(
        expected, abs=1e-12)


def _sets(seed=9, dims=(4, 12), n_train=120, n_test=60):
    """Train and test ActivationSets of two layers of blobs, dataset "blobs"."""
    sets = []
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        layers = {f"l{i}": _blobs(n, d, 3, seed + i + offset, spread=2.0)[0]
                  for i, d in enumerate(dims)}
        sets.append(ActivationSet.from_arrays(layers, labels=np.arange(n) % 3,
                                              indices=np.arange(n),
                                              meta={"dataset": "blobs", "split": split}))
    return sets


def test_layer_geometry_agrees_with_the_functions_and_sklearn():
    train, test = _sets()
    table = layer_geometry(train, test, level=0.9)
    assert [r.layer for r in table] == ["l0", "l1"] and [r.rel_depth for r in table] == [0, 1]
    for row in table:
        x_train, x_test = train.read(row.layer), test.read(row.layer)
        sk = NearestCentroid().fit(x_train, train.labels)
        correct = int(np.sum(sk.predict(x_test) == test.labels))
        assert row.ncc_acc == pytest.approx(correct / test.n)
        assert (row.ncc_low, row.ncc_high) == pytest.approx(wilson_interval(correct, test.n, 0.9))
        assert row.participation_ratio == pytest.approx(_eigen_pr(x_test), rel=1e-10)
        assert row.pr_fraction == pytest.approx(row.participation_ratio / row.dim)
        assert row.trace_ratio == pytest.approx(trace_ratio(x_test, test.labels))
    small = layer_geometry(train, test, level=0.9, max_memory=2000)   # blocks of a few rows
    for streamed, whole in zip(small, table):
        assert streamed.participation_ratio == pytest.approx(whole.participation_ratio)
        assert streamed.trace_ratio == pytest.approx(whole.trace_ratio)
        assert streamed.ncc_acc == whole.ncc_acc
    frame = table.to_frame()
    assert list(frame["layer"]) == ["l0", "l1"] and set(frame["reduction"]) == {"gap"}


# --- refusals --------------------------------------------------------------------------------

def test_layer_geometry_refuses_an_unknown_layer():
    train, test = _sets()
    with pytest.raises(GeometryError, match=r"\['l9'\] are not in the train set"):
        layer_geometry(train, test, layers=["l0", "l9"])
    with pytest.raises(GeometryError, match="layers is empty"):
        layer_geometry(train, test, layers=[])


def test_refuses_a_layer_with_too_few_rows():
    with pytest.raises(GeometryError, match="1 row.*at least 2 inputs"):
        participation_ratio(np.ones((1, 5)), what="layer 'x'")


def test_refuses_a_class_with_one_example():
    x, y = _blobs(30, 4, 3, seed=10)
    y[0] = 7   # class 7 has one row
    with pytest.raises(GeometryError, match=r"class\(es\) \[7\].*\[1\] row"):
        trace_ratio(x, y)
    with pytest.raises(GeometryError, match=r"class\(es\) \[7\]"):
        nearest_centre_accuracy(x, y, x, np.zeros(30, int))


def test_refuses_one_class_and_bad_labels():
    x = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(GeometryError, match="at least 2"):
        trace_ratio(x, np.zeros(10, int))
    with pytest.raises(GeometryError, match=r"shape \(10,\)"):
        trace_ratio(x, np.zeros(9, int))


def test_nearest_centre_refuses_unseen_classes_and_other_widths():
    x, y = _blobs(30, 4, 3, seed=11)
    with pytest.raises(GeometryError, match=r"test labels \[5\] never occur"):
        nearest_centre_accuracy(x, y, x, np.full(30, 5))
    with pytest.raises(GeometryError, match="4 and 5 features"):
        nearest_centre_accuracy(x, y, np.ones((3, 5)), np.zeros(3, int))


def test_refuses_nan_values_naming_the_rows():
    x = np.ones((6, 3))
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values.*row 4"):
        participation_ratio(x)


def test_refuses_bad_arguments():
    x = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(GeometryError, match="form must be"):
        participation_ratio(x, form="eigen")
    train, test = _sets()
    with pytest.raises(GeometryError, match="max_memory must be a positive"):
        layer_geometry(train, test, max_memory=0)
    with pytest.raises(ValueError, match="level must be"):
        layer_geometry(train, test, level=95)
    with pytest.raises(GeometryError, match=r"must be an \(n_samples, n_features\)"):
        participation_ratio(np.ones(5))


def test_layer_geometry_refuses_unlabelled_sources_and_other_datasets():
    train, test = _sets()
    unlabelled = ActivationSet.from_arrays(test.arrays, meta=test.meta)
    with pytest.raises(GeometryError, match="test set has no labels"):
        layer_geometry(train, unlabelled)
    other = ActivationSet.from_arrays(test.arrays, labels=test.labels,
                                      meta={"dataset": "digits", "split": "test"})
    with pytest.raises(GeometryError, match="different datasets"):
        layer_geometry(train, other)
    with pytest.raises(TypeError, match="activation source"):
        layer_geometry([1, 2], test)


# --- the command -----------------------------------------------------------------------------

def test_geometry_cli_writes_tables_plots_and_seed_group_curves(tiny_checkpoints, tmp_path,
                                                                capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    a, b = (str(tiny_checkpoints[k]) for k in "ab")
    geometry_cli.main(["--ckpt", f"bp={a},{b}", "--n-train", "300", "--n-test", "120",
                       "--out", str(out), "--cache", str(cache)])
    assert {p.name for p in out.iterdir()} >= {"geometry.csv", "geometry_groups.csv",
                                               "geometry.json", "geometry.png", "args.json"}
    with (out / "geometry.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["group"] for r in rows} == {"bp"}
    # independent check of one layer from the cached activation files
    files = {}
    for path in cache.iterdir():
        with ActivationFile(path) as f:
            files[(f.meta["checkpoint"], f.meta["split"])] = (f.read("layers.s2b1", "gap"),
                                                               np.asarray(f.labels))
    (x_train, y_train), (x_test, y_test) = files[(a, "train")], files[(a, "test")]
    row = next(r for r in rows if r["model"].endswith("(a.pt)") and r["layer"] == "layers.s2b1")
    sk = NearestCentroid().fit(x_train, y_train)
    assert float(row["ncc_acc"]) == pytest.approx(np.mean(sk.predict(x_test) == y_test))
    assert float(row["participation_ratio"]) == pytest.approx(_eigen_pr(x_test), rel=1e-6)
    record = json.loads((out / "geometry.json").read_text())
    ncc = record["groups"]["bp"]["ncc_acc"]
    assert ncc["interval"] == "Student-t over 2 seeds" and ncc["low"][0] < ncc["mean"][0]
    values = [float(r["ncc_acc"]) for r in rows if r["layer"] == "layers.stem"]
    assert ncc["mean"][0] == pytest.approx(np.mean(values))
    printed = capsys.readouterr().out
    assert "layer geometry (gap)" in printed and "seed groups" in printed and "s3b1" in printed


def test_geometry_cli_single_network_has_only_the_ncc_interval(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    geometry_cli.main(["--ckpt", str(tiny_checkpoints["a"]), "--n-train", "300", "--n-test",
                       "120", "--layers", "layers.s3b1", "--out", str(out),
                       "--cache", str(tmp_path / "cache")])
    [group] = json.loads((out / "geometry.json").read_text())["groups"].values()
    assert group["layers"] == ["layers.s3b1"]
    assert group["ncc_acc"]["interval"] == "Wilson over 120 test inputs"
    assert group["participation_ratio"]["low"] == [None]


def test_geometry_cli_refuses_an_unknown_layer(tiny_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        geometry_cli.main(["--ckpt", str(tiny_checkpoints["a"]), "--layers", "layers.nope",
                           "--n-train", "300", "--n-test", "120", "--out", str(tmp_path / "o"),
                           "--cache", str(tmp_path / "cache")])
    assert info.value.code == 2
    assert "'layers.nope' is not a module" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_geometry_cli_refuses_a_test_split_with_a_class_of_one_row(tiny_checkpoints, tmp_path,
                                                                   capsys):
    with pytest.raises(SystemExit) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geometry_cli.main(["--ckpt", str(tiny_checkpoints["a"]), "--n-train", "300",
                           "--n-test", "15", "--out", str(tmp_path / "o"),
                           "--cache", str(tmp_path / "cache")])
    assert info.value.code == 2
    assert "have only [1, 1, 1, 1, 1] row(s)" in capsys.readouterr().err
