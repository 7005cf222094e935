"""Decoders: latents ``(N, latent_width)`` -> normalized flat weights ``(N, D)``.

Built like the encoders from a ``_target_`` + ``_partial_: true`` config
(``conf/decoder/``), called by the model as ``partial(spec, latent_width)``.

:class:`FieldDecoder` decodes to a *function* instead: the network's outputs at given inputs,
from the latent and the input (the model's ``field`` loss; no weights are produced).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.autoencoder.blocks import ACTIVATIONS, mlp_layers, transformer_layer
from weightspace.nets.layout import flatten_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name

__all__ = ["FieldDecoder", "MLPDecoder", "TransformerDecoder"]


class MLPDecoder(nn.Module):
    """Fully connected decoder to the flat weight vector."""

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        hidden: Sequence[int] = (256, 512),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.net = mlp_layers(
            [latent_dim, *hidden, spec.n_params()], activation, dropout, layer_norm
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (N, latent) -> (N, D)


def _rows_to_flat(rows: Sequence[Tensor], spec: MLPSpec) -> Tensor:
    """Per-layer rows ``(N, out_l, in_l + bias)`` (each neuron's incoming weights, then its
    bias) -> flat ``(N, D)``."""
    params: Params = {}
    for l, ((_, fan_in), r) in enumerate(zip(spec.layer_shapes(), rows)):
        params[weight_name(l)] = r[..., :fan_in]
        if spec.bias:
            params[bias_name(l)] = r[..., fan_in]
    return flatten_params(params, spec)


class TransformerDecoder(nn.Module):
    """One learned query per neuron attends to memory tokens made from the latent; a head per
    layer turns each query's output into that neuron's incoming weights and bias."""

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.0,
        n_memory_tokens: int = 4,
    ):
        super().__init__()
        self.spec = spec
        self.d_model = d_model
        self.n_memory = n_memory_tokens
        self.memory = nn.Linear(latent_dim, n_memory_tokens * d_model)
        n_tokens = sum(spec.widths[1:])
        self.queries = nn.Parameter(torch.randn(n_tokens, d_model) * 0.02)  # (T, d)
        self.blocks = nn.TransformerDecoder(
            transformer_layer(nn.TransformerDecoderLayer, d_model, n_heads, dropout),
            n_layers,
            norm=nn.LayerNorm(d_model),
        )
        self.heads = nn.ModuleList(
            nn.Linear(d_model, i + int(spec.bias)) for _, i in spec.layer_shapes()
        )

    def forward(self, z: Tensor) -> Tensor:
        n = len(z)
        memory = self.memory(z).view(n, self.n_memory, self.d_model)  # (N, K, d)
        h = self.blocks(self.queries.expand(n, -1, -1), memory)  # (N, T, d)
        rows, start = [], 0
        for head, (out, _) in zip(self.heads, self.spec.layer_shapes()):
            rows.append(head(h[:, start : start + out]))  # (N, out_l, in_l + bias)
            start += out
        return _rows_to_flat(rows, self.spec)  # (N, D)


class FieldDecoder(nn.Module):
    """A conditional neural field ``f(z, x)``: a latent ``z`` and an input ``x`` of the zoo's
    task -> the output the encoded network gives at ``x`` (inr2vec's decoder, here for any
    zoo: an INR's value at a pixel coordinate, a classifier's logits on an image).

    Trained to reproduce the original's outputs on the probe inputs, it asks the latent for
    what the network *computes* without asking it to pick one of the many weight vectors that
    compute it. The first layer is split, ``A z + B x``, so the ``N x n_probe`` pairs are never
    concatenated."""

    def __init__(
        self,
        latent_dim: int,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "gelu",
    ):
        super().__init__()
        if not hidden:
            raise ValueError("FieldDecoder: hidden needs at least one layer")
        self.from_latent = nn.Linear(latent_dim, hidden[0])
        self.from_input = nn.Linear(in_dim, hidden[0], bias=False)
        self.rest = nn.Sequential(
            nn.LayerNorm(hidden[0]),
            ACTIVATIONS[activation](),
            mlp_layers([*hidden, out_dim], activation, 0.0, True),
        )

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """``z (N, latent)``, ``x (P, in)`` -> ``(N, P, out)``."""
        h = self.from_latent(z)[:, None, :] + self.from_input(x)[None, :, :]  # (N, P, hidden)
        return self.rest(h)
