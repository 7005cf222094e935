"""Training a population of MLPs at once.

All members of a population share static shapes (activation, optimizer, batch size, epochs,
subset size) and differ in everything else: seed, init, learning rate, momentum, weight
decay, data order, label noise. Their parameters are stacked on a leading model axis (in one
flat buffer, :class:`weightspace.zoo.train.hand.FlatLayout`) and one step of a block of members is
a handful of batched matrix products with a hand-written backward (autograd for weight
normalization); per-member hyperparameters are tensors broadcast over that axis. There is
no Python loop over members in the training step. Blocks are independent, so several train
at once on worker threads.

The optimizers follow ``torch.optim.SGD`` (momentum, L2 weight decay added to the gradient)
and ``torch.optim.Adam`` update rules exactly, so a member trained here matches the same
member trained alone with ``torch.optim`` (``tests/test_train.py`` checks it).

A member whose loss or parameters become non-finite is *diverged*: its update is masked out
from then on, so it stays frozen at its last finite parameters and cannot affect the others.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.errors import ConfigError
from weightspace.nets.forward import effective_params
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.init import init_population
from weightspace.zoo.population import STATIC_KEYS
from weightspace.zoo.tasks import Task
from weightspace.zoo.train import fused
from weightspace.zoo.train.hand import (
    AutogradBackprop,
    FlatLayout,
    HandBackprop,
    forward_classes_first,
    hand_supported,
)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
EVAL_BUDGET = 1 << 22  # activation entries per evaluation forward
CHUNK = 256  # members per block: large operations, and blocks enough to balance the workers


# --------------------------------------------------------------------------- data order
def member_subset(data_seed: int, n_train: int, subset: float) -> np.ndarray:
    """Sorted indices of the training examples a member sees (all of them if subset == 1)."""
    if subset >= 1.0:
        return np.arange(n_train)
    n = max(1, int(round(subset * n_train)))
    rng = np.random.default_rng([int(data_seed), 1])
    return np.sort(rng.choice(n_train, size=n, replace=False))


# The shuffle is a Fisher-Yates pass driven by a splitmix64 stream keyed by (data seed,
# epoch): cheap enough for the fused kernel to shuffle each member's examples itself, right
# before its epoch, and written out here in numpy, vectorized over members, as the reference
# (tests check that the two agree). docs/zoo-format.md states it.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX[0]
    z = (z ^ (z >> np.uint64(27))) * _MIX[1]
    return z ^ (z >> np.uint64(31))


def shuffled(base: np.ndarray, data_seeds: np.ndarray, epoch: int) -> np.ndarray:
    """Each row of ``base`` (M or 1, n) shuffled by the stream of its member's (seed, epoch).

    For i = n - 1 down to 1: the stream's next 64-bit word r gives j = ((r >> 32) * (i + 1))
    >> 32, and entries i and j swap. The stream starts at mix(mix(seed) ^ epoch * golden) and
    advances by golden (0x9E3779B97F4A7C15) before each word r = mix(state).
    """
    seeds = np.asarray(data_seeds, dtype=np.int64).reshape(-1).view(np.uint64)
    m, n = len(seeds), np.shape(base)[-1]
    base = np.broadcast_to(np.asarray(base, dtype=np.int64), (m, n))
    state = _mix64(_mix64(seeds) ^ np.uint64((int(epoch) * int(_GOLDEN)) % (1 << 64)))
    flat = base.T.copy().ravel()  # position-major: position i of every member contiguous
    cols = np.arange(m)
    step = 256  # swaps whose random words are drawn at once, for all members
    for top in range(n - 1, 0, -step):
        i = np.arange(top, max(0, top - step), -1, dtype=np.uint64)  # this run's positions
        k = np.uint64(n) - i  # words drawn so far, this one included
        r = _mix64(state[:, None] + k * _GOLDEN)  # (m, len(i))
        js = (((r >> np.uint64(32)) * (i + np.uint64(1))) >> np.uint64(32)).astype(np.int64)
        at = js * m + cols[:, None]  # flat index of (position j, member)
        for c, ii in enumerate(i.astype(np.int64)):
            a = at[:, c]
            at_j = flat[a]
            flat[a] = flat[ii * m : (ii + 1) * m]
            flat[ii * m : (ii + 1) * m] = at_j
    return flat.reshape(n, m).T.copy()


def _member_subsets(data_seeds: np.ndarray, n_train: int, subset: float) -> np.ndarray:
    """(1, n) when every member sees every example, else each member's subset, (M, n_seen)."""
    if subset >= 1.0:
        return np.arange(n_train, dtype=np.int64)[None]
    drawn = {s: member_subset(s, n_train, subset) for s in np.unique(data_seeds)}
    return np.stack([drawn[s] for s in data_seeds]).astype(np.int64)


def member_epoch_order(data_seed: int, n_train: int, subset: float, epoch: int) -> np.ndarray:
    """Order in which a member visits its training examples in ``epoch`` (1-based)."""
    return shuffled(member_subset(data_seed, n_train, subset)[None], [data_seed], epoch)[0]


def member_labels(data_seed: int, y: Tensor, n_classes: int, label_noise: float) -> Tensor:
    """A member's training labels: a ``label_noise`` fraction replaced by a different class."""
    if label_noise <= 0:
        return y
    rng = np.random.default_rng([int(data_seed), 3])
    n = int(round(label_noise * len(y)))
    which = rng.choice(len(y), size=n, replace=False)
    shift = rng.integers(1, n_classes, size=n)  # never the true class
    noisy = y.clone()
    noisy[which] = (y[which] + torch.from_numpy(shift)) % n_classes
    return noisy


def per_example_loss(out: Tensor, y: Tensor, task: Task) -> Tensor:
    """Loss of every example. out: (M, B, C); y: (B,) / (M, B) labels or (B, 1) targets."""
    if task.is_classification:
        m, b, _ = out.shape
        yy = y.expand(m, b) if y.dim() == 1 else y
        # Classes on dim 1, as a transposed view: log-softmax over a short innermost dim
        # (10 classes) is several times slower than over a strided one.
        return F.cross_entropy(out.transpose(1, 2), yy, reduction="none")
    return ((out - y) ** 2).mean(-1)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat subnormal floats as zero while training.

    Softmax outputs and gradients of confident members underflow into the subnormal range,
    where CPU arithmetic is many times slower (a population step measured 2x slower
    overall). The effect on the values is below float32 resolution of any weight.
    """
    # The flag cannot be read back directly, but a subnormal literal shows it.
    was_on = torch.tensor([1e-323], dtype=torch.float64).item() == 0.0
    supported = torch.set_flush_denormal(True)  # False where the CPU cannot flush
    try:
        yield
    finally:
        if supported and not was_on:
            torch.set_flush_denormal(False)


# --------------------------------------------------------------------------- optimizers
class _FlatOptimizer:
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


# --------------------------------------------------------------------------- population
@dataclass
class PopulationResult:
    """What training a population produced."""

    epochs: list[int]  # checkpoint epochs, ascending, 0 included
    weights: dict[str, Tensor]  # name -> (M, n_checkpoints, ...), effective and trainable
    metrics: pd.DataFrame  # one row per member x checkpoint
    diverged_epoch: np.ndarray  # (M,) epoch in which the member diverged, -1 if never
    trainer: str = "hand"  # which trainer ran: "fused", "hand" or "autograd"


def checkpoint_epochs(requested: list[int] | None, epochs: int) -> list[int]:
    """Checkpoints a member with ``epochs`` epochs keeps: 0, the requested ones, the last."""
    req = [int(e) for e in (requested or [])]
    if any(e < 0 for e in req):
        raise ConfigError(f"zoo.checkpoints: epochs must be >= 0, got {req}")
    return sorted({0, epochs, *(e for e in req if e <= epochs)})


def _static(members: pd.DataFrame) -> dict:
    static = {}
    for k in STATIC_KEYS:
        values = members[k].unique()
        if len(values) != 1:
            raise ValueError(f"a population must share {k}; got {list(values)}")
        static[k] = values[0].item() if hasattr(values[0], "item") else values[0]
    return static


@torch.no_grad()
def evaluate(
    params: dict[str, Tensor],
    spec: MLPSpec,
    x: Tensor,
    y: Tensor,
    task: Task,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy (NaN for regression) of every member on (x, y): two (M,).

    ``chunk``: examples per forward (default: a budget of activation entries); a member's
    numbers depend on it (in the last bit), not on the other members.

    params: effective (``weight`` / ``bias``) stacked tensors. The numbers of
    :func:`weightspace.nets.forward.forward` and :func:`per_example_loss`, computed chunk by
    chunk of examples with the output's classes on a strided axis (see
    :func:`weightspace.zoo.train.hand.forward_classes_first`).
    """
    m = next(iter(params.values())).shape[0]
    if chunk is None:
        chunk = eval_chunk(m, spec)
    chunk = max(1, min(len(x), chunk))
    loss_sum = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.float64, device=x.device)
    buffers: dict = {}
    for s in range(0, len(x), chunk):
        xb, yb = x[s : s + chunk], y[s : s + chunk]
        z = forward_classes_first(params, xb, spec, buffers)  # (M, out, n)
        n = xb.shape[0]
        if task.is_classification:
            lsm = torch.log_softmax(z, 1)
            loss_sum -= lsm.gather(1, yb.view(1, 1, n).expand(m, 1, n)).double().sum((1, 2))
            # max's indices are argmax's (the first maximum; NaN counts as the maximum)
            correct += (z.max(1).indices == yb).double().sum(1)
        else:
            loss_sum += (z - yb.T).square().mean(1).double().sum(1)
    n = len(x)
    acc = correct / n if task.is_classification else torch.full_like(correct, float("nan"))
    return (loss_sum / n).float(), acc.float()


def eval_chunk(n_members: int, spec: MLPSpec) -> int:
    """Examples per evaluation forward: the widest activation (M, chunk, width) near 16 MB.

    Large intermediates are slow.
    """
    return max(1, EVAL_BUDGET // (n_members * max(spec.widths[1:])))


def _chunks(n: int, size: int) -> list[slice]:
    """``n`` members in nearly equal consecutive blocks of at most ``size``."""
    k = max(1, -(-n // max(1, size)))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class _Data:
    """What every block reads: the task's training data as the members see it."""

    x_rows: Tensor  # (N, in (+ 1)): the rows a batch gathers (with the bias's ones column)
    y: Tensor  # (N,) class indices or (N, out) regression targets
    labels: Tensor | None  # (M, N) per-member labels (label noise), or None: y for all
    classification: bool
    shared: bool  # all members see the same examples in the same order
    batch_size: int
    bases: np.ndarray  # (M or 1, n_seen): the examples each member sees, before shuffling
    seeds: np.ndarray  # (M,) data seeds


class _BlockTrainer:
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
            if d.classification:
                return xb, d.y[idx[0]].view(1, 1, b).expand(c, 1, b)
            return xb, d.y[idx[0]].T.unsqueeze(0).expand(c, -1, -1)
        buf = self.x_bufs.get(b)
        if buf is None:
            buf = self.x_bufs[b] = d.x_rows.new_empty(c * b, d.x_rows.shape[1])
        xb = torch.index_select(d.x_rows, 0, idx.view(-1), out=buf).view(c, b, -1)
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


class _TorchRun:
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
        opt = _FlatOptimizer(static["optimizer"], members, layout, device)
        active = torch.ones(len(members), dtype=torch.bool, device=device)
        self.trainers = [
            _BlockTrainer(
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

    def params(self) -> dict[str, Tensor]:
        return self.layout.unpack(self.theta[self.cur])


TRAINERS = ("auto", "fused", "hand", "autograd")


def choose_trainer(spec: MLPSpec, device: str | torch.device, trainer: str = "auto") -> str:
    """The trainer that ``trainer`` resolves to for this spec and device.

    ``"auto"``: the fused kernel (:mod:`weightspace.zoo.train.fused`) where it applies and builds,
    else the hand-written backward where it applies, else autograd. Asking for ``"fused"``
    where it cannot run is an error naming the reason.
    """
    if trainer not in TRAINERS:
        raise ConfigError(f"trainer: one of {', '.join(TRAINERS)}, got {trainer!r}")
    device = torch.device(device)
    if trainer in ("auto", "fused"):
        why = fused.supported(spec, device)
        if why is None:
            why = fused.unavailable_reason()
            if why is not None and trainer == "auto":
                _warn_once(f"fused trainer unavailable ({why}); training with the torch path")
        if why is None:
            return "fused"
        if trainer == "fused":
            raise ConfigError(f"trainer: 'fused' cannot run here: {why}")
        return "hand" if hand_supported(spec) else "autograd"
    if trainer == "hand" and not hand_supported(spec):
        raise ConfigError("trainer: 'hand' does not cover weight normalization; use autograd")
    return trainer


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class _FusedRun:
    """The population on the fused kernel: members split into parts, one per pool job."""

    def __init__(self, spec, members, init, static, data: _Data, n_threads: int):
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
        self.parts = _chunks(n, min(64, -(-n // n_threads)))
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

    def params(self) -> dict[str, Tensor]:
        return self.pop.tensors()


def train_population(
    task: Task,
    spec: MLPSpec,
    members: pd.DataFrame,
    checkpoints: list[int] | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int], None] | None = None,
    *,
    trainer: str = "auto",
    chunk: int = CHUNK,
    threads: int | None = None,
) -> PopulationResult:
    """Train the members (rows of a population table sharing the static keys) together.

    ``spec.activation`` is replaced by the members' own. ``on_epoch(e)`` is called after each
    epoch, for progress bars. ``trainer`` picks how (:func:`choose_trainer`):
    ``"fused"`` (the C++ kernel of :mod:`weightspace.zoo.train.fused`, CPU), ``"hand"`` (the
    written-out backward of :mod:`weightspace.zoo.train.hand`), ``"autograd"``, or ``"auto"``.

    Members train in blocks of at most ``chunk`` (fused: parts of at most 64), ``threads``
    blocks at once (default: ``torch.get_num_threads()``), each block on one thread:
    independent blocks need no synchronization, where intra-op threads synchronize at every
    operation (and spin-wait for a busy core). Results do not depend on ``threads``; on the
    torch path they may depend on ``chunk`` in the last bits (some CPUs' kernels sum in an
    order that depends on the block's size), on the fused one they do not.
    """
    static = _static(members)
    spec = MLPSpec(spec.widths, static["activation"], spec.bias, spec.weight_norm)
    device = torch.device(device)
    n_members, epochs, bs = len(members), int(static["epochs"]), int(static["batch_size"])
    keep = checkpoint_epochs(checkpoints, epochs)
    trainer = choose_trainer(spec, device, trainer)
    hand = trainer == "hand"
    n_threads = max(1, min(threads or torch.get_num_threads(), n_members))
    if device.type != "cpu":
        n_threads = 1  # a GPU stream is parallel already

    # Blocks sized by ``chunk`` alone, not by the thread count: the zoo's bits must not
    # depend on the machine's cores.
    blocks = _chunks(n_members, chunk)
    layout = FlatLayout(spec, blocks, fold=hand)
    make_grad_fn = HandBackprop if hand else AutogradBackprop
    init = {k: v.to(device) for k, v in init_population(spec, members).items()}

    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    x_test, y_test = task.x_test.to(device), task.y_test.to(device)
    n_train = len(x_train)
    data_seeds = members["data_seed"].to_numpy()
    subset = float(static["subset"])
    noise = members["label_noise"].to_numpy()
    labels = None
    if task.is_classification and (noise > 0).any():
        labels = torch.stack(
            [member_labels(s, task.y_train, task.n_classes, f) for s, f in zip(data_seeds, noise)]
        ).to(device)  # (M, N)
    elif (noise > 0).any():
        raise ConfigError("zoo.hparams.label_noise: only classification tasks have labels")
    data = _Data(
        x_train if trainer == "fused" else make_grad_fn.inputs(spec, x_train),
        y_train,
        labels,
        task.is_classification,
        # One data stream for everybody when the members see the same examples in the same
        # order: the first layer gathers one batch for all.
        shared=len(set(data_seeds)) == 1 and labels is None,
        batch_size=bs,
        bases=_member_subsets(data_seeds, n_train, subset),
        seeds=data_seeds.astype(np.int64),
    )

    diverged_epoch = np.full(n_members, -1, dtype=np.int64)
    if trainer == "fused":
        run = _FusedRun(spec, members, init, static, data, n_threads)
    else:
        run = _TorchRun(
            spec, members, init, static, data, layout, make_grad_fn, diverged_epoch, n_threads
        )
    snapshots: list[dict[str, Tensor]] = []
    rows: list[pd.DataFrame] = []

    def checkpoint(epoch: int) -> None:
        params = run.params()
        eff = effective_params(params, spec)
        snapshots.append(
            {
                **{k: v.detach().cpu().clone() for k, v in params.items()},
                **{k: v.detach().cpu().clone() for k, v in eff.items()},
            }
        )

        # Members evaluated in parts of a fixed size (not one per thread: the numbers must
        # not depend on the cores), with a fixed chunk of examples.
        def part(r: slice) -> list[Tensor]:
            if trainer == "fused":  # the kernel's own forward
                pop = run.pop
                return [*pop.evaluate(x_train, y_train, r), *pop.evaluate(x_test, y_test, r)]
            p = {k: v[r] for k, v in eff.items()}
            return [
                *evaluate(p, spec, x_train, y_train, task, eval_chunk(n_members, spec)),
                *evaluate(p, spec, x_test, y_test, task, eval_chunk(n_members, spec)),
            ]

        # (The kernel's numbers are per member whatever the parts: its own are finer.)
        by = run.parts if trainer == "fused" else _chunks(n_members, chunk)
        parts = list(pool.map(part, by))
        tr_loss, tr_acc, te_loss, te_acc = (torch.cat(c).cpu().numpy() for c in zip(*parts))
        rows.append(
            pd.DataFrame(
                {
                    "member_id": members["member_id"].to_numpy(),
                    "epoch": epoch,
                    "train_loss": tr_loss,
                    "train_acc": tr_acc,
                    "test_loss": te_loss,
                    "test_acc": te_acc,
                    "diverged": (diverged_epoch >= 0),
                }
            )
        )

    steps_per_epoch = -(-data.bases.shape[1] // bs)
    threads_before = torch.get_num_threads()
    # One pool runs the blocks (and evaluates); on the torch path one more thread draws the
    # next epoch's data orders while this epoch trains. The flush-to-zero
    # mode is a per-thread CPU flag: the workers set their own.
    with (
        flush_denormals(),
        ThreadPoolExecutor(
            n_threads, initializer=torch.set_flush_denormal, initargs=(True,)
        ) as pool,
        ThreadPoolExecutor(1) as prefetch,
    ):
        if n_threads > 1:
            torch.set_num_threads(1)
        try:
            next_order = prefetch.submit(run.orders, 1)
            checkpoint(0)
            for epoch in range(1, epochs + 1):
                order = next_order.result()
                if epoch < epochs:
                    next_order = prefetch.submit(run.orders, epoch + 1)
                t = (epoch - 1) * steps_per_epoch
                run.epoch(pool, epoch, order, t, diverged_epoch)
                if epoch in keep:
                    checkpoint(epoch)
                if on_epoch is not None:
                    on_epoch(epoch)
        finally:
            torch.set_num_threads(threads_before)

    weights = {k: torch.stack([s[k] for s in snapshots], dim=1) for k in snapshots[0]}
    metrics = pd.concat(rows, ignore_index=True)
    return PopulationResult(keep, weights, metrics, diverged_epoch, trainer)
