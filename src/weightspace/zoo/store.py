"""A zoo on disk, opened lazily (:class:`Zoo`); :mod:`weightspace.zoo.writer` writes one.

Layout (``docs/zoo-format.md`` is the full description)::

    <zoo>/
      manifest.json                 schema version, architecture, task, epochs, sha256 of files
      config.yaml                   the resolved config that made the zoo
      members.parquet               one row per member: hyperparameters, shard, diverged
      metrics.parquet               one row per member x checkpoint: losses and accuracies
      shards/shard-00000.safetensors  state_dict names, tensors (members, checkpoints, ...)
      shards/shard-00000.parquet      that shard's metric rows (kept for resuming)
      shards/shard-00000.json         written last: the shard is complete, with its checksums

No pickle anywhere. Every file is written to a temporary name and renamed into place
(:mod:`weightspace.zoo.files`), so a killed run leaves complete files or none;
``manifest.json`` is written last of all, and a folder without it is an unfinished zoo that
the same command resumes. A finished zoo is never rewritten by a re-run whose config differs
only in options that do not define the zoo (``progress``, paths). ``Zoo.open`` trusts nothing
in the files before :mod:`weightspace.zoo.manifest` has checked it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from torch import Tensor

from weightspace.errors import ZooError
from weightspace.nets.forward import MLP
from weightspace.nets.spec import MLPSpec, Params, UnitTransform
from weightspace.zoo.files import (
    sha256_file,
)
from weightspace.zoo.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    Header,
    check_layout,
    check_manifest,
    read_header,
    shard_name,
)

__all__ = ["MANIFEST", "SCHEMA_VERSION", "Zoo", "resolve_zoo", "shard_name"]


# --------------------------------------------------------------------------- reading
def resolve_zoo(value: str | os.PathLike, zoo_dir: str | os.PathLike, key: str = "zoo") -> Path:
    """A finished zoo's folder from ``value``: a folder, or a zoo name under ``zoo_dir``
    (``paths.zoo_dir``). ``key`` names the option in the error."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and not path.exists():
        path = Path(zoo_dir) / path
    path = path.resolve()
    if not (path / MANIFEST).exists():
        raise ZooError(f"{key}: {path} is not a finished zoo (no {MANIFEST})")
    return path


def _unfinished_hint(root: Path) -> str:
    """Why a folder without a manifest is not a zoo yet, and what to run."""
    if not (root / "fingerprint.txt").exists():
        return "no zoo here"
    plan = root / "plan.json"
    try:
        n = int(json.loads(plan.read_text())["n_shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return "generation did not finish; re-run the same command to resume"
    missing = [s for s in range(n) if not (root / f"{shard_name(s)}.json").exists()]
    if not missing:
        return "all shards are done; re-run the same command to resume and finish the zoo"
    shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
    return (
        f"generation did not finish: {len(missing)} of {n} shards missing ({shown}); "
        "run the remaining jobs (zoo.shard=i zoo.num_shards=K) or re-run the same command"
    )


class Zoo:
    """A zoo opened from disk: tables in memory, weights memory-mapped and read on demand.

    >>> zoo = Zoo.open("zoos/digits")
    >>> len(zoo), zoo.epochs
    >>> w = zoo.weights(epoch=10, members=[0, 5, 7])   # {"layers.0.weight": (3, 32, 64), ...}
    >>> net = zoo.module(5, epoch=10)                   # a plain torch.nn.Module
    """

    def __init__(self, root: Path, manifest: dict[str, Any], verify: bool):
        self.root = root
        self.manifest = manifest
        self.verify = verify
        self._verified: set[str] = set()
        self._maps: dict[int, tuple[list[int], dict[str, np.ndarray]]] = {}
        self._headers: dict[int, Header] = {}  # each shard's checked safetensors header

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps and cached tables stay behind: a worker process opens its own.
        state = {k: v for k, v in self.__dict__.items() if k not in ("members", "metrics")}
        state["_maps"] = {}
        return state

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Zoo:
        """Open a finished zoo. ``verify`` checks every file's sha256 the first time it is read.

        Before anything else the manifest, the members table and every shard's header are
        checked against each other (:mod:`weightspace.zoo.manifest`); a zoo that fails is
        refused with one :class:`ZooError` line naming the file and the field.
        """
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.exists():
            raise ZooError(f"{mpath}: missing ({_unfinished_hint(root)})")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ZooError(f"{mpath}: not valid JSON ({e})") from e
        zoo = cls(root, check_manifest(mpath, manifest), verify)
        for rel, meta in manifest["files"].items():
            f = root / rel
            if not f.is_file():
                raise ZooError(f"{f}: missing from the zoo")
            if f.stat().st_size != meta["bytes"]:
                raise ZooError(
                    f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']} "
                    "(truncated or altered)"
                )
        zoo._headers = check_layout(root, manifest, lambda: zoo.members)
        return zoo

    def check_files(self) -> None:
        """Check every file's sha256 now, not when it is first read."""
        for rel in self.manifest["files"]:
            self._check(rel)

    def _check(self, rel: str) -> Path:
        path = self.root / rel
        if self.verify and rel not in self._verified:
            expected = self.manifest["files"][rel]["sha256"]
            if sha256_file(path) != expected:
                raise ZooError(f"{path}: sha256 differs from the manifest (altered or corrupt)")
            self._verified.add(rel)
        return path

    # ---- tables and spec
    @cached_property
    def members(self) -> pd.DataFrame:
        """One row per member, indexed by position (== member_id)."""
        return self._table("members.parquet")

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """One row per member x checkpoint: epoch, train/test loss and accuracy, diverged."""
        return self._table("metrics.parquet")

    def _table(self, rel: str) -> pd.DataFrame:
        path = self._check(rel)
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's errors are OSErrors and ValueErrors
            raise ZooError(f"{path}: not a readable Parquet table ({type(e).__name__})") from e

    @property
    def spec(self) -> MLPSpec:
        """The architecture; ``activation`` is the most common one (see :meth:`member_spec`)."""
        a = self.manifest["architecture"]
        return MLPSpec(tuple(a["widths"]), a["activations"][0], a["bias"], a["weight_norm"])

    def member_spec(self, member: int) -> MLPSpec:
        a = self.manifest["architecture"]
        act = str(self.members["activation"].iloc[member])
        return MLPSpec(tuple(a["widths"]), act, a["bias"], a["weight_norm"])

    @property
    def epochs(self) -> list[int]:
        """All checkpoint epochs in the zoo (members trained for fewer epochs hold a subset)."""
        return list(self.manifest["checkpoint_epochs"])

    def __len__(self) -> int:
        return int(self.manifest["n_members"])

    def __repr__(self) -> str:
        return (
            f"Zoo({str(self.root)!r}, members={len(self)}, widths={list(self.spec.widths)}, "
            f"task={self.manifest['task']['name']!r}, epochs={self.epochs})"
        )

    # ---- weights
    def _shard_map(self, shard: int) -> tuple[list[int], dict[str, np.ndarray]]:
        """The shard's checkpoint epochs and its tensors as read-only memory maps.

        A safetensors file is an 8-byte header length, a JSON header with each tensor's dtype,
        shape and byte range, then the raw little-endian data: numpy maps it directly, and
        fancy indexing then reads just the rows asked for.
        """
        if shard not in self._maps:
            path = self._check(f"{shard_name(shard)}.safetensors")
            header = self._headers[shard]
            if read_header(path) != header:  # the header checked when the zoo was opened
                raise ZooError(f"{path}: header: changed since the zoo was opened")
            raw = np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_start)
            arrays = {
                name: raw[lo:hi].view("<f4").reshape(shape)
                for name, (_, shape, lo, hi) in header.tensors.items()
            }
            self._maps[shard] = (json.loads(header.metadata["epochs"]), arrays)
        return self._maps[shard]

    def shard_epochs(self, shard: int) -> list[int]:
        """The checkpoint epochs stored in shard file ``shard``."""
        return self._shard_map(shard)[0]

    def weights(
        self, epoch: int, members: Iterable[int] | None = None, trainable: bool = False
    ) -> Params:
        """Stacked parameters of ``members`` (default: all) at checkpoint ``epoch``.

        Returns ``{name: (len(members), ...)}`` with effective ``weight``/``bias`` names, plus
        ``weight_g``/``weight_v`` when ``trainable`` and the zoo uses weight normalization.
        Only the requested rows are read from the memory-mapped shards.
        """
        ids = np.arange(len(self)) if members is None else np.asarray(list(members), dtype=int)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(
                f"member ids must be in [0, {len(self)}), got {ids.min()}..{ids.max()}"
            )
        spec = self.spec
        names = list(spec.param_shapes())
        if trainable and spec.weight_norm:
            names += [n for n in spec.param_shapes(trainable=True) if n not in names]
        shard_of, row_of = self._locations
        shards, rows = shard_of[ids], row_of[ids]
        out = {n: np.empty((len(ids), *self._shape(n)), dtype=np.float32) for n in names}
        for shard in np.unique(shards):
            epochs, arrays = self._shard_map(int(shard))
            if epoch not in epochs:
                raise ZooError(
                    f"{self.root / shard_name(int(shard))}.safetensors: no checkpoint at epoch "
                    f"{epoch} (this shard holds {epochs})"
                )
            e = epochs.index(epoch)
            where = np.flatnonzero(shards == shard)
            for n in names:
                out[n][where] = arrays[n][rows[where], e]
        return {n: torch.from_numpy(v) for n, v in out.items()}

    @cached_property
    def _locations(self) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row in shard) of every member, as arrays indexed by member id."""
        m = self.members
        return m["shard"].to_numpy(np.int64), m["shard_row"].to_numpy(np.int64)

    def _shape(self, name: str) -> tuple[int, ...]:
        spec = self.spec
        return {**spec.param_shapes(trainable=True), **spec.param_shapes()}[name]

    def state_dict(self, member: int, epoch: int) -> Params:
        """One member's ``state_dict`` (``weight``/``bias`` names) at ``epoch``."""
        return {k: v[0] for k, v in self.weights(epoch, [member]).items()}

    @property
    def derived_from(self) -> dict[str, Any] | None:
        """For a derived zoo (canonicalized or aligned): parent and transform, else None."""
        return self.manifest.get("derived_from")

    def unit_transform(self, epoch: int, members: Iterable[int]) -> UnitTransform:
        """For a derived zoo: the :class:`~weightspace.nets.spec.UnitTransform` that maps each
        member's own weights at ``epoch`` to the stored ones (undo it with
        :func:`~weightspace.symmetry.undo_transform`)."""
        if self.derived_from is None:
            raise ZooError(f"{self.root}: not a derived zoo, it stores no transforms")
        ids = np.asarray(list(members), dtype=int)
        rows = self.members.iloc[ids]
        perms: dict[str, list] = {}
        factors: dict[str, list] = {}
        order = []
        for shard, group in rows.groupby("shard", sort=True):
            if epoch not in self.shard_epochs(int(shard)):
                raise ZooError(
                    f"{self.root / shard_name(int(shard))}.safetensors: no checkpoint at epoch "
                    f"{epoch} (this shard holds {self.shard_epochs(int(shard))})"
                )
            e = self.shard_epochs(int(shard)).index(epoch)
            rel = f"{shard_name(int(shard))}.transform.safetensors"
            with safe_open(str(self._check(rel)), framework="pt") as f:
                local = torch.as_tensor(group["shard_row"].to_numpy().copy())
                for key in f.keys():
                    kind, name = key.split(".", 1)
                    (perms if kind == "perm" else factors).setdefault(name, []).append(
                        f.get_tensor(key)[local, e]
                    )
            order.append(np.flatnonzero(np.isin(ids, group["member_id"].to_numpy())))
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        cat = {k: torch.cat(v)[back] for k, v in perms.items()}
        fac = {k: torch.cat(v)[back] for k, v in factors.items()} or None
        return UnitTransform(cat, fac)

    def module(self, member: int, epoch: int | None = None) -> MLP:
        """The member as a plain ``torch.nn.Module`` (default: its last checkpoint)."""
        if epoch is None:
            epoch = int(self.metrics.loc[self.metrics["member_id"] == member, "epoch"].max())
        net = MLP(self.member_spec(member))
        net.load_state_dict(self.state_dict(member, epoch), strict=True)
        return net.eval()

    # ---- task
    @cached_property
    def config(self) -> dict[str, Any]:
        from omegaconf import OmegaConf

        path = self._check("config.yaml")
        try:
            config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:  # YAML or interpolation errors: the file is at fault
            raise ZooError(f"{path}: not a readable config ({type(e).__name__})") from e
        if not isinstance(config, dict):
            raise ZooError(f"{path}: not a config (a mapping)")
        return config

    def task(self):
        """The task the members were trained on, loaded as it was at generation time."""
        from weightspace.zoo.tasks import load_task

        if self.config.get("task") is None:  # imported without one (Zoo.from_networks)
            raise ZooError(f"{self.root}: the zoo records no task; import it with task=NAME")
        return load_task(self.config["task"])

    def signals(self, members: Iterable[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """An INR zoo's signals (``docs/zoo-format.md``, INR zoos), as each member fitted it:
        ``(coords (N, in), targets (len(members), N, out), classes (len(members),))`` of
        ``members`` (default: all), from the task loaded as at generation time."""
        if "signal" not in self.members.columns:
            raise ZooError(f"{self.root / 'members.parquet'}: signal: missing (not an INR zoo)")
        ids = np.arange(len(self)) if members is None else np.asarray(list(members), dtype=int)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(
                f"member ids must be in [0, {len(self)}), got {ids.min()}..{ids.max()}"
            )
        task = self.task()
        signal = self.members["signal"].to_numpy(np.int64)[ids]
        if len(signal) and signal.max() >= task.n_signals:
            raise ZooError(
                f"{self.root / 'members.parquet'}: signal: {signal.max()} out of range, the "
                f"task holds {task.n_signals} signals"
            )
        classes = torch.from_numpy(self.members["signal_class"].to_numpy(np.int64)[ids])
        return task.coords, task.member_targets(signal), classes

    # ---- networks trained elsewhere
    @classmethod
    def from_networks(
        cls, networks: Any, path: str | os.PathLike, activation: str | None = None, **options: Any
    ) -> Zoo:
        """A zoo written at ``path`` from networks trained elsewhere, opened: a folder of
        state_dicts (safetensors, ``torch.save``) or a list of ``nn.Module`` s / state dicts.

        >>> zoo = Zoo.from_networks("runs/", "zoos/mine", "relu", task="digits",
        ...                         table="runs/metrics.csv")

        ``options``: ``task``, ``table``, ``epoch``, ``overwrite``, ``shard_size``
        (:func:`weightspace.zoo.importer.import_networks`, which checks and maps the keys).
        """
        from weightspace.zoo.importer import import_networks

        return cls.open(import_networks(networks, path, activation, **options))
