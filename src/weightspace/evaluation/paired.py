"""Two models' latents of the same networks, probed side by side: is one model's better?

:func:`compare_latents` encodes one datamodule's train / val / test checkpoints with every
model given (each through its own normalizer: two runs on the same zoo may normalize alike or
not), probes every target from each model's learned coordinates
(:func:`~weightspace.evaluation.probes.probe_table`: ridge or logistic, and boosting), and
sets the first model's probes against each other's with the paired bootstrap over test
members of :func:`~weightspace.evaluation.compare.compare_probes`.

What it answers: "does the head of a model trained on several architectures
(:class:`~weightspace.autoencoder.mixed.MixedAutoencoder`) read this architecture's members
as well as a model trained on them alone?", and the same for any two runs of one zoo (two
encoders, two seeds). ``scripts/compare_latents.py`` runs it on run folders.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightspace.autoencoder.run import load_run, reads_several
from weightspace.data.mixed import arch_name
from weightspace.errors import ConfigError
from weightspace.evaluation.compare import compare_probes
from weightspace.evaluation.probes import Split3, probe_table
from weightspace.evaluation.splits import DEFAULT_TARGETS, load_split, probe_targets
from weightspace.evaluation.tables import format_comparisons
from weightspace.nets.layout import flatten_params

__all__ = ["compare_latents", "learned_coordinates"]

SPLITS = ("train", "val", "test")


@torch.no_grad()
def learned_coordinates(model: Any, params: Mapping[str, torch.Tensor], batch_size: int = 512):
    """``model``'s own coordinates (``encode_learned``, else ``encode``) of networks given as
    their own stacked parameters, normalized by the model's normalizer: ``(N, latent)``."""
    flat = flatten_params(dict(params), model.spec).float()
    flat = (flat - model.weight_mean.cpu()) / model.weight_std.cpu()
    encode = getattr(model, "encode_learned", model.encode)
    model.eval()
    return torch.cat([encode(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])


def compare_latents(
    models: Mapping[str, Any],
    datamodule: Any,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int = 0,
    boosting: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probes of each model's learned coordinates on ``datamodule``'s splits, and the first
    model's against every other's (paired bootstrap over test members).

    ``models``: name -> a model with ``spec``, ``weight_mean`` / ``weight_std`` and
    ``encode_learned`` (or ``encode``), all of the datamodule's architecture. Returns
    ``(probes, comparisons)`` in the columns of ``probe_table`` / ``compare_probes``; the
    comparisons' ``representation`` is the first model's name, ``baseline`` the other's.
    """
    if len(models) < 2:
        raise ValueError(f"models: need two or more to compare, got {len(models)}")
    datamodule.setup("test")
    spec = datamodule.spec
    for name, model in models.items():
        if tuple(model.spec.widths) != tuple(spec.widths):
            raise ValueError(
                f"model {name!r} reads {list(model.spec.widths)} networks, the zoo has "
                f"{list(spec.widths)}"
            )
    splits = {s: load_split(datamodule, s, None, seed) for s in SPLITS}
    reps: dict[str, Split3] = {
        name: tuple(learned_coordinates(model, splits[s].params).double().numpy() for s in SPLITS)
        for name, model in models.items()
    }
    tgt, categorical = probe_targets([splits[s].items for s in SPLITS], targets)
    pred: dict = {}
    probes = probe_table(
        reps, tgt, categorical, boosting=boosting, chance=False, seed=seed, predictions=pred
    )
    subject, *others = list(models)
    y_test = {t: np.asarray(y[2]) for t, y in tgt.items()}
    comparisons = compare_probes(
        pred, y_test, splits["test"].groups, categorical, subject, seed=seed, baselines=others
    )
    return probes, comparisons


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        prog="compare_latents",
        description="Probe two runs' learned coordinates of the same held-out members and "
        "set the first against the second (paired bootstrap over test members).",
    )
    parser.add_argument("subject", help="a run folder (a run over several architectures too)")
    parser.add_argument("baseline", help="a run folder on the same zoo (and split options)")
    parser.add_argument(
        "--arch",
        default=None,
        help="a run over several architectures: which (default: the other run's)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for probes.csv and comparisons.csv (default: "
        "<subject>/compare-<baseline name>)",
    )
    args = parser.parse_args(argv)
    several = [reads_several(r) for r in (args.subject, args.baseline)]
    if all(several) and args.arch is None:
        raise ConfigError("--arch: both runs read several architectures; name one")
    # The run of one architecture first: it says which head of the other to read.
    order = [1, 0] if several[0] else [0, 1]
    runs: list[Any] = [None, None]
    for i in order:
        arch = args.arch
        if several[i] and arch is None:
            arch = arch_name(runs[1 - i].model.spec)
        runs[i] = load_run([args.subject, args.baseline][i], arch=arch if several[i] else None)
    a, b = runs
    models = {f"A: {Path(args.subject).name}": a.model, f"B: {Path(args.baseline).name}": b.model}
    probes, comparisons = compare_latents(models, a.datamodule, seed=0)
    out = Path(args.out or Path(args.subject) / f"compare-{Path(args.baseline).name}")
    out.mkdir(parents=True, exist_ok=True)
    probes.to_csv(out / "probes.csv", index=False)
    comparisons.to_csv(out / "comparisons.csv", index=False)
    print(format_comparisons(comparisons))
    print(f"\nwritten: {out / 'probes.csv'}, {out / 'comparisons.csv'}")
    return comparisons


def cli() -> None:
    """``scripts/compare_latents.py A B``: bad input is one line and exit 2."""
    from weightspace.cli import run_or_exit

    run_or_exit(main)
