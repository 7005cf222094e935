"""Question 3, why initial weights are random: constant vs. random initialization.

With every weight at one constant, the hidden units of a layer receive identical gradients and
stay identical (the symmetry is never broken): the section counts distinct units and the
effective rank per layer during training, next to accuracy and loss.

``section`` splits the zoos' members into a random-init and a constant-init cohort;
:func:`measure` gathers the section's numbers (:func:`.cohort_stats.symmetry_measures`),
:func:`write` writes the section from them; the figures are ``draw_*`` (from measured numbers)
and ``fig_*`` (returning ``(figure, data)``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from weightspace.analysis import plotting as P
from weightspace.analysis.cohort import Cohort, architecture_mismatch
from weightspace.analysis.cohort_stats import symmetry_measures
from weightspace.analysis.question import Inputs, Question, arr, num, pct, report_figure
from weightspace.analysis.report import Section, Table
from weightspace.zoo.store import Zoo

log = logging.getLogger(__name__)

QUESTION = Question(
    "symmetry_breaking",
    "3. Why initial weights are random",
    "What happens when every weight starts at the same constant?",
)


# --------------------------------------------------------------------------- figures
def draw_distinct_units(m: Mapping[str, Any]) -> Figure:
    """Distinct hidden units per layer against training epoch (median, min-max band)."""
    cohorts = m["cohorts"]
    widths = cohorts[0]["widths"]
    n_hidden = len(widths) - 2
    with P.style():
        fig, axes = P.figure(max(1, n_hidden), panel_width=3.8, height=3.3)
        for l, ax in enumerate(axes):
            for i, c in enumerate(cohorts):
                col = P.COHORT_COLORS[i % 4]
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
        P.legend(fig, handles, labels, title=f"relative tolerance {m['tolerance']:g}")
        fig.suptitle("Distinct hidden units during training (median, min–max band)")
    return fig


def draw_effective_rank(m: Mapping[str, Any]) -> Figure:
    """Effective rank of each layer's weight matrix at initialization and at the end."""
    cohorts = m["cohorts"]
    widths = cohorts[0]["widths"]
    n_layers = len(widths) - 1
    n_bars = 2 * len(cohorts)
    w = 0.8 / n_bars
    with P.style():
        fig, axes = P.figure(1, panel_width=6.4, height=3.4)
        ax = axes[0]
        x = np.arange(1, n_layers + 1)
        k = 0
        for i, c in enumerate(cohorts):
            col = P.COHORT_COLORS[i % 4]
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
        P.log_y(ax)
        ax.set_ylim(0.5, max(full) * 1.6)
        P.layer_ticks(ax, widths)
        ax.set_ylabel("effective rank exp(H(σ/Σσ)) (log scale)")
        ax.set_title("Effective rank per layer (median, IQR bars)")
        handles, labels = ax.get_legend_handles_labels()
        P.legend(fig, handles, labels)
    return fig


def draw_symmetry_accuracy(m: Mapping[str, Any]) -> Figure:
    """Test accuracy and train loss against epoch for each cohort (median, IQR band)."""
    cohorts = m["cohorts"]
    with P.style():
        fig, axes = P.figure(2, panel_width=3.9, height=3.3)
        for i, c in enumerate(cohorts):
            col = P.COHORT_COLORS[i % 4]
            e = c["epochs"]
            acc = {k: np.asarray(v, dtype=float) * 100 for k, v in c["test_acc"].items()}
            P.band(axes[0], e, acc, col, c["label"])
            P.band(axes[1], e, c["train_loss"], col, c["label"])
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
        P.legend(fig, handles, labels)
        fig.suptitle("Learning with constant vs. random initialization (median, IQR band)")
    return fig


def fig_distinct_units(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Distinct hidden units per layer against training epoch (median, min-max band)."""
    return draw_distinct_units(m), m


def fig_effective_rank(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Effective rank of each layer's weight matrix at initialization and at the end."""
    return draw_effective_rank(m), m


def fig_symmetry_accuracy(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Test accuracy and train loss against epoch for each cohort (median, IQR band)."""
    return draw_symmetry_accuracy(m), m


# --------------------------------------------------------------------------- the section
def constant_split(zoos: list[Zoo]) -> tuple[Cohort | None, Cohort | None]:
    """(random-init cohort, constant-init cohort) from the members of the given zoos."""
    rand = const = None
    for z in zoos:
        init = z.members["init"].to_numpy()
        ok = ~z.members["diverged"].to_numpy()
        is_const = init == "constant"
        if const is None and (is_const & ok).any():
            values = sorted(z.members.loc[is_const, "init_value"].unique())
            label = "constant init " + "/".join(f"{v:g}" for v in values)
            const = Cohort(z, np.flatnonzero(is_const & ok), label)
        if rand is None and (~is_const & ok).any():
            schemes = sorted(z.members.loc[~is_const, "init"].unique())
            rand = Cohort(z, np.flatnonzero(~is_const & ok), f"random init ({'/'.join(schemes)})")
    return rand, const


def measure(rand: Cohort, const: Cohort, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Everything section 3 shows and says: :func:`symmetry_measures` of both cohorts and
    the numbers the text quotes (last checkpoint unless said otherwise)."""
    tol = float(opts.get("tolerance", 1e-5))
    log.info("symmetry_breaking: %d random, %d constant members", len(rand), len(const))
    m = symmetry_measures([rand, const], tol)
    cr, cc = m["cohorts"]
    c_max = arr(cc["distinct_max"])  # (E, H)
    return {
        "measures": m,
        "tolerance": tol,
        "bias_init": sorted(const.members["bias_init"].unique()),
        "constant_distinct_max": c_max,
        "constant_one_unit": bool((c_max <= 1).all()),
        "constant_distinct_median": arr(cc["distinct_median"])[-1],
        "random_distinct_median": arr(cr["distinct_median"])[-1],
        "constant_rank": arr(cc["rank_median"])[-1],
        "random_rank": arr(cr["rank_median"])[-1],
        "constant_test_acc": arr(cc["test_acc"]["median"])[-1],
        "random_test_acc": arr(cr["test_acc"]["median"])[-1],
        "chance": 1 / cc["n_classes"] if cc.get("n_classes") else float("nan"),
    }


def write(r: Mapping[str, Any]) -> Section:
    """Section 3 from :func:`measure`: figures, text and tables."""
    s = QUESTION.section()
    m, tol = r["measures"], r["tolerance"]
    s.figures.append(
        report_figure(
            "symmetry_breaking_distinct_units",
            "Distinct hidden units during training",
            "Number of distinct units per hidden layer (rows [W_in | b] equal within a relative "
            f"tolerance of {tol:g}) for every checkpoint: median over the members, band from "
            "min to max. The dotted line is the layer's width.",
            fig_distinct_units(m),
        )
    )
    s.figures.append(
        report_figure(
            "symmetry_breaking_effective_rank",
            "Effective rank per layer",
            "exp of the entropy of each weight matrix's normalized singular values: 1 for a "
            "rank-one matrix. Hatched: first checkpoint; solid: last; bars: interquartile range.",
            fig_effective_rank(m),
        )
    )
    s.figures.append(
        report_figure(
            "symmetry_breaking_accuracy",
            "Accuracy and loss",
            "Test accuracy and train loss against epoch (median, interquartile band).",
            fig_symmetry_accuracy(m),
        )
    )
    cr, cc = m["cohorts"]
    widths = cr["widths"]
    n_hidden = len(widths) - 2
    c_max, r_med = r["constant_distinct_max"], r["random_distinct_median"]
    s.paragraphs.append(
        f"With every weight initialized to the same constant ({cc['label']}, biases "
        f"initialized {'/'.join(r['bias_init'])}), "
        + (
            f"every hidden layer of all {cc['n_members']} members has exactly one distinct "
            f"unit at every checkpoint up to epoch {cc['epochs'][-1]}: the units receive "
            "identical gradients, so they stay identical and each layer computes one feature "
            "several times over."
            if r["constant_one_unit"]
            else f"hidden units separate in some members (up to {int(np.nanmax(c_max))} "
            "distinct units; median at the end: "
            f"{', '.join(num(v) for v in r['constant_distinct_median'])}). "
            "Identical units get identical gradients in exact arithmetic, so what separates "
            "them here is floating-point rounding."
        )
        + f" With {cr['label']} the {n_hidden} hidden layer(s) keep "
        + ", ".join(f"{num(v)} of {widths[l + 1]}" for l, v in enumerate(r_med))
        + " distinct units (median)."
    )
    s.paragraphs.append(
        "Effective rank at the end, layer by layer: constant init "
        + ", ".join(num(v) for v in r["constant_rank"])
        + "; random init "
        + ", ".join(num(v) for v in r["random_rank"])
        + ". A layer of identical units is a rank-one matrix, and the layer after it sees "
        "identical inputs, so its columns are identical too."
    )
    acc_c, acc_r, chance = r["constant_test_acc"], r["random_test_acc"], r["chance"]
    s.paragraphs.append(
        f"Test accuracy after {cc['epochs'][-1]} epochs: constant init {pct(acc_c)} "
        f"(median), random init {pct(acc_r)}; chance is {pct(chance)}. "
        + (
            "The constant-init network does learn something, but only what one unit per "
            "hidden layer can express."
            if acc_c > 1.5 * chance
            else "The constant-init network does not learn beyond chance."
        )
    )
    s.summary.update(
        {
            "constant_distinct_units_max": float(np.nanmax(c_max)),
            "random_distinct_units_median": float(np.nanmedian(r_med)),
            "constant_test_acc": float(acc_c),
            "random_test_acc": float(acc_r),
        }
    )
    rows = []
    for c in (cr, cc):
        for l in range(len(widths) - 1):
            hidden = l < n_hidden
            rows.append(
                {
                    "zoo": c["label"],
                    "layer": P.layer_name(widths, l),
                    "distinct units (first)": _minmax(c, 0, l) if hidden else "– (output)",
                    "distinct units (last)": _minmax(c, -1, l) if hidden else "– (output)",
                    "effective rank (last)": num(arr(c["rank_median"])[-1][l]),
                    "full rank": min(widths[l], widths[l + 1]),
                }
            )
    s.tables.append(
        Table(
            "symmetry_breaking_layers",
            "Per layer (median, [min, max] over members)",
            pd.DataFrame(rows),
        )
    )
    s.tables.append(
        Table(
            "symmetry_breaking_accuracy",
            "Final accuracy",
            pd.DataFrame(
                {
                    "zoo": [cr["label"], cc["label"]],
                    "members": [cr["n_members"], cc["n_members"]],
                    "epoch": [cr["epochs"][-1], cc["epochs"][-1]],
                    "test accuracy (median)": [pct(acc_r), pct(acc_c)],
                    "train loss (median, nats)": [
                        num(arr(cr["train_loss"]["median"])[-1]),
                        num(arr(cc["train_loss"]["median"])[-1]),
                    ],
                }
            ),
        )
    )
    return s


def section(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    """Section 3 of the report (skipped without constant-init members next to random-init
    ones of the same architecture)."""
    rand, const = constant_split(inp.zoos)
    if rand is None or const is None:
        missing = "constant-init" if const is None else "random-init"
        return QUESTION.skipped(
            f"needs {missing} members next to the others: a zoo with "
            "zoo.hparams.init=constant as zoo or compare_zoo (experiment=analysis/"
            "symmetry_breaking makes both).",
        )
    if why := architecture_mismatch(rand.spec, const.spec):
        return QUESTION.skipped(why)
    return write(measure(rand, const, opts))


def _minmax(c: Mapping[str, Any], e: int, l: int) -> str:
    med = arr(c["distinct_median"])[e][l]
    lo = arr(c["distinct_min"])[e][l]
    hi = arr(c["distinct_max"])[e][l]
    return f"{med:g} [{lo:g}, {hi:g}]"
