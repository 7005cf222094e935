"""Spectra: the singular values of every weight matrix, and of the layer products.

Both are invariant to hidden-unit permutations (a matrix's also to any rotation of a hidden
layer; a product cancels every hidden permutation). Not baselines of the field: the
autoencoder can read them next to the statistics, on a log scale
(:class:`weightspace.features.spec.FeatureSpec`), and the evaluation probes them as the honest
reference for such a latent. The init scheme shows in a spectrum (an orthogonal matrix's is
flat) more than in any quantile.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.nets.forward import effective_params
from weightspace.nets.spec import MLPSpec, weight_name

__all__ = ["product_spectrum_names", "product_spectrum_torch", "spectrum_names", "spectrum_torch"]


def spectrum_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`spectrum_torch`: ``"{weight}/sv{k}"``, largest first."""
    return [
        f"{name}/sv{k}"
        for name, shape in spec.param_shapes().items()
        if len(shape) == 2
        for k in range(min(shape))
    ]


def spectrum_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Singular values of every weight matrix of ``N`` stacked networks, each in descending
    order, weight matrices in ``state_dict`` order: ``(N, sum of min(out, in))``, in the
    parameters' dtype and device, differentiable (weight normalization resolved first)."""
    eff = effective_params(params, spec)
    return torch.cat(
        [torch.linalg.svdvals(eff[n]) for n, s in spec.param_shapes().items() if len(s) == 2], 1
    )


def product_spectrum_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`product_spectrum_torch`: ``"W{l}..W0/sv{k}"``."""
    w = spec.widths
    return [f"W{l}..W0/sv{k}" for l in range(1, spec.n_layers) for k in range(min(w[l + 1], w[0]))]


def product_spectrum_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Singular values of the layer products ``W_l ... W_1 W_0`` for l >= 1 (the end-to-end
    linear maps of the network's prefixes, biases and activations left out), each in
    descending order: ``(N, sum of min(width_{l+1}, width_0))``. Permutation-invariant, as a
    product cancels every hidden permutation; how far they are from a product of random
    matrices reflects how far training went (and how fast)."""
    eff = effective_params(params, spec)
    prod, out = eff[weight_name(0)], []  # (N, w1, w0)
    for l in range(1, spec.n_layers):
        prod = eff[weight_name(l)] @ prod  # (N, w_{l+1}, w0)
        out.append(torch.linalg.svdvals(prod))
    return torch.cat(out, 1) if out else prod.new_zeros(len(prod), 0)
