"""Per-tensor standardization of networks, fitted on the training split.

:class:`LayerNormalizer` holds one mean and one std per ``state_dict`` tensor and applies them
to stacked parameter dicts, flat vectors ``(..., D)`` and neuron tokens ``(..., T, d_tok)``;
:class:`_Moments` accumulates the running moments it is fitted from (read in chunks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from weightspace.errors import ConfigError
from weightspace.nets.layout import flatten_params, params_to_tokens, token_dim, token_layout
from weightspace.nets.spec import MLPSpec, Params

if TYPE_CHECKING:
    from weightspace.data.dataset import WeightDataset


class LayerNormalizer:
    """Per parameter tensor standardization: ``(x - mean[name]) / std[name]``.

    One mean and one std per ``state_dict`` tensor (each layer's weight and bias separately),
    fitted on the training split only (:meth:`fit`). Works on stacked parameter dicts, flat
    vectors ``(..., D)`` and tokens ``(..., T, d_tok)`` (token padding stays zero), and is
    inverted by :meth:`denormalize`. A tensor whose std is below ``eps`` (e.g. constant
    initializations only) keeps std 1, so it is only centred. :meth:`to_dict` gives plain
    Python values for checkpoints; :meth:`from_dict` reads them back.
    """

    def __init__(
        self,
        spec: MLPSpec,
        mean: Mapping[str, float],
        std: Mapping[str, float],
        count: int = 0,
    ):
        self.spec = MLPSpec(spec.widths, bias=spec.bias)
        names = list(self.spec.param_shapes())
        if set(mean) != set(names) or set(std) != set(names):
            raise ValueError(f"normalizer stats must cover exactly {names}")
        self.mean = {n: float(mean[n]) for n in names}
        self.std = {n: float(std[n]) for n in names}
        self.count = int(count)
        self._flat: tuple[Tensor, Tensor] | None = None
        self._tokens: tuple[Tensor, Tensor] | None = None

    # ---- fitting
    @classmethod
    def fit(
        cls,
        dataset: WeightDataset,
        indices: Iterable[int] | None = None,
        chunk_size: int = 4096,
        eps: float = 1e-8,
    ) -> LayerNormalizer:
        """Statistics over ``dataset`` items ``indices`` (default: all), read in chunks.

        Uses the parameters after the dataset's ``transform`` and before augmentation.
        """
        idx = np.arange(len(dataset)) if indices is None else np.asarray(list(indices), int)
        if len(idx) == 0:
            raise ConfigError("normalizer: cannot fit on an empty training split")
        # Chunks in (zoo, epoch, member) order read few (zoo, epoch) groups each.
        idx = idx[dataset._read_order(idx)]
        acc = _Moments()
        for lo in range(0, len(idx), chunk_size):
            acc.update(dataset.params(idx[lo : lo + chunk_size]))
        return acc.normalizer(dataset.spec, eps)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Tensor], spec: MLPSpec, eps: float = 1e-8
    ) -> LayerNormalizer:
        """Statistics of stacked parameters already in memory."""
        acc = _Moments()
        acc.update(params)
        return acc.normalizer(spec, eps)

    # ---- parameter dicts
    def normalize_params(self, params: Mapping[str, Tensor]) -> Params:
        return {n: (p - self.mean[n]) / self.std[n] for n, p in params.items()}

    def denormalize_params(self, params: Mapping[str, Tensor]) -> Params:
        return {n: p * self.std[n] + self.mean[n] for n, p in params.items()}

    # ---- flat vectors and tokens: precomputed per-entry mean / std
    def _flat_stats(self) -> tuple[Tensor, Tensor]:
        if self._flat is None:
            shapes = self.spec.param_shapes()
            mean = {n: torch.full(s, self.mean[n]) for n, s in shapes.items()}
            std = {n: torch.full(s, self.std[n]) for n, s in shapes.items()}
            self._flat = flatten_params(mean, self.spec), flatten_params(std, self.spec)
        return self._flat

    def _token_stats(self) -> tuple[Tensor, Tensor]:
        if self._tokens is None:
            shapes = self.spec.param_shapes()
            mean = {n: torch.full(s, self.mean[n]) for n, s in shapes.items()}
            std = {n: torch.full(s, self.std[n]) for n, s in shapes.items()}
            pad = ~token_layout(self.spec).mask
            tok_std = params_to_tokens(std, self.spec).masked_fill(pad, 1.0)
            self._tokens = params_to_tokens(mean, self.spec), tok_std
        return self._tokens

    def normalize_flat(self, x: Tensor) -> Tensor:
        mean, std = self._flat_stats()
        return (x - mean.to(x)) / std.to(x)

    def denormalize_flat(self, x: Tensor) -> Tensor:
        mean, std = self._flat_stats()
        return x * std.to(x) + mean.to(x)

    def normalize_tokens(self, x: Tensor) -> Tensor:
        mean, std = self._token_stats()
        return (x - mean.to(x)) / std.to(x)

    def denormalize_tokens(self, x: Tensor) -> Tensor:
        mean, std = self._token_stats()
        return x * std.to(x) + mean.to(x)

    def _kind(self, x: Tensor) -> str:
        layout_shape = (sum(self.spec.widths[1:]), token_dim(self.spec))
        if x.dim() >= 2 and tuple(x.shape[-2:]) == layout_shape:
            # A single-layer net with one output has T=1, d_tok=D: both layouts coincide.
            return "tokens"
        if x.shape[-1] == self.spec.n_params():
            return "flat"
        raise ValueError(
            f"tensor of shape {tuple(x.shape)} is neither flat (..., {self.spec.n_params()}) "
            f"nor tokens (..., {layout_shape[0]}, {layout_shape[1]})"
        )

    def normalize(self, x: Tensor | Mapping[str, Tensor]) -> Tensor | Params:
        """A parameter dict, flat vectors ``(..., D)`` or tokens ``(..., T, d_tok)``."""
        if isinstance(x, Mapping):
            return self.normalize_params(x)
        return self.normalize_tokens(x) if self._kind(x) == "tokens" else self.normalize_flat(x)

    def denormalize(self, x: Tensor | Mapping[str, Tensor]) -> Tensor | Params:
        if isinstance(x, Mapping):
            return self.denormalize_params(x)
        if self._kind(x) == "tokens":
            return self.denormalize_tokens(x)
        return self.denormalize_flat(x)

    # ---- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.spec.widths),
            "bias": self.spec.bias,
            "mean": dict(self.mean),
            "std": dict(self.std),
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerNormalizer:
        spec = MLPSpec(tuple(d["widths"]), bias=bool(d["bias"]))
        return cls(spec, d["mean"], d["std"], d.get("count", 0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerNormalizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        stats = ", ".join(f"{n}: {self.mean[n]:.3g}±{self.std[n]:.3g}" for n in self.mean)
        return f"LayerNormalizer({stats})"


class _Moments:
    """Running count / mean / sum of squared deviations per tensor (Chan et al. merge)."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}
        self.mean: dict[str, float] = {}
        self.m2: dict[str, float] = {}

    def update(self, params: Mapping[str, Tensor]) -> None:
        for name, p in params.items():
            x = p.detach().reshape(-1).double()
            nb = x.numel()
            if nb == 0:
                continue
            mb = float(x.mean())
            m2b = float(((x - mb) ** 2).sum())
            na, ma, m2a = self.n.get(name, 0), self.mean.get(name, 0.0), self.m2.get(name, 0.0)
            n = na + nb
            delta = mb - ma
            self.n[name] = n
            self.mean[name] = ma + delta * nb / n
            self.m2[name] = m2a + m2b + delta * delta * na * nb / n

    def normalizer(self, spec: MLPSpec, eps: float) -> LayerNormalizer:
        std = {}
        for name, m2 in self.m2.items():
            s = math.sqrt(m2 / self.n[name])
            std[name] = s if s > eps else 1.0
        first, shape = next(iter(spec.param_shapes().items()))
        count = self.n.get(first, 0) // math.prod(shape)  # networks seen
        return LayerNormalizer(spec, self.mean, std, count)
