"""Tests of the shape metrics (angular Procrustes distance and the partial-whitening family)
against float64 NumPy references written from Williams et al. (2021), a step-by-step
transcription of netrep's LinearMetric, and scipy's orthogonal Procrustes; properties via
hypothesis. No expected number here comes from repsim's own output."""

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

import repsim
from repsim.measures import Comparison, get_measure
from repsim.measures.cka import ConstantRepresentationWarning

FAST = settings(max_examples=6, deadline=None)
ALPHAS = [1.0, 0.5, 0.0]


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def unit(x):
    """Centred columns, unit Frobenius norm (Williams et al.'s preprocessing)."""
    xc = x - x.mean(0)
    return xc / np.linalg.norm(xc)


def ref_angle(x, y):
    """Williams et al. (2021), α = 1: arccos of the nuclear norm of X̂ᵀŶ."""
    return np.arccos(np.linalg.norm(unit(x).T @ unit(y), "nuc"))


def scipy_angle(x, y):
    """The same through scipy's orthogonal Procrustes (narrower layer zero-padded): the angle
    between X̂R and Ŷ for the optimal rotation R."""
    a, b = unit(x), unit(y)
    width = max(a.shape[1], b.shape[1])
    a, b = (np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (a, b))
    rotation, _ = scipy.linalg.orthogonal_procrustes(a, b)
    return np.arccos(np.sum((a @ rotation) * b))


def netrep_whiten(x, alpha, eigval_tol=1e-7):
    """netrep.utils.whiten with preserve_variance=True, transcribed."""
    if alpha > 1 - eigval_tol:
        return x
    lam, v = np.linalg.eigh(x.T @ x)
    lam = np.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam ** -0.5
    new_var = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2)
    d *= np.sqrt(np.sum(lam) / new_var)
    return x @ ((v * d) @ v.T)


def netrep_linear_metric(x, y, alpha):
    """netrep's LinearMetric(alpha, center_columns=True, zero_pad=True).fit(x, y).score(x, y)
    with score_method="angular", transcribed step by step."""
    width = max(x.shape[1], y.shape[1])
    x, y = (np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (x, y))
    mx, my = x.mean(0), y.mean(0)
    xw, yw = netrep_whiten(x - mx, alpha), netrep_whiten(y - my, alpha)
    u, _, vt = np.linalg.svd(xw.T @ yw)
    tx, ty = xw @ u, yw @ vt.T
    corr = np.dot(tx.ravel(), ty.ravel()) / (np.linalg.norm(tx) * np.linalg.norm(ty))
    return np.arccos(np.clip(corr, -1.0, 1.0))


def ref_shape(x, y, alpha):
    """netrep's metric of the centred unit-norm layers (this module's convention)."""
    return netrep_linear_metric(unit(x), unit(y), alpha)


def shape(x, y, alpha=1.0):
    return repsim.similarity_matrix({"x": x}, {"y": y}, "shape_metric", alpha=alpha).matrix[0, 0]


def related(seed, n, p, q, noise=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) * rng.uniform(0.5, 3, p) + rng.standard_normal(p)
    y = x[:, :min(p, q)] @ rng.standard_normal((min(p, q), q)) + noise * rng.standard_normal((n, q))
    if q > p:
        y[:, p:] += rng.standard_normal((n, q - p))
    return x, y


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, p, q", [(40, 5, 8), (30, 12, 12), (20, 35, 6), (15, 40, 50)])
def test_procrustes_agrees_with_the_paper_and_with_scipy(n, p, q):
    x, y = related(0, n, p, q)
    ours = repsim.similarity_matrix({"x": x}, {"y": y}, "procrustes").matrix[0, 0]
    assert ours == pytest.approx(ref_angle(x, y), abs=1e-12)
    assert ours == pytest.approx(scipy_angle(x, y), abs=1e-12)


@pytest.mark.parametrize("alpha, n, p, q", [
    *[(alpha, 40, 5, 8) for alpha in (1.0, 0.8, 0.5, 0.1, 0.0)],
    *[(alpha, 60, 20, 3) for alpha in (0.5, 0.0)],
    *[(alpha, 25, 40, 30) for alpha in (1.0, 0.5, 0.1)],  # p > n: reduced to n coordinates
])
def test_shape_metric_agrees_with_netreps_linear_metric(alpha, n, p, q):
    x, y = related(1, n, p, q)
    assert shape(x, y, alpha) == pytest.approx(ref_shape(x, y, alpha), abs=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_at_the_ends_of_the_family_netrep_itself_is_scale_free(alpha):
    x, y = related(2, 50, 6, 9)
    x, y = 1e3 * x, 1e-2 * y
    assert shape(x, y, alpha) == pytest.approx(netrep_linear_metric(x, y, alpha), abs=1e-10)


def test_full_whitening_is_the_mean_canonical_correlation_for_equal_widths():
    x, y = related(3, 80, 7, 7)
    xc, yc = x - x.mean(0), y - y.mean(0)
    qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(yc)[0]
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    assert math.cos(shape(x, y, 0.0)) == pytest.approx(rho.mean(), abs=1e-10)


def test_a_map_is_every_pair_of_the_reference():
    rng = np.random.default_rng(4)
    a = {"a0": rng.standard_normal((30, 4)), "a1": rng.standard_normal((30, 45)),
         "a2": rng.standard_normal((30, 9))}
    b = {"b0": a["a0"] @ rng.standard_normal((4, 6)) + rng.standard_normal((30, 6)),
         "b1": rng.standard_normal((30, 31))}
    for alpha in (1.0, 0.3):
        result = repsim.similarity_matrix(a, b, "shape_metric", alpha=alpha)
        expected = [[ref_shape(a[i], b[j], alpha) for j in b] for i in a]
        np.testing.assert_allclose(result.matrix, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name, alpha", [("procrustes", 1.0), ("shape_metric", 0.25)])
def test_declares_a_distance_in_radians_with_its_settings(name, alpha):
    x, y = related(5, 30, 4, 5)
    params = {} if name == "procrustes" else {"alpha": alpha}
    result = repsim.similarity_matrix({"x": x}, {"y": y}, name, **params)
    assert (result.direction, result.identical) == ("distance", 0.0)
    assert result.value_range == (0.0, math.pi / 2)
    assert result.settings == {"alpha": alpha}
    assert "distance" in result.description and result.label


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(12, 30), st.integers(1, 8), st.integers(1, 8))


@FAST
@given(shapes, st.sampled_from(ALPHAS), st.floats(1e-3, 1e3), st.integers(0, 2**16))
def test_invariant_to_rotation_scaling_translation_and_unit_order(shape_, alpha, scale, seed):
    n, p, q = shape_
    x, y = related(seed, n, p, q)
    rng = np.random.default_rng(seed)
    rotation = ortho_group.rvs(p, random_state=seed) if p > 1 else np.ones((1, 1))
    moved = scale * x @ rotation + rng.standard_normal(p)
    assert shape(moved, y, alpha) == pytest.approx(shape(x, y, alpha), abs=1e-9)
    assert shape(x, y[:, rng.permutation(q)], alpha) == pytest.approx(shape(x, y, alpha), abs=1e-9)


@FAST
@given(shapes, st.integers(0, 2**16))
def test_full_whitening_is_invariant_to_invertible_maps_and_procrustes_is_not(shape_, seed):
    n, p, q = shape_
    x, y = related(seed, n, max(p, 2), q)
    rng = np.random.default_rng(seed)
    width = x.shape[1]
    invertible = ortho_group.rvs(width, random_state=seed) * rng.uniform(0.3, 3, width) \
        @ ortho_group.rvs(width, random_state=seed + 1)
    mixed = x @ invertible
    assert shape(mixed, y, 0.0) == pytest.approx(shape(x, y, 0.0), abs=1e-8)
    stretched = x * np.r_[10.0, np.ones(x.shape[1] - 1)]
    assert abs(shape(stretched, y, 1.0) - shape(x, y, 1.0)) > 1e-6


@FAST
@given(shapes, st.sampled_from(ALPHAS), st.integers(0, 2**16))
def test_identity_symmetry_and_triangle_inequality(shape_, alpha, seed):
    n, p, q = shape_
    x, y = related(seed, n, p, q)
    z = np.random.default_rng(seed).standard_normal((n, 3))
    assert shape(x, x, alpha) == 0.0
    assert shape(2 * x + 1, x, alpha) == 0.0
    assert shape(x, y, alpha) == pytest.approx(shape(y, x, alpha), abs=1e-12)
    assert shape(x, z, alpha) <= shape(x, y, alpha) + shape(y, z, alpha) + 1e-12


@FAST
@given(st.sampled_from(ALPHAS), st.integers(0, 2**16))
def test_shuffling_one_sides_rows_moves_towards_unrelated(alpha, seed):
    x, y = related(seed, 60, 4, 4, noise=0.2)
    shuffled = y[np.random.default_rng(seed).permutation(60)]
    assert shape(x, shuffled, alpha) > shape(x, y, alpha) + 0.3


# ---------------------------------------------------------------------------------------------
# Errors and degenerate layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, "0.5", True, None])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        get_measure("shape_metric", alpha=alpha)


def test_procrustes_takes_no_alpha():
    with pytest.raises(ValueError, match="does not take these parameters"):
        get_measure("procrustes", alpha=0.5)


def test_full_whitening_of_a_layer_as_wide_as_the_inputs_is_refused_with_the_fixes():
    x, y = related(6, 20, 19, 3)
    with pytest.raises(ValueError, match=r"alpha=0 .* 19 features on 20 distinct inputs.*"
                                         r"alpha > 0.*--reduction gap.*more than 20 inputs"):
        shape(x, y, 0.0)
    assert 0 < shape(x, y, 0.01) < math.pi / 2


def test_too_few_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2 inputs, got n=1"):
        shape(np.ones((1, 3)), np.ones((1, 2)))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_a_constant_layer_gives_nan_and_a_warning_naming_it(alpha):
    x, y = related(7, 30, 4, 5)
    with pytest.warns(ConstantRepresentationWarning, match="layer 'flat' of b is constant"):
        result = repsim.similarity_matrix({"x": x}, {"y": y, "flat": np.full((30, 3), 2.5)},
                                          "shape_metric", alpha=alpha)
    assert np.isnan(result.matrix[0, 1]) and np.isfinite(result.matrix[0, 0])


# ---------------------------------------------------------------------------------------------
# Resampling (the statistics' hook)
# ---------------------------------------------------------------------------------------------


def prepared(measure, layers, n):
    """``measure``'s prepared side of the (n, p) arrays ``layers`` and its comparison (also
    used by the RSA and neighbour tests)."""
    widths = tuple(m.shape[1] for m in layers)
    comparison = Comparison(n=n, widths_a=widths, widths_b=widths, labels=None,
                            device=torch.device("cpu"))
    side = measure.prepare(iter([torch.from_numpy(m) for m in layers]),
                           [f"l{i}" for i in range(len(layers))], comparison)
    return side, comparison


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("draw", ["permutation", "bootstrap", "leave one out"])
def test_a_resampled_side_is_the_side_of_the_resampled_rows(alpha, draw):
    rng = np.random.default_rng(8)
    n = 40
    a = [rng.standard_normal((n, 3)), rng.standard_normal((n, 8 if alpha == 0 else 50))]
    b = [a[0] @ rng.standard_normal((3, 5)) + rng.standard_normal((n, 5))]
    rows = {"permutation": rng.permutation(n), "bootstrap": rng.integers(0, n, n),
            "leave one out": np.delete(np.arange(n), 7)}[draw]
    measure = get_measure("shape_metric", alpha=alpha)
    side_a, comparison = prepared(measure, a, n)
    side_b, _ = prepared(measure, b, n)
    resampled_b = measure.resample(side_b, rows, comparison)
    resampled = measure.compare(measure.resample(side_a, rows, comparison), resampled_b,
                                comparison)
    direct = measure.compare(prepared(measure, [m[rows] for m in a], len(rows))[0], resampled_b,
                             comparison)
    np.testing.assert_allclose(resampled.numpy(), direct.numpy(), rtol=0, atol=1e-10)
    expected = [[ref_shape(m[rows], bm[rows], alpha) for bm in b] for m in a]
    np.testing.assert_allclose(resampled.numpy(), expected, rtol=0, atol=1e-10)


def test_a_full_whitening_draw_with_too_few_distinct_inputs_is_refused():
    rng = np.random.default_rng(9)
    measure = get_measure("shape_metric", alpha=0.0)
    side, comparison = prepared(measure, [rng.standard_normal((30, 10))], 30)
    with pytest.raises(ValueError, match="10 features on 8 distinct inputs"):
        measure.resample(side, np.repeat(np.arange(8), 4)[:30], comparison)


def test_permutation_replicates_through_the_default_hook():
    x, y = related(10, 30, 3, 4)
    rng = np.random.default_rng(10)
    measure = get_measure("procrustes")
    side_x, comparison = prepared(measure, [x], 30)
    side_y, _ = prepared(measure, [y], 30)
    draws = np.stack([rng.permutation(30) for _ in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = measure.replicates(side_x, side_y, None, draws, comparison)
    np.testing.assert_allclose(values[:, 0, 0], [ref_angle(x, y[r]) for r in draws], atol=1e-12)
