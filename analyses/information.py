"""Information along depth: how much of the input and of the label each layer keeps.

    python -m analyses.information --ckpt bp.pt auglocal.pt dgl.pt [--n-train 1000]
        [--n-test 500] [--steps 100] [--out information-out] [--device cuda]
    python -m analyses.information --ckpt bp=bp_s0.pt,bp_s1.pt auglocal=al_s0.pt,al_s1.pt

InfoPro's argument (Wang et al. 2021): a greedy local loss makes early layers drop information
about the input that later layers would have needed. Per layer of each network:

* information about the **input**: a small decoder of fixed architecture and budget
  (:mod:`repsim.decoder`: 1×1 conv, bilinear upsampling, two 3×3 convs, ``--hidden``
  channels; ``--steps`` Adam steps of ``--batch-size`` images at ``--lr``, seeded by
  ``--seed``) is trained on ``--n-train`` train images with the network frozen, and scored on
  ``--n-test`` test images: mean squared error per pixel on the [0, 1] pixel scale, with a
  Student-t interval over the test images, and PSNR in dB. The baseline is the mean train
  image as every reconstruction: a layer that kept nothing scores about that.
* information about the **label**: the linear probe of :mod:`repsim.probe` (standardise on
  train, L2 strength by cross-validation on train) on the same inputs' ``gap`` features: test
  accuracy with its Wilson interval and test cross-entropy in nats, beside the cross-entropy
  of the train class frequencies (``prior_ce``); ``label_bits`` = (prior_ce − ce) / ln 2 is
  the variational lower bound on the information the layer carries about the label, in bits.

Writes ``information.csv`` (one row per model and layer), ``information_groups.csv`` (per
group, metric and layer: mean, low, high; Student-t over seeds, or one network's own
interval), ``information.json``, ``information.png`` (PSNR, probe accuracy and probe
cross-entropy against relative depth, one line per group), ``reconstructions/<model>.png``
(rows: the inputs, then each layer's reconstructions; columns: the first ``--n-show`` test
images) and ``args.json``, and prints the table. The defaults are sized for a CPU (about a
minute for four ResNet-20s on Fashion-MNIST on 2 cores); raise ``--n-train``, ``--steps`` and
``--n-test`` for the full budget, and use ``--device``. ``--out`` holds one run's files (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from analyses.activations import (
    DEFAULT_CACHE,
    InputSelection,
    activations_of,
    model_label,
    select_inputs,
)
from analyses.cli import SettingsParser, positive, run_cli, write_settings
from analyses.geometry import (
    DepthCurves,
    Metric,
    groups_of,
    measured_run,
    print_curves,
    write_curves,
    write_records,
)
from analyses.groups import GroupedSettings, group_option, seeded
from repsim import plot
from repsim.decoder import DecoderSettings, ReconstructionTable, reconstruct_layers
from repsim.probe import LinearProbe
from repsim.stats.intervals import wilson_interval
from training import data as datasets
from training.checkpoint import checkpoint_meta, load_checkpoint
from training.checks import Range

REDUCTION = "gap"  # of the probe's features
METRICS = (Metric("psnr", "reconstruction PSNR (dB)", "psnr_low", "psnr_high",
                  "Student-t over {n} test images"),
           Metric("probe_acc", "linear probe test accuracy", "probe_low", "probe_high",
                  "Wilson over {n} test inputs"),
           Metric("probe_ce", "linear probe test cross-entropy (nats)"))
COLUMNS = ("model", "group", "layer", "depth", "rel_depth", "shape", "mse", "mse_low",
           "mse_high", "psnr", "psnr_low", "psnr_high", "baseline_mse", "baseline_psnr",
           "probe_acc", "probe_low", "probe_high", "probe_ce", "prior_ce", "label_bits",
           "n_train", "n_test")


@dataclass(frozen=True, kw_only=True)
class Settings(GroupedSettings):
    ckpt: tuple[str, ...]                  # FILE or NAME=FILE,FILE,... (SeedGroup)
    out: str = "information-out"           # output folder
    n_train: int = 1000                    # train images for decoders and probes (0: all)
    n_test: int = 500                      # test images (0: the whole split)
    seed: int = 0                          # which inputs; decoder initialisation and batches
    layers: tuple[str, ...] | None = None  # module names (None: each checkpoint's)
    hidden: int = 16                       # decoder channels
    steps: int = 100                       # decoder Adam steps
    batch_size: int = 32                   # decoder images per step
    lr: float = 3e-3                       # decoder learning rate
    n_show: int = 8                        # test images in the reconstruction pictures
    folds: int = 3                         # probe cross-validation folds on train
    cache: str = str(DEFAULT_CACHE)        # activation cache folder
    data_root: str | None = None           # dataset folder
    level: float = 0.95                    # of the intervals
    device: str = "cpu"                    # torch device of the network, decoders, probes
    threads: int | None = None             # torch CPU threads outside the fits (None: torch's)
    overwrite: bool = False                # replace an earlier run's --out

    def __post_init__(self):
        super().__post_init__()
        self.decoder()

    def decoder(self) -> DecoderSettings:
        """The decoder's architecture and budget (checked on construction)."""
        return DecoderSettings(hidden=self.hidden, steps=self.steps, batch_size=self.batch_size,
                               lr=self.lr, seed=self.seed, n_show=self.n_show, level=self.level,
                               device=self.device)


@dataclass(frozen=True)
class InformationRun:
    """What :func:`run` computed: per model label its records (one dict per layer, the
    :data:`COLUMNS` but model and group) and reconstructions, and the curves per group."""

    records: dict[str, list[dict]]
    reconstructions: dict[str, ReconstructionTable]
    curves: dict[str, DepthCurves]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.information", __doc__, Settings)
    p.add("ckpt", nargs="+", type=group_option, metavar="FILE|NAME=FILE,FILE,...",
          help="checkpoints: a file, or the seeds of one method")
    p.add("out", help="output folder (%(default)s)")
    p.shared("n_train", "n_test", "seed", "layers",
             n_train={"help": "train images for the decoders and probes (%(default)s; 0: "
                              "all)"},
             n_test={"help": "test images (%(default)s; 0: all)"},
             seed={"help": "which inputs, and the decoders' initialisation and batches "
                           "(%(default)s)"})
    p.add("hidden", type=positive, help="decoder channels (%(default)s)")
    p.add("steps", type=positive, help="decoder Adam steps (%(default)s)")
    p.add("batch_size", type=positive, help="decoder images per step (%(default)s)")
    p.add("lr", type=Range(float, 0, low_open=True).parse,
          help="decoder learning rate (%(default)s)")
    p.add("n_show", type=Range(int, 0).parse,
          help="test images in each reconstruction picture (%(default)s)")
    p.add("folds", type=Range(int, 2).parse,
          help="probe cross-validation folds on train (%(default)s)")
    p.shared("cache", "data_root", "level", "device", "threads", "overwrite",
             device={"help": "network, decoders and probes (%(default)s)"})
    return p


def images(dataset: dict, split: str, n: int, settings: Settings) -> datasets.ImageSet:
    """The inputs of a split that the activation cache also uses for (n, seed)."""
    return select_inputs(dataset, InputSelection(split, n or None, settings.seed,
                                              settings.data_root))


def reconstruct(ckpt: str, layers: Sequence[str], settings: Settings) -> ReconstructionTable:
    """The decoders of every layer of one checkpoint, scored on the [0, 1] pixel scale."""
    model, meta = load_checkpoint(ckpt)
    train, test = (images(meta["dataset"], split, n, settings)
                   for split, n in (("train", settings.n_train), ("test", settings.n_test)))
    info = train.info
    mean = np.array(info.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(info.std, dtype=np.float32).reshape(1, -1, 1, 1)

    def unnormalise(x):
        return x * x.new_tensor(std) + x.new_tensor(mean)

    return reconstruct_layers(model, layers, datasets.normalise(train.images, info),
                              datasets.normalise(test.images, info),
                              settings=settings.decoder(), unnormalise=unnormalise,
                              progress=True)


def cross_entropy(probe: LinearProbe, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats) of a fitted probe on features x (n, D) with labels y (n,)."""
    scores = probe.decision_function(x)
    logits = np.stack([np.zeros_like(scores), scores], 1) if scores.ndim == 1 else scores
    codes = np.searchsorted(probe.classes_, y)
    return float(np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), codes]))


def prior_cross_entropy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Cross-entropy (nats) on y_test of the train class frequencies."""
    classes, counts = np.unique(y_train, return_counts=True)
    frequency = counts / counts.sum()
    return float(-np.mean(np.log(frequency[np.searchsorted(classes, y_test)])))


def label_information(ckpt: str, layers: Sequence[str], settings: Settings
                      ) -> tuple[list[dict], str]:
    """(one dict per layer, model label): probe test accuracy with its Wilson interval, test
    cross-entropy, the prior's cross-entropy and the bound in bits, on the cached ``gap``
    features."""
    common = {"seed": settings.seed, "reductions": (REDUCTION,), "layers": layers,
              "cache": settings.cache, "data_root": settings.data_root,
              "device": settings.device}
    rows = []
    with activations_of(ckpt, "train", n=settings.n_train, **common) as train, \
            activations_of(ckpt, "test", n=settings.n_test, **common) as test:
        y_train, y_test = train.labels, test.labels
        prior = prior_cross_entropy(y_train, y_test)
        for layer in layers:
            x_train, x_test = (s.read(layer, REDUCTION) for s in (train, test))
            probe = LinearProbe(cv=settings.folds, device=settings.device).fit(x_train, y_train)
            correct = int(np.sum(probe.predict(x_test) == y_test))
            low, high = wilson_interval(correct, len(y_test), settings.level)
            ce = cross_entropy(probe, x_test, y_test)
            rows.append({"probe_acc": correct / len(y_test), "probe_low": float(low),
                         "probe_high": float(high), "probe_ce": ce, "prior_ce": prior,
                         "label_bits": (prior - ce) / math.log(2)})
        return rows, model_label(test)


def measure_checkpoint(ckpt: str, settings: Settings
                       ) -> tuple[str, list[dict], ReconstructionTable]:
    """(model label, per-layer records, reconstructions) of one checkpoint."""
    layers = list(settings.layers or checkpoint_meta(ckpt)["layers"])
    table = reconstruct(ckpt, layers, settings)
    labels, label = label_information(ckpt, layers, settings)
    records = [{**row, "baseline_mse": table.baseline_mse, "baseline_psnr": table.baseline_psnr,
                **probe_row, "n_train": table.n_train, "n_test": table.n_test}
               for row, probe_row in zip(table.records(), labels)]
    return label, records, table


def write_pictures(label: str, table: ReconstructionTable, path: Path) -> None:
    """The inputs and every layer's reconstructions of them, one row each."""
    plot.save_figure(plot.reconstruction_grid(
        table.originals, dict(zip(plot.short_labels(list(table.pictures)),
                                  table.pictures.values())),
        title=f"{label}: reconstructions from each layer ({table.settings.steps} decoder "
              f"steps)"), path)


def print_records(records: dict[str, list[dict]]) -> None:
    for label, rows in records.items():
        first = rows[0]
        print(f"\n{label}: information along depth, n_train {first['n_train']}, n_test "
              f"{first['n_test']}; mean-image baseline PSNR {first['baseline_psnr']:.2f} dB, "
              f"prior cross-entropy {first['prior_ce']:.4f}")
        print(f"{'layer':>16} {'shape':>10} {'MSE':>8} {'PSNR':>7} {'probe':>7} "
              f"{'CE':>7} {'bits':>6}")
        for row, name in zip(rows, plot.short_labels([r["layer"] for r in rows])):
            print(f"{name:>16} {row['shape']:>10} {row['mse']:>8.5f} {row['psnr']:>7.2f} "
                  f"{row['probe_acc']:>7.4f} {row['probe_ce']:>7.4f} {row['label_bits']:>6.3f}")


def run(settings: Settings, *, into: Path | None = None) -> InformationRun:
    """Measure every layer of each network of ``settings.ckpt`` into ``settings.out``;
    ``into``: the folder to write in instead, when a caller (the report) stages the run."""
    groups = settings.groups()
    with measured_run(settings, measure_checkpoint, into) as (out, measured):
        records = {label: rows for label, rows, _ in measured.values()}
        members, curves = groups_of(groups, {f: (label, rows)
                                             for f, (label, rows, _) in measured.items()},
                                    METRICS, settings.level)
        write_records(out / "information.csv", COLUMNS, records, members)
        first = next(iter(records.values()))[0]
        write_curves(curves, METRICS, "information", out, level=settings.level,
                     title="information along depth",
                     record={"decoder": dataclasses.asdict(settings.decoder()), "probe_reduction":
                             REDUCTION, "baseline_psnr": first["baseline_psnr"]},
                     references={"psnr": (first["baseline_psnr"], "mean image"),
                                 "probe_ce": (first["prior_ce"], "class prior")})
        (out / "reconstructions").mkdir()
        for f, (label, _, table) in measured.items():
            write_pictures(label, table, out / "reconstructions" / f"{Path(f).stem}.png")
        write_settings(settings, out)
    print_records(records)
    if seeded(groups):
        print_curves(curves)
    print(f"\nwrote {Path(settings.out)}/")
    return InformationRun(records, {label: t for label, _, t in measured.values()}, curves)


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
