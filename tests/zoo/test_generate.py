"""End to end: generate(cfg) and the CLI. Determinism, resuming, divergence, errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SCRIPT, cli_env, cli_overrides, compose_cfg, run_cli

from weightspace.errors import ConfigError, ZooError
from weightspace.zoo.generate import generate
from weightspace.zoo.store import MANIFEST, Zoo
from weightspace.zoo.train.loop import train_population
from weightspace.zoo.writer import ZooWriter

# Two batch sizes (so two static groups), two learning rates, both data orders: 12 members
# in shards of at most 4 -> 2 groups of 6 -> shards of 4, 2, 4, 2.
VARIED = (
    "zoo.size=12",
    "zoo.hparams.batch_size=[16,32]",
    "zoo.hparams.lr=[0.02,0.1]",
    "zoo.hparams.data_order=[per_member,shared]",
)


def _files(zoo: Path, pattern: str) -> list[Path]:
    return sorted((zoo / "shards").glob(pattern))


def assert_same_zoo(a: Path, b: Path) -> None:
    """Byte-identical shards and equal tables (config.yaml may differ in its paths)."""
    shards_a, shards_b = _files(a, "*.safetensors"), _files(b, "*.safetensors")
    assert [p.name for p in shards_a] == [p.name for p in shards_b]
    assert shards_a
    for pa, pb in zip(shards_a, shards_b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    for pa, pb in zip(_files(a, "*.parquet"), _files(b, "*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(pa), pd.read_parquet(pb))
    for pa, pb in zip(_files(a, "*.json"), _files(b, "*.json")):
        assert json.loads(pa.read_text()) == json.loads(pb.read_text())
    for table in ("members.parquet", "metrics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / table), pd.read_parquet(b / table))
    ma, mb = (json.loads((z / MANIFEST).read_text()) for z in (a, b))
    for m in (ma, mb):
        del m["files"]["config.yaml"]
    assert ma == mb


# --------------------------------------------------------------------------- determinism
def test_same_config_and_seed_give_identical_zoos(make_cfg, tmp_path):
    first = generate(make_cfg(*VARIED, root=tmp_path / "a"))
    second = generate(make_cfg(*VARIED, root=tmp_path / "b"))
    assert first.path != second.path
    assert first.n_members == second.n_members == first.n_trained == 12
    assert_same_zoo(first.path, second.path)
    # A different zoo seed changes the bytes, so the comparison above has teeth.
    other = generate(make_cfg(*VARIED, "zoo.seed=1", root=tmp_path / "c"))
    with pytest.raises(AssertionError):
        assert_same_zoo(first.path, other.path)


def test_shards_hold_one_static_group_each(make_cfg):
    zoo = Zoo.open(generate(make_cfg(*VARIED)).path)
    m = zoo.members
    assert sorted(m.groupby("shard").size()) == [2, 2, 4, 4]
    assert (m.groupby("shard")["batch_size"].nunique() == 1).all()
    # Reading members across shards and groups gives each member's own tensors.
    pick = list(range(12))[::-1]
    full = zoo.weights(2)
    part = zoo.weights(2, members=pick)
    assert torch.equal(part["layers.0.weight"], full["layers.0.weight"][pick])


def test_members_with_different_epochs_keep_their_own_checkpoints(make_cfg):
    cfg = make_cfg("zoo.hparams.epochs=[1,3]", "zoo.checkpoints=[0,2]", "zoo.shard_size=8")
    zoo = Zoo.open(generate(cfg).path)
    assert zoo.epochs == [0, 1, 2, 3]
    for member, rows in zoo.metrics.groupby("member_id"):
        epochs = int(zoo.members.loc[member, "epochs"])
        assert sorted(rows["epoch"]) == ([0, 1] if epochs == 1 else [0, 2, 3])
    short = int(zoo.members.index[zoo.members["epochs"] == 1][0])
    with pytest.raises(ZooError, match="no checkpoint at epoch 3"):
        zoo.weights(3, members=[short])
    assert zoo.module(short).layers[0].weight.shape == (16, 64)


# --------------------------------------------------------------------------- divergence
def test_diverging_members_are_flagged_and_do_not_affect_the_others(make_cfg):
    cfg = make_cfg("zoo.hparams.lr=[0.05,1e6]", "zoo.hparams.epochs=3", "zoo.checkpoints=[1,2]")
    summary = generate(cfg)
    zoo = Zoo.open(summary.path)
    members = zoo.members
    bad = (members["lr"] > 1).to_numpy()
    assert bad.sum() == 4
    assert summary.n_diverged == zoo.manifest["n_diverged"] == 4
    assert members.loc[bad, "diverged"].all() and not members.loc[~bad, "diverged"].any()
    assert (members.loc[bad, "diverged_epoch"] >= 1).all()
    assert (members.loc[~bad, "diverged_epoch"] == -1).all()
    for epoch in zoo.epochs:
        for v in zoo.weights(epoch).values():
            assert torch.isfinite(v).all()
    # The healthy members, trained together without the diverging ones (and across the
    # shard boundary), end with the same weights.
    healthy = members[~bad].drop(columns=["shard", "shard_row", "diverged", "diverged_epoch"])
    alone = train_population(zoo.task(), zoo.spec, healthy, [1, 2])
    assert alone.epochs == zoo.epochs
    for c, epoch in enumerate(zoo.epochs):
        stored = zoo.weights(epoch, members=healthy["member_id"])
        for k, v in stored.items():
            torch.testing.assert_close(v, alone.weights[k][:, c], atol=1e-6, rtol=0)
    # The summary's accuracy quantiles leave the diverged members out.
    final = zoo.metrics[zoo.metrics["epoch"] == 3].set_index("member_id")["test_acc"]
    assert summary.final_test_acc["min"] == pytest.approx(final[~bad].min())


# --------------------------------------------------------------------------- resuming
def test_interrupted_run_resumes_to_the_same_zoo(make_cfg, tmp_path, monkeypatch):
    overrides = ("zoo.size=12",)
    reference = generate(make_cfg(*overrides, root=tmp_path / "ref"))

    original = ZooWriter.write_shard
    calls = []

    def interrupt_second(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    cfg = make_cfg(*overrides, root=tmp_path / "run")
    monkeypatch.setattr(ZooWriter, "write_shard", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg)
    monkeypatch.setattr(ZooWriter, "write_shard", original)

    zoo_dir = Path(cfg.zoo.path)
    assert [p.name for p in _files(zoo_dir, "*.safetensors")] == ["shard-00000.safetensors"]
    assert [p.name for p in _files(zoo_dir, "*.json")] == ["shard-00000.json"]
    assert not (zoo_dir / MANIFEST).exists()
    with pytest.raises(ZooError, match="re-run the same command"):
        Zoo.open(zoo_dir)

    resumed = generate(cfg)
    assert resumed.n_trained == 8  # shards 1 and 2 only
    assert resumed.n_members == 12
    assert_same_zoo(reference.path, resumed.path)


def test_rerunning_a_finished_zoo_trains_nothing(make_cfg):
    cfg = make_cfg()
    first = generate(cfg)
    shards = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _files(first.path, "*")}
    again = generate(cfg)
    assert again.n_trained == 0 and again.n_members == 8
    for p, (data, mtime) in shards.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime


def test_other_config_at_the_same_path_needs_overwrite(make_cfg, tmp_path):
    path = "zoo.path=" + str(tmp_path / "shared-zoo")
    generate(make_cfg(path, "zoo.size=12"))  # 3 shards
    with pytest.raises(ZooError, match="different config") as err:
        generate(make_cfg(path, "zoo.seed=1"))
    assert "overwrite=true" in str(err.value)
    replaced = generate(make_cfg(path, "zoo.seed=1", "overwrite=true"))
    assert replaced.n_trained == 8
    fresh = generate(make_cfg("zoo.seed=1", root=tmp_path / "fresh"))
    assert_same_zoo(fresh.path, replaced.path)  # no shard of the old zoo is left


def test_folder_that_is_not_a_zoo_is_refused(make_cfg, tmp_path):
    target = tmp_path / "important"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ZooError, match="not a zoo"):
        generate(make_cfg(f"zoo.path={target}", "overwrite=true"))
    assert (target / "notes.txt").read_text() == "keep me"


def test_altered_kept_shard_is_refused_naming_the_file(make_cfg):
    cfg = make_cfg()
    path = generate(cfg).path
    table = path / "shards" / "shard-00001.parquet"
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="shard-00001.parquet"):
        generate(cfg)


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "override, option",
    [
        ("task.name=foo", "task.name"),
        ("model.widths=[10,5,10]", "model.widths"),
        ("model.hidden=[0]", "model.widths"),
        ("zoo.hparams.lr=-0.1", "zoo.hparams.lr"),
        ("zoo.hparams.optimizer=rmsprop", "zoo.hparams.optimizer"),
        ("+zoo.hparams.learning_rate=0.1", "zoo.hparams"),
        ("zoo.size=0", "zoo.size"),
        ("zoo.sampling=sobol", "zoo.sampling"),
        ("zoo.shard_size=0", "zoo.shard_size"),
        ("zoo.checkpoints=[-1]", "zoo.checkpoints"),
    ],
)
def test_bad_config_values_give_one_line_errors(make_cfg, tmp_path, override, option):
    with pytest.raises(ConfigError) as err:
        generate(make_cfg(override))
    msg = str(err.value)
    assert msg.startswith(option + ":") and "\n" not in msg
    if "learning_rate" in override:
        assert "learning_rate" in msg
    assert not (tmp_path / "zoos").exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="device"):
        generate(make_cfg("device=cuda"))


# --------------------------------------------------------------------------- CLI
def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


CONSOLE_SCRIPT = Path(sys.executable).with_name("weightspace-generate")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["script", "console"])
def test_cli_bad_value_exits_2_with_one_line(tmp_path, launcher):
    if launcher == "script":
        cmd = [sys.executable, str(SCRIPT)]
    else:
        if not CONSOLE_SCRIPT.exists():
            pytest.skip("package not installed with its console script")
        cmd = [str(CONSOLE_SCRIPT)]
    proc = subprocess.run(
        [*cmd, "zoo.hparams.lr=-1"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    line = _last_line(proc.stderr)
    assert line.startswith("error: zoo.hparams.lr")
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [line]  # no traceback
    assert not (tmp_path / "zoos").exists()


@pytest.mark.slow
def test_cli_refuses_an_altered_zoo_file(tmp_path, make_cfg):
    # Same config in-process and on the command line: the CLI run finds the finished zoo.
    path = generate(make_cfg(root=tmp_path)).path
    shard = path / "shards" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01
    shard.write_bytes(bytes(data))
    proc = run_cli(tmp_path, *cli_overrides())
    assert proc.returncode == 2, proc.stderr
    line = _last_line(proc.stderr)
    assert line.startswith("error: ") and "shard-00000.safetensors" in line
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_zoo(tmp_path):
    # 12 shards of 2 members, so the run is far from done when the first shard lands.
    args = cli_overrides(
        "zoo.size=24", "zoo.shard_size=2", "zoo.hparams.epochs=3", "model.hidden=[32]"
    )
    run_root = tmp_path / "run"
    run_root.mkdir()
    with open(run_root / "log.txt", "w") as log:  # the child keeps its own copy
        victim = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            env=cli_env(run_root),
            cwd=run_root,
            stdout=log,
            stderr=log,
        )
    # The uninterrupted run, made in-process (same config, same single thread) while the
    # command starts up.
    reference = generate(compose_cfg(tmp_path / "ref", *args))
    zoo_dir = run_root / "zoos" / "digits"
    first = zoo_dir / "shards" / "shard-00000.json"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert victim.poll() is None, (run_root / "log.txt").read_text()
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.001)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    done = len(_files(zoo_dir, "*.json"))
    assert 1 <= done < 12
    assert not (zoo_dir / MANIFEST).exists()

    resumed = run_cli(run_root, *args)
    assert resumed.returncode == 0, resumed.stderr
    trained = int(re.search(r"members: 24 \((\d+) trained now", resumed.stdout).group(1))
    assert trained == 24 - 2 * done
    assert_same_zoo(reference.path, zoo_dir)
    Zoo.open(zoo_dir).weights(3)  # every checksum holds


def test_progress_bars_update_rarely_in_a_log_file(capsys):
    from weightspace.cli import LOG_INTERVAL, progress_bar

    # Under pytest stderr is captured, not a terminal: a job's log file.
    with progress_bar(total=1000, desc="zoo test", unit="member") as bar:
        assert bar.mininterval == LOG_INTERVAL
        for _ in range(1000):
            bar.update()
    err = capsys.readouterr().err
    assert err.count("\r") <= 3 and "1000/1000" in err  # the start, the end, nothing between
