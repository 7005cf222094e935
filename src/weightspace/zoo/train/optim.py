"""The optimizer of population training: SGD or Adam over a flat buffer of many members.

The update rules are ``torch.optim.SGD`` (momentum, L2 weight decay added to the gradient)
and ``torch.optim.Adam`` exactly, with a learning rate, momentum and weight decay per member,
so a member trained in a population matches the same member trained alone with
``torch.optim`` (``tests/zoo/test_train.py`` checks it).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor

from weightspace.zoo.train.hand import FlatLayout

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class FlatOptimizer:
    """SGD or Adam over a :class:`FlatLayout` buffer, per-member lr / momentum / decay.

    The update rules are ``torch.optim.SGD`` (momentum, L2 decay added to the gradient) and
    ``torch.optim.Adam``. The step is memory-bound, so it makes few passes over the
    contiguous segments of a block of members and allocates nothing: the new parameters go
    to another buffer, so the old ones stay at hand for members that just diverged.

    When all members share SGD's momentum (``fused``), the gradient is accumulated straight
    into the momentum buffer by the backward's products (``beta = momentum``), which saves
    writing the gradient and a pass over it: :attr:`grad_target` is where gradients go.
    """

    def __init__(self, name: str, members: pd.DataFrame, layout: FlatLayout, device):
        def col(k: str) -> Tensor:  # (M,)
            return torch.tensor(members[k].to_numpy(), dtype=torch.float32, device=device)

        self.name, self.blocks = name, layout.blocks
        lr, wd, momentum = col("lr"), col("weight_decay"), col("momentum")
        self.decay = bool((wd != 0).any())  # skip a pass when nobody decays
        # Per block: (c,) views, reshaped to broadcast over each segment.
        self.neg_lr = [-lr[r] for r in self.blocks]
        self.wd = [wd[r] for r in self.blocks]
        self.momentum = [momentum[r] for r in self.blocks]
        n_state = 1 if name == "sgd" else 2
        self.state = [layout.new(device) for _ in range(n_state)]
        self.state_segments = [
            [list(layout.segments(s, j).values()) for s in self.state]
            for j in range(len(self.blocks))
        ]
        self.fused = name == "sgd" and members["momentum"].nunique() == 1
        self.beta = float(members["momentum"].iloc[0]) if self.fused else 0.0
        self.grad_target = self.state[0] if self.fused else layout.new(device)

    @torch.no_grad()
    def update(
        self, block: int, t: int, p: list[Tensor], g: list[Tensor], new: list[Tensor]
    ) -> None:
        """new = p after step ``t`` (1-based), for the members of ``block``.

        p, g, new: that block's segments, each (c, ...); ``g`` holds the gradient (fused:
        already the new momentum buffer) and is used as scratch.
        """
        state = self.state_segments[block]
        lr, wd, mom = self.neg_lr[block], self.wd[block], self.momentum[block]
        if self.name == "adam":
            b1, b2 = ADAM_BETAS
            scale, bc2_sqrt = lr / (1 - b1**t), math.sqrt(1 - b2**t)
        for i, (pk, gk, nk) in enumerate(zip(p, g, new)):
            sh = (-1,) + (1,) * (pk.dim() - 1)  # per-member values broadcast over a segment
            if self.decay:
                gk.addcmul_(pk, wd.view(sh))  # L2 decay added to the gradient, as torch.optim
            if self.fused:  # gk is the momentum buffer, already mom * buf + gradient
                torch.addcmul(pk, gk, lr.view(sh), out=nk)
            elif self.name == "sgd":
                buf = state[0][i]
                torch.addcmul(gk, buf, mom.view(sh), out=buf)  # buf = mom * buf + g
                torch.addcmul(pk, buf, lr.view(sh), out=nk)
            else:
                m, v = state[0][i], state[1][i]
                m.lerp_(gk, 1 - b1)
                v.mul_(b2).addcmul_(gk, gk, value=1 - b2)
                # m / (sqrt(v / bc2) + eps), computed in g's buffer (g is not needed any more)
                ratio = torch.sqrt(v, out=gk).div_(bc2_sqrt).add_(ADAM_EPS)
                torch.div(m, ratio, out=ratio)
                torch.addcmul(pk, ratio, scale.view(sh), out=nk)
