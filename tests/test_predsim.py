"""PredSim against hand-written computations, and what InfoPro and PredSim share with the other
local methods: per-module backward equal to one summed backward, no gradient across module
boundaries, MAC counts with decoders and similarity heads, short runs on digits that learn,
resume equal to a straight run, and checkpoints that run through the analyses."""

import copy
import csv
import json
import math
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from analyses import cka as cka_cli
from analyses import extract as extract_cli
from analyses import probe as probe_cli
from repsim.store import ActivationFile
from training import load_checkpoint
from training.local import MethodConfig, method_defaults
from training.memory import forward_macs, track_saved_tensors
from training.models import build_model
from training.predsim import pool_kernel, pred_pool, similarity_matrix
from training.train import TrainConfig, parse_args, train

from tests.test_train import crash_after_first_epoch

NORMALISATION = ((0.3,), (0.4,))


def tiny_step(method, dtype=torch.float32, K=4, **settings):
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, num_classes=3).to(dtype)
    config = method_defaults(method, "resnet8", K, **settings)
    return config.build_step(model, num_classes=3, input_size=(1, 8, 8),
                             normalisation=NORMALISATION)


def batch(dtype=torch.float32, n=6):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=gen, dtype=dtype), torch.arange(n) % 3


def hand_similarity(rows):
    """Cosine similarity of each pair of row-centred rows, by loops."""
    n = len(rows)
    centred = [r - r.mean() for r in rows]
    out = torch.empty(n, n, dtype=rows[0].dtype)
    for i in range(n):
        for j in range(n):
            out[i, j] = (centred[i] @ centred[j]) / (
                (1e-8 + centred[i].norm()) * (1e-8 + centred[j].norm()))
    return out


def test_similarity_matrix_of_feature_maps_uses_per_channel_deviations():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(5, 6, 4, 4, generator=gen, dtype=torch.float64)
    rows = [torch.stack([h[b, c].flatten().std() for c in range(6)]) for b in range(5)]
    torch.testing.assert_close(similarity_matrix(h), hand_similarity(rows))
    few_channels = h[:, :3]  # C <= 3: flattened instead
    torch.testing.assert_close(similarity_matrix(few_channels),
                               hand_similarity([r.flatten() for r in few_channels]))


def test_similarity_of_one_hot_labels():
    y = torch.tensor([0, 1, 0, 2])
    r = similarity_matrix(F.one_hot(y, 3).double())
    same = (y[:, None] == y[None, :])
    assert torch.allclose(r[same], torch.ones((), dtype=r.dtype), atol=1e-7)
    assert torch.allclose(r[~same], torch.full((), -1 / 2, dtype=r.dtype), atol=1e-7)  # −1/(C−1)


@pytest.mark.parametrize("channels, size", [(16, 32), (32, 16), (64, 8), (4, 7), (16, 28)])
def test_pred_pooling_keeps_at_most_4096_features(channels, size):
    k_h, k_w = pool_kernel(channels, size, size)
    pool, features = pred_pool(channels, (size, size))
    out = pool(torch.zeros(1, channels, size, size))
    assert out.numel() == features
    assert channels * math.ceil(size / k_h) * math.ceil(size / k_w) <= 4096 or k_h >= size
    if (k_h, k_w) != (1, 1):  # one doubling fewer would keep too many
        smaller = (k_h, k_w // 2) if k_w == k_h else (k_h // 2, k_w)
        assert channels * math.ceil(size / smaller[0]) * math.ceil(size / smaller[1]) > 4096


def test_module_loss_equals_a_hand_written_computation():
    step = tiny_step("predsim", torch.float64, beta=0.75)
    x, y = batch(torch.float64)
    h = step.model.layers[0](x).detach()  # (6, 4, 8, 8): C = 4 > 3
    net = step.aux["0"]
    with torch.no_grad():
        net.classifier[-1].weight.normal_()  # away from its zero initialisation
    linear = net.classifier[-1]
    logits = h.flatten(1) @ linear.weight.T + linear.bias  # 4·8·8 = 256 <= 4096: no pooling
    pred = (torch.logsumexp(logits, 1) - logits[torch.arange(6), y]).mean()
    z = F.conv2d(h, net.sim_conv.weight, padding=1)
    r_h = hand_similarity([torch.stack([z[b, c].flatten().std() for c in range(4)])
                           for b in range(6)])
    r_y = hand_similarity(list(F.one_hot(y, 3).double()))
    sim = ((r_h - r_y) ** 2).mean()
    torch.testing.assert_close(net(h, x, y), 0.25 * pred + 0.75 * sim)


def test_pred_classifier_starts_at_zero_weights():
    step = tiny_step("predsim")
    assert all(torch.all(net.classifier[-1].weight == 0) for net in step.aux.values())


@pytest.mark.parametrize("beta, match", [(1.5, r"beta=1.5 must lie in \[0, 1\]"),
                                         (-0.1, r"beta=-0.1 must lie"),
                                         (None, r"'predsim' needs beta")])
def test_bad_beta_is_refused(beta, match):
    with pytest.raises(ValueError, match=match):
        MethodConfig("predsim", K=4, beta=beta)


def test_bad_beta_flag_stops_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--method", "predsim", "--beta", "1.01"])
    assert "--beta: must be a finite number in [0, 1], got '1.01'" in capsys.readouterr().err


def test_predsim_takes_no_infopro_settings_and_needs_K():
    with pytest.raises(ValueError, match=r"'predsim' takes no lambda_x"):
        MethodConfig("predsim", K=4, beta=0.9, lambda_x=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"PredSim needs an integer 2 <= K <= 4"):
        tiny_step("predsim", K=1)


def summed_backward(step, x, y):
    """The step's losses summed and back-propagated once (no memory saving)."""
    losses, h = [], x
    for i, layer in enumerate(step.model.layers):
        h = layer(h)
        if str(i) in step.aux:
            losses.append(step.aux[str(i)](h, x, y))
            h = h.detach()
    losses.append(F.cross_entropy(step.model.head(h), y))
    sum(losses).backward()


@pytest.mark.parametrize("method", ["infopro", "predsim"])
def test_per_module_backward_equals_one_summed_backward(method):
    step = tiny_step(method, torch.float64)
    twin = copy.deepcopy(step)
    x, y = batch(torch.float64)
    with track_saved_tensors(exclude=step.trainable.parameters()) as local:
        step(x, y)
    with track_saved_tensors(exclude=twin.trainable.parameters()) as summed:
        summed_backward(twin, x, y)
    a = {n: p.grad for n, p in step.trainable.named_parameters()}
    b = {n: p.grad for n, p in twin.trainable.named_parameters()}
    assert all(g is not None for g in a.values())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-9)
    assert local.peak_bytes < summed.peak_bytes


@pytest.mark.parametrize("method, silence", [
    ("infopro", lambda net: setattr(net, "weight_x", 0.0) or setattr(net, "weight_y", 0.0)),
    ("predsim", lambda net: setattr(net, "beta", 0.0) or net.classifier[-1].bias.data.zero_()),
])
def test_a_later_module_puts_no_gradient_on_an_earlier_one(method, silence):
    step = tiny_step(method)
    silence(step.aux["0"])  # module 0's own loss no longer depends on layer 0
    step(*batch())
    layer0 = [p.grad for p in step.model.layers[0].parameters()]
    assert all(g is None or torch.all(g == 0) for g in layer0)
    assert any(torch.any(p.grad != 0) for p in step.model.layers[1].parameters())


def conv_linear_macs(module, run):
    """Per-sample MACs of the Conv2d and Linear layers of ``module`` during ``run()``, from
    their weights and output sizes: conv weight numel × output pixels, Linear in × out."""
    pixels = {}
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(
        lambda m, i, o: pixels.__setitem__(m, o.shape[2] * o.shape[3])) for m in convs]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return (sum(m.weight.numel() * pixels[m] for m in convs)
            + sum(m.in_features * m.out_features for m in linears))


@pytest.mark.parametrize("method", ["infopro", "predsim"])
def test_mac_counts_include_decoders_and_similarity_heads(method):
    step = tiny_step(method)
    x, y = batch(n=2)
    primary = forward_macs(step.model, lambda: step.model(x))
    aux = conv_linear_macs(step.aux, lambda: step(x, y))
    assert aux > 0 and forward_macs(step.trainable, lambda: step(x, y)) == primary + aux


TINY = TrainConfig(arch="resnet8", width=4, dataset="digits", subset=128, epochs=2,
                   batch_size=64, lr=0.1, progress=False)


@pytest.mark.parametrize("method", ["infopro", "predsim"])
def test_resume_equals_a_straight_run(method, tmp_path, monkeypatch):
    straight = replace(TINY, method=method, out=str(tmp_path / "straight.pt"))
    train(straight)
    interrupted = replace(straight, out=str(tmp_path / "interrupted.pt"))
    crash_after_first_epoch(interrupted, monkeypatch)
    other = dict(lambda_x=(1.0, 1.0)) if method == "infopro" else dict(beta=0.5)
    with pytest.raises(ValueError, match="--lambda-x|--beta"):  # other settings are refused
        train(replace(interrupted, resume=True, **other))
    train(replace(interrupted, resume=True))
    a, b = (torch.load(p, weights_only=True) for p in (straight.out, interrupted.out))
    for key in ("state_dict", "aux_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value)
    assert a["method"] == b["method"] and a["method"]["name"] == method


@pytest.mark.parametrize("method", ["infopro", "predsim"])
def test_digits_learn_and_the_checkpoint_runs_through_the_analyses(method, tmp_path):
    ckpt = tmp_path / f"{method}.pt"
    metrics = train(TrainConfig(method=method, arch="resnet8", width=8, dataset="digits",
                                epochs=1, batch_size=32, lr=0.05, out=str(ckpt),
                                progress=False))
    assert metrics["epochs"][-1]["test_acc"] > 0.7
    model, meta = load_checkpoint(ckpt)
    assert meta["method"]["name"] == method and len(meta["layers"]) == 4
    assert meta["metrics"]["macs_per_image"] > 0 and meta["metrics"]["memory"]

    extract_cli.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "a.h5"), "--n", "100",
                      "--reduction", "gap"])
    with ActivationFile(tmp_path / "a.h5") as f:
        assert f.layers == meta["layers"] and f.n == 100
    out = tmp_path / "cka"
    cka_cli.main(["--a", str(ckpt), "--b", str(ckpt), "--n", "100", "--out", str(out)])
    record = json.loads(next(out.glob("*__vs__*.json")).read_text())
    assert all(abs(record["matrix"][i][i] - 1) < 1e-6 for i in range(4))
    probe_cli.main(["--ckpt", str(ckpt), "--n-train", "300", "--n-test", "100",
                    "--out", str(tmp_path / "probe")])
    with (tmp_path / "probe" / "probe.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
