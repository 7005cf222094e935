"""Generation: a memorization audit — do the samples beat noise and averages of the zoo?

A generator of weights may only replicate or interpolate its training checkpoints (Zeng et
al., CVPR 2026). Two trivial generators do that on purpose, each with a knob of novelty:

- :func:`noise_baseline`: a top training checkpoint plus Gaussian noise of scale ``s`` in the
  normalized space (one std per ``state_dict`` tensor: the noise is per-tensor scaled);
- :func:`average_baseline`: the mean of ``k`` distinct top training checkpoints, in the frame
  the zoo is in (the MergeMany frame for ``canon=align``).

Every network (the autoencoder's samples, at several temperatures of the latent density, and
the baselines' at each knob value) gets its test accuracy and two novelties
(:func:`novelty`): the L2 distance to its nearest training checkpoint in the normalized,
aligned weight frame, and the functional novelty, the fraction of test inputs on which its
predicted class differs from that nearest checkpoint's; both also against the held-out
members. :func:`audit_score` sets the samples' median accuracy against the better baseline's
at equal functional novelty (bins over the samples' range), with a bootstrap interval.
:func:`run_audit` does it all; :func:`draw_audit` draws the curves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.evaluation.sampling import LatentDensity
from weightspace.nets.forward import forward_groups
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.tasks import Task

AUDIT_STREAM = 18  # the audit's own RNG stream: np.random.SeedSequence([seed, AUDIT_STREAM])
POINT_COLUMNS = ("method", "knob", "acc", "novelty", "func_novelty")
HELDOUT_COLUMNS = ("heldout_novelty", "heldout_func_novelty")
METHODS = ("samples", "noise", "average")  # samples: the autoencoder's, knob = temperature


@dataclass(frozen=True)
class AuditOptions:
    """The audit's sizes. ``n_per_level``: networks per knob value of each baseline and per
    temperature other than 1 (temperature 1 reuses the generation's samples);
    ``noise_scales``: the noise's std in normalized units; ``ks``: how many checkpoints an
    average takes (larger than the top set: skipped); ``temperatures``: factors on the
    latent density's covariance; ``n_bins``: functional-novelty bins over the 5-95% range of
    the samples' (temperature 1); ``min_count``: networks a baseline needs in a bin to count
    there; ``n_boot``: bootstrap resamples of the score."""

    n_per_level: int = 64
    noise_scales: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
    ks: tuple[int, ...] = (2, 3, 5, 8, 16, 32)
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    n_bins: int = 8
    min_count: int = 5
    n_boot: int = 1000

    @classmethod
    def from_mapping(cls, opts: Mapping[str, Any] | None) -> AuditOptions:
        """Options from plain values (a config); lists become tuples."""
        items = (opts or {}).items()
        kw = {
            k: v if isinstance(v, str) or not isinstance(v, Sequence) else tuple(v)
            for k, v in items
        }
        return cls(**kw)


# --------------------------------------------------------------------------- the baselines
def noise_baseline(
    x: Tensor, scales: Sequence[float], n: int, rng: np.random.Generator
) -> tuple[Tensor, np.ndarray]:
    """``n`` networks per scale: a random row of ``x`` (M, D) plus ``scale * N(0, 1)`` noise.
    Returns the networks ``(len(scales) * n, D)`` and each one's scale."""
    out, knob = [], []
    for s in scales:
        src = x[torch.from_numpy(rng.integers(len(x), size=n))]
        noise = torch.from_numpy(rng.standard_normal(src.shape)).to(src.dtype)
        out.append(src + float(s) * noise)  # s = 0: the checkpoints themselves
        knob.append(np.full(n, float(s)))
    return torch.cat(out), np.concatenate(knob)


def average_baseline(
    x: Tensor, ks: Sequence[int], n: int, rng: np.random.Generator
) -> tuple[Tensor, np.ndarray]:
    """``n`` networks per ``k``: the mean of ``k`` distinct random rows of ``x`` (M, D)
    (``k > M`` skipped). Returns the networks ``(n_k * n, D)`` and each one's ``k``."""
    out, knob = [], []
    for k in (int(k) for k in ks if int(k) <= len(x)):
        idx = np.stack([rng.choice(len(x), size=k, replace=False) for _ in range(n)])
        out.append(x[torch.from_numpy(idx)].mean(1))  # (n, k, D) -> (n, D)
        knob.append(np.full(n, float(k)))
    if not out:
        return x[:0], np.empty(0)
    return torch.cat(out), np.concatenate(knob)


# --------------------------------------------------------------------------- novelty
@torch.no_grad()
def predictions(
    params: Params, specs: MLPSpec | Sequence[MLPSpec], x: Tensor, budget: int = 1 << 24
) -> np.ndarray:
    """Predicted classes ``(N, B)`` of stacked networks on inputs ``x`` (B, in)."""
    n = next(iter(params.values())).shape[0]
    out = np.empty((n, len(x)), dtype=np.int64)
    for idx, y in forward_groups({k: v.float() for k, v in params.items()}, x, specs, budget):
        out[idx.numpy()] = y.argmax(-1).numpy()
    return out


@torch.no_grad()
def novelty(
    queries: Tensor,
    query_pred: np.ndarray,
    reference: Tensor,
    reference_pred: np.ndarray,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's nearest reference row (L2, in float32): its distance ``(n,)``, the fraction
    of inputs on which their predictions differ ``(n,)`` and its index ``(n,)``."""
    q, r = queries.float(), reference.float()
    r2 = (r**2).sum(1)
    dist, nn = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        qb = q[s : s + chunk]
        d2 = (qb**2).sum(1, keepdim=True) + r2 - 2 * qb @ r.T  # (b, n_ref)
        best = d2.min(1)
        dist[s : s + chunk] = best.values.clamp_min(0).sqrt().double().numpy()
        nn[s : s + chunk] = best.indices.numpy()
    exact = (q - r[torch.from_numpy(nn)]).abs().amax(1) == 0  # a copy is at distance 0, exactly
    dist[exact.numpy()] = 0.0
    func = (query_pred != reference_pred[nn]).mean(1)
    return dist, func, nn


# --------------------------------------------------------------------------- the score
def _bins(f: np.ndarray, n_bins: int, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    """Bin edges over the ``lo``-``hi`` quantile range of ``f`` (duplicates merged)."""
    return np.unique(np.quantile(f, np.linspace(lo, hi, n_bins + 1)))


def _in_bins(f: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """A mask ``(n,)`` per bin: ``[e_i, e_i+1)``, the last closed; one edge: ``f == e``."""
    if len(edges) == 1:
        return [f == edges[0]]
    last = len(edges) - 2
    return [
        (f >= a) & ((f <= b) if i == last else (f < b))
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))
    ]


def _gaps(
    samples: tuple[np.ndarray, np.ndarray],
    baselines: Mapping[str, tuple[np.ndarray, np.ndarray]],
    edges: np.ndarray,
    min_count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per bin: the samples' median accuracy minus the better baseline's (NaN where no
    baseline has ``min_count`` networks), and the better baseline's median."""
    fs, acc = samples
    s_bins = _in_bins(fs, edges)
    best = np.full(len(s_bins), -np.inf)
    for fb, ab in baselines.values():
        for i, m in enumerate(_in_bins(fb, edges)):
            if m.sum() >= min_count:
                best[i] = max(best[i], float(np.median(ab[m])))
    ours = np.array([np.median(acc[m]) if m.any() else np.nan for m in s_bins])
    best[~np.isfinite(best)] = np.nan
    return ours - best, best


def audit_score(
    samples: tuple[np.ndarray, np.ndarray],
    baselines: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_bins: int = 8,
    min_count: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """How far the samples' median accuracy lies above the better baseline's at equal novelty.

    ``samples`` and each baseline: ``(novelty (n,), accuracy (n,))``. The 5-95% range of the
    samples' novelty is cut in ``n_bins`` quantile bins; in each, the samples' median accuracy
    minus the best median of the baselines with ``min_count`` networks there. ``score``: the
    mean of those gaps over the bins some baseline covers (accuracy units: positive, the
    samples are better); ``ci_low`` / ``ci_high``: its 95% percentile interval over
    ``n_boot`` resamples of every set of networks (bins fixed); ``bins_won``: the share of
    covered bins with a positive gap."""
    edges = _bins(samples[0], n_bins)
    gaps, _ = _gaps(samples, baselines, edges, min_count)
    ok = np.isfinite(gaps)
    rng = np.random.default_rng(np.random.SeedSequence([seed, AUDIT_STREAM, 1]))
    boot = np.full(n_boot, np.nan)

    def draw(fa: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        i = rng.integers(len(fa[0]), size=len(fa[0]))
        return fa[0][i], fa[1][i]

    for b in range(n_boot):
        g, _ = _gaps(draw(samples), {k: draw(v) for k, v in baselines.items()}, edges, min_count)
        if np.isfinite(g).any():
            boot[b] = np.nanmean(g)
    boot = boot[np.isfinite(boot)]
    nan = float("nan")
    return {
        "score": float(gaps[ok].mean()) if ok.any() else nan,
        "ci_low": float(np.quantile(boot, 0.025)) if len(boot) else nan,
        "ci_high": float(np.quantile(boot, 0.975)) if len(boot) else nan,
        "bins": float(len(gaps)),
        "bins_covered": float(ok.sum()),
        "bins_won": float((gaps[ok] > 0).mean()) if ok.any() else nan,
        "range_low": float(edges[0]),
        "range_high": float(edges[-1]),
    }


def curves(points: pd.DataFrame) -> pd.DataFrame:
    """Per method and knob value: the count and the median accuracy and novelties."""
    cols = [c for c in (*POINT_COLUMNS[2:], *HELDOUT_COLUMNS) if c in points]
    g = points.groupby(["method", "knob"], sort=False)
    out = g[cols].median().add_prefix("median_")
    out.insert(0, "n", g.size())
    return out.reset_index()


# --------------------------------------------------------------------------- the audit
@dataclass
class AuditInputs:
    """What :func:`run_audit` reads. Flat vectors are normalized ``(N, D)``; ``to_params``
    turns them into networks; ``density``: the generation's latent density, ``samples``
    its decoded samples at temperature 1; ``top``: the rows of ``train`` it was fitted to."""

    train: Tensor
    train_params: Params
    train_specs: Sequence[MLPSpec]
    heldout: Tensor
    heldout_params: Params
    heldout_specs: Sequence[MLPSpec]
    top: np.ndarray
    density: LatentDensity
    samples: Tensor
    spec: MLPSpec
    decode: Callable[[Tensor], Tensor]
    to_params: Callable[[Tensor], Params]


def run_audit(
    inp: AuditInputs, task: Task, opts: AuditOptions = AuditOptions(), seed: int = 0
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The audit (see the module docs): its summary numbers and one row per audited network
    (:data:`POINT_COLUMNS` and :data:`HELDOUT_COLUMNS`). Draws only from its own stream
    (:data:`AUDIT_STREAM`): the rest of the evaluation is unchanged by it."""
    if not task.is_classification:
        return {"note": "the audit needs a classification task (functional novelty)"}, (
            pd.DataFrame(columns=[*POINT_COLUMNS, *HELDOUT_COLUMNS])
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, AUDIT_STREAM]))
    x, y = task.x_test, task.y_test.numpy()
    top = inp.train[torch.from_numpy(np.asarray(inp.top))]
    n = opts.n_per_level
    sets: list[tuple[str, Tensor, np.ndarray]] = []
    for t in opts.temperatures:
        if t == 1.0:
            flat = inp.samples
        else:
            dens = replace(inp.density, cov=inp.density.cov * float(t))
            z = torch.from_numpy(dens.sample(n, int(rng.integers(2**32)))).float()
            flat = inp.decode(z)
        sets.append(("samples", flat, np.full(len(flat), float(t))))
    sets.append(("noise", *noise_baseline(top, opts.noise_scales, n, rng)))
    sets.append(("average", *average_baseline(top, opts.ks, n, rng)))

    ref_pred = predictions(inp.train_params, inp.train_specs, x)
    held_pred = predictions(inp.heldout_params, inp.heldout_specs, x)
    frames = []
    for method, flat, knob in sets:
        pred = predictions(inp.to_params(flat), inp.spec, x)
        d, f, _ = novelty(flat, pred, inp.train, ref_pred)
        hd, hf, _ = novelty(flat, pred, inp.heldout, held_pred)
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "knob": knob,
                    "acc": (pred == y).mean(1),
                    "novelty": d,
                    "func_novelty": f,
                    "heldout_novelty": hd,
                    "heldout_func_novelty": hf,
                }
            )
        )
    points = pd.concat(frames, ignore_index=True)
    return summarize(points, opts, seed), points


def summarize(points: pd.DataFrame, opts: AuditOptions, seed: int = 0) -> dict[str, Any]:
    """The audit's summary numbers from its points: the score at equal functional novelty
    (``score*``, :func:`audit_score`; the samples at temperature 1 against both baselines),
    the same at equal weight novelty (``weight_score*``), and the samples' novelties against
    training and held-out members (medians; ``closer_to_heldout``: the share of samples
    nearer to a held-out member than to any training checkpoint)."""
    s = points[(points.method == "samples") & (points.knob == 1.0)]
    out: dict[str, Any] = {"n_samples": float(len(s))}
    if s.empty:
        return {**out, "note": "no samples at temperature 1"}
    for col, prefix in (("func_novelty", ""), ("novelty", "weight_")):
        base = {}
        for m in ("noise", "average"):
            p = points[points.method == m]
            base[m] = (p[col].to_numpy(), p["acc"].to_numpy())
        sc = audit_score(
            (s[col].to_numpy(), s["acc"].to_numpy()),
            base,
            opts.n_bins,
            opts.min_count,
            opts.n_boot if prefix == "" else 0,
            seed,
        )
        keep = sc if prefix == "" else {"score": sc["score"], "bins_won": sc["bins_won"]}
        out |= {f"{prefix}{k}": v for k, v in keep.items()}
    cols = (*POINT_COLUMNS[2:], *HELDOUT_COLUMNS)
    out |= {f"sample_{c}_median": float(s[c].median()) for c in cols}
    out["closer_to_heldout"] = float((s["heldout_novelty"] < s["novelty"]).mean())
    return out


def describe(audit: Mapping[str, Any]) -> str:
    """One plain sentence of the score, for the printed summary."""
    if "score" not in audit:
        return f"Memorization audit: {audit.get('note', 'not run')}."
    sc, lo, hi = audit["score"], audit["ci_low"], audit["ci_high"]
    verdict = (
        "the samples beat both trivial baselines"
        if lo > 0
        else "the samples lose to the better trivial baseline"
        if hi < 0
        else "no clear difference from the better trivial baseline"
    )
    return (
        f"Memorization audit: at equal functional novelty ({audit['range_low']:.3f}-"
        f"{audit['range_high']:.3f}), the samples' median accuracy minus the better baseline's "
        f"(noise / average of top checkpoints): {sc:+.3f} [{lo:+.3f}, {hi:+.3f}] (95% "
        f"bootstrap), positive in {100 * audit['bins_won']:.0f}% of the bins: {verdict}. "
        f"Samples' median novelty vs training {audit['sample_novelty_median']:.2f} "
        f"(functional {audit['sample_func_novelty_median']:.3f}), vs held-out "
        f"{audit['sample_heldout_novelty_median']:.2f} "
        f"({audit['sample_heldout_func_novelty_median']:.3f})."
    )


# --------------------------------------------------------------------------- the figure
STYLE = {"samples": ("#1f77b4", "o", "samples (τ)"), "noise": ("#d62728", "s", "noise (σ)"),
         "average": ("#2ca02c", "^", "average (k)")}  # fmt: skip


def draw_audit(points: pd.DataFrame, audit: Mapping[str, Any] | None = None):
    """Accuracy against functional and weight novelty: every network faint (the samples at
    temperature 1), each method's median per knob value joined and labelled, zoomed on the
    samples and averages. Returns ``(figure, data)``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    cur = curves(points)
    for ax, col, label in (
        (axes[0], "func_novelty", "functional novelty (test inputs predicted differently)"),
        (axes[1], "novelty", "weight novelty (L2 to the nearest training checkpoint)"),
    ):
        for method in ("noise", "average", "samples"):  # the samples on top
            color, marker, name = STYLE[method]
            p, c = points[points.method == method], cur[cur.method == method]
            if p.empty:
                continue
            faint = p if method != "samples" else p[p.knob == 1.0]
            alpha = 0.35 if method == "samples" else 0.15
            ax.scatter(faint[col], faint["acc"], s=4, color=color, alpha=alpha, lw=0)
            c = c.sort_values(f"median_{col}")
            ax.plot(c[f"median_{col}"], c["median_acc"], marker=marker, color=color, label=name)
            for r in c.itertuples():
                xy = (getattr(r, f"median_{col}"), r.median_acc)
                ax.annotate(
                    f"{r.knob:g}",
                    xy,
                    fontsize=7,
                    color=color,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        # Zoom on the samples and averages (the noise runs on to chance level).
        near = points[points.method != "noise"]
        if not near.empty:
            xmax = 2.0 * float(near[col].quantile(0.95)) + 1e-9
            shown = points[points[col] <= xmax]["acc"]
            ax.set_xlim(-0.02 * xmax, xmax)
            ax.set_ylim(float(shown.quantile(0.02)) - 0.01, min(1.0, float(shown.max()) + 0.01))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    if audit and "range_low" in audit:
        axes[0].axvspan(audit["range_low"], audit["range_high"], color="#1f77b4", alpha=0.06)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(loc="lower left", fontsize=8)
    if audit and "score" in audit:
        fig.suptitle(
            f"Memorization audit: samples - better baseline at equal functional novelty "
            f"{audit['score']:+.3f} [{audit['ci_low']:+.3f}, {audit['ci_high']:+.3f}]",
            fontsize=10,
        )
    return fig, {"curves": cur.to_dict(orient="list")}
