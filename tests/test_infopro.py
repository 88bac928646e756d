"""InfoPro: the module loss against a hand-written computation, the [0, 1] reconstruction
target, λ interpolation, the aux classifiers, the contrastive loss, and bad settings."""

import pytest
import torch
from torch.nn import functional as F

from training import data as datasets
from training.infopro import (AUX_CONFIGS, DEFAULT_LAMBDAS, InfoProAux, aux_classifier,
                              build_infopro_aux, default_lambdas, denormalise, module_weights,
                              supervised_contrastive_loss)
from training.local import MethodConfig, method_defaults
from training.models import build_model
from training.train import TrainConfig, check_config, parse_args

DIGITS = datasets.dataset_info("digits")


def digit_batch(n=6, dtype=torch.float64):
    """uint8 images of digits' shape, their normalised batch, labels (two per class)."""
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    return images, datasets.normalise(images, DIGITS).to(dtype), torch.arange(n) % 3


def tiny_infopro_aux(loss="cross_entropy", lambda_x=(2.0, 0.5), lambda_y=(0.25, 1.0)):
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, num_classes=3).double()
    aux = build_infopro_aux(model, 4, 3, (1, 8, 8), (DIGITS.mean, DIGITS.std),
                            aux_config="1c2f", aux_loss=loss, lambda_x=lambda_x,
                            lambda_y=lambda_y).double()
    return model, aux


def batch_norm(z):
    """Training-mode BatchNorm2d with γ = 1, β = 0 (the initialisation)."""
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + 1e-5)


def test_module_loss_equals_a_hand_written_computation():
    model, aux = tiny_infopro_aux()
    images, x, y = digit_batch()
    h = model.layers[1](model.layers[0](x)).detach()  # layer 1's output: (6, 4, 8, 8)
    net = aux["1"]
    dec, clf = net.decoder, net.classifier
    # decoder: bilinear (align_corners) → conv → BN → ReLU → conv → sigmoid, written out
    up = F.interpolate(h, size=(8, 8), mode="bilinear", align_corners=True)
    z = torch.relu(batch_norm(F.conv2d(up, dec[1].weight, dec[1].bias, padding=1)))
    p = torch.sigmoid(F.conv2d(z, dec[4].weight, dec[4].bias, padding=1))
    t = images.double() / 255  # the image before normalisation
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    # 1c2f at width 4 (not the last stage): conv 4→8 stride 2 → BN → ReLU → GAP → 2 Linear
    c = torch.relu(batch_norm(F.conv2d(h, clf[0].weight, stride=2, padding=1)))
    hidden = torch.relu(c.mean(dim=(2, 3)) @ clf[5].weight.T + clf[5].bias)
    logits = hidden @ clf[7].weight.T + clf[7].bias
    ce = (torch.logsumexp(logits, 1) - logits[torch.arange(6), y]).mean()
    weight_x, weight_y = (2.0 + 0.5) / 2, (0.25 + 1.0) / 2  # layer 1 of aux layers 0, 1, 2
    expected = weight_x * bce + weight_y * ce
    # x was normalised in float32 (as in training), so the target matches to ~1e-8
    torch.testing.assert_close(net(h, x, y), expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(torch.stack(net.losses(h, x, y)), torch.stack([bce, ce]),
                               rtol=1e-7, atol=0)


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "cifar10"])
def test_the_reconstruction_target_is_the_image_on_its_0_1_scale(name):
    info = datasets.dataset_info(name)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, info.channels, 5, 5), generator=gen, dtype=torch.uint8)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    target = denormalise(datasets.normalise(images, info), mean, std)
    torch.testing.assert_close(target, images.float() / 255, rtol=0, atol=1e-6)


def test_lambda_interpolation_end_points_and_middle():
    weights = module_weights((5.0, 0.2), (0.05, 0.5), 5)
    assert weights[0] == (5.0, 0.05) and weights[-1] == pytest.approx((0.2, 0.5))
    assert weights[2] == pytest.approx(((5.0 + 0.2) / 2, (0.05 + 0.5) / 2))
    steps = [b[0] - a[0] for a, b in zip(weights, weights[1:])]
    assert steps == pytest.approx([steps[0]] * 4)  # linear
    assert module_weights((5.0, 0.2), (0.05, 0.5), 1) == [(5.0, 0.05)]  # K = 2: the first


def test_the_built_aux_nets_carry_the_interpolated_weights():
    _, aux = tiny_infopro_aux(lambda_x=(2.0, 0.5), lambda_y=(0.25, 1.0))
    assert [(n.weight_x, n.weight_y) for n in aux.values()] == module_weights(
        (2.0, 0.5), (0.25, 1.0), 3)


def test_default_lambdas_follow_the_authors_table():
    assert default_lambdas("resnet32", 16) == ((5.0, 0.2), (0.05, 0.5))
    assert default_lambdas("resnet110", 4) == ((1.0, 0.0), (0.0, 1.0))
    assert default_lambdas("resnet20", 10) == DEFAULT_LAMBDAS[("resnet32", 16)]
    config = method_defaults("infopro", "resnet110", 8)
    assert (config.lambda_x, config.lambda_y) == DEFAULT_LAMBDAS[("resnet110", 8)]
    assert config.aux_config == "1c2f" and config.aux_loss == "cross_entropy"


@pytest.mark.parametrize("config", AUX_CONFIGS)
@pytest.mark.parametrize("last_stage", [False, True])
def test_aux_classifier_layers_follow_its_name(config, last_stage):
    net = aux_classifier(16, 10, config, last_stage)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert len(convs) == int(config[0]) and len(linears) == int(config[2])
    if convs:
        first = convs[0]
        expected = (16, 1) if last_stage else (32, 2)
        assert (first.out_channels, first.stride[0]) == expected
    assert net(torch.randn(2, 16, 8, 8)).shape == (2, 10)


def test_supervised_contrastive_loss_equals_its_definition():
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 1, 0, 1, 2])  # the last anchor has no positive: it adds 0
    terms = []
    for i in range(5):
        others = [k for k in range(5) if k != i]
        log_norm = torch.logsumexp(torch.stack([z[i] @ z[k] / 0.07 for k in others]), 0)
        positives = [p for p in others if y[p] == y[i]]
        terms.append(-sum(z[i] @ z[p] / 0.07 - log_norm for p in positives) / len(positives)
                     if positives else torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(supervised_contrastive_loss(z, y), torch.stack(terms).mean())


def test_the_contrastive_variant_uses_128_features():
    model, aux = tiny_infopro_aux(loss="contrast")
    images, x, y = digit_batch()
    h = model.layers[0](x).detach()
    features = aux["0"].classifier(h)
    assert features.shape == (6, 128)
    _, task = aux["0"].losses(h, x, y)
    torch.testing.assert_close(task, supervised_contrastive_loss(F.normalize(features, dim=1), y))


def test_aux_state_holds_no_normalisation():
    _, aux = tiny_infopro_aux()
    assert not any(k.endswith(("mean", "std")) and "running" not in k
                   for k in aux.state_dict())
    assert isinstance(aux["0"], InfoProAux)


@pytest.mark.parametrize("settings, match", [
    (dict(aux_config="3c3f"), r"aux_config='3c3f' is not an InfoPro aux classifier"),
    (dict(aux_loss="mse"), r"aux_loss='mse' is unknown"),
    (dict(lambda_x=(-1.0, 0.0)), r"lambda_x=\(-1.0, 0.0\) must be two finite numbers >= 0"),
    (dict(lambda_y=(1.0,)), r"lambda_y=\(1.0,\) must be two"),
    (dict(lambda_y=(1.0, float("nan"))), r"lambda_y=\(1.0, nan\)"),
    (dict(lambda_x=None), r"'infopro' needs lambda_x"),
    (dict(beta=0.5), r"'infopro' takes no beta"),
])
def test_bad_infopro_settings_are_refused(settings, match):
    base = dict(K=4, aux_config="1c2f", aux_loss="cross_entropy", lambda_x=(1.0, 0.0),
                lambda_y=(0.0, 1.0))
    with pytest.raises(ValueError, match=match):
        MethodConfig("infopro", **{**base, **settings})


def test_infopro_needs_the_normalisation_and_the_input_size():
    config = method_defaults("infopro", "resnet8", 4)
    model = build_model("resnet8", width=4, in_channels=1)
    with pytest.raises(ValueError, match=r"'infopro' needs normalisation=\(mean, std\)"):
        config.build_step(model, num_classes=10, input_size=(1, 8, 8))
    with pytest.raises(ValueError, match=r"'infopro' needs input_size"):
        config.build_step(model, num_classes=10, normalisation=((0.5,), (0.5,)))
    with pytest.raises(ValueError, match=r"InfoPro needs an integer 2 <= K <= 4"):
        method_defaults("infopro", "resnet8", 5).build_step(
            model, num_classes=10, input_size=(1, 8, 8), normalisation=((0.5,), (0.5,)))


@pytest.mark.parametrize("argv, message", [
    (["--aux-config", "3c3f"], "invalid choice: '3c3f'"),
    (["--aux-loss", "mse"], "invalid choice: 'mse'"),
    (["--lambda-x", "-1", "0"], "--lambda-x: must be a finite number >= 0, got '-1'"),
    (["--lambda-y", "1"], "--lambda-y: expected 2 arguments"),
])
def test_bad_infopro_flags_stop_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--method", "infopro", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_flags_reach_the_settings():
    config = parse_args(["--method", "infopro", "--lambda-x", "4", "0.5", "--lambda-y", "0",
                         "1", "--aux-config", "2c2f", "--aux-loss", "contrast"])
    assert (config.lambda_x, config.lambda_y) == ((4.0, 0.5), (0.0, 1.0))
    assert (config.aux_config, config.aux_loss) == ("2c2f", "contrast")


def test_check_config_refuses_a_bad_lambda_pair():
    with pytest.raises(ValueError, match=r"--lambda-x \(1.0, -2.0\): must be two values"):
        check_config(TrainConfig(method="infopro", arch="resnet8", lambda_x=(1.0, -2.0)))
