"""The report's figure style, shared by every question module: rc settings, colours, and the
few drawing helpers the figures have in common (panels, legend, median-and-IQR band, log axes,
layer names and ticks, box plots, norm-against-depth panels).

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, no display
needed) with a constrained layout, so titles, labels and legends do not overlap. Weights have
no physical unit: norms and distances are labelled dimensionless; losses are in nats,
accuracies and disagreement in percent. Draw inside ``with style():``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.figure import Figure

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
def style() -> Iterator[None]:
    """The report's rc settings while figures are drawn."""
    with mpl.rc_context(STYLE):
        yield


def figure(n_panels: int, panel_width: float = 3.7, height: float = 3.3) -> tuple[Figure, list]:
    """A figure with ``n_panels`` side by side; returns it and its axes."""
    width = max(6.6, panel_width * n_panels + 0.4)  # room for the title and legend
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def legend(fig: Figure, handles, labels=None, title: str | None = None) -> None:
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


def band(ax, x, q: dict, color, label=None, ls="-", marker="o", alpha=0.18) -> None:
    """Median line with its interquartile band (``q``: q25, median, q75)."""
    x = np.asarray(x, dtype=float)
    med = np.asarray(q["median"], dtype=float)
    if np.all(np.isnan(med)):
        return
    ax.plot(x, med, ls=ls, marker=marker, ms=3.5, color=color, label=label, lw=1.6)
    ax.fill_between(x, q["q25"], q["q75"], color=color, alpha=alpha, lw=0)


def log_y(ax) -> None:
    """Log scale with plain tick labels (1, 2, 5, 10, 20, ...), no minor labels."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def layer_name(widths: Sequence[int], l: int) -> str:
    """Layer ``l`` (from 0) as the report names it: ``"1 (64→16)"``, number then inputs → units."""
    return f"{l + 1} ({widths[l]}→{widths[l + 1]})"


def layer_ticks(ax, widths: Sequence[int]) -> None:
    """x axis of layers 1..L, each labelled with its inputs → units."""
    n = len(widths) - 1
    ax.set_xticks(range(1, n + 1))
    ax.set_xticklabels([f"{l + 1}\n{widths[l]}→{widths[l + 1]}" for l in range(n)])
    ax.set_xlabel("layer (inputs → units)")
    ax.set_xlim(0.6, n + 0.4)


def epoch_colors(n: int) -> list:
    """``n`` colours from viridis, first to last checkpoint."""
    cmap = mpl.colormaps["viridis"]
    return [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]


def box(ax, values: list, positions, color, width=0.32, label=None) -> None:
    """Box plots of ``values`` (one array per position, NaN left out) with every point
    jittered on top."""
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


def profile_figure(
    title: str, widths: Sequence[int], has_bias: bool, series: list[dict], legend_title: str
) -> Figure:
    """Norm-against-depth panels (weight, and with biases bias and ratio); ``series``: dicts
    with label, color, ls and profile (kind -> q25 / median / q75 per layer)."""
    kinds = ["weight", "bias", "ratio"] if has_bias else ["weight"]
    fig, axes = figure(len(kinds))
    layers = np.arange(1, len(widths))
    for ax, kind in zip(axes, kinds):
        for s in series:
            band(ax, layers, s["profile"][kind], s["color"], s["label"], s.get("ls", "-"))
        ax.set_title(NORM_KINDS[kind][0])
        ax.set_ylabel(NORM_KINDS[kind][1])
        layer_ticks(ax, widths)
        spread = np.concatenate(
            [np.ravel(np.asarray(s["profile"][kind][q], float)) for s in series for q in QS]
        )
        spread = spread[np.isfinite(spread)]
        lo, hi = (spread.min(), spread.max()) if len(spread) else (0.0, 0.0)
        # Log scale for the ratio, and for weight norms spanning more than a factor of 10
        # (e.g. members whose weights blew up next to healthy ones).
        if ax.lines and (kind == "ratio" or (kind == "weight" and lo > 0 and hi / lo > 10)):
            log_y(ax)
            if kind == "weight":
                ax.set_ylabel(r"$\|W_l\|_F$ (dimensionless, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        legend(fig, handles, labels, title=legend_title)
    fig.suptitle(title)
    return fig


__all__ = [
    "ALIGNED_COLOR",
    "CANON_COLOR",
    "COHORT_COLORS",
    "INIT_COLOR",
    "LINESTYLES",
    "NORM_KINDS",
    "QS",
    "RAW_COLOR",
    "STYLE",
    "band",
    "box",
    "epoch_colors",
    "figure",
    "layer_name",
    "layer_ticks",
    "legend",
    "log_y",
    "profile_figure",
    "style",
]
