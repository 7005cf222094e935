"""The evaluation on an INR zoo: class / PSNR / epoch probes, reconstruction as PSNR, generation
rendered, the signals figure (evaluation/inr.py and its hooks in evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from helpers import TINY_INR, quiet_trainer

from weightspace.autoencoder.module import WeightAutoencoder
from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation.audit import AuditOptions
from weightspace.evaluation.evaluate import evaluate_autoencoder
from weightspace.evaluation.inr import (
    inr_reconstruction_table,
    nearest_signal_psnr,
    render,
    signal_psnr,
)
from weightspace.evaluation.results import SIGNAL_FILES, EvalResults
from weightspace.evaluation.splits import load_split
from weightspace.zoo.generate import generate
from weightspace.zoo.store import Zoo

A = "weightspace.autoencoder."
PROBE = {
    "_target_": A + "encoders.ProbeEncoder",
    "_partial_": True,
    "kind": "probe",
    "hidden": [32],
}
DECODER = {"_target_": A + "decoders.MLPDecoder", "_partial_": True, "kind": "mlp", "hidden": [32]}


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory) -> Zoo:
    root = tmp_path_factory.mktemp("inr_eval")
    return Zoo.open(generate(compose_cfg(root, *TINY_INR, tiny=False)).path)


@pytest.fixture(scope="module")
def datamodule(inr_zoo) -> WeightDataModule:
    dm = WeightDataModule(inr_zoo.root, fractions=(0.5, 0.25, 0.25), batch_size=4, seed=0)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def results(datamodule) -> EvalResults:
    torch.manual_seed(0)
    model = WeightAutoencoder.from_datamodule(
        datamodule,
        n_probe=64,
        latent_dim=4,
        scheduler=None,
        functional_weight=1.0,
        encoder=PROBE,
        decoder=DECODER,
    )
    quiet_trainer(max_steps=3, limit_val_batches=0).fit(model, datamodule=datamodule)
    return evaluate_autoencoder(model, datamodule, n_samples=16, audit=AuditOptions())


def test_probe_table_has_class_psnr_and_epoch_rows_for_every_representation(results):
    probes = results.probes
    assert set(probes["target"]) == {"signal_class", "psnr", "epoch"}  # no test_acc, lr, ...
    cls = probes[(probes["target"] == "signal_class") & (probes["metric"] == "accuracy")]
    # + the signals, and the learned numbers beside the invariant features (the latent is the
    # learned numbers alone here)
    reps = ("latent", "learned", "stats", "invariants", "combined", "raw", "pca", "signal")
    assert set(cls[cls["probe"] == "logistic"]["representation"]) == set(reps)
    assert {"latent", "stats", "invariants", "pca"} <= set(
        cls[cls["probe"] == "boosting"]["representation"]
    )
    assert "chance" in set(cls["representation"])
    assert cls["value"].between(0, 1).all() and (cls["note"] == "").all()
    assert "signal_class" in results.info["categorical"]
    psnr = probes[(probes["target"] == "psnr") & (probes["metric"] == "r2")]
    assert np.isfinite(psnr[psnr["representation"] == "stats"]["value"]).all()


def test_reconstruction_reports_psnr_against_the_signal_and_the_original(results, inr_zoo):
    rec = results.reconstruction
    assert {"autoencoder", "pca", "autoencoder epoch 30", "pca epoch 30"} <= set(rec.index)
    for col in ("orig_psnr_median", "recon_psnr_median", "psnr_vs_orig_median", "r2_mean"):
        assert np.isfinite(rec.loc["autoencoder", col]), col
        assert np.isfinite(rec.loc["pca", col]), col
    # The originals' own PSNR is the zoo's: a member's fit at its last checkpoint.
    met = inr_zoo.metrics
    assert rec.loc["autoencoder epoch 30", "orig_psnr_median"] > 20
    assert rec.loc["autoencoder epoch 30", "orig_psnr_median"] == pytest.approx(
        rec.loc["pca epoch 30", "orig_psnr_median"]
    )
    assert met[met["epoch"] == 30]["psnr"].min() > 15
    assert "acc_retention" not in rec  # no accuracy on a signal


def test_generation_is_rendered_and_the_audit_skipped(results):
    gen = results.generation
    assert "audit_note" in gen and results.audit == {} and results.audit_points is None
    assert np.isfinite(gen["sample_nearest_psnr_median"])
    assert np.isfinite(gen["decoded_fit_psnr_median"]) and gen["fit_psnr_median"] > 20
    assert not any(k.startswith(("sample_acc", "zoo_acc")) for k in gen)


def test_signals_figure_is_saved_and_read_back(results, tmp_path):
    paths = results.save(tmp_path / "evaluation")
    assert paths["signals_figure"].is_file() and paths["signals_figure"].stat().st_size > 1000
    assert paths["signals"].name == SIGNAL_FILES["signals"]
    back = EvalResults.load(tmp_path / "evaluation").signals
    assert back is not None
    k = len(back["fitted"])
    assert back["signal"].shape == back["decoded"].shape == (k, 64, 1) and 1 <= k <= 4
    assert back["sampled"].shape[1:] == (64, 1) and back["coords"].shape == (64, 2)
    np.testing.assert_array_equal(back["fitted"], results.signals["fitted"])
    # the fitted INRs show their signals (the zoo fits them to > 20 dB)
    peaks = torch.ones(k)
    fitted = signal_psnr(torch.from_numpy(back["fitted"]), torch.from_numpy(back["signal"]), peaks)
    assert (fitted > 15).all(), fitted


def test_perfect_decoding_scores_the_originals_psnr(datamodule):
    test = load_split(datamodule, "test")
    task = datamodule.task
    rec = inr_reconstruction_table(test, {"same": test.weights}, datamodule, datamodule.spec, task)
    row = rec.loc["same"]
    assert row["recon_psnr_median"] == pytest.approx(row["orig_psnr_median"], abs=1e-3)
    assert row["r2_normalized"] == pytest.approx(1.0) and row["output_mse"] < 1e-10
    # the originals' PSNR is the zoo's own psnr metric
    out = render(test.params, test.specs, task.coords)
    assert out.shape == (len(test), 64, 1)
    zoo_psnr = np.median(test.items["psnr"].to_numpy())
    assert row["orig_psnr_median"] == pytest.approx(zoo_psnr, abs=0.05)


def test_nearest_signal_psnr_finds_the_closest_signal():
    gen = torch.Generator().manual_seed(0)
    signals = torch.rand(5, 16, 1, generator=gen)
    outputs = signals[[3, 1]] + 0.01 * torch.randn(2, 16, 1, generator=gen)
    peaks = signals.flatten(1).amax(1) - signals.flatten(1).amin(1)
    near = nearest_signal_psnr(outputs, signals, peaks)
    own = signal_psnr(outputs, signals[[3, 1]], peaks[[3, 1]])
    np.testing.assert_allclose(near, own, rtol=1e-6)
