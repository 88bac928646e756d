"""AugLocal's aux-net plan against the golden tables of docs/auglocal.md, and the aux nets built
from it."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from training.auglocal import (
    aux_depths,
    aux_plan,
    build_auglocal_aux,
    build_dgl_aux,
    effective_modules,
    render_plan,
    sample_layers,
)
from training.models import BasicBlock, build_model

RESNET32 = [16] * 6 + [32] * 5 + [64] * 5
RESNET110 = [16] * 19 + [32] * 18 + [64] * 18

# docs/auglocal.md, section "Golden plans": ResNet-32, K=16, aux_depth=2, pyramid_coeff=0.5:
# layers → aux blocks.
GOLDEN_D2 = {
    (0, 1, 2): "8[32,s2] 15[64,s2]",
    (3,): "9[32,s2] 15[64,s2]",
    (4, 5): "10[32,s2] 15[64,s2]",
    (6,): "10[32,s1] 15[64,s2]",
    (7,): "11[64,s2] 15[64,s1]",
    (8, 9, 10): "12[64,s2] 15[64,s1]",
    (11,): "13[64,s1] 15[64,s1]",
    (12,): "14[64,s1] 15[64,s1]",
}
# Same, aux_depth=3 (some rows).
GOLDEN_D3 = {
    0: "5[16,s1] 10[32,s2] 15[64,s2]",
    1: "6[32,s2] 10[32,s1] 15[64,s2]",
    2: "6[32,s2] 11[64,s2] 15[64,s1]",
    5: "8[32,s2] 12[64,s2] 15[64,s1]",
    6: "10[32,s1] 15[64,s2]",
    11: "13[64,s1] 15[64,s1]",
}


def rendered(blocks):
    return " ".join(map(str, blocks))


def test_golden_plan_resnet32_d2():
    plan = aux_plan(RESNET32, K=16, aux_depth=2, pyramid_coeff=0.5)
    expected = {layer: row for layers, row in GOLDEN_D2.items() for layer in layers}
    assert {layer: rendered(blocks) for layer, blocks in plan.items()} == expected


def test_golden_plan_resnet32_d3():
    plan = aux_plan(RESNET32, K=16, aux_depth=3, pyramid_coeff=0.5)
    assert list(plan) == list(range(12))  # K_eff = 13
    for layer, row in GOLDEN_D3.items():
        assert rendered(plan[layer]) == row


@pytest.mark.parametrize("K_eff, aux_depth, expected", [
    (13, 3, [3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2]),
    (11, 5, [5, 5, 5, 4, 4, 4, 4, 3, 3, 3]),
    (14, 2, [2] * 13),
])
def test_golden_pyramid_depths(K_eff, aux_depth, expected):
    assert aux_depths(K_eff, aux_depth, 0.5) == expected
    plan = aux_plan(RESNET32, K=K_eff + aux_depth, aux_depth=aux_depth, pyramid_coeff=0.5)
    assert [len(blocks) for blocks in plan.values()] == expected


def test_no_pyramid_and_zero_coeff_give_constant_depth():
    assert aux_depths(11, 5, None) == aux_depths(11, 5, 0.0) == [5] * 10


@pytest.mark.parametrize("widths, K, aux_depth, last_aux_layer", [
    (RESNET32, 16, 2, 12), (RESNET110, 55, 3, 50), (RESNET32, 16, 5, 9)])
def test_effective_module_count(widths, K, aux_depth, last_aux_layer):
    assert effective_modules(K, aux_depth) == K - aux_depth
    assert list(aux_plan(widths, K, aux_depth, 0.5)) == list(range(last_aux_layer + 1))


def test_rounding_is_half_to_even():
    # docs/auglocal.md, "Aux nets by uniform sampling": round(7.5) = 8 and round(12.5) = 12
    # decide layer 0's and layer 10's first block
    assert sample_layers(0, 16, 2) == [8, 15]
    assert sample_layers(10, 16, 2) == [12, 15]


def test_sampling_takes_all_later_layers_when_few_remain():
    assert sample_layers(12, 16, 3) == [13, 14, 15]
    assert sample_layers(13, 16, 5) == [14, 15]


def test_render_plan_lists_every_aux_net_and_the_last_module():
    plan = aux_plan(RESNET32, K=16, aux_depth=2, pyramid_coeff=0.5)
    table = render_plan(plan, RESNET32)
    lines = table.splitlines()
    assert len(lines) == 2 + len(plan) + 1
    assert "| 7 | 32 | 2 | 11[64,s2] 15[64,s1] |" in lines
    assert lines[-1].startswith("| 13–15 + head |")


@st.composite
def plan_inputs(draw):
    stages = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    doublings = draw(st.lists(st.integers(0, 2), min_size=len(stages), max_size=len(stages)))
    widths, w = [], draw(st.sampled_from([1, 4, 16]))
    for count, k in zip(stages, doublings):
        w *= 2**k
        widths += [w] * count
    aux_depth = draw(st.integers(1, 4))
    K = draw(st.integers(min(aux_depth + 2, len(widths)), len(widths)))
    pyramid_coeff = draw(st.one_of(st.none(), st.floats(0, 1)))
    return widths, K, aux_depth, pyramid_coeff


@settings(max_examples=200, deadline=None)
@given(plan_inputs())
def test_plan_properties(args):
    widths, K, aux_depth, pyramid_coeff = args
    if K - aux_depth < 2:
        with pytest.raises(ValueError, match="K_eff"):
            aux_plan(widths, K, aux_depth, pyramid_coeff)
        return
    plan = aux_plan(widths, K, aux_depth, pyramid_coeff)
    depths = aux_depths(K - aux_depth, aux_depth, pyramid_coeff)
    assert list(plan) == list(range(K - aux_depth - 1))
    assert depths[0] == aux_depth and all(1 <= a <= aux_depth for a in depths)
    assert all(a >= b for a, b in zip(depths, depths[1:]))  # the pyramid never deepens
    for layer, blocks in plan.items():
        mirrored = [b.layer for b in blocks]
        assert len(blocks) == depths[layer]
        assert mirrored == sorted(set(mirrored)) and mirrored[0] > layer
        assert mirrored[-1] == len(widths) - 1
        assert all(b.width == widths[b.layer] for b in blocks)
        # each stride-2 is paid for by a width doubling; a stride-1 block leaves none unpaid
        for k in range(1, len(blocks) + 1):
            downsamples = sum(b.stride == 2 for b in blocks[:k])
            doublings = round(math.log2(blocks[k - 1].width / widths[layer]))
            assert downsamples <= doublings
            assert blocks[k - 1].stride == 2 or downsamples == doublings


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=RESNET32, K=17, aux_depth=2), r"K=17 .* 16 layers"),
    (dict(widths=RESNET32, K=3, aux_depth=2), r"K_eff = K - aux_depth = 1"),
    (dict(widths=RESNET32, K=16, aux_depth=0), r"aux_depth=0"),
    (dict(widths=RESNET32, K=16, aux_depth=2, pyramid_coeff=1.5), r"pyramid_coeff=1.5"),
    (dict(widths=RESNET32, K=16, aux_depth=2, pyramid_coeff=-0.1), r"pyramid_coeff=-0.1"),
    (dict(widths=[16, 24, 24, 24], K=4, aux_depth=1), r"24/16"),
    (dict(widths=[32, 16, 16, 16], K=4, aux_depth=1), r"16/32"),
    (dict(widths=[], K=4, aux_depth=1), r"non-empty"),
    (dict(widths=[16, 0], K=2, aux_depth=1), r"positive"),
])
def test_plan_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aux_plan(**kwargs)


def test_aux_depths_errors():
    with pytest.raises(ValueError, match="K_eff = K - aux_depth = 1"):
        aux_depths(1, 2, 0.5)


def tiny_model(**kwargs):
    return build_model("resnet20", width=4, num_classes=3, **kwargs)  # 10 layers, widths 4/8/16


@pytest.mark.parametrize("aux_depth, pyramid_coeff", [(1, None), (2, 0.5), (3, 1.0)])
def test_auglocal_aux_nets_follow_the_plan(aux_depth, pyramid_coeff):
    model = tiny_model()
    aux = build_auglocal_aux(model, K=10, aux_depth=aux_depth, pyramid_coeff=pyramid_coeff,
                             num_classes=3)
    plan = aux_plan(model.layer_widths, 10, aux_depth, pyramid_coeff)
    assert list(aux) == [str(layer) for layer in plan]
    for layer, blocks in plan.items():
        net = aux[str(layer)]
        built = [m for m in net if isinstance(m, BasicBlock)]
        c_ins = [model.layer_widths[layer]] + [b.width for b in blocks[:-1]]
        assert [(m.conv1.in_channels, m.conv1.out_channels, m.conv1.stride[0]) for m in built] \
            == [(c, b.width, b.stride) for c, b in zip(c_ins, blocks)]
        has_bn1d = any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
        assert has_bn1d == (len(blocks) <= 1)
        assert isinstance(net[-1][-1], nn.Linear) and net[-1][-1].out_features == 3
        x_l = torch.randn(2, model.layer_widths[layer], 8, 8)
        assert net(x_l).shape == (2, 3)


def test_auglocal_aux_uses_the_primary_initialisation():
    aux = build_auglocal_aux(build_model("resnet32"), K=16, aux_depth=2, pyramid_coeff=0.5,
                             num_classes=10)
    convs = [m for m in aux.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
             and m.out_channels == 64]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert weights.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.02)
    for m in aux.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_aux_nets_share_no_parameters_with_the_model():
    model = tiny_model()
    primary = {p.data_ptr() for p in model.parameters()}
    for aux in (build_auglocal_aux(model, 10, 2, 0.5, 3),
                build_dgl_aux(model, 10, 3, (3, 8, 8))):
        assert primary.isdisjoint(p.data_ptr() for p in aux.parameters())


@pytest.mark.parametrize("input_size", [(3, 8, 8), (3, 8, 12)])
def test_dgl_aux_nets_are_sized_by_the_spatial_size(input_size):
    model = tiny_model()
    aux = build_dgl_aux(model, K=10, num_classes=3, input_size=input_size)
    assert list(aux) == [str(i) for i in range(9)]
    # CIFAR ResNet: stage s (layers 0–3, 4–6, 7–9 here) runs at 1/2^s of the input size
    stage = [0] * 4 + [1] * 3 + [2] * 3
    for layer, net in aux.items():
        i = int(layer)
        c = model.layer_widths[i]
        sizes = [math.ceil(math.ceil(s / 2 ** stage[i]) / 4) for s in input_size[1:]]
        s_h, s_w = (min(s, 2) for s in sizes)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == \
            [(c * s_h * s_w, c * s_h * s_w)] * 2 + [(c * s_h * s_w, 3)]
        assert sum(isinstance(m, nn.Conv2d) for m in net) == 3
        h = torch.randn(2, c, *(math.ceil(s / 2 ** stage[i]) for s in input_size[1:]))
        assert net(h).shape == (2, 3)


def test_dgl_dry_forward_leaves_batchnorm_statistics_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_dgl_aux(model, K=4, num_classes=3, input_size=(3, 8, 8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, match", [
    (dict(K=11, input_size=(3, 8, 8)), r"2 <= K <= 10 .* K=11"),
    (dict(K=1, input_size=(3, 8, 8)), r"K=1"),
    (dict(K=4, input_size=(8, 8)), r"\(8, 8\) is not \(channels, height, width\)"),
    (dict(K=4, input_size=(3, 0, 8)), r"positive"),
])
def test_dgl_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_dgl_aux(tiny_model(), num_classes=3, **kwargs)
