"""Evaluate a trained autoencoder run (again): the same evaluation training ends with.

    python scripts/evaluate_run.py RUN [--checkpoint best|last|FILE] [--out DIR] [--overwrite]
                                       [--seed N] [--audit] [--arch 64-32-32-10]

For a run trained with ``evaluate=false``, or one evaluated before the evaluation learned a new
row (the "learned" / "combined" representations, the field's rendering). RUN: a run folder, a
run name under ``$WEIGHTSPACE_ROOT/outputs/autoencoder``, or ``latest``. The results go to
``--out`` (default ``RUN/evaluation``, or ``RUN/ARCH/evaluation`` for one architecture of a run
over several, as training wrote them); an existing folder is kept unless ``--overwrite``. The
seed defaults to the run's own, so an unchanged evaluation reproduces the run's numbers. Prints
the probe table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from weightspace.autoencoder.run import EVALUATION_DIR, load_run, resolve_run
from weightspace.config import project_root
from weightspace.errors import WeightspaceError
from weightspace.evaluation.audit import AuditOptions
from weightspace.evaluation.evaluate import evaluate_autoencoder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--checkpoint", default="best", help="best, last or a file in checkpoints/")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    ap.add_argument("--audit", action="store_true", help="also the memorization audit")
    ap.add_argument("--arch", default=None, help="one architecture of a run over several")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        run_dir = resolve_run(args.run, Path(project_root(), "outputs"), key="run")
        out = args.out or run_dir / (args.arch or "") / EVALUATION_DIR
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"--out: {out} exists (give another --out, or --overwrite)")
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        seed = int(config.get("seed", 0)) if args.seed is None else args.seed
        run = load_run(run_dir, args.checkpoint, args.arch, arch_key="--arch")
        audit = AuditOptions() if args.audit else None
        results = evaluate_autoencoder(run.model, run.datamodule, seed=seed, audit=audit)
    except (WeightspaceError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results.save(out)
    print(f"{run_dir.name} ({run.checkpoint.name}, seed {seed}) -> {out}\n")
    print(results.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
