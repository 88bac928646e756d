"""The document of ``analyses.reproduce``: ``reproduction.md``, one section per claim of the
AugLocal paper with its verdict (:mod:`analyses.verdicts`), the numbers behind it and its
figures, then the further analyses' report sections and the run's provenance."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from analyses import cka, report_sections
from analyses.groups import count
from analyses.verdicts import (ACCURACY_MARGIN, BASELINES, LEVEL, MEMORY_SAVING, METHODS,
                               ArchResult, seeds_needed)
from repsim import plot
from repsim.stats.groups import ALPHA
from repsim.stats.intervals import t_interval

if TYPE_CHECKING:
    from analyses.reproduce import Settings

def relink(lines: Sequence[str], prefix: str) -> list[str]:
    """Markdown lines with every relative link (``](path``) under ``prefix``."""
    return [re.sub(r"\]\((?!https?:|#|/)", f"]({prefix}", line) for line in lines]


def demote(lines: Sequence[str]) -> list[str]:
    """Headings one level deeper (a report section under a heading of the document)."""
    return [re.sub(r"^(\n*)#", r"\1##", line) for line in lines]


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


def span(low: float, high: float) -> str:
    """A range of fractions as percentages, one number where both ends agree."""
    return f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%}–{high:.0%}"


def memory_section(found: dict) -> list[str]:
    ranges = found["memory"]["saving_range"]
    low, high = ranges["auglocal"]
    others = "; ".join(f"{m} {span(*r)}" for m, r in ranges.items()
                       if m != "auglocal")
    return [verdict_text(found["memory"]["verdict"]) +
            f" AugLocal's step memory is {span(low, high)} below BP's (range over seed "
            f"pairs; the rule asks at least {MEMORY_SAVING:.0%}). Other methods: {others}."]


def tests_lines(tests: Mapping[str, dict]) -> list[str]:
    """Per baseline, the layers where its test is significant, with the difference and p."""
    lines = []
    for b, t in tests.items():
        hits = [f"{short} ({s:+.3f}, p = {p:.2g})" for short, s, p in
                zip(plot.short_labels(t["layers"]), t["statistic"], t["p_adjusted"])
                if p <= ALPHA]
        lines.append(f"* auglocal vs {b}: " + (", ".join(hits) if hits else
                                                  "no middle or deep layer significant") +
                     f" ({t['test']})")
    return lines


def cka_section(result: ArchResult, found: dict, prefix: str) -> list[str]:
    groups = result.cka
    c = found["cka"]
    m, seeds = len(groups.layers), groups.groups["auglocal"].values.shape[1]
    floor = 2 / math.comb(2 * seeds, seeds)  # two-sided, J against J seeds
    exact = ("The exact seed-label permutation tests of `analyses.cka` (every layer, in "
             f"`{prefix}cka/tests.csv`) make no assumption of normality but cannot reach Holm "
             f"p ≤ {ALPHA} over {m} layers with {seeds} seeds per method (smallest p "
             f"2/C({2 * seeds}, {seeds}) = {floor:.2g}, × {m}); they can from "
             f"{seeds_needed(m)} seeds (`--seeds {seeds_needed(m)}`)." if m * floor > ALPHA
             else f"The exact seed-label permutation tests of every layer: "
             f"`{prefix}cka/tests.csv`.")
    maps = [f"![bp vs {label}]({prefix}cka/{stem}.png)" for label, stem in result.stems.items()]
    return [f"![layer-matched CKA]({prefix}cka/layer_matched.png)\n",
            report_sections.layer_table(list(groups.layers), cka.seed_group_table(groups)), "",
            verdict_text(c["verdict"]) + " Per baseline: " +
            ", ".join(f"{b}: {v}" for b, v in c["per_baseline"].items()) + ".", "",
            "Differences of mean CKA to BP (AugLocal − baseline) where significant:", "",
            *tests_lines(c["tests"]), "", exact, "",
            "The same comparison under Procrustes distance (gap features; differences in "
            f"\"more alike\" units, baseline − AugLocal distance): "
            f"**{c['procrustes_verdict']}**.\n",
            f"![Procrustes distance]({prefix}procrustes/layer_matched.png)\n",
            *tests_lines(c["procrustes_tests"]), "",
            "CKA maps of the first seeds (rows: BP's layers):\n", " ".join(maps), ""]


def separability_section(result: ArchResult, found: dict, prefix: str) -> list[str]:
    s = found["separability"]

    def cells(test: dict) -> str:
        return ", ".join(f"{short[l]} {x * 100:+.1f} (p {p:.2g})" for l, x, p in
                         zip(test["layers"], test["statistic"], test["p_adjusted"]))

    short = dict(zip(result.layers, plot.short_labels(result.layers)))

    lines = [f"![probe accuracy]({prefix}probe/probe.png)\n", result.sections["probe"], "",
             verdict_text(s["verdict"]) + " Per baseline: " +
             ", ".join(f"{b}: {v}" for b, v in s["per_baseline"].items()) + ".", "",
             f"Early layers ({', '.join(short[l] for l in s['early_layers'])}), differences "
             "in points with Holm-adjusted p (Welch t-test over seeds per layer, Holm over "
             "every early layer of both parts for every baseline):"]
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
    "cka": "Per middle and deep layer (relative depth > 1/3) and baseline (DGL, InfoPro, "
           "PredSim), Welch's t-test over seeds of AugLocal − baseline in layer-matched CKA to "
           "BP (each seed's CKA averaged over BP's seeds), Holm over all these tests at once. "
           "Per baseline: reproduced if AugLocal is significantly (adjusted p ≤ 0.05) more "
           "like BP at one layer or more and significantly less at none, not reproduced if "
           "significantly less at some layer, otherwise not distinguishable; the claim is "
           "reproduced if it is for every baseline and not reproduced if it is not for one. "
           "When the methods do not differ, a verdict other than not distinguishable comes "
           "with probability ≤ 0.05 (simulated in `tests/test_reproduce.py`).",
    "separability": "Per early layer (relative depth ≤ 1/3) and baseline, Welch's t-test over "
                    "seeds of the linear-probe accuracy of baseline − BP (greedy) and of "
                    "baseline − AugLocal (AugLocal BP-like), Holm over all these tests at "
                    "once; each part judged as the CKA rule judges a test, and combined as it "
                    "combines the baselines.",
}
TITLES = {"accuracy": "Accuracy near BP with many local modules",
          "memory": "About 40 % less memory than BP",
          "cka": "AugLocal's layers stay like BP's in the middle and deep layers",
          "separability": "Greedy early separability of the baselines, BP-like of AugLocal"}


def document(settings: Settings, preset: dict, results: Sequence[ArchResult],
             found: dict[str, dict], run_info: dict) -> str:
    """``reproduction.md`` of a run with ``settings`` of ``preset`` (an entry of
    :data:`analyses.reproduce.PRESETS`): the run, a summary of verdicts, one section per claim
    (per architecture), the further analyses and the determinism check."""
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
             f"{count(run_info['threads'], 'CPU thread')}; device {settings.device}). Networks: "
             f"{archs}, width "
             f"{schedule['width']}, on {schedule['dataset']} ({schedule['subset'] or 'all'} "
             "training images, the same for every network), "
             f"{count(schedule['epochs'], 'epoch')}, batch {schedule['batch_size']}, peak lr "
             f"{schedule['lr']:g}; {settings.n_seeds} seeds per method (BP, AugLocal, DGL, "
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
              f"{det['arch']} {det['method']} on {det['subset']} images for "
              f"{count(det['epochs'], 'epoch')}, trained twice with the same seed on "
              f"{count(det['threads'], 'thread')}: "
              + ("all {0} weight tensors (primary and aux nets) and the test accuracy are "
                 "bitwise identical.".format(det["tensors"]) if det["identical"] else
                 f"the runs differ ({len(det['differing_tensors'])} of {det['tensors']} "
                 "tensors, e.g. " + ", ".join(det["differing_tensors"][:3]) + ")."),
              "Training on CPU is deterministic for a fixed seed and thread count only where "
              "this says so; rerunning the command with the same preset and seeds then "
              "reproduces every number here.\n",
              "All numbers: `reproduction.json`, `analyses/<arch>/*/`."]
    return "\n".join(lines) + "\n"
