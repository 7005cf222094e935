"""Writing a zoo atomically and shard by shard (:class:`ZooWriter`); the layout is in
:mod:`weightspace.zoo.store` and ``docs/zoo-format.md``.

Every file is written to a temporary name and renamed into place (:mod:`weightspace.zoo.files`);
``manifest.json`` comes last of all, so a folder without it is an unfinished zoo that the same
command resumes, and a finished zoo is never rewritten by a re-run whose config differs only in
options that do not define the zoo.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace import __version__
from weightspace.errors import ZooError
from weightspace.nets.spec import Params
from weightspace.zoo.files import (
    atomic_write_bytes,
    atomic_write_parquet,
    make_temp_dir,
    remove_orphans,
    save_safetensors,
    sha256_file,
)
from weightspace.zoo.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    TABLES,
    check_layout,
    check_manifest,
    record_files,
    shard_name,
)


class ZooWriter:
    """Writes one zoo folder; knows which shards exist already, so a re-run resumes."""

    def __init__(
        self,
        root: str | Path,
        config_yaml: str,
        fingerprint: str,
        overwrite: bool,
        replace_stub: bool = False,
    ):
        """``replace_stub``: a folder of another config that holds nothing done yet (no shard
        record, no manifest: what a run that failed early leaves) is replaced without
        ``overwrite``. Off for generation, whose jobs may start one zoo side by side."""
        self.root = Path(root)
        self.fingerprint = fingerprint
        self._config = config_yaml.encode()
        stamp = self.root / "fingerprint.txt"
        self._create(fingerprint)
        if self.root.exists() and any(self.root.iterdir()):
            if not stamp.exists():
                raise ZooError(
                    f"{self.root}: folder exists and is not a zoo; choose another zoo.path"
                )
            if stamp.read_text().strip() != fingerprint:
                if not (overwrite or (replace_stub and self.is_stub())):
                    raise ZooError(
                        f"{self.root}: holds a zoo made from a different config; "
                        "pass overwrite=true to replace it or choose another zoo.path"
                    )
                self._clear()
        self.root.mkdir(parents=True, exist_ok=True)
        # Temporary files a killed run left (a live job's own are kept: see remove_orphans).
        for folder in (self.root, self.root / "shards"):
            remove_orphans(folder)
        remove_orphans(self.root.parent, self.root.name)
        if not stamp.exists():
            atomic_write_bytes(stamp, (fingerprint + "\n").encode())
        # A finished zoo's config.yaml is in its manifest: rewriting it here, long before the
        # manifest, would leave the zoo unreadable if the run were killed in between.
        self._config_pending = (self.root / MANIFEST).exists()
        if not self._config_pending:
            atomic_write_bytes(self.root / "config.yaml", self._config)

    def is_stub(self) -> bool:
        """Nothing done here yet: no manifest and no shard record."""
        return not (self.root / MANIFEST).exists() and not any(self.root.glob("shards/*.json"))

    def discard_stub(self) -> None:
        """Remove the folder if it is a stub holding only a zoo's own files (a run that failed
        before its first shard leaves nothing behind)."""
        own = {"fingerprint.txt", "config.yaml", "plan.json", "shards"}
        entries = list(self.root.iterdir()) if self.root.is_dir() else []
        if self.is_stub() and all(p.name in own or p.name.startswith(".") for p in entries):
            shutil.rmtree(self.root, ignore_errors=True)

    def _create(self, fingerprint: str) -> None:
        """Make a new zoo folder with its fingerprint already inside, in one rename: jobs of
        one zoo started side by side (sharded generation) never see it without one."""
        if self.root.exists():
            return
        self.root.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(self.root.parent, self.root.name)
        (tmp / "fingerprint.txt").write_text(fingerprint + "\n")
        try:
            os.rename(tmp, self.root)
        except OSError:  # another job made it first: its fingerprint is checked next
            shutil.rmtree(tmp, ignore_errors=True)

    def _clear(self) -> None:
        for name in (
            MANIFEST,
            "members.parquet",
            "metrics.parquet",
            "fingerprint.txt",
            "plan.json",
        ):
            (self.root / name).unlink(missing_ok=True)
        shards = self.root / "shards"
        if shards.exists():
            for f in shards.iterdir():
                f.unlink()

    def write_plan(self, n_shards: int) -> None:
        """Record how many shards the zoo has, so an unfinished zoo can say which are missing."""
        plan, data = self.root / "plan.json", json.dumps({"n_shards": n_shards}).encode()
        if not plan.exists() or plan.read_bytes() != data:
            atomic_write_bytes(plan, data)

    def shard_done(self, index: int) -> bool:
        """A shard counts as done when its record exists and its files match it."""
        if not (self.root / f"{shard_name(index)}.json").exists():
            return False
        return all(
            (self.root / rel).exists() and (self.root / rel).stat().st_size == meta["bytes"]
            for rel, meta in record_files(self.root, index).items()
        )

    def write_shard(
        self,
        index: int,
        member_ids: Sequence[int],
        epochs: Sequence[int],
        weights: Params,
        metrics: pd.DataFrame,
        diverged_epoch: np.ndarray,
        extra: dict[str, Params] | None = None,
    ) -> None:
        """Write one shard's files, then its record (which marks the shard done).

        ``extra``: more tensor files of the shard, ``{suffix: tensors}`` written as
        ``shard-K.{suffix}.safetensors`` (e.g. a derived zoo's transforms).
        """
        base = shard_name(index)
        tensors = {k: v.contiguous() for k, v in weights.items()}
        meta = {
            "member_ids": json.dumps([int(i) for i in member_ids]),
            "epochs": json.dumps([int(e) for e in epochs]),
        }
        atomic_write_bytes(self.root / f"{base}.safetensors", save_safetensors(tensors, meta))
        first_bad = dict(zip(map(int, member_ids), map(int, diverged_epoch)))
        metrics = metrics.assign(diverged_epoch=metrics["member_id"].map(first_bad))
        atomic_write_parquet(self.root / f"{base}.parquet", metrics)
        suffixes = ["safetensors", "parquet"]
        for name, tensors in (extra or {}).items():
            data = save_safetensors({k: v.contiguous() for k, v in tensors.items()}, {})
            atomic_write_bytes(self.root / f"{base}.{name}.safetensors", data)
            suffixes.append(f"{name}.safetensors")
        files = {
            f"{base}.{ext}": {
                "sha256": sha256_file(self.root / f"{base}.{ext}"),
                "bytes": (self.root / f"{base}.{ext}").stat().st_size,
            }
            for ext in suffixes
        }
        record = {
            "member_ids": [int(i) for i in member_ids],
            "epochs": list(map(int, epochs)),
            "files": files,
        }
        stamp = self.root / "fingerprint.txt"
        if not stamp.exists() or stamp.read_text().strip() != self.fingerprint:
            raise ZooError(f"{stamp}: changed while this run wrote the zoo (another config?)")
        atomic_write_bytes(self.root / f"{base}.json", json.dumps(record, indent=1).encode())

    def finalize(self, members: pd.DataFrame, manifest: dict[str, Any]) -> Path:
        """Gather the shards' tables, write members/metrics and, last, the manifest."""
        n_shards = int(members["shard"].max()) + 1
        parts, files = [], {}
        for s in range(n_shards):
            record_path = self.root / f"{shard_name(s)}.json"
            record = record_files(self.root, s)
            for rel, meta in record.items():
                # A shard kept from an earlier run must still be what that run wrote.
                if sha256_file(self.root / rel) != meta["sha256"]:
                    raise ZooError(
                        f"{self.root / rel}: sha256 differs from {record_path} (altered or "
                        f"corrupt); delete both to retrain the shard"
                    )
            files.update(record)
        if self._finished(files):
            return self.root / MANIFEST  # left as it is: nothing of it would change
        for s in range(n_shards):
            parts.append(pd.read_parquet(self.root / f"{shard_name(s)}.parquet"))
        metrics = pd.concat(parts, ignore_index=True)
        metrics = metrics.sort_values(["member_id", "epoch"], kind="stable", ignore_index=True)
        div = metrics.groupby("member_id")["diverged_epoch"].first()
        members = members.assign(
            diverged_epoch=members["member_id"].map(div).astype("int64"),
        )
        members = members.assign(diverged=members["diverged_epoch"] >= 0)
        metrics = metrics.drop(columns=["diverged_epoch"])
        atomic_write_parquet(self.root / "members.parquet", members)
        atomic_write_parquet(self.root / "metrics.parquet", metrics)
        if self._config_pending or not (self.root / "config.yaml").exists():
            atomic_write_bytes(self.root / "config.yaml", self._config)
        for name in TABLES:
            path = self.root / name
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "weightspace_version": __version__,
            "fingerprint": self.fingerprint,
            **manifest,
            "n_members": len(members),
            "n_shards": n_shards,
            "n_diverged": int(members["diverged"].sum()),
            "files": dict(sorted(files.items())),
        }
        atomic_write_bytes(self.root / MANIFEST, json.dumps(manifest, indent=2).encode())
        return self.root / MANIFEST

    def _finished(self, shard_files: dict[str, Any]) -> bool:
        """A finished zoo of this fingerprint, intact, whose manifest lists ``shard_files``."""
        path = self.root / MANIFEST
        if not path.exists():
            return False
        try:  # the checks of Zoo.open, without importing the reader (Zoo.from_networks writes)
            m = check_manifest(path, json.loads(path.read_text()))
            check_layout(self.root, m, lambda: pd.read_parquet(self.root / "members.parquet"))
        except (ZooError, OSError, ValueError, RecursionError):
            return False  # damaged: finalize rewrites the tables, then the manifest
        return (
            m["fingerprint"] == self.fingerprint
            and {k: v for k, v in m["files"].items() if k not in TABLES} == shard_files
            and all(sha256_file(self.root / n) == m["files"][n]["sha256"] for n in TABLES)
        )
