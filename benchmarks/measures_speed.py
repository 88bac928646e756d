"""Every registered measure's 16×16 map of two ResNet-32s at n = 2,000 against looping a
per-pair implementation of the same measure.

    python benchmarks/measures_speed.py                  # a few minutes on 2 cores
    python benchmarks/measures_speed.py --measures pwcca rsa --pairs all

Two randomly initialised ResNet-32s (seeds 0 and 1, width 16) see the same n random 32×32×3
inputs; their 16 layers (16 channels ×6, 32 ×5, 64 ×5) are extracted once with
``repsim.extract`` at ``pool2`` (64, 128, 256 features) and ``gap`` (16, 32, 64). Each measure
(default parameters) runs at the first of --reductions it accepts:

* ours: ``similarity_matrix`` of the two activation files, as a user calls it: each layer read
  and prepared once, every pair formed from the prepared sides;
* per pair: an implementation of the same quantity for one pair of layers, looped over the
  256 pairs: a peer that installs from PyPI where there is one (ckatorch's ``cka_base`` for CKA,
  scikit-learn's ``LinearRegression`` for regression R², rsatoolbox for RSA), a plain NumPy
  implementation of the paper's formula otherwise (see :data:`PER_PAIR`), and for a measure
  with neither, the measure itself called on one pair at a time (each call preparing both
  layers). Its time depends only on the two widths, so by default one pair per width
  combination (9) is timed and the 256-pair total extrapolated from them (``--pairs all``
  times every pair).

Every time is the least of --repeats runs. Prints a table with both times, their ratio (target
≥ 10×) and the largest difference between the per-pair values and ours on the pairs timed.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ckatorch
import numpy as np
import rsatoolbox
import torch
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_limits

from repsim.extract import extract
from repsim.measures import MEASURES, Measure, get_measure, similarity_matrix
from repsim.store import ActivationFile
from training.models import build_model

PerPair = Callable[[np.ndarray, np.ndarray, Measure], float]  # (x (n, p₁), y (n, p₂), measure)


# --- per-pair implementations, one pair of float64 layers at a time ------------------------

def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0)


def inverse_sqrt(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(Σ^(+½), rank) of Σ = xᵀx, x centred: the pseudo-inverse square root over the
    eigenvalues above λ_max · max(n, p) · ε, what a covariance's eigenvalues resolve (exactly
    dependent or dead units drop out; directions weaker than about 10⁻⁶ of the strongest
    would too, which the measure keeps)."""
    values, vectors = np.linalg.eigh(x.T @ x)
    keep = values > values.max() * max(x.shape) * np.finfo(np.float64).eps
    return (vectors[:, keep] / np.sqrt(values[keep])) @ vectors[:, keep].T, int(keep.sum())


def hotelling(x: np.ndarray, y: np.ndarray, *, fewer_first: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hotelling's CCA of the centred layers x, y (swapped when ``fewer_first`` and y has
    fewer independent directions): the m = min(rank x, rank y) canonical correlations ρ and
    left singular vectors U of Σxx^(−½) Σxy Σyy^(−½), Σxx^(−½) and the centred x."""
    x, y = centred(x), centred(y)
    (wx, dx), (wy, dy) = inverse_sqrt(x), inverse_sqrt(y)
    if fewer_first and dy < dx:
        (x, wx, dx), (y, wy, dy) = (y, wy, dy), (x, wx, dx)
    u, rho, _ = np.linalg.svd(wx @ (x.T @ y) @ wy, full_matrices=False)
    m = min(dx, dy)
    return rho[:m], u[:, :m], wx, x


def svd_reduced(x: np.ndarray, variance: float) -> np.ndarray:
    """Raghu et al. 2017: the fewest top principal directions of x holding ``variance``."""
    u, s, _ = np.linalg.svd(centred(x), full_matrices=False)
    keep = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), variance) + 1)
    return u[:, :keep] * s[:keep]


def cca_mean_rho(x: np.ndarray, y: np.ndarray, _measure) -> float:
    return float(hotelling(x, y)[0].mean())


def cca_r2(x: np.ndarray, y: np.ndarray, _measure) -> float:
    return float((hotelling(x, y)[0] ** 2).mean())


def svcca(x: np.ndarray, y: np.ndarray, measure) -> float:
    variance = measure.settings()["variance"]
    return cca_mean_rho(svd_reduced(x, variance), svd_reduced(y, variance), measure)


def pwcca(x: np.ndarray, y: np.ndarray, _measure) -> float:
    """Morcos et al. 2018: ρ weighted by α_i ∝ Σ_j |⟨h_i, x_j⟩|, h_i the unit canonical
    variates of the layer with fewer independent neurons (x on ties)."""
    rho, u, wx, x = hotelling(x, y, fewer_first=True)
    h = x @ wx @ u
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ x).sum(axis=1)
    return float(alpha @ rho / alpha.sum())


def regression_r2(x: np.ndarray, y: np.ndarray, _measure) -> float:
    """scikit-learn's least-squares fit of y on x: 1 − Σ residual² / Σ centred y²."""
    residual = y - LinearRegression().fit(x, y).predict(x)
    return float(1 - (residual**2).sum() / (centred(y) ** 2).sum())


def rsa(x: np.ndarray, y: np.ndarray, measure) -> float:
    """rsatoolbox: ``calc_rdm`` of each layer, then ``compare`` of the two RDMs."""
    settings = measure.settings()
    rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(v), method=settings["rdm"])
            for v in (x, y)]
    method = {"spearman": "spearman", "pearson": "corr"}[settings["compare"]]
    return float(rsatoolbox.rdm.compare(*rdms, method=method)[0, 0])


def whitened(x: np.ndarray, alpha: float) -> np.ndarray:
    """Williams et al. 2021 (netrep's ``whiten``): the centred unit-norm layer X̂ mapped by
    V diag(α + (1 − α)/√max(λ, 10⁻⁷)) Vᵀ, X̂ᵀX̂ = V diag(λ) Vᵀ."""
    x = centred(x)
    x = x / np.linalg.norm(x)
    values, vectors = np.linalg.eigh(x.T @ x)
    scale = alpha + (1 - alpha) / np.sqrt(np.maximum(values, 1e-7))
    return x @ (vectors * scale) @ vectors.T


def shape_distance(x: np.ndarray, y: np.ndarray, measure) -> float:
    """The angle arccos(‖X̂_αᵀŶ_α‖_* / (‖X̂_α‖_F ‖Ŷ_α‖_F)) after partial whitening."""
    alpha = measure.settings()["alpha"]
    xa, ya = whitened(x, alpha), whitened(y, alpha)
    cosine = np.linalg.svd(xa.T @ ya, compute_uv=False).sum() / (
        np.linalg.norm(xa) * np.linalg.norm(ya))
    return float(np.arccos(min(cosine, 1.0)))


def neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(n, n) bool: j is one of the k rows of largest cosine similarity to row i (j ≠ i)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argpartition(-similarity, k, axis=1)[:, :k]
    mask = np.zeros(similarity.shape, dtype=bool)
    np.put_along_axis(mask, nearest, True, axis=1)
    return mask


def knn_overlap(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """(n,) |N_k^X(i) ∩ N_k^Y(i)|."""
    return (neighbours(x, k) & neighbours(y, k)).sum(axis=1)


def mutual_knn(x: np.ndarray, y: np.ndarray, measure) -> float:
    """Huh et al. 2024: mean over inputs of the shared fraction of the k nearest neighbours."""
    k = measure.settings()["k"]
    return float((knn_overlap(x, y, k) / k).mean())


def knn_jaccard(x: np.ndarray, y: np.ndarray, measure) -> float:
    """Klabunde et al. 2023: mean Jaccard index of the two k-NN sets of each input."""
    k = measure.settings()["k"]
    shared = knn_overlap(x, y, k)
    return float((shared / (2 * k - shared)).mean())


def cka(x: np.ndarray, y: np.ndarray, measure) -> float:
    kernel = "rbf" if measure.name == "rbf_cka" else "linear"
    settings = measure.settings()
    return float(ckatorch.cka_base(torch.from_numpy(x), torch.from_numpy(y), kernel=kernel,
                                   unbiased=settings["debiased"],
                                   threshold=settings["threshold"] or 1.0))


PER_PAIR: dict[str, tuple[str, PerPair]] = {
    "linear_cka": ("ckatorch.cka_base", cka),
    "rbf_cka": ("ckatorch.cka_base", cka),
    "cca_mean_rho": ("NumPy: Hotelling's CCA", cca_mean_rho),
    "cca_r2": ("NumPy: Hotelling's CCA", cca_r2),
    "svcca": ("NumPy: SVD to 99 %, then Hotelling's CCA", svcca),
    "pwcca": ("NumPy: Morcos et al. 2018", pwcca),
    "linear_regression_r2": ("sklearn LinearRegression", regression_r2),
    "rsa": ("rsatoolbox calc_rdm + compare", rsa),
    "procrustes": ("NumPy: Williams et al. 2021", shape_distance),
    "shape_metric": ("NumPy: Williams et al. 2021", shape_distance),
    "mutual_knn": ("NumPy: Huh et al. 2024", mutual_knn),
    "knn_jaccard": ("NumPy: Klabunde et al. 2023", knn_jaccard),
}


def ours_per_pair(x: np.ndarray, y: np.ndarray, measure: Measure) -> float:
    """The measure itself on one pair of layers, preparing both."""
    return float(similarity_matrix({"x": x}, {"y": y}, measure).matrix[0, 0])


# --- the benchmark ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    measure: str
    reduction: str
    ours_s: float
    per_pair: str
    per_pair_s: float
    timing: str  # "measured" or how it was extrapolated
    max_abs_diff: float


def activation_files(n: int, folder: Path) -> list[ActivationFile]:
    """Two random-init ResNet-32s (seeds 0, 1) on n random inputs, at gap and pool2."""
    inputs = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(n) % 10
    batches = [(inputs[i:i + 250], labels[i:i + 250], torch.arange(i, min(i + 250, n)))
               for i in range(0, n, 250)]
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("resnet32", width=16, in_channels=3, num_classes=10).eval()
        files.append(ActivationFile(extract(
            model, batches, model.layer_names, folder / f"resnet32_seed{seed}.h5",
            reductions=("gap", "pool2"), compression=None, progress=False,
            meta={"dataset": "random", "split": "test"})))
    return files


def best_of(repeats: int, fn):
    """fn() and the least of ``repeats`` wall-clock times of it: other jobs on a shared machine
    only ever add time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def bench(name: str, files: list[ActivationFile], reductions: list[str], every_pair: bool,
          repeats: int) -> Row:
    measure = get_measure(name)
    for reduction in reductions:
        try:
            result, ours_s = best_of(repeats, lambda: similarity_matrix(
                *files, measure, reduction=reduction))
            break
        except ValueError as err:  # refused at this reduction: try the next
            print(f"{name} refuses {reduction}: {' '.join(str(err).split())[:200]}")
    else:
        raise SystemExit(f"{name} refuses every reduction of {reductions}")
    label, per_pair = PER_PAIR.get(name, ("ours, one pair per call", ours_per_pair))
    acts = [{layer: f.read(layer, reduction).astype(np.float64) for layer in f.layers}
            for f in files]
    pairs = list(itertools.product(range(len(result.layers_a)), range(len(result.layers_b))))
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, j in pairs:
        widths = (acts[0][result.layers_a[i]].shape[1], acts[1][result.layers_b[j]].shape[1])
        groups.setdefault(widths, []).append((i, j))
    sample = {pair: 1 for pair in pairs} if every_pair else \
        {group[0]: len(group) for group in groups.values()}
    per_pair_s, diff = 0.0, 0.0
    for (i, j), weight in sample.items():
        x, y = acts[0][result.layers_a[i]], acts[1][result.layers_b[j]]
        value, seconds = best_of(repeats, lambda: per_pair(x, y, measure))
        per_pair_s += weight * seconds
        diff = max(diff, abs(value - result.matrix[i, j]))
    timing = "measured" if every_pair else f"extrapolated from {len(sample)} pairs"
    return Row(name, reduction, ours_s, label, per_pair_s, timing, diff)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="inputs (2000)")
    p.add_argument("--measures", nargs="+", default=None,
                   help="registered measure names (default: all)")
    p.add_argument("--reductions", nargs="+", default=["pool2", "gap"],
                   help="reductions tried in order, the first a measure accepts (pool2 gap)")
    p.add_argument("--pairs", choices=["sample", "all"], default="sample",
                   help="time one per-pair call per width combination (sample) or all 256")
    p.add_argument("--repeats", type=int, default=3,
                   help="each timing is the least of this many runs (3)")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads (2)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    names = args.measures or sorted(MEASURES)
    for name in names:
        get_measure(name)  # unknown names fail before any work
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads), tempfile.TemporaryDirectory() as folder:
        files = activation_files(args.n, Path(folder))
        rows = [bench(name, files, args.reductions, args.pairs == "all", args.repeats)
                for name in names]
        for f in files:
            f.close()
    print(f"\n16×16 maps of two random-init ResNet-32s (width 16), n = {args.n}, "
          f"{args.threads} threads, least of {args.repeats} runs\n")
    print("| measure | reduction | ours | per pair | per-pair time | speed-up | max diff |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| `{r.measure}` | {r.reduction} | {r.ours_s:.2f} s | {r.per_pair} | "
              f"{r.per_pair_s:.1f} s ({r.timing}) | **{r.per_pair_s / r.ours_s:.1f}×** | "
              f"{r.max_abs_diff:.1e} |")


if __name__ == "__main__":
    main()
