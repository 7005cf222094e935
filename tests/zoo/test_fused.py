"""The fused CPU trainer: its layout, padding, shuffle, errors and the fallback to torch.

(Its numbers against the torch path's: ``tests/nets/test_parity.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from populations import fused_population

from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.init import init_population
from weightspace.zoo.population import sample_population
from weightspace.zoo.train import fused
from weightspace.zoo.train.data_order import member_epoch_order, member_subset, shuffled
from weightspace.zoo.train.loop import choose_trainer, train_population


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine where the kernel cannot be built (and no cached build to fall back on)."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    fused.library.cache_clear()
    yield
    fused.library.cache_clear()


def test_layout_round_trip_and_padding():
    spec = MLPSpec((5, 20, 3))
    members, pop = fused_population(spec, 3)
    init = init_population(spec, members)
    (i0, o0, p0, w0, b0), (i1, o1, p1, w1, b1) = pop.layout.layers
    assert (p0, p1) == (32, 16)  # outputs padded to a multiple of 16
    assert pop.layout.size == 5 * 32 + 32 + 20 * 16 + 16
    back = pop.tensors()
    assert back.keys() == init.keys()
    for k in init:
        assert torch.equal(back[k], init[k]), k


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_padding_stays_zero_through_training(digits, optimizer):
    """Padded weights and biases get no gradient, so no optimizer ever moves them."""
    spec = MLPSpec((64, 20, 10), "sigmoid")  # sigmoid(0) = 0.5: padded units are not 0
    members, pop = fused_population(spec, 4, optimizer)
    start = pop.params.clone()
    order = torch.stack([torch.from_numpy(member_epoch_order(s, 1437, 1.0, 1)) for s in range(4)])
    x, y = digits.x_train, digits.y_train
    pop.epoch(x, y, order, 32, 0, slice(0, 4))
    mask = torch.ones(pop.layout.size, dtype=torch.bool)
    for i, o, op, w, b in pop.layout.layers:
        mask[w : w + i * op].view(i, op)[:, :o] = False
        mask[b : b + o] = False
    assert pop.active.all()
    assert (pop.params[:, mask] == 0).all()
    assert (pop.params[:, ~mask] != start[:, ~mask]).float().mean() > 0.9  # the rest trained


def test_kernel_shuffles_as_the_reference():
    """The kernel's in-place data order is zoo.train.data_order.shuffled, number for number."""
    seeds = np.array([0, 1, 7, -3, 2**62 + 5, 7], dtype=np.int64)
    subsets = np.stack([member_subset(i, 300, 0.4) for i in range(len(seeds))])
    for base in (subsets, np.arange(300)[None]):
        for epoch in (1, 2, 50):
            got = fused.shuffle(torch.from_numpy(base), torch.from_numpy(seeds), epoch).numpy()
            np.testing.assert_array_equal(got, shuffled(base, seeds, epoch))
    # members with the same seed and examples get the same order, each epoch a new one
    assert np.array_equal(got[2], got[5]) and not np.array_equal(got[1], got[2])
    assert not np.array_equal(got[0], fused.shuffle(torch.arange(300)[None], torch.zeros(1), 49)[0])


def test_kernel_trains_on_its_own_shuffle(digits):
    """Shuffling in the kernel trains exactly as passing the shuffled orders in."""
    spec = MLPSpec((64, 12, 10))
    seeds = torch.arange(4) * 11
    base = torch.arange(len(digits.x_train))[None]
    _, a = fused_population(spec, 4)
    _, b = fused_population(spec, 4)
    x, y = digits.x_train, digits.y_train
    for epoch in (1, 2):
        t0 = (epoch - 1) * 45
        a.epoch(x, y, base, 32, t0, slice(0, 4), seeds, epoch)
        order = torch.from_numpy(shuffled(base.numpy(), seeds.numpy(), epoch))
        b.epoch(x, y, order, 32, t0, slice(0, 4))
    assert torch.equal(a.params, b.params)


def test_bad_indices_are_refused(digits):
    spec = MLPSpec((64, 8, 10))
    _, pop = fused_population(spec, 2)
    bad_order = torch.full((2, 32), len(digits.x_train))
    with pytest.raises(IndexError, match="row index outside"):
        pop.epoch(digits.x_train, digits.y_train, bad_order, 32, 0, slice(0, 2))
    bad_labels = torch.full_like(digits.y_train, 10)
    order = torch.arange(32).expand(2, 32)
    with pytest.raises(IndexError, match="class index"):
        pop.epoch(digits.x_train, bad_labels, order, 32, 0, slice(0, 2))


def test_choose_trainer():
    assert choose_trainer(MLPSpec((4, 8, 2)), "cpu") == "fused"
    assert choose_trainer(MLPSpec((4, 8, 2)), "cpu", "hand") == "hand"
    wn = MLPSpec((4, 8, 2), weight_norm=True)
    assert choose_trainer(wn, "cpu") == "autograd"
    with pytest.raises(ConfigError, match="trainer: 'fused' cannot run here: weight norm"):
        choose_trainer(wn, "cpu", "fused")
    with pytest.raises(ConfigError, match="trainer: 'hand' does not cover weight norm"):
        choose_trainer(wn, "cpu", "hand")
    with pytest.raises(ConfigError, match="CPU only"):
        choose_trainer(MLPSpec((4, 8, 2)), "meta", "fused")


def test_without_a_compiler_auto_falls_back_to_torch(digits, no_compiler):
    spec = MLPSpec((64, 8, 10))
    with pytest.raises(ConfigError, match="trainer: 'fused' cannot run here: .*CXX"):
        choose_trainer(spec, "cpu", "fused")
    members = sample_population({"epochs": 1}, 2)
    with pytest.warns(RuntimeWarning, match="fused trainer unavailable"):
        result = train_population(digits, spec, members, [1])
    assert result.trainer == "hand"
    assert (result.metrics["train_acc"][result.metrics["epoch"] == 1] > 0.5).all()


def test_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path))
    fused.library.cache_clear()
    try:
        fused.library()
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"
        stamp = built[0].stat().st_mtime_ns
        fused.library.cache_clear()
        fused.library()  # a new process would find it: no rebuild
        assert [p.stat().st_mtime_ns for p in (tmp_path / "kernels").iterdir()] == [stamp]
    finally:
        fused.library.cache_clear()
