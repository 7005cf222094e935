"""Initialization of a population, one private random stream per member.

Every member draws its initial weights from a ``torch.Generator`` seeded with its own seed,
layer by layer (weight, then bias), so a member's initialization depends on its seed and
hyperparameters only: not on which other members share its shard, nor on the device.

Schemes (all multiplied by ``init_scale``):

- ``normal``: N(0, init_std^2); ``init_std=1`` is the classic "standard normal" setting.
- ``uniform``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for ``nn.Linear``.
- ``xavier``: N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio, 2010).
- ``kaiming``: N(0, 2 / fan_in) (He et al., 2015), suited to ReLU.
- ``orthogonal``: a random (semi-)orthogonal matrix (Saxe et al., 2014).
- ``constant``: every weight equals ``init_value``: no symmetry breaking at all.
- ``siren``: SIREN's init (Sitzmann et al., 2020) for sine networks with first-layer frequency
  ``w0`` (the ``w0`` hyperparameter, default 30). SIREN computes ``sin(w0 (W x + b))``; a zoo
  stores the effective weights of a plain ``sine`` MLP, ``sin(W' x + b')`` with ``W' = w0 W``,
  ``b' = w0 b`` at every layer followed by a sine, so every reader and the symmetry toolkit
  see an ordinary network. Drawn in SIREN's parametrization, then scaled: first layer
  ``W ~ U(-1/in, 1/in)``, later layers ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``, so the stored
  ``W'`` is ``U(-w0/in, w0/in)``, then ``U(-sqrt(6/in), sqrt(6/in))``, and the last (linear)
  layer keeps ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``. Biases follow ``bias_init`` (SIREN's
  code: ``uniform``), times ``w0`` before a sine. (Adam on the effective weights reaches the
  INR zoos' PSNR targets, so training needs no SIREN parametrization of its own.)
- ``siren_hidden``: ``siren`` with the hidden-layer rule at the first layer too, stored ``W'``
  ``U(-sqrt(6/in), sqrt(6/in))`` (with ``in = 2`` coordinates: frequencies below 1.8 instead
  of up to ``w0/in = 15``). How the field's INR datasets were made (DWSNets' INR class leaves
  SIREN's first-layer rule unused; zero biases): the init is a smooth, low-frequency function,
  so fitting an image moves the weights far from their start and they carry the image.

Biases: ``zeros``, ``normal`` (N(0, init_std^2) * scale), ``uniform`` (PyTorch's default),
``constant`` (``init_value`` * scale).
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name

INIT_SCHEMES = (
    "normal",
    "uniform",
    "xavier",
    "kaiming",
    "orthogonal",
    "constant",
    "siren",
    "siren_hidden",
)
SIREN_SCHEMES = ("siren", "siren_hidden")
DEFAULT_W0 = 30.0  # SIREN's first-layer frequency
BIAS_INITS = ("zeros", "normal", "uniform", "constant")


def _weight(scheme: str, out: int, inp: int, std: float, value: float, gen: torch.Generator):
    if scheme == "normal":
        return torch.randn(out, inp, generator=gen) * std
    if scheme == "uniform":
        bound = 1.0 / math.sqrt(inp)
        return (torch.rand(out, inp, generator=gen) * 2 - 1) * bound
    if scheme == "xavier":
        return torch.randn(out, inp, generator=gen) * math.sqrt(2.0 / (inp + out))
    if scheme == "kaiming":
        return torch.randn(out, inp, generator=gen) * math.sqrt(2.0 / inp)
    if scheme == "orthogonal":
        return torch.nn.init.orthogonal_(torch.empty(out, inp), generator=gen)
    if scheme == "constant":
        return torch.full((out, inp), float(value))
    raise ValueError(f"unknown init scheme {scheme!r}")


def _bias(kind: str, out: int, inp: int, std: float, value: float, gen: torch.Generator):
    if kind == "zeros":
        return torch.zeros(out)
    if kind == "normal":
        return torch.randn(out, generator=gen) * std
    if kind == "uniform":
        return (torch.rand(out, generator=gen) * 2 - 1) / math.sqrt(inp)
    if kind == "constant":
        return torch.full((out,), float(value))
    raise ValueError(f"unknown bias init {kind!r}")


def _siren_weight(first: bool, out: int, inp: int, w0: float, gen: torch.Generator):
    """A weight in SIREN's parametrization (multiply by w0 for the effective one); ``first``:
    SIREN's first-layer rule."""
    bound = 1.0 / inp if first else math.sqrt(6.0 / inp) / w0
    return (torch.rand(out, inp, generator=gen) * 2 - 1) * bound


def init_member(spec: MLPSpec, hp: pd.Series | dict) -> Params:
    """Initial effective parameters (``weight``, ``bias``) of one member, float32 on CPU."""
    gen = torch.Generator().manual_seed(int(hp["seed"]))
    scale = float(hp["init_scale"])
    std, value = float(hp["init_std"]), float(hp["init_value"])
    siren = hp["init"] in SIREN_SCHEMES
    w0 = float(hp.get("w0", DEFAULT_W0)) if siren else 1.0
    params: Params = {}
    for l, (o, i) in enumerate(spec.layer_shapes()):
        # SIREN: w0 moves into the effective weights of the layers a sine follows.
        f = w0 * scale if l < spec.n_layers - 1 else scale
        if siren:
            first = l == 0 and hp["init"] == "siren"
            params[weight_name(l)] = _siren_weight(first, o, i, w0, gen) * f
        else:
            params[weight_name(l)] = _weight(hp["init"], o, i, std, value, gen) * scale
        if spec.bias:
            params[bias_name(l)] = _bias(hp["bias_init"], o, i, std, value, gen) * (
                f if siren else scale
            )
    return params


def init_population(spec: MLPSpec, members: pd.DataFrame) -> Params:
    """Stacked *trainable* parameters of the members, in ``spec.param_shapes(trainable=True)``.

    Under weight normalization, v starts as the initial weight and g as its row norms, so the
    effective initial weight is exactly the scheme's draw.
    """
    per_member = [init_member(spec, row) for row in members.to_dict("records")]
    stacked = {k: torch.stack([p[k] for p in per_member]) for k in per_member[0]}
    if not spec.weight_norm:
        return stacked
    out: Params = {}
    for l in range(spec.n_layers):
        w = stacked[weight_name(l)]
        out[weight_name(l, "g")] = torch.linalg.vector_norm(w, dim=-1)
        out[weight_name(l, "v")] = w
        if spec.bias:
            out[bias_name(l)] = stacked[bias_name(l)]
    return out
