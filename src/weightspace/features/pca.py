"""PCA of flat normalized weight vectors, fitted on the training split only: the linear
autoencoder of the latent's width, the evaluation's baseline for probes and reconstruction;
and the whitening map of standardized features (the statistics head's ``features.whiten``)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import Tensor

__all__ = ["fit_pca", "whitening"]


def fit_pca(x_train: np.ndarray, n_components: int, seed: int = 0) -> PCA:
    """PCA of the training vectors ``(N, D)`` with ``n_components`` components (at most
    ``min(N, D)``; the fitted ``n_components_`` says how many). Seeded, so the randomized
    solver scikit-learn picks for large inputs is reproducible."""
    x = np.asarray(x_train, dtype=np.float64)
    k = int(min(n_components, *x.shape))
    if k < 1:
        raise ValueError(f"PCA: need n_components >= 1 and a non-empty (N, D), got {x.shape}")
    # Exact SVD while it is cheap; scikit-learn's choice (randomized for large inputs) beyond.
    solver = "full" if x.size <= 10_000_000 else "auto"
    return PCA(n_components=k, svd_solver=solver, random_state=seed).fit(x)


def whitening(features: Tensor, eps: float) -> Tensor:
    """The ``(S, S)`` map ``V diag(1 / sqrt(λ + eps))`` of standardized features ``(N, S)``
    (covariance ``V diag(λ) Vᵀ``): an error ``e`` mapped by it, ``e @ map``, has each
    principal direction over its standard deviation (``eps`` added to the variances, so a
    direction of almost none does not count as much as the others)."""
    x = features.double() - features.double().mean(0)
    lam, v = torch.linalg.eigh(x.T @ x / max(len(x) - 1, 1))
    return (v / (lam.clamp_min(0) + eps).sqrt()).float()
