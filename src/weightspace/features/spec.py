"""The frozen :class:`FeatureSpec`: which hand-made invariant features of a network, their
names and width for an :class:`~weightspace.nets.spec.MLPSpec`, and their computation.

The per-layer statistics always (:mod:`~weightspace.features.statistics`), then, as the flags
ask, the log singular values of every weight matrix and of the layer products
(:mod:`~weightspace.features.spectra`; singular values below ``1e-6`` count as ``1e-6``), then
the function features on labelled probe inputs (:mod:`~weightspace.features.function`, with the
spec's activation). On a log scale the shape of a spectrum (ratios of singular values, which
training changes and the init scheme sets) is linear in the features.

    fs = FeatureSpec(spectrum=True, products=True)
    fs.width(spec) == len(fs.names(spec))
    x = fs.compute(params, spec)            # (N, fs.width(spec)) float64 numpy
    t = fs.compute_torch(params, spec)      # the same in the parameters' dtype, differentiable
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.features.function import function_feature_names, function_features_torch
from weightspace.features.spectra import (
    product_spectrum_names,
    product_spectrum_torch,
    spectrum_names,
    spectrum_torch,
)
from weightspace.features.statistics import (
    float64_rows,
    layer_shape_names,
    layer_shape_torch,
    layer_statistic_names,
    layer_statistics_torch,
)
from weightspace.nets.spec import MLPSpec

__all__ = ["FeatureSpec"]

Probe = tuple[Tensor, Tensor]  # (inputs (B, in), labels (B,) or regression targets (B, out))


@dataclass(frozen=True)
class FeatureSpec:
    """Which invariant features: the per-layer statistics always; ``shape``: each weight
    matrix's scale-free ones (log RMS, mean and quantiles over the RMS); ``spectrum``: every weight
    matrix's log singular values; ``products``: those of the layer products W_l..W_0;
    ``function``: the function features on a probe ``(inputs, labels)``."""

    spectrum: bool = False
    products: bool = False
    function: bool = False
    shape: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):  # plain bools, so the spec's dict is a plain value
            object.__setattr__(self, f.name, bool(getattr(self, f.name)))

    def names(self, spec: MLPSpec) -> list[str]:
        """Column names, in the order :meth:`compute` returns them."""
        return [
            *layer_statistic_names(spec),
            *(layer_shape_names(spec) if self.shape else []),
            *(spectrum_names(spec) if self.spectrum else []),
            *(product_spectrum_names(spec) if self.products else []),
            *(function_feature_names(spec) if self.function else []),
        ]

    def width(self, spec: MLPSpec) -> int:
        """Number of features of one network of ``spec``."""
        return len(self.names(spec))

    def _probe(self, probe: Probe | None) -> Probe | None:
        if not self.function:
            return None
        if probe is None:
            raise ValueError("FeatureSpec(function=True): needs probe=(inputs, labels)")
        return probe

    def compute_torch(
        self, params: Mapping[str, Tensor], spec: MLPSpec, probe: Probe | None = None
    ) -> Tensor:
        """The features of ``N`` stacked networks ``(N, width)``, in the parameters' dtype and
        on their device; differentiable except for the function features. ``probe`` is read
        with ``function`` only."""
        probe = self._probe(probe)
        parts = [layer_statistics_torch(params, spec)]
        if self.shape:
            parts.append(layer_shape_torch(params, spec))
        if self.spectrum:
            parts.append(spectrum_torch(params, spec).clamp_min(1e-6).log())
        if self.products:
            parts.append(product_spectrum_torch(params, spec).clamp_min(1e-6).log())
        if probe is not None:
            parts.append(function_features_torch(params, spec, *probe))
        return torch.cat(parts, 1)

    def compute(
        self, params: Mapping[str, Tensor], spec: MLPSpec, probe: Probe | None = None
    ) -> np.ndarray:
        """:meth:`compute_torch` in float64 on the CPU, as a ``(N, width)`` numpy array (in
        chunks of rows, :func:`~weightspace.features.statistics.float64_rows`). Pass the
        networks' own (denormalized) weights."""
        probe = self._probe(probe)
        if probe is not None:
            probe = (probe[0].double().cpu(), probe[1].cpu())
        return float64_rows(
            lambda p: self.compute_torch(p, spec, probe), params, spec, self.width(spec)
        )

    def to_dict(self) -> dict[str, bool]:
        d = asdict(self)
        if not self.shape:  # only when on: earlier runs' dicts unchanged
            del d["shape"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FeatureSpec:
        return cls(**dict(d or {}))
