"""The one reference batched forward of stacked MLPs, and a member as a plain ``nn.Module``.

:func:`forward` serves zoo training, evaluation, the autoencoder's functional loss and the
analyses. :class:`MLP` is the same network as a plain module, so that a single zoo member loads
with ``load_state_dict(strict=True)``. The fast paths of zoo training (hand backward, fused
kernel, classes-first forward) are tested against :func:`forward`. :func:`forward_groups` runs
a population mixing activations, each activation's members with their own spec.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

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


def spec_groups(specs: MLPSpec | Sequence[MLPSpec], n: int) -> list[tuple[MLPSpec, Tensor]]:
    """``(spec, member indices)`` per distinct spec of ``n`` stacked networks: ``specs`` is one
    spec for all, or one per network (a population mixing activations). Groups come in order
    of first appearance, indices ascending."""
    if isinstance(specs, MLPSpec):
        return [(specs, torch.arange(n))]
    specs = list(specs)
    if len(specs) != n:
        raise ValueError(f"{len(specs)} specs for {n} networks")
    groups: dict[MLPSpec, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(s, []).append(i)
    return [(s, torch.tensor(idx)) for s, idx in groups.items()]


def forward_groups(
    params: Mapping[str, Tensor],
    x: Tensor,
    specs: MLPSpec | Sequence[MLPSpec],
    budget: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """:func:`forward` of stacked networks that may differ in activation: ``(member indices
    (m,), outputs (m, B, out))`` per :func:`spec_groups` group, each group through its own
    spec. ``budget``: chunks of as many members as keep the widest activation ``(m, B,
    width)`` within that many entries (None: a group at once). The chunking depends only on
    ``specs`` and the number of networks, so two populations chunk alike."""
    n = next(iter(params.values())).shape[0]
    for s, idx in spec_groups(specs, n):
        chunk = len(idx) if budget is None else max(1, budget // (len(x) * max(s.widths[1:])))
        for lo in range(0, len(idx), chunk):
            sel = idx[lo : lo + chunk]
            yield sel, forward({k: v[sel] for k, v in params.items()}, x, s)


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
