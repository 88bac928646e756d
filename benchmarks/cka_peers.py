"""repsim.cka against ckatorch and torch-cka on two ResNet-32s (16 layers each, ``flatten``).

    python benchmarks/cka_peers.py                       # a few minutes on 2 cores
    python benchmarks/cka_peers.py --n 2000 --n-minibatch 10000 --peer-pairs all

Two randomly initialised ResNet-32s (seeds 0 and 1, width 16) see the same random 32×32 inputs;
forward hooks on ``model.layer_names`` give 16 layers each (16×32×32 ×6, 32×16×16 ×5,
64×8×8 ×5 features).

(a) Full linear CKA, 16×16, on n inputs: ``cka_matrix`` vs a loop of ``ckatorch.cka_base`` over
    the pairs. ckatorch's time per pair depends only on the two widths, so by default one pair
    per width combination (9) is timed and the 256-pair total extrapolated from them.
(b) Minibatch CKA on --n-minibatch inputs in batches of --batch-size: forward passes streamed
    into ``MinibatchCKA`` (once at each ``precision``: float64, and float32 Grams with float64
    sums) vs torch-cka's ``CKA.compare`` (forward passes included in both, as a user runs
    them). torch-cka runs on the first --peer-batches batches and its total is extrapolated
    per batch; values are compared on those batches.
(c) The machine's float64 and float32 GEMM rates, measured in the same run, and our CKA time as
    a fraction of the GEMM bound (the FLOPs our method needs / the GEMM rate of the dtype its
    Grams are formed in); for (b) also the seconds of the forward passes alone.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka draws a progress bar per compare()

import ckatorch  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_cka  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from repsim.cka import MinibatchCKA, cka_matrix  # noqa: E402
from training.models import build_model  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One comparison: seconds for us and the peer, and how far their values are apart."""

    task: str
    setting: str
    ours_s: float
    peer: str
    peer_s: float
    peer_timing: str  # "measured" or how it was extrapolated
    max_abs_diff: float  # ours vs the peer
    ref_diff: float  # ours vs a float64 reference (ckatorch) on sampled pairs


@dataclass(frozen=True)
class Bound:
    """Our CKA time against the GEMM bound for the FLOPs the method needs, at the GEMM rate of
    ``dtype``; ``other_s``: the rest of our time (forward passes), None where there is none."""

    task: str
    gflop: float
    ours_cka_s: float
    dtype: torch.dtype = torch.float64
    other_s: float | None = None


def models(seeds=(0, 1)) -> list[nn.Module]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(build_model("resnet32", width=16, in_channels=3, num_classes=10).eval())
    return out


@contextmanager
def hooked(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record each of ``model.layer_names``' outputs, flattened to (B, p) float32, per forward."""
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: store.__setitem__(name, out.flatten(1).float()))
        for name in model.layer_names]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def activations(model: nn.Module, inputs: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    """Layer name → (n, p) float32 activations of all inputs."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in model.layer_names}
    with hooked(model) as store, torch.inference_mode():
        for start in range(0, len(inputs), batch):
            model(inputs[start:start + batch])
            for name in parts:
                parts[name].append(store[name].numpy().copy())
    return {name: np.concatenate(p) for name, p in parts.items()}


def gemm_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a (size × size) @ (size × size) product."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    best = min(timed(lambda: a @ b)[1] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def full_flops(widths: list[int], n: int, pairs: int) -> float:
    """Gram form: X Xᵀ as SYRK (n²p FLOPs per layer) plus the (La·n²)×(n²·Lb) pair GEMM."""
    return sum(n * n * p for p in widths) + 2 * pairs * n * n


def bench_full(n: int, batch: int, peer_pairs: str, seed: int) -> tuple[Row, Bound]:
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, 32, 32, generator=gen)
    model_a, model_b = models()
    acts_a, acts_b = activations(model_a, inputs, batch), activations(model_b, inputs, batch)
    result, ours_s = timed(lambda: cka_matrix(acts_a, acts_b))

    names_a, names_b = list(acts_a), list(acts_b)
    pairs = list(itertools.product(range(len(names_a)), range(len(names_b))))
    if peer_pairs == "all":
        sample = {pair: 1 for pair in pairs}
    else:  # one pair per width combination, weighted by how many pairs share it
        groups: dict[tuple[int, int], list] = {}
        for i, j in pairs:
            key = (acts_a[names_a[i]].shape[1], acts_b[names_b[j]].shape[1])
            groups.setdefault(key, []).append((i, j))
        sample = {group[0]: len(group) for group in groups.values()}
    peer_s, diff = 0.0, 0.0
    for (i, j), weight in sample.items():
        x = torch.from_numpy(acts_a[names_a[i]])
        y = torch.from_numpy(acts_b[names_b[j]])
        value, seconds = timed(lambda: float(ckatorch.cka_base(x, y)))
        peer_s += weight * seconds
        diff = max(diff, abs(value - result.matrix[i, j]))
    timing = "measured" if peer_pairs == "all" else f"extrapolated from {len(sample)} pairs"
    widths = [a.shape[1] for a in acts_a.values()] + [b.shape[1] for b in acts_b.values()]
    flops = full_flops(widths, n, len(pairs))
    return (Row("(a) full linear 16×16", f"n={n}", ours_s, "ckatorch.cka_base loop", peer_s,
                timing, diff, diff),
            Bound(f"(a) n={n}", flops / 1e9, ours_s))


def bench_minibatch(n: int, batch: int, peer_batches: int, seed: int,
                    precisions: tuple[str, ...]) -> tuple[list[Row], list[Bound]]:
    """One row and bound per precision of ours, against one run of torch-cka."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, 32, 32, generator=gen)
    labels = torch.zeros(n, dtype=torch.long)
    model_a, model_b = models()
    names_a, names_b = model_a.layer_names, model_b.layer_names

    def ours(stop: int, precision: str) -> tuple[np.ndarray, float, float]:
        """CKA over the first ``stop`` rows: matrix, total seconds, seconds inside update()."""
        acc = MinibatchCKA(names_a, names_b, precision=precision)
        update_s = 0.0
        start_all = time.perf_counter()
        with hooked(model_a) as sa, hooked(model_b) as sb, torch.inference_mode():
            for start in range(0, stop, batch):
                x = inputs[start:start + batch]
                model_a(x)
                model_b(x)
                _, s = timed(lambda: acc.update(sa, sb))
                update_s += s
        matrix, s = timed(acc.compute)
        return matrix, time.perf_counter() - start_all, update_s + s

    sub = min(n, peer_batches * batch)
    peer = torch_cka.CKA(copy.deepcopy(model_a), copy.deepcopy(model_b), "resnet32-seed0",
                         "resnet32-seed1", model1_layers=names_a, model2_layers=names_b)
    loader = DataLoader(TensorDataset(inputs[:sub], labels[:sub]), batch_size=batch)
    _, peer_sub_s = timed(lambda: peer.compare(loader, loader))
    peer_matrix = peer.export()["CKA"].detach().numpy()
    batches_total, batches_sub = -(-n // batch), -(-sub // batch)
    peer_s = peer_sub_s * batches_total / batches_sub
    timing = ("measured" if batches_sub == batches_total
              else f"extrapolated from {batches_sub} of {batches_total} batches")
    flops = batches_total * full_flops(widths(model_a, inputs) + widths(model_b, inputs), batch,
                                       len(names_a) * len(names_b))
    rows, bounds = [], []
    for precision in precisions:
        _, ours_s, ours_cka_s = ours(n, precision)
        ours_sub, _, _ = ours(sub, precision)
        ref_diff = minibatch_reference_diff(model_a, model_b, inputs[:sub], batch, ours_sub)
        setting = f"n={n}, batch={batch}, {precision}"
        rows.append(Row("(b) minibatch 16×16", setting, ours_s, "torch-cka CKA.compare", peer_s,
                        timing, float(np.abs(peer_matrix - ours_sub).max()), ref_diff))
        bounds.append(Bound(f"(b) {setting}", flops / 1e9, ours_cka_s, getattr(torch, precision),
                            ours_s - ours_cka_s))
    return rows, bounds


def minibatch_reference_diff(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor,
                             batch: int, ours: np.ndarray) -> float:
    """Max |ours − ckatorch.cka_batch| (float64 minibatch CKA) over one pair per width pair."""
    acts = [activations(m, inputs, batch) for m in (model_a, model_b)]
    names = [list(a) for a in acts]
    seen, diff = set(), 0.0
    for i, j in itertools.product(range(len(names[0])), range(len(names[1]))):
        x, y = acts[0][names[0][i]], acts[1][names[1][j]]
        if (x.shape[1], y.shape[1]) in seen:
            continue
        seen.add((x.shape[1], y.shape[1]))
        stacked = [torch.from_numpy(v).reshape(-1, batch, v.shape[1]) for v in (x, y)]
        diff = max(diff, abs(float(ckatorch.cka_batch(*stacked)) - ours[i, j]))
    return diff


def widths(model: nn.Module, x: torch.Tensor) -> list[int]:
    """Feature count p of each hooked layer."""
    with hooked(model) as store, torch.inference_mode():
        model(x[:1])
        return [t.shape[1] for t in store.values()]


def table(rows: list[Row]) -> str:
    lines = ["| task | setting | ours (s) | peer | peer (s) | peer timing | speed-up | "
             "max abs diff vs peer | vs float64 ckatorch |",
             "|---|---|---:|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r.task} | {r.setting} | {r.ours_s:.2f} | {r.peer} | {r.peer_s:.1f} | "
              f"{r.peer_timing} | {r.peer_s / r.ours_s:.1f}× | {r.max_abs_diff:.1e} | "
              f"{r.ref_diff:.1e} |" for r in rows]
    return "\n".join(lines)


def bound_table(bounds: list[Bound], rates: dict[torch.dtype, float]) -> str:
    lines = ["| task | GFLOP needed | GEMM rate | GEMM bound (s) | ours, CKA only (s) | "
             "fraction of GEMM rate | ours, forward passes (s) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for b in bounds:
        bound_s = b.gflop / rates[b.dtype]
        other = "–" if b.other_s is None else f"{b.other_s:.2f}"
        lines.append(f"| {b.task} | {b.gflop:.0f} | {str(b.dtype).removeprefix('torch.')} | "
                     f"{bound_s:.2f} | {b.ours_cka_s:.2f} | {bound_s / b.ours_cka_s:.2f} | "
                     f"{other} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="inputs for (a); the issue's: 2000")
    parser.add_argument("--n-minibatch", type=int, default=2000,
                        help="inputs for (b); the issue's: 10000")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--peer-pairs", choices=("sample", "all"), default="sample",
                        help="ckatorch pairs to time in (a): one per width combination, or all 256")
    parser.add_argument("--peer-batches", type=int, default=2,
                        help="batches torch-cka runs in (b); its total is extrapolated from them")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for every run (1: robust on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    dtypes = (torch.float64, torch.float32)
    start = [gemm_gflops(dtype) for dtype in dtypes]
    row_a, bound_a = bench_full(args.n, args.batch_size, args.peer_pairs, args.seed)
    rows_b, bounds_b = bench_minibatch(args.n_minibatch, args.batch_size, args.peer_batches,
                                       args.seed, ("float64", "float32"))
    # the better of the rates before and after: on a shared machine, the one least disturbed
    rate64, rate32 = (max(before, gemm_gflops(dtype)) for before, dtype in zip(start, dtypes))
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}; GEMM 2048³ (best of before and after): float64 "
          f"{rate64:.0f} GFLOP/s, float32 {rate32:.0f} GFLOP/s\n")
    print(table([row_a, *rows_b]))
    print()
    print(bound_table([bound_a, *bounds_b], {torch.float64: rate64, torch.float32: rate32}))
    print("\nFLOPs: X·Xᵀ as SYRK (n²p per layer, what NumPy runs on CPU) plus the pair GEMM; "
          "(a) includes the float32→float64 conversion and centring, (b) the update() calls.\n"
          "torch-cka accumulates HSIC in float32 on uncentred activations; the last column checks "
          "ours against ckatorch's float64 cka_base / cka_batch on one pair per width pair.")


if __name__ == "__main__":
    main()
