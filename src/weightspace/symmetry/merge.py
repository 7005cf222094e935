"""MergeMany (Ainsworth et al., 2023): a whole population brought into one frame.

The objective is the sum of pairwise inner products of the members' effective parameters,
``sum_{i<j} <T_i(w_i), T_j(w_j)>``; a member's move changes it by ``<T(w_m) - w_m, R_m>``
with ``R_m`` the sum of all the others, so matching a member to the mean of the others
(:func:`~weightspace.symmetry.matching.weight_matching`) is coordinate ascent on it.

Two schedules, the same objective:

- ``sequential`` (the default): members one at a time in a random order, each matched to the
  mean of the others as they stand; a Python loop of per-member matchings, pass after pass.
- ``batched``: each pass splits the members (in a random order) into blocks of ``block``;
  a block is matched against the current sum at once — the similarity products batched over
  its members, the linear assignments in one loop over plain arrays — and its moves are kept
  only if together they raise the objective (members moved at once can cancel each other:
  a block that loses is split in halves and each half matched again, down to single members,
  whose moves always gain). So the objective never falls, whatever the block.

Both are deterministic: the same input and seed give the same permutations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from weightspace.cli import progress_bar
from weightspace.nets.forward import effective_params
from weightspace.nets.spec import MLPSpec, Params
from weightspace.symmetry.matching import _effective64, _objective, _similarity, weight_matching
from weightspace.symmetry.permutations import (
    PermutationSpec,
    identity_permutations,
    mlp_permutation_spec,
)
from weightspace.symmetry.transforms import (
    UnitTransform,
    apply_transform,
    compose_transforms,
    is_identity,
)

SCHEDULES = ("sequential", "batched")
DEFAULT_BLOCK = 256  # members matched at once by the batched schedule


@dataclass(frozen=True)
class Merged:
    """Result of :func:`merge`.

    params: the aligned parameters (same names as the input); transform: each member's
    (permutations, and sign flips if sign-aware), mapping its own weights onto ``params``;
    mean: the mean of the aligned effective parameters, (1, ...); objectives: the objective
    (sum of pairwise inner products of the effective parameters, float64) before the first
    pass and after each pass; moved: members moved in each pass.
    """

    params: Params
    transform: UnitTransform
    mean: Params
    objectives: tuple[float, ...]
    moved: tuple[int, ...]

    @property
    def passes(self) -> int:
        return len(self.moved)


def merge_many(
    params: Params,
    spec: MLPSpec,
    max_iter: int = 100,
    seed: int = 0,
    sign_aware: bool = False,
    progress: bool = False,
    tol: float = 0.0,
    schedule: str = "sequential",
    block: int = DEFAULT_BLOCK,
) -> tuple[Params, UnitTransform, Params]:
    """Bring the whole population into one frame, as MergeMany (Ainsworth et al., 2023):
    :func:`merge`'s aligned parameters, transforms and mean."""
    m = merge(params, spec, max_iter, seed, sign_aware, progress, tol, schedule, block)
    return m.params, m.transform, m.mean


def merge(
    params: Params,
    spec: MLPSpec,
    max_iter: int = 100,
    seed: int = 0,
    sign_aware: bool = False,
    progress: bool = False,
    tol: float = 0.0,
    schedule: str = "sequential",
    block: int = DEFAULT_BLOCK,
) -> Merged:
    """MergeMany with its record: members in a random order are aligned to the mean of all
    the others (in their current frames) — one at a time (``schedule="sequential"``) or
    ``block`` at a time (``"batched"``, see the module's docstring) — until a full pass
    changes nobody, or raises the objective (the sum of pairwise inner products of the
    members' effective parameters) by a relative ``tol`` or less, or ``max_iter`` passes. The
    objective never decreases, so the loop ends; its last passes typically move a few members
    by a tiny gain each (``tol`` 1e-4 stops there).

    ``progress``: one progress bar for the whole alignment (the pass, the members done in it,
    the objective) and a line per pass with how many members moved and the objective's gain.
    The batched schedule runs on the CPU (its assignments do anyway).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown {schedule!r} (choose from {', '.join(SCHEDULES)})")
    if block < 1:
        raise ValueError(f"block: must be >= 1, got {block}")
    m_total = next(iter(params.values())).shape[0]  # members
    ps = mlp_permutation_spec(spec)
    device = next(iter(params.values())).device
    work = device if schedule == "sequential" else torch.device("cpu")
    dtype = next(iter(params.values())).dtype
    perms = identity_permutations(ps, m_total, work)  # (M, n) each
    factors = (
        {k: torch.ones(m_total, n, dtype=dtype, device=work) for k, n in ps.sizes.items()}
        if sign_aware
        else None
    )
    state = _State({k: v.to(work) for k, v in _effective64(params, spec).items()}, perms, factors)
    objectives, moves = [state.objective()], []
    if m_total > 1:
        run = _sequential_pass if schedule == "sequential" else _batched_pass
        rng = np.random.default_rng(seed)
        bar = progress_bar(total=m_total, unit="member", disable=not progress, leave=False)
        try:
            for p in range(max_iter):
                bar.reset(m_total)
                bar.set_description(f"MergeMany pass {p + 1}")
                bar.set_postfix(objective=f"{objectives[-1]:.7g}", refresh=False)
                moves.append(run(state, spec, ps, rng, max_iter, sign_aware, block, bar, p))
                objectives.append(state.objective())
                before = objectives[-2]
                gain = (objectives[-1] - before) / max(abs(before), 1e-300)
                if progress:
                    bar.write(
                        f"MergeMany pass {p + 1}: {moves[-1]} of {m_total} members moved, "
                        f"objective +{gain:.1e}"
                    )
                if not moves[-1] or gain <= tol:
                    break
        finally:
            bar.close()
    transform = UnitTransform(
        {k: v.to(device) for k, v in state.perms.items()},
        None if state.factors is None else {k: v.to(device) for k, v in state.factors.items()},
    )
    # The returned weights come from the original tensors by exact gathers (and sign flips).
    out = apply_transform(params, spec, transform)
    mean = {k: v.mean(0, keepdim=True) for k, v in effective_params(out, spec).items()}
    return Merged(out, transform, mean, tuple(objectives), tuple(moves))


class _State:
    """The members in their current frames (float64 effective parameters, (M, ...)), their
    sum, and each member's transform so far."""

    def __init__(self, aligned: Params, perms: dict, factors: dict | None) -> None:
        self.aligned = aligned
        self.m_total = next(iter(aligned.values())).shape[0]
        self.total = {k: v.sum(0) for k, v in aligned.items()}
        # sum_{i<j} <w_i, w_j> = (|sum_i w_i|^2 - sum_i |w_i|^2) / 2; the second sum does not
        # change under permutations (nor sign flips)
        self.own = sum(float(v.square().sum()) for v in aligned.values())
        self.perms, self.factors = perms, factors  # (M, n) each

    def objective(self) -> float:
        return (sum(float(v.square().sum()) for v in self.total.values()) - self.own) / 2

    def others_mean(self, rows: Tensor) -> Params:
        """The mean of all members but each of ``rows``: (len(rows), ...) references."""
        return {k: (self.total[k] - v[rows]) / (self.m_total - 1) for k, v in self.aligned.items()}

    def move(self, rows: Tensor, moved: Params, t: UnitTransform) -> None:
        """Members ``rows`` now at ``moved`` (their current weights transformed by ``t``)."""
        for k, v in self.aligned.items():
            # (for one member exactly the sequential algorithm's total + new - old)
            self.total[k] = self.total[k] + moved[k].sum(0) - v[rows].sum(0)
            v[rows] = moved[k]
        cur = UnitTransform(
            {k: p[rows] for k, p in self.perms.items()},
            None if self.factors is None else {k: f[rows] for k, f in self.factors.items()},
        )
        new = compose_transforms(cur, t)
        for k in self.perms:
            self.perms[k][rows] = new.perms[k]
            if self.factors is not None:
                self.factors[k][rows] = new.factors[k]


def _sequential_pass(state, spec, ps, rng, max_iter, sign_aware, block, bar, p) -> int:
    """One member at a time, each by :func:`weight_matching` to the mean of the others."""
    factors = state.factors
    factor_dtype = None if factors is None else next(iter(factors.values())).dtype
    moved_count = 0
    for m in rng.permutation(state.m_total):
        bar.update()
        rows = torch.tensor([int(m)])
        one = {k: v[rows] for k, v in state.aligned.items()}
        step = int(rng.integers(2**31))
        t = weight_matching(
            one, state.others_mean(rows), spec, max_iter, step, None, sign_aware
        ).transform
        if t.factors is not None:
            t = UnitTransform(t.perms, {k: f.to(factor_dtype) for k, f in t.factors.items()})
        if is_identity(t):
            continue
        moved_count += 1
        state.move(rows, apply_transform(one, spec, t), t)
    return moved_count


def _batched_pass(state, spec, ps, rng, max_iter, sign_aware, block, bar, p) -> int:
    """Blocks of ``block`` members in a random order, each matched at once. In the first pass
    the blocks grow with the members already placed (1, 1, 1, 2, 3, 4, 6, ...: half of them,
    up to ``block``): the first members set the frame the others join, as in the sequential
    schedule, instead of a whole block choosing frames at once against the mean of members
    still in random frames. Later passes start each member from the identity (no input-up
    pass: by then every member is near the shared frame), two assignments fewer each."""
    order = rng.permutation(state.m_total)
    moved = start = 0
    while start < len(order):
        size = block if p else min(block, max(1, start // 2))
        rows = order[start : start + size]
        moved += _merge_block(state, spec, ps, rows, rng, max_iter, sign_aware, p == 0)
        bar.update(len(rows))
        start += size
    return moved


def _merge_block(state, spec, ps, rows_np, rng, max_iter, sign_aware, input_up=True) -> int:
    """Members ``rows_np`` matched together to the mean of the others; their moves kept if
    together they raise the objective, else each half of the block done again. Returns how
    many members moved."""
    rows = torch.from_numpy(rows_np)
    cur = {k: v[rows] for k, v in state.aligned.items()}  # (b, ...)
    seed = int(rng.integers(2**31))
    t = _match_block(cur, state.others_mean(rows), spec, ps, max_iter, seed, sign_aware, input_up)
    moved = np.zeros(len(rows_np), dtype=bool)  # (b,)
    for k, p in t.perms.items():
        moved |= (p != torch.arange(p.shape[1])).any(1).numpy()
        if t.factors is not None:
            moved |= (t.factors[k] != 1).any(1).numpy()
    if not moved.any():
        return 0
    keep = torch.from_numpy(np.flatnonzero(moved))
    rows, cur = rows[keep], {k: v[keep] for k, v in cur.items()}
    factors = state.factors
    t = UnitTransform(
        {k: p[keep] for k, p in t.perms.items()},
        None
        if t.factors is None
        else {k: f[keep].to(next(iter(factors.values()))) for k, f in t.factors.items()},
    )
    new = apply_transform(cur, spec, t)
    # The objective's change: <S, D> + |D|^2 / 2, S the current sum, D the moves' sum.
    gain = 0.0
    for k, s in state.total.items():
        d = (new[k] - cur[k]).sum(0)
        gain += float((s * d).sum()) + float(d.square().sum()) / 2
    if gain <= 0 and len(rows) > 1:  # moves that cancel: each half again, on its own
        half = len(rows) // 2
        done = rows.numpy()
        return _merge_block(state, spec, ps, done[:half], rng, max_iter, sign_aware, input_up) + (
            _merge_block(state, spec, ps, done[half:], rng, max_iter, sign_aware, input_up)
        )
    state.move(rows, new, t)
    return len(rows)


def _lap_batch(
    sim: np.ndarray, sign_aware: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per member the best assignment of its similarity ``sim`` (m, n, n): the permutations
    (m, n), the signs (m, n) in the member's frame (or None) and the matched totals (m,).
    The assignments themselves are scipy's, one call each; everything around them is batched."""
    score = np.abs(sim) if sign_aware else sim
    cols = np.empty(sim.shape[:2], dtype=np.int64)  # (m, n)
    for r in range(len(sim)):
        cols[r] = linear_sum_assignment(score[r], maximize=True)[1]
    matched = np.take_along_axis(sim, cols[:, :, None], 2)[:, :, 0]  # (m, n)
    if not sign_aware:
        return cols, None, matched.sum(1)
    sign = np.ones(sim.shape[:2])
    np.put_along_axis(sign, cols, np.where(matched < 0, -1.0, 1.0), 1)
    return cols, sign, np.abs(matched).sum(1)


def _match_block(
    a: Params,
    b: Params,
    spec: MLPSpec,
    ps: PermutationSpec,
    max_iter: int,
    seed: int,
    sign_aware: bool,
    input_up: bool = True,
) -> UnitTransform:
    """:func:`weight_matching` of every member of ``a`` (m, ...) to its own reference ``b``
    (m, ...), all members at once: the start (the better of the identity and an input-up
    pass), then coordinate descent over the layers in a seeded random order, a layer's
    permutation changed only on a strict improvement. ``input_up`` false: start from the
    identity. Signs in float64 (or None)."""
    m = next(iter(a.values())).shape[0]  # members
    names = list(ps.perm_to_axes)
    everyone = torch.arange(m)

    def start() -> tuple[dict, dict | None]:
        perms = identity_permutations(ps, m)
        signs = (
            {k: torch.ones(m, n, dtype=torch.float64) for k, n in ps.sizes.items()}
            if sign_aware
            else None
        )
        return perms, signs

    perms, signs = start()
    if input_up:
        before = _objective(a, b, spec, UnitTransform(perms, signs))  # (m,)
        g_perms, g_signs = start()
        for p in names:  # input to output, each layer on its incoming weights only
            sim = _similarity(a, b, ps, g_perms, g_signs, p, everyone, incoming_only=True)
            cols, sign, _ = _lap_batch(sim.numpy(), sign_aware)
            g_perms[p] = torch.from_numpy(cols)
            if g_signs is not None:
                g_signs[p] = torch.from_numpy(sign)
        better = _objective(a, b, spec, UnitTransform(g_perms, g_signs)) > before  # (m,)
        for k in perms:
            perms[k] = torch.where(better[:, None], g_perms[k], perms[k])
            if signs is not None:
                signs[k] = torch.where(better[:, None], g_signs[k], signs[k])

    rng = np.random.default_rng(seed)
    active = np.ones(m, dtype=bool)
    for _ in range(max_iter):
        if not names or not active.any():
            break
        idx_np = np.flatnonzero(active)
        idx = torch.from_numpy(idx_np)
        improved = np.zeros(m, dtype=bool)
        for j in rng.permutation(len(names)):
            p = names[j]
            sim = _similarity(a, b, ps, perms, signs, p, idx).numpy()  # (k, n, n)
            cur = perms[p][idx].numpy()  # (k, n)
            old = np.take_along_axis(sim, cur[:, :, None], 2)[:, :, 0]  # (k, n)
            if signs is not None:
                old = old * np.take_along_axis(signs[p][idx].numpy(), cur, 1)
            cols, sign, new = _lap_batch(sim, sign_aware)
            # Rounding of two sums of n terms must not count as progress.
            tol = 1e-10 * ps.sizes[p] * (np.abs(sim).max(axis=(1, 2)) + 1e-300)
            acc = new > old.sum(1) + tol  # (k,)
            rows = torch.from_numpy(idx_np[acc])
            perms[p][rows] = torch.from_numpy(cols[acc])
            if signs is not None:
                signs[p][rows] = torch.from_numpy(sign[acc])
            improved[idx_np[acc]] = True
        active &= improved
    return UnitTransform(perms, signs)
