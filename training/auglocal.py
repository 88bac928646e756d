"""Auxiliary networks of local learning: AugLocal's plan and blocks, and DGL's small aux nets.

AugLocal (Ma et al., ICLR 2024; described in ``docs/auglocal.md``): the aux net of layer ``l``
is a stack of fresh residual blocks mirroring a uniform sample of the primary network's later
layers, then GAP → Linear. :func:`aux_plan` is the pure description of those stacks (inspect
it, print it with :func:`render_plan`); :func:`build_auglocal_aux` turns it into modules. DGL
(Belilovsky et al. 2020; ``docs/auglocal.md``, section "DGL-style aux nets") uses one small
fixed aux net per layer: :func:`build_dgl_aux`.

Settings (the names of ``MethodConfig`` and the checkpoint's ``method``): ``K`` local modules
requested, ``aux_depth`` (d, ``--aux-depth``) the blocks of the deepest aux net,
``pyramid_coeff`` (τ, ``--pyramid-coeff``) how far the pyramid lowers the depth. ``depth``
alone always means the depth of one aux net.

Module count (``docs/auglocal.md``, section "Layers and local modules"): AugLocal puts aux nets
on layers ``0 … K_eff − 2`` with ``K_eff = K − aux_depth``; every later layer joins the last
module, which the output loss trains. DGL puts aux nets on layers ``0 … K − 2``. When ``K`` is
below the number of layers, the first modules are therefore single layers and the last one
holds the rest (InfoPro's code instead groups layers evenly from a per-K table; we do not).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from training.models import BasicBlock, init_weights
from training.tv_models import resnet_block

D_MIN = 1  # the shallowest aux net the pyramid may reach (docs/auglocal.md, "Pyramidal depth")
SAMPLINGS = ("uniform", "nearest", "random")  # aux-layer sampling rules (sample_layers)


class AuxBlock(NamedTuple):
    """One block of an aux net: a fresh copy of primary layer ``layer``'s block type."""

    layer: int   # index of the primary layer it mirrors
    width: int   # output channels
    stride: int  # 1 or 2

    def __str__(self) -> str:
        return f"{self.layer}[{self.width},s{self.stride}]"


def effective_modules(K: int, aux_depth: int, reduce: bool = True) -> int:
    """The number of local modules AugLocal actually trains: ``K_eff = K − aux_depth`` under
    the CIFAR rule (``reduce``), ``K`` under the authors' ImageNet rule (``docs/auglocal.md``,
    sections "Layers and local modules" and "ImageNet networks")."""
    return K - aux_depth if reduce else K


def aux_depths(K_eff: int, aux_depth: int, pyramid_coeff: float | None) -> list[int]:
    """Depths of the ``K_eff − 1`` aux nets, one per layer ``0 … K_eff − 2``
    (``docs/auglocal.md``, section "Pyramidal depth").

    ``pyramid_coeff=None`` disables the pyramid (every depth is ``aux_depth``); otherwise,
    with d = ``aux_depth`` and τ = ``pyramid_coeff``, depth falls linearly from d towards
    d − τ·(d − 1), rounded half-to-even.
    """
    _check_schedule(K_eff, aux_depth, pyramid_coeff)
    d, tau = aux_depth, pyramid_coeff
    if tau is None:
        return [d] * (K_eff - 1)
    span = max(K_eff - 2, 1)  # K_eff = 2 has only layer 0, where r = 0 whatever the span
    depths = []
    for i in range(K_eff - 1):
        r = tau * i / span
        depths.append(max(D_MIN, round(d * (1 - r) + D_MIN * r)))
    return depths


def sample_layers(layer: int, n_layers: int, depth: int, sampling: str = "uniform",
                  seed: int | None = None) -> list[int]:
    """Indices, ascending, of the primary layers that layer ``layer``'s aux net of depth
    ``depth`` mirrors (``docs/auglocal.md``, sections "Aux nets by uniform sampling" and
    "Sampling ablations").

    ``sampling``: ``uniform`` (the paper's rule: evenly spaced later layers ending at
    ``n_layers − 1``), ``nearest`` (the next ``depth`` layers) or ``random`` (layer
    ``n_layers − 1`` plus ``depth − 1`` others drawn without replacement from the later layers
    by a generator seeded with ``(seed, layer)``). ``uniform`` and ``nearest`` take all later
    layers when there are no more than ``depth`` of them (unreachable from :func:`aux_plan`,
    whose ``K_eff`` rule always leaves more than ``depth``); ``random`` refuses that case.
    """
    _check_sampling(sampling, seed)
    remaining = n_layers - 1 - layer
    if sampling == "random":
        if depth > remaining:
            raise ValueError(
                f"aux sampling 'random' draws {depth} of the later layers of layer {layer}, "
                f"but only {remaining} follow it in a {n_layers}-layer network; lower "
                "--aux-depth or K, or use --aux-sampling uniform"
            )
        rng = np.random.default_rng([seed, layer])
        drawn = rng.choice(np.arange(layer + 1, n_layers - 1), size=depth - 1, replace=False)
        return sorted(int(i) for i in drawn) + [n_layers - 1]
    if depth >= remaining:
        return list(range(layer + 1, n_layers))
    if sampling == "nearest":
        return list(range(layer + 1, layer + depth + 1))
    return [round(layer + k * remaining / depth) for k in range(1, depth + 1)]


def plan_blocks(widths: Sequence[int], layer: int, sampled: Sequence[int]) -> list[AuxBlock]:
    """Blocks mirroring ``sampled`` with the stride carry-over rule (``docs/auglocal.md``,
    section "Strides").

    Each doubling of the width asks for one stride-2; a quadrupling carries its second
    stride-2 over to the next block (or, on the last block, leaves it to the pooling).
    """
    blocks = []
    pending, c_prev = 0, widths[layer]
    for j in sampled:
        pending += int(math.log2(widths[j] // c_prev))
        stride = 2 if pending >= 1 else 1
        pending -= stride - 1
        blocks.append(AuxBlock(j, widths[j], stride))
        c_prev = widths[j]
    return blocks


def aux_plan(widths: Sequence[int], K: int, aux_depth: int,
             pyramid_coeff: float | None = None, *, sampling: str = "uniform",
             seed: int | None = None, reduce: bool = True) -> dict[int, list[AuxBlock]]:
    """AugLocal's aux nets: layer index → its blocks, for layers ``0 … K − aux_depth − 2``
    (``reduce=False``, the authors' ImageNet rule: layers ``0 … K − 2``).

    ``widths[i]`` is the output channel count of primary layer ``i`` (``model.layer_widths``).
    ``pyramid_coeff=None``: every aux net has ``aux_depth`` blocks; else the pyramidal schedule
    of :func:`aux_depths`. ``sampling`` and ``seed``: which later layers each aux net mirrors
    (:func:`sample_layers`). Example (ResNet-32, K=16, aux_depth=2): ``plan[7]`` is
    ``[AuxBlock(11, 64, 2), AuxBlock(15, 64, 1)]`` (``docs/auglocal.md``, section
    "Golden plans").
    """
    _check_widths(widths)
    if not isinstance(K, int) or K > len(widths):
        raise ValueError(
            f"K={K!r} local modules but the network has {len(widths)} layers; "
            f"choose an integer K <= {len(widths)}"
        )
    if not reduce and K < 2:
        raise ValueError(f"K={K!r} leaves no aux net; choose 2 <= K <= {len(widths)}")
    depths = aux_depths(effective_modules(K, aux_depth, reduce), aux_depth, pyramid_coeff)
    return {
        layer: plan_blocks(widths, layer,
                           sample_layers(layer, len(widths), depth, sampling, seed))
        for layer, depth in enumerate(depths)
    }


def render_plan(plan: dict[int, list[AuxBlock]], widths: Sequence[int]) -> str:
    """A plan as a markdown table, one row per aux net: layer, input width, depth, blocks."""
    rows = ["| layer | C in | depth | aux blocks (layer[width,stride]) |", "|---|---|---|---|"]
    for layer, blocks in plan.items():
        rows.append(f"| {layer} | {widths[layer]} | {len(blocks)} | "
                    f"{' '.join(map(str, blocks))} |")
    last = len(plan)  # aux nets sit on layers 0 … len(plan) − 1
    rows.append(f"| {last}–{len(widths) - 1} + head | | | output loss (last module) |")
    return "\n".join(rows)


def auglocal_head(channels: int, num_classes: int, depth: int) -> nn.Sequential:
    """GAP → Flatten → (BatchNorm1d when ``depth`` ≤ 1) → Linear: (B, C, H, W) → (B, classes).

    ``depth``: the blocks of this aux net (``docs/auglocal.md``, section "Aux head and loss").
    """
    norm = [nn.BatchNorm1d(channels)] if depth <= 1 else []
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *norm,
                         nn.Linear(channels, num_classes))


def model_aux_plan(model: nn.Module, K: int, aux_depth: int, pyramid_coeff: float | None,
                   **options) -> dict[int, list[AuxBlock]]:
    """:func:`aux_plan` of ``model.layer_widths`` (``options``: its keywords), with the VGG
    pooling rule for VGGs: a block's stride 2 means a 2×2 max-pool before its conv, wherever
    the width changes (one pool even where it quadruples; no carry-over)."""
    plan = aux_plan(model.layer_widths, K, aux_depth, pyramid_coeff, **options)
    if getattr(model, "aux_family", "cifar") != "vgg":
        return plan
    widths = model.layer_widths
    return {layer: [b._replace(stride=1 if b.width == c_prev else 2)
                    for b, c_prev in zip(blocks, [widths[layer]] + [b.width for b in blocks])]
            for layer, blocks in plan.items()}


def cifar_aux_net(model: nn.Module, layer: int, blocks: list[AuxBlock],
                  num_classes: int) -> nn.Sequential:
    """CIFAR ResNets: new ``BasicBlock``s → :func:`auglocal_head`."""
    c_ins = [model.layer_widths[layer]] + [b.width for b in blocks[:-1]]
    body = [BasicBlock(c_in, b.width, b.stride) for c_in, b in zip(c_ins, blocks)]
    return nn.Sequential(*body, auglocal_head(blocks[-1].width, num_classes, len(blocks)))


def tv_resnet_aux_net(model: nn.Module, layer: int, blocks: list[AuxBlock],
                      num_classes: int) -> nn.Sequential:
    """torchvision ResNets (the authors' ImageNet code): new blocks of the network's type
    (BasicBlock, or Bottleneck with ``width`` in planes, ×4 channels) → GAP → Linear, no BN."""
    block = model.block_type
    c_in, body = model.layer_channels[layer], []
    for b in blocks:
        body.append(resnet_block(block, c_in, b.width, b.stride))
        c_in = b.width * block.expansion
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c_in, num_classes))


def vgg_aux_net(model: nn.Module, layer: int, blocks: list[AuxBlock],
                num_classes: int) -> nn.Sequential:
    """VGGs (the authors' ImageNet code): per block [2×2 max-pool if stride 2] → conv3×3 →
    BN → ReLU; then Flatten → adaptive average pool of the flat vector to h → 2 × [Linear(h, h),
    BN1d, ReLU] → Linear(h, classes), h = the widest layer (512 at width 64)."""
    c_in, body = model.layer_widths[layer], []
    for b in blocks:
        pool = [nn.MaxPool2d(2, stride=2)] if b.stride == 2 else []
        body += [*pool, nn.Conv2d(c_in, b.width, 3, padding=1), nn.BatchNorm2d(b.width),
                 nn.ReLU(inplace=True)]
        c_in = b.width
    h = max(model.layer_widths)
    mlp = [m for _ in range(2) for m in (nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU())]
    return nn.Sequential(*body, nn.Flatten(), nn.AdaptiveAvgPool1d(h), *mlp,
                         nn.Linear(h, num_classes))


AUX_NETS = {"cifar": cifar_aux_net, "basic": tv_resnet_aux_net,
            "bottleneck": tv_resnet_aux_net, "vgg": vgg_aux_net}  # by model.aux_family


def build_auglocal_aux(model: nn.Module, K: int, aux_depth: int, pyramid_coeff: float | None,
                       num_classes: int, *, sampling: str = "uniform",
                       seed: int | None = None, reduce: bool = True) -> nn.ModuleDict:
    """AugLocal aux nets for ``model`` (anything with ``layer_widths``), keyed by str(layer).

    Each net: (B, C_l, H, W) → blocks of :func:`model_aux_plan` → logits (B, num_classes),
    built by the :data:`AUX_NETS` entry of ``model.aux_family`` (CIFAR ResNets have none).
    Blocks are new, with the primary initialisation; nothing is shared.
    """
    plan = model_aux_plan(model, K, aux_depth, pyramid_coeff, sampling=sampling, seed=seed,
                          reduce=reduce)
    build = AUX_NETS[getattr(model, "aux_family", "cifar")]
    nets = {str(layer): build(model, layer, blocks, num_classes)
            for layer, blocks in plan.items()}
    aux = nn.ModuleDict(nets)
    init_weights(aux)
    return aux


def dgl_aux_net(channels: int, spatial: tuple[int, int], num_classes: int) -> nn.Sequential:
    """DGL's aux net for a (B, C, H, W) input with ``spatial = (H, W)`` (``docs/auglocal.md``,
    section "DGL-style aux nets").

    Pool to ⌈S/4⌉ → 3 × [1×1 conv C→C, BN, ReLU] → pool to s = min(⌈S/4⌉, 2) → Flatten →
    2 × [Linear, BN1d, ReLU] of width C·s² → Linear → (B, num_classes); per axis for H ≠ W.
    """
    first = tuple(math.ceil(size / 4) for size in spatial)
    second = tuple(min(size, 2) for size in first)
    hidden = channels * second[0] * second[1]
    convs = [m for _ in range(3) for m in
             (nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())]
    mlp = [m for _ in range(2) for m in
           (nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU())]
    return nn.Sequential(nn.AdaptiveAvgPool2d(first), *convs, nn.AdaptiveAvgPool2d(second),
                         nn.Flatten(), *mlp, nn.Linear(hidden, num_classes))


def layer_output_shapes(model: nn.Module, input_size: Sequence[int]) -> list[tuple[int, ...]]:
    """(C, H, W) of each ``model.layers`` output for one (C, H, W) input, by a dry forward.

    Runs in eval mode under ``no_grad`` so BatchNorm running statistics stay untouched.
    """
    if len(input_size) != 3 or any(not isinstance(s, int) or s < 1 for s in input_size):
        raise ValueError(
            f"input_size={tuple(input_size)!r} is not (channels, height, width) of positive "
            "ints; pass e.g. (3, 32, 32)"
        )
    was_training = model.training
    model.eval()
    shapes = []
    try:
        with torch.no_grad():
            p = next(model.parameters())
            h = torch.zeros(1, *input_size, device=p.device, dtype=p.dtype)
            for layer in model.layers:
                h = layer(h)
                shapes.append(tuple(h.shape[1:]))
    finally:
        model.train(was_training)
    return shapes


def module_ends(K: int, n_layers: int, method: str) -> range:
    """Layers ``0 … K − 2``: where DGL, InfoPro and PredSim put their aux nets (no K − d
    reduction); refuses K outside ``2 … n_layers``, naming ``method``."""
    if not isinstance(K, int) or not 2 <= K <= n_layers:
        raise ValueError(
            f"{method} needs an integer 2 <= K <= {n_layers} (the number of layers), got K={K!r}"
        )
    return range(K - 1)


def build_dgl_aux(model: nn.Module, K: int, num_classes: int,
                  input_size: Sequence[int]) -> nn.ModuleDict:
    """DGL aux nets on layers ``0 … K − 2`` of ``model``, keyed by str(layer).

    ``input_size`` is one input's (C, H, W); the spatial size each aux net sees comes from a
    dry forward of ``model.layers``.
    """
    layers = module_ends(K, len(model.layers), "DGL")
    shapes = layer_output_shapes(model, input_size)
    aux = nn.ModuleDict({
        str(layer): dgl_aux_net(shapes[layer][0], shapes[layer][1:], num_classes)
        for layer in layers
    })
    init_weights(aux)
    return aux


def _check_schedule(K_eff: int, aux_depth: int, pyramid_coeff: float | None) -> None:
    if not isinstance(aux_depth, int) or aux_depth < 1:
        raise ValueError(f"aux_depth={aux_depth!r} must be an integer >= 1, e.g. 2")
    if not isinstance(K_eff, int) or K_eff < 2:
        raise ValueError(
            f"K_eff = K - aux_depth = {K_eff!r} leaves no aux net (need K_eff >= 2); "
            f"raise K to at least aux_depth + 2 = {aux_depth + 2} or lower aux_depth"
        )
    if pyramid_coeff is not None and not 0.0 <= pyramid_coeff <= 1.0:
        raise ValueError(
            f"pyramid_coeff={pyramid_coeff!r} must lie in [0, 1] (0.5 in the paper), "
            "or be None for no pyramid"
        )


def _check_sampling(sampling: str, seed: int | None) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"aux sampling {sampling!r} is unknown; choose one of "
                         f"{', '.join(SAMPLINGS)}")
    if (sampling == "random") != (seed is not None):
        raise ValueError(f"aux sampling {sampling!r} with seed={seed!r}: 'random' needs an "
                         "integer seed and the other rules take none (pass seed=None)")


def _check_widths(widths: Sequence[int]) -> None:
    """Widths must be positive and non-decreasing by powers of 2 (the stride rule's log2)."""
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths={list(widths)!r} must be a non-empty list of positive ints")
    for i in range(1, len(widths)):
        ratio = widths[i] / widths[i - 1]
        if ratio < 1 or not ratio.is_integer() or not math.log2(ratio).is_integer():
            raise ValueError(
                f"width ratio {widths[i]}/{widths[i - 1]} between layers {i - 1} and {i} is "
                "not a power of 2 >= 1; AugLocal's stride rule needs widths that stay equal "
                "or double (e.g. 16, 32, 64)"
            )
