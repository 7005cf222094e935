"""The scores every part of the evaluation reports: R², Kendall's tau, accuracy, quartiles.

One R² for all: :func:`r2` pools the squared errors over every entry and measures them
against the per-entry mean over the rows (the first axis), on numpy arrays and torch tensors
alike (each summed in its own library, as each caller always did). It scores a probe's
predictions of a target (1-D), a reconstructed tensor across networks and reconstructed flat
vectors.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor


def as_2d(z: np.ndarray | Tensor) -> np.ndarray:
    """``z`` as a float64 numpy matrix ``(N, F)`` (trailing axes flattened)."""
    if isinstance(z, Tensor):
        z = z.detach().cpu().numpy()
    z = np.asarray(z, dtype=np.float64)
    return z.reshape(len(z), -1)


def r2(target, pred) -> float:
    """``1 - SSE / SST`` pooled over all entries, SST around the per-entry mean over the first
    axis (predicting that mean scores 0). ``target`` and ``pred``: numpy arrays or torch
    tensors of one shape. An SST of 0 gives 1 if SSE is 0, else NaN."""
    sst = float(((target - target.mean(0)) ** 2).sum())
    sse = float(((target - pred) ** 2).sum())
    return (1.0 if sse == 0 else float("nan")) if sst == 0 else 1.0 - sse / sst


def kendall(y: np.ndarray, pred: np.ndarray) -> float:
    """Kendall's tau of two sequences; NaN when one is constant (undefined)."""
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(pred) == 0:
        return float("nan")
    return float(scipy.stats.kendalltau(y, pred).statistic)


def regression_scores(y_test: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R² (1 - SSE / SST around the test mean) and Kendall's tau of predictions."""
    y, p = np.asarray(y_test, np.float64), np.asarray(pred, np.float64)
    return {"r2": r2(y, p), "kendall_tau": kendall(y, p)}


def classification_scores(y_test: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the test split's classes)."""
    y, p = np.asarray(y_test), np.asarray(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # predicted classes absent from y
        balanced = float(balanced_accuracy_score(y, p))
    return {"accuracy": float((y == p).mean()), "balanced_accuracy": balanced}


def nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries (NaN if there are none)."""
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def quartiles(x: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_q25``, ``_median``, ``_q75`` and ``_mean`` of the finite entries of ``x``."""
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
