"""Matching members to a reference: weight matching (Git Re-Basin), MergeMany, activation matching.

:func:`weight_matching` finds, per member, the permutations (and, sign-aware, the sign flips)
that maximize the inner product of its effective parameters with a reference's;
:func:`align_to_reference` applies them (MergeMany, which brings a whole population into one
frame, is :mod:`.merge`). :func:`activation_matching` matches units by the correlation of their
activations.
All decisions are taken on the effective weights in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from weightspace.nets.forward import effective_params, forward
from weightspace.nets.spec import ACTIVATIONS, MLPSpec, Params
from weightspace.symmetry.permutations import (
    Perms,
    PermutationSpec,
    identity_permutations,
    mlp_permutation_spec,
    perm_name,
    take_units,
    unit_view,
)
from weightspace.symmetry.transforms import (
    ODD_ACTIVATIONS,
    UnitTransform,
    apply_transform,
)


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
                wa = wa * unit_view(signs[q][idx], wa.dim(), ax2 + 1)
            wa = take_units(wa, perms[q][idx], ax2 + 1)
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
    m_total = next(iter(a.values())).shape[0]  # members
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
    m_total = next(iter(a.values())).shape[0]  # members
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


def hidden_activations(params: Params, x: Tensor, spec: MLPSpec) -> list[Tensor]:
    """Post-activations of every hidden layer, each (M, B, n), via the one batched forward
    run on the network's prefixes."""
    eff = effective_params(params, spec)
    act = ACTIVATIONS[spec.activation]
    out = []
    for l in range(spec.n_layers - 1):
        prefix = MLPSpec(spec.widths[: l + 2], spec.activation, spec.bias)
        sub = {k: eff[k] for k in prefix.param_shapes()}  # layers 0 .. l
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
