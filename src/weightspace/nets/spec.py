"""The network spec and the parameter-name conventions everything in weightspace shares.

A population of ``M`` MLPs is a dict of stacked tensors (:data:`Params`) keyed by
``state_dict`` names with a leading model axis::

    params["layers.0.weight"]  # (M, out, in)
    params["layers.0.bias"]    # (M, out)

With weight normalization (w = g * v / ||v||, one g per output neuron) the trained parameters
are ``layers.{l}.weight_g`` (M, out) and ``layers.{l}.weight_v`` (M, out, in). The names are
built by :func:`weight_name` / :func:`bias_name` and read back as ``(W, b)`` pairs by
:func:`layers`; nothing else spells them out. :class:`UnitTransform` is the record of a
function-preserving map of each member (per-unit factors and permutations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import ConfigError

Params = dict[str, Tensor]  # stacked tensors keyed by state_dict name, (M, ...) each


@dataclass(frozen=True)
class UnitTransform:
    """A function-preserving map of each member: per-unit factors, then permutations.

    perms: name -> (M, n) LongTensor. factors: name -> (M, n) (sign flips and/or positive
    scales, in the member's own unit order), or None for none. Names are the hidden layers'
    permutation names ``P_l``. A plain record, here because a derived zoo stores one per member
    (:meth:`weightspace.zoo.store.Zoo.unit_transform`); the symmetry stage makes and applies
    them (:mod:`weightspace.symmetry.transforms`).
    """

    perms: dict[str, Tensor]
    factors: dict[str, Tensor] | None = None


def weight_name(layer: int, part: str = "") -> str:
    """``layers.{layer}.weight`` (``part="g"`` / ``"v"``: the weight-norm parameters)."""
    return f"layers.{layer}.weight" + (f"_{part}" if part else "")


def bias_name(layer: int) -> str:
    return f"layers.{layer}.bias"


def layers(params: Mapping[str, Tensor], spec: MLPSpec) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(W, b)`` of each layer in order: W ``(..., out, in)``, b ``(..., out)`` or None.

    Reads the effective ``weight`` entries: resolve weight norm first
    (:func:`weightspace.nets.forward.effective_params`).
    """
    for l in range(spec.n_layers):
        yield params[weight_name(l)], (params[bias_name(l)] if spec.bias else None)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,  # negative slope 0.01, as nn.LeakyReLU
    "identity": lambda x: x,
    "sine": torch.sin,  # SIREN's activation; w0 lives in the weights (weightspace.zoo.init)
}


class Sine(nn.Module):
    """``sin(x)``, elementwise: the sine activation as a module (PyTorch has none)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


# Modules with the same functions, for the plain-PyTorch twin.
_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
    "sine": Sine,
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
                shapes[weight_name(l, "g")] = (o,)
                shapes[weight_name(l, "v")] = (o, i)
            else:
                shapes[weight_name(l)] = (o, i)
            if self.bias:
                shapes[bias_name(l)] = (o,)
        return shapes

    def n_params(self) -> int:
        return sum(o * i + (o if self.bias else 0) for o, i in self.layer_shapes())
