"""Hidden-unit permutations: which tensor axes each permutation acts on, and their algebra.

A permutation of hidden layer ``l`` is named ``P_l`` (:func:`perm_name`) and stored as a
LongTensor ``(M, n)`` (one per member) or ``(n,)`` (shared by all members). Applying ``perm``
makes new unit ``i`` the old unit ``perm[i]``: ``W_l[perm]``, ``b_l[perm]``, ``W_{l+1}[:, perm]``.
Permutations missing from a dict are the identity.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.nets.spec import MLPSpec, Params

Perms = dict[str, Tensor]  # "P_l" -> (M, n) or (n,) LongTensor


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
        _, l_str, kind = name.split(".")  # "layers.{l}.{kind}"
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
def checkpoint_permutation_spec(spec: MLPSpec) -> PermutationSpec:
    """A spec covering effective and trainable names together (a checkpoint may hold both)."""
    names = list(spec.param_shapes(False))
    wn = MLPSpec(spec.widths, spec.activation, spec.bias, weight_norm=True)
    names += [k for k in wn.param_shapes(True) if k not in names]
    return _build(spec, _axes(spec, names))


def unit_view(f: Tensor, ndim: int, dim: int) -> Tensor:
    """Per-unit values (M, n) or (n,) shaped to broadcast along ``dim`` of an (M, ...) tensor."""
    if f.dim() == 1:
        f = f.unsqueeze(0)
    shape = [f.shape[0]] + [1] * (ndim - 1)
    shape[dim] = f.shape[1]
    return f.reshape(shape)


def take_units(x: Tensor, idx: Tensor, dim: int) -> Tensor:
    """``x`` (M, ...) indexed along ``dim`` by one index per member (M, n) or a shared (n,)."""
    if idx.dim() == 1:
        return x.index_select(dim, idx)
    if x.shape[0] != idx.shape[0]:
        if x.shape[0] != 1:
            raise ValueError(f"{x.shape[0]} members but permutations for {idx.shape[0]}")
        x = x.expand(idx.shape[0], *x.shape[1:])  # one network, many permuted copies
    size = (*x.shape[:dim], idx.shape[1], *x.shape[dim + 1 :])
    return torch.gather(x, dim, unit_view(idx, x.dim(), dim).expand(size))


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
                x = take_units(x, perms[p].to(x.device), axis + 1)
        out[name] = x
    return out


def invert_permutation(perms: Mapping[str, Tensor]) -> Perms:
    """The permutations that undo ``perms``: ``inv[perm[i]] = i``."""
    out: Perms = {}
    for k, p in perms.items():
        ar = torch.arange(p.shape[-1], device=p.device).expand_as(p)
        out[k] = torch.empty_like(p).scatter_(-1, p, ar)
    return out


def gather_last(p: Tensor, q: Tensor) -> Tensor:
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
        out[k] = q if k not in first else gather_last(first[k], q)
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
