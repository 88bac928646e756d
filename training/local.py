"""Supervised local learning as a training step, and the method switch.

The step is the one of ``docs/auglocal.md`` (section "The training step").

:class:`LocalStep` trains each local module by its own aux loss, calling ``backward`` as soon
as the module's loss exists so its graph is freed before the next module runs, and detaching
the module's output so no gradient crosses a module boundary. :func:`make_step` builds the
step of a method (``bp``, ``auglocal``, ``dgl``, ``infopro`` or ``predsim``) from its
:class:`MethodConfig`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from training.auglocal import SAMPLINGS, build_auglocal_aux, build_dgl_aux
from training.infopro import AUX_CONFIGS, AUX_LOSSES, build_infopro_aux, default_lambdas
from training.predsim import BETA, build_predsim_aux
from training.precision import FULL, Precision
from training.step import BackpropStep, StepOutput

METHODS = ("bp", "auglocal", "dgl", "infopro", "predsim")
# The settings each method needs and those it may take besides (MethodConfig fields).
NEEDED = {"bp": (), "auglocal": ("K", "aux_depth"), "dgl": ("K",),
          "infopro": ("K", "aux_config", "aux_loss", "lambda_x", "lambda_y"),
          "predsim": ("K", "beta")}
OPTIONAL = {"auglocal": ("pyramid_coeff", "aux_sampling", "aux_seed", "aux_rule")}
EXAMPLES = {"K": 16, "aux_depth": 2, "pyramid_coeff": 0.5, "aux_sampling": "'nearest'",
            "aux_seed": 0, "aux_config": "'1c2f'", "aux_loss": "'cross_entropy'",
            "lambda_x": (5.0, 0.2), "lambda_y": (0.05, 0.5), "beta": 0.99,
            "aux_rule": "'imagenet'"}
# AugLocal's module-count rules (--aux-rule): the CIFAR code's K_eff = K − aux_depth, or the
# ImageNet code's K_eff = K (training.auglocal.effective_modules).
AUX_RULES = ("cifar", "imagenet")
# Fields of the first checkpoint format, always in to_dict; later ones only when set, so a
# method dict written before they existed reads back equal.
FIRST_FIELDS = ("name", "K", "aux_depth", "pyramid_coeff")


@dataclass(frozen=True)
class MethodConfig:
    """A training method and its settings, as stored in checkpoints.

    ``K``: requested local modules (auglocal, dgl, infopro, predsim); ``aux_depth``: AugLocal's
    base aux depth d (``--aux-depth``); ``pyramid_coeff``: AugLocal's pyramid coefficient τ
    (``--pyramid-coeff``; None = no pyramid); ``aux_sampling``/``aux_seed``: AugLocal's rule for
    the layers an aux net mirrors (None = ``uniform``, stored as None; ``random`` needs the
    seed); ``aux_rule``: AugLocal's module count (None = ``cifar``, K − aux_depth modules;
    ``imagenet``: K, as the authors' ImageNet code); ``aux_config``, ``aux_loss``, ``lambda_x``, ``lambda_y``: InfoPro's classifier,
    its loss, and λ at the first and last aux net; ``beta``: PredSim's β. Unused settings are
    None. AugLocal puts aux nets on layers ``0 … K − aux_depth − 2``, the others on
    ``0 … K − 2``; the remaining layers and the head form the last module (see
    :mod:`training.auglocal`). Checkpoints store :meth:`to_dict` as their ``method``.
    """

    name: str
    K: int | None = None
    aux_depth: int | None = None        # blocks per aux net before the pyramid
    pyramid_coeff: float | None = None  # in [0, 1]; 0 or None: every aux net aux_depth deep
    aux_sampling: str | None = None     # nearest | random; None: uniform
    aux_seed: int | None = None         # the random rule's seed
    aux_config: str | None = None       # InfoPro's aux classifier, e.g. "1c2f"
    aux_loss: str | None = None         # InfoPro's task loss: cross_entropy | contrast
    lambda_x: tuple[float, float] | None = None  # InfoPro's λ_x at the first, last aux net
    lambda_y: tuple[float, float] | None = None  # and λ_y; both >= 0
    beta: float | None = None           # PredSim's weight of sim in [0, 1]
    aux_rule: str | None = None         # AugLocal: imagenet (no K − d reduction); None: cifar

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose one of {', '.join(METHODS)}")
        if self.aux_sampling == "uniform":
            object.__setattr__(self, "aux_sampling", None)
        if self.aux_rule == "cifar":
            object.__setattr__(self, "aux_rule", None)
        for name in ("lambda_x", "lambda_y"):  # lists from checkpoints → tuples
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        needed = NEEDED[self.name]
        allowed = needed + OPTIONAL.get(self.name, ())
        for field in (f.name for f in fields(self) if f.name != "name"):
            value = getattr(self, field)
            if field in needed and value is None:
                raise ValueError(f"method {self.name!r} needs {field}; pass e.g. "
                                 f"{field}={EXAMPLES[field]}")
            if field not in allowed and value is not None:
                raise ValueError(
                    f"method {self.name!r} takes no {field} (got {value!r}); pass {field}=None"
                )
        _check_values(self)

    def to_dict(self) -> dict:
        """Plain values (λ pairs as lists); fields beyond :data:`FIRST_FIELDS` only when set."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k in FIRST_FIELDS or v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> MethodConfig:
        return cls(**d)

    def build_step(self, model: nn.Module, *, num_classes: int,
                   input_size: Sequence[int] | None = None,
                   normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
                   precision: Precision = FULL) -> BackpropStep | LocalStep:
        """This method's training step for ``model``, with new aux nets on its device and dtype.

        ``input_size``: one input's (C, H, W), needed by ``dgl``, ``infopro`` and ``predsim``
        to size their aux nets; ``normalisation``: the dataset's (mean, std) per channel,
        needed by ``infopro`` to recover the [0, 1] image its decoders reconstruct;
        ``precision``: the step's mixed precision and layout (aux nets get its layout).
        """
        if self.name == "bp":
            return BackpropStep(model, precision)
        if self.name != "auglocal" and input_size is None:
            raise ValueError(f"method {self.name!r} needs input_size=(C, H, W) to size its "
                             "aux nets")
        loss = classifier_loss
        if self.name == "auglocal":
            aux = build_auglocal_aux(model, self.K, self.aux_depth, self.pyramid_coeff,
                                     num_classes, sampling=self.aux_sampling or "uniform",
                                     seed=self.aux_seed, reduce=self.aux_rule != "imagenet")
        elif self.name == "dgl":
            aux = build_dgl_aux(model, self.K, num_classes, input_size)
        elif self.name == "infopro":
            if normalisation is None:
                raise ValueError("method 'infopro' needs normalisation=(mean, std), the "
                                 "dataset's per-channel values (DatasetInfo.mean, .std)")
            aux, loss = build_infopro_aux(
                model, self.K, num_classes, input_size, normalisation,
                aux_config=self.aux_config, aux_loss=self.aux_loss, lambda_x=self.lambda_x,
                lambda_y=self.lambda_y), own_loss
        else:
            aux, loss = build_predsim_aux(model, self.K, num_classes, input_size,
                                          self.beta), own_loss
        p = next(model.parameters())
        aux = precision.layout(aux.to(device=p.device, dtype=p.dtype))
        return LocalStep(model, aux, loss, precision)


def paper_config(method: str, arch: str) -> MethodConfig:
    """The settings of the AugLocal authors' README (``docs/auglocal.md``, section
    "Optimiser and learning-rate schedule"): ResNet-32 K=16, aux_depth=2, pyramid_coeff=0.5;
    ResNet-110 K=55, aux_depth=3, pyramid_coeff=0.5; and of their ImageNet code (ImageNet
    rule, constant depth): tv_resnet34 K=17, aux_depth=4; tv_resnet101 K=34, aux_depth=4 (our
    choice: the authors name no depth for it). DGL, InfoPro and PredSim get the same K
    (InfoPro its default λ and the ``1c2f`` classifier with cross-entropy, PredSim β = 0.99),
    BP none."""
    settings = {"resnet32": (16, 2, 0.5), "resnet110": (55, 3, 0.5),
                "tv_resnet34": (17, 4, None), "tv_resnet101": (34, 4, None)}  # ImageNet rule
    if arch not in settings:
        raise ValueError(f"the paper has settings for {', '.join(settings)}, not {arch!r}")
    K, aux_depth, pyramid_coeff = settings[arch]
    if method == "bp":
        return MethodConfig("bp")
    if method == "auglocal":
        return MethodConfig(method, K, aux_depth, pyramid_coeff,
                            aux_rule="imagenet" if arch.startswith("tv_") else None)
    return method_defaults(method, arch, K)


def method_defaults(method: str, arch: str, K: int | None, **settings) -> MethodConfig:
    """``method``'s settings for ``arch`` with K modules: the defaults of the settings not in
    ``settings`` (AugLocal d = 2, τ = 0.5; InfoPro :func:`training.infopro.default_lambdas`,
    ``1c2f``, cross-entropy; PredSim β = 0.99), the rest as given (None = the default)."""
    defaults = {"bp": {}, "dgl": {"K": K}, "predsim": {"K": K, "beta": BETA},
                "auglocal": {"K": K, "aux_depth": 2, "pyramid_coeff": 0.5}}
    if method == "infopro":
        lambda_x, lambda_y = default_lambdas(arch, K)
        defaults["infopro"] = {"K": K, "aux_config": "1c2f", "aux_loss": "cross_entropy",
                               "lambda_x": lambda_x, "lambda_y": lambda_y}
    if method not in defaults:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    given = {k: v for k, v in settings.items() if v is not None}
    return MethodConfig(method, **{**defaults[method], **given})


def classifier_loss(aux: nn.Module, h: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """AugLocal's and DGL's module loss: cross-entropy of the aux net's logits ``aux(h)``."""
    return F.cross_entropy(aux(h), y)


def own_loss(aux: nn.Module, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoPro's and PredSim's module loss: the aux net computes it, ``aux(h, x, y)``."""
    return aux(h, x, y)


ModuleLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class LocalStep:
    """Local learning over ``model.layers`` with aux nets ``aux`` keyed by str(layer index).

    ``step(x, y)``: x (B, C, H, W), y (B,) → StepOutput of the output head. Per layer: forward;
    when the layer has an aux net, ``loss(aux, h, x, y).backward()`` at once (by default the
    cross-entropy of ``aux(h)``), then ``h.detach()``. Finally ``CE(head(h), y).backward()``.
    Evaluation uses ``model(x)``; aux nets never run. Switch train/eval mode on ``trainable``
    (``model.train()`` alone leaves the aux nets' mode).
    """

    def __init__(self, model: nn.Module, aux: nn.ModuleDict, loss: ModuleLoss = classifier_loss,
                 precision: Precision = FULL):
        _check_local_parts(model, aux)
        self.model = model
        self.aux = aux
        self.loss = loss
        self.precision = precision  # forwards autocast per module, backwards outside it
        self.trainable = nn.ModuleDict({"model": model, "aux": aux})

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        h, autocast = x, self.precision.autocast
        for i, layer in enumerate(self.model.layers):
            with autocast():
                h = layer(h)
                module_loss = self.loss(self.aux[str(i)], h, x, y) if str(i) in self.aux else None
            if module_loss is not None:
                self.precision.backward(module_loss)
                h = h.detach()
        with autocast():
            logits = self.model.head(h)
            loss = F.cross_entropy(logits, y)
        self.precision.backward(loss)
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


def render_module_losses(method: MethodConfig, aux: nn.ModuleDict) -> str:
    """InfoPro's or PredSim's aux nets as a markdown table, one row per aux layer: its loss."""
    rows = ["| layer | module loss |", "|---|---|"]
    for key, net in aux.items():
        if method.name == "infopro":
            loss = (f"{net.weight_x:.3g}·BCE(decoder) + {net.weight_y:.3g}·"
                    f"{method.aux_loss}({method.aux_config})")
        else:
            loss = f"{1 - net.beta:.3g}·CE(pred) + {net.beta:.3g}·MSE(sim)"
        rows.append(f"| {key} | {loss} |")
    rows.append(f"| {len(aux)}… + head | output loss (last module) |")
    return "\n".join(rows)


def _check_values(config: MethodConfig) -> None:
    """Refuse settings outside their domains, naming the value and the fix."""
    if config.aux_sampling is not None and config.aux_sampling not in SAMPLINGS:
        raise ValueError(f"aux_sampling={config.aux_sampling!r} is unknown; choose one of "
                         f"{', '.join(SAMPLINGS)}")
    if (config.aux_sampling == "random") != (config.aux_seed is not None):
        raise ValueError(f"aux_sampling={config.aux_sampling or 'uniform'!r} with "
                         f"aux_seed={config.aux_seed!r}: the 'random' rule needs an integer "
                         "seed and the others take none")
    if config.aux_rule is not None and config.aux_rule not in AUX_RULES:
        raise ValueError(f"aux_rule={config.aux_rule!r} is unknown; choose one of "
                         f"{', '.join(AUX_RULES)}")
    if config.aux_config is not None and config.aux_config not in AUX_CONFIGS:
        raise ValueError(f"aux_config={config.aux_config!r} is not an InfoPro aux classifier; "
                         f"choose one of {', '.join(AUX_CONFIGS)}")
    if config.aux_loss is not None and config.aux_loss not in AUX_LOSSES:
        raise ValueError(f"aux_loss={config.aux_loss!r} is unknown; choose one of "
                         f"{', '.join(AUX_LOSSES)}")
    for name in ("lambda_x", "lambda_y"):
        pair = getattr(config, name)
        if pair is not None and (len(pair) != 2 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in pair)):
            raise ValueError(f"{name}={pair!r} must be two finite numbers >= 0 (its value at "
                             "the first and at the last aux net), e.g. (5.0, 0.2)")
    if config.beta is not None and not (isinstance(config.beta, (int, float))
                                        and 0 <= config.beta <= 1):
        raise ValueError(f"beta={config.beta!r} must lie in [0, 1] (PredSim's weight of the "
                         "similarity loss; 0.99 in the paper)")


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
