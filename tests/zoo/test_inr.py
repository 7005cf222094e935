"""INR zoos, the generator side: every member fits its own signal (weightspace.zoo.inr).

Determinism, per-member targets really used, PSNR, SIREN's init, splits by signal, the format
(members and metrics columns, ``Zoo.signals``, validation) and one-line errors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_cfg
from test_configs import write_tiny_mnist

from weightspace.errors import ConfigError, DataError, ZooError
from weightspace.nets.forward import forward
from weightspace.nets.metrics import psnr
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.generate import generate
from weightspace.zoo.init import init_member
from weightspace.zoo.inr import SignalTask, assign_signals, split_by_signal
from weightspace.zoo.population import sample_population
from weightspace.zoo.store import MANIFEST, Zoo
from weightspace.zoo.tasks import load_task
from weightspace.zoo.train.loop import choose_trainer, train_population

SIREN = MLPSpec((2, 32, 32, 1), "sine")
# A small INR zoo: 6 SIRENs on 3 digit images (each fitted twice), 60 full-batch Adam steps.
INR = (
    "experiment=zoo/inr_digits",
    "task.n_signals=3",
    "zoo.size=6",
    "zoo.shard_size=4",
    "zoo.checkpoints=[0,30]",
    "zoo.hparams.epochs=60",
)


@pytest.fixture(scope="module")
def inr_digits() -> SignalTask:
    return load_task({"name": "inr_digits"})


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory) -> Zoo:
    root = tmp_path_factory.mktemp("inr")
    return Zoo.open(generate(compose_cfg(root, *INR, tiny=False)).path)


def siren_members(n: int, **hp) -> pd.DataFrame:
    base = {
        "init": "siren",
        "bias_init": "uniform",
        "activation": "sine",
        "optimizer": "adam",
        "lr": 0.01,
        "batch_size": 64,
        "epochs": 80,
        "data_order": "shared",
    }
    return sample_population({**base, **hp}, n, seed=3)


# --------------------------------------------------------------------------- tasks
def test_inr_digits_is_the_digit_images_on_a_pixel_grid(inr_digits):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    assert inr_digits.signals.shape == (1797, 64, 1) and inr_digits.coords.shape == (64, 2)
    np.testing.assert_allclose(inr_digits.signals[:, :, 0].numpy(), images / 16, rtol=1e-6)
    assert torch.equal(inr_digits.classes, torch.from_numpy(labels))
    # pixel (row 2, column 5) is coordinate 8 * 2 + 5 with x from the column, y from the row
    grid = np.linspace(-1, 1, 8)
    np.testing.assert_allclose(inr_digits.coords[8 * 2 + 5].numpy(), [grid[5], grid[2]])
    assert inr_digits.summary()["n_signals"] == 1797 and not inr_digits.is_classification


def test_inr_mnist1d_signals_are_the_mnist1d_rows(tmp_path):
    task = load_task({"name": "inr_mnist1d", "n_signals": 25, "data_dir": str(tmp_path)})
    plain = load_task({"name": "mnist1d", "n_samples": 30, "standardize": False})
    assert task.signals.shape == (25, 40, 1) and task.coords.shape == (40, 1)
    np.testing.assert_array_equal(task.signals[:24, :, 0].numpy(), plain.x_train.numpy()[:24])
    assert torch.equal(task.classes[:24], plain.y_train[:24])
    assert (tmp_path / "mnist1d" / "mnist1d_seed0_n30.npz").exists()  # cached like mnist1d


def test_inr_mnist_reads_the_idx_files(tmp_path):
    write_tiny_mnist(tmp_path / "MNIST" / "raw")
    task = load_task({"name": "inr_mnist", "data_dir": str(tmp_path), "n_signals": 50})
    assert task.signals.shape == (50, 784, 1) and task.coords.shape == (784, 2)
    assert 0 <= float(task.signals.min()) and float(task.signals.max()) <= 1


# --------------------------------------------------------------------------- training
def test_members_fit_their_own_signal(inr_digits):
    """Each member's output on the grid is close to its own signal, far from another's."""
    members = siren_members(4, signal=[0, 1, 2, 3])
    result = train_population(inr_digits, SIREN, members, [])
    final = {k: v[:, -1] for k, v in result.weights.items()}
    out = forward(final, inr_digits.coords, SIREN)  # (4, 64, 1)
    own = inr_digits.signals[:4]
    mse_own = ((out - own) ** 2).mean((1, 2))
    mse_other = ((out - own.roll(1, 0)) ** 2).mean((1, 2))
    assert (mse_own < 1e-3).all() and (mse_other > 100 * mse_own).all()
    assert result.trainer == "hand"
    last = result.metrics[result.metrics["epoch"] == 80]
    assert list(last.columns) == ["member_id", "epoch", "train_loss", "psnr", "diverged"]
    torch.testing.assert_close(torch.tensor(last["train_loss"].to_numpy()), mse_own)


def test_psnr_is_ten_log10_of_range_squared_over_mse(inr_zoo):
    assert psnr(torch.tensor([0.01]), torch.tensor([1.0])).item() == pytest.approx(20.0)
    assert psnr(torch.tensor([0.04]), torch.tensor([2.0])).item() == pytest.approx(20.0)
    coords, targets, _ = inr_zoo.signals()
    out = forward(inr_zoo.weights(60), coords, inr_zoo.spec)
    mse = ((out - targets) ** 2).mean((1, 2)).double()
    peak = targets.amax((1, 2)) - targets.amin((1, 2))
    want = 10 * torch.log10(peak.double() ** 2 / mse)
    got = inr_zoo.metrics.query("epoch == 60").sort_values("member_id")
    np.testing.assert_allclose(got["psnr"].to_numpy(), want.numpy(), rtol=1e-4)
    np.testing.assert_allclose(got["train_loss"].to_numpy(), mse.numpy(), rtol=1e-4)
    assert (got["psnr"] > 30).all()


def test_hand_and_autograd_fit_alike(inr_digits):
    members = siren_members(3, epochs=5, data_order="per_member")
    hand = train_population(inr_digits, SIREN, members, [], trainer="hand")
    auto = train_population(inr_digits, SIREN, members, [], trainer="autograd")
    for k in SIREN.param_shapes():
        torch.testing.assert_close(hand.weights[k], auto.weights[k], rtol=1e-4, atol=1e-4)


def test_the_fused_kernel_is_not_asked_for_per_member_targets():
    assert choose_trainer(SIREN, "cpu", "auto", per_member_targets=True) == "hand"
    relu = MLPSpec((2, 8, 1))
    assert choose_trainer(relu, "cpu", "auto", per_member_targets=True) == "hand"
    with pytest.raises(ConfigError, match="backend: 'fused' cannot run here: .*per-member"):
        choose_trainer(relu, "cpu", "fused", "backend", per_member_targets=True)


def test_siren_init_stores_effective_weights():
    """SIREN's U(-1/in, 1/in) and U(-sqrt(6/in)/w0, ...) times w0 before each sine."""
    spec = MLPSpec((2, 64, 64, 1), "sine")
    hp = {"seed": 1, "init": "siren", "init_scale": 1.0, "init_std": 1.0, "init_value": 0.5}
    p = init_member(spec, {**hp, "bias_init": "zeros", "w0": 20.0})
    bounds = [20.0 / 2, math.sqrt(6 / 64), math.sqrt(6 / 64) / 20]
    for l, bound in enumerate(bounds):
        w = p[f"layers.{l}.weight"]
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound, l
    with_bias = init_member(spec, {**hp, "bias_init": "uniform", "w0": 20.0})
    assert with_bias["layers.0.bias"].abs().max() > 1  # U(-1/sqrt(2), ..) times w0
    assert with_bias["layers.2.bias"].abs().max() <= 1 / 8  # the last layer: unscaled
    assert sample_population({"init": "siren"}, 2)["w0"].tolist() == [30.0, 30.0]
    assert "w0" not in sample_population({}, 2)  # other zoos' tables are as they were
    # siren_hidden: the hidden-layer rule at the first layer too (low first-layer frequencies)
    hidden = init_member(spec, {**hp, "init": "siren_hidden", "bias_init": "zeros", "w0": 20.0})
    w = hidden["layers.0.weight"]
    assert math.sqrt(6 / 2) * 0.9 < w.abs().max() <= math.sqrt(6 / 2)  # not 20 / 2
    for l in (1, 2):  # the other layers as siren's, draw for draw
        assert torch.equal(hidden[f"layers.{l}.weight"], p[f"layers.{l}.weight"]), l
    assert sample_population({"init": "siren_hidden"}, 2)["w0"].tolist() == [30.0, 30.0]


# --------------------------------------------------------------------------- generate
def test_the_zoo_is_deterministic_and_carries_signals_and_classes(inr_zoo, tmp_path):
    again = generate(compose_cfg(tmp_path, *INR, tiny=False)).path
    for a in sorted((inr_zoo.root / "shards").glob("*.safetensors")):
        assert a.read_bytes() == (again / "shards" / a.name).read_bytes()
    m = inr_zoo.members
    assert m["signal"].tolist() == [0, 1, 2, 0, 1, 2]
    assert m["signal_class"].tolist() == [0, 1, 2, 0, 1, 2]  # the first digits are 0, 1, 2
    assert m["signal"].dtype.kind == m["signal_class"].dtype.kind == "i"
    assert inr_zoo.manifest["task"]["n_signals"] == 3 and inr_zoo.manifest["trainer"] == "hand"
    assert set(inr_zoo.metrics.columns) == {"member_id", "epoch", "train_loss", "psnr", "diverged"}
    # Two fits of one signal differ in their weights (seeds), not in what they represent.
    w = inr_zoo.weights(60)["layers.0.weight"]
    assert not torch.allclose(w[0], w[3])


def test_zoo_signals_returns_each_members_signal(inr_zoo, inr_digits):
    coords, targets, classes = inr_zoo.signals([4, 0])
    assert torch.equal(coords, inr_digits.coords)
    assert torch.equal(targets, inr_digits.signals[[1, 0]])
    assert classes.tolist() == [1, 0]
    with pytest.raises(IndexError):
        inr_zoo.signals([6])


def test_a_zoo_of_another_task_has_no_signals(api_zoo_path):
    with pytest.raises(ZooError, match="signal: missing"):
        Zoo.open(api_zoo_path).signals()


def test_validation_refuses_an_inr_zoo_without_its_signals(inr_zoo, tmp_path):
    import shutil

    from weightspace.zoo.files import sha256_file

    root = tmp_path / "z"
    shutil.copytree(inr_zoo.root, root)
    table = root / "members.parquet"
    pd.read_parquet(table).drop(columns="signal_class").to_parquet(table)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["members.parquet"] = {
        "sha256": sha256_file(table),
        "bytes": table.stat().st_size,
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="members.parquet: signal_class: missing column"):
        Zoo.open(root)


# --------------------------------------------------------------------------- splits
def test_split_by_signal_keeps_each_signals_fits_together():
    signal = np.repeat(np.arange(50), 3)[np.random.default_rng(0).permutation(150)]
    train, val, test = split_by_signal(signal, (0.8, 0.1, 0.1), seed=1)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(150))
    sets = [set(signal[s]) for s in (train, val, test)]
    assert [len(s) for s in sets] == [40, 5, 5]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    again = split_by_signal(signal, (0.8, 0.1, 0.1), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, test)))
    assert not np.array_equal(split_by_signal(signal, seed=2)[0], train)
    # few signals: every split asked for still gets one
    assert [len(p) for p in split_by_signal([0, 1, 2], (0.98, 0.01, 0.01))] == [1, 1, 1]


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.2, -0.2), (0.5, 0.25, 0.25, 0.0, 0.0)])
def test_split_by_signal_refuses_bad_fractions(fractions):
    signal = [0, 1, 2] if len(fractions) != 5 else [0, 1]
    with pytest.raises(ConfigError, match="split fractions"):
        split_by_signal(signal, fractions)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "override,match",
    [
        ("zoo.hparams.label_noise=0.1", "zoo.hparams.label_noise: a classification option"),
        ("zoo.hparams.subset=0.5", "zoo.hparams.subset: a classification option"),
        ("+task.test_fraction=0.2", "task.test_fraction: a classification option"),
        ("task.n_signals=1798", "task.n_signals: 1798 out of range, task inr_digits holds 1797"),
        ("zoo.hparams.signal=[0,1797]", "zoo.hparams.signal: 1797 out of range"),
        ("zoo.hparams.signal=-1", "zoo.hparams.signal: -1 out of range"),
        ("backend=fused", "backend: 'fused' cannot run here"),
    ],
)
def test_bad_inr_options_fail_in_one_line(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match) as info:
        generate(compose_cfg(tmp_path, *INR, override, tiny=False))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "zoos" / "inr_digits" / MANIFEST).exists()


def test_inr_mnist_needs_its_idx_folder(tmp_path):
    with pytest.raises(ConfigError, match="task.data_dir: required for task 'inr_mnist'"):
        load_task({"name": "inr_mnist"})
    with pytest.raises(DataError, match="MNIST IDX files not found") as info:
        load_task({"name": "inr_fashion_mnist", "data_dir": str(tmp_path)})
    assert "\n" not in str(info.value) and str(tmp_path / "FashionMNIST" / "raw") in str(info.value)


def test_assign_signals_without_a_signal_column_cycles_through_the_signals(inr_digits):
    members = sample_population({}, 5)
    small = SignalTask(
        "inr_x", inr_digits.coords, inr_digits.signals[:2], inr_digits.classes[:2], 10
    )
    out = assign_signals(members, small)
    assert out["signal"].tolist() == [0, 1, 0, 1, 0]
    assert out["signal_class"].tolist() == [0, 1, 0, 1, 0]
