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
from weightspace.init import init_population
from weightspace.mlp import MLPSpec, effective_params, forward
from weightspace.population import STATIC_KEYS
from weightspace.tasks import Task

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
EVAL_BUDGET = 1 << 22  # activation entries per evaluation forward


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
class _PopulationOptimizer:
    """SGD or Adam over stacked parameters with per-member lr / momentum / weight decay.

    The step is memory-bound, so it makes few passes over the parameters and allocates
    nothing: the new parameters are written into a spare buffer that then trades places with
    the old ones, which stay at hand for members that just diverged.
    """

    def __init__(self, name: str, params: dict[str, Tensor], members: pd.DataFrame, device):
        def col(k: str) -> Tensor:
            return torch.tensor(members[k].to_numpy(), dtype=torch.float32, device=device)

        self.name = name
        self.lr, self.wd, self.momentum = col("lr"), col("weight_decay"), col("momentum")
        self.decay = bool((self.wd != 0).any())  # skip a full pass when nobody decays
        n_state = 1 if name == "sgd" else 2
        self.state = {k: [torch.zeros_like(p) for _ in range(n_state)] for k, p in params.items()}
        self.spare = {k: torch.empty_like(p) for k, p in params.items()}
        self.t = 0

    @staticmethod
    def _b(x: Tensor, like: Tensor) -> Tensor:
        """Per-member (M,) values broadcast against a stacked parameter (M, ...)."""
        return x.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], grads: dict[str, Tensor], active: Tensor) -> Tensor:
        """Update the members in ``active``; returns which of them stayed finite.

        ``params`` is rebound to the new tensors. A member whose new parameters are not all
        finite keeps its previous ones.
        """
        self.t += 1
        finite = active.clone()
        old: dict[str, Tensor] = {}
        for k, p in params.items():
            p = p.detach()
            g = grads[k]
            if self.decay:
                g.addcmul_(p, self._b(self.wd, p))  # L2 decay added to the gradient, as torch.optim
            new = self.spare[k]
            if self.name == "sgd":
                (buf,) = self.state[k]
                torch.addcmul(g, buf, self._b(self.momentum, p), out=buf)  # buf = mom*buf + g
                torch.addcmul(p, buf, self._b(-self.lr, p), out=new)
            else:
                m, v = self.state[k]
                b1, b2 = ADAM_BETAS
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
                # m / (sqrt(v / bc2) + eps), computed in g's buffer (g is not needed any more)
                ratio = torch.sqrt(v, out=g).div_(math.sqrt(bc2)).add_(ADAM_EPS)
                torch.div(m, ratio, out=ratio)
                torch.addcmul(p, ratio, self._b(-self.lr / bc1, p), out=new)
            # A member's sum is finite iff all its entries are (or it overflows: diverged too).
            finite &= torch.isfinite(new.flatten(1).sum(1))
            old[k] = p
        if not bool(finite.all()):
            for k, p in old.items():
                self.spare[k].copy_(torch.where(self._b(finite, p), self.spare[k], p))
        for k, p in old.items():
            params[k], self.spare[k] = self.spare[k].requires_grad_(True), p
        return finite


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


def train_population(
    task: Task,
    spec: MLPSpec,
    members: pd.DataFrame,
    checkpoints: list[int] | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int], None] | None = None,
) -> PopulationResult:
    """Train the members (rows of a population table sharing the static keys) together.

    ``spec.activation`` is replaced by the members' own. ``on_epoch(e)`` is called after each
    epoch, for progress bars.
    """
    static = _static(members)
    spec = MLPSpec(spec.widths, static["activation"], spec.bias, spec.weight_norm)
    device = torch.device(device)
    n_members, epochs, bs = len(members), int(static["epochs"]), int(static["batch_size"])
    keep = checkpoint_epochs(checkpoints, epochs)

    params = {k: v.to(device) for k, v in init_population(spec, members).items()}
    opt = _PopulationOptimizer(static["optimizer"], params, members, device)

    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
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

    active = torch.ones(n_members, dtype=torch.bool, device=device)
    diverged_epoch = np.full(n_members, -1, dtype=np.int64)
    snapshots: list[dict[str, Tensor]] = []
    rows: list[pd.DataFrame] = []

    def checkpoint(epoch: int) -> None:
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
    for p in params.values():
        p.requires_grad_(True)
    names = list(params)
    with flush_denormals():
        for epoch in range(1, epochs + 1):
            order = torch.from_numpy(
                np.stack([member_epoch_order(s, n_train, subset, epoch) for s in data_seeds])
            ).to(device)  # (M, n_seen)
            for start in range(0, order.shape[1], bs):
                idx = order[:, start : start + bs]  # (M, B)
                if shared:  # (B, in): one big matrix product in the first layer
                    xb = x_train.index_select(0, idx[0])
                    yb = labels[0, idx[0]] if task.is_classification else y_train[idx[0]]
                else:
                    xb = x_train.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)
                    yb = labels.gather(1, idx) if task.is_classification else y_train[idx]
                with torch.enable_grad():
                    loss = per_example_loss(forward(params, xb, spec), yb, task).mean(1)  # (M,)
                    ok = active & torch.isfinite(loss)
                    # Diverged members add nothing to the loss; their gradients are zeroed.
                    total = torch.where(ok, loss, torch.zeros_like(loss)).sum()
                    grads = dict(zip(names, torch.autograd.grad(total, [params[k] for k in names])))
                if not bool(ok.all()):
                    grads = {k: torch.where(opt._b(ok, g), g, 0.0) for k, g in grads.items()}
                still = opt.step(params, grads, ok)
                newly = (active & ~still).cpu().numpy()
                diverged_epoch[newly & (diverged_epoch < 0)] = epoch
                active &= still
            if epoch in keep:
                checkpoint(epoch)
            if on_epoch is not None:
                on_epoch(epoch)

    weights = {k: torch.stack([s[k] for s in snapshots], dim=1) for k in snapshots[0]}
    return PopulationResult(keep, weights, pd.concat(rows, ignore_index=True), diverged_epoch)
