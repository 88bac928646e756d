"""The command-line analyses end to end on two tiny checkpoints."""
import csv
import json
import re

import numpy as np
import pytest

from analyses import cka as cka_cli
from analyses import extract as extract_cli
from repsim.cka import linear_cka
from repsim.store import ActivationFile


def _extract(ckpt, out, *extra):
    extract_cli.main(["--ckpt", str(ckpt), "--out", str(out), "--n", "120", *extra])
    return out


def test_extract_cli_writes_the_checkpoints_layers(tiny_checkpoints, tmp_path):
    path = _extract(tiny_checkpoints["a"], tmp_path / "a.h5", "--reduction", "gap")
    with ActivationFile(path) as f:
        assert f.layers == ["layers.stem", "layers.s1b1", "layers.s2b1", "layers.s3b1"]
        assert f.reductions == ["gap"] and f.n == 120
        assert f.meta["dataset"] == "digits" and f.meta["split"] == "test"
        assert np.bincount(f.labels).max() - np.bincount(f.labels).min() <= 1


def test_same_n_and_seed_select_the_same_inputs(tiny_checkpoints, tmp_path):
    a = _extract(tiny_checkpoints["a"], tmp_path / "a.h5", "--reduction", "gap")
    b = _extract(tiny_checkpoints["b"], tmp_path / "b.h5", "--reduction", "gap")
    c = _extract(tiny_checkpoints["b"], tmp_path / "c.h5", "--reduction", "gap", "--seed", "1")
    with ActivationFile(a) as fa, ActivationFile(b) as fb, ActivationFile(c) as fc:
        assert np.array_equal(fa.indices, fb.indices)
        assert not np.array_equal(fa.indices, fc.indices)


def test_cka_cli_writes_heatmaps_numbers_and_layer_matched_lines(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    cka_cli.main(["--a", str(tiny_checkpoints["a"]), "--b", str(tiny_checkpoints["b"]),
                  str(tiny_checkpoints["a"]), "--n", "150", "--out", str(out),
                  "--cache", str(tmp_path / "cache")])
    names = {p.name for p in out.iterdir()}
    assert {"a__vs__b.png", "a__vs__b.csv", "a__vs__b.json", "a__vs__a.png",
            "layer_matched.png", "layer_matched.csv", "args.json"} <= names
    record = json.loads((out / "a__vs__b.json").read_text())
    matrix = np.array(record["matrix"])
    assert matrix.shape == (4, 4) and record["n"] == 150
    sha = [record[f"provenance_{side}"]["checkpoint_sha256"] for side in "ab"]
    assert sha[0] != sha[1]
    # independent check of one cell from the cached activations
    cache = sorted((tmp_path / "cache").iterdir())
    with ActivationFile(cache[0]) as fa, ActivationFile(cache[1]) as fb:
        expected = linear_cka(fa.read("layers.s2b1", "flatten"), fb.read("layers.s2b1", "flatten"))
    assert matrix[2, 2] == pytest.approx(expected, abs=1e-9)
    assert not np.allclose(matrix, 1.0)  # two different networks are not identical
    self_map = np.array(json.loads((out / "a__vs__a.json").read_text())["matrix"])
    assert np.allclose(np.diag(self_map), 1.0)
    with (out / "a__vs__b.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == record["layers_b"] and [r[0] for r in rows[1:]] == record["layers_a"]
    assert np.allclose([[float(v) for v in r[1:]] for r in rows[1:]], matrix)


def _minibatch_record(tiny_checkpoints, tmp_path, *flags):
    """Extract both tiny models to .h5 files and run the CKA command on them with ``flags``."""
    a = _extract(tiny_checkpoints["a"], tmp_path / "a.h5")
    b = _extract(tiny_checkpoints["b"], tmp_path / "b.h5")
    out = tmp_path / "out"
    cka_cli.main(["--a", str(a), "--b", str(b), *flags, "--out", str(out)])
    record = json.loads((out / "a__vs__b.json").read_text())
    assert record["estimator"] == "minibatch"
    return a, b, out, record


def test_cka_cli_minibatch_and_h5_inputs(tiny_checkpoints, tmp_path):
    *_, record = _minibatch_record(tiny_checkpoints, tmp_path, "--batch-size", "40")
    assert record["batch_size"] == 40


def test_cka_cli_max_memory_picks_the_minibatch_size(tiny_checkpoints, tmp_path, capsys):
    a, b, out, record = _minibatch_record(tiny_checkpoints, tmp_path, "--max-memory", "4")
    assert 4 <= record["batch_size"] <= 120
    message = _error(capsys, ["--a", str(a), "--b", str(b), "--max-memory", "0.0001",
                              "--out", str(out), "--overwrite"])
    assert message.startswith("error:") and "cannot hold even a batch of 4 rows" in message


def _error(capsys, argv, main=cka_cli.main):
    """The message of a command (default: analyses.cka) refusing a bad input: the last line
    of stderr, after any progress bars, with exit status 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.rstrip("\n").splitlines()[-1]


def test_cka_cli_missing_file(tmp_path, capsys):
    message = _error(capsys, ["--a", str(tmp_path / "nope.pt"), "--b", str(tmp_path / "nope.pt"),
                            "--out", str(tmp_path)])
    assert message.startswith("error:") and "does not exist" in message


def test_cka_cli_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    message = _error(capsys, ["--a", str(junk), "--b", str(junk), "--out", str(tmp_path / "o")])
    assert "not a PyTorch checkpoint" in message


def test_cka_cli_mismatched_inputs(tiny_checkpoints, tmp_path, capsys):
    a = _extract(tiny_checkpoints["a"], tmp_path / "a.h5")
    b = _extract(tiny_checkpoints["b"], tmp_path / "b.h5", "--seed", "3")
    message = _error(capsys, ["--a", str(a), "--b", str(b), "--out", str(tmp_path / "o")])
    assert "error:" in message and "indices" in message


def test_cka_cli_unknown_layer(tiny_checkpoints, tmp_path, capsys):
    a = _extract(tiny_checkpoints["a"], tmp_path / "a.h5")
    message = _error(capsys, ["--a", str(a), "--b", str(a), "--layers", "layers.s9b9",
                            "--out", str(tmp_path / "o")])
    assert "layers.s9b9" in message


def test_cka_cli_other_split_is_refused(tiny_checkpoints, tmp_path, capsys):
    a = _extract(tiny_checkpoints["a"], tmp_path / "a.h5")
    b = _extract(tiny_checkpoints["b"], tmp_path / "b.h5", "--split", "train")
    message = _error(capsys, ["--a", str(a), "--b", str(b), "--out", str(tmp_path / "o")])
    assert "different splits" in message


def test_probe_cli_writes_table_and_plot(tiny_checkpoints, tmp_path, capsys):
    from analyses import probe as probe_cli

    out = tmp_path / "probe"
    probe_cli.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]),
                    "--n-train", "600", "--n-test", "200", "--out", str(out),
                    "--cache", str(tmp_path / "cache")])
    assert {"probe.csv", "probe.png", "args.json"} <= {p.name for p in out.iterdir()}
    with (out / "probe.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["model"] for r in rows} == {"bp (a.pt)", "bp (b.pt)"}
    assert all(float(r["chance"]) < float(r["test_acc"]) <= 1 for r in rows)
    assert all(r["n_train"] == "600" and r["n_test"] == "200" for r in rows)
    assert "linear probe (gap)" in capsys.readouterr().out


def test_probe_cli_max_memory_streams_the_same_probe(tiny_checkpoints, tmp_path, read_sizes,
                                                    capsys):
    from analyses import probe as probe_cli
    from repsim.probe import probe_block_rows

    tables, reads = {}, {}
    for name, extra in (("whole", []), ("streamed", ["--max-memory", "2"])):
        read_sizes.clear()
        tables[name] = probe_cli.run(probe_cli.parser().parse_args(
            ["--ckpt", str(tiny_checkpoints["a"]), "--n-train", "300", "--n-test", "100",
             "--reduction", "flatten", "--layers", "layers.s1b1", "layers.s3b1",
             "--out", str(tmp_path / name), "--cache", str(tmp_path / "cache"), *extra]))
        reads[name] = set(read_sizes)
    whole, streamed = (next(iter(t.tables.values())) for t in tables.values())
    assert [r.dim for r in streamed] == [256, 64]
    # s1b1's train split (300 × 256) streams in blocks that fit 2 MiB; the rest is read whole
    block = probe_block_rows(256, 300, 10, 2 * 2**20)
    assert block < 300 and block in reads["streamed"] and reads["whole"] == {300, 100}
    for a, b in zip(whole, streamed):
        assert a.C == b.C and abs(a.test_acc - b.test_acc) <= 0.02
    assert "cannot hold a probe" in _error(
        capsys, ["--ckpt", str(tiny_checkpoints["a"]), "--max-memory", "0.001",
                 "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")],
        probe_cli.main)


@pytest.mark.parametrize("value", ["0", "-1", "1e-9", "nan", "inf", "lots"])
@pytest.mark.parametrize("command", ["probe", "cka"])
def test_max_memory_must_be_a_positive_number_of_mib(command, value, tmp_path, capsys):
    from analyses import probe as probe_cli

    main = {"probe": probe_cli.main, "cka": cka_cli.main}[command]
    inputs = ["--ckpt", "x.pt"] if command == "probe" else ["--a", "x.pt", "--b", "y.pt"]
    with pytest.raises(SystemExit) as info:
        main([*inputs, "--max-memory", value, "--out", str(tmp_path)])
    assert info.value.code == 2  # refused while parsing, before anything is extracted
    assert f"--max-memory: must be a positive number of MiB, e.g. 512, got '{value}'" \
        in capsys.readouterr().err


def test_probe_cli_missing_checkpoint(tmp_path, capsys):
    from analyses import probe as probe_cli

    assert "nope.pt does not exist" in _error(
        capsys, ["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path)], probe_cli.main)


def test_cache_reuses_files_and_adds_missing_reductions(tiny_checkpoints, tmp_path):
    from analyses.activations import InputSelection, cached_activations

    selection = InputSelection("test", 100, 0)
    with cached_activations(tiny_checkpoints["a"], selection, reductions=("gap",),
                            cache=tmp_path, progress=False) as first:
        path, created = first.path, first.path.stat().st_mtime_ns
    with cached_activations(tiny_checkpoints["a"], selection, reductions=("gap",),
                            cache=tmp_path, progress=False) as again:
        assert again.path == path and path.stat().st_mtime_ns == created
    with cached_activations(tiny_checkpoints["a"], selection, reductions=("flatten",),
                            cache=tmp_path, progress=False) as wider:
        assert wider.path == path and set(wider.reductions) == {"flatten", "gap"}


def test_cka_cli_refuses_inputs_with_the_same_name(tiny_checkpoints, tmp_path, capsys):
    a = _extract(tiny_checkpoints["a"], tmp_path / "x" / "m.h5")
    b = _extract(tiny_checkpoints["b"], tmp_path / "y" / "m.h5")
    c = _extract(tiny_checkpoints["a"], tmp_path / "c.h5")
    message = _error(capsys, ["--a", str(c), "--b", str(a), str(b), "--out", str(tmp_path / "o")])
    assert "named ['m']" in message and "distinct file name" in message


def test_report_gathers_accuracy_maps_and_probes(tiny_checkpoints, tmp_path):
    from analyses import report

    out = tmp_path / "report"
    report.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]),
                 "--n", "120", "--n-train", "400", "--n-test", "120", "--out", str(out),
                 "--cache", str(tmp_path / "cache")])
    text = (out / "report.md").read_text()
    assert "![a vs b](cka/a__vs__b.png)" in text and (out / "cka" / "a__vs__b.png").exists()
    assert "(probe/probe.png)" in text and (out / "probe" / "probe.csv").exists()
    diagonal = np.array(json.loads((out / "cka" / "a__vs__b.json").read_text())["matrix"])
    assert f"| s3b1 | {np.diag(diagonal)[3]:.4f} |" in text   # the layer-matched table
    assert "| a.pt | bp |" in text and "| b.pt | bp |" in text


def test_report_needs_two_checkpoints(tiny_checkpoints, tmp_path, capsys):
    from analyses import report

    assert "at least two checkpoints" in _error(
        capsys, ["--ckpt", str(tiny_checkpoints["a"]), "--out", str(tmp_path)], report.main)


def test_threads_flag_sets_torch_threads(tiny_checkpoints, tmp_path):
    import torch

    _extract(tiny_checkpoints["a"], tmp_path / "a.h5", "--reduction", "gap", "--threads", "1")
    assert torch.get_num_threads() == 1   # conftest sets 2 before every test


def test_probe_cli_match_dim_probes_wider_layers_on_a_random_projection(
        tiny_checkpoints, tmp_path, capsys, monkeypatch):
    from analyses import probe as probe_cli
    from repsim import plot
    from repsim.probe import LinearProbe

    titles, real_save = [], plot.save_figure
    monkeypatch.setattr(plot, "save_figure",
                        lambda fig, path: titles.append(fig.axes[0].get_title())
                        or real_save(fig, path))
    out, cache = tmp_path / "probe", tmp_path / "cache"
    probe_cli.main(["--ckpt", str(tiny_checkpoints["a"]), "--n-train", "300", "--n-test", "100",
                    "--reduction", "flatten", "--layers", "layers.s1b1", "layers.s3b1",
                    "--match-dim", "64", "--match-seed", "2", "--out", str(out),
                    "--cache", str(cache)])
    with (out / "probe.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["dim"], r["probe_dim"]) for r in rows] == [("256", "64"), ("64", "64")]
    args = json.loads((out / "args.json").read_text())
    assert (args["match_dim"], args["match_seed"]) == (64, 2)
    printed = capsys.readouterr().out
    assert "random projection to 64 (seed 2)" in printed and "probed" in printed
    assert titles == ["layers wider than 64: random projection to 64"]
    # independent check: the documented R applied by hand to the cached activations
    acts = {}
    for path in cache.iterdir():
        with ActivationFile(path) as f:
            acts[f.meta["split"]] = f.read("layers.s1b1", "flatten"), np.asarray(f.labels)
    r = np.random.default_rng(2).standard_normal((256, 64), dtype=np.float32) / np.float32(8)
    probe = LinearProbe().fit(acts["train"][0] @ r, acts["train"][1])
    assert float(rows[0]["test_acc"]) == pytest.approx(probe.score(acts["test"][0] @ r,
                                                                   acts["test"][1]))


def test_probe_cli_refuses_a_bad_match_dim_before_extracting(tiny_checkpoints, tmp_path, capsys):
    from analyses import probe as probe_cli

    assert _error(capsys, ["--ckpt", str(tiny_checkpoints["a"]), "--match-dim", "0",
                           "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")],
                  probe_cli.main).startswith("error: match_dim must be a positive int, got 0")
    assert not (tmp_path / "cache").exists()


# --- settings: one typed dataclass per command, argparse only builds it --------------------

def _commands():
    from analyses import extract, probe, report

    return {"extract": (extract, ["--ckpt", "m.pt", "--out", "m.h5"]),
            "cka": (cka_cli, ["--a", "a.pt", "--b", "b.pt"]),
            "probe": (probe, ["--ckpt", "a.pt"]),
            "report": (report, ["--ckpt", "a.pt", "b.pt"])}


@pytest.mark.parametrize("command", ["extract", "cka", "probe", "report"])
def test_parser_defaults_are_the_settings_defaults(command):
    import dataclasses

    module, required = _commands()[command]
    settings = module.parser().parse_args(required)
    given = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
             if f.default is dataclasses.MISSING}
    assert settings == module.Settings(**given)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.out = "elsewhere"
    with pytest.raises(TypeError):
        module.Settings(*given.values())   # keyword-only


def test_args_json_keeps_the_option_names(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    cka_cli.main(["--a", str(tiny_checkpoints["a"]), "--b", str(tiny_checkpoints["b"]),
                  "--n", "100", "--reduction", "gap", "--layers", "layers.s3b1",
                  "--out", str(out), "--cache", str(tmp_path / "cache")])
    args = json.loads((out / "args.json").read_text())
    assert list(args) == ["a", "b", "out", "kernel", "threshold", "debiased", "batch_size",
                          "max_memory", "level", "intervals", "n_perm", "calibrated",
                          "grey_insignificant", "input_test", "n", "seed", "split",
                          "reduction", "layers", "cache", "data_root", "device", "threads",
                          "overwrite"]
    assert args["b"] == [str(tiny_checkpoints["b"])] and args["layers"] == ["layers.s3b1"]
    assert (args["n"], args["reduction"], args["batch_size"]) == (100, "gap", None)


# --- options refused while parsing (usage error, status 2, before any work) ----------------

REDUCTION_FORMS = "use 'flatten', 'gap' or 'pool<k>' with k >= 1"
COUNT = "must be a whole number >= 0 (0: the whole split), got"
POSITIVE = "must be a whole number >= 1, got"


@pytest.mark.parametrize("command,option,value,message", [
    ("cka", "--reduction", "pool0", REDUCTION_FORMS),
    ("cka", "--reduction", "max", REDUCTION_FORMS),
    ("probe", "--reduction", "gapp", REDUCTION_FORMS),
    ("extract", "--reduction", "pool-1", REDUCTION_FORMS),
    ("extract", "--n", "-1", COUNT + " '-1'"),
    ("cka", "--n", "ten", COUNT + " 'ten'"),
    ("report", "--n", "-5", COUNT + " '-5'"),
    ("probe", "--n-train", "-1", COUNT + " '-1'"),
    ("report", "--n-test", "1.5", COUNT + " '1.5'"),
    ("cka", "--threads", "0", POSITIVE + " '0'"),
    ("report", "--threads", "-2", POSITIVE + " '-2'"),
    ("extract", "--batch-size", "0", POSITIVE + " '0'"),
    ("cka", "--batch-size", "-40", POSITIVE + " '-40'"),
    ("report", "--batch-size", "0", POSITIVE + " '0'"),
])
def test_bad_options_are_refused_while_parsing(command, option, value, message, tmp_path,
                                               capsys):
    module, required = _commands()[command]
    cache = [] if command == "extract" else ["--cache", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as info:
        module.main([*required, *cache, option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and message in err and "usage:" in err
    assert f"{value!r}" in err   # the offending value
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("value", ["flatten", "gap", "pool1", "pool12"])
def test_every_valid_reduction_form_parses(value):
    assert cka_cli.parser().parse_args(["--a", "a", "--b", "b", "--reduction", value]) \
        .reduction == value


def test_zero_inputs_means_the_whole_split():
    from analyses import probe

    settings = probe.parser().parse_args(["--ckpt", "a.pt", "--n-train", "0", "--n-test", "0"])
    assert (settings.n_train, settings.n_test) == (0, 0)


# --- the report runs the other commands' settings, and reads checkpoints without models ----

def test_report_runs_cka_and_probe_settings_directly(tiny_checkpoints, tmp_path, monkeypatch):
    from analyses import probe, report

    seen = {}
    monkeypatch.setattr(cka_cli, "parser", lambda: pytest.fail("report parsed cka's argv"))
    monkeypatch.setattr(probe, "parser", lambda: pytest.fail("report parsed probe's argv"))
    for module in (cka_cli, probe):
        def spy(settings, real=module.run, **kwargs):
            seen[type(settings).__module__] = settings
            return real(settings, **kwargs)
        monkeypatch.setattr(module, "run", spy)
    out = tmp_path / "report"
    report.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]),
                 "--n", "100", "--n-train", "300", "--n-test", "100", "--batch-size", "50",
                 "--out", str(out), "--cache", str(tmp_path / "cache")])
    cka_settings, probe_settings = seen["analyses.cka"], seen["analyses.probe"]
    assert cka_settings.b == (str(tiny_checkpoints["b"]),) and cka_settings.batch_size == 50
    assert (probe_settings.n_train, probe_settings.n_test) == (300, 100)
    assert json.loads((out / "cka" / "args.json").read_text())["n"] == 100
    assert json.loads((out / "args.json").read_text())["ckpt"] == [
        str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"])]


def test_report_model_rows_build_no_model(tiny_checkpoints, monkeypatch):
    import training.checkpoint
    from analyses import report

    monkeypatch.setattr(training.checkpoint, "model_from_arch",
                        lambda arch: pytest.fail("a model was built"))
    rows = report.model_rows([str(tiny_checkpoints["a"])])
    assert rows[0]["file"] == "a.pt" and rows[0]["method"] == "bp"
    assert rows[0]["arch"] == "resnet8 (width 4)" and rows[0]["epochs"] == 2


def test_report_refuses_a_file_that_is_not_a_checkpoint(tiny_checkpoints, tmp_path, capsys):
    from analyses import report

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    message = _error(capsys, ["--ckpt", str(tiny_checkpoints["a"]), str(junk),
                              "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")],
                     report.main)
    assert re.fullmatch("error: .*junk.pt is not a PyTorch checkpoint.*", message)


# --- activations: one hash per extraction, one helper for notebooks ------------------------

def test_a_checkpoint_is_hashed_once_per_extraction(tiny_checkpoints, tmp_path, monkeypatch):
    import hashlib

    from analyses import activations

    calls, real = [], activations.sha256
    monkeypatch.setattr(activations, "sha256", lambda path: calls.append(path) or real(path))
    with activations.activations_of(tiny_checkpoints["a"], n=100, reductions=("gap",),
                                    cache=tmp_path, progress=False) as acts:
        assert acts.meta["checkpoint_sha256"] == hashlib.sha256(
            tiny_checkpoints["a"].read_bytes()).hexdigest()
    assert calls == [tiny_checkpoints["a"]]


def test_activations_of_is_the_file_the_commands_cache(tiny_checkpoints, tmp_path):
    from analyses.activations import activations_of

    cache = tmp_path / "cache"
    cka_cli.main(["--a", str(tiny_checkpoints["a"]), "--b", str(tiny_checkpoints["a"]),
                  "--n", "100", "--seed", "2", "--out", str(tmp_path / "o"),
                  "--cache", str(cache)])
    [made] = cache.iterdir()
    created = made.stat().st_mtime_ns
    with activations_of(str(tiny_checkpoints["a"]), "test", n=100, seed=2, cache=cache,
                        progress=False) as acts:
        assert acts.path == made and made.stat().st_mtime_ns == created  # reused as it is
        assert (acts.meta["split"], acts.meta["n"], acts.meta["seed"]) == ("test", 100, 2)
        assert acts.meta["checkpoint"] == str(tiny_checkpoints["a"])
        assert set(acts.reductions) == {"flatten", "gap"}


def test_activations_of_a_missing_checkpoint(tmp_path):
    from analyses.activations import activations_of

    with pytest.raises(FileNotFoundError, match="nope.pt does not exist: pass a checkpoint"):
        activations_of(tmp_path / "nope.pt", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"n": -5}, "n must be a whole number >= 1 (None: the whole split), got -5"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
])
def test_activations_of_refuses_bad_counts_by_name(kwargs, message, tiny_checkpoints, tmp_path):
    from analyses.activations import activations_of

    with pytest.raises(ValueError, match=re.escape(message)):
        activations_of(tiny_checkpoints["a"], cache=tmp_path / "cache", **kwargs)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("value", ["cpu", "cpu:0"])
def test_device_accepts_what_this_machine_has(value):
    assert cka_cli.parser().parse_args(["--a", "a", "--b", "b", "--device", value]).device \
        == value
