"""Linear probes: how linearly separable each layer's representation is (Alain & Bengio 2016).

The protocol is the same for every model and layer:

1. standardise every feature with the mean and standard deviation of the **train** split (a
   zero-variance feature keeps scale 1, so it becomes 0 rather than NaN);
2. fit a multinomial logistic regression (a single logit when there are two classes, as in
   scikit-learn) with an L2 penalty on the weights W (K', D) but not on the intercepts b; the
   objective is scikit-learn's ``C·Σᵢ CE + ½‖W‖²_F`` divided by ``C·n``, i.e.
   ``mean CE + ‖W‖²_F / (2·C·n)``, so ``C`` means the same on both solver paths;
3. choose C from a grid by stratified K-fold cross-validation on the train split only (highest
   mean validation accuracy; ties go to the smaller C, the stronger penalty);
4. refit on the whole train split with that C and evaluate once on test.

Solvers (the minimiser is the same; they differ in speed):

* ``"sklearn"``: :class:`sklearn.linear_model.LogisticRegression` (lbfgs), warm-started along
  the ascending C grid.
* ``"torch"``: full-batch :class:`torch.optim.LBFGS` with a strong Wolfe line search, float32 or
  float64, on any device. It runs in preconditioned coordinates ``W = P V`` with
  ``P = (c·Σ + λI)^(-1/2)``, Σ = ZᵀZ/n the second-moment matrix of the standardised features,
  λ = 1/(C·n) and c = :data:`CURVATURE`: a change of variables leaves the objective and its
  minimiser unchanged, and on ResNet features it cuts the L-BFGS iterations at large C about
  tenfold. Above :data:`PRECONDITION_MAX_DIM` features the D×D eigendecomposition costs more
  than it saves and P = I. Its stopping test (largest gradient component below ``tol``) applies
  to the gradient with respect to (V, b). The objective and its closed-form gradient are
  summed over row blocks, so the features may also stream from a file
  (:class:`StreamedFeatures`, ``probe_layers(max_memory=...)``): each evaluation then reads
  the file again, one block at a time, and :func:`probe_memory` bounds what is held.

``solver="auto"`` uses torch when the feature dimension exceeds ``torch_threshold``; the default
threshold 0 means always, because the preconditioned path was faster at every dimension we
measured (D = 16 … 64, n = 6,667). Fits run with ``threads`` CPU threads (default 1, see
:func:`_cpu_threads`); the previous thread settings are restored afterwards.

Dimension matching: a wider layer is more separable for its width alone.
``probe_layers(match_dim=d, match_seed=s)`` probes every layer of D > d features on x @ R, R
(D, d) the seeded Gaussian matrix of :func:`repsim.projection.projection_matrix` (the same for
train and test, every model and every run); narrower layers are probed as they are. R
multiplies the raw features, whose distances it keeps (Johnson–Lindenstrauss); the probe then
standardises the projected ones as any others. A projected layer is read in one pass of row
blocks (within ``max_memory`` when given, see :func:`projection_block_rows`) into an (N, d)
array that is probed in memory.

Chance level, as reported by :func:`probe_layers`: the test accuracy of always predicting the
most frequent train class (ties: the smallest label). It is what a probe that learnt nothing
but the train class frequencies scores, and it differs from 1/K on unbalanced splits.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits
from torch.nn import functional as F
from tqdm.auto import tqdm

from repsim.projection import check_match, project, projection_matrix, projection_memory
from repsim.streaming import (
    MemoryRows,
    ProbeError,
    StreamedFeatures,
    StreamedRows,
    array_blocks,
    column_moments,
    feature_width,
    standardise,
)

__all__ = [
    "ActivationSet",
    "LinearProbe",
    "ProbeError",
    "ProbeRow",
    "ProbeSettings",
    "ProbeTable",
    "StreamedFeatures",
    "probe_block_rows",
    "projection_block_rows",
    "probe_layers",
    "probe_memory",
]

Solver = Literal["auto", "sklearn", "torch"]

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PRECONDITION_MAX_DIM = 4096  # features; eigh of a D×D matrix is O(D³)
# Scale of the softmax loss's curvature in the preconditioner; any c > 0 gives the same
# minimiser. 0.5 needed the fewest iterations among 0.04 … 2 on ResNet-32 GAP features.
CURVATURE = 0.5
GAP = "gap"  # the default reduction for probes


@dataclass(frozen=True)
class ProbeSettings:
    """Settings of :class:`LinearProbe`, checked on construction."""

    Cs: tuple[float, ...] = DEFAULT_CS  # inverse L2 strengths (scikit-learn's C), ascending
    cv: int = 3                         # stratified folds on the train split
    max_iter: int = 1000                # L-BFGS iterations per fit
    tol: float = 1e-4                   # stop when the largest gradient component is below
    solver: Solver = "auto"
    torch_threshold: int = 0            # features; "auto" uses torch above this dimension
    device: str = "cpu"                 # torch path only, e.g. "cuda"
    dtype: Literal["float32", "float64"] = "float32"  # of the standardised features and fits
    random_state: int = 0               # seeds the shuffle of the CV folds
    threads: int | None = 1             # CPU threads while fitting; None: leave as they are

    def __post_init__(self):
        cs = np.asarray(self.Cs, dtype=float)
        if cs.ndim != 1 or cs.size == 0 or not np.all(np.isfinite(cs) & (cs > 0)) \
                or np.any(np.diff(cs) <= 0):
            raise ProbeError(f"Cs must be positive finite numbers in ascending order, got "
                             f"{self.Cs!r}; e.g. Cs=(0.01, 0.1, 1.0)")
        object.__setattr__(self, "Cs", tuple(float(c) for c in cs))
        for name in ("cv", "max_iter", "torch_threshold", "random_state"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ProbeError(f"{name} must be an int, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ProbeError(f"threads must be a positive int or None, got {self.threads!r}")
        if self.cv < 2:
            raise ProbeError(f"cv must be at least 2 folds, got {self.cv}")
        if self.max_iter < 1 or self.torch_threshold < 0:
            raise ProbeError(f"need max_iter >= 1 and torch_threshold >= 0, got "
                             f"max_iter={self.max_iter}, torch_threshold={self.torch_threshold}")
        if not self.tol > 0:
            raise ProbeError(f"tol must be positive, got {self.tol!r}")
        if self.solver not in ("auto", "sklearn", "torch"):
            raise ProbeError(f"solver must be 'auto', 'sklearn' or 'torch', got {self.solver!r}")
        if self.dtype not in ("float32", "float64"):
            raise ProbeError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ProbeError(f"device {self.device!r} is not a torch device ({err}); "
                             "use e.g. 'cpu' or 'cuda'") from err

    def solver_for(self, dim: int, streamed: bool = False) -> Literal["sklearn", "torch"]:
        """The solver used for ``dim`` features (always torch for streamed features)."""
        if streamed and self.solver == "sklearn":
            raise ProbeError("solver='sklearn' needs the features in memory; streamed "
                             "features (StreamedFeatures) are fitted with solver='torch' or "
                             "'auto'")
        if self.solver != "auto":
            return self.solver
        return "torch" if streamed or dim > self.torch_threshold else "sklearn"


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardise → L2 multinomial logistic regression with C chosen by stratified CV.

    Parameters are those of :class:`ProbeSettings`. Fitted attributes:

    * ``mean_``, ``scale_`` (D,) float64: the train standardisation (scale 1 where constant);
    * ``classes_`` (K,): the train labels, sorted;
    * ``cv_scores_`` (cv, len(Cs)): validation accuracy per fold and C;
    * ``C_``: the chosen C; ``coef_`` (K', D) float64 and ``intercept_`` (K',) of the refit on
      standardised features (K' = 1 for two classes, else K);
    * ``solver_`` ("sklearn" | "torch"), ``n_iter_``: L-BFGS iterations of the refit.

    >>> probe = LinearProbe().fit(x_train, y_train)     # doctest: +SKIP
    >>> probe.score(x_test, y_test), probe.C_           # doctest: +SKIP
    """

    def __init__(self, *, Cs: Sequence[float] = DEFAULT_CS, cv: int = 3, max_iter: int = 1000,
                 tol: float = 1e-4, solver: Solver = "auto", torch_threshold: int = 0,
                 device: str = "cpu", dtype: str = "float32", random_state: int = 0,
                 threads: int | None = 1):
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.torch_threshold = torch_threshold
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.threads = threads

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Fit on X (n, D) and labels y (n,); only these rows are ever seen.

        X: an array or tensor, or :class:`StreamedFeatures` to read it from a file in row
        blocks (the torch solver then holds one block at a time)."""
        settings = ProbeSettings(**self.get_params())
        x, y = _check_xy(X, y)
        _check_labels(y, settings.cv)
        self.classes_, codes = np.unique(y, return_inverse=True)
        streamed = isinstance(x, StreamedFeatures)
        self.mean_, self.scale_ = column_moments(
            x.blocks if streamed else lambda: array_blocks(x))
        self.solver_ = settings.solver_for(x.shape[1], streamed)
        rows = self._rows(x, codes, settings)
        path = _SOLVER_PATHS[self.solver_]
        with _cpu_threads(settings.threads):
            self.cv_scores_, mean_fits = _cross_validate(rows, len(self.classes_), path,
                                                         settings)
            best = int(np.argmax(self.cv_scores_.mean(axis=0)))  # first maximum: smallest C
            self.C_ = settings.Cs[best]
            (final,) = path(rows, len(self.classes_), (self.C_,), mean_fits[best], settings)
        self.coef_, self.intercept_, self.n_iter_ = final.coef, final.intercept, final.n_iter
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits (n, K') of X (n, D); for two classes (n,), positive for ``classes_[1]``."""
        scores = np.concatenate([_scores(z, self.coef_, self.intercept_).numpy()
                                 for z in self._standardised_blocks(X)])
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (n,) of X (n, D) (an array or :class:`StreamedFeatures`)."""
        fit = _Fit(self.coef_, self.intercept_, 0)
        codes = [_predict_codes(z, fit).numpy() for z in self._standardised_blocks(X)]
        return self.classes_[np.concatenate(codes)]

    def _rows(self, x: np.ndarray | StreamedFeatures, codes: np.ndarray,
              settings: ProbeSettings) -> MemoryRows | StreamedRows:
        """The standardised train rows the solver iterates over."""
        dtype = getattr(torch, settings.dtype)
        device = torch.device(settings.device if self.solver_ == "torch" else "cpu")
        if isinstance(x, StreamedFeatures):
            return StreamedRows(x, self.mean_, self.scale_, codes, np.ones(len(codes), bool),
                                dtype=dtype, device=device)
        z = standardise(x, self.mean_, self.scale_)
        return MemoryRows(torch.as_tensor(z, dtype=dtype, device=device), codes)

    def _standardised_blocks(self, X: Any):
        """Standardised (b, D) CPU tensors of X in row order: one block for an array."""
        if isinstance(X, StreamedFeatures):
            _check_width(X.shape[1], len(self.mean_))
            for _, block in X.blocks():
                yield torch.as_tensor(standardise(block, self.mean_, self.scale_))
        else:
            x = _check_features(X, len(self.mean_))
            yield torch.as_tensor(standardise(x, self.mean_, self.scale_))


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_features(X: Any, dim: int | None = None) -> np.ndarray:
    """X as a finite (n, D) float array; D must equal ``dim`` when given."""
    x = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X)
    if not np.issubdtype(x.dtype, np.number):
        raise ProbeError(f"features must be numbers, got dtype {x.dtype}; pass the layer's "
                         "activations as a float array")
    feature_width(x)
    if dim is not None:
        _check_width(x.shape[1], dim)
    if not np.all(np.isfinite(x)):
        raise ProbeError(f"features contain {np.size(x) - np.isfinite(x).sum()} NaN or "
                         "infinite values; check the layer's activations")
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _check_width(width: int, dim: int) -> None:
    if width != dim:
        raise ProbeError(f"features have {width} columns but the probe was fitted on "
                         f"{dim}; pass features of the same layer and reduction")


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray | StreamedFeatures, np.ndarray]:
    """Features (an array, or streamed ones as they are) and labels (n,) of the same n."""
    x = X if isinstance(X, StreamedFeatures) else _check_features(X)
    labels = np.asarray(y)
    if labels.shape != (x.shape[0],):
        raise ProbeError(f"labels must have shape ({x.shape[0]},) to match the features, got "
                         f"{labels.shape}")
    return x, labels


def _check_labels(y: np.ndarray, cv: int) -> None:
    """Refuse labels (n,) with under 2 classes or a class with fewer rows than ``cv`` folds."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ProbeError(f"need at least 2 classes to probe, got only {classes.tolist()}")
    rare = counts < cv
    if rare.any():
        raise ProbeError(
            f"stratified {cv}-fold cross-validation needs at least {cv} train samples per "
            f"class; class(es) {classes[rare].tolist()} have {counts[rare].tolist()}; "
            f"use more samples or a smaller cv"
        )


# ---------------------------------------------------------------------------------------------
# Solver paths: fit one training set at each C of an ascending grid, warm-starting each fit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    coef: np.ndarray       # (K', D) float64 on standardised features
    intercept: np.ndarray  # (K',) float64
    n_iter: int            # L-BFGS iterations


Rows = MemoryRows | StreamedRows  # standardised train rows with their class codes


def _scores(z: torch.Tensor, coef: np.ndarray, intercept: np.ndarray) -> torch.Tensor:
    """Logits (n, K') of standardised features z (n, D)."""
    return torch.addmm(torch.as_tensor(intercept, dtype=z.dtype, device=z.device), z,
                       torch.as_tensor(coef.T, dtype=z.dtype, device=z.device))


def _predict_codes(z: torch.Tensor, fit: _Fit) -> torch.Tensor:
    """Class codes (n,) in 0 … K-1 predicted for standardised features z (n, D)."""
    scores = _scores(z, fit.coef, fit.intercept)
    return (scores[:, 0] > 0).long() if scores.shape[1] == 1 else scores.argmax(1)


def _accuracy(rows: Rows, fit: _Fit) -> float:
    correct = sum(int((_predict_codes(z, fit) == target).sum()) for z, target in rows.blocks())
    return correct / rows.n


def _sklearn_path(rows: MemoryRows, n_classes: int, Cs: Sequence[float],
                  start: _Fit | None, settings: ProbeSettings) -> list[_Fit]:
    """Fits (one per C) of scikit-learn's lbfgs LogisticRegression on in-memory rows."""
    model = LogisticRegression(max_iter=settings.max_iter, tol=settings.tol, warm_start=True)
    if start is not None:  # warm_start reuses coef_/intercept_ as the initial point
        model.coef_, model.intercept_ = start.coef.copy(), start.intercept.copy()
    z = rows.z.cpu().numpy()
    fits = []
    for C in Cs:
        model.set_params(C=C).fit(z, rows.codes)
        fits.append(_Fit(model.coef_.astype(np.float64), model.intercept_.astype(np.float64),
                         int(model.n_iter_[0])))
    return fits


def _torch_path(rows: Rows, n_classes: int, Cs: Sequence[float], start: _Fit | None,
                settings: ProbeSettings) -> list[_Fit]:
    """Fits (one per C) of preconditioned full-batch L-BFGS on the rows, in memory or
    streamed block by block."""
    dtype, device = getattr(torch, settings.dtype), torch.device(settings.device)
    outputs = 1 if n_classes == 2 else n_classes
    eig = (torch.linalg.eigh(_second_moment(rows, dtype, device))
           if rows.dim <= PRECONDITION_MAX_DIM else None)
    if start is None:
        w = torch.zeros(rows.dim, outputs, dtype=dtype, device=device)
        b = torch.zeros(outputs, dtype=dtype, device=device)
    else:
        w = torch.as_tensor(start.coef.T, dtype=dtype, device=device)
        b = torch.as_tensor(start.intercept, dtype=dtype, device=device)
    fits = []
    for C in Cs:
        p, p_inv = _preconditioner(eig, 1.0 / (C * rows.n))
        w, b, n_iter = _lbfgs(rows, C, p, p_inv, w, b, settings)
        fits.append(_Fit(w.T.double().cpu().numpy(), b.double().cpu().numpy(), n_iter))
        del p, p_inv  # before the next pair is built: hold 5·D², not 7·D² (probe_memory)
    return fits


def _second_moment(rows: Rows, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Σ = ZᵀZ / n (D, D) of the standardised rows."""
    sigma = torch.zeros(rows.dim, rows.dim, dtype=dtype, device=device)
    for z, _ in rows.blocks():
        sigma.addmm_(z.T, z)
    return sigma.div_(rows.n)


def _preconditioner(eig: tuple[torch.Tensor, torch.Tensor] | None, lam: float
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """P = (c·Σ + λI)^(-1/2) and P⁻¹, (D, D), from Σ's eigendecomposition; None for P = I."""
    if eig is None:
        return None, None
    values, vectors = eig
    root = (CURVATURE * values.clamp(min=0) + lam).sqrt()
    return (vectors / root) @ vectors.T, (vectors * root) @ vectors.T


def _objective(rows: Rows, w: torch.Tensor, b: torch.Tensor, lam: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean CE(z W + b) + ½λ‖W‖² over the rows, and its gradients by W (D, K') and b (K').

    The gradients are the closed forms Zᵀ(P − Y)/n + λW and Σ(P − Y)/n (P the predicted
    probabilities, Y the one-hot targets), summed block by block, so a streamed pass holds
    one block and never an autograd graph."""
    loss = torch.zeros((), dtype=w.dtype, device=w.device)
    grad_w, grad_b = torch.zeros_like(w), torch.zeros_like(b)
    for z, target in rows.blocks():
        block_loss, residual = _loss_and_residual(torch.addmm(b, z, w), target)
        loss += block_loss
        grad_w.addmm_(z.T, residual)
        grad_b += residual.sum(0)
    return (loss / rows.n + 0.5 * lam * (w * w).sum(),
            grad_w.div_(rows.n).add_(w, alpha=lam), grad_b.div_(rows.n))


def _loss_and_residual(logits: torch.Tensor, target: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of logits (b, K') and its gradient by the logits (b, K').

    One logit (two classes) is scikit-learn's binomial model: σ(s) is P(class 1)."""
    if logits.shape[1] == 1:
        t = target.to(logits.dtype)[:, None]
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="sum")
        return loss, torch.sigmoid(logits) - t
    log_p = torch.log_softmax(logits, 1)
    loss = -log_p.gather(1, target[:, None]).sum()
    residual = log_p.exp_()
    residual[torch.arange(len(target), device=target.device), target] -= 1
    return loss, residual


def _lbfgs(rows: Rows, C: float, p, p_inv, w, b, settings: ProbeSettings):
    """Minimise :func:`_objective` with λ = 1/(C·n) over W = P V and b, from (w, b).

    w (D, K'), b (K'); returns (W, b, iterations).
    """
    lam = 1.0 / (C * rows.n)
    # LBFGS flattens gradients with .view(-1): the parameters must be contiguous
    v = (w if p_inv is None else p_inv @ w).clone(memory_format=torch.contiguous_format)
    b = b.clone()
    # scipy's (and so scikit-learn's) lbfgs stops on a loss change of 64 ulp, not torch's 1e-9
    optimiser = torch.optim.LBFGS([v, b], lr=1, max_iter=settings.max_iter,
                                  tolerance_grad=settings.tol,
                                  tolerance_change=64 * torch.finfo(w.dtype).eps,
                                  history_size=10, line_search_fn="strong_wolfe")

    def weights():
        return v if p is None else p @ v

    def closure():
        loss, grad_w, grad_b = _objective(rows, weights(), b, lam)
        v.grad = grad_w if p is None else p @ grad_w  # W = P V with P symmetric
        b.grad = grad_b
        return loss

    optimiser.step(closure)
    n_iter = optimiser.state[v]["n_iter"]
    if n_iter >= settings.max_iter:
        warnings.warn(f"torch L-BFGS did not converge in max_iter={settings.max_iter} "
                      f"iterations (C = {C:g}); raise max_iter",
                      ConvergenceWarning, stacklevel=4)
    return weights(), b, int(n_iter)


_SOLVER_PATHS = {"sklearn": _sklearn_path, "torch": _torch_path}


def _cross_validate(rows: Rows, n_classes: int, path, settings: ProbeSettings
                    ) -> tuple[np.ndarray, list[_Fit]]:
    """Stratified K-fold CV of every C on the standardised train rows.

    Returns the validation accuracies (cv, len(Cs)) and, per C, the mean of the fold fits
    (the refit's starting point).
    """
    folds = StratifiedKFold(settings.cv, shuffle=True, random_state=settings.random_state)
    scores = np.empty((settings.cv, len(settings.Cs)))
    fold_fits = []
    for f, (fit_rows, val_rows) in enumerate(folds.split(rows.codes, rows.codes)):
        fits = path(rows.subset(fit_rows), n_classes, settings.Cs, None, settings)
        held_out = rows.subset(val_rows)
        scores[f] = [_accuracy(held_out, fit) for fit in fits]
        fold_fits.append(fits)
    mean_fits = [_Fit(np.mean([fits[i].coef for fits in fold_fits], axis=0),
                      np.mean([fits[i].intercept for fits in fold_fits], axis=0), 0)
                 for i in range(len(settings.Cs))]
    return scores, mean_fits


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Limit BLAS, OpenMP and torch intra-op threads to ``n`` inside (None: no change).

    An L-BFGS iteration here is a few small GEMMs, for which thread synchronisation costs more
    than the threads save: with 2 threads on 2 busy cores a fit ran 20-50× slower than with 1.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Probing every layer of a train and a test activation set
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationSet:
    """In-memory activations with the reading interface of :class:`repsim.store.ActivationFile`.

    ``layers`` maps layer names (in depth order) to (N, D) arrays of one ``reduction``;
    ``labels`` (N,); ``indices`` (N,) dataset indices or None; ``meta`` e.g. dataset, split.
    """

    layers: Mapping[str, Any]
    labels: Any
    meta: Mapping[str, Any] = field(default_factory=dict)
    indices: Any = None
    reduction: str = GAP

    def read(self, layer: str, reduction: str, rows: slice | None = None) -> np.ndarray:
        """(N, D) activations of ``layer``; ``reduction`` must be the set's own."""
        if reduction != self.reduction:
            raise ProbeError(f"these in-memory activations are {self.reduction!r} features, "
                             f"not {reduction!r}; pass reduction={self.reduction!r}")
        return np.asarray(self.layers[layer])[rows if rows is not None else slice(None)]


@dataclass(frozen=True)
class ProbeRow:
    """The probe of one layer."""

    layer: str
    depth: int            # position of the layer in the train file's layer order
    rel_depth: float      # depth / (L − 1), L layers in the file (0 when L = 1)
    dim: int              # the layer's feature dimension D
    probe_dim: int        # features probed: match_dim for a randomly projected layer, else D
    C: float              # chosen inverse L2 strength
    train_acc: float      # accuracy of the refit on the train split
    test_acc: float
    chance: float         # test accuracy of always predicting the most frequent train class
    n_train: int
    n_test: int
    solver: str           # "sklearn" | "torch"


@dataclass(frozen=True)
class ProbeTable:
    """One :class:`ProbeRow` per probed layer, in depth order, with the protocol used."""

    rows: tuple[ProbeRow, ...]
    reduction: str
    settings: ProbeSettings
    match_dim: int | None = None  # features of the random projection of wider layers; None: off
    match_seed: int = 0           # seed of that projection

    def records(self) -> list[dict]:
        """The rows as dicts (e.g. for ``csv.DictWriter`` or ``pandas.DataFrame``)."""
        return [asdict(row) for row in self.rows]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def probe_layers(train: Any, test: Any, *, reduction: str = GAP,
                 layers: Sequence[str] | None = None, progress: bool = False,
                 max_memory: int | None = None, match_dim: int | None = None,
                 match_seed: int = 0, **probe_kwargs: Any) -> ProbeTable:
    """Probe every layer (or ``layers``) of a train and a test activation set.

    ``train``/``test``: :class:`repsim.store.ActivationFile`, :class:`ActivationSet`, or a dict
    ``{"layers": {name: (N, D)}, "labels": (N,), "meta": {...}, "indices": (N,)}``.
    ``max_memory`` (bytes): stream each layer that does not fit this budget from the sets in
    row blocks as large as :func:`probe_memory` allows (for files larger than memory; the
    torch solver is used); a layer that fits is read whole. ``match_dim``: probe every layer
    of more than match_dim features on its seeded random projection to match_dim features
    (:mod:`repsim.projection`, seed ``match_seed``), so layers of different widths are
    compared at one dimension. ``probe_kwargs`` go to :class:`LinearProbe`. Refuses sets of
    different datasets, test classes the train split lacks, missing layers, and the same rows
    used as train and test.
    """
    train, test = _as_source(train, "train"), _as_source(test, "test")
    settings = ProbeSettings(**probe_kwargs)
    if match_dim is not None:
        check_match(match_dim, match_seed)
    names = _check_pair(train, test, layers, settings.cv)
    y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
    chance = float(np.mean(y_test == _most_frequent(y_train)))
    order = list(train.layers)
    rows = []
    reader = _LayerReader(reduction, max_memory, len(np.unique(y_train)), settings.dtype,
                          match_dim, match_seed)
    for name in tqdm(names, desc="probing layers", disable=not progress):
        x_train, dim = reader.read(train, name)
        probe = LinearProbe(**asdict(settings)).fit(x_train, y_train)
        probe_dim, train_acc = x_train.shape[1], float(probe.score(x_train, y_train))
        del x_train  # the test split is read once the train split is let go (max_memory)
        x_test, test_dim = reader.read(test, name)
        if test_dim != dim:
            raise ProbeError(f"layer {name!r} has {dim} features in the train set but "
                             f"{test_dim} in the test set; extract both splits from the same "
                             "model with the same reduction")
        depth = order.index(name)
        rows.append(ProbeRow(
            layer=name, depth=depth, rel_depth=depth / max(len(order) - 1, 1), dim=dim,
            probe_dim=probe_dim, C=probe.C_, train_acc=train_acc,
            test_acc=float(probe.score(x_test, y_test)), chance=chance, n_train=len(y_train),
            n_test=len(y_test), solver=probe.solver_,
        ))
    return ProbeTable(tuple(rows), reduction, settings, match_dim, match_seed)


# ---------------------------------------------------------------------------------------------
# The memory rule of a streamed fit
# ---------------------------------------------------------------------------------------------


def probe_memory(dim: int, n: int, n_classes: int, block_rows: int,
                 dtype: str = "float32") -> int:
    """Bytes the arrays of a streamed probe fit of n rows × dim features take at most (not
    counted: the interpreter and libraries, freed blocks the allocator keeps, and what the
    caller holds; measured, RSS grew by about 1.4× this; give ``max_memory`` half of what may
    be used).

    * per row of a block: the block read, 4·D (float32), its finiteness mask, 1·D, the kept
      rows' copy, 4·D, and the standardised rows with their temporary, 8·D (float64 during
      :func:`column_moments`, the same bytes); float64 fits add the solver's copy, 8·D;
      logits and their gradient, 3·K'·8;
    * per row of the file: labels, codes, fold indices and masks, 64 bytes;
    * per feature: Σ, its eigenvectors, the preconditioner and its inverse, 5·D²·s (s the
      solver's bytes per number; none above :data:`PRECONDITION_MAX_DIM` features), and the
      weights, gradients and L-BFGS's 10 pairs of history, 26·D·K'·s.
    """
    outputs = 1 if n_classes == 2 else n_classes
    size = 8 if dtype == "float64" else 4
    per_block_row = (17 if size == 4 else 25) * dim + 24 * outputs
    preconditioner = 5 * dim * dim * size if dim <= PRECONDITION_MAX_DIM else 0
    return block_rows * per_block_row + 64 * n + preconditioner + 26 * dim * outputs * size


def probe_block_rows(dim: int, n: int, n_classes: int, max_memory: int,
                     dtype: str = "float32") -> int:
    """The largest block (≤ n rows) whose :func:`probe_memory` fits in ``max_memory`` bytes."""
    rows = _largest_block(lambda b: probe_memory(dim, n, n_classes, b, dtype), n, max_memory)
    if rows < 1:
        need = probe_memory(dim, n, n_classes, 1, dtype) / 2**20
        held = (f"the {dim}×{dim} preconditioner and per-row labels"
                if dim <= PRECONDITION_MAX_DIM else "per-row labels, folds and the weights")
        raise ProbeError(f"max_memory={max_memory / 2**20:.3g} MiB cannot hold a probe of "
                         f"{dim} features and {n} rows (at least {need:.1f} MiB: {held}); "
                         "raise max_memory or probe a smaller reduction (e.g. gap or pool2)")
    return int(rows)


def projection_block_rows(dim: int, match_dim: int, n: int, n_classes: int, max_memory: int,
                          dtype: str = "float32") -> int:
    """The largest block (≤ n rows) whose one-pass projection of n rows, dim → match_dim
    features (:func:`repsim.projection.projection_memory`), fits in ``max_memory`` bytes.

    The projected (n, match_dim) features are then probed in memory, which must fit too
    (:func:`probe_memory` with one block of n rows); a budget that cannot hold both is refused.
    """
    rows = _largest_block(lambda b: projection_memory(dim, match_dim, n, b), n, max_memory)
    fit = probe_memory(match_dim, n, n_classes, n, dtype)
    if rows < 1 or fit > max_memory:
        need = max(projection_memory(dim, match_dim, n, 1), fit) / 2**20
        raise ProbeError(f"max_memory={max_memory / 2**20:.3g} MiB cannot hold the random "
                         f"projection of {dim} features to match_dim={match_dim} for {n} rows "
                         f"and the in-memory probe of it (at least {need:.1f} MiB: the "
                         f"{dim}×{match_dim} float32 matrix, the projected rows and the probe); "
                         "raise max_memory or lower match_dim")
    return int(rows)


def _largest_block(memory: Callable[[int], int], n: int, max_memory: Any) -> int:
    """The largest b ≤ n with memory(b) ≤ max_memory, for a memory rule linear in the block
    rows b; 0 when not even b = 1 fits."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) \
            or max_memory <= 0:
        raise ProbeError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    fixed = memory(0)
    return int(max(0, min(n, (max_memory - fixed) // (memory(1) - fixed))))


@dataclass(frozen=True)
class _LayerReader:
    """How :func:`probe_layers` reads a layer's features: whole, streamed or projected."""

    reduction: str
    max_memory: int | None  # bytes; None: read every layer whole
    n_classes: int
    dtype: str              # of the probe's fits
    match_dim: int | None   # project layers wider than this; None: never
    match_seed: int

    def read(self, source: Any, layer: str) -> tuple[Any, int]:
        """The (N, D') features of ``layer`` as probed (an array or :class:`StreamedFeatures`)
        and the layer's own width D.

        A layer that fits the budget in one block is read whole, so it is read once rather
        than at every evaluation of the objective (the in-memory fit holds about 12·D bytes
        per row, less than the rule's 17·D)."""
        if self.match_dim is None and self.max_memory is None:
            x = source.read(layer, self.reduction)
            return x, feature_width(x)
        n, width = StreamedFeatures(source, layer, self.reduction, 1).shape
        if self.match_dim is not None and width > self.match_dim:
            return self._projected(source, layer, n, width), width
        block_rows = n if self.max_memory is None else probe_block_rows(
            width, n, self.n_classes, self.max_memory, self.dtype)
        if block_rows >= n:
            return source.read(layer, self.reduction), width
        return StreamedFeatures(source, layer, self.reduction, block_rows), width

    def _projected(self, source: Any, layer: str, n: int, width: int) -> np.ndarray:
        """x @ R (N, match_dim) of one layer, read in row blocks that fit ``max_memory`` (one
        block of all N rows without it). R depends only on (D, match_dim, match_seed), so the
        train and test splits are projected alike although R is drawn again for each."""
        matrix = projection_matrix(width, self.match_dim, self.match_seed)
        block_rows = n if self.max_memory is None else projection_block_rows(
            width, self.match_dim, n, self.n_classes, self.max_memory, self.dtype)
        return project(StreamedFeatures(source, layer, self.reduction, block_rows), matrix)


def _as_source(source: Any, role: str) -> Any:
    """An object with ``layers``, ``labels``, ``indices``, ``meta`` and ``read``."""
    if isinstance(source, Mapping):
        unknown = set(source) - {"layers", "labels", "meta", "indices", "reduction"}
        if unknown or not {"layers", "labels"} <= set(source):
            raise ProbeError(f"the {role} dict needs keys 'layers' and 'labels' (optional: "
                             f"'meta', 'indices', 'reduction'), got {sorted(source)}")
        return ActivationSet(**source)
    if not all(hasattr(source, a) for a in ("layers", "labels", "meta", "read")):
        raise ProbeError(f"the {role} set must be an ActivationFile, an ActivationSet or a "
                         f"dict of layers and labels, got {type(source).__name__}")
    return source


def _check_pair(train: Any, test: Any, layers: Sequence[str] | None, cv: int) -> list[str]:
    """The layer names to probe, after checking that train and test belong together."""
    meta_train, meta_test = dict(train.meta), dict(test.meta)
    if "dataset" in meta_train and "dataset" in meta_test \
            and meta_train["dataset"] != meta_test["dataset"]:
        raise ProbeError(f"train is from dataset {meta_train['dataset']!r} but test from "
                         f"{meta_test['dataset']!r}; probe two splits of one dataset")
    _check_disjoint(train, test, meta_train.get("split"), meta_test.get("split"))
    y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
    _check_labels(y_train, cv)
    unseen = np.setdiff1d(y_test, y_train)
    if unseen.size:
        raise ProbeError(f"test labels {unseen.tolist()} never occur in the train split "
                         f"(train classes {np.unique(y_train).tolist()}); the label sets must "
                         "match: were the files made from different datasets or label maps?")
    names = list(train.layers) if layers is None else list(layers)
    if not names:
        raise ProbeError("no layers to probe: layers is empty")
    for role, source in (("train", train), ("test", test)):
        missing = [name for name in names if name not in source.layers]
        if missing:
            raise ProbeError(f"layer(s) {missing} are not in the {role} set, which has "
                             f"{list(source.layers)}; extract them or pass layers=[...]")
    return names


def _check_disjoint(train: Any, test: Any, split_train: Any, split_test: Any) -> None:
    """Refuse train and test that are the same rows of the same split.

    Files of different splits (e.g. "train" and "test") may share dataset indices, which
    count from 0 in each split; files of the same or unknown split must not share any.
    """
    same_split = split_train is not None and split_train == split_test
    idx_train, idx_test = getattr(train, "indices", None), getattr(test, "indices", None)
    if same_split and (idx_train is None or idx_test is None):
        raise ProbeError(f"train and test are both split {split_train!r} and have no dataset "
                         "indices to show they are disjoint; pass the train split as train")
    if (same_split or split_train is None or split_test is None) \
            and idx_train is not None and idx_test is not None:
        shared = np.intersect1d(idx_train, idx_test)
        if shared.size:
            raise ProbeError(f"train and test share {shared.size} rows (dataset indices "
                             f"{shared[:5].tolist()}…) of split {split_train!r}; the test "
                             "accuracy would be a train accuracy: pass disjoint splits")


def _most_frequent(y: np.ndarray) -> Any:
    """The most frequent label of y (n,); ties go to the smallest label."""
    classes, counts = np.unique(y, return_counts=True)
    return classes[np.argmax(counts)]
