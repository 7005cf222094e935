"""Derived zoos: a zoo rewritten in a symmetry-reduced frame, in the same on-disk format.

``derive(cfg)`` (``scripts/canonicalize_zoo.py``) reads a parent zoo and writes a new zoo
whose members compute exactly the same functions, with weights

- ``canonical``: in canonical form, each checkpoint on its own (:func:`symmetry.canonicalize`);
- ``align``: matched onto one reference member by weight matching (Git Re-Basin);
- ``merge_many``: matched all together onto the zoo's own mean (MergeMany), so the whole zoo
  shares one frame.

For ``align`` and ``merge_many`` the matching is found on one checkpoint (``transform.epoch``,
default the last) and applied to all checkpoints of the member, so trajectories stay in one
frame. Each shard stores the transform that maps a member's own weights to the derived ones
(``shard-K.transform.safetensors``: ``perm.P_l`` and, where units were rescaled or flipped,
``factor.P_l``, both ``(members, checkpoints, width)``), so decoded weights can be mapped
back to the member's frame with :func:`symmetry.undo_transform`. The metrics are the parent's
(the functions are unchanged; a test checks it). The manifest names the transform and the
parent's manifest checksum.

Everything is checked before the output folder is made (the options against the parent, every
parent file's sha256), and a run that fails before its first shard removes the folder it
made: no stub is left to block the corrected command.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from weightspace.cli import progress_bar
from weightspace.config import fingerprint, to_dict
from weightspace.errors import ConfigError, ZooError
from weightspace.nets.spec import MLPSpec
from weightspace.symmetry.canonical import SORT_KEYS, canonicalize
from weightspace.symmetry.matching import weight_matching
from weightspace.symmetry.merge import DEFAULT_BLOCK, SCHEDULES, merge_many
from weightspace.symmetry.transforms import ODD_ACTIVATIONS, UnitTransform, apply_transform
from weightspace.zoo.files import sha256_file
from weightspace.zoo.store import Zoo
from weightspace.zoo.writer import ZooWriter

KINDS = ("canonical", "align", "merge_many")


def _shard_table(zoo: Zoo) -> dict[int, pd.DataFrame]:
    return {int(s): g.sort_values("shard_row") for s, g in zoo.members.groupby("shard")}


def _slice(t: UnitTransform, rows: np.ndarray) -> UnitTransform:
    idx = torch.from_numpy(rows)
    perms = {k: v[idx] for k, v in t.perms.items()}
    factors = None if t.factors is None else {k: v[idx] for k, v in t.factors.items()}
    return UnitTransform(perms, factors)


def find_alignment(zoo: Zoo, tcfg: Any, progress: bool = False) -> dict[str, UnitTransform]:
    """Per activation group, the transform of every member (rows in member_id order);
    ``progress``: MergeMany's progress bars."""
    kind = tcfg["kind"]
    epoch = tcfg.get("epoch")
    out: dict[str, UnitTransform] = {}
    for act, group in zoo.members.groupby("activation"):
        ids = group["member_id"].to_numpy()
        last = zoo.metrics[zoo.metrics["member_id"].isin(ids)].groupby("member_id")["epoch"].max()
        e = int(epoch) if epoch is not None else int(last.min())
        if (last < e).any():
            raise ConfigError(f"transform.epoch: {e} is past the last checkpoint of some members")
        spec = zoo.member_spec(int(ids[0]))
        params = zoo.weights(e, ids)
        sign_aware = bool(tcfg.get("sign_aware", False))
        if kind == "align":
            ref_id = int(tcfg.get("reference_member", 0))
            if ref_id not in set(ids):
                raise ConfigError(
                    f"transform.reference_member: member {ref_id} is not a {act} member"
                )
            reference = zoo.weights(e, [ref_id])
            t = weight_matching(
                params,
                reference,
                spec,
                int(tcfg.get("max_iter", 100)),
                int(tcfg.get("seed", 0)),
                sign_aware=sign_aware,
            ).transform
        else:
            _, t, _ = merge_many(
                params,
                spec,
                int(tcfg.get("max_iter", 100)),
                int(tcfg.get("seed", 0)),
                sign_aware=sign_aware,
                progress=progress,
                tol=float(tcfg.get("tol", 0.0)),
                schedule=str(tcfg.get("schedule", "sequential")),
                block=int(tcfg.get("block", DEFAULT_BLOCK)),
            )
        out[str(act)] = t
    return out


def _transform_tensors(ts: list[UnitTransform]) -> dict[str, torch.Tensor]:
    """Per-checkpoint transforms of a shard's members as (members, checkpoints, width)."""
    out = {f"perm.{k}": torch.stack([t.perms[k] for t in ts], 1) for k in ts[0].perms}
    if ts[0].factors is not None:
        out |= {f"factor.{k}": torch.stack([t.factors[k] for t in ts], 1) for k in ts[0].factors}
    return {k: v.contiguous() for k, v in out.items()}


def _int_option(tcfg: dict, key: str, default: int, lo: int) -> None:
    v = tcfg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"transform.{key}: must be an integer >= {lo}, got {v!r}")


def _about(err: Exception, option: str) -> bool:
    """Whether canonicalize's message ``err`` is about ``option``."""
    return str(err).startswith(option.replace("_", " "))


def check_options(parent: Zoo, tcfg: dict) -> None:
    """Every transform option checked against the parent, before anything is written."""
    kind = tcfg.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"transform.kind: unknown '{kind}' (choose from {', '.join(KINDS)})")
    groups = {str(a): g for a, g in parent.members.groupby("activation")}
    if kind == "canonical":
        key = tcfg.get("sort_key")
        if key is not None and key not in SORT_KEYS:
            raise ConfigError(f"transform.sort_key: unknown {key!r} ({', '.join(SORT_KEYS)})")
        for opt in ("sign", "scale"):
            if not isinstance(tcfg.get(opt), bool | None):
                raise ConfigError(f"transform.{opt}: must be true, false or null")
        for group in groups.values():  # one member of each activation, its first checkpoint
            m = int(group["member_id"].iloc[0])
            e = parent.shard_epochs(int(group["shard"].iloc[0]))[0]
            spec, params = parent.member_spec(m), parent.weights(e, [m], trainable=True)
            try:
                canonicalize(params, spec, key, tcfg.get("sign"), tcfg.get("scale"))
            except ValueError as err:
                opt = next((o for o in ("sort_key", "sign", "scale") if _about(err, o)), None)
                raise ConfigError(f"transform{'.' + opt if opt else ''}: {err}") from err
        return
    _int_option(tcfg, "max_iter", 100, 1)
    _int_option(tcfg, "seed", 0, 0)
    tol = tcfg.get("tol", 0.0)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < math.inf:
        raise ConfigError(f"transform.tol: must be a finite number >= 0, got {tol!r}")
    if not isinstance(tcfg.get("sign_aware", False), bool):
        raise ConfigError("transform.sign_aware: must be true or false")
    if tcfg.get("sign_aware") and not set(groups) <= ODD_ACTIVATIONS:
        raise ConfigError(
            f"transform.sign_aware: needs odd activations ({', '.join(sorted(ODD_ACTIVATIONS))})"
            f", the zoo has {', '.join(groups)}"
        )
    if kind == "merge_many":
        if tcfg.get("schedule", "sequential") not in SCHEDULES:
            raise ConfigError(
                f"transform.schedule: unknown {tcfg.get('schedule')!r} "
                f"(choose from {', '.join(SCHEDULES)})"
            )
        _int_option(tcfg, "block", DEFAULT_BLOCK, 1)
    if kind == "align":
        _int_option(tcfg, "reference_member", 0, 0)
        ref = tcfg.get("reference_member", 0)
        for act, group in groups.items():
            if ref not in set(group["member_id"]):
                raise ConfigError(f"transform.reference_member: member {ref} is not a {act} member")
    epoch = tcfg.get("epoch")
    if epoch is not None:
        _int_option(tcfg, "epoch", 0, 0)
    for act, group in groups.items():
        held = [parent.shard_epochs(int(s)) for s in group["shard"].unique()]
        e = epoch if epoch is not None else min(h[-1] for h in held)
        if any(e not in h for h in held):
            raise ConfigError(
                f"transform.epoch: not every {act} member has a checkpoint at epoch {e} "
                f"(their shards hold {sorted({tuple(h) for h in held})})"
            )


def _defining(tcfg: dict) -> dict:
    """The transform options that define the derived zoo: MergeMany's ``schedule`` and
    ``block`` only when they are not the default sequential schedule (so a zoo derived before
    they existed keeps its fingerprint, and ``block`` never matters to the sequential one)."""
    if tcfg.get("kind") == "merge_many" and tcfg.get("schedule", "sequential") != "sequential":
        return tcfg
    return {k: v for k, v in tcfg.items() if k not in ("schedule", "block")}


def derive(cfg: DictConfig) -> Path:
    """Write the derived zoo the config describes; returns its path. Resumes like generate."""
    t0 = time.perf_counter()
    for key in ("parent", "out"):
        if OmegaConf.is_missing(cfg, key) or not str(cfg.get(key) or ""):
            raise ConfigError(f"{key}: required" + (": the zoo to transform" * (key == "parent")))
    tcfg = _defining(to_dict(cfg.transform))
    parent = Zoo.open(cfg.parent)
    if Path(cfg.out).resolve() == parent.root.resolve():
        raise ConfigError("out: the derived zoo must not overwrite its parent")
    check_options(parent, tcfg)
    parent.check_files()  # a damaged parent is refused now, not after the folder is made
    parent_cfg = parent.config
    resolved = {**parent_cfg, "derive": {"parent": str(parent.root), "transform": tcfg}}
    parent_manifest_sha = sha256_file(parent.root / "manifest.json")
    writer = ZooWriter(
        cfg.out,
        OmegaConf.to_yaml(OmegaConf.create(resolved)),
        fingerprint({"parent": parent.manifest["fingerprint"], "transform": tcfg}),
        bool(cfg.get("overwrite", False)),
        replace_stub=True,
    )
    try:
        zoo = _write(cfg, parent, tcfg, writer, parent_manifest_sha)
    except BaseException:
        writer.discard_stub()
        raise
    print(f"{tcfg['kind']} zoo: {zoo.root} ({len(zoo)} members, {time.perf_counter() - t0:.1f} s)")
    return zoo.root


def _write(cfg: DictConfig, parent: Zoo, tcfg: dict, writer: ZooWriter, parent_sha: str) -> Zoo:
    """The derived zoo's shards (those not done yet), then its tables and manifest."""
    kind = tcfg["kind"]
    shards = _shard_table(parent)
    todo = [s for s in shards if not writer.shard_done(s)]
    aligned: dict[str, UnitTransform] = {}
    if kind != "canonical" and todo:
        # One search over the whole zoo before any shard is written (minutes for thousands).
        print(f"{kind}: matching {len(parent)} members ...", flush=True)
        aligned = find_alignment(parent, tcfg, progress=bool(cfg.get("progress", True)))
    row_of = {}  # member_id -> row in its activation group's transform
    for _, group in parent.members.groupby("activation"):
        row_of.update({int(m): r for r, m in enumerate(group["member_id"])})

    bar = progress_bar(
        total=len(todo),
        unit="shard",
        desc=f"{kind} {Path(cfg.out).name}",
        disable=not cfg.get("progress", True),
    )
    with bar:
        for s in todo:
            rows = shards[s]
            ids = rows["member_id"].to_numpy()
            spec: MLPSpec = parent.member_spec(int(ids[0]))
            epochs = parent.shard_epochs(s)
            per_epoch, transforms = [], []
            for e in epochs:
                params = parent.weights(e, ids, trainable=True)
                if kind == "canonical":
                    new, t = canonicalize(
                        params, spec, tcfg.get("sort_key"), tcfg.get("sign"), tcfg.get("scale")
                    )
                else:
                    t = _slice(aligned[spec.activation], np.array([row_of[int(i)] for i in ids]))
                    new = apply_transform(params, spec, t)
                per_epoch.append(new)
                transforms.append(t)
            weights = {k: torch.stack([p[k] for p in per_epoch], 1) for k in per_epoch[0]}
            metrics = parent.metrics[parent.metrics["member_id"].isin(ids)]
            writer.write_shard(
                s,
                ids,
                epochs,
                weights,
                metrics.reset_index(drop=True),
                rows["diverged_epoch"].to_numpy(),
                extra={"transform": _transform_tensors(transforms)},
            )
            bar.update(1)

    members = parent.members.drop(columns=["diverged", "diverged_epoch"])
    manifest = {
        k: v
        for k, v in parent.manifest.items()
        if k
        not in (
            "files",
            "fingerprint",
            "n_members",
            "n_shards",
            "n_diverged",
            "schema_version",
            "weightspace_version",
        )
    }
    manifest["derived_from"] = {
        "path": str(parent.root),
        "manifest_sha256": parent_sha,
        "fingerprint": parent.manifest["fingerprint"],
        "transform": tcfg,
    }
    writer.finalize(members, manifest)
    zoo = Zoo.open(cfg.out)
    if zoo.manifest["n_members"] != len(parent):
        raise ZooError(f"{cfg.out}: derived zoo has {len(zoo)} members, parent {len(parent)}")
    return zoo


def cli() -> None:
    """The ``weightspace-canonicalize`` console script (``scripts/canonicalize_zoo.py``)."""
    import logging

    import hydra

    from weightspace.cli import launch, run_or_exit
    from weightspace.config import CONF_DIR
    from weightspace.schema import validate
    from weightspace.zoo.store import resolve_zoo

    log = logging.getLogger(__name__)

    @hydra.main(config_path=str(CONF_DIR), config_name="canonicalize", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        run_or_exit(validate, cfg, "canonicalize")  # types and ranges, before any work
        # A zoo name resolves under paths.zoo_dir, as for every entry point (`out` follows).
        cfg.parent = str(run_or_exit(resolve_zoo, cfg.parent, cfg.paths.zoo_dir, "parent"))
        log.info("%s of %s into %s", cfg.transform.kind, cfg.parent, cfg.out)
        out = run_or_exit(derive, cfg)
        log.info("derived zoo written: %s", out)

    launch(main)
