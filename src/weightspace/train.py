"""Training a population of MLPs at once.

All members of a population share static shapes (activation, optimizer, batch size, epochs,
subset size) and differ in everything else: seed, init, learning rate, momentum, weight
decay, data order, label noise. Their parameters are stacked on a leading model axis and one
step of the whole population is a handful of batched matrix products; per-member
hyperparameters are tensors broadcast over that axis. There is no Python loop over members
in the training step.

The optimizers follow ``torch.optim.SGD`` (momentum, L2 weight decay added to the gradient)
and ``torch.optim.Adam`` update rules exactly, so a member trained here matches the same
member trained alone with ``torch.optim`` (``tests/test_train.py`` checks it).

A member whose loss or parameters become non-finite is *diverged*: its update is masked out
from then on, so it stays frozen at its last finite parameters and cannot affect the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.errors import ConfigError
from weightspace.fastmlp import AutogradBackprop, FlatLayout, HandBackprop, hand_supported
from weightspace.init import init_population
from weightspace.mlp import MLPSpec, effective_params, forward
from weightspace.population import STATIC_KEYS
from weightspace.tasks import Task

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
EVAL_BUDGET = 1 << 22  # activation entries per evaluation forward
CHUNK = 128  # members per block of a training step (their working set stays in cache)


# --------------------------------------------------------------------------- data order
def member_subset(data_seed: int, n_train: int, subset: float) -> np.ndarray:
    """Sorted indices of the training examples a member sees (all of them if subset == 1)."""
    if subset >= 1.0:
        return np.arange(n_train)
    n = max(1, int(round(subset * n_train)))
    rng = np.random.default_rng([int(data_seed), 1])
    return np.sort(rng.choice(n_train, size=n, replace=False))


def member_epoch_order(data_seed: int, n_train: int, subset: float, epoch: int) -> np.ndarray:
    """Order in which a member visits its training examples in ``epoch`` (1-based)."""
    idx = member_subset(data_seed, n_train, subset)
    return idx[np.random.default_rng([int(data_seed), 2, int(epoch)]).permutation(len(idx))]


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
        self._lr = lr
        n_state = 1 if name == "sgd" else 2
        self.state = [layout.new(device) for _ in range(n_state)]
        self.state_segments = [
            [list(layout.segments(s, j).values()) for s in self.state]
            for j in range(len(self.blocks))
        ]
        uniform = name == "sgd" and members["momentum"].nunique() == 1
        self.fused = uniform
        self.beta = float(members["momentum"].iloc[0]) if uniform else 0.0
        self.grad_target = self.state[0] if uniform else layout.new(device)
        self.t = 0

    def begin_step(self) -> None:
        """Start a step of the whole population (Adam's bias corrections count steps)."""
        self.t += 1
        if self.name == "adam":
            self._scale = -self._lr / (1 - ADAM_BETAS[0] ** self.t)
            self._bc2_sqrt = math.sqrt(1 - ADAM_BETAS[1] ** self.t)

    @torch.no_grad()
    def update(self, block: int, p: list[Tensor], g: list[Tensor], new: list[Tensor]) -> None:
        """new = p after one step, for the members of ``block``.

        p, g, new: that block's segments, each (c, ...); ``g`` holds the gradient (fused:
        already the new momentum buffer) and is used as scratch.
        """
        state = self.state_segments[block]
        lr, wd, mom = self.neg_lr[block], self.wd[block], self.momentum[block]
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
                b1, b2 = ADAM_BETAS
                m.lerp_(gk, 1 - b1)
                v.mul_(b2).addcmul_(gk, gk, value=1 - b2)
                # m / (sqrt(v / bc2) + eps), computed in g's buffer (g is not needed any more)
                ratio = torch.sqrt(v, out=gk).div_(self._bc2_sqrt).add_(ADAM_EPS)
                torch.div(m, ratio, out=ratio)
                scale = self._scale[self.blocks[block]]
                torch.addcmul(pk, ratio, scale.view(sh), out=nk)


# --------------------------------------------------------------------------- population
@dataclass
class PopulationResult:
    """What training a population produced."""

    epochs: list[int]  # checkpoint epochs, ascending, 0 included
    weights: dict[str, Tensor]  # name -> (M, n_checkpoints, ...), effective and trainable
    metrics: pd.DataFrame  # one row per member x checkpoint
    diverged_epoch: np.ndarray  # (M,) epoch in which the member diverged, -1 if never


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
    params: dict[str, Tensor], spec: MLPSpec, x: Tensor, y: Tensor, task: Task
) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy (NaN for regression) of every member on (x, y): two (M,)."""
    m = next(iter(params.values())).shape[0]
    # Keep the widest activation (M, chunk, width) near 16 MB: large intermediates are slow.
    chunk = max(1, EVAL_BUDGET // (m * max(spec.widths[1:])))
    loss_sum = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.float64, device=x.device)
    for s in range(0, len(x), chunk):
        xb, yb = x[s : s + chunk], y[s : s + chunk]
        out = forward(params, xb, spec)
        loss_sum += per_example_loss(out, yb, task).double().sum(1)
        if task.is_classification:
            correct += (out.argmax(-1) == yb).double().sum(1)
    n = len(x)
    acc = correct / n if task.is_classification else torch.full_like(correct, float("nan"))
    return (loss_sum / n).float(), acc.float()


def _chunks(n: int, size: int) -> list[slice]:
    """``n`` members in nearly equal consecutive blocks of at most ``size``."""
    k = max(1, -(-n // max(1, size)))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def train_population(
    task: Task,
    spec: MLPSpec,
    members: pd.DataFrame,
    checkpoints: list[int] | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int], None] | None = None,
    *,
    backprop: str = "auto",
    chunk: int = CHUNK,
) -> PopulationResult:
    """Train the members (rows of a population table sharing the static keys) together.

    ``spec.activation`` is replaced by the members' own. ``on_epoch(e)`` is called after each
    epoch, for progress bars. ``backprop``: ``"hand"`` (the written-out backward of
    :mod:`weightspace.fastmlp`), ``"autograd"``, or ``"auto"`` (hand where it applies).
    Each step runs ``chunk`` members at a time, so that their parameters, gradients,
    optimizer state and activations stay in cache.
    """
    static = _static(members)
    spec = MLPSpec(spec.widths, static["activation"], spec.bias, spec.weight_norm)
    device = torch.device(device)
    n_members, epochs, bs = len(members), int(static["epochs"]), int(static["batch_size"])
    keep = checkpoint_epochs(checkpoints, epochs)
    if backprop not in ("auto", "hand", "autograd"):
        raise ValueError(f"backprop: 'auto', 'hand' or 'autograd', got {backprop!r}")
    hand = hand_supported(spec) if backprop == "auto" else backprop == "hand"

    blocks = _chunks(n_members, chunk)
    layout = FlatLayout(spec, blocks, fold=hand)
    grad_fn = (HandBackprop if hand else AutogradBackprop)(spec, layout, task.is_classification)
    # Two parameter buffers: a step reads one and writes the other.
    init = {k: v.to(device) for k, v in init_population(spec, members).items()}
    theta = [layout.pack(init, layout.new(device)), layout.new(device)]
    opt = _FlatOptimizer(static["optimizer"], members, layout, device)
    # The views every block computes with, made once: segments [buffer][block], and as the
    # products take them.
    nb = range(len(blocks))
    segs = [[list(layout.segments(t, j).values()) for j in nb] for t in theta]
    views = [[grad_fn.layers(layout.segments(t, j)) for j in nb] for t in theta]
    grad_segs = [list(layout.segments(opt.grad_target, j).values()) for j in nb]
    grad_views = [grad_fn.layers(layout.segments(opt.grad_target, j)) for j in nb]
    col_sums = torch.empty(max(r.stop - r.start for r in blocks), len(layout.shapes), device=device)

    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    x_rows = grad_fn.inputs(x_train)  # what a batch gathers: (N, in (+ 1))
    x_test, y_test = task.x_test.to(device), task.y_test.to(device)
    n_train = len(x_train)
    data_seeds = members["data_seed"].to_numpy()
    subset = float(static["subset"])
    noise = members["label_noise"].to_numpy()
    if task.is_classification:
        labels = torch.stack(
            [member_labels(s, task.y_train, task.n_classes, f) for s, f in zip(data_seeds, noise)]
        ).to(device)  # (M, N)
    elif (noise > 0).any():
        raise ConfigError("zoo.hparams.label_noise: only classification tasks have labels")
    # One data stream for everybody when the members see the same examples in the same order.
    shared = len(set(data_seeds)) == 1 and not (noise > 0).any()
    x_bufs: dict[tuple[int, int], Tensor] = {}  # (chunk, batch) -> gathered inputs

    active = torch.ones(n_members, dtype=torch.bool, device=device)
    diverged_epoch = np.full(n_members, -1, dtype=np.int64)
    snapshots: list[dict[str, Tensor]] = []
    rows: list[pd.DataFrame] = []
    cur = 0  # which parameter buffer holds the current parameters

    def checkpoint(epoch: int) -> None:
        params = layout.unpack(theta[cur])
        eff = effective_params(params, spec)
        snapshots.append(
            {
                **{k: v.detach().cpu().clone() for k, v in params.items()},
                **{k: v.detach().cpu().clone() for k, v in eff.items()},
            }
        )
        tr_loss, tr_acc = evaluate(eff, spec, x_train, y_train, task)
        te_loss, te_acc = evaluate(eff, spec, x_test, y_test, task)
        rows.append(
            pd.DataFrame(
                {
                    "member_id": members["member_id"].to_numpy(),
                    "epoch": epoch,
                    "train_loss": tr_loss.cpu().numpy(),
                    "train_acc": tr_acc.cpu().numpy(),
                    "test_loss": te_loss.cpu().numpy(),
                    "test_acc": te_acc.cpu().numpy(),
                    "diverged": (diverged_epoch >= 0),
                }
            )
        )

    checkpoint(0)
    with flush_denormals(), torch.no_grad():
        for epoch in range(1, epochs + 1):
            order = torch.from_numpy(
                np.stack([member_epoch_order(s, n_train, subset, epoch) for s in data_seeds])
            ).to(device)  # (M, n_seen)
            for start in range(0, order.shape[1], bs):
                idx = order[:, start : start + bs].contiguous()  # (M, B)
                b = idx.shape[1]
                if shared:  # one batch for all: (B, in), expanded per chunk
                    xs = x_rows.index_select(0, idx[0])
                    if task.is_classification:
                        target = labels[0, idx[0]].view(1, 1, b).expand(n_members, 1, b)
                    else:
                        target = y_train[idx[0]].T.unsqueeze(0).expand(n_members, -1, -1)
                elif task.is_classification:
                    target = labels.gather(1, idx).unsqueeze(1)  # (M, 1, B)
                else:
                    target = y_train[idx].transpose(1, 2)  # (M, out, B)
                opt.begin_step()
                new = 1 - cur
                for i, r in enumerate(blocks):
                    c = r.stop - r.start
                    if shared:
                        xb = xs.expand(c, b, -1) if hand else xs
                    else:
                        buf = x_bufs.get((c, b))
                        if buf is None:
                            buf = x_bufs[(c, b)] = x_rows.new_empty(c * b, x_rows.shape[1])
                        xb = torch.index_select(x_rows, 0, idx[r].view(-1), out=buf)
                        xb = xb.view(c, b, -1)  # (c, B, in)
                    loss = grad_fn(views[cur][i], grad_views[i], xb, target[r], opt.beta)
                    p, p_new = segs[cur][i], segs[new][i]
                    opt.update(i, p, grad_segs[i], p_new)
                    # A member's sum is finite iff all its entries are (or it overflows:
                    # diverged too). Frozen members stay inactive.
                    sums = col_sums[:c]
                    for k, seg in enumerate(p_new):
                        torch.sum(seg.view(c, -1), 1, out=sums[:, k])
                    finite = active[r] & torch.isfinite(loss) & torch.isfinite(sums).all(1)
                    if not bool(finite.all()):
                        bad = ~finite
                        for pk, nk in zip(p, p_new):  # diverged and frozen members keep theirs
                            nk[bad] = pk[bad]
                        newly = (active[r] & bad).cpu().numpy()
                        d = diverged_epoch[r]
                        d[newly & (d < 0)] = epoch
                        active[r] &= finite
                cur = new
            if epoch in keep:
                checkpoint(epoch)
            if on_epoch is not None:
                on_epoch(epoch)

    weights = {k: torch.stack([s[k] for s in snapshots], dim=1) for k in snapshots[0]}
    return PopulationResult(keep, weights, pd.concat(rows, ignore_index=True), diverged_epoch)
