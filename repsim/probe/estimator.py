"""The linear probe estimator (Alain & Bengio 2016): :class:`LinearProbe` and its settings.

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
  summed over row blocks, so the features may also stream from a source
  (:class:`repsim.probe.StreamedFeatures`, ``probe_layers(max_memory=...)``): each evaluation
  then reads the source again, one block at a time, and :func:`repsim.probe.probe_memory`
  bounds what is held.

``solver="auto"`` uses torch when the feature dimension exceeds ``torch_threshold``; the default
threshold 0 means always, because the preconditioned path was faster at every dimension we
measured (D = 16 … 64, n = 6,667). Fits run with ``threads`` CPU threads (default 1, see
:func:`_cpu_threads`); the previous thread settings are restored afterwards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

from repsim.probe.features import (
    MemoryRows,
    ProbeError,
    StreamedFeatures,
    StreamedRows,
    array_blocks,
    column_moments,
    feature_width,
    standardise,
)

__all__ = ["DEFAULT_CS", "LinearProbe", "ProbeSettings"]

Solver = Literal["auto", "sklearn", "torch"]

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PRECONDITION_MAX_DIM = 4096  # features; eigh of a D×D matrix is O(D³)
# Scale of the softmax loss's curvature in the preconditioner; any c > 0 gives the same
# minimiser. 0.5 needed the fewest iterations among 0.04 … 2 on ResNet-32 GAP features.
CURVATURE = 0.5


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

    * ``n_features_in_`` (D); ``mean_``, ``scale_`` (D,) float64: the train standardisation
      (scale 1 where constant);
    * ``classes_`` (K,): the train labels, sorted;
    * ``cv_scores_`` (cv, len(Cs)): validation accuracy per fold and C;
    * ``C_``: the chosen C; ``coef_`` (K', D) float64 and ``intercept_`` (K',) of the refit on
      standardised features (K' = 1 for two classes, else K);
    * ``solver_`` ("sklearn" | "torch"), ``n_iter_``: L-BFGS iterations of the refit.

    It follows scikit-learn's estimator contract (``sklearn.utils.estimator_checks``; the
    checks it does not meet, and why, are listed in ``tests/test_probe_sklearn.py``), so it
    works in pipelines, ``clone`` and model selection.

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
        self.n_features_in_ = int(x.shape[1])
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
        check_is_fitted(self)
        scores = np.concatenate([_scores(z, self.coef_, self.intercept_).numpy()
                                 for z in self._standardised_blocks(X)])
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (n,) of X (n, D) (an array or :class:`StreamedFeatures`)."""
        check_is_fitted(self)
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
    if sparse.issparse(X):
        raise ProbeError(f"sparse features ({type(X).__name__}) are not supported; pass a "
                         "dense array, e.g. X.toarray()")
    x = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X)
    if x.dtype == object:
        x = _object_as_float(x)
    if np.iscomplexobj(x):
        raise ProbeError(f"Complex data not supported: features of dtype {x.dtype}; pass real "
                         "activations (e.g. their magnitude np.abs(x))")
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


def _object_as_float(x: np.ndarray) -> np.ndarray:
    """An object array of numbers as float64; anything else is refused (a TypeError for
    objects that are not numbers or strings, as ``float()`` raises)."""
    try:
        return x.astype(np.float64)
    except TypeError as err:
        raise TypeError(f"features of dtype object must hold numbers: {err}; pass the "
                        "layer's activations as a float array") from err
    except ValueError as err:
        raise ProbeError(f"features of dtype object must hold numbers: {err}; pass the "
                         "layer's activations as a float array") from err


def _check_width(width: int, dim: int) -> None:
    if width != dim:
        raise ProbeError(f"features have {width} columns but the probe was fitted on {dim} "
                         f"(X has {width} features, but LinearProbe is expecting {dim} "
                         "features as input); pass features of the same layer and reduction")


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray | StreamedFeatures, np.ndarray]:
    """Features (an array, or streamed ones as they are) and labels (n,) of the same n; a
    column vector y (n, 1) is taken as (n,) with a warning, as scikit-learn does."""
    if y is None:
        raise ProbeError("LinearProbe requires y to be passed, but the target y is None; "
                         "pass the label of every row of X")
    x = X if isinstance(X, StreamedFeatures) else _check_features(X)
    labels = np.asarray(y)
    if labels.shape == (x.shape[0], 1):
        warnings.warn("A column-vector y was passed when a 1d array was expected; pass "
                      "labels of shape (n_samples,), e.g. with y.ravel()",
                      DataConversionWarning, stacklevel=3)
        labels = labels.ravel()
    if labels.shape != (x.shape[0],):
        raise ProbeError(f"labels must have shape ({x.shape[0]},) to match the features, got "
                         f"{labels.shape}")
    return x, labels


def _check_labels(y: np.ndarray, cv: int) -> None:
    """Refuse labels (n,) that are not finite classes, with under 2 classes, or with a class
    of fewer rows than ``cv`` folds."""
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise ProbeError(f"labels contain {np.size(y) - np.isfinite(y).sum()} NaN or infinite "
                         "values; pass the class label of every row")
    if np.issubdtype(y.dtype, np.floating) and type_of_target(y) == "continuous":
        example = float(y[y != np.round(y)][0])
        raise ProbeError(f"labels must be classes, got continuous values (e.g. {example:g}): a "
                         "probe classifies; pass integer or string class labels")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        count = "no rows" if len(classes) == 0 else "1 class"
        raise ProbeError(f"need at least 2 classes to probe, got only {classes.tolist()} "
                         f"({count})")
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
