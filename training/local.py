"""Supervised local learning as a training step, and the method switch.

The step is the one of ``docs/auglocal.md`` (section "The training step").

:class:`LocalStep` trains each local module by its own aux loss, calling ``backward`` as soon
as the module's loss exists so its graph is freed before the next module runs, and detaching
the module's output so no gradient crosses a module boundary. :func:`make_step` builds the
step of a method (``bp``, ``auglocal`` or ``dgl``) from its :class:`MethodConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from training.auglocal import build_auglocal_aux, build_dgl_aux
from training.step import BackpropStep, StepOutput

METHODS = ("bp", "auglocal", "dgl")


@dataclass(frozen=True)
class MethodConfig:
    """A training method and its settings, as stored in checkpoints.

    ``K``: requested local modules (auglocal, dgl); ``aux_depth``: AugLocal's base aux depth
    d (``--aux-depth``); ``pyramid_coeff``: AugLocal's pyramid coefficient τ
    (``--pyramid-coeff``; None = no pyramid). Unused settings are None. AugLocal puts aux nets
    on layers ``0 … K − aux_depth − 2``, DGL on ``0 … K − 2``; the remaining layers and the
    head form the last module (see :mod:`training.auglocal`). Checkpoints store
    :meth:`to_dict` as their ``method``.
    """

    name: str
    K: int | None = None
    aux_depth: int | None = None        # blocks per aux net before the pyramid
    pyramid_coeff: float | None = None  # in [0, 1]; 0 or None: every aux net aux_depth deep

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose one of {', '.join(METHODS)}")
        needed = {"bp": (), "auglocal": ("K", "aux_depth"), "dgl": ("K",)}[self.name]
        allowed = needed + (("pyramid_coeff",) if self.name == "auglocal" else ())
        for field, example in (("K", 16), ("aux_depth", 2), ("pyramid_coeff", 0.5)):
            value = getattr(self, field)
            if field in needed and value is None:
                raise ValueError(f"method {self.name!r} needs {field}; pass e.g. {field}={example}")
            if field not in allowed and value is not None:
                raise ValueError(
                    f"method {self.name!r} takes no {field} (got {value!r}); pass {field}=None"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MethodConfig:
        return cls(**d)

    def build_step(self, model: nn.Module, *, num_classes: int,
                   input_size: Sequence[int] | None = None) -> BackpropStep | LocalStep:
        """This method's training step for ``model``, with new aux nets on its device and dtype.

        ``input_size``: one input's (C, H, W), needed by ``dgl`` to size its aux nets.
        """
        if self.name == "bp":
            return BackpropStep(model)
        if self.name == "auglocal":
            aux = build_auglocal_aux(model, self.K, self.aux_depth, self.pyramid_coeff,
                                     num_classes)
        else:
            if input_size is None:
                raise ValueError("method 'dgl' needs input_size=(C, H, W) to size its aux nets")
            aux = build_dgl_aux(model, self.K, num_classes, input_size)
        p = next(model.parameters())
        return LocalStep(model, aux.to(device=p.device, dtype=p.dtype))


def paper_config(method: str, arch: str) -> MethodConfig:
    """The settings of the AugLocal authors' README (``docs/auglocal.md``, section
    "Optimiser and learning-rate schedule"): ResNet-32 K=16, aux_depth=2, pyramid_coeff=0.5;
    ResNet-110 K=55, aux_depth=3, pyramid_coeff=0.5. DGL gets the same K, BP none."""
    settings = {"resnet32": (16, 2, 0.5), "resnet110": (55, 3, 0.5)}
    if arch not in settings:
        raise ValueError(f"the paper has settings for {', '.join(settings)}, not {arch!r}")
    K, aux_depth, pyramid_coeff = settings[arch]
    if method == "bp":
        return MethodConfig("bp")
    if method == "auglocal":
        return MethodConfig(method, K, aux_depth, pyramid_coeff)
    return MethodConfig(method, K)


class LocalStep:
    """Local learning over ``model.layers`` with aux nets ``aux`` keyed by str(layer index).

    ``step(x, y)``: x (B, C, H, W), y (B,) → StepOutput of the output head. Per layer: forward;
    when the layer has an aux net, ``CE(aux(h), y).backward()`` at once, then ``h.detach()``.
    Finally ``CE(head(h), y).backward()``. Evaluation uses ``model(x)``; aux nets never run.
    Switch train/eval mode on ``trainable`` (``model.train()`` alone leaves the aux nets' mode).
    """

    def __init__(self, model: nn.Module, aux: nn.ModuleDict):
        _check_local_parts(model, aux)
        self.model = model
        self.aux = aux
        self.trainable = nn.ModuleDict({"model": model, "aux": aux})

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        h = x
        for i, layer in enumerate(self.model.layers):
            h = layer(h)
            if str(i) in self.aux:
                F.cross_entropy(self.aux[str(i)](h), y).backward()
                h = h.detach()
        logits = self.model.head(h)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        return StepOutput(loss.detach(), logits.detach())

    def aux_state_dict(self) -> dict:
        return self.aux.state_dict()

    def load_aux_state_dict(self, state: dict | None) -> None:
        """Load aux weights saved by :meth:`aux_state_dict`; refuses any key or shape mismatch."""
        if not state:
            raise ValueError(
                "the checkpoint has no auxiliary weights, so a local-learning run cannot "
                "resume from it; resume from a checkpoint written by the same method"
            )
        expected = {k: v.shape for k, v in self.aux.state_dict().items()}
        missing = sorted(expected.keys() - state.keys())
        unexpected = sorted(state.keys() - expected.keys())
        reshaped = sorted(k for k in expected.keys() & state.keys()
                          if tuple(state[k].shape) != tuple(expected[k]))
        if missing or unexpected or reshaped:
            raise ValueError(
                f"auxiliary weights do not fit these aux nets: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, shape mismatch {reshaped[:5]}; resume with the "
                "method settings (K, aux_depth, pyramid_coeff) the checkpoint was trained with"
            )
        self.aux.load_state_dict(state)


def make_step(method: str, model: nn.Module, *, K: int | None = None,
              aux_depth: int | None = None, pyramid_coeff: float | None = None,
              num_classes: int, input_size: Sequence[int] | None = None
              ) -> BackpropStep | LocalStep:
    """The training step of ``method`` (bp | auglocal | dgl) for ``model``.

    Shorthand for ``MethodConfig(method, K, aux_depth, pyramid_coeff).build_step(model, ...)``;
    settings a method does not use must be None.
    """
    config = MethodConfig(method, K, aux_depth, pyramid_coeff)
    return config.build_step(model, num_classes=num_classes, input_size=input_size)


def _check_local_parts(model: nn.Module, aux: nn.ModuleDict) -> None:
    if not isinstance(getattr(model, "layers", None), nn.Sequential) or not hasattr(model, "head"):
        raise ValueError(
            f"{type(model).__name__} has no `layers` (nn.Sequential) and `head`; local learning "
            "needs a model built by training.models.build_model or one with the same parts"
        )
    n_layers = len(model.layers)
    bad = [k for k in aux if not (k.isdigit() and int(k) < n_layers)]
    if bad:
        raise ValueError(
            f"aux keys {bad} are not layer indices 0…{n_layers - 1}; key each aux net by "
            "str(index of the layer whose output it reads)"
        )
