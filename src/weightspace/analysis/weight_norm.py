"""Question 4, weight normalization: what w = g · v / ||v|| (Salimans & Kingma, 2016) changes
in training and in the trained weights, from a weight-normalized zoo next to a plain one.

:func:`measure` gathers the section's numbers (learning curves, gains and direction norms,
norm profiles: :mod:`.cohort_stats`), :func:`write` writes the section from them; the figures
are ``draw_*`` (from measured numbers) and ``fig_*`` (measure and draw, returning
``(figure, data)``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from weightspace.analysis import measures as M
from weightspace.analysis import plotting as P
from weightspace.analysis.cohort import Cohort, architecture_mismatch
from weightspace.analysis.cohort_stats import (
    learning_curves,
    scale_names,
    wn_norm_profile,
    wn_scales,
)
from weightspace.analysis.question import Inputs, Question, arr, num, pct, report_figure
from weightspace.analysis.report import Section, Table
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.store import Zoo

log = logging.getLogger(__name__)

QUESTION = Question(
    "weight_norm",
    "4. Weight normalization",
    "What does w = g · v / ||v|| change in training and in the trained weights?",
)


# --------------------------------------------------------------------------- figures
def draw_wn_learning_curves(data: Mapping[str, Any]) -> Figure:
    """Learning curves (:func:`learning_curves` per zoo): colour by zoo, line style by group."""
    column = data["column"]
    with P.style():
        fig, axes = P.figure(2, panel_width=4.0, height=3.4)
        for i, c in enumerate(data["cohorts"]):
            col = P.COHORT_COLORS[i % 4]
            for j, (grp, cur) in enumerate(c["groups"].items()):
                ls = P.LINESTYLES[j % len(P.LINESTYLES)]
                label = c["label"] if column is None else f"{c['label']}, {grp}"
                acc = {k: np.asarray(v) * 100 for k, v in cur["test_acc"].items()}
                P.band(axes[0], cur["epochs"], cur["train_loss"], col, label, ls, "", 0.1)
                P.band(axes[1], cur["epochs"], acc, col, label, ls, "", 0.1)
        P.log_y(axes[0])
        axes[0].set_ylabel("train loss (nats, log scale)")
        axes[0].set_title("Train loss")
        axes[1].set_ylabel("test accuracy (%)")
        axes[1].set_title("Test accuracy")
        for ax in axes:
            ax.set_xlabel("epoch")
        handles, labels = axes[0].get_legend_handles_labels()
        P.legend(fig, handles, labels)
        fig.suptitle("Learning curves with and without weight normalization (median, IQR band)")
    return fig


def draw_wn_scales(data: Mapping[str, Any], log_bins: Sequence[bool], spec: MLPSpec) -> Figure:
    """:func:`wn_scales`, one panel per layer."""
    e0, e1 = data["epochs"]
    styles = [  # (colour, line style) of each scale_names entry
        (P.COHORT_COLORS[0], "-"),
        (P.COHORT_COLORS[0], ":"),
        (P.INIT_COLOR, "-"),
        (P.COHORT_COLORS[1], "-"),
    ]
    series = dict(zip(scale_names(e0, e1, data["plain_epoch"]), styles))
    with P.style():
        fig, axes = P.figure(spec.n_layers, panel_width=3.1, height=3.4)
        for l, ax in enumerate(axes):
            layer = data["layers"][l]
            for name, (color, ls) in series.items():
                share = layer["series"][name]["percent"]
                ax.stairs(share, layer["edges"], color=color, ls=ls, lw=1.5, label=name)
            ax.set_title(f"Layer {P.layer_name(spec.widths, l)}")
            if log_bins[l]:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("per-unit scale (dimensionless" + (", log)" if log_bins[l] else ")"))
            ax.set_ylabel("units (% per bin)")
        handles, labels = axes[0].get_legend_handles_labels()
        P.legend(fig, handles, labels)
        fig.suptitle(r"Weight normalization $w_i = g_i\,v_i/\|v_i\|$: gains and direction norms")
    return fig


def draw_wn_norm_profile(data: Mapping[str, Any], spec: MLPSpec) -> Figure:
    """:func:`wn_norm_profile`: initialization dashed, the end solid, one colour per zoo."""
    series = []
    for i, c in enumerate(data["cohorts"]):
        col = P.COHORT_COLORS[i % 4]
        first, last = c["epochs"]
        series.append({"label": f"{c['label']}, epoch {last}", "color": col, "profile": c["final"]})
        series.append(
            {
                "label": f"{c['label']}, epoch {first}",
                "color": col,
                "ls": "--",
                "profile": c["init"],
            }
        )
    with P.style():
        return P.profile_figure(
            "Per-layer norms with and without weight normalization (median, IQR band)",
            spec.widths,
            spec.bias,
            series,
            "zoo",
        )


def fig_wn_learning_curves(
    cohorts: Sequence[Cohort], column: str | None = None
) -> tuple[Figure, dict]:
    """Learning curves of the weight-normalized and the plain zoo, per hyperparameter group."""
    data = {
        "column": column,
        "cohorts": [{"label": c.label, "groups": learning_curves(c, column)} for c in cohorts],
    }
    return draw_wn_learning_curves(data), M.as_lists(data)


def fig_wn_scales(wn: Cohort, plain: Cohort, bins: int = 40) -> tuple[Figure, dict]:
    """Per layer: the gains g and direction norms ||v|| of the weight-normalized zoo (at
    initialization and at the end) next to the row norms ||w_i|| of the plain zoo."""
    data, log_bins = wn_scales(wn, plain, bins)
    return draw_wn_scales(data, log_bins, wn.spec), M.as_lists(data)


def fig_wn_norm_profile(cohorts: Sequence[Cohort]) -> tuple[Figure, dict]:
    """The norm profile of both zoos at initialization (dashed) and at the end (solid)."""
    data = wn_norm_profile(cohorts)
    return draw_wn_norm_profile(data, cohorts[0].spec), M.as_lists(data)


# --------------------------------------------------------------------------- the section
def measure(wn: Zoo, plain: Zoo, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Everything section 4 shows and says: the figures' data (raw, for drawing), the final
    metrics per zoo and group, and the per-layer medians the text quotes; ``notes`` in the
    order the section shows them."""
    notes: list[str] = []
    cw = Cohort.of(wn, "weight norm")
    cp = Cohort.of(plain, "plain")
    if not _same_members(wn, plain):
        notes.append(
            "The two zoos' members differ in more than weight normalization (hyperparameters "
            "or seeds): the comparison is between populations, not member by member."
        )
    col = M.group_column(cw.members, opts.get("group_by"))
    log.info("weight_norm: %d + %d members", len(cw), len(cp))
    curves = {
        "column": col,
        "cohorts": [{"label": c.label, "groups": learning_curves(c, col)} for c in (cw, cp)],
    }
    scales, log_bins = wn_scales(cw, cp)
    profile = wn_norm_profile([cw, cp])

    finals = []
    for coh in M.as_lists(curves)["cohorts"]:
        for grp, cur in coh["groups"].items():
            finals.append(
                {
                    "zoo": coh["label"],
                    "group": grp,
                    "members": cur["n_members"],
                    "epoch": cur["epochs"][-1],
                    "test acc": arr(cur["test_acc"]["median"])[-1],
                    "train loss": arr(cur["train_loss"]["median"])[-1],
                    "epochs to 90% test acc": _first_epoch(cur, 0.9),
                }
            )
    for coh in (cw, cp):
        n_classes = coh.task.n_classes
        if not n_classes:
            continue
        acc = coh.metric("test_acc", coh.last_epoch)
        stuck = acc <= 1.5 / n_classes
        if stuck.any():
            where = ""
            if col:
                labels = M.group_labels(coh.members, col)[stuck]
                where = (
                    " (" + ", ".join(f"{k}: {v}" for k, v in labels.value_counts().items()) + ")"
                )
            notes.append(
                f"{coh.label}: {int(stuck.sum())} of {len(coh)} members end at chance-level test "
                f"accuracy{where}; their exploded weights widen that zoo's bands in every figure."
            )
    sc = M.as_lists(scales)
    layers, e1 = sc["layers"], sc["epochs"][1]
    prof = {c["label"]: c for c in M.as_lists(profile)["cohorts"]}
    return {
        "spec": cw.spec,
        "column": col,
        "curves": curves,
        "scales": scales,
        "log_bins": log_bins,
        "profile": profile,
        "finals": pd.DataFrame(finals),
        "notes": notes,
        "epoch": e1,
        "v_growth": [lay["v_growth"]["median"] for lay in layers],
        "g_median": [lay["series"][f"g (WN, epoch {e1})"]["median"] for lay in layers],
        "plain_row_norm": [
            lay["series"][f"‖w_i‖ (plain, epoch {sc['plain_epoch']})"]["median"] for lay in layers
        ],
        "g_negative": [lay["g_negative_fraction"] for lay in layers],
        "v_shrunk": [lay["v_shrunk_fraction"] for lay in layers],
        "weight_norm_wn": arr(prof["weight norm"]["final"]["weight"]["median"]),
        "weight_norm_plain": arr(prof["plain"]["final"]["weight"]["median"]),
    }


def write(m: Mapping[str, Any]) -> Section:
    """Section 4 from :func:`measure`: figures, text and tables."""
    s = QUESTION.section()
    s.notes += m["notes"]
    col, spec = m["column"], m["spec"]
    s.figures.append(
        report_figure(
            "weight_norm_learning_curves",
            "Learning curves",
            "Train loss and test accuracy at every checkpoint, median over members with "
            "interquartile band; colour: zoo" + (f", line style: {col}." if col else "."),
            (draw_wn_learning_curves(m["curves"]), M.as_lists(m["curves"])),
        )
    )
    s.figures.append(
        report_figure(
            "weight_norm_scales",
            "Gains g and direction norms ||v||",
            "Per layer, over all units of all members: the gain g and the norm ||v|| of the "
            "direction vector of the weight-normalized zoo at the end, ||v|| at initialization "
            "(where g = ||v||), and the row norms ||w_i|| of the plain zoo at the end.",
            (draw_wn_scales(m["scales"], m["log_bins"], spec), M.as_lists(m["scales"])),
        )
    )
    s.figures.append(
        report_figure(
            "weight_norm_norm_profile",
            "Norms against depth, with and without weight normalization",
            "Effective weights w = g·v/||v||: median and interquartile band over members, at the "
            "first (dashed) and last (solid) checkpoint.",
            (draw_wn_norm_profile(m["profile"], spec), M.as_lists(m["profile"])),
        )
    )
    fin = m["finals"]
    parts = []
    for grp in fin["group"].unique():
        a = fin[(fin["group"] == grp) & (fin["zoo"] == "weight norm")].iloc[0]
        b = fin[(fin["group"] == grp) & (fin["zoo"] == "plain")]
        if len(b):
            b = b.iloc[0]
            parts.append(
                f"{grp}: {pct(a['test acc'])} with vs {pct(b['test acc'])} without "
                f"(train loss {num(a['train loss'])} vs {num(b['train loss'])} nats)"
            )
    s.paragraphs.append(
        "Final test accuracy (median) — " + "; ".join(parts) + "."
        if parts
        else "The two zoos share no hyperparameter group to compare."
    )
    growth, gmed, pmed = m["v_growth"], m["g_median"], m["plain_row_norm"]
    neg, shrunk = m["g_negative"], m["v_shrunk"]
    s.paragraphs.append(
        "Direction norms: ||v|| ends at "
        + ", ".join(f"{num(v)}x" for v in growth)
        + " its initial value (median per layer). "
        + (
            "Every unit's ||v|| grew, as Salimans & Kingma's argument predicts: the gradient "
            "with respect to v is orthogonal to v, so a plain gradient step can only lengthen "
            "v (with momentum, as here, this is not guaranteed, but it held)."
            if not any(shrunk)
            else "Salimans & Kingma's argument (the gradient is orthogonal to v, so a plain "
            "gradient step only lengthens v) does not hold for every unit here: "
            + ", ".join(pct(v) for v in shrunk)
            + " of the units (layer by layer) end with a shorter v; momentum and weight decay "
            "break the argument."
        )
        + " The gains g, which carry each unit's scale, have medians "
        + ", ".join(num(v) for v in gmed)
        + " against row norms "
        + ", ".join(num(v) for v in pmed)
        + " in the plain zoo"
        + (
            f"; a fraction {', '.join(pct(v) for v in neg)} of gains turned negative."
            if any(v > 0 for v in neg)
            else "; no gain turned negative."
        )
    )
    w_wn, w_pl = m["weight_norm_wn"], m["weight_norm_plain"]
    s.paragraphs.append(
        "Norm profile of the effective weights at the end, ||W_l||_F layer by layer: "
        + ", ".join(num(v) for v in w_wn)
        + " with weight normalization, "
        + ", ".join(num(v) for v in w_pl)
        + " without (both start from the same initial weights)."
    )
    s.summary.update(
        {f"layer{l + 1}_v_growth": float(v) for l, v in enumerate(growth)}
        | {f"layer{l + 1}_weight_norm_wn": float(v) for l, v in enumerate(w_wn)}
        | {f"layer{l + 1}_weight_norm_plain": float(v) for l, v in enumerate(w_pl)}
    )
    fin_fmt = fin.assign(
        **{
            "test acc": fin["test acc"].map(pct),
            "train loss": fin["train loss"].map(num),
        }
    )
    s.tables.append(Table("weight_norm_final", "Final metrics (median over members)", fin_fmt))
    rows = []
    for l in range(len(growth)):
        rows.append(
            {
                "layer": l + 1,
                "g (WN)": num(gmed[l]),
                "||v|| growth (WN)": num(growth[l]),
                "row norm ||w_i|| (plain)": num(pmed[l]),
                "||W||_F (WN)": num(w_wn[l]),
                "||W||_F (plain)": num(w_pl[l]),
            }
        )
    s.tables.append(
        Table(
            "weight_norm_layers", f"Per layer at epoch {m['epoch']} (medians)", pd.DataFrame(rows)
        )
    )
    return s


def section(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    """Section 4 of the report (skipped without a weight-normalized and a plain zoo of the
    same architecture)."""
    wn = [z for z in inp.zoos if z.spec.weight_norm]
    plain = [z for z in inp.zoos if not z.spec.weight_norm]
    if not wn or not plain:
        missing = "weight-normalized" if not wn else "plain"
        return QUESTION.skipped(
            f"needs a {missing} zoo next to the other (model.weight_norm=true / false), as zoo "
            "and compare_zoo (experiment=analysis/weight_norm makes both).",
        )
    if why := architecture_mismatch(wn[0].spec, plain[0].spec):
        return QUESTION.skipped(why)
    return write(measure(wn[0], plain[0], opts))


def _first_epoch(curve: Mapping[str, Any], level: float) -> float:
    acc = arr(curve["test_acc"]["median"])
    hit = np.flatnonzero(acc >= level)
    return float(curve["epochs"][hit[0]]) if len(hit) else float("nan")


def _same_members(a: Zoo, b: Zoo) -> bool:
    """The two zoos' members agree in everything a member table records."""
    keep = [
        c
        for c in a.members.columns
        if c not in ("shard", "shard_row", "diverged", "diverged_epoch")
    ]
    if len(a) != len(b) or set(keep) - set(b.members.columns):
        return False
    return a.members[keep].reset_index(drop=True).equals(b.members[keep].reset_index(drop=True))
