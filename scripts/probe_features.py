"""Which families of weight features tell a hyperparameter apart (and which survive the
function-preserving symmetries)?

    python scripts/probe_features.py ZOO [--target init] [--epochs 0 20] [--folds 5] [--log]

Probes each family (statistics, spectra, their canonical-frame versions, product spectra,
per-unit balance, angles between units) of every checkpoint of ZOO (a path, or a name under
``$WEIGHTSPACE_ROOT/zoos``) for ``--target`` (a column of the zoo's members: logistic
accuracy for a label, ridge R² for a number, of its log10 with ``--log``), folds grouped by
member, and prints a markdown table. See :mod:`weightspace.analysis.feature_families`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from weightspace.analysis.feature_families import probe_families
from weightspace.config import project_root
from weightspace.errors import WeightspaceError
from weightspace.zoo.store import Zoo, resolve_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("zoo")
    ap.add_argument("--target", default="init")
    ap.add_argument("--epochs", type=int, nargs="+", default=None, help="default: all")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--log", action="store_true", help="probe log10 of a numeric target")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        zoo = Zoo.open(resolve_zoo(args.zoo, Path(project_root(), "zoos")))
        table = probe_families(zoo, args.target, args.epochs, args.folds, args.log)
    except WeightspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    epochs = args.epochs or zoo.epochs
    print(
        f"{zoo.root.name}: {args.target}{' (log10)' if args.log else ''} from each feature "
        f"family, {len(zoo)} members x checkpoints {list(epochs)}, {args.folds}-fold CV "
        f"grouped by member ({table.metric.iloc[0]}).\n"
    )
    print("| features | numbers | " + table.metric.iloc[0] + " |\n|---|---:|---:|")
    for row in table.itertuples():
        print(f"| {row.family} | {row.features} | {row.score:.3f} |")


if __name__ == "__main__":
    main()
