"""Seed groups on the command line (analyses.cka, analyses.probe, analyses.report) end to end on
tiny checkpoints, checked against CKA and accuracies computed directly, and every bad input."""
import contextlib
import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from analyses import cka, probe, report
from analyses import extract as extract_cli
from analyses.activations import InputSelection, activations_of, prepare
from repsim import plot
from repsim.cka import linear_cka
from repsim.extract import extract
from repsim.stats import BiasWarning
from training import data as datasets
from training.checkpoint import atomic_torch_save, load_checkpoint, read_checkpoint

N = 100  # test inputs of every comparison


def _perturbed(source, out, scale, seed):
    """A copy of checkpoint ``source`` whose weights and biases carry Gaussian noise of
    ``scale`` times each tensor's standard deviation: another network of the architecture,
    without training one."""
    ckpt = read_checkpoint(source)
    generator = torch.Generator().manual_seed(seed)
    for name, w in ckpt["state_dict"].items():
        if name.endswith((".weight", ".bias")):
            w += scale * w.std() * torch.randn(w.shape, generator=generator)
    ckpt["seed"] = seed
    atomic_torch_save(ckpt, out)
    return str(out)


@pytest.fixture(scope="module")
def nets(tiny_checkpoints, tmp_path_factory):
    """The reference's two seeds ("a", "b": trained) and two groups of two: "near" (each a
    reference seed with a little noise) and "far" (with much noise); "cache": a shared cache."""
    folder = tmp_path_factory.mktemp("seeds")
    a, b = (str(tiny_checkpoints[k]) for k in "ab")
    found = {"a": a, "b": b, "cache": str(folder / "cache")}
    for i, (name, source, scale) in enumerate([("n0", a, 0.1), ("n1", b, 0.1),
                                               ("f0", a, 0.8), ("f1", b, 0.8)]):
        found[name] = _perturbed(source, folder / f"{name}.pt", scale, seed=10 + i)
    return found


def _cka(nets, out, *argv):
    cka.main([*argv, "--n", str(N), "--out", str(out), "--cache", nets["cache"]])


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def flattened(nets, compared):
    """{network: {layer: (N, p) activations}}, read from the cache the run filled."""
    found = {}
    for key in ("a", "b", "n0", "n1", "f0", "f1"):
        with activations_of(nets[key], "test", n=N, cache=nets["cache"], progress=False) as f:
            found[key] = {layer: f.read(layer, "flatten") for layer in f.layers}
    return found


@pytest.fixture(scope="module")
def compared(nets, tmp_path_factory):
    """The seed-group run: --a a b --b near=n0,n1 far=f0,f1; its folder and printed output."""
    out = tmp_path_factory.mktemp("run") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _cka(nets, out, "--a", nets["a"], nets["b"], "--b", f"near={nets['n0']},{nets['n1']}",
             f"far={nets['f0']},{nets['f1']}")
    return out, printed.getvalue()


def test_seed_groups_write_heatmaps_of_first_seeds_and_the_comparison(compared):
    out, _ = compared
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        *(f"a__vs__{stem}.{suffix}" for stem in ("n0", "f0", "b")
          for suffix in ("png", "csv", "json")),
        "layer_matched.png", "layer_matched.csv", "tests.csv", "args.json"}
    args = json.loads((out / "args.json").read_text())
    assert args["b"][0].startswith("near=") and len(args["a"]) == 2


def test_group_means_and_ceiling_agree_with_cka_computed_directly(compared, flattened):
    out, _ = compared
    rows = _rows(out / "layer_matched.csv")
    assert [(r["method"], r["layer"]) for r in rows][:2] == [("near", "layers.stem"),
                                                            ("near", "layers.s1b1")]
    for row in rows:
        members = {"near": ("n0", "n1"), "far": ("f0", "f1")}[row["method"]]
        layer = {key: acts[row["layer"]] for key, acts in flattened.items()}
        pairs = [linear_cka(layer[r], layer[m]) for r in "ab" for m in members]
        assert float(row["mean"]) == pytest.approx(np.mean(pairs), abs=1e-9)
        assert float(row["ceiling_mean"]) == pytest.approx(linear_cka(layer["a"], layer["b"]),
                                                           abs=1e-9)
        assert float(row["low"]) <= float(row["mean"]) <= float(row["high"])
        assert row["seeds"] == "2"
        for test in ("ceiling", "far" if row["method"] == "near" else "near"):
            if f"p_vs_{test}" in row:
                assert float(row[f"p_vs_{test}"]) <= float(row[f"p_adjusted_vs_{test}"]) <= 1
    # a little noise keeps a network closer to its source than much noise does
    means = {(r["method"], r["layer"]): float(r["mean"]) for r in rows}
    assert means["near", "layers.s3b1"] > means["far", "layers.s3b1"]


def test_every_test_and_layer_has_a_printed_verdict(compared):
    out, printed = compared
    rows = _rows(out / "tests.csv")
    assert {r["question"] for r in rows} == {"near vs ceiling", "far vs ceiling", "near vs far"}
    assert len(rows) == 3 * 4
    for row in rows:
        assert row["verdict"] in printed and row["verdict"].startswith(row["layer"] + ":")
        assert "seed-label permutation test" in row["test"] and "Holm" in row["verdict"]
        # 2 + 2 seeds: 6 relabellings, so no p can go below 1/6, and verdicts say so
        assert float(row["smallest_p"]) == pytest.approx(1 / 6)
        assert "p cannot go below 0.17" in row["verdict"]
    assert "ceiling (1 pair)" in printed and "Student-t over 2 seeds" in printed
    assert "(one pair: no interval)" in printed  # one pair has no spread to estimate


def test_one_reference_network_says_the_ceiling_is_missing_and_tests_the_rest(nets, tmp_path,
                                                                              capsys):
    _cka(nets, tmp_path / "out", "--a", nets["a"], "--b", f"near={nets['n0']},{nets['n1']}",
         f"far={nets['f0']},{nets['f1']}")
    assert cka.NO_CEILING in capsys.readouterr().out
    rows = _rows(tmp_path / "out" / "layer_matched.csv")
    assert not any(key.startswith("ceiling") for key in rows[0])
    assert {r["question"] for r in _rows(tmp_path / "out" / "tests.csv")} == {"near vs far"}


def test_one_seed_per_method_is_not_testable_without_the_input_flag(nets, tmp_path, capsys):
    """Seed variation cannot be estimated from one network per method: the pair of methods
    gets no p (never counted significant) and says how to ask for the input-only test."""
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BiasWarning)
        _cka(nets, out, "--a", nets["a"], "--b", nets["n0"], nets["f0"], "--intervals")
    rows = _rows(out / "tests.csv")
    assert rows and all(r["p"] == "nan" and r["p_adjusted"] == "nan" for r in rows)
    assert all("not testable with one seed per method" in r["verdict"] for r in rows)
    assert "--input-test" in rows[0]["test"]
    assert "not testable with one seed per method" in capsys.readouterr().out


def test_intervals_with_one_network_each_fall_back_to_inputs(nets, tmp_path):
    out = tmp_path / "out"
    with warnings.catch_warnings():  # BiasWarning: biased CKA of flattened layers at n = 100
        warnings.simplefilter("ignore", BiasWarning)
        _cka(nets, out, "--a", nets["a"], "--b", nets["n0"], nets["f0"], "--intervals",
             "--level", "0.9", "--input-test")
    record = json.loads((out / "a__vs__n0.json").read_text())
    matrix, low, high = (np.array(record[k], dtype=float) for k in ("matrix", "low", "high"))
    assert low.shape == matrix.shape and np.all(low < high)
    assert record["uncertainty"]["level"] == 0.9
    (test,) = {r["test"] for r in _rows(out / "tests.csv")}
    assert "z-test over inputs" in test and "seed variation not included" in test
    rows = _rows(out / "layer_matched.csv")
    assert {r["method"] for r in rows} == {"bp (n0.pt)", "bp (f0.pt)"}


def test_permutation_baseline_reaches_the_heatmaps(nets, tmp_path, monkeypatch, capsys):
    drawn = []
    real = plot.cka_heatmap
    monkeypatch.setattr(plot, "cka_heatmap",
                        lambda matrix, *args, **kw: drawn.append((matrix, kw)) or
                        real(matrix, *args, **kw))
    out = tmp_path / "out"
    _cka(nets, out, "--a", nets["a"], "--b", nets["f0"], "--n-perm", "100", "--calibrated",
         "--grey-insignificant", "--layers", "layers.s1b1", "layers.s3b1")
    record = json.loads((out / "a__vs__f0.json").read_text())
    (matrix, kw), = drawn
    assert np.allclose(matrix, np.array(record["calibrated"], dtype=float))
    assert np.array_equal(kw["mask"], np.array(record["p_adjusted"], dtype=float) > 0.05)
    above = int((np.array(record["p_adjusted"], dtype=float) <= 0.05).sum())
    assert f"{above} of 4 cells above the shuffled-input baseline" in capsys.readouterr().out


# --- bad input: a clear one-line error, before any work where it can be ---------------------

def _error(capsys, main, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.rstrip("\n").splitlines()[-1]


@pytest.mark.parametrize("entry,message", [
    ("near=", "has an empty name or file name"),
    ("=a.pt", "has an empty name or file name"),
    ("near=a.pt,,b.pt", "has an empty name or file name"),
    ("near=a.pt,a.pt", "lists ['a.pt'] more than once"),
])
@pytest.mark.parametrize("command", ["cka", "probe", "report"])
def test_bad_group_entries_are_usage_errors(command, entry, message, tmp_path, capsys):
    main, argv = {"cka": (cka.main, ["--a", "r.pt", "--b", entry]),
                  "probe": (probe.main, ["--ckpt", entry]),
                  "report": (report.main, ["--ckpt", "r.pt", entry])}[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err and message in err
    assert "NAME=FILE,FILE,..." in err and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv,message", [
    (["--b", "x=p.pt,q.pt", "x=s.pt"], "--b names the group(s) ['x'] more than once"),
    (["--b", "x=p.pt", "--calibrated"], "--calibrated needs the permutation baseline: add "
                                        "--n-perm"),
    (["--b", "x=p.pt", "--grey-insignificant"], "--grey-insignificant needs the permutation"),
    (["--b", "x=p.pt,q.pt", "--batch-size", "50"], "minibatch estimator, which has no "
                                                   "intervals"),
    (["--b", "p.pt", "--max-memory", "4", "--n-perm", "10"], "minibatch estimator"),
    (["--b", "x=r.pt,q.pt"], "['r.pt'] given more than once"),
])
def test_inconsistent_cka_settings_are_refused_before_any_work(argv, message, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert message in _error(capsys, cka.main, ["--a", "r.pt", *argv, "--cache", str(cache)])
    assert not cache.exists()


def test_probe_seed_groups_refuse_a_network_in_two_places(tmp_path, capsys):
    message = _error(capsys, probe.main, ["--ckpt", "x=p.pt,q.pt", "p.pt",
                                          "--cache", str(tmp_path / "cache")])
    assert "['p.pt'] given more than once" in message and not (tmp_path / "cache").exists()


def test_settings_from_python_take_one_reference_file_and_refuse_empty_lists():
    assert cka.Settings(a="r.pt", b=("p.pt",)).a == ("r.pt",)
    with pytest.raises(ValueError, match="--a needs at least one reference network"):
        cka.Settings(a=(), b=("p.pt",))
    with pytest.raises(ValueError, match="--b needs a non-empty list of entries, got 'p.pt'"):
        cka.Settings(a="r.pt", b="p.pt")


@pytest.mark.parametrize("argv,option,value", [
    (["--a", "r.pt", "--b", "p.pt"], "--level", "1"),
    (["--a", "r.pt", "--b", "p.pt"], "--level", "0"),
    (["--a", "r.pt", "--b", "p.pt"], "--n-perm", "-1"),
    (["--ckpt", "p.pt"], "--level", "1.5"),
])
def test_bad_levels_and_shuffle_counts_are_usage_errors(argv, option, value, capsys):
    main = cka.main if "--a" in argv else probe.main
    with pytest.raises(SystemExit):
        main([*argv, option, value])
    assert f"argument {option}: must be" in capsys.readouterr().err


def test_too_few_shuffles_to_grey_any_cell_is_refused(nets, tmp_path, capsys):
    message = _error(capsys, cka.main, ["--a", nets["a"], "--b", nets["b"], "--n-perm", "100",
                                        "--grey-insignificant", "--n", str(N),
                                        "--cache", nets["cache"], "--out", str(tmp_path / "o")])
    assert "a map of 16 cells with --n-perm 100" in message and "--n-perm 319 or more" in message


def test_groups_of_different_architectures_are_refused(nets, tmp_path, capsys):
    short = tmp_path / "short.h5"  # the same network with fewer layers: another architecture
    extract_cli.main(["--ckpt", nets["f1"], "--n", str(N), "--layers", "layers.stem",
                      "layers.s1b1", "--out", str(short)])
    message = _error(capsys, cka.main, ["--a", nets["a"], nets["b"], "--b",
                                        f"x={nets['f0']},{short}", "--n", str(N),
                                        "--cache", nets["cache"], "--out", str(tmp_path / "o")])
    assert "a layer-matched comparison needs networks of one architecture" in message
    assert not (tmp_path / "o").exists()


def test_mixed_datasets_are_refused(nets, tmp_path, capsys):
    job = prepare(nets["f1"], InputSelection("test", N, 0))
    other = extract(load_checkpoint(job.ckpt)[0], datasets.eval_batches(job.inputs, 50),
                    job.layers, tmp_path / "other.h5", reductions=("flatten", "gap"),
                    meta={**job.provenance(), "dataset": "fashion-mnist"}, progress=False)
    message = _error(capsys, cka.main, ["--a", nets["a"], nets["b"], "--b",
                                        f"x={nets['f0']},{other}", "--n", str(N),
                                        "--cache", nets["cache"], "--out", str(tmp_path / "o")])
    assert "different datasets ('digits' vs 'fashion-mnist')" in message


def test_a_group_named_like_the_reference_is_refused(nets, tmp_path, capsys):
    message = _error(capsys, cka.main, ["--a", nets["a"], "--b",
                                        f"bp (a.pt)={nets['f0']},{nets['f1']}", "--n", str(N),
                                        "--cache", nets["cache"], "--out", str(tmp_path / "o")])
    assert "named 'bp (a.pt)' like the reference" in message


def test_report_needs_something_to_compare_with_the_reference(capsys):
    assert "at least two checkpoints" in _error(capsys, report.main,
                                                ["--ckpt", "bp=r.pt,s.pt"])


def test_probe_group_of_different_layers_is_refused():
    from repsim.probe import ProbeRow, ProbeSettings, ProbeTable

    def table(*layers):
        return ProbeTable(tuple(ProbeRow(layer=name, depth=i, rel_depth=i, dim=4, probe_dim=4,
                                         C=1.0, train_acc=1.0, test_acc=0.9, test_low=0.8,
                                         test_high=0.95, chance=0.1, n_train=10, n_test=10,
                                         solver="sklearn") for i, name in enumerate(layers)),
                          "gap", ProbeSettings())

    with pytest.raises(ValueError, match="the seeds of one group must share one architecture"):
        probe.group_curve("x", [table("stem", "s1b1"), table("stem")], 0.95)


# --- the report over seed groups ----------------------------------------------------------

def accuracy_interval(seeds):
    """The 95 % Student-t interval of the mean accuracy over seeds on the logit scale, mapped
    back; where a seed is at 0 or 1, the plain one cut to [0, 1]."""
    seeds = np.asarray(seeds)
    t = stats.t.ppf(0.975, len(seeds) - 1) / np.sqrt(len(seeds))
    if np.all((seeds > 0) & (seeds < 1)):
        z = np.log(seeds / (1 - seeds))
        return tuple(1 / (1 + np.exp(-(z.mean() + s * t * z.std(ddof=1)))) for s in (-1, 1))
    return tuple(np.clip(seeds.mean() + s * t * seeds.std(ddof=1), 0, 1) for s in (-1, 1))


def test_report_over_seed_groups_states_which_differences_are_significant(nets, tmp_path):
    out = tmp_path / "report"
    report.main(["--ckpt", f"bp={nets['a']},{nets['b']}", f"near={nets['n0']},{nets['n1']}",
                 "--n", str(N), "--n-train", "200", "--n-test", str(N), "--cache", nets["cache"],
                 "--out", str(out)])
    text = (out / "report.md").read_text()
    assert "### Layer-matched CKA over seeds" in text and "(cka/layer_matched.png)" in text
    verdicts = _rows(out / "cka" / "tests.csv")
    significant = [r for r in verdicts if float(r["p_adjusted"]) <= 0.05]
    assert f"Significant (p ≤ 0.05): {len(significant)} of {len(verdicts)} layer tests" in text
    assert all(f"* {r['verdict']}" in text for r in significant)
    for question in {r["question"] for r in verdicts if r not in significant}:
        assert f"* {question}: not significant at " in text
    assert "![a vs n0](cka/a__vs__n0.png)" in text and "![a vs b](cka/a__vs__b.png)" in text
    # probes: each group's mean and Student-t interval over its two seeds, from probe.csv
    accuracy = {}
    for row in _rows(out / "probe" / "probe.csv"):
        accuracy.setdefault((row["group"], row["layer"]), []).append(float(row["test_acc"]))
        k, n = round(float(row["test_acc"]) * N), N
        wilson = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (float(row["test_low"]), float(row["test_high"])) == pytest.approx(
            (wilson.low, wilson.high), abs=1e-12)
    for row in _rows(out / "probe" / "probe_groups.csv"):
        seeds = accuracy[row["group"], row["layer"]]
        assert float(row["mean"]) == pytest.approx(np.mean(seeds), abs=1e-9)
        assert (float(row["low"]), float(row["high"])) == pytest.approx(
            accuracy_interval(seeds), abs=1e-9)
    assert "near (2 seeds)" in text and "| layer | bp (2 seeds) |" in text
