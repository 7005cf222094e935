"""Per-layer weight statistics (Unterthiner et al., 2020, "Predicting Neural Network Accuracy
from Weights"): for every weight and bias tensor its mean, standard deviation, quantiles
0 / 25 / 50 / 75 / 100 % and L2 norm (Frobenius for a weight matrix), 8 numbers per tensor,
invariant to hidden-unit permutations. Their paper's strongest predictor is gradient boosting
on exactly these features; the evaluation's "stats" baseline is :func:`layer_statistics`.

:func:`layer_shape_torch`: each weight matrix on a scale-free footing — its log root mean
square, and its mean and quantiles over it (7 numbers): what a matrix's entries look like
whatever its scale (a uniform init's largest entry is ~1.7 RMS, a Gaussian's ~3.5), a
direction of their own rather than a small difference of two large, scale-driven statistics.
Biases are left out: a zoo's are often all zero at init, where no shape exists.

Also the float64 driver every numpy feature goes through (:func:`float64_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from weightspace.nets.forward import effective_params
from weightspace.nets.spec import MLPSpec, Params

__all__ = [
    "QUANTILES",
    "SHAPE_STATISTICS",
    "STATISTICS",
    "float64_rows",
    "layer_shape_names",
    "layer_shape_torch",
    "layer_statistic_names",
    "layer_statistics",
    "layer_statistics_torch",
]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATISTICS = ("mean", "std", "q0", "q25", "q50", "q75", "q100", "l2")
SHAPE_STATISTICS = ("log_rms", "mean/rms", "q0/rms", "q25/rms", "q50/rms", "q75/rms", "q100/rms")


def layer_statistic_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`layer_statistics`: ``"{tensor}/{statistic}"``, tensor-major."""
    return [f"{name}/{stat}" for name in spec.param_shapes() for stat in STATISTICS]


def layer_statistics_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Per-tensor statistics of ``N`` stacked networks ``(N, 8 * n_tensors)``, in the
    parameters' dtype and on their device, and differentiable.

    For each tensor of ``spec.param_shapes()`` (``layers.{l}.weight``, ``layers.{l}.bias``,
    in ``state_dict`` order; weight-normalized parameters are resolved to the effective
    weight first) the columns are :data:`STATISTICS`: mean, population std (ddof 0),
    quantiles with linear interpolation (numpy's default) and the L2 / Frobenius norm.
    """
    eff = effective_params(params, spec)
    q = None
    columns: list[Tensor] = []
    for name in spec.param_shapes():
        x = eff[name].flatten(1)  # (N, n_entries)
        if q is None:
            q = torch.tensor(QUANTILES, dtype=x.dtype, device=x.device)
        columns += [
            x.mean(1, keepdim=True),
            x.std(1, correction=0, keepdim=True),
            torch.quantile(x, q, dim=1).T,  # (N, 5), linear interpolation as numpy
            torch.linalg.vector_norm(x, dim=1, keepdim=True),
        ]
    return torch.cat(columns, 1)


def _weight_names(spec: MLPSpec) -> list[str]:
    return [name for name in spec.param_shapes() if name.endswith(".weight")]


def layer_shape_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`layer_shape_torch`: ``"{weight}/{statistic}"``, layer-major."""
    return [f"{name}/{stat}" for name in _weight_names(spec) for stat in SHAPE_STATISTICS]


def layer_shape_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Per weight matrix scale-free statistics of ``N`` stacked networks ``(N, 7 * layers)``
    (:data:`SHAPE_STATISTICS`: log RMS, then mean and quantiles over the RMS; an RMS below
    ``1e-12`` counts as ``1e-12``), differentiable, in the parameters' dtype."""
    eff = effective_params(params, spec)
    columns: list[Tensor] = []
    for name in _weight_names(spec):
        x = eff[name].flatten(1)
        rms = x.square().mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        q = torch.tensor(QUANTILES, dtype=x.dtype, device=x.device)
        columns += [rms.log(), x.mean(1, keepdim=True) / rms, torch.quantile(x, q, dim=1).T / rms]
    return torch.cat(columns, 1)


def float64_rows(
    features: Callable[[Params], Tensor],
    params: Mapping[str, Tensor],
    spec: MLPSpec,
    width: int,
) -> np.ndarray:
    """``features`` of ``N`` stacked networks as a ``(N, width)`` float64 array: computed on
    detached float64 CPU copies, rows in chunks small enough for ``torch.quantile`` (which
    takes at most 2**24 entries at once). Pass the networks' own (denormalized) weights."""
    n = len(next(iter(params.values())))
    chunk = max(1, (1 << 22) // max(math.prod(s) for s in spec.param_shapes().values()))
    parts = [
        features({k: v[lo : lo + chunk].detach().double().cpu() for k, v in params.items()})
        for lo in range(0, n, chunk)
    ]
    return torch.cat(parts).numpy() if parts else np.zeros((0, width))


def layer_statistics(params: Mapping[str, Tensor], spec: MLPSpec) -> np.ndarray:
    """:func:`layer_statistics_torch` of ``N`` stacked networks as ``(N, 8 * n_tensors)``
    float64 (names in :func:`layer_statistic_names`): the field's baseline. More features
    (spectra, function features) come from :class:`weightspace.features.spec.FeatureSpec`."""
    return float64_rows(
        lambda p: layer_statistics_torch(p, spec), params, spec, 8 * len(spec.param_shapes())
    )
