"""Tests of RSA against rsatoolbox (calc_rdm + compare) and float64 references from scipy's
pdist and correlations; properties via hypothesis. No expected number here comes from repsim's
own output."""

import math
import warnings

import numpy as np
import pytest
import rsatoolbox
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group, pearsonr, rankdata, spearmanr

import repsim
from repsim.measures import get_measure
from repsim.measures.cka import ConstantRepresentationWarning
from repsim.measures.rsa import average_ranks
from tests.test_measures_shape import prepared

FAST = settings(max_examples=6, deadline=None)
OPTIONS = [(rdm, compare) for rdm in ("correlation", "euclidean")
           for compare in ("spearman", "pearson")]
PEER_COMPARE = {"spearman": "spearman", "pearson": "corr"}


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def peer_rdms(x, rdm):
    return rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x), method=rdm)


def peer(x, y, rdm, compare):
    """rsatoolbox: calc_rdm of each layer, then compare."""
    return rsatoolbox.rdm.compare(peer_rdms(x, rdm), peer_rdms(y, rdm),
                                  method=PEER_COMPARE[compare])[0, 0]


def ref_rdm(x, rdm):
    """Upper triangle of the RDM from scipy's pdist (1 − Pearson; squared Euclidean / p)."""
    return pdist(x, "correlation") if rdm == "correlation" else pdist(x, "sqeuclidean") / x.shape[1]


def ref(x, y, rdm, compare):
    correlate = spearmanr if compare == "spearman" else pearsonr
    return correlate(ref_rdm(x, rdm), ref_rdm(y, rdm))[0]


def rsa(x, y, **params):
    return repsim.similarity_matrix({"x": x}, {"y": y}, "rsa", **params).matrix[0, 0]


def related(seed, n=30, p=6, q=9, noise=0.5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    return x, np.tanh(x @ rng.standard_normal((p, q))) + noise * rng.standard_normal((n, q))


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rdm, compare", OPTIONS)
def test_agrees_with_rsatoolbox_and_scipy(rdm, compare):
    x, y = related(0)
    ours = rsa(x, y, rdm=rdm, compare=compare)
    assert ours == pytest.approx(peer(x, y, rdm, compare), abs=1e-12)
    assert ours == pytest.approx(ref(x, y, rdm, compare), abs=1e-12)


@pytest.mark.parametrize("rdm, compare", OPTIONS)
def test_a_map_is_every_pair_of_rsatoolbox(rdm, compare):
    rng = np.random.default_rng(1)
    a = {"a0": rng.standard_normal((25, 3)), "a1": rng.standard_normal((25, 40))}
    b = {"b0": np.exp(a["a0"] @ rng.standard_normal((3, 4))), "b1": rng.standard_normal((25, 7)),
         "b2": a["a1"][:, :20]}
    result = repsim.similarity_matrix(a, b, "rsa", rdm=rdm, compare=compare)
    expected = rsatoolbox.rdm.compare(
        rsatoolbox.rdm.concat([peer_rdms(m, rdm) for m in a.values()]),
        rsatoolbox.rdm.concat([peer_rdms(m, rdm) for m in b.values()]),
        method=PEER_COMPARE[compare])
    np.testing.assert_allclose(result.matrix, expected, rtol=0, atol=1e-12)


def test_tied_dissimilarities_share_their_average_rank_as_in_rsatoolbox():
    # integers on 8 rows: centring and the Gram are exact, so equal distances tie exactly
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 3, (8, 2)).astype(float), rng.integers(0, 3, (8, 3)).astype(float)
    assert len(np.unique(ref_rdm(x, "euclidean"))) < 28
    ours = rsa(x, y, rdm="euclidean", compare="spearman")
    assert ours == pytest.approx(peer(x, y, "euclidean", "spearman"), abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40))
def test_average_ranks_are_scipys(values):
    ranks = average_ranks(torch.tensor(values, dtype=torch.float64))
    np.testing.assert_array_equal(ranks.numpy(), rankdata(values, method="average"))


@pytest.mark.parametrize("rdm, compare", OPTIONS)
def test_declares_a_correlation_with_its_settings(rdm, compare):
    result = repsim.similarity_matrix(*(dict([("l", m)]) for m in related(3)), "rsa", rdm=rdm,
                                      compare=compare)
    assert (result.direction, result.value_range, result.identical) == \
        ("similarity", (-1.0, 1.0), 1.0)
    assert result.settings == {"rdm": rdm, "compare": compare}
    assert result.label == "RSA" and "similarity" in result.description


def test_defaults_are_correlation_rdms_compared_by_spearman():
    x, y = related(4)
    assert rsa(x, y) == rsa(x, y, rdm="correlation", compare="spearman")


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(OPTIONS), st.floats(1e-3, 1e3), st.integers(0, 2**16))
def test_invariant_to_scaling_and_unit_order(option, scale, seed):
    rdm, compare = option
    x, y = related(seed)
    base = rsa(x, y, rdm=rdm, compare=compare)
    assert rsa(scale * x, y, rdm=rdm, compare=compare) == pytest.approx(base, abs=1e-9)
    order = np.random.default_rng(seed).permutation(y.shape[1])
    assert rsa(x, y[:, order], rdm=rdm, compare=compare) == pytest.approx(base, abs=1e-12)


@FAST
@given(st.sampled_from(["spearman", "pearson"]), st.integers(0, 2**16))
def test_euclidean_rdms_are_invariant_to_rotations_and_translations(compare, seed):
    x, y = related(seed)
    rng = np.random.default_rng(seed)
    moved = x @ ortho_group.rvs(x.shape[1], random_state=seed) + rng.standard_normal(x.shape[1])
    assert rsa(moved, y, rdm="euclidean", compare=compare) == \
        pytest.approx(rsa(x, y, rdm="euclidean", compare=compare), abs=1e-9)


@FAST
@given(st.sampled_from(["spearman", "pearson"]), st.integers(0, 2**16))
def test_correlation_rdms_are_invariant_to_each_inputs_shift_and_scale_not_rotations(compare,
                                                                                    seed):
    x, y = related(seed)
    rng = np.random.default_rng(seed)
    base = rsa(x, y, compare=compare)
    moved = x * rng.uniform(0.1, 10, (len(x), 1)) + rng.standard_normal((len(x), 1))
    assert rsa(moved, y, compare=compare) == pytest.approx(base, abs=1e-9)
    rotated = x @ ortho_group.rvs(x.shape[1], random_state=seed)
    assert abs(rsa(rotated, y, compare=compare) - base) > 1e-6


@FAST
@given(st.sampled_from(OPTIONS), st.integers(0, 2**16))
def test_identity_symmetry_and_shuffled_rows(option, seed):
    rdm, compare = option
    x, y = related(seed, noise=0.1)
    assert rsa(x, x, rdm=rdm, compare=compare) == pytest.approx(1.0, abs=1e-12)
    assert rsa(x, y, rdm=rdm, compare=compare) == rsa(y, x, rdm=rdm, compare=compare)
    shuffled = y[np.random.default_rng(seed).permutation(len(y))]
    assert abs(rsa(x, shuffled, rdm=rdm, compare=compare)) < rsa(x, y, rdm=rdm,
                                                                  compare=compare) - 0.3


# ---------------------------------------------------------------------------------------------
# Errors and degenerate layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    ({"rdm": "cosine"}, r"rdm must be one of \['correlation', 'euclidean'\], got 'cosine'"),
    ({"compare": "kendall"}, r"compare must be one of \['spearman', 'pearson'\], got 'kendall'"),
    ({"compare": "corr"}, r"compare must be one of .* got 'corr'"),
])
def test_unknown_rdm_or_comparison_is_refused(params, message):
    with pytest.raises(ValueError, match=message):
        get_measure("rsa", **params)


def test_too_few_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 3 inputs .* got n=2"):
        rsa(np.eye(2), np.eye(2))


def test_correlation_rdms_of_a_single_feature_are_refused():
    x, y = related(5)
    with pytest.raises(ValueError, match="at least 2 features.* has 1; use rdm='euclidean'"):
        rsa(x, y[:, :1])
    assert np.isfinite(rsa(x, y[:, :1], rdm="euclidean"))


@pytest.mark.parametrize("rdm", ["correlation", "euclidean"])
def test_a_constant_layer_gives_nan_and_a_warning_naming_it(rdm):
    x, y = related(6)
    with pytest.warns(ConstantRepresentationWarning, match="layer 'flat' of a is constant"):
        result = repsim.similarity_matrix({"x": x, "flat": np.ones((30, 4))}, {"y": y}, "rsa",
                                          rdm=rdm)
    assert np.isnan(result.matrix[1, 0]) and np.isfinite(result.matrix[0, 0])


def test_an_input_with_a_flat_pattern_makes_correlation_rdms_undefined():
    x, y = related(7)
    x[3] = 0.0
    with pytest.warns(ConstantRepresentationWarning,
                      match="'x' of a has 1 input.* same in every feature.*rdm='euclidean'"):
        assert np.isnan(rsa(x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rsa(x, y, rdm="euclidean") == pytest.approx(ref(x, y, "euclidean", "spearman"),
                                                           abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Resampling (the statistics' hook)
# ---------------------------------------------------------------------------------------------


def peer_without_copies(x, y, rows_x, rows_y, rdm, compare):
    """rsatoolbox on the drawn rows, the pairs of an input with its own copy set to NaN in
    both RDMs (rsatoolbox's compare leaves NaN entries out)."""
    u, v = np.triu_indices(len(rows_x), 1)
    copies = (rows_x[u] == rows_x[v]) | (rows_y[u] == rows_y[v])
    rdms = []
    for m, rows in ((x, rows_x), (y, rows_y)):
        vector = ref_rdm(m[rows], rdm)
        vector[copies] = np.nan
        rdms.append(rsatoolbox.rdm.RDMs(vector[None]))
    return rsatoolbox.rdm.compare(*rdms, method=PEER_COMPARE[compare])[0, 0]


@pytest.mark.parametrize("rdm, compare", OPTIONS)
def test_a_permuted_side_is_the_side_of_the_permuted_rows(rdm, compare):
    x, y = related(8, n=20)
    rows = np.random.default_rng(8).permutation(20)
    measure = get_measure("rsa", rdm=rdm, compare=compare)
    side_x, comparison = prepared(measure, [x], 20)
    side_y, _ = prepared(measure, [y], 20)
    permuted = measure.resample(side_y, rows, comparison)
    direct, _ = prepared(measure, [y[rows]], 20)
    torch.testing.assert_close(permuted.vectors, direct.vectors, rtol=0, atol=1e-14)
    again = np.random.default_rng(18).permutation(20)
    twice, _ = prepared(measure, [y[rows][again]], 20)
    torch.testing.assert_close(measure.resample(permuted, again, comparison).entries,
                               twice.entries, rtol=0, atol=1e-14)
    assert measure.compare(side_x, permuted, comparison).item() == \
        pytest.approx(ref(x, y[rows], rdm, compare), abs=1e-12)


@pytest.mark.parametrize("rdm, compare", OPTIONS)
def test_a_bootstrap_draw_leaves_out_the_pairs_of_an_input_with_its_copy(rdm, compare):
    x, y = related(9, n=20)
    rows = np.random.default_rng(9).integers(0, 20, 20)
    assert len(np.unique(rows)) < 20
    measure = get_measure("rsa", rdm=rdm, compare=compare)
    side_x, comparison = prepared(measure, [x], 20)
    side_y, _ = prepared(measure, [y], 20)
    both = measure.compare(measure.resample(side_x, rows, comparison),
                           measure.resample(side_y, rows, comparison), comparison).item()
    assert both == pytest.approx(peer_without_copies(x, y, rows, rows, rdm, compare), abs=1e-12)
    one = measure.replicates(side_x, side_y, None, rows[None], comparison)[0, 0, 0]
    assert one == pytest.approx(peer_without_copies(x, y, np.arange(20), rows, rdm, compare),
                                abs=1e-12)


def test_a_subset_of_the_inputs_is_the_measure_of_the_subset():
    x, y = related(10, n=20)
    rows = np.random.default_rng(10).choice(20, 12, replace=False)
    measure = get_measure("rsa")
    side_x, comparison = prepared(measure, [x], 20)
    side_y, _ = prepared(measure, [y], 20)
    value = measure.compare(measure.resample(side_x, rows, comparison),
                            measure.resample(side_y, rows, comparison), comparison).item()
    assert value == pytest.approx(ref(x[rows], y[rows], "correlation", "spearman"), abs=1e-12)


def test_resampling_errors_say_what_to_do():
    x, y = related(11, n=20)
    measure = get_measure("rsa")
    side_x, comparison = prepared(measure, [x], 20)
    drawn = measure.resample(side_x, np.arange(10), comparison)
    with pytest.raises(ValueError, match="cannot be resampled again; resample the prepared side"):
        measure.resample(drawn, np.arange(5), comparison)
    with pytest.raises(ValueError, match=r"different numbers of inputs \(10 and 20\)"):
        measure.compare(drawn, prepared(measure, [y], 20)[0], comparison)
    assert math.isfinite(measure.compare(drawn, drawn, comparison).item())
