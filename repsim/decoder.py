"""How much of the input a layer keeps: a small decoder reconstructs the image from it.

InfoPro (Wang et al. 2021) argues that a local loss makes early layers discard information
about the input that later layers would need, and estimates that information by how well a
decoder reconstructs the input from the layer. :func:`reconstruct_layers` does this for any
``nn.Module`` and any of its layers (forward hooks, as :mod:`repsim.extract`), with a fixed
decoder and training budget, so that layers and networks are compared on equal terms.

The decoder (:class:`Decoder`), from a layer output of shape (C, h, w) (or a vector (D,)) to
the image (C₀, H, W):

1. a 1 × 1 convolution C → ``hidden`` channels at the layer's resolution (a vector: a linear
   map D → hidden × s × s, s = ⌈H / 4⌉), ReLU;
2. bilinear upsampling to H × W;
3. a 3 × 3 convolution hidden → hidden, ReLU, and a 3 × 3 convolution hidden → C₀.

Threads: ``threads`` (default 1) CPU threads, as the linear probe: these are small
convolutions, and with 2 threads on 2 busy cores a step ran about 30× slower than with 1.

Training: the network frozen in eval mode; every layer's decoder is trained at once on the
same minibatches of ``batch_size`` train images, drawn without replacement in a seeded order
(reshuffled after each pass), for ``steps`` Adam steps at learning rate ``lr``, minimising the
mean squared error to the network's input. The decoders' initial weights come from ``seed``.

Scores, on the test images: the mean squared error per pixel in the units of
``unnormalise(x)`` (pixels in [0, 1] for images the caller un-normalises), with a Student-t
interval over the test images (for these fitted decoders), and PSNR = 10 log₁₀(peak² / MSE)
in dB. ``baseline_mse`` is the error of the mean train image as the reconstruction of every
test image: a layer that kept nothing about its input scores about that.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from repsim.extract import _unknown_layer_message
from repsim.geometry import LayerTable
from repsim.probe.estimator import _cpu_threads
from repsim.stats.intervals import check_level, t_interval

__all__ = ["Decoder", "DecoderError", "DecoderSettings", "ReconstructionRow",
           "ReconstructionTable", "reconstruct_layers"]

EVAL_BATCH = 250  # test images per forward pass


class DecoderError(ValueError):
    """A model, layer or images a decoder cannot be trained on; the message says the fix."""


@dataclass(frozen=True)
class DecoderSettings:
    """The decoder's architecture and training budget, checked on construction."""

    hidden: int = 16        # channels of the decoder's hidden maps
    steps: int = 100        # Adam steps (each on one minibatch, all layers at once)
    batch_size: int = 32    # train images per step
    lr: float = 3e-3        # Adam learning rate
    seed: int = 0           # decoder initialisation and minibatch order
    n_show: int = 8         # test images whose reconstructions are kept for a picture
    level: float = 0.95     # of the MSE intervals over test images
    peak: float = 1.0       # PSNR's peak signal, in the units of unnormalise(x)
    device: str = "cpu"     # of the model, the decoders and the images
    threads: int | None = 1  # CPU threads while fitting and scoring; None: leave as they are

    def __post_init__(self):
        for name in ("hidden", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DecoderError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.n_show, bool) or not isinstance(self.n_show, int) or self.n_show < 0:
            raise DecoderError(f"n_show must be an int >= 0, got {self.n_show!r}")
        for name in ("lr", "peak"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise DecoderError(f"{name} must be a positive number, got {value!r}")
        check_level(self.level)


class Decoder(nn.Module):
    """Layer output (B, C, h, w) or (B, D) → image (B, C₀, H, W); see the module docstring."""

    def __init__(self, in_shape: Sequence[int], image_shape: Sequence[int], hidden: int):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        channels, height, width = image_shape
        if len(in_shape) == 3:
            self.entry = nn.Conv2d(in_shape[0], hidden, 1)
        elif len(in_shape) == 1:
            side = math.ceil(height / 4)
            self.entry = nn.Sequential(nn.Linear(in_shape[0], hidden * side * side),
                                       nn.Unflatten(1, (hidden, side, side)))
        else:
            raise DecoderError(f"a decoder reads a layer output of shape (C, h, w) or (D,) per "
                               f"input, got {tuple(in_shape)}; choose a convolutional layer or "
                               "a vector one")
        self.body = nn.Sequential(
            nn.ReLU(), nn.Upsample(size=(height, width), mode="bilinear", align_corners=False),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(self.entry(h))


@dataclass(frozen=True)
class ReconstructionRow:
    """The reconstruction of the input from one layer, scored on the test images."""

    layer: str
    depth: int          # position in ``layers``
    rel_depth: float    # depth / (L − 1) (0 when L = 1)
    shape: str          # the layer's output per input, e.g. "16x28x28"
    mse: float          # mean squared error per pixel, in the units of unnormalise(x)
    mse_low: float      # Student-t interval of mse over the test images
    mse_high: float
    psnr: float         # 10·log10(peak² / mse), dB
    psnr_low: float     # from mse_high and mse_low
    psnr_high: float


@dataclass(frozen=True)
class ReconstructionTable(LayerTable):
    """One :class:`ReconstructionRow` per layer with the protocol and example pictures:
    ``originals`` (k, C₀, H, W) the first k test images and ``pictures`` layer → their
    reconstructions (k, C₀, H, W), both in the units of unnormalise(x)."""

    rows: tuple[ReconstructionRow, ...]
    settings: DecoderSettings
    baseline_mse: float   # the mean train image as every reconstruction
    baseline_psnr: float
    n_train: int
    n_test: int
    originals: np.ndarray
    pictures: dict[str, np.ndarray]


@contextlib.contextmanager
def _outputs(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """A dict that each forward pass of ``model`` fills with the outputs of ``layers``
    (``out[0]`` of tuple outputs), hooks removed on leaving."""
    modules = dict(model.named_modules(remove_duplicate=False))
    outputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args, output):
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _check(model: nn.Module, layers: Sequence[str], train: torch.Tensor,
           test: torch.Tensor, settings: DecoderSettings) -> None:
    if isinstance(layers, str) or not layers:
        raise DecoderError(f"layers must be a non-empty list of module names, got {layers!r}")
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in layers:
        if name not in modules:
            raise DecoderError(_unknown_layer_message(name, list(modules), wrapped=False))
    for role, images in (("train", train), ("test", test)):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise DecoderError(f"the {role} images must be a (N, C, H, W) tensor, got "
                               f"{getattr(images, 'shape', type(images).__name__)}")
    if train.shape[1:] != test.shape[1:]:
        raise DecoderError(f"train images are {tuple(train.shape[1:])} but test images "
                           f"{tuple(test.shape[1:])}; pass images of one dataset")
    if len(train) < settings.batch_size:
        raise DecoderError(f"{len(train)} train images are fewer than batch_size "
                           f"{settings.batch_size}; pass more images or a smaller batch")
    if len(test) < 2:
        raise DecoderError(f"{len(test)} test image(s): the error's interval needs at least 2")


def _minibatches(n: int, settings: DecoderSettings) -> Iterator[torch.Tensor]:
    """``steps`` index batches (batch_size,) of 0 … n−1, each pass in a new seeded order."""
    gen = torch.Generator().manual_seed(settings.seed)
    order, start = torch.randperm(n, generator=gen), 0
    for _ in range(settings.steps):
        if start + settings.batch_size > n:
            order, start = torch.randperm(n, generator=gen), 0
        yield order[start:start + settings.batch_size]
        start += settings.batch_size


def fit_decoders(model: nn.Module, layers: Sequence[str], train: torch.Tensor,
                 settings: DecoderSettings, progress: bool = False) -> dict[str, Decoder]:
    """One trained :class:`Decoder` per layer of the frozen ``model`` (in eval mode, on
    ``settings.device``), from the train images (N, C₀, H, W)."""
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    decoders: dict[str, Decoder] = {}
    with _outputs(model, layers) as outputs:
        for i, batch in enumerate(tqdm(_minibatches(len(train), settings), total=settings.steps,
                                       desc="decoders", disable=not progress)):
            x = train[batch].to(device)
            with torch.no_grad():
                model(x)
            if i == 0:  # the decoders' shapes are the layers' outputs
                decoders = {name: Decoder(outputs[name].shape[1:], x.shape[1:],
                                          settings.hidden).to(device) for name in layers}
                optimiser = torch.optim.Adam(
                    [p for d in decoders.values() for p in d.parameters()], lr=settings.lr)
            loss = sum(F.mse_loss(decoders[name](outputs[name].detach()), x) for name in layers)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return decoders


def reconstruct_layers(model: nn.Module, layers: Sequence[str], train: torch.Tensor,
                       test: torch.Tensor, *, settings: DecoderSettings = DecoderSettings(),
                       unnormalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       progress: bool = False) -> ReconstructionTable:
    """Train a decoder per layer of ``model`` on ``train`` images (N, C₀, H, W), the model's
    inputs, and score it on ``test`` images (M, C₀, H, W).

    ``model``: any ``nn.Module``; it is put in eval mode, frozen, on ``settings.device``.
    ``layers``: module names (``dict(model.named_modules())`` keys) with outputs (B, C, h, w)
    or (B, D). ``unnormalise``: maps model inputs to the units the error is reported in
    (e.g. x·std + mean for pixels in [0, 1]); None: the inputs as they are.
    """
    _check(model, layers, train, test, settings)
    with _cpu_threads(settings.threads):
        return _reconstruct(model, layers, train, test, settings,
                            unnormalise or (lambda x: x), progress)


def _reconstruct(model: nn.Module, layers: Sequence[str], train: torch.Tensor,
                 test: torch.Tensor, settings: DecoderSettings,
                 unnormalise: Callable[[torch.Tensor], torch.Tensor],
                 progress: bool) -> ReconstructionTable:
    """:func:`reconstruct_layers` after its checks."""
    device = torch.device(settings.device)
    model = model.eval().to(device)  # frozen: its outputs are read under no_grad only
    decoders = fit_decoders(model, layers, train, settings, progress)
    errors = {name: [] for name in layers}
    pictures = {name: [] for name in layers}
    mean_image = unnormalise(train.to(device)).mean(0)
    baseline = []
    with torch.no_grad(), _outputs(model, layers) as outputs:
        for start in range(0, len(test), EVAL_BATCH):
            x = test[start:start + EVAL_BATCH].to(device)
            model(x)
            target = unnormalise(x)
            baseline.append(((target - mean_image) ** 2).flatten(1).mean(1))
            for name in layers:
                image = unnormalise(decoders[name].eval()(outputs[name]))
                errors[name].append(((image - target) ** 2).flatten(1).mean(1))
                if start == 0:
                    pictures[name] = image[:settings.n_show].cpu().numpy()
    rows = tuple(_row(name, i, len(layers), decoders[name].in_shape, torch.cat(errors[name]),
                      settings) for i, name in enumerate(layers))
    baseline_mse = float(torch.cat(baseline).mean())
    return ReconstructionTable(
        rows, settings, baseline_mse, _psnr(baseline_mse, settings.peak), len(train), len(test),
        unnormalise(test[:settings.n_show].to(device)).cpu().numpy(), pictures)


def _psnr(mse: float, peak: float) -> float:
    return 10 * math.log10(peak * peak / mse) if mse > 0 else math.inf


def _row(name: str, depth: int, count: int, shape: tuple[int, ...], errors: torch.Tensor,
         settings: DecoderSettings) -> ReconstructionRow:
    """The scores of one layer from its per-image errors (M,)."""
    mean, low, high = (float(v) for v in t_interval(errors.double().cpu().numpy(),
                                                    settings.level))
    return ReconstructionRow(
        layer=name, depth=depth, rel_depth=depth / max(count - 1, 1),
        shape="x".join(str(s) for s in shape), mse=mean, mse_low=low, mse_high=high,
        psnr=_psnr(mean, settings.peak), psnr_low=_psnr(high, settings.peak),
        psnr_high=_psnr(max(low, 0.0), settings.peak))
