"""The mixed datamodule: zoos of three architectures (widths and depths) of one task, served
as batches that are each of one architecture, tagged with ``batch["arch"]``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import yaml
from conftest import compose_cfg
from helpers import quiet_trainer

from weightspace.data.datamodule import WeightDataModule
from weightspace.data.mixed import MixedDataModule, MixedLoader
from weightspace.errors import ConfigError
from weightspace.zoo.generate import generate

# Four digits zoos of three architectures; the first and third share one (a part of two zoos).
ZOOS = {
    "a": ("model.hidden=[16]", "zoo.size=8"),
    "b": ("model.hidden=[12,8]", "zoo.size=6"),
    "a2": ("model.hidden=[16]", "zoo.size=6", "zoo.seed=1"),
    "c": ("model.hidden=[8,8,8]", "zoo.size=10"),
}
NAMES = ["64-16-10", "64-12-8-10", "64-8-8-8-10"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_arch")
    return [str(generate(compose_cfg(root / k, *o)).path) for k, o in ZOOS.items()]


@pytest.fixture(scope="module")
def dm(paths):
    dm = MixedDataModule(paths, batch_size=3, seed=0)
    dm.setup("fit")
    return dm


def keys(batch) -> list[tuple[int, int, int, int]]:
    """(arch, zoo_index, member_id, epoch) of each item of a batch."""
    cols = zip(batch["zoo_index"].tolist(), batch["member_id"].tolist(), batch["epoch"].tolist())
    return [(batch["arch"], z, m, e) for z, m, e in cols]


def assert_same_batch(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_batch(a[k], b[k])
        elif isinstance(a[k], int):
            assert a[k] == b[k], k
        else:
            assert torch.equal(a[k], b[k]), k


def epoch_batches(loader: MixedLoader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_parts_are_the_architectures_in_order_of_first_appearance(dm, paths):
    assert dm.names == NAMES and len(dm.parts) == 3
    assert [s.widths for s in dm.specs] == [(64, 16, 10), (64, 12, 8, 10), (64, 8, 8, 8, 10)]
    assert [p.zoo_paths for p in dm.parts] == [[paths[0], paths[2]], [paths[1]], [paths[3]]]
    assert [len(p.full_dataset.zoos) for p in dm.parts] == [2, 1, 1]
    assert dm.task.name == "digits"
    parts = dm.parts
    dm.setup("test")  # idempotent
    assert dm.parts is parts
    # Hyperparameters are plain values, those of a WeightDataModule with the same options.
    hp = yaml.safe_load(yaml.safe_dump(dict(dm.hparams)))
    assert hp == dict(WeightDataModule(paths, batch_size=3, seed=0).hparams)
    assert hp["zoo_paths"] == paths and hp["batch_size"] == 3


def test_train_batches_are_each_of_one_architecture_and_cover_every_member_once(dm):
    loader = dm.train_dataloader()
    batches = epoch_batches(loader, 0)
    assert len(loader) == len(batches) == sum(len(p.train_dataloader()) for p in dm.parts)
    seen = Counter()
    for batch in batches:
        k = batch["arch"]
        assert type(k) is int and batch["weights"].shape[1] == dm.parts[k].n_params
        seen.update(keys(batch))
    expected = Counter()
    for k, part in enumerate(dm.parts):
        items = part.dataset("train").items
        cols = zip(items.zoo_index, items.member_id, items.epoch)
        expected.update((k, z, m, e) for z, m, e in cols)
    assert seen == expected and max(seen.values()) == 1
    # All three architectures are interleaved (not part after part).
    arch = [b["arch"] for b in batches]
    assert arch != sorted(arch) and set(arch) == {0, 1, 2}
    # Each part's batches are exactly what its own loader yields at that epoch.
    for k, part in enumerate(dm.parts):
        own = part.train_dataloader()
        own.sampler.set_epoch(0)
        mine = [b for b in batches if b["arch"] == k]
        assert len(mine) == len(own)
        for a, b in zip(mine, own):
            assert_same_batch({**b, "arch": k}, a)


def test_same_seed_and_epoch_same_order_another_epoch_another_order(dm, paths):
    def order(loader, epoch):
        return [keys(b) for b in epoch_batches(loader, epoch)]

    loader = dm.train_dataloader()
    first = order(loader, 0)
    again = MixedDataModule(paths, batch_size=3, seed=0)
    again.setup()
    assert order(again.train_dataloader(), 0) == first == order(loader, 0)
    later = order(loader, 1)
    assert later != first and sorted(later) != sorted(first)  # batches themselves reshuffled
    assert sorted(sum(later, [])) == sorted(sum(first, []))  # the same items
    assert [b[0][0] for b in later] != [b[0][0] for b in first]  # another interleaving
    # set_epoch reaches every part's sampler (per-part shuffles and augmentations).
    assert all(dl.sampler.epoch == 1 for dl in loader.loaders)
    assert all(dl.sampler.dataset.aug_epoch == 1 for dl in loader.loaders)


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_come_part_by_part_unshuffled(dm, split):
    loader = getattr(dm, f"{split}_dataloader")()
    own_loaders = [getattr(p, f"{split}_dataloader")() for p in dm.parts]
    batches = epoch_batches(loader, 0)
    own = [dict(b, arch=k) for k, dl in enumerate(own_loaders) for b in dl]
    assert [b["arch"] for b in batches] == [k for k, dl in enumerate(own_loaders) for _ in dl]
    assert len(own) == len(batches) == len(loader)
    for a, b in zip(batches, own):
        assert_same_batch(a, b)
    assert [keys(b) for b in epoch_batches(loader, 5)] == [keys(b) for b in batches]


def test_one_architecture_is_one_part(paths):
    dm = MixedDataModule(paths[0], batch_size=4, epochs=[1])
    dm.setup()
    assert dm.names == ["64-16-10"] and len(dm.parts) == 1
    batches = epoch_batches(dm.train_dataloader(), 2)
    own = dm.parts[0].train_dataloader()
    own.sampler.set_epoch(2)
    assert [b["arch"] for b in batches] == [0] * len(own)
    for a, b in zip(batches, own):
        assert_same_batch(a, dict(b, arch=0))


def test_zoos_of_different_tasks_are_refused_naming_both(paths, tmp_path):
    blobs = str(generate(compose_cfg(tmp_path, "task=blobs", "zoo.size=2")).path)
    dm = MixedDataModule([paths[0], paths[1], blobs], batch_size=3)
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("zoo: ")
    assert f"{paths[0]} (digits, 64 -> 10) and {blobs} (blobs, 2 -> 3)" in msg
    assert "cannot be read by one model" in msg and not dm.parts
    with pytest.raises(ConfigError, match="data.batchsize: unknown option"):
        MixedDataModule(paths, batchsize=3)


def test_state_dict_round_trip_restores_each_parts_normalizer(dm, paths):
    state = json.loads(json.dumps(dm.state_dict()))
    assert len(state["parts"]) == 3
    own = [p.normalizer for p in dm.parts]
    # Another seed splits (and so fits) differently: the restored state must win.
    other = MixedDataModule(paths, batch_size=3, seed=1)
    other.setup()
    assert all(a != b for a, b in zip(own, (p.normalizer for p in other.parts)))
    # Restored before setup (applied as the parts are built, not refitted) ...
    before = MixedDataModule(paths, batch_size=3, seed=1)
    before.load_state_dict(state)
    assert before.state_dict() == state
    before.setup()
    assert [p.normalizer for p in before.parts] == own
    # ... and after setup (as Lightning restores a checkpoint), down to the split datasets.
    other.load_state_dict(state)
    assert [p.normalizer for p in other.parts] == own
    assert [p.dataset("train").normalizer for p in other.parts] == own
    with pytest.raises(ConfigError, match="restored datamodule state has 2"):
        other.load_state_dict({"parts": state["parts"][:2]})


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_a_lightning_fit_sees_a_new_order_each_epoch_and_on_resume(dm, paths, tmp_path):
    import pytorch_lightning as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple[int, list]] = []

        def training_step(self, batch, _):
            self.seen.append((self.current_epoch, keys(batch)))
            return (self.w * batch["weights"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    model = Recorder()
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=MixedDataModule(paths, batch_size=3, seed=0))
    epochs = [[b for e, b in model.seen if e == epoch] for epoch in (0, 1)]
    # Each epoch is the loader's order at that epoch: Lightning's set_epoch reached it.
    loader = dm.train_dataloader()
    for epoch, seen in enumerate(epochs):
        assert seen == [keys(b) for b in epoch_batches(loader, epoch)]
    assert epochs[0] != epochs[1]
    assert [b[0][0] for b in epochs[0]] != [b[0][0] for b in epochs[1]]
    assert sorted(sum(epochs[0], [])) == sorted(sum(epochs[1], []))
    # Resumed after epoch 0, the run sees epoch 1's order, with the saved normalizers.
    first = quiet_trainer(max_epochs=1, limit_val_batches=0, default_root_dir=tmp_path)
    first.fit(Recorder(), datamodule=MixedDataModule(paths, batch_size=3, seed=0))
    first.save_checkpoint(tmp_path / "e0.ckpt")
    resumed, data = Recorder(), MixedDataModule(paths, batch_size=3, seed=1)
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(resumed, datamodule=data, ckpt_path=tmp_path / "e0.ckpt")
    assert [p.normalizer for p in data.parts] == [p.normalizer for p in dm.parts]
    # (seed 1: another split, yet the normalizers fitted under seed 0 come back)
    assert resumed.seen == [(1, keys(b)) for b in epoch_batches(data.train_dataloader(), 1)]
