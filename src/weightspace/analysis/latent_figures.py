"""Section 5's figures: the latent space of an autoencoder run drawn from
:func:`weightspace.analysis.latent_space.latent_measures`.

:func:`fig_latent_map`: the 2-D map (PCA or UMAP) of every (member, checkpoint) latent, one
panel per colouring; :func:`fig_latent_trajectories`: chosen members' paths on the map next to
the distance each network travels in the full latent space. Both return ``(figure, data)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from weightspace.analysis import measures as M
from weightspace.analysis import plotting as P

SPLIT_MARKERS = {"train": "o", "val": "s", "test": "^", "unused": "x"}
# (column, panel title, colour-bar / legend label)
COLOR_BY = (
    ("test_acc", "Test accuracy", "test accuracy (%)"),
    ("epoch", "Checkpoint epoch", "epoch"),
    ("init", "Init scheme", "init scheme"),
    ("lr", "Learning rate", "learning rate (log scale)"),
)
MAX_CATEGORIES = 10  # more distinct values than this: a colour bar instead of a legend


def _size(n: int) -> float:
    return float(np.clip(3000 / max(n, 1), 3, 30))


def _axis_labels(ax, kind: str, m: Mapping[str, Any]) -> None:
    if kind == "pca":
        r = m["pca_variance_ratio"]
        ax.set_xlabel(f"PC 1 ({100 * r[0]:.0f}% of latent variance)")
        ax.set_ylabel(f"PC 2 ({100 * r[1]:.0f}%)")
    else:
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")


def _colour_panel(fig, ax, xy, items: pd.DataFrame, col: str, label: str, order, size) -> dict:
    """One panel of the map, coloured by ``col``; returns how it was coloured."""
    splits = items["split"].to_numpy()
    if col not in items or items[col].nunique(dropna=True) <= 1:
        value = "–" if col not in items else M.format_value(items[col].iloc[0])
        for sp, mk in SPLIT_MARKERS.items():
            sel = order[splits[order] == sp]
            if len(sel):
                ax.scatter(*xy[sel].T, s=size, marker=mk, color="#777777", alpha=0.6, lw=0)
        ax.text(0.02, 0.98, f"all members: {value}", transform=ax.transAxes, va="top", fontsize=8)
        return {"kind": "constant", "value": value}
    values = items[col]
    numeric = pd.api.types.is_numeric_dtype(values)
    cats = sorted(values.unique(), key=lambda v: float(v) if numeric else str(v))
    if not numeric or (len(cats) <= MAX_CATEGORIES and col != "test_acc"):
        # categories: a legend beside the panel
        cmap = mpl.colormaps["viridis" if numeric else "tab10"]
        colors = {
            c: cmap(0.9 * i / max(1, len(cats) - 1)) if numeric else cmap(i % 10)
            for i, c in enumerate(cats)
        }
        code = values.map({c: i for i, c in enumerate(cats)}).to_numpy()
        rgba = np.array([colors[c] for c in cats])[code]
        for sp, mk in SPLIT_MARKERS.items():
            sel = order[splits[order] == sp]
            if len(sel):
                ax.scatter(*xy[sel].T, s=size, marker=mk, c=rgba[sel], alpha=0.75, lw=0)
        handles = [
            Line2D([], [], ls="", marker="o", ms=6, color=colors[c], label=M.format_value(c))
            for c in cats
        ]
        ax.legend(
            handles=handles,
            title=label,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            frameon=False,
            handletextpad=0.2,
        )
        return {"kind": "categories", "categories": [M.format_value(c) for c in cats]}
    v = values.to_numpy(float)
    log_scale = False
    if col == "test_acc":
        v = 100 * v
        norm = Normalize(np.nanmin(v), np.nanmax(v))
    elif col == "lr" and np.nanmin(v) > 0:
        norm = LogNorm(np.nanmin(v), np.nanmax(v))
        log_scale = True
    else:
        norm = Normalize(np.nanmin(v), np.nanmax(v))
    if col == "epoch":
        bounds = np.unique(v)
        norm = BoundaryNorm(np.r_[bounds, bounds[-1] + 1] - 0.5, 256)
    sc = None
    for sp, mk in SPLIT_MARKERS.items():
        sel = order[splits[order] == sp]
        if len(sel):
            sc = ax.scatter(
                *xy[sel].T, s=size, marker=mk, c=v[sel], cmap="viridis", norm=norm, alpha=0.75, lw=0
            )
    cb = fig.colorbar(sc, ax=ax, label=label, shrink=0.9)
    if log_scale:
        cb.ax.yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        cb.ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda x, _: f"{x:g}"))
        cb.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    return {"kind": "colorbar", "min": float(np.nanmin(v)), "max": float(np.nanmax(v))}


def _limits(ax, xy: np.ndarray) -> int:
    """Frame the bulk of the points (0.2-99.8th percentile per axis, padded) so a few
    outliers do not squash the map; returns how many points fall outside, and says so."""
    if len(xy) < 50:
        return 0
    lo, hi = np.quantile(xy, [0.002, 0.998], axis=0)
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    out = int((((xy < lo) | (xy > hi)).any(axis=1)).sum())
    if out:
        ax.text(
            0.98,
            0.98,
            f"{out} point{'s' * (out > 1)} outside the frame",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="#666666",
        )
    return out


def fig_latent_map(m: Mapping[str, Any], kind: str = "pca", seed: int = 0) -> tuple[Figure, dict]:
    """The 2-D map (``kind``: pca or umap) of every (member, checkpoint) latent, one panel per
    colouring (test accuracy, epoch, init scheme, learning rate); marker: the member's split.
    Each panel is a subfigure, so its colour bar or legend sits next to it."""
    items: pd.DataFrame = m["items"]
    xy = m["maps"][kind]
    n = len(items)
    order = np.random.default_rng(seed).permutation(n)  # no colour drawn on top of all others
    size = _size(n)
    panels = {}
    with P.style():
        fig = Figure(figsize=(9.6, 7.6), layout="constrained")
        subs = fig.subfigures(2, 2, wspace=0.03, hspace=0.03).ravel()
        outside = 0
        for sub, (col, title, label) in zip(subs, COLOR_BY):
            ax = sub.subplots()
            panels[col] = _colour_panel(sub, ax, xy, items, col, label, order, size)
            ax.set_title(title)
            _axis_labels(ax, kind, m)
            outside = _limits(ax, xy)
        name = "PCA" if kind == "pca" else "UMAP"
        fig.suptitle(
            f"Latent space ({name} of the {m['latent_dim']}-d latents): {n} checkpoints of "
            f"{m['n_members']} members"
        )
        present = [sp for sp in SPLIT_MARKERS if (items["split"] == sp).any()]
        handles = [
            Line2D([], [], ls="", marker=SPLIT_MARKERS[sp], ms=6, color="#555555", label=sp)
            for sp in present
        ]
        P.legend(fig, handles, title="marker: the member's split in the autoencoder run")
    data = {
        "kind": kind,
        "panels": panels,
        "points_outside_frame": outside,
        "points": _points(items, xy),
    }
    if kind == "pca":
        data["variance_ratio"] = m["pca_variance_ratio"]
        # The numbers the section's text quotes.
        data["measures"] = {
            k: m[k]
            for k in (
                "epochs",
                "spearman",
                "spearman_last_epoch",
                "eta2",
                "eta2_init_latent",
                "moved_median",
                "spread_median",
            )
        }
    return fig, data


def _points(items: pd.DataFrame, xy: np.ndarray) -> dict[str, list]:
    """One entry per (member, checkpoint), column-wise: the map's coordinates and what the
    panels colour by."""
    out: dict[str, list] = {
        "member_id": items["member_id"].astype(int).tolist(),
        "epoch": items["epoch"].astype(int).tolist(),
        "split": items["split"].astype(str).tolist(),
        "x": np.round(xy[:, 0], 5).tolist(),
        "y": np.round(xy[:, 1], 5).tolist(),
    }
    for col in ("test_acc", "lr", "init"):
        if col in items:
            v = items[col]
            out[col] = v.astype(str).tolist() if col == "init" else M.as_lists(v.to_numpy(float))
    return out


def fig_latent_trajectories(m: Mapping[str, Any], kind: str = "pca") -> tuple[Figure, dict]:
    """Left: chosen members' checkpoints joined in epoch order on the map (grey: all
    checkpoints), one colour per member. Right: distance of each checkpoint's latent from its
    member's epoch-0 latent, per init scheme (median and interquartile band), in the full
    latent space."""
    items: pd.DataFrame = m["items"]
    xy = m["maps"][kind]
    trajs = m["trajectories"]
    epochs = m["epochs"]
    with P.style():
        fig = Figure(figsize=(10.0, 4.9), layout="constrained")
        ax, ax2 = fig.subplots(1, 2, width_ratios=[1.2, 1])
        ax.scatter(*xy.T, s=_size(len(items)) * 0.6, color="#d4d4d4", lw=0, zorder=1)
        cmap = mpl.colormaps["tab20" if len(trajs) > 10 else "tab10"]
        out, handles = [], []
        for i, t in enumerate(trajs):
            p = xy[t["rows"]]
            color = cmap(i % cmap.N)
            ax.plot(*p.T, color=color, lw=1.2, alpha=0.95, zorder=2)
            ax.scatter(*p[1:-1].T, s=8, color=color, lw=0, zorder=3)
            if len(p) >= 2:
                ax.annotate(
                    "",
                    xy=p[-1],
                    xytext=p[-2],
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.2},
                    zorder=3,
                )
            ax.scatter(*p[0], s=24, facecolor="white", edgecolor=color, lw=1.3, zorder=4)
            ax.scatter(*p[-1], s=24, color=color, lw=0, zorder=4)
            lr = t.get("lr")
            acc_last = t["test_acc"][-1]
            label = (
                str(t["member_id"])
                + (f": {100 * acc_last:.0f}%" if np.isfinite(acc_last) else "")
                + (f", lr {lr:.2g}" if lr is not None and np.isfinite(lr) else "")
            )
            handles.append(Line2D([], [], color=color, lw=2, label=label))
            out.append(
                {
                    **{k: v for k, v in t.items() if k != "rows"},
                    "x": np.round(p[:, 0], 5).tolist(),
                    "y": np.round(p[:, 1], 5).tolist(),
                }
            )
        _limits(ax, xy)
        ax.set_title(f"{len(trajs)} members, epoch {epochs[0]} (○) → {epochs[-1]} (●)")
        _axis_labels(ax, kind, m)
        ax.legend(
            handles=handles,
            title=f"member: test acc. at epoch {epochs[-1]}",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize=7,
            handlelength=1.2,
        )

        disp = m["displacement"]
        for i, (g, q) in enumerate(disp.items()):
            c = f"C{i}"
            ax2.plot(epochs, q["median"], marker="o", ms=3.5, lw=1.6, color=c, label=g)
            ax2.fill_between(epochs, q["q25"], q["q75"], color=c, alpha=0.18, lw=0)
        if len(epochs) > 1 and epochs[1] - epochs[0] <= 1 and epochs[-1] > 10:
            ax2.set_xscale("symlog", linthresh=1)
            ax2.set_xlabel("epoch (symlog scale)")
        else:
            ax2.set_xlabel("epoch")
        ax2.set_xticks(epochs)
        ax2.set_xticklabels([str(e) for e in epochs])
        ax2.set_ylabel(f"‖z(epoch) − z(epoch {epochs[0]})‖ (latent units)")
        ax2.set_title("Distance travelled in the latent space")
        ax2.legend(
            handles=[
                Line2D([], [], color=f"C{i}", lw=2, label=f"{g} (n={q['n_members']})")
                for i, (g, q) in enumerate(disp.items())
            ],
            title="init scheme",
            loc="upper left",
            frameon=False,
        )
    return fig, {"kind": kind, "epochs": epochs, "trajectories": out, "displacement": disp}
