"""Generation: new networks sampled from the latent space, against the zoo they came from.

A :class:`LatentDensity` (a Gaussian, or a kernel density) is fitted to latents
(:func:`fit_latent_density`, optionally to the :func:`top_fraction` by accuracy) and sampled;
:func:`generation_metrics` sets the decoded samples' accuracies next to the zoo's, and each
sample's distance to its nearest training network (:func:`nearest_neighbour_distances`)
against the zoo's own nearest-neighbour spread: a generator that copies its training set is
not generating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from weightspace.evaluation.scores import as_2d, quartiles


@dataclass(frozen=True)
class LatentDensity:
    """A density over latents to sample new networks from.

    ``gaussian``: ``N(mean, cov)`` (a singular covariance, fewer points than dimensions, is
    sampled in its support). ``kde``: a Gaussian kernel on every fitted point with the
    covariance ``bandwidth² * cov`` (scipy's ``gaussian_kde``; Scott's factor by default).
    ``selected``: which of the latents given to :func:`fit_latent_density` were used.
    """

    kind: str
    mean: np.ndarray  # (d,)
    cov: np.ndarray  # (d, d)
    points: np.ndarray  # (n, d) the fitted latents
    bandwidth: float
    selected: np.ndarray  # (n,) indices into the latents passed to the fit

    def _root(self) -> np.ndarray:
        """L with L L^T = cov, from the eigendecomposition (works for a singular cov)."""
        vals, vecs = np.linalg.eigh(self.cov)
        return vecs * np.sqrt(np.clip(vals, 0.0, None))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` latents ``(n, d)`` float64, reproducible for a seed."""
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((n, len(self.mean))) @ self._root().T
        if self.kind == "gaussian":
            return self.mean + noise
        return self.points[rng.integers(len(self.points), size=n)] + self.bandwidth * noise


def top_fraction(values: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``ceil(fraction * n)`` largest finite values (at least one), best first."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(v))
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * len(ok)))
    return ok[np.argsort(-v[ok], kind="stable")[:k]]


def fit_latent_density(
    z: np.ndarray | Tensor,
    kind: str = "gaussian",
    accuracy: np.ndarray | None = None,
    fraction: float = 0.3,
    bandwidth: float | None = None,
) -> LatentDensity:
    """Fit a :class:`LatentDensity` to latents ``z`` (N, d); with ``accuracy`` (N,), to the
    top ``fraction`` of them by accuracy only (the networks worth generating more of)."""
    if kind not in ("gaussian", "kde"):
        raise ValueError(f"density kind {kind!r} (choose gaussian or kde)")
    x = as_2d(z)
    sel = np.arange(len(x)) if accuracy is None else top_fraction(accuracy, fraction)
    pts = x[sel]
    if len(pts) < 2:
        raise ValueError(f"a latent density needs at least 2 points, got {len(pts)}")
    n, d = pts.shape
    mean = pts.mean(0)
    cov = np.atleast_2d(np.cov(pts, rowvar=False))
    bw = float(bandwidth) if bandwidth is not None else n ** (-1.0 / (d + 4))  # Scott
    return LatentDensity(kind, mean, cov, pts, bw, sel)


@torch.no_grad()
def nearest_neighbour_distances(
    queries: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    query_groups: np.ndarray | None = None,
    reference_groups: np.ndarray | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """L2 distance ``(n_queries,)`` from each query to its nearest reference vector, skipping
    references of the query's own group (e.g. other checkpoints of the same member, or the
    query itself when queries are references). Float64."""
    q = torch.as_tensor(as_2d(queries))
    r = torch.as_tensor(as_2d(reference))
    out = np.empty(len(q))
    r2 = (r**2).sum(1)
    for s in range(0, len(q), chunk):
        qb = q[s : s + chunk]
        d2 = (qb**2).sum(1, keepdim=True) + r2 - 2 * qb @ r.T  # (b, n_ref)
        if query_groups is not None and reference_groups is not None:
            same = query_groups[s : s + chunk, None] == reference_groups[None, :]
            d2[torch.from_numpy(same)] = math.inf
        out[s : s + chunk] = d2.clamp_min(0).min(1).values.sqrt().numpy()
    return out


def generation_metrics(
    samples: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    sample_acc: np.ndarray,
    zoo_acc: np.ndarray,
    reference_groups: np.ndarray | None = None,
    copy_tol: float = 0.05,
    max_queries: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Sampled networks against the zoo they were learned from.

    ``samples`` (n, D) and ``reference`` (N, D): flat vectors in one space (the normalized
    one); ``reference_groups`` (N,): member of each reference row, so that a training
    network's nearest *other* network is never its own other checkpoint. ``sample_acc`` /
    ``zoo_acc``: accuracies of the untrained samples and of the zoo's networks.

    Returns accuracy quartiles (``sample_acc_*``, ``zoo_acc_*``), the samples' distances to
    their nearest training network (``nn_*``) next to the zoo's nearest-neighbour spread
    (``zoo_nn_*``, at most ``max_queries`` reference rows as queries), ``nn_ratio`` (median
    over median), ``copy_fraction`` (samples closer than ``copy_tol`` times the zoo's median
    spread to a training network) and ``copies_training_set`` (1.0 if that fraction is at
    least one half).
    """
    ref = as_2d(reference)
    groups = np.arange(len(ref)) if reference_groups is None else np.asarray(reference_groups)
    nn = nearest_neighbour_distances(samples, ref)
    rng = np.random.default_rng(seed)
    q = np.sort(rng.permutation(len(ref))[:max_queries])
    zoo_nn = nearest_neighbour_distances(ref[q], ref, groups[q], groups)
    zoo_nn = zoo_nn[np.isfinite(zoo_nn)]  # a single member has no other neighbour
    spread = float(np.median(zoo_nn)) if len(zoo_nn) else float("nan")
    copies = float((nn <= copy_tol * spread).mean()) if math.isfinite(spread) else float("nan")
    return {
        "n_samples": float(len(nn)),
        **quartiles(sample_acc, "sample_acc"),
        **quartiles(zoo_acc, "zoo_acc"),
        **quartiles(nn, "nn"),
        **quartiles(zoo_nn, "zoo_nn"),
        "nn_ratio": float(np.median(nn)) / spread if spread > 0 else float("nan"),
        "copy_fraction": copies,
        "copies_training_set": float(copies >= 0.5) if math.isfinite(copies) else float("nan"),
    }
