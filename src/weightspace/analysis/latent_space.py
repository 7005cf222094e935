"""Question 5, the latent space of an autoencoder run (``autoencoder=RUN``): maps,
trajectories, the probe table.

:func:`latent_measures` projects the latents of every (member, checkpoint) of the run's zoo
(:func:`weightspace.autoencoder.run.encode_zoo`) to two dimensions — PCA always, UMAP when
``umap-learn`` is importable — picks a readable subset of members for trajectories, and
measures what the text says: how the map's axes follow test accuracy, epoch and learning
rate, how much the init schemes separate, how far training moves a network in the latent
space. :func:`measure` does that for the section (and reads the run's evaluation),
:mod:`.latent_figures` draws it, :func:`write` writes the section.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from weightspace.analysis.latent_figures import fig_latent_map, fig_latent_trajectories
from weightspace.analysis.question import Inputs, Question, num
from weightspace.analysis.report import Figure as ReportFigure
from weightspace.analysis.report import Section, Table
from weightspace.autoencoder.run import EVALUATION_DIR, Latents, Run, encode_zoo
from weightspace.errors import ConfigError
from weightspace.evaluation.audit import describe as describe_audit
from weightspace.evaluation.audit import draw_audit
from weightspace.evaluation.results import EvalResults

log = logging.getLogger(__name__)

QUESTION = Question(
    "latent",
    "5. Latent space",
    "What does the autoencoder's latent space arrange the zoo by, and how does a network move "
    "through it as it trains?",
)


# --------------------------------------------------------------------------- measures
def pca_2d(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of ``z`` ``(N, d)`` and their variance ratios.
    Signs are fixed (largest loading positive) so reruns give the same picture."""
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    vt = vt[:2]
    vt = vt * np.sign(vt[np.arange(2), np.argmax(np.abs(vt), axis=1)])[:, None]
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return zc @ vt.T, ratio


def umap_2d(z: np.ndarray, seed: int) -> np.ndarray | None:
    """UMAP of ``z`` to 2-D when ``umap-learn`` is installed (seeded: one thread), else None."""
    try:
        import umap
    except ImportError:
        return None
    n_neighbors = int(min(15, max(2, len(z) - 1)))
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=0.1, random_state=seed)
    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": intended
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        return np.asarray(reducer.fit_transform(z), dtype=np.float64)


def _eta2(xy: np.ndarray, labels: np.ndarray) -> float:
    """Share of the 2-D map's variance between the groups of ``labels`` (0: mixed, 1: apart)."""
    total = float(((xy - xy.mean(0)) ** 2).sum())
    if total == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    between = 0.0
    for g in np.unique(labels):
        sel = labels == g
        between += sel.sum() * float(((xy[sel].mean(0) - xy.mean(0)) ** 2).sum())
    return between / total


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def choose_trajectories(items: pd.DataFrame, n: int) -> list[int]:
    """``n`` members spread over the range of final test accuracy (evenly spaced ranks), so
    good and bad runs both show; ids sorted."""
    last = items.sort_values("epoch").groupby("member_id").tail(1)
    last = last.sort_values(["test_acc", "member_id"], na_position="first")
    ids = last["member_id"].to_numpy()
    if len(ids) <= n:
        return sorted(int(i) for i in ids)
    pick = np.unique(np.round(np.linspace(0, len(ids) - 1, n)).astype(int))
    return sorted(int(i) for i in ids[pick])


def latent_measures(
    lat: Latents, seed: int = 0, n_trajectories: int = 12, use_umap: bool | None = None
) -> dict[str, Any]:
    """Projections, trajectories and the numbers the section's text reports.

    ``use_umap``: None (when installed), True (required: an error if not installed), False.
    """
    items = lat.items
    z = lat.z
    xy, ratio = pca_2d(z)
    maps = {"pca": xy}
    notes = []
    if use_umap is not False:
        u = umap_2d(z, seed) if len(z) >= 4 else None
        if u is not None:
            maps["umap"] = u
        elif use_umap:
            raise ConfigError(
                "latent.umap=true: umap-learn is not installed (pip install umap-learn)"
            )
        else:
            notes.append("UMAP map left out: umap-learn is not installed (pip install umap-learn).")
    epochs = lat.epochs
    log_lr = np.log10(items["lr"].to_numpy(float)) if "lr" in items else np.full(len(items), np.nan)
    acc = items["test_acc"].to_numpy(float)
    ep = items["epoch"].to_numpy(float)
    rhos = {
        name: [_rho(xy[:, k], v) for k in range(2)]
        for name, v in (("test_acc", acc), ("epoch", ep), ("log_lr", log_lr))
    }
    last = ep == ep.max()
    rho_last = {  # among the last checkpoints only: accuracy without training progress
        name: [_rho(xy[last, k], v[last]) for k in range(2)]
        for name, v in (("test_acc", acc), ("log_lr", log_lr))
    }
    eta2 = {
        c: _eta2(xy, items[c].astype(str).to_numpy())
        for c in ("init", "epoch")
        if c in items and items[c].nunique() > 1
    }

    # Movement in the full latent space: each member's distance from its own epoch-0 latent,
    # and the spread of the population at each epoch (median distance to the centroid).
    first = items.groupby("member_id")["epoch"].transform("min").to_numpy()
    start = {
        int(m): i for i, m in zip(np.flatnonzero(ep == first), items["member_id"][ep == first])
    }
    z0 = z[[start[int(m)] for m in items["member_id"]]]
    moved = np.linalg.norm(z - z0, axis=1)
    inits = items["init"].astype(str).to_numpy() if "init" in items else np.full(len(items), "all")
    displacement = {}
    for g in sorted(np.unique(inits)):
        q = [np.quantile(moved[(inits == g) & (ep == e)], [0.25, 0.5, 0.75]) for e in epochs]
        displacement[g] = {
            "n_members": int(items["member_id"][inits == g].nunique()),
            "q25": [v[0] for v in q],
            "median": [v[1] for v in q],
            "q75": [v[2] for v in q],
        }
    # How much of the full latent's variance lies between the init schemes, epoch by epoch.
    eta2_init_latent = (
        [_eta2(z[ep == e], inits[ep == e]) for e in epochs] if len(np.unique(inits)) > 1 else []
    )
    spread = []
    for e in epochs:
        ze = z[ep == e]
        spread.append(float(np.median(np.linalg.norm(ze - ze.mean(0), axis=1))))
    moved_all = [float(np.median(moved[ep == e])) for e in epochs]

    traj_ids = choose_trajectories(items, n_trajectories)
    mid = items["member_id"].to_numpy()
    trajectories = []
    for m in traj_ids:
        rows = np.flatnonzero(mid == m)
        rows = rows[np.argsort(ep[rows], kind="stable")]
        trajectories.append(
            {
                "member_id": m,
                "split": str(items["split"].iloc[rows[0]]),
                "init": str(inits[rows[0]]),
                "lr": float(items["lr"].iloc[rows[0]]) if "lr" in items else float("nan"),
                "epochs": [int(v) for v in ep[rows]],
                "test_acc": [float(v) for v in acc[rows]],
                "rows": rows.tolist(),
            }
        )
    return {
        "n_points": len(items),
        "n_members": int(items["member_id"].nunique()),
        "latent_dim": int(z.shape[1]),
        "epochs": epochs,
        "items": items,
        "maps": maps,
        "pca_variance_ratio": ratio.tolist(),
        "spearman": rhos,
        "spearman_last_epoch": rho_last,
        "eta2": eta2,
        "eta2_init_latent": eta2_init_latent,
        "displacement": displacement,
        "moved_median": moved_all,
        "spread_median": spread,
        "trajectories": trajectories,
        "notes": notes,
    }


# --------------------------------------------------------------------------- the section
def _strongest(rhos: list[float]) -> tuple[int, float]:
    a = np.abs(np.nan_to_num(np.asarray(rhos, dtype=float)))
    k = int(np.argmax(a))
    return k, float(rhos[k])


def measure(run: Run, opts: Mapping[str, Any], zoo_root=None, seed: int = 0) -> dict[str, Any]:
    """Everything section 5 shows and says: :func:`latent_measures` of the run's latents
    (``m``), how many members each split holds, the run's evaluation (None without one)
    and the notes, in the order the section shows them."""
    epochs = opts.get("epochs")
    lat = encode_zoo(run, epochs=list(epochs) if isinstance(epochs, list | tuple) else epochs)
    log.info("latent: %d checkpoints of %d members", len(lat), lat.items.member_id.nunique())
    umap_opt = opts.get("umap", "auto")
    use_umap = None if umap_opt in (None, "auto") else bool(umap_opt)
    m = latent_measures(
        lat, seed=seed, n_trajectories=int(opts.get("n_trajectories", 12)), use_umap=use_umap
    )
    notes = list(m["notes"])
    if zoo_root is not None and Path(zoo_root).resolve() not in (
        run.zoo.resolve(),
        run.parent_zoo.resolve(),
    ):
        notes.append(
            f"The latents are of the run's own zoo {run.zoo}, not of zoo={zoo_root}: an "
            "autoencoder encodes the zoo its normalization and splits were made for."
        )
    if run.zoo != run.parent_zoo:
        notes.append(
            f"canon={run.canon}: the run read the derived zoo {run.zoo.name} (the members of "
            f"{run.parent_zoo.name} in one symmetry frame, same member ids and metrics); its "
            "checkpoints are encoded as the run saw them."
        )
    folder = run.path / EVALUATION_DIR
    evaluation = EvalResults.load(folder) if EvalResults.is_saved(folder) else None
    if evaluation is None:
        notes.append(
            "The run has no evaluation/ folder (trained with evaluate=false): no probe table."
        )
    return {
        "m": m,
        "seed": seed,
        "split_counts": lat.items.drop_duplicates("member_id")["split"].value_counts(),
        "n_init": lat.items["init"].nunique() if "init" in lat.items else 0,
        # The run's evaluation: its probe table (cells as strings), the reconstruction table
        # (column ``model`` first) and how many test members it held out.
        "probe_table": None if evaluation is None else evaluation.probe_summary(),
        "reconstruction": None
        if evaluation is None
        else evaluation.reconstruction.rename_axis("model").reset_index(),
        "n_test": None if evaluation is None else evaluation.info.get("n_members/test"),
        "audit": None if evaluation is None else (evaluation.audit_points, evaluation.audit),
        "notes": notes,
    }


def write(r: Mapping[str, Any]) -> Section:
    """Section 5 from :func:`measure`: maps, trajectories, text and the run's probe and
    reconstruction tables."""
    s = QUESTION.section()
    s.notes += r["notes"]
    m, seed = r["m"], r["seed"]
    n, n_m = m["n_points"], m["n_members"]
    counts = r["split_counts"]
    split_text = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("train", "val", "test"))
    s.figures.append(
        ReportFigure(
            "latent_map_pca",
            "The latent space, PCA",
            f"Every checkpoint of every member ({n} points: {n_m} members x epochs "
            f"{', '.join(map(str, m['epochs']))}) encoded by the run's encoder and projected on "
            "the first two principal components of the latents; one panel per colouring. "
            f"Marker: the member's split in the run ({split_text} members); val and test "
            "members were never trained on.",
            *fig_latent_map(m, "pca", seed),
        )
    )
    if "umap" in m["maps"]:
        s.figures.append(
            ReportFigure(
                "latent_map_umap",
                "The latent space, UMAP",
                "The same latents embedded with UMAP (15 neighbours, seeded), which keeps "
                "neighbourhoods rather than global distances: clusters mean something, the "
                "distances between them little.",
                *fig_latent_map(m, "umap", seed),
            )
        )
    s.figures.append(
        ReportFigure(
            "latent_trajectories",
            "Training trajectories in the latent space",
            f"Left: {len(m['trajectories'])} members chosen evenly over the range of final test "
            "accuracy, each checkpoint joined in epoch order on the PCA map (open circle: "
            "epoch 0, filled with an arrow: last epoch). Right: how far each checkpoint's latent "
            "is from its member's epoch-0 latent in the full latent space, per init scheme "
            "(median, interquartile band over members).",
            *fig_latent_trajectories(m, "pca"),
        )
    )
    if r.get("audit") and r["audit"][0] is not None:  # the evaluation's memorization audit
        points, audit = r["audit"]
        s.figures.append(
            ReportFigure(
                "generation_audit",
                "Generation: memorization audit",
                describe_audit(audit) + " Curves: medians per temperature / noise scale / k.",
                *draw_audit(points, audit),
            )
        )
    # ---- the text, from the numbers
    ratio = m["pca_variance_ratio"]
    rho = m["spearman"]
    k_acc, r_acc = _strongest(rho["test_acc"])
    k_ep, r_ep = _strongest(rho["epoch"])
    k_lr, r_lr = _strongest(rho["log_lr"])
    ordered = abs(r_acc) >= 0.5
    r_last = m["spearman_last_epoch"]["test_acc"][k_acc]
    within = (
        f" Among the networks of the last checkpoint alone (epoch {m['epochs'][-1]}), PC "
        f"{k_acc + 1} still follows test accuracy with ρ = {num(r_last, 2)}"
        + (
            ": the map orders trained networks by quality, not only by training progress."
            if abs(r_last) >= 0.5
            else ": most of that order is training progress (epoch), which accuracy tracks; "
            "between trained networks the map says less about which is better."
        )
        if len(m["epochs"]) > 1
        else ""
    )
    s.paragraphs.append(
        f"The first two principal components hold {100 * (ratio[0] + ratio[1]):.0f}% of the "
        f"variance of the {m['latent_dim']}-d latents ({100 * ratio[0]:.0f}% and "
        f"{100 * ratio[1]:.0f}%). Along them, test accuracy follows PC {k_acc + 1} "
        f"(Spearman ρ = {num(r_acc, 2)})"
        + (f", the epoch PC {k_ep + 1} (ρ = {num(r_ep, 2)})" if len(m["epochs"]) > 1 else "")
        + " and the "
        f"learning rate PC {k_lr + 1} (ρ = {num(r_lr, 2)}, on log lr). "
        + (
            "The map orders the networks by how well they work."
            if ordered
            else "The expectation that the map orders networks by test accuracy fails here: "
            "no principal direction follows it closely (|ρ| < 0.5)."
        )
        + within
    )
    s.summary["spearman_test_acc_last_epoch"] = float(r_last)
    eta = m["eta2"]
    if "init" in eta:
        n_init = r["n_init"]
        s.paragraphs.append(
            f"The {n_init} init schemes "
            + (
                f"separate on the map: {100 * eta['init']:.1f}% of its variance lies between "
                "their groups."
                if eta["init"] >= 0.3
                else f"overlap on the map: only {100 * eta['init']:.1f}% of its variance lies "
                "between their groups"
                + (
                    f" (between the checkpoint epochs: {100 * eta['epoch']:.0f}%)."
                    if "epoch" in eta
                    else "."
                )
            )
            + " In the full latent space the share between init schemes is "
            + ", ".join(
                f"{100 * v:.1f}% at epoch {e}" for e, v in zip(m["epochs"], m["eta2_init_latent"])
            )
            + "."
        )
        s.summary["eta2_init_latent_first"] = float(m["eta2_init_latent"][0])
    moved, spread = m["moved_median"], m["spread_median"]
    e0, e1 = m["epochs"][0], m["epochs"][-1]
    if len(m["epochs"]) > 1:
        frac_first = moved[1] / moved[-1] if moved[-1] > 0 else float("nan")
        converge = spread[-1] < spread[0]
        s.paragraphs.append(
            f"From epoch {e0} to {e1} a network's latent moves {num(moved[-1], 3)} (median; "
            f"{100 * frac_first:.0f}% of that by epoch {m['epochs'][1]}), against a spread of "
            f"the population of {num(spread[0], 3)} at epoch {e0} and {num(spread[-1], 3)} at "
            f"epoch {e1} (median distance to the centroid). "
            + (
                "The members draw together as they train."
                if converge
                else "The expectation that trained networks gather in one region fails: the "
                "population spreads out as it trains, the initializations being closer to "
                "each other in the latent space than the trained networks."
            )
        )
    s.summary.update(
        {
            "n_points": float(n),
            "pca_variance_2d": float(ratio[0] + ratio[1]),
            "spearman_test_acc": r_acc,
            "spearman_epoch": r_ep,
            "spearman_log_lr": r_lr,
            "eta2_init": float(eta.get("init", float("nan"))),
            "moved_median_last": float(moved[-1]),
            "spread_first": float(spread[0]),
            "spread_last": float(spread[-1]),
        }
    )

    table = r["probe_table"]
    if table is not None:
        held = r["n_test"]
        s.tables.append(
            Table(
                "latent_probes",
                "Probes on held-out members: the latent against the baselines (R² for numbers, "
                "accuracy for categories; from the run's evaluation"
                + (f", {held} test members" if held else "")
                + ")",
                table,
            )
        )
        rec = r["reconstruction"]
        if "model" in rec:
            keep = [
                c
                for c in ("model", "r2_mean", "orig_acc", "recon_acc", "agreement")
                if c in rec.columns
            ]
            s.tables.append(
                Table(
                    "latent_reconstruction",
                    "Reconstruction of the held-out networks (autoencoder vs. PCA of the same "
                    "width): mean per-tensor R², test accuracy of the originals and of the "
                    "decoded networks, agreement of their predicted labels",
                    rec[keep],
                )
            )
        _probe_sentence(s, table)
    return s


def section(inp: Inputs, opts: Mapping[str, Any]) -> Section:
    """Section 5 of the report (skipped without an autoencoder run)."""
    if inp.run is None:
        return QUESTION.skipped(
            "needs an autoencoder run: autoencoder=RUN (a run folder written by "
            "scripts/train_autoencoder.py, a run name under paths.log_dir/autoencoder, or "
            "latest).",
        )
    zoo_root = inp.zoo.root if inp.zoo is not None else None
    return write(measure(inp.run, opts, zoo_root, inp.seed))


def _probe_sentence(s: Section, table: pd.DataFrame) -> None:
    """One sentence per target comparing each latent probe (linear, boosting) with the best
    of the field's baselines under the same probe ("invariants", named "stats+spectra" in
    runs before it carried function features, is a reference for latents that carry those
    features, not a baseline: left out here; so are the encoder's own coordinates,
    "learned", which are part of the latent). Then the same for the learned coordinates
    alone, when the table has them: what the latent holds without the hand-made features."""
    if "target" not in table:
        return
    parts = _against_best_baseline(table, "latent")
    if parts:
        s.paragraphs.append(
            "Held-out probes, the latent vs the best baseline under the same probe: "
            + "; ".join(parts)
            + "."
        )
    learned = [c for c in table.columns if c.startswith("learned ")]
    if not learned:
        return
    latent = [f"latent {c[len('learned ') :]}" for c in learned]
    if all(c in table for c in latent) and table[learned].equals(
        table[latent].set_axis(learned, axis=1)
    ):
        s.paragraphs.append(
            "The encoder's learned coordinates alone (the latent without any invariant "
            "features it carries) score as the whole latent on every probe, to the table's "
            "three digits: what the latent holds, the learned coordinates hold."
        )
        return
    parts = _against_best_baseline(table, "learned")
    if parts:
        s.paragraphs.append(
            "The encoder's learned coordinates alone (the latent without the invariant "
            "features it carries: what learning adds), against the same baselines: "
            + "; ".join(parts)
            + "."
        )


def _against_best_baseline(table: pd.DataFrame, ours: str) -> list[str]:
    """Per target, ``ours``'s probes (linear, boosting) against the best baseline's under
    the same probe, e.g. 'init: linear 0.95 vs 0.73 (stats), boosting ...'."""
    parts = []
    for _, row in table.iterrows():
        said = []
        for kind in ("linear", "boosting"):
            value = row.get(f"{ours} {kind}")
            if not _is_float(value) or not math.isfinite(float(value)):
                continue
            base = {
                c[: -len(kind) - 1]: float(row[c])
                for c in table.columns
                if c.endswith(f" {kind}")
                and not c.startswith(
                    ("latent", "learned", "combined", "invariants", "stats+spectra")
                )
                and _is_float(row[c])
            }
            if base:
                best = max(base, key=base.get)
                said.append(f"{kind} {float(value):.2f} vs {base[best]:.2f} ({best})")
        if said:
            parts.append(f"{row['target']}: " + ", ".join(said))
    return parts


def _is_float(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
