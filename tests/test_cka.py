"""Tests of repsim.cka against independent float64 NumPy references, ckatorch.cka_base and the
literature's oracle values; properties via hypothesis. No expected number here comes from
repsim's own output."""

import itertools
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import ckatorch
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim.measures.cka as cka_module
from repsim.sources import ActivationSet
from repsim.cka import (
    CKAResult,
    ConstantRepresentationWarning,
    MinibatchCKA,
    centre_gram,
    cka_matrix,
    hsic_unbiased,
    linear_cka,
    minibatch_batch_size,
    minibatch_memory,
    rbf_cka,
)

FAST = settings(max_examples=12, deadline=None)


# ---------------------------------------------------------------------------------------------
# Independent references: plain NumPy, O(n³) where that is simplest
# ---------------------------------------------------------------------------------------------


def ref_centre(k):
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return h @ k @ h


def ref_rbf_gram(x, threshold):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * threshold**2 * np.median(d2)))


def ref_cka(k, l):
    kc, lc = ref_centre(k), ref_centre(l)
    return (kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc))


def ref_unbiased_centre(k):
    """Kornblith et al.'s unbiased centring (a different route to debiased CKA than HSIC₁)."""
    n = len(k)
    k = k.copy()
    np.fill_diagonal(k, 0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None] + means[None, :]
    np.fill_diagonal(k, 0)
    return k


def ref_debiased_cka(k, l):
    kc, lc = ref_unbiased_centre(k), ref_unbiased_centre(l)
    return (kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc))


def ref_hsic1(k, l):
    """Song et al. (2012) HSIC₁ written with explicit matrix products."""
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def ref_hsic1_u_statistic(k, l):
    """HSIC₁ as the U-statistic it is: the mean over ordered distinct (i, j, q, r) of
    k_ij l_ij + k_ij l_qr − 2 k_ij l_iq. O(n⁴): small n only."""
    terms = [k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
             for i, j, q, r in itertools.permutations(range(len(k)), 4)]
    return np.mean(terms)


def ref_minibatch_cka(x, y, batch):
    sums = np.zeros(3)
    for s in range(0, len(x), batch):
        k, l = x[s:s + batch] @ x[s:s + batch].T, y[s:s + batch] @ y[s:s + batch].T
        sums += ref_hsic1(k, l), ref_hsic1(k, k), ref_hsic1(l, l)
    return sums[0] / np.sqrt(sums[1] * sums[2])


def oracle_xy():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def random_xy(seed, n, p1, p2, mix=0.5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p1))
    y = rng.standard_normal((n, p2)) + mix * x @ rng.standard_normal((p1, p2))
    return x, y


# (seed, n, p1, p2): p below and above n, so both the feature and the Gram form run
shapes = st.tuples(st.integers(0, 10**6), st.integers(5, 40), st.integers(1, 60),
                   st.integers(1, 60))


class FakeActivationFile(ActivationSet):
    """An in-memory source of stored ``flatten`` float32 rows, recording the rows read."""

    def __init__(self, arrays, indices=None, reduction="flatten"):
        n = len(next(iter(arrays.values())))
        super().__init__({k: v.astype(np.float32) for k, v in arrays.items()},
                         indices=np.arange(n, dtype=np.int64) if indices is None else indices,
                         reduction=reduction)
        self.rows_read = []

    def read(self, layer, reduction=None, rows=None):
        self.rows_read.append(rows)
        return super().read(layer, reduction, rows)


# ---------------------------------------------------------------------------------------------
# Golden oracles (Kornblith et al.'s reference code on this data)
# ---------------------------------------------------------------------------------------------


def test_oracle_linear():
    x, y = oracle_xy()
    assert linear_cka(x, y) == pytest.approx(0.5576132566, abs=1e-10)


def test_oracle_rbf():
    x, y = oracle_xy()
    assert rbf_cka(x, y, threshold=0.5) == pytest.approx(0.6548311823, abs=1e-10)


def test_oracle_debiased_linear():
    x, y = oracle_xy()
    assert linear_cka(x, y, debiased=True) == pytest.approx(0.5134564895, abs=1e-10)


def test_one_batch_of_minibatch_equals_debiased_oracle():
    x, y = oracle_xy()
    acc = MinibatchCKA(["x"], ["y"])
    acc.update({"x": x}, {"y": y})
    assert acc.compute()[0, 0] == pytest.approx(0.5134564895, abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Agreement with independent computations
# ---------------------------------------------------------------------------------------------


@FAST
@given(shapes)
def test_linear_matches_numpy_reference(shape):
    x, y = random_xy(*shape)
    assert linear_cka(x, y) == pytest.approx(ref_cka(x @ x.T, y @ y.T), abs=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(
        ref_debiased_cka(x @ x.T, y @ y.T), abs=1e-9)


@FAST
@given(shapes, st.sampled_from([0.5, 1.0, 2.0]))
def test_rbf_matches_numpy_reference(shape, threshold):
    x, y = random_xy(*shape)
    k, l = ref_rbf_gram(x, threshold), ref_rbf_gram(y, threshold)
    assert rbf_cka(x, y, threshold=threshold) == pytest.approx(ref_cka(k, l), abs=1e-10)
    assert rbf_cka(x, y, threshold=threshold, debiased=True) == pytest.approx(
        ref_debiased_cka(k, l), abs=1e-9)


@FAST
@given(shapes)
def test_feature_form_equals_gram_form(shape):
    x, y = random_xy(*shape)
    for debiased in (False, True):
        assert linear_cka(x, y, form="features", debiased=debiased) == pytest.approx(
            linear_cka(x, y, form="gram", debiased=debiased), abs=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_ckatorch_cka_base(seed):
    # odd n: n² distances have a unique median, where torch.median and NumPy's agree
    x, y = random_xy(seed, 41, 7, 90)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for kernel, ours in (("linear", linear_cka), ("rbf", rbf_cka)):
        for debiased in (False, True):
            theirs = float(ckatorch.cka_base(tx, ty, kernel=kernel, unbiased=debiased))
            assert ours(x, y, debiased=debiased) == pytest.approx(theirs, abs=1e-8)


def test_cka_matrix_agrees_with_ckatorch_loop():
    rng = np.random.default_rng(5)
    a = {f"a{i}": rng.standard_normal((30, p)) for i, p in enumerate((4, 25, 60))}
    b = {f"b{i}": a["a1"] @ rng.standard_normal((25, p)) + rng.standard_normal((30, p))
         for i, p in enumerate((3, 45))}
    result = cka_matrix(a, b)
    theirs = [[float(ckatorch.cka_base(torch.from_numpy(xa), torch.from_numpy(xb)))
               for xb in b.values()] for xa in a.values()]
    np.testing.assert_allclose(result.matrix, theirs, atol=1e-8, rtol=0)


@FAST
@given(shapes)
def test_hsic_unbiased_matches_matrix_formula(shape):
    x, y = random_xy(*shape)
    k, l = x @ x.T, np.tanh(y @ y.T)
    assert hsic_unbiased(k, l) == pytest.approx(ref_hsic1(k, l), rel=1e-9, abs=1e-12)


def test_hsic_unbiased_is_the_u_statistic():
    x, y = random_xy(3, 6, 3, 2)
    k, l = x @ x.T, y @ y.T
    assert hsic_unbiased(k, l) == pytest.approx(ref_hsic1_u_statistic(k, l), rel=1e-10)


def test_centre_gram_is_hkh():
    x, _ = random_xy(0, 12, 5, 1)
    k = np.exp(-np.abs(x @ x.T))
    np.testing.assert_allclose(centre_gram(k).numpy(), ref_centre(k), atol=1e-12)


@FAST
@given(st.integers(0, 10**6), st.sampled_from([4, 5, 7, 12]), st.integers(1, 30))
def test_minibatch_equals_independent_sum_formula(seed, batch, p):
    x, y = random_xy(seed, 40, p, 13)  # last batch: 0, 0, 5 or 4 rows
    acc = MinibatchCKA(["x"], ["y"])
    for s in range(0, len(x), batch):
        acc.update({"x": x[s:s + batch]}, {"y": torch.from_numpy(y[s:s + batch])})
    assert acc.compute()[0, 0] == pytest.approx(ref_minibatch_cka(x, y, batch), abs=1e-10)
    assert acc.n_seen_ == len(x)


def test_minibatch_matrix_over_files_reads_one_batch_at_a_time():
    rng = np.random.default_rng(1)
    a = FakeActivationFile({f"a{i}": rng.standard_normal((60, p)) for i, p in enumerate((8, 70))})
    b = FakeActivationFile({f"b{i}": rng.standard_normal((60, p))
                            for i, p in enumerate((5, 9, 80))})
    result = cka_matrix(a, b, batch_size=16, progress=True)
    expected = [[ref_minibatch_cka(xa.astype(np.float32).astype(np.float64),
                                   xb.astype(np.float32).astype(np.float64), 16)
                 for xb in b.arrays.values()] for xa in a.arrays.values()]
    np.testing.assert_allclose(result.matrix, expected, atol=1e-10, rtol=0)
    assert all(r.stop - r.start <= 16 for r in a.rows_read + b.rows_read)
    assert (result.estimator, result.batch_size, result.debiased) == ("minibatch", 16, True)
    assert result.reduction == "flatten"


def test_max_memory_picks_the_largest_batch_that_fits():
    rng = np.random.default_rng(2)
    widths_a, widths_b, n = (8, 70), (5, 9, 80), 60
    a = FakeActivationFile({f"a{i}": rng.standard_normal((n, p)) for i, p in enumerate(widths_a)})
    b = FakeActivationFile({f"b{i}": rng.standard_normal((n, p)) for i, p in enumerate(widths_b)})
    budget = minibatch_memory(widths_a, widths_b, 20)
    chosen = minibatch_batch_size(widths_a, widths_b, n, budget)
    assert chosen >= 20 and minibatch_memory(widths_a, widths_b, chosen) <= budget
    valid = [c for c in range(chosen + 1, n + 1) if n % c == 0 or n % c >= 4]
    assert all(minibatch_memory(widths_a, widths_b, c) > budget for c in valid)

    result = cka_matrix(a, b, max_memory=budget)
    assert (result.estimator, result.batch_size) == ("minibatch", chosen)
    assert all(r.stop - r.start <= chosen for r in a.rows_read + b.rows_read)
    same = cka_matrix(a, b, batch_size=chosen)
    np.testing.assert_array_equal(result.matrix, same.matrix)


def test_memory_rule_grows_with_batch_and_layers():
    assert minibatch_memory([10], [10], 8) < minibatch_memory([10], [10], 16)
    assert minibatch_memory([10], [10], 16) < minibatch_memory([10, 10], [10], 16)
    # the rows as read (float32) are a lower bound
    assert minibatch_memory([300, 200], [100], 32) >= 4 * 32 * 600


def test_max_memory_errors_name_the_fix():
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(ValueError, match="cannot hold even a batch of 4 rows.*fewer layers"):
        cka_matrix({"x": x}, {"y": x}, max_memory=100)
    with pytest.raises(ValueError, match="not both"):
        cka_matrix({"x": x}, {"y": x}, max_memory=2**20, batch_size=10)
    with pytest.raises(ValueError, match="max_memory must be a positive number of bytes"):
        cka_matrix({"x": x}, {"y": x}, max_memory=0)


@pytest.mark.parametrize("kernel,debiased", [("linear", False), ("linear", True),
                                             ("rbf", False), ("rbf", True)])
def test_cka_matrix_on_dicts_equals_pairwise(kernel, debiased):
    rng = np.random.default_rng(2)
    a = {"conv": rng.standard_normal((25, 40)), "fc": torch.randn(25, 6, dtype=torch.float64)}
    b = {"x": rng.standard_normal((25, 3)), "y": rng.standard_normal((25, 30)) + 1e3}
    result = cka_matrix(a, b, kernel=kernel, debiased=debiased, threshold=0.7)
    one = (lambda u, v: linear_cka(u, v, debiased=debiased)) if kernel == "linear" else \
        (lambda u, v: rbf_cka(u, v, threshold=0.7, debiased=debiased))
    expected = [[one(u, v) for v in b.values()] for u in a.values()]
    np.testing.assert_allclose(result.matrix, expected, atol=1e-12, rtol=0)
    assert result.layers_a == ("conv", "fc") and result.layers_b == ("x", "y")


def test_cka_matrix_computes_each_gram_once(monkeypatch):
    calls = []
    real = cka_module._gram
    monkeypatch.setattr(cka_module, "_gram",
                        lambda x, **out: calls.append(x.shape) or real(x, **out))
    rng = np.random.default_rng(0)
    a = {f"a{i}": rng.standard_normal((20, 30)) for i in range(3)}
    b = {f"b{i}": rng.standard_normal((20, 40)) for i in range(4)}
    cka_matrix(a, b)
    assert len(calls) == 7


def test_float32_offset_trap():
    x, y = oracle_xy()
    x32 = (x + 1000).astype(np.float32)
    # exact on the rounded data, and the rounding itself moves CKA by well under 1e-5
    assert linear_cka(x32, y) == pytest.approx(ref_cka(*(v @ v.T for v in (
        x32.astype(np.float64) - x32.astype(np.float64).mean(0), y))), abs=1e-12)
    assert linear_cka(x32, y) == pytest.approx(0.5576132566, abs=3e-6)
    assert linear_cka(torch.from_numpy(x32), y, debiased=True) == pytest.approx(
        0.5134564895, abs=3e-6)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

measures = [linear_cka, lambda x, y: linear_cka(x, y, debiased=True), rbf_cka,
            lambda x, y: rbf_cka(x, y, threshold=0.5, debiased=True)]


@FAST
@given(shapes, st.sampled_from(measures))
def test_self_similarity_is_one(shape, measure):
    x, _ = random_xy(*shape)
    assert measure(x, x) == pytest.approx(1.0, abs=1e-10)


@FAST
@given(shapes, st.sampled_from(measures))
def test_symmetric(shape, measure):
    x, y = random_xy(*shape)
    assert measure(x, y) == pytest.approx(measure(y, x), abs=1e-12)


@FAST
@given(shapes, st.sampled_from(measures), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_invariances(shape, measure, scale, shift):
    x, y = random_xy(*shape)
    q, _ = np.linalg.qr(np.random.default_rng(shape[0]).standard_normal((x.shape[1],) * 2))
    base = measure(x, y)
    assert measure(x @ q, y) == pytest.approx(base, abs=1e-9)
    assert measure(scale * x, y) == pytest.approx(base, abs=1e-9)
    assert measure(x + shift, y) == pytest.approx(base, abs=1e-9)
    assert measure(np.hstack([x, x]), y) == pytest.approx(base, abs=1e-9)


def test_changed_by_general_linear_map():
    x, y = oracle_xy()
    a = np.diag(np.logspace(0, 2, 10)) + np.triu(np.ones((10, 10)))
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 0.05


def test_changed_by_permuting_rows_of_one_side():
    x, y = oracle_xy()
    perm = np.random.default_rng(0).permutation(len(x))
    assert linear_cka(x[perm], y[perm]) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x[perm], y) < linear_cka(x, y) - 0.3


def test_biased_drifts_to_one_with_width_while_debiased_stays_near_zero():
    rng = np.random.default_rng(0)
    n = 40
    biased, debiased = [], []
    for p in (4, 40, 400, 4000):
        x, y = rng.standard_normal((n, p)), rng.standard_normal((n, p))
        biased.append(linear_cka(x, y))
        debiased.append(linear_cka(x, y, debiased=True))
    assert biased == sorted(biased) and biased[-1] > 0.98
    assert max(abs(d) for d in debiased) < 0.1


# ---------------------------------------------------------------------------------------------
# Degenerate representations: NaN and a warning naming the layer, never a clamped number
# ---------------------------------------------------------------------------------------------


def test_constant_representation_gives_nan_and_names_it():
    x, _ = oracle_xy()
    constant = np.full((100, 4), 0.1)  # mean of 0.1s is not exactly 0.1 in floating point
    for kwargs in ({}, {"debiased": True}, {"form": "gram"}):
        with pytest.warns(ConstantRepresentationWarning, match="^y is constant"):
            assert np.isnan(linear_cka(x, constant, **kwargs))
    with pytest.warns(ConstantRepresentationWarning, match="^x has median squared distance 0"):
        assert np.isnan(rbf_cka(constant, x))


def test_rbf_zero_bandwidth_warns():
    x, _ = oracle_xy()
    mostly_equal = np.zeros((100, 2))
    mostly_equal[:10] = 1.0  # not constant, but most pairs coincide
    with pytest.warns(ConstantRepresentationWarning, match="RBF bandwidth is 0"):
        assert np.isnan(rbf_cka(mostly_equal, x))


def test_constant_layer_in_matrix_and_minibatch_names_it():
    x, y = oracle_xy()
    a = {"ok": x, "dead": np.ones((100, 5), dtype=np.float32)}
    with pytest.warns(ConstantRepresentationWarning, match="layer 'dead' of a"):
        result = cka_matrix(a, {"y": y})
    assert np.isnan(result.matrix[1, 0]) and not np.isnan(result.matrix[0, 0])
    with pytest.warns(ConstantRepresentationWarning, match="'dead' of a is constant within every"):
        result = cka_matrix(a, {"y": y}, batch_size=25)
    assert np.isnan(result.matrix[1, 0]) and not np.isnan(result.matrix[0, 0])
    json.dumps(result.to_dict(), allow_nan=False)


def test_no_warning_for_healthy_layers():
    x, y = oracle_xy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cka_matrix({"x": x}, {"y": y}, batch_size=20)


# ---------------------------------------------------------------------------------------------
# Result object
# ---------------------------------------------------------------------------------------------


def test_result_metadata_and_diagonal():
    x, y = oracle_xy()
    result = cka_matrix({"l1": x, "l2": y}, {"m1": x, "m2": y}, kernel="rbf", threshold=0.5)
    assert isinstance(result, CKAResult)
    np.testing.assert_allclose(result.diagonal(), [1.0, 1.0], atol=1e-12)
    assert result.matrix[0, 1] == pytest.approx(0.6548311823, abs=1e-10)
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["layers_a"] == ["l1", "l2"] and d["kernel"] == "rbf" and d["threshold"] == 0.5
    assert (d["estimator"], d["n"], d["batch_size"], d["reduction"]) == ("full", 100, None, None)
    with pytest.raises(ValueError, match="read-only"):
        result.matrix[0, 0] = 0.0


def test_file_inputs_use_flatten_by_default_and_the_given_reduction():
    x, y = oracle_xy()
    result = cka_matrix(FakeActivationFile({"x": x}), FakeActivationFile({"y": y}),
                        progress=True)
    assert result.reduction == "flatten"
    assert result.matrix[0, 0] == pytest.approx(0.5576132566, abs=3e-6)
    gap = FakeActivationFile({"x": x}, reduction="gap")
    assert cka_matrix(gap, {"y": y}, reduction="gap").reduction == "gap"


# ---------------------------------------------------------------------------------------------
# Every error path
# ---------------------------------------------------------------------------------------------


def test_diagonal_needs_equal_layer_counts():
    x, y = oracle_xy()
    with pytest.raises(ValueError, match="as many layers in a as in b, got 2 and 1"):
        cka_matrix({"a": x, "b": y}, {"c": x}).diagonal()


def test_hsic_needs_four_rows_and_square_grams():
    k = np.eye(3)
    with pytest.raises(ValueError, match="n >= 4 rows.*got n=3"):
        hsic_unbiased(k, k)
    with pytest.raises(ValueError, match=r"square Gram matrices.*\(4, 5\)"):
        hsic_unbiased(np.ones((4, 5)), np.ones((4, 5)))


def test_too_few_rows():
    x = np.random.default_rng(0).standard_normal((3, 2))
    with pytest.raises(ValueError, match="debiased CKA needs at least 4 rows, got n=3"):
        linear_cka(x, x, debiased=True)
    with pytest.raises(ValueError, match="biased CKA needs at least 2 rows, got n=1"):
        linear_cka(x[:1], x[:1])


def test_bad_arrays():
    x, y = oracle_xy()
    with pytest.raises(ValueError, match="x has 100 rows and y has 99"):
        linear_cka(x, y[:99])
    with pytest.raises(ValueError, match=r"y must be 2-D \(n, p\), got shape \(100, 2, 5\)"):
        linear_cka(x, y.reshape(100, 2, 5))
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite entries.*row 7"):
        linear_cka(bad, y)
    with pytest.raises(TypeError, match="real numbers, got dtype <U1"):
        linear_cka(np.full((100, 2), "a"), y)


def test_bad_settings():
    x, y = oracle_xy()
    with pytest.raises(ValueError, match="form must be 'auto', 'features' or 'gram'"):
        linear_cka(x, y, form="dual")
    with pytest.raises(ValueError, match="threshold must be a positive finite number.*-1"):
        rbf_cka(x, y, threshold=-1)
    with pytest.raises(ValueError, match="kernel must be 'linear' or 'rbf', got 'cosine'"):
        cka_matrix({"x": x}, {"y": y}, kernel="cosine")
    with pytest.raises(ValueError, match="supports only kernel='linear'"):
        cka_matrix({"x": x}, {"y": y}, kernel="rbf", batch_size=10)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 4.*got 3"):
        cka_matrix({"x": x}, {"y": y}, batch_size=3)
    with pytest.raises(ValueError, match="last batch of 2 rows.*e.g. 48"):
        cka_matrix({"x": x}, {"y": y}, batch_size=49)
    with pytest.raises(ValueError, match="reduction='gap' applies to activation files"):
        cka_matrix({"x": x}, {"y": y}, reduction="gap")
    with pytest.raises(ValueError, match="needs at least 4 rows, got n=3"):
        cka_matrix({"x": x[:3]}, {"y": y[:3]}, batch_size=8)


def test_mismatched_inputs_rejected():
    x, y = oracle_xy()
    with pytest.raises(ValueError, match="a has 100 rows and b has 98"):
        cka_matrix({"x": x}, {"y": y[:98]})
    with pytest.raises(ValueError, match="a has 100 rows and b has 99"):
        cka_matrix(FakeActivationFile({"x": x}), FakeActivationFile({"y": y[:99]}))
    shifted = np.arange(100, dtype=np.int64)
    shifted[40:] += 1
    with pytest.raises(ValueError, match=r"60 of 100 rows differ, first row 40 \(dataset index "
                                         r"40 in a, 41 in b\)"):
        cka_matrix(FakeActivationFile({"x": x}), FakeActivationFile({"y": y}, indices=shifted))
    with pytest.raises(ValueError, match="layers of a have different row counts"):
        cka_matrix({"x": x, "short": x[:50]}, {"y": y})


def test_bad_layer_selection_and_inputs():
    x, y = oracle_xy()
    with pytest.raises(ValueError, match=r"unknown layers \['fc9'\]; b has \['y'\]"):
        cka_matrix({"x": x}, {"y": y}, layers_b=["fc9"])
    with pytest.raises(TypeError, match="layers_a must be a list of layer names.*\\['x'\\]"):
        cka_matrix({"x": x}, {"y": y}, layers_a="x")
    with pytest.raises(ValueError, match="layers_a is empty"):
        cka_matrix({"x": x}, {"y": y}, layers_a=[])
    with pytest.raises(ValueError, match="b has no layers"):
        cka_matrix({"x": x}, {})
    with pytest.raises(TypeError, match="a must be a dict.*got ndarray"):
        cka_matrix(x, {"y": y})


def test_minibatch_accumulator_errors():
    x, y = oracle_xy()
    acc = MinibatchCKA(["x"], ["y"])
    with pytest.raises(RuntimeError, match="before any update"):
        acc.compute()
    with pytest.raises(ValueError, match="a batch has 3 rows but HSIC₁ needs at least 4"):
        acc.update({"x": x[:3]}, {"y": y[:3]})
    with pytest.raises(ValueError, match=r"same rows in a batch.*\"batch_b\['y'\]\": 9"):
        acc.update({"x": x[:10]}, {"y": y[:9]})
    with pytest.raises(ValueError, match=r"batch_a lacks layers \['x'\]; it has \['z'\]"):
        acc.update({"z": x[:10]}, {"y": y[:10]})
    assert acc.n_batches_ == 0


# ---------------------------------------------------------------------------------------------
# Extreme magnitudes and bandwidths: the answer of the same data at a normal scale, or of an
# arbitrary-precision reference, never 0, inf or NaN
# ---------------------------------------------------------------------------------------------

# 1e306: the column sums of 100 rows overflow float64; 1e-300: every product underflows
EXTREME_SCALES = [1e-300, 1e-200, 1e-160, 1e160, 1e200, 1e306]


@pytest.mark.parametrize("scale", EXTREME_SCALES)
@pytest.mark.parametrize("options, oracle", [({}, 0.5576132566), ({"form": "gram"}, 0.5576132566),
                                             ({"debiased": True}, 0.5134564895),
                                             ({"debiased": True, "form": "gram"}, 0.5134564895)])
def test_linear_cka_of_extreme_magnitudes_is_the_oracle(scale, options, oracle):
    x, y = oracle_xy()
    assert linear_cka(x * scale, y, **options) == pytest.approx(oracle, abs=1e-10)
    assert linear_cka(x * scale, y * scale, **options) == pytest.approx(oracle, abs=1e-10)


@pytest.mark.parametrize("scale", EXTREME_SCALES)
@pytest.mark.parametrize("options", [{}, {"debiased": True}, {"kernel": "rbf"},
                                     {"batch_size": 20}])
def test_cka_matrix_of_extreme_magnitudes_equals_the_normal_scale(scale, options):
    rng = np.random.default_rng(3)
    a = {"narrow": rng.standard_normal((60, 5)), "wide": rng.standard_normal((60, 90))}
    b = {"mixed": a["narrow"] @ rng.standard_normal((5, 7)) + rng.standard_normal((60, 7))}
    normal = cka_matrix(a, b, **options).matrix
    extreme = cka_matrix({k: v * scale for k, v in a.items()}, b, **options).matrix
    np.testing.assert_allclose(extreme, normal, atol=1e-12, rtol=0)


@pytest.mark.parametrize("power", [-1000, -40, 7, 40, 1000])
def test_scaling_by_a_power_of_two_gives_the_same_bits(power):
    """Every layer is scaled by a power of two before its Grams are formed, which is exact: the
    scale of the input cannot show in the result, not even in its last bit."""
    x, y = random_xy(2, 48, 30, 70)
    b = {"narrow": y[:, :20], "wide": y}  # all p < n (feature form) and p ≥ n (Gram form)
    for options in ({}, {"debiased": True}, {"kernel": "rbf"}, {"batch_size": 12}):
        base = cka_matrix({"x": x}, b, **options).matrix
        scaled = cka_matrix({"x": x * 2.0**power}, b, **options).matrix
        np.testing.assert_array_equal(scaled, base)


def test_minibatch_with_batches_of_wildly_different_magnitudes():
    """A layer whose batches differ by 1e200 in scale: the small batch adds nothing the float64
    answer can show, so the result is that of the same layer divided by the large scale."""
    x, y = random_xy(4, 40, 6, 9)
    scaled = x.copy()
    scaled[:20] *= 1e100
    scaled[20:] *= 1e-100
    acc = MinibatchCKA(["x"], ["y"])
    for s in (0, 20):
        acc.update({"x": scaled[s:s + 20]}, {"y": y[s:s + 20]})
    expected = ref_minibatch_cka(scaled / 1e100, y, 20)
    assert np.isfinite(expected)
    assert acc.compute()[0, 0] == pytest.approx(expected, abs=1e-12)


def mp_rbf_cka(x, y, threshold, debiased):
    """RBF CKA in arbitrary precision (mpmath), the kernel as defined, exp of every entry:
    no expm1, no rescaling. Kornblith's bandwidth (median of the n² squared distances)."""
    import mpmath

    # HSIC of K = 1 − ε·u is of order ε², ε = 1/2t²: 40 digits beyond its cancellation
    digits = 40 + int(4 * abs(np.log10(threshold)))
    with mpmath.workdps(digits):
        grams = []
        for v in (x, y):
            d2 = ((v[:, None, :] - v[None, :, :]) ** 2).sum(-1)
            width = 2 * mpmath.mpf(threshold) ** 2 * mpmath.mpf(np.median(d2))
            grams.append(mpmath.matrix([[mpmath.exp(-mpmath.mpf(e) / width) for e in row]
                                        for row in d2]))
        hsic = mp_hsic1 if debiased else mp_centred_inner
        value = hsic(*grams) / mpmath.sqrt(hsic(grams[0], grams[0]) * hsic(grams[1], grams[1]))
        return float(value)


def mp_centred_inner(k, l):
    """⟨HKH, HLH⟩ from row, column and grand means, O(n²)."""
    n = k.rows

    def centred(m):
        rows = [sum(m[i, j] for j in range(n)) / n for i in range(n)]
        grand = sum(rows) / n
        return [[m[i, j] - rows[i] - rows[j] + grand for j in range(n)] for i in range(n)]

    kc, lc = centred(k), centred(l)
    return sum(kc[i][j] * lc[i][j] for i in range(n) for j in range(n))


def mp_hsic1(k, l):
    """Song et al.'s HSIC₁ from the zero-diagonal Grams, O(n²)."""
    n = k.rows
    kt = [[k[i, j] if i != j else 0 for j in range(n)] for i in range(n)]
    lt = [[l[i, j] if i != j else 0 for j in range(n)] for i in range(n)]
    rk, rl = [sum(r) for r in kt], [sum(r) for r in lt]
    trace = sum(kt[i][j] * lt[i][j] for i in range(n) for j in range(n))
    return (trace + sum(rk) * sum(rl) / ((n - 1) * (n - 2))
            - 2 * sum(a * b for a, b in zip(rk, rl)) / (n - 2)) / (n * (n - 3))


@pytest.mark.parametrize("threshold", [1e-200, 1e-3, 0.05, 0.7, 3.0, 1e6, 1e8, 1e20, 1e200])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_at_any_threshold_matches_arbitrary_precision(threshold, debiased):
    x, y = random_xy(6, 21, 4, 3)  # odd n: the median of the n² distances is one entry
    expected = mp_rbf_cka(x, y, threshold, debiased)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rbf_cka(x, y, threshold=threshold, debiased=debiased) == pytest.approx(
            expected, abs=1e-9)


@pytest.mark.parametrize("debiased, oracle", [(False, 0.5576132566), (True, 0.5134564895)])
def test_rbf_cka_of_a_huge_threshold_is_linear_cka(debiased, oracle):
    """exp(−d/2σ²) ≈ 1 − d/2σ² and the centred −d is 2·XXᵀ centred: σ → ∞ is linear CKA."""
    x, y = oracle_xy()
    for threshold in (1e6, 1e10, 1e100, 1e300):
        assert rbf_cka(x, y, threshold=threshold, debiased=debiased) == pytest.approx(
            oracle, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Minibatch CKA at float32 precision, and its worker threads
# ---------------------------------------------------------------------------------------------


def relu_layers(seed, n, widths, offset=0.0):
    """ReLU-like float32 layers sharing a signal: nonnegative, correlated, with a mean."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 8))
    return {f"l{p}": (np.maximum(signal @ rng.standard_normal((8, p))
                                 + rng.standard_normal((n, p)), 0) + offset).astype(np.float32)
            for p in widths}


def centred(x):
    x = x.astype(np.float64)
    return x - x.mean(0)


def minibatch(a, b, batch, **options):
    acc = MinibatchCKA(list(a), list(b), **options)
    n = len(next(iter(a.values())))
    for s in range(0, n, batch):
        acc.update({k: v[s:s + batch] for k, v in a.items()},
                   {k: torch.from_numpy(v[s:s + batch]) for k, v in b.items()})
    return acc.compute()


@pytest.mark.parametrize("widths, batch", [((30, 200, 700), 50),  # Gram form: some p ≥ b
                                           ((5, 12, 30), 40)])  # feature form: every p < b
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_float32_minibatch_agrees_with_the_float64_reference(widths, batch, offset):
    a = relu_layers(0, 200, widths, offset)
    b = relu_layers(1, 200, widths[::-1])
    # HSIC₁ ignores a shift of the features; the reference's uncentred Grams of the offset
    # layers would lose digits to it, so it gets them centred (in float64, exactly)
    expected = [[ref_minibatch_cka(centred(x), centred(y), batch) for y in b.values()]
                for x in a.values()]
    fast = minibatch(a, b, batch, precision="float32")
    np.testing.assert_allclose(fast, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(minibatch(a, b, batch), expected, atol=1e-10, rtol=0)


def test_float32_minibatch_of_float64_input_centres_before_rounding():
    """float64 activations with an offset float32 cannot hold (1e8 + N(0, 1)) are centred in
    float64 first, so the float32 path still agrees with the float64 reference."""
    a = {k: v.astype(np.float64) + 1e8 for k, v in relu_layers(2, 120, (20, 150)).items()}
    b = {k: v.astype(np.float64) for k, v in relu_layers(3, 120, (90,)).items()}
    expected = [[ref_minibatch_cka(centred(x), y, 30) for y in b.values()] for x in a.values()]
    np.testing.assert_allclose(minibatch(a, b, 30, precision="float32"), expected, atol=1e-6,
                               rtol=0)


@pytest.mark.parametrize("power", [-100, 60, 100])
def test_float32_minibatch_is_exact_under_powers_of_two(power):
    """Scaling a float32 layer by 2^k is exact, and so is the scaling the float32 path applies
    before forming Grams: the result keeps its bits even where the Grams of the scaled layer
    itself would overflow or underflow float32."""
    a = relu_layers(4, 60, (10, 90))
    b = relu_layers(5, 60, (70,))
    base = minibatch(a, b, 20, precision="float32")
    scaled = {k: v * np.float32(2.0**power) for k, v in a.items()}
    assert all(np.isfinite(v).all() and (v != 0).any() for v in scaled.values())
    np.testing.assert_array_equal(minibatch(scaled, b, 20, precision="float32"), base)


def test_float32_minibatch_of_a_constant_layer_is_nan_and_named():
    a = relu_layers(6, 40, (50,)) | {"dead": np.full((40, 60), 0.1, dtype=np.float32)}
    b = relu_layers(7, 40, (30,))
    with pytest.warns(ConstantRepresentationWarning, match="'dead' of a is constant within every"):
        result = minibatch(a, b, 20, precision="float32")
    assert np.isnan(result[1, 0]) and np.isfinite(result[0, 0])


def test_a_layer_whose_first_rows_agree_is_not_constant():
    x, y = random_xy(8, 30, 40, 6)
    x[1] = x[0]
    acc = MinibatchCKA(["x"], ["y"])
    acc.update({"x": x}, {"y": y})
    assert acc.compute()[0, 0] == pytest.approx(ref_minibatch_cka(x, y, 30), abs=1e-10)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float32_minibatch_rejects_non_finite_entries_naming_them(bad):
    x = relu_layers(9, 20, (30,))["l30"]
    x[7, 3] = bad
    acc = MinibatchCKA(["x"], ["y"], precision="float32")
    with pytest.raises(ValueError, match=r"batch_a\['x'\] has 1 NaN or infinite entries "
                                         r"\(first in row 7\)"):
        acc.update({"x": x}, {"y": x[:, :5].copy()})
    assert acc.n_batches_ == 0


def test_precision_must_be_known():
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'float64'\].*"
                                         r"got 'float16'"):
        MinibatchCKA(["x"], ["y"], precision="float16")


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_minibatch_worker_threads_change_no_bit(precision):
    """Each layer is kernelised whole by one worker, so the thread count cannot change the
    result; the caller's thread setting is restored after each update, and updates work in
    the caller's inference mode (as under forward hooks), which worker threads do not share."""
    a = relu_layers(10, 80, (20, 100, 300))
    b = relu_layers(11, 80, (60, 200))
    before = torch.get_num_threads()
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                results.append(minibatch(a, b, 40, precision=precision))
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


def test_memory_rule_counts_one_layer_per_worker_thread():
    one, two = (minibatch_memory([10, 500], [300], 64, threads=t) for t in (1, 2))
    assert two - one >= 8 * 64 * 500  # at least the second worker's float64 copy of p_max


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1.0), (torch.float64, 1.0),
                                          (torch.float64, 1e-300), (torch.float64, 1e300)])
def test_constant_columns_centre_to_exactly_zero(dtype, scale):
    """A mean of equal floats can be off by ulps; a constant column must still centre to 0
    (other measures count its rank), in the scaled-subtraction and the extreme-scale branch."""
    x = torch.randn(250, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[:, 3], x[:, 7], x[:, 9] = 0.1, 1e3 / 3, -7.123456789
    x = (x * scale).to(dtype)
    xc, constant, _ = cka_module._centre(x)
    assert not constant and xc.dtype == dtype
    assert (xc[:, [3, 7, 9]] == 0).all()
    assert float(xc.double().mean(0).abs().max()) < 1e-6 * float(xc.abs().max())


def test_full_estimator_reads_at_most_one_layer_per_worker_ahead():
    """Layers of an activation file are read as workers free up, not all at once."""
    read = []

    def layers():
        for i in range(10):
            read.append(i)
            yield i

    with ThreadPoolExecutor(3) as pool:
        for taken, out in enumerate(cka_module._map_ahead(pool, lambda v: 2 * v, layers(),
                                                          ahead=3)):
            assert out == 2 * taken and len(read) <= taken + 3
    assert len(read) == 10
