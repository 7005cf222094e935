"""Zoos of several architectures (one task) -> loaders whose batches are each of one architecture.

A :class:`MixedDataModule` groups its zoos by architecture (widths and bias: what one
:class:`WeightDataModule` can hold), makes one :class:`WeightDataModule` per group with the
same options and seed, and serves their batches one after another, each tagged with
``batch["arch"] = k`` (the index of its part). A model with one shared encoder and one decoder
per architecture reads them as they come.

Training batches of the parts are interleaved at random: the order is a seeded shuffle of
``[0] * n_0 + [1] * n_1 + ...`` (``n_k`` the batches of part ``k``), redrawn per epoch from
``seed_from(seed, epoch, ...)``, so an epoch reads every training member of every part once
and the same seed and epoch give the same order, on resume too. Validation and test batches
come part by part, unshuffled.

Lightning calls ``set_epoch`` on ``loader.sampler`` of each train dataloader it gets
(``lightning_fabric.utilities.data._set_sampler_epoch``); :class:`MixedLoader.sampler`
records that epoch for the interleaving and forwards it to every part's
:class:`EpochShuffleSampler`, so per-part shuffles and augmentations change with it too.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from weightspace.data.datamodule import WeightDataModule
from weightspace.data.dataset import seed_from
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.store import Zoo
from weightspace.zoo.tasks import Task

# A constant word in the interleaving's seed: its shuffle is not the parts' own shuffle.
_INTERLEAVE = 0x6D6978
# The options every part gets: exactly WeightDataModule's keyword arguments.
OPTIONS = tuple(inspect.signature(WeightDataModule.__init__).parameters)[2:]


def arch_name(spec: MLPSpec) -> str:
    """A label for an architecture, fit for a metric key or a folder name: ``"64-32-32-10"``
    (``"64-32-32-10-nobias"`` without biases)."""
    name = "-".join(str(w) for w in spec.widths)
    return name if spec.bias else f"{name}-nobias"


class MixedSampler:
    """What Lightning calls ``set_epoch`` on: the epoch of the interleaving, forwarded to the
    parts' samplers. ``order()`` is the part index of each batch of the epoch, in order."""

    def __init__(self, loaders: Sequence[DataLoader], seed: int, shuffle: bool):
        self.loaders = list(loaders)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for loader in self.loaders:
            loader.sampler.set_epoch(epoch)

    def order(self) -> list[int]:
        arch = [k for k, loader in enumerate(self.loaders) for _ in range(len(loader))]
        if not self.shuffle:
            return arch
        gen = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, _INTERLEAVE))
        return [arch[i] for i in torch.randperm(len(arch), generator=gen).tolist()]

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)


class MixedLoader:
    """The parts' loaders as one iterable: each batch is what ``loaders[k]`` yields plus
    ``batch["arch"] = k``, in the order of :meth:`MixedSampler.order`."""

    def __init__(self, loaders: Sequence[DataLoader], seed: int = 0, shuffle: bool = False):
        self.loaders = list(loaders)
        self.sampler = MixedSampler(self.loaders, seed, shuffle)
        self.batch_sampler = None  # Lightning looks for one (a DataLoader's attributes)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self.sampler.order()
        # Each part's iterator starts when its first batch is due (its sampler reads the
        # epoch then); with workers, every part keeps its own workers while the epoch runs.
        its: dict[int, Iterator[dict[str, Any]]] = {}
        for k in order:
            if k not in its:
                its[k] = iter(self.loaders[k])
            batch = next(its[k])
            batch["arch"] = k
            yield batch


class MixedDataModule(pl.LightningDataModule):
    """Zoos of several architectures (one task) -> batches that are each of one architecture.

    ``options`` are exactly :class:`WeightDataModule`'s keyword arguments, passed to every
    part. After :meth:`setup`: ``parts`` (one :class:`WeightDataModule` per architecture, in
    order of first appearance among ``zoo_paths``), ``specs``, ``names`` and ``task``.
    """

    def __init__(self, zoo_paths: str | Path | Sequence[str | Path], **options: Any):
        super().__init__()
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"data.{unknown[0]}: unknown option (choose from {', '.join(OPTIONS)})"
            )
        paths = [zoo_paths] if isinstance(zoo_paths, str | Path) else list(zoo_paths)
        if not paths:
            raise ConfigError("zoo: no zoo given")
        self.zoo_paths = [str(p) for p in paths]
        self.options = dict(options)
        # A part built now checks the options and turns them into plain values, as it would.
        probe = WeightDataModule(self.zoo_paths, **self.options)
        self.seed = probe.seed
        self.verify = probe.verify
        self.save_hyperparameters(dict(probe.hparams))
        self.parts: list[WeightDataModule] = []
        self._pending: list[dict[str, Any]] | None = None

    # ---- setup
    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        zoos = [Zoo.open(p, verify=self.verify) for p in self.zoo_paths]
        _check_one_task(self.zoo_paths, zoos)
        groups: dict[tuple[tuple[int, ...], bool], list[str]] = {}
        for path, zoo in zip(self.zoo_paths, zoos):
            groups.setdefault((zoo.spec.widths, zoo.spec.bias), []).append(path)
        pending = self._pending
        if pending is not None and len(pending) != len(groups):
            raise ConfigError(
                f"zoo: {', '.join(self.zoo_paths)} hold {len(groups)} architecture(s), the "
                f"restored datamodule state has {len(pending)}"
            )
        parts = [WeightDataModule(paths, **self.options) for paths in groups.values()]
        for k, part in enumerate(parts):
            if pending is not None:
                part.load_state_dict(pending[k])  # a restored normalizer is not refitted
            part.setup(stage)
        self.parts = parts
        self._pending = None

    def _need(self) -> list[WeightDataModule]:
        if not self.parts:
            raise RuntimeError("MixedDataModule: call setup() first")
        return self.parts

    @property
    def specs(self) -> list[MLPSpec]:
        return [p.spec for p in self._need()]

    @property
    def names(self) -> list[str]:
        return [arch_name(s) for s in self.specs]

    @property
    def task(self) -> Task:
        """The zoos' task (checked to be one at :meth:`setup`), loaded from the first zoo."""
        return self._need()[0].task

    # ---- loaders
    def train_dataloader(self) -> MixedLoader:
        loaders = [p.train_dataloader() for p in self._need()]
        return MixedLoader(loaders, self.seed, shuffle=True)

    def val_dataloader(self) -> MixedLoader:
        return MixedLoader([p.val_dataloader() for p in self._need()], self.seed)

    def test_dataloader(self) -> MixedLoader:
        return MixedLoader([p.test_dataloader() for p in self._need()], self.seed)

    # ---- checkpoints: each part's normalizer travels with the model
    def state_dict(self) -> dict[str, Any]:
        if not self.parts:
            return {"parts": list(self._pending or [])}
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = list(state_dict.get("parts", []))
        if not self.parts:  # applied at setup, before any normalizer is fitted
            self._pending = states
            return
        if len(states) != len(self.parts):
            raise ConfigError(
                f"zoo: {', '.join(self.zoo_paths)} hold {len(self.parts)} architecture(s), the "
                f"restored datamodule state has {len(states)}"
            )
        for part, state in zip(self.parts, states):
            part.load_state_dict(state)


def _check_one_task(paths: Sequence[str], zoos: Sequence[Zoo]) -> None:
    """One model reads one task: the same task name and input / output widths in every zoo."""

    def task_of(zoo: Zoo) -> tuple[str, int, int]:
        return str(zoo.manifest["task"]["name"]), zoo.spec.widths[0], zoo.spec.widths[-1]

    first = task_of(zoos[0])
    for path, zoo in zip(paths[1:], zoos[1:]):
        other = task_of(zoo)
        if other != first:
            raise ConfigError(
                f"zoo: {paths[0]} ({first[0]}, {first[1]} -> {first[2]}) and {path} "
                f"({other[0]}, {other[1]} -> {other[2]}) cannot be read by one model: "
                "their tasks differ (task name or input / output widths)"
            )
