"""Autoencoder training: ``train(cfg)`` fits a :class:`WeightAutoencoder` on a zoo.

``scripts/train_autoencoder.py`` is a thin Hydra wrapper around it; tests call it directly. Its
primary config is ``conf/train_autoencoder.yaml`` (:data:`CONFIG_NAME` in :data:`CONFIG_DIR`, the
one config root every entry point shares). A run folder holds everything a run writes::

    <run_dir>/
      run.json              zoo path and the W&B run id (a resumed run continues that W&B run)
      config.yaml           the resolved config
      checkpoints/          last.ckpt and best-*.ckpt (best ``model.monitor``)
      csv/version_N/        metrics.csv and hparams.yaml (a new version per resume)
      metrics.json          the final metrics ``train`` returns

``run_dir`` defaults to the Hydra job's output folder, and when resuming from ``ckpt_path``
to the run folder that checkpoint belongs to. Files are written by rank zero only.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from weightspace.autoencoder.mixed import MixedAutoencoder
from weightspace.autoencoder.module import WeightAutoencoder
from weightspace.autoencoder.run import CONFIG_FILE, RUN_FILE
from weightspace.config import CONF_DIR, to_dict
from weightspace.data.datamodule import WeightDataModule
from weightspace.data.mixed import MixedDataModule
from weightspace.errors import ConfigError, ZooError
from weightspace.tracking import (
    FITTED,
    log_reference,
    run_config,
    run_name,
    sweep_overrides,
    wandb_mode,
)
from weightspace.zoo.store import MANIFEST
from weightspace.zoo.store import resolve_zoo as resolve_zoo_folder

log = logging.getLogger(__name__)

CONFIG_DIR = CONF_DIR
CONFIG_NAME = "train_autoencoder"


def resolve_zoo(cfg: DictConfig) -> Path:
    """The zoo to read: ``cfg.zoo`` (a folder, or a zoo name under ``paths.zoo_dir``), or its
    derived zoo when ``canon.derived`` names one."""
    zoos = resolve_zoos(cfg)
    if len(zoos) > 1:
        raise ConfigError(f"zoo: one zoo expected here, got {len(zoos)}")
    return zoos[0]


def resolve_zoos(cfg: DictConfig) -> list[Path]:
    """Every zoo ``cfg.zoo`` names (one, or a list: ``zoo='[a,b,c]'``), each as
    :func:`resolve_zoo` resolves one."""
    try:
        zoo = cfg.zoo
    except MissingMandatoryValue:
        zoo = None
    if not zoo:
        raise ConfigError("zoo: required, a zoo folder or a name under paths.zoo_dir")
    names = list(zoo) if OmegaConf.is_list(zoo) or isinstance(zoo, list | tuple) else [zoo]
    return [_resolve_one(cfg, str(z)) for z in names]


def _resolve_one(cfg: DictConfig, zoo: str) -> Path:
    parent = resolve_zoo_folder(zoo, cfg.paths.zoo_dir, "zoo")
    derived = cfg.canon.get("derived")
    if not derived:
        return parent
    path = parent.with_name(f"{parent.name}-{derived}")
    if not (path / MANIFEST).exists():
        raise ZooError(
            f"canon={cfg.canon.name}: needs the derived zoo {path}; make it with "
            f"`python scripts/canonicalize_zoo.py parent={parent} transform.kind={derived}`"
        )
    return path


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``cfg.run_dir``; else the resumed checkpoint's run folder; else Hydra's output folder."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if cfg.get("ckpt_path"):
        run = Path(cfg.ckpt_path).resolve().parent.parent  # <run>/checkpoints/last.ckpt
        if (run / RUN_FILE).exists():
            return run
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ConfigError("run_dir: not set and no Hydra run folder to default to; set run_dir=PATH")


def claim_run_dir(run_dir: Path, fresh: bool) -> Path:
    """The folder a run writes to. A ``fresh`` run (not resuming, folder not given by the
    user) claims ``run_dir`` by creating its ``run.json`` exclusively; if another run got
    there first (two runs started in the same second share Hydra's timestamped folder), it
    takes ``<run_dir>-1``, ``-2``, ... instead and says so. Ranks other than zero, and
    resumed runs, keep ``run_dir``."""
    if not fresh or rank_zero_only.rank != 0:
        return run_dir
    for k in range(1000):
        cand = run_dir if k == 0 else run_dir.with_name(f"{run_dir.name}-{k}")
        cand.mkdir(parents=True, exist_ok=True)
        try:
            with open(cand / RUN_FILE, "x"):
                pass
        except FileExistsError:
            continue
        if k:
            log.warning(
                "run folder %s belongs to another run started in the same second; "
                "this run writes to %s (its Hydra log stays in the first)",
                run_dir,
                cand,
            )
        return cand
    raise ConfigError(f"run_dir: {run_dir} and 999 numbered siblings are taken by other runs")


def _run_record(run_dir: Path, zoo: Path | list[str]) -> dict[str, Any]:
    """The run's record: read back when resuming (same W&B id), else a new one."""
    path = run_dir / RUN_FILE
    text = path.read_text() if path.exists() else ""
    if text.strip():
        return json.loads(text)
    return {"zoo": zoo if isinstance(zoo, list) else str(zoo), "wandb_id": uuid.uuid4().hex[:12]}


@rank_zero_only
def _write_run_files(run_dir: Path, record: dict[str, Any], cfg: DictConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))


@rank_zero_only
def _write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")


def _wandb_group(cfg: DictConfig) -> str | None:
    """``logger.group``; by default the jobs of one Hydra multirun share its sweep folder's name."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


class ConfigOnceWandbLogger(WandbLogger):
    """The W&B logger whose config is the run's Hydra config, given once at ``wandb.init``.

    Lightning logs the model's hyperparameters again when fitting starts; they repeat the
    config's ``model`` group (and carry the fitted arrays). Only the values the config does
    not hold (the zoo's widths and activations, ...) are added, under ``resolved``."""

    def __init__(self, *args: Any, known: set[str] = frozenset(), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._known = set(known)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        items = params.items() if hasattr(params, "items") else vars(params).items()
        extra = {
            str(k): v
            for k, v in items
            if k not in self._known and k not in FITTED and not str(k).startswith("_")
        }
        if extra:
            self.experiment.config.update(
                {"resolved": run_config(_plain(extra))}, allow_val_change=True
            )


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-able values (tensors and other objects as their repr)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, DictConfig) or OmegaConf.is_config(v):
            v = OmegaConf.to_container(v, resolve=True)
        try:
            json.dumps(v)
        except TypeError:
            v = repr(v)
        out[k] = v
    return out


def build_loggers(cfg: DictConfig, run_dir: Path, wandb_id: str) -> list[Logger]:
    """CSV always (into the run folder); W&B with ``logger=wandb``, offline unless logged in.

    The W&B run: the config without fitted values (:func:`weightspace.tracking.run_config`),
    logged once (:class:`ConfigOnceWandbLogger`); a sweep job's overrides in its name."""
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="csv")]
    lcfg = cfg.logger
    if lcfg.get("name") == "wandb":
        Path(lcfg.dir).mkdir(parents=True, exist_ok=True)
        loggers.append(
            ConfigOnceWandbLogger(
                name=run_name(str(cfg.get("name")), sweep_overrides()),
                project=lcfg.project,
                entity=lcfg.get("entity"),
                group=_wandb_group(cfg),
                tags=list(lcfg.get("tags") or []),
                save_dir=lcfg.dir,
                id=wandb_id,  # WandbLogger passes resume="allow": a resume continues the run
                mode=wandb_mode(lcfg.get("mode")),
                job_type="autoencoder",
                config=run_config(to_dict(cfg)),
                known=set((cfg.get("model") or {}).keys()),
            )
        )
    return loggers


class EpochLoss(Callback):
    """The training loss averaged over each epoch (weighted by batch size), logged as
    ``train/loss_epoch`` to the W&B logger only: the CSV logger and the metrics ``train``
    returns stay as they were (the per-step curve is ``train/loss``)."""

    def __init__(self, logger: Logger):
        self.logger = logger
        self.total, self.n = 0.0, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.total, self.n = 0.0, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        ids = batch.get("member_id") if isinstance(batch, dict) else None
        n = len(ids) if ids is not None else 1
        self.total += float(loss.detach()) * n
        self.n += n

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.n and trainer.is_global_zero:
            self.logger.log_metrics(
                {"train/loss_epoch": self.total / self.n, "epoch": trainer.current_epoch},
                step=trainer.global_step,
            )


def _wandb_logger(loggers: list[Logger]) -> WandbLogger | None:
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


@rank_zero_only
def _log_checkpoint(logger: WandbLogger, metrics: dict[str, Any], record: dict[str, Any]) -> None:
    """The best checkpoint as a W&B artifact by reference (``file://``; nothing uploaded),
    and the run folder in the summary (what an analysis of this run records)."""
    run = logger.experiment
    run.summary["run_dir"] = metrics["run_dir"]
    best = metrics.get("best_checkpoint")
    if best and Path(best).is_file():
        meta = {"run_dir": metrics["run_dir"], "global_step": metrics["global_step"]}
        log_reference(run, best, f"checkpoint-{record['wandb_id']}", "model", meta)


def build_callbacks(run_dir: Path, monitor: str = "val/recon", mode: str = "min") -> list[Callback]:
    """The best checkpoint (lowest ``monitor``, highest with ``mode="max"``: ``best-*.ckpt``)
    and the last one
    (``last.ckpt``, rewritten every epoch: what a resume starts from).

    ``save_last=True`` alone is not enough: since Lightning 2.6 it rewrites ``last.ckpt`` only
    when a new best is saved (and at the end of training), so it held the best epoch and a
    resume went back to it. A second callback without a monitor writes the same file every
    epoch; version counters off, so the two never make a ``last-v1.ckpt``."""
    folder = run_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best-{epoch:03d}-{step}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,  # also at the end of training (a fast_dev_run's only checkpoint)
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    every_epoch = ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False)
    return [best, every_epoch]


def _last_checkpoint(callbacks: list[Callback]) -> str | None:
    """The path of ``last.ckpt`` the callbacks of :func:`build_callbacks` wrote."""
    best, every_epoch = callbacks[:2]
    assert isinstance(best, ModelCheckpoint) and isinstance(every_epoch, ModelCheckpoint)
    return every_epoch.best_model_path or best.last_model_path or None


def _evaluate(
    cfg: DictConfig, model: WeightAutoencoder, datamodule: WeightDataModule, run_dir: Path
) -> Any:
    """End-of-training evaluation on the held-out members, on rank zero only: ``cfg.evaluator``
    (a later stage's function, :func:`weightspace.evaluation.run.evaluate_run` by default,
    named by ``_target_`` so that this stage does not import it) called with the model, the
    datamodule, the run folder and the seed."""
    if not cfg.get("evaluate", False) or not rank_zero_only.rank == 0:
        return None
    evaluator = instantiate(cfg.evaluator)
    if isinstance(model, MixedAutoencoder):  # each architecture's head on its members
        return {
            name: evaluator(
                model=head, datamodule=part, run_dir=run_dir / name, seed=int(cfg.seed), scope=name
            )
            for name, head, part in zip(model.names, model.heads, datamodule.parts)
        }
    return evaluator(model=model, datamodule=datamodule, run_dir=run_dir, seed=int(cfg.seed))


def _check_positives(cfg: DictConfig) -> None:
    """``contrastive_positives=member`` and ``features.origin`` need train batches with
    several checkpoints of a member: refused before training rather than trained with a
    silent 0."""
    model, data = cfg.get("model", {}), cfg.get("data", {})
    member = (
        model.get("contrastive_weight", 0) > 0
        and model.get("contrastive_positives") == "member"
        and int(data.get("views", 1)) < 2
    )
    origin = (model.get("features") or {}).get("origin") or 0
    if not member and not origin > 0:
        return
    what = "model.contrastive_positives=member" if member else "model.features.origin"
    if not data.get("group_by_member", False):
        raise ConfigError(
            f"{what}: a train batch needs several checkpoints of a member; set "
            "data.group_by_member=true"
        )
    if data.get("epochs") == "last" or len(data.get("epochs") or [0, 1]) < 2:
        raise ConfigError(
            f"{what}: data.epochs={data.get('epochs')} keeps one checkpoint per member; keep "
            "several (null, or a list)"
        )


def build(cfg: DictConfig, zoos: list[Path]) -> tuple[Any, Any]:
    """The datamodule and model for ``zoos``: ``cfg.data`` and ``cfg.model`` as configured;
    zoos of several architectures: a :class:`~weightspace.data.mixed.MixedDataModule` with the
    same options and a :class:`~weightspace.autoencoder.mixed.MixedAutoencoder` (one encoder,
    a head per architecture)."""
    seed = int(cfg.seed)
    _check_positives(cfg)
    if len(zoos) > 1:
        options = to_dict(cfg.data)
        options.pop("_target_", None)
        mixed = MixedDataModule([str(z) for z in zoos], **options)
        mixed.setup()
        if len(mixed.parts) > 1:
            model_cfg = to_dict(cfg.model)
            target = model_cfg.pop("_target_", "")
            if not target.startswith("weightspace.autoencoder.module.WeightAutoencoder"):
                raise ConfigError(
                    f"model: {target} reads one architecture; zoos of several "
                    f"({', '.join(mixed.names)}) train the autoencoder only"
                )
            for key in ("_partial_", "_recursive_"):
                model_cfg.pop(key, None)
            return mixed, MixedAutoencoder.from_datamodule(mixed, probe_seed=seed, **model_cfg)
    paths = str(zoos[0]) if len(zoos) == 1 else [str(z) for z in zoos]
    datamodule: WeightDataModule = instantiate(cfg.data, zoo_paths=paths, _convert_="all")
    return datamodule, instantiate(cfg.model, _convert_="all")(datamodule, probe_seed=seed)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the autoencoder the config describes (resuming from ``ckpt_path`` if given).

    Returns the final metrics (``train/*``, ``val/*`` at the end of fitting, ``test/*`` of
    the best checkpoint on the held-out members), ``global_step``, and the paths
    ``run_dir``, ``best_checkpoint`` and ``last_checkpoint``.
    """
    zoos = resolve_zoos(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a file")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(int(cfg.seed), workers=True)

    datamodule, model = build(cfg, zoos)
    zoo = zoos[0] if len(zoos) == 1 else [str(z) for z in zoos]

    run_dir = resolve_run_dir(cfg)
    run_dir = claim_run_dir(run_dir, fresh=not (ckpt_path or cfg.get("run_dir")))
    record = _run_record(run_dir, zoo)
    _write_run_files(run_dir, record, cfg)
    loggers = build_loggers(cfg, run_dir, record["wandb_id"])
    # A model that logs no val/recon (the supervised WeightPredictor) names its own metric.
    callbacks = build_callbacks(
        run_dir, getattr(model, "monitor", "val/recon"), getattr(model, "monitor_mode", "min")
    )
    # Extra callbacks from the config: {name: {_target_: ...}} (e.g. a test's data recorder).
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    wandb_logger = _wandb_logger(loggers)
    extra: dict[str, Any] = {}
    if wandb_logger is not None:  # W&B: train loss per epoch, and per step however short
        callbacks.append(EpochLoss(wandb_logger))
        every = cfg.logger.get("log_every_n_steps")
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ConfigError(
                    f"logger.log_every_n_steps: {every!r}: expected an integer >= 1 (or null)"
                )
            extra["log_every_n_steps"] = every
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=loggers, callbacks=callbacks, **extra
    )
    checkpoint = trainer.checkpoint_callback
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["global_step"] = trainer.global_step
        metrics["run_dir"] = str(run_dir)
        # Read before testing: restoring the best checkpoint restores its callback state too.
        metrics["best_checkpoint"] = (checkpoint and checkpoint.best_model_path) or None
        metrics["last_checkpoint"] = _last_checkpoint(callbacks)
        # The held-out members, on the best checkpoint (the last weights under fast_dev_run).
        tested = trainer.test(
            model, datamodule=datamodule, ckpt_path=metrics["best_checkpoint"], verbose=False
        )
        metrics.update({k: float(v) for k, v in tested[0].items()})
        _write_metrics(run_dir, metrics)
        if wandb_logger is not None:
            _log_checkpoint(wandb_logger, metrics, record)

        # ---- end-of-training evaluation (weightspace.evaluation): `model` holds the weights
        # just tested; the results join the returned metrics under "evaluation".
        results = _evaluate(cfg, model, datamodule, run_dir)
        if results is not None:
            metrics["evaluation"] = results
    finally:
        if wandb_logger is not None:
            import wandb

            wandb.finish()
    return metrics


# The reconstruction columns printed at the end of a run: test accuracy of the originals and of
# the decoded networks, their ratio, label agreement, mean per-tensor weight R².
def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """``metrics[cfg.optimized_metric]``: the value a sweeper optimizes (None if unset)."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    if key not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        raise ConfigError(f"optimized_metric: '{key}' is not a final metric (have {numeric})")
    return float(metrics[key])


def cli() -> None:
    """The Hydra entry point of ``scripts/train_autoencoder.py``."""
    import hydra

    from weightspace.cli import launch, run_or_exit
    from weightspace.schema import validate

    @hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base="1.3")
    def main(cfg: DictConfig) -> float | None:
        run_or_exit(validate, cfg, "train_autoencoder")  # types and ranges, before any work
        if rank_zero_only.rank == 0:
            log.info("autoencoder %s on zoo %s", cfg.get("name"), cfg.get("zoo"))
        metrics = run_or_exit(train, cfg)
        final = {k: v for k, v in metrics.items() if k != "evaluation"}
        if rank_zero_only.rank == 0:  # DDP: the other ranks run this too
            log.info("finished: %s after %s steps", final.get("run_dir"), final.get("global_step"))
            print(json.dumps(final, indent=2))
            if "evaluation" in metrics:  # the evaluator's results say how they read
                print(metrics["evaluation"].summary(Path(metrics["run_dir"])))
        # A sweeper (hydra/sweeper=optuna_search) minimizes what the job returns.
        return run_or_exit(objective, cfg, metrics)

    launch(main)
