"""Question 6, an autoencoder run on an INR zoo (``autoencoder=RUN`` of a zoo whose members
each fit one signal): does its latent sort the signals by class, and what do its decoded and
sampled INRs look like?

:func:`measure` encodes each member's last checkpoint (:func:`weightspace.autoencoder.run.
encode_zoo`), projects the latents to two dimensions (:func:`.latent_space.pca_2d`) and
reads the run's evaluation (``evaluation/signals.npz``: held-out signals as fitted, decoded
and sampled; the class probes; the PSNR of the decoded INRs against the PCA's);
:func:`write` draws the grid (:func:`weightspace.evaluation.inr.draw_signal_grid`) and the
latent map coloured by class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from weightspace.analysis import plotting as P
from weightspace.analysis.latent_space import pca_2d
from weightspace.analysis.question import Inputs, Question, num, pct
from weightspace.analysis.report import Figure as ReportFigure
from weightspace.analysis.report import Section, Table
from weightspace.autoencoder.run import EVALUATION_DIR, Run, encode_zoo
from weightspace.evaluation.inr import draw_signal_grid
from weightspace.evaluation.results import EvalResults
from weightspace.zoo.store import Zoo

QUESTION = Question(
    "inr",
    "6. INR zoos: signals through the autoencoder",
    "Does the latent of an autoencoder over INRs sort them by the class of the signal they "
    "represent, and do its decoded and sampled INRs look like signals?",
)
MARKERS = {"train": "o", "val": "s", "test": "^"}


def measure(run: Run, seed: int = 0) -> dict[str, Any]:
    """The last checkpoints' 2-D latent map with each member's class and split, and the
    run's evaluation (None without one)."""
    lat = encode_zoo(run, epochs="last")
    members = Zoo.open(run.zoo).members
    classes = members["signal_class"].to_numpy()[lat.items["member_id"].to_numpy()]
    xy, ratio = pca_2d(np.asarray(lat.z, dtype=np.float64))
    folder = run.path / EVALUATION_DIR
    evaluation = EvalResults.load(folder) if EvalResults.is_saved(folder) else None
    return {
        "xy": xy,
        "ratio": ratio,
        "classes": classes,
        "split": lat.items["split"].to_numpy(),
        "latent_dim": lat.z.shape[1],
        "evaluation": evaluation,
        "seed": seed,
    }


def fig_class_map(r: Mapping[str, Any]) -> tuple[Figure, dict]:
    """The PCA map of the last checkpoints' latents, coloured by class, marker by split."""
    xy, classes, split = r["xy"], r["classes"], r["split"]
    order = np.random.default_rng(r["seed"]).permutation(len(xy))
    with P.style():
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax = fig.subplots()
        cmap = colormaps["tab10"]
        for sp, marker in MARKERS.items():
            idx = order[split[order] == sp]
            ax.scatter(
                xy[idx, 0],
                xy[idx, 1],
                c=[cmap(int(c) % 10) for c in classes[idx]],
                s=10,
                marker=marker,
                alpha=0.7,
                linewidths=0,
            )
        handles = [
            Line2D([], [], ls="", marker="o", color=cmap(int(c) % 10), label=str(c))
            for c in np.unique(classes)
        ]
        handles += [
            Line2D([], [], ls="", marker=m, color="#555555", label=sp) for sp, m in MARKERS.items()
        ]
        ax.legend(handles=handles, fontsize=7, ncol=2, title="class / split")
        ax.set_xlabel(f"PC1 ({pct(r['ratio'][0])})")
        ax.set_ylabel(f"PC2 ({pct(r['ratio'][1])})")
        ax.set_title(f"The {r['latent_dim']}-d latents of {len(xy)} INRs (last checkpoints)")
    data = {"n_points": len(xy), "variance_ratio": [float(v) for v in r["ratio"]]}
    return fig, data


def _class_table(ev: EvalResults) -> pd.DataFrame:
    """Held-out class accuracy per representation and probe (the run's probe table)."""
    p = ev.probes
    p = p[(p["target"] == "signal_class") & (p["metric"] == "accuracy")]
    return p.pivot_table(index="representation", columns="probe", values="value").reset_index()


def write(r: Mapping[str, Any]) -> Section:
    """The section from :func:`measure`: the grid, the class map, the probe and PSNR tables."""
    s = QUESTION.section()
    ev: EvalResults | None = r["evaluation"]
    if ev is not None and ev.signals is not None:
        fig, _ = draw_signal_grid(ev.signals)
        s.figures.append(
            ReportFigure(
                name="inr_signals",
                title="Held-out signals as fitted, decoded and sampled",
                caption="Rows: the signal, the INR fitted to it (a zoo member), that INR "
                "encoded and decoded by the autoencoder, INRs sampled from the latent density "
                "(no signal of their own). Titles: the signal's class.",
                figure=fig,
                data={k: np.asarray(v).tolist() for k, v in ev.signals.items()},
            )
        )
    else:
        s.notes.append("The run has no evaluation/signals.npz (evaluate=false): no grid.")
    fig, data = fig_class_map(r)
    s.figures.append(
        ReportFigure(
            name="inr_latent_classes",
            title="The latent map coloured by class",
            caption="PCA of the latents of every member's last checkpoint; colour: the class "
            "of the signal the INR represents; marker: the member's split in the run.",
            figure=fig,
            data=data,
        )
    )
    if ev is None:
        return s
    table = _class_table(ev)
    s.tables.append(
        Table("inr_class_probes", "Held-out class accuracy (signal_class) by representation", table)
    )
    rec = ev.reconstruction
    if "recon_psnr_median" in rec:
        ae, pca = rec.loc["autoencoder"], rec.loc["pca"]
        s.paragraphs.append(
            f"Decoded held-out INRs: median PSNR {num(ae['recon_psnr_median'])} dB against "
            f"their signals (PCA of the same width: {num(pca['recon_psnr_median'])} dB; the "
            f"originals: {num(ae['orig_psnr_median'])} dB), "
            f"{num(ae['psnr_vs_orig_median'])} dB against the originals' outputs."
        )
    gen = ev.generation
    if "sample_nearest_psnr_median" in gen:
        s.paragraphs.append(
            f"Sampled INRs: median PSNR {num(gen['sample_nearest_psnr_median'])} dB against "
            "the nearest training signal."
        )
    return s


def section(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    """Section 6 of the report (skipped without an autoencoder run of an INR zoo)."""
    if inp.run is None:
        return QUESTION.skipped("needs an autoencoder run of an INR zoo: autoencoder=RUN.")
    if "signal" not in Zoo.open(inp.run.zoo).members:
        return QUESTION.skipped(f"the run's zoo {inp.run.zoo.name} is not an INR zoo.")
    return write(measure(inp.run, inp.seed))
