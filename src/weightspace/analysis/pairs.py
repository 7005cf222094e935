"""Pairs of runs: which members to compare, their distances in weight space (raw, canonical,
aligned by weight matching) and in function space, and the loss along the straight line
between two runs. The measuring behind question 2 (:mod:`.runs_differ`), on cohorts.

:func:`pair_measures` returns plain lists and floats (:func:`measures.as_lists`);
:func:`weight_vs_function` and :func:`interpolation` keep arrays and tensors for drawing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from weightspace import symmetry as S
from weightspace.analysis import measures as M
from weightspace.analysis.cohort import Cohort
from weightspace.nets.layout import flatten_params, weight_distance


def choose_pairs(
    cohort: Cohort, n_members: int, seed: int = 0
) -> tuple[Cohort, np.ndarray, np.ndarray, bool]:
    """Members to compare pairwise: up to ``n_members`` repeated runs of the largest group of
    identical configurations (only seed and data order differ), all of one activation.
    Returns the sub-cohort, the pair indices into it (i < j) and whether the runs share
    their configuration (False when no two members do: then pairs differ in more)."""
    groups = [grp for grp in M.run_groups(cohort.members) if len(grp) >= 2]
    same_config = bool(groups)
    if same_config:
        pool = np.asarray(groups[0])  # member ids
    else:
        acts = cohort.members["activation"]
        main = acts.mode().iloc[0]
        pool = cohort.ids[(acts == main).to_numpy()]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=min(int(n_members), len(pool)), replace=False))
    if len(chosen) < 2:
        raise ValueError("need at least two members to compare")
    ia, ib = np.triu_indices(len(chosen), 1)
    return cohort.subset(chosen), ia, ib, same_config


def pair_measures(
    cohort: Cohort,
    n_members: int = 16,
    seed: int = 0,
    epochs: Sequence[int] | None = None,
    max_iter: int = 100,
    max_examples: int = 2000,
) -> dict[str, Any]:
    """Weight and function distances of all pairs among ``n_members`` repeated runs, at
    initialization and at the last checkpoint (or ``epochs``).

    Weight distance ``||a - b|| / sqrt(||a|| ||b||)`` raw, after each network is put in its
    canonical form (:func:`symmetry.canonicalize`), and after ``a`` is aligned to ``b`` by
    weight matching; function distance on test inputs: prediction disagreement, output and
    softmax L2, and linear CKA of each hidden layer's activations (which no permutation of
    units changes, so it needs no alignment).
    """
    sub, ia, ib, same_config = choose_pairs(cohort, n_members, seed)
    epochs = list(epochs) if epochs is not None else [sub.epochs[0], sub.last_epoch]
    spec, task = sub.spec, sub.task
    x = task.x_test[:max_examples]
    out: dict[str, Any] = {
        "member_ids": sub.ids,
        "pairs": np.stack([sub.ids[ia], sub.ids[ib]], 1),
        "same_config": same_config,
        "n_examples": len(x),
        "epochs": epochs,
        "classification": task.is_classification,
        "hidden_layers": list(range(1, spec.n_layers)),
        "by_epoch": {},
    }
    for e in epochs:
        p = sub.weights(e)
        a = {k: v[ia] for k, v in p.items()}
        b = {k: v[ib] for k, v in p.items()}
        flat = flatten_params(p, spec)
        canon = flatten_params(S.canonicalize(p, spec)[0], spec)
        match = S.weight_matching(a, b, spec, max_iter=max_iter, seed=seed)
        aligned = S.apply_transform(a, spec, match.transform)
        y = M.outputs(p, x, spec)  # (N, B, C)
        f = M.function_distance(y[ia], y[ib], task.is_classification)
        with torch.no_grad():
            hidden = S.hidden_activations(p, x, spec)
        out["by_epoch"][str(e)] = {
            "distance_raw": weight_distance(flat[ia], flat[ib]),
            "distance_canonical": weight_distance(canon[ia], canon[ib]),
            "distance_aligned": weight_distance(
                flatten_params(aligned, spec), flatten_params(b, spec)
            ),
            **f,
            "cka": [M.linear_cka(h[ia], h[ib]) for h in hidden],
            "test_acc": sub.metric("test_acc", e),
        }
    return M.as_lists(out)


def weight_vs_function(m: Mapping[str, Any], epoch: int | None = None) -> dict[str, Any]:
    """Per pair of runs (from :func:`pair_measures`): weight distance raw and aligned,
    prediction disagreement (%) and softmax distance, and the Spearman correlation of each
    function distance with each weight distance."""
    epoch = m["epochs"][-1] if epoch is None else epoch
    d = m["by_epoch"][str(epoch)]
    raw, aligned = np.asarray(d["distance_raw"]), np.asarray(d["distance_aligned"])
    ys = {
        "disagreement": np.asarray(d["disagreement"], float) * 100,
        "softmax_l2": np.asarray(d["softmax_l2"], float),
    }
    data: dict[str, Any] = {"epoch": epoch, "distance_raw": raw, "distance_aligned": aligned}
    for key, y in ys.items():
        ok = np.isfinite(y)
        rho = spearmanr(aligned[ok], y[ok]).statistic if ok.sum() > 2 else float("nan")
        rho_raw = spearmanr(raw[ok], y[ok]).statistic if ok.sum() > 2 else float("nan")
        data[key] = y
        data[f"spearman_{key}_aligned"] = float(rho)
        data[f"spearman_{key}_raw"] = float(rho_raw)
    return data


def interpolation(
    cohort: Cohort,
    n_pairs: int = 8,
    n_points: int = 25,
    seed: int = 0,
    epoch: int | None = None,
    max_iter: int = 100,
    max_examples: int = 10000,
) -> dict[str, Any]:
    """Train loss and test accuracy along the straight line between two runs (P, T), raw and
    with the first aligned to the second by weight matching, and the loss barriers (P,);
    ``n_pairs`` disjoint pairs of repeated runs."""
    sub, _, _, same_config = choose_pairs(cohort, 2 * n_pairs, seed)
    n = len(sub) // 2
    ia, ib = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
    epoch = sub.last_epoch if epoch is None else epoch
    spec, task = sub.spec, sub.task
    p = sub.weights(epoch)
    a = {k: v[ia] for k, v in p.items()}
    b = {k: v[ib] for k, v in p.items()}
    aligned = S.apply_transform(a, spec, S.weight_matching(a, b, spec, max_iter, seed).transform)
    ts = np.linspace(0, 1, n_points)
    x_tr, y_tr = task.x_train[:max_examples], task.y_train[:max_examples]
    x_te, y_te = task.x_test[:max_examples], task.y_test[:max_examples]
    res = {}
    for name, start in (("raw", a), ("aligned", aligned)):
        loss, _ = M.path_metrics(start, b, spec, task, x_tr, y_tr, ts)
        _, acc = M.path_metrics(start, b, spec, task, x_te, y_te, ts)
        res[name] = {"train_loss": loss, "test_acc": acc, "barrier": M.loss_barrier(loss, ts)}
    return {
        "epoch": epoch,
        "t": ts,
        "pairs": np.stack([sub.ids[ia], sub.ids[ib]], 1),
        "same_config": same_config,
        **{f"{name}_{k}": v for name, r in res.items() for k, v in r.items()},
    }
