"""Canonical forms: one representative of each network's symmetry orbit.

Units are rescaled to unit incoming norm (positively homogeneous activations), sign-fixed
(odd activations) and sorted, layer after layer from the input up; weight-normalized
parameters get unit-norm rows of ``v`` and ``g >= 0``. Sort keys are summed in float64 over
sorted values, so any permuted copy of a network gets bit for bit the same canonical form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightspace.nets.forward import effective_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name
from weightspace.symmetry.permutations import (
    Perms,
    apply_permutation,
    checkpoint_permutation_spec,
    perm_name,
)
from weightspace.symmetry.transforms import (
    HOMOGENEOUS_ACTIVATIONS,
    ODD_ACTIVATIONS,
    UnitTransform,
    rescale_units,
)

SORT_KEYS = ("incoming_norm", "bias", "outgoing_norm", "lexicographic")
SIGN_KEYS = ("incoming_sum", "bias")


def _invariant_sum(x: Tensor, dim: int = -1, ordered: bool = False) -> Tensor:
    """Sum along ``dim`` in float64 over sorted values: bit-identical for any ordering of
    the summands, so keys of a permuted copy equal the original's exactly. ``ordered``: the
    summands are in a fixed order already (the input features, or a layer sorted before),
    so the sort is skipped."""
    x = x.double()
    return (x if ordered else x.sort(dim=dim).values).sum(dim)


def _layer(eff: Params, spec: MLPSpec, l: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """Incoming weights (M, n, in), bias (M, n) or None and outgoing weights (M, out, n)."""
    w = eff[weight_name(l)]
    b = eff[bias_name(l)] if spec.bias else None
    return w, b, eff[weight_name(l + 1)]


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
    ps = checkpoint_permutation_spec(spec)
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
        g_name, v_name = weight_name(l, "g"), weight_name(l, "v")
        if g_name not in params:
            continue
        found = True
        g, v = params[g_name], params[v_name]  # (M, out), (M, out, in)
        norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        sign = torch.where(g < 0, -1.0, 1.0).to(v).unsqueeze(-1)
        # A zero row of v has no direction (its effective weight is NaN already): keep it.
        out[v_name] = torch.where(norm > 0, sign * v / norm, v)
        out[g_name] = g.abs()
    if not found:
        raise ValueError("canonical_weight_norm: params hold no weight_g / weight_v")
    return out


def _resolve(flag: bool | None, allowed: bool, what: str, activation: str) -> bool:
    if flag is None:
        return allowed
    if flag and not allowed:
        raise ValueError(f"{what} does not preserve the function of {activation!r} networks")
    return bool(flag)


def canonical_unit_frame(
    params: Params, spec: MLPSpec, scale: bool | None = None, sign: bool | None = None
) -> Params:
    """Each network's rescaling / sign-flip orbit brought to one representative, its units
    left in their order: unit incoming norm (``scale``), then fixed signs (``sign``); ``None``
    means "where ``spec.activation`` allows", as in :func:`canonicalize`. What an encoder that
    is permutation-invariant by construction reads to be invariant to these symmetries too."""
    act = spec.activation
    if _resolve(scale, act in HOMOGENEOUS_ACTIVATIONS, "scale canonicalization", act):
        params, _ = canonical_scale(params, spec)
    if _resolve(sign, act in ODD_ACTIVATIONS, "sign canonicalization", act):
        params, _ = canonical_signs(params, spec)
    return params


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
