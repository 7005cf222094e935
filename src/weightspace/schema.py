"""Typed configs: every entry point's options checked up front, one line per bad value.

Each primary config (``conf/generate.yaml``, ``canonicalize.yaml``, ``train_autoencoder.yaml``,
``analyze.yaml``) has a table here, ``dotted key -> check``; :func:`validate` walks the composed
config against it before any work starts, so a wrong type (``zoo.size=abc``), a value out of
range (``zoo.seed=-1``) or a non-finite number (``zoo.hparams.lr=inf``) is one
:class:`~weightspace.errors.ConfigError`::

    zoo.size: 'abc': expected an integer >= 1

A validation table rather than dataclasses in Hydra's ConfigStore: a structured config types
every node, and these configs are loose on purpose where they must be — ``zoo.hparams`` values
are a value, a list (a grid axis) or a ``{dist: ...}`` mapping and the README documents
deleting and re-adding them (``~zoo.hparams.weight_decay``), which a structured node refuses;
``task`` takes new keys per task (INR tasks); encoder groups differ in their keys. Hydra's
own type errors would also arrive as its multi-line message. Keys absent from the config are
skipped (a preset may drop them); keys not in a table are left to the code that reads them.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from weightspace.errors import ConfigError

_NOTHING = object()  # a key the config does not have (or holds ???)


# --------------------------------------------------------------------------- checks
class Check:
    """A predicate on one plain value and the words for what it expects."""

    def __init__(self, ok: Callable[[Any], bool], what: str):
        self.ok, self.what = ok, what

    def __call__(self, key: str, value: Any) -> None:
        if not self.ok(value):
            raise ConfigError(f"{key}: {value!r}: expected {self.what}")

    def __or__(self, other: Check) -> Check:
        return Check(lambda v: self.ok(v) or other.ok(v), f"{self.what} or {other.what}")


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def _within(v: float, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return hi is None or (v < hi if hi_open else v <= hi)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    what = "an integer" + (f" {_range(lo, hi, False, False)}" if lo is not None or hi else "")
    return Check(lambda v: _is_int(v) and _within(v, lo, hi, False, False), what)


def number(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Check:
    """A finite int or float in the range (never inf or nan)."""
    bounds = _range(lo, hi, lo_open, hi_open)
    return Check(
        lambda v: (
            (_is_int(v) or isinstance(v, float))
            and math.isfinite(v)
            and _within(v, lo, hi, lo_open, hi_open)
        ),
        "a finite number" + (f" {bounds}" if bounds else ""),
    )


BOOL = Check(lambda v: isinstance(v, bool), "true or false")
NULL = Check(lambda v: v is None, "null")
TEXT = Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def choice(*options: str) -> Check:
    return Check(lambda v: v in options, f"one of {', '.join(options)}")


def list_of(item: Check, min_len: int = 0, length: int | None = None) -> Check:
    size = f"{length} " if length else (f"at least {min_len} " if min_len else "")
    return Check(
        lambda v: (
            isinstance(v, list)
            and len(v) >= min_len
            and (length is None or len(v) == length)
            and all(item.ok(x) for x in v)
        ),
        f"a list of {size}values, each {item.what}",
    )


def folder_name() -> Check:
    """One folder name: outputs stay under their root (no separators, no ``..``)."""
    return Check(
        lambda v: (
            isinstance(v, str)
            and v not in ("", ".", "..")
            and "/" not in v
            and "\\" not in v
            and "\0" not in v
        ),
        "a folder name without / or \\ (not . or ..): outputs stay under paths.root_dir",
    )


def hparam(item: Check) -> Check:
    """A per-member hyperparameter: a value, a list of values (a grid axis) or a
    distribution ``{dist: uniform|loguniform, low, high}`` / ``{dist: choice, values}``."""

    def ok(v: Any) -> bool:
        if isinstance(v, list):
            return len(v) > 0 and all(item.ok(x) for x in v)
        if isinstance(v, Mapping) and "dist" in v:
            if v["dist"] == "choice":
                values = v.get("values")
                return isinstance(values, list) and all(item.ok(x) for x in values)
            return all(_end_ok(item, v.get(end)) for end in ("low", "high"))
        return item.ok(v)

    return Check(ok, f"{item.what}, a list of them or a {{dist: ...}}")


def _end_ok(item: Check, x: Any) -> bool:
    """A distribution's end: a value of the option (for an integer option, a finite float
    that rounds to one)."""
    if item.ok(x):
        return True
    return isinstance(x, float) and math.isfinite(x) and item.ok(round(x))


# --------------------------------------------------------------------------- tables
HPARAMS: dict[str, Check] = {
    "seed": NULL | integer(0),
    "init": TEXT,
    "init_scale": number(),
    "init_std": number(0),
    "init_value": number(),
    "bias_init": TEXT,
    "optimizer": TEXT,
    "lr": number(0, lo_open=True),
    "momentum": number(0, 1, hi_open=True),
    "weight_decay": number(0),
    "batch_size": integer(1),
    "epochs": integer(1),
    "activation": TEXT,
    "data_order": TEXT,
    "subset": number(0, 1, lo_open=True),
    "label_noise": number(0, 1),
    "w0": number(0, lo_open=True),  # SIREN's first-layer frequency (init=siren)
    "signal": NULL | integer(0),  # INR zoos: the signal a member fits (range: the task's)
}

GENERATE: dict[str, Check] = {
    "device": TEXT,
    "backend": choice("auto", "fused", "hand", "autograd"),
    "overwrite": BOOL,
    "progress": BOOL,
    "model.widths": NULL | list_of(integer(1), min_len=2),
    "model.hidden": NULL | list_of(integer(1)),
    "model.bias": BOOL,
    "model.weight_norm": BOOL,
    "zoo.name": folder_name(),
    "zoo.path": TEXT,
    "zoo.size": integer(1),
    "zoo.seed": integer(0),
    "zoo.sampling": choice("grid", "random"),
    "zoo.shard_size": integer(1),
    "zoo.shard": NULL | integer(0),
    "zoo.num_shards": NULL | integer(1),
    "zoo.checkpoints": NULL | list_of(integer(0)),
    **{f"zoo.hparams.{k}": hparam(c) for k, c in HPARAMS.items()},
}

CANONICALIZE: dict[str, Check] = {
    "parent": TEXT,
    "out": TEXT,
    "overwrite": BOOL,
    "progress": BOOL,
    "transform.kind": choice("canonical", "align", "merge_many"),
    "transform.sort_key": NULL | TEXT,
    "transform.sign": NULL | BOOL,
    "transform.scale": NULL | BOOL,
    "transform.reference_member": integer(0),
    "transform.epoch": NULL | integer(0),
    "transform.max_iter": integer(1),
    "transform.tol": number(0),
    "transform.seed": integer(0),
    "transform.sign_aware": BOOL,
    "transform.schedule": choice("sequential", "batched"),
    "transform.block": integer(1),
}

# The encoder / decoder groups differ in their keys: checked by the key's name.
PART_KEYS: dict[str, Check] = {
    "hidden": integer(1) | list_of(integer(1)),
    "dropout": number(0, 1, hi_open=True),
    **{
        k: integer(1)
        for k in (
            "channels",
            "n_layers",
            "n_heads",
            "d_model",
            "edge_dim",
            "message_dim",
            "readout_hidden",
            "n_latent_tokens",
        )
    },
    **{k: BOOL for k in ("layer_norm", "io_embed", "position_embedding")},
    "canonical": BOOL | choice("sign"),
}

TRAIN_AUTOENCODER: dict[str, Check] = {
    "seed": integer(0),
    "ckpt_path": NULL | TEXT,
    "run_dir": NULL | TEXT,
    "evaluate": BOOL,
    "optimized_metric": NULL | TEXT,
    "num_threads": NULL | integer(1),
    "data.epochs": NULL | choice("last") | list_of(integer(0), min_len=1),
    "data.exclude_diverged": BOOL,
    "data.test_acc_range": NULL | list_of(NULL | number(0, 1), length=2),
    "data.fractions": list_of(number(0, 1), length=3),
    "data.seed": integer(0),
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.normalize": BOOL,
    "data.views": integer(1),
    "data.group_by_member": BOOL,
    "data.cache": BOOL,
    "model.latent_dim": integer(1),
    "model.recon_weight": number(0),
    "model.contrastive_weight": number(0),
    "model.functional_weight": number(0),
    "model.temperature": number(0, lo_open=True),
    "model.contrastive_positives": choice("views", "member"),
    "model.projection_dim": integer(1),
    "model.functional_kind": choice("mse", "kl"),
    "model.field_weight": number(0),
    "model.field_hidden": list_of(integer(1), min_len=1),
    "model.detach_decoder": BOOL,
    "model.features.input": NULL | BOOL | choice("add", "concat"),  # false: null, true: add
    "model.features.weight": number(0),
    "model.features.whiten": number(0),
    "model.features.origin": number(0),
    "model.features.spectrum": BOOL,
    "model.features.shape": BOOL,
    "model.features.products": BOOL,
    "model.features.function": BOOL,
    "model.n_probe": integer(1),
    "model.lr": number(0, lo_open=True),
    "model.weight_decay": number(0),
    "model.scheduler": NULL | choice("cosine"),
    "model.warmup_steps": integer(0),
    "trainer.max_epochs": NULL | integer(-1),
    "trainer.max_steps": integer(-1),
    "trainer.log_every_n_steps": integer(1),
    "trainer.check_val_every_n_epoch": NULL | integer(1),
    "trainer.gradient_clip_val": NULL | number(0),
    "trainer.fast_dev_run": BOOL | integer(0),
}

ANALYZE: dict[str, Check] = {
    "compare_zoo": NULL | TEXT,
    "autoencoder": NULL | TEXT,
    "sections": list_of(TEXT),
    "name": NULL | folder_name(),
    "out": NULL | TEXT,
    "title": NULL | TEXT,
    "seed": integer(0),
    "progress": BOOL,
    "num_threads": NULL | integer(1),
    "patterns.max_members": NULL | integer(1),
    "runs_differ.n_members": integer(2),
    "runs_differ.max_examples": integer(1),
    "runs_differ.n_interp_pairs": integer(0),
    "runs_differ.n_interp_points": integer(2),
    "runs_differ.max_examples_path": integer(1),
    "runs_differ.max_iter": integer(1),
    "symmetry_breaking.tolerance": number(0),
    "latent.n_trajectories": integer(0),
    "latent.umap": BOOL | choice("auto"),
    "latent.arch": NULL | TEXT,
    "figure.dpi": integer(1),
}

TABLES: dict[str, dict[str, Check]] = {
    "generate": GENERATE,
    "canonicalize": CANONICALIZE,
    "train_autoencoder": TRAIN_AUTOENCODER,
    "analyze": ANALYZE,
}

#: Keys that must be set (their ``???`` filled), with what to give.
REQUIRED = {
    "canonicalize": {"parent": "the zoo to transform, a folder or a name under paths.zoo_dir"}
}


# --------------------------------------------------------------------------- validate
def _get(cfg: DictConfig, key: str) -> Any:
    """The plain, resolved value at ``key``; :data:`_NOTHING` when absent or ``???``."""
    try:
        node = OmegaConf.select(cfg, key, default=_NOTHING, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from e
    if node is _NOTHING or (node is None and OmegaConf.is_missing(cfg, key)):
        return _NOTHING
    if isinstance(node, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from e
    return node


def _missing(cfg: DictConfig, key: str) -> bool:
    try:
        return OmegaConf.is_missing(cfg, key)
    except (OmegaConfBaseException, KeyError, AttributeError):
        return False


def validate(cfg: DictConfig, entry: str) -> None:
    """Check ``cfg`` (the composed config of entry point ``entry``) against its table and the
    cross-option rules; raises one :class:`ConfigError` naming the first bad key."""
    for key, what in REQUIRED.get(entry, {}).items():
        if _missing(cfg, key) or OmegaConf.select(cfg, key, default=None) in (None, ""):
            raise ConfigError(f"{key}: required, {what}")
    for key, check in TABLES[entry].items():
        value = _get(cfg, key)
        if value is not _NOTHING:
            check(key, value)
    if entry == "generate":
        _check_checkpoints(cfg)
    if entry == "train_autoencoder":
        for part in ("encoder", "decoder"):
            node = _get(cfg, f"model.{part}")
            if isinstance(node, Mapping):
                for k, v in node.items():
                    if k in PART_KEYS:
                        PART_KEYS[k](f"model.{part}.{k}", v)
        ckpt = _get(cfg, "ckpt_path")
        if isinstance(ckpt, str):
            check_checkpoint_file(Path(ckpt))


def check_checkpoint_file(path: Path) -> None:
    """``path`` is a file ``torch.save`` wrote (a zip archive with a pickled object table;
    read later with ``weights_only``); anything else is refused before training starts."""
    if not path.is_file():
        raise ConfigError(f"ckpt_path: {path} is not a file")
    ok = zipfile.is_zipfile(path)
    if ok:
        with zipfile.ZipFile(path) as z:
            ok = any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    if not ok:
        raise ConfigError(
            f"ckpt_path: {path} is not a checkpoint (expected a .ckpt a training run wrote, "
            "e.g. <run>/checkpoints/last.ckpt)"
        )


def _check_checkpoints(cfg: DictConfig) -> None:
    """A checkpoint past the last epoch of every member would be dropped without a word."""
    checkpoints = _get(cfg, "zoo.checkpoints")
    epochs = _get(cfg, "zoo.hparams.epochs")
    if not isinstance(checkpoints, list) or not checkpoints:
        return
    if isinstance(epochs, int):
        last = epochs
    elif isinstance(epochs, list) and epochs:
        last = max(epochs)
    else:
        return  # a distribution: its members differ
    late = sorted(e for e in checkpoints if e > last)
    if late:
        raise ConfigError(
            f"zoo.checkpoints: {late} past the last epoch {last} (zoo.hparams.epochs); "
            "checkpoints are taken at epochs 0 .. epochs"
        )
