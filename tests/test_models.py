import math

import pytest
import torch
from torch import nn

from training.models import BLOCKS_PER_STAGE, BasicBlock, build_model


@pytest.mark.parametrize("arch, n_layers", [("resnet8", 4), ("resnet20", 10),
                                            ("resnet32", 16), ("resnet110", 55)])
def test_layer_count_is_stem_plus_every_block(arch, n_layers):
    model = build_model(arch, width=4)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(model.layer_names) == n_layers == len(blocks) + 1
    assert len(model.layer_widths) == n_layers
    modules = dict(model.named_modules())
    assert all(name in modules for name in model.layer_names)


def test_layer_widths_follow_the_three_stages():
    model = build_model("resnet32")
    assert model.layer_widths == [16] * 6 + [32] * 5 + [64] * 5


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 8)])
def test_output_shapes(channels, size):
    model = build_model("resnet14", width=8, in_channels=channels, num_classes=7).eval()
    x = torch.randn(5, channels, size, size)
    assert model(x).shape == (5, 7)
    shapes = []
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o: shapes.append(tuple(o.shape))) for n in model.layer_names]
    model(x)
    for h in hooks:
        h.remove()
    assert [s[1] for s in shapes] == model.layer_widths
    assert shapes[-1][2] == math.ceil(math.ceil(size / 2) / 2)


def test_conv_initialisation_matches_the_he_scheme():
    torch.manual_seed(0)
    model = build_model("resnet20", width=64)
    conv = model.layers[-1].conv2          # 3×3, 256 → 256 channels: ~590k weights
    assert isinstance(conv, nn.Conv2d)
    expected = math.sqrt(2 / (9 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(conv.weight.mean().item()) < 0.01 * expected


def test_registry_names_depths():
    assert all(int(name.removeprefix("resnet")) == 6 * n + 2
               for name, n in BLOCKS_PER_STAGE.items())


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown architecture 'resnet18'.*resnet20"):
        build_model("resnet18")


def test_invalid_sizes_are_refused():
    with pytest.raises(ValueError, match="num_classes=1"):
        build_model("resnet8", num_classes=1)
