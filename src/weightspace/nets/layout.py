"""Layouts of a network's parameters: one flat vector, or one token per neuron.

Flat: ``(*lead, D)`` in ``state_dict`` order, ``D = spec.n_params()`` (effective parameters;
``trainable=True``: the tensors the optimizer updates). :func:`weight_distance` compares flat
vectors.
Tokens: ``(*lead, T, d_tok)``, one token per neuron, layer after layer: its incoming weights in
``tokens[:fan_in]`` and its bias in the last slot ``tokens[-1]`` (so a bias is always in the
same channel), zeros in between; ``T = sum(widths[1:])``, ``d_tok = max(widths[:-1]) + 1``
(``+ 0`` without biases). :func:`token_layout` gives each token's layer and position ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.nets.forward import effective_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name


def _lead(t: Tensor, shape: Sequence[int]) -> tuple[int, ...]:
    """Leading (batch, view, ...) dims of ``t`` in front of a tensor shape ``shape``."""
    return tuple(t.shape[: t.dim() - len(shape)])


def flatten_params(params: Mapping[str, Tensor], spec: MLPSpec, trainable: bool = False) -> Tensor:
    """Stacked parameters ``{name: (*lead, *shape)}`` -> ``(*lead, D)`` in ``state_dict`` order
    of ``spec.param_shapes(trainable)``.

    ``trainable=False`` flattens the effective weights (weight norm resolved), ``D =
    spec.n_params()``; ``trainable=True`` the tensors the optimizer updates (``weight_g``,
    ``weight_v`` in place of ``weight`` under weight normalization).
    """
    src = params if trainable else effective_params(params, spec)
    shapes = spec.param_shapes(trainable)
    parts = []
    for name, shape in shapes.items():
        p = src[name]
        parts.append(p.reshape(*_lead(p, shape), -1))
    return torch.cat(parts, dim=-1)


def unflatten_params(flat: Tensor, spec: MLPSpec, trainable: bool = False) -> Params:
    """``(*lead, D)`` -> ``{name: (*lead, *shape)}``; the inverse of :func:`flatten_params`."""
    shapes = spec.param_shapes(trainable)
    sizes = [math.prod(s) for s in shapes.values()]
    if flat.shape[-1] != sum(sizes):
        raise ValueError(f"expected {sum(sizes)} values per member, got {flat.shape[-1]}")
    lead = flat.shape[:-1]
    chunks = torch.split(flat, sizes, dim=-1)
    return {n: c.reshape(*lead, *s) for (n, s), c in zip(shapes.items(), chunks)}


def _as_matrix(x: Mapping[str, Tensor] | Tensor, names: list[str] | None) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.dim() == 2 else x.reshape(1, -1)
    return torch.cat([x[k].reshape(x[k].shape[0], -1) for k in names], dim=1)


def weight_distance(a: Mapping[str, Tensor] | Tensor, b: Mapping[str, Tensor] | Tensor) -> Tensor:
    """Relative L2 distance per member: ``||a - b|| / sqrt(||a|| ||b||)``, (M,).

    ``a``, ``b``: flat (M, D) / (1, D) vectors or stacked parameter dicts with the same keys
    (pass effective parameters, e.g. :func:`flatten_params`, not a dict holding both ``weight``
    and ``weight_g``/``weight_v``). Symmetric, invariant to a common rescaling of both, 0 for
    identical weights, ``sqrt(2)`` for orthogonal vectors of equal norm.
    """
    names = sorted(a) if not isinstance(a, Tensor) else None  # dicts: in sorted-name order
    xa = _as_matrix(a, names).double()
    xb = _as_matrix(b, names).double()
    num = torch.linalg.vector_norm(xa - xb, dim=1)
    den = (torch.linalg.vector_norm(xa, dim=1) * torch.linalg.vector_norm(xb, dim=1)).sqrt()
    return torch.where(num == 0, 0.0, num / den)


@dataclass(frozen=True)
class TokenLayout:
    """Where each neuron's token comes from; ``T`` tokens of ``token_dim`` entries."""

    layer_id: Tensor  # (T,) long
    position_id: Tensor  # (T,) long
    mask: Tensor  # (T, token_dim) bool: True on real weights and the bias slot

    @property
    def n_tokens(self) -> int:
        return int(self.layer_id.numel())

    @property
    def token_dim(self) -> int:
        return int(self.mask.shape[-1])


def token_dim(spec: MLPSpec) -> int:
    """Largest fan-in, plus one slot for the bias."""
    return max(spec.widths[:-1]) + int(spec.bias)


def token_layout(spec: MLPSpec) -> TokenLayout:
    d = token_dim(spec)
    layer_id, position_id, masks = [], [], []
    for l, (out, fan_in) in enumerate(spec.layer_shapes()):
        layer_id.append(torch.full((out,), l, dtype=torch.long))
        position_id.append(torch.arange(out))
        m = torch.zeros(out, d, dtype=torch.bool)
        m[:, :fan_in] = True
        if spec.bias:
            m[:, -1] = True
        masks.append(m)
    return TokenLayout(torch.cat(layer_id), torch.cat(position_id), torch.cat(masks))


def params_to_tokens(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Stacked parameters -> ``(*lead, T, d_tok)``: one token per neuron, layer after layer."""
    d = token_dim(spec)
    parts = []
    for l, (out, fan_in) in enumerate(spec.layer_shapes()):
        w = params[weight_name(l)]  # (*lead, out, in)
        lead = _lead(w, (out, fan_in))
        tok = w.new_zeros(*lead, out, d)
        tok[..., :fan_in] = w
        if spec.bias:
            tok[..., -1] = params[bias_name(l)]
        parts.append(tok)
    return torch.cat(parts, dim=-2)


def tokens_to_params(tokens: Tensor, spec: MLPSpec) -> Params:
    """``(*lead, T, d_tok)`` -> stacked parameters; the inverse of :func:`params_to_tokens`."""
    n_tok, d = sum(spec.widths[1:]), token_dim(spec)
    if tuple(tokens.shape[-2:]) != (n_tok, d):
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)}, the spec needs (..., {n_tok}, {d})"
        )
    out: Params = {}
    start = 0
    for l, (rows, fan_in) in enumerate(spec.layer_shapes()):
        tok = tokens[..., start : start + rows, :]
        out[weight_name(l)] = tok[..., :fan_in]
        if spec.bias:
            out[bias_name(l)] = tok[..., -1]
        start += rows
    return out
