"""The verdicts of ``analyses.reproduce``: each claim of the AugLocal paper decided from the
numbers of one architecture by a stated rule, and the numbers behind it.

The rules (small pure functions, each outcome reachable and tested): :func:`accuracy_verdict`
(the Welch interval of AugLocal − BP at or above −:data:`ACCURACY_MARGIN`),
:func:`memory_verdict` (a step-memory saving of at least :data:`MEMORY_SAVING`), AugLocal
against each baseline in the middle and deep layers (CKA), and the baselines' early layers
above BP's and AugLocal's (separability).

The last two are decided on **primary endpoints**, one number per network fixed before the
run (:func:`deep_endpoint`: a seed's layer-matched CKA to BP, averaged over BP's seeds and
over the middle and deep layers; :func:`early_endpoint`: a seed's linear-probe accuracy
averaged over the early layers, minus BP's), so a claim is a handful of Welch t-tests over
seeds (one per baseline, two per baseline for separability) with Holm's correction over
them, not 30 per-layer tests: each claim's verdict is wrong with probability at most
:data:`~repsim.stats.groups.ALPHA` when the methods do not differ (simulated in the tests).
Each test carries its effect (the difference of means) with its Welch interval and its
**power**: the smallest true difference it would have detected with probability
:data:`POWER` (:func:`min_detectable`), so "not distinguishable" says how much could have
been seen. The per-layer tests (:func:`welch_family`, Holm over every layer and baseline,
judged by :func:`cka_verdict` and :func:`separability_verdict`) stay as secondary results.
Welch rather than the exact seed-label permutation tests of :mod:`analyses.cka`: with J seeds
per method those cannot go below p = 2 / C(2J, J) (0.1 at J = 3, 0.002 at J = 6); they stay
in ``tests.csv`` as the distribution-free check.
"""

from __future__ import annotations

import functools
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
POWER = 0.8                  # of the smallest detectable difference printed beside a verdict
POWER_DRAWS = 40_000         # simulated tests behind each detectable difference

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


# ------------------------------------------------------------------ primary endpoints


def min_detectable(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = ALPHA,
                   power: float = POWER, draws: int = POWER_DRAWS) -> float:
    """The smallest true difference of means that Welch's two-sided t-test at level ``alpha``
    detects with probability ``power``, for normal seeds of spread ``sd_a``, ``sd_b``
    (standard deviations) and counts ``n_a``, ``n_b``. 0 where neither side varies (any
    difference is seen), NaN where a side has one seed.

    Computed by simulating the test itself on ``draws`` fixed draws (the difference of means
    and the two sample variances, independent under normality; the same draws for every
    difference, so power is monotone in it), solved by bisection: exact up to a Monte-Carlo
    error of about 0.002 in power. The textbook shortcut, a noncentral t with the
    Welch–Satterthwaite degrees of freedom of the true spreads, ignores that the test
    estimates its degrees of freedom and claims 0.80 where the test has 0.775 at 6 + 6
    seeds."""
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if min(n_a, n_b) < 2 or not math.isfinite(va + vb):
        return math.nan
    if va + vb == 0:
        return 0.0
    rng = np.random.default_rng(0)
    error = rng.standard_normal(draws) * math.sqrt(va + vb)
    sa = va * rng.chisquare(n_a - 1, draws) / (n_a - 1)  # sample variance / n, per side
    sb = vb * rng.chisquare(n_b - 1, draws) / (n_b - 1)
    df = (sa + sb) ** 2 / (sa ** 2 / (n_a - 1) + sb ** 2 / (n_b - 1))
    critical = scipy_stats.t.ppf(1 - alpha / 2, df) * np.sqrt(sa + sb)

    def shortfall(delta: float) -> float:
        return float(np.mean(np.abs(delta + error) > critical)) - power

    high = math.sqrt(va + vb)
    while shortfall(high) < 0:
        high *= 2
    low = 0.0
    while high - low > 1e-6 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if shortfall(middle) < 0 else (low, middle)
    return high


@dataclass(frozen=True)
class EndpointTest:
    """One Welch t-test of a primary endpoint, first − second over seeds: the ``difference``
    with its ``low``/``high`` interval (:data:`LEVEL`), ``p`` and ``p_adjusted`` (Holm over the
    claim's tests), the seeds' ``spreads`` (standard deviations) and counts ``seeds``, and
    ``alpha_per_test``, the level Holm's first step asks of each test of the family."""

    first: str
    second: str
    difference: float
    low: float
    high: float
    p: float
    p_adjusted: float
    spreads: tuple[float, float]
    seeds: tuple[int, int]
    alpha_per_test: float

    @property
    def verdict(self) -> str:
        """:func:`layer_verdict` of this one test."""
        return layer_verdict(np.array([self.difference]), np.array([self.p_adjusted]))

    @functools.cached_property
    def detectable(self) -> float:
        """The smallest difference detected with :data:`POWER` at ``alpha_per_test``
        (:func:`min_detectable` at the observed spreads), so it holds whatever the family's
        other tests show."""
        (sd_a, sd_b), (n_a, n_b) = self.spreads, self.seeds
        return min_detectable(sd_a, n_a, sd_b, n_b, self.alpha_per_test)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("first", "second", "difference", "low", "high",
                                              "p", "p_adjusted", "detectable",
                                              "alpha_per_test", "verdict")} | {
            "spreads": list(self.spreads), "seeds": list(self.seeds)}


def endpoint_family(values: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]]
                    ) -> dict[tuple[str, str], EndpointTest]:
    """Per pair (first, second), Welch's t-test of first − second of the endpoint ``values``
    (name → (seeds,)), Holm over the pairs."""
    results = [welch(values[first], values[second]) for first, second in pairs]
    adjusted = holm(np.array([r["p"] for r in results]))
    tests = {}
    for (first, second), r, q in zip(pairs, results, adjusted):
        a, b = np.asarray(values[first], float), np.asarray(values[second], float)
        tests[first, second] = EndpointTest(
            first, second, r["difference"], r["low"], r["high"], r["p"], float(q),
            (float(a.std(ddof=1)), float(b.std(ddof=1))), (len(a), len(b)),
            ALPHA / len(pairs))
    return tests


def deep_endpoint(groups: SeedGroups, deep: np.ndarray) -> dict[str, np.ndarray]:
    """Per compared method, (J,): each seed's layer-matched value with the reference
    (averaged over the reference's seeds, :func:`seed_values`), averaged over the layers
    ``deep`` (L,) bool; in "more alike" units (distances negated)."""
    return {m: seed_values(groups, m)[:, deep].mean(axis=1) for m in groups.groups}


def early_endpoint(probe_acc: Mapping[str, np.ndarray], early: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Per method, (seeds,): each seed's linear-probe accuracy averaged over the layers
    ``early`` (L,) bool, minus the mean of BP's seeds' (so BP's endpoint averages 0)."""
    means = {m: np.asarray(a, float)[:, early].mean(axis=1) for m, a in probe_acc.items()}
    return {m: v - means["bp"].mean() for m, v in means.items()}


def primary_cka_tests(endpoint: Mapping[str, np.ndarray]) -> dict[str, EndpointTest]:
    """Per baseline, "auglocal above <baseline>" on the deep endpoint, Holm over the
    baselines."""
    tests = endpoint_family(endpoint, [("auglocal", b) for b in BASELINES])
    return {b: tests["auglocal", b] for b in BASELINES}


def primary_separability_tests(endpoint: Mapping[str, np.ndarray]
                               ) -> tuple[dict[str, EndpointTest], dict[str, EndpointTest]]:
    """Per baseline, "<baseline> above bp" (greedy) and "<baseline> above auglocal" (AugLocal
    BP-like) on the early endpoint, Holm over all six tests."""
    tests = endpoint_family(endpoint, [(b, other) for other in ("bp", "auglocal")
                                       for b in BASELINES])
    return ({b: tests[b, "bp"] for b in BASELINES}, {b: tests[b, "auglocal"] for b in BASELINES})


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
    """The four claims of one architecture: per claim its verdict and the numbers behind it
    (the primary tests decide; the per-layer tests are secondary)."""
    acc = {m: [r["test_acc"] for r in rows] for m, rows in result.rows.items()}
    memory = {m: [r["step_mib"] for r in rows] for m, rows in result.rows.items()}
    accuracy = {m: welch(acc[m], acc["bp"]) for m in METHODS[1:]}
    savings = {m: [1 - x / y for x in memory[m] for y in memory["bp"]] for m in METHODS[1:]}
    deep = result.rel_depth > EARLY + 1e-9
    early = ~deep
    alike = deep_endpoint(result.cka, deep)
    primary = primary_cka_tests(alike)
    robust = primary_cka_tests(deep_endpoint(result.procrustes, deep))
    separable = early_endpoint(result.probe_acc, early)
    greedy, bp_like = primary_separability_tests(separable)
    versus = alike_tests(result.cka, deep)
    layers = [l for l, e in zip(result.layers, early) if e]
    greedy_layers, bp_like_layers = separability_tests(
        {m: a[:, early] for m, a in result.probe_acc.items()}, layers)
    return {
        "accuracy": {"verdict": accuracy_verdict(accuracy["auglocal"]["low"],
                                                 accuracy["auglocal"]["high"]),
                     "vs_bp": accuracy, "test_acc": acc},
        "memory": {"verdict": memory_verdict(min(savings["auglocal"]),
                                             max(savings["auglocal"])),
                   "saving_range": {m: [min(s), max(s)] for m, s in savings.items()},
                   "step_mib": memory},
        "cka": {"verdict": all_of([t.verdict for t in primary.values()]),
                "procrustes_verdict": all_of([t.verdict for t in robust.values()]),
                "per_baseline": {b: t.verdict for b, t in primary.items()},
                "primary": {b: t.to_dict() for b, t in primary.items()},
                "procrustes_primary": {b: t.to_dict() for b, t in robust.items()},
                "endpoint": {m: v.tolist() for m, v in alike.items()},
                "secondary_verdict": cka_verdict(versus),
                "secondary_tests": {b: test_numbers(t) for b, t in versus.items()},
                "mean": {m: g.mean.tolist() for m, g in result.cka.groups.items()},
                "deep_layers": [l for l, d in zip(result.layers, deep) if d]},
        "separability": {"verdict": all_of([t.verdict for t in [*greedy.values(),
                                                                  *bp_like.values()]]),
                         "primary_greedy": {b: t.to_dict() for b, t in greedy.items()},
                         "primary_bp_like": {b: t.to_dict() for b, t in bp_like.items()},
                         "per_baseline": {b: all_of([greedy[b].verdict, bp_like[b].verdict])
                                          for b in BASELINES},
                         "endpoint": {m: v.tolist() for m, v in separable.items()},
                         "secondary_verdict": separability_verdict(greedy_layers,
                                                                   bp_like_layers),
                         "secondary_greedy": {b: test_numbers(t)
                                              for b, t in greedy_layers.items()},
                         "secondary_bp_like": {b: test_numbers(t)
                                               for b, t in bp_like_layers.items()},
                         "early_layers": layers,
                         "mean": {m: a.mean(0).tolist() for m, a in result.probe_acc.items()}},
    }


def test_numbers(test: LayerTest) -> dict:
    """A layer test as data: per layer its statistic and Holm-adjusted p."""
    return {"test": test.test, "layers": list(test.layers),
            "statistic": [float(s) for s in test.statistic],
            "p_adjusted": [float(p) for p in test.p_adjusted]}
