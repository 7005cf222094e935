"""The population of a zoo: one row of hyperparameters per member, drawn from the config.

Each hyperparameter in ``zoo.hparams`` is

- a fixed value (``lr: 0.05``),
- a list (``init_scale: [0.5, 1.0, 2.0]``): an axis of the grid under ``sampling: grid``, a
  uniform choice under ``sampling: random``,
- a distribution (``lr: {dist: loguniform, low: 1e-3, high: 1e-1}``; also ``uniform`` and
  ``choice`` with ``values``), sampled per member under either sampling.

Under ``grid``, member ``i`` takes grid point ``i mod n_points`` (the Cartesian product of the
list axes, in config order), so a zoo of ``k * n_points`` members holds every point ``k``
times with different seeds. Member seeds default to ``zoo.seed * 1_000_000 + member_id``.
The table depends only on the config, never on how the zoo is later split into shards.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from weightspace.errors import ConfigError
from weightspace.nets.spec import ACTIVATIONS
from weightspace.zoo.init import BIAS_INITS, DEFAULT_W0, INIT_SCHEMES, SIREN_SCHEMES

OPTIMIZERS = ("sgd", "adam")
DATA_ORDERS = ("shared", "per_member")

DEFAULT_HPARAMS: dict[str, Any] = {
    "seed": None,  # None: zoo.seed * 1_000_000 + member_id
    "init": "kaiming",
    "init_scale": 1.0,
    "init_std": 1.0,  # std of the 'normal' scheme (and of 'normal' biases)
    "init_value": 0.5,  # value of the 'constant' scheme (and of 'constant' biases)
    "bias_init": "zeros",
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,  # SGD only
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 10,
    "activation": "relu",
    "data_order": "per_member",
    "subset": 1.0,  # fraction of the training split each member sees
    "label_noise": 0.0,  # fraction of that member's training labels replaced
}

# Columns only zoos that use them have (so other zoos' tables stay as they were): present
# when the config gives the key, ``w0`` also when a member's init is ``siren``.
OPTIONAL_HPARAMS: dict[str, Any] = {
    "w0": DEFAULT_W0,  # SIREN's first-layer frequency (init: siren)
    "signal": None,  # INR tasks: the signal a member fits (None: member_id mod n_signals)
}

# Members whose values differ in these keys cannot share one batched computation.
STATIC_KEYS = ("activation", "optimizer", "batch_size", "epochs", "subset")

_CATEGORIES = {
    "init": INIT_SCHEMES,
    "bias_init": BIAS_INITS,
    "optimizer": OPTIMIZERS,
    "activation": tuple(ACTIVATIONS),
    "data_order": DATA_ORDERS,
}


def _is_dist(value: Any) -> bool:
    return isinstance(value, Mapping) and "dist" in value


def _sample_dist(name: str, spec: Mapping[str, Any], n: int, rng: np.random.Generator):
    kind = spec["dist"]
    if kind in ("uniform", "loguniform"):
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except KeyError as e:
            raise ConfigError(f"zoo.hparams.{name}: '{kind}' needs low and high") from e
        if not low <= high:
            raise ConfigError(f"zoo.hparams.{name}: low {low} > high {high}")
        if kind == "uniform":
            return rng.uniform(low, high, n)
        if low <= 0:
            raise ConfigError(f"zoo.hparams.{name}: loguniform needs low > 0, got {low}")
        return np.exp(rng.uniform(math.log(low), math.log(high), n))
    if kind == "choice":
        values = list(spec.get("values") or [])
        if not values:
            raise ConfigError(f"zoo.hparams.{name}: 'choice' needs a non-empty values list")
        return [values[i] for i in rng.integers(0, len(values), n)]
    raise ConfigError(
        f"zoo.hparams.{name}: unknown dist '{kind}' (choose from uniform, loguniform, choice)"
    )


def sample_population(
    hparams: Mapping[str, Any], size: int, seed: int = 0, sampling: str = "grid"
) -> pd.DataFrame:
    """One row per member: ``member_id``, ``seed``, ``data_seed`` and every hyperparameter."""
    if int(size) < 1:
        raise ConfigError(f"zoo.size: need at least 1 member, got {size}")
    if sampling not in ("grid", "random"):
        raise ConfigError(f"zoo.sampling: unknown '{sampling}' (choose from grid, random)")
    unknown = set(hparams) - set(DEFAULT_HPARAMS) - set(OPTIONAL_HPARAMS)
    if unknown:
        known = ", ".join([*DEFAULT_HPARAMS, *OPTIONAL_HPARAMS])
        raise ConfigError(f"zoo.hparams: unknown key(s) {sorted(unknown)} (known: {known})")
    values = {**DEFAULT_HPARAMS, **{k: _plain(v) for k, v in hparams.items()}}
    rng = np.random.default_rng([int(seed), 0x5EED])
    ids = np.arange(int(size))
    columns: dict[str, Any] = {"member_id": ids}

    grid_axes = [k for k, v in values.items() if isinstance(v, list)]
    if sampling == "grid" and grid_axes:
        points = list(itertools.product(*(values[k] for k in grid_axes)))
        chosen = [points[i % len(points)] for i in ids]
        for j, k in enumerate(grid_axes):
            columns[k] = [p[j] for p in chosen]
    for k, v in values.items():
        if k in columns:
            continue
        if isinstance(v, list):  # random sampling: a uniform choice
            if not v:
                raise ConfigError(f"zoo.hparams.{k}: empty list")
            columns[k] = [v[i] for i in rng.integers(0, len(v), len(ids))]
        elif _is_dist(v):
            columns[k] = _sample_dist(k, v, len(ids), rng)
        else:
            columns[k] = [v] * len(ids)

    df = pd.DataFrame(columns)
    if "w0" not in df and df["init"].isin(SIREN_SCHEMES).any():
        df["w0"] = OPTIONAL_HPARAMS["w0"]
    if df["seed"].isna().any():
        auto = int(seed) * 1_000_000 + df["member_id"]
        df["seed"] = df["seed"].fillna(auto)
    df["seed"] = df["seed"].astype("int64")
    # Members with the shared data order draw subset, label noise and shuffles from the zoo seed.
    df["data_seed"] = np.where(df["data_order"] == "shared", int(seed), df["seed"]).astype("int64")
    for k in ("batch_size", "epochs"):
        df[k] = _as_int(df[k], k)
    for k in (
        "init_scale",
        "init_std",
        "init_value",
        "lr",
        "momentum",
        "weight_decay",
        "subset",
        "label_noise",
        "w0",
    ):
        if k in df:
            df[k] = df[k].astype("float64")
    validate_population(df)
    return df


def _plain(v: Any) -> Any:
    """OmegaConf containers to plain Python (lists stay lists, dicts stay dicts)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return v


def _as_int(col: pd.Series, name: str) -> pd.Series:
    as_float = col.astype("float64")
    if not np.all(as_float == np.round(as_float)):
        raise ConfigError(f"zoo.hparams.{name}: must be an integer, got {col.iloc[0]!r}")
    return as_float.astype("int64")


def validate_population(df: pd.DataFrame) -> None:
    """Raise a one-line ConfigError naming the first out-of-range hyperparameter."""
    for k, allowed in _CATEGORIES.items():
        bad = set(df[k]) - set(allowed)
        if bad:
            choices = ", ".join(allowed)
            raise ConfigError(
                f"zoo.hparams.{k}: unknown {sorted(map(str, bad))} (choose from {choices})"
            )
    checks = {
        "lr": (df["lr"] > 0, "must be > 0"),
        "momentum": ((df["momentum"] >= 0) & (df["momentum"] < 1), "must be in [0, 1)"),
        "weight_decay": (df["weight_decay"] >= 0, "must be >= 0"),
        "batch_size": (df["batch_size"] >= 1, "must be >= 1"),
        "epochs": (df["epochs"] >= 1, "must be >= 1"),
        "subset": ((df["subset"] > 0) & (df["subset"] <= 1), "must be in (0, 1]"),
        "label_noise": ((df["label_noise"] >= 0) & (df["label_noise"] <= 1), "must be in [0, 1]"),
        "init_std": (df["init_std"] >= 0, "must be >= 0"),
        "init_scale": (np.isfinite(df["init_scale"]), "must be finite"),
    }
    if "w0" in df:
        checks["w0"] = (np.isfinite(df["w0"]) & (df["w0"] > 0), "must be > 0 and finite")
    for k, (ok, what) in checks.items():
        if not bool(np.all(ok)):
            value = df.loc[~np.asarray(ok), k].iloc[0]
            raise ConfigError(f"zoo.hparams.{k}: {what}, got {value}")
