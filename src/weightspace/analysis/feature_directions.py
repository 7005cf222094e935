"""Where in the invariant features a target lives, and whether a run's latent reaches there.

A latent trained with a statistics head (``model.features.weight``) is asked to predict the
standardized invariant features linearly. Correlated features make a few principal directions
hold nearly all their variance, so a head that fits "the features" well on average can still
miss the directions a target needs. :func:`feature_directions` measures both sides on a run's
held-out members (``scripts/probe_directions.py RUN``):

- ``probes``: the target probed (logistic for a category, ridge otherwise; fitted on train,
  chosen on val, scored on test, as the evaluation does) from the top-``k`` principal
  components of the training split's features, for each ``k``; from all of them; from the
  run's learned coordinates; and from the head's predictions of the features when the model
  has a head. ``variance``: the share of the features' variance the ``k`` components hold.
- ``bands``: per band of principal directions (1-5, 6-10, ...), their share of the variance
  and the head's R² there on the test members (how much of each direction the latent carries).

:func:`target_by_epoch` asks where along training a representation loses the target: one
probe per representation (the run's learned coordinates, the per-layer statistics, the
invariant features), fitted on every checkpoint of the training members as the evaluation
does, scored on the test members' checkpoints of each epoch apart
(``scripts/probe_directions.py RUN --by-epoch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightspace.errors import ConfigError
from weightspace.evaluation.evaluate import apply_in_batches
from weightspace.evaluation.probes import fit_logistic_probe, fit_ridge_probe, probe_table
from weightspace.evaluation.splits import load_split, probe_targets
from weightspace.features.statistics import layer_statistics

__all__ = ["feature_directions", "target_by_epoch"]

ORDER = ("train", "val", "test")
KS = (5, 10, 20, 40, 80)


def _splits_and_target(model: Any, datamodule: Any, target: str):
    if not callable(getattr(model, "invariant_features", None)):
        raise ConfigError("model: has no invariant features to decompose (an autoencoder run)")
    splits = {s: load_split(datamodule, s) for s in ORDER}
    asked = target[len("log_") :] if target.startswith("log_") else target  # log_lr: lr's log
    targets, categorical = probe_targets([splits[s].items for s in ORDER], [asked])
    if not targets:
        have = ", ".join(c for c in splits["train"].items.columns if not c.startswith("_"))
        raise ConfigError(f"--target: '{target}' is not a probe target of this zoo (have {have})")
    return splits, targets, categorical


def _learned(model: Any, splits: dict, batch_size: int) -> dict[str, np.ndarray]:
    learned_fn = getattr(model, "encode_learned", None) or model.encode
    device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
    return {
        s: apply_in_batches(learned_fn, splits[s].weights, batch_size, device, "encode_learned")
        .double()
        .numpy()
        for s in ORDER
    }


def _score(pred: np.ndarray, y: np.ndarray, mask: np.ndarray, categorical: bool) -> float:
    """Accuracy (``categorical``) or R² of ``pred`` against ``y`` on the rows of ``mask``."""
    p, t = pred[mask], y[mask]
    if categorical:
        return float((p == t).mean())
    return float(1 - ((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())


@torch.no_grad()
def target_by_epoch(
    model: Any, datamodule: Any, target: str = "init", batch_size: int = 512
) -> pd.DataFrame:
    """Accuracy (a category; R² otherwise) of ``target`` per checkpoint epoch of the test
    members: one row per representation (``learned``, ``stats``, ``invariants``), a column
    ``all`` and one per epoch (module docstring)."""
    splits, targets, categories = _splits_and_target(model, datamodule, target)
    ys, categorical = next(iter(targets.values())), bool(categories)
    spec = datamodule.spec
    reps = {
        "learned": _learned(model, splits, batch_size),
        "stats": {s: layer_statistics(splits[s].params, spec) for s in ORDER},
        "invariants": {s: np.asarray(model.invariant_features(splits[s].params)) for s in ORDER},
    }
    y_test = ys[2]
    epochs = splits["test"].items["epoch"].to_numpy()
    ok = [np.ones(len(y), bool) if categorical else np.isfinite(y) for y in ys]
    rows = []
    for name, x in reps.items():
        fit = (fit_logistic_probe if categorical else fit_ridge_probe)(
            x["train"][ok[0]], ys[0][ok[0]], x["val"][ok[1]], ys[1][ok[1]], x["test"]
        )
        row = {"representation": name, "all": _score(fit.pred_test, y_test, ok[2], categorical)}
        for e in np.unique(epochs):
            m = ok[2] & (epochs == e)
            row[f"epoch {int(e)}"] = _score(fit.pred_test, y_test, m, categorical)
        rows.append(row)
    return pd.DataFrame(rows)


def _bands(ks: Sequence[int], n: int) -> list[tuple[int, int]]:
    edges = sorted({0, *(k for k in ks if k < n), n})
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def feature_directions(
    model: Any,
    datamodule: Any,
    target: str = "init",
    ks: Sequence[int] = KS,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(probes, bands)`` of a trained :class:`~weightspace.autoencoder.WeightAutoencoder`
    and its datamodule (module docstring). ``target``: a probe target of the evaluation
    (``init``, ``test_acc``, ``lr`` or ``log_lr`` — probed on a log scale either way, ...)."""
    splits, targets, categorical = _splits_and_target(model, datamodule, target)
    mean = np.asarray(model.stats_mean.cpu(), np.float64)
    std = np.asarray(model.stats_std.cpu(), np.float64)
    feats = {
        s: (np.asarray(model.invariant_features(splits[s].params)) - mean) / std for s in ORDER
    }
    centre = feats["train"].mean(0)
    _, sv, vt = np.linalg.svd(feats["train"] - centre, full_matrices=False)
    share = np.cumsum(sv**2) / (sv**2).sum()
    pcs = {s: (feats[s] - centre) @ vt.T for s in ORDER}
    n = len(sv)

    reps: dict[str, tuple] = {}
    variance: dict[str, float] = {}
    for k in sorted({k for k in ks if 0 < k < n}):
        reps[f"top {k} directions"] = tuple(pcs[s][:, :k] for s in ORDER)
        variance[f"top {k} directions"] = float(share[k - 1])
    reps["all features"] = tuple(feats[s] for s in ORDER)
    variance["all features"] = 1.0
    learned = _learned(model, splits, batch_size)
    reps["learned coordinates"] = tuple(learned[s] for s in ORDER)
    head = getattr(model, "stats_head", None)
    bands = pd.DataFrame(columns=["directions", "variance", "head_r2"])
    if head is not None:
        dtype, device = next(head.parameters()).dtype, next(head.parameters()).device
        pred = {
            s: head(torch.as_tensor(learned[s], dtype=dtype, device=device)).double().cpu().numpy()
            for s in ORDER
        }
        reps["head's predictions"] = tuple(pred[s] for s in ORDER)
        pc_pred = (pred["test"] - centre) @ vt.T
        err = ((pc_pred - pcs["test"]) ** 2).mean(0)
        r2 = 1 - err / pcs["test"].var(0).clip(1e-12)
        rows = []
        for lo, hi in _bands(ks, n):
            part = (sv[lo:hi] ** 2).sum() / (sv**2).sum()
            rows.append((f"{lo + 1}-{hi}", float(part), float(np.median(r2[lo:hi]))))
        bands = pd.DataFrame(rows, columns=["directions", "variance", "head_r2"])
    table = probe_table(reps, targets, categorical, boosting=False, chance=False, seed=seed)
    metric = "accuracy" if categorical else "r2"
    table = table[table.metric == metric].set_index("representation")["value"]
    probes = pd.DataFrame(
        {
            "representation": list(reps),
            "variance": [variance.get(r, np.nan) for r in reps],
            metric: [float(table[r]) for r in reps],
        }
    )
    return probes, bands
