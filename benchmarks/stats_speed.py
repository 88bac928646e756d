"""Uncertainty of a whole CKA map: intervals and permutation baselines against the point
estimate and against the naive resample-and-recompute loop, side by side in one process.

    python -m benchmarks.stats_speed [--n 2000] [--n-perm 1000] [--threads 2]

Two "ResNet-32s" on Fashion-MNIST: 16 layers each with the flattened widths of its stem and
blocks (16×28×28 ×6, 32×14×14 ×5, 64×7×7 ×5), filled with random float32 activations on the
same n inputs (the timing does not depend on the values). Times

* the point estimate: ``cka_matrix(a, b)`` (biased linear CKA, flatten: 16×16 map);
* intervals: ``cka_matrix(a, b, level=0.95)``: the point estimate plus the delete-one
  jackknife over all n inputs (n leave-one-out maps, in closed form from the Grams);
* the permutation baseline: ``cka_matrix(a, b, n_perm=N)``;
* naive: the same n leave-one-out maps (or N permutations) recomputed from the activations,
  timed for two replicates and extrapolated (labelled so),

and prints each as seconds and as a multiple of the point estimate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

WIDTHS = [16 * 28 * 28] * 6 + [32 * 14 * 14] * 5 + [64 * 7 * 7] * 5


def layers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {f"layer{i}": rng.standard_normal((n, p), dtype=np.float32)
            for i, p in enumerate(WIDTHS)}


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-perm", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from repsim.cka import cka_matrix

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    a, b = layers(rng, args.n), layers(rng, args.n)
    point = timed(lambda: cka_matrix(a, b))
    interval = timed(lambda: cka_matrix(a, b, level=0.95))
    permuted = timed(lambda: cka_matrix(a, b, n_perm=args.n_perm))
    rows = [np.delete(np.arange(args.n), i) for i in range(2)]
    naive_one = timed(lambda: [cka_matrix({k: v[r] for k, v in a.items()},
                                          {k: v[r] for k, v in b.items()}) for r in rows]) / 2
    print(f"16×16 linear CKA map, flatten, n={args.n}, {args.threads} thread(s)")
    print("| what | seconds | × point estimate |")
    print("|---|---:|---:|")
    for name, seconds in [
        ("point estimate", point),
        (f"+ jackknife intervals ({args.n} leave-one-out maps)", interval),
        (f"+ permutation baseline ({args.n_perm} shuffles)", permuted),
        (f"naive jackknife: {args.n} maps recomputed (extrapolated from 2)",
         naive_one * args.n),
        (f"naive permutations: {args.n_perm} maps recomputed (extrapolated)",
         naive_one * args.n_perm),
    ]:
        print(f"| {name} | {seconds:.1f} | {seconds / point:.1f} |")


if __name__ == "__main__":
    main()
