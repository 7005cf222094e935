"""The supervised mode: an encoder and a head trained on one target (WeightPredictor), its
reload, and train(cfg) with experiment=autoencoder/supervised."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_cfg
from helpers import SMALL_OVERRIDES, quiet_trainer
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from weightspace.autoencoder.supervised import WeightPredictor
from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, objective, train
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError
from weightspace.zoo.generate import generate

A = "weightspace.autoencoder."
# Small encoders: every test trains in seconds on one CPU thread.
ENCODERS = {
    "mlp": {"_target_": A + "encoders.MLPEncoder", "hidden": [64]},
    "transformer": {"_target_": A + "encoders.TransformerEncoder", "d_model": 16, "n_heads": 2},
    "probe": {"_target_": A + "encoders.ProbeEncoder", "hidden": [64]},
    "graph": {"_target_": A + "graph.GraphEncoder", "hidden": 16, "n_layers": 1},
    "nfn": {"_target_": A + "nfn.NFNEncoder", "channels": 8, "hidden": [64]},
}
# Overrides that make the config's encoder small (Hydra's syntax).
ENCODER_OVERRIDES = {
    "mlp": ["model.encoder.hidden=[64]"],
    "nfn": ["model.encoder.channels=8", "model.encoder.hidden=[64]"],
}


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory) -> Path:
    """16 members, two init schemes (a categorical target) and two learning rates."""
    root = tmp_path_factory.mktemp("supervised_zoo")
    return generate(
        compose_cfg(
            root,
            "zoo.size=16",
            "zoo.hparams.epochs=3",
            "zoo.checkpoints=[0,1,3]",
            "zoo.hparams.init=[kaiming,orthogonal]",
            "zoo.hparams.lr=[0.02,0.1]",
        )
    ).path


@pytest.fixture(scope="module")
def datamodule(zoo_path) -> WeightDataModule:
    dm = WeightDataModule(zoo_path, batch_size=8, seed=0)
    dm.setup()
    return dm


def small_model(dm: WeightDataModule, encoder: str = "mlp", **hparams) -> WeightPredictor:
    torch.manual_seed(0)
    enc = {**ENCODERS[encoder], "_partial_": True, "kind": encoder}
    hparams = {"n_probe": 32, "latent_dim": 16, "scheduler": None, **hparams}
    return WeightPredictor.from_datamodule(dm, encoder=enc, **hparams)


def mean_train_loss(model: WeightPredictor, dm: WeightDataModule) -> float:
    model.eval()
    with torch.no_grad():
        losses = [float(model._step(b)[0]) for b in dm.train_dataloader()]
    model.train()
    return sum(losses) / len(losses)


def sup_cfg(root: Path, zoo: Path, *overrides: str) -> DictConfig:
    """The real config with experiment=autoencoder/supervised, written under ``root``."""
    encoder = next((o.split("=", 1)[1] for o in overrides if o.startswith("encoder=")), "mlp")
    base = [f"paths.root_dir={root}", f"run_dir={root / 'run'}", f"zoo={zoo}", *SMALL_OVERRIDES]
    base += ["experiment=autoencoder/supervised", *ENCODER_OVERRIDES.get(encoder, [])]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=[*base, *overrides])


# --------------------------------------------------------------------------- the module
@pytest.mark.parametrize(
    "encoder, target",
    [
        ("mlp", "test_acc"),
        ("nfn", "test_acc"),
        ("graph", "test_acc"),
        ("mlp", "log_lr"),
        ("transformer", "generalization_gap"),
        ("probe", "test_acc"),
    ],
)
def test_fits_a_tiny_zoo_with_decreasing_loss(encoder, target, datamodule):
    model = small_model(datamodule, encoder, target=target, lr=1e-2)
    assert not model.classify and model.head[-1].out_features == 1
    before = mean_train_loss(model, datamodule)
    quiet_trainer(max_epochs=20, limit_val_batches=0).fit(model, datamodule=datamodule)
    after = mean_train_loss(model, datamodule)
    assert after < 0.5 * before, (before, after)


def test_targets_are_standardized_on_the_training_split(datamodule):
    model = small_model(datamodule, target="log_lr")
    lr = datamodule.dataset("train").items["lr"].to_numpy()
    assert model.hparams.target_mean == pytest.approx(float(torch.tensor(lr).log10().mean()))
    assert model.hparams.target_std == pytest.approx(float(torch.tensor(lr).log10().std(0)), 0.1)
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():  # predict() is in the target's units: the head's output destandardized
        expected = model(batch) * model.hparams.target_std + model.hparams.target_mean
        assert torch.allclose(model.predict(batch), expected)


def test_a_categorical_target_is_classified(datamodule):
    model = small_model(datamodule, target="init", lr=1e-2)
    assert model.classify and model.hparams.classes == ["kaiming", "orthogonal"]
    before = mean_train_loss(model, datamodule)
    trainer = quiet_trainer(max_epochs=15)
    trainer.fit(model, datamodule=datamodule)
    assert mean_train_loss(model, datamodule) < 0.5 * before
    assert 0.0 <= float(trainer.callback_metrics["val/accuracy"]) <= 1.0
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        codes = model.predict(batch)
    assert codes.dtype == torch.long and set(codes.tolist()) <= {0, 1}
    tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    assert {"test/loss", "test/accuracy"} <= set(tested)


@pytest.mark.parametrize("encoder, target", [("mlp", "test_acc"), ("nfn", "init")])
def test_checkpoint_reloads_strictly_with_identical_outputs(encoder, target, datamodule, tmp_path):
    model = small_model(datamodule, encoder, target=target)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = WeightPredictor.load_from_checkpoint(path, strict=True)  # no datamodule
    model.eval()
    loaded.eval()
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
        assert torch.equal(loaded.encode(batch), model.encode(batch))
    assert torch.equal(loaded.probe_inputs, model.probe_inputs)
    assert loaded.normalizer == datamodule.normalizer
    assert loaded.encoder_kind == encoder
    for key, value in loaded.hparams.items():  # plain values only
        assert isinstance(value, str | int | float | bool | list | tuple | dict | type(None)), key


def test_bad_options_are_one_line_config_errors(datamodule):
    with pytest.raises(ConfigError, match=r"^target: 'accuracy' is not a target") as err:
        small_model(datamodule, target="accuracy")
    assert "\n" not in str(err.value) and "test_acc" in str(err.value)
    with pytest.raises(ConfigError, match=r"^target: 'log_init'"):
        small_model(datamodule, target="log_init")  # a log of a categorical target
    with pytest.raises(ConfigError, match=r"^target: 'optimizer' needs two classes"):
        small_model(datamodule, target="optimizer")  # one optimizer in this zoo
    with pytest.raises(ConfigError, match=r"^model.recon_weight: must be 0"):
        small_model(datamodule, recon_weight=1.0)
    with pytest.raises(ConfigError, match=r"^model.features"):
        small_model(datamodule, features={"input": "concat"})
    with pytest.raises(ConfigError, match=r"^scheduler"):
        small_model(datamodule, scheduler="step")
    with pytest.raises(ConfigError, match=r"^model.select: 'accuracy' \(choose loss or score\)$"):
        small_model(datamodule, select="accuracy")


def test_select_names_the_metric_and_its_direction(datamodule):
    assert (small_model(datamodule).monitor, small_model(datamodule).monitor_mode) == (
        "val/loss",
        "min",
    )
    regress = small_model(datamodule, select="score")
    classify = small_model(datamodule, target="init", select="score")
    assert (regress.monitor, regress.monitor_mode) == ("val/r2", "max")
    assert (classify.monitor, classify.monitor_mode) == ("val/accuracy", "max")


# --------------------------------------------------------------------------- train(cfg)
@pytest.mark.parametrize("encoder", ["mlp", "nfn"])
def test_train_fast_dev_run_with_the_preset(encoder, zoo_path, tmp_path):
    cfg = sup_cfg(tmp_path, zoo_path, f"encoder={encoder}", "trainer.fast_dev_run=true")
    assert cfg.model.target == "test_acc" and not cfg.evaluate
    metrics = train(cfg)
    for key in ("train/loss", "val/loss", "val/r2", "val/mae", "test/loss", "test/r2"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert "val/recon" not in metrics and metrics["global_step"] == 1
    assert objective(cfg, metrics) == metrics["val/loss"]  # optimized_metric: val/loss


def test_train_selects_checkpoints_on_val_loss_and_they_reload(zoo_path, tmp_path):
    cfg = sup_cfg(
        tmp_path, zoo_path, "model.target=init", "trainer.max_epochs=2", "model.latent_dim=8"
    )
    metrics = train(cfg)
    assert {"test/loss", "test/accuracy"} <= set(metrics)
    best = metrics["best_checkpoint"]
    assert best and Path(best).name.startswith("best-")
    model = WeightPredictor.load_from_checkpoint(best, strict=True)
    assert model.hparams.target == "init" and model.hparams.latent_dim == 8


@pytest.mark.parametrize(("select", "metric"), [("loss", "val/loss"), ("score", "val/accuracy")])
def test_train_keeps_the_checkpoint_best_on_the_selected_metric(select, metric, zoo_path, tmp_path):
    cfg = sup_cfg(
        tmp_path,
        zoo_path,
        "model.target=init",
        "trainer.max_epochs=5",
        "model.latent_dim=8",
        f"model.select={select}",
    )
    metrics = train(cfg)
    log = pd.read_csv(Path(metrics["run_dir"]) / "csv" / "version_0" / "metrics.csv")
    val = log.dropna(subset=[metric]).reset_index(drop=True)
    assert len(val) == 5
    values = val[metric] if select == "loss" else -val[metric]  # lowest loss, highest score
    best_epoch = int(val["epoch"][values.idxmin()])  # the first of ties, as the callback keeps
    assert Path(metrics["best_checkpoint"]).name.startswith(f"best-{best_epoch:03d}-")


def test_train_with_a_bad_target_is_a_one_line_config_error(zoo_path, tmp_path):
    with pytest.raises(ConfigError, match=r"^target: 'test_accuracy' is not a target") as err:
        train(sup_cfg(tmp_path, zoo_path, "model.target=test_accuracy"))
    assert "\n" not in str(err.value)
