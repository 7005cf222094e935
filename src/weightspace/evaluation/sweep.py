"""One table and one plot for a whole sweep: :func:`summarize_sweep`.

A Hydra multirun of the autoencoder (a grid, or ``hydra/sweeper=optuna_search``) leaves one
folder per job under its sweep folder::

    <sweep>/<job>/.hydra/overrides.yaml   the job's command-line overrides
    <sweep>/<job>/config.yaml             its resolved config (optimized_metric, ...)
    <sweep>/<job>/metrics.json            final train/val/test metrics (absent: it failed)
    <sweep>/<job>/evaluation/            probes, reconstruction, generation (evaluate=true,
                                          read by weightspace.evaluation.results.EvalResults)

:func:`summarize_sweep` gathers them into one row per job — the overrides, the final
metrics, and the evaluation's headline numbers (``eval/recon/*`` of the autoencoder,
``eval/gen/*``, ``eval/probe/<target>`` of the linear probe on the latent,
``eval/probe_learned/<target>`` of the same probe on the encoder's own coordinates) — and writes
``summary.csv``, ``summary.md`` and ``parallel_coordinates.png`` into the sweep folder.
``scripts/summarize_sweep.py <sweep dir>`` (``weightspace-summarize-sweep``) prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from weightspace.errors import ConfigError
from weightspace.evaluation.results import EvalResults
from weightspace.evaluation.tables import format_frame

DEFAULT_METRIC = "val/recon"
# The evaluation numbers worth a column in the printed table, when present.
HEADLINE = (
    "test/recon",
    "eval/recon/r2_mean",
    "eval/recon/acc_retention",
    "eval/recon/agreement",
    "eval/probe/test_acc",
    "eval/probe_learned/test_acc",
    "eval/gen/sample_acc_median",
)
LINEAR_PROBES = ("ridge", "logistic")


def _value(text: str) -> Any:
    """An override's value as YAML reads it (numbers as numbers), else the raw text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | str | bool) or value is None else text


def _job_dirs(sweep: Path) -> list[Path]:
    jobs = [p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")]
    jobs += [p.parent for p in sweep.glob("*/metrics.json") if p.parent not in jobs]

    def key(p: Path) -> tuple[int, str]:
        return (int(p.name), "") if p.name.isdigit() else (math.inf, p.name)  # type: ignore[return-value]

    return sorted(set(jobs), key=key)


def _evaluation(folder: Path) -> dict[str, float]:
    """Headline numbers of the job's evaluation (:class:`EvalResults` in ``<job>/evaluation``):
    the finite numbers only."""
    if not EvalResults.is_saved(folder):
        return {}
    res = EvalResults.load(folder)
    out: dict[str, float] = {}
    rec = res.reconstruction
    if "autoencoder" in rec.index:
        for k, v in rec.loc["autoencoder"].items():
            if _finite(v) and k != "epoch":
                out[f"eval/recon/{k}"] = float(v)
    for k, v in res.generation.items():
        if _finite(v):
            out[f"eval/gen/{k}"] = float(v)
    # The linear probe of the latent (and of the encoder's own coordinates, "learned"), scored
    # the way the results table scores it (R² / accuracy).
    prefix = {"latent": "eval/probe", "learned": "eval/probe_learned"}
    columns = ("representation", "probe", "target", "metric", "value")
    for rep, probe, target, metric, value in zip(*(res.probes[c] for c in columns)):
        if rep not in prefix or probe not in LINEAR_PROBES:
            continue
        if metric in ("r2", "accuracy") and _finite(value):
            out[f"{prefix[rep]}/{target}"] = float(value)
    return out


def _finite(v: Any) -> bool:
    """A number worth a column (not a bool, not NaN / inf: written as null, skipped)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _job_row(job: Path) -> tuple[dict[str, Any], list[str], str | None]:
    row: dict[str, Any] = {"job": job.name}
    keys: list[str] = []
    overrides = job / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        for item in yaml.safe_load(overrides.read_text()) or []:
            key, _, text = str(item).partition("=")
            key = key.lstrip("+~")
            row[key] = _value(text)
            keys.append(key)
    metric = None
    config = job / "config.yaml"
    if config.is_file():
        metric = (yaml.safe_load(config.read_text()) or {}).get("optimized_metric")
    metrics = job / "metrics.json"
    if metrics.is_file():
        row["status"] = "done"
        for k, v in json.loads(metrics.read_text()).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                row[k] = float(v) if k != "global_step" else int(v)
    else:
        row["status"] = "failed" if (job / "run.json").is_file() else "not run"
    row.update(_evaluation(job / "evaluation"))
    return row, keys, metric


def summarize_sweep(
    sweep_dir: str | Path, metric: str | None = None, plot: bool = True
) -> dict[str, Any]:
    """Gather every job of a multirun folder into one table (and a parallel-coordinates plot).

    Returns ``{"table": DataFrame, "varying": [override keys that differ between jobs],
    "constant": {key: value}, "metric": name, "markdown": str, "paths": {...}}``; writes
    ``summary.csv``, ``summary.md`` and (``plot``) ``parallel_coordinates.png`` into the
    sweep folder. ``metric`` (default: the jobs' ``optimized_metric``, else val/recon)
    sorts the table and colours the plot.
    """
    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise ConfigError(f"sweep dir: {sweep} is not a folder")
    jobs = _job_dirs(sweep)
    if not jobs:
        raise ConfigError(
            f"sweep dir: {sweep} holds no job folders (<job>/.hydra/overrides.yaml or "
            "<job>/metrics.json); give a multirun folder, e.g. outputs/autoencoder-multirun/<time>"
        )
    rows, keys, metrics_named = [], [], set()
    for job in jobs:
        row, k, m = _job_row(job)
        rows.append(row)
        keys += [x for x in k if x not in keys]
        if m:
            metrics_named.add(m)
    table = pd.DataFrame(rows)
    metric = metric or (metrics_named.pop() if len(metrics_named) == 1 else DEFAULT_METRIC)

    def varies(key: str) -> bool:
        values = table[key].astype(str) if key in table else pd.Series([], dtype=str)
        return values.nunique(dropna=False) > 1

    varying = [k for k in keys if varies(k)] or ([] if len(table) > 1 else keys)
    constant = {k: table[k].iloc[0] for k in keys if k not in varying}
    if metric in table:
        table = table.sort_values(metric, kind="stable", na_position="last", ignore_index=True)

    shown = ["job", "status", *varying]
    shown += [c for c in (metric, *HEADLINE) if c in table and c not in shown]
    md_lines = [f"sweep: {sweep} ({len(table)} jobs, sorted by {metric})"]
    if constant:
        md_lines.append("same in every job: " + " ".join(f"{k}={v}" for k, v in constant.items()))
    md_lines += ["", format_frame(table[shown])]
    markdown = "\n".join(md_lines)

    paths = {"csv": sweep / "summary.csv", "markdown": sweep / "summary.md"}
    table.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(markdown + "\n")
    if plot:
        axes = [*varying, *[c for c in (metric, *HEADLINE) if c in table and c not in varying]]
        paths["plot"] = sweep / "parallel_coordinates.png"
        parallel_coordinates(table, axes, metric, paths["plot"], title=sweep.name)
    return {
        "table": table,
        "varying": varying,
        "constant": constant,
        "metric": metric,
        "markdown": markdown,
        "paths": paths,
    }


def parallel_coordinates(
    table: pd.DataFrame, axes: Sequence[str], color_by: str, path: Path, title: str = ""
) -> Path:
    """One line per job across ``axes`` (each scaled to its own range; categorical values
    evenly spaced and labelled), coloured by ``color_by``; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [a for a in axes if a in table] or ["job"]
    scaled, labels = [], []
    for a in axes:
        col = table[a]
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all() or (num.notna().any() and col.isna().equals(num.isna())):
            lo, hi = float(num.min()), float(num.max())
            span = hi - lo if hi > lo else 1.0
            scaled.append(
                ((num - lo) / span).to_numpy(float) if hi > lo else np.full(len(num), 0.5)
            )
            labels.append(
                [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")] if hi > lo else [(0.5, f"{lo:.3g}")]
            )
        else:
            cats = sorted(col.astype(str).unique())
            pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            scaled.append(col.astype(str).map(pos).to_numpy(float))
            labels.append([(p, c) for c, p in pos.items()])
    data = np.stack(scaled, axis=1)  # (jobs, axes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(axes)), 4.5))
    c = pd.to_numeric(table[color_by], errors="coerce") if color_by in table else None
    cmap = plt.get_cmap("viridis_r")
    if c is not None and c.notna().any():
        lo, hi = float(c.min()), float(c.max())
        norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
        colors = [cmap(norm(v)) if not math.isnan(v) else (0.6, 0.6, 0.6, 1) for v in c]
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=color_by)
    else:
        colors = [cmap(0.5)] * len(table)
    x = np.arange(len(axes))
    for row, color in zip(data, colors):
        ax.plot(x, row, color=color, alpha=0.8, lw=1.5, marker="o", ms=3)
    for i, ticks in enumerate(labels):
        ax.axvline(i, color="0.7", lw=0.8, zorder=0)
        for y, text in ticks:
            ax.annotate(text, (i, y), xytext=(3, 0), textcoords="offset points", fontsize=7)
    ax.set_xticks(x, axes, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"{title}: {len(table)} jobs" if title else f"{len(table)} jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="summarize_sweep",
        description="One table (CSV + markdown) and a parallel-coordinates plot of a sweep.",
    )
    parser.add_argument(
        "sweep_dir", help="a multirun folder, e.g. outputs/autoencoder-multirun/<time>"
    )
    parser.add_argument("--metric", default=None, help="sort and colour by this column")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    result = summarize_sweep(args.sweep_dir, metric=args.metric, plot=not args.no_plot)
    print(result["markdown"])
    print()
    print("written: " + ", ".join(str(p) for p in result["paths"].values()))
    return result


def cli() -> None:
    """``weightspace-summarize-sweep <sweep dir>``: bad input is one line and exit 2."""
    from weightspace.cli import run_or_exit

    run_or_exit(main)
