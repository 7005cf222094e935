"""Reading a zoo: the Zoo API, checkpoints, and refusing damaged files."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

import weightspace.zoo.files as files_module
from weightspace.errors import ZooError
from weightspace.nets.forward import MLP
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.files import atomic_write_bytes, sha256_file
from weightspace.zoo.init import init_member
from weightspace.zoo.population import DEFAULT_HPARAMS
from weightspace.zoo.store import MANIFEST, Zoo
from weightspace.zoo.writer import ZooWriter

N, EPOCHS, CHECKPOINTS = 12, 3, [0, 1, 3]


@pytest.fixture(scope="module")
def zoo(api_zoo_path):
    return Zoo.open(api_zoo_path)


# --------------------------------------------------------------------------- API
def test_open_reports_size_spec_and_epochs(zoo):
    assert len(zoo) == N
    assert zoo.spec == MLPSpec((64, 16, 10), "relu", bias=True, weight_norm=False)
    assert zoo.epochs == CHECKPOINTS
    assert zoo.manifest["n_shards"] == 3  # shards of 5, 5 and 2
    assert zoo.manifest["task"]["name"] == "digits"
    assert "members=12" in repr(zoo)


def test_members_table(zoo):
    m = zoo.members
    assert len(m) == N
    assert list(m["member_id"]) == list(range(N))
    expected = {*DEFAULT_HPARAMS, "member_id", "data_seed", "shard", "shard_row"}
    assert expected | {"diverged", "diverged_epoch"} == set(m.columns)
    assert list(m["lr"]) == [0.02, 0.1] * 6
    assert m["seed"].is_unique
    assert not m["diverged"].any() and (m["diverged_epoch"] == -1).all()
    assert sorted(m.groupby("shard").size()) == [2, 5, 5]


def test_metrics_table_has_one_row_per_member_and_checkpoint(zoo):
    m = zoo.metrics
    assert set(m.columns) >= {
        "member_id",
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "diverged",
    }
    assert len(m) == N * len(CHECKPOINTS)
    assert not m.duplicated(["member_id", "epoch"]).any()
    for _, rows in m.groupby("member_id"):
        assert sorted(rows["epoch"]) == CHECKPOINTS
    assert m["test_acc"].between(0, 1).all() and (m["test_loss"] > 0).all()


def test_checkpoints_start_at_initialization_and_improve(zoo):
    m = zoo.metrics
    first = m[m["epoch"] == 0].set_index("member_id")
    last = m[m["epoch"] == EPOCHS].set_index("member_id")
    # Digits has 10 classes: an untrained member is far from the trained ones.
    assert (first["test_acc"] < last["test_acc"]).all()
    assert (first["train_loss"] > last["train_loss"]).all()
    assert last["test_acc"].median() > 0.8
    # The stored epoch-0 weights are the initialization each member's seed gives.
    init = zoo.weights(0)
    for i, (_, row) in enumerate(zoo.members.iterrows()):
        for k, v in init_member(zoo.spec, row).items():
            assert torch.equal(init[k][i], v), (i, k)


def test_weights_shapes_and_order(zoo):
    full = zoo.weights(EPOCHS)
    assert set(full) == set(zoo.spec.param_shapes())
    for k, shape in zoo.spec.param_shapes().items():
        assert full[k].shape == (N, *shape) and full[k].dtype == torch.float32
    pick = [11, 0, 7, 3, 5, 4, 7]  # across all shards, unsorted, one repeated
    part = zoo.weights(EPOCHS, members=pick)
    for k in full:
        assert part[k].shape == (len(pick), *full[k].shape[1:])
        assert torch.equal(part[k], full[k][pick])
    # Different epochs hold different tensors; members differ from each other.
    assert not torch.equal(zoo.weights(1)["layers.0.weight"], full["layers.0.weight"])
    assert not torch.equal(full["layers.0.weight"][0], full["layers.0.weight"][1])
    assert zoo.weights(1, members=[])["layers.0.weight"].shape == (0, 16, 64)


def test_weights_match_the_shard_files(zoo):
    # Member 6 is row 1 of shard 1; the shard tensors are (members, checkpoints, ...).
    row = zoo.members.iloc[6]
    path = zoo.root / f"shards/shard-{int(row['shard']):05d}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        stored = f.get_tensor("layers.1.weight")
    assert json.loads(meta["member_ids"])[int(row["shard_row"])] == 6
    assert json.loads(meta["epochs"]) == CHECKPOINTS
    e = CHECKPOINTS.index(1)
    assert torch.equal(zoo.weights(1, [6])["layers.1.weight"][0], stored[int(row["shard_row"]), e])


def test_weights_bad_requests(zoo):
    with pytest.raises(IndexError):
        zoo.weights(0, members=[N])
    with pytest.raises(IndexError):
        zoo.weights(0, members=[-1])
    with pytest.raises(ZooError, match="epoch 2") as err:
        zoo.weights(2, members=[0])
    assert "shard-00000.safetensors" in str(err.value)


@pytest.mark.parametrize("member", [0, 5, 11])
def test_module_reproduces_the_stored_metrics(zoo, member):
    task = zoo.task()
    metrics = zoo.metrics.set_index(["member_id", "epoch"])
    for epoch in CHECKPOINTS:
        net = zoo.module(member, epoch)
        assert isinstance(net, MLP) and not net.training
        with torch.no_grad():
            out = net(task.x_test)
        row = metrics.loc[(member, epoch)]
        assert (out.argmax(1) == task.y_test).float().mean().item() == row["test_acc"]
        loss = torch.nn.functional.cross_entropy(out, task.y_test).item()
        assert loss == pytest.approx(row["test_loss"], rel=1e-5)
    # The default is the member's last checkpoint.
    last = zoo.module(member)
    for k, v in last.state_dict().items():
        assert torch.equal(v, zoo.state_dict(member, EPOCHS)[k])


def test_task_is_the_generation_task(zoo, digits):
    task = zoo.task()
    assert torch.equal(task.x_test, digits.x_test) and torch.equal(task.y_test, digits.y_test)
    assert zoo.config["zoo"]["size"] == N


# --------------------------------------------------------------------------- damage
def test_truncated_shard_is_refused_naming_the_file(zoo_copy):
    shard = zoo_copy / "shards" / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ZooError, match="shard-00001.safetensors") as err:
        Zoo.open(zoo_copy)
    assert "truncated" in str(err.value) and "\n" not in str(err.value)


def _flip_byte(path, offset_from_end=10):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_altered_shard_is_refused_on_read_naming_the_file(zoo_copy):
    shard = zoo_copy / "shards" / "shard-00001.safetensors"
    size = shard.stat().st_size
    _flip_byte(shard)
    assert shard.stat().st_size == size
    zoo = Zoo.open(zoo_copy)  # sizes still match; the checksum is checked on first read
    zoo.weights(1, members=[0, 1])  # members of shard 0 only: fine
    with pytest.raises(ZooError, match="shard-00001.safetensors") as err:
        zoo.weights(1, members=[6])
    assert "sha256" in str(err.value)
    # Without verification the altered bytes are read as they are.
    Zoo.open(zoo_copy, verify=False).weights(1, members=[6])


def test_altered_table_is_refused_naming_the_file(zoo_copy):
    _flip_byte(zoo_copy / "metrics.parquet", offset_from_end=200)
    zoo = Zoo.open(zoo_copy)
    with pytest.raises(ZooError, match="metrics.parquet"):
        _ = zoo.metrics


def test_missing_files_and_manifest_problems(zoo_copy):
    (zoo_copy / "shards" / "shard-00002.safetensors").unlink()
    with pytest.raises(ZooError, match="shard-00002.safetensors: missing"):
        Zoo.open(zoo_copy)

    manifest = zoo_copy / MANIFEST
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(ZooError, match="schema version 99"):
        Zoo.open(zoo_copy)

    manifest.write_text("{not json")
    with pytest.raises(ZooError, match="manifest.json: not valid JSON"):
        Zoo.open(zoo_copy)

    manifest.unlink()
    with pytest.raises(ZooError, match="re-run the same command to resume"):
        Zoo.open(zoo_copy)


def test_open_without_a_zoo(tmp_path):
    with pytest.raises(ZooError, match="no zoo here"):
        Zoo.open(tmp_path)


def test_manifest_checksums_match_the_files(zoo):
    for rel, meta in zoo.manifest["files"].items():
        path = zoo.root / rel
        assert path.stat().st_size == meta["bytes"]
        assert sha256_file(path) == meta["sha256"]
    names = set(zoo.manifest["files"])
    assert {"members.parquet", "metrics.parquet", "config.yaml"} <= names
    assert sum(n.endswith(".safetensors") for n in names) == zoo.manifest["n_shards"]


# --------------------------------------------------------------------------- writing
def test_atomic_write_leaves_old_file_or_new_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"old")
    assert target.read_bytes() == b"old"

    def fail(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(files_module.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["file.bin"]  # no temporary left behind


def test_zoo_weights_load_into_weight_norm_module(tmp_path, make_cfg):
    # Weight-normalized zoos store g and v next to the effective weight.
    from weightspace.zoo.generate import generate

    path = generate(make_cfg("model.weight_norm=true", "zoo.size=3")).path
    zoo = Zoo.open(path)
    assert zoo.spec.weight_norm
    w = zoo.weights(2, trainable=True)
    g, v = w["layers.0.weight_g"], w["layers.0.weight_v"]
    assert g.shape == (3, 16) and v.shape == (3, 16, 64)
    expected = v * (g / v.norm(dim=-1)).unsqueeze(-1)
    torch.testing.assert_close(w["layers.0.weight"], expected)
    assert set(zoo.weights(2)) == set(MLPSpec((64, 16, 10)).param_shapes())
    net = zoo.module(1)  # a plain module with the effective weights
    with torch.no_grad():
        acc = (net(zoo.task().x_test).argmax(1) == zoo.task().y_test).float().mean().item()
    final = zoo.metrics.set_index(["member_id", "epoch"]).loc[(1, 2), "test_acc"]
    assert acc == final
    assert np.isfinite(zoo.metrics["test_loss"]).all()


def test_jobs_starting_one_zoo_side_by_side_all_get_in(tmp_path):
    """Sharded generation starts several jobs on one new zoo folder at once: none of them may
    find it half made (without its fingerprint); a different config is still refused."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "zoos" / "digits"

    def start(_):
        return ZooWriter(root, "a: 1\n", "abc", overwrite=False).root

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(start, range(32))) == [root] * 32
    assert (root / "fingerprint.txt").read_text() == "abc\n"
    assert [p.name for p in tmp_path.joinpath("zoos").iterdir()] == ["digits"]  # no leftovers
    with pytest.raises(ZooError, match="different config"):
        ZooWriter(root, "a: 2\n", "xyz", overwrite=False)
