"""AugLocal ablations: a grid of aux-layer sampling rules and aux depths against one BP run.

    python -m analyses.sweep [--arch resnet20] [--width 8] [--dataset fashion-mnist]
        [--subset 2000] [--epochs 1] [--samplings uniform nearest random]
        [--depths 1 2 3] [--K K] [--n 500] [--out sweep-out]

Trains a BP network and, for every (sampling rule, aux depth d), an AugLocal network with the
same data, seed and schedule (``training.train``; τ = 0, so every aux net is d blocks deep and
the depth is the ablated variable; ``random`` draws with ``--seed``). Per run it reports the
test accuracy, the total memory of one training step and the forward MACs per image (both as
``training.train`` measures them, and as ratios to BP), and the layer-matched linear CKA to BP
on ``--n`` test inputs: the mean over layers of the diagonal of the CKA map (the layers of
both networks are the same). Writes ``sweep.csv`` (one row per run, BP first; the per-layer
CKA values in ``cka_layers``), ``sweep.png`` (the four quantities against d, one line per
rule, BP dashed), the checkpoints under ``runs/`` and ``args.json``. Checkpoints already in
``--out`` are reused when their settings match (``training.train --resume``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.activations import DEFAULT_CACHE, activations_of
from analyses.cli import SettingsParser, run_cli, write_settings
from repsim.cka import cka_matrix
from training.auglocal import SAMPLINGS
from training.checkpoint import checkpoint_meta
from training.train import TrainConfig, train

QUANTITIES = (("test_acc", "test accuracy"), ("memory_ratio", "step memory / BP"),
              ("macs_ratio", "forward MACs / BP"), ("cka_to_bp", "layer-matched CKA to BP"))


@dataclass(frozen=True, kw_only=True)
class Settings:
    out: str = "sweep-out"                     # output folder (checkpoints under runs/)
    arch: str = "resnet20"
    width: int = 8                             # base channels
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int | None = 2000                  # class-balanced training images (None: all)
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05                           # peak learning rate
    samplings: tuple[str, ...] = SAMPLINGS     # aux-layer sampling rules
    depths: tuple[int, ...] = (1, 2, 3)        # aux depths d
    K: int | None = None                       # local modules (None: one per layer)
    seed: int = 0                              # training seed; random sampling's seed
    n: int = 500                               # test inputs of the CKA
    cache: str = str(DEFAULT_CACHE)            # activation cache folder
    device: str = "cpu"
    threads: int | None = None                 # torch CPU threads (None: torch's choice)
    progress: bool = True

    def __post_init__(self):
        unknown = [s for s in self.samplings if s not in SAMPLINGS]
        if unknown or not self.samplings:
            raise ValueError(f"--samplings {list(self.samplings)}: choose from "
                             f"{', '.join(SAMPLINGS)}")
        if not self.depths or any(not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"--depths {list(self.depths)}: give whole numbers >= 1, e.g. 1 2 3")

    def train_config(self, name: str, **method) -> TrainConfig:
        """The run ``runs/<name>.pt`` of this grid."""
        return TrainConfig(arch=self.arch, width=self.width, dataset=self.dataset,
                           data_root=self.data_root, subset=self.subset, epochs=self.epochs,
                           batch_size=self.batch_size, lr=self.lr, seed=self.seed, K=self.K,
                           out=str(Path(self.out) / "runs" / f"{name}.pt"), resume=True,
                           device=self.device, progress=self.progress, **method)

    def grid(self) -> dict[str, TrainConfig]:
        """{name: training settings}: BP, then each (sampling, depth)."""
        runs = {"bp": self.train_config("bp")}
        for sampling in self.samplings:
            for depth in self.depths:
                runs[f"{sampling}_d{depth}"] = self.train_config(
                    f"auglocal_{sampling}_d{depth}", method="auglocal", aux_depth=depth,
                    pyramid_coeff=0.0, aux_sampling=sampling)
        return runs


def parser() -> SettingsParser:
    p = SettingsParser("python -m analyses.sweep", __doc__, Settings)
    for name in ("out", "arch", "dataset", "data_root"):
        p.add(name)
    for name in ("width", "subset", "epochs", "batch_size", "K", "seed", "n", "threads"):
        p.add(name, type=int)
    p.add("lr", type=float)
    p.add("samplings", nargs="+", choices=SAMPLINGS)
    p.add("depths", nargs="+", type=int)
    p.add("cache")
    p.add("device")
    p.parser.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def layer_matched_cka(ckpt: Path, reference: Path, settings: Settings) -> list[float]:
    """Linear CKA of each layer of ``ckpt`` with the same layer of ``reference``."""
    kwargs = dict(n=settings.n, seed=settings.seed, reductions=("flatten",),
                  cache=settings.cache, data_root=settings.data_root, device=settings.device,
                  progress=settings.progress)
    with activations_of(reference, **kwargs) as a, activations_of(ckpt, **kwargs) as b:
        result = cka_matrix(a, b, kernel="linear", reduction="flatten", device=settings.device)
    return [float(v) for v in np.diag(result.matrix)]


def row_of(name: str, config: TrainConfig, bp: dict, cka: list[float]) -> dict:
    """One table row from a finished run's checkpoint metadata and its CKA to BP."""
    metrics = checkpoint_meta(config.out)["metrics"]
    memory = metrics["memory"]["total_peak_bytes"]
    return {"run": name, "method": config.method,
            "sampling": config.aux_sampling if config.method == "auglocal" else "",
            "aux_depth": config.aux_depth if config.method == "auglocal" else "",
            "test_acc": metrics["test_acc"], "memory_bytes": memory,
            "memory_ratio": memory / bp["memory"]["total_peak_bytes"],
            "macs_per_image": metrics["macs_per_image"],
            "macs_ratio": metrics["macs_per_image"] / bp["macs_per_image"],
            "cka_to_bp": float(np.mean(cka)), "cka_layers": json.dumps(cka)}


def write_table(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_plot(rows: list[dict], path: Path) -> None:
    """Each quantity against the aux depth, one line per sampling rule, BP dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bp = rows[0]
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(4 * len(QUANTITIES), 3.4))
    for ax, (key, label) in zip(axes, QUANTITIES):
        for sampling in dict.fromkeys(r["sampling"] for r in rows[1:]):
            line = [r for r in rows[1:] if r["sampling"] == sampling]
            ax.plot([r["aux_depth"] for r in line], [r[key] for r in line], marker="o",
                    label=sampling)
        ax.axhline(bp[key], color="grey", linestyle="--", label="bp")
        ax.set_xlabel("aux depth d")
        ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(settings: Settings) -> list[dict]:
    """Train the grid (or reuse finished runs), measure it, write table and plot; the rows."""
    out = Path(settings.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs = settings.grid()
    for config in runs.values():
        train(config)
    bp_metrics = checkpoint_meta(runs["bp"].out)["metrics"]
    rows = [row_of(name, config, bp_metrics,
                   layer_matched_cka(Path(config.out), Path(runs["bp"].out), settings))
            for name, config in runs.items()]
    write_table(rows, out / "sweep.csv")
    write_plot(rows, out / "sweep.png")
    write_settings(settings, out)
    for r in rows:
        print(f"{r['run']:>12}: acc {r['test_acc']:.3f}, memory {r['memory_ratio']:.2f}× BP, "
              f"MACs {r['macs_ratio']:.2f}× BP, CKA to BP {r['cka_to_bp']:.3f}")
    print(f"\nwrote {out}/")
    return rows


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
