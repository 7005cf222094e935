"""Several zoos opened as one collection: global indices, tables, weights, no copies."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError, ZooError
from weightspace.zoo.collection import ZooCollection
from weightspace.zoo.generate import generate
from weightspace.zoo.store import Zoo


@pytest.fixture(scope="module")
def two_zoos(tmp_path_factory, api_zoo_path):
    """The 12-member API zoo and an 8-member tanh zoo of the same widths."""
    root = tmp_path_factory.mktemp("collection")
    tanh = generate(
        compose_cfg(root, "zoo.name=tanh", "zoo.hparams.activation=tanh", "zoo.seed=1")
    ).path
    return api_zoo_path, tanh


def test_members_are_numbered_zoo_after_zoo(two_zoos):
    zoos = ZooCollection.open(two_zoos)
    a, b = (Zoo.open(p) for p in two_zoos)
    assert len(zoos) == len(a) + len(b) == 20
    assert zoos.locate(0) == (0, 0)
    assert zoos.locate([11, 12, 19]) == [(0, 11), (1, 0), (1, 7)]
    assert zoos.global_index(1, 3) == 15
    with pytest.raises(IndexError):
        zoos.locate(20)
    assert zoos.member_spec(3).activation == "relu" and zoos.member_spec(13).activation == "tanh"
    assert zoos.epochs == sorted(set(a.epochs) & set(b.epochs))
    assert "20 members" in repr(zoos)


def test_tables_gain_zoo_and_global_index_columns(two_zoos):
    zoos = ZooCollection.open(two_zoos)
    m = zoos.members
    assert list(m.columns[:3]) == ["zoo", "zoo_index", "index"]
    assert list(m["index"]) == list(range(20))
    assert list(m["zoo"]) == [two_zoos[0].name] * 12 + [two_zoos[1].name] * 8
    assert list(m["member_id"]) == list(range(12)) + list(range(8))
    assert set(m.loc[m["zoo_index"] == 1, "activation"]) == {"tanh"}
    met = zoos.metrics
    b = Zoo.open(two_zoos[1]).metrics
    own = met[met["zoo_index"] == 1].drop(columns=["zoo", "zoo_index", "index"])
    assert own.reset_index(drop=True).equals(b)
    assert (met.loc[met["zoo_index"] == 1, "index"] == b["member_id"].to_numpy() + 12).all()


def test_weights_come_from_each_zoo_in_the_order_asked(two_zoos):
    zoos = ZooCollection.open(two_zoos)
    a, b = (Zoo.open(p) for p in two_zoos)
    got = zoos.weights(1, [14, 2, 19, 0])
    wa, wb = a.weights(1, [2, 0]), b.weights(1, [2, 7])
    for name, value in got.items():
        assert value.shape[0] == 4
        expected = torch.stack([wb[name][0], wa[name][0], wb[name][1], wa[name][1]])
        assert torch.equal(value, expected), name
    every = zoos.weights(0)
    assert every["layers.0.weight"].shape[0] == 20
    assert torch.equal(every["layers.0.weight"][12:], b.weights(0)["layers.0.weight"])
    assert zoos.weights(0, [])["layers.0.weight"].shape[0] == 0
    sd = zoos.state_dict(13, 1)
    assert torch.equal(sd["layers.1.bias"], b.state_dict(1, 1)["layers.1.bias"])
    net = zoos.module(13)
    assert isinstance(net.act, torch.nn.Tanh)


def test_nothing_is_copied(two_zoos):
    before = {p: sorted(f.name for f in p.rglob("*")) for p in two_zoos}
    zoos = ZooCollection.open(two_zoos)
    zoos.weights(1)
    assert zoos.paths == [str(p) for p in two_zoos]
    assert {p: sorted(f.name for f in p.rglob("*")) for p in two_zoos} == before


def test_glob_patterns_open_every_match(two_zoos, tmp_path):
    zoos = ZooCollection.open(str(two_zoos[1].parent / "t*"))
    assert zoos.paths == [str(two_zoos[1])]
    with pytest.raises(ConfigError, match="no folder matches"):
        ZooCollection.open(str(tmp_path / "none-*"))


def test_a_datamodule_trains_on_all_zoos_of_a_collection(two_zoos):
    zoos = ZooCollection.open(two_zoos)
    dm = WeightDataModule(zoos.paths, batch_size=64, seed=0)
    dm.setup()
    seen = {z for split in dm.splits.values() for z, _ in split}
    assert seen == {0, 1}
    assert sum(len(s) for s in dm.splits.values()) == len(zoos)


def test_incompatible_unfinished_or_repeated_zoos_are_refused(two_zoos, tmp_path):
    wide = generate(compose_cfg(tmp_path, "zoo.name=wide", "model.hidden=[8]")).path
    with pytest.raises(ZooError, match=r"widths \[64, 8, 10\]"):
        ZooCollection.open([two_zoos[0], wide])
    part = generate(compose_cfg(tmp_path, "zoo.name=part", "zoo.shard=0", "zoo.num_shards=2"))
    with pytest.raises(ZooError, match=r"1 of 2 shards missing \(1\)"):
        ZooCollection.open([two_zoos[0], part.path])
    with pytest.raises(ConfigError, match="given twice"):
        ZooCollection.open([two_zoos[0], two_zoos[0]])
    with pytest.raises(ConfigError, match="no zoo given"):
        ZooCollection([])
