"""CKA and linear probes with ``device="cuda"`` against the same calls on this machine's CPU.

    python benchmarks/device_speed.py [--device cuda] [--n 4000] [--probe-n 10000]

Inputs are synthetic, so no dataset is needed: 16 layers per side shaped like a ResNet-32's
``flatten`` activations scaled down (widths 4096 ×6, 2048 ×5, 1024 ×5) with a shared signal,
and a 10-class probe problem of D = 3136 features (a 16×14×14 ``flatten`` layer). Each is
computed on the CPU (all its threads) and on ``--device``, in the same process:

* full linear CKA, 16×16, on n rows (``cka_matrix``), and minibatch CKA in batches of 500;
* one ``LinearProbe`` fit (6 Cs, 3 folds, refit) of the probe problem, float32.

Prints seconds, the ratio CPU / device, and the agreement of the results (largest CKA
difference; chosen C and test accuracy of the probes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from repsim.cka import cka_matrix
from repsim.probe import LinearProbe

WIDTHS = (4096,) * 6 + (2048,) * 5 + (1024,) * 5


def layers(n: int, seed: int, signal: np.ndarray) -> dict[str, np.ndarray]:
    """16 float32 layers (n, p): a random map of the shared signal (n, 64) plus noise."""
    rng = np.random.default_rng(seed)
    return {f"l{i:02d}": (signal @ rng.standard_normal((64, p), dtype=np.float32)
                          + rng.standard_normal((n, p), dtype=np.float32))
            for i, p in enumerate(WIDTHS)}


def probe_problem(n: int, dim: int = 3136, classes: int = 10, seed: int = 0):
    """(x_train, y_train, x_test, y_test): classes that differ along 20 directions."""
    rng = np.random.default_rng(seed)
    means = 0.3 * rng.standard_normal((classes, 20), dtype=np.float32)
    mix = rng.standard_normal((20, dim), dtype=np.float32) / 5
    y = rng.integers(0, classes, 2 * n)
    x = (means[y] + rng.standard_normal((2 * n, 20), dtype=np.float32)) @ mix \
        + rng.standard_normal((2 * n, dim), dtype=np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def timed(fn, device: str):
    """(seconds, result) of fn(device), synchronising the device around it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=4000, help="rows for CKA (4000)")
    p.add_argument("--probe-n", type=int, default=10000, help="train = test rows (10000)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device}")
    signal = np.random.default_rng(99).standard_normal((args.n, 64), dtype=np.float32)
    a, b = layers(args.n, 0, signal), layers(args.n, 1, signal)
    x, y, x_test, y_test = probe_problem(args.probe_n)
    jobs = {
        f"full linear CKA 16×16, n={args.n}": lambda d: cka_matrix(a, b, device=d).matrix,
        f"minibatch CKA 16×16, n={args.n}, batch 500":
            lambda d: cka_matrix(a, b, batch_size=500, device=d).matrix,
        f"LinearProbe, {args.probe_n}×3136, 10 classes":
            lambda d: LinearProbe(device=d, threads=None).fit(x, y),
    }
    timed(lambda d: cka_matrix({"w": a["l15"][:64]}, {"w": b["l15"][:64]}, device=d),
          args.device)  # start the device (context, kernels) outside the timings
    print("| job | CPU s | device s | CPU / device | agreement |")
    print("|---|---:|---:|---:|---|")
    for name, job in jobs.items():
        cpu_s, cpu = timed(job, "cpu")
        dev_s, dev = timed(job, args.device)
        if isinstance(cpu, LinearProbe):
            agree = (f"C {cpu.C_:g} / {dev.C_:g}, test acc {cpu.score(x_test, y_test):.4f} / "
                     f"{dev.score(x_test, y_test):.4f}")
        else:
            agree = f"max |diff| {np.abs(cpu - dev).max():.1e}"
        print(f"| {name} | {cpu_s:.2f} | {dev_s:.2f} | {cpu_s / dev_s:.1f} | {agree} |")


if __name__ == "__main__":
    main()
