"""Fused-kernel prototype vs weightspace's trainer, side by side in one process.

The zoo trainer (``weightspace.train``) spends half its time in batched products that MKL
runs at about 57% of peak on per-member 32x65x32 matrices and the other half in
memory-bound passes (README, "How fast"). This benchmark measures the way past that: a C++
kernel (``fused_mlp_prototype.cpp``, compiled on first use, ~30 s) that trains each
member's epoch with everything in cache. Same set-up as ``bench_zoo.py`` (digits
[64, 32, 10], 10 epochs, batch 32, SGD lr 0.05 momentum 0.9, 1,024 members with their own
init and data order); the kernel's data orders are drawn outside its timing, ours include
theirs. Before timing, one member trained by the kernel is checked against the same member
trained by ``torch.optim.SGD`` on ``nn.Linear`` layers (same init, same order).

    .venv/bin/python benchmarks/bench_fused_kernel.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_zoo import BATCH, LR, MOMENTUM, ours_seconds, sgemm_peak, training_flops
from torch import nn
from torch.utils.cpp_extension import load_inline

from weightspace.tasks import load_task

HIDDEN, PAD = 32, 16  # the kernel's hidden width and padded class count


def compile_kernel():
    source = (Path(__file__).with_name("fused_mlp_prototype.cpp")).read_text()
    t0 = time.perf_counter()
    mod = load_inline(
        "weightspace_fused_mlp_prototype",
        cpp_sources=source,
        functions=["epoch"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )
    print(f"kernel ready in {time.perf_counter() - t0:.1f} s")
    return mod


class Population:
    """Parameters and momentum of ``m`` members in the kernel's layout."""

    def __init__(self, m: int, n_in: int, n_classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.n_classes = n_classes
        self.w1 = torch.randn(m, n_in, HIDDEN, generator=g) * (2 / n_in) ** 0.5
        self.b1 = torch.zeros(m, HIDDEN)
        self.w2 = torch.zeros(m, HIDDEN, PAD)
        self.w2[..., :n_classes] = torch.randn(m, HIDDEN, n_classes, generator=g) * 0.25
        self.b2 = torch.zeros(m, PAD)
        self.bufs = [torch.zeros_like(t) for t in (self.w1, self.b1, self.w2, self.b2)]
        self.lr = torch.full((m,), LR)
        self.momentum = torch.full((m,), MOMENTUM)
        self.weight_decay = torch.zeros(m)
        self.diverged = torch.zeros(m, dtype=torch.bool)

    def epoch(self, mod, x, y, order):
        mod.epoch(
            x, y, order, BATCH, self.n_classes, self.w1, self.b1, self.w2, self.b2,
            *self.bufs, self.lr, self.momentum, self.weight_decay, self.diverged,
        )  # fmt: skip

    def accuracy(self, x, y):
        h = torch.relu(x @ self.w1 + self.b1[:, None])
        out = h @ self.w2[..., : self.n_classes] + self.b2[:, None, : self.n_classes]
        return (out.argmax(-1) == y).float().mean(1)


def orders(m: int, n: int, epochs: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    steps = n // BATCH
    return [
        torch.stack([torch.randperm(n, generator=g)[: steps * BATCH] for _ in range(m)])
        for _ in range(epochs)
    ]


def check_against_torch(mod, x, y, epochs: int) -> float:
    """Largest relative deviation of one kernel-trained member from torch.optim's."""
    pop = Population(1, x.shape[1], int(y.max()) + 1, seed=1)
    c = pop.n_classes
    net = nn.Sequential(nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, c))
    with torch.no_grad():
        net[0].weight.copy_(pop.w1[0].T)
        net[0].bias.copy_(pop.b1[0])
        net[2].weight.copy_(pop.w2[0, :, :c].T)
        net[2].bias.copy_(pop.b2[0, :c])
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    for order in orders(1, len(x), epochs, seed=2):
        pop.epoch(mod, x, y, order)
        for idx in order[0].view(-1, BATCH):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    ref = torch.cat([net[0].weight.T.flatten(), net[2].weight.T.flatten()]).detach()
    got = torch.cat([pop.w1[0].flatten(), pop.w2[0, :, :c].flatten()])
    return float((got - ref).abs().max() / ref.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task({"name": "digits"})
    x, y = task.x_train.float().contiguous(), task.y_train.long().contiguous()
    mod = compile_kernel()
    dev = check_against_torch(mod, x, y, args.epochs)
    print(f"one member vs torch.optim after {args.epochs} epochs: max relative deviation {dev:.1e}")

    m, n_classes = args.members, int(y.max()) + 1
    ours, fused, peaks = [], [], []
    for r in range(args.repeats):
        peaks.append(sgemm_peak())
        ours.append(m / ours_seconds(task, m, args.epochs, [0]))
        pop = Population(m, x.shape[1], n_classes, seed=r)
        epoch_orders = orders(m, len(x), args.epochs, seed=100 + r)
        t0 = time.perf_counter()
        for order in epoch_orders:
            pop.epoch(mod, x, y, order)
        fused.append(m / (time.perf_counter() - t0))
        print(f"  run {r + 1}: ours {ours[-1]:.1f}/s, fused {fused[-1]:.1f}/s", flush=True)
    acc = pop.accuracy(task.x_test.float(), task.y_test)
    mo, mf, peak = statistics.median(ours), statistics.median(fused), statistics.median(peaks)
    flops = training_flops(len(x), args.epochs) / 1e9  # model GFLOP per member
    print(
        f"{args.threads} thread(s): ours {mo:.1f} members/s ({mo * flops:.0f} GFLOP/s, "
        f"{100 * mo * flops / peak:.0f}% of sgemm {peak:.0f}); fused prototype {mf:.1f} members/s "
        f"({mf * flops:.0f} GFLOP/s, {100 * mf * flops / peak:.0f}%): {mf / mo:.2f}x ours; "
        f"its members' median test accuracy {acc.median():.3f}, {int(pop.diverged.sum())} diverged"
    )


if __name__ == "__main__":
    main()
