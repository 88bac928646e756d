"""InfoPro (Wang et al., ICLR 2021) as its authors' code runs it: each local module's loss is
λ_x · (reconstruction of the image) + λ_y · (task loss of a small aux classifier).

Described in ``docs/auglocal.md``, section "InfoPro". Modules as for DGL: aux nets on layers
``0 … K − 2`` (:func:`training.auglocal.module_ends`), the rest plus the head form the last
module. Per aux layer:

* decoder: bilinear upsampling (align_corners=True) of the features to the input size →
  conv3×3 (C→12) → BN → ReLU → conv3×3 (12→image channels) → sigmoid; binary cross-entropy
  against the input image on its [0, 1] scale, recovered from the normalised batch with the
  dataset's mean and std (:func:`denormalise`);
* aux classifier ``<n>c<m>f`` (default ``1c2f``): n conv3×3 → BN → ReLU (the first C→2C with
  stride 2, or C→C with stride 1 in the last stage), global average pool, m Linear layers
  (hidden width 128, ReLU between); cross-entropy on the class logits, or (``contrast``)
  supervised contrastive loss (temperature 0.07) on 128 L2-normalised features;
* λ_x and λ_y fall linearly from their first to their last value over the K − 1 aux nets
  (:func:`module_weights`); defaults per architecture and K in :data:`DEFAULT_LAMBDAS`.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from training.auglocal import layer_output_shapes, module_ends
from training.models import init_weights

AUX_CONFIGS = ("0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f")  # the authors' choices
AUX_LOSSES = ("cross_entropy", "contrast")
FEATURE_DIM = 128      # hidden width of the classifier's Linear layers; contrastive features
TEMPERATURE = 0.07     # supervised contrastive loss (the authors' base temperature too)
DECODER_WIDTH = 12     # channels of the decoder's hidden conv

# (λ_x, λ_y) at the first and at the last aux net, as ((λ_x first, λ_x last),
# (λ_y first, λ_y last)), from the authors' CIFAR-10 commands (InfoPro-Pytorch,
# "Experiments on CIFAR-SVHN-STL10/comand.sh": --ixx_1 --ixx_2, --ixy_1 --ixy_2).
DEFAULT_LAMBDAS = {
    ("resnet32", 2): ((5.0, 0.0), (1.0, 0.0)),
    ("resnet32", 4): ((6.0, 1.0), (0.0, 2.0)),
    ("resnet32", 8): ((5.0, 0.0), (0.0, 2.0)),
    ("resnet32", 16): ((5.0, 0.2), (0.05, 0.5)),
    ("resnet110", 2): ((5.0, 0.0), (0.5, 0.0)),
    ("resnet110", 4): ((1.0, 0.0), (0.0, 1.0)),
    ("resnet110", 8): ((5.0, 0.0), (0.0, 1.0)),
    ("resnet110", 16): ((5.0, 0.5), (0.0, 1.0)),
}
FALLBACK = ("resnet32", 16)  # other architectures and K: the paper's main setting


def default_lambdas(arch: str, K: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((λ_x first, last), (λ_y first, last)) for ``arch`` with K modules: the authors'
    setting where they ran one, else ResNet-32 K = 16's."""
    return DEFAULT_LAMBDAS.get((arch, K), DEFAULT_LAMBDAS[FALLBACK])


def module_weights(lambda_x: Sequence[float], lambda_y: Sequence[float],
                   n_aux: int) -> list[tuple[float, float]]:
    """(λ_x, λ_y) of aux nets i = 0 … n_aux − 1: first·(1 − r) + last·r with
    r = i / (n_aux − 1) (r = 0 for a single aux net), as the authors' ``ratio``."""
    weights = []
    for i in range(n_aux):
        r = i / (n_aux - 1) if n_aux > 1 else 0.0
        weights.append((lambda_x[0] * (1 - r) + lambda_x[1] * r,
                        lambda_y[0] * (1 - r) + lambda_y[1] * r))
    return weights


def denormalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The inverse of ``training.data.normalise``: (B, C, H, W) normalised → [0, 1] scale;
    ``mean``, ``std``: (1, C, 1, 1)."""
    return x * std + mean


def aux_classifier(channels: int, out_features: int, config: str,
                   last_stage: bool) -> nn.Sequential:
    """The ``<n>c<m>f`` aux classifier: (B, C, H, W) → (B, out_features)."""
    n_conv, n_linear = map(int, re.fullmatch(r"(\d)c(\d)f", config).groups())
    layers, c = [], channels
    for k in range(n_conv):
        c_out, stride = (c, 1) if last_stage or k > 0 else (2 * c, 2)
        layers += [nn.Conv2d(c, c_out, 3, stride=stride, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU()]
        c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for _ in range(n_linear - 1):
        layers += [nn.Linear(c, FEATURE_DIM), nn.ReLU()]
        c = FEATURE_DIM
    return nn.Sequential(*layers, nn.Linear(c, out_features))


def decoder(channels: int, image_channels: int, image_size: Sequence[int]) -> nn.Sequential:
    """(B, C, h, w) features → (B, image_channels, H, W) in (0, 1), ``image_size = (H, W)``."""
    return nn.Sequential(
        nn.Upsample(size=tuple(image_size), mode="bilinear", align_corners=True),
        nn.Conv2d(channels, DECODER_WIDTH, 3, padding=1), nn.BatchNorm2d(DECODER_WIDTH),
        nn.ReLU(), nn.Conv2d(DECODER_WIDTH, image_channels, 3, padding=1), nn.Sigmoid())


def supervised_contrastive_loss(features: torch.Tensor, y: torch.Tensor,
                                temperature: float = TEMPERATURE) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) of L2-normalised ``features`` (B, D) with labels y (B,):
    mean over anchors of −(1/|P(i)|) Σ_{p ∈ P(i)} log softmax_{k ≠ i}(z_i·z_k / T)_p; an anchor
    without positives adds 0 (and still counts in the mean), as in the authors' code."""
    logits = features @ features.T / temperature
    self_mask = torch.eye(len(y), dtype=torch.bool, device=y.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    summed = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(summed / positives.sum(1).clamp(min=1)).mean()


class InfoProAux(nn.Module):
    """One aux layer's decoder and classifier; called as ``aux(h, x, y)`` it returns the
    module's loss λ_x·BCE(decoder(h), x on [0, 1]) + λ_y·task(classifier(h), y)."""

    def __init__(self, decoder: nn.Module, classifier: nn.Module, loss: str,
                 weights: tuple[float, float], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.decoder, self.classifier, self.loss = decoder, classifier, loss
        self.weight_x, self.weight_y = weights
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1),
                             persistent=False)

    def losses(self, h: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction BCE, task loss) of features h (B, C, h, w) for the normalised
        input batch x (B, C_img, H, W) with labels y (B,)."""
        target = denormalise(x, self.mean.to(x.dtype), self.std.to(x.dtype))
        target = target.clamp(0, 1)  # rounding leaves a few ulp outside, which BCE refuses
        recon = F.binary_cross_entropy(self.decoder(h), target)
        out = self.classifier(h)
        if self.loss == "contrast":
            return recon, supervised_contrastive_loss(F.normalize(out, dim=1), y)
        return recon, F.cross_entropy(out, y)

    def forward(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        recon, task = self.losses(h, x, y)
        return self.weight_x * recon + self.weight_y * task


def build_infopro_aux(model: nn.Module, K: int, num_classes: int, input_size: Sequence[int],
                      normalisation: tuple[Sequence[float], Sequence[float]], *,
                      aux_config: str, aux_loss: str, lambda_x: Sequence[float],
                      lambda_y: Sequence[float]) -> nn.ModuleDict:
    """InfoPro aux nets on layers ``0 … K − 2`` of ``model``, keyed by str(layer).

    ``input_size``: one input's (C, H, W); ``normalisation``: the dataset's (mean, std) per
    channel, with which the batches were normalised. Conv weights get the primary network's
    initialisation, as in the authors' code."""
    layers = module_ends(K, len(model.layers), "InfoPro")
    shapes = layer_output_shapes(model, input_size)
    last_width = max(model.layer_widths)
    out_features = FEATURE_DIM if aux_loss == "contrast" else num_classes
    weights = module_weights(lambda_x, lambda_y, len(layers))
    nets = {}
    for layer in layers:
        channels = shapes[layer][0]
        nets[str(layer)] = InfoProAux(
            decoder(channels, input_size[0], input_size[1:]),
            aux_classifier(channels, out_features, aux_config, channels == last_width),
            aux_loss, weights[layer], *normalisation)
    aux = nn.ModuleDict(nets)
    init_weights(aux)
    return aux
