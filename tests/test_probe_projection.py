"""Dimension-matched probes: layers wider than match_dim are probed on a seeded Gaussian random
projection, the same for train and test, in memory or streamed, and every error path."""

import numpy as np
import pytest
import torch
from torch import nn

from repsim import projection as projection_module
from repsim.probe import (
    ActivationSet,
    LinearProbe,
    ProbeError,
    StreamedFeatures,
    probe_layers,
    probe_memory,
    projection_block_rows,
)
from repsim.projection import project, projection_matrix, projection_memory
from repsim.store import ActivationFile


def documented_matrix(dim, match_dim, seed):
    """R rebuilt from the rule in the docs, independently of repsim.projection."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim, match_dim), dtype=np.float32) / np.float32(np.sqrt(match_dim))


def layered(seed, widths=(30, 12, 8), n_per_class=50):
    """Three classes whose signal sits in 3 of each layer's columns, the rest noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    layers = {f"l{width}": np.column_stack([2.0 * np.eye(3)[y],
                                            rng.standard_normal((len(y), width - 3))])
              .astype(np.float32) for width in widths}
    return {"layers": layers, "labels": y}


@pytest.fixture
def recorded_projections(monkeypatch):
    """Every (layer, matrix) that probe_layers projects, in order."""
    calls = []
    real = projection_module.project

    def spy(features, matrix):
        calls.append((features.layer, matrix))
        return real(features, matrix)

    monkeypatch.setattr(projection_module, "project", spy)
    return calls


# ---------------------------------------------------------------------------------------------
# What is probed
# ---------------------------------------------------------------------------------------------


def test_probe_layers_equals_a_probe_of_features_projected_by_hand():
    train, test = layered(0), layered(1)
    settings = dict(Cs=(0.1, 1.0), dtype="float64", tol=1e-6)
    table = probe_layers(train, test, match_dim=10, match_seed=3, **settings)
    for row in table:
        x, x_test = train["layers"][row.layer], test["layers"][row.layer]
        if row.dim > 10:
            r = documented_matrix(row.dim, 10, 3)
            x, x_test = x @ r, x_test @ r
        probe = LinearProbe(**settings).fit(x, train["labels"])
        assert (row.C, row.probe_dim) == (probe.C_, x.shape[1])
        assert row.train_acc == probe.score(x, train["labels"])
        assert row.test_acc == probe.score(x_test, test["labels"])
    assert (table.match_dim, table.match_seed) == (10, 3)


def test_wider_layers_are_probed_at_match_dim_and_the_others_untouched(recorded_projections):
    train, test = layered(0, widths=(30, 12, 10, 8)), layered(1, widths=(30, 12, 10, 8))
    matched = probe_layers(train, test, match_dim=10, Cs=(1.0,))
    plain = probe_layers(train, test, Cs=(1.0,))
    assert [row.dim for row in matched] == [30, 12, 10, 8]
    assert [row.probe_dim for row in matched] == [10, 10, 10, 8]
    assert [layer for layer, _ in recorded_projections] == ["l30", "l30", "l12", "l12"]
    assert matched.rows[2:] == plain.rows[2:]  # D ≤ match_dim: the very same probe


def test_train_and_test_are_projected_by_the_same_matrix(recorded_projections):
    train, test = layered(0, widths=(30,)), layered(1, widths=(30,))
    table = probe_layers(train, test, match_dim=6, match_seed=5, Cs=(1.0,))
    (_, r_train), (_, r_test) = recorded_projections
    np.testing.assert_array_equal(r_train, r_test)
    np.testing.assert_array_equal(r_train, documented_matrix(30, 6, 5))
    # projecting test with any other matrix breaks the probe the train split learnt
    x, x_test = train["layers"]["l30"] @ r_train, test["layers"]["l30"] @ r_test
    probe = LinearProbe(Cs=(1.0,)).fit(x, train["labels"])
    other = test["layers"]["l30"] @ documented_matrix(30, 6, 6)
    assert probe.score(x_test, test["labels"]) == table.rows[0].test_acc
    assert probe.score(other, test["labels"]) < table.rows[0].test_acc - 0.2


def test_the_matrix_depends_only_on_width_match_dim_and_seed(recorded_projections):
    for seed in (0, 1):  # two "models" and two runs share R; another seed does not
        probe_layers(layered(seed), layered(seed + 10), match_dim=10, Cs=(1.0,))
    first, second = recorded_projections[:4], recorded_projections[4:]
    assert [layer for layer, _ in first] == [layer for layer, _ in second] \
        == ["l30", "l30", "l12", "l12"]
    for (_, r_a), (_, r_b) in zip(first, second):
        np.testing.assert_array_equal(r_a, r_b)
    assert first[0][1].shape == (30, 10) and first[2][1].shape == (12, 10)
    assert not np.array_equal(projection_matrix(30, 10, seed=1), first[0][1])


def test_random_projection_keeps_pairwise_distances():
    """Johnson-Lindenstrauss: for d = 1000 a squared distance changes by a factor with sd
    √(2/d) ≈ 0.045, so ±0.3 is over 6 sd for each of the 780 pairs."""
    x = np.random.default_rng(0).standard_normal((40, 2000)) * np.linspace(0.1, 3, 2000)
    r = projection_matrix(2000, 1000, seed=7)
    assert r.dtype == np.float32 and r.shape == (2000, 1000)
    assert abs(r.var() * 1000 - 1) < 0.01 and abs(r.mean()) < 1e-3  # entries N(0, 1/d)
    i, j = np.triu_indices(len(x), 1)
    before = ((x[i] - x[j]) ** 2).sum(1)
    after = ((x[i] @ r - x[j] @ r) ** 2).sum(1)
    assert np.all(np.abs(after / before - 1) < 0.3)


# ---------------------------------------------------------------------------------------------
# Streamed from activation files
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_files(tmp_path_factory, write_blob_files):
    """Train and test files of a 200-wide layer of three-class blobs (270 rows each)."""
    torch.manual_seed(0)
    centres = 1.5 * np.random.default_rng(7).standard_normal((3, 5))
    y = np.repeat(np.arange(3), 90)
    splits = {split: (centres[y] + np.random.default_rng(seed).standard_normal((270, 5)), y)
              for split, seed in (("train", 4), ("test", 5))}
    return write_blob_files(tmp_path_factory.mktemp("wide"),
                            nn.Sequential(nn.Linear(5, 200), nn.Tanh()), ["1"], splits)


def test_streamed_projection_gives_the_in_memory_table(wide_files, read_sizes):
    reads = read_sizes
    settings = dict(reduction="flatten", match_dim=4, dtype="float64", tol=1e-6)
    block_rows = 92
    budget = max(projection_memory(200, 4, 270, block_rows),
                 probe_memory(4, 270, 3, 270, "float64"))
    assert projection_block_rows(200, 4, 270, 3, budget, "float64") == block_rows
    with ActivationFile(wide_files["train"]) as train, \
            ActivationFile(wide_files["test"]) as test:
        whole = probe_layers(train, test, **settings)
        assert reads == [270] * 2  # each split read whole, once: the width is metadata
        reads.clear()
        blocks = probe_layers(train, test, max_memory=budget, **settings)
    # one pass over each file in blocks of at most 92 rows, and nothing else read
    assert reads == [92, 92, 86] * 2
    (a,), (b,) = whole.rows, blocks.rows
    assert (a.dim, a.probe_dim) == (b.dim, b.probe_dim) == (200, 4)
    assert (a.C, a.solver) == (b.C, b.solver)
    assert abs(a.train_acc - b.train_acc) <= 1 / 270 and abs(a.test_acc - b.test_acc) <= 1 / 270


def test_too_small_a_budget_for_the_projection_is_refused(wide_files):
    with ActivationFile(wide_files["train"]) as train, \
            ActivationFile(wide_files["test"]) as test:
        with pytest.raises(ProbeError, match=r"cannot hold the random projection of 200 "
                                             r"features to match_dim=4 for 270 rows.*raise "
                                             r"max_memory or lower match_dim"):
            probe_layers(train, test, reduction="flatten", match_dim=4, max_memory=5000)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("match_dim", [0, -8, 2.5, 8.0, "8", True])
def test_bad_match_dim_is_refused(match_dim):
    with pytest.raises(ProbeError, match=r"match_dim must be a positive int, got .*; e\.g\. "
                                         r"match_dim=256"):
        probe_layers(layered(0), layered(1), match_dim=match_dim)


@pytest.mark.parametrize("match_seed", [-1, 1.5, False])
def test_bad_match_seed_is_refused(match_seed):
    with pytest.raises(ProbeError, match=r"match_seed must be a non-negative int, got "):
        probe_layers(layered(0), layered(1), match_dim=4, match_seed=match_seed)


def test_a_test_layer_of_another_width_is_refused():
    test = layered(1)
    test["layers"]["l30"] = test["layers"]["l30"][:, :25]
    with pytest.raises(ProbeError, match="layer 'l30' has 30 features in the train set but "
                                         "25 in the test set"):
        probe_layers(layered(0), test, match_dim=10, layers=["l30"])


def test_project_refuses_a_matrix_drawn_for_another_width():
    data = layered(0)
    features = StreamedFeatures(ActivationSet(data["layers"], data["labels"]), "l12", "gap", 64)
    with pytest.raises(ProbeError, match="'l12' \\(gap\\) has 12 features here but the "
                                         "projection was drawn for 30"):
        project(features, projection_matrix(30, 10))
