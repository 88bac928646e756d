"""One page comparing trained networks: accuracy, training cost, CKA maps, probes.

    python -m analyses.report --ckpt bp.pt auglocal.pt dgl.pt bp_seed1.pt --out report

The first checkpoint is the reference: CKA maps compare it with each other one (include a
second BP seed to show the noise ceiling of the layer-matched CKA). Runs ``analyses.cka`` and
``analyses.probe`` into ``OUT/cka`` and ``OUT/probe`` and writes ``OUT/report.md``, whose
numbers all come from those files and the checkpoints. ``--out`` holds one run's files: an
earlier report is replaced as a whole, and only with ``--overwrite`` (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analyses import cka, probe
from analyses.activations import DEFAULT_CACHE
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.outputs import title_of
from analyses.paths import run_folder
from repsim import plot
from training import checkpoint_meta

MIB = 2**20


@dataclass(frozen=True, kw_only=True)
class Settings:
    ckpt: tuple[str, ...]            # checkpoints; the first is the reference (e.g. BP)
    out: str = "report"              # output folder
    n: int = 2000                    # test inputs for CKA (0: the whole split)
    batch_size: int | None = None    # minibatch CKA rows per batch (None: full batch)
    n_train: int = 10000             # probe train inputs (0: the whole split)
    n_test: int = 2000               # probe test inputs (0: the whole split)
    cache: str = str(DEFAULT_CACHE)  # activation cache folder
    data_root: str | None = None     # dataset folder
    device: str = "cpu"              # torch device of extraction, CKA and probes
    threads: int | None = None       # torch CPU threads (None: torch's choice)
    overwrite: bool = False          # replace an earlier report in --out


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.report", __doc__, Settings)
    p.add("ckpt", nargs="+", help="checkpoints; the first is the reference (e.g. BP)")
    p.add("out", help="output folder (%(default)s)")
    p.shared("n", "batch_size", "n_train", "n_test", "cache", "data_root", "device", "threads",
             "overwrite",
             n={"help": "test inputs for CKA (%(default)s; 0: all)"},
             batch_size={"help": "minibatch CKA (default: full batch)"})
    return p


def model_rows(paths: Sequence[str]) -> list[dict]:
    """What each checkpoint says about its run (read without building its model)."""
    rows = []
    for path in paths:
        meta = checkpoint_meta(path)
        metrics, method = meta["metrics"], meta["method"]
        settings = ", ".join(f"{k}={v}" for k, v in method.items()
                             if k != "name" and v is not None)
        rows.append({
            "file": Path(path).name, "method": method["name"], "settings": settings or "–",
            "arch": f"{meta['arch']['name']} (width {meta['arch']['width']})",
            "dataset": meta["dataset"]["name"], "epochs": meta["epoch"],
            "test_acc": metrics["test_acc"], "train_seconds": metrics.get("train_seconds"),
            "step_mib": metrics.get("memory", {}).get("total_peak_bytes", 0) / MIB,
            "macs": metrics.get("macs_per_image"),
        })
    return rows


def models_table(rows: list[dict]) -> str:
    ref = rows[0]
    lines = ["| model | method | settings | arch | epochs | test acc | train time | "
             "step memory (× first) | forward MACs/image (× first) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = f"{r['step_mib']:.1f} MiB ({r['step_mib'] / ref['step_mib']:.2f}×)" \
            if ref["step_mib"] else "–"
        macs = f"{r['macs'] / 1e6:.1f} M ({r['macs'] / ref['macs']:.2f}×)" \
            if r["macs"] and ref["macs"] else "–"
        seconds = f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "–"
        lines.append(f"| {r['file']} | {r['method']} | {r['settings']} | {r['arch']} | "
                     f"{r['epochs']} | {r['test_acc']:.4f} | {seconds} | {memory} | {macs} |")
    return "\n".join(lines)


def layer_table(layers: list[str], columns: dict[str, list[float]]) -> str:
    """Markdown table: one row per layer, one column of values per model ('–' past its end)."""
    lines = ["| layer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for i, name in enumerate(plot.short_labels(layers)):
        cells = [f"{values[i]:.4f}" if i < len(values) else "–" for values in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_table(tables: dict) -> str:
    layers = [r.layer for r in next(iter(tables.values()))]
    return layer_table(layers, {label: [r.test_acc for r in t] for label, t in tables.items()})


def write_report(settings: Settings, rows: list[dict], cka_results: dict,
                 probes: dict, out: Path) -> Path:
    ref = Path(settings.ckpt[0]).stem
    first = next(iter(cka_results.values()))
    sections = [
        "# Layer-wise comparison of the trained networks\n",
        f"Dataset: {rows[0]['dataset']}. Reference model: `{rows[0]['file']}`. "
        f"Step memory is the peak of tensors held for backward plus parameters, gradients "
        f"and optimiser state in one training step (`training.memory`).\n",
        models_table(rows),
        f"\n## CKA similarity ({title_of(first)})\n",
        "Rows are the reference model's layers, columns the other model's; 1 means the two "
        "layers' representations agree up to rotation and isotropic scaling.\n",
    ]
    for b in settings.ckpt[1:]:
        sections.append(f"![{ref} vs {Path(b).stem}](cka/{ref}__vs__{Path(b).stem}.png)\n")
    if cka.layer_matched(cka_results):
        sections += ["### Layer-matched CKA\n",
                     "CKA of each layer with the same layer of the reference. A second "
                     "seed of the reference method marks the ceiling: how similar two "
                     "networks trained the same way are.\n",
                     "![layer-matched CKA](cka/layer_matched.png)\n",
                     _diagonal_table(cka_results)]
    sections += [f"\n## Linear-probe separability ({next(iter(probes.values())).reduction})\n",
                 "Test accuracy of a linear probe per layer (standardised on train, "
                 "regularisation chosen by cross-validation on train).\n",
                 "![probe accuracy](probe/probe.png)\n", probe_table(probes),
                 f"\nChance: {next(iter(next(iter(probes.values())))).chance:.3f}. "
                 "All numbers: `cka/*.csv`, `cka/*.json`, `probe/probe.csv`.\n"]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


def _diagonal_table(cka_results: dict) -> str:
    same = cka.layer_matched(cka_results)
    layers = list(next(iter(same.values())).layers_a)
    return layer_table(layers, {label: list(r.diagonal()) for label, r in same.items()})


def run(settings: Settings) -> Path:
    if len(settings.ckpt) < 2:
        raise ValueError("--ckpt needs at least two checkpoints: a reference and one to "
                         "compare with it")
    final = Path(settings.out)
    common = {"cache": settings.cache, "data_root": settings.data_root,
              "device": settings.device}
    with run_folder(final, overwrite=settings.overwrite, sources={"--ckpt": settings.ckpt},
                    cache=settings.cache, data_root=settings.data_root) as out:
        rows = model_rows(settings.ckpt)
        cka_results = cka.run(cka.Settings(a=settings.ckpt[0], b=settings.ckpt[1:],
                                           n=settings.n, batch_size=settings.batch_size,
                                           out=str(final / "cka"), **common),
                              into=out / "cka")
        probes = probe.run(probe.Settings(ckpt=settings.ckpt, n_train=settings.n_train,
                                          n_test=settings.n_test, out=str(final / "probe"),
                                          **common),
                           into=out / "probe")
        write_settings(settings, out)
        write_report(settings, rows, cka_results, probes, out)
    path = final / "report.md"
    print(f"\nwrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
