"""Markdown tables for people: the probe table, the comparisons, a sweep's summary.

Every table is rendered by :func:`markdown` (columns padded to a common width, or not).
These strings are written for reading (``table.md``, the printed summaries); programs read
the numbers from the CSV / JSON files instead (:class:`weightspace.evaluation.results.EvalResults`),
and :func:`probe_summary` gives the probe table's cells as a DataFrame without any parsing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.autoencoder.run import EVALUATION_DIR
from weightspace.evaluation.audit import describe

# The headline family of each probe: linear probes (ridge, logistic) side by side.
PROBE_FAMILY = {"ridge": "linear", "logistic": "linear", "boosting": "boosting", "constant": ""}


def markdown(header: list[str], body: list[list[str]], pad: bool = True) -> str:
    """A markdown table of string cells; ``pad``: columns padded to a common width (else
    cells as given, and a ``---`` separator)."""
    if not pad:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])


def _probe_cells(df: pd.DataFrame, digits: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of :func:`format_table` (see there)."""
    headline = df[df["metric"].isin(["r2", "accuracy"])]
    family = headline["probe"].map(PROBE_FAMILY)
    col = (headline["representation"] + " " + family).str.strip()
    columns = list(dict.fromkeys(col))
    cells: dict[str, dict[str, str]] = {}
    metric_of: dict[str, str] = {}
    for target, c, value, note, metric in zip(
        headline["target"], col, headline["value"], headline["note"], headline["metric"]
    ):
        metric_of[target] = "R²" if metric == "r2" else "acc"
        if isinstance(note, str) and note:
            text = note
        elif not math.isfinite(value):
            text = "nan"
        else:  # values that round to zero print as 0.000, not -0.000
            text = f"{value if abs(value) >= 0.5 * 10**-digits else 0.0:.{digits}f}"
        cells.setdefault(target, {})[c] = text
    header = ["target", "metric", *columns]
    body = [[t, metric_of[t], *(cells[t].get(c, "") for c in columns)] for t in cells]
    return header, body


def format_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A compact markdown table of a :func:`~weightspace.evaluation.probes.probe_table`: one
    row per target, one column per representation and probe family ("latent linear",
    "stats boosting", ...), each cell the target's headline score (R² for regression,
    accuracy for categorical targets), or the note ('constant', 'missing')."""
    return markdown(*_probe_cells(df, digits))


def probe_summary(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The cells of :func:`format_table` as a DataFrame of strings (columns ``target``,
    ``metric``, then one per representation and probe family; '' where a cell is empty)."""
    header, body = _probe_cells(df, digits)
    return pd.DataFrame(body, columns=header)


def format_comparisons(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table of :func:`compare_probes`: a row per target, probe family and
    compared representation (column ``representation``: the latent, then the learned
    coordinates; frames without that column are the latent's), a column per baseline, each
    cell the difference (that representation - the baseline) and its interval, marked
    ``better`` / ``worse`` when the interval excludes 0; empty where not compared."""
    if df.empty:
        return "(no comparisons)"
    if "representation" not in df:
        df = df.assign(representation="latent")
    baselines = list(dict.fromkeys(df["baseline"]))
    header = ["target", "probe", "representation", *baselines]
    subjects = {r: i for i, r in enumerate(dict.fromkeys(df["representation"]))}
    groups = df.groupby(["target", "probe", "representation"], sort=False)
    # Target by target (in the frame's order), each probe family's subjects side by side.
    firsts = {key: i for i, key in enumerate(dict.fromkeys(zip(df["target"], df["probe"])))}
    body = []
    for (target, probe, subject), part in sorted(
        groups, key=lambda kv: (firsts[kv[0][:2]], subjects[kv[0][2]])
    ):
        cells = dict.fromkeys(baselines, "")
        for r in part.itertuples():
            if not np.isfinite(r.difference):
                cells[r.baseline] = "nan"
                continue
            mark = "" if r.verdict == "tied" else f" {r.verdict}"
            cells[r.baseline] = (
                f"{r.difference:+.{digits}f} [{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]"
                + mark
            )
        body.append([str(target), str(probe), str(subject), *cells.values()])
    return markdown(header, body)


def format_frame(df: pd.DataFrame) -> str:
    """A DataFrame as an unpadded markdown table: numbers to 4 significant digits, NaN empty."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    body = [[fmt(v) for v in row] for row in df.itertuples(index=False)]
    return markdown(list(df.columns), body, pad=False)


# The reconstruction columns the summary prints (reconstruction.csv has them all).
RECONSTRUCTION_COLUMNS = (
    "n_networks",
    "orig_acc",
    "recon_acc",
    "acc_retention_of_means",
    "agreement",
    "r2_mean",
    "orig_psnr_median",  # INR zoos (evaluation/inr.py)
    "recon_psnr_median",
    "psnr_vs_orig_median",
)


def summarize_evaluation(results: Mapping[str, Any], run_dir: str | Path) -> str:
    """The results table and the headline reconstruction / generation numbers, for print."""
    rec = results["reconstruction"]
    gen = results["generation"]
    lines = [
        "",
        "Held-out members: probes from each representation (R2 for numbers, accuracy for",
        "categories), the same probe family on each:",
        "",
        results["table"],
        "",
        "The latent against each baseline, and the encoder's learned coordinates alone (without",
        "the invariant features in the latent) against stats, invariants and raw, same probe",
        "family: difference of the scores and its 95% interval (paired bootstrap over held-out",
        "members; better / worse when it excludes 0):",
        "",
        format_comparisons(results["comparisons"]),
        "",
        "Reconstruction of the held-out networks (all checkpoints, then per checkpoint epoch;",
        "every column in reconstruction.csv):",
        rec[[c for c in RECONSTRUCTION_COLUMNS if c in rec]].to_string(
            float_format=lambda v: f"{v:.3f}"
        ),
        "",
        "Generation: "
        + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in gen.items()
            if isinstance(v, (int, float, bool))
        ),
        *_audit_lines(results),
        "",
        f"written to {Path(run_dir) / EVALUATION_DIR}",
    ]
    return "\n".join(lines)


def _audit_lines(results: Mapping[str, Any]) -> list[str]:
    """The memorization audit's sentence (none without an audit: ``results.audit`` empty)."""
    audit = getattr(results, "audit", None)
    return ["", describe(audit) + " (audit.png, audit.csv)"] if audit else []
