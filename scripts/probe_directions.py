"""Where in the invariant features a target lives, and whether a run's latent reaches there.

    python scripts/probe_directions.py RUN [--target init] [--k 5 10 20 40 80] [--checkpoint best]
                                           [--by-epoch]

Probes ``--target`` on RUN's held-out members from the top-k principal directions of the
invariant features (standardized as the model standardizes them), from all of them, from the
run's learned coordinates and from its statistics head's predictions; then the head's R² per
band of directions; with ``--by-epoch``, the target per checkpoint epoch of the test members
from the learned coordinates, the statistics and the invariant features. RUN: a run folder,
a run name under ``$WEIGHTSPACE_ROOT/outputs/autoencoder``, or ``latest``. See
:mod:`weightspace.analysis.feature_directions`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from weightspace.analysis.feature_directions import KS, feature_directions, target_by_epoch
from weightspace.autoencoder.run import load_run, resolve_run
from weightspace.config import project_root
from weightspace.errors import WeightspaceError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--target", default="init")
    ap.add_argument("--k", type=int, nargs="+", default=list(KS))
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--by-epoch",
        action="store_true",
        help="also the target per checkpoint epoch: learned coordinates, statistics, features",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        run_dir = resolve_run(args.run, Path(project_root(), "outputs"), key="run")
        run = load_run(run_dir, args.checkpoint)
        probes, bands = feature_directions(
            run.model, run.datamodule, args.target, args.k, args.seed
        )
        epochs = target_by_epoch(run.model, run.datamodule, args.target) if args.by_epoch else None
    except WeightspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metric = probes.columns[-1]
    print(f"{run_dir.name}: {args.target} from the invariant features' principal directions\n")
    print(f"| representation | variance | {metric} |\n|---|---:|---:|")
    for r in probes.itertuples(index=False):
        var = "" if r.variance != r.variance else f"{r.variance:.3f}"  # nan: not a direction set
        print(f"| {r.representation} | {var} | {getattr(r, metric):.3f} |")
    if len(bands):
        print("\n| directions | share of the variance | the head's R² (test, median) |")
        print("|---|---:|---:|")
        for b in bands.itertuples(index=False):
            print(f"| {b.directions} | {b.variance:.3f} | {b.head_r2:.3f} |")
    if epochs is not None:
        cols = list(epochs.columns[1:])
        print(
            f"\n{args.target} per checkpoint epoch (test members; one probe per representation)\n"
        )
        print("| representation | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for r in epochs.itertuples(index=False):
            print(f"| {r[0]} | " + " | ".join(f"{v:.3f}" for v in r[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
