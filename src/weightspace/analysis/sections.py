"""The report's sections: one function per question, from zoos to figures, tables and text.

Each ``section_*`` takes the opened zoos and its options and returns a
:class:`~weightspace.analysis.report.Section`. The text is written from the measured numbers, so it
says what this zoo shows, including where an expectation fails. A section whose inputs are
missing comes back ``skipped`` with a note instead of failing the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from weightspace.analysis import figures as F
from weightspace.analysis import measures as M
from weightspace.analysis.cohort import Cohort
from weightspace.analysis.latent import QUESTION as LATENT_QUESTION
from weightspace.analysis.latent import section_latent as _latent
from weightspace.analysis.report import Figure, Section, Table
from weightspace.zoo.store import Zoo

log = logging.getLogger(__name__)

QUESTIONS = {
    "patterns": (
        "1. Patterns across runs",
        "If I train the same MLP many times, what do the final weights share?",
    ),
    "runs_differ": (
        "2. Why two runs differ",
        "Two runs of the same network on the same data end with weights that look nothing "
        "alike. How much of that is the symmetry of hidden units, and how different are "
        "their functions?",
    ),
    "symmetry_breaking": (
        "3. Why initial weights are random",
        "What happens when every weight starts at the same constant?",
    ),
    "weight_norm": (
        "4. Weight normalization",
        "What does w = g · v / ||v|| change in training and in the trained weights?",
    ),
    "latent": LATENT_QUESTION,
}


@dataclass
class Inputs:
    """What the sections analyse: the zoo, an optional second zoo to compare with, and an
    optional autoencoder run (:class:`weightspace.latents.Run`, loaded)."""

    zoo: Zoo | None
    compare_zoo: Zoo | None = None
    seed: int = 0
    run: Any = None


def _section(key: str) -> Section:
    title, question = QUESTIONS[key]
    return Section(key=key, title=title, question=question)


def skipped(key: str, why: str) -> Section:
    s = _section(key)
    s.skipped = True
    s.notes.append(f"Skipped: {why}")
    return s


def _fig(name: str, title: str, caption: str, made: tuple) -> Figure:
    fig, data = made
    return Figure(name=name, title=title, caption=caption, figure=fig, data=data)


def _q(values, digits: int = 3) -> str:
    """'median [q25, q75]' of finite values, or '–'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "–"
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return f"{med:.{digits}g} [{q25:.{digits}g}, {q75:.{digits}g}]"


def _g(x: float, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _pct(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _arr(x) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in np.ravel(x)], dtype=float).reshape(
        np.shape(x)
    )


# =========================================================================== 1. patterns
def section_patterns(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    if inp.zoo is None:
        return skipped("patterns", "needs a zoo (zoo=PATH).")
    s = _section("patterns")
    c = Cohort.of(inp.zoo)
    n_div = len(inp.zoo) - len(c)
    if n_div:
        s.notes.append(f"{n_div} diverged member(s) left out.")
    max_members = opts.get("max_members")
    if max_members and len(c) > int(max_members):
        rng = np.random.default_rng(inp.seed)
        c = c.subset(np.sort(rng.choice(c.ids, int(max_members), replace=False)))
        s.notes.append(f"A random subset of {len(c)} members is analysed (patterns.max_members).")
    epochs = list(opts.get("epochs") or c.epochs)
    missing = [e for e in epochs if e not in c.epochs]
    if missing:
        s.notes.append(f"Epochs {missing} are not checkpoints of every member; left out.")
        epochs = [e for e in epochs if e in c.epochs]
    spec = c.spec
    last, first = epochs[-1], epochs[0]
    log.info("patterns: %d members, epochs %s", len(c), epochs)

    f_prof = _fig(
        "patterns_norm_profile",
        "Norms against depth, per checkpoint",
        f"Median over {len(c)} runs (lines) and interquartile range (bands) of each layer's "
        "weight and bias norm and their ratio, one colour per checkpoint epoch. "
        + (
            "The ratio is undefined while the biases are exactly zero (zero bias init)."
            if spec.bias
            else ""
        ),
        F.fig_norm_profile(c, epochs),
    )
    s.figures.append(f_prof)
    prof = f_prof.data
    w_med = _arr(prof["weight"]["median"])  # (E, L)
    w_iqr = _arr(prof["weight"]["q75"]) - _arr(prof["weight"]["q25"])
    rel_iqr = w_iqr[-1] / w_med[-1]  # over all members: seeds and hyperparameters mixed
    growth = w_med[-1] / w_med[0]
    layers = ", ".join(f"{_g(v)}" for v in w_med[-1])
    # The spread among repeated runs of one configuration (hyperparameters equal, only seed
    # and data order differ): IQR / median of ||W_l||_F within each group, median over groups.
    groups = [g for g in M.run_groups(c.members) if len(g) >= 2]
    final_norms = M.layer_norms(c.weights(last), spec)["weight"].numpy()  # (M, L)
    row_of = {int(m): i for i, m in enumerate(c.ids)}
    if groups:
        rel = []
        for g in groups:
            q25, med, q75 = np.quantile(
                final_norms[[row_of[int(m)] for m in g]], [0.25, 0.5, 0.75], 0
            )
            rel.append((q75 - q25) / med)
        within = np.nanmedian(np.stack(rel), 0)  # (L,)
        sizes = sorted({len(g) for g in groups})
        shared = "closely" if np.nanmax(within) < 0.1 else "only loosely"
        spread = (
            f"Runs of one configuration ({len(groups)} group(s) of "
            f"{'/'.join(map(str, sizes))} runs that differ only in seed and data order) agree "
            f"{shared}: within a group the interquartile range of ||W_l||_F is at most "
            f"{_pct(np.nanmax(within))} of its median in any layer."
        )
    else:
        within = rel_iqr
        spread = (
            "No two members share a configuration, so seeds and hyperparameters are mixed: "
            f"the interquartile range of ||W_l||_F is at most {_pct(np.nanmax(rel_iqr))} of "
            "the median in any layer."
        )
    s.paragraphs.append(
        f"Across {len(c)} runs at epoch {last}, the weight norms ||W_l||_F of layers "
        f"1..{spec.n_layers} are {layers} (medians). {spread} Between epoch {first} and "
        f"{last} the median norms change by a factor "
        + ", ".join(f"{_g(v)}" for v in growth)
        + " (layer by layer)."
    )
    acc = c.metric("test_acc", last)
    n_classes = c.task.n_classes
    if n_classes:
        stuck = int((acc <= 1.5 / n_classes).sum())
        if stuck:
            s.notes.append(
                f"{stuck} member(s) end at chance-level test accuracy (<= {1.5 / n_classes:.0%}); "
                "they are included in every figure."
            )
    s.summary["weight_norm_rel_iqr_within_runs_max"] = float(np.nanmax(within))
    for l, v in enumerate(w_med[-1]):
        s.summary[f"layer{l + 1}_weight_norm"] = float(v)
    if spec.bias:
        b_med = _arr(prof["bias"]["median"])[-1]
        r_med = _arr(prof["ratio"]["median"])[-1]
        diffs = np.diff(r_med[np.isfinite(r_med)])
        zero = bool((c.members["bias_init"] == "zeros").all())
        grow = "zero-initialized, they grow to" if zero else "they end at"
        trend = (
            "falls with depth"
            if len(diffs) and (diffs < 0).all()
            else "rises with depth"
            if len(diffs) and (diffs > 0).all()
            else "is not monotonic in depth"
        )
        s.paragraphs.append(
            f"The bias norms ||b_l|| are {', '.join(_g(v) for v in b_med)} and the ratio "
            f"||W_l||_F / ||b_l|| is {', '.join(_g(v) for v in r_med)}: it {trend}; the "
            f"biases stay small next to the weights ({grow} "
            f"{', '.join(_pct(1 / v) for v in r_med)} of the weight norm)."
        )

    col = F.group_column(c, opts.get("group_by"))
    if col is not None:
        f_grp = _fig(
            "patterns_norm_by_group",
            f"Norms against depth, by {col}",
            f"The same profile at epoch {last}, one line per value of {col} "
            "(median and interquartile band over the runs of each group).",
            F.fig_norm_by_group(c, col, last),
        )
        s.figures.append(f_grp)
        g = f_grp.data
        gm = _arr(g["weight"]["median"])  # (G, L)
        giqr = _arr(g["weight"]["q75"]) - _arr(g["weight"]["q25"])
        between = np.nanmax(gm, 0) - np.nanmin(gm, 0)  # per layer
        group_iqr = np.nanmedian(giqr, 0)
        others = len(M.varying_columns(c.members)) > 1
        within_what = "seed and the other hyperparameters" if others else "seed"
        ratio = float(np.nanmedian(between / group_iqr))
        verdict = (
            f"{col} moves the norms more than the {within_what} do"
            + ("" if others else "es")
            + f": the spread between groups is {_g(ratio)}x the interquartile range within "
            "a group (median over layers)"
            if ratio > 1
            else f"the groups overlap: {col} moves the norms less than the {within_what} "
            + ("do" if others else "does")
            + f" (spread between groups {_g(ratio)}x the interquartile range within one)"
        )
        s.paragraphs.append(
            f"Grouped by {col}: "
            + "; ".join(
                f"{name}: ||W_l||_F = " + ", ".join(_g(v) for v in row)
                for name, row in zip(g["groups"], gm)
            )
            + f". Here {verdict}."
        )
    else:
        s.notes.append(
            "All members share their hyperparameters (only the seed differs): no per-group profile."
        )

    f_dist = _fig(
        "patterns_weight_distributions",
        "Weight distributions",
        f"Histogram of every weight entry of each layer, pooled over the {len(c)} runs, at "
        f"epoch {first} and epoch {last}.",
        F.fig_weight_distributions(c, [first, last]),
    )
    f_spec = _fig(
        "patterns_spectra",
        "Singular-value spectra",
        f"Singular values of each weight matrix, largest first: median over the {len(c)} runs "
        "and interquartile band, at the first and last checkpoint.",
        F.fig_spectra(c, [first, last]),
    )
    s.figures += [f_dist, f_spec]
    stds = [
        (lay["epochs"][str(first)]["std"], lay["epochs"][str(last)]["std"])
        for lay in f_dist.data["layers"]
    ]
    ranks = [
        (
            lay["epochs"][str(first)]["effective_rank"]["median"],
            lay["epochs"][str(last)]["effective_rank"]["median"],
        )
        for lay in f_spec.data["layers"]
    ]
    tops = [
        (lay["epochs"][str(first)]["median"][0], lay["epochs"][str(last)]["median"][0])
        for lay in f_spec.data["layers"]
    ]
    s.paragraphs.append(
        "Weight distributions: the standard deviation of the entries goes from "
        + ", ".join(f"{_g(a)} → {_g(b)}" for a, b in stds)
        + f" (layer by layer, epoch {first} → {last}). Spectra: the largest singular value goes "
        + ", ".join(f"{_g(a)} → {_g(b)}" for a, b in tops)
        + " while the effective rank goes "
        + ", ".join(f"{_g(a)} → {_g(b)}" for a, b in ranks)
        + ": "
        + _rank_verdict(ranks)
    )

    rows = []
    for l in range(spec.n_layers):
        rows.append(
            {
                "layer": f"{l + 1} ({spec.widths[l]}→{spec.widths[l + 1]})",
                "||W||_F": _range(prof["weight"], -1, l),
                "||b||": _range(prof["bias"], -1, l) if spec.bias else "–",
                "||W||_F / ||b||": _range(prof["ratio"], -1, l) if spec.bias else "–",
                "IQR / median (same config)": _pct(within[l]),
                "weight std": _g(stds[l][1]),
                "top σ": _g(tops[l][1]),
                "effective rank": _g(ranks[l][1]),
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
    med, lo, hi = (_arr(q[k])[e][l] for k in ("median", "q25", "q75"))
    if not np.isfinite(med):
        return "–"
    return f"{med:.3g} [{lo:.3g}, {hi:.3g}]"


# =========================================================================== 2. runs differ
def section_runs_differ(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    if inp.zoo is None:
        return skipped("runs_differ", "needs a zoo (zoo=PATH).")
    c = Cohort.of(inp.zoo)
    if len(c) < 2:
        return skipped("runs_differ", "needs at least two (non-diverged) members.")
    if not c.task.is_classification:
        return skipped("runs_differ", "prediction disagreement needs a classification task.")
    s = _section("runs_differ")
    n_members = int(opts.get("n_members", 16))
    max_iter = int(opts.get("max_iter", 100))
    log.info("runs_differ: pairs among up to %d members", n_members)
    m = F.pair_measures(
        c,
        n_members=n_members,
        seed=inp.seed,
        max_iter=max_iter,
        max_examples=int(opts.get("max_examples", 2000)),
    )
    if not m["same_config"]:
        s.notes.append(
            "No two members share their hyperparameters: the pairs differ in more than the seed."
        )
    e0, e1 = m["epochs"][0], m["epochs"][-1]
    n_runs, n_pairs = len(m["member_ids"]), len(m["pairs"])
    s.figures.append(
        _fig(
            "runs_differ_distances",
            "Weight distance vs. function distance of pairs of runs",
            f"All {n_pairs} pairs among {n_runs} runs of one configuration (differing only in "
            f"seed and data order), at epoch {e0} and {e1}. Left: relative weight distance of "
            "the raw weights, of their canonical forms (units rescaled and sorted) and after "
            "weight matching (Git Re-Basin); √2 is the distance of unrelated vectors of equal "
            f"norm. Middle: fraction of {m['n_examples']} test inputs on which the two runs "
            "predict different classes. Right: linear CKA of the hidden activations (unchanged "
            "by any permutation of units).",
            F.fig_pair_distances(m),
        )
    )
    f_sc = _fig(
        "runs_differ_weight_vs_function",
        "Does weight distance predict function distance?",
        f"Each pair of trained runs (epoch {e1}) twice: raw (red) and after alignment "
        "(blue), joined by a grey line. Titles: Spearman rank correlation with the distance.",
        F.fig_weight_vs_function(m),
    )
    s.figures.append(f_sc)
    log.info("runs_differ: interpolation")
    f_int = _fig(
        "runs_differ_interpolation",
        "Loss along the straight line between two runs",
        "Train loss and test accuracy of (1-t)·θ_a + t·θ_b for disjoint pairs of runs, raw and "
        "with θ_a aligned to θ_b by weight matching first. The barrier is the largest excess "
        "of the loss over the straight line between its end values.",
        F.fig_interpolation(
            c,
            n_pairs=int(opts.get("n_interp_pairs", 8)),
            n_points=int(opts.get("n_interp_points", 25)),
            seed=inp.seed,
            max_iter=max_iter,
            max_examples=int(opts.get("max_examples_path", 10000)),
        ),
    )
    s.figures.append(f_int)

    d0, d1 = m["by_epoch"][str(e0)], m["by_epoch"][str(e1)]

    def med(d, k):
        return float(np.nanmedian(_arr(d[k])))

    raw, can, ali = (med(d1, f"distance_{k}") for k in ("raw", "canonical", "aligned"))
    raw0, ali0 = med(d0, "distance_raw"), med(d0, "distance_aligned")
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
    dis1, dis0 = med(d1, "disagreement"), med(d0, "disagreement")
    acc = float(np.nanmedian(_arr(d1["test_acc"])))
    cka1 = [float(np.nanmedian(_arr(v))) for v in d1["cka"]]
    cka0 = [float(np.nanmedian(_arr(v))) for v in d0["cka"]]
    s.paragraphs.append(
        f"Functions: the trained runs (median test accuracy {_pct(acc)}) predict different "
        f"classes on {_pct(dis1)} of the test inputs (initializations: {_pct(dis0)}); "
        f"their mean softmax distance is {med(d1, 'softmax_l2'):.3f}. The linear CKA of their "
        "hidden activations is "
        + ", ".join(f"{v:.3f}" for v in cka1)
        + " (hidden layer by layer; at initialization "
        + ", ".join(f"{v:.3f}" for v in cka0)
        + "). CKA does not see unit order, so the runs' representations are this similar "
        "whatever the weight distance says."
    )
    rho = f_sc.data.get("spearman_disagreement_aligned")
    rho_raw = f_sc.data.get("spearman_disagreement_raw")
    strength = (
        "does not predict"
        if rho is None or abs(rho) < 0.3
        else "weakly predicts"
        if abs(rho) < 0.6
        else "predicts"
    )
    s.paragraphs.append(
        f"Across pairs, the aligned weight distance {strength} how often two runs disagree "
        f"(Spearman ρ = {_g(rho, 2)}; raw distance ρ = {_g(rho_raw, 2)})."
    )
    b_raw = float(np.median(_arr(f_int.data["raw_barrier"])))
    b_ali = float(np.median(_arr(f_int.data["aligned_barrier"])))
    mid = len(f_int.data["t"]) // 2
    acc_mid_raw = float(np.median(_arr(f_int.data["raw_test_acc"])[:, mid]))
    acc_mid_ali = float(np.median(_arr(f_int.data["aligned_test_acc"])[:, mid]))
    s.paragraphs.append(
        f"Paths: on the straight line between two runs the train loss rises by a median "
        f"barrier of {b_raw:.3f} nats; with the first run aligned to the second it is "
        f"{b_ali:.3f} nats"
        + (f" ({b_raw / b_ali:.0f}x lower)" if b_ali > 1e-9 and b_raw > b_ali else "")
        + f". At the midpoint the test accuracy is {_pct(acc_mid_raw)} raw and "
        f"{_pct(acc_mid_ali)} aligned: "
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
            "disagreement": dis1,
            "barrier_raw": b_raw,
            "barrier_aligned": b_ali,
        }
    )
    rows = []
    for e in m["epochs"]:
        d = m["by_epoch"][str(e)]
        row = {
            "epoch": e,
            "distance raw": _q(_arr(d["distance_raw"])),
            "canonical": _q(_arr(d["distance_canonical"])),
            "aligned": _q(_arr(d["distance_aligned"])),
            "disagreement": _q(_arr(d["disagreement"]) * 100) + " %",
            "softmax L2": _q(_arr(d["softmax_l2"])),
        }
        for l, v in zip(m["hidden_layers"], d["cka"]):
            row[f"CKA hidden {l}"] = _q(_arr(v))
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
                    "barrier raw": _arr(f_int.data["raw_barrier"]),
                    "barrier aligned": _arr(f_int.data["aligned_barrier"]),
                }
            ),
        )
    )
    return s


# =========================================================================== 3. symmetry
def _constant_split(zoos: list[Zoo]) -> tuple[Cohort | None, Cohort | None]:
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


def section_symmetry_breaking(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    zoos = [z for z in (inp.zoo, inp.compare_zoo) if z is not None]
    rand, const = _constant_split(zoos)
    if rand is None or const is None:
        missing = "constant-init" if const is None else "random-init"
        return skipped(
            "symmetry_breaking",
            f"needs {missing} members next to the others: a zoo with "
            "zoo.hparams.init=constant as zoo or compare_zoo (experiment=analysis/"
            "symmetry_breaking makes both).",
        )
    if rand.spec.widths != const.spec.widths:
        return skipped(
            "symmetry_breaking",
            f"the two zoos have different architectures ({list(rand.spec.widths)} vs "
            f"{list(const.spec.widths)}).",
        )
    s = _section("symmetry_breaking")
    tol = float(opts.get("tolerance", 1e-5))
    log.info("symmetry_breaking: %d random, %d constant members", len(rand), len(const))
    m = F.symmetry_measures([rand, const], tol)
    s.figures.append(
        _fig(
            "symmetry_breaking_distinct_units",
            "Distinct hidden units during training",
            "Number of distinct units per hidden layer (rows [W_in | b] equal within a relative "
            f"tolerance of {tol:g}) for every checkpoint: median over the members, band from "
            "min to max. The dotted line is the layer's width.",
            F.fig_distinct_units(m),
        )
    )
    s.figures.append(
        _fig(
            "symmetry_breaking_effective_rank",
            "Effective rank per layer",
            "exp of the entropy of each weight matrix's normalized singular values: 1 for a "
            "rank-one matrix. Hatched: first checkpoint; solid: last; bars: interquartile range.",
            F.fig_effective_rank(m),
        )
    )
    s.figures.append(
        _fig(
            "symmetry_breaking_accuracy",
            "Accuracy and loss",
            "Test accuracy and train loss against epoch (median, interquartile band).",
            F.fig_symmetry_accuracy(m),
        )
    )
    cr, cc = m["cohorts"]
    widths = cr["widths"]
    n_hidden = len(widths) - 2
    c_max = _arr(cc["distinct_max"])  # (E, H)
    r_med = _arr(cr["distinct_median"])[-1]
    c_med_last = _arr(cc["distinct_median"])[-1]
    never = bool((c_max <= 1).all())
    s.paragraphs.append(
        f"With every weight initialized to the same constant ({cc['label']}, biases "
        f"{_bias_init(const)}), "
        + (
            f"every hidden layer of all {cc['n_members']} members has exactly one distinct "
            f"unit at every checkpoint up to epoch {cc['epochs'][-1]}: the units receive "
            "identical gradients, so they stay identical and each layer computes one feature "
            "several times over."
            if never
            else f"hidden units separate in some members (up to {int(np.nanmax(c_max))} "
            f"distinct units; median at the end: {', '.join(_g(v) for v in c_med_last)}). "
            "Identical units get identical gradients in exact arithmetic, so what separates "
            "them here is floating-point rounding."
        )
        + f" With {cr['label']} the {n_hidden} hidden layer(s) keep "
        + ", ".join(f"{_g(v)} of {widths[l + 1]}" for l, v in enumerate(r_med))
        + " distinct units (median)."
    )
    rk_c = _arr(cc["rank_median"])[-1]
    rk_r = _arr(cr["rank_median"])[-1]
    s.paragraphs.append(
        "Effective rank at the end, layer by layer: constant init "
        + ", ".join(_g(v) for v in rk_c)
        + "; random init "
        + ", ".join(_g(v) for v in rk_r)
        + ". A layer of identical units is a rank-one matrix, and the layer after it sees "
        "identical inputs, so its columns are identical too."
    )
    acc_c = _arr(cc["test_acc"]["median"])[-1]
    acc_r = _arr(cr["test_acc"]["median"])[-1]
    chance = 1 / cc["n_classes"] if cc.get("n_classes") else float("nan")
    s.paragraphs.append(
        f"Test accuracy after {cc['epochs'][-1]} epochs: constant init {_pct(acc_c)} "
        f"(median), random init {_pct(acc_r)}; chance is {_pct(chance)}. "
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
                    "layer": f"{l + 1} ({widths[l]}→{widths[l + 1]})",
                    "distinct units (first)": _minmax(c, 0, l) if hidden else "– (output)",
                    "distinct units (last)": _minmax(c, -1, l) if hidden else "– (output)",
                    "effective rank (last)": _g(_arr(c["rank_median"])[-1][l]),
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
                    "test accuracy (median)": [_pct(acc_r), _pct(acc_c)],
                    "train loss (median, nats)": [
                        _g(_arr(cr["train_loss"]["median"])[-1]),
                        _g(_arr(cc["train_loss"]["median"])[-1]),
                    ],
                }
            ),
        )
    )
    return s


def _bias_init(c: Cohort) -> str:
    kinds = sorted(c.members["bias_init"].unique())
    return "initialized " + "/".join(kinds)


def _minmax(c: Mapping[str, Any], e: int, l: int) -> str:
    med = _arr(c["distinct_median"])[e][l]
    lo = _arr(c["distinct_min"])[e][l]
    hi = _arr(c["distinct_max"])[e][l]
    return f"{med:g} [{lo:g}, {hi:g}]"


# =========================================================================== 4. weight norm
def section_weight_norm(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    zoos = [z for z in (inp.zoo, inp.compare_zoo) if z is not None]
    wn = [z for z in zoos if z.spec.weight_norm]
    plain = [z for z in zoos if not z.spec.weight_norm]
    if not wn or not plain:
        missing = "weight-normalized" if not wn else "plain"
        return skipped(
            "weight_norm",
            f"needs a {missing} zoo next to the other (model.weight_norm=true / false), as zoo "
            "and compare_zoo (experiment=analysis/weight_norm makes both).",
        )
    if wn[0].spec.widths != plain[0].spec.widths:
        return skipped(
            "weight_norm",
            f"the two zoos have different architectures ({list(wn[0].spec.widths)} vs "
            f"{list(plain[0].spec.widths)}).",
        )
    s = _section("weight_norm")
    cw = Cohort.of(wn[0], "weight norm")
    cp = Cohort.of(plain[0], "plain")
    same = _same_members(wn[0], plain[0])
    if not same:
        s.notes.append(
            "The two zoos' members differ in more than weight normalization (hyperparameters "
            "or seeds): the comparison is between populations, not member by member."
        )
    col = F.group_column(cw, opts.get("group_by"))
    log.info("weight_norm: %d + %d members", len(cw), len(cp))
    f_lc = _fig(
        "weight_norm_learning_curves",
        "Learning curves",
        "Train loss and test accuracy at every checkpoint, median over members with "
        "interquartile band; colour: zoo" + (f", line style: {col}." if col else "."),
        F.fig_wn_learning_curves([cw, cp], col),
    )
    f_sc = _fig(
        "weight_norm_scales",
        "Gains g and direction norms ||v||",
        "Per layer, over all units of all members: the gain g and the norm ||v|| of the "
        "direction vector of the weight-normalized zoo at the end, ||v|| at initialization "
        "(where g = ||v||), and the row norms ||w_i|| of the plain zoo at the end.",
        F.fig_wn_scales(cw, cp),
    )
    f_np = _fig(
        "weight_norm_norm_profile",
        "Norms against depth, with and without weight normalization",
        "Effective weights w = g·v/||v||: median and interquartile band over members, at the "
        "first (dashed) and last (solid) checkpoint.",
        F.fig_wn_norm_profile([cw, cp]),
    )
    s.figures += [f_lc, f_sc, f_np]

    finals = []
    for coh in f_lc.data["cohorts"]:
        for g, cur in coh["groups"].items():
            finals.append(
                {
                    "zoo": coh["label"],
                    "group": g,
                    "members": cur["n_members"],
                    "epoch": cur["epochs"][-1],
                    "test acc": _arr(cur["test_acc"]["median"])[-1],
                    "train loss": _arr(cur["train_loss"]["median"])[-1],
                    "epochs to 90% test acc": _first_epoch(cur, 0.9),
                }
            )
    fin = pd.DataFrame(finals)
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
            s.notes.append(
                f"{coh.label}: {int(stuck.sum())} of {len(coh)} members end at chance-level test "
                f"accuracy{where}; their exploded weights widen that zoo's bands in every figure."
            )
    parts = []
    for g in fin["group"].unique():
        a = fin[(fin["group"] == g) & (fin["zoo"] == "weight norm")].iloc[0]
        b = fin[(fin["group"] == g) & (fin["zoo"] == "plain")]
        if len(b):
            b = b.iloc[0]
            parts.append(
                f"{g}: {_pct(a['test acc'])} with vs {_pct(b['test acc'])} without "
                f"(train loss {_g(a['train loss'])} vs {_g(b['train loss'])} nats)"
            )
    s.paragraphs.append(
        "Final test accuracy (median) — " + "; ".join(parts) + "."
        if parts
        else "The two zoos share no hyperparameter group to compare."
    )
    layers = f_sc.data["layers"]
    e1 = f_sc.data["epochs"][1]
    growth = [lay["v_growth"]["median"] for lay in layers]
    gmed = [lay["series"][f"g (WN, epoch {e1})"]["median"] for lay in layers]
    pmed = [
        lay["series"][f"‖w_i‖ (plain, epoch {f_sc.data['plain_epoch']})"]["median"]
        for lay in layers
    ]
    neg = [lay["g_negative_fraction"] for lay in layers]
    shrunk = [lay["v_shrunk_fraction"] for lay in layers]
    s.paragraphs.append(
        "Direction norms: ||v|| ends at "
        + ", ".join(f"{_g(v)}x" for v in growth)
        + " its initial value (median per layer). "
        + (
            "Every unit's ||v|| grew, as Salimans & Kingma's argument predicts: the gradient "
            "with respect to v is orthogonal to v, so a plain gradient step can only lengthen "
            "v (with momentum, as here, this is not guaranteed, but it held)."
            if not any(shrunk)
            else "Salimans & Kingma's argument (the gradient is orthogonal to v, so a plain "
            "gradient step only lengthens v) does not hold for every unit here: "
            + ", ".join(_pct(v) for v in shrunk)
            + " of the units (layer by layer) end with a shorter v; momentum and weight decay "
            "break the argument."
        )
        + " The gains g, which carry each unit's scale, have medians "
        + ", ".join(_g(v) for v in gmed)
        + " against row norms "
        + ", ".join(_g(v) for v in pmed)
        + " in the plain zoo"
        + (
            f"; a fraction {', '.join(_pct(v) for v in neg)} of gains turned negative."
            if any(v > 0 for v in neg)
            else "; no gain turned negative."
        )
    )
    prof = {c["label"]: c for c in f_np.data["cohorts"]}
    w_wn = _arr(prof["weight norm"]["final"]["weight"]["median"])
    w_pl = _arr(prof["plain"]["final"]["weight"]["median"])
    s.paragraphs.append(
        "Norm profile of the effective weights at the end, ||W_l||_F layer by layer: "
        + ", ".join(_g(v) for v in w_wn)
        + " with weight normalization, "
        + ", ".join(_g(v) for v in w_pl)
        + " without (both start from the same initial weights)."
    )
    s.summary.update(
        {f"layer{l + 1}_v_growth": float(v) for l, v in enumerate(growth)}
        | {f"layer{l + 1}_weight_norm_wn": float(v) for l, v in enumerate(w_wn)}
        | {f"layer{l + 1}_weight_norm_plain": float(v) for l, v in enumerate(w_pl)}
    )
    fin_fmt = fin.assign(
        **{
            "test acc": fin["test acc"].map(_pct),
            "train loss": fin["train loss"].map(_g),
        }
    )
    s.tables.append(Table("weight_norm_final", "Final metrics (median over members)", fin_fmt))
    rows = []
    for l in range(len(layers)):
        rows.append(
            {
                "layer": l + 1,
                "g (WN)": _g(gmed[l]),
                "||v|| growth (WN)": _g(growth[l]),
                "row norm ||w_i|| (plain)": _g(pmed[l]),
                "||W||_F (WN)": _g(w_wn[l]),
                "||W||_F (plain)": _g(w_pl[l]),
            }
        )
    s.tables.append(
        Table("weight_norm_layers", f"Per layer at epoch {e1} (medians)", pd.DataFrame(rows))
    )
    return s


def _first_epoch(curve: Mapping[str, Any], level: float) -> float:
    acc = _arr(curve["test_acc"]["median"])
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


# =========================================================================== 5. latent space
def section_latent(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    if inp.run is None:
        return skipped(
            "latent",
            "needs an autoencoder run: autoencoder=RUN (a run folder written by "
            "scripts/train_autoencoder.py, a run name under paths.log_dir/autoencoder, or "
            "latest).",
        )
    zoo_root = inp.zoo.root if inp.zoo is not None else None
    return _latent(inp.run, opts, zoo_root, inp.seed)


SECTIONS: dict[str, Callable[[Inputs, Mapping[str, Any]], Section]] = {
    "patterns": section_patterns,
    "runs_differ": section_runs_differ,
    "symmetry_breaking": section_symmetry_breaking,
    "weight_norm": section_weight_norm,
    "latent": section_latent,
}
