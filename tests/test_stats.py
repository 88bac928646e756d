"""Uncertainty: intervals cover the population value by simulation, permutation p-values are
uniform under the null, the closed-form jackknife agrees with recomputing, seed-group tests
hold their level, and every bad input is refused with a message."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

import repsim
from repsim.cka import cka_matrix
from repsim.stats import BiasWarning, cka_ci, holm, t_interval, wilson_interval
from repsim.stats.groups import seed_groups
from repsim.stats.simulate import latent_factor_pair


def coverage(draw, truth, draws, **kwargs):
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(draws):
        ci = cka_ci(*draw(rng), **kwargs)
        hits += ci.low <= truth <= ci.high
    return hits / draws


@pytest.mark.parametrize("n, p", [(60, 10), (100, 100), (80, 400)])
def test_debiased_jackknife_intervals_cover_population_cka(n, p):
    draw, truth = latent_factor_pair(np.random.default_rng(n + p), n, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BiasWarning)
        assert coverage(draw, truth, 200, debiased=True) >= 0.9


def test_biased_intervals_cover_where_no_bias_warning_is_given():
    draw, truth = latent_factor_pair(np.random.default_rng(5), 200, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiasWarning)  # this regime must not need the warning
        assert coverage(draw, truth, 200) >= 0.9


def test_biased_cka_of_wide_layers_at_few_inputs_warns_that_its_interval_may_miss():
    draw, truth = latent_factor_pair(np.random.default_rng(6), 100, 1000, signal=0.2)
    x, y = draw(np.random.default_rng(0))
    with pytest.warns(BiasWarning, match="debiased=True, whose intervals cover"):
        ci = cka_ci(x, y)
    assert ci.estimate > ci.high > ci.low  # the biased estimate sits above its own interval
    assert cka_ci(x, y, debiased=True).low <= truth  # the debiased one does not miss here


def test_intervals_cover_full_data_cka_of_real_data_from_subsamples():
    """Digits images and a fixed random ReLU layer of them: the full set is the population,
    its plug-in (biased) CKA the truth, subsamples of 150 the draws."""
    images = load_digits().data
    rng = np.random.default_rng(0)
    hidden = np.maximum(images @ rng.standard_normal((64, 200)) / 8, 0)
    truth = float(cka_matrix({"x": images}, {"y": hidden}).matrix[0, 0])
    hits = 0
    for _ in range(200):
        rows = rng.choice(len(images), 150, replace=False)
        ci = cka_ci(images[rows], hidden[rows], debiased=True)
        hits += ci.low <= truth <= ci.high
    assert hits / 200 >= 0.9


def numpy_cka(x, y, debiased):
    """Float64 NumPy linear CKA written from the formulas (biased: centred Grams; debiased:
    Song et al.'s HSIC₁)."""
    def hsic(k, l):  # noqa: E741
        n = len(k)
        if not debiased:
            h = np.eye(n) - 1 / n
            return np.sum((h @ k @ h) * (h @ l @ h))
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))  # noqa: E741
        return (np.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * k.sum(0) @ l.sum(1)) / (n * (n - 3))
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("widths", [(4, 7), (30, 45)])  # feature form, Gram form (n = 25)
def test_interval_bounds_match_a_jackknife_that_recomputes_every_leave_one_out(debiased, widths):
    rng = np.random.default_rng(2)
    n = 25
    x = rng.standard_normal((n, widths[0]))
    y = x[:, :1] + rng.standard_normal((n, widths[1]))
    loo = np.array([numpy_cka(np.delete(x, i, 0), np.delete(y, i, 0), debiased)
                    for i in range(n)])
    estimate = numpy_cka(x, y, debiased)
    se = np.sqrt((n - 1) / n * np.square(loo - loo.mean()).sum())
    centre = n * estimate - (n - 1) * loo.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BiasWarning)
        ci = cka_ci(x, y, debiased=debiased, level=0.9)
    assert ci.estimate == pytest.approx(estimate, abs=1e-12)
    assert (ci.centre, ci.se) == (pytest.approx(centre, abs=1e-10), pytest.approx(se, abs=1e-10))
    assert ci.high - ci.low == pytest.approx(2 * 1.6448536269514722 * se, rel=1e-9)


def test_map_intervals_agree_with_one_pair_at_a_time():
    rng = np.random.default_rng(3)
    a = {"a1": rng.standard_normal((40, 5)), "a2": rng.standard_normal((40, 60))}
    b = {"b1": a["a1"] @ rng.standard_normal((5, 3)) + rng.standard_normal((40, 3))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BiasWarning)
        result = repsim.similarity_matrix(a, b, level=0.8, debiased=True)
        for i, name in enumerate(a):
            ci = cka_ci(a[name], b["b1"], level=0.8, debiased=True)
            assert (result.low[i, 0], result.high[i, 0]) == (pytest.approx(ci.low),
                                                             pytest.approx(ci.high))
    frame = result.to_frame()
    assert {"low", "high"} <= set(frame.columns)
    assert result.to_dict()["uncertainty"]["level"] == 0.8


def test_permutation_p_values_are_uniform_under_independence():
    rng = np.random.default_rng(4)
    ps = []
    for draw in range(200):
        x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 4))
        ps.append(repsim.similarity_matrix({"x": x}, {"y": y}, n_perm=19, seed=draw).p[0, 0])
    ps = np.array(ps)
    # p takes values k/20; under the null P(p ≤ k/20) = k/20
    for level in (0.05, 0.25, 0.5):
        assert abs((ps <= level).mean() - level) < 3.5 * np.sqrt(level * (1 - level) / 200)


def test_a_rotated_copy_is_far_above_its_permutation_baseline():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6))
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    result = repsim.similarity_matrix({"x": x}, {"y": x @ q}, n_perm=99, seed=0)
    assert result.p[0, 0] == pytest.approx(1 / 100)
    assert result.matrix[0, 0] == pytest.approx(1.0)
    assert result.calibrated[0, 0] == pytest.approx(1.0)
    assert result.baseline_mean[0, 0] < result.baseline_high[0, 0] < 0.5


def test_permutation_baselines_are_reproducible_for_a_seed():
    rng = np.random.default_rng(6)
    a, b = {"x": rng.standard_normal((40, 8))}, {"y": rng.standard_normal((40, 80))}
    first, again, other = (repsim.similarity_matrix(a, b, n_perm=50, seed=s)
                           for s in (1, 1, 2))
    np.testing.assert_array_equal(first.baseline_mean, again.baseline_mean)
    assert first.baseline_mean[0, 0] != other.baseline_mean[0, 0]


def test_the_baseline_of_biased_cka_grows_with_width_at_small_n():
    rng = np.random.default_rng(7)
    narrow, wide = ({"x": rng.standard_normal((50, p))} for p in (5, 2000))
    y = {"y": rng.standard_normal((50, 2000))}
    assert repsim.similarity_matrix(narrow, y, n_perm=20).baseline_mean[0, 0] < \
        repsim.similarity_matrix(wide, y, n_perm=20).baseline_mean[0, 0]


def test_holm_matches_its_definition():
    rng = np.random.default_rng(8)
    p = rng.uniform(0, 0.2, size=(3, 4))
    p[1, 2] = np.nan
    flat = p[~np.isnan(p)]
    order = np.argsort(flat)
    m = len(flat)
    expected = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * flat[i]))
        expected[i] = running
    adjusted = holm(p)
    np.testing.assert_allclose(adjusted[~np.isnan(p)], expected)
    assert np.isnan(adjusted[1, 2])


def test_wilson_and_t_intervals_cover_by_simulation():
    rng = np.random.default_rng(9)
    correct = rng.binomial(200, 0.9, size=4000)
    low, high = wilson_interval(correct, 200, 0.95)
    assert ((low <= 0.9) & (0.9 <= high)).mean() >= 0.93
    samples = rng.normal(0.5, 0.1, size=(3, 4000))
    _, low, high = t_interval(samples, 0.95)
    assert 0.93 <= ((low <= 0.5) & (0.5 <= high)).mean() <= 0.97


def networks(rng, x, noise, count):
    """``count`` three-layer 'networks' sharing the true features of ``x`` plus seed noise."""
    w = np.random.default_rng(0).standard_normal((x.shape[1], 6))
    return [{f"l{i}": f(x @ w) + noise * rng.standard_normal((len(x), 6))
             for i, f in enumerate((lambda h: h, np.tanh, np.square))} for _ in range(count)]


def test_a_method_far_from_the_reference_is_below_its_ceiling_at_every_layer():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((60, 4))
    groups = seed_groups(networks(rng, x, 0.1, 4),
                         {"far": [{k: rng.standard_normal((60, 6)) for k in ("l0", "l1", "l2")}
                                  for _ in range(4)]}, reference_name="bp")
    test = groups.tests[0]
    assert test.smallest_p == pytest.approx(1 / 70)
    assert np.all(test.p_adjusted <= 0.05)
    assert all("far below ceiling" in line and "(Holm" in line for line in test.verdicts())
    assert np.all(groups.groups["far"].high < groups.ceiling.low)


def test_seed_label_tests_hold_their_level_when_a_method_is_another_reference():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 4))
    rejections = 0
    for _ in range(25):
        groups = seed_groups(networks(rng, x, 1.0, 4), {"same": networks(rng, x, 1.0, 3)})
        rejections += np.any(groups.tests[0].p_adjusted <= 0.05)
    assert rejections / 25 <= 0.16  # family-wise level 0.05, with room for 25 draws


def one_seed_each(input_test: bool):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((60, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BiasWarning)
        return seed_groups(networks(rng, x, 0.1, 1), {"near": networks(rng, x, 0.1, 1),
                                                      "far": networks(rng, x, 5.0, 1)},
                           input_test=input_test)


def test_one_seed_each_is_not_testable_between_methods():
    """No seed variation can be estimated, so the pair gets no p at all (never a z-test over
    inputs that another seed would overturn), but keeps its observed difference."""
    groups = one_seed_each(input_test=False)
    (test,) = groups.tests
    assert not test.testable and np.all(np.isnan(test.p_adjusted))
    assert "not testable with one seed per method" in test.test
    assert all("not testable" in line for line in test.verdicts())
    np.testing.assert_allclose(test.statistic,
                               groups.groups["near"].mean - groups.groups["far"].mean)


def test_one_seed_each_falls_back_to_resampling_inputs_when_asked_and_says_so():
    groups = one_seed_each(input_test=True)
    assert groups.ceiling is None
    (test,) = groups.tests
    assert test.testable and "seed variation not included" in test.test
    assert "jackknife" in groups.groups["near"].interval
    assert test.p_adjusted[0] < 0.05


def test_seed_groups_of_different_architectures_are_refused():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((30, 4))
    short = [{"l0": rng.standard_normal((30, 3))}]
    with pytest.raises(ValueError, match="one architecture"):
        seed_groups(networks(rng, x, 0.1, 2), {"short": short})


@pytest.mark.parametrize("kwargs, match", [
    ({"level": 1.5}, "level must be a probability"),
    ({"level": True}, "level must be a probability"),
    ({"n_perm": -1}, "n_perm must be a whole number"),
    ({"n_perm": 2.5}, "n_perm must be a whole number"),
])
def test_bad_uncertainty_settings_are_refused_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        repsim.similarity_matrix({"x": np.eye(5)}, {"y": np.eye(5)}, **kwargs)


def test_intervals_need_the_full_estimator():
    a = {"x": np.random.default_rng(0).standard_normal((20, 3))}
    with pytest.raises(ValueError, match="need the full estimator"):
        cka_matrix(a, a, batch_size=10, level=0.95)


def test_resampling_with_repeated_inputs_is_refused_with_the_reason():
    from repsim.measures.base import distinct_rows
    with pytest.raises(ValueError, match="repeated rows"):
        distinct_rows(np.array([0, 0, 1]), 3, "linear_cka")
    with pytest.raises(ValueError, match="must index the 3 inputs"):
        distinct_rows(np.array([0, 3]), 3, "linear_cka")


def test_empty_or_bad_seed_groups_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        seed_groups([], {"m": [{"l": np.eye(4)}]})
    with pytest.raises(ValueError, match="at least one"):
        seed_groups([{"l": np.eye(4)}], {"m": []})
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_interval(np.zeros((1, 3)), 0.95)


def test_a_measure_without_a_closed_form_gets_the_jackknife_of_recomputed_maps():
    """Procrustes has no closed-form jackknife: its intervals come from the registry's
    resampling, checked against maps recomputed from the activations without each input."""
    from repsim.stats import jackknife_bounds

    rng = np.random.default_rng(14)
    a = {"x": rng.standard_normal((30, 4))}
    b = {"y": a["x"] @ rng.standard_normal((4, 5)) + rng.standard_normal((30, 5))}
    result = repsim.similarity_matrix(a, b, "procrustes", level=0.9)
    recomputed = np.array([repsim.similarity_matrix(
        {"x": np.delete(a["x"], i, 0)}, {"y": np.delete(b["y"], i, 0)}, "procrustes").matrix
        for i in range(30)])
    _, _, low, high = jackknife_bounds(result.matrix, recomputed, 0.9)
    np.testing.assert_allclose([result.low, result.high], [low, high], rtol=1e-10)
    assert "delete-one" in result.uncertainty["interval"]


def test_many_inputs_use_the_grouped_jackknife_and_say_so():
    rng = np.random.default_rng(15)
    a = {"x": rng.standard_normal((250, 3))}
    b = {"y": a["x"] + rng.standard_normal((250, 3))}
    result = repsim.similarity_matrix(a, b, "procrustes", level=0.95)
    assert "grouped jackknife over inputs (100 groups)" in result.uncertainty["interval"]
    assert result.low[0, 0] < result.matrix[0, 0] < result.high[0, 0]


# ------------------------------------------------------------------ intervals inside the range


def test_a_ranged_interval_stays_inside_the_range_even_with_two_seeds():
    """Two seeds near CKA's top (t with 1 degree of freedom): the plain interval leaves
    [0, 1], the logit-scale one does not, and both hold the mean."""
    values = np.array([0.93, 0.975])
    mean, low, high = t_interval(values, 0.95)
    assert high > 1
    mean, low, high = t_interval(values, 0.95, (0.0, 1.0))
    assert 0 < low < mean < high < 1


def test_a_ranged_interval_is_the_plain_one_far_from_the_ends():
    rng = np.random.default_rng(11)
    values = rng.normal(0.5, 0.01, size=(6, 4))
    plain = t_interval(values, 0.95)
    ranged = t_interval(values, 0.95, (0.0, 1.0))
    np.testing.assert_allclose(ranged, plain, atol=1e-4)


def test_values_on_an_end_fall_back_to_the_plain_interval_cut_to_the_range():
    values = np.array([[-0.01, 0.40], [0.02, 0.45], [0.05, 0.50]])  # debiased CKA below 0
    mean, low, high = t_interval(values, 0.95, (0.0, 1.0))
    _, plain_low, plain_high = t_interval(values, 0.95)
    assert low[0] == 0.0 and high[0] == pytest.approx(plain_high[0])
    z = np.log(values[:, 1] / (1 - values[:, 1]))  # column 1: the logit scale, mapped back
    half = 4.302652729911275 * z.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    expected = 1 / (1 + np.exp(-(z.mean() + np.array([-half, half]))))
    assert [low[1], high[1]] == pytest.approx(expected)


@pytest.mark.parametrize("seeds", [3, 6])
@pytest.mark.parametrize("centre, spread", [(0.85, 0.04), (0.95, 0.03), (0.2, 0.05)])
def test_ranged_intervals_cover_the_mean_of_seed_values(seeds, centre, spread):
    """Seed values from a Beta distribution of the given mean and spread (skewed near the
    ends): the logit-scale 95 % interval covers the true mean in ≥ 93 % of 2,000 draws."""
    rng = np.random.default_rng(12)
    k = centre * (1 - centre) / spread ** 2 - 1
    values = rng.beta(centre * k, (1 - centre) * k, size=(seeds, 2000))
    _, low, high = t_interval(values, 0.95, (0.0, 1.0))
    assert np.all((0 <= low) & (high <= 1))
    assert np.mean((low <= centre) & (centre <= high)) >= 0.93


def test_a_ranged_interval_scales_to_any_range():
    """Fisher's z for a measure in (−1, 1) is the logit of (v + 1) / 2 halved: the same
    interval as the unit range's, moved."""
    values = np.array([0.2, 0.5, 0.6, 0.9])
    unit = t_interval(values, 0.9, (0.0, 1.0))
    wide = t_interval(2 * values - 1, 0.9, (-1.0, 1.0))
    np.testing.assert_allclose([2 * v - 1 for v in unit], wide, atol=1e-12)
