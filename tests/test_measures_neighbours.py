"""Tests of the nearest-neighbour measures (mutual k-NN, k-NN Jaccard) against a brute-force
NumPy reference written from Huh et al. (2024) and Klabunde et al. (2023) and against
scikit-learn's cosine NearestNeighbors (ReSi's route); properties via hypothesis. No expected
number here comes from repsim's own output."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group
from sklearn.neighbors import NearestNeighbors

import repsim
from repsim.measures import Measure, get_measure
from repsim.measures.cka import ConstantRepresentationWarning
from tests.test_measures_shape import prepared

FAST = settings(max_examples=6, deadline=None)
MEASURES = ["mutual_knn", "knn_jaccard"]


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def ref_neighbours(x, k):
    """Each row's k most cosine-similar other rows, by a stable sort: ties go to the lower
    index."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k]) for row in similarity]


def sklearn_neighbours(x, k):
    """ReSi's route: scikit-learn's cosine NearestNeighbors with k + 1, the first dropped."""
    found = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x).kneighbors(x)[1]
    return [set(row[1:]) for row in found]


def ref_value(name, sets_x, sets_y, k):
    if name == "mutual_knn":  # Huh et al. (2024)
        return np.mean([len(a & b) / k for a, b in zip(sets_x, sets_y)])
    return np.mean([len(a & b) / len(a | b) for a, b in zip(sets_x, sets_y)])  # Jaccard


def knn(name, x, y, k=5):
    return repsim.similarity_matrix({"x": x}, {"y": y}, name, k=k).matrix[0, 0]


def related(seed, n=40, p=5, q=7, noise=0.3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) + 0.5
    return x, np.tanh(x @ rng.standard_normal((p, q))) + noise * rng.standard_normal((n, q))


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEASURES)
@pytest.mark.parametrize("neighbours", [ref_neighbours, sklearn_neighbours])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_agrees_with_brute_force_and_scikit_learn(name, neighbours, k):
    x, y = related(0, n=50)
    expected = ref_value(name, neighbours(x, k), neighbours(y, k), k)
    assert knn(name, x, y, k) == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("name", MEASURES)
def test_a_map_is_every_pair_of_the_reference(name):
    rng = np.random.default_rng(1)
    a = {"a0": rng.standard_normal((30, 3)), "a1": rng.standard_normal((30, 60))}
    b = {"b0": a["a0"] @ rng.standard_normal((3, 4)), "b1": rng.standard_normal((30, 2)),
         "b2": a["a1"][:, :40]}
    result = repsim.similarity_matrix(a, b, name, k=4)
    expected = [[ref_value(name, ref_neighbours(a[i], 4), ref_neighbours(b[j], 4), 4) for j in b]
                for i in a]
    np.testing.assert_allclose(result.matrix, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", MEASURES)
def test_ties_go_to_the_lower_index(name):
    # ±1 patterns of 4 features: cosines are multiples of 1/4, exact, with many ties and copies
    rng = np.random.default_rng(2)
    x, y = rng.choice([-1.0, 1.0], (30, 4)), rng.choice([-1.0, 1.0], (30, 4))
    assert knn(name, x, y) == pytest.approx(ref_value(name, ref_neighbours(x, 5),
                                                      ref_neighbours(y, 5), 5), abs=1e-14)


def test_the_copies_of_an_input_are_its_nearest_neighbours():
    x = np.random.default_rng(3).standard_normal((12, 3))
    x[[4, 9]] = x[2]
    measure = get_measure("mutual_knn", k=2)
    side, _ = prepared(measure, [x], 12)
    assert side.ranked[0, 2, :2].tolist() == [4, 9]
    assert side.ranked[0, 4, :2].tolist() == [2, 9]


@pytest.mark.parametrize("name, label", [("mutual_knn", "mutual k-NN"),
                                         ("knn_jaccard", "k-NN Jaccard")])
def test_declares_a_similarity_in_zero_one_with_its_settings(name, label):
    result = repsim.similarity_matrix(*({"l": m} for m in related(4)), name, k=7)
    assert (result.direction, result.value_range, result.identical) == \
        ("similarity", (0.0, 1.0), 1.0)
    assert result.settings == {"k": 7, "similarity": "cosine"}
    assert result.label == label and "similarity" in result.description
    assert get_measure(name).k == 10


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(MEASURES), st.floats(1e-3, 1e3), st.integers(0, 2**16))
def test_invariant_to_rotation_scaling_and_unit_order(name, scale, seed):
    x, y = related(seed)
    rng = np.random.default_rng(seed)
    base = knn(name, x, y)
    assert knn(name, scale * x @ ortho_group.rvs(x.shape[1], random_state=seed), y) == base
    assert knn(name, x, y[:, rng.permutation(y.shape[1])]) == base


@FAST
@given(st.sampled_from(MEASURES), st.integers(0, 2**16))
def test_identity_symmetry_and_shuffled_rows_fall_to_chance(name, seed):
    x, _ = related(seed, n=60)
    rng = np.random.default_rng(seed)
    y = x @ ortho_group.rvs(5, random_state=seed) + 0.05 * rng.standard_normal((60, 5))
    assert knn(name, x, x) == 1.0 and knn(name, x, 3 * x) == 1.0
    assert knn(name, x, y) == knn(name, y, x)
    shuffled = y[rng.permutation(60)]
    chance = 5 / 59 if name == "mutual_knn" else 5 / (2 * 59)
    assert abs(knn(name, x, shuffled) - chance) < knn(name, x, y) - chance - 0.2


def test_not_invariant_to_translation_like_the_peers():
    x, y = related(5)
    assert knn("mutual_knn", x + 3.0, y) != knn("mutual_knn", x, y)


# ---------------------------------------------------------------------------------------------
# Errors and degenerate layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEASURES)
def test_k_of_at_least_n_minus_one_is_refused_naming_n_and_the_fix(name):
    x, y = related(6, n=10)
    for k in (9, 10):
        with pytest.raises(ValueError, match=rf"k={k} .*value is 1 whatever the layers.*got "
                                             r"n=10; use k <= 8 .* or more inputs"):
            knn(name, x, y, k=k)
    assert np.isfinite(knn(name, x, y, k=8))


@pytest.mark.parametrize("k", [0, -3, 2.5, "5", True, None])
def test_a_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        get_measure("knn_jaccard", k=k)


@pytest.mark.parametrize("name", MEASURES)
def test_a_constant_layer_gives_nan_and_a_warning_naming_it(name):
    x, y = related(7)
    with pytest.warns(ConstantRepresentationWarning, match="layer 'flat' of b is constant"):
        result = repsim.similarity_matrix({"x": x}, {"y": y, "flat": np.full((40, 3), 0.5)},
                                          name, k=5)
    assert np.isnan(result.matrix[0, 1]) and np.isfinite(result.matrix[0, 0])


def test_an_all_zero_row_gives_nan_and_a_warning():
    x, y = related(8)
    y[[3, 17]] = 0.0
    with pytest.warns(ConstantRepresentationWarning,
                      match="'y' of b has 2 all-zero row.*cosine similarity is undefined"):
        assert np.isnan(knn("knn_jaccard", x, y))


def test_rows_of_any_magnitude_have_neighbours():
    x, y = related(9)
    scales = np.logspace(-300, 300, len(x))[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert knn("mutual_knn", x * scales, y) == knn("mutual_knn", x, y)


# ---------------------------------------------------------------------------------------------
# Resampling (the statistics' hook)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEASURES)
def test_a_permuted_side_is_the_side_of_the_permuted_rows(name):
    x, y = related(10)
    rng = np.random.default_rng(10)
    measure = get_measure(name, k=5)
    side_x, comparison = prepared(measure, [x, y], 40)
    side_y, _ = prepared(measure, [y], 40)
    rows = rng.permutation(40)
    permuted = measure.resample(side_x, rows, comparison)
    direct, _ = prepared(measure, [x[rows], y[rows]], 40)
    torch.testing.assert_close(permuted.ranked, direct.ranked)
    draws = np.stack([rng.permutation(40) for _ in range(3)])
    values = measure.replicates(side_y, side_x, None, draws, comparison)
    expected = [[ref_value(name, ref_neighbours(y, 5), ref_neighbours(m[r], 5), 5)
                 for m in (x, y)] for r in draws]
    np.testing.assert_allclose(values[:, 0], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", MEASURES)
def test_a_side_without_one_input_is_the_side_of_the_other_inputs(name):
    x, _ = related(11)
    measure = get_measure(name, k=5)
    side, comparison = prepared(measure, [x], 40)
    for left_out in (0, 17, 39):
        rows = np.delete(np.arange(40), left_out)
        direct, _ = prepared(measure, [x[rows]], 39)
        torch.testing.assert_close(measure.resample(side, rows, comparison).ranked[..., :5],
                                   direct.ranked[..., :5])


@pytest.mark.parametrize("name", MEASURES)
def test_the_closed_form_jackknife_is_the_measure_without_each_input(name):
    rng = np.random.default_rng(12)
    a = [rng.standard_normal((30, 4)), rng.choice([-1.0, 1.0], (30, 4))]  # the second ties
    b = [a[0] @ rng.standard_normal((4, 6)) + 0.3 * rng.standard_normal((30, 6)),
         np.full((30, 2), 1.0)]
    measure = get_measure(name, k=4)
    with pytest.warns(ConstantRepresentationWarning):
        side_b, comparison = prepared(measure, b, 30)
    side_a, _ = prepared(measure, a, 30)
    closed = measure.jackknife(side_a, side_b, comparison)
    by_resampling = Measure.jackknife(measure, side_a, side_b, comparison)
    np.testing.assert_allclose(closed, by_resampling, rtol=0, atol=1e-14)
    for d in (0, 11, 29):
        rows = np.delete(np.arange(30), d)
        expected = [ref_value(name, ref_neighbours(m[rows], 4), ref_neighbours(b[0][rows], 4), 4)
                    for m in a]
        np.testing.assert_allclose(closed[d, :, 0], expected, rtol=0, atol=1e-14)
    assert np.isnan(closed[:, :, 1]).all()


def test_repeated_inputs_and_larger_subsets_are_refused_with_the_reason():
    x, _ = related(13)
    measure = get_measure("mutual_knn", k=5)
    side, comparison = prepared(measure, [x], 40)
    with pytest.raises(ValueError, match=r"repeats \(1 of 40 rows.*each other's nearest "
                                         r"neighbours.*use permutations"):
        measure.resample(side, np.r_[np.arange(39), 0], comparison)
    subset = measure.resample(side, np.arange(1, 40), comparison)
    with pytest.raises(ValueError, match="jackknife needs each input's k \\+ 1 nearest .* pass "
                                         "the sides of prepare"):
        measure.jackknife(subset, subset, comparison)
    with pytest.raises(ValueError, match=r"leaves out at most 1 of each input's 6 stored.*these "
                                         r"30 of n=40 inputs leave out [2-6].*compute the "
                                         r"measure on the subset"):
        measure.resample(side, np.arange(30), comparison)
