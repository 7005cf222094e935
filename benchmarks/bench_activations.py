"""Zoo training speed per activation: the fused kernel against vmap ensembling, side by side.

    python benchmarks/bench_activations.py [--members 256] [--epochs 5] [--repeats 3]
        [--threads N] [--activations relu,tanh,...] [--optimizers sgd,adam] [--no-vmap]
        [--kernel-only]

Setting (issue 19): MNIST-1D (4,000 training rows of 40 features, 10 classes), [40, 48, 24,
10] MLPs, batch 32, 5 epochs, 256 members each with its own init and data order; SGD with
momentum (lr 0.05, momentum 0.9) or Adam (lr 0.001), for every activation the fused kernel
covers.

ours   ``weightspace.zoo.train.loop.train_population`` with ``trainer="fused"`` (evaluation at
       epochs 0 and 5 included in the time);
vmap   PyTorch's documented ensembling: ``torch.func.stack_module_state`` + ``vmap`` of
       ``grad`` of a ``functional_call``, with ``torch.optim.SGD`` / ``Adam`` stepping the
       stacked tensors (elementwise, so the same update as one optimizer per member).

``--kernel-only``: the kernel alone, one thread, timed in the thread's CPU time (robust on a
busy machine): 16 members' epochs per call, median of 5 calls per (activation, optimizer).

GFLOP/s: model FLOPs of the training matrix products (6 x multiply-adds per example, as
``bench_zoo.py``) per second; the activations' own work is not counted. Each repeat runs every
(activation, optimizer, method) once, one after the other; the table gives medians over
repeats and each activation's members/s as a ratio to relu's with the same optimizer (the
issue's target: at most 1.5x slower). The machine may be shared: trust the ratios, measured
side by side, more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from weightspace.nets.spec import ACTIVATIONS, MLPSpec
from weightspace.zoo.init import init_population
from weightspace.zoo.population import sample_population
from weightspace.zoo.tasks import load_task
from weightspace.zoo.train import fused
from weightspace.zoo.train.loop import train_population

WIDTHS = (40, 48, 24, 10)
BATCH = 32
OPTIMIZERS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 1e-3, "momentum": 0.9}}


def flops_per_member(n_train: int, epochs: int) -> float:
    """Model FLOPs of training one member: 2 x (forward + input-gradient + weight-gradient)
    multiply-adds per example."""
    macs = sum(i * o for i, o in zip(WIDTHS[:-1], WIDTHS[1:]))
    return 2 * 3 * macs * n_train * epochs


def ours_rate(task, activation: str, optimizer: str, n_members: int, epochs: int) -> float:
    """Members per second of the fused trainer."""
    hp = {"activation": activation, "optimizer": optimizer, "epochs": epochs, "batch_size": BATCH}
    members = sample_population({**hp, **OPTIMIZERS[optimizer]}, n_members)
    t0 = time.perf_counter()
    train_population(task, MLPSpec(WIDTHS, activation), members, [0, epochs], trainer="fused")
    return n_members / (time.perf_counter() - t0)


def kernel_rate(task, activation: str, optimizer: str, n_members: int = 16) -> float:
    """Member-epochs per CPU second of the kernel alone, on the calling thread."""
    spec = MLPSpec(WIDTHS, activation)
    members = sample_population({"seed": list(range(n_members))}, n_members)
    lr, mom = OPTIMIZERS[optimizer]["lr"], OPTIMIZERS[optimizer]["momentum"]
    pop = fused.FusedPopulation(
        spec,
        init_population(spec, members),
        optimizer,
        np.full(n_members, lr),
        np.full(n_members, mom),
        np.zeros(n_members),
    )
    order, seeds = torch.arange(len(task.x_train))[None], torch.arange(n_members)
    t0 = time.thread_time()
    pop.epoch(task.x_train, task.y_train, order, BATCH, 0, slice(0, n_members), seeds, 1)
    return n_members / (time.thread_time() - t0)


def vmap_rate(task, activation: str, optimizer: str, n_members: int, epochs: int) -> float:
    """Members per second of torch.func ensembling with per-member shuffles."""
    act = ACTIVATIONS[activation]

    class Act(nn.Module):
        def forward(self, z):
            return act(z)

    def make_net() -> nn.Sequential:
        layers: list[nn.Module] = []
        for l, (i, o) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
            layers += [nn.Linear(i, o)] + ([Act()] if l < len(WIDTHS) - 2 else [])
        return nn.Sequential(*layers)

    torch.manual_seed(0)
    params, buffers = stack_module_state([make_net() for _ in range(n_members)])
    params = {k: v.detach().requires_grad_(False) for k, v in params.items()}
    base = make_net().to("meta")

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    step_grad = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0))
    hp = OPTIMIZERS[optimizer]
    tensors = list(params.values())
    if optimizer == "sgd":
        opt = torch.optim.SGD(tensors, lr=hp["lr"], momentum=hp["momentum"])
    else:
        opt = torch.optim.Adam(tensors, lr=hp["lr"])
    x, y = task.x_train, task.y_train
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.stack([torch.randperm(len(x), generator=gen) for _ in range(n_members)])
        for s in range(0, len(x), BATCH):
            idx = order[:, s : s + BATCH]
            grads = step_grad(params, buffers, x[idx], y[idx])
            for k, p in params.items():
                p.grad = grads[k]
            opt.step()
    return n_members / (time.perf_counter() - t0)


def kernel_table(task, acts: list[str], opts: list[str], repeats: int, gflop: float) -> None:
    """The ``--kernel-only`` table: member-epochs per CPU second, one thread."""
    print(f"mnist1d {list(WIDTHS)}, the kernel alone, 1 thread, CPU time, {repeats} repeats")
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for opt in opts:
            for act in acts:
                rates.setdefault((opt, act), []).append(kernel_rate(task, act, opt))
    print("| optimizer | activation | member-epochs / CPU s | GFLOP/s | relu / this |")
    print("|---|---|---:|---:|---:|")
    for (opt, act), v in rates.items():
        med, relu = statistics.median(v), statistics.median(rates.get((opt, "relu"), v))
        print(f"| {opt} | {act} | {med:.0f} | {med * gflop:.1f} | {relu / med:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    covered = [a for a in ("relu", "tanh", "gelu", "sigmoid", "sine") if a in fused.ACT_CODES]
    ap.add_argument("--members", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--activations", default=",".join(covered))
    ap.add_argument("--optimizers", default="sgd,adam")
    ap.add_argument("--no-vmap", action="store_true", help="time the fused trainer only")
    ap.add_argument("--kernel-only", action="store_true", help="the kernel's CPU time alone")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    acts = [a for a in args.activations.split(",") if a in ACTIVATIONS]
    opts = args.optimizers.split(",")
    methods = ["ours"] + ([] if args.no_vmap else ["vmap"])
    if args.kernel_only:
        args.repeats = max(args.repeats, 5)

    task = load_task({"name": "mnist1d"})
    n_train = len(task.x_train)
    if args.kernel_only:
        return kernel_table(task, acts, opts, args.repeats, flops_per_member(n_train, 1) / 1e9)
    print(
        f"mnist1d {list(WIDTHS)}, {args.epochs} epochs, batch {BATCH}, {args.members} members, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{args.repeats} repeats (medians)"
    )
    rates: dict[tuple[str, str, str], list[float]] = {}
    for r in range(args.repeats):
        line = []
        for opt in opts:
            for act in acts:
                for method in methods:
                    fn = ours_rate if method == "ours" else vmap_rate
                    rate = fn(task, act, opt, args.members, args.epochs)
                    rates.setdefault((opt, act, method), []).append(rate)
                    line.append(f"{opt}/{act}/{method} {rate:.0f}")
        print(f"  run {r + 1}: " + ", ".join(line), flush=True)

    flops = flops_per_member(n_train, args.epochs) / 1e9
    med = {k: statistics.median(v) for k, v in rates.items()}
    for opt in opts:
        print()
        print(f"{opt}:")
        head = "| activation | ours members/s | ours GFLOP/s | ours vs relu |"
        rule = "|---|---:|---:|---:|"
        if "vmap" in methods:
            head += " vmap members/s | vmap GFLOP/s | ours / vmap |"
            rule += "---:|---:|---:|"
        print(head)
        print(rule)
        relu = med.get((opt, "relu", "ours"))
        for act in acts:
            ours = med[(opt, act, "ours")]
            vs = f"{relu / ours:.2f}x slower" if relu else "-"
            row = f"| {act} | {ours:.1f} | {ours * flops:.1f} | {vs} |"
            if "vmap" in methods:
                vm = med[(opt, act, "vmap")]
                row += f" {vm:.1f} | {vm * flops:.1f} | {ours / vm:.1f}x |"
            print(row)


if __name__ == "__main__":
    main()
