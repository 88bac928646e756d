"""Seed groups: several trained networks per method, compared layer by layer with a
reference method's seeds (e.g. backprop's), and the tests of the researcher's questions.

With R reference seeds and J seeds of a method, V[s, t, l] is the layer-matched value (a
measure of layer l of network s with layer l of network t):

* the method's value per layer is the mean over all R·J (reference, method) pairs, with a
  Student-t interval over the J method seeds of their mean over reference seeds (seeds are
  the independent replicates; one method seed falls back to the jackknife over inputs);
* the **noise ceiling** is the distribution over the R(R−1)/2 pairs of distinct reference
  seeds: how alike two runs of the reference itself are;
* **method vs ceiling** (needs R ≥ 2): is the method's layer less like the reference than
  another reference seed is? Statistic: mean over (reference, method) pairs − mean over
  reference pairs. Test: the exact seed-label permutation test: under the null the R + J
  networks are exchangeable, so the statistic is recomputed for every way of calling R of
  them "reference" (all C(R+J, R) ways, or 10,000 random ones when there are more), and p is
  the share at or below the observed one. With few seeds the smallest possible p is
  1/C(R+J, R) (0.05 for 3 + 3 seeds), and verdicts say so;
* **method X vs method Y**: the same test of mean(reference, X) − mean(reference, Y) over
  relabellings of the X and Y seeds, two-sided. With one seed each, seed variation cannot be
  estimated, and it is the dominant noise (two backprop seeds differ by 0.03–0.1 CKA in the
  middle layers where inputs give standard errors of 0.001): the test is reported as not
  testable (no p, never counted as significant) unless ``input_test=True`` asks for a z-test
  of the difference with its delete-one jackknife standard error over inputs, which says that
  seed variation is left out.

p-values are Holm-adjusted over the layers of each test. Intervals stay inside the measure's
range (:func:`~repsim.stats.intervals.t_interval` on the logit scale); the ceiling of a single
reference pair has no range (NaN bounds, "one pair: no interval").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from repsim.measures.base import get_measure
from repsim.measures.matrix import similarity_matrix
from repsim.stats.intervals import check_level, t_interval
from repsim.stats.tests import holm

__all__ = ["Ceiling", "GroupSimilarity", "LayerTest", "SeedGroups", "seed_groups"]

NOT_TESTABLE = ("not testable with one seed per method (seed variation, the dominant noise, "
                "cannot be estimated; an input-only z-test: input_test=True / --input-test)")
MAX_RELABELLINGS = 10_000  # exact enumeration up to this many, random relabellings beyond
ALPHA = 0.05               # significance level of the one-line verdicts


@dataclass(frozen=True)
class GroupSimilarity:
    """One method's seeds against the reference's: ``values`` (R, J, L), ``mean``/``low``/
    ``high`` (L,) at ``level``, ``interval`` how the bounds were computed."""

    method: str
    values: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    interval: str


@dataclass(frozen=True)
class Ceiling:
    """The reference's noise ceiling: ``values`` (R(R−1)/2, L) over pairs of distinct
    reference seeds; ``mean``, ``low``, ``high`` (L,) their mean and range."""

    values: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class LayerTest:
    """One question asked of every layer: ``statistic`` (L,) (in "more alike" units: a
    difference of similarities, or minus a difference of distances), ``p`` and
    ``p_adjusted`` (Holm over layers), ``test`` its name, ``smallest_p`` the smallest p it
    can reach."""

    question: str
    first: str
    second: str
    layers: tuple[str, ...]
    statistic: np.ndarray
    p: np.ndarray
    p_adjusted: np.ndarray
    test: str
    smallest_p: float
    testable: bool = True  # False: no test was possible (``test`` says why), p is NaN

    def verdicts(self) -> list[str]:
        """One line per layer, e.g. "s2b3: auglocal below ceiling, p = 0.003 (Holm)"."""
        lines = []
        for name, stat, p in zip(self.layers, self.statistic, self.p_adjusted):
            if not self.testable:
                lines.append(f"{name}: {self.first} vs {self.second}: {self.test}")
                continue
            if np.isnan(p):
                lines.append(f"{name}: {self.first} vs {self.second}: undefined (NaN values)")
                continue
            if p <= ALPHA:
                relation = ("below" if stat < 0 else "above") if self.second == "ceiling" else \
                    (f"{'less' if stat < 0 else 'more'} like the reference than")
                verdict = f"{self.first} {relation} {self.second}"
            else:
                verdict = f"{self.first} not distinguishable from {self.second}"
                if self.smallest_p > ALPHA:
                    verdict += f" (with these seeds p cannot go below {self.smallest_p:.2g})"
            lines.append(f"{name}: {verdict}, p = {p:.3g} (Holm; {self.test})")
        return lines


@dataclass(frozen=True)
class SeedGroups:
    """The layer-matched comparison of seed groups: ``groups`` by method, the reference's
    ``ceiling`` (None with one reference seed) and ``tests`` (vs ceiling, then pairwise)."""

    layers: tuple[str, ...]
    reference: str
    measure: str
    label: str
    direction: str
    groups: dict[str, GroupSimilarity]
    ceiling: Ceiling | None
    tests: list[LayerTest]

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (method, layer) with mean, low, high, the ceiling and
        each test's p and p_adjusted."""
        rows = []
        for name, group in self.groups.items():
            for i, layer in enumerate(self.layers):
                row = {"method": name, "layer": layer, "depth": i, "mean": group.mean[i],
                       "low": group.low[i], "high": group.high[i], "seeds": group.values.shape[1]}
                if self.ceiling is not None:
                    row.update(ceiling_mean=self.ceiling.mean[i], ceiling_low=self.ceiling.low[i],
                               ceiling_high=self.ceiling.high[i])
                for test in self.tests:
                    if test.first == name:
                        key = f"vs_{test.second}"
                        row.update({f"p_{key}": test.p[i], f"p_adjusted_{key}": test.p_adjusted[i]})
                rows.append(row)
        return pd.DataFrame(rows)


def seed_groups(reference: Sequence[Any], methods: Mapping[str, Sequence[Any]], *,
                reference_name: str = "reference", measure: str = "linear_cka",
                level: float = 0.95, reduction: str | None = None,
                layers: Sequence[str] | None = None, device: str = "cpu", seed: int = 0,
                input_test: bool = False, **params: Any) -> SeedGroups:
    """Layer-matched ``measure`` of each method's seeds with the ``reference`` seeds, the
    ceiling, and the tests of each method vs the ceiling and of each pair of methods.

    ``reference``: activation sources (one per seed) of the reference method; ``methods``:
    name → sources of each compared method's seeds. All on the same inputs, with equally many
    layers (``layers`` selects by name). ``seed`` draws random relabellings beyond
    :data:`MAX_RELABELLINGS`. ``input_test``: test two one-seed methods against each other
    over inputs (seed variation left out) instead of calling them not testable."""
    check_level(level)
    measure_ = get_measure(measure, **params)
    _check_groups(reference, methods)
    networks = [*reference, *(s for group in methods.values() for s in group)]
    owner = [reference_name] * len(reference) + [m for m, g in methods.items() for _ in g]
    values, names, leave_one_out = _pair_values(networks, owner, measure_, reduction, layers,
                                                device, level, single=_single_seeded(methods))
    sign = 1.0 if measure_.direction == "similarity" else -1.0
    ref = np.arange(len(reference))
    index = {m: np.flatnonzero(np.array(owner) == m) for m in methods}
    groups = {m: _group(m, values[np.ix_(ref, idx)], leave_one_out.get(m), level,
                        measure_.value_range) for m, idx in index.items()}
    ceiling = _ceiling(values, ref) if len(reference) >= 2 else None
    rng = np.random.default_rng(seed)
    tests = [_vs_ceiling(m, values, ref, idx, sign, names, rng) for m, idx in index.items()
             if ceiling is not None]
    tests += [_vs_method(x, y, values, ref, index, sign, names, leave_one_out, rng,
                         input_test) for x, y in itertools.combinations(methods, 2)]
    return SeedGroups(layers=names, reference=reference_name, measure=measure_.name,
                      label=measure_.label, direction=measure_.direction, groups=groups,
                      ceiling=ceiling, tests=tests)


def _check_groups(reference: Sequence[Any], methods: Mapping[str, Sequence[Any]]) -> None:
    if len(reference) < 1 or not methods or any(len(g) < 1 for g in methods.values()):
        raise ValueError("seed groups need at least one reference network and at least one "
                         "network for every compared method")


def _single_seeded(methods: Mapping[str, Sequence[Any]]) -> set[str]:
    return {m for m, g in methods.items() if len(g) == 1}


def _pair_values(networks, owner, measure, reduction, layers, device, level, single):
    """(N, N, L) layer-matched values of every pair of networks that a statistic uses (the
    others NaN), the layer names, and for one-seed methods the (n, L) jackknife values of
    the first reference network with them."""
    count = len(networks)
    values = np.full((count, count, 0), np.nan)
    names: tuple[str, ...] | None = None
    leave_one_out = {}
    for s, t in itertools.combinations(range(count), 2):
        if owner[s] != owner[0] and owner[s] != owner[t]:
            continue  # two different compared methods: no statistic reads this pair
        with_interval = s == 0 and owner[t] in single
        result = similarity_matrix(networks[s], networks[t], measure, reduction=reduction,
                                   layers_a=layers, layers_b=layers, device=device,
                                   level=level if with_interval else None)
        names = _check_layers(result, names, owner[s], owner[t])
        if values.shape[2] == 0:
            values = np.full((count, count, len(names)), np.nan)
        values[s, t] = values[t, s] = result.diagonal()
        if with_interval:
            leave_one_out[owner[t]] = result
    return values, names, leave_one_out


def _check_layers(result, names, first: str, second: str) -> tuple[str, ...]:
    if len(result.layers_a) != len(result.layers_b):
        raise ValueError(f"{first} has {len(result.layers_a)} layers and {second} "
                         f"{len(result.layers_b)}: a layer-matched comparison needs networks "
                         "of one architecture; compare groups of the same architecture, or "
                         "select matching layers with --layers")
    if names is not None and len(names) != len(result.layers_a):
        raise ValueError(f"the networks of {second} have {len(result.layers_a)} layers and "
                         f"earlier ones {len(names)}: seed groups need one architecture")
    return names or tuple(result.layers_a)


def _group(method: str, values: np.ndarray, single: Any, level: float,
           value_range: tuple[float, float]) -> GroupSimilarity:
    """values (R, J, L): the interval is over the J method seeds (each averaged over the
    reference seeds); with one method seed, over the R reference seeds, or with one of each
    the jackknife over inputs."""
    reference_seeds, method_seeds = values.shape[:2]
    if method_seeds >= 2:
        mean, low, high = t_interval(values.mean(0), level, value_range)
        how = f"Student-t over {method_seeds} seeds of the method"
    elif reference_seeds >= 2:
        mean, low, high = t_interval(values[:, 0], level, value_range)
        how = (f"one seed of the method: Student-t over {reference_seeds} reference seeds "
               "(the method's seed variation not included)")
    else:
        mean = values[0, 0]
        low, high = np.diagonal(single.low).copy(), np.diagonal(single.high).copy()
        how = f"one seed each: {single.uncertainty['interval']} (seed variation not included)"
    return GroupSimilarity(method=method, values=values, mean=mean, low=low, high=high,
                           level=level, interval=how)


def _ceiling(values: np.ndarray, ref: np.ndarray) -> Ceiling:
    """Mean and range over the pairs of distinct reference seeds; one pair has no range
    (NaN bounds)."""
    pairs = np.stack([values[s, t] for s, t in itertools.combinations(ref, 2)])
    if len(pairs) == 1:
        return Ceiling(values=pairs, mean=pairs[0], low=np.full_like(pairs[0], np.nan),
                       high=np.full_like(pairs[0], np.nan))
    return Ceiling(values=pairs, mean=pairs.mean(0), low=pairs.min(0), high=pairs.max(0))


def _relabellings(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(K, count) bool masks choosing ``size`` of ``count`` networks: all of them when there
    are at most :data:`MAX_RELABELLINGS`, else that many at random (the observed one first)."""
    total = math.comb(count, size)
    if total <= MAX_RELABELLINGS:
        chosen = itertools.combinations(range(count), size)
        masks = np.zeros((total, count), dtype=bool)
        for k, members in enumerate(chosen):
            masks[k, list(members)] = True
        return masks
    masks = np.zeros((MAX_RELABELLINGS, count), dtype=bool)
    masks[0, :size] = True
    for k in range(1, MAX_RELABELLINGS):
        masks[k, rng.choice(count, size, replace=False)] = True
    return masks


def _mean_between(values: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(L,) mean of values[s, t] over s in ``first`` and t in ``second``; over the distinct
    pairs of ``first`` when both are the same networks."""
    if np.array_equal(first, second):
        pairs = itertools.combinations(first, 2)
    else:
        pairs = itertools.product(first, second)
    return np.mean([values[s, t] for s, t in pairs], axis=0)


def _vs_ceiling(method, values, ref, idx, sign, names, rng) -> LayerTest:
    pool = np.concatenate([ref, idx])
    sub = values[np.ix_(pool, pool)]
    masks = _relabellings(len(pool), len(ref), rng)
    local = np.arange(len(pool))

    def statistic(mask):
        chosen, rest = local[mask], local[~mask]
        return sign * (_mean_between(sub, chosen, rest) - _mean_between(sub, chosen, chosen))

    observed = statistic(np.arange(len(pool)) < len(ref))
    null = np.stack([statistic(m) for m in masks])
    p = (null <= observed + 1e-12 * np.abs(observed)).mean(0)
    return _test(method, "ceiling", names, observed, p, masks,
                 f"seed-label permutation test, {len(masks)} relabellings, one-sided")


def _vs_method(x, y, values, ref, index, sign, names, leave_one_out, rng, input_test
               ) -> LayerTest:
    pool = np.concatenate([index[x], index[y]])
    if len(pool) == 2 and input_test:
        return _jackknife_difference(x, y, leave_one_out, sign, names)
    if len(pool) == 2:
        nan = np.full(len(names), np.nan)
        observed = sign * (_mean_between(values, ref, index[x]) -
                           _mean_between(values, ref, index[y]))
        return LayerTest(question=f"{x} vs {y}", first=x, second=y, layers=names,
                         statistic=observed, p=nan, p_adjusted=nan,
                         test=NOT_TESTABLE, smallest_p=math.nan, testable=False)
    masks = _relabellings(len(pool), len(index[x]), rng)

    def statistic(mask):
        return sign * (_mean_between(values, ref, pool[mask]) -
                       _mean_between(values, ref, pool[~mask]))

    observed = statistic(np.arange(len(pool)) < len(index[x]))
    null = np.stack([statistic(m) for m in masks])
    p = (np.abs(null) >= np.abs(observed) - 1e-12 * np.abs(observed)).mean(0)
    return _test(x, y, names, observed, p, masks,
                 f"seed-label permutation test, {len(masks)} relabellings, two-sided")


def _jackknife_difference(x, y, leave_one_out, sign, names) -> LayerTest:
    first, second = leave_one_out[x], leave_one_out[y]
    # the two intervals' jackknife standard errors, combined as if independent: the same
    # inputs make them positively correlated, so this se is conservative
    z = scipy_stats.norm.ppf(0.5 + first.uncertainty["level"] / 2)
    se = np.hypot(np.diagonal(first.high - first.low), np.diagonal(second.high - second.low)) \
        / (2 * z)
    observed = sign * (first.diagonal() - second.diagonal())
    p = 2 * scipy_stats.norm.sf(np.abs(observed) / se)
    return LayerTest(question=f"{x} vs {y}", first=x, second=y, layers=names,
                     statistic=observed, p=p, p_adjusted=holm(p),
                     test="z-test over inputs, jackknife se (one seed each: seed variation not "
                          "included)", smallest_p=0.0)


def _test(first, second, names, observed, p, masks, test) -> LayerTest:
    p = np.where(np.isnan(observed), np.nan, p)
    return LayerTest(question=f"{first} vs {second}", first=first, second=second, layers=names,
                     statistic=observed, p=p, p_adjusted=holm(p), test=test,
                     smallest_p=1 / len(masks))
