"""INR zoos in the data stage: split by signal, the fit's PSNR and the signal's class as targets."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_cfg
from helpers import TINY_INR

from weightspace.data.datamodule import WeightDataModule, split_members
from weightspace.data.dataset import WeightDataset
from weightspace.zoo.generate import generate
from weightspace.zoo.store import Zoo


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory) -> Zoo:
    root = tmp_path_factory.mktemp("inr_data")
    return Zoo.open(generate(compose_cfg(root, *TINY_INR, tiny=False)).path)


def test_members_are_split_by_signal_never_a_signal_in_two_splits(inr_zoo):
    ds = WeightDataset(inr_zoo)
    signal = inr_zoo.members["signal"].to_numpy()
    for seed in range(3):
        parts = split_members(ds, (0.5, 0.25, 0.25), seed)
        seen = [{int(signal[m]) for _, m in part} for part in parts]
        assert all(seen), seen  # every split holds a signal
        assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), seen
        # ... and with it every fit of that signal: 3 members per signal
        assert [len(p) for p in parts] == [3 * len(s) for s in seen]
        assert sorted(k for p in parts for k in p) == sorted(ds.member_keys())
    assert split_members(ds, (0.5, 0.25, 0.25), 1) == split_members(ds, (0.5, 0.25, 0.25), 1)


def test_inr_targets_are_the_fit_psnr_and_the_signal_class(inr_zoo):
    ds = WeightDataset(inr_zoo, epochs="last")
    assert "psnr" in ds.target_names and "signal_class" in ds.categories
    items = ds.items
    met = inr_zoo.metrics.set_index(["member_id", "epoch"])["psnr"]
    expect = [met[(m, e)] for m, e in zip(items["member_id"], items["epoch"])]
    np.testing.assert_allclose(items["psnr"], expect, rtol=1e-6)
    names = ds.categories["signal_class"]
    classes = inr_zoo.members["signal_class"].to_numpy()[items["member_id"]]
    assert [names[c] for c in items["signal_class"]] == [str(c) for c in classes]


def test_datamodule_on_an_inr_zoo_keeps_signals_apart(inr_zoo):
    dm = WeightDataModule(inr_zoo.root, fractions=(0.5, 0.25, 0.25), batch_size=4)
    dm.setup()
    signal = inr_zoo.members["signal"].to_numpy()
    by_split = {k: {int(signal[m]) for _, m in v} for k, v in dm.splits.items()}
    assert not by_split["train"] & by_split["test"] and not by_split["train"] & by_split["val"]
    batch = next(iter(dm.train_dataloader()))
    assert "psnr" in batch["targets"] and "signal_class" in batch["targets"]
