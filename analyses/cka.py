"""Layer-by-layer CKA between networks: heatmaps, their numbers, and layer-matched lines.

    python -m analyses.cka --a bp.pt --b auglocal.pt [dgl.pt ...] [--out cka-out]

``--a`` and each ``--b`` are checkpoints (their dataset's test split is extracted once into
``--cache`` and reused) or activation files (``.h5``). For every pair this writes
``<a>__vs__<b>.png`` (rows: A's layers, columns: B's), ``.csv`` (the matrix) and ``.json``
(the matrix with all settings and both files' provenance); when the models have equally many
layers, ``layer_matched.png``/``.csv`` show CKA of each layer with the same layer of A, one line
per B. ``--a x.pt --b x.pt`` gives the self-similarity map.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from analyses.activations import (
    DEFAULT_CACHE,
    InputSelection,
    check_distinct_names,
    model_label,
    open_activations,
)
from analyses.cli import mebibytes, run_cli
from repsim import plot
from repsim.cka import CKAResult, cka_matrix
from repsim.store import ActivationFile


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analyses.cka", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="reference model: checkpoint or .h5 file")
    p.add_argument("--b", required=True, nargs="+", help="models to compare with --a")
    p.add_argument("--out", default="cka-out", help="output folder (cka-out)")
    p.add_argument("--kernel", default="linear", choices=["linear", "rbf"])
    p.add_argument("--threshold", type=float, default=1.0,
                   help="RBF bandwidth: sigma = threshold × median distance (1.0)")
    p.add_argument("--debiased", action="store_true",
                   help="unbiased HSIC estimator (Song et al. 2012) in CKA")
    p.add_argument("--batch-size", type=int,
                   help="minibatch CKA (Nguyen et al. 2021) over batches of this size; "
                        "default: the full-batch estimator")
    p.add_argument("--max-memory", type=mebibytes, metavar="MIB",
                   help="minibatch CKA with the largest batch whose working memory fits in "
                        "this many MiB (repsim.cka.minibatch_memory): for activation files "
                        "larger than memory; instead of --batch-size")
    p.add_argument("--n", type=int, default=2000, help="test inputs (2000; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="which inputs when --n is a subset")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--reduction", default="flatten",
                   help="flatten (default), gap or pool<k> of each conv layer")
    p.add_argument("--layers", nargs="+", help="module names (default: each checkpoint's)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="activation cache (acts)")
    p.add_argument("--data-root", help="dataset folder (see training.train --help)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def check_same_inputs(a: ActivationFile, b: ActivationFile) -> None:
    """Row-aligned files must come from the same dataset split (cka_matrix checks indices)."""
    for key in ("dataset", "split"):
        if a.meta.get(key) != b.meta.get(key):
            raise ValueError(f"{a.path} and {b.path} hold different {key}s "
                             f"({a.meta.get(key)!r} vs {b.meta.get(key)!r}): CKA compares "
                             "the same inputs through two models; extract both on one split")


def write_matrix_csv(result: CKAResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer_a \\ layer_b", *result.layers_b])
        for name, row in zip(result.layers_a, result.matrix):
            writer.writerow([name, *(f"{v:.10g}" for v in row)])


def title_of(result: CKAResult) -> str:
    kind = "debiased " if result.debiased else ""
    estimator = f", minibatch {result.batch_size}" if result.estimator == "minibatch" else ""
    return f"{kind}{result.kernel} CKA ({result.reduction}{estimator}, n={result.n})"


def compare(a: ActivationFile, b: ActivationFile, stem: str, args: argparse.Namespace,
            out: Path) -> CKAResult:
    check_same_inputs(a, b)
    result = cka_matrix(a, b, kernel=args.kernel, debiased=args.debiased,
                        batch_size=args.batch_size, threshold=args.threshold,
                        reduction=args.reduction, layers_a=args.layers, layers_b=args.layers,
                        device=args.device, max_memory=args.max_memory)
    name_a, name_b = model_label(a), model_label(b)
    plot.save_figure(plot.cka_heatmap(result.matrix, result.layers_a, result.layers_b,
                                      name_a=name_a, name_b=name_b, title=title_of(result)),
                     out / f"{stem}.png")
    write_matrix_csv(result, out / f"{stem}.csv")
    record = {**result.to_dict(), "model_a": name_a, "model_b": name_b,
              "provenance_a": a.meta, "provenance_b": b.meta}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    return result


def write_layer_matched(results: dict[str, CKAResult], reference: str, out: Path) -> None:
    """Diagonals of the same-length maps: a line plot and its CSV."""
    same = {label: r for label, r in results.items() if len(r.layers_a) == len(r.layers_b)}
    if not same:
        return
    layers = next(iter(same.values())).layers_a
    diagonals = {label: r.diagonal() for label, r in same.items()}
    title = title_of(next(iter(same.values())))
    plot.save_figure(plot.layer_matched_plot(diagonals, layers, reference=reference,
                                             title=title), out / "layer_matched.png")
    with (out / "layer_matched.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", *diagonals])
        for i, name in enumerate(layers):
            writer.writerow([name, *(f"{d[i]:.10g}" for d in diagonals.values())])
    print(f"\nlayer-matched CKA with {reference} ({title}):")
    print(f"{'layer':>16} " + " ".join(f"{label[:22]:>22}" for label in diagonals))
    for i, name in enumerate(plot.short_labels(layers)):
        print(f"{name:>16} " + " ".join(f"{d[i]:>22.4f}" for d in diagonals.values()))


def run(args: argparse.Namespace) -> dict[str, CKAResult]:
    check_distinct_names(list(dict.fromkeys([args.a, *args.b])))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selection = InputSelection(args.split, args.n or None, args.seed, args.data_root)
    reductions = tuple(sorted({args.reduction, "gap"}))  # gap too: the probe reuses the file
    opened = {}

    def open_once(source: str) -> ActivationFile:
        if source not in opened:
            opened[source] = open_activations(source, selection, reductions=reductions,
                                              cache=args.cache, device=args.device)
        return opened[source]

    try:
        a = open_once(args.a)
        results = {}
        for source in args.b:
            b = open_once(source)
            stem = f"{Path(args.a).stem}__vs__{Path(source).stem}"
            results[model_label(b)] = compare(a, b, stem, args, out)
        write_layer_matched(results, model_label(a), out)
    finally:
        for f in opened.values():
            f.close()
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    print(f"\nwrote {out}/")
    return results


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, run, argv)


if __name__ == "__main__":
    main()
