"""How much of the difference between two trained runs is symmetry? And how fast do we remove it?

    python benchmarks/bench_symmetry.py [--widths 32 64 128 256 512] [--pairs 4]

1. For pairs of independently trained members (same data, different seeds) of
   [64, w, w, 10] ReLU MLPs on digits: the relative L2 distance of their weights raw,
   canonicalized and aligned by weight matching, and the loss barrier along the linear path
   between them, raw vs aligned (barrier = the largest excess of the path's training loss over
   the straight line between the end points' losses).
2. Throughput (members/s) of each canonical form and of weight matching on a [64, 32, 10] zoo.
3. Side by side with the ``rebasin`` package (a PyTorch port of Git Re-Basin), when installed,
   on the same pairs: the matching objective each finds and the time each takes.

Medians over pairs / repeats; the machine is shared, so trust ratios more than seconds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from weightspace.nets.forward import MLP, forward
from weightspace.nets.layout import flatten_params, weight_distance
from weightspace.nets.metrics import per_example_loss
from weightspace.nets.spec import MLPSpec
from weightspace.symmetry import apply_transform, canonicalize, sort_units, weight_matching
from weightspace.zoo.population import sample_population
from weightspace.zoo.tasks import load_task
from weightspace.zoo.train.loop import train_population


def train_pairs(task, width: int, n_pairs: int, epochs: int) -> tuple[MLPSpec, dict]:
    spec = MLPSpec((task.input_dim, width, width, task.output_dim))
    members = sample_population(
        {"epochs": epochs, "lr": 0.05, "init": "kaiming", "batch_size": 32}, 2 * n_pairs
    )
    result = train_population(task, spec, members, checkpoints=[])
    final = {k: v[:, -1] for k, v in result.weights.items()}  # (2 * n_pairs, ...)
    return spec, final


def take(params: dict, i: int) -> dict:
    return {k: v[i : i + 1] for k, v in params.items()}


@torch.no_grad()
def barrier(a: dict, b: dict, spec: MLPSpec, task, steps: int = 11) -> float:
    """Largest excess loss on the linear path from a to b (all points in one batched pass)."""
    alphas = torch.linspace(0, 1, steps)
    path = {
        k: (1 - alphas.view(-1, *[1] * (a[k].dim() - 1))) * a[k]
        + alphas.view(-1, *[1] * (a[k].dim() - 1)) * b[k]
        for k in a
    }
    loss = per_example_loss(forward(path, task.x_train, spec), task.y_train, task).mean(1)
    line = (1 - alphas) * loss[0] + alphas * loss[-1]
    return float((loss - line).max())


def distances_and_barriers(task, widths, n_pairs, epochs) -> list[dict]:
    rows = []
    for w in widths:
        spec, final = train_pairs(task, w, n_pairs, epochs)
        stats = {
            "raw": [],
            "canonical": [],
            "aligned": [],
            "barrier_raw": [],
            "barrier_aligned": [],
        }
        canon, _ = canonicalize(final, spec)
        for p in range(n_pairs):
            a, b = take(final, 2 * p), take(final, 2 * p + 1)
            stats["raw"].append(
                float(weight_distance(flatten_params(a, spec), flatten_params(b, spec)))
            )
            ca, cb = take(canon, 2 * p), take(canon, 2 * p + 1)
            stats["canonical"].append(
                float(weight_distance(flatten_params(ca, spec), flatten_params(cb, spec)))
            )
            m = weight_matching(b, a, spec)
            b_al = apply_transform(b, spec, m.transform)
            stats["aligned"].append(
                float(weight_distance(flatten_params(a, spec), flatten_params(b_al, spec)))
            )
            stats["barrier_raw"].append(barrier(a, b, spec, task))
            stats["barrier_aligned"].append(barrier(a, b_al, spec, task))
        rows.append({"width": w, **{k: statistics.median(v) for k, v in stats.items()}})
        print(f"  width {w}: done", flush=True)
    return rows


def rate(fn, n_members: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_members / statistics.median(times)


def throughput(task, n_members: int) -> dict[str, float]:
    spec = MLPSpec((task.input_dim, 32, task.output_dim))
    members = sample_population({"epochs": 3}, n_members)
    params = {k: v[:, -1] for k, v in train_population(task, spec, members, []).weights.items()}
    ref = take(params, 0)
    relu = spec
    tanh = MLPSpec(spec.widths, "tanh")
    return {
        "sort by incoming norm": rate(lambda: sort_units(params, relu, "incoming_norm"), n_members),
        "canonical relu (scale + sort)": rate(lambda: canonicalize(params, relu), n_members),
        "canonical tanh (sign + sort)": rate(lambda: canonicalize(params, tanh), n_members),
        "weight matching to one member": rate(
            lambda: weight_matching(params, ref, spec), n_members, repeats=1
        ),
    }


def versus_rebasin(task, width: int, n_pairs: int, epochs: int) -> dict | None:
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return None
    spec, final = train_pairs(task, width, n_pairs, epochs)
    ours_t, theirs_t, ours_obj, theirs_obj = [], [], [], []
    for p in range(n_pairs):
        a, b = take(final, 2 * p), take(final, 2 * p + 1)
        t0 = time.perf_counter()
        m = weight_matching(b, a, spec)
        ours_t.append(time.perf_counter() - t0)
        ours_obj.append(float(m.objective_after[0]))
        net_a, net_b = MLP(spec), MLP(spec)
        net_a.load_state_dict({k: v[0] for k, v in a.items()})
        net_b.load_state_dict({k: v[0] for k, v in b.items()})
        net_b = copy.deepcopy(net_b)
        t0 = time.perf_counter()
        pcd = PermutationCoordinateDescent(net_a, net_b, task.x_train[:8])
        pcd.rebasin()
        theirs_t.append(time.perf_counter() - t0)
        b_theirs = {k: v.detach().unsqueeze(0).double() for k, v in net_b.state_dict().items()}
        theirs_obj.append(sum(float((b_theirs[k] * a[k].double()).sum()) for k in a))
    return {
        "width": width,
        "ours_objective": statistics.median(ours_obj),
        "rebasin_objective": statistics.median(theirs_obj),
        "ours_s": statistics.median(ours_t),
        "rebasin_s": statistics.median(theirs_t),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--members", type=int, default=1024, help="zoo size for throughput")
    args = ap.parse_args()
    torch.manual_seed(0)
    task = load_task({"name": "digits"})
    print(
        f"digits [64, w, w, 10] relu, {args.epochs} epochs, {args.pairs} pairs per width, "
        f"{torch.get_num_threads()} threads"
    )

    rows = distances_and_barriers(task, args.widths, args.pairs, args.epochs)
    print("\n| width | distance raw | canonical | aligned | barrier raw | barrier aligned |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['width']} | {r['raw']:.3f} | {r['canonical']:.3f} | {r['aligned']:.3f} | "
            f"{r['barrier_raw']:.4f} | {r['barrier_aligned']:.4f} |"
        )

    print(f"\n| transform ({args.members} members of [64, 32, 10]) | members/s |")
    print("|---|---:|")
    for name, r in throughput(task, args.members).items():
        print(f"| {name} | {r:,.0f} |")

    vs = versus_rebasin(task, 128, args.pairs, args.epochs)
    if vs is None:
        print("\nrebasin not installed (pip install rebasin): comparison skipped")
    else:
        print("\n| weight matching, width 128, median over pairs | objective | seconds |")
        print("|---|---:|---:|")
        print(f"| weightspace | {vs['ours_objective']:.2f} | {vs['ours_s']:.3f} |")
        print(f"| rebasin | {vs['rebasin_objective']:.2f} | {vs['rebasin_s']:.3f} |")
        print(f"ours is {vs['rebasin_s'] / vs['ours_s']:.1f}x faster")


if __name__ == "__main__":
    main()
