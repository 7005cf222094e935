"""``scripts/probe_directions.py``: a target probed from the invariant features' principal
directions, and how much of each direction a run's statistics head predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import load_script
from torch import nn

from weightspace.analysis.feature_directions import feature_directions, target_by_epoch
from weightspace.autoencoder import WeightAutoencoder
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError


@pytest.fixture(scope="module")
def datamodule(api_zoo_path) -> WeightDataModule:
    dm = WeightDataModule(api_zoo_path, batch_size=8)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def model(datamodule) -> WeightAutoencoder:
    torch.manual_seed(0)
    features = {"weight": 1.0, "spectrum": True}
    return WeightAutoencoder.from_datamodule(
        datamodule, n_probe=16, scheduler=None, latent_dim=4, features=features
    ).eval()


class Oracle(nn.Module):
    """A stand-in whose learned coordinates are the standardized features themselves and
    whose head passes them on (``scale`` 1) or predicts nothing (``scale`` 0)."""

    def __init__(self, model: WeightAutoencoder, scale: float):
        super().__init__()
        self.model = model
        self.stats_mean, self.stats_std = model.stats_mean, model.stats_std
        n = len(model.stats_mean)
        self.stats_head = nn.Linear(n, n)
        with torch.no_grad():
            self.stats_head.weight.copy_(torch.eye(n) * scale)
            self.stats_head.bias.zero_()

    def invariant_features(self, params):
        return self.model.invariant_features(params)

    def encode_learned(self, weights):
        return self.model.weight_statistics(weights)


def test_a_head_that_predicts_the_features_has_r2_one_in_every_direction(model, datamodule):
    probes, bands = feature_directions(Oracle(model, 1.0), datamodule, "log_lr", ks=(2, 4, 8))
    rows = probes.set_index("representation")
    n = len(model.stats_mean)
    assert list(rows.index) == [
        "top 2 directions",
        "top 4 directions",
        "top 8 directions",
        "all features",
        "learned coordinates",
        "head's predictions",
    ]
    shares = rows["variance"].iloc[:4].to_numpy()
    assert (np.diff(shares) > 0).all() and shares[-1] == 1.0 and 0 < shares[0] < 1
    n = min(n, len(datamodule.dataset("train")))  # as many directions as the data spans
    assert list(bands["directions"]) == ["1-2", "3-4", "5-8", f"9-{n}"]
    assert bands["variance"].sum() == pytest.approx(1.0)
    # (float32 features against float64 ones: a direction of almost no variance drifts)
    big = bands["variance"] > 1e-3
    assert big.any() and (bands.loc[big, "head_r2"] > 0.9).all()
    # The head's predictions are the features: probed alike, and as the learned coordinates.
    r2 = rows["r2"]
    assert np.isfinite(r2).all() and r2.max() <= 1
    assert r2["head's predictions"] == pytest.approx(r2["all features"], abs=0.02)
    assert r2["head's predictions"] == pytest.approx(r2["learned coordinates"], abs=1e-6)


def test_a_head_that_predicts_nothing_carries_no_direction(model, datamodule):
    _, bands = feature_directions(Oracle(model, 0.0), datamodule, "lr", ks=(2, 4))
    assert (bands["head_r2"] < 0.05).all()


def test_the_trained_model_and_bad_input(model, datamodule):
    probes, bands = feature_directions(model, datamodule, "test_acc", ks=(3,))
    assert "head's predictions" in set(probes["representation"]) and len(bands) == 2
    with pytest.raises(ConfigError, match=r"^--target: 'colour' is not a probe target"):
        feature_directions(model, datamodule, "colour")
    with pytest.raises(ConfigError, match=r"^model: has no invariant features"):
        feature_directions(object(), datamodule)


def test_target_by_epoch_scores_one_probe_on_each_epochs_checkpoints(model, datamodule):
    """Learned coordinates that are the features read the target as the features do, at
    every epoch; the per-epoch scores are the one probe's predictions split by epoch."""
    table = target_by_epoch(Oracle(model, 1.0), datamodule, "log_lr").set_index("representation")
    epochs = sorted(datamodule.dataset("test").items["epoch"].unique())
    assert list(table.index) == ["learned", "stats", "invariants"]
    assert list(table.columns) == ["all", *(f"epoch {e}" for e in epochs)]
    assert np.isfinite(table.to_numpy()).all() and (table.to_numpy() <= 1).all()
    np.testing.assert_allclose(table.loc["learned"], table.loc["invariants"], atol=0.02)
    assert not np.allclose(table.loc["stats"], table.loc["invariants"], atol=0.02)
    with pytest.raises(ConfigError, match=r"^--target: 'colour' is not a probe target"):
        target_by_epoch(model, datamodule, "colour")


def test_the_entry_point_on_a_missing_run_is_one_line(tmp_path, capsys):
    script = load_script("scripts/probe_directions.py")
    assert script.main([str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run: ") and "is not an autoencoder run folder" in err
    assert err.count("\n") == 1
