"""Statistics of cohorts over their checkpoints, as figure data: the measuring behind
questions 1, 3 and 4 (:mod:`.patterns`, :mod:`.symmetry_breaking`, :mod:`.weight_norm`).

Per-layer norm profiles (per checkpoint, per hyperparameter group), weight distributions and
spectra; distinct units and effective ranks during training; learning curves; the gains and
direction norms of weight normalization. Each returns a dict of numpy values (drawn as they
are; :func:`measures.as_lists` makes them JSON-ready) unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from weightspace.analysis import measures as M
from weightspace.analysis.cohort import Cohort
from weightspace.nets.spec import bias_name, weight_name

NORM_KINDS = ("weight", "bias", "ratio")


# --------------------------------------------------------------------------- layers
def norm_profile(cohort: Cohort, epochs: Sequence[int] | None = None) -> dict[str, Any]:
    """||W_l||_F, ||b_l|| and their ratio per layer: median and IQR over the members, per
    checkpoint epoch (kind -> q25 / median / q75 -> one (n_layers,) array per epoch)."""
    epochs = list(epochs) if epochs is not None else cohort.epochs
    spec = cohort.spec
    profiles = {e: M.norm_profile(cohort.weights(e), spec) for e in epochs}
    return {
        "layers": list(range(1, spec.n_layers + 1)),
        "widths": list(spec.widths),
        "epochs": epochs,
        "n_members": len(cohort),
        **{
            kind: {q: [profiles[e][kind][q] for e in epochs] for q in ("q25", "median", "q75")}
            for kind in NORM_KINDS
        },
    }


def norm_by_group(cohort: Cohort, column: str, epoch: int | None = None) -> dict[str, Any]:
    """The norm profile at one epoch per value of hyperparameter ``column`` (kind -> q25 /
    median / q75 -> one (n_layers,) array per group)."""
    epoch = cohort.last_epoch if epoch is None else epoch
    labels = M.group_labels(cohort.members, column)
    groups = list(dict.fromkeys(sorted(labels.unique(), key=M.natural_key)))
    spec = cohort.spec
    profiles, sizes = {}, {}
    for grp in groups:
        ids = cohort.ids[(labels == grp).to_numpy()]
        sub = cohort.subset(ids)
        profiles[grp] = M.norm_profile(sub.weights(epoch), sub.spec)
        sizes[grp] = len(ids)
    return {
        "layers": list(range(1, spec.n_layers + 1)),
        "epoch": epoch,
        "column": column,
        "groups": groups,
        "n_members": [sizes[grp] for grp in groups],
        **{
            kind: {q: [profiles[grp][kind][q] for grp in groups] for q in ("q25", "median", "q75")}
            for kind in NORM_KINDS
        },
    }


def weight_distributions(
    cohort: Cohort, epochs: Sequence[int] | None = None, bins: int = 60
) -> dict[str, Any]:
    """Histogram (density) of all weight entries per layer, pooled over members, with their
    mean, std and largest magnitude: at initialization and the last checkpoint (or
    ``epochs``)."""
    epochs = list(epochs) if epochs is not None else [cohort.epochs[0], cohort.last_epoch]
    values = {e: cohort.weights(e) for e in epochs}
    data: dict[str, Any] = {"epochs": epochs, "layers": []}
    for l in range(cohort.spec.n_layers):
        flat = {e: values[e][weight_name(l)].double().flatten().numpy() for e in epochs}
        pooled = np.concatenate(list(flat.values()))
        lo, hi = np.quantile(pooled, [0.001, 0.999])
        if hi - lo < 1e-12:  # a constant layer: give it a visible width
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        layer: dict[str, Any] = {"layer": l + 1, "edges": edges, "epochs": {}}
        for e in epochs:
            density, _ = np.histogram(flat[e], bins=edges, density=True)
            layer["epochs"][str(e)] = {
                "density": density,
                "mean": float(flat[e].mean()),
                "std": float(flat[e].std()),
                "abs_max": float(np.abs(flat[e]).max()),
            }
        data["layers"].append(layer)
    return data


def spectra(cohort: Cohort, epochs: Sequence[int] | None = None) -> dict[str, Any]:
    """Singular values of each layer's weight matrix, largest first (median and IQR over
    members), and its effective rank: at initialization and the last checkpoint (or
    ``epochs``)."""
    epochs = list(epochs) if epochs is not None else [cohort.epochs[0], cohort.last_epoch]
    data: dict[str, Any] = {"epochs": epochs, "layers": []}
    for l in range(cohort.spec.n_layers):
        layer: dict[str, Any] = {"layer": l + 1, "epochs": {}}
        for e in epochs:
            s = M.singular_values(cohort.weights(e)[weight_name(l)])  # (M, k)
            layer["epochs"][str(e)] = {
                **M.quantiles(s, 0),
                "effective_rank": M.quantiles(
                    M.effective_rank(cohort.weights(e)[weight_name(l)]), 0
                ),
            }
        data["layers"].append(layer)
    return data


# ------------------------------------------------------------------- symmetry breaking
def symmetry_measures(cohorts: Sequence[Cohort], tolerance: float = 1e-5) -> dict[str, Any]:
    """Per cohort and checkpoint: distinct units of each hidden layer (median, min, max over
    members: (E, H)), effective rank of each layer (q25, median, q75: (E, L)), accuracy and
    loss."""
    out: dict[str, Any] = {"tolerance": tolerance, "cohorts": []}
    for c in cohorts:
        spec = c.spec
        rows: dict[str, list] = {
            "distinct_median": [],
            "distinct_min": [],
            "distinct_max": [],
            "rank_q25": [],
            "rank_median": [],
            "rank_q75": [],
        }
        acc, loss = [], []
        for e in c.epochs:
            p = c.weights(e)
            du = np.stack(
                [
                    M.distinct_units(
                        p[weight_name(l)],
                        p.get(bias_name(l)) if spec.bias else None,
                        tolerance,
                    )
                    for l in range(spec.n_layers - 1)
                ]
            )  # (H, M)
            rows["distinct_median"].append(np.median(du, 1))
            rows["distinct_min"].append(du.min(1))
            rows["distinct_max"].append(du.max(1))
            ranks = torch.stack(
                [M.effective_rank(p[weight_name(l)]) for l in range(spec.n_layers)]
            )  # (L, M)
            q = M.quantiles(ranks, 1)
            for k in ("q25", "median", "q75"):
                rows[f"rank_{k}"].append(q[k])
            acc.append(M.quantiles(c.metric("test_acc", e)))
            loss.append(M.quantiles(c.metric("train_loss", e)))
        out["cohorts"].append(
            {
                "label": c.label,
                "n_members": len(c),
                "init": sorted(c.members["init"].unique().tolist()),
                "epochs": c.epochs,
                "widths": list(spec.widths),
                "n_classes": c.task.n_classes,
                **rows,
                "test_acc": {k: [a[k] for a in acc] for k in ("q25", "median", "q75")},
                "train_loss": {k: [a[k] for a in loss] for k in ("q25", "median", "q75")},
            }
        )
    return M.as_lists(out)


# ------------------------------------------------------------------- training, weight norm
def learning_curves(cohort: Cohort, column: str | None) -> dict[str, Any]:
    """Median and IQR of train loss and test accuracy per checkpoint, per group of
    ``column`` (one group when None)."""
    labels = (
        M.group_labels(cohort.members, column)
        if column
        else cohort.members["member_id"].map(lambda _: "all")
    )
    out: dict[str, Any] = {}
    for grp in sorted(labels.unique(), key=M.natural_key):
        ids = cohort.ids[(labels == grp).to_numpy()]
        met = cohort.metrics[cohort.metrics["member_id"].isin(ids)]
        by = met.groupby("epoch")
        out[grp] = {
            "epochs": sorted(met["epoch"].unique().tolist()),
            "n_members": len(ids),
            **{
                key: {
                    "q25": by[key].quantile(0.25).to_numpy(),
                    "median": by[key].median().to_numpy(),
                    "q75": by[key].quantile(0.75).to_numpy(),
                }
                for key in ("train_loss", "test_acc")
            },
        }
    return out


def scale_names(e0: int, e1: int, plain_epoch: int) -> list[str]:
    """The per-unit scales :func:`wn_scales` compares, by name, in order."""
    return [
        f"g (WN, epoch {e1})",
        f"‖v‖ (WN, epoch {e1})",
        f"‖v‖ = g (WN, epoch {e0})",
        f"‖w_i‖ (plain, epoch {plain_epoch})",
    ]


def wn_scales(wn: Cohort, plain: Cohort, bins: int = 40) -> tuple[dict[str, Any], list[bool]]:
    """Per layer, over all units of all members: histograms (percent of units) and quantiles
    of the gains g and direction norms ||v|| of the weight-normalized zoo (at initialization
    and at the end) and of the row norms ||w_i|| of the plain zoo, how much ||v|| grew, and
    how many gains turned negative. Also per layer whether the bins are logarithmic (every
    value positive)."""
    spec = wn.spec
    e0, e1 = wn.epochs[0], wn.last_epoch
    w0, w1 = wn.weights(e0, trainable=True), wn.weights(e1, trainable=True)
    plain_w = plain.weights(plain.last_epoch)
    data: dict[str, Any] = {"epochs": [e0, e1], "plain_epoch": plain.last_epoch, "layers": []}
    log_bins = []
    for l in range(spec.n_layers):
        values = (
            w1[weight_name(l, "g")],
            torch.linalg.vector_norm(w1[weight_name(l, "v")], dim=-1),
            w0[weight_name(l, "g")],
            torch.linalg.vector_norm(plain_w[weight_name(l)], dim=-1),
        )
        names = scale_names(e0, e1, plain.last_epoch)
        flat = {k: v.double().flatten().numpy() for k, v in zip(names, values)}
        pooled = np.concatenate(list(flat.values()))
        positive = bool((pooled > 0).all())
        lo, hi = np.quantile(pooled, [0.001, 0.999])
        if hi - lo <= 1e-9 * max(abs(hi), 1.0):  # all equal: give the bins a width
            lo, hi = (lo / 1.5, hi * 1.5) if positive else (lo - 0.5, hi + 0.5)
        # Norms span orders of magnitude when some members blow up: log bins then.
        edges = np.geomspace(lo, hi, bins + 1) if positive else np.linspace(lo, hi, bins + 1)
        layer: dict[str, Any] = {"layer": l + 1, "edges": edges, "series": {}}
        for name in names:
            v = flat[name]
            share, _ = np.histogram(v, bins=edges, weights=np.full(len(v), 100.0 / len(v)))
            layer["series"][name] = {"percent": share, **M.quantiles(v)}
        ratio = torch.linalg.vector_norm(
            w1[weight_name(l, "v")], dim=-1
        ) / torch.linalg.vector_norm(w0[weight_name(l, "v")], dim=-1)
        layer["v_growth"] = M.quantiles(ratio.flatten())
        layer["v_shrunk_fraction"] = float((ratio < 1).double().mean())
        layer["g_negative_fraction"] = float((w1[weight_name(l, "g")] < 0).double().mean())
        data["layers"].append(layer)
        log_bins.append(positive)
    return data, log_bins


def wn_norm_profile(cohorts: Sequence[Cohort]) -> dict[str, Any]:
    """The norm profile (:func:`measures.norm_profile`) of each zoo at initialization and at
    the end."""
    spec = cohorts[0].spec
    data: dict[str, Any] = {"cohorts": []}
    for c in cohorts:
        first, last = c.epochs[0], c.last_epoch
        p0 = M.norm_profile(c.weights(first), c.spec)
        p1 = M.norm_profile(c.weights(last), c.spec)
        data["cohorts"].append({"label": c.label, "epochs": [first, last], "init": p0, "final": p1})
    data["layers"] = list(range(1, spec.n_layers + 1))
    return data
