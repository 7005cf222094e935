"""Building blocks the encoders and decoders share: MLP stacks and pre-norm transformer layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from weightspace.errors import ConfigError

__all__ = ["ACTIVATIONS", "mlp_layers", "transformer_layer"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def mlp_layers(
    sizes: Sequence[int], activation: str, dropout: float, layer_norm: bool
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``; norm, activation and dropout between."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"activation: unknown '{activation}' (choose from {', '.join(ACTIVATIONS)})"
        )
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if layer_norm:
                layers.append(nn.LayerNorm(b))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def transformer_layer(kind: type[nn.Module], d_model: int, n_heads: int, dropout: float):
    """An ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (``kind``)."""
    # Pre-norm blocks train stably without a warmup, which matters for short zoo runs.
    return kind(
        d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
    )
