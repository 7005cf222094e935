"""Probes: how much of a network's properties a representation holds (DESIGN.md, step 6).

A probe is fitted on the training split's representations, its hyperparameter chosen on the
validation split, and scored on the test split (members never seen by the autoencoder, the
PCA or the probe); hyperparameters chosen on validation, the probe is then refitted on
train + validation (``refit``). The same probe kinds run on every representation, so
comparisons are like for like: ridge against ridge (logistic regression for categorical
targets), gradient boosting against gradient boosting. Regression probes report R² and
Kendall's tau, classification probes accuracy and balanced accuracy
(:mod:`weightspace.evaluation.scores`).

- :func:`fit_ridge_probe`, :func:`fit_logistic_probe`, :func:`fit_boosting_probe`: one probe,
  its predictions (:class:`ProbeFit`); ``probe_regression`` / ``_classification`` /
  ``_boosting``: the same, scored on test.
- :func:`probe_table`: every target from every representation, one row per score
  (``PROBE_COLUMNS``), plus a ``chance`` row (train mean / majority class).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from weightspace.evaluation.scores import as_2d, classification_scores, regression_scores

Split3 = tuple[np.ndarray, np.ndarray, np.ndarray]  # (train, val, test)

ALPHAS = np.logspace(-3, 6, 19)  # ridge penalties on standardized features
CS = np.logspace(-3, 3, 13)  # inverse L2 penalties of the logistic probe
# Gradient boosting: a few fixed settings; the number of trees is chosen on validation.
BOOSTING = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "l2_regularization": 1.0}

PROBE_COLUMNS = ["representation", "probe", "target", "metric", "value", "param", "note"]
REGRESSION_METRICS = ("r2", "kendall_tau")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy")


@dataclass(frozen=True)
class ProbeFit:
    """A probe fitted with its hyperparameter chosen on validation.

    ``param``: the chosen alpha (ridge), C (logistic) or number of trees (boosting).
    ``val_loss``: validation loss of every candidate (MSE, or log loss for classifiers).
    ``pred_val``: validation predictions of the probe fitted on train with ``param``.
    ``pred_test``: test predictions of the refitted probe (None without test inputs).
    """

    param: float
    val_loss: dict[float, float]
    pred_val: np.ndarray
    pred_test: np.ndarray | None


def _standardizer(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Standardization with statistics of ``x`` only; constant features are only centred."""
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return lambda z: (z - mean) / std


_CACHE: OrderedDict[tuple, tuple[np.ndarray, ...]] = OrderedDict()


def _cached(kind: str, xc: np.ndarray, compute: Callable[[np.ndarray], tuple[np.ndarray, ...]]):
    """``compute(xc)``, remembered for the last few matrices: every target probed on one
    representation shares it (a decomposition of raw weights costs seconds, hashing them
    ~10 ms)."""
    digest = hashlib.blake2b(np.ascontiguousarray(xc).data, digest_size=16).digest()
    key = (kind, xc.shape, digest)
    if key not in _CACHE:
        _CACHE[key] = compute(xc)
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _gram_eigh(xc: np.ndarray) -> tuple[np.ndarray, ...]:
    """The eigendecomposition of the smaller Gram matrix of ``xc`` ``(n, D)``, cached:
    ``xc xcᵀ = U Λ Uᵀ`` if n < D (returned as ``(Λ, U, xcᵀ U)``), else
    ``xcᵀ xc = V Λ Vᵀ`` (as ``(Λ, xc V, V)``): a min(n, D)-sized problem."""

    def compute(x: np.ndarray) -> tuple[np.ndarray, ...]:
        if x.shape[0] < x.shape[1]:
            lam, u = np.linalg.eigh(x @ x.T)
            return lam, u, x.T @ u
        lam, v = np.linalg.eigh(x.T @ x)
        return lam, x @ v, v

    return _cached("gram", xc, compute)


def _ridge_path(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Predictions ``(n_eval, n_alphas)`` of ridge regressions with an intercept,
    ``min ||y - b - X w||² + alpha ||w||²``, for all alphas from one eigendecomposition of
    centred X's smaller Gram matrix: ``XᵀX = V Λ Vᵀ`` gives ``w = V diag(1 / (Λ + alpha))
    Vᵀ Xᵀ y``; for wide X (raw weights: more features than rows) ``XXᵀ = U Λ Uᵀ`` gives the
    predictions in dual form, ``X_eval Xᵀ U diag(1 / (Λ + alpha)) Uᵀ y``. The SVD's
    solution without dividing by singular values, and never more than a min(n, D)-sized
    problem."""
    xm, ym = x.mean(0), y.mean()
    lam, a, b = _gram_eigh(x - xm)  # (k,), (n, k), (D, k): U, XᵀU or XV, V
    # (eigenvalues of a Gram matrix are >= 0; rounding may leave tiny negatives)
    inv = 1.0 / (np.clip(lam, 0.0, None) + alphas[:, None])  # (A, k)
    aty = a.T @ (y - ym)  # (k,)
    return ((x_eval - xm) @ b) @ (inv * aty).T + ym


def _fit_rows(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray, refit: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The rows the final probe is fitted on: train + validation, or train only."""
    if not refit:
        return x_tr, y_tr
    return np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])


def _pick(losses: np.ndarray, prefer_last: bool) -> int:
    """Index of the smallest loss; ties go to the last (or first) candidate."""
    finite = np.where(np.isfinite(losses), losses, np.inf)
    if prefer_last:
        return len(finite) - 1 - int(np.argmin(finite[::-1]))
    return int(np.argmin(finite))


def fit_ridge_probe(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    z_test: np.ndarray | None = None,
    alphas: Sequence[float] = ALPHAS,
    refit: bool = True,
) -> ProbeFit:
    """Ridge regression on standardized features (statistics of the fitting data only).

    Every alpha is fitted on train and scored by validation MSE; the best one (ties: the
    larger alpha) is refitted on train + validation (``refit``; else train only) and
    predicts ``z_test``.
    """
    a = np.sort(np.asarray(alphas, dtype=np.float64))
    x_tr, x_va = as_2d(z_train), as_2d(z_val)
    y_tr, y_va = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
    scale = _standardizer(x_tr)
    pred_val = _ridge_path(scale(x_tr), y_tr, scale(x_va), a)  # (n_val, A)
    mse = ((pred_val - y_va[:, None]) ** 2).mean(0)
    best = _pick(mse, prefer_last=True)
    pred_test = None
    if z_test is not None:
        x_fit, y_fit = _fit_rows(x_tr, y_tr, x_va, y_va, refit)
        scale = _standardizer(x_fit)
        pred_test = _ridge_path(scale(x_fit), y_fit, scale(as_2d(z_test)), a[best : best + 1])[:, 0]
    return ProbeFit(
        float(a[best]), dict(zip(a.tolist(), mse.tolist())), pred_val[:, best], pred_test
    )


def _log_loss(proba: np.ndarray, classes: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels ``y`` (classes unseen in training: p = 1e-15)."""
    col = {c: i for i, c in enumerate(classes.tolist())}
    p = np.array([proba[i, col[c]] if c in col else 0.0 for i, c in enumerate(y.tolist())])
    return float(-np.log(np.clip(p, 1e-15, 1.0)).mean())


def fit_logistic_probe(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    z_test: np.ndarray | None = None,
    cs: Sequence[float] = CS,
    refit: bool = True,
    max_iter: int = 2000,
) -> ProbeFit:
    """Multinomial L2 logistic regression on standardized features; C chosen by validation
    log loss (ties: the smaller C), then refitted on train + validation (``refit``).
    Predictions are class labels."""
    c_grid = np.sort(np.asarray(cs, dtype=np.float64))
    x_tr, x_va = as_2d(z_train), as_2d(z_val)
    y_tr, y_va = np.asarray(y_train), np.asarray(y_val)
    scale = _standardizer(x_tr)
    xs_tr, xs_va = scale(x_tr), scale(x_va)
    clf = LogisticRegression(max_iter=max_iter, warm_start=True)
    losses, preds = [], []
    # One BLAS thread: L-BFGS on a few thousand rows makes many small products, for which
    # waking a second thread costs more than it saves (several times slower on 2 cores).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in c_grid:  # ascending C: each fit starts from the more regularized solution
            clf.set_params(C=float(c)).fit(xs_tr, y_tr)
            losses.append(_log_loss(clf.predict_proba(xs_va), clf.classes_, y_va))
            preds.append(clf.predict(xs_va))
        best = _pick(np.asarray(losses), prefer_last=False)
        pred_test = None
        if z_test is not None:
            x_fit, y_fit = _fit_rows(x_tr, y_tr, x_va, y_va, refit)
            scale = _standardizer(x_fit)
            final = LogisticRegression(C=float(c_grid[best]), max_iter=max_iter)
            pred_test = final.fit(scale(x_fit), y_fit).predict(scale(as_2d(z_test)))
    return ProbeFit(float(c_grid[best]), dict(zip(c_grid.tolist(), losses)), preds[best], pred_test)


def fit_boosting_probe(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    z_test: np.ndarray | None = None,
    categorical: bool = False,
    seed: int = 0,
    refit: bool = True,
    **params: Any,
) -> ProbeFit:
    """Histogram gradient boosting (regressor, or classifier if ``categorical``) with the
    fixed settings of :data:`BOOSTING` (overridable by ``params``). The number of trees is
    chosen on validation (MSE / log loss over the staged predictions; ties: fewer trees);
    the model is then refitted with that many trees on train + validation (``refit``)."""
    x_tr, x_va = as_2d(z_train), as_2d(z_val)
    y_tr, y_va = np.asarray(y_train), np.asarray(y_val)
    settings = {**BOOSTING, **params}
    # Leaves need data: small training splits get small leaves (scikit-learn's default 20).
    settings.setdefault("min_samples_leaf", int(np.clip(len(x_tr) // 10, 2, 20)))
    cls = HistGradientBoostingClassifier if categorical else HistGradientBoostingRegressor
    model = cls(early_stopping=False, random_state=seed, **settings).fit(x_tr, y_tr)
    if categorical:
        staged = list(model.staged_predict_proba(x_va))
        losses = np.array([_log_loss(p, model.classes_, y_va) for p in staged])
        preds = [model.classes_[p.argmax(1)] for p in staged]
    else:
        preds = list(model.staged_predict(x_va))
        losses = np.array([float(((p - y_va) ** 2).mean()) for p in preds])
    best = _pick(losses, prefer_last=False)
    n_trees = best + 1
    pred_test = None
    if z_test is not None:
        x_fit, y_fit = _fit_rows(x_tr, y_tr, x_va, y_va, refit)
        final = cls(early_stopping=False, random_state=seed, **{**settings, "max_iter": n_trees})
        pred_test = final.fit(x_fit, y_fit).predict(as_2d(z_test))
    return ProbeFit(float(n_trees), dict(enumerate(losses.tolist(), 1)), preds[best], pred_test)


def probe_regression(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    alphas: Sequence[float] = ALPHAS,
    refit: bool = True,
) -> dict[str, float]:
    """Ridge probe (:func:`fit_ridge_probe`) scored on test: ``r2``, ``kendall_tau``, ``alpha``."""
    fit = fit_ridge_probe(z_train, y_train, z_val, y_val, z_test, alphas, refit)
    return {**regression_scores(y_test, fit.pred_test), "alpha": fit.param}


def probe_classification(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    cs: Sequence[float] = CS,
    refit: bool = True,
) -> dict[str, float]:
    """Logistic probe (:func:`fit_logistic_probe`) on test: ``accuracy``,
    ``balanced_accuracy``, ``C``."""
    fit = fit_logistic_probe(z_train, y_train, z_val, y_val, z_test, cs, refit)
    return {**classification_scores(y_test, fit.pred_test), "C": fit.param}


def probe_boosting(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    categorical: bool = False,
    seed: int = 0,
    refit: bool = True,
) -> dict[str, float]:
    """Boosting probe (:func:`fit_boosting_probe`) on test: the regression or classification
    scores and ``n_trees``."""
    fit = fit_boosting_probe(z_train, y_train, z_val, y_val, z_test, categorical, seed, refit)
    scores = classification_scores if categorical else regression_scores
    return {**scores(y_test, fit.pred_test), "n_trees": fit.param}


def _target_note(ys: Sequence[np.ndarray], categorical: bool) -> str:
    """Why a target cannot be probed ('' if it can)."""
    y_tr, y_va, y_te = ys
    if min(len(y_tr), len(y_va), len(y_te)) == 0:
        return "missing"  # no finite values in some split
    if len(np.unique(y_tr)) < 2:
        return "constant"  # nothing to learn from the training split
    if not categorical and len(np.unique(y_te)) < 2:
        return "constant test"  # R² and Kendall's tau are undefined
    return ""


def probe_table(
    representations: Mapping[str, Split3],
    targets: Mapping[str, Split3],
    categorical: Collection[str] = (),
    boosting: bool | Collection[str] = True,
    chance: bool = True,
    alphas: Sequence[float] = ALPHAS,
    cs: Sequence[float] = CS,
    seed: int = 0,
    refit: bool = True,
    predictions: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """Probe every target from every representation; one row per score.

    ``representations``: name -> (Z_train, Z_val, Z_test), arrays (N, F) with rows aligned
    with ``targets``: name -> (y_train, y_val, y_test). Targets named in ``categorical`` get
    a logistic probe (accuracy, balanced accuracy), the others a ridge probe (R², Kendall's
    tau); ``boosting`` adds a gradient-boosting probe to all representations (True), none
    (False) or those named. ``chance`` adds a representation-free row: the train + val mean
    (R²) or majority class (accuracy).

    Items whose target is not finite are dropped from that target's probes. A target that
    is constant on the training split (a zoo with one activation) or missing from a split
    gets NaN values with ``note`` 'constant' / 'missing' instead of an error; so does a
    regression target constant on the test split ('constant test': R² is undefined).

    Columns: representation, probe (ridge / logistic / boosting / constant), target,
    metric, value, param (the chosen alpha, C or number of trees) and note.

    ``predictions``: a dict to fill with ``(representation, probe, target) -> (rows, pred)``,
    the test rows the probe was scored on (a boolean mask) and its predictions there, for
    :func:`compare_probes`.
    """
    for name, zs in representations.items():
        for split, z, y in zip(("train", "val", "test"), zs, next(iter(targets.values()), zs)):
            if len(z) != len(y):
                raise ValueError(
                    f"representation {name!r}: {len(z)} {split} rows, targets {len(y)}"
                )
    rows: list[tuple[tuple[int, int], dict[str, Any]]] = []  # (target, representation) keys

    def add(
        key: tuple[int, int],
        rep: str,
        probe: str,
        target: str,
        scores: Mapping[str, float],
        param: float,
        note: str,
    ):
        for metric, value in scores.items():
            values = (rep, probe, target, metric, value, param, note)
            rows.append((key, dict(zip(PROBE_COLUMNS, values))))

    prepared = []
    for t, (target, y3) in enumerate(targets.items()):
        is_cat = target in categorical
        y3 = tuple(np.asarray(y) for y in y3)
        finite = [np.isfinite(y.astype(np.float64)) for y in y3]
        ys = [y[m] for y, m in zip(y3, finite)]
        note = _target_note(ys, is_cat)
        metrics = CLASSIFICATION_METRICS if is_cat else REGRESSION_METRICS
        nan_scores = dict.fromkeys(metrics, float("nan"))
        prepared.append((target, is_cat, finite, ys, note, nan_scores))
        if chance:  # (Kendall's tau of a constant prediction is undefined: left out)
            if note:
                chance_nan = nan_scores if is_cat else {"r2": float("nan")}
                add((t, -1), "chance", "constant", target, chance_nan, float("nan"), note)
            else:
                fit_y = np.concatenate(ys[:2])
                if is_cat:
                    values, counts = np.unique(fit_y, return_counts=True)
                    pred = np.full(len(ys[2]), values[np.argmax(counts)])
                    scores = classification_scores(ys[2], pred)
                else:
                    pred = np.full(len(ys[2]), fit_y.mean())
                    scores = {"r2": regression_scores(ys[2], pred)["r2"]}
                add((t, -1), "chance", "constant", target, scores, math.nan, "")
    # Representation by representation: the ridge probes of all targets on one
    # representation share its SVDs (remembered by _svd for the last few matrices).
    for r, (rep, zs_all) in enumerate(representations.items()):
        boosted = boosting is True or (not isinstance(boosting, bool) and rep in boosting)
        kinds_of = ["boosting"] if boosted else []
        for t, (target, is_cat, finite, ys, note, nan_scores) in enumerate(prepared):
            zs = [as_2d(z)[m] for z, m in zip(zs_all, finite)]
            for kind in ["logistic" if is_cat else "ridge", *kinds_of]:
                if note:
                    add((t, r), rep, kind, target, nan_scores, float("nan"), note)
                    continue
                args = (zs[0], ys[0], zs[1], ys[1], zs[2])
                if kind == "ridge":
                    fit = fit_ridge_probe(*args, alphas, refit)
                elif kind == "logistic":
                    fit = fit_logistic_probe(*args, cs, refit)
                else:
                    fit = fit_boosting_probe(*args, is_cat, seed, refit)
                scores = classification_scores if is_cat else regression_scores
                add((t, r), rep, kind, target, scores(ys[2], fit.pred_test), fit.param, "")
                if predictions is not None:
                    predictions[(rep, kind, target)] = (finite[2], np.asarray(fit.pred_test))
    rows.sort(key=lambda kr: kr[0])  # stable: target by target, as the table reads
    return pd.DataFrame([row for _, row in rows], columns=PROBE_COLUMNS)
