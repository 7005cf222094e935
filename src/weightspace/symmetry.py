"""Weight-space symmetries of the zoo's MLPs: permutations, canonical forms and alignment.

Two runs of the same MLP end with weights that look unrelated largely because the function
does not see the order of hidden units. With ``a`` the activation, hidden unit ``i`` of layer
``l`` computes ``a(W_l[i] . h + b_l[i])`` and feeds ``W_{l+1}[:, i]``; the network is unchanged
when

- the units of a hidden layer are **permuted** (rows of ``W_l``, ``b_l`` and columns of
  ``W_{l+1}`` with one permutation), for every activation;
- a unit is multiplied by a **factor** ``f`` (incoming weights and bias times ``f``, outgoing
  weights divided by ``f``) whenever ``a(f z) = f a(z)``: ``f = -1`` for odd activations
  (tanh, identity), any ``f > 0`` for positively homogeneous ones (relu, leaky_relu,
  identity);
- under weight normalization (``w = g v / ||v||``) a row of ``v`` is rescaled, or ``g`` and
  that row of ``v`` are both negated.

Everything here works on **stacked** parameters: dicts of tensors keyed by ``state_dict``
names with a leading member axis ``M`` (:mod:`weightspace.nets.forward`). Parameters may be the
effective ones (``weight``, ``bias``), the trainable ones of a weight-normalized population
(``weight_g``, ``weight_v``, ``bias``), or both; a transform is applied consistently to
whatever names are present, while its decisions (sort keys, matching similarities) are taken
on the effective weights. The activation is ``spec.activation``: one population shares one.

Conventions:

- A permutation of hidden layer ``l`` is named ``P_l`` and stored as a LongTensor ``(M, n)``
  (or ``(n,)`` shared by all members). Applying ``perm`` makes new unit ``i`` the old unit
  ``perm[i]``: ``W_l[perm]``, ``b_l[perm]``, ``W_{l+1}[:, perm]``.
- Per-unit factors ``(M, n)`` keyed by the same names scale units as described above.
- A :class:`UnitTransform` applies its factors first (in the member's own frame), then its
  permutations; :func:`undo_transform` maps transformed weights (e.g. decoded ones) back
  to the member's frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from weightspace.cli import progress_bar
from weightspace.nets.forward import effective_params, forward
from weightspace.nets.spec import ACTIVATIONS, MLPSpec

__all__ = [
    "HOMOGENEOUS_ACTIVATIONS",
    "ODD_ACTIVATIONS",
    "SIGN_KEYS",
    "SORT_KEYS",
    "Matching",
    "PermutationSpec",
    "UnitTransform",
    "activation_matching",
    "align_to_reference",
    "apply_permutation",
    "apply_transform",
    "augment",
    "canonical_scale",
    "canonical_signs",
    "canonical_weight_norm",
    "canonicalize",
    "compose",
    "compose_transforms",
    "flatten",
    "hidden_activations",
    "identity_permutations",
    "invert_permutation",
    "merge_many",
    "mlp_permutation_spec",
    "perm_name",
    "random_permutations",
    "random_transform",
    "rescale_units",
    "sort_units",
    "undo_transform",
    "unflatten",
    "weight_distance",
    "weight_matching",
]

Params = dict[str, Tensor]
Perms = dict[str, Tensor]

# a(-z) = -a(z): a unit's sign can be flipped.
ODD_ACTIVATIONS = frozenset({"tanh", "identity"})
# a(c z) = c a(z) for c > 0: a unit's positive scale can be moved to its outgoing weights.
HOMOGENEOUS_ACTIVATIONS = frozenset({"relu", "leaky_relu", "identity"})

SORT_KEYS = ("incoming_norm", "bias", "outgoing_norm", "lexicographic")
SIGN_KEYS = ("incoming_sum", "bias")


# --------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class PermutationSpec:
    """Which tensor axes each hidden-unit permutation acts on.

    ``perm_to_axes["P_l"]`` lists ``(param name, axis)`` pairs, axes counted without the
    member axis; ``axes_to_perm[name]`` gives, per axis of that parameter, the permutation
    acting on it or ``None``. ``sizes["P_l"]`` is the width of hidden layer ``l``.
    """

    perm_to_axes: dict[str, tuple[tuple[str, int], ...]]
    axes_to_perm: dict[str, tuple[str | None, ...]]
    sizes: dict[str, int]


def perm_name(layer: int) -> str:
    """Name of the permutation of hidden layer ``layer`` (the output of linear ``layer``)."""
    return f"P_{layer}"


def _axes(spec: MLPSpec, names: list[str]) -> dict[str, tuple[str | None, ...]]:
    n_hidden = spec.n_layers - 1
    out: dict[str, tuple[str | None, ...]] = {}
    for name in names:
        _, l_str, kind = name.split(".")
        l = int(l_str)
        rows = perm_name(l) if l < n_hidden else None  # the output layer is never permuted
        cols = perm_name(l - 1) if l > 0 else None  # nor is the input
        out[name] = (rows, cols) if kind in ("weight", "weight_v") else (rows,)
    return out


def _build(spec: MLPSpec, axes_to_perm: dict[str, tuple[str | None, ...]]) -> PermutationSpec:
    sizes = {perm_name(l): spec.widths[l + 1] for l in range(spec.n_layers - 1)}
    perm_to_axes: dict[str, list[tuple[str, int]]] = {p: [] for p in sizes}
    for name, perms in axes_to_perm.items():
        for axis, p in enumerate(perms):
            if p is not None:
                perm_to_axes[p].append((name, axis))
    return PermutationSpec({p: tuple(a) for p, a in perm_to_axes.items()}, axes_to_perm, sizes)


def mlp_permutation_spec(spec: MLPSpec, trainable: bool = False) -> PermutationSpec:
    """The permutation spec of ``spec``'s parameters, named as ``spec.param_shapes(trainable)``.

    Hidden layer ``l`` (``0 .. n_layers - 2``) has ``P_l`` of size ``widths[l + 1]`` acting on
    axis 0 of ``layers.{l}.weight`` (or ``weight_g`` / ``weight_v``) and ``layers.{l}.bias``,
    and on axis 1 of ``layers.{l+1}.weight`` (or ``weight_v``).
    """
    return _build(spec, _axes(spec, list(spec.param_shapes(trainable))))


@functools.lru_cache(maxsize=64)
def _any_spec(spec: MLPSpec) -> PermutationSpec:
    """A spec covering effective and trainable names together (a checkpoint may hold both)."""
    names = list(spec.param_shapes(False))
    wn = MLPSpec(spec.widths, spec.activation, spec.bias, weight_norm=True)
    names += [k for k in wn.param_shapes(True) if k not in names]
    return _build(spec, _axes(spec, names))


# --------------------------------------------------------------------------- permutations
def _n_members(params: Mapping[str, Tensor]) -> int:
    return next(iter(params.values())).shape[0]


def _unit_view(f: Tensor, ndim: int, dim: int) -> Tensor:
    """Per-unit values (M, n) or (n,) shaped to broadcast along ``dim`` of an (M, ...) tensor."""
    if f.dim() == 1:
        f = f.unsqueeze(0)
    shape = [f.shape[0]] + [1] * (ndim - 1)
    shape[dim] = f.shape[1]
    return f.reshape(shape)


def _take(x: Tensor, idx: Tensor, dim: int) -> Tensor:
    """``x`` (M, ...) indexed along ``dim`` by one index per member (M, n) or a shared (n,)."""
    if idx.dim() == 1:
        return x.index_select(dim, idx)
    if x.shape[0] != idx.shape[0]:
        if x.shape[0] != 1:
            raise ValueError(f"{x.shape[0]} members but permutations for {idx.shape[0]}")
        x = x.expand(idx.shape[0], *x.shape[1:])  # one network, many permuted copies
    size = (*x.shape[:dim], idx.shape[1], *x.shape[dim + 1 :])
    return torch.gather(x, dim, _unit_view(idx, x.dim(), dim).expand(size))


def apply_permutation(ps: PermutationSpec, perms: Mapping[str, Tensor], params: Params) -> Params:
    """Permute hidden units: every axis of every parameter gathered by its permutation.

    perms: name -> (M, n) (one permutation per member) or (n,) (shared); permutations
    missing from ``perms`` are the identity. Every name in ``params`` must be in ``ps``.
    """
    # Per-member permutations of a single network make M copies of all its tensors.
    m = max((p.shape[0] for p in perms.values() if p.dim() == 2), default=1)
    out: Params = {}
    for name, x in params.items():
        if x.shape[0] == 1 and m > 1:
            x = x.expand(m, *x.shape[1:]).contiguous()
        if name not in ps.axes_to_perm:
            known = ", ".join(ps.axes_to_perm)
            raise KeyError(f"{name!r} is not in the permutation spec ({known})")
        for axis, p in enumerate(ps.axes_to_perm[name]):
            if p is not None and p in perms:
                x = _take(x, perms[p].to(x.device), axis + 1)
        out[name] = x
    return out


def invert_permutation(perms: Mapping[str, Tensor]) -> Perms:
    """The permutations that undo ``perms``: ``inv[perm[i]] = i``."""
    out: Perms = {}
    for k, p in perms.items():
        ar = torch.arange(p.shape[-1], device=p.device).expand_as(p)
        out[k] = torch.empty_like(p).scatter_(-1, p, ar)
    return out


def _gather_last(p: Tensor, q: Tensor) -> Tensor:
    """``p[q]`` along the last axis, broadcasting shared (n,) and per-member (M, n)."""
    if p.dim() == 1 and q.dim() == 1:
        return p[q]
    m = max(p.shape[0] if p.dim() == 2 else 1, q.shape[0] if q.dim() == 2 else 1)
    return p.expand(m, p.shape[-1]).gather(-1, q.expand(m, q.shape[-1]))


def compose(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> Perms:
    """One permutation per name equal to applying ``first`` and then ``second``.

    After ``first`` unit ``i`` holds old unit ``first[i]``; after ``second`` it holds
    ``first[second[i]]``.
    """
    out = dict(first)
    for k, q in second.items():
        out[k] = q if k not in first else _gather_last(first[k], q)
    return out


def identity_permutations(
    ps: PermutationSpec, n_members: int, device: torch.device | str | None = None
) -> Perms:
    """``arange`` per member: (M, n) for every permutation of ``ps``."""
    return {
        p: torch.arange(n, device=device).expand(n_members, n).clone() for p, n in ps.sizes.items()
    }


def random_permutations(
    ps: PermutationSpec, n_members: int, generator: torch.Generator | None = None
) -> Perms:
    """One uniformly random permutation per member and hidden layer: (M, n) each."""
    return {
        p: torch.rand(n_members, n, generator=generator).argsort(dim=-1)
        for p, n in ps.sizes.items()
    }


# --------------------------------------------------------------------------- unit factors
def rescale_units(params: Params, spec: MLPSpec, factors: Mapping[str, Tensor]) -> Params:
    """Multiply each hidden unit's incoming weights and bias by ``f`` and divide its outgoing
    weights by ``f``.

    factors: name -> (M, n) or (n,) nonzero values. The function is preserved when
    ``a(f z) = f a(z)``: ``f = +-1`` for odd activations, ``f > 0`` for positively homogeneous
    ones. Under weight normalization a row factor goes to ``g`` (its magnitude) and to the row
    of ``v`` (its sign, so ``g`` keeps its sign); a column factor rescales columns of ``v`` and
    ``g`` absorbs the change of the row norms, so that ``g v / ||v||`` changes exactly as the
    effective weight does.
    """
    out = dict(params)
    n_hidden = spec.n_layers - 1
    for l in range(spec.n_layers):
        f_row = factors.get(perm_name(l)) if l < n_hidden else None
        f_col = factors.get(perm_name(l - 1)) if l > 0 else None
        if f_row is None and f_col is None:
            continue
        pre = f"layers.{l}."
        if pre + "weight" in params:
            w = params[pre + "weight"]  # (M, out, in)
            if f_row is not None:
                w = w * _unit_view(f_row.to(w), 3, 1)
            if f_col is not None:
                w = w / _unit_view(f_col.to(w), 3, 2)
            out[pre + "weight"] = w
        if pre + "bias" in params and f_row is not None:
            b = params[pre + "bias"]  # (M, out)
            out[pre + "bias"] = b * _unit_view(f_row.to(b), 2, 1)
        if pre + "weight_v" in params:
            g, v = params[pre + "weight_g"], params[pre + "weight_v"]  # (M, out), (M, out, in)
            if f_row is not None:
                f = f_row.to(v)
                g = g * _unit_view(f.abs(), 2, 1)
                v = v * _unit_view(torch.where(f < 0, -1.0, 1.0).to(v), 3, 1)
            if f_col is not None:
                v_new = v / _unit_view(f_col.to(v), 3, 2)
                # Sign flips leave the squares, hence the norms, bit-identical: ratio exactly 1.
                norm = torch.linalg.vector_norm
                g, v = g * (norm(v_new, dim=-1) / norm(v, dim=-1)), v_new
            out[pre + "weight_g"], out[pre + "weight_v"] = g, v
    return out


@dataclass(frozen=True)
class UnitTransform:
    """A function-preserving map of each member: per-unit factors, then permutations.

    perms: name -> (M, n) LongTensor. factors: name -> (M, n) (sign flips and/or positive
    scales, in the member's own unit order), or None for none.
    """

    perms: dict[str, Tensor]
    factors: dict[str, Tensor] | None = None


def apply_transform(params: Params, spec: MLPSpec, t: UnitTransform) -> Params:
    """``P(D theta)``: rescale units by ``t.factors``, then permute them by ``t.perms``."""
    if t.factors is not None:
        params = rescale_units(params, spec, t.factors)
    return apply_permutation(_any_spec(spec), t.perms, params)


def undo_transform(params: Params, spec: MLPSpec, t: UnitTransform) -> Params:
    """Map transformed parameters (e.g. decoded from the aligned frame) back to the member's
    own frame: the inverse of :func:`apply_transform`."""
    params = apply_permutation(_any_spec(spec), invert_permutation(t.perms), params)
    if t.factors is not None:
        params = rescale_units(params, spec, {k: 1.0 / f for k, f in t.factors.items()})
    return params


def compose_transforms(first: UnitTransform, second: UnitTransform) -> UnitTransform:
    """The transform equal to applying ``first`` and then ``second``."""
    perms = compose(first.perms, second.perms)
    if first.factors is None and second.factors is None:
        return UnitTransform(perms)
    factors = dict(first.factors or {})
    inv = invert_permutation(first.perms)
    for k, f2 in (second.factors or {}).items():
        # second's factor of unit i acts on first's unit perm1[i]: bring it to the member frame.
        f2 = _gather_last(f2, inv[k]).to(f2) if k in inv else f2
        factors[k] = f2 * factors[k] if k in factors else f2
    return UnitTransform(perms, factors)


def _is_identity(t: UnitTransform) -> bool:
    for p in t.perms.values():
        if not torch.equal(p, torch.arange(p.shape[-1], device=p.device).expand_as(p)):
            return False
    return t.factors is None or all(bool((f == 1).all()) for f in t.factors.values())


def random_transform(
    spec: MLPSpec,
    n_members: int,
    generator: torch.Generator | None = None,
    sign_flips: bool = True,
    dtype: torch.dtype = torch.float32,
) -> UnitTransform:
    """A random permutation per member and hidden layer, plus random sign flips (probability
    1/2 per unit) when ``sign_flips`` and the activation is odd."""
    ps = _any_spec(spec)
    perms = random_permutations(ps, n_members, generator)
    if not (sign_flips and spec.activation in ODD_ACTIVATIONS):
        return UnitTransform(perms)
    factors = {
        p: torch.where(torch.rand(n_members, n, generator=generator) < 0.5, -1.0, 1.0).to(dtype)
        for p, n in ps.sizes.items()
    }
    return UnitTransform(perms, factors)


def augment(
    params: Params,
    spec: MLPSpec,
    generator: torch.Generator | None = None,
    sign_flips: bool = True,
) -> Params:
    """A random function-preserving view of every member (for contrastive learning):
    :func:`random_transform` applied in one vectorized pass."""
    x = next(iter(params.values()))
    t = random_transform(spec, x.shape[0], generator, sign_flips, x.dtype)
    t = UnitTransform(
        {k: p.to(x.device) for k, p in t.perms.items()},
        None if t.factors is None else {k: f.to(x.device) for k, f in t.factors.items()},
    )
    return apply_transform(params, spec, t)


# --------------------------------------------------------------------------- canonical forms
def _invariant_sum(x: Tensor, dim: int = -1, ordered: bool = False) -> Tensor:
    """Sum along ``dim`` in float64 over sorted values: bit-identical for any ordering of
    the summands, so keys of a permuted copy equal the original's exactly. ``ordered``: the
    summands are in a fixed order already (the input features, or a layer sorted before),
    so the sort is skipped."""
    x = x.double()
    return (x if ordered else x.sort(dim=dim).values).sum(dim)


def _layer(eff: Params, spec: MLPSpec, l: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """Incoming weights (M, n, in), bias (M, n) or None and outgoing weights (M, out, n)."""
    w = eff[f"layers.{l}.weight"]
    b = eff[f"layers.{l}.bias"] if spec.bias else None
    return w, b, eff[f"layers.{l + 1}.weight"]


def _lexsort_desc(keys: list[Tensor]) -> Tensor:
    """Per-member order (M, n) sorting units by ``keys`` (each (M, n)), largest first,
    the first key most significant."""
    m, n = keys[0].shape
    primary = keys[0].sort(dim=1, descending=True, stable=True)
    if n < 2 or bool((primary.values[:, 1:] != primary.values[:, :-1]).all()):
        return primary.indices  # no ties: the tie-breaking keys cannot matter
    # Least-significant-first stable sorts (radix sort): the last sort decides, ties keep
    # the order left by the less significant keys.
    order = torch.arange(n, device=keys[0].device).expand(m, n)
    for key in reversed(keys):
        idx = key.gather(1, order).sort(dim=1, descending=True, stable=True).indices
        order = order.gather(1, idx)
    return order


def _sort_keys(eff: Params, spec: MLPSpec, l: int, key: str) -> list[Tensor]:
    w, b, w_out = _layer(eff, spec, l)
    # Layers are sorted from the input up: the columns of this one are in canonical order.
    incoming_sq = _invariant_sum(w.double() ** 2, ordered=True)
    if b is not None:
        incoming_sq = incoming_sq + b.double() ** 2
    if key == "incoming_norm":
        primary = [incoming_sq]  # the square orders as the norm
    elif key == "outgoing_norm":
        primary = [_invariant_sum(w_out.double() ** 2, dim=1)]
    elif key == "bias":
        if b is None:
            raise ValueError("sort key 'bias': the network has no biases")
        primary = [b]
    elif key == "lexicographic":
        primary = []
    else:
        raise ValueError(f"unknown sort key {key!r} (choose from {', '.join(SORT_KEYS)})")
    # Ties: the incoming row (its columns are already in canonical order, layers are sorted
    # from the input up), the bias, then the outgoing weights as a sorted multiset (their
    # rows are not canonical yet, their sorted values are).
    ties = list(w.unbind(-1)) + ([b] if b is not None else [])
    ties += list(w_out.sort(dim=1, descending=True).values.unbind(1))
    return primary + ties


def sort_units(params: Params, spec: MLPSpec, key: str = "incoming_norm") -> tuple[Params, Perms]:
    """Sort the hidden units of every layer by ``key``, largest first.

    Keys: ``incoming_norm`` (norm of incoming weights and bias), ``bias``, ``outgoing_norm``
    (norm of outgoing weights) or ``lexicographic`` (the incoming row). Ties are broken by
    the incoming row, the bias and the outgoing weights, so any permuted copy of a network
    gets exactly (bit for bit, for effective parameters) the same canonical form. Returns the
    sorted parameters and the permutations (M, n) applied.
    """
    ps = _any_spec(spec)
    out = dict(params)
    eff = effective_params(params, spec)
    perms: Perms = {}
    for l in range(spec.n_layers - 1):
        order = _lexsort_desc(_sort_keys(eff, spec, l, key))  # (M, n)
        p = {perm_name(l): order}
        perms.update(p)
        # Sorting layer l reorders the columns of layer l + 1 before that layer is keyed.
        out = apply_permutation(ps, p, out)
        eff = apply_permutation(ps, p, eff)
    return out, perms


def _first_nonzero_sign(keys: list[Tensor]) -> Tensor:
    """Sign of the first key that is nonzero, per unit; +1 when all are zero."""
    s = torch.zeros_like(keys[0])
    for k in keys:
        s = torch.where(s == 0, torch.sign(k), s)
    return torch.where(s == 0, 1.0, s)


def canonical_signs(
    params: Params, spec: MLPSpec, key: str = "incoming_sum"
) -> tuple[Params, dict[str, Tensor]]:
    """Flip hidden units of odd activations (tanh, identity) so that ``key`` is positive.

    ``incoming_sum``: sum of incoming weights plus bias; ``bias``: the bias. Where the key is
    exactly zero the sign of the next nonzero odd statistic decides (sum of cubes of the
    incoming weights and bias, sum of the outgoing weights, sum of their cubes). Layers are
    processed from the input up, as flipping layer ``l`` changes the rows of layer ``l+1``.
    Returns the parameters and the factors (M, n) of +-1 applied.
    """
    if spec.activation not in ODD_ACTIVATIONS:
        raise ValueError(
            f"sign flips preserve the function only for odd activations "
            f"({', '.join(sorted(ODD_ACTIVATIONS))}), not {spec.activation!r}"
        )
    if key not in SIGN_KEYS:
        raise ValueError(f"unknown sign key {key!r} (choose from {', '.join(SIGN_KEYS)})")
    if key == "bias" and not spec.bias:
        raise ValueError("sign key 'bias': the network has no biases")
    out = dict(params)
    eff = effective_params(params, spec)
    signs: dict[str, Tensor] = {}
    for l in range(spec.n_layers - 1):
        w, b, w_out = _layer(eff, spec, l)
        b64 = b.double() if b is not None else torch.zeros(w.shape[:2], dtype=torch.float64)
        first = l == 0  # the columns of layer 0 are the inputs: never permuted
        incoming = _invariant_sum(w, ordered=first) + b64
        cubes = _invariant_sum(w.double() ** 3, ordered=first) + b64**3
        outgoing = _invariant_sum(w_out, dim=1)
        outgoing_cubes = _invariant_sum(w_out.double() ** 3, dim=1)
        primary = b64 if key == "bias" else incoming
        s = _first_nonzero_sign([primary, incoming, cubes, outgoing, outgoing_cubes])
        f = {perm_name(l): s.to(w.dtype)}
        signs.update(f)
        out = rescale_units(out, spec, f)
        eff = rescale_units(eff, spec, f)
    return out, signs


def canonical_scale(params: Params, spec: MLPSpec) -> tuple[Params, dict[str, Tensor]]:
    """Give every hidden unit of a positively homogeneous activation (relu, leaky_relu,
    identity) unit incoming norm ``||(W_l[i], b_l[i])|| = 1``, moving the scale to its
    outgoing weights.

    Layers are processed from the input up (rescaling layer ``l`` changes the rows of layer
    ``l+1``); units with zero incoming weights are left alone. Returns the parameters and the
    positive factors (M, n) applied (``1 / norm``).
    """
    if spec.activation not in HOMOGENEOUS_ACTIVATIONS:
        raise ValueError(
            f"positive rescaling preserves the function only for positively homogeneous "
            f"activations ({', '.join(sorted(HOMOGENEOUS_ACTIVATIONS))}), "
            f"not {spec.activation!r}"
        )
    out = dict(params)
    eff = effective_params(params, spec)
    scales: dict[str, Tensor] = {}
    for l in range(spec.n_layers - 1):
        w, b, _ = _layer(eff, spec, l)
        sq = _invariant_sum(w.double() ** 2, ordered=l == 0)  # layer 0's columns: the inputs
        sq = sq + (b.double() ** 2 if b is not None else 0.0)
        norm = sq.sqrt()
        f = {perm_name(l): torch.where(norm > 0, 1.0 / norm, 1.0).to(w.dtype)}
        scales.update(f)
        out = rescale_units(out, spec, f)
        eff = rescale_units(eff, spec, f)
    return out, scales


def canonical_weight_norm(params: Params, spec: MLPSpec) -> Params:
    """Weight-normalized parameters with unit-norm rows of ``v`` and ``g >= 0``:
    ``(g, v) -> (|g|, sign(g) v / ||v||)``. The effective weight ``g v / ||v||`` is unchanged;
    other tensors pass through."""
    out = dict(params)
    found = False
    for l in range(spec.n_layers):
        pre = f"layers.{l}."
        if pre + "weight_g" not in params:
            continue
        found = True
        g, v = params[pre + "weight_g"], params[pre + "weight_v"]  # (M, out), (M, out, in)
        norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        sign = torch.where(g < 0, -1.0, 1.0).to(v).unsqueeze(-1)
        # A zero row of v has no direction (its effective weight is NaN already): keep it.
        out[pre + "weight_v"] = torch.where(norm > 0, sign * v / norm, v)
        out[pre + "weight_g"] = g.abs()
    if not found:
        raise ValueError("canonical_weight_norm: params hold no weight_g / weight_v")
    return out


def _resolve(flag: bool | None, allowed: bool, what: str, activation: str) -> bool:
    if flag is None:
        return allowed
    if flag and not allowed:
        raise ValueError(f"{what} does not preserve the function of {activation!r} networks")
    return bool(flag)


def canonicalize(
    params: Params,
    spec: MLPSpec,
    sort_key: str | None = None,
    sign: bool | None = None,
    scale: bool | None = None,
    sign_key: str = "incoming_sum",
) -> tuple[Params, UnitTransform]:
    """One canonical representative of each network's symmetry orbit.

    In order: units are rescaled to unit incoming norm (``scale``); signs are fixed
    (``sign``); units are sorted by ``sort_key``; weight-norm parameters (if present) get
    unit-norm rows of ``v`` and ``g >= 0``. For ``sign`` and ``scale``, ``None`` means
    "where the activation allows" (scale: relu, leaky_relu, identity; sign: tanh, identity);
    ``True`` for an activation that does not allow it raises ValueError.

    ``sort_key=None`` picks ``incoming_norm``, or ``outgoing_norm`` when units were rescaled:
    then every incoming norm is 1 and only float rounding would order the units, while the
    outgoing norm carries the scale-invariant size ``||in|| * ||out||`` of each unit.
    Asking for ``incoming_norm`` together with scaling raises ValueError for that reason.

    Returns the canonical parameters and the :class:`UnitTransform` that maps the input to
    them (up to float rounding), so :func:`undo_transform` maps canonical-frame weights back
    to each member's frame (the ``(g, v)`` reparameterization is not undone; the effective
    weights are).
    """
    act = spec.activation
    do_scale = _resolve(scale, act in HOMOGENEOUS_ACTIVATIONS, "scale canonicalization", act)
    do_sign = _resolve(sign, act in ODD_ACTIVATIONS, "sign canonicalization", act)
    if sort_key is None:
        sort_key = "outgoing_norm" if do_scale else "incoming_norm"
    elif do_scale and sort_key == "incoming_norm":
        raise ValueError(
            "sort key 'incoming_norm' after scale canonicalization: every incoming norm is 1; "
            "use 'outgoing_norm' (the default then) or scale=False"
        )
    out = dict(params)
    factors: dict[str, Tensor] | None = None
    if do_scale:
        out, factors = canonical_scale(out, spec)
    if do_sign:
        out, signs = canonical_signs(out, spec, sign_key)
        factors = signs if factors is None else {k: factors[k] * signs[k] for k in signs}
    out, perms = sort_units(out, spec, sort_key)
    if any(k.endswith(".weight_g") for k in out):
        # Last: rescaling units changes the row norms of v in the layer above.
        out = canonical_weight_norm(out, spec)
    return out, UnitTransform(perms, factors)


# --------------------------------------------------------------------------- alignment
@dataclass(frozen=True)
class Matching:
    """Result of :func:`weight_matching`.

    transform: permutations (and sign flips if sign-aware) mapping each member onto the
    reference. objective_before / objective_after: (M,) float64 sums of inner products
    ``<T(theta_member), theta_ref>`` over all effective parameters, at the initial and at the
    found transform. sweeps: (M,) number of passes over the layers each member took.
    """

    transform: UnitTransform
    objective_before: Tensor
    objective_after: Tensor
    sweeps: Tensor


def _effective64(params: Mapping[str, Tensor], spec: MLPSpec) -> Params:
    # A copy: callers update these tensors in place.
    return {k: v.to(torch.float64, copy=True) for k, v in effective_params(params, spec).items()}


def _as_reference(ref: Params, like: Params) -> Params:
    """Reference tensors stacked (1 or M, ...), to broadcast against the members."""
    out = {}
    for k, v in like.items():
        r = ref[k]
        if r.dim() == v.dim() - 1:
            r = r.unsqueeze(0)
        if r.shape[0] not in (1, v.shape[0]) or r.shape[1:] != v.shape[1:]:
            raise ValueError(f"reference {k}: shape {tuple(r.shape)} vs members {tuple(v.shape)}")
        out[k] = r
    return out


def _objective(a: Params, b: Params, spec: MLPSpec, t: UnitTransform) -> Tensor:
    """(M,) sum over parameters of <T(a_member), b>."""
    at = apply_transform(a, spec, t)
    return sum((at[k] * b[k]).flatten(1).sum(1) for k in at)


def _similarity(
    a: Params,
    b: Params,
    ps: PermutationSpec,
    perms: Perms,
    signs: Perms | None,
    p: str,
    idx: Tensor,
    incoming_only: bool = False,
) -> Tensor:
    """S (m, n, n): S[i, j] = inner product of reference unit i with member unit j over all
    tensors that ``p`` touches, the member's other axes already mapped by the current
    permutations (and signs); the unit's own sign is left out. ``incoming_only`` keeps the
    unit's incoming weights and bias (axis 0) and drops its outgoing weights."""
    n = ps.sizes[p]
    sim = None
    for name, axis in ps.perm_to_axes[p]:
        if incoming_only and axis != 0:
            continue
        wa = a[name][idx]  # (m, ...)
        for ax2, q in enumerate(ps.axes_to_perm[name]):
            if q is None or ax2 == axis:
                continue
            if signs is not None:
                wa = wa * _unit_view(signs[q][idx], wa.dim(), ax2 + 1)
            wa = _take(wa, perms[q][idx], ax2 + 1)
        wb = b[name] if b[name].shape[0] == 1 else b[name][idx]
        wa = wa.movedim(axis + 1, 1).reshape(len(idx), n, -1)  # (m, n, rest)
        wb = wb.movedim(axis + 1, 1).reshape(wb.shape[0], n, -1)  # (1 or m, n, rest)
        term = wb @ wa.transpose(1, 2)
        sim = term if sim is None else sim + term
    return sim


def _assign(s: np.ndarray, sign_aware: bool) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Best assignment of member units to reference units for a similarity (n, n): the
    permutation, the signs (member frame, or None) and the matched total."""
    if not sign_aware:
        _, ci = linear_sum_assignment(s, maximize=True)
        return ci, None, float(s[np.arange(len(ci)), ci].sum())
    _, ci = linear_sum_assignment(np.abs(s), maximize=True)
    matched = s[np.arange(len(ci)), ci]
    sign = np.ones(len(ci))
    sign[ci] = np.where(matched < 0, -1.0, 1.0)
    return ci, sign, float(np.abs(matched).sum())


def _input_up(
    a: Params, b: Params, ps: PermutationSpec, sign_aware: bool
) -> tuple[Perms, Perms | None]:
    """One pass from the input up, each layer matched on its incoming weights and bias only
    (the layer below is settled by then, the one above is not). Exact on a permuted copy of
    the reference: the incoming term alone is maximal at the true correspondence."""
    m_total = _n_members(a)
    device = next(iter(a.values())).device
    idx = torch.arange(m_total, device=device)
    perms = identity_permutations(ps, m_total, device)
    signs = (
        {k: torch.ones(m_total, n, dtype=torch.float64, device=device) for k, n in ps.sizes.items()}
        if sign_aware
        else None
    )
    for p in ps.perm_to_axes:  # P_0, P_1, ...: input to output
        sim = _similarity(a, b, ps, perms, signs, p, idx, incoming_only=True).cpu().numpy()
        for m in range(m_total):
            ci, sign, _ = _assign(sim[m], sign_aware)
            perms[p][m] = torch.from_numpy(ci).to(device)
            if signs is not None:
                signs[p][m] = torch.from_numpy(sign).to(device)
    return perms, signs


def weight_matching(
    params: Params,
    reference: Params,
    spec: MLPSpec,
    max_iter: int = 100,
    seed: int = 0,
    init: Mapping[str, Tensor] | None = None,
    sign_aware: bool = False,
) -> Matching:
    """Weight matching of Git Re-Basin (Ainsworth et al., 2023): permutations that maximize
    ``sum <P(theta_member), theta_ref>``.

    Coordinate descent over the hidden layers in a random order (seeded; the same order
    sequence for all members): each step solves the linear assignment of one layer with the
    others fixed, on a similarity built from every tensor the permutation touches (incoming
    weights, bias, and outgoing weights under the neighbouring permutations). A layer's
    permutation changes only on a strict improvement, so the objective never decreases; a
    member stops after a pass over all layers without improvement. Members are independent
    (a member's result does not depend on the others in the batch).

    ``reference``: one network ((1, ...) or unstacked) or one per member (M, ...).
    ``init``: starting permutations (M, n) or (n,). By default each member starts from the
    better of the identity and one input-to-output pass matching every layer on its incoming
    weights only: coordinate descent from the identity alone can stop in a local optimum even
    for an exactly permuted copy of the reference; the input-up pass finds that copy exactly.
    ``objective_before`` is at the identity (or ``init``).
    ``sign_aware`` (odd activations only): also choose a sign per unit: the assignment is
    solved on ``|S|`` and a unit whose matched similarity is negative is flipped.
    """
    if sign_aware and spec.activation not in ODD_ACTIVATIONS:
        raise ValueError(f"sign-aware matching needs an odd activation, not {spec.activation!r}")
    ps = mlp_permutation_spec(spec)
    a = _effective64(params, spec)
    b = _as_reference(_effective64(reference, spec), a)
    m_total = _n_members(a)
    device = next(iter(a.values())).device
    perms = identity_permutations(ps, m_total, device)
    for k, p in (init or {}).items():
        perms[k] = p.to(device).expand(m_total, ps.sizes[k]).clone()
    signs = (
        {k: torch.ones(m_total, n, dtype=torch.float64, device=device) for k, n in ps.sizes.items()}
        if sign_aware
        else None
    )
    before = _objective(a, b, spec, UnitTransform(perms, signs))
    if init is None and ps.sizes:
        g_perms, g_signs = _input_up(a, b, ps, sign_aware)
        better = _objective(a, b, spec, UnitTransform(g_perms, g_signs)) > before  # (M,)
        for k in perms:
            perms[k] = torch.where(better[:, None], g_perms[k], perms[k])
            if signs is not None:
                signs[k] = torch.where(better[:, None], g_signs[k], signs[k])

    names = list(ps.perm_to_axes)
    rng = np.random.default_rng(seed)
    active = np.ones(m_total, dtype=bool)
    sweeps = np.zeros(m_total, dtype=np.int64)
    for _ in range(max_iter):
        if not names or not active.any():
            break
        idx_np = np.flatnonzero(active)
        idx = torch.from_numpy(idx_np).to(device)
        sweeps[idx_np] += 1
        improved = np.zeros(m_total, dtype=bool)
        for j in rng.permutation(len(names)):
            p = names[j]
            n = ps.sizes[p]
            rows = np.arange(n)
            sim = _similarity(a, b, ps, perms, signs, p, idx).cpu().numpy()  # (m, n, n)
            for r, m in enumerate(idx_np):
                s = sim[r]
                cur = perms[p][m].cpu().numpy()
                old = s[rows, cur]
                if signs is not None:
                    old = old * signs[p][m].cpu().numpy()[cur]
                ci, sign, new = _assign(s, signs is not None)
                # Rounding of two sums of n terms must not count as progress (ties would
                # otherwise swap back and forth).
                tol = 1e-10 * n * (float(np.abs(s).max()) + 1e-300)
                if new > float(old.sum()) + tol:
                    perms[p][m] = torch.from_numpy(ci).to(device)
                    if signs is not None:
                        signs[p][m] = torch.from_numpy(sign).to(device)
                    improved[m] = True
        active &= improved

    dtype = next(iter(params.values())).dtype
    factors = None if signs is None else {k: s.to(dtype) for k, s in signs.items()}
    after = _objective(a, b, spec, UnitTransform(perms, signs))
    return Matching(UnitTransform(perms, factors), before, after, torch.from_numpy(sweeps))


def align_to_reference(
    params: Params,
    reference: Params,
    spec: MLPSpec,
    max_iter: int = 100,
    seed: int = 0,
    sign_aware: bool = False,
) -> tuple[Params, UnitTransform]:
    """Every member mapped onto ``reference`` by :func:`weight_matching`; returns the aligned
    parameters (same names as ``params``) and the transform (undo it with
    :func:`undo_transform`)."""
    t = weight_matching(params, reference, spec, max_iter, seed, sign_aware=sign_aware).transform
    return apply_transform(params, spec, t), t


def merge_many(
    params: Params,
    spec: MLPSpec,
    max_iter: int = 100,
    seed: int = 0,
    sign_aware: bool = False,
    progress: bool = False,
    tol: float = 0.0,
) -> tuple[Params, UnitTransform, Params]:
    """Bring the whole population into one frame, as MergeMany (Ainsworth et al., 2023).

    Members in a random order are each aligned by :func:`weight_matching` to the mean of all
    the others (in their current frames), until a full pass changes nobody, or raises the
    objective — the sum of pairwise inner products of the members' effective parameters — by
    a relative ``tol`` or less, or ``max_iter`` passes. Each accepted step strictly increases
    the objective, so the loop ends; its last passes typically move a few members by a tiny
    gain each (``tol`` 1e-4 stops there).

    Returns the aligned parameters (same names as ``params``), each member's transform and
    the mean of the aligned effective parameters, stacked as (1, ...) so it can serve as a
    reference. ``progress``: a progress bar per pass, with how many members moved (a pass
    over a thousand members takes tens of seconds on a CPU).
    """
    m_total = _n_members(params)
    ps = mlp_permutation_spec(spec)
    device = next(iter(params.values())).device
    aligned = _effective64(params, spec)
    dtype = next(iter(params.values())).dtype
    members = [
        UnitTransform(
            identity_permutations(ps, 1, device),
            {k: torch.ones(1, n, dtype=dtype, device=device) for k, n in ps.sizes.items()}
            if sign_aware
            else None,
        )
        for _ in range(m_total)
    ]
    if m_total > 1:
        total = {k: v.sum(0) for k, v in aligned.items()}
        # sum_{i<j} <w_i, w_j> = (|sum_i w_i|^2 - sum_i |w_i|^2) / 2; the second sum does not
        # change under permutations (nor sign flips)
        own = sum(float(v.square().sum()) for v in aligned.values())

        def pairwise() -> float:
            return (sum(float(v.square().sum()) for v in total.values()) - own) / 2

        objective = pairwise()
        rng = np.random.default_rng(seed)
        for p in range(max_iter):
            changed = False
            moved_count = 0
            bar = progress_bar(
                total=m_total,
                desc=f"MergeMany pass {p + 1}",
                unit="member",
                disable=not progress,
                leave=False,
            )
            for m in rng.permutation(m_total):
                bar.update()
                one = {k: v[m : m + 1] for k, v in aligned.items()}
                others = {k: (total[k] - one[k][0]) / (m_total - 1) for k in total}
                step = int(rng.integers(2**31))
                t = weight_matching(one, others, spec, max_iter, step, None, sign_aware).transform
                if t.factors is not None:
                    t = UnitTransform(t.perms, {k: f.to(dtype) for k, f in t.factors.items()})
                if _is_identity(t):
                    continue
                changed = True
                moved_count += 1
                bar.set_postfix(moved=moved_count, refresh=False)
                moved = apply_transform(one, spec, t)
                for k in total:
                    total[k] = total[k] + moved[k][0] - one[k][0]
                    aligned[k][m] = moved[k][0]
                members[m] = compose_transforms(members[m], t)
            bar.close()
            before, objective = objective, pairwise()
            gain = (objective - before) / max(abs(before), 1e-300)
            if progress:
                print(
                    f"MergeMany pass {p + 1}: {moved_count} of {m_total} members moved, "
                    f"objective +{gain:.1e}",
                    flush=True,
                )
            if not changed or gain <= tol:
                break
    perms = {k: torch.cat([t.perms[k] for t in members]) for k in ps.sizes}
    factors = (
        {k: torch.cat([t.factors[k] for t in members]) for k in ps.sizes} if sign_aware else None
    )
    transform = UnitTransform(perms, factors)
    # The returned weights come from the original tensors by exact gathers (and sign flips).
    out = apply_transform(params, spec, transform)
    mean = {k: v.mean(0, keepdim=True) for k, v in effective_params(out, spec).items()}
    return out, transform, mean


def hidden_activations(params: Params, x: Tensor, spec: MLPSpec) -> list[Tensor]:
    """Post-activations of every hidden layer, each (M, B, n), via the one batched forward
    run on the network's prefixes."""
    eff = effective_params(params, spec)
    act = ACTIVATIONS[spec.activation]
    out = []
    for l in range(spec.n_layers - 1):
        prefix = MLPSpec(spec.widths[: l + 2], spec.activation, spec.bias)
        sub = {k: v for k, v in eff.items() if int(k.split(".")[1]) <= l}
        out.append(act(forward(sub, x, prefix)))  # the prefix's last layer is linear
    return out


def _standardize(h: Tensor) -> Tensor:
    """Zero mean, unit variance over the batch axis; constant units (dead ReLUs) become 0."""
    h = h.double()
    c = h - h.mean(1, keepdim=True)
    std = c.pow(2).mean(1, keepdim=True).sqrt()
    return torch.where(std > 0, c / std.clamp_min(1e-300), 0.0)


def activation_matching(params: Params, reference: Params, x: Tensor, spec: MLPSpec) -> Perms:
    """Permutations matching each member's hidden units to the reference's by the correlation
    of their activations on ``x`` (B, in) (Git Re-Basin's activation matching).

    A unit's activations do not depend on how the other layers are ordered, so each layer is
    one linear assignment per member. ``reference``: one network or one per member. Returns
    perms (M, n) to use with :func:`apply_permutation` (or ``UnitTransform(perms)``).
    """
    ha = hidden_activations(params, x, spec)
    ref = effective_params(reference, spec)
    ref = _as_reference(dict(ref), effective_params(params, spec))
    hb = hidden_activations(ref, x, spec)
    perms: Perms = {}
    for l, (a_l, b_l) in enumerate(zip(ha, hb)):
        za, zb = _standardize(a_l), _standardize(b_l)  # (M, B, n), (1 or M, B, n)
        corr = (zb.transpose(1, 2) @ za / za.shape[1]).cpu().numpy()  # (M, n_ref, n_member)
        corr = np.broadcast_to(corr, (za.shape[0], *corr.shape[1:]))
        cols = [linear_sum_assignment(c, maximize=True)[1] for c in corr]
        perms[perm_name(l)] = torch.from_numpy(np.stack(cols)).to(a_l.device)
    return perms


# --------------------------------------------------------------------------- flat vectors
def flatten(params: Mapping[str, Tensor], spec: MLPSpec, trainable: bool = False) -> Tensor:
    """(M, D) vectors in ``state_dict`` order of ``spec.param_shapes(trainable)``.

    ``trainable=False`` flattens the effective weights (resolving weight norm), D =
    ``spec.n_params()``.
    """
    src = effective_params(params, spec) if not trainable else params
    names = spec.param_shapes(trainable)
    return torch.cat([src[k].reshape(src[k].shape[0], -1) for k in names], dim=1)


def unflatten(flat: Tensor, spec: MLPSpec, trainable: bool = False) -> Params:
    """Inverse of :func:`flatten`: (M, D) -> stacked parameters."""
    shapes = spec.param_shapes(trainable)
    sizes = [math.prod(s) for s in shapes.values()]
    if flat.shape[-1] != sum(sizes):
        raise ValueError(f"expected {sum(sizes)} values per member, got {flat.shape[-1]}")
    parts = flat.split(sizes, dim=-1)
    return {k: p.reshape(flat.shape[0], *s) for (k, s), p in zip(shapes.items(), parts)}


def _as_matrix(x: Mapping[str, Tensor] | Tensor, names: list[str] | None) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.dim() == 2 else x.reshape(1, -1)
    return torch.cat([x[k].reshape(x[k].shape[0], -1) for k in names], dim=1)


def weight_distance(a: Mapping[str, Tensor] | Tensor, b: Mapping[str, Tensor] | Tensor) -> Tensor:
    """Relative L2 distance per member: ``||a - b|| / sqrt(||a|| ||b||)``, (M,).

    ``a``, ``b``: flat (M, D) / (1, D) vectors or stacked parameter dicts with the same keys
    (pass effective parameters, e.g. :func:`flatten`, not a dict holding both ``weight`` and
    ``weight_g``/``weight_v``). Symmetric, invariant to a common rescaling of both, 0 for
    identical weights, ``sqrt(2)`` for orthogonal vectors of equal norm.
    """
    names = sorted(a) if not isinstance(a, Tensor) else None
    xa = _as_matrix(a, names).double()
    xb = _as_matrix(b, names).double()
    num = torch.linalg.vector_norm(xa - xb, dim=1)
    den = (torch.linalg.vector_norm(xa, dim=1) * torch.linalg.vector_norm(xb, dim=1)).sqrt()
    return torch.where(num == 0, 0.0, num / den)
