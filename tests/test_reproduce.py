"""analyses.reproduce: the command end to end on the tiny preset, its verdict rules on
constructed inputs, its presets against the paper's settings, and its error paths."""

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from analyses import reproduce, verdicts
from analyses.reproduction_doc import TITLES
from analyses.verdicts import NOT_REPRODUCED, REPRODUCED, UNCLEAR
from repsim.stats.groups import LayerTest
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


def test_cka_verdict_reads_only_the_middle_and_deep_layers():
    deep = np.array([False, True, True])
    early_against = layer_test([-0.3, 0.1, 0.1], [0.001, 0.01, 0.2])
    assert verdicts.cka_verdict({"dgl": early_against}, deep) == REPRODUCED
    assert verdicts.cka_verdict({"dgl": early_against,
                                  "infopro": layer_test([0, -0.1, 0], [1, 0.01, 1])},
                                 deep) == NOT_REPRODUCED
    assert verdicts.cka_verdict({"dgl": early_against,
                                  "infopro": layer_test([0, 0.1, 0], [1, 0.3, 1])},
                                 deep) == UNCLEAR


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


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_presets_train_with_the_papers_method_settings(preset, tmp_path):
    settings = reproduce.Settings(preset=preset, out=str(tmp_path))
    configs = reproduce.run_configs(settings, tmp_path)
    for arch, methods in configs.items():
        with torch.device("meta"):
            layers = len(build_model(arch).layer_names)
        for method, group in methods.items():
            assert len(group) == 3
            for config in group:
                assert method_config(config, layers) == paper_config(method, arch)
        seeds = [c.seed for group in methods.values() for c in group]
        assert len(set(seeds)) == len(seeds)
        assert len({(c.subset, c.subset_seed) for g in methods.values() for c in g}) == 1


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
