"""The verdicts of ``analyses.reproduce``: each claim of the AugLocal paper decided from the
numbers of one architecture by a stated rule, and the numbers behind it.

The rules (small pure functions, each outcome reachable and tested): :func:`accuracy_verdict`
(the Welch interval of AugLocal − BP at or above −:data:`ACCURACY_MARGIN`),
:func:`memory_verdict` (a step-memory saving of at least :data:`MEMORY_SAVING`),
:func:`cka_verdict` (the tests of AugLocal against each baseline in the middle and deep
layers) and :func:`separability_verdict` (the baselines' early layers above BP's and
AugLocal's, Welch over seeds, Holm over the early layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
