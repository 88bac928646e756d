"""analyses.reproduce: the command end to end on the tiny preset, its verdict rules on
constructed inputs, its presets against the paper's settings, and its error paths."""

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from analyses import reproduce, verdicts
from analyses.reproduction_doc import TITLES
from analyses.verdicts import NOT_REPRODUCED, REPRODUCED, UNCLEAR
from repsim.stats.groups import GroupSimilarity, LayerTest, SeedGroups
from repsim.stats.tests import holm
from training.checkpoint import checkpoint_meta
from training.local import paper_config
from training.models import build_model
from training.train import method_config

VERDICTS = {REPRODUCED, NOT_REPRODUCED, UNCLEAR}
TINY = ["--preset", "tiny", "--threads", "1", "--no-progress"]  # tiny nets: 1 thread


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset run once, published: (out folder, docs folder)."""
    folder = tmp_path_factory.mktemp("reproduce")
    out, docs = folder / "out", folder / "docs"
    reproduce.main([*TINY, "--out", str(out), "--publish", str(docs)])
    return out, docs


def links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", text)


def test_tiny_run_writes_every_section_with_a_verdict(tiny_run):
    out, _ = tiny_run
    text = (out / "reproduction.md").read_text()
    for title in TITLES.values():
        assert f"## {list(TITLES.values()).index(title) + 1}. {title}" in text
    for section in ("## Further analyses: resnet8", "## Determinism", "Aux nets against linear",
                    "Gradient alignment", "Information along depth", "Layer geometry"):
        assert section in text
    assert text.count("**Verdict: ") == len(TITLES)
    for link in links(text):
        assert (out / link).is_file(), link
    found = json.loads((out / "reproduction.json").read_text())
    claims = found["claims"]["resnet8"]
    assert set(claims) == set(TITLES)
    assert all(c["verdict"] in VERDICTS for c in claims.values())
    assert found["run"]["determinism"]["identical"], found["run"]["determinism"]
    assert "bitwise identical" in text


def test_tiny_run_trains_every_method_on_the_same_images_from_distinct_seeds(tiny_run):
    out, _ = tiny_run
    metas = {p.stem: checkpoint_meta(p) for p in (out / "runs").glob("*.pt")}
    assert sorted(metas) == sorted(f"resnet8_{m}_s{s}" for m in verdicts.METHODS
                                   for s in range(2))
    assert len({m["seed"] for m in metas.values()}) == len(metas)
    assert {m["config"]["subset_seed"] for m in metas.values()} == {0}
    # the accuracy table is the checkpoints' own test accuracy, read apart
    claims = json.loads((out / "reproduction.json").read_text())["claims"]["resnet8"]
    for method in verdicts.METHODS:
        expected = [metas[f"resnet8_{method}_s{s}"]["metrics"]["test_acc"] for s in range(2)]
        assert claims["accuracy"]["test_acc"][method] == expected


def test_publish_copies_the_document_with_every_figure(tiny_run):
    out, docs = tiny_run
    text = (docs / "reproduction.md").read_text()
    assert text == (out / "reproduction.md").read_text().replace("](analyses/",
                                                                  "](reproduction/")
    figures = [link for link in links(text) if link.endswith(".png")]
    assert figures and all((docs / link).is_file() for link in figures)


def test_resume_reuses_the_runs_and_reproduces_the_numbers(tiny_run, capsys):
    out, _ = tiny_run
    before = json.loads((out / "reproduction.json").read_text())["claims"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.pt")}
    reproduce.main([*TINY, "--out", str(out), "--resume"])
    assert "already completed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    after = json.loads((out / "reproduction.json").read_text())["claims"]
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)  # NaN too


# ------------------------------------------------------------------ verdict rules


@pytest.mark.parametrize("low, high, verdict", [
    (0.5, 0.7, REPRODUCED), (0.4, 0.7, REPRODUCED), (0.1, 0.3, NOT_REPRODUCED),
    (0.3, 0.5, UNCLEAR), (math.nan, math.nan, UNCLEAR)])
def test_threshold_verdict(low, high, verdict):
    assert verdicts.threshold_verdict(low, high, 0.4) == verdict


def test_accuracy_and_memory_verdicts_reach_each_outcome():
    assert verdicts.accuracy_verdict(-0.005, 0.01) == REPRODUCED
    assert verdicts.accuracy_verdict(-0.05, -0.02) == NOT_REPRODUCED
    assert verdicts.accuracy_verdict(-0.03, 0.01) == UNCLEAR
    assert verdicts.memory_verdict(0.35, 0.45) == REPRODUCED
    assert verdicts.memory_verdict(0.1, 0.2) == NOT_REPRODUCED
    assert verdicts.memory_verdict(0.25, 0.35) == UNCLEAR


@pytest.mark.parametrize("statistic, p, verdict", [
    ([0.1, 0.2, -0.1], [0.01, 0.5, 0.5], REPRODUCED),
    ([0.1, 0.2, -0.1], [0.01, 0.5, 0.04], NOT_REPRODUCED),   # one layer against the claim
    ([0.1, 0.2, -0.1], [0.2, 0.5, 0.06], UNCLEAR),
    ([0.1, 0.2], [math.nan, math.nan], UNCLEAR)])
def test_layer_verdict(statistic, p, verdict):
    assert verdicts.layer_verdict(np.array(statistic), np.array(p)) == verdict


def test_all_of():
    assert verdicts.all_of([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert verdicts.all_of([REPRODUCED, UNCLEAR]) == UNCLEAR
    assert verdicts.all_of([REPRODUCED, NOT_REPRODUCED, UNCLEAR]) == NOT_REPRODUCED
    assert verdicts.all_of([]) == UNCLEAR


def layer_test(statistic, p_adjusted, second="dgl"):
    statistic, p = np.array(statistic, dtype=float), np.array(p_adjusted, dtype=float)
    return LayerTest(question=f"auglocal vs {second}", first="auglocal", second=second,
                     layers=tuple(f"l{i}" for i in range(len(p))), statistic=statistic, p=p,
                     p_adjusted=p, test="constructed", smallest_p=0.0)


def test_cka_verdict_needs_every_baseline():
    ahead = layer_test([0.1, 0.1], [0.01, 0.2])
    assert verdicts.cka_verdict({"dgl": ahead}) == REPRODUCED
    assert verdicts.cka_verdict({"dgl": ahead, "infopro": layer_test([-0.1, 0], [0.01, 1])}) \
        == NOT_REPRODUCED
    assert verdicts.cka_verdict({"dgl": ahead, "infopro": layer_test([0.1, 0], [0.3, 1])}) \
        == UNCLEAR


def test_welch_family_adjusts_every_layer_of_every_pair_as_one_family():
    rng = np.random.default_rng(0)
    values = {m: rng.normal(size=(3, 4)) for m in ("a", "b", "c")}
    family = verdicts.welch_family(values, [("a", "b"), ("a", "c")], list("wxyz"), "toy")
    raw = np.array([[scipy_stats.ttest_ind(values["a"][:, i], values[m][:, i],
                                           equal_var=False).pvalue for i in range(4)]
                    for m in ("b", "c")])
    adjusted = np.stack([family["a", "b"].p_adjusted, family["a", "c"].p_adjusted])
    m = raw.size  # Holm by its definition: sorted p times (m − rank), running maximum
    order = np.argsort(raw, axis=None)
    expected = np.minimum(np.maximum.accumulate(raw.ravel()[order] * (m - np.arange(m))), 1)
    assert adjusted.ravel()[order] == pytest.approx(expected)
    assert family["a", "c"].statistic == pytest.approx(values["a"].mean(0) - values["c"].mean(0))


def null_claim_values(rng, methods, seeds, layers, noise):
    """Seed values (seeds, L) per method under "the methods do not differ": a shared layer
    curve, a per-reference-seed effect common to all methods (R = 3 reference seeds, averaged
    as :func:`verdicts.seed_values` averages), and per-network noise correlated over layers."""
    curve = np.linspace(0.9, 0.4, layers)
    reference = rng.normal(scale=0.02, size=(3, 1, layers))
    out = {}
    for m in methods:
        network = noise(rng, (1, seeds, 1)) * 0.03 + noise(rng, (1, seeds, layers)) * 0.01
        pair = rng.normal(scale=0.005, size=(3, seeds, layers))
        out[m] = (curve + reference + network + pair).mean(axis=0)
    return out


NOISES = {"normal": lambda rng, shape: rng.normal(size=shape),
          "skewed": lambda rng, shape: rng.exponential(size=shape) - 1}


@pytest.mark.parametrize("noise", NOISES)
def test_claim_verdicts_are_wrong_at_most_alpha_when_the_methods_do_not_differ(noise):
    """3 seeds per method, 11 middle and deep layers (the cpu preset's ResNet-32): the CKA rule
    and the separability rule, run on 600 simulated null groups each, decide (anything but
    "not distinguishable") at most 5 % of the time, within 2.5 Monte-Carlo standard errors."""
    rng = np.random.default_rng(1)
    methods, layers, draws = verdicts.METHODS, [f"l{i}" for i in range(11)], 600
    decided = {"cka": 0, "separability": 0}
    for _ in range(draws):
        values = null_claim_values(rng, methods, 3, len(layers), NOISES[noise])
        cka = verdicts.ahead_tests(values, layers, "CKA")
        decided["cka"] += verdicts.cka_verdict(cka) != UNCLEAR
        decided["separability"] += verdicts.separability_verdict(
            *verdicts.separability_tests(values, layers)) != UNCLEAR
    slack = 2.5 * math.sqrt(0.05 * 0.95 / draws)
    assert decided["cka"] / draws <= 0.05 + slack
    assert decided["separability"] / draws <= 0.05 + slack


def test_the_cka_rule_decides_at_three_seeds_when_auglocal_is_clearly_ahead():
    """The rule is not "not distinguishable" by construction: AugLocal 0.3 above every baseline
    at 11 layers (about 11 standard errors of a difference of 3-seed means; 33 tests under
    Holm need p ≤ 0.0015) is reproduced in most draws, and 0.3 below never."""
    rng = np.random.default_rng(2)
    layers = [f"l{i}" for i in range(11)]
    outcomes = {+0.3: [], -0.3: []}
    for shift, found in outcomes.items():
        for _ in range(100):
            values = null_claim_values(rng, verdicts.METHODS, 3, 11, NOISES["normal"])
            values["auglocal"] = values["auglocal"] + shift
            found.append(verdicts.cka_verdict(verdicts.ahead_tests(values, layers, "CKA")))
    assert outcomes[+0.3].count(REPRODUCED) >= 80
    assert REPRODUCED not in outcomes[-0.3] and outcomes[-0.3].count(NOT_REPRODUCED) >= 80


@pytest.mark.parametrize("sd_b", [0.005, 0.02])
def test_welch_interval_covers_the_difference_at_three_seeds(sd_b):
    """The accuracy rule's interval: 95 % Welch interval of a difference of means, 3 seeds
    against 3 with equal or unequal spread, covers the true difference in ≥ 93 % of 1,000
    draws."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(1000):
        a, b = rng.normal(0.80, 0.01, size=3), rng.normal(0.81, sd_b, size=3)
        d = verdicts.welch(a, b)
        covered += d["low"] <= -0.01 <= d["high"]
    assert covered / 1000 >= 0.93


def test_separability_verdict_needs_both_parts():
    greedy = {"dgl": layer_test([0.05, 0.02], [0.01, 0.3])}
    assert verdicts.separability_verdict(greedy, {"dgl": layer_test([0.03], [0.02])}) \
        == REPRODUCED
    assert verdicts.separability_verdict(greedy, {"dgl": layer_test([0.03], [0.2])}) \
        == UNCLEAR
    assert verdicts.separability_verdict(greedy, {"dgl": layer_test([-0.03], [0.02])}) \
        == NOT_REPRODUCED


@pytest.mark.parametrize("layers", [1, 4, 16, 55])
def test_seeds_needed_is_the_first_seed_count_whose_smallest_p_passes_holm(layers):
    j = verdicts.seeds_needed(layers)
    assert layers * 2 / math.comb(2 * j, j) <= 0.05
    assert j == 2 or layers * 2 / math.comb(2 * j - 2, j - 1) > 0.05


def test_welch_agrees_with_the_textbook_formula():
    a, b = np.array([0.81, 0.83, 0.80, 0.84]), np.array([0.78, 0.80, 0.79])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    result = verdicts.welch(a, b)
    diff = a.mean() - b.mean()
    assert result["difference"] == pytest.approx(diff)
    assert (result["low"], result["high"]) == pytest.approx((diff - half, diff + half))
    assert result["p"] == pytest.approx(2 * scipy_stats.t.sf(diff / math.sqrt(va + vb), df))


def test_welch_per_layer_is_welch_of_each_column_and_nan_where_no_seed_varies():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 4))
    a[:, 2], b[:, 2] = 0.5, 0.7  # neither group varies: no test, but a difference
    layers = verdicts.welch(a, b)
    for i in (0, 1, 3):
        column = verdicts.welch(a[:, i], b[:, i])
        assert [layers[k][i] for k in column] == pytest.approx(list(column.values()))
    assert layers["difference"][2] == pytest.approx(-0.2)
    assert np.isnan([layers[k][2] for k in ("low", "high", "p")]).all()


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_presets_train_with_the_papers_method_settings(preset, tmp_path):
    settings = reproduce.Settings(preset=preset, out=str(tmp_path))
    configs = reproduce.run_configs(settings, tmp_path)
    for arch, methods in configs.items():
        with torch.device("meta"):
            layers = len(build_model(arch).layer_names)
        for method, group in methods.items():
            assert len(group) == reproduce.PRESETS[preset]["seeds"]
            for config in group:
                assert method_config(config, layers) == paper_config(method, arch)
        seeds = [c.seed for group in methods.values() for c in group]
        assert len(set(seeds)) == len(seeds)
        assert len({(c.subset, c.subset_seed) for g in methods.values() for c in g}) == 1
        # bf16 + channels-last where the hardware has bf16 units, float32 elsewhere
        assert {c.amp for g in methods.values() for c in g} == {"auto"}


def test_the_cpu_preset_has_six_seeds_per_method():
    """Six seeds: the exact seed-label tests can reach p = 2 / C(12, 6) = 0.002."""
    assert reproduce.PRESETS["cpu"]["seeds"] >= 6


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--preset", "tiny", "--seeds", "1"], "--seeds 1: seed groups need at least 2"),
    (["--preset", "tiny", "--seeds", "0"], "--seeds: must be a whole number >= 1"),
    (["--preset", "tiny", "--resume", "--overwrite"], "contradict each other"),
])
def test_bad_settings_are_refused(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_unknown_preset_in_python_is_refused():
    with pytest.raises(ValueError, match="--preset 'huge' is not a preset; choose one of"):
        reproduce.Settings(preset="huge", out="x")


@pytest.mark.parametrize("setup, flags, message", [
    ("foreign", ["--overwrite"], "not a reproduction's"),
    ("foreign", ["--resume"], "not a reproduction's"),
    ("earlier", [], "pass --resume to continue it"),
    ("earlier_cpu", ["--resume"], "a reproduction of preset cpu, not tiny"),
    ("extra", ["--overwrite"], "a reproduction did not write (notes.txt)"),
    ("file", [], "is a file"),
])
def test_bad_out_folders_are_refused_before_any_work(setup, flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("x")
    else:
        out.mkdir()
        if setup in ("foreign", "extra"):
            (out / "notes.txt").write_text("mine")
        if setup != "foreign":
            preset = "cpu" if setup == "earlier_cpu" else "tiny"
            (out / reproduce.MARKER).write_text(json.dumps({"preset": preset}))
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([*TINY, "--out", str(out), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (out.is_dir() and (out / "runs").exists())


def test_overwrite_clears_an_earlier_reproduction(tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "old.pt").write_text("x")
    (out / "reproduction.md").write_text("old")
    (out / reproduce.MARKER).write_text(json.dumps({"preset": "tiny"}))
    reproduce.prepare_out(reproduce.Settings(preset="tiny", out=str(out), overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == [reproduce.MARKER, "runs"]
    assert not any((out / "runs").iterdir())


# ------------------------------------------------------------------ primary endpoints, power


def welch_rejections(rng, delta, sd_a, n_a, sd_b, n_b, alpha, draws):
    """Share of ``draws`` simulated normal seed groups (true difference ``delta``) that
    Welch's two-sided test rejects at ``alpha``."""
    a = rng.normal(delta, sd_a, size=(draws, n_a))
    b = rng.normal(0.0, sd_b, size=(draws, n_b))
    p = scipy_stats.ttest_ind(a, b, equal_var=False, axis=1).pvalue
    return float(np.mean(p <= alpha))


@pytest.mark.parametrize("sd_a, n_a, sd_b, n_b, alpha", [
    (0.02, 6, 0.02, 6, 0.05 / 3),   # the cpu preset's CKA family
    (0.01, 6, 0.03, 6, 0.05 / 6),   # unequal spread, the separability family
    (0.02, 3, 0.02, 3, 0.05),       # few seeds, where the t tails matter most
    (0.01, 4, 0.02, 8, 0.05),
])
def test_the_detectable_difference_is_detected_with_80_percent_power(sd_a, n_a, sd_b, n_b,
                                                                     alpha):
    """Monte-Carlo power of Welch's test at the difference :func:`verdicts.min_detectable`
    gives is 0.80 within 3 Monte-Carlo standard errors (4,000 draws), and a 20 % smaller
    difference is detected less often."""
    delta = verdicts.min_detectable(sd_a, n_a, sd_b, n_b, alpha)
    rng = np.random.default_rng(5)
    draws = 4000
    power = welch_rejections(rng, delta, sd_a, n_a, sd_b, n_b, alpha, draws)
    assert abs(power - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / draws)
    assert welch_rejections(rng, 0.8 * delta, sd_a, n_a, sd_b, n_b, alpha, draws) < 0.75


def test_min_detectable_edges():
    assert verdicts.min_detectable(0.0, 6, 0.0, 6) == 0.0
    assert math.isnan(verdicts.min_detectable(0.02, 1, 0.02, 6))
    # more seeds or less spread: a smaller difference is detectable
    assert verdicts.min_detectable(0.02, 12, 0.02, 12) < verdicts.min_detectable(0.02, 6, 0.02, 6)
    assert verdicts.min_detectable(0.01, 6, 0.01, 6) < verdicts.min_detectable(0.02, 6, 0.02, 6)


def seed_groups_of(values):
    """A SeedGroups holding ``values``: method → (R, J, L), reference "bp"."""
    layers = tuple(f"l{i}" for i in range(next(iter(values.values())).shape[2]))
    groups = {m: GroupSimilarity(m, v, v.mean((0, 1)), v.min((0, 1)), v.max((0, 1)), 0.95,
                                 "constructed") for m, v in values.items()}
    return SeedGroups(layers=layers, reference="bp", measure="linear_cka", label="CKA",
                      direction="similarity", groups=groups, ceiling=None, tests=[])


def test_the_deep_endpoint_is_each_seeds_mean_over_reference_seeds_and_deep_layers():
    rng = np.random.default_rng(6)
    values = {m: rng.uniform(size=(3, 4, 5)) for m in ("auglocal", "dgl")}  # R, J, L
    deep = np.array([False, False, True, True, True])
    endpoint = verdicts.deep_endpoint(seed_groups_of(values), deep)
    for m, v in values.items():
        expected = [np.mean([v[r, j, l] for r in range(3) for l in (2, 3, 4)])
                    for j in range(4)]
        assert endpoint[m] == pytest.approx(expected)
    distances = replace(seed_groups_of(values), direction="distance")
    assert verdicts.deep_endpoint(distances, deep)["dgl"] == pytest.approx(-endpoint["dgl"])


def test_the_early_endpoint_is_each_seeds_early_mean_minus_bps():
    rng = np.random.default_rng(7)
    acc = {m: rng.uniform(size=(3, 6)) for m in ("bp", "auglocal", "dgl")}
    early = np.array([True, True, False, False, False, False])
    endpoint = verdicts.early_endpoint(acc, early)
    bp = np.mean([acc["bp"][s, :2].mean() for s in range(3)])
    for m, a in acc.items():
        assert endpoint[m] == pytest.approx([a[s, :2].mean() - bp for s in range(3)])
    assert endpoint["bp"].mean() == pytest.approx(0.0, abs=1e-12)


def null_endpoints(rng, seeds, noise):
    """Primary endpoints (seeds,) per method under "the methods do not differ": the layer
    values of :func:`null_claim_values` averaged over 11 layers."""
    values = null_claim_values(rng, verdicts.METHODS, seeds, 11, NOISES[noise])
    return {m: v.mean(axis=1) for m, v in values.items()}


def primary_verdicts(endpoint):
    cka = verdicts.primary_cka_tests(endpoint)
    greedy, bp_like = verdicts.primary_separability_tests(endpoint)
    return (verdicts.all_of([t.verdict for t in cka.values()]),
            verdicts.all_of([t.verdict for t in [*greedy.values(), *bp_like.values()]]))


@pytest.mark.parametrize("seeds", [3, 6])
@pytest.mark.parametrize("noise", NOISES)
def test_primary_verdicts_are_wrong_at_most_alpha_when_the_methods_do_not_differ(seeds, noise):
    """1,000 simulated null groups: the CKA and separability rules on their primary endpoints
    decide at most 5 % of the time (within 2.5 Monte-Carlo standard errors)."""
    rng = np.random.default_rng(8)
    draws = 1000
    decided = np.array([[v != UNCLEAR for v in primary_verdicts(null_endpoints(rng, seeds,
                                                                               noise))]
                        for _ in range(draws)])
    assert np.all(decided.mean(axis=0) <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / draws))


def test_the_primary_cka_rule_reaches_its_stated_power():
    """AugLocal ahead of every baseline by the detectable difference the rule states (from
    the true spread of the endpoints): each baseline's test decides "reproduced" in about
    80 % of draws or more (Holm's later steps only make it easier)."""
    rng = np.random.default_rng(9)
    sd = 0.03 / math.sqrt(3)  # the per-network noise of null_claim_values, a mean over R = 3
    shift = verdicts.min_detectable(sd, 6, sd, 6, 0.05 / 3)
    found = []
    for _ in range(400):
        endpoint = {m: rng.normal(0.8, sd, size=6) for m in verdicts.METHODS}
        endpoint["auglocal"] = endpoint["auglocal"] + shift
        found.append(verdicts.primary_cka_tests(endpoint)["dgl"].verdict)
    assert found.count(REPRODUCED) / 400 >= 0.8 - 3 * math.sqrt(0.16 / 400)


def test_endpoint_tests_carry_effect_interval_holm_and_power():
    rng = np.random.default_rng(10)
    endpoint = {m: rng.normal(0.8, 0.02, size=6) for m in verdicts.METHODS}
    tests = verdicts.primary_cka_tests(endpoint)
    raw = [verdicts.welch(endpoint["auglocal"], endpoint[b])["p"] for b in verdicts.BASELINES]
    assert [tests[b].p_adjusted for b in verdicts.BASELINES] == pytest.approx(list(holm(
        np.array(raw))))
    for b, t in tests.items():
        assert t.low <= t.difference <= t.high
        assert t.difference == pytest.approx(endpoint["auglocal"].mean() - endpoint[b].mean())
        assert t.alpha_per_test == pytest.approx(0.05 / 3) and t.seeds == (6, 6)
        assert t.detectable == pytest.approx(verdicts.min_detectable(
            endpoint["auglocal"].std(ddof=1), 6, endpoint[b].std(ddof=1), 6, 0.05 / 3))
        assert t.to_dict()["verdict"] == t.verdict and t.to_dict()["seeds"] == [6, 6]


def test_the_document_appendix_quotes_how_the_preset_was_sized():
    text = reproduce.sizing("cpu")
    assert text.startswith("Sizing the cpu preset") and "6 seeds" in text
    assert reproduce.sizing("tiny") is None  # the test's preset: nothing to size
