"""The report's tables and the sections of the analyses beside similarity and probes.

:func:`layer_table` is the report's one table shape (a row per layer, a column per model).
:func:`local_sections` runs ``analyses.aux``, ``analyses.gradalign`` and ``analyses.stitch``,
:func:`depth_sections` runs ``analyses.geometry`` and ``analyses.information``, each at the
report's small budgets below (full settings: the commands' own flags), for the report's
``Settings`` (:mod:`analyses.report`), and returns the markdown of one section per analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from analyses import aux, geometry, gradalign, information, stitch
from repsim import plot
from training import checkpoint_meta

# the local-learning sections' budgets (full settings: the commands' own flags)
REPORT_AUX = {"n_train": 500, "n_test": 300}
REPORT_GRADALIGN = {"batches": 4, "batch_size": 64}
REPORT_STITCH = {"steps": 10, "n_train": 256, "n_test": 300}
# information along depth: decoders and probes on a subset (full budget: its own flags)
REPORT_INFORMATION = {"n_train": 300, "n_test": 200, "steps": 25}


def layer_table(layers: list[str], columns: dict[str, list[float | str]]) -> str:
    """Markdown table: one row per layer, one column of values (numbers, or cells already
    written) per model ('–' past its end)."""
    lines = ["| layer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for i, name in enumerate(plot.short_labels(layers)):
        cells = [("–" if i >= len(values) else values[i] if isinstance(values[i], str)
                  else f"{values[i]:.4f}") for values in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def local_sections(settings, final: Path, out: Path) -> list[str]:
    """Run ``analyses.aux``, ``analyses.gradalign`` and ``analyses.stitch`` (the reference
    into each other network of as many layers) at the report's budgets, into ``out/aux``,
    ``out/gradalign`` and ``out/stitch/<stem>``; their report sections."""
    files = settings.files()
    common = {"data_root": settings.data_root, "device": settings.device}
    aux_rows = aux.run(aux.Settings(ckpt=tuple(files), out=str(final / "aux"),
                                    cache=settings.cache, **REPORT_AUX, **common),
                       into=out / "aux")
    alignments = gradalign.run(gradalign.Settings(ckpt=tuple(files), out=str(final / "gradalign"),
                                                  **REPORT_GRADALIGN, **common),
                               into=out / "gradalign")
    depth = len(checkpoint_meta(files[0])["layers"])
    (out / "stitch").mkdir()
    stitched = {Path(b).stem: stitch.run(
        stitch.Settings(a=files[0], b=b, out=str(final / "stitch" / Path(b).stem),
                        **REPORT_STITCH, **common), into=out / "stitch" / Path(b).stem)
        for b in files[1:] if len(checkpoint_meta(b)["layers"]) == depth}
    return aux_section(aux_rows) + gradalign_section(alignments) + \
        stitch_section(Path(files[0]).stem, stitched, out)


def aux_section(rows: Sequence[aux.AuxRow]) -> list[str]:
    """Aux net and linear probe per layer: figure and an 'aux / probe' table."""
    models = aux.by_model(rows)
    layers = [r.layer for r in next(iter(models.values()))]
    cells = {model: [(f"{r.aux_acc:.3f} / " if r.local_loss == aux.AUX else "– / ")
                     + f"{r.probe_acc:.3f}" for r in layer_rows]
             for model, layer_rows in models.items()}
    first = rows[0]
    return ["\n## Aux nets against linear probes\n",
            "Per layer, the test accuracy of the layer's own aux net (local methods) and of a "
            f"linear probe of the layer, on the same {first.n_test} test inputs; dotted: the "
            "network's final accuracy. Aux above probe: the aux net reads more than a linear "
            "readout; aux below final: the local objective stops short of the global one. "
            f"Bands: {first.level:.0%} Wilson intervals (`aux/aux.csv`).\n",
            "![aux nets vs probes](aux/aux.png)\n",
            layer_table(layers, {f"{m}: aux / probe": c for m, c in cells.items()})]


def gradalign_section(results: Sequence[gradalign.Alignment]) -> list[str]:
    """Cosine of local and backprop gradients per layer: figure and table."""
    first = results[0]
    return ["\n## Gradient alignment with backprop\n",
            "Per layer, the cosine between the gradient of its parameters under its local loss "
            "and under the end-to-end loss, mean over "
            f"{len(first.cosines)} training batches [{first.level:.0%} {gradalign.INTERVAL}]; "
            "layers of a method's last module are trained by the output loss (cosine 1). BP "
            "networks get fresh aux nets as their local loss, as labelled "
            "(`gradalign/gradalign.csv`).\n",
            "![gradient alignment](gradalign/gradalign.png)\n",
            layer_table(list(first.layers), {
                r.model: [f"{m:.3f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in
                          zip(r.mean, r.low, r.high)] for r in results})]


def stitch_section(reference: str, runs: dict[str, list], out: Path) -> list[str]:
    """The penalty of stitching the reference's layer l into each network at l: one figure
    (``out/stitch/penalty.png``) and a table."""
    if not runs:
        return []
    rows = next(iter(runs.values()))
    depth = [r.i / max(len(rows) - 1, 1) for r in rows]
    plot.save_figure(aux.depth_figure(
        [aux.Curve(f"{reference} → {b}", depth, [r.penalty for r in rs]) for b, rs in
         runs.items()], ylabel="penalty: B's accuracy − stitched", ylim=None,
        title=f"{rows[0].init} stitch, {rows[0].steps} steps, n_test={rows[0].n_test}"),
        out / "stitch" / "penalty.png")
    return ["\n## Model stitching\n",
            f"{reference}'s layer l feeds each other network B after B's layer l through a "
            f"trained 1×1 conv + BN ({rows[0].init} initialisation, {rows[0].steps} Adam "
            "steps, both networks frozen); the penalty is B's own test accuracy minus the "
            "stitched one (near 0: B's later layers can use the reference's layer as their "
            "own). Numbers with Wilson intervals: `stitch/<B>/stitch.csv`.\n",
            "![stitching penalty](stitch/penalty.png)\n",
            layer_table([r.layer_a for r in rows],
                        {f"into {b}": [r.penalty for r in rs] for b, rs in runs.items()})]


def depth_sections(settings, final: Path, out: Path) -> list[str]:
    """Run ``analyses.geometry`` (on the probe's cached inputs) and ``analyses.information``
    (at :data:`REPORT_INFORMATION`) into ``out/geometry`` and ``out/information``; their
    report sections."""
    common = {"cache": settings.cache, "data_root": settings.data_root,
              "device": settings.device}
    shapes = geometry.run(geometry.Settings(ckpt=settings.ckpt, n_train=settings.n_train,
                                            n_test=settings.n_test, out=str(final / "geometry"),
                                            **common), into=out / "geometry")
    info = information.run(information.Settings(ckpt=settings.ckpt,
                                                out=str(final / "information"),
                                                **REPORT_INFORMATION, **common),
                           into=out / "information")
    return geometry_section(shapes) + information_section(info, Path(settings.files()[0]).stem)


def curve_cells(curves: dict, first: str, second: str) -> dict[str, list[str]]:
    """Per group, one 'first / second' cell per layer of two metrics' means."""
    return {f"{name}: {first} / {second}": [
        f"{a:.3g} / {b:.3g}" for a, b in zip(c.metrics[first].mean, c.metrics[second].mean)]
        for name, c in curves.items()}


def geometry_section(run: geometry.GeometryRun) -> list[str]:
    """Effective dimensionality and class separation per layer: figure and table."""
    first = next(iter(run.tables.values()))
    layers = list(next(iter(run.curves.values())).layers)
    return ["\n## Layer geometry\n",
            f"Per layer ({first.reduction} features, {first.rows[0].n_test} test inputs): the "
            "participation ratio (Σλ)²/Σλ² of the covariance spectrum (effective "
            "dimensionality), the between- to within-class variance ratio, and the accuracy of "
            f"the nearest class centre (centres from {first.rows[0].n_train} train inputs). "
            "Bands: over seeds (Student-t) for a method of several seeds, Wilson over test "
            "inputs for the NCC accuracy of one network (`geometry/geometry.csv`).\n",
            "![layer geometry](geometry/geometry.png)\n",
            layer_table(layers, curve_cells(run.curves, "participation_ratio", "ncc_acc"))]


def information_section(run: information.InformationRun, reference: str) -> list[str]:
    """Information about the input and the label per layer: figure, table and the
    reference's reconstructions."""
    rows = next(iter(run.records.values()))
    table = next(iter(run.reconstructions.values()))
    layers = list(next(iter(run.curves.values())).layers)
    return ["\n## Information along depth\n",
            "How much of the input each layer keeps (PSNR of a small decoder's reconstruction "
            f"of the test images, {table.settings.steps} Adam steps on {table.n_train} train "
            f"images with the network frozen; the mean image scores "
            f"{rows[0]['baseline_psnr']:.1f} dB) beside how much of the label (linear probe "
            f"accuracy and cross-entropy on {rows[0]['n_train']} train inputs' gap features). "
            "InfoPro (Wang et al. 2021) argues that local losses drop input information early. "
            "Numbers: `information/information.csv`.\n",
            "![information along depth](information/information.png)\n",
            layer_table(layers, curve_cells(run.curves, "psnr", "probe_acc")),
            f"\n![reconstructions from each layer of {reference}]"
            f"(information/reconstructions/{reference}.png)\n"]
