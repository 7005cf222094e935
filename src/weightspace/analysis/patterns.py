"""Question 1, patterns across runs: what the final weights of many runs share.

Per-layer norms ||W_l||_F, ||b_l|| and their ratio against depth (per checkpoint, and per
value of a hyperparameter), the distribution of weight entries and the singular-value spectra,
with the spread among repeated runs of one configuration.

:func:`measure` gathers the section's numbers (from :mod:`.cohort_stats` and
:mod:`.measures`), :func:`write` writes the section from them; the figures are ``draw_*``
(from measured numbers) and ``fig_*`` (measure and draw, returning ``(figure, data)``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from weightspace.analysis import measures as M
from weightspace.analysis import plotting as P
from weightspace.analysis.cohort import Cohort
from weightspace.analysis.cohort_stats import (
    norm_by_group,
    norm_profile,
    spectra,
    weight_distributions,
)
from weightspace.analysis.question import Inputs, Question, arr, num, pct, report_figure
from weightspace.analysis.report import Section, Table
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.store import Zoo

log = logging.getLogger(__name__)

QUESTION = Question(
    "patterns",
    "1. Patterns across runs",
    "If I train the same MLP many times, what do the final weights share?",
)


# --------------------------------------------------------------------------- figures
def _epoch_colors(epochs: Sequence[int]) -> list:
    """Grey for the initialization, then the cohort colours."""
    if epochs[0] == 0:
        return [P.INIT_COLOR] + list(P.COHORT_COLORS)
    return list(P.COHORT_COLORS)


def _profile_at(data: Mapping[str, Any], i: int) -> dict[str, dict[str, np.ndarray]]:
    """Entry ``i`` (an epoch or a group) of a norm profile: kind -> q25 / median / q75."""
    return {k: {q: data[k][q][i] for q in data[k]} for k in P.NORM_KINDS}


def draw_norm_profile(data: Mapping[str, Any], has_bias: bool) -> Figure:
    """:func:`norm_profile` against depth, one line per checkpoint epoch."""
    epochs = data["epochs"]
    with P.style():
        colors = P.epoch_colors(len(epochs))
        series = [
            {
                "label": f"{e}",
                "color": c,
                "profile": _profile_at(data, i),
            }
            for i, (e, c) in enumerate(zip(epochs, colors))
        ]
        return P.profile_figure(
            f"Per-layer norms across {data['n_members']} runs, by checkpoint (median, IQR band)",
            data["widths"],
            has_bias,
            series,
            "epoch",
        )


def draw_norm_by_group(data: Mapping[str, Any], spec: MLPSpec) -> Figure:
    """:func:`norm_by_group` against depth, one line per group."""
    with P.style():
        series = [
            {
                "label": f"{grp} (n={data['n_members'][i]})",
                "color": P.COHORT_COLORS[i % 4] if i < 4 else f"C{i}",
                "profile": _profile_at(data, i),
            }
            for i, grp in enumerate(data["groups"])
        ]
        return P.profile_figure(
            f"Per-layer norms at epoch {data['epoch']}, by {data['column']} (median, IQR band)",
            spec.widths,
            spec.bias,
            series,
            data["column"],
        )


def draw_weight_distributions(data: Mapping[str, Any], spec: MLPSpec, n_members: int) -> Figure:
    """:func:`weight_distributions`, one panel per layer."""
    epochs = data["epochs"]
    colors = _epoch_colors(epochs)
    with P.style():
        fig, axes = P.figure(spec.n_layers, panel_width=3.0)
        for l, ax in enumerate(axes):
            layer = data["layers"][l]
            for i, e in enumerate(epochs):
                ax.stairs(
                    layer["epochs"][str(e)]["density"],
                    layer["edges"],
                    color=colors[i % len(colors)],
                    lw=1.4,
                    label=f"epoch {e}",
                )
            ax.set_title(f"Layer {P.layer_name(spec.widths, l)}")
            ax.set_xlabel("weight value (dimensionless)")
            ax.set_ylabel("density (per unit weight)")
        handles, labels = axes[0].get_legend_handles_labels()
        P.legend(fig, handles, labels, title=f"{n_members} runs")
        fig.suptitle("Distribution of weight entries per layer, pooled over runs")
    return fig


def draw_spectra(data: Mapping[str, Any], spec: MLPSpec, n_members: int) -> Figure:
    """:func:`spectra`, one panel per layer (log scale)."""
    epochs = data["epochs"]
    colors = _epoch_colors(epochs)
    with P.style():
        fig, axes = P.figure(spec.n_layers, panel_width=3.0)
        for l, ax in enumerate(axes):
            for i, e in enumerate(epochs):
                q = data["layers"][l]["epochs"][str(e)]
                k = np.arange(1, len(q["median"]) + 1)
                P.band(ax, k, q, colors[i % len(colors)], f"epoch {e}", marker="")
            P.log_y(ax)
            ax.set_title(f"Layer {P.layer_name(spec.widths, l)}")
            ax.set_xlabel("index i (largest first)")
            ax.set_ylabel(r"singular value $\sigma_i$ (dimensionless)")
        handles, labels = axes[0].get_legend_handles_labels()
        P.legend(fig, handles, labels, title=f"{n_members} runs")
        fig.suptitle("Singular-value spectra of the weight matrices (median, IQR band)")
    return fig


def fig_norm_profile(cohort: Cohort, epochs: Sequence[int] | None = None) -> tuple[Figure, dict]:
    """||W_l||_F, ||b_l|| and their ratio against depth: median and IQR over the members, one
    line per checkpoint epoch."""
    data = norm_profile(cohort, epochs)
    return draw_norm_profile(data, cohort.spec.bias), M.as_lists(data)


def fig_norm_by_group(cohort: Cohort, column: str, epoch: int | None = None) -> tuple[Figure, dict]:
    """The norm profile at one epoch, one line per value of hyperparameter ``column``."""
    data = norm_by_group(cohort, column, epoch)
    return draw_norm_by_group(data, cohort.spec), M.as_lists(data)


def fig_weight_distributions(
    cohort: Cohort, epochs: Sequence[int] | None = None, bins: int = 60
) -> tuple[Figure, dict]:
    """Histogram of all weight entries per layer, pooled over members: initialization and
    the last checkpoint (or ``epochs``)."""
    data = weight_distributions(cohort, epochs, bins)
    return draw_weight_distributions(data, cohort.spec, len(cohort)), M.as_lists(data)


def fig_spectra(cohort: Cohort, epochs: Sequence[int] | None = None) -> tuple[Figure, dict]:
    """Singular values of each layer's weight matrix, largest first: median and IQR over
    members, at initialization and at the last checkpoint (or ``epochs``)."""
    data = spectra(cohort, epochs)
    return draw_spectra(data, cohort.spec, len(cohort)), M.as_lists(data)


# --------------------------------------------------------------------------- the section
def measure(zoo: Zoo, opts: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """Everything section 1 shows and says: the cohort, the figures' data (raw, for drawing)
    and the numbers of the text; ``notes`` in the order the section shows them."""
    notes: list[str] = []
    c = Cohort.of(zoo)
    n_div = len(zoo) - len(c)
    if n_div:
        notes.append(f"{n_div} diverged member(s) left out.")
    max_members = opts.get("max_members")
    if max_members and len(c) > int(max_members):
        rng = np.random.default_rng(seed)
        c = c.subset(np.sort(rng.choice(c.ids, int(max_members), replace=False)))
        notes.append(f"A random subset of {len(c)} members is analysed (patterns.max_members).")
    epochs = list(opts.get("epochs") or c.epochs)
    missing = [e for e in epochs if e not in c.epochs]
    if missing:
        notes.append(f"Epochs {missing} are not checkpoints of every member; left out.")
        epochs = [e for e in epochs if e in c.epochs]
    spec = c.spec
    last, first = epochs[-1], epochs[0]
    log.info("patterns: %d members, epochs %s", len(c), epochs)
    m: dict[str, Any] = {"cohort": c, "epochs": epochs, "first": first, "last": last}

    m["profile"] = norm_profile(c, epochs)
    prof = M.as_lists(m["profile"])
    w_med = arr(prof["weight"]["median"])  # (E, L)
    w_iqr = arr(prof["weight"]["q75"]) - arr(prof["weight"]["q25"])
    rel_iqr = w_iqr[-1] / w_med[-1]  # over all members: seeds and hyperparameters mixed
    m["weight_median"] = w_med[-1]
    m["growth"] = w_med[-1] / w_med[0]
    # The spread among repeated runs of one configuration (hyperparameters equal, only seed
    # and data order differ): IQR / median of ||W_l||_F within each group, median over groups.
    groups = [grp for grp in M.run_groups(c.members) if len(grp) >= 2]
    final_norms = M.layer_norms(c.weights(last), spec)["weight"].numpy()  # (M, L)
    row_of = {int(i): k for k, i in enumerate(c.ids)}
    if groups:
        rel = []
        for grp in groups:
            q25, med, q75 = np.quantile(
                final_norms[[row_of[int(i)] for i in grp]], [0.25, 0.5, 0.75], 0
            )
            rel.append((q75 - q25) / med)
        m["within"] = np.nanmedian(np.stack(rel), 0)  # (L,)
        m["run_groups"] = {"n": len(groups), "sizes": sorted({len(grp) for grp in groups})}
    else:
        m["within"] = rel_iqr
        m["run_groups"] = None
    acc = c.metric("test_acc", last)
    n_classes = c.task.n_classes
    if n_classes:
        stuck = int((acc <= 1.5 / n_classes).sum())
        if stuck:
            notes.append(
                f"{stuck} member(s) end at chance-level test accuracy (<= {1.5 / n_classes:.0%}); "
                "they are included in every figure."
            )
    if spec.bias:
        r_med = arr(prof["ratio"]["median"])[-1]
        m["bias_median"] = arr(prof["bias"]["median"])[-1]
        m["ratio_median"] = r_med
        m["ratio_steps"] = np.diff(r_med[np.isfinite(r_med)])
        m["zero_bias_init"] = bool((c.members["bias_init"] == "zeros").all())

    col = M.group_column(c.members, opts.get("group_by"))
    m["column"] = col
    if col is not None:
        m["by_group"] = norm_by_group(c, col, last)
        grp = M.as_lists(m["by_group"])
        gm = arr(grp["weight"]["median"])  # (G, L)
        giqr = arr(grp["weight"]["q75"]) - arr(grp["weight"]["q25"])
        between = np.nanmax(gm, 0) - np.nanmin(gm, 0)  # per layer
        m["group_medians"] = gm
        m["other_columns_vary"] = len(M.varying_columns(c.members)) > 1
        m["between_over_within"] = float(np.nanmedian(between / np.nanmedian(giqr, 0)))
    else:
        notes.append(
            "All members share their hyperparameters (only the seed differs): no per-group profile."
        )

    m["distributions"] = weight_distributions(c, [first, last])
    m["spectra"] = spectra(c, [first, last])
    dist, spec_data = M.as_lists(m["distributions"]), M.as_lists(m["spectra"])
    m["stds"] = [
        (lay["epochs"][str(first)]["std"], lay["epochs"][str(last)]["std"])
        for lay in dist["layers"]
    ]
    m["ranks"] = [
        (
            lay["epochs"][str(first)]["effective_rank"]["median"],
            lay["epochs"][str(last)]["effective_rank"]["median"],
        )
        for lay in spec_data["layers"]
    ]
    m["tops"] = [
        (lay["epochs"][str(first)]["median"][0], lay["epochs"][str(last)]["median"][0])
        for lay in spec_data["layers"]
    ]
    m["notes"] = notes
    return m


def write(m: Mapping[str, Any]) -> Section:
    """Section 1 from :func:`measure`: figures, text and the per-layer table."""
    s = QUESTION.section()
    s.notes += m["notes"]
    c: Cohort = m["cohort"]
    spec = c.spec
    first, last, within = m["first"], m["last"], m["within"]

    f_prof = report_figure(
        "patterns_norm_profile",
        "Norms against depth, per checkpoint",
        f"Median over {len(c)} runs (lines) and interquartile range (bands) of each layer's "
        "weight and bias norm and their ratio, one colour per checkpoint epoch. "
        + (
            "The ratio is undefined while the biases are exactly zero (zero bias init)."
            if spec.bias
            else ""
        ),
        (draw_norm_profile(m["profile"], spec.bias), M.as_lists(m["profile"])),
    )
    s.figures.append(f_prof)
    prof = f_prof.data
    layers = ", ".join(f"{num(v)}" for v in m["weight_median"])
    rg = m["run_groups"]
    if rg is not None:
        shared = "closely" if np.nanmax(within) < 0.1 else "only loosely"
        spread = (
            f"Runs of one configuration ({rg['n']} group(s) of "
            f"{'/'.join(map(str, rg['sizes']))} runs that differ only in seed and data order) "
            f"agree {shared}: within a group the interquartile range of ||W_l||_F is at most "
            f"{pct(np.nanmax(within))} of its median in any layer."
        )
    else:
        spread = (
            "No two members share a configuration, so seeds and hyperparameters are mixed: "
            f"the interquartile range of ||W_l||_F is at most {pct(np.nanmax(within))} of "
            "the median in any layer."
        )
    s.paragraphs.append(
        f"Across {len(c)} runs at epoch {last}, the weight norms ||W_l||_F of layers "
        f"1..{spec.n_layers} are {layers} (medians). {spread} Between epoch {first} and "
        f"{last} the median norms change by a factor "
        + ", ".join(f"{num(v)}" for v in m["growth"])
        + " (layer by layer)."
    )
    s.summary["weight_norm_rel_iqr_within_runs_max"] = float(np.nanmax(within))
    for l, v in enumerate(m["weight_median"]):
        s.summary[f"layer{l + 1}_weight_norm"] = float(v)
    if spec.bias:
        diffs, r_med = m["ratio_steps"], m["ratio_median"]
        grow = "zero-initialized, they grow to" if m["zero_bias_init"] else "they end at"
        trend = (
            "falls with depth"
            if len(diffs) and (diffs < 0).all()
            else "rises with depth"
            if len(diffs) and (diffs > 0).all()
            else "is not monotonic in depth"
        )
        s.paragraphs.append(
            f"The bias norms ||b_l|| are {', '.join(num(v) for v in m['bias_median'])} and the "
            f"ratio ||W_l||_F / ||b_l|| is {', '.join(num(v) for v in r_med)}: it {trend}; the "
            f"biases stay small next to the weights ({grow} "
            f"{', '.join(pct(1 / v) for v in r_med)} of the weight norm)."
        )

    col = m["column"]
    if col is not None:
        f_grp = report_figure(
            "patterns_norm_by_group",
            f"Norms against depth, by {col}",
            f"The same profile at epoch {last}, one line per value of {col} "
            "(median and interquartile band over the runs of each group).",
            (draw_norm_by_group(m["by_group"], spec), M.as_lists(m["by_group"])),
        )
        s.figures.append(f_grp)
        others = m["other_columns_vary"]
        within_what = "seed and the other hyperparameters" if others else "seed"
        ratio = m["between_over_within"]
        verdict = (
            f"{col} moves the norms more than the {within_what} do"
            + ("" if others else "es")
            + f": the spread between groups is {num(ratio)}x the interquartile range within "
            "a group (median over layers)"
            if ratio > 1
            else f"the groups overlap: {col} moves the norms less than the {within_what} "
            + ("do" if others else "does")
            + f" (spread between groups {num(ratio)}x the interquartile range within one)"
        )
        s.paragraphs.append(
            f"Grouped by {col}: "
            + "; ".join(
                f"{name}: ||W_l||_F = " + ", ".join(num(v) for v in row)
                for name, row in zip(f_grp.data["groups"], m["group_medians"])
            )
            + f". Here {verdict}."
        )

    s.figures.append(
        report_figure(
            "patterns_weight_distributions",
            "Weight distributions",
            f"Histogram of every weight entry of each layer, pooled over the {len(c)} runs, at "
            f"epoch {first} and epoch {last}.",
            (
                draw_weight_distributions(m["distributions"], spec, len(c)),
                M.as_lists(m["distributions"]),
            ),
        )
    )
    s.figures.append(
        report_figure(
            "patterns_spectra",
            "Singular-value spectra",
            f"Singular values of each weight matrix, largest first: median over the {len(c)} "
            "runs and interquartile band, at the first and last checkpoint.",
            (draw_spectra(m["spectra"], spec, len(c)), M.as_lists(m["spectra"])),
        )
    )
    stds, ranks, tops = m["stds"], m["ranks"], m["tops"]
    s.paragraphs.append(
        "Weight distributions: the standard deviation of the entries goes from "
        + ", ".join(f"{num(a)} → {num(b)}" for a, b in stds)
        + f" (layer by layer, epoch {first} → {last}). Spectra: the largest singular value goes "
        + ", ".join(f"{num(a)} → {num(b)}" for a, b in tops)
        + " while the effective rank goes "
        + ", ".join(f"{num(a)} → {num(b)}" for a, b in ranks)
        + ": "
        + _rank_verdict(ranks)
    )

    rows = []
    for l in range(spec.n_layers):
        rows.append(
            {
                "layer": P.layer_name(spec.widths, l),
                "||W||_F": _range(prof["weight"], -1, l),
                "||b||": _range(prof["bias"], -1, l) if spec.bias else "–",
                "||W||_F / ||b||": _range(prof["ratio"], -1, l) if spec.bias else "–",
                "IQR / median (same config)": pct(within[l]),
                "weight std": num(stds[l][1]),
                "top σ": num(tops[l][1]),
                "effective rank": num(ranks[l][1]),
            }
        )
    s.tables.append(
        Table(
            "patterns_layers",
            f"Per layer at epoch {last} (median [q25, q75] over runs)",
            pd.DataFrame(rows),
        )
    )
    return s


def section(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    """Section 1 of the report (skipped without a zoo)."""
    if inp.zoo is None:
        return QUESTION.skipped("needs a zoo (zoo=PATH).")
    return write(measure(inp.zoo, opts, inp.seed))


def _rank_verdict(ranks: list[tuple[float, float]]) -> str:
    change = [b / a - 1 for a, b in ranks if a and np.isfinite(a) and np.isfinite(b)]
    if change and all(abs(x) < 0.05 for x in change):
        return (
            "training barely changes the shape of the spectra (effective rank within 5% of "
            "its initial value), while the scale of the weights grows."
        )
    if change and all(x < 0 for x in change):
        return "training concentrates each layer on fewer directions."
    return "the effective rank moves in different directions in different layers."


def _range(q: Mapping[str, Any], e: int, l: int) -> str:
    med, lo, hi = (arr(q[k])[e][l] for k in ("median", "q25", "q75"))
    if not np.isfinite(med):
        return "–"
    return f"{med:.3g} [{lo:.3g}, {hi:.3g}]"
