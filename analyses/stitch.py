"""Model stitching: can network B run on network A's layer, through a trained 1×1 conv?

    python -m analyses.stitch --a bp.pt --b auglocal.pt [--steps 30] [--batch-size 64]
        [--lr 1e-3] [--init lstsq|identity|random] [--grid] [--layers NAME ...]
        [--device cuda] [--out stitch-out]

For layer-matched pairs (A's layer l into B after its layer l; ``--layers`` picks names both
have; ``--grid``: every pair (l, m) whose outputs share height and width), a stitch (1×1
conv → BatchNorm, :mod:`repsim.stitch`) is initialised by ``--init`` and trained for
``--steps`` Adam steps of ``--batch-size`` at ``--lr`` on the cross-entropy of B's output,
both networks frozen in eval mode, on a seeded class-balanced sample of ``--n-train`` training
inputs (unaugmented; batches in a seeded order). Reported on ``--n-test`` test inputs: the
stitched accuracy and B's own (each with its Wilson interval at ``--level``), and the
penalty, B's accuracy minus the stitched one (Bansal et al. 2021: a small penalty means A's
layer serves B's later layers as well as B's own). Writes ``stitch.csv`` (one row per pair),
``stitch.png`` (stitched accuracy against depth with B's and A's accuracy as lines; with
``--grid`` the heatmap of stitched accuracy, grey where shapes do not allow a stitch) and
``args.json``, and prints the table. ``--out`` holds one run's files (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from analyses.activations import InputSelection, select_inputs
from analyses.aux import Curve, depth_figure
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.paths import run_folder
from repsim import plot
from repsim import stitch as stitching
from repsim.stats.intervals import check_level, wilson_interval
from training import data as datasets
from training.checkpoint import load_checkpoint
from training.checks import Range

CALIBRATION = 512  # training inputs that initialise a stitch (lstsq fit, BN statistics)


@dataclass(frozen=True, kw_only=True)
class Settings:
    a: str                                 # network A: its layer feeds the stitch
    b: str                                 # network B: runs on from the stitch
    out: str = "stitch-out"                # output folder
    layers: tuple[str, ...] | None = None  # module names both have (None: each one's layers)
    grid: bool = False                     # every stitchable (l, m) pair, not only l = m
    steps: int = 30                        # Adam steps per stitch
    batch_size: int = 64                   # inputs per step
    lr: float = 1e-3                       # Adam learning rate
    init: str = "lstsq"                    # random | identity | lstsq
    n_train: int = 2000                    # training inputs the batches come from (0: all)
    n_test: int = 1000                     # test inputs (0: the whole split)
    seed: int = 0                          # inputs, batch order, random initialisation
    level: float = 0.95                    # of the Wilson intervals
    data_root: str | None = None           # dataset folder
    device: str = "cpu"                    # torch device
    threads: int | None = None             # torch CPU threads (None: torch's choice)
    overwrite: bool = False                # replace an earlier run's --out

    def __post_init__(self):
        if self.init not in stitching.INITS:
            raise ValueError(f"--init must be one of {', '.join(stitching.INITS)}, got "
                             f"{self.init!r}")
        for name, low in (("steps", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= {low}, "
                                 f"got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, e.g. 1e-3, got {self.lr!r}")
        check_level(self.level)


@dataclass(frozen=True)
class StitchRow:
    """One stitch: A's ``layer_a`` (index ``i``) into B after ``layer_b`` (index ``j``);
    accuracies with Wilson bounds; NaN where the shapes allow no stitch (``--grid``)."""

    layer_a: str
    layer_b: str
    i: int
    j: int
    shape_a: str
    shape_b: str
    stitched_acc: float
    stitched_low: float
    stitched_high: float
    b_acc: float
    b_low: float
    b_high: float
    a_acc: float
    penalty: float          # b_acc − stitched_acc
    final_loss: float       # training loss of the last step
    init: str
    steps: int
    n_test: int


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.stitch", __doc__, Settings)
    p.add("a", metavar="FILE", help="network A, whose layer feeds the stitch")
    p.add("b", metavar="FILE", help="network B, which runs on from the stitch")
    p.add("out", help="output folder (%(default)s)")
    p.shared("layers", layers={"nargs": "+", "help": "module names both networks have "
                               "(default: each checkpoint's layers)"})
    p.add("grid", action="store_true",
          help="every pair (A's layer l, B's layer m) of equal height and width")
    p.add("steps", type=Range(int, 0).parse, help="Adam steps per stitch (%(default)s)")
    p.add("batch_size", type=Range(int, 1).parse, help="inputs per step (%(default)s)")
    p.add("lr", type=Range(float, 0, low_open=True).parse,
          help="Adam learning rate (%(default)s)")
    p.add("init", choices=list(stitching.INITS),
          help="stitch initialisation: least-squares match of B's layer, identity, or "
               "PyTorch's default (%(default)s)")
    p.shared("n_train", "n_test",
             n_train={"help": "training inputs the stitch's batches come from (%(default)s; "
                              "0: the whole split)"})
    p.add("seed", type=int, help="inputs, batch order and random initialisation "
                                 "(%(default)s)")
    p.shared("level", "data_root", "device", "threads", "overwrite",
             level={"help": "level of the Wilson intervals (%(default)s)"})
    return p


def load_pair(settings: Settings) -> tuple[torch.nn.Module, torch.nn.Module, dict, dict]:
    """(model A, model B, meta A, meta B) on the device; refuses two datasets."""
    model_a, meta_a = load_checkpoint(settings.a)
    model_b, meta_b = load_checkpoint(settings.b)
    if meta_a["dataset"]["name"] != meta_b["dataset"]["name"]:
        raise ValueError(f"--a {settings.a} was trained on {meta_a['dataset']['name']} and --b "
                         f"{settings.b} on {meta_b['dataset']['name']}: stitch networks of one "
                         "dataset")
    return model_a.to(settings.device), model_b.to(settings.device), meta_a, meta_b


def layer_pairs(layers_a: Sequence[str], layers_b: Sequence[str],
                grid: bool) -> list[tuple[int, int]]:
    """Index pairs (l into A's layers, m into B's): l = m, or every (l, m) with ``grid``."""
    if grid:
        return [(i, j) for i in range(len(layers_a)) for j in range(len(layers_b))]
    if len(layers_a) != len(layers_b):
        raise ValueError(f"A has {len(layers_a)} layers and B {len(layers_b)}, so they do not "
                         "pair up layer by layer; pass --grid for every pair, or --layers with "
                         "module names both have")
    return [(i, i) for i in range(len(layers_a))]


def batches_of(inputs: datasets.ImageSet, batch_size: int, seed: int, device: str
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised, unaugmented batches of ``inputs`` in a seeded order, on ``device``."""
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    x = datasets.normalise(inputs.images[order], inputs.info).to(device)
    y = inputs.labels[order].to(device)
    return list(zip(x.split(batch_size), y.split(batch_size)))


def stitch_pair(model_a, layer_a: str, model_b, layer_b: str, train, test, settings: Settings
                ) -> tuple[int, float]:
    """Fit one stitch; (correct test predictions of the stitched network, last step's loss)."""
    calibration = torch.cat([x for x, _ in train[:math.ceil(CALIBRATION / len(train[0][0]))]]
                            )[:CALIBRATION]
    with torch.no_grad():
        h_a = stitching.layer_output(model_a, layer_a, calibration)
        h_b = stitching.layer_output(model_b, layer_b, calibration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        stitch = stitching.Stitch(h_a.shape[1], h_b.shape[1]).to(settings.device)
    stitching.init_stitch(stitch, settings.init, h_a, h_b)
    stitched = stitching.StitchedModel(model_a, layer_a, model_b, layer_b, stitch)
    losses = stitching.fit_stitch(stitched, train, steps=settings.steps, lr=settings.lr)
    correct, _ = stitching.correct_count(stitched, test)
    return correct, losses[-1] if losses else math.nan


def stitch_rows(settings: Settings) -> list[StitchRow]:
    model_a, model_b, meta_a, meta_b = load_pair(settings)
    layers_a = list(settings.layers or meta_a["layers"])
    layers_b = list(settings.layers or meta_b["layers"])
    dataset = meta_a["dataset"]
    train = batches_of(select_inputs(dataset, InputSelection(
        "train", settings.n_train or None, settings.seed, settings.data_root)),
        settings.batch_size, settings.seed, settings.device)
    test = batches_of(select_inputs(dataset, InputSelection(
        "test", settings.n_test or None, settings.seed, settings.data_root)), 250, 0,
        settings.device)
    n_test = sum(len(y) for _, y in test)
    probe = test[0][0][:2]
    shapes_a = [stitching.output_shape(model_a, name, probe) for name in layers_a]
    shapes_b = [stitching.output_shape(model_b, name, probe) for name in layers_b]
    (a_correct, _), (b_correct, _) = (stitching.correct_count(m, test)
                                      for m in (model_a, model_b))
    b_low, b_high = wilson_interval(b_correct, n_test, settings.level)
    rows = []
    for i, j in layer_pairs(layers_a, layers_b, settings.grid):
        if not settings.grid:
            stitching.check_stitchable(layers_a[i], shapes_a[i], layers_b[j], shapes_b[j])
        if stitching.stitchable(shapes_a[i], shapes_b[j]):
            correct, loss = stitch_pair(model_a, layers_a[i], model_b, layers_b[j], train, test,
                                        settings)
            low, high = wilson_interval(correct, n_test, settings.level)
            accuracy = correct / n_test
        else:
            accuracy = low = high = loss = math.nan
        rows.append(StitchRow(
            layers_a[i], layers_b[j], i, j, "x".join(map(str, shapes_a[i])),
            "x".join(map(str, shapes_b[j])), accuracy, float(low), float(high),
            b_correct / n_test, float(b_low), float(b_high), a_correct / n_test,
            b_correct / n_test - accuracy, loss, settings.init, settings.steps, n_test))
    return rows


def stitch_figure(rows: Sequence[StitchRow], settings: Settings) -> Figure:
    name_a, name_b = Path(settings.a).stem, Path(settings.b).stem
    title = (f"{name_a} → {name_b}: {rows[0].init} stitch, {settings.steps} steps, "
             f"n_test={rows[0].n_test}")
    if settings.grid:
        layers_a = list(dict.fromkeys(r.layer_a for r in rows))
        layers_b = list(dict.fromkeys(r.layer_b for r in rows))
        matrix = np.array([r.stitched_acc for r in rows]).reshape(len(layers_a), len(layers_b))
        return plot.cka_heatmap(matrix, layers_a, layers_b, name_a=f"{name_a} (A)",
                                name_b=f"{name_b} (B)", title=title,
                                label="stitched test accuracy")
    depth = [r.i / max(len(rows) - 1, 1) for r in rows]
    return depth_figure(
        [Curve(f"A's layer into {name_b}", depth, [r.stitched_acc for r in rows],
               ([r.stitched_low for r in rows], [r.stitched_high for r in rows])),
         Curve(f"{name_b} (B) itself", [0, 1], [rows[0].b_acc] * 2, linestyle=":"),
         Curve(f"{name_a} (A) itself", [0, 1], [rows[0].a_acc] * 2, linestyle=":")],
        ylabel="test accuracy", title=f"{title}; band: {settings.level:.0%} Wilson")


def write_outputs(rows: Sequence[StitchRow], settings: Settings, out: Path) -> None:
    with (out / "stitch.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    plot.save_figure(stitch_figure(rows, settings), out / "stitch.png")
    write_settings(settings, out)


def print_table(rows: Sequence[StitchRow], settings: Settings) -> None:
    print(f"\n{Path(settings.a).name} (A) into {Path(settings.b).name} (B): B's own accuracy "
          f"{rows[0].b_acc:.4f} [{rows[0].b_low:.3f}, {rows[0].b_high:.3f}], A's "
          f"{rows[0].a_acc:.4f}; {rows[0].init} stitch, {settings.steps} steps, "
          f"{rows[0].n_test} test inputs")
    print(f"{'A layer':>16} {'B layer':>16} {'stitched':>24} {'penalty':>8}")
    names_a = dict(zip([r.layer_a for r in rows], plot.short_labels([r.layer_a for r in rows])))
    names_b = dict(zip([r.layer_b for r in rows], plot.short_labels([r.layer_b for r in rows])))
    for r in rows:
        cell = ("no stitch (shapes)" if math.isnan(r.stitched_acc) else
                f"{r.stitched_acc:.4f} [{r.stitched_low:.3f}, {r.stitched_high:.3f}]")
        print(f"{names_a[r.layer_a]:>16} {names_b[r.layer_b]:>16} {cell:>24} "
              f"{r.penalty:>8.4f}")


def run(settings: Settings, *, into: Path | None = None) -> list[StitchRow]:
    """Stitch A's layers into B into ``settings.out``; ``into``: the folder to write in
    instead (the report stages the run)."""
    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--a": [settings.a], "--b": [settings.b]},
                    data_root=settings.data_root, cache=None) as out:
        rows = stitch_rows(settings)
        write_outputs(rows, settings, out)
    print_table(rows, settings)
    print(f"\nwrote {Path(settings.out)}/")
    return rows


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
