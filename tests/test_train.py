import json
from dataclasses import replace

import pytest
import torch

import training.train as loop
from training.checkpoint import FORMAT_VERSION
from training.train import TrainConfig, main, train

TINY = TrainConfig(arch="resnet8", width=8, dataset="digits", epochs=3, batch_size=64,
                   lr=0.1, progress=False)


def test_short_run_on_digits_learns(tmp_path):
    metrics = train(replace(TINY, out=str(tmp_path / "bp.pt")))
    assert metrics["epochs"][-1]["test_acc"] > 0.8   # chance is 0.1
    records = [json.loads(line) for line in (tmp_path / "bp.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["cost", "epoch", "epoch", "epoch"]
    assert [r["epoch"] for r in records[1:]] == [1, 2, 3]
    assert records[0]["memory"]["saved_peak_bytes"] > 0


class Crash(Exception):
    pass


def crash_after_first_epoch(config: TrainConfig, monkeypatch) -> None:
    """Run ``config`` until the machine 'dies' right after the first epoch's checkpoint."""
    save = loop.atomic_torch_save

    def save_then_crash(obj, path):
        save(obj, path)
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(loop, "atomic_torch_save", save_then_crash)
        with pytest.raises(Crash):
            train(config)


def test_resume_continues_at_the_next_epoch_with_the_same_state(tmp_path, monkeypatch):
    straight = replace(TINY, out=str(tmp_path / "straight.pt"))
    train(straight)

    interrupted = replace(TINY, out=str(tmp_path / "interrupted.pt"))
    crash_after_first_epoch(interrupted, monkeypatch)
    assert torch.load(interrupted.out, weights_only=True)["epoch"] == 1
    train(replace(interrupted, resume=True))

    a = torch.load(straight.out, weights_only=True)
    b = torch.load(interrupted.out, weights_only=True)
    assert b["epoch"] == 3 and [r["epoch"] for r in b["metrics"]["epochs"]] == [1, 2, 3]
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key])
    for key, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(state["momentum_buffer"],
                                   b["optimizer"]["state"][key]["momentum_buffer"])


def test_resume_of_a_finished_run_does_nothing(tmp_path, capsys):
    config = replace(TINY, epochs=1, out=str(tmp_path / "bp.pt"))
    train(config)
    before = (tmp_path / "bp.pt").stat().st_mtime_ns
    train(replace(config, resume=True))
    assert "already completed 1 epochs" in capsys.readouterr().out
    assert (tmp_path / "bp.pt").stat().st_mtime_ns == before


def test_resume_with_other_settings_is_refused(tmp_path):
    config = replace(TINY, epochs=1, out=str(tmp_path / "bp.pt"))
    train(config)
    with pytest.raises(ValueError, match=r"--lr 0.2 \(checkpoint: 0.1\)"):
        train(replace(config, epochs=2, lr=0.2, resume=True))


def test_existing_output_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "bp.pt"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(replace(TINY, out=str(out)))
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "--epochs 0: must be a whole number >= 1"),
    ({"lr": -1.0}, r"--lr -1.0: must be a finite number > 0"),
    ({"warmup_epochs": 5}, r"--warmup-epochs 5: must lie in \[0, --epochs\]"),
    ({"resume": True, "overwrite": True}, "contradict"),
    ({"method": "hebbian"}, "--method 'hebbian'"),
    ({"method": "dgl", "K": 0}, "--K 0: must be a whole number >= 1"),
    ({"threads": -2}, "--threads -2: must be a whole number >= 1"),
    ({"device": "foo"}, "--device 'foo'"),
])
def test_invalid_settings_are_named(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(replace(TINY, out=str(tmp_path / "x.pt"), **change))


def test_every_problem_is_named_on_one_line(tmp_path):
    with pytest.raises(ValueError) as error:
        train(replace(TINY, out=str(tmp_path / "x.pt"), epochs=0, lr=float("nan")))
    assert "\n" not in str(error.value)
    assert "--epochs 0" in str(error.value) and "--lr nan" in str(error.value)


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "digits", "--epochs", "1", "--warmup-epochs", "3",
              "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and "--warmup-epochs 3" in err and err.count("\n") == 1


@pytest.mark.parametrize("method", ["auglocal", "dgl"])
def test_local_methods_learn_on_digits_and_record_their_settings(tmp_path, method):
    out = tmp_path / f"{method}.pt"
    metrics = train(replace(TINY, method=method, arch="resnet14", out=str(out)))
    assert metrics["epochs"][-1]["test_acc"] > 0.7   # chance is 0.1
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["method"]["name"] == method and ckpt["method"]["K"] == 7  # one per layer
    assert ckpt["aux_state_dict"]
    memory = ckpt["metrics"]["memory"]
    assert memory["total_peak_bytes"] == (memory["saved_peak_bytes"] + memory["params_bytes"]
                                          + memory["grads_bytes"] + memory["optimizer_bytes"])


def test_resume_restores_the_aux_nets(tmp_path, monkeypatch):
    config = replace(TINY, method="auglocal", arch="resnet14", epochs=2)
    straight = replace(config, out=str(tmp_path / "straight.pt"))
    train(straight)
    interrupted = replace(config, out=str(tmp_path / "interrupted.pt"))
    crash_after_first_epoch(interrupted, monkeypatch)
    train(replace(interrupted, resume=True))
    a = torch.load(straight.out, weights_only=True)["aux_state_dict"]
    b = torch.load(interrupted.out, weights_only=True)["aux_state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_resume_from_a_version_1_checkpoint_continues_the_same_run(tmp_path, monkeypatch):
    """Format version 1 stored the pyramid coefficient as method["tau"]; a run interrupted
    under it resumes to the same weights as a straight run, and is then saved as the current
    version with the current key."""
    config = replace(TINY, method="auglocal", arch="resnet14", epochs=2)
    straight = replace(config, out=str(tmp_path / "straight.pt"))
    train(straight)
    interrupted = replace(config, out=str(tmp_path / "interrupted.pt"))
    crash_after_first_epoch(interrupted, monkeypatch)
    old = torch.load(interrupted.out, weights_only=True)
    old["format_version"] = 1
    old["method"] = {("tau" if k == "pyramid_coeff" else k): v for k, v in old["method"].items()}
    assert old["method"]["tau"] == 0.5
    torch.save(old, interrupted.out)
    train(replace(interrupted, resume=True))

    a = torch.load(straight.out, weights_only=True)
    b = torch.load(interrupted.out, weights_only=True)
    assert b["format_version"] == FORMAT_VERSION and b["epoch"] == 2
    assert b["method"] == a["method"] == {"name": "auglocal", "K": 7, "aux_depth": 2,
                                          "pyramid_coeff": 0.5}
    for part in ("state_dict", "aux_state_dict"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key])


def test_resume_with_other_method_settings_is_refused(tmp_path):
    config = replace(TINY, method="auglocal", arch="resnet14", epochs=1,
                     out=str(tmp_path / "al.pt"))
    train(config)
    with pytest.raises(ValueError, match=r"--aux-depth 3 \(checkpoint: 2\)"):
        train(replace(config, epochs=2, aux_depth=3, resume=True))


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "al.pt"
    out.write_bytes(b"an earlier run")   # a dry run neither refuses nor touches it
    main(["--method", "auglocal", "--arch", "resnet32", "--dataset", "digits", "--dry-run",
          "--out", str(out)])
    text = capsys.readouterr().out
    assert "| 0 | 16 | 2 | 8[32,s2] 15[64,s2] |" in text   # a golden row of docs/auglocal.md
    assert "13–15 + head" in text and "aux 1,341,058" in text  # docs/auglocal.md, "Costs"
    assert out.read_bytes() == b"an earlier run"


def test_overwrite_starts_a_new_log(tmp_path):
    config = replace(TINY, epochs=1, out=str(tmp_path / "bp.pt"))
    train(config)
    train(replace(config, overwrite=True))
    events = [json.loads(line)["event"] for line in (tmp_path / "bp.jsonl").open()]
    assert events == ["cost", "epoch"]


def test_subset_depends_on_subset_seed_not_on_seed():
    a = loop.load_data(replace(TINY, subset=500, seed=0))[0]
    b = loop.load_data(replace(TINY, subset=500, seed=1))[0]
    c = loop.load_data(replace(TINY, subset=500, subset_seed=1))[0]
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)


def test_impossible_method_settings_give_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--method", "auglocal", "--arch", "resnet8", "--K", "40", "--dataset", "digits",
              "--out", str(tmp_path / "x.pt")])
    assert exit_info.value.code == 2 and "K=40" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dgl", "auglocal"])
def test_K_0_is_not_every_layer(tmp_path, method):
    """K = 0 used to fall back to one module per layer, as if --K were not given."""
    with pytest.raises(ValueError, match="--K 0"):
        train(replace(TINY, method=method, K=0, out=str(tmp_path / "x.pt")))
    assert loop.method_config(replace(TINY, method=method, K=0), 4).K == 0
