"""Several zoos read as one, without copying: :class:`ZooCollection`.

Zoos made separately — by different commands, machines or sweeps, e.g. one per activation —
share an architecture but each has its own folder and member ids. A collection opens them
side by side and numbers their members globally, zoo after zoo::

    >>> zoos = ZooCollection.open(["zoos/digits-relu", "zoos/digits-tanh"])
    >>> len(zoos)                      # members of both
    >>> zoos.locate([0, 1500])          # global index -> (zoo_index, member_id) pairs
    >>> zoos.members                    # one table: a `zoo` column, `index` = global index
    >>> w = zoos.weights(epoch=10, members=[3, 1500])   # {name: (2, ...)} from both zoos

Every zoo stays where it is, memory-mapped as :meth:`Zoo.weights` reads it. For training,
``WeightDataModule(zoo_paths=[...])`` takes the same list (``collection.paths``).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weightspace.errors import ConfigError, ZooError
from weightspace.nets.forward import MLP
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.store import Zoo


def _expand(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Paths, with glob patterns (``zoos/digits-*``) expanded in sorted order."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for p in items:
        s = str(p)
        if any(c in s for c in "*?["):
            found = sorted(glob.glob(s))
            if not found:
                raise ConfigError(f"zoo collection: no folder matches {s}")
            out += [Path(f) for f in found]
        else:
            out.append(Path(s))
    return out


class ZooCollection:
    """Zoos of one architecture (widths, bias, weight normalization) as one set of members.

    Member ``i`` of the collection is member ``i - offsets[z]`` of zoo ``z``, where
    ``offsets`` are the cumulative zoo sizes. Activations may differ between zoos (and
    members): :meth:`member_spec` gives each member's own.
    """

    def __init__(self, zoos: Sequence[Zoo]):
        self.zoos = list(zoos)
        if not self.zoos:
            raise ConfigError("zoo collection: no zoo given")
        roots = [z.root.resolve() for z in self.zoos]
        if len(set(roots)) != len(roots):
            dup = next(r for r in roots if roots.count(r) > 1)
            raise ConfigError(f"zoo collection: {dup} given twice")
        first = self.zoos[0].spec
        for z in self.zoos[1:]:
            s = z.spec
            if (s.widths, s.bias, s.weight_norm) != (first.widths, first.bias, first.weight_norm):
                raise ZooError(
                    f"zoo collection: {z.root} has widths {list(s.widths)} bias={s.bias} "
                    f"weight_norm={s.weight_norm}, {self.zoos[0].root} has "
                    f"{list(first.widths)} bias={first.bias} weight_norm={first.weight_norm}"
                )
        names = [r.name for r in roots]
        # Folder names label the zoos; full paths where two folders share a name.
        self.names = [n if names.count(n) == 1 else str(r) for n, r in zip(names, roots)]
        sizes = np.array([len(z) for z in self.zoos], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # (n_zoos + 1,)

    @classmethod
    def open(cls, paths: str | Path | Iterable[str | Path], verify: bool = True) -> ZooCollection:
        """Open finished zoos (folders or glob patterns); an unfinished one is a
        :class:`ZooError` naming its missing shards, as :meth:`Zoo.open` says."""
        return cls([Zoo.open(p, verify=verify) for p in _expand(paths)])

    # ---- sizes and specs
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def paths(self) -> list[str]:
        """The zoo folders, in order (e.g. for ``WeightDataModule(zoo_paths=...)``)."""
        return [str(z.root) for z in self.zoos]

    @property
    def spec(self) -> MLPSpec:
        """The shared architecture, with the first zoo's (most common) activation."""
        return self.zoos[0].spec

    @property
    def epochs(self) -> list[int]:
        """Checkpoint epochs held by every zoo of the collection."""
        common = set(self.zoos[0].epochs)
        for z in self.zoos[1:]:
            common &= set(z.epochs)
        return sorted(common)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {len(z)}" for n, z in zip(self.names, self.zoos))
        return f"ZooCollection({len(self)} members, widths={list(self.spec.widths)}; {parts})"

    # ---- indices
    def _check(self, index: np.ndarray) -> np.ndarray:
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(
                f"member index must be in [0, {len(self)}), got {index.min()}..{index.max()}"
            )
        return index

    def locate(self, index: int | Iterable[int]) -> tuple[int, int] | list[tuple[int, int]]:
        """Global member index (or indices) -> ``(zoo_index, member_id)`` (a list of them)."""
        scalar = np.ndim(index) == 0
        idx = self._check(np.atleast_1d(np.asarray(index, dtype=np.int64)))
        zi = np.searchsorted(self.offsets, idx, side="right") - 1
        pairs = [(int(z), int(i - self.offsets[z])) for z, i in zip(zi, idx)]
        return pairs[0] if scalar else pairs

    def global_index(self, zoo_index: int, member_id: int) -> int:
        """``(zoo_index, member_id)`` -> the member's index in the collection."""
        if not 0 <= zoo_index < len(self.zoos):
            raise IndexError(f"zoo_index must be in [0, {len(self.zoos)}), got {zoo_index}")
        if not 0 <= member_id < len(self.zoos[zoo_index]):
            raise IndexError(f"no member {member_id} in zoo {zoo_index} ({self.names[zoo_index]})")
        return int(self.offsets[zoo_index] + member_id)

    def member_spec(self, index: int) -> MLPSpec:
        zi, mid = self.locate(int(index))
        return self.zoos[zi].member_spec(mid)

    # ---- tables
    def _table(self, name: str) -> pd.DataFrame:
        frames = []
        for zi, (zoo, label) in enumerate(zip(self.zoos, self.names)):
            df = getattr(zoo, name)
            lead = pd.DataFrame(
                {
                    "zoo": label,
                    "zoo_index": zi,
                    "index": df["member_id"].to_numpy(np.int64) + self.offsets[zi],
                }
            )
            frames.append(pd.concat([lead, df.reset_index(drop=True)], axis=1))
        return pd.concat(frames, ignore_index=True)

    @cached_property
    def members(self) -> pd.DataFrame:
        """Every zoo's members table, one after the other, with ``zoo`` (its name),
        ``zoo_index`` and ``index`` (the global member index, equal to the row position) in
        front; ``member_id`` stays the member's id in its own zoo. Columns one zoo lacks
        are missing values in the others' rows."""
        return self._table("members")

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Every zoo's metrics table (member x checkpoint) with ``zoo``, ``zoo_index`` and
        ``index`` columns in front."""
        return self._table("metrics")

    # ---- weights
    def weights(
        self, epoch: int, members: Iterable[int] | None = None, trainable: bool = False
    ) -> Params:
        """Stacked parameters of the global ``members`` (default: all) at ``epoch``,
        ``{name: (len(members), ...)}`` in the order given: one :meth:`Zoo.weights` read per
        zoo touched, then put in place."""
        idx = np.arange(len(self)) if members is None else np.asarray(list(members), np.int64)
        idx = self._check(idx.reshape(-1))
        zi = np.searchsorted(self.offsets, idx, side="right") - 1
        out: Params = {}
        for z in np.unique(zi):
            where = np.flatnonzero(zi == z)
            part = self.zoos[int(z)].weights(epoch, idx[where] - self.offsets[z], trainable)
            rows = torch.from_numpy(where)
            for name, value in part.items():
                if name not in out:
                    out[name] = value.new_empty((len(idx), *value.shape[1:]))
                out[name][rows] = value
        if not out:  # no members asked for: empty tensors of the right shapes
            return self.zoos[0].weights(epoch, [], trainable)
        return out

    def state_dict(self, index: int, epoch: int) -> Params:
        zi, mid = self.locate(int(index))
        return self.zoos[zi].state_dict(mid, epoch)

    def module(self, index: int, epoch: int | None = None) -> MLP:
        """Member ``index`` as a plain ``torch.nn.Module`` (default: its last checkpoint)."""
        zi, mid = self.locate(int(index))
        return self.zoos[zi].module(mid, epoch)
