"""Layer-by-layer CKA between networks: heatmaps, their numbers, and layer-matched lines.

    python -m analyses.cka --a bp.pt --b auglocal.pt [dgl.pt ...] [--out cka-out]

``--a`` and each ``--b`` are checkpoints (their dataset's test split is extracted once into
``--cache`` and reused) or activation files (``.h5``). For every pair this writes
``<a>__vs__<b>.png`` (rows: A's layers, columns: B's), ``.csv`` (the matrix) and ``.json``
(the matrix with all settings and both files' provenance); when the models have equally many
layers, ``layer_matched.png``/``.csv`` show CKA of each layer with the same layer of A, one line
per B. ``--a x.pt --b x.pt`` gives the self-similarity map. ``--out`` holds one run's files:
an earlier run's folder is replaced as a whole, and only with ``--overwrite`` (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from analyses.activations import DEFAULT_CACHE, activations_of, check_distinct_names, model_label
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.outputs import title_of, write_similarity
from analyses.paths import run_folder
from repsim import plot
from repsim.cka import CKAResult, cka_matrix
from repsim.store import ActivationFile


@dataclass(frozen=True, kw_only=True)
class Settings:
    a: str                                 # reference model: checkpoint or .h5 file
    b: tuple[str, ...]                     # models compared with a: checkpoints or .h5 files
    out: str = "cka-out"                   # output folder
    kernel: str = "linear"                 # "linear" or "rbf"
    threshold: float = 1.0                 # RBF: sigma = threshold × median distance
    debiased: bool = False                 # unbiased HSIC (Song et al. 2012)
    batch_size: int | None = None          # minibatch CKA rows per batch (None: full batch)
    max_memory: int | None = None          # bytes of minibatch working memory (--max-memory: MiB)
    n: int = 2000                          # inputs (0: the whole split)
    seed: int = 0                          # which inputs, when n is a subset
    split: str = "test"                    # "train" or "test"
    reduction: str = "flatten"             # flatten, gap or pool<k>
    layers: tuple[str, ...] | None = None  # module names (None: each file's)
    cache: str = str(DEFAULT_CACHE)        # activation cache folder
    data_root: str | None = None           # dataset folder
    device: str = "cpu"                    # torch device of extraction and CKA
    threads: int | None = None             # torch CPU threads (None: torch's choice)
    overwrite: bool = False                # replace an earlier run's --out


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.cka", __doc__, Settings)
    p.add("a", help="reference model: checkpoint or .h5 file")
    p.add("b", nargs="+", help="models to compare with --a")
    p.add("out", help="output folder (%(default)s)")
    p.add("kernel", choices=["linear", "rbf"])
    p.add("threshold", type=float,
          help="RBF bandwidth: sigma = threshold × median distance (%(default)s)")
    p.add("debiased", action="store_true",
          help="unbiased HSIC estimator (Song et al. 2012) in CKA")
    p.shared("batch_size", "max_memory", "n", "seed", "split", "reduction", "layers", "cache",
             "data_root", "device", "threads", "overwrite",
             max_memory={"help": "minibatch CKA with the largest batch whose working memory "
                                 "fits in this many MiB (repsim.cka.minibatch_memory): for "
                                 "activation files larger than memory; instead of "
                                 "--batch-size"},
             n={"help": "test inputs (%(default)s; 0: all)"})
    return p


def compare(a: ActivationFile, b: ActivationFile, stem: str, settings: Settings,
            out: Path) -> CKAResult:
    result = cka_matrix(a, b, kernel=settings.kernel, debiased=settings.debiased,
                        batch_size=settings.batch_size, threshold=settings.threshold,
                        reduction=settings.reduction, layers_a=settings.layers,
                        layers_b=settings.layers, device=settings.device,
                        max_memory=settings.max_memory)
    write_similarity(result, stem, out, name_a=model_label(a), name_b=model_label(b))
    return result


def layer_matched(results: dict[str, CKAResult]) -> dict[str, CKAResult]:
    """The results whose two models have equally many layers (whose diagonal is the
    layer-matched CKA)."""
    return {label: r for label, r in results.items() if len(r.layers_a) == len(r.layers_b)}


def write_layer_matched(results: dict[str, CKAResult], reference: str, out: Path) -> None:
    """Diagonals of the same-length maps: a line plot and its CSV."""
    same = layer_matched(results)
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


def run(settings: Settings, *, into: Path | None = None) -> dict[str, CKAResult]:
    """Compare ``settings.a`` with each of ``settings.b`` into ``settings.out``; ``into``: the
    folder to write in instead, when a caller (the report) stages the run."""
    check_distinct_names(list(dict.fromkeys([settings.a, *settings.b])))
    reductions = tuple(sorted({settings.reduction, "gap"}))  # gap too: the probe reuses it
    opened = {}

    def open_once(source: str) -> ActivationFile:
        if source not in opened:
            opened[source] = activations_of(
                source, settings.split, n=settings.n, seed=settings.seed, reductions=reductions,
                cache=settings.cache, data_root=settings.data_root, device=settings.device)
        return opened[source]

    with run_folder(settings.out, overwrite=settings.overwrite, into=into,
                    sources={"--a": [settings.a], "--b": settings.b},
                    data_root=settings.data_root, cache=settings.cache) as out:
        try:
            a = open_once(settings.a)
            results = {}
            for source in settings.b:
                b = open_once(source)
                stem = f"{Path(settings.a).stem}__vs__{Path(source).stem}"
                label = model_label(b)
                if label in results:  # checkpoints of one name in different folders
                    label = f"{label} [{Path(source).stem}]"
                results[label] = compare(a, b, stem, settings, out)
            write_layer_matched(results, model_label(a), out)
        finally:
            for f in opened.values():
                f.close()
        write_settings(settings, out)
    print(f"\nwrote {Path(settings.out)}/")
    return results


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
