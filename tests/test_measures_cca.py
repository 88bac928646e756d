"""Tests of the CCA family (mean ρ, R²_CCA, SVCCA, PWCCA) and linear regression R² against float64
NumPy references written from the papers, a transcription of google/svcca's PWCCA formula,
cca-zoo and scikit-learn; properties via hypothesis. No expected number here comes from
repsim's own output."""

import warnings

import numpy as np
import pytest
import torch
from cca_zoo.linear import CCA as ZooCCA
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cross_decomposition import CCA as SklearnCCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

import repsim
from repsim.measures import Comparison, get_measure
from repsim.measures.cka import ConstantRepresentationWarning

FAST = settings(max_examples=8, deadline=None)
CCA_FAMILY = ["cca_mean_rho", "cca_r2", "svcca", "pwcca"]
ALL = [*CCA_FAMILY, "linear_regression_r2"]


# ---------------------------------------------------------------------------------------------
# Independent references: covariances and their inverse square roots, as in the papers
# ---------------------------------------------------------------------------------------------


def centred(x):
    return x - x.mean(0)


def inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w ** -0.5) @ v.T


def ref_cca(x, y):
    """Hotelling (1936): the canonical correlations (singular values of Σxx^−½ Σxy Σyy^−½),
    with A, the directions in x's whitened space."""
    xc, yc = centred(x), centred(y)
    a, rho, _ = np.linalg.svd(inv_sqrt(xc.T @ xc) @ xc.T @ yc @ inv_sqrt(yc.T @ yc))
    return rho[:min(x.shape[1], y.shape[1])], a


def ref_svcca(x, y, variance=0.99):
    """Raghu et al. (2017): CCA of each layer's top principal components explaining
    ``variance`` of its variance."""
    def reduce(z):
        u, s, _ = np.linalg.svd(centred(z), full_matrices=False)
        k = next(k for k in range(1, len(s) + 1) if (s[:k] ** 2).sum() >= variance * (s**2).sum())
        return u[:, :k] * s[:k]
    return ref_cca(reduce(x), reduce(y))[0].mean()


def ref_pwcca(x, y):
    """Morcos et al. (2018), weights from x: α_i ∝ Σ_j |⟨h_i, x_j⟩| with h_i x's unit-norm
    canonical variates and x_j its centred neurons."""
    rho, a = ref_cca(x, y)
    xc = centred(x)
    h = xc @ inv_sqrt(xc.T @ xc) @ a[:, :len(rho)]
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(1)
    return (alpha / alpha.sum() * rho).sum()


def google_pwcca(acts1, acts2, *, canonical_variates=False):
    """A transcription of google/svcca's compute_pwcca (pwcca.py with cca_core's
    get_cca_similarity at epsilon=0) for acts1 (neurons, datapoints) with no more neurons than
    acts2. ``canonical_variates=True`` projects on its own canonical directions instead
    (cca_core's cca_dirns: coef_x · invsqrt_xx, on centred activations, means not added)."""
    n1 = len(acts1)
    cov = np.cov(acts1, acts2)
    sxx, sxy, syy = cov[:n1, :n1], cov[:n1, n1:], cov[n1:, n1:]
    xmax, ymax = np.abs(sxx).max(), np.abs(syy).max()
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    invsqrt_xx = _pd_sqrt(np.linalg.pinv(sxx))
    invsqrt_yy = _pd_sqrt(np.linalg.pinv(syy))
    u, s, _ = np.linalg.svd(invsqrt_xx @ sxy @ invsqrt_yy)
    means = acts1.mean(1, keepdims=True)
    if canonical_variates:
        dirns = u.T @ invsqrt_xx @ (acts1 - means)
        acts = acts1 - means
    else:
        dirns = u.T @ (acts1 - means) + means
        acts = acts1
    p, _ = np.linalg.qr(dirns.T)
    weights = np.abs(p.T @ acts.T).sum(1)
    weights /= weights.sum()
    return (weights * s).sum()


def _pd_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(np.sqrt(w)) @ v.T


def ref_regression_r2(x, y):
    """Least squares with an intercept: 1 − ‖residual‖²_F / ‖Y − Ȳ‖²_F."""
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return 1 - ((y - design @ coef) ** 2).sum() / (centred(y) ** 2).sum()


REFERENCES = {
    "cca_mean_rho": lambda x, y: ref_cca(x, y)[0].mean(),
    "cca_r2": lambda x, y: (ref_cca(x, y)[0] ** 2).mean(),
    "svcca": ref_svcca,
    "pwcca": lambda x, y: ref_pwcca(x, y) if x.shape[1] <= y.shape[1] else ref_pwcca(y, x),
    "linear_regression_r2": ref_regression_r2,
}


def every_direction(measure):
    """Parameters under which ``measure`` keeps every direction of a layer (up to its rank)."""
    return {"variance": 1.0} if measure == "svcca" else {}


def reference(measure, **params):
    """The reference of ``measure`` with its ``variance`` parameter (SVCCA's) applied."""
    return (lambda x, y: ref_svcca(x, y, **params)) if measure == "svcca" else REFERENCES[measure]


def value(measure, x, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstantRepresentationWarning)
        return repsim.similarity_matrix({"x": x}, {"y": y}, measure=measure, **params).matrix[0, 0]


def related(n, px, py, seed=0, spectrum=None):
    """x (n, px) with column scales ``spectrum`` (or mixed by a random map) and y (n, py)
    linearly related to it plus noise, both offset from 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, px))
    x = x * spectrum if spectrum is not None else x @ rng.standard_normal((px, px))
    y = x @ rng.standard_normal((px, py)) + 2 * rng.standard_normal((n, py))
    return x + 3, y - 1


# ---------------------------------------------------------------------------------------------
# Agreement with the references and the peers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("measure", ALL)
@pytest.mark.parametrize("px, py", [(6, 9), (9, 6), (7, 7)])
def test_agrees_with_the_reference_from_the_paper(measure, px, py):
    x, y = related(150, px, py, seed=px)
    assert value(measure, x, y) == pytest.approx(REFERENCES[measure](x, y), abs=1e-10)


def test_svcca_drops_the_small_directions_like_the_reference():
    x, y = related(200, 8, 8, spectrum=np.logspace(0, -2, 8))
    for variance in (0.5, 0.9, 0.99, 1.0):
        assert value("svcca", x, y, variance=variance) == pytest.approx(
            ref_svcca(x, y, variance), abs=1e-10)
    assert ref_svcca(x, y, 0.9) != pytest.approx(ref_svcca(x, y, 1.0), abs=1e-3)


@pytest.mark.parametrize("peer", ["cca-zoo", "scikit-learn"])
def test_canonical_correlations_agree_with_peers(peer):
    x, y = related(200, 5, 7)
    k = 5
    model = (ZooCCA(n_components=k).fit([x, y]) if peer == "cca-zoo"
             else SklearnCCA(n_components=k, scale=False, max_iter=5000, tol=1e-15).fit(x, y))
    zx, zy = model.transform([x, y]) if peer == "cca-zoo" else model.transform(x, y)
    rho = np.array([np.corrcoef(zx[:, i], zy[:, i])[0, 1] for i in range(k)])
    assert value("cca_mean_rho", x, y) == pytest.approx(rho.mean(), abs=1e-9)
    assert value("cca_r2", x, y) == pytest.approx((rho**2).mean(), abs=1e-9)


def test_regression_agrees_with_scikit_learn():
    x, y = related(150, 6, 9)
    predicted = LinearRegression().fit(x, y).predict(x)
    assert value("linear_regression_r2", x, y) == pytest.approx(
        r2_score(y, predicted, multioutput="variance_weighted"), abs=1e-10)


def test_pwcca_agrees_with_google_svcca_where_its_formula_is_the_papers():
    """google/svcca's compute_pwcca projects on the whitened-space directions without Σxx^−½
    and adds the means back: the same as the paper only for a centred, white x. With its own
    canonical variates (cca_dirns) it agrees in general."""
    x, y = related(300, 6, 8, seed=3)
    assert value("pwcca", x, y) == pytest.approx(
        google_pwcca(x.T, y.T, canonical_variates=True), abs=1e-10)
    assert value("pwcca", x, y) != pytest.approx(google_pwcca(x.T, y.T), abs=1e-3)
    white, _ = np.linalg.qr(centred(x))
    white *= 7.0
    assert value("pwcca", white, y) == pytest.approx(google_pwcca(white.T, y.T), abs=1e-10)


def test_pwcca_weights_from_the_side_with_fewer_directions_and_a_on_ties():
    x, y = related(150, 5, 8)
    assert value("pwcca", x, y) == pytest.approx(ref_pwcca(x, y), abs=1e-10)
    assert value("pwcca", y, x) == pytest.approx(ref_pwcca(x, y), abs=1e-10)
    x, y = related(150, 6, 6)
    assert value("pwcca", x, y) == pytest.approx(ref_pwcca(x, y), abs=1e-10)
    assert value("pwcca", y, x) == pytest.approx(ref_pwcca(y, x), abs=1e-10)
    assert ref_pwcca(x, y) != pytest.approx(ref_pwcca(y, x), abs=1e-4)


@pytest.mark.parametrize("measure", ALL)
def test_max_dims_is_the_measure_of_the_top_principal_directions(measure):
    x, y = related(120, 9, 8, spectrum=np.logspace(0, -1, 9))
    params = every_direction(measure)
    expected = (ref_pwcca_top(x, y, 4) if measure == "pwcca"
                else reference(measure, **params)(top_scores(x, 4), top_scores(y, 4)))
    assert value(measure, x, y, max_dims=4, **params) == pytest.approx(expected, abs=1e-10)


def top_scores(z, k):
    """(n, k) scores of z's top k principal directions."""
    u, s, _ = np.linalg.svd(centred(z), full_matrices=False)
    return u[:, :k] * s[:k]


def ref_pwcca_top(x, y, k, rows=slice(None)):
    """PWCCA of the top k principal directions (at ``rows``), weights over x's neurons' parts
    in them (all that a canonical variate in that subspace sees of a neuron)."""
    u, s, vt = np.linalg.svd(centred(x), full_matrices=False)
    parts = centred((u[:, :k] * s[:k] @ vt[:k])[rows])
    sx = centred(top_scores(x, k)[rows])
    rho, a = ref_cca(sx, top_scores(y, k)[rows])
    h = sx @ inv_sqrt(sx.T @ sx) @ a
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ parts).sum(1)
    return (alpha / alpha.sum() * rho).sum()


def test_a_map_of_dicts_runs_through_similarity_matrix():
    x, y = related(150, 5, 8, seed=1)
    z, w = related(150, 3, 4, seed=2)
    a, b = {"x": x, "z": z}, {"y": y, "w": w, "xz": np.hstack([x, z])}
    result = repsim.similarity_matrix(a, b, measure="pwcca")
    for i, left in enumerate(a.values()):
        for j, right in enumerate(b.values()):
            assert result.matrix[i, j] == pytest.approx(REFERENCES["pwcca"](left, right),
                                                        abs=1e-10)
    assert (result.measure, result.direction, result.identical) == ("pwcca", "similarity", 1.0)
    assert result.to_dict()["weights"] == "side with fewer kept directions, a on ties"


@pytest.mark.parametrize("measure", ALL)
def test_declares_a_similarity_in_zero_one_with_its_settings(measure):
    chosen = get_measure(measure)
    assert (chosen.direction, chosen.value_range, chosen.identical) == ("similarity", (0, 1), 1)
    assert "not a distance" in chosen.description
    assert chosen.settings()["max_dims"] is None
    assert get_measure(measure, max_dims=7).settings()["max_dims"] == 7


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(40, 80), st.integers(1, 6), st.integers(1, 6),
                   st.integers(0, 2**16))


def orthogonal(p, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return q


def invertible(p, seed):
    """A well-conditioned (condition number 10) invertible map that is not orthogonal."""
    return orthogonal(p, seed) @ np.diag(np.logspace(0, 1, p)) @ orthogonal(p, seed + 1)


def weighting_side(measure, px, py):
    """The side whose neurons the value reads beyond its column space (PWCCA's weights:
    the side with fewer directions, a on ties; regression's predicted side, b), or None."""
    if measure == "pwcca":
        return "a" if px <= py else "b"
    return "b" if measure == "linear_regression_r2" else None


@FAST
@given(shapes, st.sampled_from(ALL), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_invariant_to_scaling_translation_and_permuting_units(shape, measure, scale, shift):
    n, px, py, seed = shape
    x, y = related(n, px, py, seed)
    rng = np.random.default_rng(seed)
    moved = value(measure, scale * x[:, rng.permutation(px)] + shift,
                  y[:, rng.permutation(py)] / scale - shift)
    assert moved == pytest.approx(value(measure, x, y), abs=1e-8)


@FAST
@given(shapes, st.sampled_from(ALL))
def test_invariant_to_orthogonal_maps(shape, measure):
    """PWCCA's weights sum |⟨h_i, x_j⟩| over the weighting side's own neurons, so only the
    other side may be rotated; every other measure here allows both."""
    n, px, py, seed = shape
    x, y = related(n, px, py, seed)
    held = weighting_side(measure, px, py) if measure == "pwcca" else None
    rx = x if held == "a" else x @ orthogonal(px, seed)
    ry = y if held == "b" else y @ orthogonal(py, seed + 2)
    assert value(measure, rx, ry) == pytest.approx(value(measure, x, y), abs=1e-8)


@FAST
@given(shapes, st.sampled_from(["cca_mean_rho", "cca_r2", "svcca", "pwcca",
                                "linear_regression_r2"]))
def test_invariant_to_invertible_maps_where_the_measure_reads_only_column_spaces(shape, measure):
    """CCA: both sides (SVCCA only when it keeps every direction); PWCCA: the side that does
    not weigh; regression: the predicting side a."""
    n, px, py, seed = shape
    x, y = related(n, px, py, seed)
    params = every_direction(measure)
    held = weighting_side(measure, px, py)
    mx = x if held == "a" else x @ invertible(px, seed)
    my = y if held == "b" else y @ invertible(py, seed + 3)
    assert value(measure, mx, my, **params) == pytest.approx(value(measure, x, y, **params),
                                                             abs=1e-8)


@pytest.mark.parametrize("measure, side", [("svcca", "a"), ("pwcca", "a"),
                                           ("linear_regression_r2", "b")])
def test_changed_by_invertible_maps_where_the_measure_reads_more(measure, side):
    x, y = related(200, 6, 6, seed=5, spectrum=np.logspace(0, -1.5, 6))
    mapped = (x @ invertible(6, 1), y) if side == "a" else (x, y @ invertible(6, 1))
    assert abs(value(measure, *mapped) - value(measure, x, y)) > 1e-3


@FAST
@given(shapes, st.sampled_from(ALL))
def test_self_similarity_is_the_identical_value(shape, measure):
    n, px, _, seed = shape
    x, _ = related(n, px, 1, seed)
    assert value(measure, x, x) == pytest.approx(get_measure(measure).identical, abs=1e-10)


@FAST
@given(shapes, st.sampled_from(ALL))
def test_shuffling_one_sides_rows_lowers_the_value(shape, measure):
    n, px, py, seed = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, px))
    y = x[:, np.arange(py) % px] + 0.3 * rng.standard_normal((n, py))  # copies of x, noisy
    assert value(measure, x, y[rng.permutation(n)]) < value(measure, x, y)


def test_regression_is_not_symmetric_and_rows_predict_columns():
    x, y = related(150, 3, 9)
    result = repsim.similarity_matrix({"x": x}, {"y": y}, measure="linear_regression_r2")
    assert result.matrix[0, 0] == pytest.approx(ref_regression_r2(x, y), abs=1e-10)
    assert ref_regression_r2(x, y) != pytest.approx(ref_regression_r2(y, x), abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Too few inputs, rank-deficient and constant layers, bad parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("measure", ALL)
def test_a_layer_as_wide_as_the_inputs_is_refused_with_the_fixes(measure):
    x, y = related(20, 30, 3)
    with pytest.raises(ValueError, match=r"meaningless for layer 'x' of a \(19 dimensions\) and "
                                         r"layer 'y' of b \(3 dimensions\) on 20 distinct inputs"
                                         r".*--reduction gap or pool<k>.*more inputs.*max_dims=k"):
        value(measure, x, y, **every_direction(measure))
    reduced = value(measure, x, y, max_dims=5)
    assert 0 <= reduced < 1


@pytest.mark.parametrize("measure", CCA_FAMILY)
def test_cca_refuses_layers_that_together_fill_the_inputs(measure):
    x, y = related(20, 12, 12)
    with pytest.raises(ValueError, match=r"share at least 5 of the 19 dimensions"):
        value(measure, x, y, **every_direction(measure))
    assert 0 <= value("linear_regression_r2", x, y) < 1  # 12 of 19 dims: it still predicts


@pytest.mark.parametrize("measure", ALL)
def test_duplicated_and_constant_columns_do_not_count(measure):
    x, y = related(100, 5, 7)
    padded = np.hstack([x, x, np.full((100, 1), 4.0)])
    assert value(measure, padded, y) == pytest.approx(value(measure, x, y), abs=1e-10)
    assert value(measure, x, np.hstack([y, y])) == pytest.approx(value(measure, x, y),
                                                                 abs=1e-10)


@pytest.mark.parametrize("measure", ALL)
def test_a_constant_layer_gives_nan_and_a_warning_naming_it(measure):
    x, y = related(60, 4, 5)
    with pytest.warns(ConstantRepresentationWarning, match="layer 'dead' of b is constant"):
        result = repsim.similarity_matrix({"x": x}, {"y": y, "dead": np.full((60, 3), 2.5)},
                                          measure=measure)
    assert np.isnan(result.matrix[0, 1]) and np.isfinite(result.matrix[0, 0])


@pytest.mark.parametrize("params, message", [
    ({"max_dims": 0}, r"max_dims must be a positive int .* got 0"),
    ({"max_dims": -3}, r"max_dims must be a positive int .* got -3"),
    ({"max_dims": True}, r"max_dims must be a positive int .* got True"),
    ({"max_dims": 2.5}, r"max_dims must be a positive int .* got 2.5"),
    ({"variance": 0}, r"variance must be a fraction in \(0, 1\] .* got 0"),
    ({"variance": 1.5}, r"variance must be a fraction in \(0, 1\] .* got 1.5"),
    ({"variance": float("nan")}, r"variance must be a fraction in \(0, 1\] .* got nan"),
    ({"variance": "0.99"}, r"variance must be a fraction in \(0, 1\] .* got '0.99'"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        get_measure("svcca", **params)


def test_parameters_of_another_measure_are_refused():
    with pytest.raises(ValueError, match=r"measure 'pwcca' does not take these parameters "
                                         r"\['variance'\]"):
        get_measure("pwcca", variance=0.9)


# ---------------------------------------------------------------------------------------------
# Resampling inputs (the statistics' bootstrap and permutation hooks)
# ---------------------------------------------------------------------------------------------


def prepared(measure, layers, side="a", **params):
    chosen = get_measure(measure, **params)
    n = len(next(iter(layers.values())))
    comparison = Comparison(n=n, widths_a=(), widths_b=(), labels=None,
                            device=torch.device("cpu"))
    tensors = [torch.as_tensor(v, dtype=torch.float64) for v in layers.values()]
    names = [f"layer {k!r} of {side}" for k in layers]
    return chosen, chosen.prepare(iter(tensors), names, comparison), comparison


@pytest.mark.parametrize("measure", ALL)
def test_resampling_by_a_permutation_is_preparing_the_permuted_rows(measure):
    x, y = related(90, 4, 6)
    perm = np.random.default_rng(0).permutation(90)
    chosen, side_a, comparison = prepared(measure, {"x": x})
    _, side_b, _ = prepared(measure, {"y": y}, "b")
    _, permuted, _ = prepared(measure, {"y": y[perm]}, "b")
    resampled = chosen.resample(side_b, perm, comparison)
    np.testing.assert_allclose(chosen.compare(side_a, resampled, comparison),
                               chosen.compare(side_a, permuted, comparison), atol=1e-12)
    assert value(measure, x, y[perm]) == pytest.approx(REFERENCES[measure](x, y[perm]), abs=1e-10)


@pytest.mark.parametrize("measure", ALL)
def test_a_bootstrap_draw_is_the_measure_on_the_drawn_rows(measure):
    x, y = related(120, 4, 6)
    rows = np.random.default_rng(1).integers(0, 120, 120)
    params = every_direction(measure)
    chosen, side_a, comparison = prepared(measure, {"x": x}, **params)
    _, side_b, _ = prepared(measure, {"y": y}, "b", **params)
    drawn = chosen.compare(chosen.resample(side_a, rows, comparison),
                           chosen.resample(side_b, rows, comparison), comparison)
    assert float(drawn[0, 0]) == pytest.approx(reference(measure, **params)(x[rows], y[rows]),
                                               abs=1e-10)


@pytest.mark.parametrize("measure", ALL)
def test_a_reduced_side_is_resampled_within_its_subspace(measure):
    x, y = related(120, 7, 6, spectrum=np.logspace(0, -1, 7))
    rows = np.random.default_rng(2).integers(0, 120, 120)
    params = every_direction(measure)
    chosen, side_a, comparison = prepared(measure, {"x": x}, max_dims=3, **params)
    _, side_b, _ = prepared(measure, {"y": y}, "b", max_dims=3, **params)
    drawn = chosen.compare(chosen.resample(side_a, rows, comparison),
                           chosen.resample(side_b, rows, comparison), comparison)
    expected = (ref_pwcca_top(x, y, 3, rows) if measure == "pwcca"
                else reference(measure, **params)(top_scores(x, 3)[rows], top_scores(y, 3)[rows]))
    assert float(drawn[0, 0]) == pytest.approx(expected, abs=1e-10)


def test_a_draw_with_too_few_distinct_inputs_is_refused():
    x, y = related(40, 8, 8)
    chosen, side_a, comparison = prepared("cca_mean_rho", {"x": x})
    _, side_b, _ = prepared("cca_mean_rho", {"y": y}, "b")
    rows = np.random.default_rng(3).choice(10, 40)  # at most 10 distinct inputs
    with pytest.raises(ValueError, match=r"on \d+ distinct inputs: they share at least"):
        chosen.compare(chosen.resample(side_a, rows, comparison),
                       chosen.resample(side_b, rows, comparison), comparison)


def test_permutation_replicates_through_the_default_hook():
    x, y = related(80, 3, 4)
    chosen, side_a, comparison = prepared("cca_r2", {"x": x})
    _, side_b, _ = prepared("cca_r2", {"y": y}, "b")
    perms = np.stack([np.random.default_rng(s).permutation(80) for s in range(3)])
    values = chosen.replicates(side_a, side_b, None, perms, comparison)
    assert values.shape == (3, 1, 1)
    for perm, got in zip(perms, values[:, 0, 0]):
        assert got == pytest.approx(REFERENCES["cca_r2"](x, y[perm]), abs=1e-10)
