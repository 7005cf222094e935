"""Encoders: normalized flat weights ``(N, D)`` -> latents ``(N, latent_dim)``.

Each is built from a ``_target_`` + ``_partial_: true`` config (``conf/encoder/``)
that :class:`~weightspace.autoencoder.module.WeightAutoencoder` calls as
``partial(spec, latent_dim)`` — or, if the class sets ``reads_outputs``, the encoder maps the
network's outputs on the model's probe inputs ``(N, n_probe, out)`` and the partial also gets
``n_probe``. An equivariant encoder over each layer's weight tensor (neural functionals, then
invariant pooling) follows the same interface: add its class here and a
``conf/encoder/<kind>.yaml`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.autoencoder.blocks import mlp_layers, transformer_layer
from weightspace.errors import ConfigError
from weightspace.nets.layout import params_to_tokens, token_layout, unflatten_params
from weightspace.nets.spec import MLPSpec

__all__ = ["MLPEncoder", "ProbeEncoder", "TransformerEncoder"]


class MLPEncoder(nn.Module):
    """Fully connected encoder on the flat weight vector."""

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        hidden: Sequence[int] = (512, 256),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.net = mlp_layers(
            [spec.n_params(), *hidden, latent_dim], activation, dropout, layer_norm
        )

    def forward(self, flat: Tensor) -> Tensor:
        return self.net(flat)  # (N, D) -> (N, latent)


class ProbeEncoder(nn.Module):
    """Permutation-invariant by construction: an MLP on what the network computes on the
    model's probe inputs, not on its weights. Every weight-space symmetry that keeps the
    function (hidden-unit permutations, relu's rescaling) leaves the latent unchanged, and no
    alignment is needed; what the probe inputs do not exercise, it cannot see.

    Classifiers' outputs enter as log-probabilities, clamped at -30 and in units of 10 nats
    (a softmax shift changes nothing; confidence stays visible); regression outputs as they
    are."""

    reads_outputs = True

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        n_probe: int = 256,
        hidden: Sequence[int] = (512, 256),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.classes = spec.widths[-1] > 1
        self.net = mlp_layers(
            [n_probe * spec.widths[-1], *hidden, latent_dim], activation, dropout, layer_norm
        )

    def forward(self, outputs: Tensor) -> Tensor:  # (N, n_probe, out) -> (N, latent)
        if self.classes:
            outputs = outputs.log_softmax(-1).clamp_min(-30.0) / 10.0
        return self.net(outputs.flatten(1))


class TransformerEncoder(nn.Module):
    """Transformer over neuron tokens (incoming weights + bias), pooled into the latent.

    The tokens, and each token's layer and position ids, are the dataset's own
    (:func:`~weightspace.nets.layout.params_to_tokens`,
    :func:`~weightspace.nets.layout.token_layout`).
    ``token_embedding="per_layer"``: a Linear per layer on that layer's real entries;
    ``"shared"``: one Linear over the padded tokens (``d_tok = max fan-in + bias``), the
    layer told apart by the layer embedding only. ``pooling="mean"`` averages the neuron
    tokens; ``"tokens"`` prepends ``n_latent_tokens`` learned compression tokens and reads the
    latent from their outputs. Position embeddings mark a neuron's row in its layer; without
    them (``position_embedding=False``) and with mean pooling the encoder is invariant to
    reordering the tokens of a layer (not yet to the full symmetry, whose permutation also
    acts on the next layer's incoming weights).
    """

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.0,
        token_embedding: str = "per_layer",
        position_embedding: bool = True,
        pooling: str = "mean",
        n_latent_tokens: int = 4,
    ):
        super().__init__()
        if token_embedding not in ("per_layer", "shared"):
            raise ConfigError(f"token_embedding: '{token_embedding}' (choose per_layer or shared)")
        if pooling not in ("mean", "tokens"):
            raise ConfigError(f"pooling: '{pooling}' (choose mean or tokens)")
        self.spec = spec
        fan_ins = [i + int(spec.bias) for _, i in spec.layer_shapes()]
        if token_embedding == "per_layer":
            self.embed = nn.ModuleList(nn.Linear(f, d_model) for f in fan_ins)
        else:
            self.embed = nn.ModuleList([nn.Linear(max(fan_ins), d_model)])
        outs = [o for o, _ in spec.layer_shapes()]
        layout = token_layout(spec)
        self.register_buffer("layer_id", layout.layer_id, persistent=False)  # (T,)
        self.register_buffer("position_id", layout.position_id, persistent=False)  # (T,)
        self.layer_emb = nn.Embedding(spec.n_layers, d_model)
        self.pos_emb = nn.Embedding(max(outs), d_model) if position_embedding else None
        n_lat = n_latent_tokens if pooling == "tokens" else 0
        self.latent_tokens = nn.Parameter(torch.randn(n_lat, d_model) * 0.02) if n_lat else None
        self.blocks = nn.TransformerEncoder(
            transformer_layer(nn.TransformerEncoderLayer, d_model, n_heads, dropout),
            n_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,  # with norm_first it would only warn
        )
        self.head = nn.Linear(max(n_lat, 1) * d_model, latent_dim)

    def _layer_rows(self, tokens: Tensor) -> list[Tensor]:
        """Per layer, each neuron's real entries (incoming weights, then bias) of the padded
        tokens ``(N, T, d_tok)``: ``(N, out_l, in_l + bias)``."""
        rows, start = [], 0
        for out, fan_in in self.spec.layer_shapes():
            tok = tokens[:, start : start + out]  # (N, out_l, d_tok)
            rows.append(
                torch.cat([tok[..., :fan_in], tok[..., -1:]], -1)
                if self.spec.bias
                else tok[..., :fan_in]
            )
            start += out
        return rows

    def tokens(self, flat: Tensor) -> Tensor:
        """Embedded neuron tokens ``(N, T, d_model)``."""
        tokens = params_to_tokens(unflatten_params(flat, self.spec), self.spec)  # (N, T, d_tok)
        if len(self.embed) == 1:  # shared: the padded tokens as the datamodule makes them
            h = self.embed[0](tokens)
        else:
            rows = self._layer_rows(tokens)  # per layer (N, out_l, in_l + bias)
            h = torch.cat([emb(r) for emb, r in zip(self.embed, rows)], 1)  # (N, T, d)
        h = h + self.layer_emb(self.layer_id)
        if self.pos_emb is not None:
            h = h + self.pos_emb(self.position_id)
        return h

    def forward(self, flat: Tensor) -> Tensor:
        h = self.tokens(flat)  # (N, T, d)
        if self.latent_tokens is None:
            return self.head(self.blocks(h).mean(1))  # (N, latent)
        k = self.latent_tokens.shape[0]
        h = torch.cat([self.latent_tokens.expand(len(h), -1, -1), h], 1)  # (N, K + T, d)
        return self.head(self.blocks(h)[:, :k].flatten(1))  # (N, K * d) -> (N, latent)
