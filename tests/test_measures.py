"""The measure registry and the source protocol: a new measure is one small class, and every
analysis gives the same numbers on an activation file and on the same arrays in memory."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import repsim
import repsim.probe
from analyses.outputs import write_similarity
from repsim import plot
from repsim.cka import CKAResult, cka_matrix
from repsim.extract import extract
from repsim.measures import (
    MEASURES,
    PairwiseMeasure,
    ProvenanceWarning,
    SimilarityResult,
    get_measure,
    register,
)
from repsim.sources import ActivationSet, SourceError
from repsim.store import ActivationFile


class MeanAbsCorrelation(PairwiseMeasure):
    """A toy measure: mean |Pearson correlation| over all column pairs of two layers."""

    name = "mean_abs_corr"
    label = "mean |correlation|"
    direction = "similarity"
    value_range = (0.0, 1.0)
    identical = 1.0

    def layer(self, x):
        return ((x - x.mean(0)) / x.std(0)).numpy()

    def pair(self, a, b):
        return float(np.abs(a.T @ b / (len(a) - 1)).mean())


@pytest.fixture
def toy_measure():
    """The toy measure, registered for one test only."""
    register(MeanAbsCorrelation)
    yield MeanAbsCorrelation
    del MEASURES[MeanAbsCorrelation.name]


def layers(seed, n=60):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5))
    return {"early": x, "late": np.tanh(x @ rng.standard_normal((5, 7)))}


def test_a_registered_toy_measure_runs_through_similarity_matrix(toy_measure):
    a, b = layers(0), layers(1)
    result = repsim.similarity_matrix(a, b, measure="mean_abs_corr")
    for i, la in enumerate(a):
        for j, lb in enumerate(b):
            corr = np.corrcoef(a[la].T, b[lb].T)[:a[la].shape[1], a[la].shape[1]:]
            assert result.matrix[i, j] == pytest.approx(np.abs(corr).mean(), rel=1e-12)
    assert result.measure == "mean_abs_corr" and result.direction == "similarity"
    assert result.axis_label == "mean |correlation| (similarity, 1 = identical)"


def test_a_toy_measure_result_draws_with_its_own_scale_and_label(toy_measure):
    result = repsim.similarity_matrix(layers(0), layers(1), measure="mean_abs_corr")
    fig = plot.result_heatmap(result, name_a="a", name_b="b", title="toy")
    colourbar = fig.axes[1]
    assert colourbar.get_ylabel() == "mean |correlation| (similarity, 1 = identical)"
    assert fig.axes[0].collections[0].get_clim() == (0.0, 1.0)


def test_a_toy_measure_result_goes_through_the_cli_writer(toy_measure, tmp_path):
    result = repsim.similarity_matrix(layers(0), layers(1), measure="mean_abs_corr")
    png, table, record = write_similarity(result, "a__vs__b", tmp_path, name_a="A", name_b="B")
    assert png.stat().st_size > 0
    rows = table.read_text().splitlines()
    assert rows[0] == "layer_a \\ layer_b,early,late"
    np.testing.assert_allclose([[float(v) for v in row.split(",")[1:]] for row in rows[1:]],
                               result.matrix, rtol=1e-9)
    written = json.loads(record.read_text())
    assert (written["measure"], written["direction"], written["model_a"]) == \
        ("mean_abs_corr", "similarity", "A")
    assert written["quantity"] == "mean |correlation| (similarity, 1 = identical)"


def test_a_distance_with_an_open_range_draws_from_zero_to_one_and_says_so():
    result = SimilarityResult(matrix=np.array([[0.0, 2.5]]), layers_a=("x",), layers_b=("y", "z"),
                              n=10, measure="toy_distance", label="toy distance",
                              direction="distance", value_range=(0.0, math.inf), identical=0.0)
    assert result.axis_label == "toy distance (distance, 0 = identical)"
    assert result.colour_range == (0.0, 1.0)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["range"] == [0.0, None]


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError,
                       match=r"unknown measure 'no_such_measure'; registered measures: \["):
        get_measure("no_such_measure")
    with pytest.raises(ValueError, match="does not take these parameters \\['kernel'\\]"):
        get_measure("linear_cka", kernel="rbf")
    with pytest.raises(ValueError, match="already registered"):
        class Other(MeanAbsCorrelation):
            name = "linear_cka"
        register(Other)
    with pytest.raises(TypeError, match="must declare identical"):
        class Incomplete(PairwiseMeasure):
            name, label, direction, value_range = "x", "x", "similarity", (0, 1)
        register(Incomplete)


def test_similarity_matrix_is_cka_matrix_for_the_cka_measures():
    a, b = layers(2), layers(3)
    for measure, kwargs in (("linear_cka", {}), ("linear_cka", {"debiased": True}),
                            ("rbf_cka", {"threshold": 0.5})):
        kernel = "rbf" if measure == "rbf_cka" else "linear"
        ours = repsim.similarity_matrix(a, b, measure=measure, **kwargs)
        np.testing.assert_array_equal(ours.matrix,
                                      cka_matrix(a, b, kernel=kernel, **kwargs).matrix)


def test_results_convert_to_a_tidy_frame():
    result = cka_matrix(layers(4), layers(5))
    frame = result.to_frame()
    assert list(frame.columns[:5]) == ["layer_a", "layer_b", "depth_a", "depth_b", "value"]
    assert len(frame) == 4 and set(frame["estimator"]) == {"full"}
    pivot = frame.pivot(index="layer_a", columns="layer_b", values="value")
    np.testing.assert_array_equal(pivot.loc[["early", "late"], ["early", "late"]].to_numpy(),
                                  result.matrix)
    both = pd.concat([frame.assign(pair="x"), frame.assign(pair="y")])
    assert both.groupby("pair")["value"].mean().nunique() == 1


# ---------------------------------------------------------------------------------------------
# The same numbers from a file and from the same arrays in memory
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_and_arrays(tmp_path_factory):
    """An activation file of a small network and an ActivationSet of the arrays it holds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9)).eval()
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(200) % 3
    batches = [(x[i:i + 50], y[i:i + 50], torch.arange(i, i + 50)) for i in range(0, 200, 50)]
    path = tmp_path_factory.mktemp("src") / "acts.h5"
    extract(model, batches, ["0", "2"], path, reductions=("flatten",),
                    meta={"dataset": "toy", "split": "test"}, progress=False)
    with ActivationFile(path) as f:
        arrays = ActivationSet.from_arrays({m: f.read(m, "flatten") for m in f.layers},
                                           labels=f.labels, indices=f.indices, meta=f.meta,
                                           reduction="flatten")
    return path, arrays


@pytest.mark.parametrize("options", [{}, {"debiased": True}, {"kernel": "rbf"},
                                     {"batch_size": 40}, {"max_memory": 2**16}])
def test_cka_is_the_same_on_a_file_and_in_memory(file_and_arrays, options):
    path, arrays = file_and_arrays
    with ActivationFile(path) as f:
        from_file = cka_matrix(f, f, **options)
    in_memory = cka_matrix(arrays, arrays, **options)
    assert isinstance(in_memory, CKAResult)
    np.testing.assert_array_equal(from_file.matrix, in_memory.matrix)
    assert from_file.settings == in_memory.settings
    assert in_memory.provenance_a == {"dataset": "toy", "split": "test"}


def test_sources_report_widths_from_metadata_without_reading_rows(file_and_arrays, monkeypatch):
    path, arrays = file_and_arrays
    with ActivationFile(path) as f:
        monkeypatch.setattr(ActivationFile, "read", lambda *a, **k: pytest.fail("row read"))
        assert f.shape("2", "flatten") == arrays.shape("2", "flatten") == (200, 9)
        assert f.n == arrays.n == 200


def test_in_memory_sources_refuse_what_they_cannot_serve():
    with pytest.raises(SourceError, match="different row counts"):
        ActivationSet.from_arrays({"a": np.zeros((5, 2)), "b": np.zeros((4, 2))})
    with pytest.raises(SourceError, match=r"labels of the activation set must have shape \(5,\)"):
        ActivationSet.from_arrays({"a": np.zeros((5, 2))}, labels=[0, 1])
    acts = ActivationSet.from_arrays({"a": np.zeros((5, 2))}, reduction="gap")
    with pytest.raises(SourceError, match="'gap' features, not 'flatten'"):
        acts.read("a", "flatten")
    with pytest.raises(SourceError, match=r"layer 'b' is not in the activation set; it has \['a'\]"):
        acts.read("b", "gap")
    with pytest.raises(SourceError, match="block_rows must be a positive int, got 0"):
        acts.iter_blocks("a", "gap", 0)
    blocks = list(acts.iter_blocks("a", "gap", 2))
    assert [len(b) for b in blocks] == [2, 2, 1]


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    """Train and test activation files of a small network on three Gaussian classes."""
    from tests.conftest import _write_blob_files

    rng = np.random.default_rng(0)
    centres = 2.0 * rng.standard_normal((3, 6))
    splits = {}
    for split, n in (("train", 240), ("test", 90)):
        y = np.arange(n) % 3
        splits[split] = (centres[y] + rng.standard_normal((n, 6)), y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
    return _write_blob_files(tmp_path_factory.mktemp("probe"), model, ["0", "2"], splits)


def in_memory(file: ActivationFile) -> ActivationSet:
    return ActivationSet.from_arrays({m: file.read(m, "flatten") for m in file.layers},
                                     labels=file.labels, indices=file.indices, meta=file.meta,
                                     reduction="flatten")


@pytest.mark.parametrize("options", [{}, {"max_memory": 40_000}, {"match_dim": 4}])
def test_probes_are_the_same_on_files_and_in_memory(probe_files, options):
    """Whole reads, streamed row blocks (a budget far below a layer) and projections."""
    assert repsim.probe.probe_block_rows(16, 240, 3, 40_000) < 240  # the budget streams
    with ActivationFile(probe_files["train"]) as train, \
            ActivationFile(probe_files["test"]) as test:
        from_files = repsim.probe.probe_layers(train, test, reduction="flatten", **options)
        from_memory = repsim.probe.probe_layers(in_memory(train), in_memory(test),
                                                reduction="flatten", **options)
    assert from_files.records() == from_memory.records()


# ---------------------------------------------------------------------------------------------
# Provenance: two sources that say they hold different inputs are refused by every measure
# ---------------------------------------------------------------------------------------------


def sourced(seed, **meta):
    rng = np.random.default_rng(seed)
    return ActivationSet.from_arrays({"l": rng.standard_normal((30, 4))}, meta=meta,
                                     indices=np.arange(30), reduction="flatten")


@pytest.mark.parametrize("measure", ["linear_cka", "rbf_cka", "mean_abs_corr"])
@pytest.mark.parametrize("meta_b, match", [
    ({"dataset": "cifar10", "split": "test"},
     r"a and b hold different datasets \('fashion-mnist' vs 'cifar10'\)"),
    ({"dataset": "fashion-mnist", "split": "train"},
     r"a and b hold different splits \('test' vs 'train'\).*extract both"),
])
def test_sources_of_different_datasets_or_splits_are_refused(measure, meta_b, match,
                                                            toy_measure):
    a = sourced(0, dataset="fashion-mnist", split="test")
    with pytest.raises(ValueError, match=match):
        repsim.similarity_matrix(a, sourced(1, **meta_b), measure)


def test_minibatch_cka_refuses_other_splits_too():
    a = sourced(0, dataset="fashion-mnist", split="test")
    with pytest.raises(ValueError, match="different splits"):
        cka_matrix(a, sourced(1, dataset="fashion-mnist", split="train"), batch_size=10)


def test_a_source_without_provenance_is_compared_with_a_warning_naming_it():
    a = sourced(0, dataset="fashion-mnist", split="test")
    with pytest.warns(ProvenanceWarning, match=r"b records no dataset but a records "
                                               r"'fashion-mnist'") as caught:
        cka_matrix(a, sourced(1, split="test"))
    assert len(caught) == 1  # the split is known on both sides and the same
    with pytest.warns(ProvenanceWarning, match="a records no dataset.*; a records no split"):
        cka_matrix(sourced(1), a)


def test_sources_with_the_same_or_no_provenance_are_compared_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = cka_matrix(sourced(0, dataset="x", split="test"), sourced(1, dataset="x",
                                                                         split="test"))
        bare = cka_matrix(sourced(0), {"l": sourced(1).read("l")})
    np.testing.assert_array_equal(same.matrix, bare.matrix)


def test_a_source_of_one_stored_reduction_is_read_at_it_by_default():
    rng = np.random.default_rng(7)
    a = ActivationSet({"l": rng.standard_normal((20, 3))})          # "gap" by default
    b = ActivationSet({"l": rng.standard_normal((20, 3))})
    result = cka_matrix(a, b)
    assert result.reduction == "gap"
    np.testing.assert_array_equal(result.matrix, cka_matrix(a.arrays, b.arrays).matrix)


def test_rbf_with_a_memory_budget_is_refused_naming_the_budget():
    x = np.random.default_rng(8).standard_normal((20, 3))
    with pytest.raises(ValueError, match="max_memory picks the batch size .* omit max_memory"):
        cka_matrix({"x": x}, {"y": x}, kernel="rbf", max_memory=2**20)
