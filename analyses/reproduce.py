"""Reproduce the AugLocal paper's representation findings in one command, with verdicts.

    python -m analyses.reproduce --preset cpu --out reproduce-out [--seeds N] [--threads 2]
    python -m analyses.reproduce --preset cpu --out reproduce-out --resume --publish docs
    python -m analyses.reproduce --preset gpu --out reproduce-gpu --device cuda

Trains, per architecture of the preset (:data:`PRESETS`), BP, AugLocal, DGL, InfoPro and
PredSim (K, d and τ of the paper: ResNet-32 K = 16, d = 2, τ = 0.5; ResNet-110 K = 55, d = 3),
``--seeds`` networks each, every network from its own seed and all on the same images (one
subset seed), through ``training.train`` with ``resume``: an interrupted run continues and a
finished one is reused. Then, with seed groups and BP as the reference, it runs
``analyses.cka`` (layer-matched CKA with the BP–BP noise ceiling, intervals over seeds, the
tests of each method against the ceiling and of each pair of methods, Holm over layers; the CKA
maps of the first seeds), the same comparison under Procrustes distance on gap features,
``analyses.probe``, ``analyses.aux``, ``analyses.gradalign``, ``analyses.geometry`` and
``analyses.information`` into ``OUT/analyses/<arch>/``, retrains one short run twice to check
that training is deterministic, and writes ``OUT/reproduction.md`` (one section per claim of
the paper, each with a verdict from the rules :func:`accuracy_verdict`, :func:`memory_verdict`,
:func:`cka_verdict` and :func:`separability_verdict`, the numbers behind it and its figures) and
``OUT/reproduction.json`` (the verdicts and numbers). ``--publish DOCS`` copies the document to
``DOCS/reproduction.md`` and its figures to ``DOCS/reproduction/``.

``--out`` is a new or empty folder, or one an earlier reproduction wrote (it holds
:data:`MARKER`): ``--resume`` continues it (same preset), ``--overwrite`` deletes it first. A
folder holding anything else is never used.

Sizing the cpu preset (measured on this 2-core machine, shared with other work, so in CPU
seconds of the training process: ``time.process_time``, 2 threads; ResNet-32 width 16 on
Fashion-MNIST, batch 128, 60 steps per method after 5 warm-up steps, ``benchmark`` in the
tests' helper ``tests/test_reproduce.py::measure_throughput``):

    method     img per CPU-second   img/s on 2 cores (÷ 2 CPU-s per s)
    bp         {bp}
    auglocal   {auglocal}
    dgl        {dgl}
    infopro    {infopro}
    predsim    {predsim}

SIZING
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats

from analyses import aux, cka, geometry, gradalign, information, probe, report
from analyses import report_sections
from analyses.activations import activations_of
from analyses.cli import SettingsParser, positive, run_cli, write_settings
from analyses.paths import run_folder
from repsim.stats.groups import ALPHA, LayerTest, SeedGroups, seed_groups
from repsim.stats.intervals import t_interval
from repsim.stats.tests import holm
from training.checkpoint import checkpoint_meta, read_checkpoint
from training.checks import OutputError
from training.train import TrainConfig, train

METHODS = ("bp", "auglocal", "dgl", "infopro", "predsim")  # the reference first, then AugLocal
BASELINES = METHODS[2:]
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
UNCLEAR = "not distinguishable at this scale"
MARKER = "reproduce.json"  # in --out: the preset and settings of the reproduction it holds
WRITTEN = {MARKER, "runs", "acts", "analyses", "determinism", "reproduction.md",
           "reproduction.json"}  # everything a reproduction writes in --out
STAGING = re.compile(r"\.analyses\.[0-9a-f]{12}\.(tmp|old)")  # left by a killed run_folder
LEVEL = 0.95                 # of every interval
ACCURACY_MARGIN = 0.01       # "near BP": AugLocal's accuracy at most 1 point below BP's
MEMORY_SAVING = 0.30         # "~40 % saving": at least 30 % less step memory than BP
EARLY = 1 / 3                # early layers: relative depth <= 1/3; middle and deep: beyond

# Per preset: the architectures with their (K, aux depth d, pyramid coefficient τ), seeds per
# method, the training settings every run shares (TrainConfig fields), the analyses' budgets
# and the short run trained twice for the determinism check.
PRESETS: dict[str, dict] = {
    "tiny": {  # the test: seconds
        "archs": {"resnet8": (4, 2, 0.5)}, "seeds": 2,
        "train": {"width": 4, "dataset": "digits", "subset": None, "epochs": 1,
                  "batch_size": 64, "lr": 0.05},
        "cka_n": 200, "probe": {"n_train": 500, "n_test": 200},
        "aux": {"n_train": 300, "n_test": 100}, "gradalign": {"batches": 2, "batch_size": 32},
        "information": {"n_train": 100, "n_test": 60, "steps": 5, "n_show": 4},
        "determinism": {"subset": 256},
    },
    "cpu": {  # <= 90 minutes on 2 cores: see the sizing in the module docstring
        "archs": {"resnet32": (16, 2, 0.5)}, "seeds": 3,
        "train": {"width": 16, "dataset": "fashion-mnist", "subset": 10000, "epochs": 4,
                  "batch_size": 128, "lr": 0.1},
        "cka_n": 1000, "probe": {"n_train": 5000, "n_test": 1000},
        "aux": {"n_train": 1000, "n_test": 500}, "gradalign": {"batches": 4, "batch_size": 64},
        "information": {"n_train": 500, "n_test": 300, "steps": 40},
        "determinism": {"subset": 1024},
    },
    "gpu": {  # the paper's schedule (400 epochs, batch 1024, lr 0.8, 10 warm-up epochs)
        "archs": {"resnet32": (16, 2, 0.5), "resnet110": (55, 3, 0.5)}, "seeds": 3,
        "train": {"width": 16, "dataset": "fashion-mnist", "subset": None, "epochs": 400,
                  "batch_size": 1024, "lr": 0.8, "warmup_epochs": 10},
        "cka_n": 2000, "probe": {"n_train": 10000, "n_test": 2000},
        "aux": {"n_train": 2000, "n_test": 1000}, "gradalign": {"batches": 8, "batch_size": 64},
        "information": {"n_train": 1000, "n_test": 500, "steps": 100},
        "determinism": {"subset": 4096},
    },
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    preset: str                    # tiny | cpu | gpu (PRESETS)
    out: str                       # folder of the runs, analyses and reproduction.md
    seeds: int | None = None       # networks per method (None: the preset's; >= 2)
    data_root: str | None = None   # dataset folder
    device: str = "cpu"            # torch device of training and analyses
    threads: int | None = None     # torch CPU threads (None: torch's choice)
    resume: bool = False           # continue the reproduction in --out, reusing finished runs
    overwrite: bool = False        # delete the reproduction in --out and start again
    publish: str | None = None     # folder to copy reproduction.md and its figures into
    progress: bool = True          # training progress bars

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is not a preset; choose one of "
                             f"{', '.join(PRESETS)}")
        if self.seeds is not None and self.seeds < 2:
            raise ValueError(f"--seeds {self.seeds}: seed groups need at least 2 networks per "
                             "method (intervals over seeds, the BP noise ceiling); give 2 or "
                             "more (3 or more for the tests to reach p <= 0.05)")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: pick one")

    @property
    def n_seeds(self) -> int:
        return self.seeds or PRESETS[self.preset]["seeds"]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.reproduce", __doc__.split("\n\n")[0], Settings)
    p.add("preset", choices=list(PRESETS), help="tiny (the test), cpu (<= 90 min on 2 cores) "
          "or gpu (ResNet-32 and ResNet-110, the paper's schedule; with --device cuda)")
    p.add("out", help="folder of the runs, analyses and reproduction.md")
    p.add("seeds", type=positive, help="networks per method (default: the preset's)")
    p.shared("data_root", "device", "threads")
    p.add("resume", action="store_true", help="continue the reproduction in --out")
    p.add("overwrite", action="store_true", help="delete the reproduction in --out first")
    p.add("publish", metavar="DOCS", help="copy reproduction.md to DOCS/ and its figures to "
          "DOCS/reproduction/ (e.g. docs)")
    p.parser.add_argument("--no-progress", dest="progress", action="store_false",
                          help="hide the training progress bars")
    return p


# ------------------------------------------------------------------ the verdict rules


def threshold_verdict(low: float, high: float, threshold: float) -> str:
    """The claim "the quantity is at least ``threshold``" given its interval [low, high]:
    reproduced when the whole interval is at or above it, not reproduced when the whole
    interval is below it, otherwise (or NaN bounds) not distinguishable."""
    if low >= threshold:
        return REPRODUCED
    if high < threshold:
        return NOT_REPRODUCED
    return UNCLEAR


def layer_verdict(statistic: np.ndarray, p_adjusted: np.ndarray, alpha: float = ALPHA) -> str:
    """The claim "positive ``statistic`` (L,) at the layers given", from per-layer tests with
    Holm-adjusted ``p_adjusted`` (L,): not reproduced when some layer is significant
    (p ≤ ``alpha``) against the claim, reproduced when some is significant for it and none
    against, otherwise not distinguishable (NaN p: not significant)."""
    significant = np.nan_to_num(np.asarray(p_adjusted, dtype=float), nan=1.0) <= alpha
    statistic = np.asarray(statistic, dtype=float)
    if np.any(significant & (statistic < 0)):
        return NOT_REPRODUCED
    if np.any(significant & (statistic > 0)):
        return REPRODUCED
    return UNCLEAR


def all_of(verdicts: Sequence[str]) -> str:
    """A claim made of parts: not reproduced when a part is not, reproduced when all are,
    otherwise not distinguishable."""
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else UNCLEAR


def accuracy_verdict(difference_low: float, difference_high: float,
                     margin: float = ACCURACY_MARGIN) -> str:
    """"AugLocal's accuracy is near BP's": the interval of AugLocal − BP lies at or above
    −``margin``."""
    return threshold_verdict(difference_low, difference_high, -margin)


def memory_verdict(saving_low: float, saving_high: float,
                   threshold: float = MEMORY_SAVING) -> str:
    """"AugLocal saves about 40 % of BP's step memory": the range of 1 − AugLocal / BP over
    seed pairs lies at or above ``threshold``."""
    return threshold_verdict(saving_low, saving_high, threshold)


def cka_verdict(tests: Mapping[str, LayerTest], deep: np.ndarray) -> str:
    """"AugLocal's layer-matched CKA to BP is above each baseline's in the middle and deep
    layers": per baseline, :func:`layer_verdict` of the test "auglocal vs <baseline>" at the
    layers ``deep`` (L,) bool, then :func:`all_of`."""
    return all_of([layer_verdict(t.statistic[deep], t.p_adjusted[deep]) for t in tests.values()])


def separability_verdict(greedy: Mapping[str, LayerTest], bp_like: Mapping[str, LayerTest]
                         ) -> str:
    """"The baselines' early layers are more separable than BP's (greedy), AugLocal's less
    than the baselines' (BP-like)": per baseline both :func:`layer_verdict` s (statistics
    positive for the claim, over the early layers only), then :func:`all_of`."""
    return all_of([layer_verdict(t.statistic, t.p_adjusted)
                   for t in [*greedy.values(), *bp_like.values()]])


def seeds_needed(layers: int, alpha: float = ALPHA) -> int:
    """Seeds per method at which a two-sided seed-label permutation test of J against J seeds
    can reach Holm-adjusted p ≤ ``alpha`` over ``layers`` layers: the smallest J with
    layers · 2 / C(2J, J) ≤ alpha."""
    j = 2
    while layers * 2 / math.comb(2 * j, j) > alpha:
        j += 1
    return j


# ------------------------------------------------------------------ numbers behind the claims


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """Mean of ``a`` − mean of ``b`` (seeds of two methods) with Welch's t-test: its
    ``level`` interval and two-sided p (NaN where neither varies over its seeds: no test)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(a.mean() - b.mean())
    if a.std() == 0 and b.std() == 0:
        return {"difference": difference, "low": math.nan, "high": math.nan, "p": math.nan}
    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(level)
    return {"difference": difference, "low": float(interval.low),
            "high": float(interval.high), "p": float(result.pvalue)}


def layer_welch(first: np.ndarray, second: np.ndarray, layers: Sequence[str], question: str,
                names: tuple[str, str]) -> LayerTest:
    """Per layer, Welch's t-test of ``first`` − ``second`` ((seeds, L) each), Holm over the
    layers given."""
    results = [welch(first[:, i], second[:, i]) for i in range(first.shape[1])]
    p = np.array([r["p"] for r in results])
    return LayerTest(question=question, first=names[0], second=names[1], layers=tuple(layers),
                     statistic=np.array([r["difference"] for r in results]), p=p,
                     p_adjusted=holm(p), test="Welch t-test over seeds", smallest_p=0.0)


@dataclass(frozen=True)
class ArchResult:
    """One architecture's analyses: checkpoint ``rows`` by method (one per seed), the CKA and
    Procrustes seed-group comparisons, probe accuracies (seeds, L) by method, relative depth
    (L,), and the report sections of the further analyses."""

    arch: str
    rows: dict[str, list[dict]]
    cka: SeedGroups
    procrustes: SeedGroups
    probe_acc: dict[str, np.ndarray]
    rel_depth: np.ndarray
    layers: tuple[str, ...]
    stems: dict[str, str]
    sections: dict[str, list[str]]


def claims(result: ArchResult) -> dict[str, dict]:
    """The four claims of one architecture: per claim its verdict and the numbers behind it."""
    acc = {m: [r["test_acc"] for r in rows] for m, rows in result.rows.items()}
    memory = {m: [r["step_mib"] for r in rows] for m, rows in result.rows.items()}
    accuracy = {m: welch(acc[m], acc["bp"]) for m in METHODS[1:]}
    savings = {m: [1 - x / y for x in memory[m] for y in memory["bp"]] for m in METHODS[1:]}
    deep = result.rel_depth > EARLY + 1e-9
    early = ~deep
    versus = {t.second: t for t in result.cka.tests if t.first == "auglocal" and
              t.second in BASELINES}
    robust = {t.second: t for t in result.procrustes.tests if t.first == "auglocal" and
              t.second in BASELINES}
    layers = [l for l, e in zip(result.layers, early) if e]
    bp = result.probe_acc["bp"][:, early]
    greedy = {b: layer_welch(result.probe_acc[b][:, early], bp, layers,
                             f"{b} above bp (early probe accuracy)", (b, "bp"))
              for b in BASELINES}
    bp_like = {b: layer_welch(result.probe_acc[b][:, early],
                              result.probe_acc["auglocal"][:, early], layers,
                              f"{b} above auglocal (early probe accuracy)", (b, "auglocal"))
               for b in BASELINES}
    return {
        "accuracy": {"verdict": accuracy_verdict(accuracy["auglocal"]["low"],
                                                 accuracy["auglocal"]["high"]),
                     "vs_bp": accuracy, "test_acc": acc},
        "memory": {"verdict": memory_verdict(min(savings["auglocal"]),
                                             max(savings["auglocal"])),
                   "saving_range": {m: [min(s), max(s)] for m, s in savings.items()},
                   "step_mib": memory},
        "cka": {"verdict": cka_verdict(versus, deep),
                "procrustes_verdict": cka_verdict(robust, deep),
                "per_baseline": {b: layer_verdict(t.statistic[deep], t.p_adjusted[deep])
                                 for b, t in versus.items()},
                "tests": {b: test_numbers(t) for b, t in versus.items()},
                "procrustes_tests": {b: test_numbers(t) for b, t in robust.items()},
                "mean": {m: g.mean.tolist() for m, g in result.cka.groups.items()},
                "deep_layers": [l for l, d in zip(result.layers, deep) if d]},
        "separability": {"verdict": separability_verdict(greedy, bp_like),
                         "greedy": {b: test_numbers(t) for b, t in greedy.items()},
                         "bp_like": {b: test_numbers(t) for b, t in bp_like.items()},
                         "per_baseline": {b: all_of([layer_verdict(greedy[b].statistic,
                                                                   greedy[b].p_adjusted),
                                                     layer_verdict(bp_like[b].statistic,
                                                                   bp_like[b].p_adjusted)])
                                          for b in BASELINES},
                         "early_layers": layers,
                         "mean": {m: a.mean(0).tolist() for m, a in result.probe_acc.items()}},
    }


def test_numbers(test: LayerTest) -> dict:
    """A layer test as data: per layer its statistic and Holm-adjusted p."""
    return {"test": test.test, "layers": list(test.layers),
            "statistic": [float(s) for s in test.statistic],
            "p_adjusted": [float(p) for p in test.p_adjusted]}


# ------------------------------------------------------------------ training


def run_name(arch: str, method: str, seed: int) -> str:
    return f"{arch}_{method}_s{seed}"


def run_configs(settings: Settings, out: Path) -> dict[str, dict[str, list[TrainConfig]]]:
    """{arch: {method: one TrainConfig per seed}}: every network its own seed (1000 × the
    method's index + s), the same training images (subset seed 0) for all."""
    preset = PRESETS[settings.preset]
    configs = {}
    for arch, (K, aux_depth, pyramid_coeff) in preset["archs"].items():
        configs[arch] = {
            method: [TrainConfig(
                method=method, K=None if method == "bp" else K, aux_depth=aux_depth,
                pyramid_coeff=pyramid_coeff, arch=arch, **preset["train"],
                data_root=settings.data_root, seed=1000 * i + s,
                out=str(out / "runs" / f"{run_name(arch, method, s)}.pt"), resume=True,
                device=settings.device, threads=settings.threads, progress=settings.progress)
                for s in range(settings.n_seeds)]
            for i, method in enumerate(METHODS)}
    return configs


def check_determinism(config: TrainConfig, folder: Path) -> dict:
    """Train ``config`` (AugLocal, a short run) twice and compare the two checkpoints' primary
    and aux weights and test accuracy exactly."""
    folder.mkdir(exist_ok=True)
    paths = []
    for name in ("first", "second"):
        path = folder / f"{name}.pt"
        train(replace(config, out=str(path), resume=False, overwrite=True))
        paths.append(path)
    a, b = (read_checkpoint(p) for p in paths)
    differ = [key for part in ("state_dict", "aux_state_dict")
              for key in a[part] if not torch.equal(a[part][key], b[part][key])]
    return {"identical": not differ and a["metrics"]["test_acc"] == b["metrics"]["test_acc"],
            "differing_tensors": differ, "tensors": len(a["state_dict"]) +
            len(a["aux_state_dict"]), "method": config.method, "arch": config.arch,
            "subset": config.subset, "epochs": config.epochs, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------ the analyses


def checkpoint_rows(configs: Sequence[TrainConfig]) -> list[dict]:
    """Accuracy, training time and step memory of each finished run (checkpoint metadata)."""
    rows = []
    for config in configs:
        metrics = checkpoint_meta(config.out)["metrics"]
        rows.append({"file": Path(config.out).name, "seed": config.seed,
                     "test_acc": metrics["test_acc"], "train_seconds": metrics["train_seconds"],
                     "step_mib": metrics["memory"]["total_peak_bytes"] / report.MIB,
                     "macs": metrics["macs_per_image"]})
    return rows


def analyse(arch: str, runs: Mapping[str, Sequence[TrainConfig]], settings: Settings,
            cache: Path, stage: Path, final: Path) -> ArchResult:
    """Every analysis of one architecture's seed groups into ``stage`` (which becomes
    ``final``)."""
    preset = PRESETS[settings.preset]
    files = {m: [c.out for c in configs] for m, configs in runs.items()}
    entries = tuple(f"{m}={','.join(f)}" for m, f in files.items())
    everything = tuple(f for group in files.values() for f in group)
    common = {"cache": str(cache), "data_root": settings.data_root, "device": settings.device}
    plain = {"data_root": settings.data_root, "device": settings.device}
    stage.mkdir()
    comparison = cka.run(cka.Settings(a=tuple(files["bp"]), b=entries[1:], n=preset["cka_n"],
                                      out=str(final / "cka"), **common), into=stage / "cka")
    robust = procrustes_groups(files, preset["cka_n"], common, stage / "procrustes")
    probes = probe.run(probe.Settings(ckpt=entries, out=str(final / "probe"), **preset["probe"],
                                      **common), into=stage / "probe")
    aux_rows = aux.run(aux.Settings(ckpt=everything, out=str(final / "aux"), **preset["aux"],
                                    **common), into=stage / "aux")
    alignments = gradalign.run(gradalign.Settings(ckpt=everything, out=str(final / "gradalign"),
                                                  **preset["gradalign"], **plain),
                               into=stage / "gradalign")
    shapes = geometry.run(geometry.Settings(ckpt=entries, out=str(final / "geometry"),
                                            **preset["probe"], **common),
                          into=stage / "geometry")
    info = information.run(information.Settings(ckpt=entries, out=str(final / "information"),
                                                **preset["information"], **common),
                           into=stage / "information")
    tables = list(probes.tables.values())  # in the order of ``everything``
    per_method, start = {}, 0
    for method, group in files.items():
        per_method[method] = np.array([[r.test_acc for r in t]
                                       for t in tables[start:start + len(group)]])
        start += len(group)
    curve = probes.curves["bp"]
    return ArchResult(
        arch=arch, rows={m: checkpoint_rows(c) for m, c in runs.items()}, cka=comparison.groups,
        procrustes=robust, probe_acc=per_method, rel_depth=np.array(curve.rel_depth),
        layers=tuple(curve.layers), stems=comparison.stems,
        sections={"probe": report.probe_table(probes),
                  "aux": report_sections.aux_section(aux_rows),
                  "gradalign": report_sections.gradalign_section(alignments),
                  "geometry": report_sections.geometry_section(shapes),
                  "information": report_sections.information_section(
                      info, Path(files["bp"][0]).stem)})


def procrustes_groups(files: Mapping[str, Sequence[str]], n: int, common: dict,
                      out: Path) -> SeedGroups:
    """The seed-group comparison of :mod:`analyses.cka` under Procrustes distance on gap
    features (the cached test inputs of the CKA), written like it into ``out``."""
    out.mkdir()
    with ExitStack() as opened:
        acts = {m: [opened.enter_context(activations_of(f, "test", n=n,
                                                        reductions=("flatten", "gap"),
                                                        **common)) for f in group]
                for m, group in files.items()}
        result = seed_groups(acts["bp"], {m: a for m, a in acts.items() if m != "bp"},
                             reference_name="bp", measure="procrustes", level=LEVEL,
                             reduction="gap", device=common["device"])
    cka.write_seed_groups(result, "Procrustes distance (gap)", out)
    return result


# ------------------------------------------------------------------ the document


def relink(lines: Sequence[str], prefix: str) -> list[str]:
    """Markdown lines with every relative link (``](path``) under ``prefix``."""
    return [re.sub(r"\]\((?!https?:|#|/)", f"]({prefix}", line) for line in lines]


def demote(lines: Sequence[str]) -> list[str]:
    """Headings one level deeper (a report section under a heading of the document)."""
    return [("#" + line) if line.lstrip("\n").startswith("#") else line for line in lines]


def verdict_text(verdict: str) -> str:
    return f"**Verdict: {verdict}.**"


def interval(d: dict, scale: float = 1.0, unit: str = "") -> str:
    return (f"{d['difference'] * scale:+.2f}{unit} [{d['low'] * scale:+.2f}, "
            f"{d['high'] * scale:+.2f}]")


def accuracy_section(result: ArchResult, found: dict) -> list[str]:
    rows = result.rows
    bp_mib = np.mean([r["step_mib"] for r in rows["bp"]])
    lines = ["| method | seeds | test accuracy, mean [95 % t interval] | − BP, points [95 % "
             "Welch interval] | train time (mean) | step memory | × BP | forward MACs × BP |",
             "|---|---|---|---|---|---|---|---|"]
    bp_macs = rows["bp"][0]["macs"]
    for m in METHODS:
        acc = np.array([r["test_acc"] for r in rows[m]])
        mean, low, high = t_interval(acc, LEVEL)
        diff = "–" if m == "bp" else interval(found["accuracy"]["vs_bp"][m], 100)
        mib = np.mean([r["step_mib"] for r in rows[m]])
        seconds = np.mean([r["train_seconds"] for r in rows[m]])
        lines.append(f"| {m} | {len(acc)} | {mean:.4f} [{low:.4f}, {high:.4f}] | {diff} | "
                     f"{seconds:.0f} s | {mib:.1f} MiB | {mib / bp_mib:.2f} | "
                     f"{rows[m][0]['macs'] / bp_macs:.2f} |")
    d = found["accuracy"]["vs_bp"]["auglocal"]
    return lines + ["", verdict_text(found["accuracy"]["verdict"]) +
                    f" AugLocal − BP = {interval(d, 100)} points (Welch t-test, p = "
                    f"{d['p']:.3g}); the rule asks the whole interval to lie at or above "
                    f"−{ACCURACY_MARGIN * 100:.0f} point."]


def memory_section(found: dict) -> list[str]:
    ranges = found["memory"]["saving_range"]
    low, high = ranges["auglocal"]
    others = "; ".join(f"{m} {r[0]:.0%}–{r[1]:.0%}" for m, r in ranges.items()
                       if m != "auglocal")
    return [verdict_text(found["memory"]["verdict"]) +
            f" AugLocal's step memory is {low:.0%}–{high:.0%} below BP's (range over seed "
            f"pairs; the rule asks at least {MEMORY_SAVING:.0%}). Other methods: {others}."]


def tests_lines(tests: Mapping[str, dict], deep_layers: Sequence[str]) -> list[str]:
    """Per baseline, the middle and deep layers where its test is significant, with p."""
    lines = []
    for b, t in tests.items():
        hits = [f"{l} ({s:+.3f}, p = {p:.2g})" for l, s, p in
                zip(t["layers"], t["statistic"], t["p_adjusted"])
                if l in deep_layers and p <= ALPHA]
        lines.append(f"* auglocal vs {b}: " + (", ".join(hits) if hits else
                                                  "no middle or deep layer significant") +
                     f" ({t['test']}, Holm over {len(t['layers'])} layers)")
    return lines


def cka_section(result: ArchResult, found: dict, prefix: str) -> list[str]:
    groups = result.cka
    c = found["cka"]
    m, seeds = len(groups.layers), groups.groups["auglocal"].values.shape[1]
    floor = 2 / math.comb(2 * seeds, seeds)  # two-sided, J against J seeds
    power = (f"With {seeds} seeds per method the two-sided seed-label test cannot reach Holm "
             f"p ≤ {ALPHA} over {m} layers (smallest p 2/C({2 * seeds}, {seeds}) = "
             f"{floor:.2g}, × {m}); it can from {seeds_needed(m)} seeds per method "
             f"(`--seeds {seeds_needed(m)}`)." if m * floor > ALPHA else "")
    maps = [f"![bp vs {label}]({prefix}cka/{stem}.png)" for label, stem in result.stems.items()]
    return [f"![layer-matched CKA]({prefix}cka/layer_matched.png)\n",
            report_sections.layer_table(list(groups.layers), cka.seed_group_table(groups)), "",
            verdict_text(c["verdict"]) + " Per baseline: " +
            ", ".join(f"{b}: {v}" for b, v in c["per_baseline"].items()) + ". " + power, "",
            *tests_lines(c["tests"], c["deep_layers"]), "",
            "Every layer's verdict: `" + prefix + "cka/tests.csv`. The same comparison under "
            f"Procrustes distance (gap features): **{c['procrustes_verdict']}**.\n",
            f"![Procrustes distance]({prefix}procrustes/layer_matched.png)\n",
            *tests_lines(c["procrustes_tests"], c["deep_layers"]), "",
            "CKA maps of the first seeds (rows: BP's layers):\n", " ".join(maps), ""]


def separability_section(result: ArchResult, found: dict, prefix: str) -> list[str]:
    s = found["separability"]

    def cells(test: dict) -> str:
        return ", ".join(f"{l} {x * 100:+.1f} (p {p:.2g})" for l, x, p in
                         zip(test["layers"], test["statistic"], test["p_adjusted"]))

    lines = [f"![probe accuracy]({prefix}probe/probe.png)\n", result.sections["probe"], "",
             verdict_text(s["verdict"]) + " Per baseline: " +
             ", ".join(f"{b}: {v}" for b, v in s["per_baseline"].items()) + ".", "",
             f"Early layers ({', '.join(s['early_layers'])}), differences in points with "
             "Holm-adjusted p (Welch t-test over seeds per layer, Holm over the early layers):"]
    for b in BASELINES:
        lines += [f"* {b} − bp (greedy if positive): {cells(s['greedy'][b])}",
                  f"* {b} − auglocal (AugLocal less greedy if positive): "
                  f"{cells(s['bp_like'][b])}"]
    return lines + ["", *relink(demote(result.sections["geometry"]), prefix)]


RULES = {
    "accuracy": "Welch's t interval (95 %) of AugLocal − BP test accuracy over seeds: "
                "reproduced if it lies at or above −1 point, not reproduced if below, "
                "otherwise not distinguishable.",
    "memory": "1 − AugLocal / BP of the total step memory (tensors held for backward, "
              "parameters, gradients and momentum of one training step at the training batch, "
              "`training.memory`), over all seed pairs: reproduced if the whole range is at "
              "least 30 %, not reproduced if below, otherwise not distinguishable.",
    "cka": "For each baseline (DGL, InfoPro, PredSim), the seed-label permutation test of "
           "AugLocal vs the baseline per layer (`analyses.cka`, Holm over all layers) at the "
           "middle and deep layers (relative depth > 1/3): reproduced if AugLocal is "
           "significantly (p ≤ 0.05) more like BP at one layer or more and significantly less "
           "at none, not reproduced if significantly less at some layer, otherwise not "
           "distinguishable; the claim is reproduced if it is for every baseline and not "
           "reproduced if it is not for one.",
    "separability": "For each baseline, per early layer (relative depth ≤ 1/3) Welch's t-test "
                    "over seeds of the linear-probe accuracy, Holm over the early layers, of "
                    "baseline − BP (greedy) and of baseline − AugLocal (AugLocal BP-like); "
                    "each part judged as the CKA rule judges a test, and combined as it combines "
                    "the baselines.",
}
TITLES = {"accuracy": "Accuracy near BP with many local modules",
          "memory": "About 40 % less memory than BP",
          "cka": "AugLocal's layers stay like BP's in the middle and deep layers",
          "separability": "Greedy early separability of the baselines, BP-like of AugLocal"}


def document(settings: Settings, results: Sequence[ArchResult], found: dict[str, dict],
             run_info: dict) -> str:
    """``reproduction.md``: the run, a summary of verdicts, one section per claim (per
    architecture), the further analyses and the determinism check."""
    preset = PRESETS[settings.preset]
    schedule = preset["train"]
    det = run_info["determinism"]
    archs = ", ".join(f"{a} (K = {k}, d = {d}, τ = {t})" for a, (k, d, t) in
                      preset["archs"].items())
    training = sum(row["train_seconds"] for r in results for rows in r.rows.values()
                   for row in rows)
    lines = ["# Reproducing AugLocal's representation findings\n",
             f"Generated by `python -m analyses.reproduce --preset {settings.preset}` "
             f"(commit {run_info['commit']}; wall time of this invocation "
             f"{run_info['wall_seconds'] / 60:.1f} min; the training loops of all runs took "
             f"{training / 60:.1f} min in all, earlier invocations included; "
             f"{run_info['threads']} CPU threads; device {settings.device}). Networks: "
             f"{archs}, width "
             f"{schedule['width']}, on {schedule['dataset']} ({schedule['subset'] or 'all'} "
             "training images, the same for every network), "
             f"{schedule['epochs']} epochs, batch {schedule['batch_size']}, peak lr "
             f"{schedule['lr']}; {settings.n_seeds} seeds per method (BP, AugLocal, DGL, "
             "InfoPro, PredSim), each network its own seed. BP is the reference of every "
             "comparison. Verdicts: reproduced, not reproduced, or not distinguishable at "
             "this scale, each by the rule stated in its section.\n",
             "| claim | " + " | ".join(r.arch for r in results) + " |",
             "|---|" + "---|" * len(results)]
    lines += [f"| {TITLES[c]} | " + " | ".join(found[r.arch][c]["verdict"] for r in results)
              + " |" for c in TITLES]
    for i, claim in enumerate(TITLES, 1):
        lines += [f"\n## {i}. {TITLES[claim]}\n", f"Rule: {RULES[claim]}\n"]
        for r in results:
            prefix = f"analyses/{r.arch}/"
            lines.append(f"### {r.arch}\n")
            if claim == "accuracy":
                lines += accuracy_section(r, found[r.arch])
            elif claim == "memory":
                lines += memory_section(found[r.arch])
            elif claim == "cka":
                lines += cka_section(r, found[r.arch], prefix)
            else:
                lines += separability_section(r, found[r.arch], prefix)
    for r in results:
        lines.append(f"\n## Further analyses: {r.arch}\n")
        for key in ("aux", "gradalign", "information"):
            lines += relink(demote(r.sections[key]), f"analyses/{r.arch}/")
    lines += ["\n## Determinism\n",
              f"{det['arch']} {det['method']} on {det['subset']} images for {det['epochs']} "
              f"epoch(s), trained twice with the same seed on {det['threads']} threads: "
              + ("all {0} weight tensors (primary and aux nets) and the test accuracy are "
                 "bitwise identical.".format(det["tensors"]) if det["identical"] else
                 f"the runs differ ({len(det['differing_tensors'])} of {det['tensors']} "
                 "tensors, e.g. " + ", ".join(det["differing_tensors"][:3]) + ")."),
              "Training on CPU is deterministic for a fixed seed and thread count only where "
              "this says so; rerunning the command with the same preset and seeds then "
              "reproduces every number here.\n",
              "All numbers: `reproduction.json`, `analyses/<arch>/*/`."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the command


def prepare_out(settings: Settings) -> Path:
    """``--out`` as a Path after the rule of the module docstring; writes :data:`MARKER`."""
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; --out names a folder: choose another")
    held = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if held:
        marker = out / MARKER
        if not marker.exists():
            raise OutputError(f"--out {out} holds files that are not a reproduction's "
                              f"({', '.join(held[:3])}{', …' if len(held) > 3 else ''}), which "
                              "are never used or replaced; choose a new or empty folder")
        other = sorted(name for name in set(held) - WRITTEN if not STAGING.fullmatch(name))
        if other:
            raise OutputError(f"--out {out} holds files a reproduction did not write "
                              f"({', '.join(other[:3])}); move them elsewhere or choose "
                              "another --out")
        earlier = json.loads(marker.read_text())["preset"]
        if settings.overwrite:
            for name in held:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif not settings.resume:
            raise OutputError(f"--out {out} holds an earlier reproduction (preset {earlier}); "
                              "pass --resume to continue it, reusing its finished runs, or "
                              "--overwrite to start again")
        elif earlier != settings.preset:
            raise OutputError(f"--out {out} holds a reproduction of preset {earlier}, not "
                              f"{settings.preset}; --resume continues the same preset: choose "
                              "another --out or pass --overwrite")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(asdict(settings), indent=1))
    return out


def commit() -> str:
    """The repository's HEAD (with a note when the tree has uncommitted changes), or
    'unknown' outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head[:12]}`" + (" with uncommitted changes" if dirty.strip() else "")


def publish(out: Path, text: str, docs: Path) -> Path:
    """``docs/reproduction.md`` and the figures it shows under ``docs/reproduction/``."""
    figures = sorted(set(re.findall(r"\]\(analyses/([^)]+\.png)\)", text)))
    target = docs / "reproduction"
    if target.exists():
        shutil.rmtree(target)
    for figure in figures:
        (target / figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "analyses" / figure, target / figure)
    path = docs / "reproduction.md"
    path.write_text(text.replace("](analyses/", "](reproduction/"))
    return path


def run(settings: Settings) -> Path:
    """Train (or reuse) every network, run the analyses, check determinism, write the
    document; its path."""
    start = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = prepare_out(settings)
    configs = run_configs(settings, out)
    for per_method in configs.values():
        for config in (c for group in per_method.values() for c in group):
            train(config)
    first = next(iter(configs.values()))["auglocal"][0]
    determinism = check_determinism(
        replace(first, epochs=1, warmup_epochs=0, progress=False,
                **PRESETS[settings.preset]["determinism"]), out / "determinism")
    sources = [c.out for m in configs.values() for g in m.values() for c in g]
    with run_folder(out / "analyses", overwrite=True, sources={"--ckpt": sources},
                    data_root=settings.data_root, cache=str(out / "acts")) as stage:
        results = [analyse(arch, runs, settings, out / "acts", stage / arch,
                           out / "analyses" / arch) for arch, runs in configs.items()]
        write_settings(settings, stage)
    found = {r.arch: claims(r) for r in results}
    run_info = {"commit": commit(), "wall_seconds": time.perf_counter() - start,
                "threads": torch.get_num_threads(), "determinism": determinism}
    text = document(settings, results, found, run_info)
    (out / "reproduction.md").write_text(text)
    (out / "reproduction.json").write_text(json.dumps(
        {"preset": settings.preset, "seeds": settings.n_seeds, "claims": found,
         "run": run_info}, indent=1, default=float))
    print(f"\nwrote {out / 'reproduction.md'}")
    if settings.publish:
        print(f"published {publish(out, text, Path(settings.publish))}")
    for arch, claim in found.items():
        for name, numbers in claim.items():
            print(f"{arch} {name}: {numbers['verdict']}")
    return out / "reproduction.md"


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
