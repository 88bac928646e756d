"""``python -m analyses.similarity`` end to end on two tiny checkpoints, with the CKA measures
and a toy distance registered for these tests only."""
import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from analyses import extract, similarity
from analyses.activations import activations_of
from repsim import plot
from repsim.measures import MEASURES, PairwiseMeasure, register

LAYERS = ["layers.stem", "layers.s1b1", "layers.s2b1", "layers.s3b1"]


class MeanGap(PairwiseMeasure):
    """Toy distance: |mean(x) − mean(y)|^power over all entries of the two layers."""

    name = "toy_mean_gap"
    label = "mean gap"
    direction = "distance"
    value_range = (0.0, math.inf)
    identical = 0.0

    def __init__(self, *, power: int = 1):
        if isinstance(power, bool) or not isinstance(power, int) or power < 1:
            raise ValueError(f"power must be an integer >= 1, got {power!r}")
        self.power = power

    def settings(self):
        return {"power": self.power}

    def layer(self, x):
        return float(x.mean())

    def pair(self, a, b):
        return abs(a - b) ** self.power


@pytest.fixture
def toy():
    register(MeanGap)
    yield MeanGap
    del MEASURES[MeanGap.name]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One activation cache for the runs of this module: each checkpoint is extracted once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def figures(monkeypatch):
    """{"folder/file name": figure} of every figure the command saves (still writing it)."""
    saved, real = {}, plot.save_figure

    def save(fig, path):
        saved[f"{path.parent.name}/{path.name}"] = fig
        return real(fig, path)

    monkeypatch.setattr(plot, "save_figure", save)
    return saved


def _run(tiny_checkpoints, tmp_path, cache, *extra, b=("b",)):
    out = tmp_path / "out"
    similarity.main(["--a", str(tiny_checkpoints["a"]),
                     "--b", *(str(tiny_checkpoints[k]) for k in b), "--n", "120",
                     "--out", str(out), "--cache", str(cache), *extra])
    return out


def _gap(ckpt, cache):
    """{layer: (120, p) gap activations} of a checkpoint, from the cache the command filled."""
    with activations_of(ckpt, n=120, reductions=("gap",), cache=cache,
                        progress=False) as acts:
        return {layer: acts.read(layer, "gap").astype(np.float64) for layer in LAYERS}


def _cka(x, y):
    """Linear CKA from its feature form (Kornblith et al. 2019, eq. 6), in NumPy."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_writes_a_map_per_measure_and_pair_that_agrees_with_numpy(tiny_checkpoints, tmp_path,
                                                                   cache, toy):
    out = _run(tiny_checkpoints, tmp_path, cache, "--measure", "linear_cka", "toy_mean_gap:power=2",
               b=("b", "a"))
    for folder in ("linear_cka", "toy_mean_gap-power=2"):
        assert {f"a__vs__{m}.{s}" for m in "ab" for s in ("png", "csv", "json")} \
            == {p.name for p in (out / folder).iterdir()}
    acts = {k: _gap(tiny_checkpoints[k], cache) for k in "ab"}
    expected = {
        "linear_cka": lambda x, y: _cka(x, y),
        "toy_mean_gap-power=2": lambda x, y: (x.mean() - y.mean()) ** 2,
    }
    for folder, formula in expected.items():
        for other in "ab":
            record = json.loads((out / folder / f"a__vs__{other}.json").read_text())
            assert record["layers_a"] == record["layers_b"] == LAYERS
            assert (record["n"], record["reduction"]) == (120, "gap")
            want = [[formula(acts["a"][la], acts[other][lb]) for lb in LAYERS] for la in LAYERS]
            np.testing.assert_allclose(record["matrix"], want, rtol=1e-9, atol=1e-12)
            with (out / folder / f"a__vs__{other}.csv").open() as f:
                rows = list(csv.reader(f))
            assert rows[0][1:] == LAYERS and [r[0] for r in rows[1:]] == LAYERS
            np.testing.assert_allclose([[float(v) for v in r[1:]] for r in rows[1:]], want,
                                       rtol=1e-9, atol=1e-12)
    toy_record = json.loads((out / "toy_mean_gap-power=2" / "a__vs__b.json").read_text())
    assert (toy_record["direction"], toy_record["range"], toy_record["power"]) == \
        ("distance", [0.0, None], 2)
    same = json.loads((out / "linear_cka" / "a__vs__a.json").read_text())
    assert np.allclose(np.diag(same["matrix"]), 1.0)
    assert not np.allclose(json.loads((out / "linear_cka" / "a__vs__b.json").read_text())
                           ["matrix"], 1.0)  # two different networks are not identical


def test_figures_take_scale_and_direction_from_each_measure(tiny_checkpoints, tmp_path, cache,
                                                           toy, figures):
    _run(tiny_checkpoints, tmp_path, cache, "--measure", "toy_mean_gap", "linear_cka")
    colour_bars = {folder: figures[f"{folder}/a__vs__b.png"].axes[-1].get_ylabel()
                   for folder in ("linear_cka", "toy_mean_gap")}
    assert colour_bars == {"linear_cka": "linear CKA (similarity, 1 = identical)",
                           "toy_mean_gap": "mean gap (distance, 0 = identical)"}
    [matched] = [fig for key, fig in figures.items() if key.endswith("/layer_matched__b.png")]
    panels = [ax for ax in matched.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["toy_mean_gap", "linear_cka"]
    assert not any(ax.collections for ax in panels)  # no interval bands without --intervals
    assert "distance, lower = more alike" in panels[0].get_ylabel()
    assert "similarity, higher = more alike" in panels[1].get_ylabel()
    assert panels[1].get_ylim()[0] < 0 < 1 < panels[1].get_ylim()[1] < 1.1   # CKA's [0, 1]
    assert panels[0].get_ylim()[0] == 0 and panels[0].get_ylim()[1] < 1e3    # [0, ∞): data


def test_layer_matched_csv_holds_each_measures_diagonal(tiny_checkpoints, tmp_path, cache,
                                                        toy, capsys):
    out = _run(tiny_checkpoints, tmp_path, cache, "--measure", "linear_cka", "toy_mean_gap",
               b=("b", "a"))
    assert {"layer_matched__a.png", "layer_matched__b.png", "layer_matched.csv",
            "args.json"} <= {p.name for p in out.iterdir()}
    with (out / "layer_matched.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * len(LAYERS)
    for row in rows:
        stem = row["model"].split("(")[1].removesuffix(".pt)")
        record = json.loads((out / row["measure"] / f"a__vs__{stem}.json").read_text())
        depth = int(row["depth"])
        assert row["layer"] == LAYERS[depth] and row["direction"] == record["direction"]
        assert float(row["value"]) == pytest.approx(record["matrix"][depth][depth], rel=1e-9)
    assert "same layer of bp (a.pt) and bp (b.pt) (gap, n=120)" in capsys.readouterr().out


def test_settings_and_args_json_keep_the_measures_as_given(tiny_checkpoints, tmp_path, cache):
    settings = similarity.parser().parse_args(["--a", "a.pt", "--b", "b.pt"])
    assert settings == similarity.Settings(a="a.pt", b=("b.pt",))
    assert settings.measure == similarity.DEFAULT_MEASURES
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.out = "elsewhere"
    out = _run(tiny_checkpoints, tmp_path, cache, "--measure",
               "rbf_cka:threshold=0.5,debiased=true", "--layers", "layers.s3b1")
    args = json.loads((out / "args.json").read_text())
    assert list(args) == [f.name for f in dataclasses.fields(similarity.Settings)]
    assert args["measure"] == ["rbf_cka:threshold=0.5,debiased=true"]
    record = json.loads((out / "rbf_cka-threshold=0.5-debiased=true" / "a__vs__b.json")
                        .read_text())
    assert (record["threshold"], record["debiased"], record["layers_a"]) == \
        (0.5, True, ["layers.s3b1"])


@pytest.mark.filterwarnings("ignore::repsim.stats.intervals.BiasWarning")  # 120 inputs: expected
def test_intervals_and_baselines_come_through_the_registry(tiny_checkpoints, tmp_path, cache,
                                                          capsys, toy, figures):
    out = _run(tiny_checkpoints, tmp_path, cache, "--measure", "linear_cka", "procrustes",
               "--intervals", "--level", "0.9", "--n-perm", "9", "--seed", "3")
    for folder in ("linear_cka", "procrustes"):
        record = json.loads((out / folder / "a__vs__b.json").read_text())
        assert record["uncertainty"]["level"] == 0.9
        assert (record["uncertainty"]["n_perm"], record["uncertainty"]["seed"]) == (9, 3)
        for field in ("low", "high", "baseline_mean", "p", "p_adjusted"):
            assert np.shape(record[field]) == (4, 4)
        assert np.all(np.array(record["p"]) >= 1 / 10)  # (1 + shuffles at least as alike)/10
    [matched] = [fig for key, fig in figures.items() if key.endswith("/layer_matched__b.png")]
    assert all(ax.collections for ax in matched.axes if ax.get_visible())  # interval bands
    message = _error(capsys, ["--a", str(tiny_checkpoints["a"]), "--b",
                              str(tiny_checkpoints["b"]), "--measure", "toy_mean_gap",
                              "--n-perm", "9", "--n", "120", "--out", str(tmp_path / "o"),
                              "--cache", str(cache)])
    assert message.startswith("error: --intervals/--n-perm: measure 'toy_mean_gap' cannot "
                              "resample inputs")
    assert not (tmp_path / "o").exists()


def test_the_default_measures_are_registered():
    assert set(similarity.DEFAULT_MEASURES) <= set(MEASURES)


@pytest.mark.parametrize("text,name,params", [
    ("linear_cka", "linear_cka", ()),
    ("linear_cka:debiased=true", "linear_cka", (("debiased", True),)),
    ("rbf_cka: threshold = 0.5 ,debiased=False", "rbf_cka",
     (("threshold", 0.5), ("debiased", False))),
    ("toy_mean_gap:power=3", "toy_mean_gap", (("power", 3),)),
])
def test_measure_specs_parse_to_typed_parameters_and_back(text, name, params, toy):
    spec = similarity.MeasureSpec.parse(text)
    assert (spec.name, spec.params) == (name, params)
    assert [type(v) for _, v in spec.params] == [type(v) for _, v in params]
    assert similarity.MeasureSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("value,message", [
    ("pwca", "'pwca': unknown measure 'pwca'; registered measures: ["),
    ("linear_cka:bogus=1", "measure 'linear_cka' does not take these parameters ['bogus']"),
    ("toy_mean_gap:power=0", "'toy_mean_gap:power=0': power must be an integer >= 1, got 0"),
    ("toy_mean_gap:power=two", "power must be an integer >= 1, got 'two'"),
    ("linear_cka:debiased", "parameter 'debiased' is not KEY=VALUE"),
    ("linear_cka:", "has a ':' but no parameters"),
    ("rbf_cka:threshold=1,threshold=2", "sets ['threshold'] more than once"),
])
def test_bad_measures_are_usage_errors_before_any_work(value, message, toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        similarity.main(["--a", "a.pt", "--b", "b.pt", "--measure", "linear_cka", value,
                         "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "argument --measure: " in err and message in err
    if value == "pwca":
        assert "'linear_cka'" in err and "'toy_mean_gap'" in err  # the known ones are listed
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("option,value,message", [
    ("--level", "1.5", "argument --level: must be"),
    ("--n-perm", "-1", "argument --n-perm: must be a whole number >= 0 (0: no baseline)"),
])
def test_bad_uncertainty_options_are_usage_errors(option, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        similarity.main(["--a", "a.pt", "--b", "b.pt", option, value,
                         "--cache", str(tmp_path / "cache")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err and repr(value) in err
    assert not (tmp_path / "cache").exists()


def _error(capsys, argv):
    """The one-line message of the command refusing ``argv`` with status 2."""
    with pytest.raises(SystemExit) as info:
        similarity.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.rstrip("\n").splitlines()[-1]


def test_a_measure_listed_twice_is_refused_before_any_work(tmp_path, capsys):
    message = _error(capsys, ["--a", "a.pt", "--b", "b.pt", "--measure", "linear_cka",
                              "rbf_cka", "linear_cka", "--cache", str(tmp_path / "cache")])
    assert message == ("error: --measure lists ['linear_cka'] more than once; list each "
                       "measure (with its parameters) once")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("measure", ["linear_cka", (), ("nope",)])
def test_settings_refuse_a_bad_measure_list(measure):
    with pytest.raises(ValueError, match="non-empty list|unknown measure 'nope'"):
        similarity.Settings(a="a.pt", b=("b.pt",), measure=measure)


def test_a_measure_that_refuses_the_comparison_leaves_no_output(tiny_checkpoints, tmp_path,
                                                                cache, capsys):
    message = _error(capsys, ["--a", str(tiny_checkpoints["a"]), "--b",
                              str(tiny_checkpoints["b"]), "--measure", "linear_cka",
                              "rbf_cka:threshold=-1", "--n", "120", "--out",
                              str(tmp_path / "out"), "--cache", str(cache)])
    assert message.startswith("error: threshold must be a positive finite number")
    assert not (tmp_path / "out").exists()


def test_inputs_of_other_rows_and_missing_files_are_refused(tiny_checkpoints, tmp_path, capsys):
    message = _error(capsys, ["--a", str(tmp_path / "nope.pt"), "--b",
                              str(tiny_checkpoints["b"]), "--measure", "linear_cka",
                              "--out", str(tmp_path / "o")])
    assert message.startswith("error:") and "nope.pt does not exist" in message
    files = {}
    for key, seed in (("a", "0"), ("b", "3")):
        files[key] = tmp_path / f"{key}.h5"
        extract.main(["--ckpt", str(tiny_checkpoints[key]), "--out", str(files[key]),
                      "--n", "120", "--reduction", "gap", "--seed", seed])
    message = _error(capsys, ["--a", str(files["a"]), "--b", str(files["b"]),
                              "--measure", "linear_cka", "--out", str(tmp_path / "o")])
    assert message.startswith("error: a and b hold different inputs")
    assert not (tmp_path / "o").exists()


def test_the_report_shows_each_measures_layer_matched_curves(tiny_checkpoints, tmp_path, cache):
    from analyses import report

    out = tmp_path / "report"
    report.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]),
                 "--n", "120", "--n-train", "300", "--n-test", "120", "--out", str(out),
                 "--cache", str(cache)])
    text = (out / "report.md").read_text()
    assert "### The same layers by other measures (gap, n=120)" in text
    assert "![a vs b, several measures](similarity/layer_matched__b.png)" in text
    assert (out / "similarity" / "layer_matched__b.png").exists()
    with (out / "similarity" / "layer_matched.csv").open() as f:
        measures = [row["measure"] for row in csv.DictReader(f)]
    assert list(dict.fromkeys(measures)) == list(report.REPORT_MEASURES)
    assert text.index("### The same layers") < text.index("## Linear-probe")
