"""Mixed precision (``--amp``) and channels-last layout, for backprop and per-module backward."""

import pytest
import torch
from torch import nn

from training.checkpoint import load_checkpoint, run_precision
from training.local import MethodConfig
from training.models import build_model
from training import data as datasets
from training import precision as precision_module
from training.precision import FULL, Precision, resolve_precision
from training.train import TrainConfig, check_config, evaluate, train
from training.train import main as train_main

METHODS = {"bp": MethodConfig("bp"), "auglocal": MethodConfig("auglocal", 5, 2, None,
                                                              aux_rule="imagenet")}


def step_of(method: str, precision: Precision, seed: int = 0):
    torch.manual_seed(seed)
    model = precision.layout(build_model("tv_resnet18", width=4, num_classes=3))
    return METHODS[method].build_step(model, num_classes=3, precision=precision)


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_on_cpu_trains_one_step_in_bfloat16(method):
    step = step_of(method, Precision("bf16"))
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
             for m in step.trainable.modules() if isinstance(m, nn.Conv2d)]
    optimizer = torch.optim.SGD(step.trainable.parameters(), lr=0.1)
    before = [p.detach().clone() for p in step.model.parameters()]
    out = step(*batch())
    step.precision.step(optimizer)
    for h in hooks:
        h.remove()
    assert set(dtypes) == {torch.bfloat16} and torch.isfinite(out.loss)
    params = list(step.trainable.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
    assert all(not torch.equal(a, p) for a, p in zip(before, step.model.parameters()))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_loss_is_close_to_float32s(method):
    full, half = step_of(method, Precision()), step_of(method, Precision("bf16"))
    assert half(*batch()).loss.dtype == torch.float32  # cross-entropy autocasts to float32
    torch.testing.assert_close(half(*batch()).loss, full(*batch()).loss, rtol=0.02, atol=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_channels_last_gives_the_same_gradients(method):
    nchw, nhwc = step_of(method, Precision()), step_of(method, Precision(channels_last=True))
    x, y = batch()
    nchw(x, y)
    nhwc(nhwc.precision.layout(x), y)
    conv = next(m for m in nhwc.trainable.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(nchw.trainable.parameters(), nhwc.trainable.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4)


def test_checkpoint_records_amp_and_layout(tmp_path):
    out = tmp_path / "amp.pt"
    train(TrainConfig(method="auglocal", arch="resnet8", width=4, K=4, dataset="digits",
                      epochs=1, batch_size=128, amp="bf16", channels_last=True, out=str(out),
                      progress=False))
    model, meta = load_checkpoint(out)
    assert meta["config"]["amp"] == "bf16" and meta["config"]["channels_last"] is True
    assert meta["metrics"]["epochs"][0]["train_loss"] > 0


def test_fp16_on_cpu_is_refused_with_the_fix(capsys):
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device.*--amp bf16"):
        Precision("fp16")
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        check_config(TrainConfig(amp="fp16"))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--amp", "fp16", "--dataset", "digits", "--dry-run"])
    assert exit_info.value.code == 2 and "use --amp bf16 on CPU" in capsys.readouterr().err


def test_unknown_amp_mode_is_refused():
    with pytest.raises(ValueError, match="--amp 'int8': choose one of auto, none, bf16, fp16"):
        Precision("int8")


def test_auto_is_bf16_and_channels_last_where_the_hardware_has_bf16_units(monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_hardware", lambda device: "AVX-512 BF16")
    amp, channels_last, why = resolve_precision("auto", False, "cpu")
    assert (amp, channels_last) == ("bf16", True)
    assert "AVX-512 BF16 found" in why and "--amp none" in why
    monkeypatch.setattr(precision_module, "bf16_hardware", lambda device: None)
    amp, channels_last, why = resolve_precision("auto", False, "cpu")
    assert (amp, channels_last) == (None, False) and "float32" in why


def test_none_is_float32_and_explicit_choices_stay():
    assert resolve_precision("none", False, "cpu")[:2] == (None, False)
    assert resolve_precision(None, True, "cpu")[:2] == (None, True)
    assert resolve_precision("bf16", False, "cpu")[:2] == ("bf16", False)


def test_the_hardware_check_reads_torchs_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert precision_module.bf16_hardware("cpu") == "AMX"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision_module.bf16_hardware("cpu") is None
    assert precision_module.bf16_hardware("meta") is None


def test_an_unresolved_choice_is_refused_by_a_step():
    for amp in ("auto", "none"):
        with pytest.raises(ValueError, match="resolve it first with resolve_precision"):
            Precision(amp)


def test_the_checkpoint_records_what_auto_chose(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_module, "bf16_hardware", lambda device: None)
    out = tmp_path / "auto.pt"
    train_main(["--amp", "auto", "--dataset", "digits", "--arch", "resnet8", "--width", "4",
                "--epochs", "1", "--out", str(out), "--no-progress"])
    assert "precision: float32 (--amp auto: no bf16 units" in capsys.readouterr().out
    meta = load_checkpoint(out)[1]
    assert meta["config"]["amp"] is None and run_precision(meta) == "float32"


def tiny_run(out, **settings):
    config = TrainConfig(method="auglocal", arch="resnet8", width=4, K=4, dataset="digits",
                         epochs=2, batch_size=64, out=str(out), progress=False, threads=1,
                         **settings)
    train(config)
    return torch.load(out, weights_only=True)


def test_bf16_training_is_bitwise_repeatable(tmp_path):
    """The same seed and thread count give the same bf16 + channels-last run, bit for bit:
    every primary and aux weight and every logged number but the times."""
    first, second = (tiny_run(tmp_path / f"{k}.pt", amp="bf16", channels_last=True)
                     for k in ("a", "b"))
    assert run_precision(first) == "bf16 + channels-last"
    for part in ("state_dict", "aux_state_dict"):
        assert first[part].keys() == second[part].keys()
        assert all(torch.equal(first[part][k], second[part][k]) for k in first[part])
    untimed = [[{k: v for k, v in epoch.items() if "second" not in k} for epoch in run]
               for run in (first["metrics"]["epochs"], second["metrics"]["epochs"])]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2


def test_earlier_epochs_evaluate_a_subset_in_the_runs_precision_the_last_all_in_float32(
        tmp_path):
    ckpt = tiny_run(tmp_path / "eval.pt", amp="bf16", channels_last=True, eval_images=100)
    first, last = ckpt["metrics"]["epochs"]
    test = datasets.load_split("digits", "test")
    assert (first["test_images"], first["eval_precision"]) == (100, "bf16")
    assert (last["test_images"], last["eval_precision"]) == (len(test), "float32")
    model, meta = load_checkpoint(tmp_path / "eval.pt")
    loss, acc = evaluate(model, test, batch_size=256, device=torch.device("cpu"),
                         precision=FULL)
    assert meta["metrics"]["test_acc"] == acc and last["test_loss"] == pytest.approx(loss)
