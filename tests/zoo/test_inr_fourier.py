"""ReLU INRs on random Fourier features (task.fourier_features): the SIREN alternative."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_cfg

from weightspace.errors import ConfigError
from weightspace.zoo.generate import generate
from weightspace.zoo.inr import fourier_features, grid_coords
from weightspace.zoo.store import Zoo
from weightspace.zoo.tasks import load_task


def test_fourier_features_are_sines_and_cosines_of_seeded_frequencies():
    v = grid_coords(8, 8)
    assert fourier_features(v, 0, 1.0, 0) is v  # off: the coordinates themselves
    f = fourier_features(v, 5, 2.0, seed=3)
    assert f.shape == (64, 10)
    np.testing.assert_allclose(f[:, :5] ** 2 + f[:, 5:] ** 2, 1.0, atol=1e-12)
    np.testing.assert_array_equal(f, fourier_features(v, 5, 2.0, seed=3))
    assert not np.allclose(f, fourier_features(v, 5, 2.0, seed=4))
    # frequency 0 would be constant: the features vary over the grid
    assert (f.std(0) > 0).all()


def test_task_option_feeds_the_features_and_checks_them():
    task = load_task({"name": "inr_digits", "n_signals": 3, "fourier_features": 8})
    assert task.input_dim == 16 and task.coords.shape == (64, 16)
    plain = load_task({"name": "inr_digits", "n_signals": 3})
    assert plain.input_dim == 2
    np.testing.assert_array_equal(task.signals.numpy(), plain.signals.numpy())
    with pytest.raises(ConfigError, match="task.fourier_scale"):
        load_task({"name": "inr_digits", "fourier_features": 8, "fourier_scale": 0.0})
    with pytest.raises(ConfigError, match="fourier_features"):
        load_task({"name": "inr_digits", "fourier_features": -1})


def test_relu_inrs_on_fourier_features_fit_their_images(tmp_path):
    cfg = compose_cfg(
        tmp_path,
        "experiment=zoo/inr_digits_rff",
        "task.n_signals=4",
        "zoo.size=4",
        "zoo.shard_size=4",
        tiny=False,
    )
    zoo = Zoo.open(generate(cfg).path)
    assert zoo.spec.widths[0] == 32 and zoo.spec.activation == "relu"
    last = zoo.metrics[zoo.metrics.epoch == zoo.epochs[-1]]
    first = zoo.metrics[zoo.metrics.epoch == 0]
    assert (last["psnr"] > 30).all(), last["psnr"].tolist()
    assert (last["psnr"].to_numpy() > first["psnr"].to_numpy() + 15).all()
