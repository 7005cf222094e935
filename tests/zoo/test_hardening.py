"""Divergence by loss explosion, NaN initializations, orphaned temporary files, file modes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from weightspace.nets.spec import MLPSpec
from weightspace.zoo.files import (
    ORPHAN_AGE,
    TEMP_NAME,
    atomic_write_bytes,
    make_temp_dir,
    remove_orphans,
    temp_prefix,
)
from weightspace.zoo.generate import generate
from weightspace.zoo.population import sample_population
from weightspace.zoo.store import Zoo
from weightspace.zoo.train.fused import supported
from weightspace.zoo.train.loop import LOSS_EXPLOSION, train_population


def dead_pid() -> int:
    """The id of a process that has ended (a writer killed with kill -9)."""
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


# --------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("trainer", ["autograd", "hand", "fused"])
def test_adam_at_a_huge_learning_rate_is_flagged_diverged(digits, trainer):
    """Adam at lr 1e6 keeps the loss finite (~1e13) but exploded: flagged, the others not."""
    spec = MLPSpec((64, 16, 10))
    if trainer == "fused" and supported(spec, torch.device("cpu")) is not None:
        pytest.skip("fused kernel not available here")
    members = sample_population({"optimizer": "adam", "lr": [1e-3, 1e6], "epochs": 2}, 4)
    result = train_population(digits, spec, members, [1], trainer=trainer)
    bad = (members["lr"] > 1).to_numpy()
    assert (result.diverged_epoch[bad] >= 1).all()
    assert (result.diverged_epoch[~bad] == -1).all()
    m = result.metrics
    last = m[m["epoch"] == 2].set_index("member_id")
    loss0 = m[m["epoch"] == 0].set_index("member_id")["train_loss"]
    exploded = last["train_loss"] > LOSS_EXPLOSION * np.fmax(loss0, 1.0)
    assert (exploded | ~np.isfinite(last["train_loss"])).to_numpy()[bad].all()
    assert last["diverged"].to_numpy()[bad].all() and not last["diverged"].to_numpy()[~bad].any()


def test_a_nan_initialization_is_diverged_at_epoch_zero(make_cfg):
    """``init=constant init_value=nan`` (the CLI refuses it; the Python API can still pass it):
    the members are flagged diverged at epoch 0, not stored as healthy."""
    summary = generate(
        make_cfg("zoo.hparams.init=constant", "zoo.hparams.init_value=nan", "backend=autograd")
    )
    zoo = Zoo.open(summary.path)
    assert summary.n_diverged == len(zoo) == 8
    assert (zoo.members["diverged_epoch"] == 0).all()


# --------------------------------------------------------------------------- temp files
def test_orphaned_temp_files_are_removed_on_the_next_run(tmp_path):
    """What a kill -9 leaves (a temporary shard of a dead writer, a temporary zoo folder) is
    removed; a live writer's temporary file and another zoo's folder stay."""
    pid, host = dead_pid(), temp_prefix("x").split(".")[2]
    zoo_dir = tmp_path / "zoos" / "digits"
    (zoo_dir / "shards").mkdir(parents=True)
    orphan = zoo_dir / "shards" / f".shard-00000.safetensors.{host}.{pid}.abcd1234.tmp"
    orphan.write_bytes(b"half a shard")
    orphan_dir = zoo_dir.parent / f".digits.{host}.{pid}.abcd1234.tmp"
    orphan_dir.mkdir()
    other_zoo = zoo_dir.parent / f".other.{host}.{pid}.abcd1234.tmp"
    other_zoo.mkdir()  # another zoo's: left to that zoo's own next run
    live = zoo_dir / f".members.parquet.{host}.{os.getpid()}.abcd1234.tmp"
    live.write_bytes(b"being written")
    old_style = zoo_dir / ".plan.json.k2j3h4g5.tmp"  # before temp names carried the writer
    old_style.write_bytes(b"{")
    recent_old_style = zoo_dir / ".config.yaml.a1b2c3d4.tmp"
    recent_old_style.write_bytes(b"x")
    past = time.time() - ORPHAN_AGE - 60
    os.utime(old_style, (past, past))
    assert all(TEMP_NAME.match(p.name) for p in (orphan, orphan_dir, live))

    removed = remove_orphans(zoo_dir / "shards") + remove_orphans(zoo_dir)
    removed += remove_orphans(zoo_dir.parent, only="digits")
    assert set(removed) == {orphan, orphan_dir, old_style}
    assert live.exists() and other_zoo.exists() and recent_old_style.exists()


def test_a_zoo_run_cleans_what_a_killed_run_left(make_cfg):
    path = generate(make_cfg()).path
    name = temp_prefix("shard-00001.safetensors").replace(f".{os.getpid()}.", f".{dead_pid()}.")
    orphan = path / "shards" / f"{name}zzzz9999.tmp"
    orphan.write_bytes(b"half")
    generate(make_cfg())  # the same command again: finds the zoo finished
    assert not orphan.exists()


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_and_folders_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = tmp_path / "sub" / "file.bin"
        atomic_write_bytes(path, b"data")
        folder = make_temp_dir(tmp_path, "zoo")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_zoo_is_group_readable_under_a_group_umask(tmp_path, make_cfg):
    old = os.umask(0o002)
    try:
        path = generate(make_cfg()).path
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o775
    for f in [*path.iterdir(), *(path / "shards").iterdir()]:
        want = 0o775 if f.is_dir() else 0o664
        assert f.stat().st_mode & 0o777 == want, f
