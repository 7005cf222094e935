"""The held-out data: one split's checkpoints in memory, and the targets probes predict.

:func:`load_split` reads a split of a :class:`~weightspace.data.datamodule.WeightDataModule`
without augmentation (:class:`SplitData`: the networks' own weights, the normalized flat
vectors the model reads, the item table); :func:`probe_targets` turns the item tables into
probe targets (``log_lr`` / ``log_weight_decay`` on a log scale, categorical codes apart);
:func:`to_params` turns normalized flat vectors back into networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import Tensor

from weightspace.data.datamodule import WeightDataModule
from weightspace.data.dataset import CATEGORICAL_TARGETS
from weightspace.evaluation.probes import Split3
from weightspace.nets.layout import flatten_params, unflatten_params
from weightspace.nets.spec import MLPSpec, Params

DEFAULT_TARGETS = (
    "test_acc",
    "epoch",
    "generalization_gap",
    "lr",
    "weight_decay",
    "init",
    "activation",
    "optimizer",
)
# Targets probed on a log scale; names in the table say so.
LOG_TARGETS = {"lr": "log_lr", "weight_decay": "log_weight_decay"}


@dataclass
class SplitData:
    """One split's checkpoints in memory.

    ``params``: the networks' own stacked weights (after the dataset's transform),
    ``weights``: the normalized flat vectors ``(N, D)`` the model reads, ``items``: the
    dataset's item table (member, epoch, targets; categorical targets as codes),
    ``specs``: each item's spec (its member's activation), ``groups``: a member code per item.
    """

    params: Params
    weights: Tensor
    items: pd.DataFrame
    specs: list[MLPSpec]
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


def load_split(
    datamodule: WeightDataModule, split: str, max_items: int | None = None, seed: int = 0
) -> SplitData:
    """Read ``split`` without augmentation: all its checkpoints, or ``max_items`` of them
    drawn at random (seeded). Independent of the datamodule's representation."""
    ds = datamodule.dataset(split, augment=None, views=1)
    idx = np.arange(len(ds))
    if max_items is not None and len(idx) > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_items, replace=False))
    params = ds.params(idx)
    norm = datamodule.normalizer
    normed = norm.normalize_params(params) if norm is not None else params
    items = ds.items.iloc[idx].reset_index(drop=True)
    groups = items["zoo_index"].to_numpy(np.int64) * (1 << 32) + items["member_id"].to_numpy(
        np.int64
    )
    specs = [ds.member_spec(int(i)) for i in idx]
    return SplitData(params, flatten_params(normed, ds.spec), items, specs, groups)


def _log10_offset(ys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """log10(y + c), c half the smallest positive training value: y = 0 sits one notch below
    the smallest value in use instead of at an arbitrary -inf-like epsilon."""
    pos = ys[0][np.isfinite(ys[0]) & (ys[0] > 0)]
    c = 0.5 * float(pos.min()) if len(pos) else 1.0
    return [np.log10(np.clip(y, 0.0, None) + c) for y in ys]


def probe_targets(
    items: Sequence[pd.DataFrame], names: Sequence[str] = DEFAULT_TARGETS
) -> tuple[dict[str, Split3], set[str]]:
    """Probe targets from the item tables of (train, val, test).

    Learning rate and weight decay are probed on a log scale (``log_lr``,
    ``log_weight_decay``, see :func:`_log10_offset`); categorical targets (codes) are
    returned in the second value. Targets absent from the tables are skipped.
    """
    out: dict[str, Split3] = {}
    categorical: set[str] = set()
    for name in names:
        if any(name not in df for df in items):
            continue
        ys = [df[name].to_numpy() for df in items]
        if name in CATEGORICAL_TARGETS:
            categorical.add(name)
            out[name] = tuple(ys)
        elif name == "weight_decay":
            out[LOG_TARGETS[name]] = tuple(_log10_offset([y.astype(np.float64) for y in ys]))
        elif name in LOG_TARGETS:
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = [np.log10(np.where(y > 0, y, np.nan)) for y in ys]
            out[LOG_TARGETS[name]] = tuple(logs)
        else:
            out[name] = tuple(y.astype(np.float64) for y in ys)
    return out, categorical


def to_params(flat_normalized: Tensor, datamodule: WeightDataModule, spec: MLPSpec) -> Params:
    """Networks from normalized flat vectors ``(N, D)``: denormalized with the datamodule's
    normalizer (if any), then unflattened with ``spec``."""
    norm = datamodule.normalizer
    flat = norm.denormalize_flat(flat_normalized) if norm is not None else flat_normalized
    return unflatten_params(flat, spec)
