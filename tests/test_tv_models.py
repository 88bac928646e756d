"""torchvision ResNets and VGGs as layer lists, and AugLocal/DGL on them (issue 18)."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import vgg as tv_vgg

from training.auglocal import AuxBlock, aux_plan, model_aux_plan
from training.local import MethodConfig, paper_config
from training.memory import forward_macs
from training.models import build_model
from training.train import main as train_main
from training.tv_models import TV_ARCHS, TV_VGGS

METHODS = {"bp": MethodConfig("bp"),
           "auglocal": MethodConfig("auglocal", 6, 2, None, aux_rule="imagenet"),
           "dgl": MethodConfig("dgl", 6)}


def tiny(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, width=4, num_classes=3)


def blocks(text: str) -> list[AuxBlock]:
    """'4[128,s2] 8[256,s2]' → AuxBlocks (the notation of docs/auglocal.md)."""
    out = []
    for item in text.split():
        layer, rest = item.split("[")
        width, stride = rest.rstrip("]").split(",s")
        out.append(AuxBlock(int(layer), int(width), int(stride)))
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnets_compute_torchvisions_function(arch):
    reference = getattr(torchvision.models, arch)(num_classes=5).eval()
    ours = build_model(f"tv_{arch}", num_classes=5).eval()
    ours.load_state_dict(dict(zip(ours.state_dict(), reference.state_dict().values())))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("arch", sorted(TV_VGGS))
def test_vgg_layers_compute_torchvisions_features(arch):
    cfg = [c if c == "M" else c // 8 for c in tv_vgg.cfgs[TV_VGGS[arch]]]  # width 8
    reference = tv_vgg.make_layers(cfg, batch_norm=True).eval()
    ours = build_model(arch, width=8).eval()
    ours.layers.load_state_dict(dict(zip(ours.layers.state_dict(),
                                         reference.state_dict().values())))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.layers(x), reference(x))
    assert len(ours.layers) == sum(c != "M" for c in cfg)
    pools = [type(m[-1]) for m in ours.layers]
    assert pools.count(nn.MaxPool2d) == cfg.count("M")  # each pool ends the layer before it
    linear = [m for m in ours.head if isinstance(m, nn.Linear)]
    assert (linear[0].in_features, linear[0].out_features) == (64 * 49, 4096 // 8)


def test_resnet_layers_are_the_stem_and_every_block():
    model = build_model("tv_resnet101", width=4)
    assert len(model.layers) == 1 + 3 + 4 + 23 + 3
    assert [type(m) for m in model.layers.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
                                                    nn.MaxPool2d]
    assert model.layer_channels[1:] == [4 * w for w in model.layer_widths[1:]]


def test_resnet34_macs_are_the_published_count():
    model = build_model("tv_resnet34", num_classes=1000).eval()
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        macs = forward_macs(model, lambda: model(x))
    assert macs == pytest.approx(3.6e9, rel=0.03)  # He et al. 2016, Table 1: 3.6 × 10⁹


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", TV_ARCHS)
def test_every_architecture_trains_one_step(arch, method):
    model = tiny(arch)
    step = METHODS[method].build_step(model, num_classes=3, input_size=(3, 32, 32))
    optimizer = torch.optim.SGD(step.trainable.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    out = step(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    optimizer.step()
    assert torch.isfinite(out.loss) and out.logits.shape == (4, 3)
    assert all(torch.isfinite(p.grad).all() for p in step.trainable.parameters()
               if p.grad is not None)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("arch", ["tv_resnet50", "tv_vgg11_bn"])
def test_each_module_gets_only_its_own_loss_gradient(arch):
    """The step's gradient in layer i equals that of layer i's own loss alone, computed from a
    detached input: nothing crosses a module boundary."""
    model = tiny(arch)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # the VGG head's dropout would draw other masks in the two computations
    step = METHODS["auglocal"].build_step(model, num_classes=3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    step(x, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    ends = sorted(int(k) for k in step.aux) + [len(model.layers) - 1]
    start = 0
    for end in ends:
        step.trainable.zero_grad()
        with torch.no_grad():
            h = model.layers[:start](x)
        h = model.layers[start:end + 1](h)
        logits = step.aux[str(end)](h) if str(end) in step.aux else model.head(h)
        F.cross_entropy(logits, y).backward()
        for i in range(start, end + 1):
            for name, p in model.layers[i].named_parameters():
                torch.testing.assert_close(got[f"{model.layer_names[i]}.{name}"], p.grad)
        start = end + 1


RESNET34 = [64] * 4 + [128] * 4 + [256] * 6 + [512] * 3  # the authors' net_dim
RESNET34_PLAN = {  # K = 17, d = 4, no K − d reduction, constant depth; by hand from the rules
    0: "4[128,s2] 8[256,s2] 12[256,s1] 16[512,s2]",
    1: "5[128,s2] 8[256,s2] 12[256,s1] 16[512,s2]",
    2: "6[128,s2] 9[256,s2] 12[256,s1] 16[512,s2]",
    3: "6[128,s2] 10[256,s2] 13[256,s1] 16[512,s2]",
    4: "7[128,s1] 10[256,s2] 13[256,s1] 16[512,s2]",
    5: "8[256,s2] 10[256,s1] 13[256,s1] 16[512,s2]",
    6: "8[256,s2] 11[256,s1] 14[512,s2] 16[512,s1]",
    7: "9[256,s2] 12[256,s1] 14[512,s2] 16[512,s1]",
    8: "10[256,s1] 12[256,s1] 14[512,s2] 16[512,s1]",
    9: "11[256,s1] 12[256,s1] 14[512,s2] 16[512,s1]",
    10: "12[256,s1] 13[256,s1] 14[512,s2] 16[512,s1]",
    11: "12[256,s1] 14[512,s2] 15[512,s1] 16[512,s1]",
    12: "13[256,s1] 14[512,s2] 15[512,s1] 16[512,s1]",  # 4 later layers: all of them
    13: "14[512,s2] 15[512,s1] 16[512,s1]",
    14: "15[512,s1] 16[512,s1]",
    15: "16[512,s1]",
}


def test_resnet34_imagenet_plan_matches_the_hand_table():
    plan = aux_plan(RESNET34, 17, 4, None, reduce=False)
    assert plan == {layer: blocks(text) for layer, text in RESNET34_PLAN.items()}
    model = build_model("tv_resnet34")
    assert model.layer_widths == RESNET34
    assert model_aux_plan(model, 17, 4, None, reduce=False) == plan


def test_resnet101_imagenet_plan_matches_the_hand_table():
    widths = [64] + [64] * 3 + [128] * 4 + [256] * 23 + [512] * 3  # planes; ×4 channels
    plan = aux_plan(widths, 34, 4, None, reduce=False)
    assert list(plan) == list(range(33))  # block 33 + head: the output loss
    hand = {0: "8[256,s2] 16[256,s2] 25[256,s1] 33[512,s2]",  # 64 → 256 carries a stride
            1: "9[256,s2] 17[256,s2] 25[256,s1] 33[512,s2]",
            7: "14[256,s2] 20[256,s1] 26[256,s1] 33[512,s2]",
            15: "20[256,s1] 24[256,s1] 28[256,s1] 33[512,s2]",
            29: "30[256,s1] 31[512,s2] 32[512,s1] 33[512,s1]",
            30: "31[512,s2] 32[512,s1] 33[512,s1]", 31: "32[512,s1] 33[512,s1]",
            32: "33[512,s1]"}
    assert {layer: plan[layer] for layer in hand} == {k: blocks(v) for k, v in hand.items()}
    assert build_model("tv_resnet101", width=4).layer_widths == [w // 16 for w in widths]


def test_the_cifar_rule_reduces_k_and_the_imagenet_rule_does_not():
    assert len(aux_plan(RESNET34, 17, 4, None)) == 17 - 4 - 1
    assert len(aux_plan(RESNET34, 17, 4, None, reduce=False)) == 17 - 1


def test_vgg13_aux_nets_sit_on_the_authors_layers():
    cfg = tv_vgg.cfgs["B"]
    conv_positions = [i for i, c in enumerate(cfg) if c != "M"]  # the authors' feature index
    step = paper_like_vgg13()
    assert [conv_positions[int(k)] for k in step.aux] == [0, 1, 3, 4, 6, 7, 9, 10, 12]


def paper_like_vgg13():
    model = build_model("tv_vgg13_bn", width=8)
    return MethodConfig("auglocal", 10, 3, None, aux_rule="imagenet").build_step(
        model, num_classes=3)


def test_vgg_aux_nets_pool_where_the_width_changes():
    step = paper_like_vgg13()
    model = step.model
    for key, net in step.aux.items():
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        c_ins = [model.layer_widths[int(key)]] + [c.out_channels for c in convs[:-1]]
        pools = [i for i, m in enumerate(net) if isinstance(m, nn.MaxPool2d)]
        assert len(pools) == sum(c.out_channels != c_in for c, c_in in zip(convs, c_ins))
        linear = [m for m in net if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linear] == [(64, 64), (64, 64), (64, 3)]
        assert any(isinstance(m, nn.AdaptiveAvgPool1d) for m in net)


def test_bottleneck_aux_blocks_are_bottlenecks_with_four_times_the_planes():
    model = tiny("tv_resnet50")
    step = METHODS["auglocal"].build_step(model, num_classes=3)
    plan = model_aux_plan(model, 6, 2, None, reduce=False)
    for key, net in step.aux.items():
        body = [m for m in net if isinstance(m, torchvision.models.resnet.Bottleneck)]
        assert [m.conv3.out_channels for m in body] == [4 * b.width for b in plan[int(key)]]
        assert not any(isinstance(m, nn.BatchNorm1d) for m in net)  # GAP → Linear, no BN


def test_paper_config_of_resnet34_is_the_imagenet_rule():
    config = paper_config("auglocal", "tv_resnet34")
    assert (config.K, config.aux_depth, config.pyramid_coeff, config.aux_rule) == \
        (17, 4, None, "imagenet")
    assert MethodConfig.from_dict(config.to_dict()) == config


def test_dry_run_prints_the_plan_and_costs_at_224(capsys):
    train_main(["--method", "auglocal", "--arch", "tv_resnet34", "--width", "8", "--K", "17",
                "--aux-depth", "4", "--pyramid-coeff", "0", "--dataset", "imagefolder",
                "--dry-run"])
    out = capsys.readouterr().out
    assert "3×224×224" in out and "| 0 | 8 | 4 | 4[16,s2] 8[32,s2] 12[32,s1] 16[64,s2] |" in out
    assert "| 16–16 + head |" in out and "forward MACs per image" in out


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="unknown architecture 'tv_resnet152'.*tv_resnet34"):
        build_model("tv_resnet152")


def test_unknown_aux_rule_is_refused():
    with pytest.raises(ValueError, match="aux_rule='imagenette' is unknown"):
        MethodConfig("auglocal", 6, 2, aux_rule="imagenette")
    with pytest.raises(ValueError, match="takes no aux_rule"):
        MethodConfig("dgl", 6, aux_rule="imagenet")


def test_imagenet_rule_needs_two_modules():
    with pytest.raises(ValueError, match="K=1 leaves no aux net"):
        aux_plan(RESNET34, 1, 4, None, reduce=False)
