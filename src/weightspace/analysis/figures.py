"""One function per figure: each measures what it shows and returns ``(figure, data)``.

``data`` holds every number drawn (plain lists and floats, NaN where undefined), so the
report's ``figures.json`` can be re-plotted or checked without the PNGs. Figures are built on
:class:`matplotlib.figure.Figure` directly (no pyplot state, no display needed) with a
constrained layout, so titles, labels and legends do not overlap. Weights have no physical
unit: norms and distances are labelled dimensionless; losses are in nats, accuracies and
disagreement in percent.

The heavier measurements that feed several figures (pairs of runs, symmetry breaking) are
separate functions (:func:`pair_measures`, :func:`symmetry_measures`) whose result the figure
functions take.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.stats import spearmanr

from weightspace import symmetry as S
from weightspace.analysis import measures as M
from weightspace.analysis.cohort import Cohort

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# Two cohorts side by side always get these colours (first, second).
COHORT_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
RAW_COLOR, ALIGNED_COLOR, CANON_COLOR = "#d62728", "#1f77b4", "#ff7f0e"
INIT_COLOR = "#9e9e9e"
LINESTYLES = ("-", "--", ":", "-.")

QS = ("q25", "q75")
NORM_KINDS = {
    # kind: (panel title, y label)
    "weight": (r"Weight norm $\|W_l\|_F$", r"$\|W_l\|_F$ (dimensionless)"),
    "bias": (r"Bias norm $\|b_l\|_2$", r"$\|b_l\|_2$ (dimensionless)"),
    "ratio": (r"Ratio $\|W_l\|_F\,/\,\|b_l\|_2$", "ratio (dimensionless, log scale)"),
}


@contextmanager
def _style():
    with mpl.rc_context(STYLE):
        yield


def _figure(n_panels: int, panel_width: float = 3.7, height: float = 3.3):
    width = max(6.6, panel_width * n_panels + 0.4)  # room for the title and legend
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _lists(x: Any) -> Any:
    """numpy / torch values as plain lists and floats (NaN kept; the report makes it null)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).tolist() if x.dtype.kind == "f" else x.tolist()
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_lists(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _legend(fig: Figure, handles, labels=None, title: str | None = None) -> None:
    """One legend under the panels (never over the data or the title), in as many columns
    as the figure's width holds."""
    if labels is None:
        labels = [h.get_label() for h in handles]
    if not handles:
        return
    longest = max(len(str(lab)) for lab in labels)
    fits = int(fig.get_figwidth() * 15 / (longest + 6))
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        title=title,
        ncols=max(1, min(len(handles), fits)),
    )


def _band(ax, x, q: dict, color, label=None, ls="-", marker="o", alpha=0.18) -> None:
    """Median line with its interquartile band."""
    x = np.asarray(x, dtype=float)
    med = np.asarray(q["median"], dtype=float)
    if np.all(np.isnan(med)):
        return
    ax.plot(x, med, ls=ls, marker=marker, ms=3.5, color=color, label=label, lw=1.6)
    ax.fill_between(x, q["q25"], q["q75"], color=color, alpha=alpha, lw=0)


def _log_y(ax) -> None:
    """Log scale with plain tick labels (1, 2, 5, 10, 20, ...), no minor labels."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def _layer_ticks(ax, widths: Sequence[int]) -> None:
    n = len(widths) - 1
    ax.set_xticks(range(1, n + 1))
    ax.set_xticklabels([f"{l + 1}\n{widths[l]}→{widths[l + 1]}" for l in range(n)])
    ax.set_xlabel("layer (inputs → units)")
    ax.set_xlim(0.6, n + 0.4)


def _epoch_colors(n: int) -> list:
    cmap = mpl.colormaps["viridis"]
    return [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]


def _profile(cohort: Cohort, epoch: int) -> dict[str, dict[str, np.ndarray]]:
    norms = M.layer_norms(cohort.weights(epoch), cohort.spec)
    return {k: M.quantiles(v, 0) for k, v in norms.items()}


def _profile_figure(
    title: str, widths: Sequence[int], has_bias: bool, series: list[dict], legend_title: str
) -> Figure:
    """Norm-against-depth panels; ``series``: dicts with label, color, ls, profile."""
    kinds = ["weight", "bias", "ratio"] if has_bias else ["weight"]
    fig, axes = _figure(len(kinds))
    layers = np.arange(1, len(widths))
    for ax, kind in zip(axes, kinds):
        for s in series:
            _band(ax, layers, s["profile"][kind], s["color"], s["label"], s.get("ls", "-"))
        ax.set_title(NORM_KINDS[kind][0])
        ax.set_ylabel(NORM_KINDS[kind][1])
        _layer_ticks(ax, widths)
        spread = np.concatenate(
            [np.ravel(np.asarray(s["profile"][kind][q], float)) for s in series for q in QS]
        )
        spread = spread[np.isfinite(spread)]
        lo, hi = (spread.min(), spread.max()) if len(spread) else (0.0, 0.0)
        # Log scale for the ratio, and for weight norms spanning more than a factor of 10
        # (e.g. members whose weights blew up next to healthy ones).
        if ax.lines and (kind == "ratio" or (kind == "weight" and lo > 0 and hi / lo > 10)):
            _log_y(ax)
            if kind == "weight":
                ax.set_ylabel(r"$\|W_l\|_F$ (dimensionless, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        _legend(fig, handles, labels, title=legend_title)
    fig.suptitle(title)
    return fig


# =========================================================================== 1. patterns
def fig_norm_profile(cohort: Cohort, epochs: Sequence[int] | None = None) -> tuple[Figure, dict]:
    """||W_l||_F, ||b_l|| and their ratio against depth: median and IQR over the members, one
    line per checkpoint epoch."""
    epochs = list(epochs) if epochs is not None else cohort.epochs
    spec = cohort.spec
    profiles = {e: _profile(cohort, e) for e in epochs}
    with _style():
        colors = _epoch_colors(len(epochs))
        series = [
            {"label": f"{e}", "color": c, "profile": profiles[e]} for e, c in zip(epochs, colors)
        ]
        fig = _profile_figure(
            f"Per-layer norms across {len(cohort)} runs, by checkpoint (median, IQR band)",
            spec.widths,
            spec.bias,
            series,
            "epoch",
        )
    data = {
        "layers": list(range(1, spec.n_layers + 1)),
        "widths": list(spec.widths),
        "epochs": epochs,
        "n_members": len(cohort),
        **{
            kind: {q: [profiles[e][kind][q] for e in epochs] for q in ("q25", "median", "q75")}
            for kind in NORM_KINDS
        },
    }
    return fig, _lists(data)


def group_column(cohort: Cohort, column: str | None = None) -> str | None:
    """The hyperparameter to group members by: ``column``, else the first one that varies."""
    varying = M.varying_columns(cohort.members)
    if column is not None:
        if column not in cohort.members.columns:
            raise KeyError(column)
        return column
    return varying[0] if varying else None


def fig_norm_by_group(cohort: Cohort, column: str, epoch: int | None = None) -> tuple[Figure, dict]:
    """The norm profile at one epoch, one line per value of hyperparameter ``column``."""
    epoch = cohort.last_epoch if epoch is None else epoch
    labels = M.group_labels(cohort.members, column)
    groups = list(dict.fromkeys(sorted(labels.unique(), key=_natural)))
    spec = cohort.spec
    profiles, sizes = {}, {}
    for g in groups:
        ids = cohort.ids[(labels == g).to_numpy()]
        profiles[g] = _profile(cohort.subset(ids), epoch)
        sizes[g] = len(ids)
    with _style():
        series = [
            {
                "label": f"{g} (n={sizes[g]})",
                "color": COHORT_COLORS[i % 4] if i < 4 else f"C{i}",
                "profile": profiles[g],
            }
            for i, g in enumerate(groups)
        ]
        fig = _profile_figure(
            f"Per-layer norms at epoch {epoch}, by {column} (median, IQR band)",
            spec.widths,
            spec.bias,
            series,
            column,
        )
    data = {
        "layers": list(range(1, spec.n_layers + 1)),
        "epoch": epoch,
        "column": column,
        "groups": groups,
        "n_members": [sizes[g] for g in groups],
        **{
            kind: {q: [profiles[g][kind][q] for g in groups] for q in ("q25", "median", "q75")}
            for kind in NORM_KINDS
        },
    }
    return fig, _lists(data)


def _natural(label: str):
    """Sort 'lr=0.01' < 'lr=0.1' numerically when the value is a number."""
    value = label.split("=", 1)[-1].split(" ")[-1].strip("[]")
    try:
        return (0, float(value), label)
    except ValueError:
        return (1, 0.0, label)


def fig_weight_distributions(
    cohort: Cohort, epochs: Sequence[int] | None = None, bins: int = 60
) -> tuple[Figure, dict]:
    """Histogram of all weight entries per layer, pooled over members: initialization and
    the last checkpoint (or ``epochs``)."""
    epochs = list(epochs) if epochs is not None else [cohort.epochs[0], cohort.last_epoch]
    spec = cohort.spec
    values = {e: cohort.weights(e) for e in epochs}
    colors = [INIT_COLOR] + list(COHORT_COLORS) if epochs[0] == 0 else list(COHORT_COLORS)
    data: dict[str, Any] = {"epochs": epochs, "layers": []}
    with _style():
        fig, axes = _figure(spec.n_layers, panel_width=3.0)
        for l, ax in enumerate(axes):
            flat = {e: values[e][f"layers.{l}.weight"].double().flatten().numpy() for e in epochs}
            pooled = np.concatenate(list(flat.values()))
            lo, hi = np.quantile(pooled, [0.001, 0.999])
            if hi - lo < 1e-12:  # a constant layer: give it a visible width
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, bins + 1)
            layer: dict[str, Any] = {"layer": l + 1, "edges": edges, "epochs": {}}
            for i, e in enumerate(epochs):
                density, _ = np.histogram(flat[e], bins=edges, density=True)
                ax.stairs(density, edges, color=colors[i % len(colors)], lw=1.4, label=f"epoch {e}")
                layer["epochs"][str(e)] = {
                    "density": density,
                    "mean": float(flat[e].mean()),
                    "std": float(flat[e].std()),
                    "abs_max": float(np.abs(flat[e]).max()),
                }
            data["layers"].append(layer)
            ax.set_title(f"Layer {l + 1} ({spec.widths[l]}→{spec.widths[l + 1]})")
            ax.set_xlabel("weight value (dimensionless)")
            ax.set_ylabel("density (per unit weight)")
        handles, labels = axes[0].get_legend_handles_labels()
        _legend(fig, handles, labels, title=f"{len(cohort)} runs")
        fig.suptitle("Distribution of weight entries per layer, pooled over runs")
    return fig, _lists(data)


def fig_spectra(cohort: Cohort, epochs: Sequence[int] | None = None) -> tuple[Figure, dict]:
    """Singular values of each layer's weight matrix, largest first: median and IQR over
    members, at initialization and at the last checkpoint (or ``epochs``)."""
    epochs = list(epochs) if epochs is not None else [cohort.epochs[0], cohort.last_epoch]
    spec = cohort.spec
    colors = [INIT_COLOR] + list(COHORT_COLORS) if epochs[0] == 0 else list(COHORT_COLORS)
    data: dict[str, Any] = {"epochs": epochs, "layers": []}
    with _style():
        fig, axes = _figure(spec.n_layers, panel_width=3.0)
        for l, ax in enumerate(axes):
            layer: dict[str, Any] = {"layer": l + 1, "epochs": {}}
            for i, e in enumerate(epochs):
                s = M.singular_values(cohort.weights(e)[f"layers.{l}.weight"])  # (M, k)
                q = M.quantiles(s, 0)
                k = np.arange(1, s.shape[1] + 1)
                _band(ax, k, q, colors[i % len(colors)], f"epoch {e}", marker="")
                layer["epochs"][str(e)] = {
                    **q,
                    "effective_rank": M.quantiles(
                        M.effective_rank(cohort.weights(e)[f"layers.{l}.weight"]), 0
                    ),
                }
            data["layers"].append(layer)
            _log_y(ax)
            ax.set_title(f"Layer {l + 1} ({spec.widths[l]}→{spec.widths[l + 1]})")
            ax.set_xlabel("index i (largest first)")
            ax.set_ylabel(r"singular value $\sigma_i$ (dimensionless)")
        handles, labels = axes[0].get_legend_handles_labels()
        _legend(fig, handles, labels, title=f"{len(cohort)} runs")
        fig.suptitle("Singular-value spectra of the weight matrices (median, IQR band)")
    return fig, _lists(data)


# =========================================================================== 2. runs differ
def choose_pairs(
    cohort: Cohort, n_members: int, seed: int = 0
) -> tuple[Cohort, np.ndarray, np.ndarray, bool]:
    """Members to compare pairwise: up to ``n_members`` repeated runs of the largest group of
    identical configurations (only seed and data order differ), all of one activation.
    Returns the sub-cohort, the pair indices into it (i < j) and whether the runs share
    their configuration (False when no two members do: then pairs differ in more)."""
    groups = [g for g in M.run_groups(cohort.members) if len(g) >= 2]
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
        flat = S.flatten(p, spec)
        canon = S.flatten(S.canonicalize(p, spec)[0], spec)
        match = S.weight_matching(a, b, spec, max_iter=max_iter, seed=seed)
        aligned = S.apply_transform(a, spec, match.transform)
        y = M.outputs(p, x, spec)  # (N, B, C)
        f = M.function_distance(y[ia], y[ib], task.is_classification)
        with torch.no_grad():
            hidden = S.hidden_activations(p, x, spec)
        out["by_epoch"][str(e)] = {
            "distance_raw": S.weight_distance(flat[ia], flat[ib]),
            "distance_canonical": S.weight_distance(canon[ia], canon[ib]),
            "distance_aligned": S.weight_distance(S.flatten(aligned, spec), S.flatten(b, spec)),
            **f,
            "cka": [M.linear_cka(h[ia], h[ib]) for h in hidden],
            "test_acc": sub.metric("test_acc", e),
        }
    return _lists(out)


def _box(ax, values: list, positions, color, width=0.32, label=None) -> None:
    clean = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in values]
    keep = [i for i, v in enumerate(clean) if len(v)]
    if not keep:
        return
    bp = ax.boxplot(
        [clean[i] for i in keep],
        positions=[positions[i] for i in keep],
        widths=width,
        patch_artist=True,
        showfliers=False,
        medianprops={"color": "black", "lw": 1.2},
    )
    for patch in bp["boxes"]:
        patch.set_facecolor(color)
        patch.set_alpha(0.55)
    rng = np.random.default_rng(0)
    for i in keep:
        v = clean[i]
        jitter = rng.uniform(-width / 3, width / 3, len(v))
        ax.scatter(positions[i] + jitter, v, s=5, color=color, alpha=0.7, lw=0, zorder=3)


def fig_pair_distances(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Pairs of runs: weight distance raw / canonical / aligned, prediction disagreement and
    CKA of hidden activations, at initialization and after training."""
    epochs = m["epochs"]
    colors = {str(e): c for e, c in zip(epochs, [INIT_COLOR, ALIGNED_COLOR, CANON_COLOR])}
    offsets = np.linspace(-0.2, 0.2, len(epochs)) if len(epochs) > 1 else [0.0]
    with _style():
        fig, axes = _figure(3, panel_width=3.6, height=3.5)
        kinds = ["raw", "canonical", "aligned"]
        for off, e in zip(offsets, epochs):
            d = m["by_epoch"][str(e)]
            _box(axes[0], [d[f"distance_{k}"] for k in kinds], np.arange(3) + off, colors[str(e)])
            _box(axes[1], [np.asarray(d["disagreement"], float) * 100], [off], colors[str(e)])
            _box(axes[2], d["cka"], np.arange(len(d["cka"])) + off, colors[str(e)])
        axes[0].axhline(math.sqrt(2), color="black", ls=":", lw=1)
        axes[0].annotate("√2: unrelated", (2.45, math.sqrt(2)), ha="right", va="bottom", fontsize=7)
        axes[0].set_xticks(range(3))
        axes[0].set_xticklabels(kinds)
        axes[0].set_xlabel("weights compared")
        axes[0].set_ylabel(r"$\|a-b\|\,/\sqrt{\|a\|\,\|b\|}$ (dimensionless)")
        axes[0].set_title("Weight distance")
        axes[0].set_ylim(bottom=0)
        axes[1].set_xticks([0])
        axes[1].set_xticklabels([f"{m['n_examples']} test inputs"])
        axes[1].set_xlabel("pairs of runs")
        axes[1].set_ylabel("prediction disagreement (%)")
        axes[1].set_title("Function distance")
        axes[1].set_ylim(bottom=0)
        axes[1].set_xlim(-0.6, 0.6)
        axes[2].set_xticks(range(len(m["hidden_layers"])))
        axes[2].set_xticklabels([f"hidden {l}" for l in m["hidden_layers"]])
        axes[2].set_xlabel("layer")
        axes[2].set_ylabel("linear CKA (1 = same representation)")
        axes[2].set_title("Hidden activations")
        axes[2].set_ylim(0, 1.05)
        handles = [
            Patch(color=colors[str(e)], alpha=0.6, label=f"epoch {e}" + (" (init)" * (e == 0)))
            for e in epochs
        ]
        _legend(fig, handles, title=f"{len(m['pairs'])} pairs")
        fig.suptitle(f"Why two runs differ: {len(m['member_ids'])} runs, all pairs")
    return fig, _lists({k: v for k, v in m.items()})


def fig_weight_vs_function(m: dict[str, Any], epoch: int | None = None) -> tuple[Figure, dict]:
    """Per pair of runs after training: weight distance (raw and aligned) against prediction
    disagreement and softmax distance."""
    epoch = m["epochs"][-1] if epoch is None else epoch
    d = m["by_epoch"][str(epoch)]
    raw, aligned = np.asarray(d["distance_raw"]), np.asarray(d["distance_aligned"])
    ys = {
        "disagreement": np.asarray(d["disagreement"], float) * 100,
        "softmax_l2": np.asarray(d["softmax_l2"], float),
    }
    labels = {
        "disagreement": "prediction disagreement (%)",
        "softmax_l2": "mean softmax L2 distance (probability)",
    }
    data: dict[str, Any] = {"epoch": epoch, "distance_raw": raw, "distance_aligned": aligned}
    with _style():
        fig, axes = _figure(2, panel_width=4.0, height=3.4)
        for ax, (key, y) in zip(axes, ys.items()):
            for xa, xb, yy in zip(raw, aligned, y):
                ax.plot([xa, xb], [yy, yy], color="#bbbbbb", lw=0.5, zorder=1)
            ax.scatter(raw, y, s=12, color=RAW_COLOR, label="raw", zorder=2)
            ax.scatter(
                aligned, y, s=12, color=ALIGNED_COLOR, label="aligned (weight matching)", zorder=2
            )
            ax.set_xlabel(r"weight distance $\|a-b\|/\sqrt{\|a\|\|b\|}$ (dimensionless)")
            ax.set_ylabel(labels[key])
            ok = np.isfinite(y)
            rho = spearmanr(aligned[ok], y[ok]).statistic if ok.sum() > 2 else float("nan")
            rho_raw = spearmanr(raw[ok], y[ok]).statistic if ok.sum() > 2 else float("nan")
            data[key] = y
            data[f"spearman_{key}_aligned"] = float(rho)
            data[f"spearman_{key}_raw"] = float(rho_raw)
            ax.set_title(f"Spearman ρ: aligned {rho:.2f}, raw {rho_raw:.2f}")
        handles, lbls = axes[0].get_legend_handles_labels()
        _legend(fig, handles, lbls, title=f"{len(raw)} pairs")
        fig.suptitle(f"Distance in weight space vs. distance in function space (epoch {epoch})")
    return fig, _lists(data)


def fig_interpolation(
    cohort: Cohort,
    n_pairs: int = 8,
    n_points: int = 25,
    seed: int = 0,
    epoch: int | None = None,
    max_iter: int = 100,
    max_examples: int = 10000,
) -> tuple[Figure, dict]:
    """Train loss and test accuracy along the straight line between two runs, raw and with
    the first aligned to the second by weight matching; ``n_pairs`` disjoint pairs of
    repeated runs."""
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
    with _style():
        fig, axes = _figure(2, panel_width=4.0, height=3.4)
        for name, color in (("raw", RAW_COLOR), ("aligned", ALIGNED_COLOR)):
            for ax, key, scale in ((axes[0], "train_loss", 1.0), (axes[1], "test_acc", 100.0)):
                v = res[name][key].numpy() * scale
                for row in v:
                    ax.plot(ts, row, color=color, lw=0.6, alpha=0.35)
                med_b = float(np.median(res[name]["barrier"].numpy()))
                label = f"{name} (median barrier {med_b:.2f} nats)"
                ax.plot(ts, np.median(v, 0), color=color, lw=2.2, label=label)
        axes[0].set_ylabel("train loss (nats)")
        axes[0].set_title("Loss along the path")
        if task.is_classification:
            axes[1].set_ylabel("test accuracy (%)")
        axes[1].set_title("Accuracy along the path")
        for ax in axes:
            ax.set_xlabel(r"$t$ in $(1-t)\,\theta_a + t\,\theta_b$ (fraction of the path)")
        handles, lbls = axes[0].get_legend_handles_labels()
        fig.legend(
            handles,
            lbls,
            loc="outside lower center",
            ncols=2,
            title=f"{n} pairs of runs, epoch {epoch} (thin: each pair; thick: median)",
        )
        fig.suptitle("Linear interpolation between two runs: raw vs. aligned")
    data = {
        "epoch": epoch,
        "t": ts,
        "pairs": np.stack([sub.ids[ia], sub.ids[ib]], 1),
        "same_config": same_config,
        **{f"{name}_{k}": v for name, r in res.items() for k, v in r.items()},
    }
    return fig, _lists(data)


# =========================================================================== 3. symmetry
def symmetry_measures(cohorts: Sequence[Cohort], tolerance: float = 1e-5) -> dict[str, Any]:
    """Per cohort and checkpoint: distinct units of each hidden layer, effective rank of
    each layer, accuracy and loss."""
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
                        p[f"layers.{l}.weight"],
                        p.get(f"layers.{l}.bias") if spec.bias else None,
                        tolerance,
                    )
                    for l in range(spec.n_layers - 1)
                ]
            )  # (H, M)
            rows["distinct_median"].append(np.median(du, 1))
            rows["distinct_min"].append(du.min(1))
            rows["distinct_max"].append(du.max(1))
            ranks = torch.stack(
                [M.effective_rank(p[f"layers.{l}.weight"]) for l in range(spec.n_layers)]
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
    return _lists(out)


def fig_distinct_units(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Distinct hidden units per layer against training epoch (median, min-max band)."""
    cohorts = m["cohorts"]
    widths = cohorts[0]["widths"]
    n_hidden = len(widths) - 2
    with _style():
        fig, axes = _figure(max(1, n_hidden), panel_width=3.8, height=3.3)
        for l, ax in enumerate(axes):
            for i, c in enumerate(cohorts):
                col = COHORT_COLORS[i % 4]
                e = np.asarray(c["epochs"])
                med = np.asarray(c["distinct_median"])[:, l]
                ax.plot(e, med, marker="o", ms=3.5, color=col, label=c["label"])
                ax.annotate(
                    f"{med[-1]:g}",
                    (e[-1], med[-1]),
                    xytext=(4, 3),
                    textcoords="offset points",
                    color=col,
                    fontsize=8,
                )
                ax.fill_between(
                    e,
                    np.asarray(c["distinct_min"])[:, l],
                    np.asarray(c["distinct_max"])[:, l],
                    color=col,
                    alpha=0.18,
                )
            ax.axhline(widths[l + 1], color="black", ls=":", lw=1)
            ax.annotate(
                f"width {widths[l + 1]}",
                (0.02, widths[l + 1]),
                xycoords=("axes fraction", "data"),
                ha="left",
                va="bottom",
                fontsize=7,
            )
            ax.set_ylim(0, widths[l + 1] * 1.12)
            ax.set_title(f"Hidden layer {l + 1} ({widths[l + 1]} units)")
            ax.set_xlabel("epoch")
            ax.set_ylabel("distinct units (count)")
        handles, labels = axes[0].get_legend_handles_labels()
        _legend(fig, handles, labels, title=f"relative tolerance {m['tolerance']:g}")
        fig.suptitle("Distinct hidden units during training (median, min–max band)")
    return fig, m


def fig_effective_rank(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Effective rank of each layer's weight matrix at initialization and at the end."""
    cohorts = m["cohorts"]
    widths = cohorts[0]["widths"]
    n_layers = len(widths) - 1
    n_bars = 2 * len(cohorts)
    w = 0.8 / n_bars
    with _style():
        fig, axes = _figure(1, panel_width=6.4, height=3.4)
        ax = axes[0]
        x = np.arange(1, n_layers + 1)
        k = 0
        for i, c in enumerate(cohorts):
            col = COHORT_COLORS[i % 4]
            for idx, hatch, alpha in ((0, "//", 0.35), (-1, None, 0.85)):
                med = np.asarray(c["rank_median"])[idx]
                lo = med - np.asarray(c["rank_q25"])[idx]
                hi = np.asarray(c["rank_q75"])[idx] - med
                pos = x - 0.4 + w * (k + 0.5)
                ax.bar(
                    pos,
                    med,
                    w,
                    color=col,
                    alpha=alpha,
                    hatch=hatch,
                    edgecolor=col,
                    yerr=[lo, hi],
                    capsize=2,
                    label=f"{c['label']}, epoch {c['epochs'][idx]}",
                )
                k += 1
        full = [min(widths[l], widths[l + 1]) for l in range(n_layers)]
        ax.scatter(x, full, marker="_", s=400, color="black", label="full rank", zorder=4)
        _log_y(ax)
        ax.set_ylim(0.5, max(full) * 1.6)
        _layer_ticks(ax, widths)
        ax.set_ylabel("effective rank exp(H(σ/Σσ)) (log scale)")
        ax.set_title("Effective rank per layer (median, IQR bars)")
        handles, labels = ax.get_legend_handles_labels()
        _legend(fig, handles, labels)
    return fig, m


def fig_symmetry_accuracy(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Test accuracy and train loss against epoch for each cohort (median, IQR band)."""
    cohorts = m["cohorts"]
    with _style():
        fig, axes = _figure(2, panel_width=3.9, height=3.3)
        for i, c in enumerate(cohorts):
            col = COHORT_COLORS[i % 4]
            e = c["epochs"]
            acc = {k: np.asarray(v, dtype=float) * 100 for k, v in c["test_acc"].items()}
            _band(axes[0], e, acc, col, c["label"])
            _band(axes[1], e, c["train_loss"], col, c["label"])
        n_classes = cohorts[0].get("n_classes")
        if n_classes:
            axes[0].axhline(100 / n_classes, color="black", ls=":", lw=1)
            axes[0].annotate(
                "chance",
                (0.98, 100 / n_classes),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=7,
            )
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title("Test accuracy")
        axes[0].set_ylim(0, 100)
        axes[1].set_ylabel("train loss (nats)")
        axes[1].set_title("Train loss")
        for ax in axes:
            ax.set_xlabel("epoch")
        handles, labels = axes[0].get_legend_handles_labels()
        _legend(fig, handles, labels)
        fig.suptitle("Learning with constant vs. random initialization (median, IQR band)")
    return fig, m


# =========================================================================== 4. weight norm
def learning_curves(cohort: Cohort, column: str | None) -> dict[str, Any]:
    """Median and IQR of train loss and test accuracy per checkpoint, per group of
    ``column`` (one group when None)."""
    labels = (
        M.group_labels(cohort.members, column)
        if column
        else cohort.members["member_id"].map(lambda _: "all")
    )
    out: dict[str, Any] = {}
    for g in sorted(labels.unique(), key=_natural):
        ids = cohort.ids[(labels == g).to_numpy()]
        met = cohort.metrics[cohort.metrics["member_id"].isin(ids)]
        by = met.groupby("epoch")
        out[g] = {
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


def fig_wn_learning_curves(
    cohorts: Sequence[Cohort], column: str | None = None
) -> tuple[Figure, dict]:
    """Learning curves of the weight-normalized and the plain zoo, per hyperparameter group."""
    data: dict[str, Any] = {"column": column, "cohorts": []}
    with _style():
        fig, axes = _figure(2, panel_width=4.0, height=3.4)
        for i, c in enumerate(cohorts):
            col = COHORT_COLORS[i % 4]
            curves = learning_curves(c, column)
            data["cohorts"].append({"label": c.label, "groups": curves})
            for j, (g, cur) in enumerate(curves.items()):
                ls = LINESTYLES[j % len(LINESTYLES)]
                label = c.label if column is None else f"{c.label}, {g}"
                acc = {k: np.asarray(v) * 100 for k, v in cur["test_acc"].items()}
                _band(axes[0], cur["epochs"], cur["train_loss"], col, label, ls, "", 0.1)
                _band(axes[1], cur["epochs"], acc, col, label, ls, "", 0.1)
        _log_y(axes[0])
        axes[0].set_ylabel("train loss (nats, log scale)")
        axes[0].set_title("Train loss")
        axes[1].set_ylabel("test accuracy (%)")
        axes[1].set_title("Test accuracy")
        for ax in axes:
            ax.set_xlabel("epoch")
        handles, labels = axes[0].get_legend_handles_labels()
        _legend(fig, handles, labels)
        fig.suptitle("Learning curves with and without weight normalization (median, IQR band)")
    return fig, _lists(data)


def fig_wn_scales(wn: Cohort, plain: Cohort, bins: int = 40) -> tuple[Figure, dict]:
    """Per layer: the gains g and direction norms ||v|| of the weight-normalized zoo (at
    initialization and at the end) next to the row norms ||w_i|| of the plain zoo."""
    spec = wn.spec
    e0, e1 = wn.epochs[0], wn.last_epoch
    w0, w1 = wn.weights(e0, trainable=True), wn.weights(e1, trainable=True)
    plain_w = plain.weights(plain.last_epoch)
    data: dict[str, Any] = {"epochs": [e0, e1], "plain_epoch": plain.last_epoch, "layers": []}
    with _style():
        fig, axes = _figure(spec.n_layers, panel_width=3.1, height=3.4)
        for l, ax in enumerate(axes):
            series = {
                f"g (WN, epoch {e1})": (w1[f"layers.{l}.weight_g"], COHORT_COLORS[0], "-"),
                f"‖v‖ (WN, epoch {e1})": (
                    torch.linalg.vector_norm(w1[f"layers.{l}.weight_v"], dim=-1),
                    COHORT_COLORS[0],
                    ":",
                ),
                f"‖v‖ = g (WN, epoch {e0})": (w0[f"layers.{l}.weight_g"], INIT_COLOR, "-"),
                f"‖w_i‖ (plain, epoch {plain.last_epoch})": (
                    torch.linalg.vector_norm(plain_w[f"layers.{l}.weight"], dim=-1),
                    COHORT_COLORS[1],
                    "-",
                ),
            }
            flat = {k: v.double().flatten().numpy() for k, (v, _, _) in series.items()}
            pooled = np.concatenate(list(flat.values()))
            positive = bool((pooled > 0).all())
            lo, hi = np.quantile(pooled, [0.001, 0.999])
            if hi - lo <= 1e-9 * max(abs(hi), 1.0):  # all equal: give the bins a width
                lo, hi = (lo / 1.5, hi * 1.5) if positive else (lo - 0.5, hi + 0.5)
            # Norms span orders of magnitude when some members blow up: log bins then.
            edges = np.geomspace(lo, hi, bins + 1) if positive else np.linspace(lo, hi, bins + 1)
            layer: dict[str, Any] = {"layer": l + 1, "edges": edges, "series": {}}
            for name, (_, color, ls) in series.items():
                v = flat[name]
                share, _ = np.histogram(v, bins=edges, weights=np.full(len(v), 100.0 / len(v)))
                ax.stairs(share, edges, color=color, ls=ls, lw=1.5, label=name)
                layer["series"][name] = {"percent": share, **M.quantiles(v)}
            ratio = torch.linalg.vector_norm(
                w1[f"layers.{l}.weight_v"], dim=-1
            ) / torch.linalg.vector_norm(w0[f"layers.{l}.weight_v"], dim=-1)
            layer["v_growth"] = M.quantiles(ratio.flatten())
            layer["v_shrunk_fraction"] = float((ratio < 1).double().mean())
            layer["g_negative_fraction"] = float((w1[f"layers.{l}.weight_g"] < 0).double().mean())
            data["layers"].append(layer)
            ax.set_title(f"Layer {l + 1} ({spec.widths[l]}→{spec.widths[l + 1]})")
            if positive:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("per-unit scale (dimensionless" + (", log)" if positive else ")"))
            ax.set_ylabel("units (% per bin)")
        handles, labels = axes[0].get_legend_handles_labels()
        _legend(fig, handles, labels)
        fig.suptitle(r"Weight normalization $w_i = g_i\,v_i/\|v_i\|$: gains and direction norms")
    return fig, _lists(data)


def fig_wn_norm_profile(cohorts: Sequence[Cohort]) -> tuple[Figure, dict]:
    """The norm profile of both zoos at initialization (dashed) and at the end (solid)."""
    spec = cohorts[0].spec
    data: dict[str, Any] = {"cohorts": []}
    series = []
    for i, c in enumerate(cohorts):
        col = COHORT_COLORS[i % 4]
        first, last = c.epochs[0], c.last_epoch
        p0, p1 = _profile(c, first), _profile(c, last)
        series.append({"label": f"{c.label}, epoch {last}", "color": col, "profile": p1})
        series.append(
            {"label": f"{c.label}, epoch {first}", "color": col, "ls": "--", "profile": p0}
        )
        data["cohorts"].append({"label": c.label, "epochs": [first, last], "init": p0, "final": p1})
    with _style():
        fig = _profile_figure(
            "Per-layer norms with and without weight normalization (median, IQR band)",
            spec.widths,
            spec.bias,
            series,
            "zoo",
        )
    data["layers"] = list(range(1, spec.n_layers + 1))
    return fig, _lists(data)


__all__ = [
    "choose_pairs",
    "fig_distinct_units",
    "fig_effective_rank",
    "fig_interpolation",
    "fig_norm_by_group",
    "fig_norm_profile",
    "fig_pair_distances",
    "fig_spectra",
    "fig_symmetry_accuracy",
    "fig_weight_distributions",
    "fig_weight_vs_function",
    "fig_wn_learning_curves",
    "fig_wn_norm_profile",
    "fig_wn_scales",
    "group_column",
    "learning_curves",
    "pair_measures",
    "symmetry_measures",
]
