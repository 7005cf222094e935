"""Training a population of MLPs at once: :func:`train_population` and the trainer choice.

All members of a population share static shapes (activation, optimizer, batch size, epochs,
subset size) and differ in everything else: seed, init, learning rate, momentum, weight
decay, data order (:mod:`.data_order`), label noise. Their parameters are stacked on a leading
model axis (in one flat buffer, :class:`weightspace.zoo.train.hand.FlatLayout`) and one step of
a block of members is a handful of batched matrix products with a hand-written backward
(autograd for weight normalization); per-member hyperparameters are tensors broadcast over
that axis. There is no Python loop over members in the training step. Blocks are
independent, so several train at once on worker threads (:mod:`.runs`); on CPU the fused
kernel (:mod:`.fused`) trains each member's epoch in one call instead.

The optimizers (:mod:`.optim`) follow ``torch.optim.SGD`` (momentum, L2 weight decay added to
the gradient) and ``torch.optim.Adam`` update rules exactly, so a member trained here matches
the same member trained alone with ``torch.optim`` (``tests/zoo/test_train.py`` checks it).

A member whose loss or parameters become non-finite is *diverged*: its update is masked out
from then on, so it stays frozen at its last finite parameters and cannot affect the others.
A finite loss that explodes is divergence too: a member whose train loss at a checkpoint
exceeds :data:`LOSS_EXPLOSION` times ``max(its epoch-0 train loss, 1)`` is flagged diverged
at that checkpoint's epoch (it is not frozen: the check runs at checkpoints only).
Checkpoints are evaluated with :func:`weightspace.nets.metrics.evaluate` (the fused kernel:
its own forward).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.errors import ConfigError
from weightspace.nets.forward import effective_params
from weightspace.nets.metrics import eval_chunk, evaluate, psnr
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.init import init_population
from weightspace.zoo.inr import SignalTask, check_members, member_signals
from weightspace.zoo.population import STATIC_KEYS
from weightspace.zoo.tasks import Task
from weightspace.zoo.train import fused
from weightspace.zoo.train.data_order import member_labels, member_subsets
from weightspace.zoo.train.hand import AutogradBackprop, FlatLayout, HandBackprop, hand_supported
from weightspace.zoo.train.runs import FusedRun, TorchRun, TrainData, split_members

#: Train loss above this many times max(epoch-0 train loss, 1) at a checkpoint: diverged.
LOSS_EXPLOSION = 1e6
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")  # INR tasks: train_loss, psnr
CHUNK = 256  # members per block: large operations, and blocks enough to balance the workers


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


# --------------------------------------------------------------------------- population
@dataclass
class PopulationResult:
    """What training a population produced."""

    epochs: list[int]  # checkpoint epochs, ascending, 0 included
    weights: Params  # name -> (M, n_checkpoints, ...), effective and trainable
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


TRAINERS = ("auto", "fused", "hand", "autograd")


def choose_trainer(
    spec: MLPSpec,
    device: str | torch.device,
    trainer: str = "auto",
    option: str = "trainer",
    per_member_targets: bool = False,
) -> str:
    """The trainer that ``trainer`` resolves to for this spec and device.

    ``"auto"``: the fused kernel (:mod:`weightspace.zoo.train.fused`) where it applies and builds,
    else the hand-written backward where it applies, else autograd. Asking for ``"fused"``
    where it cannot run is an error naming the reason (and ``option``, the setting it came from).
    ``per_member_targets`` (INR tasks: each member fits its own signal): the kernel does not
    take them, so ``"auto"`` is the torch path without a word.
    """
    if trainer not in TRAINERS:
        raise ConfigError(f"{option}: one of {', '.join(TRAINERS)}, got {trainer!r}")
    device = torch.device(device)
    if per_member_targets and trainer in ("auto", "fused"):
        if trainer == "fused":
            raise ConfigError(
                f"{option}: 'fused' cannot run here: the kernel takes no per-member targets "
                "(INR tasks); use auto, hand or autograd"
            )
        return "hand" if hand_supported(spec) else "autograd"
    if trainer in ("auto", "fused"):
        why = fused.supported(spec, device)
        if why is None:
            why = fused.unavailable_reason()
            if why is not None and trainer == "auto":
                _warn_once(f"fused trainer unavailable ({why}); training with the torch path")
        if why is None:
            return "fused"
        if trainer == "fused":
            raise ConfigError(f"{option}: 'fused' cannot run here: {why}")
        return "hand" if hand_supported(spec) else "autograd"
    if trainer == "hand" and not hand_supported(spec):
        raise ConfigError(f"{option}: 'hand' does not cover weight normalization; use autograd")
    return trainer


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def train_population(
    task: Task | SignalTask,
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
    An INR task (:class:`~weightspace.zoo.inr.SignalTask`): member i fits its own signal
    (:func:`~weightspace.zoo.inr.member_signals`) on the task's coordinates, always on the torch
    path, and its metrics are ``train_loss`` (MSE) and ``psnr`` (peak: the signal's range).

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
    inr = isinstance(task, SignalTask)
    trainer = choose_trainer(spec, device, trainer, per_member_targets=inr)
    hand = trainer == "hand"
    n_threads = max(1, min(threads or torch.get_num_threads(), n_members))
    if device.type != "cpu":
        n_threads = 1  # a GPU stream is parallel already

    # Blocks sized by ``chunk`` alone, not by the thread count: the zoo's bits must not
    # depend on the machine's cores.
    blocks = split_members(n_members, chunk)
    layout = FlatLayout(spec, blocks, fold=hand)
    make_grad_fn = HandBackprop if hand else AutogradBackprop
    init = {k: v.to(device) for k, v in init_population(spec, members).items()}

    if inr:  # one grid of coordinates, each member's own signal on it
        check_members(members, task)
        signal = member_signals(members, task)
        x_train = x_test = task.coords.to(device)
        y_train = y_test = task.member_targets(signal).to(device)  # (M, N, out)
        peaks = task.peaks[torch.from_numpy(signal)].to(device)  # (M,)
    else:
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
    data = TrainData(
        x_train if trainer == "fused" else make_grad_fn.inputs(spec, x_train),
        y_train,
        labels,
        task.is_classification,
        # One data stream for everybody when the members see the same examples in the same
        # order: the first layer gathers one batch for all.
        shared=len(set(data_seeds)) == 1 and labels is None,
        batch_size=bs,
        bases=member_subsets(data_seeds, n_train, subset),
        seeds=data_seeds.astype(np.int64),
        member_y=y_train.mT.contiguous() if inr else None,  # (M, out, N)
    )

    diverged_epoch = np.full(n_members, -1, dtype=np.int64)
    if trainer == "fused":
        run = FusedRun(spec, members, init, static, data, n_threads)
    else:
        run = TorchRun(
            spec, members, init, static, data, layout, make_grad_fn, diverged_epoch, n_threads
        )
    snapshots: list[Params] = []
    rows: list[pd.DataFrame] = []
    first_loss: dict[str, np.ndarray] = {}  # the members' train loss at epoch 0

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
            if inr:  # the whole signal: MSE and PSNR
                mse = evaluate(p, spec, x_train, y_train[r], task, eval_chunk(n_members, spec))[0]
                return [mse, psnr(mse, peaks[r])]
            return [
                *evaluate(p, spec, x_train, y_train, task, eval_chunk(n_members, spec)),
                *evaluate(p, spec, x_test, y_test, task, eval_chunk(n_members, spec)),
            ]

        # (The kernel's numbers are per member whatever the parts: its own are finer.)
        by = run.parts if trainer == "fused" else split_members(n_members, chunk)
        parts = list(pool.map(part, by))
        cols = [torch.cat(c).cpu().numpy() for c in zip(*parts)]
        tr_loss = cols[0]
        loss0 = first_loss.setdefault("train", tr_loss)  # (M,) at epoch 0
        with np.errstate(invalid="ignore"):
            blown = ~np.isfinite(tr_loss) | (tr_loss > LOSS_EXPLOSION * np.fmax(loss0, 1.0))
        diverged_epoch[blown & (diverged_epoch < 0)] = epoch
        names = ("train_loss", "psnr") if inr else METRICS
        rows.append(
            pd.DataFrame(
                {
                    "member_id": members["member_id"].to_numpy(),
                    "epoch": epoch,
                    **dict(zip(names, cols)),
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
