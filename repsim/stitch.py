"""Model stitching (Lenc & Vedaldi 2015; Bansal, Nakkiran & Barak 2021) of any two PyTorch
models at named modules.

A :class:`StitchedModel` runs network A up to the output of its module ``layer_a``, maps that
output with a trainable :class:`Stitch` (1×1 conv, then BatchNorm) and feeds the result to
network B in place of the output of B's module ``layer_b``, B running on from there. Both
networks stay frozen in eval mode; only the stitch learns (:func:`fit_stitch`). If B's
accuracy survives the swap, A's layer holds what B's later layers read, up to a linear map
per pixel. Works through forward hooks, so any model with named modules will do: A stops at
``layer_a``; B runs from its input, its output at ``layer_b`` replaced (its earlier modules
run without effect; a frozen network records no graph there).

Initialisations (:func:`init_stitch`): ``random`` (PyTorch's default conv and BN, as in
Bansal et al.), ``identity`` (conv = I, needs as many channels on both sides) and ``lstsq``
(conv = the least-squares per-pixel map of A's centred layer output onto B's, fitted on
calibration inputs, the "direct matching" of Csiszárik et al. 2021). Both non-random ones
set the BN to pass the conv output through unchanged at start (eval mode: exactly; train
mode: up to batch statistics), with B's layer mean as the bias for ``lstsq``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["INITS", "Stitch", "StitchError", "StitchedModel", "correct_count", "fit_stitch",
           "init_stitch", "layer_output", "named_module", "output_shape"]

INITS = ("random", "identity", "lstsq")
RIDGE = 1e-6  # lstsq ridge, relative to the mean feature variance (keeps dead channels finite)


class StitchError(ValueError):
    """Two layers that cannot be stitched, or a module name a model does not have."""


def named_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model`` (as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        leaves = [n for n, m in modules.items() if n and not list(m.children())]
        raise StitchError(f"{type(model).__name__} has no module named {name!r}; it has e.g. "
                          f"{', '.join(list(modules)[1:6])} (leaves: {', '.join(leaves[:4])}, "
                          "…); pass a name from model.named_modules()")
    return modules[name]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted output exists."""


@contextlib.contextmanager
def _hook(module: nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def layer_output(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module ``name`` when ``model`` runs on x; the forward stops there."""
    module, seen = named_module(model, name), []

    def capture(_module, _inputs, out):
        seen.append(_first(out))
        raise _Stop

    with _hook(module, capture), contextlib.suppress(_Stop):
        model(x)
    if not seen:
        raise StitchError(f"module {name!r} did not run in the forward pass of "
                          f"{type(model).__name__}; choose a module the forward pass uses")
    return seen[0]


@torch.no_grad()
def output_shape(model: nn.Module, name: str, x: torch.Tensor) -> tuple[int, ...]:
    """The shape of one input's output of module ``name`` (x: a batch of inputs)."""
    return tuple(layer_output(model, name, x).shape[1:])


class Stitch(nn.Sequential):
    """1×1 conv (no bias) → BatchNorm2d: (B, c_in, H, W) → (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class StitchedModel(nn.Module):
    """x → A up to ``layer_a`` → ``stitch`` → B after ``layer_b`` → B's output.

    A and B are frozen: their parameters stop requiring gradients and they stay in eval mode
    whatever ``train()`` is asked (it switches the stitch only). A and B may be one model.
    """

    def __init__(self, model_a: nn.Module, layer_a: str, model_b: nn.Module, layer_b: str,
                 stitch: nn.Module):
        super().__init__()
        named_module(model_a, layer_a)
        target = named_module(model_b, layer_b)
        for model in (model_a, model_b):
            model.eval().requires_grad_(False)
        # kept outside the module tree: the stitch alone is this module's state
        self._models = (model_a, model_b, target)
        self.layer_a, self.layer_b, self.stitch = layer_a, layer_b, stitch

    def train(self, mode: bool = True) -> StitchedModel:
        self.training = mode
        self.stitch.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model_a, model_b, target = self._models
        with torch.no_grad():
            h = layer_output(model_a, self.layer_a, x)
        replaced = []

        def swap(_module, _inputs, out):
            if replaced:
                raise StitchError(f"module {self.layer_b!r} ran twice in one forward pass; "
                                  "stitch into a module that runs once")
            replaced.append(True)
            new = self.stitch(h)
            if new.shape != _first(out).shape:
                raise StitchError(f"the stitch gives {tuple(new.shape[1:])} but "
                                  f"{self.layer_b!r} outputs {tuple(_first(out).shape[1:])}")
            return new

        with _hook(target, swap):
            return model_b(x)


def stitchable(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> bool:
    """Whether a 1×1 conv maps outputs of (C_a, H, W) onto (C_b, H, W): same spatial size."""
    return len(shape_a) == len(shape_b) == 3 and shape_a[1:] == shape_b[1:]


def check_stitchable(layer_a: str, shape_a: tuple[int, ...], layer_b: str,
                     shape_b: tuple[int, ...]) -> None:
    if not stitchable(shape_a, shape_b):
        raise StitchError(
            f"A's {layer_a!r} outputs {shape_a} and B's {layer_b!r} outputs {shape_b}: a 1×1 "
            "conv stitch needs conv maps (C, H, W) of the same height and width; stitch layers "
            "of matching resolution")


def _pixels(h: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N·H·W, C) float64."""
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]).double()


@torch.no_grad()
def init_stitch(stitch: Stitch, init: str, h_a: torch.Tensor,
                h_b: torch.Tensor | None = None) -> None:
    """Initialise ``stitch`` in place: ``random`` leaves it as built; ``identity`` and
    ``lstsq`` set the conv (from A's layer outputs h_a (N, C_a, H, W) and, for ``lstsq``, B's
    h_b (N, C_b, H, W) on the same inputs) and calibrate the BN on h_a (module docstring)."""
    if init not in INITS:
        raise StitchError(f"unknown stitch initialisation {init!r}; choose one of "
                          f"{', '.join(INITS)}")
    if init == "random":
        return
    conv, norm = stitch
    x = _pixels(h_a)
    if init == "identity":
        if conv.in_channels != conv.out_channels:
            raise StitchError(f"an identity stitch needs as many channels on both sides, got "
                              f"{conv.in_channels} → {conv.out_channels}; use init 'lstsq'")
        weight, target_mean = torch.eye(conv.in_channels, dtype=torch.float64), None
    else:
        if h_b is None:
            raise StitchError("init 'lstsq' needs B's layer outputs h_b on the same inputs")
        y = _pixels(h_b)
        xc, yc = x - x.mean(0), y - y.mean(0)
        gram = xc.T @ xc
        ridge = RIDGE * float(gram.diagonal().mean()) + torch.finfo(torch.float64).tiny
        weight = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype,
                                                             device=gram.device), xc.T @ yc).T
        target_mean = y.mean(0)
    z = x @ weight.to(x.device).T
    mean, var = z.mean(0), z.var(0, unbiased=False)
    conv.weight.copy_(weight.reshape(conv.weight.shape))
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    norm.weight.copy_(torch.sqrt(var + norm.eps))
    norm.bias.copy_(mean if target_mean is None else target_mean)


def fit_stitch(stitched: StitchedModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               *, steps: int, lr: float) -> list[float]:
    """Train the stitch for ``steps`` Adam steps at ``lr`` on the cross-entropy of B's output,
    cycling through ``batches`` (x (B, ...), y (B,)); returns each step's loss. The stitch is
    left in eval mode."""
    if not isinstance(steps, int) or steps < 0:
        raise StitchError(f"steps must be a whole number >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise StitchError(f"lr must be a positive number, e.g. 1e-3, got {lr!r}")
    batches = list(batches)
    if steps and not batches:
        raise StitchError("fitting a stitch needs at least one training batch")
    optimizer = torch.optim.Adam(stitched.stitch.parameters(), lr=lr)
    stitched.train()
    losses = []
    for x, y in itertools.islice(itertools.cycle(batches), steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(stitched(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    stitched.eval()
    return losses


@torch.no_grad()
def correct_count(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[int, int]:
    """(correct, total) of ``model``'s arg-max predictions on ``batches`` of (x, y)."""
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct, total
