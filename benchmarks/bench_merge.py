"""How fast does MergeMany bring a large zoo into one frame? Sequential vs batched, side by side.

    python benchmarks/bench_merge.py [--members 256 1000 10000] [--sequential-max 1000]

The zoo is synthesized in seconds: a few [64, 32, 32, 10] ReLU networks trained briefly on
digits (the bases), and every member one of them plus Gaussian noise (``--noise`` times each
tensor's std), its hidden units randomly permuted. Both schedules run with the canonicalize
config's defaults (``max_iter`` 100, ``tol`` 1e-4, seed 0); the table gives the passes, the
seconds and the objective each reaches (the sum of pairwise inner products of the members'
effective weights, divided by the number of pairs so sizes compare), and the batched
objective relative to the sequential one. The sequential schedule runs only up to
``--sequential-max`` members (10,000 would take tens of minutes). The machine is shared:
trust the side-by-side ratios more than the seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from weightspace.nets.spec import MLPSpec
from weightspace.symmetry import apply_transform, random_transform
from weightspace.symmetry.merge import DEFAULT_BLOCK, merge
from weightspace.zoo.population import sample_population
from weightspace.zoo.tasks import load_task
from weightspace.zoo.train.loop import train_population


def synthetic_zoo(
    n_members: int, n_bases: int = 64, noise: float = 0.5, seed: int = 0
) -> tuple[MLPSpec, dict]:
    """``n_members`` permuted noisy copies of ``n_bases`` briefly trained networks."""
    task = load_task({"name": "digits"})
    spec = MLPSpec((task.input_dim, 32, 32, task.output_dim))
    members = sample_population({"epochs": 5, "lr": 0.05}, n_bases, seed=seed)
    trained = train_population(task, spec, members, checkpoints=[]).weights
    bases = {k: v[:, -1] for k, v in trained.items()}  # (n_bases, ...)
    g = torch.Generator().manual_seed(seed)
    which = torch.arange(n_members) % n_bases
    params = {}
    for k, v in bases.items():
        copies = v[which]  # (M, ...)
        std = v.std(dim=tuple(range(1, v.dim())), keepdim=True)[which]
        params[k] = copies + noise * std * torch.randn(copies.shape, generator=g)
    return spec, apply_transform(params, spec, random_transform(spec, n_members, g))


def run(params: dict, spec: MLPSpec, schedule: str, block: int) -> dict:
    t0 = time.perf_counter()
    m = merge(params, spec, tol=1e-4, schedule=schedule, block=block)
    seconds = time.perf_counter() - t0
    n = next(iter(params.values())).shape[0]
    pairs = n * (n - 1) / 2
    return {"passes": m.passes, "seconds": seconds, "objective": m.objectives[-1] / pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[256, 1000, 10000])
    ap.add_argument("--sequential-max", type=int, default=1000)
    ap.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--bases", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"MergeMany on permuted noisy copies of {args.bases} [64, 32, 32, 10] relu networks "
        f"(noise {args.noise}), tol 1e-4, block {args.block}, {torch.get_num_threads()} threads"
    )
    print("\n| members | schedule | passes | seconds | objective / pair | batched / sequential |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in args.members:
        t0 = time.perf_counter()
        spec, params = synthetic_zoo(n, args.bases, args.noise)
        made = time.perf_counter() - t0
        seq = run(params, spec, "sequential", args.block) if n <= args.sequential_max else None
        bat = run(params, spec, "batched", args.block)
        for name, r in (("sequential", seq), ("batched", bat)):
            if r is None:
                print(f"| {n:,} | sequential | - | (not run) | - | - |")
                continue
            ratio = (
                f"{bat['objective'] / seq['objective']:.4f}" if seq and name == "batched" else ""
            )
            print(
                f"| {n:,} | {name} | {r['passes']} | {r['seconds']:.1f} | "
                f"{r['objective']:.4f} | {ratio} |",
                flush=True,
            )
        print(f"  ({n:,} members synthesized in {made:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
