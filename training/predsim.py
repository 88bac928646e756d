"""PredSim (Nøkland & Eidnes, ICML 2019): each local module's loss is
(1 − β) · pred + β · sim, as the authors' ``local-loss`` code computes it.

Described in ``docs/auglocal.md``, section "PredSim". Modules as for DGL: aux nets on layers
``0 … K − 2`` (:func:`training.auglocal.module_ends`). Per aux layer, on its features h:

* pred: average pooling (kernel doubled, height then width, until C·h'·w' ≤ 4096:
  :func:`pool_kernel`) → Flatten → Linear (weights zero-initialised) → cross-entropy;
* sim: MSE between :func:`similarity_matrix` of a conv3×3 (C→C, no bias) of h and that of the
  one-hot labels.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from training.auglocal import layer_output_shapes, module_ends

MAX_FEATURES = 4096  # the pred classifier's input size bound (the authors' --dim-in-decoder)
BETA = 0.99          # weight of sim in (1 − β)·pred + β·sim (the paper's and code's default)


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarities of the row-centred rows of x (B, …), clamped to [−1, 1].

    A feature map (B, C, H, W) with C > 3 and H > 1 is first reduced to its per-channel
    standard deviations over positions (B, C); other inputs are flattened. Rows are divided by
    1e-8 + their norm, as in the authors' code (a constant row gives zeros, not NaN)."""
    if x.dim() == 4 and x.shape[1] > 3 and x.shape[2] > 1:
        x = x.flatten(2).std(dim=2)
    else:
        x = x.flatten(1)
    centred = x - x.mean(dim=1, keepdim=True)
    unit = centred / (1e-8 + centred.norm(dim=1, keepdim=True))
    return (unit @ unit.T).clamp(-1, 1)


def pool_kernel(channels: int, height: int, width: int,
                max_features: int = MAX_FEATURES) -> tuple[int, int]:
    """(kernel height, kernel width) of the pred average pooling: doubled alternately, height
    first, until channels · ⌈height/k_h⌉ · ⌈width/k_w⌉ ≤ max_features (or k_h reaches the
    height)."""
    k_h = k_w = 1
    while (channels * math.ceil(height / k_h) * math.ceil(width / k_w) > max_features
           and k_h < height):
        k_h *= 2
        if channels * math.ceil(height / k_h) * math.ceil(width / k_w) > max_features:
            k_w *= 2
    return k_h, k_w


def pred_pool(channels: int, spatial: Sequence[int]) -> tuple[nn.Module, int]:
    """The pooling of :func:`pool_kernel` (padded so ⌈size/k⌉ outputs per axis) and the
    flattened feature count it leaves."""
    kernel = pool_kernel(channels, *spatial)
    if kernel == (1, 1):
        return nn.Identity(), channels * spatial[0] * spatial[1]
    out = [math.ceil(s / k) for s, k in zip(spatial, kernel)]
    padding = tuple(k * (o - s // k) // 2 for s, k, o in zip(spatial, kernel, out))
    pool = nn.AvgPool2d(kernel, padding=padding)
    sizes = [(s + 2 * p - k) // k + 1 for s, k, p in zip(spatial, kernel, padding)]
    return pool, channels * sizes[0] * sizes[1]


class PredSimAux(nn.Module):
    """One aux layer's similarity conv and pred classifier; ``aux(h, x, y)`` returns the
    module's loss (1 − β)·pred + β·sim (x, the input batch, is not used)."""

    def __init__(self, channels: int, spatial: Sequence[int], num_classes: int, beta: float):
        super().__init__()
        self.sim_conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        pool, features = pred_pool(channels, spatial)
        linear = nn.Linear(features, num_classes)
        nn.init.zeros_(linear.weight)
        self.classifier = nn.Sequential(pool, nn.Flatten(), linear)  # (B, C, H, W) → logits
        self.num_classes, self.beta = num_classes, beta

    def losses(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred, sim) of features h (B, C, H, W) with labels y (B,)."""
        pred = F.cross_entropy(self.classifier(h), y)
        target = similarity_matrix(F.one_hot(y, self.num_classes).to(h.dtype))
        sim = F.mse_loss(similarity_matrix(self.sim_conv(h)), target)
        return pred, sim

    def forward(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred, sim = self.losses(h, y)
        return (1 - self.beta) * pred + self.beta * sim


def build_predsim_aux(model: nn.Module, K: int, num_classes: int, input_size: Sequence[int],
                      beta: float) -> nn.ModuleDict:
    """PredSim aux nets on layers ``0 … K − 2`` of ``model``, keyed by str(layer);
    ``input_size``: one input's (C, H, W). PyTorch's default initialisation, as the authors'."""
    layers = module_ends(K, len(model.layers), "PredSim")
    shapes = layer_output_shapes(model, input_size)
    return nn.ModuleDict({str(layer): PredSimAux(shapes[layer][0], shapes[layer][1:],
                                                 num_classes, beta)
                          for layer in layers})
