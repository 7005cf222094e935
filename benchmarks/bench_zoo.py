"""Zoo training speed: our batched population trainer against the two usual ways, one process.

    python benchmarks/bench_zoo.py [--members 1024] [--epochs 10] [--repeats 3]

Setting: digits, [64, 32, 10] ReLU MLPs, SGD with momentum, batch 32, 10 epochs, every member
with its own init and its own data order.

(a) loop   the idiomatic script: ``nn.Sequential``, ``DataLoader(shuffle=True)``,
           ``torch.optim.SGD``, one member after another (a sample of members is timed and
           the rate extrapolated);
(b) vmap   PyTorch's documented ensembling: ``torch.func.stack_module_state`` + ``vmap`` of
           ``grad`` of a ``functional_call``, SGD with momentum applied to the stacked tensors;
(c) ours   ``weightspace.train.train_population`` (evaluation at epochs 0 and 10 included).

Also our achieved GFLOP/s (forward + backward matrix products of training) against a
same-process sgemm peak (a 2048^3 float32 product). Medians of ``--repeats`` runs; the
machine is shared, so trust ratios more than absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.utils.data import DataLoader, TensorDataset

from weightspace.mlp import MLPSpec
from weightspace.population import sample_population
from weightspace.tasks import load_task
from weightspace.train import train_population

WIDTHS = (64, 32, 10)
BATCH, LR, MOMENTUM = 32, 0.05, 0.9


def make_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(WIDTHS[0], WIDTHS[1]), nn.ReLU(), nn.Linear(WIDTHS[1], WIDTHS[2])
    )


def loop_rate(task, n_sample: int, epochs: int) -> float:
    """Members per second of the plain one-member-at-a-time script."""
    data = TensorDataset(task.x_train, task.y_train)
    t0 = time.perf_counter()
    for seed in range(n_sample):
        torch.manual_seed(seed)
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        for _ in range(epochs):
            for xb, yb in DataLoader(data, batch_size=BATCH, shuffle=True):
                opt.zero_grad()
                F.cross_entropy(net(xb), yb).backward()
                opt.step()
    return n_sample / (time.perf_counter() - t0)


def vmap_rate(task, n_members: int, epochs: int) -> float:
    """Members per second of torch.func ensembling with per-member shuffles."""
    torch.manual_seed(0)
    models = [make_net() for _ in range(n_members)]
    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    base = make_net().to("meta")

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    step_grad = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0))
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}
    x, y = task.x_train, task.y_train
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.stack([torch.randperm(len(x), generator=gen) for _ in range(n_members)])
        for s in range(0, len(x), BATCH):
            idx = order[:, s : s + BATCH]
            grads = step_grad(params, buffers, x[idx], y[idx])
            with torch.no_grad():
                for k in params:
                    bufs[k].mul_(MOMENTUM).add_(grads[k])
                    params[k].sub_(LR * bufs[k])
    return n_members / (time.perf_counter() - t0)


def ours_rate(task, n_members: int, epochs: int) -> float:
    members = sample_population(
        {"epochs": epochs, "batch_size": BATCH, "lr": LR, "momentum": MOMENTUM}, n_members
    )
    t0 = time.perf_counter()
    train_population(task, MLPSpec(WIDTHS), members, checkpoints=[0])
    return n_members / (time.perf_counter() - t0)


def training_flops(n_train: int, epochs: int) -> float:
    """Matrix-product FLOPs of training one member: forward, input grads, weight grads."""
    macs = sum(i * o for i, o in zip(WIDTHS[:-1], WIDTHS[1:]))
    return 3 * 2 * macs * n_train * epochs


def sgemm_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--loop-sample", type=int, default=8, help="members timed for (a)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    task = load_task({"name": "digits"})
    print(
        f"digits {list(WIDTHS)}, {args.epochs} epochs, batch {BATCH}, {args.members} members, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    rates: dict[str, list[float]] = {"loop": [], "vmap": [], "ours": []}
    peaks = []
    for r in range(args.repeats):
        peaks.append(sgemm_peak())
        rates["loop"].append(loop_rate(task, args.loop_sample, args.epochs))
        rates["vmap"].append(vmap_rate(task, args.members, args.epochs))
        rates["ours"].append(ours_rate(task, args.members, args.epochs))
        print(f"  run {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    peak = statistics.median(peaks)
    gflops = med["ours"] * training_flops(len(task.x_train), args.epochs) / 1e9
    print()
    print("| method | members/s (median) | ours is ... x faster |")
    print("|---|---:|---:|")
    print(
        f"| (a) loop: nn.Sequential + DataLoader + torch.optim | {med['loop']:.1f} | "
        f"{med['ours'] / med['loop']:.0f}x |"
    )
    print(
        f"| (b) torch.func: stack_module_state + vmap + grad | {med['vmap']:.1f} | "
        f"{med['ours'] / med['vmap']:.2f}x |"
    )
    print(f"| (c) weightspace train_population | {med['ours']:.1f} | 1x |")
    print()
    print(
        f"ours: {gflops:.1f} GFLOP/s in training matrix products (evaluation excluded from "
        f"the count, included in the time); sgemm peak {peak:.1f} GFLOP/s -> "
        f"{100 * gflops / peak:.0f}% of peak"
    )


if __name__ == "__main__":
    main()
