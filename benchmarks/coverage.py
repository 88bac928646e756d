"""Coverage of nominal 95 % intervals of linear CKA, by simulation (the thorough version of
the coverage tests in tests/test_stats.py).

    python -m benchmarks.coverage [--draws 200] [--boots 200]

Gaussian latent-factor data with a known population CKA (:mod:`repsim.stats.simulate`), in
regimes from p ≪ n to p ≫ n. For each regime and estimator (biased, debiased) it prints the
share of draws whose interval covers the population value, for the toolkit's interval (the
delete-one jackknife, :func:`repsim.stats.cka_ci`) and, for contrast, the percentile and
basic bootstrap intervals (rows resampled with replacement, ``--boots`` replicates), and the
share of draws in which :class:`repsim.stats.BiasWarning` was raised.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

REGIMES = [(50, 20, 0.3), (100, 10, 0.5), (200, 50, 0.5), (100, 100, 0.5), (200, 200, 0.2),
           (100, 1000, 0.2)]  # (n, p, signal)


def numpy_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Plain NumPy linear CKA (Gram form) for the bootstrap baseline's many small calls."""
    def hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
        n = len(k)
        if not debiased:
            kc = k - k.mean(0) - k.mean(1)[:, None] + k.mean()
            return float((kc * l).sum())
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))  # noqa: E741
        return float(((k * l).sum() + k.sum() * l.sum() / ((n - 1) * (n - 2))
                      - 2 / (n - 2) * k.sum(0) @ l.sum(1)) / (n * (n - 3)))
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def bootstrap_cover(x, y, truth, debiased, boots, rng) -> tuple[bool, bool]:
    """Whether the percentile and the basic bootstrap interval cover ``truth``."""
    estimate = numpy_cka(x, y, debiased)
    values = []
    for _ in range(boots):
        rows = rng.integers(0, len(x), len(x))
        values.append(numpy_cka(x[rows], y[rows], debiased))
    low, high = np.quantile(values, [0.025, 0.975])
    return low <= truth <= high, 2 * estimate - high <= truth <= 2 * estimate - low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--boots", type=int, default=200)
    args = parser.parse_args()
    from repsim.stats import BiasWarning, cka_ci
    from repsim.stats.simulate import latent_factor_pair

    print(f"coverage of nominal 95 % intervals of linear CKA, {args.draws} draws per row")
    print("| n | p | population CKA | estimator | jackknife (ours) | bias warned | "
          "percentile bootstrap | basic bootstrap |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for n, p, signal in REGIMES:
        draw, truth = latent_factor_pair(np.random.default_rng(n + p), n, p, signal=signal)
        for debiased in (False, True):
            rng = np.random.default_rng(1)
            hits = np.zeros(4)
            for _ in range(args.draws):
                x, y = draw(rng)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", BiasWarning)
                    ci = cka_ci(x, y, debiased=debiased)
                hits += [ci.low <= truth <= ci.high,
                         any(w.category is BiasWarning for w in caught),
                         *bootstrap_cover(x, y, truth, debiased, args.boots, rng)]
            share = hits / args.draws
            print(f"| {n} | {p} | {truth:.3f} | {'debiased' if debiased else 'biased'} | "
                  + " | ".join(f"{v:.2f}" for v in share) + " |", flush=True)


if __name__ == "__main__":
    main()
