"""What an evaluation adds to the autoencoder's W&B run: headline scalars and three figures.

:func:`headline` turns :class:`~weightspace.evaluation.results.EvalResults` into summary
scalars with stable names, so that the runs table and parallel-coordinates panels compare
runs (``eval/probe/<representation>/<target>/<probe>/<metric>``, ``eval/recon/<model>/<col>``,
``eval/generation/<key>``, ``eval/audit/<key>``, and the short names of :data:`HEADLINE`).
:func:`draw_figures` draws the latent map of the held-out members, the reconstruction per
checkpoint epoch and the sampled networks against the zoo, as PNGs in a folder it is given;
:func:`log_evaluation` logs all of it (and the evaluation's own PNGs) to the active run.
Nothing here changes what the evaluation computes or writes into its folder.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.evaluation.results import EvalResults
from weightspace.evaluation.splits import load_split

# Short names for the numbers a reader looks at first: (summary key, section, row, column).
HEADLINE = (
    ("eval/accuracy_retained", "recon", "autoencoder", "acc_retention_of_means"),
    ("eval/label_agreement", "recon", "autoencoder", "agreement"),
    ("eval/recon_acc", "recon", "autoencoder", "recon_acc"),
    ("eval/recon_psnr_median", "recon", "autoencoder", "recon_psnr_median"),  # INR zoos
    ("eval/samples_acc_median", "generation", None, "sample_acc_median"),
    ("eval/samples_acc_mean", "generation", None, "sample_acc_mean"),
    ("eval/audit_score", "audit", None, "score"),
)


def _key(text: Any) -> str:
    """A name W&B keeps as one path segment: spaces and slashes become ``_``."""
    return re.sub(r"[\s/]+", "_", str(text)).strip("_")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def headline(results: EvalResults) -> dict[str, float]:
    """The evaluation's numbers as flat ``{name: value}`` summary scalars (finite only)."""
    out: dict[str, float] = {}
    for row in results.probes.itertuples(index=False):
        v = _number(row.value)
        if v is not None:
            parts = (row.representation, row.target, row.probe, row.metric)
            out["eval/probe/" + "/".join(_key(p) for p in parts)] = v
    rec = results.reconstruction
    for model, row in rec.iterrows():
        for col, value in row.items():
            v = _number(value)
            if v is not None:
                out[f"eval/recon/{_key(model)}/{_key(col)}"] = v
    for section, values in (("generation", results.generation), ("audit", results.audit)):
        for k, value in values.items():
            v = _number(value)
            if v is not None:
                out[f"eval/{section}/{_key(k)}"] = v
    for name, section, row_name, col in HEADLINE:
        if section == "recon":
            value = rec.at[row_name, col] if row_name in rec.index and col in rec else None
        else:
            value = getattr(results, section).get(col)
        v = _number(value)
        if v is not None:
            out[name] = v
    return out


# --------------------------------------------------------------------------- figures
@torch.no_grad()
def _test_latents(model: Any, datamodule: Any, seed: int) -> tuple[np.ndarray, Any]:
    """The held-out checkpoints' latents ``(N, latent)`` and their item table."""
    test = load_split(datamodule, "test", seed=seed)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        device = next(iter(model.parameters())).device
        z = torch.cat(
            [
                model.encode(test.weights[s : s + 512].to(device)).float().cpu()
                for s in range(0, len(test.weights), 512)
            ]
        )
    finally:
        if was_training:
            model.train()
    return z.double().numpy(), test.items


def draw_latent_map(z: np.ndarray, items: Any, path: Path) -> Path:
    """The held-out latents on their first two principal components, coloured by test
    accuracy (PSNR for INR zoos) and by checkpoint epoch."""
    import matplotlib.pyplot as plt

    centred = z - z.mean(0)  # (N, latent)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred[:, :1], 0 * centred[:, :1]]
    colours = [c for c in ("test_acc", "psnr", "epoch") if c in items]
    fig, axes = plt.subplots(1, max(len(colours), 1), figsize=(4.2 * max(len(colours), 1), 3.6))
    for ax, col in zip(np.atleast_1d(axes), colours or [None]):
        c = None if col is None else items[col].to_numpy(np.float64)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=c, s=12, cmap="viridis")
        if col is not None:
            fig.colorbar(sc, ax=ax, label=col)
        ax.set(xlabel="latent PC 1", ylabel="latent PC 2", title=f"held-out latents: {col}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_reconstruction(rec: Any, path: Path) -> Path | None:
    """Original against decoded networks' score (accuracy, or PSNR for INR zoos), for the
    autoencoder and the PCA of the same width, overall and per checkpoint epoch."""
    import matplotlib.pyplot as plt

    pair = next(
        (
            p
            for p in (("orig_acc", "recon_acc"), ("orig_psnr_median", "recon_psnr_median"))
            if p[0] in rec and p[1] in rec
        ),
        None,
    )
    if pair is None or rec.empty:
        return None
    orig, dec = pair
    rows = list(rec.index)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.6))
    ax.bar(x - 0.2, rec[orig].to_numpy(np.float64), 0.4, label="original")
    ax.bar(x + 0.2, rec[dec].to_numpy(np.float64), 0.4, label="decoded")
    ax.set_xticks(x, [str(r) for r in rows], rotation=30, ha="right", fontsize=8)
    label = "test accuracy" if orig == "orig_acc" else "PSNR (median)"
    ax.set(ylabel=label, title="Reconstruction of held-out networks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_samples(generation: Mapping[str, Any], path: Path) -> Path | None:
    """Quartile boxes of accuracy: the zoo's training checkpoints, the top ones the density was
    fitted to, those decoded, and the sampled networks (untrained)."""
    import matplotlib.pyplot as plt

    groups = (
        ("zoo_acc", "zoo (train)"),
        ("fit_acc", "fitted top"),
        ("decoded_fit_acc", "fitted, decoded"),
        ("sample_acc", "sampled"),
    )
    stats = []
    for prefix, label in groups:
        q = [_number(generation.get(f"{prefix}_{k}")) for k in ("q25", "median", "q75")]
        if None not in q:
            lo, med, hi = q
            stats.append(
                {
                    "label": label,
                    "q1": lo,
                    "med": med,
                    "q3": hi,
                    "whislo": lo,
                    "whishi": hi,
                    "mean": generation.get(f"{prefix}_mean"),
                }
            )
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bxp(stats, showfliers=False, showmeans=True)
    ax.set(ylabel="test accuracy", title="Sampled networks against the zoo (quartiles)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_figures(
    results: EvalResults, model: Any, datamodule: Any, folder: Path, seed: int = 0
) -> dict[str, Path]:
    """``latent_map``, ``reconstruction`` and ``samples`` PNGs in ``folder`` (each only when
    its data is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path | None] = {}
    if model is not None and datamodule is not None:
        z, items = _test_latents(model, datamodule, seed)
        if len(z):
            out["latent_map"] = draw_latent_map(z, items, folder / "latent_map.png")
    out["reconstruction"] = draw_reconstruction(results.reconstruction, folder / "recon.png")
    out["samples"] = draw_samples(results.generation, folder / "samples.png")
    return {k: v for k, v in out.items() if v is not None}


def log_evaluation(
    results: EvalResults,
    paths: Mapping[str, Path],
    model: Any = None,
    datamodule: Any = None,
    seed: int = 0,
    scope: str | None = None,
) -> None:
    """Log ``results`` to the active W&B run (nothing without one): the tables, the
    :func:`headline` scalars in the summary, and as images under ``eval/figures/`` the
    latent map, reconstruction and samples figures and the evaluation's own PNGs
    (``paths``: what :meth:`EvalResults.save` returned). ``scope`` (one architecture of a run
    over several): every key under ``eval/<scope>/`` instead of ``eval/``."""
    import wandb

    from weightspace.evaluation.audit import curves

    run = wandb.run
    if run is None:
        return
    rec = results.reconstruction.reset_index(names="model")
    logs: dict[str, Any] = {
        "eval/probes": wandb.Table(dataframe=results.probes),
        "eval/comparisons": wandb.Table(dataframe=results.comparisons),
        "eval/reconstruction": wandb.Table(dataframe=rec),
    }
    if results.audit_points is not None:
        logs["eval/audit_curves"] = wandb.Table(dataframe=curves(results.audit_points))
    with tempfile.TemporaryDirectory(prefix="ws-eval-figures-") as tmp:
        pngs = draw_figures(results, model, datamodule, Path(tmp), seed)
        pngs |= {
            name.removesuffix("_figure"): Path(p)
            for name, p in paths.items()
            if name.endswith("_figure") and Path(p).is_file()
        }  # audit.png, signals.png
        for name, p in pngs.items():
            logs[f"eval/figures/{name}"] = wandb.Image(str(p), caption=name.replace("_", " "))
        if scope:
            logs = {_scoped(k, scope): v for k, v in logs.items()}
        run.log(logs)  # copies the images into the run folder
    summary = headline(results)
    run.summary.update({_scoped(k, scope): v for k, v in summary.items()} if scope else summary)


def _scoped(key: str, scope: str) -> str:
    """``eval/x`` -> ``eval/<scope>/x`` (other keys: ``<scope>/key``)."""
    head, sep, rest = key.partition("/")
    return f"{head}/{scope}/{rest}" if sep and head == "eval" else f"{scope}/{key}"
