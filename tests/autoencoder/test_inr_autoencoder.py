"""Autoencoders and the supervised model on an INR zoo (sine networks, one signal per member):
every encoder trains, the functional loss reads the coordinates, the class is a target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from helpers import SMALL_OVERRIDES, TINY_INR, quiet_trainer
from hydra import compose, initialize_config_dir

from weightspace.autoencoder.module import WeightAutoencoder
from weightspace.autoencoder.supervised import WeightPredictor
from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train
from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation.evaluate import evaluate_autoencoder
from weightspace.evaluation.inr import field_psnr, item_signals
from weightspace.evaluation.probes import probe_table
from weightspace.evaluation.splits import load_split
from weightspace.nets.forward import forward
from weightspace.nets.layout import unflatten_params
from weightspace.zoo.generate import generate

A = "weightspace.autoencoder."
ENCODERS = {
    "mlp": {"_target_": A + "encoders.MLPEncoder", "hidden": [32]},
    "probe": {"_target_": A + "encoders.ProbeEncoder", "hidden": [32]},
    "graph": {"_target_": A + "graph.GraphEncoder", "hidden": 16, "n_layers": 1},
    "nfn": {"_target_": A + "nfn.NFNEncoder", "channels": 8, "hidden": [32]},
}
DECODER = {"_target_": A + "decoders.MLPDecoder", "_partial_": True, "kind": "mlp", "hidden": [32]}


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inr_ae")
    return generate(compose_cfg(root, *TINY_INR, tiny=False)).path


@pytest.fixture(scope="module")
def datamodule(zoo_path) -> WeightDataModule:
    dm = WeightDataModule(zoo_path, fractions=(0.5, 0.25, 0.25), batch_size=4, seed=0)
    dm.setup()
    return dm


def model_for(dm: WeightDataModule, encoder: str, **hparams) -> WeightAutoencoder:
    torch.manual_seed(0)
    enc = {**ENCODERS[encoder], "_partial_": True, "kind": encoder}
    return WeightAutoencoder.from_datamodule(
        dm, n_probe=256, latent_dim=8, scheduler=None, encoder=enc, decoder=DECODER, **hparams
    )


@pytest.mark.parametrize("encoder", ["mlp", "graph", "nfn", "probe"])
def test_every_encoder_trains_on_an_inr_zoo(encoder, datamodule):
    model = model_for(datamodule, encoder, functional_weight=1.0)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    batch = next(iter(datamodule.train_dataloader()))
    losses = model.compute_losses(batch)
    assert {"recon", "functional", "loss"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=datamodule)
    after = model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no encoder step"


def test_functional_loss_runs_the_sine_networks_on_the_coordinates(datamodule):
    model = model_for(datamodule, "mlp", functional_weight=1.0).eval()
    coords = datamodule.task.coords
    # All 64 pixel coordinates (fewer than n_probe), no labels: each INR fits its own image.
    assert model.probe_inputs.shape == coords.shape
    assert set(map(tuple, model.probe_inputs.tolist())) == set(map(tuple, coords.tolist()))
    batch = next(iter(datamodule.val_dataloader()))
    flat = model.flat_weights(batch)
    params = datamodule.normalizer.denormalize_params(unflatten_params(flat, model.spec))
    with torch.no_grad():
        out = model.network_outputs(flat)  # (B, n_probe, 1), through the sine forward
        ref = forward(params, model.probe_inputs, model.spec)
        torch.testing.assert_close(out, ref)
        # an untrained decoder's INRs differ from the originals on the coordinates
        loss = model.compute_losses(batch, functional=True)["functional"]
        assert torch.isfinite(loss) and loss > 0
    assert model.spec.activation == "sine"


def test_supervised_model_classifies_the_signal_class(datamodule):
    torch.manual_seed(0)
    enc = {**ENCODERS["probe"], "_partial_": True, "kind": "probe"}
    model = WeightPredictor.from_datamodule(
        datamodule, target="signal_class", encoder=enc, n_probe=64, latent_dim=8, lr=1e-2
    )
    assert model.classify and model.hparams.classes == ["0", "1", "2", "3"]
    assert torch.equal(model.probe_inputs.sort(0).values, datamodule.task.coords.sort(0).values)
    quiet_trainer(max_steps=3, limit_val_batches=0).fit(model, datamodule=datamodule)
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (len(batch["weights"]), 4) and torch.isfinite(logits).all()


def test_train_with_the_inr_preset_and_its_evaluation(zoo_path, tmp_path):
    overrides = [
        f"paths.root_dir={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        "experiment=autoencoder/inr_digits",
        f"zoo={zoo_path}",
        *[o for o in SMALL_OVERRIDES if o != "evaluate=false"],
        "data.fractions=[0.5,0.25,0.25]",
        "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]",
        "evaluator.audit=true",
        "trainer.fast_dev_run=true",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    assert cfg.model.encoder.kind == "probe" and cfg.data.epochs == "last"
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/functional"]))
    ev = metrics["evaluation"]
    assert "recon_psnr_median" in ev.reconstruction and "audit_note" in ev.generation
    assert (tmp_path / "run" / "evaluation" / "signals.png").is_file()


def test_field_preset_trains_the_encoder_through_the_field_alone(zoo_path, datamodule, tmp_path):
    """experiment=autoencoder/inr_field: the graph encoder with the field decoder; the weight
    decoder detached (its losses train it, not the latent)."""
    overrides = [
        f"paths.root_dir={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        "experiment=autoencoder/inr_field",
        f"zoo={zoo_path}",
        *[o for o in SMALL_OVERRIDES if o != "evaluate=false"],
        "data.fractions=[0.5,0.25,0.25]",
        "model.encoder.hidden=16",
        "model.encoder.n_layers=1",
        "model.decoder.hidden=[32]",
        "model.field_hidden=[32]",
        "trainer.fast_dev_run=true",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    assert cfg.model.encoder.kind == "graph" and cfg.model.detach_decoder
    metrics = train(cfg)
    assert {"train/field", "train/recon", "train/functional"} <= set(metrics)
    # The evaluation renders the held-out signals with the field: their PSNR, and a figure row.
    ev = metrics["evaluation"]
    assert np.isfinite(ev.info["field_psnr_median"])
    grid = ev.signals
    assert grid["field"].shape == grid["decoded"].shape and grid["field"].std() > 0


def test_field_psnr_is_the_renderings_psnr_against_their_own_signals(datamodule):
    test = load_split(datamodule, "test")
    task = datamodule.task
    sig = torch.from_numpy(item_signals(datamodule, test.items))
    noisy = field_psnr(test, datamodule, task, task.signals[sig] + 0.1)  # off by a known error
    want = 10 * np.log10(task.peaks[sig].double().numpy() ** 2 / 0.01)
    np.testing.assert_allclose(noisy["field_psnr_median"], np.median(want), rtol=1e-5)


def test_inr_evaluation_compares_the_latent_with_the_signals_themselves(datamodule, monkeypatch):
    """On an INR zoo the evaluation also probes the signal each INR fits ("signal": the
    ceiling of any reading of an INR) and compares the latent and learned coordinates with it."""
    seen = {}

    def spy(reps, *args, **kwargs):
        seen.update(reps)
        return probe_table(reps, *args, **kwargs)

    monkeypatch.setattr("weightspace.evaluation.evaluate.probe_table", spy)
    model = model_for(datamodule, "mlp")
    res = evaluate_autoencoder(model, datamodule, n_samples=4, boosting=False)
    test = load_split(datamodule, "test")
    want = datamodule.task.signals[item_signals(datamodule, test.items)].flatten(1)
    np.testing.assert_array_equal(seen["signal"][2], want.double().numpy())
    assert "signal" in set(res["probes"].representation)
    assert {"latent", "learned"} <= set(
        res["comparisons"].loc[lambda c: c.baseline == "signal", "representation"]
    )
