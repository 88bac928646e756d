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
                               POWER, UNCLEAR, ArchResult, seeds_needed)
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
        mean, low, high = t_interval(acc, LEVEL, (0.0, 1.0))
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


def detectable_text(test: Mapping, unit: str, scale: float, span: float) -> str:
    """The smallest detectable difference, e.g. "0.045 CKA"; "more than 1 CKA" where it
    exceeds ``span``, the measure's whole range (nothing this run could have seen)."""
    if not math.isfinite(test["detectable"]):
        return "unknown (a method with one seed)"
    if test["detectable"] > span:
        return f"more than {span * scale:g}{unit} (the whole range)"
    return f"{test['detectable'] * scale:.2g}{unit}"


def power_text(test: Mapping, unit: str, scale: float = 1.0, span: float = 1.0) -> str:
    """"a difference of 0.04 CKA would have been detected 80 % of the time"."""
    return (f"a difference of {detectable_text(test, unit, scale, span)} would have been "
            f"detected {POWER:.0%} of the time (two-sided α = {test['alpha_per_test']:.3g})")


def primary_table(tests: Mapping[str, Mapping], what: str, unit: str, scale: float = 1.0,
                  span: float = 1.0) -> list[str]:
    """The primary endpoint's tests as a table: per comparison the effect with its interval,
    p, Holm p, verdict and the smallest difference detectable with :data:`POWER` (``span``:
    the width of the endpoint's range)."""
    lines = [f"| {what} | seeds | difference [95 % Welch interval] | p | Holm p | verdict | "
             f"detectable with {POWER:.0%} power |", "|---|---|---|---|---|---|---|"]
    for t in tests.values():
        detectable = detectable_text(t, unit, scale, span)
        lines.append(f"| {t['first']} − {t['second']} | {t['seeds'][0]} + {t['seeds'][1]} | "
                     f"{interval(t, scale, unit)} | {t['p']:.2g} | {t['p_adjusted']:.2g} | "
                     f"{t['verdict']} | {detectable} |")
    return lines


def verdict_with_power(verdict: str, tests: Mapping[str, Mapping], unit: str,
                       scale: float = 1.0, span: float = 1.0) -> str:
    """The verdict line; where no test decided, the power of each, so "not distinguishable"
    says how large a difference could have been seen."""
    undecided = [t for t in tests.values() if t["verdict"] == UNCLEAR]
    powers = "; ".join(f"{t['first']} − {t['second']}: {power_text(t, unit, scale, span)}"
                       for t in undecided)
    return verdict_text(verdict) + (f" Where not distinguishable, {powers}." if powers else "")


def tests_lines(tests: Mapping[str, dict], first: str = "auglocal") -> list[str]:
    """Per baseline, the layers where its per-layer test is significant, with the difference
    and p."""
    lines = []
    for b, t in tests.items():
        hits = [f"{short} ({s:+.3f}, p = {p:.2g})" for short, s, p in
                zip(plot.short_labels(t["layers"]), t["statistic"], t["p_adjusted"])
                if p <= ALPHA]
        lines.append(f"* {first} vs {b}: " + (", ".join(hits) if hits else
                                               "no layer significant") + f" ({t['test']})")
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
    deep = ", ".join(plot.short_labels(c["deep_layers"]))
    endpoint = {k: np.array(v) for k, v in c["endpoint"].items()}
    return [f"![layer-matched CKA]({prefix}cka/layer_matched.png)\n",
            report_sections.layer_table(list(groups.layers), cka.seed_group_table(groups)), "",
            f"**Primary endpoint**: each seed's layer-matched CKA to BP, averaged over BP's "
            f"seeds and over the middle and deep layers ({deep}). Per method, mean over seeds: "
            + ", ".join(f"{k} {v.mean():.3f} (sd {v.std(ddof=1):.3f})"
                        for k, v in endpoint.items()) + ".\n",
            *primary_table(c["primary"], "AugLocal − baseline, CKA", ""), "",
            verdict_with_power(c["verdict"], c["primary"], " CKA"), "",
            "The same endpoint under Procrustes distance (gap features; differences in "
            f"\"more alike\" units, baseline − AugLocal distance): "
            f"**{c['procrustes_verdict']}**.\n",
            *primary_table(c["procrustes_primary"], "AugLocal − baseline, −Procrustes", "",
                           span=math.pi / 2),
            "", f"![Procrustes distance]({prefix}procrustes/layer_matched.png)\n",
            f"*Secondary* (per layer, Welch over seeds, Holm over every middle and deep layer of "
            f"every baseline; by the same rule: {c['secondary_verdict']}):", "",
            *tests_lines(c["secondary_tests"]), "", exact, "",
            "CKA maps of the first seeds (rows: BP's layers):\n", " ".join(maps), ""]


def separability_section(result: ArchResult, found: dict, prefix: str) -> list[str]:
    s = found["separability"]

    def cells(test: dict) -> str:
        return ", ".join(f"{short[l]} {x * 100:+.1f} (p {p:.2g})" for l, x, p in
                         zip(test["layers"], test["statistic"], test["p_adjusted"]))

    short = dict(zip(result.layers, plot.short_labels(result.layers)))
    endpoint = {k: np.array(v) * 100 for k, v in s["endpoint"].items()}
    tests = {**{f"greedy {b}": t for b, t in s["primary_greedy"].items()},
             **{f"bp-like {b}": t for b, t in s["primary_bp_like"].items()}}
    lines = [f"![probe accuracy]({prefix}probe/probe.png)\n", result.sections["probe"], "",
             "**Primary endpoint**: each seed's linear-probe accuracy averaged over the early "
             f"layers ({', '.join(short[l] for l in s['early_layers'])}), minus BP's mean, in "
             "points. Per method, mean over seeds: "
             + ", ".join(f"{k} {v.mean():+.2f} (sd {v.std(ddof=1):.2f})"
                         for k, v in endpoint.items()) + ".\n",
             *primary_table(tests, "early probe accuracy", " pt", 100), "",
             verdict_with_power(s["verdict"], tests, " points", 100) + " Per baseline: " +
             ", ".join(f"{b}: {v}" for b, v in s["per_baseline"].items()) + ".", "",
             f"*Secondary* (per early layer, differences in points with Holm-adjusted p, Welch "
             "over seeds, Holm over every early layer of both parts for every baseline; by the "
             f"same rule: {s['secondary_verdict']}):"]
    for b in BASELINES:
        lines += [f"* {b} − bp (greedy if positive): {cells(s['secondary_greedy'][b])}",
                  f"* {b} − auglocal (AugLocal less greedy if positive): "
                  f"{cells(s['secondary_bp_like'][b])}"]
    return lines + ["", *relink(demote(result.sections["geometry"]), prefix)]


RULES = {
    "accuracy": "Welch's t interval (95 %) of AugLocal − BP test accuracy over seeds: "
                "reproduced if it lies at or above −1 point, not reproduced if below, "
                "otherwise not distinguishable.",
    "memory": "1 − AugLocal / BP of the total step memory (tensors held for backward, "
              "parameters, gradients and momentum of one training step at the training batch, "
              "`training.memory`), over all seed pairs: reproduced if the whole range is at "
              "least 30 %, not reproduced if below, otherwise not distinguishable.",
    "cka": "The primary endpoint, fixed before the run: per network, its layer-matched CKA "
           "to BP (averaged over BP's seeds) averaged over the middle and deep layers "
           "(relative depth > 1/3). Per baseline (DGL, InfoPro, PredSim), Welch's t-test over "
           "seeds of AugLocal − baseline, Holm over the three. Per baseline: reproduced if "
           "AugLocal is significantly (adjusted p ≤ 0.05) more like BP, not reproduced if "
           "significantly less, otherwise not distinguishable, with the smallest difference "
           "the test would have detected with 80 % power; the claim is reproduced if it is "
           "for every baseline and not reproduced if it is not for one. When the methods do "
           "not differ, a verdict other than not distinguishable comes with probability "
           "≤ 0.05 (simulated in `tests/test_reproduce.py`, as is the power formula). The "
           "per-layer tests are secondary.",
    "separability": "The primary endpoint: per network, its linear-probe accuracy averaged "
                    "over the early layers (relative depth ≤ 1/3), minus BP's mean. Per "
                    "baseline, Welch's t-test over seeds of baseline − BP (greedy) and of "
                    "baseline − AugLocal (AugLocal BP-like), Holm over the six; each test "
                    "judged as the CKA rule judges one, combined as it combines the baselines. "
                    "The per-layer tests are secondary.",
}
# What the paper reports for each claim, beside ours (its setting: CIFAR-10, the full schedule).
PAPER = {
    "accuracy": "accuracy close to BP's at K = 16 (ResNet-32) and K = 55 (ResNet-110). "
                "Reference test errors at K = 16, CIFAR-10, 160 epochs, from the InfoPro paper "
                "(Wang et al. 2021): ResNet-32 BP 7.37 %, DGL 16.21 %; ResNet-110 BP 6.50 %, "
                "DGL 13.80 %. AugLocal's own table entries were not checked in the paper's "
                "text here.",
    "memory": "about 40 % less GPU memory than BP at the same batch size.",
    "cka": "a figure of per-layer CKA to BP in which AugLocal's middle and deep layers lie "
           "above DGL's and InfoPro's (values read from a figure; not checked here).",
    "separability": "a figure of per-layer linear-probe accuracy in which the local baselines' "
                    "early layers are more separable than BP's and AugLocal's follow BP's "
                    "(values read from a figure; not checked here).",
}
TITLES = {"accuracy": "Accuracy near BP with many local modules",
          "memory": "About 40 % less memory than BP",
          "cka": "AugLocal's layers stay like BP's in the middle and deep layers",
          "separability": "Greedy early separability of the baselines, BP-like of AugLocal"}


def precisions(results: Sequence[ArchResult]) -> str:
    """The training precisions of every run, e.g. "bf16 + channels-last"."""
    return " and ".join(sorted({row["precision"] for r in results for rows in r.rows.values()
                                for row in rows}))


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
             "InfoPro, PredSim), each network its own seed; training precision "
             f"{precisions(results)} (`--amp {schedule.get('amp') or 'none'}`; every "
             "accuracy is a float32 evaluation of the whole test set, every activation for "
             "the analyses a float32 forward pass). BP is the reference of every "
             "comparison. Verdicts: reproduced, not reproduced, or not distinguishable at "
             "this scale, each by the rule stated in its section.\n",
             "| claim | " + " | ".join(r.arch for r in results) + " |",
             "|---|" + "---|" * len(results)]
    lines += [f"| {TITLES[c]} | " + " | ".join(found[r.arch][c]["verdict"] for r in results)
              + " |" for c in TITLES]
    for i, claim in enumerate(TITLES, 1):
        lines += [f"\n## {i}. {TITLES[claim]}\n", f"Rule: {RULES[claim]}\n",
                  f"The paper: {PAPER[claim]}\n"]
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
              f"{det['arch']} {det['method']} ({det.get('precision', 'float32')}) on "
              f"{det['subset']} images for "
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
    if run_info.get("sizing"):
        lines += ["\n## Appendix: how the preset was sized\n", run_info["sizing"]]
    return "\n".join(lines) + "\n"
