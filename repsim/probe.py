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
  to the gradient with respect to (V, b).

``solver="auto"`` uses torch when the feature dimension exceeds ``torch_threshold``; the default
threshold 0 means always, because the preconditioned path was faster at every dimension we
measured (D = 16 … 64, n = 6,667). Fits run with ``threads`` CPU threads (default 1, see
:func:`_cpu_threads`); the previous thread settings are restored afterwards.

Chance level, as reported by :func:`probe_layers`: the test accuracy of always predicting the
most frequent train class (ties: the smallest label). It is what a probe that learnt nothing
but the train class frequencies scores, and it differs from 1/K on unbalanced splits.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch.nn import functional as F
from tqdm.auto import tqdm

__all__ = [
    "ActivationSet",
    "LinearProbe",
    "ProbeError",
    "ProbeRow",
    "ProbeSettings",
    "ProbeTable",
    "probe_layers",
]

Solver = Literal["auto", "sklearn", "torch"]

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PRECONDITION_MAX_DIM = 4096  # features; eigh of a D×D matrix is O(D³)
# Scale of the softmax loss's curvature in the preconditioner; any c > 0 gives the same
# minimiser. 0.5 needed the fewest iterations among 0.04 … 2 on ResNet-32 GAP features.
CURVATURE = 0.5
GAP = "gap"  # the default reduction for probes


class ProbeError(ValueError):
    """Inputs a linear probe cannot be fitted or evaluated on; the message says how to fix it."""


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

    def solver_for(self, dim: int) -> Literal["sklearn", "torch"]:
        """The solver used for ``dim`` features."""
        if self.solver != "auto":
            return self.solver
        return "torch" if dim > self.torch_threshold else "sklearn"


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
        """Fit on X (n, D) and labels y (n,); only these rows are ever seen."""
        settings = ProbeSettings(**self.get_params())
        x, y = _check_xy(X, y)
        _check_labels(y, settings.cv)
        self.classes_, codes = np.unique(y, return_inverse=True)
        scaler = StandardScaler().fit(x)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        z = self._standardise(x).astype(settings.dtype, copy=False)
        self.solver_ = settings.solver_for(z.shape[1])
        path = _SOLVER_PATHS[self.solver_]
        with _cpu_threads(settings.threads):
            self.cv_scores_, mean_fits = _cross_validate(z, codes, len(self.classes_), path,
                                                         settings)
            best = int(np.argmax(self.cv_scores_.mean(axis=0)))  # first maximum: smallest C
            self.C_ = settings.Cs[best]
            (final,) = path(z, codes, len(self.classes_), (self.C_,), mean_fits[best], settings)
        self.coef_, self.intercept_, self.n_iter_ = final.coef, final.intercept, final.n_iter
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits (n, K') of X (n, D); for two classes (n,), positive for ``classes_[1]``."""
        z = self._standardise(_check_features(X, len(self.mean_)))
        scores = _scores(z, self.coef_, self.intercept_)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (n,) of X (n, D)."""
        z = self._standardise(_check_features(X, len(self.mean_)))
        return self.classes_[_predict_codes(z, _Fit(self.coef_, self.intercept_, 0))]

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        # in x's own precision: a float64 copy of a large float32 layer would double memory
        return (x - self.mean_.astype(x.dtype)) / self.scale_.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_features(X: Any, dim: int | None = None) -> np.ndarray:
    """X as a finite (n, D) float array; D must equal ``dim`` when given."""
    x = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ProbeError(f"features must be a numeric (n_samples, n_features) array, got "
                         f"dtype {x.dtype} and shape {x.shape}; reshape with x.reshape(n, -1)")
    if dim is not None and x.shape[1] != dim:
        raise ProbeError(f"features have {x.shape[1]} columns but the probe was fitted on "
                         f"{dim}; pass features of the same layer and reduction")
    if not np.all(np.isfinite(x)):
        raise ProbeError(f"features contain {np.size(x) - np.isfinite(x).sum()} NaN or "
                         "infinite values; check the layer's activations")
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = _check_features(X)
    labels = np.asarray(y)
    if labels.shape != (len(x),):
        raise ProbeError(f"labels must have shape ({len(x)},) to match the features, got "
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


def _scores(z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Logits (n, K') of standardised features z (n, D)."""
    return z @ coef.T.astype(z.dtype) + intercept.astype(z.dtype)


def _predict_codes(z: np.ndarray, fit: _Fit) -> np.ndarray:
    """Class codes (n,) in 0 … K-1 predicted for standardised features z (n, D)."""
    scores = _scores(z, fit.coef, fit.intercept)
    return (scores[:, 0] > 0).astype(np.int64) if scores.shape[1] == 1 else scores.argmax(1)


def _sklearn_path(z: np.ndarray, codes: np.ndarray, n_classes: int, Cs: Sequence[float],
                  start: _Fit | None, settings: ProbeSettings) -> list[_Fit]:
    """Fits (one per C) of scikit-learn's lbfgs LogisticRegression on z (n, D), codes (n,)."""
    model = LogisticRegression(max_iter=settings.max_iter, tol=settings.tol, warm_start=True)
    if start is not None:  # warm_start reuses coef_/intercept_ as the initial point
        model.coef_, model.intercept_ = start.coef.copy(), start.intercept.copy()
    fits = []
    for C in Cs:
        model.set_params(C=C).fit(z, codes)
        fits.append(_Fit(model.coef_.astype(np.float64), model.intercept_.astype(np.float64),
                         int(model.n_iter_[0])))
    return fits


def _torch_path(z: np.ndarray, codes: np.ndarray, n_classes: int, Cs: Sequence[float],
                start: _Fit | None, settings: ProbeSettings) -> list[_Fit]:
    """Fits (one per C) of preconditioned full-batch L-BFGS on z (n, D), codes (n,)."""
    dtype = getattr(torch, settings.dtype)
    x = torch.as_tensor(z, dtype=dtype, device=settings.device)
    n, d = x.shape
    outputs = 1 if n_classes == 2 else n_classes
    loss_fn, target_dtype = (_binomial_loss, dtype) if n_classes == 2 else (F.cross_entropy,
                                                                             torch.long)
    target = torch.as_tensor(codes, dtype=target_dtype, device=x.device)
    eig = torch.linalg.eigh(x.T @ x / n) if d <= PRECONDITION_MAX_DIM else None
    if start is None:
        w = torch.zeros(d, outputs, dtype=dtype, device=x.device)
        b = torch.zeros(outputs, dtype=dtype, device=x.device)
    else:
        w = torch.as_tensor(start.coef.T, dtype=dtype, device=x.device)
        b = torch.as_tensor(start.intercept, dtype=dtype, device=x.device)
    fits = []
    for C in Cs:
        p, p_inv = _preconditioner(eig, 1.0 / (C * n))
        w, b, n_iter = _lbfgs(x, target, loss_fn, C, p, p_inv, w, b, settings)
        fits.append(_Fit(w.T.double().cpu().numpy(), b.double().cpu().numpy(), n_iter))
    return fits


def _binomial_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss of one logit per row, logits (n, 1), target (n,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits[:, 0], target)


def _preconditioner(eig: tuple[torch.Tensor, torch.Tensor] | None, lam: float
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """P = (c·Σ + λI)^(-1/2) and P⁻¹, (D, D), from Σ's eigendecomposition; None for P = I."""
    if eig is None:
        return None, None
    values, vectors = eig
    root = (CURVATURE * values.clamp(min=0) + lam).sqrt()
    return (vectors / root) @ vectors.T, (vectors * root) @ vectors.T


def _lbfgs(x, target, loss_fn, C: float, p, p_inv, w, b, settings: ProbeSettings):
    """Minimise loss_fn(x W + b, target) + ‖W‖²/(2·C·n) over W = P V and b from (w, b).

    x (n, D), w (D, K'), b (K'); returns (W, b, iterations), detached.
    """
    lam = 1.0 / (C * len(x))
    # LBFGS flattens gradients with .view(-1): the parameters must be contiguous
    v = (w if p_inv is None else p_inv @ w).clone(memory_format=torch.contiguous_format)
    v.requires_grad_(True)
    b = b.clone().requires_grad_(True)
    # scipy's (and so scikit-learn's) lbfgs stops on a loss change of 64 ulp, not torch's 1e-9
    optimiser = torch.optim.LBFGS([v, b], lr=1, max_iter=settings.max_iter,
                                  tolerance_grad=settings.tol,
                                  tolerance_change=64 * torch.finfo(x.dtype).eps,
                                  history_size=10, line_search_fn="strong_wolfe")

    def weights():
        return v if p is None else p @ v

    def closure():
        optimiser.zero_grad()
        w = weights()
        loss = loss_fn(x @ w + b, target) + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    n_iter = optimiser.state[v]["n_iter"]
    if n_iter >= settings.max_iter:
        warnings.warn(f"torch L-BFGS did not converge in max_iter={settings.max_iter} "
                      f"iterations (C = {C:g}); raise max_iter",
                      ConvergenceWarning, stacklevel=4)
    with torch.no_grad():
        return weights().detach(), b.detach(), int(n_iter)


_SOLVER_PATHS = {"sklearn": _sklearn_path, "torch": _torch_path}


def _cross_validate(z: np.ndarray, codes: np.ndarray, n_classes: int, path,
                    settings: ProbeSettings) -> tuple[np.ndarray, list[_Fit]]:
    """Stratified K-fold CV of every C on standardised train features z (n, D), codes (n,).

    Returns the validation accuracies (cv, len(Cs)) and, per C, the mean of the fold fits
    (the refit's starting point).
    """
    folds = StratifiedKFold(settings.cv, shuffle=True, random_state=settings.random_state)
    scores = np.empty((settings.cv, len(settings.Cs)))
    fold_fits = []
    for f, (fit_rows, val_rows) in enumerate(folds.split(z, codes)):
        fits = path(z[fit_rows], codes[fit_rows], n_classes, settings.Cs, None, settings)
        scores[f] = [np.mean(_predict_codes(z[val_rows], fit) == codes[val_rows])
                     for fit in fits]
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
    dim: int              # feature dimension D
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

    def records(self) -> list[dict]:
        """The rows as dicts (e.g. for ``csv.DictWriter`` or ``pandas.DataFrame``)."""
        return [asdict(row) for row in self.rows]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def probe_layers(train: Any, test: Any, *, reduction: str = GAP,
                 layers: Sequence[str] | None = None, progress: bool = False,
                 **probe_kwargs: Any) -> ProbeTable:
    """Probe every layer (or ``layers``) of a train and a test activation set.

    ``train``/``test``: :class:`repsim.store.ActivationFile`, :class:`ActivationSet`, or a dict
    ``{"layers": {name: (N, D)}, "labels": (N,), "meta": {...}, "indices": (N,)}``.
    ``probe_kwargs`` go to :class:`LinearProbe`. Refuses sets of different datasets, test
    classes the train split lacks, missing layers, and the same rows used as train and test.
    """
    train, test = _as_source(train, "train"), _as_source(test, "test")
    settings = ProbeSettings(**probe_kwargs)
    names = _check_pair(train, test, layers, settings.cv)
    y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
    chance = float(np.mean(y_test == _most_frequent(y_train)))
    order = list(train.layers)
    rows = []
    for name in tqdm(names, desc="probing layers", disable=not progress):
        x_train, x_test = train.read(name, reduction), test.read(name, reduction)
        probe = LinearProbe(**asdict(settings)).fit(x_train, y_train)
        depth = order.index(name)
        rows.append(ProbeRow(
            layer=name, depth=depth, rel_depth=depth / max(len(order) - 1, 1),
            dim=x_train.shape[1], C=probe.C_, train_acc=float(probe.score(x_train, y_train)),
            test_acc=float(probe.score(x_test, y_test)), chance=chance, n_train=len(y_train),
            n_test=len(y_test), solver=probe.solver_,
        ))
    return ProbeTable(tuple(rows), reduction, settings)


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
