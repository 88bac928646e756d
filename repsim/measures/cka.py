"""Centred kernel alignment (CKA) between the layers of two networks.

Estimators (``X`` is (n, p₁), ``Y`` is (n, p₂), rows are the same n inputs in the same order):

* **full, biased** (Kornblith et al. 2019): CKA = ⟨Kc, Lc⟩ / (‖Kc‖_F ‖Lc‖_F) with Kc, Lc the
  centred Gram matrices. For the linear kernel this equals ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on
  centred features, which is what is computed when every p < n (the *feature form*).
* **full, debiased**: the same ratio with the unbiased HSIC₁ of Song et al. (2012) in the
  numerator and both denominators.
* **minibatch** (Nguyen, Raghu & Kornblith 2021): ΣHSIC₁(K_b, L_b) / √(ΣHSIC₁(K_b, K_b) ·
  ΣHSIC₁(L_b, L_b)) over minibatches b, linear kernel. It is a different estimator from full CKA
  (it is consistent for the same population quantity as debiased CKA); with one batch it equals
  full debiased linear CKA. Memory is bounded by the batch, not by n.

All arithmetic is float64 (inputs are converted up front) and features are centred before any
Gram matrix is formed, so float32 activations with a large common offset lose no digits. The
one exception is opt-in: ``MinibatchCKA(precision="float32")`` centres float32 activations in
float32 (each centred value rounded once; the rounding of the column mean only shifts a column,
which HSIC₁ does not see, so an offset still costs no digits) and forms their Grams in float32,
summing the HSIC terms in float64: CKA within about 1e-6 of the float64 path. Each
layer is scaled by a power of two that brings its largest magnitude into [½, 1) before its Gram
is formed: CKA is invariant to isotropic scaling and a power of two scales exactly, so normal
inputs give the same bits as unscaled ones, while layers of magnitude 1e±300 neither overflow
nor underflow. The minibatch estimator sums HSIC₁ over batches, where a per-batch scale would
change the estimator: it keeps each layer's sums at one scale for all batches, the largest any
batch needed, rescaling the sums (exactly) when a batch needs a larger one. The RBF kernel is
formed so that no bandwidth loses its digits (see :func:`_rbf`): a huge ``threshold`` gives the
limit, linear CKA, rather than 0/0. Nothing is clamped and no ε is added: a constant layer gives
NaN and a :class:`ConstantRepresentationWarning` naming it; debiased estimates can be negative.

Pairwise terms for all layer pairs come from one GEMM: over the flattened n×n Grams when some
layer has p ≥ n, otherwise over the centred features side by side. On CPU the layers are
centred and their Grams formed ``torch.get_num_threads()`` at a time, each on one thread
(so as many layers are held at once), which keeps both cores busy where many small
multi-threaded kernels kept them waiting.

The full estimators are the registered measures ``"linear_cka"`` (:class:`LinearCKA`) and
``"rbf_cka"`` (:class:`RBFCKA`) of :func:`repsim.similarity_matrix`; :func:`cka_matrix` is the
CKA entry point that also offers the minibatch estimator.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from threadpoolctl import ThreadpoolController
from tqdm.auto import tqdm

from repsim.budget import check_budget, format_bytes, largest_fitting
from repsim.measures.base import Comparison, Measure, distinct_rows, register
from repsim.measures.cka_jackknife import leave_one_out_cka
from repsim.measures.matrix import compute, result_of
from repsim.measures.pairing import as_float64, check_layer_list, pair_sources
from repsim.measures.result import SimilarityResult

__all__ = [
    "CKAResult",
    "ConstantRepresentationWarning",
    "LinearCKA",
    "MinibatchCKA",
    "RBFCKA",
    "centre_gram",
    "cka_matrix",
    "hsic_unbiased",
    "linear_cka",
    "minibatch_batch_size",
    "minibatch_memory",
    "rbf_cka",
]

Kernel = Literal["linear", "rbf"]
ArrayLike = Any  # numpy.ndarray | torch.Tensor of shape (n, p)
# below every float64's frexp exponent (-1073): the scale of an all-zero layer, and of a
# minibatch layer before its first batch
MIN_EXPONENT = -1100
# MinibatchCKA's precisions: the dtype its Gram matrices are formed in
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


class ConstantRepresentationWarning(RuntimeWarning):
    """A representation is degenerate (e.g. constant across inputs), so its CKA is NaN."""


# ---------------------------------------------------------------------------------------------
# Public single-pair measures
# ---------------------------------------------------------------------------------------------


def linear_cka(
    x: ArrayLike,
    y: ArrayLike,
    *,
    debiased: bool = False,
    form: Literal["auto", "features", "gram"] = "auto",
    device: str | torch.device = "cpu",
) -> float:
    """Linear CKA of x (n, p₁) and y (n, p₂), rows paired; a similarity in [0, 1] (debiased: may
    be slightly negative).

    ``form="features"`` computes ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred features,
    ``form="gram"`` the same via n×n Gram matrices; ``"auto"`` picks features when p₁, p₂ < n.
    """
    return _single_pair(x, y, kernel="linear", threshold=None, debiased=debiased, form=form,
                        device=device)


def rbf_cka(
    x: ArrayLike,
    y: ArrayLike,
    *,
    threshold: float = 1.0,
    debiased: bool = False,
    device: str | torch.device = "cpu",
) -> float:
    """RBF-kernel CKA of x (n, p₁) and y (n, p₂), rows paired.

    k(xᵢ, xⱼ) = exp(−‖xᵢ−xⱼ‖² / (2σ²)) with σ² = threshold² · median of the n×n squared
    distances (diagonal included, as in Kornblith et al.'s code), chosen per representation.
    Any positive finite threshold gives the estimator's value to rounding: as threshold → ∞
    RBF CKA tends to linear CKA, as threshold → 0 biased RBF CKA tends to 1.
    """
    return _single_pair(x, y, kernel="rbf", threshold=threshold, debiased=debiased, form="gram",
                        device=device)


def hsic_unbiased(k: ArrayLike, l: ArrayLike) -> float:  # noqa: E741 (the paper's name)
    """Unbiased HSIC₁ (Song et al. 2012) of two symmetric Gram matrices k, l of shape (n, n).

    With K̃, L̃ the Grams with zero diagonal:
    HSIC₁ = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)).
    Needs n ≥ 4; can be negative.
    """
    kt = as_float64(k, "k", "cpu")
    lt = as_float64(l, "l", "cpu")
    n = _check_grams(kt, lt)
    kt = kt.clone().fill_diagonal_(0)
    lt = lt.clone().fill_diagonal_(0)
    return float(_hsic1(trace_kl=(kt * lt.T).sum(), sum_k=kt.sum(), sum_l=lt.sum(),
                        ones_kl_ones=kt.sum(0) @ lt.sum(1), n=n))


def centre_gram(k: ArrayLike) -> torch.Tensor:
    """H K H for H = I − 11ᵀ/n, in O(n²) with row and column means: (n, n) → (n, n) float64."""
    return _centre_gram(as_float64(k, "k", k.device if isinstance(k, torch.Tensor) else "cpu"))


# ---------------------------------------------------------------------------------------------
# Streaming minibatch accumulator
# ---------------------------------------------------------------------------------------------


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021) for all pairs of two layer lists.

    Each :meth:`update` takes one batch of activations of both networks on the same b inputs
    (b ≥ 4) and adds, in float64, HSIC₁(K, L) for every layer pair and HSIC₁(K, K), HSIC₁(L, L)
    for every layer; only that batch is held. :meth:`compute` returns the (La, Lb) matrix
    ΣHSIC₁(K, L) / √(ΣHSIC₁(K, K) · ΣHSIC₁(L, L)). The value depends on how rows are split
    into batches: seed the input order and record the batch size.

    ``precision="float64"`` (the default) converts each layer to float64 before anything else,
    as the rest of this module does. ``precision="float32"`` centres and scales each layer in
    its own dtype (float32 activations are not converted; float64 ones are centred in float64
    first), rounds the centred layer to float32 and forms its Gram matrix (or, in feature form,
    the cross products) in float32; every HSIC term is then summed in float64. float32 GEMMs
    run at about twice the float64 rate; CKA stays within about 1e-6 of the float64 path
    (tested). On CPU an update kernelises ``torch.get_num_threads()`` layers at a time, one
    per thread.

    Fitted attributes: ``hsic_ab_`` (La, Lb), ``hsic_aa_`` (La,), ``hsic_bb_`` (Lb,) sums of
    the layers scaled by 2^−``exponent_a_`` (La,) and 2^−``exponent_b_`` (Lb,), which keep them
    finite at any magnitude of the activations (the unscaled ΣHSIC₁(K, L) is
    ``hsic_ab_ · 2^(2·(exponent_a_ + exponent_b_))``, and may not be representable); ``n_seen_``
    rows and ``n_batches_`` batches so far.
    """

    def __init__(self, layers_a: Sequence[str], layers_b: Sequence[str], *,
                 device: str | torch.device = "cpu",
                 precision: Literal["float64", "float32"] = "float64"):
        self.layers_a = check_layer_list(layers_a, "layers_a")
        self.layers_b = check_layer_list(layers_b, "layers_b")
        self.device = torch.device(device)
        self.precision = _check_precision(precision)
        zeros = dict(dtype=torch.float64, device=self.device)
        self.hsic_ab_ = torch.zeros(len(self.layers_a), len(self.layers_b), **zeros)
        self.hsic_aa_ = torch.zeros(len(self.layers_a), **zeros)
        self.hsic_bb_ = torch.zeros(len(self.layers_b), **zeros)
        self.exponent_a_ = torch.full((len(self.layers_a),), MIN_EXPONENT, **zeros)
        self.exponent_b_ = torch.full((len(self.layers_b),), MIN_EXPONENT, **zeros)
        self.n_seen_ = 0
        self.n_batches_ = 0

    def update(self, batch_a: Mapping[str, ArrayLike], batch_b: Mapping[str, ArrayLike]) -> None:
        """Add one batch: ``batch_a[name]`` is (b, p) for every name in ``layers_a``, likewise b."""
        b = _check_batches(batch_a, self.layers_a, batch_b, self.layers_b)
        feature_form = _prefer_features([_width(batch_a[m]) for m in self.layers_a] +
                                        [_width(batch_b[m]) for m in self.layers_b], b)

        def kernelise(layer: tuple[str, ArrayLike], gram: torch.Tensor | None,
                      scratch: _Scratch) -> _LayerTerms:
            return _minibatch_layer(*layer, gram, scratch, device=self.device,
                                    precision=PRECISIONS[self.precision])

        side_a, side_b = (
            _kernelise_with(kernelise, [(f"batch_{side}[{m!r}]", batch[m]) for m in names],
                            len(names), b, feature_form=feature_form, device=self.device,
                            lazy=False)
            for side, batch, names in (("a", batch_a, self.layers_a),
                                       ("b", batch_b, self.layers_b)))
        ab, aa, bb = _hsic_terms(side_a, side_b, b, debiased=True)
        # the sums and this batch's terms, each at the larger of the two scales of every layer
        new_a = torch.maximum(self.exponent_a_, side_a.exponents)
        new_b = torch.maximum(self.exponent_b_, side_b.exponents)
        old_a, old_b = self.exponent_a_ - new_a, self.exponent_b_ - new_b
        now_a, now_b = side_a.exponents - new_a, side_b.exponents - new_b
        self.hsic_ab_ = (_shifted(self.hsic_ab_, old_a[:, None], old_b[None, :])
                         + _shifted(ab, now_a[:, None], now_b[None, :]))
        self.hsic_aa_ = _shifted(self.hsic_aa_, old_a, old_a) + _shifted(aa, now_a, now_a)
        self.hsic_bb_ = _shifted(self.hsic_bb_, old_b, old_b) + _shifted(bb, now_b, now_b)
        self.exponent_a_, self.exponent_b_ = new_a, new_b
        self.n_seen_ += b
        self.n_batches_ += 1

    def compute(self) -> np.ndarray:
        """(La, Lb) float64 minibatch CKA; rows follow ``layers_a``, columns ``layers_b``."""
        if self.n_batches_ == 0:
            raise RuntimeError("MinibatchCKA.compute() called before any update(); "
                               "pass at least one batch of activations to update() first")
        for side, layers, sums in (("a", self.layers_a, self.hsic_aa_),
                                   ("b", self.layers_b, self.hsic_bb_)):
            for name in np.asarray(layers, dtype=object)[(sums == 0).cpu().numpy()]:
                _warn_constant(f"layer {name!r} of {side}", "is constant within every batch")
        return _ratio(self.hsic_ab_, self.hsic_aa_, self.hsic_bb_).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Layer-by-layer matrix
# ---------------------------------------------------------------------------------------------


class CKAResult(SimilarityResult):
    """A CKA map: a :class:`SimilarityResult` whose ``settings`` are the CKA estimator's.

    ``estimator`` "full" or "minibatch"; ``kernel`` "linear" or "rbf"; ``debiased``;
    ``batch_size`` None for "full"; ``threshold`` the RBF bandwidth factor (None for the
    linear kernel); ``reduction`` how activation-file layers were reduced to (n, p) (None when
    both inputs were dicts).
    """

    estimator = property(lambda self: self.settings["estimator"])
    kernel = property(lambda self: self.settings["kernel"])
    debiased = property(lambda self: self.settings["debiased"])
    batch_size = property(lambda self: self.settings["batch_size"])
    threshold = property(lambda self: self.settings["threshold"])

    @classmethod
    def of(cls, result: SimilarityResult) -> CKAResult:
        return cls(**{f.name: getattr(result, f.name) for f in fields(result)})


class _CKA(Measure):
    """Full-batch CKA as a registered measure; subclasses fix the kernel."""

    kernel: ClassVar[Kernel]
    direction = "similarity"
    value_range = (0.0, 1.0)  # debiased estimates can fall slightly below 0
    identical = 1.0
    description = "CKA similarity (1 = same up to rotation and scale; not a distance)"

    def __init__(self, *, debiased: bool = False, threshold: float | None = None,
                 form: Literal["auto", "features", "gram"] = "auto"):
        _check_form(form)
        self.debiased, self.threshold, self.form = bool(debiased), threshold, form

    def settings(self) -> dict[str, Any]:
        return {"estimator": "full", "kernel": self.kernel, "debiased": self.debiased,
                "batch_size": None, "threshold": self.threshold}

    def check(self, comparison: Comparison) -> None:
        _check_settings(kernel=self.kernel, threshold=self.threshold, debiased=self.debiased,
                        n=comparison.n, batch_size=None)

    def prepare(self, layers: Iterable[torch.Tensor], names: Sequence[str],
                comparison: Comparison) -> _Kernelised:
        """Each layer's Gram matrix (or centred features) and sums, computed once."""
        feature_form = self.form == "features" or (
            self.form == "auto" and self.kernel == "linear"
            and _prefer_features([*comparison.widths_a, *comparison.widths_b], comparison.n))
        side = _kernelise(layers, len(names), comparison.n, kernel=self.kernel,
                          threshold=self.threshold, debiased=self.debiased,
                          feature_form=feature_form, device=comparison.device)
        for name in np.asarray(names, dtype=object)[side.degenerate.cpu().numpy()]:
            _warn_constant(name, "is constant across all rows (zero variance)" if self.kernel ==
                           "linear" else "has median squared distance 0 between its rows (e.g. "
                           "it is constant), so its RBF bandwidth is 0")
        return side

    def compare(self, a: _Kernelised, b: _Kernelised, comparison: Comparison) -> torch.Tensor:
        return _ratio(*_hsic_terms(a, b, comparison.n, debiased=self.debiased))

    def resample(self, side: _Kernelised, rows: np.ndarray, comparison: Comparison
                 ) -> _Kernelised:
        """The side for distinct ``rows`` (a permutation or a subset), from its Grams or
        features without reading a layer. Repeated rows are refused: a bootstrap draw would
        make the debiased estimator count an input's pairing with itself."""
        rows = torch.as_tensor(distinct_rows(rows, comparison.n, self.name),
                               device=side.diag.device)
        if len(rows) == comparison.n:  # a permutation: centred stays centred, sums permute
            return replace(side, diag=side.diag[:, rows], rowsum=side.rowsum[:, rows],
                           **({"features": side.features[rows]} if side.grams is None else
                              {"grams": _submatrices(side.grams, rows)}))
        if side.grams is None:
            return _feature_side(side.features[rows], side.widths, side.degenerate,
                                 side.exponents)
        grams = _submatrices(side.grams, rows)
        if not self.debiased:
            grams = _centre_gram(grams)
        return _Kernelised(grams=grams, features=None, widths=side.widths,
                           diag=grams.diagonal(dim1=1, dim2=2).clone(), rowsum=grams.sum(2),
                           self_inner=grams.square().sum((1, 2)), degenerate=side.degenerate,
                           exponents=side.exponents)

    def jackknife(self, a: _Kernelised, b: _Kernelised, comparison: Comparison) -> np.ndarray:
        return leave_one_out_cka(a, b, comparison.n, debiased=self.debiased).cpu().numpy()


@register
class LinearCKA(_CKA):
    """Linear CKA (Kornblith et al. 2019): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred features,
    or the Gram form; ``debiased`` uses Song et al.'s HSIC₁. ``form`` as in :func:`linear_cka`."""

    name = "linear_cka"
    label = "linear CKA"
    kernel = "linear"

    def __init__(self, *, debiased: bool = False,
                 form: Literal["auto", "features", "gram"] = "auto"):
        super().__init__(debiased=debiased, form=form)


@register
class RBFCKA(_CKA):
    """RBF-kernel CKA with σ² = threshold² · median squared distance (see :func:`rbf_cka`)."""

    name = "rbf_cka"
    label = "RBF CKA"
    kernel = "rbf"

    def __init__(self, *, threshold: float = 1.0, debiased: bool = False):
        super().__init__(debiased=debiased, threshold=threshold, form="gram")


def cka_matrix(
    a: Mapping[str, ArrayLike] | Any,
    b: Mapping[str, ArrayLike] | Any,
    *,
    kernel: Kernel = "linear",
    debiased: bool = False,
    batch_size: int | None = None,
    threshold: float = 1.0,
    reduction: str | None = None,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    max_memory: int | None = None,
    level: float | None = None,
    n_perm: int = 0,
    seed: int = 0,
) -> CKAResult:
    """CKA between every layer of a and every layer of b.

    ``a``, ``b``: activation sources (:class:`repsim.store.ActivationFile`,
    :class:`repsim.sources.ActivationSet`) read at ``reduction`` (default "flatten"), or dicts
    name → (n, p) array/tensor. Both must hold the same n inputs (and, where known, the same
    dataset indices in the same order).

    ``batch_size=None``: the full estimator (linear or RBF, biased or debiased; the
    :class:`LinearCKA` / :class:`RBFCKA` measures of :func:`repsim.similarity_matrix`), each
    layer's Gram matrix (or centred features) computed once, all pairs in one GEMM; needs
    (La + Lb)·n²·8 bytes when some layer has p ≥ n. ``batch_size=B``: the minibatch estimator of
    Nguyen et al. (2021), which is HSIC₁-based (so ``debiased`` is recorded as True), linear
    kernel only, reading B rows of each side at a time in stored order, so activation files
    larger than memory stream through in row blocks. ``max_memory`` (bytes, instead of
    ``batch_size``): the minibatch estimator with the largest B whose working memory
    :func:`minibatch_memory` fits in it (the result records B).
    ``progress=True`` shows a tqdm bar over layers (full) or batches (minibatch).

    Uncertainty (full estimator; see :func:`repsim.similarity_matrix` and
    :mod:`repsim.stats`): ``level`` adds jackknife interval bounds ``low``/``high`` beside
    ``matrix`` (with ``debiased=True`` they cover population CKA, shown by simulation),
    ``n_perm`` the baseline of b's inputs shuffled, with permutation p-values.
    """
    if batch_size is not None or max_memory is not None:
        if level is not None or n_perm:
            raise ValueError("intervals (level=) and permutation baselines (n_perm=) need the "
                             "full estimator's Gram matrices; omit batch_size/max_memory, or "
                             "reduce the layers (e.g. reduction='gap') so they fit")
    pairing = pair_sources(a, b, reduction=reduction, layers_a=layers_a, layers_b=layers_b)
    n = pairing.n
    if max_memory is not None:
        if batch_size is not None:
            raise ValueError(f"pass batch_size ({batch_size}) or max_memory ({max_memory}), not "
                             f"both: max_memory picks the batch size")
        if kernel != "linear":
            raise ValueError(f"max_memory picks the batch size of the minibatch estimator, which "
                             f"supports only kernel='linear', got {kernel!r}; omit max_memory "
                             "for RBF")
        batch_size = minibatch_batch_size(*pairing.widths(), n, max_memory)
    minibatch = batch_size is not None
    _check_settings(kernel=kernel, threshold=threshold, debiased=debiased or minibatch, n=n,
                    batch_size=batch_size)
    if not minibatch:
        measure = (LinearCKA(debiased=debiased) if kernel == "linear"
                   else RBFCKA(threshold=threshold, debiased=debiased))
        return CKAResult.of(compute(measure, pairing, device=device, progress=progress,
                                    level=level, n_perm=n_perm, seed=seed))
    acc = MinibatchCKA(pairing.layers_a, pairing.layers_b, device=device)
    for start in tqdm(range(0, n, batch_size), desc="CKA batches", disable=not progress):
        rows = slice(start, min(start + batch_size, n))
        acc.update({m: pairing.a.read(m, rows) for m in pairing.layers_a},
                   {m: pairing.b.read(m, rows) for m in pairing.layers_b})
    settings = {"estimator": "minibatch", "kernel": "linear", "debiased": True,
                "batch_size": batch_size, "threshold": None}
    return CKAResult.of(result_of(LinearCKA(debiased=True), pairing, acc.compute(), settings))


def minibatch_memory(widths_a: Sequence[int], widths_b: Sequence[int], batch_size: int, *,
                     threads: int | None = None) -> int:
    """Bytes the minibatch estimator holds at once with batch size B (a generous estimate).

    widths_a, widths_b: the feature count p of each layer of a and of b (Pa, Pb their sums,
    La, Lb their counts, p_max the widest); threads: T, the worker threads of
    :meth:`MinibatchCKA.update` (default ``torch.get_num_threads()``, what it uses on CPU).
    One update holds the B rows of every layer of both sides as read (float32,
    4·B·(Pa + Pb)), one layer per worker converted to float64 and centred (17·B·p_max·T), and
    the kernelised sides: in Gram form (some p ≥ B) the (B, B) float64 Grams of every layer
    plus one being formed per worker, 8·B²·(La + Lb + T); in feature form (every p < B) the
    centred features, 16·B·(Pa + Pb), and their (Pa, Pb) cross product squared, 16·Pa·Pb.
    Not counted: the interpreter and libraries, and HDF5's chunk cache (up to 1 MiB per
    dataset being read).
    """
    pa, pb = sum(widths_a), sum(widths_b)
    p_max = max([*widths_a, *widths_b])
    b = int(batch_size)
    workers = torch.get_num_threads() if threads is None else threads
    read = 4 * b * (pa + pb) + 17 * b * p_max * workers
    if _prefer_features([*widths_a, *widths_b], b):
        return read + 16 * b * (pa + pb) + 16 * pa * pb
    return read + 8 * b * b * (len(widths_a) + len(widths_b) + workers)


def minibatch_batch_size(widths_a: Sequence[int], widths_b: Sequence[int], n: int,
                         max_memory: int) -> int:
    """The largest batch size B ≤ n whose :func:`minibatch_memory` fits in ``max_memory`` bytes
    and whose last batch is empty or has ≥ 4 rows (HSIC₁'s minimum)."""
    max_memory = check_budget(max_memory)
    need = minibatch_memory(widths_a, widths_b, 4)
    if need > max_memory:
        raise ValueError(
            f"max_memory={format_bytes(max_memory)} cannot hold even a batch of 4 rows, "
            f"which needs {format_bytes(need)} for {len(widths_a)} + {len(widths_b)} layers "
            f"of {sum(widths_a):,} + {sum(widths_b):,} features; allow more memory, select "
            f"fewer layers, or use a smaller reduction (gap or pool<k>)")
    if n < 4:
        raise ValueError(f"the minibatch estimator needs at least 4 rows, got n={n}")
    p_max = max([*widths_a, *widths_b])
    # The rule grows with B in each form but jumps where it switches from Grams (B ≤ p_max) to
    # features (B > p_max), up or down: search each form's range, the larger Bs first.
    for low, high in ((max(4, p_max + 1), n), (4, min(p_max, n))):
        b = largest_fitting(lambda rows: minibatch_memory(widths_a, widths_b, rows), max_memory,
                            low, high)
        while b >= low:  # smaller Bs of the same form fit too
            if n % b == 0 or n % b >= 4:
                return b
            b -= 1
    raise ValueError(f"no batch size from 4 to {n} both fits max_memory="
                     f"{format_bytes(max_memory)} and leaves a last batch of 0 or >= 4 of the "
                     f"n={n} rows; allow a little more memory or use batch_size=")


# ---------------------------------------------------------------------------------------------
# Kernelisation and pairwise terms
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kernelised:
    """The L layers of one side reduced to what pairwise CKA terms need (K_l: layer l's stored
    Gram; for the biased estimator it is centred, for the debiased one its diagonal is zeroed).

    grams: (L, n, n) the K_l, or None in feature form
    features: (n, Σ p_l) centred features side by side, K_l = X_l X_lᵀ (feature form), or None
    widths: p_l of each block of ``features``
    diag: (L, n) diagonals of K_l
    rowsum: (L, n) K_l · 1
    self_inner: (L,) ⟨K_l, K_l⟩_F
    degenerate: (L,) bool, K_l is undefined or zero: the layer is constant across rows
        (RBF: the median squared distance is 0, so the bandwidth is 0)
    exponents: (L,) float64 e_l, layer l was scaled by 2^−e_l before K_l was formed (linear:
        its terms carry a factor 2^−2e_l; RBF: none, the kernel is scale-free)
    """

    grams: torch.Tensor | None
    features: torch.Tensor | None
    widths: tuple[int, ...]
    diag: torch.Tensor
    rowsum: torch.Tensor
    self_inner: torch.Tensor
    degenerate: torch.Tensor
    exponents: torch.Tensor


def _submatrices(grams: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(L, n, n) → (L, m, m): each Gram's rows and columns ``rows`` (m,), in one gather over
    the flattened matrices (NumPy's take on the CPU: several times torch's indexing there)."""
    n = grams.shape[1]
    flat = (rows[:, None] * n + rows[None, :]).flatten()
    if grams.device.type == "cpu":
        taken = np.take(grams.flatten(1).numpy(), flat.numpy(), axis=1)
        return torch.from_numpy(taken).view(len(grams), len(rows), len(rows))
    return grams.flatten(1).index_select(1, flat).view(len(grams), len(rows), len(rows))


def _feature_side(features: torch.Tensor, widths: tuple[int, ...], degenerate: torch.Tensor,
                  exponents: torch.Tensor) -> _Kernelised:
    """A feature-form side of (m, Σ p_l) features, re-centred, with its sums recomputed."""
    xs = [x - x.mean(0) for x in torch.split(features, list(widths), dim=1)]
    diag, rowsum, self_inner = (torch.stack(terms) for terms in zip(*map(_feature_sums, xs)))
    return _Kernelised(grams=None, features=torch.cat(xs, 1), widths=widths, diag=diag,
                       rowsum=rowsum, self_inner=self_inner, degenerate=degenerate,
                       exponents=exponents)


def _feature_sums(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """diag(K), K1 (float64) and ‖K‖²_F of K = XXᵀ for centred features xc (n, p), products
    in xc's dtype; ‖XᵀX‖_F = ‖XXᵀ‖_F, so the smaller of the two Grams is formed."""
    x64 = xc.double()
    small = _gram(xc.T if xc.shape[1] <= len(xc) else xc).double()
    return x64.square().sum(1), x64 @ x64.sum(0), small.square().sum()


def _single_pair(x, y, *, kernel, threshold, debiased, form, device) -> float:
    measure = (LinearCKA(debiased=debiased, form=form) if kernel == "linear"
               else RBFCKA(threshold=threshold, debiased=debiased))
    a, b, comparison = prepared_pair(measure, x, y, device)
    return float(measure.compare(a, b, comparison)[0, 0])


def prepared_pair(measure: _CKA, x: ArrayLike, y: ArrayLike, device: str | torch.device
                  ) -> tuple[_Kernelised, _Kernelised, Comparison]:
    """The two prepared one-layer sides of x (n, p₁) and y (n, p₂), and their comparison."""
    device = torch.device(device)
    xt = as_float64(x, "x", device)
    yt = as_float64(y, "y", device)
    comparison = Comparison(n=_check_pair(xt, yt), widths_a=(xt.shape[1],),
                            widths_b=(yt.shape[1],), labels=None, device=device)
    measure.check(comparison)
    a, b = (measure.prepare(iter([t]), [name], comparison) for t, name in ((xt, "x"), (yt, "y")))
    return a, b, comparison


def _kernelise(xs: Iterable[torch.Tensor], count: int, n: int, *, kernel: Kernel,
               threshold: float | None, debiased: bool, feature_form: bool,
               device: torch.device) -> _Kernelised:
    """Centre each (n, p) float64 layer of ``xs`` and keep its Gram (or features) and sums;
    on CPU ``torch.get_num_threads()`` layers at a time, read as workers free up."""
    def kernelise(x: torch.Tensor, gram: torch.Tensor | None, scratch: _Scratch) -> _LayerTerms:
        return _layer_terms(x, gram, scratch, kernel=kernel, threshold=threshold,
                            debiased=debiased)

    return _kernelise_with(kernelise, xs, count, n, feature_form=feature_form, device=device,
                           lazy=True)


def _kernelise_with(kernelise: Callable, xs: Iterable, count: int, n: int, *,
                    feature_form: bool, device: torch.device, lazy: bool) -> _Kernelised:
    """The :class:`_Kernelised` side of the ``count`` layers ``xs``.

    ``kernelise(x, gram, scratch)`` → :class:`_LayerTerms` of one layer, with its Gram
    formed in ``gram``, its slot (n, n) in the side's Gram stack (None in feature form), and
    ``scratch`` a per-thread buffer for whatever is needed only until then. Run by
    :func:`_layer_workers` (``lazy`` as there); each layer is released once kernelised.
    """
    f64 = dict(dtype=torch.float64, device=device)
    # worker threads are never in the caller's inference mode, and may not write to tensors
    # made in it
    with torch.inference_mode(False):
        grams = None if feature_form else torch.empty(count, n, n, **f64)
        diag = torch.empty(count, n, **f64)
        rowsum = torch.empty(count, n, **f64)
        self_inner = torch.empty(count, **f64)
        degenerate = torch.empty(count, dtype=torch.bool, device=device)
        exponents = torch.empty(count, **f64)
    scratch = _Scratch(device)

    def one(item: tuple[int, Any]) -> torch.Tensor | None:
        i, x = item
        terms = kernelise(x, None if grams is None else grams[i], scratch)
        diag[i], rowsum[i], self_inner[i] = terms.diag, terms.rowsum, terms.self_inner
        degenerate[i], exponents[i] = terms.degenerate, terms.exponent
        return terms.features

    with _layer_workers(device, lazy=lazy) as map_layers:
        blocks = list(map_layers(one, enumerate(xs)))
    return _Kernelised(grams=grams, features=torch.cat(blocks, 1) if feature_form else None,
                       widths=tuple(x.shape[1] for x in blocks) if feature_form else (),
                       diag=diag, rowsum=rowsum, self_inner=self_inner, degenerate=degenerate,
                       exponents=exponents)


class _LayerTerms(NamedTuple):
    """One layer's part of a :class:`_Kernelised` side: ``features`` its (n, p) centred
    features in feature form (else None: its Gram is in its slot); the others as there."""

    features: torch.Tensor | None
    diag: torch.Tensor
    rowsum: torch.Tensor
    self_inner: torch.Tensor
    degenerate: bool
    exponent: int


def _layer_terms(x: torch.Tensor, gram: torch.Tensor | None, scratch: _Scratch, *,
                 kernel: Kernel, threshold: float | None, debiased: bool,
                 precision: torch.dtype = torch.float64) -> _LayerTerms:
    """Centre one (n, p) layer and form its Gram K in ``gram`` (n, n) float64, or keep its
    features when ``gram`` is None; and its sums.

    The centred layer is rounded to ``precision`` and every product of it (the Gram, XᵀX) is
    formed in that dtype; the sums over those products are float64.
    """
    if gram is None:
        xc, degenerate, exponent = _centre(x)
        xc = xc.to(precision)
        return _LayerTerms(xc, *_feature_sums(xc), degenerate, exponent)
    xc, degenerate, exponent = _centre(x, out=scratch.take(x.shape, x.dtype))
    if precision == torch.float64:
        _gram(xc, out=gram)
    else:
        gram.copy_(_gram(xc.to(precision)))
    if kernel == "rbf":
        k, degenerate = _rbf(gram, threshold, debiased)
        gram.copy_(k)
    # HSIC₁ centres implicitly and needs a zero diagonal; the biased estimator needs H K H
    k = gram.fill_diagonal_(0) if debiased else _centre_symmetric_(gram)
    return _LayerTerms(None, k.diagonal(), k.sum(1), torch.dot(k.flatten(), k.flatten()),
                       degenerate, exponent)


class _Scratch(threading.local):
    """A buffer per thread, reused for every centred layer needed only until its Gram is
    formed: a fresh array of hundreds of MB costs more in page faults (the OS zeroes each
    page) than centring it does."""

    def __init__(self, device: torch.device):
        self.buffer = torch.empty(0, device=device)

    def take(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        if self.buffer.dtype != dtype or self.buffer.numel() < numel:
            self.buffer = torch.empty(numel, dtype=dtype, device=self.buffer.device)
        return self.buffer[:numel].view(shape)


def _minibatch_layer(what: str, x: ArrayLike, gram: torch.Tensor | None, scratch: _Scratch, *,
                     device: torch.device, precision: torch.dtype) -> _LayerTerms:
    """One layer of a minibatch, (b, p) as given, kernelised for debiased linear CKA.

    At float32 precision a float32 x is used as it is; everything else goes through
    :func:`as_float64`, which checks it (2-D, real, finite) and converts it.
    """
    kernelise = dict(kernel="linear", threshold=None, debiased=True, precision=precision)
    if precision == torch.float32 and _is_float32_matrix(x):
        terms = _layer_terms(torch.as_tensor(x).detach().to(device), gram, scratch, **kernelise)
        if math.isfinite(terms.self_inner):
            return terms
        # x holds NaN or inf (scaled, nothing finite overflows): as_float64 reports where
    return _layer_terms(as_float64(x, what, device), gram, scratch, **kernelise)


@contextmanager
def _layer_workers(device: torch.device, *, lazy: bool) -> Iterator[Callable]:
    """A ``map`` over layers, in order, for kernelising them.

    On CPU: ``torch.get_num_threads()`` = T worker threads, each kernelising whole layers with
    torch and BLAS single-threaded inside (restored on exit). ``lazy``: the layers are read
    as workers free up, at most T at once (each may be a large array read from a file); else
    all are handed out at once, so no worker waits for another's longer layer. Spreading
    every small per-layer kernel over all cores instead made two threads slower than one:
    each kernel waits for its slowest thread, which a busy core deschedules, and NumPy's BLAS
    threads spin (for up to ~0.1 s) beside torch's OpenMP threads after every Gram. On other
    devices: the builtin ``map``.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu":
        yield map
        return
    torch.set_num_threads(1)
    try:
        with _blas_threads().limit(limits=1, user_api="blas"):
            if threads == 1:
                yield map
            else:
                with ThreadPoolExecutor(threads) as pool:
                    yield (functools.partial(_map_ahead, pool, ahead=threads) if lazy
                           else pool.map)
    finally:
        torch.set_num_threads(threads)


def _map_ahead(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, *, ahead: int
               ) -> Iterator:
    """``pool.map(fn, items)`` that holds at most ``ahead`` items at once (``pool.map`` reads
    them all first)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) == ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """The BLAS libraries loaded (NumPy's), found once: looking them up takes milliseconds."""
    return ThreadpoolController()


def _is_float32_matrix(x: ArrayLike) -> bool:
    return (isinstance(x, torch.Tensor) and x.dtype == torch.float32
            or isinstance(x, np.ndarray) and x.dtype == np.float32) and x.ndim == 2


def _hsic_terms(a: _Kernelised, b: _Kernelised, n: int, *, debiased: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(La, Lb) HSIC(K_a, L_b) and the (La,), (Lb,) self terms HSIC(K, K), HSIC(L, L).

    Biased: ⟨Kc, Lc⟩ (HSIC₀ times (n−1)², the factor cancels in CKA). Debiased: HSIC₁ with
    tr(K̃L̃) from the one GEMM, 1ᵀK̃1 from sums and 1ᵀK̃L̃1 = (K̃1)·(L̃1).
    """
    cross = _cross_inner(a, b)
    if not debiased:
        return cross, a.self_inner, b.self_inner
    ra, rb = a.rowsum - a.diag, b.rowsum - b.diag  # K̃1, L̃1
    sa, sb = ra.sum(1), rb.sum(1)
    ab = _hsic1(trace_kl=cross - a.diag @ b.diag.T, sum_k=sa[:, None], sum_l=sb[None, :],
                ones_kl_ones=ra @ rb.T, n=n)
    aa = _hsic1(trace_kl=a.self_inner - a.diag.square().sum(1), sum_k=sa, sum_l=sa,
                ones_kl_ones=ra.square().sum(1), n=n)
    bb = _hsic1(trace_kl=b.self_inner - b.diag.square().sum(1), sum_k=sb, sum_l=sb,
                ones_kl_ones=rb.square().sum(1), n=n)
    return ab, aa, bb


def _cross_inner(a: _Kernelised, b: _Kernelised) -> torch.Tensor:
    """(La, Lb) ⟨K_a, L_b⟩_F for all pairs in one GEMM."""
    if a.grams is not None:
        return a.grams.flatten(1) @ b.grams.flatten(1).T
    # ⟨XXᵀ, YYᵀ⟩ = ‖YᵀX‖²_F: square the (Σpa, Σpb) product (formed in the features' dtype),
    # then sum its (pa, pb) blocks in float64
    sq = (a.features.T @ b.features).double().square()
    per_row = torch.zeros(len(a.widths), sq.shape[1], dtype=sq.dtype, device=sq.device)
    per_row.index_add_(0, _segment_ids(a.widths, sq.device), sq)
    out = torch.zeros(len(a.widths), len(b.widths), dtype=sq.dtype, device=sq.device)
    return out.index_add_(1, _segment_ids(b.widths, sq.device), per_row)


def _segment_ids(widths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(Σ widths,) block number of every column: (2, 3) → [0, 0, 1, 1, 1]."""
    return torch.repeat_interleave(torch.arange(len(widths), device=device),
                                   torch.tensor(widths, device=device))


def _hsic1(*, trace_kl, sum_k, sum_l, ones_kl_ones, n: int):
    """Song et al.'s HSIC₁ from tr(K̃L̃), 1ᵀK̃1, 1ᵀL̃1 and 1ᵀK̃L̃1 (elementwise, broadcasting)."""
    return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones_kl_ones) / (n * (n - 3))


def _ratio(num: torch.Tensor, den_a: torch.Tensor, den_b: torch.Tensor) -> torch.Tensor:
    """(La, Lb) num / √(den_a ⊗ den_b); 0/0 stays NaN."""
    return num / torch.sqrt(den_a[:, None] * den_b[None, :])


def _centre(x: torch.Tensor, *, out: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, bool, int]:
    """(n, p) → (n, p) x·2^−e with zero column means (in x's dtype, written to ``out`` if
    given), whether x is constant (all its rows equal), and e.

    e is :func:`_exponent` of x: the scaled x has its largest magnitude in [½, 1), so neither
    its column sums nor the Gram matrices formed from it overflow or underflow, and scaling by
    a power of two is exact. x itself is left as it is (it may be the caller's array). Three
    passes over x: its extremes, its column means, and the scaled difference.
    """
    e = _exponent(x)
    if _is_constant(x):
        # exactly 0, so that a constant layer gives 0/0 = NaN rather than noise
        return (torch.zeros_like(x) if out is None else out.zero_()), True, e
    if abs(e) <= math.frexp(torch.finfo(x.dtype).max)[1] // 2:
        # x's column sums cannot overflow and 2^−e is a normal float of x's dtype: scale inside
        # the subtraction (s·x and s·mean are exact, so it rounds as s·(x − mean) does)
        scale = 2.0**-e
        return torch.add(_column_means(x).mul_(-scale), x, alpha=scale, out=out), False, e
    scaled = _ldexp(x, -e)
    return torch.sub(scaled, _column_means(scaled), out=scaled if out is None else out), False, e


def _is_constant(x: torch.Tensor) -> bool:
    """Whether every row of x (n, p) equals the first; row 1 first, where layers differ."""
    return bool((x[1:2] == x[:1]).all()) and bool((x == x[:1]).all())


def _column_means(x: torch.Tensor) -> torch.Tensor:
    """(n, p) → (1, p) column means, exactly the value of each constant column (a mean of n
    equal floats can be off by up to n/2 ulps), so that such a column centres to exactly 0.

    Only the columns whose mean is that close to, but not equal to, their first entry are
    checked in full: a few, where checking every column would cost a pass over x.
    """
    mean = x.mean(0, keepdim=True)
    first = x[:1]
    gap = (first - mean).abs_()
    near = ((gap > 0) & (gap <= first.abs() * (len(x) * torch.finfo(x.dtype).eps)))[0]
    if bool(near.any()):
        cols = near.nonzero()[:, 0]
        cols = cols[(x[:, cols] == first[:, cols]).all(0)]
        mean[0, cols] = first[0, cols]
    return mean


def _exponent(x: torch.Tensor) -> int:
    """e with 2^(e−1) ≤ max |x| < 2^e (:func:`math.frexp`); :data:`MIN_EXPONENT` when x is all
    zeros or empty."""
    if x.numel() == 0:
        return MIN_EXPONENT
    low, high = torch.aminmax(x)
    peak = max(float(high), -float(low))
    return math.frexp(peak)[1] if peak > 0 else MIN_EXPONENT


def _ldexp(x: torch.Tensor, k: int) -> torch.Tensor:
    """x·2^k as a new tensor, exact where the result is a normal float; in two factors, so
    that neither over- or underflows for |k| up to 2·1023."""
    half = k // 2
    return (x * 2.0**half).mul_(2.0 ** (k - half))


def _shifted(terms: torch.Tensor, shift_a: torch.Tensor, shift_b: torch.Tensor) -> torch.Tensor:
    """HSIC terms of two layers rescaled by a further 2^shift_a and 2^shift_b (shifts ≤ 0,
    elementwise, broadcasting): terms·2^(2·(shift_a + shift_b)), exact, or 0 where the result
    underflows (a batch that small adds nothing a float64 sum could show)."""
    return terms * torch.exp2(2 * (shift_a + shift_b))


def _rbf(g: torch.Tensor, threshold: float, debiased: bool) -> tuple[torch.Tensor, bool]:
    """The RBF kernel of the Gram g = X Xᵀ (n, n) up to a·K + b (a > 0), which CKA does not
    see (centring removes b, HSIC₁ ignores it off the diagonal, and the ratio cancels a), and
    whether it is degenerate (median squared distance 0: σ = 0; the kernel is then NaN).

    With u = ‖xᵢ − xⱼ‖² / median and t = ``threshold``, K = exp(−u / 2t²). Formed as it
    stands, K rounds to all ones for t ≫ 1 (1 − 1e−17 = 1: CKA 0/0, or digits lost well
    before that) and underflows to the identity for t ≪ 1 (debiased CKA, which reads only the
    off-diagonal entries, 0/0), so:

    * 2t² > 1: (K − 1)·2t² = −u·(1 − e^(−x))/x with x = u / 2t², exact to rounding for every
      x, and −u where x underflows (t → ∞: the limit, linear CKA);
    * otherwise K itself; debiased, its off-diagonal entries times exp(x_min) of the nearest
      pair (so the largest is 1 and they cannot all underflow) and a zero diagonal.
    """
    d2 = _sq_distances(g)
    median = _median(d2)  # Kornblith's bandwidth: over all n² entries, diagonal included
    if median == 0:
        return d2.fill_(math.nan), True
    u = d2.div_(median)
    threshold = float(threshold)  # a Python float: 2t² overflows to inf without a warning
    if 2 * threshold * threshold > 1:
        x = u / (2 * threshold * threshold)  # 0 where 2t² overflows: the limit
        k = torch.expm1(-x).div_(x).neg_().masked_fill_(x == 0, 1.0)  # (1 − e^(−x))/x
        return k.mul_(u).neg_(), False
    if debiased:
        u = u.fill_diagonal_(math.inf)
        u = u.sub_(u.min())
    # t twice, not 2t², which underflows to 0 for tiny t (and 0/0 is NaN on the diagonal)
    return u.div_(threshold).div_(threshold).div_(-2).exp_(), False


def _centre_gram(k: torch.Tensor) -> torch.Tensor:
    """H K H of one (n, n) Gram or of a stack (L, n, n)."""
    return (k - k.mean(-2, keepdim=True) - k.mean(-1, keepdim=True)
            + k.mean((-2, -1), keepdim=True))


def _gram(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, p) → (n, n) X Xᵀ, in ``out`` (n, n) if given."""
    if x.device.type == "cpu":
        # NumPy sends X @ X.T to BLAS SYRK (half the FLOPs); torch runs a full GEMM
        xn = x.numpy()
        return torch.from_numpy(np.matmul(xn, xn.T, out=None if out is None else out.numpy()))
    return torch.mm(x, x.T, out=out)


def _centre_symmetric_(k: torch.Tensor) -> torch.Tensor:
    """H K H in place for a symmetric (n, n) K, whose row means are its column means."""
    means = k.mean(1)
    return k.sub_(means[:, None]).sub_(means[None, :]).add_(means.mean())


def _sq_distances(g: torch.Tensor) -> torch.Tensor:
    """(n, n) Gram X Xᵀ → (n, n) squared distances ‖xᵢ − xⱼ‖² (exactly 0 on the diagonal)."""
    sq = g.diagonal()
    return sq[:, None] + sq[None, :] - 2 * g


def _median(t: torch.Tensor) -> torch.Tensor:
    """NumPy's median (mean of the two middle values for an even count) of all entries."""
    flat = t.flatten()
    m = flat.numel()
    return (torch.kthvalue(flat, (m + 1) // 2).values + torch.kthvalue(flat, m // 2 + 1).values) / 2


def _prefer_features(widths: list[int], n: int) -> bool:
    """Feature form is cheaper than n×n Grams when every layer has fewer features than rows."""
    return max(widths) < n


def _warn_constant(label: str, what: str) -> None:
    warnings.warn(f"{label} {what}: its CKA values are NaN", ConstantRepresentationWarning,
                  stacklevel=3)


def _width(x: ArrayLike) -> int:
    return x.shape[1] if len(x.shape) == 2 else -1  # -1: wrong rank, rejected on conversion


# ---------------------------------------------------------------------------------------------
# Input checks (every error says what was wrong and how to fix it)
# ---------------------------------------------------------------------------------------------


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> int:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows and y has {y.shape[0]}; CKA compares the "
                         f"same inputs, so row i of x and of y must come from input i")
    return x.shape[0]


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)} (the dtype Gram "
                         f"matrices are formed in), got {precision!r}")
    return precision


def _check_form(form: str) -> None:
    if form not in ("auto", "features", "gram"):
        raise ValueError(f"form must be 'auto', 'features' or 'gram', got {form!r}")


def _check_grams(k: torch.Tensor, l: torch.Tensor) -> int:  # noqa: E741
    if k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"k and l must be square Gram matrices of the same shape (n, n), got "
                         f"{tuple(k.shape)} and {tuple(l.shape)}")
    if k.shape[0] < 4:
        raise ValueError(f"unbiased HSIC needs n >= 4 rows (it divides by n−3), got n="
                         f"{k.shape[0]}; use more inputs")
    return k.shape[0]


def _check_settings(*, kernel: str, threshold: float | None, debiased: bool, n: int,
                    batch_size: int | None) -> None:
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if kernel == "rbf" and not (isinstance(threshold, (int, float)) and 0 < threshold < math.inf):
        raise ValueError(f"threshold must be a positive finite number (the RBF bandwidth as a "
                         f"fraction of the median distance), got {threshold!r}")
    min_rows = 4 if debiased else 2
    if n < min_rows:
        raise ValueError(f"{'debiased' if debiased else 'biased'} CKA needs at least {min_rows} "
                         f"rows, got n={n}; use more inputs")
    if batch_size is not None:
        if kernel != "linear":
            raise ValueError(f"the minibatch estimator (batch_size={batch_size}) supports only "
                             f"kernel='linear', got {kernel!r}; use batch_size=None for RBF")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 4:
            raise ValueError(f"batch_size must be an integer >= 4 (HSIC₁ needs 4 rows per "
                             f"batch), got {batch_size!r}")
        last = n % batch_size
        if 0 < last < 4:
            raise ValueError(
                f"n={n} rows in batches of {batch_size} leave a last batch of {last} rows, but "
                f"HSIC₁ needs >= 4; choose a batch_size whose remainder is 0 or >= 4, e.g. "
                f"{_nearest_batch_size(n, batch_size)}")


def _nearest_batch_size(n: int, batch_size: int) -> int:
    """The batch size nearest ``batch_size`` whose last batch is empty or has >= 4 rows."""
    candidates = (s for d in range(1, n) for s in (batch_size - d, batch_size + d) if s >= 4)
    return next(s for s in candidates if n % s == 0 or n % s >= 4)


def _check_batches(batch_a: Mapping[str, ArrayLike], layers_a: tuple[str, ...],
                   batch_b: Mapping[str, ArrayLike], layers_b: tuple[str, ...]) -> int:
    """Rows b of one update: both sides, all layers, the same b >= 4."""
    rows = {}
    for side, batch, layers in (("a", batch_a, layers_a), ("b", batch_b, layers_b)):
        missing = [m for m in layers if m not in batch]
        if missing:
            raise ValueError(f"batch_{side} lacks layers {missing}; it has {list(batch)}")
        for m in layers:
            rows[f"batch_{side}[{m!r}]"] = len(batch[m])
    counts = set(rows.values())
    if len(counts) > 1:
        raise ValueError(f"all layers of both sides must have the same rows in a batch (the same "
                         f"inputs), got {rows}")
    b = counts.pop()
    if b < 4:
        raise ValueError(f"a batch has {b} rows but HSIC₁ needs at least 4; use larger batches")
    return b
