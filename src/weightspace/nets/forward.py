"""The one reference batched forward of stacked MLPs, and a member as a plain ``nn.Module``.

:func:`forward` serves zoo training, evaluation, the autoencoder's functional loss and the
analyses. :class:`MLP` is the same network as a plain module, so that a single zoo member loads
with ``load_state_dict(strict=True)``. The fast paths of zoo training (hand backward, fused
kernel, classes-first forward) are tested against :func:`forward`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from weightspace.nets.spec import (
    _ACTIVATION_MODULES,
    ACTIVATIONS,
    MLPSpec,
    Params,
    bias_name,
    weight_name,
)


def weight_norm_weight(g: Tensor, v: Tensor) -> Tensor:
    """w = g * v / ||v|| with one norm per output neuron (row of v). g: (..., out)."""
    return v * (g / torch.linalg.vector_norm(v, dim=-1)).unsqueeze(-1)


def effective_params(params: Mapping[str, Tensor], spec: MLPSpec) -> Params:
    """The ``weight``/``bias`` tensors the network computes with (resolves weight norm)."""
    out: Params = {}
    for l in range(spec.n_layers):
        if weight_name(l) in params:
            out[weight_name(l)] = params[weight_name(l)]
        else:
            g, v = params[weight_name(l, "g")], params[weight_name(l, "v")]
            out[weight_name(l)] = weight_norm_weight(g, v)
        if spec.bias:
            out[bias_name(l)] = params[bias_name(l)]
    return out


def forward(
    params: Mapping[str, Tensor], x: Tensor, spec: MLPSpec, activation: str | None = None
) -> Tensor:
    """Batched forward of ``M`` MLPs.

    params: stacked tensors, weights (M, out, in) (or weight_g / weight_v).
    x: (B, in) shared by all members, or (M, B, in) one batch per member.
    Returns (M, B, out_last).
    """
    act = ACTIVATIONS[activation or spec.activation]
    p = effective_params(params, spec)
    h = x
    for l in range(spec.n_layers):
        w = p[weight_name(l)]  # (M, out, in)
        b = p[bias_name(l)] if spec.bias else None
        if h.dim() == 2:
            # Shared input: one (B, in) @ (in, M*out) product instead of M small ones.
            m, o, i = w.shape
            flat = w.reshape(m * o, i).T
            h = torch.addmm(b.reshape(m * o), h, flat) if b is not None else h @ flat
            h = h.view(-1, m, o).transpose(0, 1)  # (M, B, out)
        elif b is not None:
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (M, B, out)
        else:
            h = torch.bmm(h, w.transpose(1, 2))
        if l < spec.n_layers - 1:
            h = act(h)
    return h


class MLP(nn.Module):
    """One zoo member as a plain module; its ``state_dict`` names match the zoo's."""

    def __init__(self, spec: MLPSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=spec.bias) for o, i in spec.layer_shapes())
        self.act = _ACTIVATION_MODULES[spec.activation]()

    def forward(self, x: Tensor) -> Tensor:
        for l, layer in enumerate(self.layers):
            x = layer(x)
            if l < len(self.layers) - 1:
                x = self.act(x)
        return x


def member_params(params: Mapping[str, Tensor], index: int) -> Params:
    """One member's tensors out of a stacked dict."""
    return {k: v[index] for k, v in params.items()}
