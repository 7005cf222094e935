"""Decoders: latents ``(N, latent_width)`` -> normalized flat weights ``(N, D)``.

Built like the encoders from a ``_target_`` + ``_partial_: true`` config
(``conf/decoder/``), called by the model as ``partial(spec, latent_width)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.autoencoder.blocks import mlp_layers, transformer_layer
from weightspace.nets.layout import flatten_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name

__all__ = ["MLPDecoder", "TransformerDecoder"]


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
