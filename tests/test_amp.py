"""Mixed precision (``--amp``) and channels-last layout, for backprop and per-module backward."""

import pytest
import torch
from torch import nn

from training.checkpoint import load_checkpoint
from training.local import MethodConfig
from training.models import build_model
from training.precision import Precision
from training.train import TrainConfig, check_config, train
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
    with pytest.raises(ValueError, match="--amp 'int8': choose one of bf16, fp16"):
        Precision("int8")
