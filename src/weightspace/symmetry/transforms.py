"""Function-preserving maps of each member: per-unit factors, then permutations.

A hidden unit multiplied by a factor ``f`` (incoming weights and bias times ``f``, outgoing
weights divided by ``f``) computes the same function whenever ``a(f z) = f a(z)``: ``f = -1``
for odd activations (:data:`ODD_ACTIVATIONS`), any ``f > 0`` for positively homogeneous ones
(:data:`HOMOGENEOUS_ACTIVATIONS`). Per-unit factors ``(M, n)`` are keyed by the permutation
names ``P_l``. A :class:`UnitTransform` (the record lives in :mod:`weightspace.nets.spec`, as
a derived zoo stores them) applies its factors first (in the member's own frame),
then its permutations; :func:`undo_transform` maps transformed weights (e.g. decoded ones)
back to the member's frame.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.nets.spec import MLPSpec, Params, UnitTransform, bias_name, weight_name
from weightspace.symmetry.permutations import (
    apply_permutation,
    checkpoint_permutation_spec,
    compose,
    gather_last,
    invert_permutation,
    perm_name,
    random_permutations,
    unit_view,
)

# a(-z) = -a(z): a unit's sign can be flipped.
ODD_ACTIVATIONS = frozenset({"tanh", "identity", "sine"})
# a(c z) = c a(z) for c > 0: a unit's positive scale can be moved to its outgoing weights.
HOMOGENEOUS_ACTIVATIONS = frozenset({"relu", "leaky_relu", "identity"})


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
        w_name, b_name = weight_name(l), bias_name(l)
        g_name, v_name = weight_name(l, "g"), weight_name(l, "v")
        if w_name in params:
            w = params[w_name]  # (M, out, in)
            if f_row is not None:
                w = w * unit_view(f_row.to(w), 3, 1)
            if f_col is not None:
                w = w / unit_view(f_col.to(w), 3, 2)
            out[w_name] = w
        if b_name in params and f_row is not None:
            b = params[b_name]  # (M, out)
            out[b_name] = b * unit_view(f_row.to(b), 2, 1)
        if v_name in params:
            g, v = params[g_name], params[v_name]  # (M, out), (M, out, in)
            if f_row is not None:
                f = f_row.to(v)
                g = g * unit_view(f.abs(), 2, 1)
                v = v * unit_view(torch.where(f < 0, -1.0, 1.0).to(v), 3, 1)
            if f_col is not None:
                v_new = v / unit_view(f_col.to(v), 3, 2)
                # Sign flips leave the squares, hence the norms, bit-identical: ratio exactly 1.
                norm = torch.linalg.vector_norm
                g, v = g * (norm(v_new, dim=-1) / norm(v, dim=-1)), v_new
            out[g_name], out[v_name] = g, v
    return out


def apply_transform(params: Params, spec: MLPSpec, t: UnitTransform) -> Params:
    """``P(D theta)``: rescale units by ``t.factors``, then permute them by ``t.perms``."""
    if t.factors is not None:
        params = rescale_units(params, spec, t.factors)
    return apply_permutation(checkpoint_permutation_spec(spec), t.perms, params)


def undo_transform(params: Params, spec: MLPSpec, t: UnitTransform) -> Params:
    """Map transformed parameters (e.g. decoded from the aligned frame) back to the member's
    own frame: the inverse of :func:`apply_transform`."""
    ps = checkpoint_permutation_spec(spec)
    params = apply_permutation(ps, invert_permutation(t.perms), params)
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
        f2 = gather_last(f2, inv[k]).to(f2) if k in inv else f2
        factors[k] = f2 * factors[k] if k in factors else f2
    return UnitTransform(perms, factors)


def is_identity(t: UnitTransform) -> bool:
    """True when ``t`` moves no unit and scales none."""
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
    ps = checkpoint_permutation_spec(spec)
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
