"""CIFAR-style ResNets (He et al. 2016, depth 6n+2) as a flat sequence of *layers*.

A network is ``layers`` (the stem, then every residual block in order) followed by ``head``
(global average pool → Linear). Layer ``i``'s module name is ``model.layer_names[i]``; these
are the local-module boundaries of AugLocal and the default hook points of the analyses.
:func:`build_model` also builds torchvision's ImageNet networks (:mod:`training.tv_models`).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
from torch import nn

from training.tv_models import TV_ARCHS, TV_DEFAULT_WIDTH, TVResNet, TVVGG, build_tv_model

# Residual blocks per stage for each registered depth (depth = 6n + 2).
BLOCKS_PER_STAGE = {f"resnet{6 * n + 2}": n for n in (1, 2, 3, 5, 9, 18)}
# Every architecture build_model knows: the CIFAR ResNets, then torchvision's (tv_models.py).
ARCHS = (*BLOCKS_PER_STAGE, *TV_ARCHS)
CIFAR_DEFAULT_WIDTH = 16


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class Stem(nn.Sequential):
    """3×3 conv → BN → ReLU: (B, c_in, H, W) → (B, width, H, W)."""

    def __init__(self, c_in: int, width: int):
        super().__init__(conv3x3(c_in, width), nn.BatchNorm2d(width), nn.ReLU())


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection: (B, c_in, H, W) → (B, c_out, H/s, W/s).

    The shortcut is a 1×1 conv + BN projection when the stride or the width changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ClassifierHead(nn.Sequential):
    """Global average pool → Linear: (B, C, H, W) → (B, num_classes)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def init_weights(module: nn.Module) -> None:
    """The ResNet initialisation of the AugLocal code: conv weights ~ N(0, 2/(k²·C_out)),
    BN γ=1, β=0; Linear layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k_h, k_w = m.kernel_size
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k_h * k_w * m.out_channels)))
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with stage widths (w, 2w, 4w).

    forward: (B, in_channels, H, W) → logits (B, num_classes).
    ``layer_widths[i]`` is the output channel count of layer i.
    """

    def __init__(self, blocks_per_stage: int, width: int = 16, in_channels: int = 3,
                 num_classes: int = 10):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=Stem(in_channels, width))
        self.layer_widths = [width]
        c_in = width
        for stage in range(3):
            c_out = width * 2**stage
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers[f"s{stage + 1}b{block + 1}"] = BasicBlock(c_in, c_out, stride)
                self.layer_widths.append(c_out)
                c_in = c_out
        self.layers = nn.Sequential(layers)
        self.head = ClassifierHead(c_in, num_classes)
        self.layer_names = [f"layers.{name}" for name in layers]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def default_width(arch: str) -> int:
    """The base width of ``arch`` when none is given: 16 (CIFAR ResNets), 64 (torchvision)."""
    return TV_DEFAULT_WIDTH if arch in TV_ARCHS else CIFAR_DEFAULT_WIDTH


def arch_depth(arch: str) -> int:
    """The depth in an architecture's name: ``resnet32`` → 32, ``tv_vgg13_bn`` → 13."""
    return int(re.search(r"\d+", arch).group())


def build_model(arch: str, *, width: int | None = None, in_channels: int = 3,
                num_classes: int = 10) -> ResNet | TVResNet | TVVGG:
    """Build a registered architecture (:data:`ARCHS`), e.g.
    ``build_model("resnet32", in_channels=1)``; ``width=None``: :func:`default_width`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    width = default_width(arch) if width is None else width
    if width < 1 or in_channels < 1 or num_classes < 2:
        raise ValueError(
            f"need width >= 1, in_channels >= 1 and num_classes >= 2, got width={width}, "
            f"in_channels={in_channels}, num_classes={num_classes}"
        )
    if arch in TV_ARCHS:
        return build_tv_model(arch, width=width, in_channels=in_channels,
                              num_classes=num_classes)
    return ResNet(BLOCKS_PER_STAGE[arch], width, in_channels, num_classes)
