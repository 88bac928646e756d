"""A run whose loss becomes non-finite stops with a message naming the epoch and step, exits
with status 2, keeps the last good checkpoint, and leaves a log that is strict JSON."""

import json
from dataclasses import replace

import pytest
import torch

import training.train as loop
from training.train import TrainConfig, TrainingDiverged, main, train

TINY = TrainConfig(arch="resnet8", width=4, dataset="digits", epochs=2, batch_size=64,
                   lr=0.1, progress=False)


def _refuse_constant(token: str):
    raise ValueError(f"the log holds the non-JSON token {token}")


def strict_records(path) -> list[dict]:
    """The JSON-lines log at ``path``, parsed by a parser that refuses NaN and Infinity."""
    return [json.loads(line, parse_constant=_refuse_constant)
            for line in path.read_text().splitlines()]


def test_a_real_divergence_stops_the_run_with_a_message(tmp_path, capsys):
    out = tmp_path / "x.pt"
    with pytest.raises(SystemExit) as exit_info:
        main(["--arch", "resnet8", "--width", "4", "--dataset", "digits", "--epochs", "1",
              "--batch-size", "64", "--lr", "1e30", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: training diverged") and "epoch 1, step " in err
    assert "--lr" in err and "Traceback" not in err
    assert not out.exists()   # no epoch completed: nothing saved
    assert [r["event"] for r in strict_records(tmp_path / "x.jsonl")] == ["cost"]


def poison_epoch(monkeypatch, epoch: int, step: int) -> None:
    """Make the loss non-finite from batch ``step`` (1-based) of ``epoch`` (1-based) on, as a
    diverging run does: that batch's step poisons the weights with NaN."""
    real_epoch = loop.train_epoch
    calls = []

    def train_epoch(step_fn, optimizer, batches, **kwargs):
        calls.append(1)
        if len(calls) != epoch:
            return real_epoch(step_fn, optimizer, batches, **kwargs)

        def poisoned():
            for i, batch in enumerate(batches, 1):
                if i == step:
                    with torch.no_grad():
                        next(step_fn.model.parameters()).fill_(float("nan"))
                yield batch
        return real_epoch(step_fn, optimizer, poisoned(), **kwargs)

    monkeypatch.setattr(loop, "train_epoch", train_epoch)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "x.pt"
    config = replace(TINY, out=str(out))
    saved = []
    real_save = loop.atomic_torch_save
    monkeypatch.setattr(loop, "atomic_torch_save",
                        lambda obj, path: (real_save(obj, path), saved.append(out.read_bytes())))
    poison_epoch(monkeypatch, epoch=2, step=3)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3 of 22\b"):
        train(config)
    assert len(saved) == 1 and out.read_bytes() == saved[0]   # epoch 1's, untouched
    assert torch.load(out, weights_only=True)["epoch"] == 1
    records = strict_records(tmp_path / "x.jsonl")
    assert [(r["event"], r.get("epoch")) for r in records] == [("cost", None), ("epoch", 1)]


def test_a_non_finite_test_loss_counts_as_divergence(tmp_path, monkeypatch):
    real_evaluate = loop.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        loss, acc = real_evaluate(*args, **kwargs)
        return (float("inf") if len(calls) == 2 else loss), acc

    monkeypatch.setattr(loop, "evaluate", evaluate)
    out = tmp_path / "x.pt"
    with pytest.raises(TrainingDiverged, match="test loss.*inf.*epoch 2"):
        train(replace(TINY, out=str(out)))
    assert torch.load(out, weights_only=True)["epoch"] == 1
    assert [r["event"] for r in strict_records(tmp_path / "x.jsonl")] == ["cost", "epoch"]


@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay", "pyramid_coeff"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_settings_are_refused_by_train_too(tmp_path, field, value):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ValueError, match=f"{flag} {value}: must be a finite number"):
        train(replace(TINY, out=str(tmp_path / "x.pt"), **{field: value}))
    assert list(tmp_path.iterdir()) == []
