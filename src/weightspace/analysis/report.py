"""Reports: figures, tables and short texts written as one self-contained HTML page.

:func:`write_report` writes, into one folder,

- ``report.html``: every figure embedded as a base64 PNG (the file opens anywhere, offline,
  and can be mailed), a short text per section with the measured numbers, and tables;
- ``<figure>.png``: the same figures as files;
- ``figures.json``: every figure's numbers, the tables and the texts, JSON-safe (NaN and
  infinities become ``null``).

Every file is written atomically. :func:`log_wandb` logs the same figures (as images), tables
(in their own namespace) and the HTML report to a W&B run, with what was analysed, offline
unless the user is logged in.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from weightspace.zoo.files import atomic_write_bytes

REPORT_FILE = "report.html"
DATA_FILE = "figures.json"


@dataclass
class Figure:
    """One figure of a report; ``name`` is its file stem, unique within the report."""

    name: str
    title: str
    caption: str
    figure: MplFigure
    data: dict[str, Any]


@dataclass
class Table:
    name: str
    title: str
    frame: pd.DataFrame


@dataclass
class Section:
    """One question of the report: its answer in a few paragraphs, figures and tables.

    A section whose inputs are missing is ``skipped``; its ``notes`` say why.
    """

    key: str
    title: str
    question: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)  # headline numbers (W&B summary)
    skipped: bool = False


@dataclass
class Report:
    title: str
    sections: list[Section]
    inputs: dict[str, str] = field(default_factory=dict)  # shown at the top: zoo paths, ...
    notes: list[str] = field(default_factory=list)


@dataclass
class ReportFiles:
    html: Path
    data: Path
    pngs: dict[str, Path]  # figure name -> file


# --------------------------------------------------------------------------- JSON
def jsonable(x: Any) -> Any:
    """Plain JSON values: numpy and pandas types converted, NaN and infinities as None."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, pd.DataFrame):
        return jsonable(x.to_dict(orient="records"))
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, bool | int | str) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    return str(x)


# --------------------------------------------------------------------------- writing
def _write(path: Path, data: bytes) -> None:
    """Atomic write; readable as an ordinary new file would be (the temporary file that
    is renamed into place is created private)."""
    atomic_write_bytes(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def png_bytes(fig: MplFigure, dpi: int) -> bytes:
    buf = io.BytesIO()
    # No timestamp or version in the file: the same figure gives the same bytes.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; color: #222; line-height: 1.5; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.35em; border-bottom: 2px solid #e4e4e4; padding-bottom: 0.2em;
     margin-top: 2.2em; }
.question { font-style: italic; color: #555; }
.inputs { font-size: 0.9em; color: #444; background: #f7f7f7; padding: 0.6em 1em;
          border-radius: 6px; }
.inputs code { font-size: 0.95em; }
figure { margin: 1.4em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
table.data { border-collapse: collapse; font-size: 0.88em; margin: 1em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.25em 0.6em;
                               text-align: right; }
table.data th { background: #f3f3f3; }
.note { color: #8a5a00; background: #fff8e6; padding: 0.4em 0.8em; border-radius: 4px;
        font-size: 0.92em; }
.skipped { color: #777; }
nav ul { columns: 2; font-size: 0.95em; }
footer { margin-top: 3em; font-size: 0.8em; color: #888; }
"""


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _table_html(t: Table) -> str:
    frame = t.frame.copy()
    body = frame.to_html(
        index=False,
        classes="data",
        border=0,
        na_rep="–",
        float_format=lambda v: f"{v:.4g}",
        escape=True,
    )
    return f"<h3>{_esc(t.title)}</h3>\n{body}"


def _sentence(title: str) -> str:
    return title if title.endswith((".", "?", "!")) else title + "."


def render_html(report: Report, images: Mapping[str, bytes]) -> str:
    """The report page; ``images``: figure name -> PNG bytes (embedded as data URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(report.title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(report.title)}</h1>",
    ]
    if report.inputs:
        items = "".join(
            f"<div><b>{_esc(k)}</b>: <code>{_esc(v)}</code></div>" for k, v in report.inputs.items()
        )
        parts.append(f'<div class="inputs">{items}</div>')
    for note in report.notes:
        parts.append(f'<p class="note">{_esc(note)}</p>')
    parts.append("<nav><ul>")
    for s in report.sections:
        mark = " (skipped)" if s.skipped else ""
        parts.append(f'<li><a href="#{_esc(s.key)}">{_esc(s.title)}</a>{mark}</li>')
    parts.append("</ul></nav>")
    for s in report.sections:
        cls = ' class="skipped"' if s.skipped else ""
        parts.append(f'<section id="{_esc(s.key)}"{cls}>')
        parts.append(f"<h2>{_esc(s.title)}</h2>")
        parts.append(f'<p class="question">{_esc(s.question)}</p>')
        for note in s.notes:
            parts.append(f'<p class="note">{_esc(note)}</p>')
        for p in s.paragraphs:
            parts.append(f"<p>{_esc(p)}</p>")
        for f in s.figures:
            b64 = base64.b64encode(images[f.name]).decode("ascii")
            parts.append(
                f'<figure id="fig-{_esc(f.name)}">'
                f'<img src="data:image/png;base64,{b64}" alt="{_esc(f.title)}">'
                f"<figcaption><b>{_esc(_sentence(f.title))}</b> {_esc(f.caption)}</figcaption>"
                "</figure>"
            )
        for t in s.tables:
            parts.append(_table_html(t))
        parts.append("</section>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(
        f"<footer>weightspace analysis, {stamp}. Numbers behind every figure: "
        f"<code>{DATA_FILE}</code>; the figures as files: <code>*.png</code>.</footer>"
    )
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def report_data(report: Report, pngs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything in the report but the pictures, as JSON-safe values."""
    pngs = pngs or {}
    return jsonable(
        {
            "title": report.title,
            "inputs": report.inputs,
            "notes": report.notes,
            "sections": {
                s.key: {
                    "title": s.title,
                    "question": s.question,
                    "skipped": s.skipped,
                    "notes": s.notes,
                    "paragraphs": s.paragraphs,
                    "summary": s.summary,
                    "figures": {
                        f.name: {
                            "title": f.title,
                            "caption": f.caption,
                            "png": pngs.get(f.name),
                            "data": f.data,
                        }
                        for f in s.figures
                    },
                    "tables": {t.name: {"title": t.title, "rows": t.frame} for t in s.tables},
                }
                for s in report.sections
            },
        }
    )


def write_report(report: Report, out_dir: str | Path, dpi: int = 90) -> ReportFiles:
    """Write ``report.html``, one PNG per figure and ``figures.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f.name for s in report.sections for f in s.figures]
    if len(set(names)) != len(names):
        raise ValueError(f"figure names must be unique, got {names}")
    images: dict[str, bytes] = {}
    pngs: dict[str, Path] = {}
    for s in report.sections:
        for f in s.figures:
            images[f.name] = png_bytes(f.figure, dpi)
            pngs[f.name] = out / f"{f.name}.png"
            _write(pngs[f.name], images[f.name])
    data = report_data(report, {k: v.name for k, v in pngs.items()})
    data_path = out / DATA_FILE
    previous = _previous_pngs(data_path)
    _write(data_path, json.dumps(data, indent=1, allow_nan=False).encode())
    html_path = out / REPORT_FILE
    stale = previous - {p.name for p in pngs.values()}
    _write(html_path, render_html(report, images).encode("utf-8"))
    for name in stale:  # a previous report's figures this one does not have
        (out / name).unlink(missing_ok=True)
    return ReportFiles(html_path, data_path, pngs)


def _previous_pngs(data_path: Path) -> set[str]:
    """The PNG file names the report last written to this folder listed (none if unreadable).
    Read before ``figures.json`` is replaced; only names of our own PNGs, never paths."""
    try:
        old = json.loads(data_path.read_text())
        figures = [f for s in old["sections"].values() for f in s["figures"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    names = {f.get("png") for f in figures if isinstance(f, dict)}
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n.endswith(".png")}


# --------------------------------------------------------------------------- W&B
def log_wandb(
    report: Report,
    files: ReportFiles,
    logger_cfg: Mapping[str, Any],
    config: Mapping[str, Any],
    name: str,
    analysed: Mapping[str, Any] | None = None,
) -> None:
    """One W&B run with every figure (``<section>/figures/<figure>`` images), every table
    (``<section>/tables/<table>``: a table never takes a figure's key), the sections'
    headline numbers in the summary and the HTML report (``report``, a ``wandb.Html``).
    ``analysed``: what was analysed, resolved (the zoo folder, the autoencoder run folder
    and its W&B id, ...): replaces those keys of ``config`` and goes into the summary under
    ``analysed/``. Offline unless logged in (:func:`weightspace.tracking.wandb_mode`); the
    run is finished whatever happens (:func:`weightspace.tracking.wandb_run`)."""
    import wandb

    from weightspace.tracking import wandb_run

    analysed = {k: v for k, v in (analysed or {}).items() if v is not None}
    config = {**config, **analysed}
    with wandb_run(logger_cfg, name, "analysis", config) as run:
        logs: dict[str, Any] = {}
        for s in report.sections:
            for f in s.figures:
                logs[f"{s.key}/figures/{f.name}"] = wandb.Image(
                    str(files.pngs[f.name]), caption=f.title
                )
            for t in s.tables:
                logs[f"{s.key}/tables/{t.name}"] = wandb.Table(dataframe=t.frame)
        logs["report"] = wandb.Html(files.html.read_text(encoding="utf-8"), inject=False)
        run.log(logs)
        run.summary.update(
            {
                f"{s.key}/{k}": v
                for s in report.sections
                for k, v in s.summary.items()
                if isinstance(v, int | float) and math.isfinite(v)
            }
        )
        run.summary.update({f"analysed/{k}": str(v) for k, v in analysed.items()})
        run.summary["report_path"] = str(files.html)
