"""Probes of features streamed from files in row blocks: the same probe as in memory, with
bounded reads, and every error path."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from repsim.probe import (
    ActivationSet,
    LinearProbe,
    ProbeError,
    StreamedFeatures,
    probe_block_rows,
    probe_layers,
    probe_memory,
)
from repsim.probe.features import column_moments
from repsim.sources import SourceError
from repsim.store import ActivationFile


def blobs(seed, n_per_class=70, classes=3, dim=5):
    """Overlapping Gaussian classes (so C matters) with an offset and uneven scales."""
    rng = np.random.default_rng(seed)
    centres = 1.2 * np.random.default_rng(7).standard_normal((classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.standard_normal((len(y), dim))
    return (40.0 + x * np.arange(1, dim + 1)).astype(np.float32), y


class RecordingSource(ActivationSet):
    """One in-memory layer, "layer", recording the row range of every read."""

    def __init__(self, x, y):
        super().__init__({"layer": x}, y)
        self.reads = []

    def read(self, layer, reduction=None, rows=None):
        rows = slice(None) if rows is None else rows
        self.reads.append(range(self.n)[rows])
        return super().read(layer, reduction, rows)


def streamed(x, y, block_rows):
    return StreamedFeatures(RecordingSource(x, y), "layer", "gap", block_rows)


@pytest.mark.parametrize("classes", [2, 3])
def test_streamed_fit_equals_the_in_memory_fit(classes):
    x, y = blobs(0, classes=classes)
    x_test, y_test = blobs(1, classes=classes)
    settings = dict(dtype="float64", tol=1e-9, max_iter=5000)
    memory = LinearProbe(**settings).fit(x, y)
    features = streamed(x, y, block_rows=37)  # blocks that split folds and classes
    blocks = LinearProbe(**settings).fit(features, y)
    np.testing.assert_allclose(blocks.mean_, memory.mean_, rtol=1e-12)
    np.testing.assert_allclose(blocks.scale_, memory.scale_, rtol=1e-12)
    np.testing.assert_array_equal(blocks.cv_scores_, memory.cv_scores_)
    assert blocks.C_ == memory.C_ and blocks.solver_ == "torch"
    np.testing.assert_allclose(blocks.coef_, memory.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blocks.intercept_, memory.intercept_, rtol=1e-5, atol=1e-6)
    test_features = streamed(x_test, y_test, block_rows=50)
    np.testing.assert_array_equal(blocks.predict(test_features), memory.predict(x_test))
    np.testing.assert_allclose(blocks.decision_function(test_features),
                               memory.decision_function(x_test), rtol=1e-5, atol=1e-6)
    assert blocks.score(test_features, y_test) == memory.score(x_test, y_test)


@pytest.mark.parametrize("classes", [2, 3])
def test_streamed_fit_matches_sklearn_at_the_same_c(classes):
    x, y = blobs(2, classes=classes)
    z = (x - x.mean(0, dtype=np.float64)) / x.std(0, dtype=np.float64)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(z, y)
    probe = LinearProbe(Cs=(0.5,), dtype="float64", tol=1e-8, max_iter=10_000)
    probe.fit(streamed(x, y, block_rows=16), y)
    np.testing.assert_allclose(probe.coef_, reference.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probe.intercept_, reference.intercept_, rtol=1e-4, atol=1e-5)


def test_no_read_exceeds_the_block_and_nothing_is_read_whole():
    x, y = blobs(3)
    features = streamed(x, y, block_rows=25)
    LinearProbe(Cs=(0.1, 1.0)).fit(features, y).predict(features)
    reads = features.source.reads
    assert max(len(r) for r in reads) == 25
    assert all(r.step == 1 and r.start % 25 == 0 for r in reads)
    assert len(reads) > 100  # every pass over the data reads it again, block by block


def test_streamed_features_learn_their_shape_from_metadata_and_read_through_the_source():
    x, y = blobs(4)
    features = streamed(x, y, block_rows=80)
    assert features.shape == (210, 5) and features.source.reads == []  # no row read
    blocks = list(features.blocks())
    assert [start for start, _ in blocks] == [0, 80, 160]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), x)
    assert features.source.reads == [range(0, 80), range(80, 160), range(160, 210)]


def test_streamed_features_of_a_reduction_the_source_lacks_are_refused():
    x, y = blobs(4)
    with pytest.raises((ProbeError, SourceError), match="'gap' features, not 'flatten'"):
        StreamedFeatures(RecordingSource(x, y), "layer", "flatten", 50).shape


def test_column_moments_do_not_depend_on_the_block_size():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((1000, 4))).astype(np.float32)
    x[:, 3] = 2.5  # constant: scale 1, like StandardScaler
    for rows in (1, 7, 1000):
        mean, scale = column_moments(lambda: ((s, x[s:s + rows]) for s in range(0, 1000, rows)))
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12)
        np.testing.assert_allclose(scale[:3], x[:, :3].astype(np.float64).std(0), rtol=1e-9)
        assert scale[3] == 1.0


@pytest.fixture(scope="module")
def activation_files(tmp_path_factory, write_blob_files):
    """Train and test activation files of a two-layer map of three-class blobs."""
    torch.manual_seed(0)
    splits = {}
    for split, seed in (("train", 4), ("test", 5)):
        x, y = blobs(seed, n_per_class=90)
        splits[split] = ((x - 40.0) / 3.0, y)
    return write_blob_files(tmp_path_factory.mktemp("acts"), nn.Sequential(nn.Linear(5, 12),
                            nn.Tanh()), ["0", "1"], splits)


def test_probe_layers_streams_files_within_max_memory(activation_files, read_sizes):
    reads = read_sizes
    with ActivationFile(activation_files["train"]) as train, \
            ActivationFile(activation_files["test"]) as test:
        settings = dict(reduction="flatten", dtype="float64", tol=1e-6)
        whole = probe_layers(train, test, **settings)
        assert reads == [270] * 4  # train and test of both layers, each read once
        budget = probe_memory(12, 270, 3, block_rows=100, dtype="float64")
        blocks = probe_layers(train, test, max_memory=budget, **settings)
        assert max(reads[4:]) == 100 and len(reads) > 100
        reads.clear()
        probe_layers(train, test, max_memory=2**30, **settings)  # fits: read whole, once
        assert reads == [270] * 4  # the widths come from the files' metadata, not a row
    assert [r.layer for r in blocks] == ["0", "1"] == [r.layer for r in whole]
    for a, b in zip(whole, blocks):
        assert (a.C, a.dim, a.n_train, a.n_test, a.chance) == (b.C, b.dim, b.n_train, b.n_test,
                                                               b.chance)
        assert b.solver == "torch"
        assert abs(a.train_acc - b.train_acc) <= 1 / 270 and abs(a.test_acc - b.test_acc) <= 1 / 270


def test_block_rows_is_the_largest_that_fits():
    for dim, n, classes, budget in ((12, 270, 3, 60_000), (3136, 10_000, 10, 2**28),
                                    (64, 50_000, 2, 2**22)):
        rows = probe_block_rows(dim, n, classes, budget)
        assert probe_memory(dim, n, classes, rows) <= budget
        assert rows == n or probe_memory(dim, n, classes, rows + 1) > budget
    assert probe_block_rows(12, 270, 3, 2**30) == 270  # everything fits: one block


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_too_small_a_budget_is_refused_with_its_minimum():
    with pytest.raises(ProbeError, match=r"cannot hold a probe of 3136 features .*at least "
                                         r"[\d.]+ MiB.*raise max_memory"):
        probe_block_rows(3136, 10_000, 10, 2**20)
    with pytest.raises(ProbeError, match="max_memory must be a positive number of bytes"):
        probe_block_rows(12, 270, 3, -5)


def test_probe_layers_with_too_small_a_budget_names_the_layer_size(activation_files):
    with ActivationFile(activation_files["train"]) as train, \
            ActivationFile(activation_files["test"]) as test:
        with pytest.raises(ProbeError, match="cannot hold a probe of 12 features and 270 rows"):
            probe_layers(train, test, reduction="flatten", max_memory=1000)


@pytest.mark.parametrize("block_rows", [0, 2.5, True])
def test_bad_block_rows_are_refused(block_rows):
    x, y = blobs(0)
    with pytest.raises(ProbeError, match="block_rows must be a positive int"):
        streamed(x, y, block_rows)


def test_sklearn_solver_refuses_streamed_features():
    x, y = blobs(0)
    with pytest.raises(ProbeError, match="solver='sklearn' needs the features in memory"):
        LinearProbe(solver="sklearn").fit(streamed(x, y, 50), y)


def test_nan_in_a_streamed_block_names_its_row():
    x, y = blobs(0)
    x[123, 2] = np.nan
    with pytest.raises(ProbeError, match=r"'layer' \(gap\) of the activation set has 1 NaN or "
                                         r"infinite values in rows 100…149, the first in row 123"):
        LinearProbe().fit(streamed(x, y, 50), y)


def test_streamed_labels_and_widths_must_match():
    x, y = blobs(0)
    with pytest.raises(ProbeError, match=r"labels must have shape \(210,\)"):
        LinearProbe().fit(streamed(x, y, 50), y[:-1])
    probe = LinearProbe(Cs=(1.0,)).fit(x, y)
    with pytest.raises(ProbeError, match="have 4 columns but the probe was fitted on 5"):
        probe.predict(streamed(x[:, :4], y, 50))


def test_activation_sets_stream_like_files():
    x, y = blobs(6)
    x_test, y_test = blobs(7)
    train = ActivationSet({"a": x}, y, {"split": "train"})
    test = ActivationSet({"a": x_test}, y_test, {"split": "test"})
    whole = probe_layers(train, test, Cs=(1.0,)).rows[0]
    blocks = probe_layers(train, test, Cs=(1.0,), max_memory=probe_memory(5, 210, 3, 30)).rows[0]
    assert abs(whole.test_acc - blocks.test_acc) <= 2 / 210


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streamed_fit_on_the_gpu_equals_the_cpu_fit():
    x, y = blobs(8)
    settings = dict(dtype="float64", tol=1e-9, max_iter=5000)
    cpu = LinearProbe(**settings).fit(x, y)
    gpu = LinearProbe(device="cuda", **settings).fit(streamed(x, y, 64), y)
    assert gpu.C_ == cpu.C_
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-5, atol=1e-6)


def test_integer_features_stream_like_the_in_memory_fit():
    x, y = blobs(9)
    x = np.round(x * 10).astype(np.int32)  # counts, say: standardised in float, not in int
    memory = LinearProbe(Cs=(1.0,), dtype="float64", tol=1e-9).fit(x, y)
    blocks = LinearProbe(Cs=(1.0,), dtype="float64", tol=1e-9).fit(streamed(x, y, 40), y)
    np.testing.assert_allclose(blocks.coef_, memory.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(memory.predict(streamed(x, y, 40)), memory.predict(x))


def test_the_streamed_fit_allocates_within_the_rule(activation_files_large):
    """tracemalloc sees NumPy's arrays (the blocks, masks, standardised copies, labels and
    folds), not torch's: the rule must cover at least those, train and test alike."""
    import tracemalloc

    with ActivationFile(activation_files_large["train"]) as train, \
            ActivationFile(activation_files_large["test"]) as test:
        budget = probe_memory(64, 4000, 3, block_rows=1000)
        with pytest.warns(ConvergenceWarning):
            probe_layers(train, test, reduction="flatten", max_memory=budget, Cs=(1.0,),
                         max_iter=1)
        tracemalloc.start()  # after a first run: lazy imports and caches are not the probe's
        try:
            table = probe_layers(train, test, reduction="flatten", max_memory=budget, Cs=(1.0,))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert table.rows[0].test_acc > 0.5
    # tracemalloc also counts the window's Python objects (frames, dicts, the progress bar),
    # which grow with what earlier tests left registered (80 KiB in one CI run): not the
    # rule's arrays
    slack = 128 * 2**10
    assert peak <= budget + slack, f"NumPy alone peaked at {peak / budget:.3f}× the budget"


@pytest.fixture(scope="module")
def activation_files_large(tmp_path_factory, write_blob_files):
    """4,000 train and test rows of a 64-wide layer of three-class blobs."""
    torch.manual_seed(0)
    splits = {split: blobs(seed, n_per_class=1334)[0][:4000] for split, seed in
              (("train", 10), ("test", 11))}
    y = np.repeat(np.arange(3), 1334)[:4000]
    return write_blob_files(tmp_path_factory.mktemp("large"), nn.Sequential(nn.Linear(5, 64)),
                            ["0"], {split: ((x - 40.0) / 3.0, y) for split, x in splits.items()})


@pytest.mark.parametrize("options", [{}, {"max_memory": 2**20}, {"match_dim": 2}])
def test_a_layer_that_is_not_a_matrix_is_refused(options):
    x, y = blobs(0)
    train = ActivationSet({"a": x[:, 0]}, y, {"split": "train"})
    test = ActivationSet({"a": x[:, 0]}, y, {"split": "test"})
    with pytest.raises(ProbeError, match=r"must be an \(n_samples, n_features\) array, got "
                                         r"shape \(210,\)"):
        probe_layers(train, test, **options)


def test_too_small_a_budget_without_a_preconditioner_says_what_it_holds():
    with pytest.raises(ProbeError, match="8192 features and 1000000 rows .*: per-row labels"):
        probe_block_rows(8192, 1_000_000, 10, 2**20)
