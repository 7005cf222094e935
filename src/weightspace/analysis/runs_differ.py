"""Question 2, why two runs differ: weight distance raw / canonical / aligned next to function
distance, and the loss along the straight line between two runs.

:func:`measure` gathers the section's numbers (:mod:`.pairs`: distances of pairs of runs,
weight matching, interpolation paths), :func:`write` writes the section from them; the
figures are ``draw_*`` (from measured numbers) and ``fig_*`` (measure and draw, returning
``(figure, data)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from weightspace.analysis import measures as M
from weightspace.analysis import plotting as P
from weightspace.analysis.cohort import Cohort
from weightspace.analysis.pairs import interpolation, pair_measures, weight_vs_function
from weightspace.analysis.question import Inputs, Question, arr, num, pct, quartiles, report_figure
from weightspace.analysis.report import Section, Table

log = logging.getLogger(__name__)

QUESTION = Question(
    "runs_differ",
    "2. Why two runs differ",
    "Two runs of the same network on the same data end with weights that look nothing "
    "alike. How much of that is the symmetry of hidden units, and how different are "
    "their functions?",
)


# --------------------------------------------------------------------------- figures
def draw_pair_distances(m: Mapping[str, Any]) -> Figure:
    """:func:`pair_measures`: weight distance raw / canonical / aligned, prediction
    disagreement and CKA of hidden activations, at initialization and after training."""
    epochs = m["epochs"]
    colors = {str(e): c for e, c in zip(epochs, [P.INIT_COLOR, P.ALIGNED_COLOR, P.CANON_COLOR])}
    offsets = np.linspace(-0.2, 0.2, len(epochs)) if len(epochs) > 1 else [0.0]
    with P.style():
        fig, axes = P.figure(3, panel_width=3.6, height=3.5)
        kinds = ["raw", "canonical", "aligned"]
        for off, e in zip(offsets, epochs):
            d = m["by_epoch"][str(e)]
            P.box(axes[0], [d[f"distance_{k}"] for k in kinds], np.arange(3) + off, colors[str(e)])
            P.box(axes[1], [np.asarray(d["disagreement"], float) * 100], [off], colors[str(e)])
            P.box(axes[2], d["cka"], np.arange(len(d["cka"])) + off, colors[str(e)])
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
        P.legend(fig, handles, title=f"{len(m['pairs'])} pairs")
        fig.suptitle(f"Why two runs differ: {len(m['member_ids'])} runs, all pairs")
    return fig


def draw_weight_vs_function(data: Mapping[str, Any]) -> Figure:
    """:func:`weight_vs_function`: weight distance (raw and aligned) against prediction
    disagreement and softmax distance, one point pair per pair of runs."""
    raw, aligned = data["distance_raw"], data["distance_aligned"]
    labels = {
        "disagreement": "prediction disagreement (%)",
        "softmax_l2": "mean softmax L2 distance (probability)",
    }
    with P.style():
        fig, axes = P.figure(2, panel_width=4.0, height=3.4)
        for ax, key in zip(axes, labels):
            y = data[key]
            for xa, xb, yy in zip(raw, aligned, y):
                ax.plot([xa, xb], [yy, yy], color="#bbbbbb", lw=0.5, zorder=1)
            ax.scatter(raw, y, s=12, color=P.RAW_COLOR, label="raw", zorder=2)
            ax.scatter(
                aligned, y, s=12, color=P.ALIGNED_COLOR, label="aligned (weight matching)", zorder=2
            )
            ax.set_xlabel(r"weight distance $\|a-b\|/\sqrt{\|a\|\|b\|}$ (dimensionless)")
            ax.set_ylabel(labels[key])
            rho, rho_raw = data[f"spearman_{key}_aligned"], data[f"spearman_{key}_raw"]
            ax.set_title(f"Spearman ρ: aligned {rho:.2f}, raw {rho_raw:.2f}")
        handles, lbls = axes[0].get_legend_handles_labels()
        P.legend(fig, handles, lbls, title=f"{len(raw)} pairs")
        fig.suptitle(
            f"Distance in weight space vs. distance in function space (epoch {data['epoch']})"
        )
    return fig


def draw_interpolation(data: Mapping[str, Any], classification: bool) -> Figure:
    """:func:`interpolation`: each pair's path (thin) and the median (thick), raw vs aligned."""
    ts = data["t"]
    with P.style():
        fig, axes = P.figure(2, panel_width=4.0, height=3.4)
        for name, color in (("raw", P.RAW_COLOR), ("aligned", P.ALIGNED_COLOR)):
            for ax, key, scale in ((axes[0], "train_loss", 1.0), (axes[1], "test_acc", 100.0)):
                v = data[f"{name}_{key}"].numpy() * scale
                for row in v:
                    ax.plot(ts, row, color=color, lw=0.6, alpha=0.35)
                med_b = float(np.median(data[f"{name}_barrier"].numpy()))
                label = f"{name} (median barrier {med_b:.2f} nats)"
                ax.plot(ts, np.median(v, 0), color=color, lw=2.2, label=label)
        axes[0].set_ylabel("train loss (nats)")
        axes[0].set_title("Loss along the path")
        if classification:
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
            title=f"{len(data['pairs'])} pairs of runs, epoch {data['epoch']} "
            "(thin: each pair; thick: median)",
        )
        fig.suptitle("Linear interpolation between two runs: raw vs. aligned")
    return fig


def fig_pair_distances(m: dict[str, Any]) -> tuple[Figure, dict]:
    """Pairs of runs: weight distance raw / canonical / aligned, prediction disagreement and
    CKA of hidden activations, at initialization and after training."""
    return draw_pair_distances(m), M.as_lists(dict(m))


def fig_weight_vs_function(m: dict[str, Any], epoch: int | None = None) -> tuple[Figure, dict]:
    """Per pair of runs after training: weight distance (raw and aligned) against prediction
    disagreement and softmax distance."""
    data = weight_vs_function(m, epoch)
    return draw_weight_vs_function(data), M.as_lists(data)


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
    data = interpolation(cohort, n_pairs, n_points, seed, epoch, max_iter, max_examples)
    return draw_interpolation(data, cohort.task.is_classification), M.as_lists(data)


# --------------------------------------------------------------------------- the section
def measure(c: Cohort, opts: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """Everything section 2 shows and says: the pairs' measures, the interpolation paths
    (raw, for drawing) and the medians the text quotes."""
    n_members = int(opts.get("n_members", 16))
    max_iter = int(opts.get("max_iter", 100))
    log.info("runs_differ: pairs among up to %d members", n_members)
    m = pair_measures(
        c,
        n_members=n_members,
        seed=seed,
        max_iter=max_iter,
        max_examples=int(opts.get("max_examples", 2000)),
    )
    vs = weight_vs_function(m)
    log.info("runs_differ: interpolation")
    path = interpolation(
        c,
        n_pairs=int(opts.get("n_interp_pairs", 8)),
        n_points=int(opts.get("n_interp_points", 25)),
        seed=seed,
        max_iter=max_iter,
        max_examples=int(opts.get("max_examples_path", 10000)),
    )
    e0, e1 = m["epochs"][0], m["epochs"][-1]
    d0, d1 = m["by_epoch"][str(e0)], m["by_epoch"][str(e1)]

    def med(d, k):
        return float(np.nanmedian(arr(d[k])))

    paths = M.as_lists(path)
    mid = len(paths["t"]) // 2
    numbers = {
        **{k: med(d1, f"distance_{k}") for k in ("raw", "canonical", "aligned")},
        "raw0": med(d0, "distance_raw"),
        "aligned0": med(d0, "distance_aligned"),
        "disagreement": med(d1, "disagreement"),
        "disagreement0": med(d0, "disagreement"),
        "softmax_l2": med(d1, "softmax_l2"),
        "test_acc": float(np.nanmedian(arr(d1["test_acc"]))),
        "cka": [float(np.nanmedian(arr(v))) for v in d1["cka"]],
        "cka0": [float(np.nanmedian(arr(v))) for v in d0["cka"]],
        "rho": M.as_lists(vs).get("spearman_disagreement_aligned"),
        "rho_raw": M.as_lists(vs).get("spearman_disagreement_raw"),
        "barrier_raw": float(np.median(arr(paths["raw_barrier"]))),
        "barrier_aligned": float(np.median(arr(paths["aligned_barrier"]))),
        "mid_acc_raw": float(np.median(arr(paths["raw_test_acc"])[:, mid])),
        "mid_acc_aligned": float(np.median(arr(paths["aligned_test_acc"])[:, mid])),
    }
    return {
        "pairs": m,
        "weight_vs_function": vs,
        "interpolation": path,
        "classification": c.task.is_classification,
        "numbers": numbers,
    }


def write(r: Mapping[str, Any]) -> Section:
    """Section 2 from :func:`measure`: figures, text and tables."""
    s = QUESTION.section()
    m, x = r["pairs"], r["numbers"]
    if not m["same_config"]:
        s.notes.append(
            "No two members share their hyperparameters: the pairs differ in more than the seed."
        )
    e0, e1 = m["epochs"][0], m["epochs"][-1]
    n_runs, n_pairs = len(m["member_ids"]), len(m["pairs"])
    s.figures.append(
        report_figure(
            "runs_differ_distances",
            "Weight distance vs. function distance of pairs of runs",
            f"All {n_pairs} pairs among {n_runs} runs of one configuration (differing only in "
            f"seed and data order), at epoch {e0} and {e1}. Left: relative weight distance of "
            "the raw weights, of their canonical forms (units rescaled and sorted) and after "
            "weight matching (Git Re-Basin); √2 is the distance of unrelated vectors of equal "
            f"norm. Middle: fraction of {m['n_examples']} test inputs on which the two runs "
            "predict different classes. Right: linear CKA of the hidden activations (unchanged "
            "by any permutation of units).",
            fig_pair_distances(m),
        )
    )
    s.figures.append(
        report_figure(
            "runs_differ_weight_vs_function",
            "Does weight distance predict function distance?",
            f"Each pair of trained runs (epoch {e1}) twice: raw (red) and after alignment "
            "(blue), joined by a grey line. Titles: Spearman rank correlation with the distance.",
            (draw_weight_vs_function(r["weight_vs_function"]), M.as_lists(r["weight_vs_function"])),
        )
    )
    path = r["interpolation"]
    f_int = report_figure(
        "runs_differ_interpolation",
        "Loss along the straight line between two runs",
        "Train loss and test accuracy of (1-t)·θ_a + t·θ_b for disjoint pairs of runs, raw and "
        "with θ_a aligned to θ_b by weight matching first. The barrier is the largest excess "
        "of the loss over the straight line between its end values.",
        (draw_interpolation(path, r["classification"]), M.as_lists(path)),
    )
    s.figures.append(f_int)

    raw, can, ali = x["raw"], x["canonical"], x["aligned"]
    raw0, ali0 = x["raw0"], x["aligned0"]
    s.paragraphs.append(
        f"Weights: over {n_pairs} pairs of trained runs (epoch {e1}) the median relative "
        f"distance is {raw:.3f} raw — unrelated vectors of equal norm are at √2 = 1.414 — "
        f"{can:.3f} in canonical form and {ali:.3f} after weight matching. Canonical forms "
        + (
            "make it worse"
            if can > 1.02 * raw
            else "barely help"
            if raw - can < 0.05 * raw
            else "help somewhat"
        )
        + ": sorting units by a norm does not put corresponding units of two runs in the "
        f"same place; matching does. For reference, two initializations are {raw0:.3f} apart "
        f"raw and {ali0:.3f} aligned, so after removing the symmetry the trained runs are "
        + (
            "closer than two random initializations"
            if ali < ali0
            else "no closer than two random initializations"
        )
        + "."
    )
    s.paragraphs.append(
        f"Functions: the trained runs (median test accuracy {pct(x['test_acc'])}) predict "
        f"different classes on {pct(x['disagreement'])} of the test inputs (initializations: "
        f"{pct(x['disagreement0'])}); their mean softmax distance is {x['softmax_l2']:.3f}. "
        "The linear CKA of their hidden activations is "
        + ", ".join(f"{v:.3f}" for v in x["cka"])
        + " (hidden layer by layer; at initialization "
        + ", ".join(f"{v:.3f}" for v in x["cka0"])
        + "). CKA does not see unit order, so the runs' representations are this similar "
        "whatever the weight distance says."
    )
    rho, rho_raw = x["rho"], x["rho_raw"]
    strength = (
        "does not predict"
        if rho is None or abs(rho) < 0.3
        else "weakly predicts"
        if abs(rho) < 0.6
        else "predicts"
    )
    s.paragraphs.append(
        f"Across pairs, the aligned weight distance {strength} how often two runs disagree "
        f"(Spearman ρ = {num(rho, 2)}; raw distance ρ = {num(rho_raw, 2)})."
    )
    b_raw, b_ali = x["barrier_raw"], x["barrier_aligned"]
    s.paragraphs.append(
        f"Paths: on the straight line between two runs the train loss rises by a median "
        f"barrier of {b_raw:.3f} nats; with the first run aligned to the second it is "
        f"{b_ali:.3f} nats"
        + (f" ({b_raw / b_ali:.0f}x lower)" if b_ali > 1e-9 and b_raw > b_ali else "")
        + f". At the midpoint the test accuracy is {pct(x['mid_acc_raw'])} raw and "
        f"{pct(x['mid_acc_aligned'])} aligned: "
        + (
            "once units correspond, the two runs sit in one low-loss basin."
            if b_ali < 0.25 * b_raw
            else "alignment does not remove the barrier here."
        )
    )
    s.summary.update(
        {
            "distance_raw": raw,
            "distance_canonical": can,
            "distance_aligned": ali,
            "disagreement": x["disagreement"],
            "barrier_raw": b_raw,
            "barrier_aligned": b_ali,
        }
    )
    rows = []
    for e in m["epochs"]:
        d = m["by_epoch"][str(e)]
        row = {
            "epoch": e,
            "distance raw": quartiles(arr(d["distance_raw"])),
            "canonical": quartiles(arr(d["distance_canonical"])),
            "aligned": quartiles(arr(d["distance_aligned"])),
            "disagreement": quartiles(arr(d["disagreement"]) * 100) + " %",
            "softmax L2": quartiles(arr(d["softmax_l2"])),
        }
        for l, v in zip(m["hidden_layers"], d["cka"]):
            row[f"CKA hidden {l}"] = quartiles(arr(v))
        rows.append(row)
    s.tables.append(
        Table(
            "runs_differ_pairs", f"{n_pairs} pairs of runs (median [q25, q75])", pd.DataFrame(rows)
        )
    )
    s.tables.append(
        Table(
            "runs_differ_barriers",
            f"Loss barriers of {len(f_int.data['pairs'])} pairs (nats)",
            pd.DataFrame(
                {
                    "pair (members)": [f"{a}–{b}" for a, b in f_int.data["pairs"]],
                    "barrier raw": arr(f_int.data["raw_barrier"]),
                    "barrier aligned": arr(f_int.data["aligned_barrier"]),
                }
            ),
        )
    )
    return s


def section(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    """Section 2 of the report (skipped without two members of a classification zoo)."""
    if inp.zoo is None:
        return QUESTION.skipped("needs a zoo (zoo=PATH).")
    c = Cohort.of(inp.zoo)
    if len(c) < 2:
        return QUESTION.skipped("needs at least two (non-diverged) members.")
    if not c.task.is_classification:
        return QUESTION.skipped("prediction disagreement needs a classification task.")
    return write(measure(c, opts, inp.seed))
