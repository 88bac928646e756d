"""Each local module's own aux net beside a linear probe of the same layer.

    python -m analyses.aux --ckpt auglocal.pt dgl.pt [bp.pt] [--n-train 2000] [--n-test 1000]
        [--out aux-out]

Per layer of each checkpoint: the test accuracy of the layer's aux net (rebuilt from the
checkpoint's ``method`` and aux weights, eval mode; :mod:`training.aux_nets`), the test
accuracy of a linear probe of the layer (the protocol and cache of ``analyses.probe``:
``--reduction``, train on ``--n-train`` inputs, standardised, C by cross-validation) and the
network's final accuracy, all on the same ``--n-test`` test inputs, each with its Wilson
interval over those inputs at ``--level``. The gap between aux net and probe is what the aux
net reads beyond a linear readout; the gap between aux net and final accuracy is how far the
layer's local objective is from the global one. Where an aux net is more than a classifier
(InfoPro, PredSim), its ``classifier`` part is scored. Layers of the last module (trained by
the output loss) have no aux net; a backprop checkpoint has none at all, and shows the probe only.
Writes ``aux.csv`` and ``aux.json`` (one row per model and layer), ``aux.png`` (accuracy
against relative depth: aux nets solid, probes dashed, final accuracy dotted, one colour per
model) and ``args.json``, and prints the table. ``--out`` holds one run's files (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from analyses import probe
from analyses.activations import DEFAULT_CACHE, InputSelection, check_distinct_names, select_inputs
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.paths import run_folder
from repsim import plot
from repsim.stats.intervals import check_level, wilson_interval
from training import data as datasets
from training.aux_nets import LocalNetwork, aux_layers, aux_predictions, load_local
from training.checks import Range

COLUMNS = ("model", "method", "layer", "depth", "rel_depth", "local_loss", "aux_acc", "aux_low",
           "aux_high", "aux_params", "probe_acc", "probe_low", "probe_high", "final_acc",
           "final_low", "final_high", "n_test", "level")
AUX, LAST, BACKPROP = "aux net", "output loss (last module)", "none (backprop)"


@dataclass(frozen=True, kw_only=True)
class Settings:
    ckpt: tuple[str, ...]            # checkpoints (local methods; BP shows the probe only)
    out: str = "aux-out"             # output folder
    n_train: int = 2000              # probe train inputs (0: the whole split)
    n_test: int = 1000               # test inputs of aux nets, probes and the network
    seed: int = 0                    # which inputs are sampled
    reduction: str = "gap"           # of the probed features
    folds: int = 3                   # probe cross-validation folds
    batch_size: int = 250            # inputs per forward pass (does not change the values)
    cache: str = str(DEFAULT_CACHE)  # activation cache folder
    data_root: str | None = None     # dataset folder
    level: float = 0.95              # of the Wilson intervals
    device: str = "cpu"              # torch device
    threads: int | None = None       # torch CPU threads (None: torch's choice)
    overwrite: bool = False          # replace an earlier run's --out

    def __post_init__(self):
        if isinstance(self.ckpt, str) or not self.ckpt:
            raise ValueError(f"--ckpt needs at least one checkpoint, got {self.ckpt!r}")
        check_level(self.level)


@dataclass(frozen=True)
class AuxRow:
    """One layer of one network: its aux net, its probe and the network, on the same inputs
    (accuracies with Wilson bounds; aux fields NaN where the layer has no aux net)."""

    model: str
    method: str
    layer: str
    depth: int
    rel_depth: float
    local_loss: str       # AUX, LAST or BACKPROP
    aux_acc: float
    aux_low: float
    aux_high: float
    aux_params: int       # parameters of the layer's aux net (0: none)
    probe_acc: float
    probe_low: float
    probe_high: float
    final_acc: float
    final_low: float
    final_high: float
    n_test: int
    level: float


@dataclass(frozen=True)
class Curve:
    """One line of a :func:`depth_figure`: values ``y`` at ``x`` with an optional (low, high)
    band; curves of one ``group`` share a colour."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    band: tuple[Sequence[float], Sequence[float]] | None = None
    linestyle: str = "-"
    group: str | None = None


def depth_figure(curves: Sequence[Curve], *, ylabel: str, title: str,
                 xlabel: str = "relative depth", ylim: tuple[float, float] | None = (0, 1.02)
                 ) -> plt.Figure:
    """Values against depth, one line (and band) per curve, a colour per group (its method's,
    :func:`repsim.plot.colour_of`)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    for curve in curves:
        colour = plot.colour_of(curve.group or curve.label)
        ax.plot(curve.x, curve.y, color=colour, linestyle=curve.linestyle, marker="o"
                if curve.linestyle != ":" else None, markersize=3, label=curve.label)
        if curve.band is not None:
            ax.fill_between(curve.x, *curve.band, color=colour, alpha=plot.BAND_ALPHA,
                            linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    return fig


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.aux", __doc__, Settings)
    p.add("ckpt", nargs="+", metavar="FILE",
          help="checkpoints: local-learning ones show their aux nets, BP ones the probe only")
    p.add("out", help="output folder (%(default)s)")
    p.shared("n_train", "n_test", "seed", "reduction",
             n_test={"help": "test inputs of aux nets, probes and the network (%(default)s; "
                             "0: the whole split)"})
    p.add("folds", type=int, help="probe cross-validation folds (%(default)s)")
    p.add("batch_size", type=Range(int, 1).parse, help="inputs per forward pass (%(default)s)")
    p.shared("cache", "data_root", "level", "device", "threads", "overwrite",
             level={"help": "level of the Wilson intervals (%(default)s)"})
    return p


def accuracies(network: LocalNetwork, inputs: datasets.ImageSet, batch_size: int,
               device: str) -> tuple[np.ndarray, int]:
    """Correct counts on ``inputs``: one per aux net (in :func:`aux_layers` order), then the
    network's own as the last entry; and the number of inputs."""
    n_aux = 0 if network.aux is None else len(network.aux)
    correct = np.zeros(n_aux + 1, dtype=np.int64)
    with torch.no_grad():
        for x, y, _ in datasets.eval_batches(inputs, batch_size):
            x, y = x.to(device), y.to(device)
            if n_aux:
                predicted = aux_predictions(network.model, network.aux, x,
                                            network.meta["arch"]["num_classes"])
                correct[:-1] += (predicted == y[:, None]).sum(0).cpu().numpy()
            correct[-1] += int((network.model(x).argmax(1) == y).sum())
    return correct, len(inputs)


def local_loss(layer: int, has_aux: Sequence[int], backprop: bool) -> str:
    """What trains ``layer``: its aux net, a later layer's (when a module holds several
    layers), the output loss (the last module) or, in a backprop network, none of its own."""
    if backprop:
        return BACKPROP
    later = [j for j in has_aux if j >= layer]
    return LAST if not later else AUX if later[0] == layer else f"aux net of layer {later[0]}"


def aux_rows(ckpt: str, settings: Settings) -> list[AuxRow]:
    """The rows of one checkpoint: its aux nets, probes and final accuracy per layer."""
    network = load_local(ckpt, device=settings.device)
    selection = InputSelection("test", settings.n_test or None, settings.seed,
                               settings.data_root)
    inputs = select_inputs(network.meta["dataset"], selection)
    correct, n = accuracies(network, inputs, settings.batch_size, settings.device)
    low, high = wilson_interval(correct, n, settings.level)
    label, table = probe.probe_checkpoint(ckpt, probe.Settings(
        ckpt=(ckpt,), n_train=settings.n_train, n_test=settings.n_test, seed=settings.seed,
        reduction=settings.reduction, folds=settings.folds, cache=settings.cache,
        data_root=settings.data_root, level=settings.level, device=settings.device))
    has_aux = [] if network.aux is None else aux_layers(network.aux)
    rows = []
    for probed in table:
        i = probed.depth
        k = has_aux.index(i) if i in has_aux else None
        aux = (correct[k] / n, low[k], high[k]) if k is not None else (math.nan,) * 3
        params = 0 if k is None else sum(p.numel() for p in network.aux[str(i)].parameters())
        rows.append(AuxRow(
            model=label, method=network.method, layer=probed.layer, depth=i,
            rel_depth=probed.rel_depth, local_loss=local_loss(i, has_aux, network.aux is None),
            aux_acc=float(aux[0]), aux_low=float(aux[1]), aux_high=float(aux[2]),
            aux_params=params, probe_acc=probed.test_acc, probe_low=probed.test_low,
            probe_high=probed.test_high, final_acc=float(correct[-1] / n),
            final_low=float(low[-1]), final_high=float(high[-1]), n_test=n,
            level=settings.level))
    return rows


def by_model(rows: Sequence[AuxRow]) -> dict[str, list[AuxRow]]:
    models: dict[str, list[AuxRow]] = {}
    for row in rows:
        models.setdefault(row.model, []).append(row)
    return models


def aux_figure(rows: Sequence[AuxRow]) -> plt.Figure:
    """Accuracy against relative depth: aux nets solid, probes dashed, final accuracy dotted."""
    curves = []
    for model, layers in by_model(rows).items():
        depth = [r.rel_depth for r in layers]
        with_aux = [r for r in layers if r.local_loss == AUX]
        if with_aux:
            curves.append(Curve(f"{model}: aux net", [r.rel_depth for r in with_aux],
                                [r.aux_acc for r in with_aux],
                                ([r.aux_low for r in with_aux], [r.aux_high for r in with_aux]),
                                group=model))
        curves.append(Curve(f"{model}: linear probe", depth, [r.probe_acc for r in layers],
                            ([r.probe_low for r in layers], [r.probe_high for r in layers]),
                            linestyle="--", group=model))
        curves.append(Curve(f"{model}: final", [0, 1], [layers[0].final_acc] * 2,
                            linestyle=":", group=model))
    first = rows[0]
    return depth_figure(curves, ylabel="test accuracy",
                        title=f"aux nets vs linear probes, n_test={first.n_test}; bands: "
                              f"{first.level:.0%} Wilson intervals")


def write_outputs(rows: Sequence[AuxRow], settings: Settings, out: Path) -> None:
    records = [asdict(r) for r in rows]
    with (out / "aux.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    (out / "aux.json").write_text(json.dumps({"rows": records}, indent=1))
    plot.save_figure(aux_figure(rows), out / "aux.png")
    write_settings(settings, out)


def print_table(rows: Sequence[AuxRow]) -> None:
    for model, layers in by_model(rows).items():
        final = layers[0]
        print(f"\n{model}: final accuracy {final.final_acc:.4f} "
              f"[{final.final_low:.3f}, {final.final_high:.3f}] on {final.n_test} test inputs")
        if final.local_loss == BACKPROP:
            print("  a backprop network has no aux nets: linear probes only")
        print(f"{'layer':>16} {'aux net':>24} {'linear probe':>24}  local loss")
        for row, name in zip(layers, plot.short_labels([r.layer for r in layers])):
            aux = (f"{row.aux_acc:.4f} [{row.aux_low:.3f}, {row.aux_high:.3f}]"
                   if row.local_loss == AUX else "–")
            print(f"{name:>16} {aux:>24} "
                  f"{f'{row.probe_acc:.4f} [{row.probe_low:.3f}, {row.probe_high:.3f}]':>24}"
                  f"  {row.local_loss}")


def run(settings: Settings, *, into: Path | None = None) -> list[AuxRow]:
    """Aux nets, probes and final accuracy of every layer of each checkpoint into
    ``settings.out``; ``into``: the folder to write in instead (the report stages the run)."""
    files = list(dict.fromkeys(settings.ckpt))
    check_distinct_names(files)
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--ckpt": files}, data_root=settings.data_root,
                    cache=settings.cache) as out:
        rows = [row for f in files for row in aux_rows(f, settings)]
        write_outputs(rows, settings, out)
    print_table(rows)
    print(f"\nwrote {Path(settings.out)}/")
    return rows


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
