"""Zoo generation: ``generate(cfg)`` trains a population of MLPs and writes it as a zoo.

The members table is drawn from the config (:mod:`weightspace.zoo.population`); members sharing
static shapes are grouped, each group cut into shards of ``zoo.shard_size`` members, and each
shard trained as one population (:mod:`weightspace.zoo.train.loop`) and written atomically
(:mod:`weightspace.zoo.store`). Shards already on disk are kept, so re-running an interrupted
command resumes it and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from weightspace import __version__
from weightspace.cli import progress_bar
from weightspace.config import fingerprint, to_dict
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec
from weightspace.tracking import log_reference, wandb_run
from weightspace.zoo.inr import SignalTask, assign_signals
from weightspace.zoo.population import STATIC_KEYS, sample_population
from weightspace.zoo.store import Zoo
from weightspace.zoo.tasks import Task, load_task, task_summary
from weightspace.zoo.train.loop import checkpoint_epochs, choose_trainer, train_population
from weightspace.zoo.writer import ZooWriter


@dataclass
class ZooSummary:
    """What ``generate`` reports at the end."""

    path: Path
    n_members: int
    n_trained: int  # members trained by this call (the rest were on disk already)
    n_diverged: int
    seconds: float
    final_test_acc: dict[str, float] = field(default_factory=dict)  # quantiles
    missing_shards: list[int] = field(default_factory=list)  # other jobs' part, not done yet
    final_psnr: dict[str, float] = field(default_factory=dict)  # quantiles (INR zoos), dB

    def __str__(self) -> str:
        if self.missing_shards:
            return (
                f"zoo: {self.path} (incomplete)\n"
                f"this job trained {self.n_trained} members in {self.seconds:.1f} s; "
                f"{len(self.missing_shards)} shard(s) still missing: {self.missing_shards}"
            )
        if self.final_psnr:  # an INR zoo: the fits' PSNR, no accuracy
            q = "final PSNR (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in self.final_psnr.items())
        else:
            q = "final test accuracy: " + ", ".join(
                f"{k} {v:.3f}" for k, v in self.final_test_acc.items()
            )
        rate = self.n_trained / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"zoo: {self.path}\n"
            f"members: {self.n_members} ({self.n_trained} trained now, {rate:.1f} members/s), "
            f"diverged: {self.n_diverged}\n"
            f"{q}\n"
            f"time: {self.seconds:.1f} s"
        )


def resolve_spec(model_cfg: Any, task: Task | SignalTask) -> MLPSpec:
    """The zoo's architecture, its ends checked against (or taken from) the task."""
    widths = model_cfg.get("widths")
    if widths is None:
        hidden = list(model_cfg.get("hidden") or [])
        widths = [task.input_dim, *hidden, task.output_dim]
    widths = [int(w) for w in widths]
    if widths[0] != task.input_dim or widths[-1] != task.output_dim:
        raise ConfigError(
            f"model.widths: {widths} does not fit task {task.name} "
            f"(input {task.input_dim}, output {task.output_dim})"
        )
    return MLPSpec(
        tuple(widths),
        "relu",
        bool(model_cfg.get("bias", True)),
        bool(model_cfg.get("weight_norm", False)),
    )


def plan_shards(members: pd.DataFrame, shard_size: int) -> pd.DataFrame:
    """Assign ``shard`` and ``shard_row``: members grouped by static keys, cut into shards."""
    if int(shard_size) < 1:
        raise ConfigError(f"zoo.shard_size: must be >= 1, got {shard_size}")
    ordered = members.sort_values([*STATIC_KEYS, "member_id"], kind="stable")
    shard, row = np.empty(len(members), np.int64), np.empty(len(members), np.int64)
    next_shard = 0
    for _, group in ordered.groupby(list(STATIC_KEYS), sort=False):
        pos = members.index.get_indexer(group.index)
        for start in range(0, len(pos), shard_size):
            chunk = pos[start : start + shard_size]
            shard[chunk] = next_shard
            row[chunk] = np.arange(len(chunk))
            next_shard += 1
    return members.assign(shard=shard, shard_row=row)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for but no CUDA device is available")
    return torch.device(name)


def generate(cfg: DictConfig) -> ZooSummary:
    """Generate (or resume) the zoo the config describes; returns its summary."""
    t0 = time.perf_counter()
    task = load_task(cfg.task)
    spec = resolve_spec(cfg.model, task)
    zcfg = cfg.zoo
    members = sample_population(zcfg.hparams, int(zcfg.size), int(zcfg.seed), zcfg.sampling)
    inr = isinstance(task, SignalTask)
    if inr:  # each member's signal and its class, in the members table
        members = assign_signals(members, task)
    members = plan_shards(members, int(zcfg.shard_size))
    if spec.weight_norm:
        zero = (members["init_scale"] == 0) | (
            (members["init"] == "constant") & (members["init_value"] == 0)
        )
        if zero.any():
            raise ConfigError(
                "model.weight_norm: a zero initial weight row has no direction (g * v / ||v|| "
                "is 0/0); use a non-zero zoo.hparams.init_value / init_scale"
            )
    requested = list(zcfg.checkpoints or [])
    checkpoint_epochs(requested, 1)  # validate early
    device = resolve_device(str(cfg.get("device", "cpu")))
    trainer = choose_trainer(
        spec, device, str(cfg.get("backend", "auto")), option="backend", per_member_targets=inr
    )

    job = zcfg.get("shard")
    n_jobs = 1 if zcfg.get("num_shards") is None else int(zcfg.num_shards)
    if n_jobs < 1:
        raise ConfigError(f"zoo.num_shards: must be >= 1, got {n_jobs}")
    if job is not None and not 0 <= int(job) < n_jobs:
        raise ConfigError(f"zoo.shard: must be in [0, {n_jobs}) or null, got {job}")

    resolved = to_dict(cfg)
    # Which job makes which part does not change the zoo: every job shares one fingerprint.
    local = ("path", "name", "shard", "num_shards")
    defining = {
        "task": {k: v for k, v in resolved["task"].items() if k != "data_dir"},
        "model": resolved["model"],
        "zoo": {k: v for k, v in resolved["zoo"].items() if k not in local},
        "device": device.type,
        # The fused kernel and the torch path agree to float rounding, not bit for bit.
        "trainer": trainer,
        # How data orders are drawn (weightspace.zoo.train.data_order.shuffled): a zoo begun
        # with another rule is not resumed with this one.
        "shuffle": "splitmix64-fisher-yates",
    }
    writer = ZooWriter(
        zcfg.path,
        OmegaConf.to_yaml(cfg, resolve=True),
        fingerprint(defining),
        bool(cfg.get("overwrite", False)),
    )

    shards = [int(s) for s in sorted(members["shard"].unique())]
    writer.write_plan(len(shards))
    # Job `zoo.shard` of `zoo.num_shards` makes every num_shards-th storage shard.
    mine = shards if job is None else [s for s in shards if s % n_jobs == int(job)]
    todo = [s for s in mine if not writer.shard_done(s)]
    n_todo = int(members["shard"].isin(todo).sum())
    bar = progress_bar(
        total=n_todo,
        unit="member",
        desc=f"zoo {zcfg.name}",
        smoothing=0.1,
        disable=not cfg.get("progress", True),
    )
    with bar:
        for s in todo:
            rows = members[members["shard"] == s].sort_values("shard_row")
            n_epochs = int(rows["epochs"].iloc[0])

            def advance(epoch: int, n: int = len(rows), n_epochs: int = n_epochs) -> None:
                # Whole members on the bar: the part of this shard done after `epoch`.
                bar.update(n * epoch // n_epochs - n * (epoch - 1) // n_epochs)

            result = train_population(
                task,
                spec,
                rows,
                requested,
                device,
                on_epoch=advance,
                trainer=trainer,
            )
            writer.write_shard(
                int(s),
                rows["member_id"].to_numpy(),
                result.epochs,
                result.weights,
                result.metrics,
                result.diverged_epoch,
            )
            bar.set_postfix(shard=f"{todo.index(s) + 1}/{len(todo)}")

    missing = [s for s in shards if not writer.shard_done(s)]
    if missing:
        return ZooSummary(
            Path(zcfg.path),
            len(members),
            n_todo,
            0,
            time.perf_counter() - t0,
            missing_shards=missing,
        )

    all_epochs = sorted(
        {e for n in members["epochs"].unique() for e in checkpoint_epochs(requested, int(n))}
    )
    manifest = {
        "created_by": f"weightspace {__version__}",
        "architecture": {
            "widths": list(spec.widths),
            "bias": spec.bias,
            "weight_norm": spec.weight_norm,
            "activations": list(members["activation"].value_counts().index),
            "param_shapes": {k: list(v) for k, v in spec.param_shapes(trainable=True).items()}
            | {k: list(v) for k, v in spec.param_shapes().items()},
            "n_params": spec.n_params(),
        },
        "task": task_summary(task),
        "checkpoint_epochs": all_epochs,
        "layout": "each tensor is (members, checkpoints, *state_dict_shape)",
        "torch_version": torch.__version__,
        "device": device.type,
        "trainer": trainer,
    }
    writer.finalize(members, manifest)
    zoo = Zoo.open(zcfg.path)
    summary = _summarize(zoo, n_todo, time.perf_counter() - t0)
    if cfg.get("logger") and cfg.logger.get("name") == "wandb":
        log_zoo_card(zoo, cfg, summary)
    return summary


def cli() -> None:
    """The ``weightspace-generate`` console script: same as ``scripts/generate_zoo.py``."""
    import logging

    import hydra

    from weightspace.cli import launch, run_or_exit
    from weightspace.config import CONF_DIR
    from weightspace.schema import validate

    log = logging.getLogger(__name__)

    @hydra.main(config_path=str(CONF_DIR), config_name="generate", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        run_or_exit(validate, cfg, "generate")  # types and ranges, before any work
        z = cfg.zoo
        log.info(
            "zoo %s: %d members, task %s, backend %s", z.path, z.size, cfg.task.name, cfg.backend
        )
        summary = run_or_exit(generate, cfg)
        log.info(
            "zoo %s: %d trained now, %d diverged, %.1f s%s",
            summary.path,
            summary.n_trained,
            summary.n_diverged,
            summary.seconds,
            f"; shards missing {summary.missing_shards}" if summary.missing_shards else "",
        )
        print(summary)

    launch(main)


def final_metrics(zoo: Zoo) -> pd.DataFrame:
    """Each member's metrics at its last checkpoint."""
    m = zoo.metrics
    return m.loc[m.groupby("member_id")["epoch"].idxmax()].reset_index(drop=True)


def _summarize(zoo: Zoo, n_trained: int, seconds: float) -> ZooSummary:
    final = final_metrics(zoo)
    ok = final[~zoo.members["diverged"].to_numpy()[final["member_id"].to_numpy()]]
    return ZooSummary(
        zoo.root,
        len(zoo),
        n_trained,
        int(zoo.manifest["n_diverged"]),
        seconds,
        _quantiles(ok, "test_acc"),
        final_psnr=_quantiles(ok, "psnr"),
    )


def _quantiles(final: pd.DataFrame, col: str) -> dict[str, float]:
    """min, q25, median, q75, max of a metric column (empty if absent or all NaN)."""
    if col not in final or not final[col].notna().any():
        return {}
    qs = final[col].quantile([0.0, 0.25, 0.5, 0.75, 1.0])
    names = ("min", "q25", "median", "q75", "max")
    return {k: float(qs[q]) for k, q in zip(names, (0.0, 0.25, 0.5, 0.75, 1.0))}


def epoch_curves(zoo: Zoo) -> pd.DataFrame:
    """Per checkpoint epoch, the quantiles (min, q25, median, q75, max) and mean of every
    metric column over the members that did not diverge: one row per epoch, columns
    ``epoch`` and ``<metric>/<quantile>``."""
    m = zoo.metrics
    ok = ~zoo.members["diverged"].to_numpy()[m["member_id"].to_numpy()]
    m = m[ok]
    cols = [c for c in ("train_loss", "test_loss", "train_acc", "test_acc", "psnr") if c in m]
    qs = (0.0, 0.25, 0.5, 0.75, 1.0)
    names = ("min", "q25", "median", "q75", "max")
    rows = []
    for epoch, g in m.groupby("epoch", sort=True):
        row: dict[str, float] = {"epoch": int(epoch)}
        for c in cols:
            v = g[c].dropna()
            if len(v):
                row |= {f"{c}/{n}": float(q) for n, q in zip(names, v.quantile(qs))}
                row[f"{c}/mean"] = float(v.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def log_zoo_card(zoo: Zoo, cfg: DictConfig, summary: ZooSummary) -> None:
    """A W&B run describing the zoo: config, member and metric tables, histograms, per-epoch
    curves of the metrics' quantiles (``curves/<metric>/<quantile>`` against ``epoch``) and
    the zoo folder as an artifact by reference (type ``zoo``)."""
    import wandb

    with wandb_run(cfg.logger, f"zoo-{cfg.zoo.name}", "zoo", to_dict(cfg)) as run:
        run.define_metric("epoch")
        run.define_metric("curves/*", step_metric="epoch")
        for row in epoch_curves(zoo).to_dict(orient="records"):
            epoch = int(row.pop("epoch"))
            run.log({"epoch": epoch, **{f"curves/{k}": v for k, v in row.items()}})
        final = final_metrics(zoo)
        run.log(
            {
                "zoo/members": wandb.Table(dataframe=zoo.members),
                "zoo/final_metrics": wandb.Table(dataframe=final),
                **{
                    f"zoo/final_{c}": wandb.Histogram(final[c].dropna().to_numpy())
                    for c in ("test_acc", "test_loss", "psnr")
                    if c in final
                },
            }
        )
        run.summary.update(
            {
                "zoo/path": str(zoo.root),
                "zoo/n_members": summary.n_members,
                "zoo/n_diverged": summary.n_diverged,
                **{f"zoo/test_acc_{k}": v for k, v in summary.final_test_acc.items()},
            }
        )
        meta = {"n_members": summary.n_members, "widths": list(zoo.spec.widths)}
        log_reference(run, zoo.root, f"zoo-{zoo.root.name}", "zoo", meta)
