"""The MLP of a zoo: its spec, a plain ``nn.Module`` twin, and one batched functional forward.

A population of ``M`` MLPs is a dict of stacked tensors keyed by ``state_dict`` names with a
leading model axis::

    params["layers.0.weight"]  # (M, out, in)
    params["layers.0.bias"]    # (M, out)

With weight normalization (w = g * v / ||v||, one g per output neuron) the trained parameters
are ``layers.{l}.weight_g`` (M, out) and ``layers.{l}.weight_v`` (M, out, in), and
:func:`effective_params` turns them into the ``weight`` the network actually uses.

:func:`forward` is the one batched forward used everywhere: zoo training, evaluation, the
autoencoder's functional loss and the analyses. :class:`MLP` is the same network as a plain
module, so that a single zoo member loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,  # negative slope 0.01, as nn.LeakyReLU
    "identity": lambda x: x,
}

# Modules with the same functions, for the plain-PyTorch twin.
_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


@dataclass(frozen=True)
class MLPSpec:
    """Architecture of a zoo member: layer widths including input and output."""

    widths: tuple[int, ...]
    activation: str = "relu"
    bias: bool = True
    weight_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ConfigError(
                f"model.widths: need at least an input and an output width, all >= 1; "
                f"got {list(self.widths)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation: unknown '{self.activation}' (choose from {', '.join(ACTIVATIONS)})"
            )

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of each linear layer."""
        return [(o, i) for i, o in zip(self.widths[:-1], self.widths[1:])]

    def param_shapes(self, trainable: bool = False) -> dict[str, tuple[int, ...]]:
        """Shapes of one member's tensors, in ``state_dict`` order.

        ``trainable=False`` lists the effective parameters (``weight``, ``bias``) a plain
        :class:`MLP` holds; ``trainable=True`` lists what the optimizer updates (``weight_g``
        and ``weight_v`` in place of ``weight`` under weight normalization).
        """
        shapes: dict[str, tuple[int, ...]] = {}
        for l, (o, i) in enumerate(self.layer_shapes()):
            if trainable and self.weight_norm:
                shapes[f"layers.{l}.weight_g"] = (o,)
                shapes[f"layers.{l}.weight_v"] = (o, i)
            else:
                shapes[f"layers.{l}.weight"] = (o, i)
            if self.bias:
                shapes[f"layers.{l}.bias"] = (o,)
        return shapes

    def n_params(self) -> int:
        return sum(o * i + (o if self.bias else 0) for o, i in self.layer_shapes())


def weight_norm_weight(g: Tensor, v: Tensor) -> Tensor:
    """w = g * v / ||v|| with one norm per output neuron (row of v). g: (..., out)."""
    return v * (g / torch.linalg.vector_norm(v, dim=-1)).unsqueeze(-1)


def effective_params(params: Mapping[str, Tensor], spec: MLPSpec) -> dict[str, Tensor]:
    """The ``weight``/``bias`` tensors the network computes with (resolves weight norm)."""
    out: dict[str, Tensor] = {}
    for l in range(spec.n_layers):
        if f"layers.{l}.weight" in params:
            out[f"layers.{l}.weight"] = params[f"layers.{l}.weight"]
        else:
            g, v = params[f"layers.{l}.weight_g"], params[f"layers.{l}.weight_v"]
            out[f"layers.{l}.weight"] = weight_norm_weight(g, v)
        if spec.bias:
            out[f"layers.{l}.bias"] = params[f"layers.{l}.bias"]
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
        w = p[f"layers.{l}.weight"]  # (M, out, in)
        b = p[f"layers.{l}.bias"] if spec.bias else None
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


def member_params(params: Mapping[str, Tensor], index: int) -> dict[str, Tensor]:
    """One member's tensors out of a stacked dict."""
    return {k: v[index] for k, v in params.items()}
