"""torchvision's ImageNet ResNets and VGGs (with BN) as a flat sequence of *layers*.

Built from torchvision's own definitions (``torchvision.models.resnet.BasicBlock`` and
``Bottleneck``, ``torchvision.models.vgg.cfgs``), with torchvision's initialisation (Kaiming
normal, fan-out, for convs; BN γ=1, β=0; ``zero_init_residual`` off), laid out like
:class:`training.models.ResNet` so local learning, extraction and every analysis work
unchanged: ``model.layers`` (nn.Sequential) then ``model.head``, ``model.layer_names``,
``model.layer_widths``.

* ResNets: layer 0 is the stem (7×7 conv stride 2 → BN → ReLU → 3×3 max-pool stride 2), then
  every residual block. ``layer_widths`` are the blocks' *planes* (the stem's: its channels),
  the widths of the authors' ``net_dim``; a Bottleneck block outputs ``4 × planes`` channels
  (``model.layer_channels``: each layer's output channels).
* VGGs: every conv3×3 → BN → ReLU is a layer; a max-pool stays inside the layer it follows.
  The head is torchvision's: adaptive average pool to 7×7 → FC-ReLU-dropout ×2 → FC.

``width`` scales every channel count by ``width / 64`` (64: torchvision's networks exactly;
the VGG classifier's 4096 hidden units scale by the same factor), so tests run small nets.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

# name → (block class, blocks per stage): torchvision's resnet18/34/50/101.
TV_RESNETS = {
    "tv_resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "tv_resnet34": (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    "tv_resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
    "tv_resnet101": (tv_resnet.Bottleneck, (3, 4, 23, 3)),
}
# name → key of torchvision.models.vgg.cfgs (channels per conv, "M" a max-pool).
TV_VGGS = {"tv_vgg11_bn": "A", "tv_vgg13_bn": "B", "tv_vgg16_bn": "D", "tv_vgg19_bn": "E"}
TV_ARCHS = (*TV_RESNETS, *TV_VGGS)
TV_DEFAULT_WIDTH = 64  # torchvision's networks


def scaled(channels: int, width: int) -> int:
    """torchvision's ``channels`` (at width 64) at base width ``width``."""
    return channels * width // TV_DEFAULT_WIDTH


def init_tv_weights(module: nn.Module) -> None:
    """torchvision's initialisation of convs (Kaiming normal, fan-out, ReLU; bias 0) and BN
    (γ=1, β=0); Linear layers keep PyTorch's default (ResNets; VGGs: :func:`init_vgg_linear`)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_vgg_linear(module: nn.Module) -> None:
    """torchvision's VGG Linear initialisation: N(0, 0.01), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def resnet_block(block: type, c_in: int, planes: int, stride: int) -> nn.Module:
    """A torchvision residual block (c_in channels → planes × expansion), with torchvision's
    1×1 conv + BN projection when the stride or the channel count changes."""
    c_out = planes * block.expansion
    downsample = None
    if stride != 1 or c_in != c_out:
        downsample = nn.Sequential(tv_resnet.conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    return block(c_in, planes, stride, downsample)


class TVResNet(nn.Module):
    """torchvision ResNet: (B, in_channels, H, W) → logits (B, num_classes).

    Stage planes (w, 2w, 4w, 8w) with w = ``width``; ``aux_family`` names the block type
    AugLocal's aux nets use (``"basic"`` or ``"bottleneck"``)."""

    def __init__(self, block: type, blocks_per_stage: tuple[int, ...], width: int = 64,
                 in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, stride=2, padding=1))
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
        self.layer_widths, self.layer_channels = [width], [width]
        self.block_type = block  # the residual block class (aux nets use the same)
        self.aux_family = "bottleneck" if block is tv_resnet.Bottleneck else "basic"
        c_in = width
        for stage, n_blocks in enumerate(blocks_per_stage):
            planes = width * 2**stage
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers[f"s{stage + 1}b{b + 1}"] = resnet_block(block, c_in, planes, stride)
                c_in = planes * block.expansion
                self.layer_widths.append(planes)
                self.layer_channels.append(c_in)
        self.layers = nn.Sequential(layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # torchvision's
                                  nn.Linear(c_in, num_classes))
        self.layer_names = [f"layers.{name}" for name in layers]
        init_tv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


class VGGHead(nn.Sequential):
    """torchvision's VGG classifier: (B, C, H, W) → adaptive average pool 7×7 → Flatten →
    [Linear(C·49, hidden), ReLU, Dropout(0.5)] × 2 → Linear(hidden, classes)."""

    def __init__(self, channels: int, hidden: int, num_classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                         nn.Linear(channels * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(),
                         nn.Linear(hidden, num_classes))


class TVVGG(nn.Module):
    """torchvision VGG with BN: (B, in_channels, H, W) → logits (B, num_classes).

    ``cfg``: torchvision's channel list at width 64 (``"M"``: a 2×2 max-pool, kept in the
    layer before it). Layer i is conv i's Sequential(conv3×3, BN, ReLU[, MaxPool])."""

    aux_family = "vgg"

    def __init__(self, cfg: list, width: int = 64, in_channels: int = 3,
                 num_classes: int = 1000):
        super().__init__()
        layers: OrderedDict[str, nn.Sequential] = OrderedDict()
        self.layer_widths = []
        c_in = in_channels
        for entry in cfg:
            if entry == "M":
                layers[next(reversed(layers))].append(nn.MaxPool2d(2, stride=2))
                continue
            c_out = scaled(entry, width)
            layers[f"c{len(layers)}"] = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True))
            self.layer_widths.append(c_out)
            c_in = c_out
        self.layers = nn.Sequential(layers)
        self.head = VGGHead(c_in, scaled(4096, width), num_classes)
        self.layer_names = [f"layers.{name}" for name in layers]
        init_tv_weights(self)
        init_vgg_linear(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def build_tv_model(arch: str, *, width: int = TV_DEFAULT_WIDTH, in_channels: int = 3,
                   num_classes: int = 1000) -> TVResNet | TVVGG:
    """A network of :data:`TV_ARCHS` (checked by :func:`training.models.build_model`, which
    dispatches here)."""
    if arch in TV_RESNETS:
        block, blocks = TV_RESNETS[arch]
        return TVResNet(block, blocks, width, in_channels, num_classes)
    return TVVGG(tv_vgg.cfgs[TV_VGGS[arch]], width, in_channels, num_classes)
