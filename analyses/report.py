"""One page comparing trained networks: accuracy, training cost, CKA maps, probes.

    python -m analyses.report --ckpt bp.pt auglocal.pt dgl.pt bp_seed1.pt --out report
    python -m analyses.report --ckpt bp=bp_s0.pt,bp_s1.pt auglocal=al_s0.pt,al_s1.pt dgl=...

Each ``--ckpt`` entry is a checkpoint or the seeds of one method, ``NAME=FILE,FILE,...``
(:mod:`analyses.groups`); the first entry is the reference. With seed groups the layer-matched
CKA is the seed-group comparison of ``analyses.cka`` (each method's mean over seed pairs with
its interval, the reference's noise ceiling, and the tests' one-line verdicts, from which the
report lists the significant differences and counts the others) and the probe curves are
means over seeds with their intervals.

The first checkpoint is the reference: CKA maps compare it with each other one (include a
second BP seed to show the noise ceiling of the layer-matched CKA). Runs ``analyses.cka``,
``analyses.similarity`` (the layer-matched values of :data:`REPORT_MEASURES`, measures cheap at
the report's n) and ``analyses.probe`` into ``OUT/cka``, ``OUT/similarity`` and ``OUT/probe``
and writes ``OUT/report.md``, whose numbers all come from those files and the checkpoints.
Unless ``--skip-local``, the local-learning sections follow: ``analyses.aux`` (aux nets against
probes), ``analyses.gradalign`` (local against backprop gradients) and ``analyses.stitch`` (the
reference's layers into each other network as deep), into ``OUT/aux``, ``OUT/gradalign`` and
``OUT/stitch``; then ``analyses.geometry`` (on the probe's cached inputs) and
``analyses.information`` into ``OUT/geometry`` and ``OUT/information``, all at the small
budgets of :mod:`analyses.report_sections`.
``--out`` holds one run's files: an earlier report is replaced as a whole, and only with
``--overwrite`` (see :mod:`analyses.paths`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses import cka, probe, similarity
from analyses.activations import DEFAULT_CACHE
from analyses.cli import SettingsParser, run_cli, write_settings
from analyses.groups import SeedGroup, count, group_option, parse_groups
from analyses.outputs import title_of
from analyses.paths import run_folder
from analyses.report_sections import depth_sections, layer_table, local_sections
from repsim import plot
from repsim.stats.groups import ALPHA, LayerTest, SeedGroups
from training import checkpoint_meta
from training.checkpoint import run_precision

MIB = 2**20
# one measure of each family beside CKA in the layer-matched comparison, each a few seconds at
# n = 2,000 on the cached gap features; RSA and RBF CKA (n×n matrices per layer) take about a
# minute there: run analyses.similarity for them
REPORT_MEASURES = ("linear_cka", "pwcca", "procrustes", "mutual_knn")


@dataclass(frozen=True, kw_only=True)
class Settings:
    ckpt: tuple[str, ...]            # FILE or NAME=FILE,FILE,...; the first is the reference
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
    skip_local: bool = False         # leave out the aux-net, gradient and stitching sections
    input_test: bool = False         # one seed per method: test pairs over inputs only

    def __post_init__(self):
        if len(self.groups()) < 2:
            raise ValueError("--ckpt needs at least two checkpoints: a reference and one to "
                             "compare with it (a first entry NAME=FILE,FILE,... is one "
                             "reference of several seeds)")

    def groups(self) -> tuple[SeedGroup, ...]:
        """The parsed ``ckpt`` entries; the first is the reference."""
        return parse_groups(self.ckpt, "--ckpt")

    def files(self) -> list[str]:
        """Every checkpoint of ``ckpt``, the reference's first."""
        return [f for group in self.groups() for f in group.files]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.report", __doc__, Settings)
    p.add("ckpt", nargs="+", type=group_option, metavar="FILE|NAME=FILE,FILE,...",
          help="checkpoints, or the seeds of one method; the first is the reference (e.g. BP)")
    p.add("out", help="output folder (%(default)s)")
    p.shared("n", "batch_size", "n_train", "n_test", "cache", "data_root", "device", "threads",
             "overwrite",
             n={"help": "test inputs for CKA (%(default)s; 0: all)"},
             batch_size={"help": "minibatch CKA (default: full batch)"})
    p.add("input_test", action="store_true",
          help="with one seed per method, test each pair of methods over inputs only (seed "
               "variation left out); without it such pairs are reported as not testable")
    p.add("skip_local", action="store_true",
          help="leave out the aux-net, gradient-alignment and stitching sections")
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
            "macs": metrics.get("macs_per_image"), "precision": run_precision(meta),
        })
    return rows


def models_table(rows: list[dict]) -> str:
    ref = rows[0]
    lines = ["| model | method | settings | arch | epochs | precision | test acc | train time | "
             "step memory (× first) | forward MACs/image (× first) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = f"{r['step_mib']:.1f} MiB ({r['step_mib'] / ref['step_mib']:.2f}×)" \
            if ref["step_mib"] else "–"
        macs = f"{r['macs'] / 1e6:.1f} M ({r['macs'] / ref['macs']:.2f}×)" \
            if r["macs"] and ref["macs"] else "–"
        seconds = f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "–"
        lines.append(f"| {r['file']} | {r['method']} | {r['settings']} | {r['arch']} | "
                     f"{r['epochs']} | {r['precision']} | {r['test_acc']:.4f} | {seconds} | "
                     f"{memory} | {macs} |")
    return "\n".join(lines)


def probe_table(probes: probe.ProbeRun) -> str:
    """Test accuracy [interval] per layer, one column per group."""
    layers = list(next(iter(probes.curves.values())).layers)
    return layer_table(layers, {f"{name} ({count(curve.seeds, 'seed')})": probe.cells(curve)
                                for name, curve in probes.curves.items()})


def seed_group_section(result: SeedGroups) -> list[str]:
    """The seed-group comparison of layer-matched CKA: figure, means with intervals, and which
    differences are significant (the tests' verdict lines)."""
    testable = [test for test in result.tests if test.testable]
    significant = sum(int(np.sum(test.p_adjusted <= ALPHA)) for test in testable)
    total = sum(len(test.layers) for test in testable)
    untestable = len(result.tests) - len(testable)
    lines = ["### Layer-matched CKA over seeds\n",
             "CKA of each layer with the same layer of the reference: per method the mean over "
             "all (reference seed, method seed) pairs, with its interval as brackets and band; "
             "the grey band is the reference's noise ceiling (how alike two of its seeds are). "
             f"A star marks a layer where a method differs from the ceiling (Holm p ≤ {ALPHA})."
             "\n", "![layer-matched CKA](cka/layer_matched.png)\n",
             layer_table(list(result.layers), cka.seed_group_table(result)), "",
             *(f"* {note}" for note in cka.seed_group_notes(result)),
             "\n#### Which differences are significant\n",
             f"Per layer, each method against the ceiling and each pair of methods, p "
             f"Holm-adjusted over the layers of each test (every verdict: `cka/tests.csv`). "
             f"Significant (p ≤ {ALPHA}): {significant} of {total} layer tests"
             + (f" ({count(untestable, 'comparison')} not testable with one seed per method, "
                "not counted)" if untestable else "") + ".\n"]
    return lines + [line for test in result.tests for line in significance_lines(test)]


def significance_lines(test: LayerTest) -> list[str]:
    """Bullets: the verdict of each layer where ``test`` is significant, then one line naming
    the layers where it is not (or is undefined)."""
    if not test.testable:
        return [f"* {test.question}: {test.test}"]
    hits = test.p_adjusted <= ALPHA
    lines = [f"* {line}" for line, hit in zip(test.verdicts(), hits) if hit]
    rest = [name for name, hit in zip(plot.short_labels(test.layers), hits) if not hit]
    if rest:
        floor = (f"; with these seeds p cannot go below {test.smallest_p:.2g}"
                 if test.smallest_p > ALPHA else "")
        lines.append(f"* {test.question}: not significant at {', '.join(rest)} "
                     f"(Holm p > {ALPHA}; {test.test}{floor})")
    return lines


def write_report(settings: Settings, rows: list[dict], comparison: cka.CKARun,
                 probes: probe.ProbeRun, out: Path, measure_results: dict,
                 local: Sequence[str] = ()) -> Path:
    ref = Path(settings.files()[0]).stem
    first = next(iter(comparison.maps.values()))
    sections = [
        "# Layer-wise comparison of the trained networks\n",
        f"Dataset: {rows[0]['dataset']}. Reference model: "
        f"{', '.join(f'`{Path(f).name}`' for f in settings.groups()[0].files)}. "
        f"Step memory is the peak of tensors held for backward plus parameters, gradients "
        f"and optimiser state in one training step (`training.memory`).\n",
        models_table(rows),
        f"\n## CKA similarity ({title_of(first)})\n",
        "Rows are the reference model's layers, columns the other model's; 1 means the two "
        "layers' representations agree up to rotation and isotropic scaling.\n",
    ]
    sections += [f"![{stem.replace('__vs__', ' vs ')}](cka/{stem}.png)\n"
                 for stem in comparison.stems.values()]
    if comparison.groups is not None:
        sections += seed_group_section(comparison.groups)
    elif cka.layer_matched(comparison.maps):
        sections += ["### Layer-matched CKA\n",
                     "CKA of each layer with the same layer of the reference. A second "
                     "seed of the reference method marks the ceiling: how similar two "
                     "networks trained the same way are.\n",
                     "![layer-matched CKA](cka/layer_matched.png)\n",
                     _diagonal_table(comparison.maps)]
    sections += measures_section(ref, measure_results)
    table = next(iter(probes.tables.values()))
    sections += [f"\n## Linear-probe separability ({table.reduction})\n",
                 "Test accuracy of a linear probe per layer (standardised on train, "
                 "regularisation chosen by cross-validation on train), with its "
                 f"{table.level:.0%} interval: over seeds (Student-t) for a method of several "
                 "seeds, over test inputs (Wilson) for one network.\n",
                 "![probe accuracy](probe/probe.png)\n", probe_table(probes),
                 f"\nChance: {table.rows[0].chance:.3f}. "
                 "All numbers: `cka/*.csv`, `cka/*.json`, `probe/probe.csv`.\n"]
    sections += local
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


def measures_section(ref: str, results: dict) -> list[str]:
    """The layer-matched curves of several measures, one figure per model that is as deep as
    the reference ``ref`` (``results``: {file stem: {measure: result}} of
    :func:`similarity.run`)."""
    same = similarity.layer_matched(results)
    if not same:
        return []
    first = next(iter(next(iter(same.values())).values()))
    lines = [f"\n### The same layers by other measures ({first.reduction}, n={first.n})\n",
             "Each panel is one measure of each layer of the reference with the same layer of "
             "the other model, on that measure's own scale: similarities are higher, distances "
             "lower, for more alike layers (the axis says which); the dashed line is the value "
             "of identical representations. Where the measures disagree, a conclusion rests on "
             "the measure. Maps and numbers: `similarity/<measure>/`, "
             "`similarity/layer_matched.csv`.\n"]
    lines += [f"![{ref} vs {stem}, several measures](similarity/layer_matched__{stem}.png)\n"
              for stem in same]
    return lines


def _diagonal_table(cka_results: dict) -> str:
    same = cka.layer_matched(cka_results)
    layers = list(next(iter(same.values())).layers_a)
    return layer_table(layers, {label: list(r.diagonal()) for label, r in same.items()})


def run(settings: Settings) -> Path:
    files = settings.files()
    final = Path(settings.out)
    common = {"cache": settings.cache, "data_root": settings.data_root,
              "device": settings.device}
    with run_folder(final, overwrite=settings.overwrite, sources={"--ckpt": files},
                    cache=settings.cache, data_root=settings.data_root) as out:
        rows = model_rows(files)
        comparison = cka.run(cka.Settings(a=settings.groups()[0].files, b=settings.ckpt[1:],
                                          n=settings.n, batch_size=settings.batch_size,
                                          input_test=settings.input_test,
                                          out=str(final / "cka"), **common),
                             into=out / "cka")
        measure_results = similarity.run(
            similarity.Settings(a=files[0], b=tuple(files[1:]), n=settings.n,
                                measure=REPORT_MEASURES, out=str(final / "similarity"),
                                **common),
            into=out / "similarity")
        probes = probe.run(probe.Settings(ckpt=settings.ckpt, n_train=settings.n_train,
                                          n_test=settings.n_test, out=str(final / "probe"),
                                          **common),
                           into=out / "probe")
        local = [] if settings.skip_local else local_sections(settings, final, out)
        local += depth_sections(settings, final, out)
        write_settings(settings, out)
        write_report(settings, rows, comparison, probes, out, measure_results, local)
    path = final / "report.md"
    print(f"\nwrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
