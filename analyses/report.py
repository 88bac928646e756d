"""One page comparing trained networks: accuracy, training cost, CKA maps, probes.

    python -m analyses.report --ckpt bp.pt auglocal.pt dgl.pt bp_seed1.pt --out report

The first checkpoint is the reference: CKA maps compare it with each other one (include a
second BP seed to show the noise ceiling of the layer-matched CKA). Runs ``analyses.cka`` and
``analyses.probe`` into ``OUT/cka`` and ``OUT/probe`` and writes ``OUT/report.md``, whose
numbers all come from those files and the checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses import cka as cka_cli
from analyses import probe as probe_cli
from analyses.activations import DEFAULT_CACHE
from analyses.cli import run_cli
from repsim import plot
from training.checkpoint import load_checkpoint

MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analyses.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, nargs="+",
                   help="checkpoints; the first is the reference (e.g. BP)")
    p.add_argument("--out", default="report", help="output folder (report)")
    p.add_argument("--n", type=int, default=2000, help="test inputs for CKA (2000)")
    p.add_argument("--batch-size", type=int, help="minibatch CKA (default: full batch)")
    p.add_argument("--n-train", type=int, default=10000, help="probe train inputs (10000)")
    p.add_argument("--n-test", type=int, default=2000, help="probe test inputs (2000)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="activation cache (acts)")
    p.add_argument("--data-root", help="dataset folder (see training.train --help)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def model_rows(paths: list[str]) -> list[dict]:
    """What each checkpoint says about its run."""
    rows = []
    for path in paths:
        _, meta = load_checkpoint(path)
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


def write_report(args: argparse.Namespace, rows: list[dict], cka_results: dict,
                 probes: dict, out: Path) -> Path:
    ref = Path(args.ckpt[0]).stem
    first = next(iter(cka_results.values()))
    sections = [
        "# Layer-wise comparison of the trained networks\n",
        f"Dataset: {rows[0]['dataset']}. Reference model: `{rows[0]['file']}`. "
        f"Step memory is the peak of tensors held for backward plus parameters, gradients "
        f"and optimiser state in one training step (`training.memory`).\n",
        models_table(rows),
        f"\n## CKA similarity ({cka_cli.title_of(first)})\n",
        "Rows are the reference model's layers, columns the other model's; 1 means the two "
        "layers' representations agree up to rotation and isotropic scaling.\n",
    ]
    for b in args.ckpt[1:]:
        sections.append(f"![{ref} vs {Path(b).stem}](cka/{ref}__vs__{Path(b).stem}.png)\n")
    if (out / "cka" / "layer_matched.png").exists():
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
    same = {label: r for label, r in cka_results.items() if len(r.layers_a) == len(r.layers_b)}
    layers = list(next(iter(same.values())).layers_a)
    return layer_table(layers, {label: list(r.diagonal()) for label, r in same.items()})


def run(args: argparse.Namespace) -> Path:
    if len(args.ckpt) < 2:
        raise ValueError("--ckpt needs at least two checkpoints: a reference and one to "
                         "compare with it")
    out = Path(args.out)
    common = ["--cache", args.cache, "--device", args.device]
    common += ["--data-root", args.data_root] if args.data_root else []
    rows = model_rows(args.ckpt)
    cka_argv = ["--a", args.ckpt[0], "--b", *args.ckpt[1:], "--n", str(args.n),
                "--out", str(out / "cka"), *common]
    cka_argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cka_results = cka_cli.run(cka_cli.parse_args(cka_argv))
    probes = probe_cli.run(probe_cli.parse_args(
        ["--ckpt", *args.ckpt, "--n-train", str(args.n_train), "--n-test", str(args.n_test),
         "--out", str(out / "probe"), *common]))
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    path = write_report(args, rows, cka_results, probes, out)
    print(f"\nwrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, run, argv)


if __name__ == "__main__":
    main()
