"""Zoos -> train / val / test loaders: splits by member, the epoch-seeded sampler, the DataModule.

:func:`split_members` cuts members (never single checkpoints) into disjoint groups;
:class:`EpochShuffleSampler` and :func:`make_loader` fetch whole batches through
:meth:`WeightDataset.__getitems__`; :class:`WeightDataModule` ties them together with the
normalizer fitted on the training split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from weightspace.data.dataset import (
    Augment,
    MemberKey,
    Representation,
    Transform,
    WeightDataset,
    callable_name,
    collate_batch,
    resolve_callable,
    seed_from,
)
from weightspace.data.normalizer import LayerNormalizer
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.inr import split_by_signal
from weightspace.zoo.store import Zoo
from weightspace.zoo.tasks import Task


def split_members(
    source: WeightDataset | Zoo | pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> list[list[MemberKey]]:
    """Split members (never single checkpoints) into ``len(fractions)`` disjoint groups.

    ``source`` is a dataset (its members after filtering; returns ``(zoo_index, member_id)``
    pairs), a zoo or a members table (a ``member_id`` column, returns ids; with a
    ``zoo_index`` column, pairs). The members, sorted, are shuffled by ``seed`` and cut by
    ``fractions`` (largest remainders; every positive fraction gets a member if there are
    enough). Deterministic: the same members and seed give the same split.

    INR zoos (every zoo's members carry a ``signal``) are split BY SIGNAL instead
    (:func:`weightspace.zoo.inr.split_by_signal`): no signal's INRs in two groups, so a probe
    never classifies a held-out INR of an image it saw fitted in training.
    """
    f = np.asarray(list(fractions), dtype=float)
    if f.ndim != 1 or len(f) == 0 or (f < 0).any() or not math.isclose(f.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(f"fractions: {list(fractions)} must be >= 0 and sum to 1")
    if isinstance(source, WeightDataset):
        keys: list[MemberKey] = list(source.member_keys())
        if all("signal" in z.members for z in source.zoos):
            signal = [int(source.zoos[zi].members["signal"].iloc[m]) for zi, m in keys]
            parts = split_by_signal(signal, f, seed)
            return [sorted(keys[i] for i in part) for part in parts]
    else:
        table = source.members if isinstance(source, Zoo) else source
        if "zoo_index" in table:
            pairs = table[["zoo_index", "member_id"]].drop_duplicates().to_numpy(np.int64)
            keys = sorted((int(z), int(m)) for z, m in pairs)
        else:
            keys = sorted(int(m) for m in table["member_id"].unique())
    n = len(keys)
    raw = f * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    if n >= (f > 0).sum():
        for k in np.flatnonzero((f > 0) & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [sorted(keys[i] for i in perm[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- loading
class EpochShuffleSampler(Sampler[int]):
    """A seeded shuffle that changes with :meth:`set_epoch` (Lightning calls it each epoch).

    ``group_by_member``: the members are shuffled and each member's checkpoints follow one
    another (in a shuffled order), so a batch holds several checkpoints of each of its members
    (``model.contrastive_positives=member`` takes them as positives). Every item is still
    drawn once per epoch.

    ``set_epoch`` is forwarded to the dataset so that augmentations change too. Workers get
    the dataset when an epoch's iterator starts, so keep ``persistent_workers=False``.
    """

    def __init__(
        self,
        dataset: WeightDataset,
        seed: int = 0,
        shuffle: bool = True,
        group_by_member: bool = False,
    ):
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle
        self.group_by_member = bool(group_by_member)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        gen = torch.Generator().manual_seed(seed_from(self.seed, self.epoch))
        perm = torch.randperm(n, generator=gen).numpy()
        if self.group_by_member:
            keys = self.dataset.member_index()  # (n,) a member's number, 0..members-1
            rank = torch.randperm(int(keys.max()) + 1, generator=gen).numpy()
            perm = perm[np.argsort(rank[keys[perm]], kind="stable")]
        return iter(perm.tolist())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)


def make_loader(
    dataset: WeightDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    group_by_member: bool = False,
) -> DataLoader:
    """A DataLoader that fetches whole batches through ``__getitems__`` (``shuffle`` and
    ``group_by_member``: :class:`EpochShuffleSampler`)."""
    if num_workers > 0:
        dataset.verify_files()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset, seed, shuffle, group_by_member),
        collate_fn=collate_batch,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def _check_splits(
    zoo_paths: Sequence[str], members: Sequence[list[MemberKey]], fractions: Sequence[float]
) -> None:
    """Every split with a positive fraction needs a member: refused here, before training,
    rather than after it (an empty test split has nothing to test)."""
    if all(m or f == 0 for m, f in zip(members, fractions)):
        return
    need = sum(f > 0 for f in fractions)
    have = sum(len(m) for m in members)
    raise ConfigError(
        f"zoo: {', '.join(zoo_paths)} has {have} member(s) after filtering; the train / val / "
        f"test split {list(fractions)} needs at least {need}"
    )


@dataclass
class _Splits:
    train: WeightDataset
    val: WeightDataset
    test: WeightDataset
    members: dict[str, list[MemberKey]] = field(default_factory=dict)


class WeightDataModule(pl.LightningDataModule):
    """Zoos -> train / val / test loaders, split by member, normalized with train statistics.

    All arguments are plain values; ``transform`` and ``augment`` may be callables or import
    paths (``"weightspace.symmetry.canonicalize"``), stored in the hyperparameters by name.
    ``augment`` / ``views`` apply to every split (val and test views are fixed: their
    augmentation epoch stays 0); :meth:`dataset` builds other variants, e.g. without
    augmentation for evaluation.
    """

    def __init__(
        self,
        zoo_paths: str | Path | Sequence[str | Path],
        representation: Representation = "flat",
        epochs: Sequence[int] | str | None = None,
        exclude_diverged: bool = True,
        test_acc_range: Sequence[float | None] | None = None,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        normalize: bool = True,
        transform: Transform | str | None = None,
        augment: Augment | str | None = None,
        views: int = 1,
        group_by_member: bool = False,
        cache: bool = False,
        verify: bool = True,
    ):
        super().__init__()
        paths = [zoo_paths] if isinstance(zoo_paths, str | Path) else list(zoo_paths)
        self.zoo_paths = [str(p) for p in paths]
        self.representation = representation
        self.epochs = epochs if epochs is None or isinstance(epochs, str) else list(epochs)
        self.exclude_diverged = bool(exclude_diverged)
        self.test_acc_range = None if test_acc_range is None else tuple(test_acc_range)
        self.fractions = tuple(float(f) for f in fractions)
        if len(self.fractions) != 3:
            raise ConfigError(f"fractions: need (train, val, test), got {list(self.fractions)}")
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {batch_size}")
        self.num_workers = int(num_workers)
        self.normalize = bool(normalize)
        self.transform = resolve_callable(transform, "transform")
        self.augment = resolve_callable(augment, "augment")
        self.views = int(views)
        self.group_by_member = bool(group_by_member)
        self.cache = bool(cache)
        self.verify = bool(verify)
        self.save_hyperparameters(
            {
                "zoo_paths": self.zoo_paths,
                "representation": representation,
                "epochs": self.epochs,
                "exclude_diverged": self.exclude_diverged,
                "test_acc_range": None if test_acc_range is None else list(self.test_acc_range),
                "fractions": list(self.fractions),
                "seed": self.seed,
                "batch_size": self.batch_size,
                "num_workers": self.num_workers,
                "normalize": self.normalize,
                "transform": callable_name(transform),
                "augment": callable_name(augment),
                "views": self.views,
                "group_by_member": self.group_by_member,
                "cache": self.cache,
                "verify": self.verify,
            }
        )
        self.normalizer: LayerNormalizer | None = None
        self._splits: _Splits | None = None
        self._full: WeightDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        zoos = [Zoo.open(p, verify=self.verify) for p in self.zoo_paths]
        full = WeightDataset(
            zoos,
            self.representation,
            epochs=self.epochs,
            exclude_diverged=self.exclude_diverged,
            test_acc_range=self.test_acc_range,
            transform=self.transform,
            augment=self.augment,
            views=self.views,
            seed=self.seed,
            cache=self.cache,
        )
        train_m, val_m, test_m = split_members(full, self.fractions, self.seed)
        _check_splits(self.zoo_paths, (train_m, val_m, test_m), self.fractions)
        train = full.select_members(train_m)
        if self.normalize and self.normalizer is None:
            self.normalizer = LayerNormalizer.fit(train)
        self._full = full
        self._splits = _Splits(
            train=full.select_members(train_m, normalizer=self.normalizer),
            val=full.select_members(val_m, normalizer=self.normalizer),
            test=full.select_members(test_m, normalizer=self.normalizer),
            members={"train": train_m, "val": val_m, "test": test_m},
        )

    def _need(self) -> _Splits:
        if self._splits is None:
            raise RuntimeError("WeightDataModule: call setup() first")
        return self._splits

    # ---- what models need to know
    @property
    def full_dataset(self) -> WeightDataset:
        self._need()
        assert self._full is not None
        return self._full

    @property
    def spec(self) -> MLPSpec:
        return self.full_dataset.spec

    @property
    def n_params(self) -> int:
        return self.full_dataset.n_params

    @property
    def n_tokens(self) -> int:
        return self.full_dataset.n_tokens

    @property
    def token_dim(self) -> int:
        return self.full_dataset.token_dim

    @property
    def target_names(self) -> list[str]:
        return self.full_dataset.target_names

    @property
    def categories(self) -> dict[str, list[str]]:
        return self.full_dataset.categories

    @property
    def task(self) -> Task:
        """The task the zoos' members were trained on, loaded from the first zoo's config.

        Loaded afresh at each access (as :meth:`Zoo.task` does). Zoos of one datamodule share
        widths and bias; their task is taken to be the same.
        """
        return self.full_dataset.zoos[0].task()

    @property
    def splits(self) -> dict[str, list[MemberKey]]:
        """The members of each split: ``{"train": [(zoo_index, member_id), ...], ...}``."""
        return self._need().members

    def dataset(self, split: str, **overrides: Any) -> WeightDataset:
        """The dataset of ``split`` ("train", "val", "test"), optionally with other options
        (``augment=None, views=1`` for evaluation); always with the fitted normalizer."""
        splits = self._need()
        if split not in splits.members:
            raise ValueError(f"split: '{split}' (choose train, val or test)")
        if not overrides:
            return getattr(splits, split)
        overrides.setdefault("normalizer", self.normalizer)
        return self.full_dataset.select_members(splits.members[split], **overrides)

    # ---- loaders
    def train_dataloader(self) -> DataLoader:
        return make_loader(
            self._need().train,
            self.batch_size,
            True,
            self.seed,
            self.num_workers,
            group_by_member=self.group_by_member,
        )

    def val_dataloader(self) -> DataLoader:
        return make_loader(self._need().val, self.batch_size, False, self.seed, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self._need().test, self.batch_size, False, self.seed, self.num_workers)

    # ---- checkpoints: the normalizer travels with the model
    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": None if self.normalizer is None else self.normalizer.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        d = state_dict.get("normalizer")
        self.normalizer = None if d is None else LayerNormalizer.from_dict(d)
        if self._splits is not None:
            for name in ("train", "val", "test"):
                getattr(self._splits, name).normalizer = self.normalizer
