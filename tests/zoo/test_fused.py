"""The fused CPU trainer: its layout, padding, shuffle, errors and the fallback to torch.

(Its numbers against the torch path's: ``tests/nets/test_parity.py``.)
"""

from __future__ import annotations

import hashlib
import platform

import numpy as np
import pytest
import torch
from populations import fused_population

from weightspace.errors import ConfigError
from weightspace.nets.spec import ACTIVATIONS, MLPSpec
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


# --------------------------------------------------------------------------- activations
def _ulp(t: torch.Tensor) -> torch.Tensor:
    t = t.abs().clamp_min(torch.finfo(torch.float32).tiny)
    return torch.nextafter(t, torch.tensor(float("inf"))) - t


# name, torch's function, and the kernel's largest error against it (value, derivative) in
# units of 2^-24 max(1, |z|) on the grids below. Measured: tanh 1.0 / 2.0, gelu 6.9 / 5.0,
# sigmoid 2.0 / 1.0, sine 1.0 / 1.0; against float64 all are under 3 (gelu's excess is torch's
# own: its CPU erf is an approximation accurate to 1.5e-7, ours to about 1 ulp).
KERNEL_ACTIVATIONS = [
    ("tanh", torch.tanh, 2, 2),
    ("gelu", torch.nn.functional.gelu, 8, 6),
    ("sigmoid", torch.sigmoid, 2, 2),
    ("sine", torch.sin, 2, 2),
]


@pytest.mark.parametrize(("name", "fn", "tol", "grad_tol"), KERNEL_ACTIVATIONS)
def test_vectorized_activations_match_torch_on_dense_grids(name, fn, tol, grad_tol):
    """The kernel's tanh, gelu, sigmoid and sine and their derivatives, against torch's
    forward and autograd on 4M evenly spaced points in [-20, 20] and 400k magnitudes from 1e-30
    to 1e4 (sine: |z| <= 1e4, its reduction's range), both signs."""
    mag = torch.logspace(-30, 4, 200_001)
    z = torch.cat([torch.linspace(-20, 20, 4_000_001), mag, -mag])
    a, d = fused.activation(name, z, grad=True)
    zg = z.clone().requires_grad_()
    ref = fn(zg)
    (ref_grad,) = torch.autograd.grad(ref.sum(), zg)
    scale = 2.0**-24 * z.abs().clamp_min(1)
    assert ((a - ref.detach()).abs() / scale).max() <= tol
    assert ((d - ref_grad).abs() / scale).max() <= grad_tol
    # relative accuracy where the value is small: near 0 for the odd ones, sigmoid's tails
    near = z.abs() <= 0.5 if name != "sigmoid" else z.abs() <= 20
    got, want = a[near], ref.detach()[near]
    assert ((got - want).abs() / _ulp(torch.maximum(got.abs(), want.abs()))).max() <= 3


def test_vectorized_activations_special_values():
    z = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, 100.0, -100.0])
    nan = torch.tensor(float("nan"))
    expected = {
        "tanh": [nan, 1, -1, 0, 0, 1e-30, 1, -1],
        "sigmoid": [nan, 1, 0, 0.5, 0.5, 0.5, 1, 0],
        "gelu": [nan, float("inf"), nan, 0, 0, 5e-31, 100, 0],
        "sine": [nan, nan, nan, 0, 0, 1e-30, np.sin(100.0), -np.sin(100.0)],
    }
    for name, want in expected.items():
        got = fused.activation(name, z)
        want = torch.tensor([float(w) for w in want])
        # (exp saturates at 2^-126: sigmoid(-inf) is 4e-39, not 0)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-38, equal_nan=True, msg=name)
    # NaN in, NaN out for the derivatives too: a diverged member stays diverged
    for name in expected:
        assert fused.activation(name, z[:1], grad=True)[1].isnan().all(), name


@pytest.mark.parametrize("activation", [a for a in fused.ACT_CODES if a in ACTIVATIONS])
def test_fused_trains_as_autograd_for_every_activation(digits, sine, activation):
    """Every activation of the kernel against the autograd trainer: SGD and Adam,
    classification and regression, with and without biases."""
    # (lr small enough that rounding differences stay small: at 0.05, sine's hand and
    # autograd trainers already differ by 8e-5)
    hp = {"activation": activation, "lr": [0.01, 0.03], "momentum": 0.9, "epochs": 2}
    hp |= {"weight_decay": [0.0, 1e-3], "batch_size": 50}
    cases = [
        (digits, MLPSpec((64, 12, 10)), hp),
        (digits, MLPSpec((64, 6, 5, 10), bias=False), {**hp, "optimizer": "adam", "lr": 0.01}),
        (sine, MLPSpec((1, 8, 1)), hp),
    ]
    for task, spec, h in cases:
        members = sample_population(h, 4, seed=3)
        auto = train_population(task, spec, members, [1, 2], trainer="autograd")
        ours = train_population(task, spec, members, [1, 2], trainer="fused")
        for k in auto.weights:
            torch.testing.assert_close(ours.weights[k], auto.weights[k], rtol=1e-4, atol=1e-5)
        for col in ("train_loss", "test_loss", "train_acc", "test_acc"):
            np.testing.assert_allclose(ours.metrics[col], auto.metrics[col], rtol=1e-4, atol=1e-5)


# sha256 of the weights and metrics of the populations below, trained by the kernel as it was
# before its nonlinearities were vectorized (commit 39c9aaa); recorded on x86-64 with FMA and
# AVX-512, g++ 12. Other CPUs or compilers may round differently (FMA contraction, libm).
BEFORE_VECTORIZING = {
    "relu": "1da614de7f4b5f3070c6f86b3f3c15d05a4ef8fe7f2156b44ae792e4abb77dae",
    "leaky_relu": "d80322a486b34eded3117fcb05d063d85e5f9a45d0b754598be578eff29b8c00",
}


def _recorded_machine() -> bool:
    flags = fused._cpu_features().split()
    try:
        version = fused.subprocess.run(
            [fused._compiler(), "--version"], capture_output=True, text=True
        ).stdout
    except (OSError, fused.FusedUnavailable):
        return False
    return (
        platform.machine() == "x86_64"
        and {"fma", "avx512f"} <= set(flags)
        and (" 12." in version.splitlines()[0])
    )


@pytest.mark.skipif(not _recorded_machine(), reason="hashes recorded on x86-64 FMA AVX-512 g++ 12")
@pytest.mark.parametrize("activation", list(BEFORE_VECTORIZING))
def test_relu_trains_to_the_same_bits_as_before(digits, sine, activation):
    """The demo's activation (and leaky relu) take the kernel's old code path, bit for bit."""
    h = hashlib.sha256()
    hp = {"activation": activation, "lr": [0.02, 0.05], "momentum": 0.9, "epochs": 2}
    hp |= {"weight_decay": [0.0, 1e-3], "data_order": ["per_member", "shared"], "batch_size": 32}
    adam = {**hp, "optimizer": "adam", "lr": 0.01}
    cases = [
        (digits, MLPSpec((64, 16, 10), activation), hp),
        (digits, MLPSpec((64, 12, 9, 10), activation, False), adam),
        (sine, MLPSpec((1, 8, 1), activation), hp),
    ]
    for task, spec, h_ in cases:
        members = sample_population(h_, 6, seed=3)
        r = train_population(task, spec, members, [0, 1, 2], trainer="fused")
        for k in sorted(r.weights):
            h.update(r.weights[k].contiguous().numpy().tobytes())
        for c in r.metrics.columns:
            h.update(str(list(r.metrics[c])).encode())
    assert h.hexdigest() == BEFORE_VECTORIZING[activation]
