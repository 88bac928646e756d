"""Train a network with backprop or a local-learning method and write a checkpoint.

    python -m training.train --method bp --arch resnet20 --dataset fashion-mnist \\
        --epochs 2 --batch-size 128 --lr 0.1 --seed 0 --out bp.pt
    python -m training.train --method auglocal --K 10 --aux-depth 2 --pyramid-coeff 0.5 ...
    python -m training.train --method dgl --K 10 ...
    python -m training.train --method infopro --K 10 --lambda-x 5 0.2 --lambda-y 0.05 0.5 ...
    python -m training.train --method predsim --K 10 --beta 0.99 ...
    python -m training.train --method auglocal --aux-sampling random --aux-seed 3 ...
    python -m training.train --method auglocal ... --dry-run   # print the aux plan and costs

One loop for every method: a method is a *step* (see :mod:`training.step`). Each epoch ends
with a test-set evaluation (in the run's precision on ``--eval-images`` images; after the
last epoch in float32 on the whole test set, the accuracy a checkpoint reports), a line in
the JSON-lines log and an atomically written checkpoint, so ``--resume`` continues from the last completed epoch with the same optimiser state and,
because batch order and augmentation depend only on (seed, epoch), the same batches.

Under ``torchrun --nproc_per_node=N -m training.train ...`` the run is data-parallel (see
:mod:`training.distributed`): ``--batch-size`` stays the global batch, each process trains on
an interleaved 1/N of it, gradients are averaged once per step after all local backwards, and
only rank 0 prints, logs and writes checkpoints.

Bad input stops a run before any work: numbers outside their :data:`RANGES` (NaN and infinities
included) while parsing, other settings and the device in :func:`check_config`, and --out and
--log in :func:`check_outputs` (an existing file is replaced only with --overwrite, or continued
with --resume when it is this run's checkpoint; never a directory, a read-only file, a dataset
file, or --out as --log). A loss that becomes non-finite stops the run with
:class:`TrainingDiverged` before anything of that epoch is saved, so the checkpoint keeps the
last good epoch and the log stays strict JSON. ``main`` prints each such failure as one
``error:`` line and exits with status 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from training import data as datasets
from training import distributed, models
from training.auglocal import SAMPLINGS, model_aux_plan, render_plan
from training.checkpoint import (CheckpointError, arch_config, atomic_torch_save, check_resume,
                                 checkpoint_dict, checkpoint_meta, read_checkpoint)
from training.checks import Range, check_distinct, check_output, device_problem
from training.distributed import SINGLE, World
from training.infopro import AUX_CONFIGS, AUX_LOSSES
from training.local import AUX_RULES, METHODS, MethodConfig, method_defaults, render_module_losses
from training.memory import forward_macs, measure_step_memory
from training.models import ARCHS, ResNet, build_model, default_width
from training.precision import (AMP_CHOICES, FULL, Precision, precision_problem,
                                resolve_precision)
from training.schedule import default_warmup_epochs, learning_rate


@dataclass(frozen=True)
class TrainConfig:
    method: str = "bp"                 # bp | auglocal | dgl | infopro | predsim
    K: int | None = None               # local modules requested (None: one per layer)
    aux_depth: int = 2                 # AugLocal's aux depth d
    pyramid_coeff: float | None = 0.5  # AugLocal's pyramid coefficient τ (None: constant d)
    aux_sampling: str = "uniform"      # AugLocal's aux layers: uniform | nearest | random
    aux_seed: int | None = None        # --aux-sampling random: its seed (None: --seed)
    aux_config: str = "1c2f"           # InfoPro's aux classifier
    aux_loss: str = "cross_entropy"    # InfoPro's task loss: cross_entropy | contrast
    lambda_x: tuple[float, float] | None = None  # InfoPro's λ_x at the first and last aux
    lambda_y: tuple[float, float] | None = None  # net, and λ_y (None: per arch and K)
    beta: float = 0.99                 # PredSim's weight of the similarity loss
    aux_rule: str | None = None        # AugLocal's module count: cifar (K − d) | imagenet
                                       # (K); None: imagenet for tv_* archs, else cifar
    arch: str = "resnet20"
    width: int | None = None           # base channels (None: 16, torchvision archs 64)
    image_size: int | None = None      # imagefolder: crop side in pixels (None: 224)
    workers: int = 4                   # imagefolder: DataLoader worker processes
    amp: str | None = None             # mixed precision: bf16 | fp16 (CUDA) | None or "none"
                                       # (fp32) | "auto" (bf16 + channels-last where the
                                       # hardware has bf16 units, else fp32)
    channels_last: bool = False        # NHWC memory layout of the model and batches
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int | None = None          # class-balanced training subset size (None: all)
    subset_seed: int = 0               # which subset (kept apart from --seed, so models
                                       # of different seeds can see the same images)
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.1                    # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None   # None: 10 % of epochs
    seed: int = 0
    out: str = "bp.pt"
    log: str | None = None             # JSON lines; None: next to --out with suffix .jsonl
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    threads: int | None = None         # torch CPU threads (None: PyTorch's default)
    eval_batch_size: int = 512
    eval_images: int | None = None     # test images evaluated after each epoch but the last,
                                       # in the run's precision (class-balanced; None: all);
                                       # the last epoch evaluates all of them in float32
    progress: bool = True
    dry_run: bool = False              # print the method's plan and costs, train nothing

    @property
    def log_path(self) -> Path:
        return Path(self.log) if self.log else Path(self.out).with_suffix(".jsonl")

    @property
    def warmup(self) -> int:
        return default_warmup_epochs(self.epochs) if self.warmup_epochs is None \
            else self.warmup_epochs


# The values each numeric setting accepts (None, where a field allows it, means "default").
# parse_args refuses others while parsing; check_config refuses them in a TrainConfig.
RANGES = {
    "K": Range(int, 1), "aux_depth": Range(int, 1), "pyramid_coeff": Range(float, 0, 1),
    "width": Range(int, 1), "subset": Range(int, 1), "epochs": Range(int, 1),
    "batch_size": Range(int, 1), "lr": Range(float, 0, low_open=True),
    "momentum": Range(float, 0, 1, low_open=True, high_open=True),  # > 0: Nesterov
    "weight_decay": Range(float, 0), "warmup_epochs": Range(int, 0), "threads": Range(int, 1),
    "eval_batch_size": Range(int, 1), "eval_images": Range(int, 1), "beta": Range(float, 0, 1),
    "image_size": Range(int, 8), "workers": Range(int, 0),
}
LAMBDA = Range(float, 0)  # each of --lambda-x and --lambda-y's two values


@dataclass(frozen=True)
class EpochStats:
    train_loss: float
    train_acc: float
    images: int
    seconds: float
    first_nonfinite_step: int | None = None  # 0-based batch of this process, if any


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; nothing of that epoch was saved."""


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_config(config: TrainConfig, world_size: int = 1) -> None:
    """Reject impossible settings up front, naming the flag and the fix (one line).

    ``world_size``: the processes of a torchrun run, which share each global batch."""
    problems = []
    if config.method not in METHODS:
        problems.append(f"--method {config.method!r}: choose one of {', '.join(METHODS)}")
    if config.arch not in ARCHS:
        problems.append(f"--arch {config.arch!r}: choose one of {', '.join(ARCHS)}")
    if config.aux_rule not in (None, *AUX_RULES):
        problems.append(f"--aux-rule {config.aux_rule!r}: choose one of {', '.join(AUX_RULES)}")
    amp = precision_problem(config.amp, config.device)
    if amp:
        problems.append(amp)
    for field, allowed in RANGES.items():
        value = getattr(config, field)
        if value is not None and not allowed.admits(value):
            problems.append(f"{_flag(field)} {value}: must be {allowed}")
    device = device_problem(config.device)
    if device:
        problems.append(device)
    if (RANGES["epochs"].admits(config.epochs) and RANGES["warmup_epochs"].admits(config.warmup)
            and config.warmup > config.epochs):
        problems.append(f"--warmup-epochs {config.warmup}: must lie in [0, --epochs]")
    for field in ("lambda_x", "lambda_y"):
        pair = getattr(config, field)
        if pair is not None and not (len(pair) == 2 and all(map(LAMBDA.admits, pair))):
            problems.append(f"{_flag(field)} {pair}: must be two values (first and last aux "
                            f"net), each {LAMBDA}")
    if config.resume and config.overwrite:
        problems.append("--resume and --overwrite contradict each other: pick one")
    if config.batch_size >= 1 and config.batch_size % world_size:
        problems.append(f"--batch-size {config.batch_size} is the global batch and must be "
                        f"divisible by the {world_size} processes; choose e.g. "
                        f"{max(config.batch_size // world_size, 1) * world_size}")
    if not problems:
        problems += method_problems(config)
    if problems:
        raise ValueError("invalid training settings: " + "; ".join(problems))


def method_problems(config: TrainConfig) -> list[str]:
    """What the method's settings cannot do on ``config.arch`` (its MethodConfig checks and,
    for AugLocal, its aux plan), found on the model's layers built on the meta device: shapes
    only, no weights, so nothing is allocated before every input is checked."""
    with torch.device("meta"):
        model = models.build_model(config.arch, width=config.width)
    try:
        method = method_config(config, len(model.layer_names))
        if method.name == "auglocal":
            method_plan(method, model)
    except ValueError as err:
        return [str(err)]
    return []


def method_plan(method: MethodConfig, model: nn.Module) -> dict:
    """AugLocal's aux plan of ``method`` for ``model``."""
    return model_aux_plan(model, method.K, method.aux_depth, method.pyramid_coeff,
                          sampling=method.aux_sampling or "uniform", seed=method.aux_seed,
                          reduce=method.aux_rule != "imagenet")


def check_outputs(config: TrainConfig) -> None:
    """Refuse, before any work, a --out or --log that cannot or must not be written: the same
    file twice, a dataset file, a directory, an unwritable folder, a read-only file, an
    existing file without --overwrite, or (--resume) a --out that is not a checkpoint of this
    run's settings."""
    out, log = Path(config.out), config.log_path
    inputs = [(f"{config.dataset}'s dataset {'folder' if path.is_dir() else 'file'}", path)
              for path in datasets.source_paths(config.dataset, config.data_root)]
    check_distinct({"--out": out, "--log": log}, inputs)
    replace = config.overwrite or config.resume
    check_output(out, "--out", replace=replace,
                 fix="pass --resume to continue that run or --overwrite to start again")
    check_output(log, "--log", replace=replace,
                 fix="pass --overwrite to replace it, --resume to continue the run it logs, "
                     "or choose another --log")
    if config.resume and out.exists():
        check_resume(asdict(config), checkpoint_meta(out), out)


def method_config(config: TrainConfig, n_layers: int) -> MethodConfig:
    """The method's settings; K defaults to one local module per layer, the random sampling
    seed to --seed, InfoPro's λ to its per-architecture defaults."""
    K = n_layers if config.K is None else config.K
    if config.method == "auglocal":
        random = config.aux_sampling == "random"
        seed = (config.seed if config.aux_seed is None else config.aux_seed) if random else None
        rule = config.aux_rule or ("cifar" if config.arch.startswith("resnet") else "imagenet")
        return MethodConfig("auglocal", K, config.aux_depth, config.pyramid_coeff,
                            aux_sampling=config.aux_sampling, aux_seed=seed, aux_rule=rule)
    if config.method == "infopro":
        return method_defaults("infopro", config.arch, K, aux_config=config.aux_config,
                               aux_loss=config.aux_loss, lambda_x=config.lambda_x,
                               lambda_y=config.lambda_y)
    if config.method == "predsim":
        return MethodConfig("predsim", K, beta=config.beta)
    return MethodConfig("dgl", K) if config.method == "dgl" else MethodConfig("bp")


def make_optimizer(config: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def train_epoch(step, optimizer: torch.optim.Optimizer,
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                lr_at: Callable[[int], float], device: torch.device,
                progress: tqdm | None = None, world: World = SINGLE) -> EpochStats:
    """One pass over ``batches``; ``lr_at(i)`` is the learning rate of batch i.

    With a distributed ``world``, ``batches`` are this rank's shares of the global batches,
    gradients are averaged over the ranks before each optimiser step, and the returned loss,
    accuracy and image count cover all ranks. A non-finite loss is noted, without stopping
    the loop (that would need a device synchronisation per batch), and makes the returned
    loss non-finite."""
    step.trainable.train()  # primary and aux nets alike
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite batch
    seen = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = step.precision.layout(x)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i)
        optimizer.zero_grad(set_to_none=True)
        out = step(x, y)   # every backward of the step, local methods included
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out.loss), i, first_bad)
        distributed.average_gradients(step.trainable, world)
        step.precision.step(optimizer)  # through the loss scaler under --amp fp16
        loss_sum += out.loss * len(y)
        correct += (out.logits.argmax(1) == y).sum()
        seen += len(y)
        if progress is not None:
            progress.update()
            if i % 20 == 0:  # .item() synchronises a GPU: not every batch
                elapsed = time.perf_counter() - start
                progress.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                     img_s=f"{seen / elapsed:.0f}")
    seconds = time.perf_counter() - start
    loss_total, correct_total, seen = distributed.sum_over_ranks(
        [loss_sum.item(), correct.item(), seen], world, device)
    bad = int(first_bad)
    return EpochStats(loss_total / seen, correct_total / seen, int(seen), seconds,
                      bad if bad >= 0 else None)


@torch.inference_mode()
def evaluate(model: ResNet, data: datasets.ImageSet, *, batch_size: int,
             device: torch.device, precision: Precision = FULL) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the primary network on a split, in eval mode, its
    forwards under ``precision`` (the loss in float32)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y, _ in datasets.eval_batches(data, batch_size):
        x, y = precision.layout(x.to(device)), y.to(device)
        with precision.autocast():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)


def load_data(config: TrainConfig) -> tuple[datasets.ImageSet | datasets.FolderSet, ...]:
    """(train, test) splits; an image folder's are loaded by --workers processes, into pinned
    memory when training on a GPU."""
    pin = torch.device(config.device).type == "cuda"
    folder = {"image_size": config.image_size, "workers": config.workers,
              "pin_memory": pin} if config.dataset == "imagefolder" else {}
    train = datasets.load_split(config.dataset, "train", data_root=config.data_root, **folder)
    test = datasets.load_split(config.dataset, "test", data_root=config.data_root, **folder)
    if config.subset is not None:
        train = datasets.take(train, datasets.balanced_subset(train.labels, config.subset,
                                                              config.subset_seed))
    return train, test


def save_checkpoint(config: TrainConfig, method: MethodConfig, step, optimizer,
                    info: datasets.DatasetInfo, epoch: int, history: list[dict],
                    cost: dict) -> None:
    """Write the run's state after ``epoch`` completed epochs to ``config.out``, atomically."""
    model = step.model
    atomic_torch_save(checkpoint_dict(
        arch=arch_config(config.arch, model, info.channels, info.num_classes),
        model=model, method=method.to_dict(),
        dataset={**info.to_dict(), "subset": config.subset},
        aux_state_dict=step.aux_state_dict(), optimizer=optimizer.state_dict(),
        history=history, cost=cost, epoch=epoch, seed=config.seed, config=asdict(config),
    ), config.out)


COST_KEYS = ("memory", "macs_per_image")  # the run's cost metrics, measured once per run


def restore(config: TrainConfig, step, optimizer) -> tuple[int, list[dict], dict]:
    """Load the checkpoint at ``config.out`` into step and optimiser:
    (epochs done, per-epoch history, the run's cost metrics). :func:`check_outputs` has
    checked that its settings are this run's."""
    ckpt = read_checkpoint(config.out)
    if not isinstance(ckpt.get("optimizer"), dict):
        raise CheckpointError(f"{config.out} holds no optimiser state, so the run cannot be "
                              "resumed from it; start again with --overwrite")
    step.model.load_state_dict(ckpt["state_dict"])
    step.load_aux_state_dict(ckpt.get("aux_state_dict"))
    optimizer.load_state_dict(ckpt["optimizer"])
    metrics = ckpt["metrics"]
    return ckpt["epoch"], metrics["epochs"], {k: metrics[k] for k in COST_KEYS if k in metrics}


def run_cost(step, config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Memory of one training step and forward MACs per image (primary + aux nets).

    Measured on a copy, so the run itself is not advanced by the measurement."""
    probe = copy.deepcopy(step)
    memory = measure_step_memory(probe, make_optimizer(config, probe.trainable.parameters()),
                                 x, y)
    macs = forward_macs(probe.trainable, lambda: probe(x[:2], y[:2]))
    return {"memory": memory.to_dict(), "macs_per_image": macs}


def describe(config: TrainConfig, method: MethodConfig, step, info) -> str:
    """The --dry-run text: the aux plan (AugLocal) and the parameter and MAC counts."""
    model = step.model
    settings = ", ".join(f"{k}={v}" for k, v in method.to_dict().items()
                         if k != "name" and v is not None)
    lines = [f"{config.arch} width {config.width} on {info.name} "
             f"({info.channels}×{info.image_size}×{info.image_size}), "
             f"method {method.name} ({settings or 'one module'})"]
    if method.name == "auglocal":
        lines.append(render_plan(method_plan(method, model), model.layer_widths))
    elif method.name in ("infopro", "predsim"):
        lines.append(render_module_losses(method, step.aux))
    device = next(model.parameters()).device
    x = torch.zeros(2, info.channels, info.image_size, info.image_size, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    primary = forward_macs(model, lambda: model.eval()(x))
    total = forward_macs(step.trainable, lambda: step(x, y))
    n_primary = sum(p.numel() for p in model.parameters())
    n_all = sum(p.numel() for p in step.trainable.parameters())
    lines.append(f"parameters: primary {n_primary:,}, aux {n_all - n_primary:,}")
    lines.append(f"forward MACs per image: primary {primary:,}, aux {total - primary:,} "
                 f"(training step ≈ {total / primary:.2f}× BP's)")
    return "\n".join(lines)


def train(config: TrainConfig) -> dict:
    """Run (or resume) a training run; returns the final checkpoint's metrics.

    Under torchrun every process calls this (see :mod:`training.distributed`); rank 0 returns
    the metrics, the other ranks only those of the epochs they resumed from."""
    check_config(config, distributed.world_from_env().world_size)
    amp, channels_last, choice = resolve_precision(config.amp, config.channels_last,
                                                   config.device)
    config = replace(config, width=config.width or default_width(config.arch), amp=amp,
                     channels_last=channels_last)  # the checkpoint records what ran
    if not config.dry_run:
        check_outputs(config)
    world, device, created = distributed.setup(config.device)
    try:
        return _train(config, world, device, choice)
    finally:
        distributed.teardown(created)


def _train(config: TrainConfig, world: World, device: torch.device, choice: str) -> dict:
    out = Path(config.out)
    say = print if world.is_main else (lambda *args, **kwargs: None)
    say(choice)
    if config.threads:
        torch.set_num_threads(config.threads)
    info = datasets.dataset_info(config.dataset, config.data_root, config.image_size)
    torch.manual_seed(config.seed)
    precision = Precision(config.amp, config.channels_last, device.type)
    model = precision.layout(build_model(config.arch, width=config.width,
                                         in_channels=info.channels,
                                         num_classes=info.num_classes).to(device))
    method = method_config(config, len(model.layer_names))
    step = method.build_step(model, num_classes=info.num_classes,
                             input_size=(info.channels, info.image_size, info.image_size),
                             normalisation=(info.mean, info.std), precision=precision)
    if config.dry_run:
        say(describe(config, method, step, info))
        return {"epochs": []}
    distributed.broadcast_module(step.trainable, world)  # identical start on every rank
    train_set, test_set = load_data(config)
    monitor = test_set  # what the epochs before the last are evaluated on
    if config.eval_images is not None and config.eval_images < len(test_set):
        monitor = datasets.take(test_set, datasets.balanced_subset(test_set.labels,
                                                                   config.eval_images, 0))
    optimizer = make_optimizer(config, step.trainable.parameters())
    done, history, cost = 0, [], {}
    if config.resume and out.exists():
        done, history, cost = restore(config, step, optimizer)  # on every rank
    elif config.resume:
        say(f"--resume: no checkpoint at {out} yet, starting from scratch")
    if done >= config.epochs:
        say(f"{out} has already completed {done} epochs; nothing to do")
        return {"epochs": history}

    steps = len(train_set) // config.batch_size

    def batches(epoch: int):
        return datasets.train_batches(train_set, config.batch_size, seed=config.seed,
                                      epoch=epoch, rank=world.rank,
                                      world_size=world.world_size)

    if not cost and world.is_main:  # the step of one process, on its share of a batch
        x, y = next(batches(0))
        cost = run_cost(step, config, x.to(device), y.to(device))
    log = contextlib.nullcontext()
    if world.is_main:
        config.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = config.log_path.open("a" if done else "w")
    with log:
        if done == 0 and world.is_main:
            log.write(json_line({"event": "cost", **cost}))
        for epoch in range(done, config.epochs):
            lr_at = lambda i, e=epoch: learning_rate(e + i / steps, lr=config.lr,  # noqa: E731
                                                     epochs=config.epochs,
                                                     warmup_epochs=config.warmup)
            with tqdm(total=steps, desc=f"{config.method} epoch {epoch + 1}/{config.epochs}",
                      unit="batch", disable=not (config.progress and world.is_main),
                      leave=False) as bar:
                stats = train_epoch(step, optimizer, batches(epoch), lr_at=lr_at,
                                    device=device, progress=bar, world=world)
            if not math.isfinite(stats.train_loss):  # the same on every rank: summed over all
                step_text = ("on another process" if stats.first_nonfinite_step is None else
                             f"step {stats.first_nonfinite_step + 1} of {steps}")
                raise diverged(config, f"the training loss became {stats.train_loss} at "
                                       f"epoch {epoch + 1}, {step_text}", epoch)
            distributed.average_buffers(step.trainable, world)
            if world.is_main:
                last = epoch + 1 == config.epochs
                evaluated, eval_precision = (test_set, FULL) if last else (monitor, precision)
                test_loss, test_acc = evaluate(model, evaluated, device=device,
                                               batch_size=config.eval_batch_size,
                                               precision=eval_precision)
                if not math.isfinite(test_loss):
                    raise diverged(config, f"the test loss is {test_loss} after epoch "
                                           f"{epoch + 1}", epoch)
                record = {"event": "epoch", "epoch": epoch + 1, "lr_start": lr_at(0),
                          "train_loss": stats.train_loss, "train_acc": stats.train_acc,
                          "test_loss": test_loss, "test_acc": test_acc,
                          "test_images": len(evaluated),
                          "eval_precision": eval_precision.amp or "float32",
                          "epoch_seconds": stats.seconds,
                          "images_per_second": stats.images / stats.seconds}
                if world.launched:
                    record["world_size"] = world.world_size
                line = json_line(record)  # refuses what is not JSON before anything is saved
                history.append(record)
                save_checkpoint(config, method, step, optimizer, info, epoch + 1, history,
                                cost)
                log.write(line)  # after the checkpoint: a resume never logs an epoch twice
                log.flush()
                say(f"epoch {epoch + 1}/{config.epochs}: train loss {stats.train_loss:.4f}, "
                    f"test acc {test_acc:.4f} ({stats.images / stats.seconds:.0f} img/s)")
            distributed.barrier(world)  # the others wait for rank 0's evaluation and checkpoint
    return {"epochs": history}


def json_line(record: dict) -> str:
    """One line of the JSON-lines log: strict JSON (NaN and infinities are refused)."""
    return json.dumps(record, allow_nan=False) + "\n"


def diverged(config: TrainConfig, what: str, epochs_done: int) -> TrainingDiverged:
    """The error that stops a run whose loss became non-finite after ``epochs_done`` good
    epochs; the checkpoint at --out is left as it was."""
    kept = (f"{config.out} keeps the checkpoint of epoch {epochs_done}" if epochs_done else
            "no checkpoint of this run was written")
    return TrainingDiverged(f"training diverged: {what}; {kept}. Lower --lr (now {config.lr:g})"
                            " or check the data, then start again with --overwrite")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The settings ``argv`` names; a bad option (a number outside its :data:`RANGES`
    included) exits with a usage error naming it (status 2)."""
    defaults = TrainConfig()

    def number(field: str) -> dict:
        """add_argument keywords of a numeric setting: its range as the type, its default."""
        return {"type": RANGES[field].parse, "default": getattr(defaults, field)}

    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=defaults.method, choices=METHODS,
                   help="bp (backprop), auglocal (Ma et al. 2024), dgl (DGL-style local), "
                   "infopro (Wang et al. 2021) or predsim (Nøkland & Eidnes 2019)")
    p.add_argument("--K", **number("K"), help="local modules (default: one per layer; "
                   "AugLocal trains K − aux-depth of them by aux nets, as the authors' code "
                   "does)")
    p.add_argument("--aux-depth", **number("aux_depth"),
                   help="AugLocal: blocks per aux net before the pyramid (2)")
    p.add_argument("--pyramid-coeff", **number("pyramid_coeff"),
                   help="AugLocal: pyramid coefficient τ of the pyramidal depth "
                   "schedule (0.5; 0: constant)")
    p.add_argument("--aux-sampling", default=defaults.aux_sampling, choices=SAMPLINGS,
                   help="AugLocal: the later layers each aux net mirrors: uniform (the "
                   "paper's), nearest (the next d) or random (seeded; ablations)")
    p.add_argument("--aux-seed", type=int, help="--aux-sampling random: its seed (--seed)")
    p.add_argument("--aux-config", default=defaults.aux_config, choices=AUX_CONFIGS,
                   help="InfoPro: aux classifier, <convs>c<linears>f (1c2f)")
    p.add_argument("--aux-loss", default=defaults.aux_loss, choices=AUX_LOSSES,
                   help="InfoPro: task loss of the aux classifier (cross_entropy)")
    for name in ("x", "y"):
        p.add_argument(f"--lambda-{name}", nargs=2, type=LAMBDA.parse,
                       metavar=("FIRST", "LAST"),
                       help=f"InfoPro: λ_{name} at the first and the last aux net, linear "
                       "between (default: the authors' per architecture and K)")
    p.add_argument("--beta", **number("beta"),
                   help="PredSim: weight β of the similarity loss in (1 − β)·pred + β·sim")
    p.add_argument("--aux-rule", choices=AUX_RULES,
                   help="AugLocal's module count: cifar (K − aux-depth modules, the CIFAR "
                   "code's) or imagenet (K, the ImageNet code's); default: imagenet for the "
                   "tv_* architectures, cifar otherwise")
    p.add_argument("--arch", default=defaults.arch, choices=list(ARCHS),
                   help="CIFAR ResNets (resnet<6n+2>) or torchvision's ImageNet networks (tv_*)")
    p.add_argument("--width", **number("width"),
                   help="base channels (first stage; later stages 2×, 4× (and 8×); default "
                   "16, for tv_* 64 = torchvision's)")
    p.add_argument("--image-size", **number("image_size"),
                   help="imagefolder: side of the training and evaluation crops (224)")
    p.add_argument("--workers", **number("workers"),
                   help="imagefolder: DataLoader worker processes (4)")
    p.add_argument("--amp", choices=AMP_CHOICES,
                   help="mixed precision: bf16 (CUDA or CPU), fp16 (CUDA, with loss scaling), "
                   "none (float32, the default) or auto (bf16 + channels-last where the CPU or "
                   "GPU has bf16 units, else float32)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last (NHWC) memory layout, for GPU tensor cores and CPU "
                   "bf16 kernels")
    p.add_argument("--dataset", default=defaults.dataset, choices=list(datasets.DATASETS))
    p.add_argument("--data-root", help="folder with the dataset files (CIFAR-10/SVHN/STL-10; "
                   "imagefolder: train/ and val/ with a subfolder per class; "
                   "Fashion-MNIST defaults to Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--subset", **number("subset"),
                   help="train on a class-balanced subset of N images")
    p.add_argument("--subset-seed", type=int, default=defaults.subset_seed,
                   help="which subset (0); independent of --seed")
    p.add_argument("--epochs", **number("epochs"))
    p.add_argument("--batch-size", **number("batch_size"))
    p.add_argument("--lr", **number("lr"), help="peak learning rate")
    p.add_argument("--momentum", **number("momentum"))
    p.add_argument("--weight-decay", **number("weight_decay"))
    p.add_argument("--warmup-epochs", **number("warmup_epochs"),
                   help="linear warm-up from 0.01 (default: 10 %% of --epochs)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", default=defaults.out, help="checkpoint path (written every epoch)")
    p.add_argument("--log", help="JSON-lines log (default: --out with suffix .jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out from its last completed epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over an existing --out and --log")
    p.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", **number("threads"), help="torch CPU threads")
    p.add_argument("--eval-batch-size", **number("eval_batch_size"))
    p.add_argument("--eval-images", **number("eval_images"),
                   help="test images evaluated after each epoch but the last, in the run's "
                   "precision (class-balanced; default all); the last epoch evaluates all "
                   "of them in float32, so the reported accuracy is comparable across --amp")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the aux plan and parameter/MAC counts, then exit")
    args = vars(p.parse_args(argv))
    for name in ("lambda_x", "lambda_y"):
        args[name] = None if args[name] is None else tuple(args[name])
    return replace(defaults, **args)


# The failures bad input or an unlucky environment cause; anything else is a bug and keeps
# its traceback. OSError covers missing, unreadable and unwritable files and a full disk.
EXPECTED_FAILURES = (ValueError, OSError, TrainingDiverged)


def main(argv: list[str] | None = None) -> None:
    """The command line: bad options exit while parsing (argparse, status 2); an expected
    failure of the run prints one ``error:`` line and exits with status 2."""
    config = parse_args(argv)
    try:
        train(config)
    except EXPECTED_FAILURES as err:
        print("error: " + str(err).replace("\n", " "), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
