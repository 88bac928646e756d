"""The verdicts of ``analyses.reproduce``: each claim of the AugLocal paper decided from the
numbers of one architecture by a stated rule, and the numbers behind it.

The rules (small pure functions, each outcome reachable and tested): :func:`accuracy_verdict`
(the Welch interval of AugLocal − BP at or above −:data:`ACCURACY_MARGIN`),
:func:`memory_verdict` (a step-memory saving of at least :data:`MEMORY_SAVING`),
:func:`cka_verdict` (AugLocal against each baseline in the middle and deep layers) and
:func:`separability_verdict` (the baselines' early layers above BP's and AugLocal's). The last
two read per-layer Welch t-tests over seeds (:func:`welch_family`) with Holm's correction over
every layer and baseline of the claim at once, so each claim's verdict is wrong with
probability at most :data:`~repsim.stats.groups.ALPHA` when the methods do not differ (the
tests simulate this at 3 seeds per method). Welch rather than the exact seed-label
permutation tests of :mod:`analyses.cka`: with J seeds per method those cannot go below
p = 2 / C(2J, J) (0.1 at J = 3), so a many-layer claim could never be decided at the paper's
3 seeds; they stay in ``tests.csv`` as the distribution-free check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as scipy_stats

from repsim.stats.groups import ALPHA, LayerTest, SeedGroups
from repsim.stats.tests import holm

METHODS = ("bp", "auglocal", "dgl", "infopro", "predsim")  # the reference first, then AugLocal
BASELINES = METHODS[2:]
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
UNCLEAR = "not distinguishable at this scale"
LEVEL = 0.95                 # of every interval
ACCURACY_MARGIN = 0.01       # "near BP": AugLocal's accuracy at most 1 point below BP's
MEMORY_SAVING = 0.30         # "~40 % saving": at least 30 % less step memory than BP
EARLY = 1 / 3                # early layers: relative depth <= 1/3; middle and deep: beyond

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


def cka_verdict(tests: Mapping[str, LayerTest]) -> str:
    """"AugLocal's layer-matched CKA to BP is above each baseline's in the middle and deep
    layers": per baseline, :func:`layer_verdict` of its test "auglocal vs <baseline>" (over
    the middle and deep layers only), then :func:`all_of`."""
    return all_of([layer_verdict(t.statistic, t.p_adjusted) for t in tests.values()])


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


def welch(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> dict:
    """Mean of ``a`` − mean of ``b`` (seeds of two methods: (seeds,) or (seeds, L) each) with
    Welch's t-test: its ``level`` interval and two-sided p, floats or (L,) arrays (NaN where
    neither varies over its seeds: no test)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    untestable = (a.std(axis=0) == 0) & (b.std(axis=0) == 0)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on seeds that barely vary
        result = scipy_stats.ttest_ind(a, b, equal_var=False, axis=0)
        interval = result.confidence_interval(level)
    numbers = {"difference": a.mean(axis=0) - b.mean(axis=0), "low": interval.low,
               "high": interval.high, "p": result.pvalue}
    numbers = {k: np.where(untestable & (k != "difference"), math.nan, v)
               for k, v in numbers.items()}
    return {k: float(v) if a.ndim == 1 else v for k, v in numbers.items()}


def welch_family(values: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]],
                 layers: Sequence[str], what: str) -> dict[tuple[str, str], LayerTest]:
    """Per pair (first, second), per layer Welch's t-test of first − second over seeds
    (``values``: name → (seeds, L), positive for the claim), p Holm-adjusted over every layer
    of every pair at once: the family of one claim."""
    results = [welch(values[first], values[second]) for first, second in pairs]
    adjusted = holm(np.stack([r["p"] for r in results]))
    test = f"Welch t-test over seeds, Holm over {adjusted.size} tests"
    return {(first, second): LayerTest(
                question=f"{first} above {second} ({what})", first=first, second=second,
                layers=tuple(layers), statistic=r["difference"], p=r["p"], p_adjusted=a,
                test=test, smallest_p=0.0)
            for (first, second), r, a in zip(pairs, results, adjusted)}


def ahead_tests(values: Mapping[str, np.ndarray], layers: Sequence[str], what: str
                ) -> dict[str, LayerTest]:
    """Per baseline, the test "auglocal above <baseline>" of :func:`welch_family` over all
    baselines (``values``: method → (seeds, L))."""
    tests = welch_family(values, [("auglocal", b) for b in BASELINES], layers, what)
    return {b: tests["auglocal", b] for b in BASELINES}


def separability_tests(probe_acc: Mapping[str, np.ndarray], layers: Sequence[str]
                       ) -> tuple[dict[str, LayerTest], dict[str, LayerTest]]:
    """Per baseline, "<baseline> above bp" (greedy) and "<baseline> above auglocal" (AugLocal
    BP-like) in probe accuracy (``probe_acc``: method → (seeds, L) at ``layers``), one
    :func:`welch_family`."""
    family = welch_family(probe_acc, [(b, other) for other in ("bp", "auglocal")
                                      for b in BASELINES], layers, "early probe accuracy")
    return ({b: family[b, "bp"] for b in BASELINES},
            {b: family[b, "auglocal"] for b in BASELINES})


def seed_values(groups: SeedGroups, method: str) -> np.ndarray:
    """(J, L): each of ``method``'s J seeds compared with the reference, averaged over the
    reference's seeds, in "more alike" units (distances negated)."""
    values = groups.groups[method].values.mean(axis=0)
    return values if groups.direction == "similarity" else -values


def alike_tests(groups: SeedGroups, deep: np.ndarray) -> dict[str, LayerTest]:
    """Per baseline, the test "auglocal more like the reference than <baseline>" at the
    layers ``deep`` (L,) bool: :func:`ahead_tests` of each seed's mean over the reference's."""
    values = {m: seed_values(groups, m)[:, deep] for m in ("auglocal", *BASELINES)}
    layers = [l for l, d in zip(groups.layers, deep) if d]
    return ahead_tests(values, layers, f"{groups.label} to {groups.reference}")


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
    versus, robust = alike_tests(result.cka, deep), alike_tests(result.procrustes, deep)
    layers = [l for l, e in zip(result.layers, early) if e]
    greedy, bp_like = separability_tests({m: a[:, early] for m, a in result.probe_acc.items()},
                                         layers)
    return {
        "accuracy": {"verdict": accuracy_verdict(accuracy["auglocal"]["low"],
                                                 accuracy["auglocal"]["high"]),
                     "vs_bp": accuracy, "test_acc": acc},
        "memory": {"verdict": memory_verdict(min(savings["auglocal"]),
                                             max(savings["auglocal"])),
                   "saving_range": {m: [min(s), max(s)] for m, s in savings.items()},
                   "step_mib": memory},
        "cka": {"verdict": cka_verdict(versus),
                "procrustes_verdict": cka_verdict(robust),
                "per_baseline": {b: layer_verdict(t.statistic, t.p_adjusted)
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
