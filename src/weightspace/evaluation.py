"""Evaluation of a weight-space autoencoder on held-out members (DESIGN.md, step 6).

Three questions, each answered next to the field's baselines:

1. **Probes.** Does the latent hold what we know about a network: its test accuracy, epoch,
   generalization gap and hyperparameters? A probe is fitted on the training split's
   representations, its hyperparameter chosen on the validation split, and scored on the
   test split (members never seen by the autoencoder, the PCA or the probe). The same probe
   kinds run on every representation, so comparisons are like for like: ridge against
   ridge (logistic regression for categorical targets), gradient boosting against gradient
   boosting. Representations: the latent, per-layer weight statistics (Unterthiner et al.,
   2020), the raw normalized weights and PCA of the same width as the latent
   (:mod:`weightspace.baselines`), and a ``chance`` row (train mean / majority class).
2. **Reconstruction.** Decoded networks run on the task: per-tensor R², test accuracy next
   to the originals', retention and agreement of the predicted labels; the PCA of the same
   width is the linear autoencoder to beat.
3. **Generation.** A density fitted to the latents of the best training checkpoints is
   sampled, decoded and the networks evaluated untrained, next to the zoo's accuracies; each
   sample's distance to its nearest training network is set against the zoo's own
   nearest-neighbour spread: a generator that copies its training set is not generating.

Everything below :func:`evaluate_autoencoder` is a pure function of arrays or stacked
parameters and can be tested without an autoencoder. Regression probes report R² and
Kendall's tau, classification probes accuracy and balanced accuracy. Probe hyperparameters
are chosen on validation and the probe is then refitted on train + validation (``refit``).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.stats
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from threadpoolctl import threadpool_limits
from torch import Tensor

from weightspace.baselines import fit_pca, layer_statistics
from weightspace.dataset import CATEGORICAL_TARGETS, WeightDataModule
from weightspace.nets.forward import effective_params, forward
from weightspace.nets.layout import flatten_params, unflatten_params
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.tasks import Task
from weightspace.zoo.train.loop import per_example_loss

__all__ = [
    "ALPHAS",
    "CS",
    "DEFAULT_TARGETS",
    "LatentDensity",
    "LatentModel",
    "ProbeFit",
    "SplitData",
    "classification_scores",
    "evaluate_autoencoder",
    "evaluate_networks",
    "fit_boosting_probe",
    "compare_probes",
    "format_comparisons",
    "fit_latent_density",
    "fit_logistic_probe",
    "fit_ridge_probe",
    "flat_r2",
    "format_table",
    "generation_metrics",
    "load_split",
    "nearest_neighbour_distances",
    "probe_boosting",
    "probe_classification",
    "probe_regression",
    "probe_table",
    "probe_targets",
    "reconstruction_metrics",
    "regression_scores",
    "tensor_r2",
    "top_fraction",
    "write_results",
]

Params = dict[str, Tensor]
Split3 = tuple[np.ndarray, np.ndarray, np.ndarray]  # (train, val, test)

ALPHAS = np.logspace(-3, 6, 19)  # ridge penalties on standardized features
CS = np.logspace(-3, 3, 13)  # inverse L2 penalties of the logistic probe
# Gradient boosting: a few fixed settings; the number of trees is chosen on validation.
BOOSTING = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "l2_regularization": 1.0}

DEFAULT_TARGETS = (
    "test_acc",
    "epoch",
    "generalization_gap",
    "lr",
    "weight_decay",
    "init",
    "activation",
    "optimizer",
)
# Targets probed on a log scale; names in the table say so.
LOG_TARGETS = {"lr": "log_lr", "weight_decay": "log_weight_decay"}

PROBE_COLUMNS = ["representation", "probe", "target", "metric", "value", "param", "note"]
REGRESSION_METRICS = ("r2", "kendall_tau")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy")


# --------------------------------------------------------------------------- probes
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


def _as2d(z: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(z, Tensor):
        z = z.detach().cpu().numpy()
    z = np.asarray(z, dtype=np.float64)
    return z.reshape(len(z), -1)


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
    x_tr, x_va = _as2d(z_train), _as2d(z_val)
    y_tr, y_va = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
    scale = _standardizer(x_tr)
    pred_val = _ridge_path(scale(x_tr), y_tr, scale(x_va), a)  # (n_val, A)
    mse = ((pred_val - y_va[:, None]) ** 2).mean(0)
    best = _pick(mse, prefer_last=True)
    pred_test = None
    if z_test is not None:
        x_fit, y_fit = _fit_rows(x_tr, y_tr, x_va, y_va, refit)
        scale = _standardizer(x_fit)
        pred_test = _ridge_path(scale(x_fit), y_fit, scale(_as2d(z_test)), a[best : best + 1])[:, 0]
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
    x_tr, x_va = _as2d(z_train), _as2d(z_val)
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
            pred_test = final.fit(scale(x_fit), y_fit).predict(scale(_as2d(z_test)))
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
    x_tr, x_va = _as2d(z_train), _as2d(z_val)
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
        pred_test = final.fit(x_fit, y_fit).predict(_as2d(z_test))
    return ProbeFit(float(n_trees), dict(enumerate(losses.tolist(), 1)), preds[best], pred_test)


def _kendall(y: np.ndarray, pred: np.ndarray) -> float:
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(pred) == 0:
        return float("nan")  # undefined for a constant sequence
    return float(scipy.stats.kendalltau(y, pred).statistic)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = float(((y - y.mean()) ** 2).sum())
    sse = float(((y - pred) ** 2).sum())
    if sst == 0:
        return 1.0 if sse == 0 else float("nan")
    return 1.0 - sse / sst


def regression_scores(y_test: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R² (1 - SSE / SST around the test mean) and Kendall's tau of predictions."""
    y, p = np.asarray(y_test, np.float64), np.asarray(pred, np.float64)
    return {"r2": _r2(y, p), "kendall_tau": _kendall(y, p)}


def classification_scores(y_test: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the test split's classes)."""
    y, p = np.asarray(y_test), np.asarray(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # predicted classes absent from y
        balanced = float(balanced_accuracy_score(y, p))
    return {"accuracy": float((y == p).mean()), "balanced_accuracy": balanced}


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
            zs = [_as2d(z)[m] for z, m in zip(zs_all, finite)]
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


COMPARISON_COLUMNS = [
    "target", "probe", "baseline", "metric", "ours", "theirs", "difference", "ci_low",
    "ci_high", "verdict",
]  # fmt: skip


def _weighted_score(y: np.ndarray, pred: np.ndarray, w: np.ndarray, categorical: bool):
    """R² (or accuracy) of ``pred`` under each row of weights ``w`` (B, n): (B,)."""
    if categorical:
        return (w * (y == pred)).sum(1) / w.sum(1)
    mean = (w * y).sum(1, keepdims=True) / w.sum(1, keepdims=True)
    sst = (w * (y - mean) ** 2).sum(1)
    sse = (w * (y - pred) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - sse / sst


def compare_probes(
    predictions: Mapping[tuple[str, str, str], tuple[np.ndarray, np.ndarray]],
    y_test: Mapping[str, np.ndarray],
    groups: np.ndarray,
    categorical: Collection[str] = (),
    subject: str = "latent",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """``subject``'s probes against every other representation's probe of the same family
    on the same target, with a paired bootstrap over test *members*.

    ``predictions``: from :func:`probe_table`; ``y_test``: target -> test values (all test
    rows); ``groups``: the member of each test row. A member's checkpoints are not
    independent draws, so whole members are resampled (with replacement), and both probes
    are scored on the same resample. One row per comparison: the two scores (R², or accuracy
    for categorical targets) on the test split, their difference, its ``level`` percentile
    interval, and a verdict: ``better`` / ``worse`` when the interval excludes 0, else
    ``tied``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    family = {"ridge": "linear", "logistic": "linear", "boosting": "boosting"}
    for (rep, kind, target), (mask, ours) in predictions.items():
        if rep != subject:
            continue
        y = np.asarray(y_test[target])[mask]
        g = np.unique(np.asarray(groups)[mask], return_inverse=True)[1]
        counts = rng.multinomial(g.max() + 1, np.full(g.max() + 1, 1 / (g.max() + 1)), n_boot)
        w = counts[:, g].astype(np.float64)  # (n_boot, rows): each row's weight in a resample
        is_cat = target in categorical
        mine = _weighted_score(y, ours, w, is_cat)
        for (other, okind, otarget), (omask, theirs) in predictions.items():
            if other == subject or okind != kind or otarget != target:
                continue
            if not np.array_equal(omask, mask):
                raise ValueError(f"{other} {kind} on {target}: scored on other rows")
            with np.errstate(invalid="ignore"):  # (a constant resample: R² undefined)
                diff = mine - _weighted_score(y, theirs, w, is_cat)
            diff = diff[np.isfinite(diff)]
            tail = 100 * (1 - level) / 2
            lo, hi = np.percentile(diff, [tail, 100 - tail]) if len(diff) else (np.nan, np.nan)
            full = np.ones((1, len(y)))
            a = float(_weighted_score(y, ours, full, is_cat)[0])
            b = float(_weighted_score(y, theirs, full, is_cat)[0])
            verdict = "better" if lo > 0 else "worse" if hi < 0 else "tied"
            metric = "accuracy" if is_cat else "r2"
            values = (target, family[kind], other, metric, a, b, a - b, lo, hi, verdict)
            rows.append(dict(zip(COMPARISON_COLUMNS, values)))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _markdown(header: list[str], body: list[list[str]]) -> str:
    """A markdown table with its columns padded to a common width."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])


def format_comparisons(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table of :func:`compare_probes`: a row per target and probe family, a
    column per baseline, each cell the difference (ours - theirs) and its interval, marked
    ``better`` / ``worse`` when the interval excludes 0."""
    if df.empty:
        return "(no comparisons)"
    baselines = list(dict.fromkeys(df["baseline"]))
    header = ["target", "probe", *baselines]
    body = []
    for (target, probe), part in df.groupby(["target", "probe"], sort=False):
        cells = dict.fromkeys(baselines, "")
        for r in part.itertuples():
            if not np.isfinite(r.difference):
                cells[r.baseline] = "nan"
                continue
            mark = "" if r.verdict == "tied" else f" {r.verdict}"
            cells[r.baseline] = (
                f"{r.difference:+.{digits}f} [{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]"
                + mark
            )
        body.append([str(target), str(probe), *cells.values()])
    return _markdown(header, body)


def format_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A compact markdown table of a :func:`probe_table`: one row per target, one column per
    representation and probe family ("latent linear", "stats boosting", ...), each cell the
    target's headline score (R² for regression, accuracy for categorical targets), or the
    note ('constant', 'missing')."""
    headline = df[df["metric"].isin(["r2", "accuracy"])]
    family = headline["probe"].map(
        {"ridge": "linear", "logistic": "linear", "boosting": "boosting", "constant": ""}
    )
    col = (headline["representation"] + " " + family).str.strip()
    columns = list(dict.fromkeys(col))
    cells: dict[str, dict[str, str]] = {}
    metric_of: dict[str, str] = {}
    for target, c, value, note, metric in zip(
        headline["target"], col, headline["value"], headline["note"], headline["metric"]
    ):
        metric_of[target] = "R²" if metric == "r2" else "acc"
        if isinstance(note, str) and note:
            text = note
        elif not math.isfinite(value):
            text = "nan"
        else:  # values that round to zero print as 0.000, not -0.000
            text = f"{value if abs(value) >= 0.5 * 10**-digits else 0.0:.{digits}f}"
        cells.setdefault(target, {})[c] = text
    header = ["target", "metric", *columns]
    body = [[t, metric_of[t], *(cells[t].get(c, "") for c in columns)] for t in cells]
    return _markdown(header, body)


# --------------------------------------------------------------------------- reconstruction
def _spec_groups(spec: MLPSpec | Sequence[MLPSpec], n: int) -> list[tuple[MLPSpec, Tensor]]:
    """(spec, member indices) per activation: one spec for all, or one spec per member."""
    if isinstance(spec, MLPSpec):
        return [(spec, torch.arange(n))]
    specs = list(spec)
    if len(specs) != n:
        raise ValueError(f"{len(specs)} specs for {n} networks")
    groups: dict[MLPSpec, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(s, []).append(i)
    return [(s, torch.tensor(idx)) for s, idx in groups.items()]


def _n_members(params: Mapping[str, Tensor]) -> int:
    return next(iter(params.values())).shape[0]


def _outputs(
    params: Mapping[str, Tensor], spec: MLPSpec | Sequence[MLPSpec], x: Tensor, budget: int
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """(member indices, outputs (m, B, out)) in chunks: per spec group, as many members as
    keep the widest activation within ``budget`` entries. The chunking depends only on
    ``spec`` and the number of networks, so two populations chunk alike."""
    for s, idx in _spec_groups(spec, _n_members(params)):
        chunk = max(1, budget // (len(x) * max(s.widths[1:])))
        for lo in range(0, len(idx), chunk):
            sel = idx[lo : lo + chunk]
            yield sel.numpy(), forward({k: v[sel].float() for k, v in params.items()}, x, s)


@torch.no_grad()
def evaluate_networks(
    params: Mapping[str, Tensor],
    spec: MLPSpec | Sequence[MLPSpec],
    task: Task,
    budget: int = 1 << 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Test loss and accuracy (NaN for regression) of stacked networks, each ``(M,)``;
    ``spec``: one for all or one per network (mixed activations)."""
    m = _n_members(params)
    loss, acc = np.full(m, np.nan), np.full(m, np.nan)
    for idx, out in _outputs(params, spec, task.x_test, budget):
        loss[idx] = per_example_loss(out, task.y_test, task).double().mean(1).numpy()
        if task.is_classification:
            acc[idx] = (out.argmax(-1) == task.y_test).double().mean(1).numpy()
    return loss, acc


def tensor_r2(original: Mapping[str, Tensor], decoded: Mapping[str, Tensor], spec: MLPSpec):
    """R² of each effective tensor over the networks: ``1 - SSE / SST``, SST around the
    per-entry mean of the originals (decoding every network to the mean network scores 0).
    Both are pooled over the tensor's entries. An SST of 0 gives 1 if SSE is 0, else NaN."""
    a, b = effective_params(original, spec), effective_params(decoded, spec)
    out = {}
    for name in spec.param_shapes():
        o, d = a[name].double(), b[name].double()
        sse = float(((o - d) ** 2).sum())
        sst = float(((o - o.mean(0)) ** 2).sum())
        out[name] = (1.0 if sse == 0 else float("nan")) if sst == 0 else 1.0 - sse / sst
    return out


def reconstruction_metrics(
    original_params: Mapping[str, Tensor],
    decoded_params: Mapping[str, Tensor],
    spec: MLPSpec | Sequence[MLPSpec],
    task: Task,
    budget: int = 1 << 24,
) -> dict[str, float]:
    """How well decoded networks stand in for the originals (both stacked, ``(M, ...)``).

    ``spec``: one for all networks or one per network (a zoo with mixed activations).

    - ``r2/{tensor}`` per weight and bias (:func:`tensor_r2`), ``r2_mean`` their mean;
    - ``orig_acc`` / ``recon_acc``: mean test accuracy of the originals and the decoded;
      ``orig_loss`` / ``recon_loss`` the same for the loss;
    - ``acc_retention``: mean over networks of ``recon_acc / orig_acc``;
      ``acc_retention_of_means``: ``mean recon_acc / mean orig_acc``;
    - ``acc_kendall_tau``: rank agreement of the accuracies across networks;
    - ``agreement``: mean fraction of test inputs where both predict the same class;
    - ``output_mse``: mean squared difference of their outputs (logits / predictions).

    Accuracy-based entries are NaN for regression tasks. Networks run in chunks of at most
    ``budget`` activation entries.
    """
    m = _n_members(original_params)
    if _n_members(decoded_params) != m:
        raise ValueError(f"{m} original and {_n_members(decoded_params)} decoded networks")
    one = spec if isinstance(spec, MLPSpec) else next(iter(spec))
    r2 = tensor_r2(original_params, decoded_params, one)
    x, y = task.x_test, task.y_test
    o_loss, d_loss, o_acc, d_acc, agree, mse = (np.full(m, np.nan) for _ in range(6))
    pairs = zip(
        _outputs(original_params, spec, x, budget), _outputs(decoded_params, spec, x, budget)
    )
    with torch.no_grad():
        for (idx, a), (_, b) in pairs:  # a, b: (m, B, out) of the same networks
            o_loss[idx] = per_example_loss(a, y, task).double().mean(1).numpy()
            d_loss[idx] = per_example_loss(b, y, task).double().mean(1).numpy()
            mse[idx] = ((a - b) ** 2).double().mean((1, 2)).numpy()
            if task.is_classification:
                pa, pb = a.argmax(-1), b.argmax(-1)
                o_acc[idx] = (pa == y).double().mean(1).numpy()
                d_acc[idx] = (pb == y).double().mean(1).numpy()
                agree[idx] = (pa == pb).double().mean(1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(o_acc > 0, d_acc / o_acc, np.nan)
    cls = task.is_classification
    return {
        "n_networks": float(m),
        **{f"r2/{k}": v for k, v in r2.items()},
        "r2_mean": float(np.mean(list(r2.values()))),
        "orig_loss": float(o_loss.mean()),
        "recon_loss": float(d_loss.mean()),
        "orig_acc": float(o_acc.mean()) if cls else float("nan"),
        "recon_acc": float(d_acc.mean()) if cls else float("nan"),
        "acc_retention": _nanmean(ratio) if cls else float("nan"),
        "acc_retention_of_means": float(d_acc.mean() / o_acc.mean())
        if cls and o_acc.mean() > 0
        else float("nan"),
        "acc_kendall_tau": _kendall(o_acc, d_acc) if cls else float("nan"),
        "agreement": float(agree.mean()) if cls else float("nan"),
        "output_mse": float(mse.mean()),
    }


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def flat_r2(x: np.ndarray | Tensor, x_hat: np.ndarray | Tensor) -> float:
    """R² of reconstructed vectors (N, D) pooled over entries, SST around the per-entry mean:
    the usual score of an autoencoder (or a PCA) in the normalized space."""
    a, b = _as2d(x), _as2d(x_hat)
    return _r2_pooled(a, b)


def _r2_pooled(a: np.ndarray, b: np.ndarray) -> float:
    sst = float(((a - a.mean(0)) ** 2).sum())
    sse = float(((a - b) ** 2).sum())
    return (1.0 if sse == 0 else float("nan")) if sst == 0 else 1.0 - sse / sst


# --------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class LatentDensity:
    """A density over latents to sample new networks from.

    ``gaussian``: ``N(mean, cov)`` (a singular covariance, fewer points than dimensions, is
    sampled in its support). ``kde``: a Gaussian kernel on every fitted point with the
    covariance ``bandwidth² * cov`` (scipy's ``gaussian_kde``; Scott's factor by default).
    ``selected``: which of the latents given to :func:`fit_latent_density` were used.
    """

    kind: str
    mean: np.ndarray  # (d,)
    cov: np.ndarray  # (d, d)
    points: np.ndarray  # (n, d) the fitted latents
    bandwidth: float
    selected: np.ndarray  # (n,) indices into the latents passed to the fit

    def _root(self) -> np.ndarray:
        """L with L L^T = cov, from the eigendecomposition (works for a singular cov)."""
        vals, vecs = np.linalg.eigh(self.cov)
        return vecs * np.sqrt(np.clip(vals, 0.0, None))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` latents ``(n, d)`` float64, reproducible for a seed."""
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((n, len(self.mean))) @ self._root().T
        if self.kind == "gaussian":
            return self.mean + noise
        return self.points[rng.integers(len(self.points), size=n)] + self.bandwidth * noise


def top_fraction(values: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``ceil(fraction * n)`` largest finite values (at least one), best first."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(v))
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * len(ok)))
    return ok[np.argsort(-v[ok], kind="stable")[:k]]


def fit_latent_density(
    z: np.ndarray | Tensor,
    kind: str = "gaussian",
    accuracy: np.ndarray | None = None,
    fraction: float = 0.3,
    bandwidth: float | None = None,
) -> LatentDensity:
    """Fit a :class:`LatentDensity` to latents ``z`` (N, d); with ``accuracy`` (N,), to the
    top ``fraction`` of them by accuracy only (the networks worth generating more of)."""
    if kind not in ("gaussian", "kde"):
        raise ValueError(f"density kind {kind!r} (choose gaussian or kde)")
    x = _as2d(z)
    sel = np.arange(len(x)) if accuracy is None else top_fraction(accuracy, fraction)
    pts = x[sel]
    if len(pts) < 2:
        raise ValueError(f"a latent density needs at least 2 points, got {len(pts)}")
    n, d = pts.shape
    mean = pts.mean(0)
    cov = np.atleast_2d(np.cov(pts, rowvar=False))
    bw = float(bandwidth) if bandwidth is not None else n ** (-1.0 / (d + 4))  # Scott
    return LatentDensity(kind, mean, cov, pts, bw, sel)


@torch.no_grad()
def nearest_neighbour_distances(
    queries: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    query_groups: np.ndarray | None = None,
    reference_groups: np.ndarray | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """L2 distance ``(n_queries,)`` from each query to its nearest reference vector, skipping
    references of the query's own group (e.g. other checkpoints of the same member, or the
    query itself when queries are references). Float64."""
    q = torch.as_tensor(_as2d(queries))
    r = torch.as_tensor(_as2d(reference))
    out = np.empty(len(q))
    r2 = (r**2).sum(1)
    for s in range(0, len(q), chunk):
        qb = q[s : s + chunk]
        d2 = (qb**2).sum(1, keepdim=True) + r2 - 2 * qb @ r.T  # (b, n_ref)
        if query_groups is not None and reference_groups is not None:
            same = query_groups[s : s + chunk, None] == reference_groups[None, :]
            d2[torch.from_numpy(same)] = math.inf
        out[s : s + chunk] = d2.clamp_min(0).min(1).values.sqrt().numpy()
    return out


def _quartiles(x: np.ndarray, prefix: str) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("q25", "median", "q75", "mean")}
    q25, med, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    return {
        f"{prefix}_q25": float(q25),
        f"{prefix}_median": float(med),
        f"{prefix}_q75": float(q75),
        f"{prefix}_mean": float(x.mean()),
    }


def generation_metrics(
    samples: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    sample_acc: np.ndarray,
    zoo_acc: np.ndarray,
    reference_groups: np.ndarray | None = None,
    copy_tol: float = 0.05,
    max_queries: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Sampled networks against the zoo they were learned from.

    ``samples`` (n, D) and ``reference`` (N, D): flat vectors in one space (the normalized
    one); ``reference_groups`` (N,): member of each reference row, so that a training
    network's nearest *other* network is never its own other checkpoint. ``sample_acc`` /
    ``zoo_acc``: accuracies of the untrained samples and of the zoo's networks.

    Returns accuracy quartiles (``sample_acc_*``, ``zoo_acc_*``), the samples' distances to
    their nearest training network (``nn_*``) next to the zoo's nearest-neighbour spread
    (``zoo_nn_*``, at most ``max_queries`` reference rows as queries), ``nn_ratio`` (median
    over median), ``copy_fraction`` (samples closer than ``copy_tol`` times the zoo's median
    spread to a training network) and ``copies_training_set`` (1.0 if that fraction is at
    least one half).
    """
    ref = _as2d(reference)
    groups = np.arange(len(ref)) if reference_groups is None else np.asarray(reference_groups)
    nn = nearest_neighbour_distances(samples, ref)
    rng = np.random.default_rng(seed)
    q = np.sort(rng.permutation(len(ref))[:max_queries])
    zoo_nn = nearest_neighbour_distances(ref[q], ref, groups[q], groups)
    zoo_nn = zoo_nn[np.isfinite(zoo_nn)]  # a single member has no other neighbour
    spread = float(np.median(zoo_nn)) if len(zoo_nn) else float("nan")
    copies = float((nn <= copy_tol * spread).mean()) if math.isfinite(spread) else float("nan")
    return {
        "n_samples": float(len(nn)),
        **_quartiles(sample_acc, "sample_acc"),
        **_quartiles(zoo_acc, "zoo_acc"),
        **_quartiles(nn, "nn"),
        **_quartiles(zoo_nn, "zoo_nn"),
        "nn_ratio": float(np.median(nn)) / spread if spread > 0 else float("nan"),
        "copy_fraction": copies,
        "copies_training_set": float(copies >= 0.5) if math.isfinite(copies) else float("nan"),
    }


# --------------------------------------------------------------------------- orchestration
class LatentModel(Protocol):
    """What :func:`evaluate_autoencoder` needs of a model: normalized flat vectors in,
    latents out, and back. A token-based model wraps its own conversion."""

    def encode(self, weights: Tensor) -> Tensor:  # (B, D) -> (B, latent)
        ...

    def decode(self, latent: Tensor) -> Tensor:  # (B, latent) -> (B, D)
        ...


@dataclass
class SplitData:
    """One split's checkpoints in memory.

    ``params``: the networks' own stacked weights (after the dataset's transform),
    ``weights``: the normalized flat vectors ``(N, D)`` the model reads, ``items``: the
    dataset's item table (member, epoch, targets; categorical targets as codes),
    ``specs``: each item's spec (its member's activation), ``groups``: a member code per item.
    """

    params: Params
    weights: Tensor
    items: pd.DataFrame
    specs: list[MLPSpec]
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


def load_split(
    datamodule: WeightDataModule, split: str, max_items: int | None = None, seed: int = 0
) -> SplitData:
    """Read ``split`` without augmentation: all its checkpoints, or ``max_items`` of them
    drawn at random (seeded). Independent of the datamodule's representation."""
    ds = datamodule.dataset(split, augment=None, views=1)
    idx = np.arange(len(ds))
    if max_items is not None and len(idx) > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_items, replace=False))
    params = ds.params(idx)
    norm = datamodule.normalizer
    normed = norm.normalize_params(params) if norm is not None else params
    items = ds.items.iloc[idx].reset_index(drop=True)
    groups = items["zoo_index"].to_numpy(np.int64) * (1 << 32) + items["member_id"].to_numpy(
        np.int64
    )
    specs = [ds.member_spec(int(i)) for i in idx]
    return SplitData(params, flatten_params(normed, ds.spec), items, specs, groups)


def _log10_offset(ys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """log10(y + c), c half the smallest positive training value: y = 0 sits one notch below
    the smallest value in use instead of at an arbitrary -inf-like epsilon."""
    pos = ys[0][np.isfinite(ys[0]) & (ys[0] > 0)]
    c = 0.5 * float(pos.min()) if len(pos) else 1.0
    return [np.log10(np.clip(y, 0.0, None) + c) for y in ys]


def probe_targets(
    items: Sequence[pd.DataFrame], names: Sequence[str] = DEFAULT_TARGETS
) -> tuple[dict[str, Split3], set[str]]:
    """Probe targets from the item tables of (train, val, test).

    Learning rate and weight decay are probed on a log scale (``log_lr``,
    ``log_weight_decay``, see :func:`_log10_offset`); categorical targets (codes) are
    returned in the second value. Targets absent from the tables are skipped.
    """
    out: dict[str, Split3] = {}
    categorical: set[str] = set()
    for name in names:
        if any(name not in df for df in items):
            continue
        ys = [df[name].to_numpy() for df in items]
        if name in CATEGORICAL_TARGETS:
            categorical.add(name)
            out[name] = tuple(ys)
        elif name == "weight_decay":
            out[LOG_TARGETS[name]] = tuple(_log10_offset([y.astype(np.float64) for y in ys]))
        elif name in LOG_TARGETS:
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = [np.log10(np.where(y > 0, y, np.nan)) for y in ys]
            out[LOG_TARGETS[name]] = tuple(logs)
        else:
            out[name] = tuple(y.astype(np.float64) for y in ys)
    return out, categorical


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        first = next(iter(params()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


@torch.no_grad()
def _apply(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, device, what: str):
    outs = []
    for s in range(0, len(x), batch_size):
        y = fn(x[s : s + batch_size].to(device))
        if not isinstance(y, Tensor) or y.dim() != 2:
            raise TypeError(f"model.{what} must return a (B, n) tensor, got {type(y).__name__}")
        outs.append(y.detach().float().cpu())
    return torch.cat(outs)


def _to_params(flat_normalized: Tensor, datamodule: WeightDataModule, spec: MLPSpec) -> Params:
    norm = datamodule.normalizer
    flat = norm.denormalize_flat(flat_normalized) if norm is not None else flat_normalized
    return unflatten_params(flat, spec)


def evaluate_autoencoder(
    model: LatentModel,
    datamodule: WeightDataModule,
    task: Task | None = None,
    latent_dim: int | None = None,
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    boosting: bool | Collection[str] = ("latent", "stats", "invariants", "pca"),
    density: str = "gaussian",
    top: float = 0.3,
    n_samples: int = 256,
    batch_size: int = 512,
    max_items: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate an autoencoder over weights on the datamodule's held-out (test) members.

    ``model.encode`` maps normalized flat vectors ``(B, D)`` (``datamodule.normalizer``, the
    dataset's transform applied, no augmentation) to latents ``(B, latent)``;
    ``model.decode`` maps latents back to normalized flat vectors. A model working on
    neuron tokens converts inside these two methods
    (:func:`weightspace.nets.layout.unflatten_params` / ``params_to_tokens``). Both are called
    under ``torch.no_grad`` in batches of ``batch_size`` on the model's device; a
    ``nn.Module`` is switched to eval mode meanwhile.

    - Probes (:func:`probe_table`): fitted on train, chosen on val, scored on test, for the
      latent, layer statistics ("stats"), the invariant features alone ("invariants": the
      statistics with every weight matrix's log singular values, the reference for a latent
      that reads them, ``model.stats_spectrum``; with the layer products' and the function
      features too when the model reads those, ``model.stats_products`` /
      ``model.stats_function``, on the model's own probe inputs), raw normalized weights
      ("raw") and a PCA of
      ``latent_dim`` components fitted on train ("pca"); ``boosting`` names the
      representations that also get a boosting probe (raw weights are too wide by default).
    - Reconstruction (:func:`reconstruction_metrics`) of the test networks by the model and
      by the PCA, plus ``r2_normalized`` (:func:`flat_r2`) in the normalized space.
    - Generation: a ``density`` fitted to the latents of the ``top`` fraction of training
      checkpoints by test accuracy (those of their most common activation), ``n_samples``
      decoded and evaluated untrained (:func:`generation_metrics`, against all training
      checkpoints); ``decoded_fit_acc_*`` is the accuracy of the fitted points themselves
      decoded, which separates decoder error from density error.

    ``task``: default, the zoo's own (``Zoo.task()``). ``latent_dim``: default, the width of
    the latents (given, it must match). ``max_items``: a seeded subset of each split's
    checkpoints, for large zoos. Returns ``{"probes": DataFrame, "table": str,
    "comparisons": DataFrame (the latent's probes against each baseline's, with paired
    bootstrap intervals over test members, :func:`compare_probes`), "reconstruction":
    DataFrame (rows autoencoder, pca, and per checkpoint epoch, see
    :func:`reconstruction_table`), "generation": dict, "info": dict}``.
    """
    datamodule.setup("test")
    if task is None:
        task = datamodule.full_dataset.zoos[0].task()
    splits = {s: load_split(datamodule, s, max_items, seed) for s in ("train", "val", "test")}
    spec = datamodule.spec
    device = _model_device(model)
    was_training = getattr(model, "training", None)
    if was_training is not None and hasattr(model, "eval"):
        model.eval()
    try:
        z = {
            s: _apply(model.encode, d.weights, batch_size, device, "encode")
            for s, d in splits.items()
        }
        width = z["train"].shape[1]
        if latent_dim is not None and latent_dim != width:
            raise ValueError(f"latent_dim={latent_dim}, but model.encode gives {width} dims")
        decoded = _apply(model.decode, z["test"], batch_size, device, "decode")
        generation = _generation(
            model,
            datamodule,
            splits["train"],
            z["train"],
            task,
            density,
            top,
            n_samples,
            batch_size,
            device,
            seed,
        )
    finally:
        if was_training and hasattr(model, "train"):
            model.train()

    # ---- probes
    order = ("train", "val", "test")
    pca = fit_pca(splits["train"].weights.double().numpy(), width, seed)
    # The reference for a latent that carries the invariant features carries the same ones.
    hparams = getattr(model, "hparams", None) or {}
    products = bool(hparams.get("stats_products", False))
    probe = None
    if hparams.get("stats_function", False):
        probe = (model.probe_inputs.detach().cpu(), model.probe_targets.detach().cpu())
    reps: dict[str, Split3] = {
        "latent": tuple(z[s].double().numpy() for s in order),
        "stats": tuple(layer_statistics(splits[s].params, spec) for s in order),
        "invariants": tuple(
            layer_statistics(splits[s].params, spec, True, products, probe) for s in order
        ),
        "raw": tuple(splits[s].weights.double().numpy() for s in order),
        "pca": tuple(pca.transform(splits[s].weights.double().numpy()) for s in order),
    }
    tgt, categorical = probe_targets([splits[s].items for s in order], targets)
    pred: dict = {}
    probes = probe_table(reps, tgt, categorical, boosting=boosting, seed=seed, predictions=pred)
    comparisons = compare_probes(
        pred,
        {t: np.asarray(y[2]) for t, y in tgt.items()},
        splits["test"].groups,
        categorical,
        seed=seed,
    )

    # ---- reconstruction of the test networks
    test = splits["test"]
    pca_flat = torch.from_numpy(pca.inverse_transform(reps["pca"][2])).float()
    reconstruction = reconstruction_table(
        test, {"autoencoder": decoded, "pca": pca_flat}, datamodule, spec, task
    )

    info = {
        "task": task.name,
        "latent_dim": int(width),
        "pca_components": int(pca.n_components_),
        "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
        **{f"n_items/{s}": len(splits[s]) for s in order},
        **{f"n_members/{s}": len(np.unique(splits[s].groups)) for s in order},
        "categorical": sorted(categorical),
        "seed": seed,
    }
    return {
        "probes": probes,
        "table": format_table(probes),
        "comparisons": comparisons,
        "reconstruction": reconstruction,
        "generation": generation,
        "info": info,
    }


def reconstruction_table(
    split: SplitData,
    decoded: Mapping[str, Tensor],
    datamodule: WeightDataModule,
    spec: MLPSpec,
    task: Task,
) -> pd.DataFrame:
    """:func:`reconstruction_metrics` (plus ``r2_normalized``) of each model's decoded
    normalized flat vectors against ``split``: a row per model over all checkpoints, then,
    when the split holds several checkpoint epochs, a row ``"<model> epoch <e>"`` per epoch
    (column ``epoch``; NaN on the overall rows). Initializations (epoch 0) are random
    networks no latent of a few dozen numbers can carry, and partly trained ones are rough:
    the per-epoch rows keep the overall mean from hiding how well trained networks decode."""
    epochs = split.items["epoch"].to_numpy() if "epoch" in split.items else np.zeros(len(split))
    groups: list[tuple[str, float, np.ndarray]] = [("", float("nan"), np.arange(len(split)))]
    if len(np.unique(epochs)) > 1:
        groups += [
            (f" epoch {e}", float(e), np.flatnonzero(epochs == e)) for e in np.unique(epochs)
        ]
    rows = {}
    for name, flat in decoded.items():
        params = _to_params(flat, datamodule, spec)
        for suffix, epoch, idx in groups:
            sel = torch.from_numpy(idx)
            row = reconstruction_metrics(
                {k: v[sel] for k, v in split.params.items()},
                {k: v[sel] for k, v in params.items()},
                [split.specs[i] for i in idx],
                task,
            )
            row["r2_normalized"] = flat_r2(split.weights[sel], flat[sel])
            rows[name + suffix] = {"epoch": epoch, **row}
    return pd.DataFrame.from_dict(rows, orient="index")


def _generation(
    model: LatentModel,
    datamodule: WeightDataModule,
    train: SplitData,
    z_train: Tensor,
    task: Task,
    kind: str,
    top: float,
    n_samples: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Fit, sample, decode and evaluate (see :func:`evaluate_autoencoder`)."""
    acc = train.items["test_acc"].to_numpy(np.float64)
    best = top_fraction(acc, top) if np.isfinite(acc).any() else np.arange(len(train))
    acts = np.array([train.specs[i].activation for i in best])
    values, counts = np.unique(acts, return_counts=True)
    activation = str(values[np.argmax(counts)])
    fit_idx = best[acts == activation]
    info: dict[str, Any] = {"density": kind, "top_fraction": top, "activation": activation}
    info["n_fit"] = len(fit_idx)
    if len(fit_idx) < 2:
        return {**info, "note": "fewer than 2 checkpoints to fit a density to"}
    dens = fit_latent_density(z_train[fit_idx].double().numpy(), kind)
    spec = MLPSpec(datamodule.spec.widths, activation, datamodule.spec.bias)
    samples = torch.from_numpy(dens.sample(n_samples, seed)).float()
    flat = _apply(model.decode, samples, batch_size, device, "decode")
    _, sample_acc = evaluate_networks(_to_params(flat, datamodule, spec), spec, task)
    refit = _apply(model.decode, z_train[fit_idx], batch_size, device, "decode")
    _, fit_acc = evaluate_networks(_to_params(refit, datamodule, spec), spec, task)
    metrics = generation_metrics(flat, train.weights, sample_acc, acc, train.groups, seed=seed)
    return {
        **info,
        **metrics,
        **_quartiles(acc[fit_idx], "fit_acc"),
        **_quartiles(fit_acc, "decoded_fit_acc"),
    }


# --------------------------------------------------------------------------- output
def _json_safe(x: Any) -> Any:
    """Plain JSON values: NaN / inf -> None, numpy scalars and arrays -> Python."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, pd.DataFrame):
        return _json_safe(x.to_dict(orient="records"))
    return x


def write_results(results: Mapping[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write the results of :func:`evaluate_autoencoder` into ``folder``: ``probes.csv``,
    ``comparisons.csv``, ``reconstruction.csv``, ``table.md`` and ``results.json``
    (everything, NaN as null).
    Returns the paths by name."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "probes": root / "probes.csv",
        "comparisons": root / "comparisons.csv",
        "reconstruction": root / "reconstruction.csv",
        "table": root / "table.md",
        "json": root / "results.json",
    }
    results["probes"].to_csv(paths["probes"], index=False)
    comparisons = results.get("comparisons", pd.DataFrame(columns=COMPARISON_COLUMNS))
    comparisons.to_csv(paths["comparisons"], index=False)
    results["reconstruction"].to_csv(paths["reconstruction"], index_label="model")
    paths["table"].write_text(results["table"] + "\n")
    rec = results["reconstruction"]
    payload = {
        "info": results.get("info", {}),
        "reconstruction": {str(k): row for k, row in rec.to_dict(orient="index").items()},
        "generation": results.get("generation", {}),
        "probes": results["probes"].to_dict(orient="records"),
        "comparisons": comparisons.to_dict(orient="records"),
    }
    paths["json"].write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False))
    return paths
