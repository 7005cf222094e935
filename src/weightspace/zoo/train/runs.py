"""How one epoch of a population runs: on the torch path or on the fused kernel.

:class:`TorchRun` trains blocks of members (:func:`split_members`) side by side, each
:class:`BlockTrainer` on a worker thread with its own buffers, through the hand-written or
autograd backward (:mod:`weightspace.zoo.train.hand`) and :class:`FlatOptimizer`.
:class:`FusedRun` hands parts of the population to the C++ kernel
(:mod:`weightspace.zoo.train.fused`), which shuffles, trains and checks each member itself.
Both read the training data as :class:`TrainData`;
:func:`weightspace.zoo.train.loop.train_population` drives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from weightspace.nets.spec import Params
from weightspace.zoo.train import fused
from weightspace.zoo.train.data_order import shuffled
from weightspace.zoo.train.hand import HandBackprop
from weightspace.zoo.train.optim import FlatOptimizer


def split_members(n: int, size: int) -> list[slice]:
    """``n`` members in nearly equal consecutive blocks of at most ``size``."""
    k = max(1, -(-n // max(1, size)))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class TrainData:
    """What every block reads: the task's training data as the members see it."""

    x_rows: Tensor  # (N, in (+ 1)): the rows a batch gathers (with the bias's ones column)
    y: Tensor  # (N,) class indices or (N, out) regression targets
    labels: Tensor | None  # (M, N) per-member labels (label noise), or None: y for all
    classification: bool
    shared: bool  # all members see the same examples in the same order
    batch_size: int
    bases: np.ndarray  # (M or 1, n_seen): the examples each member sees, before shuffling
    seeds: np.ndarray  # (M,) data seeds
    # (M, out, N) each member's own regression targets (INR tasks: y is unused), or None
    member_y: Tensor | None = None


class BlockTrainer:
    """Trains one block of members, epoch by epoch, with buffers of its own.

    Blocks are independent (no member's computation involves another's), so several run
    at once on different threads; their results do not depend on how members are blocked.
    """

    def __init__(self, j, layout, grad_fn, theta, opt, active, diverged_epoch, data):
        self.j, self.r = j, layout.blocks[j]
        self.c = self.r.stop - self.r.start
        self.grad_fn, self.opt, self.data = grad_fn, opt, data
        self.active, self.diverged_epoch = active[self.r], diverged_epoch[self.r]  # views
        # Segments per parameter buffer, raw and as the products take them.
        self.segs = [list(layout.segments(t, j).values()) for t in theta]
        self.views = [grad_fn.layers(layout.segments(t, j)) for t in theta]
        g = layout.segments(opt.grad_target, j)
        self.grad_segs, self.grad_views = list(g.values()), grad_fn.layers(g)
        self.sums = torch.empty(self.c, len(self.segs[0]), device=active.device)
        self.x_bufs: dict[int, Tensor] = {}

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs (c, B, in (+ 1)) and targets of a batch; idx: (c, B) example indices."""
        d, c, b = self.data, self.c, idx.shape[1]
        if d.shared:  # one batch for all: gathered once, expanded
            xb = d.x_rows.index_select(0, idx[0])
            xb = xb.expand(c, b, -1) if isinstance(self.grad_fn, HandBackprop) else xb
            if d.member_y is not None:  # the same examples of each member's own targets
                return xb, d.member_y[self.r].index_select(2, idx[0])  # (c, out, B)
            if d.classification:
                return xb, d.y[idx[0]].view(1, 1, b).expand(c, 1, b)
            return xb, d.y[idx[0]].T.unsqueeze(0).expand(c, -1, -1)
        buf = self.x_bufs.get(b)
        if buf is None:
            buf = self.x_bufs[b] = d.x_rows.new_empty(c * b, d.x_rows.shape[1])
        xb = torch.index_select(d.x_rows, 0, idx.view(-1), out=buf).view(c, b, -1)
        if d.member_y is not None:  # (c, out, B) of each member's own targets
            y = d.member_y[self.r]
            return xb, y.gather(2, idx.unsqueeze(1).expand(c, y.shape[1], b))
        if not d.classification:
            return xb, d.y[idx].transpose(1, 2)  # (c, out, B)
        if d.labels is None:  # (c, 1, B); index_select is several times faster than y[idx]
            return xb, d.y.index_select(0, idx.view(-1)).view(c, 1, b)
        return xb, d.labels[self.r].gather(1, idx).unsqueeze(1)

    @torch.no_grad()
    def epoch(self, epoch: int, order: Tensor, t: int) -> None:
        """Train one epoch in ``order`` (c, n_seen); ``t`` steps were taken before."""
        bs, c = self.data.batch_size, self.c
        cur = t % 2  # parameter buffer holding the current parameters
        for start in range(0, order.shape[1], bs):
            t += 1
            xb, target = self._batch(order[:, start : start + bs].contiguous())
            new = 1 - cur
            loss = self.grad_fn(self.views[cur], self.grad_views, xb, target, self.opt.beta)
            p, p_new = self.segs[cur], self.segs[new]
            self.opt.update(self.j, t, p, self.grad_segs, p_new)
            # A member's sum is finite iff all its entries are (or it overflows: diverged
            # too). Members that diverged before stay inactive.
            for k, seg in enumerate(p_new):
                torch.sum(seg.view(c, -1), 1, out=self.sums[:, k])
            finite = self.active & torch.isfinite(loss) & torch.isfinite(self.sums).all(1)
            if not bool(finite.all()):
                bad = ~finite
                for pk, nk in zip(p, p_new):  # the diverged keep their last parameters
                    nk[bad] = pk[bad]
                newly = (self.active & bad).cpu().numpy()
                self.diverged_epoch[newly & (self.diverged_epoch < 0)] = epoch
                self.active &= finite
            cur = new


class TorchRun:
    """The population on the torch path: blocks of members, each trained on a pool thread."""

    def __init__(
        self, spec, members, init, static, data, layout, make_grad_fn, diverged_epoch, n_threads
    ):
        device = next(iter(init.values())).device
        self.data, self.device = data, device
        self.layout, self.serial = layout, n_threads == 1
        # Two parameter buffers: a step reads one and writes the other.
        self.theta = [layout.pack(init, layout.new(device)), layout.new(device)]
        self.cur = 0
        opt = FlatOptimizer(static["optimizer"], members, layout, device)
        active = torch.ones(len(members), dtype=torch.bool, device=device)
        self.trainers = [
            BlockTrainer(
                j,
                layout,
                make_grad_fn(spec, layout, data.classification),
                self.theta,
                opt,
                active,
                diverged_epoch,
                data,
            )
            for j in range(len(layout.blocks))
        ]

    def orders(self, epoch: int) -> Tensor:
        """The members' data orders for ``epoch``, (M, n_seen) (drawn ahead, on a thread)."""
        d = self.data
        if d.shared:  # one order, drawn once
            one = shuffled(d.bases[:1], d.seeds[:1], epoch)
            return torch.from_numpy(one).to(self.device).expand(len(d.seeds), -1)
        return torch.from_numpy(shuffled(d.bases, d.seeds, epoch)).to(self.device)

    def epoch(self, pool, epoch: int, order: Tensor, t: int, diverged_epoch: np.ndarray) -> None:
        if self.serial:
            for tr in self.trainers:
                tr.epoch(epoch, order[tr.r], t)
        else:
            jobs = [pool.submit(tr.epoch, epoch, order[tr.r], t) for tr in self.trainers]
            for job in jobs:
                job.result()
        bs = self.trainers[0].data.batch_size
        self.cur = (t + -(-order.shape[1] // bs)) % 2

    def params(self) -> Params:
        return self.layout.unpack(self.theta[self.cur])


class FusedRun:
    """The population on the fused kernel: members split into parts, one per pool job."""

    def __init__(self, spec, members, init, static, data: TrainData, n_threads: int):
        self.pop = fused.FusedPopulation(
            spec,
            init,
            static["optimizer"],
            members["lr"].to_numpy(),
            members["momentum"].to_numpy(),
            members["weight_decay"].to_numpy(),
        )
        self.data = data
        n = len(members)
        # Parts of at most 64 members: a member that diverges early makes its part short,
        # and the pool hands the next part to whichever thread is free.
        self.parts = split_members(n, min(64, -(-n // n_threads)))
        if data.classification:
            self.targets = data.labels if data.labels is not None else data.y
        else:
            self.targets = data.y

        self.bases, self.seeds = torch.from_numpy(data.bases), torch.from_numpy(data.seeds)

    def orders(self, epoch: int) -> None:
        """None: the kernel shuffles each member's examples itself."""
        return None

    def epoch(self, pool, epoch: int, order: None, t: int, diverged_epoch: np.ndarray) -> None:
        before = self.pop.active.clone()
        d = self.data

        def run(r: slice) -> None:
            bs = d.batch_size
            self.pop.epoch(d.x_rows, self.targets, self.bases, bs, t, r, self.seeds, epoch)

        for _ in pool.map(run, self.parts):
            pass
        newly = (before & ~self.pop.active).numpy()
        diverged_epoch[newly & (diverged_epoch < 0)] = epoch

    def params(self) -> Params:
        return self.pop.tensors()
