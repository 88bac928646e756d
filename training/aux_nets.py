"""A checkpoint's auxiliary networks for analysis: rebuilt, run, and their gradients.

Everything goes through the step interface (:mod:`training.step`), so a method added behind
``MethodConfig.build_step`` works here unchanged:

* :func:`load_local` rebuilds a checkpoint's primary network and its method's step from the
  checkpoint's ``method`` dict (``MethodConfig.from_dict`` → ``build_step`` →
  ``load_aux_state_dict``), everything in eval mode;
* :func:`fresh_local_step` gives a backprop network a freshly initialised, seeded DGL- or
  AugLocal-style set of aux nets (for a local loss the network was not trained with);
* :func:`aux_predictions` runs the primary layers once and every aux net on its layer;
* :func:`gradient_alignment` compares, per layer, the gradient the method's step leaves in the
  layer's parameters (its local loss) with the end-to-end backprop gradient.

Aux nets are read as classifiers: (B, C, H, W) → logits (B, classes). Where an aux net is more
than that (InfoPro's decoder + classifier, PredSim's similarity conv + classifier), its
``classifier`` attribute is what :func:`aux_predictions` runs: the part whose accuracy says what
the layer's local objective makes linearly or non-linearly readable. An InfoPro classifier
trained contrastively outputs features, not logits, and is refused. :func:`gradient_alignment`
needs no such part: it only calls the step, which runs each method's own local loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from training.local import MethodConfig
from training.step import BackpropStep

FRESH_KINDS = ("dgl", "auglocal")  # the aux nets a backprop network can be given
FRESH_AUX_DEPTH = 2                # AugLocal-style fresh aux nets: d (the paper's ResNet-32 d)
FRESH_PYRAMID = 0.5                # and τ


@dataclass
class LocalNetwork:
    """A checkpoint's primary network and its method's step (aux nets loaded), in eval mode.

    ``step``: the method's step (``BackpropStep`` for BP, with ``aux`` None); ``aux``: the aux
    nets keyed by str(layer index), or None; ``meta``: the checkpoint without weights."""

    model: nn.Module
    step: object
    aux: nn.ModuleDict | None
    meta: dict

    @property
    def method(self) -> str:
        return self.meta["method"]["name"]


def input_size(meta: dict) -> tuple[int, int, int]:
    """One input's (C, H, W) from a checkpoint's ``dataset`` metadata."""
    d = meta["dataset"]
    return (d["channels"], d["image_size"], d["image_size"])


def load_local(path: str, *, device: str = "cpu") -> LocalNetwork:
    """The checkpoint at ``path`` with its method's aux nets, in eval mode on ``device``.

    A local-learning checkpoint without aux weights is refused (CheckpointError): it cannot
    say what its local losses were."""
    model, meta = load_checkpoint(path)
    model.to(device)
    config = MethodConfig.from_dict(meta["method"])
    dataset = meta["dataset"]
    step = config.build_step(model, num_classes=meta["arch"]["num_classes"],
                             input_size=input_size(meta),
                             normalisation=(dataset["mean"], dataset["std"]))
    aux = getattr(step, "aux", None)
    if aux is not None:
        weights = read_checkpoint(path).get("aux_state_dict")
        if not weights:
            raise CheckpointError(
                f"{path} is a {config.name} checkpoint without auxiliary weights "
                "(aux_state_dict), so its aux nets cannot be analysed; use a checkpoint "
                "written by training.train, which saves them")
        step.load_aux_state_dict(weights)
        aux.eval()
    model.eval()
    return LocalNetwork(model, step, aux, meta)


def fresh_local_step(model: nn.Module, kind: str, *, seed: int, num_classes: int,
                     input_size: tuple[int, int, int]):
    """A local step for ``model`` with new aux nets of ``kind`` (dgl | auglocal), one module
    per layer (K = number of layers; AugLocal-style with d = 2, τ = 0.5), initialised under
    ``seed`` without touching the global random state; its aux nets in eval mode."""
    if kind not in FRESH_KINDS:
        raise ValueError(f"fresh aux nets are one of {', '.join(FRESH_KINDS)}, not {kind!r}")
    n_layers = len(model.layers)
    config = (MethodConfig("dgl", K=n_layers) if kind == "dgl" else
              MethodConfig("auglocal", K=n_layers, aux_depth=FRESH_AUX_DEPTH,
                           pyramid_coeff=FRESH_PYRAMID))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        step = config.build_step(model, num_classes=num_classes, input_size=input_size)
    step.aux.eval()
    return step


def aux_layers(aux: nn.ModuleDict) -> list[int]:
    """The layer indices that have an aux net, ascending."""
    return sorted(int(k) for k in aux)


@torch.no_grad()
def aux_predictions(model: nn.Module, aux: nn.ModuleDict, x: torch.Tensor,
                    num_classes: int) -> torch.Tensor:
    """Predicted classes (B, A) of the aux nets of layers :func:`aux_layers` (in that order)
    on inputs x (B, C, H, W), the primary layers run once. Model and aux nets as they are
    (put them in eval mode first)."""
    predictions, h = {}, x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        if str(i) in aux:
            predictions[i] = aux_logits(aux[str(i)], h, i, num_classes).argmax(1)
    return torch.stack([predictions[i] for i in aux_layers(aux)], 1)


def aux_logits(net: nn.Module, h: torch.Tensor, layer: int, num_classes: int) -> torch.Tensor:
    """The aux net of ``layer`` (its ``classifier`` where it has one) on its layer's output
    h (B, ...): logits (B, num_classes)."""
    out = getattr(net, "classifier", net)(h)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(h), num_classes):
        raise ValueError(
            f"the aux net of layer {layer} returns {type(out).__name__} "
            f"{tuple(getattr(out, 'shape', ()))}, not logits ({len(h)}, {num_classes}); the aux "
            "analysis reads aux nets as classifiers: give a method whose aux net is more than "
            "one a `classifier` attribute that returns class logits")
    return out


def _layer_gradients(model: nn.Module) -> list[torch.Tensor]:
    """Per primary layer, its parameters' gradients flattened into one float64 vector."""
    return [torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                       for p in layer.parameters()]).double()
            for layer in model.layers]


def _gradients(step, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The layer gradients one call of ``step`` leaves in ``model``, from zero."""
    step.trainable.zero_grad(set_to_none=True)
    step(x, y)
    grads = _layer_gradients(model)
    step.trainable.zero_grad(set_to_none=True)
    return grads


def gradient_alignment(step, model: nn.Module,
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """Cosines (batches, layers) between each primary layer's parameter gradient under the
    step's losses (a local method: the layer's local loss) and under the end-to-end loss
    (cross-entropy of the output, backpropagated through the whole network, no detach).

    ``step``: a training step over ``model`` (:mod:`training.step`); ``batches``: (x (B, C, H,
    W), y (B,)). Everything runs in eval mode (BatchNorm uses its running statistics and
    updates none); gradients are reset afterwards, parameters untouched. A layer whose
    gradient is zero under either loss gets NaN, with a warning.
    """
    backprop = BackpropStep(model)
    step.trainable.eval()
    rows = []
    for x, y in batches:
        local = _gradients(step, model, x, y)
        global_ = _gradients(backprop, model, x, y)
        rows.append([_cosine(a, b) for a, b in zip(local, global_)])
    cosines = np.array(rows)
    zero = np.isnan(cosines).any(0)
    if zero.any():
        warnings.warn(f"layers {np.flatnonzero(zero).tolist()} have a zero gradient under one "
                      "of the losses on some batch; their cosine is NaN", RuntimeWarning,
                      stacklevel=2)
    return cosines


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else float("nan")
