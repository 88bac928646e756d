"""How well each layer's local gradient points along the end-to-end backprop gradient.

    python -m analyses.gradalign --ckpt auglocal.pt dgl.pt [bp.pt] [--batches 8]
        [--batch-size 64] [--bp-aux dgl|auglocal] [--aux-seed 0] [--out gradalign-out]

Per layer: the cosine between the gradient of the layer's parameters (all of them, as one
vector) under its local loss, i.e. what the checkpoint's method's training step leaves in them
(:func:`training.aux_nets.gradient_alignment`), and under the end-to-end loss (the output's
cross-entropy backpropagated through the whole primary network, no detach), on each of
``--batches`` fixed training batches (a seeded class-balanced sample of the train split,
unaugmented, in a seeded order), with BatchNorm in eval mode. Reported: the mean over batches
with its Student-t interval over batches at ``--level`` (the spread of the cosine over batch
draws, for this fixed network). The layers of a method's last module are trained by the
output loss itself, so their cosine is 1. A backprop checkpoint has no local loss: it gets
freshly initialised aux nets of ``--bp-aux`` (seeded by ``--aux-seed``, one module per layer)
and is labelled so. Writes ``gradalign.csv`` (per model and layer: mean, low, high),
``gradalign_batches.csv`` (every batch's cosine), ``gradalign.png`` (one curve per checkpoint
against relative depth, with bands) and ``args.json``, and prints the table.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from analyses.activations import InputSelection, check_distinct_names, select_inputs
from analyses.aux import Curve, depth_figure
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.paths import run_folder
from repsim import plot
from repsim.stats.intervals import check_level, t_interval
from training import data as datasets
from training.aux_nets import (
    FRESH_KINDS,
    aux_layers,
    fresh_local_step,
    gradient_alignment,
    input_size,
    load_local,
)
from training.checks import Range

COLUMNS = ("model", "method", "local_loss", "layer", "depth", "rel_depth", "mean", "low",
           "high", "batches", "batch_size", "level", "interval")
INTERVAL = "Student-t over batches"


@dataclass(frozen=True, kw_only=True)
class Settings:
    ckpt: tuple[str, ...]            # checkpoints
    out: str = "gradalign-out"       # output folder
    batches: int = 8                 # training batches the cosine is averaged over (>= 2)
    batch_size: int = 64             # inputs per batch
    seed: int = 0                    # which training inputs, and their order
    bp_aux: str = "dgl"              # fresh aux nets of a BP checkpoint: dgl | auglocal
    aux_seed: int = 0                # their initialisation
    level: float = 0.95              # of the intervals over batches
    data_root: str | None = None     # dataset folder
    device: str = "cpu"              # torch device
    threads: int | None = None       # torch CPU threads (None: torch's choice)
    overwrite: bool = False          # replace an earlier run's --out

    def __post_init__(self):
        if isinstance(self.ckpt, str) or not self.ckpt:
            raise ValueError(f"--ckpt needs at least one checkpoint, got {self.ckpt!r}")
        if not isinstance(self.batches, int) or self.batches < 2:
            raise ValueError(f"--batches must be at least 2 for an interval over batches, "
                             f"got {self.batches!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"--batch-size must be a whole number >= 1, got "
                             f"{self.batch_size!r}")
        if self.bp_aux not in FRESH_KINDS:
            raise ValueError(f"--bp-aux must be one of {', '.join(FRESH_KINDS)}, got "
                             f"{self.bp_aux!r}")
        check_level(self.level)


@dataclass(frozen=True)
class Alignment:
    """One network's cosines: ``cosines`` (batches, layers), their ``mean``/``low``/``high``
    (layers,) at ``level``; ``local_loss`` says what the local loss was."""

    model: str
    method: str
    local_loss: str
    layers: tuple[str, ...]
    cosines: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float

    @property
    def rel_depth(self) -> list[float]:
        return [i / max(len(self.layers) - 1, 1) for i in range(len(self.layers))]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.gradalign", __doc__, Settings)
    p.add("ckpt", nargs="+", metavar="FILE",
          help="checkpoints; a BP one gets fresh aux nets of --bp-aux as its local loss")
    p.add("out", help="output folder (%(default)s)")
    p.add("batches", type=Range(int, 2).parse,
          help="training batches the cosine is averaged over (%(default)s)")
    p.add("batch_size", type=Range(int, 1).parse, help="inputs per batch (%(default)s)")
    p.add("seed", type=int, help="which training inputs, and their order (%(default)s)")
    p.add("bp_aux", choices=list(FRESH_KINDS),
          help="fresh aux nets giving a BP checkpoint its local loss (%(default)s)")
    p.add("aux_seed", type=int, help="initialisation of those aux nets (%(default)s)")
    p.shared("level", "data_root", "device", "threads", "overwrite",
             level={"help": "level of the Student-t intervals over batches (%(default)s)"})
    return p


def training_batches(dataset: dict, settings: Settings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` × ``batch_size`` training inputs: a seeded class-balanced sample, in a
    seeded order, normalised and unaugmented, on the device."""
    n = settings.batches * settings.batch_size
    inputs = select_inputs(dataset, InputSelection("train", n, settings.seed, settings.data_root))
    if len(inputs) < n:
        raise ValueError(f"--batches {settings.batches} × --batch-size {settings.batch_size} "
                         f"asks for {n} training inputs but the split has {len(inputs)}; "
                         "ask for fewer")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    x = datasets.normalise(inputs.images[order], inputs.info).to(settings.device)
    y = inputs.labels[order].to(settings.device)
    return list(zip(x.split(settings.batch_size), y.split(settings.batch_size)))


def align_checkpoint(ckpt: str, settings: Settings) -> Alignment:
    """The cosines of one checkpoint's layers, with the intervals over batches."""
    network = load_local(ckpt, device=settings.device)
    label = f"{network.method} ({Path(ckpt).name})"
    if network.aux is None:
        step = fresh_local_step(network.model, settings.bp_aux, seed=settings.aux_seed,
                                num_classes=network.meta["arch"]["num_classes"],
                                input_size=input_size(network.meta))
        local = f"fresh {settings.bp_aux} aux nets (seed {settings.aux_seed})"
        label += f" + {local}"
    else:
        step, local = network.step, f"its own {network.method} aux nets"
    last = max(aux_layers(step.aux), default=-1)
    local += f"; layers after {last}: output loss" if last >= 0 else ""
    cosines = gradient_alignment(step, network.model,
                                 training_batches(network.meta["dataset"], settings))
    mean, low, high = t_interval(cosines, settings.level, (-1.0, 1.0))
    return Alignment(label, network.method, local, tuple(network.meta["layers"]), cosines,
                     mean, low, high, settings.level)


def write_outputs(results: Sequence[Alignment], settings: Settings, out: Path) -> None:
    with (out / "gradalign.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in results:
            writer.writerows([r.model, r.method, r.local_loss, layer, i, f"{d:.10g}",
                              f"{m:.10g}", f"{lo:.10g}", f"{hi:.10g}", len(r.cosines),
                              settings.batch_size, r.level, INTERVAL]
                             for i, (layer, d, m, lo, hi) in enumerate(
                                 zip(r.layers, r.rel_depth, r.mean, r.low, r.high)))
    with (out / "gradalign_batches.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "batch", "layer", "cosine"])
        for r in results:
            writer.writerows([r.model, b, layer, f"{c:.10g}"]
                             for b, row in enumerate(r.cosines)
                             for layer, c in zip(r.layers, row))
    plot.save_figure(alignment_figure(results), out / "gradalign.png")
    write_settings(settings, out)


def alignment_figure(results: Sequence[Alignment]) -> Figure:
    """Mean cosine against relative depth, one curve per checkpoint, with its band."""
    first = results[0]
    return depth_figure(
        [Curve(r.model, r.rel_depth, r.mean, (r.low, r.high)) for r in results],
        ylabel="cos(local gradient, backprop gradient)", ylim=(-1.02, 1.02),
        title=f"gradient alignment over {len(first.cosines)} training batches; bands: "
              f"{first.level:.0%} {INTERVAL}")


def print_table(results: Sequence[Alignment]) -> None:
    for r in results:
        print(f"\n{r.model}: local loss = {r.local_loss}; mean cosine over "
              f"{len(r.cosines)} batches [{r.level:.0%} {INTERVAL}]")
        for name, m, lo, hi in zip(plot.short_labels(r.layers), r.mean, r.low, r.high):
            print(f"{name:>16} {m:>8.4f} [{lo:.3f}, {hi:.3f}]")


def run(settings: Settings, *, into: Path | None = None) -> list[Alignment]:
    """The gradient alignment of every layer of each checkpoint into ``settings.out``;
    ``into``: the folder to write in instead (the report stages the run)."""
    files = list(dict.fromkeys(settings.ckpt))
    check_distinct_names(files)
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--ckpt": files}, data_root=settings.data_root,
                    cache=None) as out:
        results = [align_checkpoint(f, settings) for f in files]
        write_outputs(results, settings, out)
    print_table(results)
    print(f"\nwrote {Path(settings.out)}/")
    return results


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
