"""Zoo training speed: our batched population trainer against the two usual ways, one process.

    python benchmarks/bench_zoo.py [--members 1024] [--epochs 10] [--repeats 3] [--threads N]

Setting: digits, [64, 32, 10] ReLU MLPs, SGD with momentum, batch 32, 10 epochs, every member
with its own init and its own data order.

(a) loop   the idiomatic script: ``nn.Sequential``, ``DataLoader(shuffle=True)``,
           ``torch.optim.SGD``, one member after another (a sample of members is timed and
           the rate extrapolated);
(b) vmap   PyTorch's documented ensembling: ``torch.func.stack_module_state`` + ``vmap`` of
           ``grad`` of a ``functional_call``, SGD with momentum applied to the stacked tensors;
(c) ours   ``weightspace.zoo.train.loop.train_population`` (evaluation at epochs 0 and 10 included),
           with its default trainer (``auto``: the fused C++ kernel of
           ``weightspace.zoo.train.fused``)
           and with its torch path (``trainer="hand"``, the fallback where no compiler is).

Also our achieved GFLOP/s in the matrix products of training against a same-process sgemm
peak (a 2048^3 float32 product) at the same number of threads. Two FLOP counts: model FLOPs,
6 x multiply-adds per example (forward, input gradients, weight gradients: the usual
convention of "model FLOPs utilization"), and executed FLOPs (the first layer's input
gradient is never computed). Every method runs with ``--threads`` (default: PyTorch's), one
after the other in each repeat; the table gives medians over repeats. The machine may be
shared, so trust the ratios (measured side by side) more than absolute numbers.
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

from weightspace.nets.spec import MLPSpec
from weightspace.zoo.population import sample_population
from weightspace.zoo.tasks import load_task
from weightspace.zoo.train.loop import choose_trainer, train_population

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


def _members(n_members: int, epochs: int):
    return sample_population(
        {"epochs": epochs, "batch_size": BATCH, "lr": LR, "momentum": MOMENTUM}, n_members
    )


def ours_seconds(
    task, n_members: int, epochs: int, checkpoints: list[int], trainer: str = "auto"
) -> float:
    members = _members(n_members, epochs)
    t0 = time.perf_counter()
    train_population(task, MLPSpec(WIDTHS), members, checkpoints=checkpoints, trainer=trainer)
    return time.perf_counter() - t0


def eval_share(task, n_members: int, epochs: int, seconds: float) -> float:
    """Share of ours' time (``seconds``, evaluating at 2 checkpoints) spent evaluating.

    Measured as the extra time of a run that evaluates after every epoch.
    """
    every = ours_seconds(task, n_members, epochs, list(range(epochs + 1)))
    per_checkpoint = (every - seconds) / (epochs + 1 - 2)
    return 2 * per_checkpoint / seconds


def training_flops(n_train: int, epochs: int, executed: bool = False) -> float:
    """Matrix-product FLOPs of training one member.

    Model FLOPs: 2 x multiply-adds for the forward, the input gradients and the weight
    gradients. ``executed``: without the first layer's input gradient, which no trainer
    computes (the data needs none).
    """
    macs = [i * o for i, o in zip(WIDTHS[:-1], WIDTHS[1:])]
    per_example = 3 * sum(macs) - (macs[0] if executed else 0)
    return 2 * per_example * n_train * epochs


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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = load_task({"name": "digits"})
    print(
        f"digits {list(WIDTHS)}, {args.epochs} epochs, batch {BATCH}, {args.members} members, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    trainer = choose_trainer(MLPSpec(WIDTHS), "cpu")
    print(f"ours: trainer auto -> {trainer}")
    rates: dict[str, list[float]] = {"loop": [], "vmap": [], "torch path": [], "ours": []}
    peaks, shares = [], []
    for r in range(args.repeats):
        peaks.append(sgemm_peak())
        rates["loop"].append(loop_rate(task, args.loop_sample, args.epochs))
        rates["vmap"].append(vmap_rate(task, args.members, args.epochs))
        hand = ours_seconds(task, args.members, args.epochs, [0], trainer="hand")
        rates["torch path"].append(args.members / hand)
        seconds = ours_seconds(task, args.members, args.epochs, [0])
        rates["ours"].append(args.members / seconds)
        shares.append(eval_share(task, args.members, args.epochs, seconds))
        print(
            f"  run {r + 1}: "
            + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items())
            + f", sgemm {peaks[-1]:.0f} GFLOP/s",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    peak = statistics.median(peaks)
    n_train = len(task.x_train)
    model = med["ours"] * training_flops(n_train, args.epochs) / 1e9
    executed = med["ours"] * training_flops(n_train, args.epochs, executed=True) / 1e9
    share = statistics.median(shares)
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
    print(
        f"| (c) weightspace train_population, torch path (trainer=hand) | "
        f"{med['torch path']:.1f} | {med['ours'] / med['torch path']:.2f}x |"
    )
    print(f"| (c) weightspace train_population (auto: {trainer}) | {med['ours']:.1f} | 1x |")
    print()
    print(
        f"ours: {model:.1f} GFLOP/s of model FLOPs ({executed:.1f} executed) in the training "
        f"matrix products; sgemm peak {peak:.1f} GFLOP/s -> {100 * model / peak:.0f}% of peak "
        f"({100 * executed / peak:.0f}% executed). Evaluation at epochs 0 and {args.epochs} "
        f"is included in the time, not in the FLOPs: {100 * share:.0f}% of it."
    )


if __name__ == "__main__":
    main()
