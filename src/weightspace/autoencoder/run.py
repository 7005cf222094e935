"""Latents of a trained autoencoder run: load its folder, encode a zoo's checkpoints.

An autoencoder run folder (written by ``scripts/train_autoencoder.py``, see
:mod:`weightspace.autoencoder.train`) holds ``run.json`` (the zoo it read), ``config.yaml`` (the
resolved config), ``checkpoints/`` and, when evaluated, ``evaluation/``. :func:`load_run`
rebuilds what the run trained on exactly as training built it:

- the **datamodule** from the run's own ``data`` config, on the zoo the run read (for
  ``canon=align`` the derived ``<zoo>-merge_many``, recorded in ``run.json``), with the same
  split seed and per-batch transform (``canon=canonical``);
- the **normalizer** fitted on the training split, taken from the checkpoint (it travels in
  the model's hyperparameters), so it is the one the model saw, not a refit;
- the **model** from the best checkpoint (lowest ``val/recon``, the one the run's evaluation
  used), else ``last.ckpt``.

A run folder is data, never code: run folders get copied and shared, so opening one must not
import or call anything its files name. The ``data`` config is not instantiated; it is read as
plain values (:func:`datamodule_options`) and the datamodule built from them, its ``_target_``
only ever :data:`DATAMODULE`, its ``transform`` / ``augment`` only functions of this package
(:func:`weightspace.data.callables.resolve_callable`; a ``{_target_: <such a function>,
_partial_: true, ...}`` node too). Anything else is refused with one line naming the file and
the key. The model is rebuilt from its checkpoint (loaded with ``weights_only``; its parts must
be ``nn.Module`` classes of weightspace, :func:`weightspace.autoencoder.options.part_factory`).

Runs written before the package's restructure open too (old ``_target_`` paths in their
``config.yaml``, mapped before the check above, and old hyperparameters in their checkpoints:
:mod:`weightspace.autoencoder.legacy`).

:func:`encode_zoo` then encodes every checkpoint of every member the run's data holds (the
run's ``epochs`` / ``test_acc_range`` filters aside: all epochs by default) without
augmentation, and returns the latents with one row per (member, checkpoint): split
(train / val / test), epoch, metrics and hyperparameters (categories as names).

    run = load_run("outputs/autoencoder/2026-11-23_20-38-34")
    lat = encode_zoo(run)          # lat.z: (N, latent); lat.items: member_id, epoch, split, ...
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from weightspace.data.callables import resolve_callable
from weightspace.data.datamodule import WeightDataModule
from weightspace.data.dataset import WeightDataset
from weightspace.errors import ConfigError, ZooError
from weightspace.zoo.store import MANIFEST

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # the zoo the run read and its W&B id
CONFIG_FILE = "config.yaml"  # the run's resolved config
EVALUATION_DIR = "evaluation"
RUN_DIRS = ("autoencoder", "autoencoder-multirun")  # where train_autoencoder.py writes runs
SPLITS = ("train", "val", "test")
DATAMODULE = "weightspace.data.datamodule.WeightDataModule"  # the one class a run's data names
_BUILD_KEYS = ("_convert_", "_recursive_")  # Hydra keys that change how, not what: ignored
_CALLABLES = ("transform", "augment")  # options that name a function (resolve_callable)


# --------------------------------------------------------------------------- finding a run
def is_run(path: Path) -> bool:
    return (path / RUN_FILE).is_file() and (path / CONFIG_FILE).is_file()


def find_runs(log_dir: str | Path) -> list[Path]:
    """Every run folder under ``log_dir/autoencoder*/``, oldest first (by ``run.json``)."""
    root = Path(log_dir)
    found = []
    for d in RUN_DIRS:
        found += [p.parent for p in (root / d).glob(f"*/{RUN_FILE}")]
        found += [p.parent for p in (root / d).glob(f"*/*/{RUN_FILE}")]  # multirun jobs
    runs = [p for p in found if is_run(p)]
    return sorted(runs, key=lambda p: ((p / RUN_FILE).stat().st_mtime, str(p)))


def resolve_run(value: str | Path, log_dir: str | Path, key: str = "autoencoder") -> Path:
    """A run folder from ``value``: a path to one; a path relative to ``log_dir``
    (``autoencoder/2026-11-23_20-38-34``) or a run name under ``log_dir/autoencoder/``
    (``2026-11-23_20-38-34``); or ``latest``, the newest run under ``log_dir``."""
    text = str(value)
    if text == "latest":
        runs = find_runs(log_dir)
        if not runs:
            raise ConfigError(
                f"{key}=latest: no autoencoder run under {Path(log_dir)}/autoencoder "
                "(train one with scripts/train_autoencoder.py)"
            )
        return runs[-1].resolve()
    path = Path(text).expanduser()
    candidates = [path]
    if not path.is_absolute():
        candidates += [Path(log_dir) / path, Path(log_dir) / RUN_DIRS[0] / path]
    for c in candidates:
        if is_run(c):
            return c.resolve()
    where = path if path.is_absolute() or path.exists() else Path(log_dir) / RUN_DIRS[0] / path
    why = "does not exist" if not where.exists() else f"has no {RUN_FILE} and {CONFIG_FILE}"
    raise ConfigError(
        f"{key}: {where.resolve()} is not an autoencoder run folder ({why}; give a folder "
        f"written by scripts/train_autoencoder.py, a run name under {Path(log_dir)}/autoencoder, "
        "or latest)"
    )


def checkpoint_of(run_dir: Path, which: str = "best") -> Path:
    """``best``: the best checkpoint (else last); ``last``; or a file name in checkpoints/."""
    folder = run_dir / "checkpoints"
    if which == "best":
        best = sorted(folder.glob("best-*.ckpt"))
        if best:
            return best[-1]
        which = "last"
    path = folder / ("last.ckpt" if which == "last" else which)
    if not path.is_file():
        raise ConfigError(f"autoencoder: {run_dir} has no checkpoint {path.name} in checkpoints/")
    return path


# --------------------------------------------------------------------------- the run
@dataclass
class Run:
    """A trained autoencoder run, rebuilt: model (eval mode, CPU) and datamodule (set up)."""

    path: Path
    config: DictConfig
    record: dict[str, Any]
    zoo: Path  # the zoo the run read (the derived zoo for canon=align)
    checkpoint: Path
    model: Any  # weightspace.autoencoder.module.WeightAutoencoder
    datamodule: WeightDataModule

    @property
    def canon(self) -> str:
        return str(OmegaConf.select(self.config, "canon.name", default="none"))

    @property
    def parent_zoo(self) -> Path:
        """The zoo the run's zoo was derived from (itself when not derived)."""
        derived = self.datamodule.full_dataset.zoos[0].derived_from
        return Path(derived["path"]) if derived else self.zoo

    def describe(self) -> str:
        m = self.model
        width = getattr(m, "latent_width", m.hparams.latent_dim)
        return (
            f"{self.path} (encoder {m.encoder_kind}, latent "
            f"{width}, canon={self.canon}, zoo {self.zoo}, checkpoint "
            f"{self.checkpoint.name})"
        )


def datamodule_options(data: Any, source: str | Path) -> dict[str, Any]:
    """The keyword arguments of :class:`WeightDataModule` a run's saved ``data`` config means,
    read as data: nothing it names is imported or called but this package's functions.

    ``data`` (after :func:`~weightspace.autoencoder.legacy.upgrade_config`) must be a mapping
    whose ``_target_`` is :data:`DATAMODULE` and whose other keys are the datamodule's options
    (``_convert_`` / ``_recursive_`` ignored). ``transform`` / ``augment`` are ``null``, an
    import path :func:`~weightspace.data.callables.resolve_callable` accepts, or
    ``{_target_: <such a path>, _partial_: true, **plain keyword arguments}``; no other value
    may hold a ``_target_``. Raises a one-line :class:`ConfigError` naming ``source`` and the
    key.
    """
    try:
        return _options(data)
    except ConfigError as e:
        raise ConfigError(f"autoencoder: {source}: {e}") from None


def _options(data: Any) -> dict[str, Any]:
    try:
        plain = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else data
    except Exception as e:  # an interpolation that does not resolve
        raise ConfigError(f"data: does not resolve ({str(e).splitlines()[0]})") from e
    if not isinstance(plain, dict):
        raise ConfigError(f"data: expected a mapping, got {type(plain).__name__}")
    target = plain.get("_target_")
    if target != DATAMODULE:
        raise ConfigError(f"data._target_: '{target}' is not allowed (only {DATAMODULE})")
    accepted = set(inspect.signature(WeightDataModule).parameters)
    options: dict[str, Any] = {}
    for key, value in plain.items():
        if key == "_target_" or key in _BUILD_KEYS:
            continue
        if key not in accepted:
            raise ConfigError(f"data.{key}: not an option of WeightDataModule")
        if key in _CALLABLES:
            options[key] = _saved_callable(value, f"data.{key}")
        else:
            _no_target(value, f"data.{key}")
            options[key] = value
    return options


def _saved_callable(value: Any, key: str) -> Any:
    """A saved ``transform`` / ``augment``: null, an allowed import path, or a partial of one."""
    if value is None or isinstance(value, str):
        return resolve_callable(value, key)
    if not (isinstance(value, dict) and "_target_" in value):
        raise ConfigError(f"{key}: expected an import path or null, got {type(value).__name__}")
    fn = resolve_callable(str(value["_target_"]), f"{key}._target_")
    if value.get("_partial_") is not True:
        raise ConfigError(f"{key}._partial_: must be true (the function is called per batch)")
    kwargs = {k: v for k, v in value.items() if k not in ("_target_", "_partial_")}
    for k, v in kwargs.items():
        if k.startswith("_"):
            raise ConfigError(f"{key}.{k}: not allowed in a saved config")
        _no_target(v, f"{key}.{k}")
    return functools.partial(fn, **kwargs)


def _no_target(value: Any, key: str) -> None:
    """Refuse a ``_target_`` anywhere under ``value`` (``key`` names it)."""
    if isinstance(value, dict) and "_target_" in value:
        raise ConfigError(
            f"{key}._target_: '{value['_target_']}' is not allowed (a saved config builds only "
            "the datamodule and its transform / augment)"
        )
    if isinstance(value, dict | list):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            _no_target(v, f"{key}.{k}")


def load_run(
    run_dir: str | Path, checkpoint: str = "best", arch: str | None = None, arch_key: str = "arch"
) -> Run:
    """Rebuild an autoencoder run's model and datamodule (see the module docs).

    A run over zoos of several architectures (``zoo='[a,b,c]'``,
    :class:`~weightspace.autoencoder.mixed.MixedAutoencoder`) is rebuilt for one of them,
    ``arch`` (a name like ``64-32-32-10``): the model is that architecture's head (the shared
    encoder and its own decoder), the datamodule its part of the zoos; errors about it name
    ``arch_key`` (the caller's option).

    Raises :class:`ConfigError` when ``run_dir`` is not a run folder, its ``config.yaml``
    names anything but this package's datamodule and functions, or its checkpoint does not
    load; :class:`ZooError` when the zoo it trained on is gone.
    """
    from weightspace.autoencoder.legacy import upgrade_config
    from weightspace.autoencoder.module import WeightAutoencoder
    from weightspace.data.normalizer import LayerNormalizer

    path = Path(run_dir).expanduser().resolve()
    if not is_run(path):
        raise ConfigError(
            f"autoencoder: {path} is not an autoencoder run folder (no {RUN_FILE} and "
            f"{CONFIG_FILE}; give a folder written by scripts/train_autoencoder.py)"
        )
    try:
        record = json.loads((path / RUN_FILE).read_text())
        config = upgrade_config(OmegaConf.load(path / CONFIG_FILE))  # old _target_ paths
        mixed = isinstance(record["zoo"], list)  # several architectures: one per arch
        zoo = Path(record["zoo"][0] if mixed else record["zoo"])
        data_cfg = config.data
    except Exception as e:  # unreadable JSON / YAML, or fields missing
        raise ConfigError(f"autoencoder: {path}: unreadable run files ({e})") from e
    # Checked before anything else is read: the run's data config, as plain values.
    options = datamodule_options(data_cfg, path / CONFIG_FILE)
    if mixed:
        ckpt = checkpoint_of(path, checkpoint)
        return _load_mixed(path, config, record, options, ckpt, arch, arch_key)
    if not (zoo / MANIFEST).is_file():
        raise ZooError(
            f"autoencoder: the zoo of run {path} is gone: {zoo} (no {MANIFEST}); regenerate it "
            "with the commands that made it, or train a new run"
        )
    ckpt = checkpoint_of(path, checkpoint)
    if arch is not None:
        raise ConfigError(f"{arch_key}: {arch}: run {path} read one architecture; drop it")
    model = _load_checkpoint(WeightAutoencoder, ckpt)
    model.eval()

    # The run's own data options, on the zoo it read; the normalizer is the one the model
    # was trained with (fitted on the training split), so setup() does not refit it.
    datamodule = WeightDataModule(**{**options, "zoo_paths": str(zoo), "cache": False})
    norm = model.hparams.get("normalizer")
    datamodule.normalizer = None if norm is None else LayerNormalizer.from_dict(norm)
    datamodule.setup()
    if tuple(datamodule.spec.widths) != tuple(model.spec.widths):
        raise ZooError(
            f"autoencoder: zoo {zoo} has widths {list(datamodule.spec.widths)} but checkpoint "
            f"{ckpt} was trained on {list(model.spec.widths)}"
        )
    return Run(path, config, record, zoo, ckpt, model, datamodule)


def reads_several(run_dir: str | Path) -> bool:
    """Whether the run at ``run_dir`` trained on zoos of several architectures (its record
    lists zoos): :func:`load_run` then needs ``arch``."""
    path = Path(run_dir) / RUN_FILE
    return path.is_file() and isinstance(json.loads(path.read_text()).get("zoo"), list)


def _load_checkpoint(cls: Any, ckpt: Path) -> Any:
    """``cls.load_from_checkpoint`` on the CPU; a truncated or foreign file is one line."""
    try:
        return cls.load_from_checkpoint(str(ckpt), map_location="cpu")
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"autoencoder: cannot load checkpoint {ckpt} ({msg})") from e


def _load_mixed(
    path: Path,
    config: DictConfig,
    record: dict[str, Any],
    options: dict[str, Any],
    ckpt: Path,
    arch: str | None,
    arch_key: str,
) -> Run:
    """One architecture of a run over several (see :func:`load_run`)."""
    from weightspace.autoencoder.mixed import MixedAutoencoder
    from weightspace.data.mixed import MixedDataModule

    zoos = [Path(z) for z in record["zoo"]]
    for zoo in zoos:
        if not (zoo / MANIFEST).is_file():
            raise ZooError(f"autoencoder: a zoo of run {path} is gone: {zoo} (no {MANIFEST})")
    mixed = _load_checkpoint(MixedAutoencoder, ckpt)
    if arch not in mixed.names:
        raise ConfigError(
            f"{arch_key}: {arch}: run {path} reads several architectures, choose one of "
            f"{', '.join(mixed.names)}"
        )
    k = mixed.names.index(arch)
    head = mixed.heads[k].eval()
    datamodule = MixedDataModule([str(z) for z in zoos], **{**options, "cache": False})
    datamodule.setup()
    part = datamodule.parts[k]
    part.load_state_dict({"normalizer": head.hparams.get("normalizer")})  # the model's own
    return Run(path, config, record, Path(part.zoo_paths[0]), ckpt, head, part)


# --------------------------------------------------------------------------- encoding
@dataclass
class Latents:
    """Latents ``z`` ``(N, latent)`` with one ``items`` row per (member, checkpoint)."""

    z: np.ndarray
    items: pd.DataFrame

    def __len__(self) -> int:
        return len(self.items)

    @property
    def epochs(self) -> list[int]:
        return sorted(int(e) for e in self.items["epoch"].unique())


def encode_zoo(
    run: Run,
    epochs: list[int] | str | None = None,
    batch_size: int = 512,
) -> Latents:
    """Encode the run's zoo: every checkpoint (or ``epochs``: a list, or ``"last"``) of every
    member of the run's data (diverged members excluded as the run excluded them).

    ``items`` columns: ``zoo_index``, ``member_id``, ``epoch``, ``split`` (the member's split
    in the run: train / val / test), ``seen`` (this checkpoint was among the run's data:
    its ``epochs`` / ``test_acc_range`` filters), the metrics (``test_acc``, ...), the
    members' hyperparameters (``lr``, ...) and categorical ones by name (``init``, ...).
    Rows are sorted by zoo, member, epoch.
    """
    dm = run.datamodule
    full = dm.full_dataset
    ds = WeightDataset(
        full.zoos,
        full.representation,
        epochs=epochs,
        exclude_diverged=dm.exclude_diverged,
        transform=full.transform,
        seed=dm.seed,
        normalizer=dm.normalizer,
    )
    model = run.model
    zs = []
    with torch.no_grad():
        for s in range(0, len(ds), batch_size):
            batch = ds.__getitems__(list(range(s, min(s + batch_size, len(ds)))))
            zs.append(model.encode(batch).float().cpu())
    z = torch.cat(zs).numpy().astype(np.float64)

    items = ds.items
    for col, names in ds.categories.items():
        items[col] = np.asarray(names, dtype=object)[items[col].to_numpy()]
    split_of = {key: name for name in SPLITS for key in dm.splits[name]}
    keys = list(zip(items["zoo_index"].tolist(), items["member_id"].tolist()))
    items.insert(3, "split", [split_of.get(k, "unused") for k in keys])
    seen = set(
        zip(
            full.items["zoo_index"].tolist(),
            full.items["member_id"].tolist(),
            full.items["epoch"].tolist(),
        )
    )
    items.insert(
        4,
        "seen",
        [k in seen for k in zip(*(items[c].tolist() for c in ("zoo_index", "member_id", "epoch")))],
    )
    return Latents(z, items.reset_index(drop=True))


__all__ = [
    "DATAMODULE",
    "Latents",
    "Run",
    "checkpoint_of",
    "datamodule_options",
    "encode_zoo",
    "find_runs",
    "load_run",
    "resolve_run",
]
