"""Conversions between weightspace's stacked parameters and other layouts.

- nfn (Zhou et al., neural functionals): ``WeightSpaceFeatures`` holds a tuple of weights
  ``(B, C, out, in)`` and a tuple of biases ``(B, C, out)``, one per layer. :func:`to_nfn`
  gives those two tuples (C=1), :func:`to_wsfeat` the nfn object itself (needs the ``nfn``
  package), :func:`from_nfn` goes back.
- Plain PyTorch: :func:`to_state_dicts` gives one ``state_dict`` per member, loadable into
  ``weightspace.nets.forward.MLP(spec)`` with ``strict=True``.

Every function takes stacked parameters ``{name: (B, ...)}`` or flat vectors ``(B, D)`` (a
single ``(D,)`` vector counts as B=1), as the weight dataset gives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from weightspace.nets.layout import flatten_params, unflatten_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name


def _as_params(x: Mapping[str, Tensor] | Tensor, spec: MLPSpec | None) -> Params:
    """Stacked ``weight``/``bias`` tensors ``{name: (B, ...)}`` from a dict or flat vectors."""
    if isinstance(x, Mapping):
        params = dict(x)
        if spec is None:  # infer what is needed from the names and shapes
            return params
    else:
        if spec is None:
            raise ValueError("flat vectors need the spec to be split into tensors")
        flat = x.unsqueeze(0) if x.dim() == 1 else x
        if flat.dim() != 2:
            raise ValueError(f"flat vectors must be (B, D) or (D,), got {tuple(x.shape)}")
        return unflatten_params(flat, spec)
    shapes = spec.param_shapes()
    for name, shape in shapes.items():
        if name not in params:
            raise KeyError(f"{name}: missing (have {sorted(params)})")
        p = params[name]
        if tuple(p.shape[1:]) != shape or p.dim() != len(shape) + 1:
            raise ValueError(
                f"{name}: shape {tuple(p.shape)}, expected (B, {', '.join(map(str, shape))})"
            )
    return {n: params[n] for n in shapes}


def _n_layers(params: Mapping[str, Tensor]) -> int:
    return sum(1 for n in params if n.startswith("layers.") and n.endswith(".weight"))


def to_nfn(
    x: Mapping[str, Tensor] | Tensor, spec: MLPSpec | None = None
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(weights, biases)`` in nfn's layout: ``(B, 1, out, in)`` and ``(B, 1, out)`` per layer.

    Without biases (``spec.bias=False``) the biases are zeros, as nfn layers need them.
    The tensors are views of the input where possible (no copy).
    """
    params = _as_params(x, spec)
    weights, biases = [], []
    for l in range(_n_layers(params)):
        w = params[weight_name(l)]  # (B, out, in)
        b = params.get(bias_name(l))  # (B, out)
        if b is None:
            b = w.new_zeros(w.shape[:2])
        weights.append(w.unsqueeze(1))
        biases.append(b.unsqueeze(1))
    return tuple(weights), tuple(biases)


def to_wsfeat(x: Mapping[str, Tensor] | Tensor, spec: MLPSpec | None = None) -> Any:
    """An ``nfn.common.WeightSpaceFeatures`` (requires the ``nfn`` package)."""
    try:
        from nfn.common import WeightSpaceFeatures
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_wsfeat needs the nfn package: pip install nfn") from e
    return WeightSpaceFeatures(*to_nfn(x, spec))


def from_nfn(
    features: Any, spec: MLPSpec | None = None, flat: bool = False, channel: int = 0
) -> Params | Tensor:
    """Stacked parameters (or flat ``(B, D)`` vectors with ``flat=True``) from nfn features.

    ``features``: a ``WeightSpaceFeatures`` or a ``(weights, biases)`` pair of tuples, with
    weights ``(B, C, out, in)`` and biases ``(B, C, out)``; ``channel`` picks one of C.
    Biases are dropped when ``spec.bias`` is False.
    """
    if hasattr(features, "weights") and hasattr(features, "biases"):
        weights, biases = features.weights, features.biases
    else:
        weights, biases = features
    if len(weights) != len(biases):
        raise ValueError(f"{len(weights)} weight tensors but {len(biases)} bias tensors")
    keep_bias = True if spec is None else spec.bias
    params: Params = {}
    for l, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 4 or b.dim() != 3:
            raise ValueError(
                f"layer {l}: expected weights (B, C, out, in) and biases (B, C, out), "
                f"got {tuple(w.shape)} and {tuple(b.shape)}"
            )
        params[weight_name(l)] = w[:, channel]
        if keep_bias:
            params[bias_name(l)] = b[:, channel]
    if spec is not None:
        params = _as_params(params, spec)
    if flat:
        if spec is None:
            raise ValueError("flat=True needs the spec")
        return flatten_params(params, spec)
    return params


def to_state_dicts(
    x: Mapping[str, Tensor] | Tensor, spec: MLPSpec | None = None
) -> list[dict[str, Tensor]]:
    """One ``state_dict`` per member (independent copies), in ``state_dict`` order."""
    params = _as_params(x, spec)
    names = list(spec.param_shapes()) if spec is not None else list(params)
    n = next(iter(params.values())).shape[0]
    return [{k: params[k][i].detach().clone() for k in names} for i in range(n)]


def from_state_dicts(state_dicts: list[Mapping[str, Tensor]]) -> Params:
    """Stack per-member ``state_dict`` s into ``{name: (B, ...)}``."""
    if not state_dicts:
        raise ValueError("no state dicts")
    return {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
