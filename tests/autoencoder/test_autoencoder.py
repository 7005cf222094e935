"""The weight autoencoder: losses, gradients, checkpoints, resume, configs and the entry point."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, run_cli
from helpers import SMALL_OVERRIDES, quiet_trainer
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from weightspace.autoencoder import WeightAutoencoder
from weightspace.autoencoder.legacy import upgrade_config
from weightspace.autoencoder.train import (
    CONFIG_DIR,
    CONFIG_NAME,
    _run_record,
    claim_run_dir,
    train,
)
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError, ZooError
from weightspace.evaluation.tables import summarize_evaluation
from weightspace.features import FeatureSpec
from weightspace.features.function import function_feature_names
from weightspace.features.pca import whitening
from weightspace.features.spectra import product_spectrum_names, spectrum_names
from weightspace.features.statistics import layer_statistics
from weightspace.nets.forward import forward
from weightspace.nets.layout import flatten_params, params_to_tokens, unflatten_params
from weightspace.nets.spec import MLPSpec
from weightspace.symmetry import apply_permutation, mlp_permutation_spec, random_permutations
from weightspace.symmetry.derive import derive

SCRIPT = REPO / "scripts" / "train_autoencoder.py"

# Small parts and few probe inputs: every test trains in seconds on one CPU thread.
SMALL = {
    "mlp": {"kind": "mlp", "hidden": [64]},
    "transformer": {"kind": "transformer", "d_model": 32, "n_heads": 2, "n_layers": 1},
    "probe": {"kind": "probe", "hidden": [64]},
}
ENC, DEC = "weightspace.autoencoder.encoders.", "weightspace.autoencoder.decoders."
TARGETS = {  # the classes of conf/{encoder,decoder}/<kind>.yaml
    "encoder": {
        "mlp": ENC + "MLPEncoder",
        "transformer": ENC + "TransformerEncoder",
        "probe": ENC + "ProbeEncoder",
    },
    "decoder": {"mlp": DEC + "MLPDecoder", "transformer": DEC + "TransformerDecoder"},
}
DECODER_OF = {"probe": "mlp"}  # the decoder kind tests pair with an encoder kind


def part_overrides(part: str, kind: str) -> list[str]:
    """Overrides that make ``model.<part>`` (encoder or decoder) of ``kind`` small."""
    return [f"model.{part}.{k}={v}".replace(" ", "") for k, v in SMALL[kind].items() if k != "kind"]


def ae_cfg(root: Path, zoo: Path | None, *overrides: str) -> DictConfig:
    """The real autoencoder config with small parts, everything written under ``root``."""
    choice = dict(o.split("=", 1) for o in overrides if o.startswith(("encoder=", "decoder=")))
    encoder = choice.get("encoder", "mlp")
    decoder = choice.get("decoder", DECODER_OF.get(encoder, encoder))
    base = [f"paths.root_dir={root}", f"run_dir={root / 'run'}", *SMALL_OVERRIDES]
    base += [f"zoo={zoo}"] if zoo is not None else []
    base += part_overrides("encoder", encoder) + part_overrides("decoder", decoder)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=[*base, *overrides])


@pytest.fixture(scope="module")
def datamodule(api_zoo_path) -> WeightDataModule:
    dm = WeightDataModule(api_zoo_path, batch_size=8, seed=0)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def views_datamodule(api_zoo_path) -> WeightDataModule:
    dm = WeightDataModule(
        api_zoo_path, batch_size=8, seed=0, augment="weightspace.symmetry.augment", views=2
    )
    dm.setup()
    return dm


def part(what: str, kind: str) -> dict:
    """The small ``kind`` part's config, as the model receives it from Hydra."""
    return {"_target_": TARGETS[what][kind], "_partial_": True, **SMALL[kind]}


def small_model(dm: WeightDataModule, encoder: str = "mlp", **hparams) -> WeightAutoencoder:
    torch.manual_seed(0)
    parts = {
        "encoder": part("encoder", encoder),
        "decoder": part("decoder", DECODER_OF.get(encoder, encoder)),
    }
    return WeightAutoencoder.from_datamodule(dm, n_probe=64, scheduler=None, **parts, **hparams)


# --------------------------------------------------------------------------- the module
LOSSES = {
    "recon": {},
    "contrastive": {"recon_weight": 0.0, "contrastive_weight": 1.0},
    "functional": {"recon_weight": 0.0, "functional_weight": 1.0},
    "stats": {"recon_weight": 1e-6, "features": {"weight": 1.0}},
    "field": {"recon_weight": 0.0, "field_weight": 1.0, "functional_kind": "kl"},
}


@pytest.mark.parametrize(
    "loss, encoder",
    [
        ("recon", "mlp"),
        ("contrastive", "mlp"),
        ("functional", "mlp"),
        ("stats", "mlp"),
        ("field", "mlp"),
        ("recon", "transformer"),
        ("recon", "probe"),
    ],
)
def test_each_loss_decreases(loss, encoder, datamodule, views_datamodule):
    dm = views_datamodule if loss == "contrastive" else datamodule
    model = small_model(dm, encoder, **LOSSES[loss])
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    values = []
    for _ in range(50):
        opt.zero_grad()
        terms = model.compute_losses(batch)
        terms["loss"].backward()
        opt.step()
        values.append(terms[loss].item())
    assert values[-1] < 0.7 * values[0], f"{loss}: {values[0]:.4f} -> {values[-1]:.4f}"


@pytest.mark.parametrize("encoder", ["mlp", "transformer", "probe"])
def test_functional_gradient_reaches_the_decoder(encoder, datamodule):
    model = small_model(datamodule, encoder, recon_weight=0.0, functional_weight=1.0)
    batch = next(iter(datamodule.train_dataloader()))
    terms = model.compute_losses(batch)
    assert set(terms) >= {"functional", "loss"}
    terms["loss"].backward()
    for name, p in model.decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient on decoder.{name}"
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_field_loss_trains_the_encoder_through_the_field_not_the_weight_decoder(datamodule):
    model = small_model(datamodule, recon_weight=0.0, field_weight=1.0, field_hidden=[32])
    batch = next(iter(datamodule.train_dataloader()))
    terms = model.compute_losses(batch)
    assert "functional" not in terms and torch.equal(terms["loss"], terms["field"])
    # The field's prediction has the original's outputs' shape on the probe inputs.
    z = model.encode(batch)
    assert model.field(z, model.probe_inputs).shape == (len(z), 64, datamodule.spec.widths[-1])
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.field.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


def test_a_detached_decoder_learns_to_decode_without_shaping_the_latent(datamodule):
    model = small_model(datamodule, field_weight=1.0, field_hidden=[32], detach_decoder=True)
    batch = next(iter(datamodule.train_dataloader()))
    terms = model.compute_losses(batch)
    terms["recon"].backward(retain_graph=True)  # the weight loss reaches the decoder alone
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    terms["field"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    with pytest.raises(ConfigError, match="^detach_decoder: true leaves the encoder no loss"):
        small_model(datamodule, detach_decoder=True)
    # The best checkpoint follows the loss that shapes the latent.
    assert model.monitor == "val/field"
    assert small_model(datamodule, recon_weight=0.0, field_weight=1.0).monitor == "val/field"
    assert small_model(datamodule, field_weight=1.0).monitor == "val/recon"


def test_decode_params_runs_with_the_functional_forward(datamodule):
    model = small_model(datamodule).eval()
    batch = next(iter(datamodule.val_dataloader()))
    z = model.encode(batch)  # (B, latent)
    params = model.decode_params(z)
    spec = datamodule.spec
    assert {n: tuple(p.shape[1:]) for n, p in params.items()} == spec.param_shapes()
    out = forward(params, model.probe_inputs, spec)
    assert out.shape == (len(z), 64, spec.widths[-1]) and torch.isfinite(out).all()
    # The module's denormalization is the datamodule's normalizer.
    expected = unflatten_params(datamodule.normalizer.denormalize(model.decode(z)), spec)
    for n in params:
        torch.testing.assert_close(params[n], expected[n])
    # A batch, its weights and its neuron tokens encode alike.
    tokens = params_to_tokens(unflatten_params(batch["weights"], spec), spec)
    torch.testing.assert_close(model.encode({"tokens": tokens}), z)
    torch.testing.assert_close(model.encode(batch["weights"]), z)


def test_weight_statistics_are_the_baselines_standardized(datamodule):
    model = small_model(datamodule, features={"weight": 1.0, "input": True})
    batch = next(iter(datamodule.val_dataloader()))
    params = datamodule.normalizer.denormalize_params(
        unflatten_params(batch["weights"], model.spec)
    )
    expected = layer_statistics(params, model.spec)  # the probes' "stats" features (float64)
    expected = (expected - np.array(model.hparams.stats_mean)) / np.array(model.hparams.stats_std)
    got = model.weight_statistics(batch["weights"]).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    # Fitted on the training split: standardized there, the columns have mean 0 and std 1.
    train = datamodule.dataset("train")
    normalized = datamodule.normalizer.normalize_params(train.params(range(len(train))))
    z = model.weight_statistics(flatten_params(normalized, model.spec))
    # (to float32 round trips through the normalizer: a column of tiny spread moves by ~1%)
    assert z.mean(0).abs().max() < 0.05 and (z.std(0, correction=0) - 1).abs().max() < 0.05
    # The statistics reach the latent: changing them alone changes it.
    flat = batch["weights"]
    moved = model._encode_flat(flat, model.weight_statistics(flat) + 1.0)
    assert not torch.allclose(moved, model.encode(flat))


def test_whitening_makes_every_principal_direction_count_alike():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=gen) * torch.tensor([10.0, 3.0, 1.0, 0.3, 0.1, 0.01])
    x = torch.randn(4000, 6, generator=gen) @ mix.T  # correlated, variances over 6 decades
    cov = lambda a: torch.cov(a.double().T)  # noqa: E731
    torch.testing.assert_close(cov(x @ whitening(x, 0.0)), torch.eye(6, dtype=torch.float64),
                               atol=1e-3, rtol=1e-3)  # fmt: skip
    # eps: a direction of variance lam keeps lam / (lam + eps) of its weight.
    lam = torch.linalg.eigvalsh(cov(x))
    got = torch.linalg.eigvalsh(cov(x @ whitening(x, 1.0)))
    torch.testing.assert_close(got, lam / (lam + 1.0), atol=1e-4, rtol=1e-3)


def test_whitened_head_loss_and_its_reload(datamodule, tmp_path):
    feats = {"weight": 1.0, "spectrum": True}
    plain = small_model(datamodule, features=feats)
    model = small_model(datamodule, features={**feats, "whiten": 0.1})
    assert not hasattr(plain, "stats_whiten") and "whiten" not in plain.hparams.features
    w = model.stats_whiten
    assert w.shape == (model.stats_head.out_features,) * 2 and not torch.allclose(
        w, torch.eye(len(w))
    )
    batch = next(iter(datamodule.train_dataloader()))
    with torch.no_grad():
        stats = model.weight_statistics(batch["weights"])
        error = model.stats_head(model.encode(batch["weights"])) - stats
        got = model.compute_losses(batch)["stats"]
        torch.testing.assert_close(got, (error @ w).square().mean())
        assert not torch.isclose(got, error.square().mean())  # not the plain MSE
    # Reloads strictly: the map travels in the state dict.
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "w.ckpt")
    back = WeightAutoencoder.load_from_checkpoint(tmp_path / "w.ckpt", strict=True)
    torch.testing.assert_close(back.stats_whiten, model.stats_whiten)
    with pytest.raises(ConfigError, match=r"^features.whiten: weighs the head's error"):
        small_model(datamodule, features={"whiten": 0.1})
    with pytest.raises(ConfigError, match=r"^features.whiten: -1.0, must be >= 0"):
        small_model(datamodule, features={**feats, "whiten": -1})


@pytest.mark.parametrize(
    "spectrum, products, function",
    [(False, False, False), (True, False, False), (True, True, False), (True, True, True)],
)
def test_concatenated_statistics_are_latent_coordinates(datamodule, spectrum, products, function):
    model = small_model(
        datamodule,
        features={
            "input": "concat",
            "spectrum": spectrum,
            "products": products,
            "function": function,
        },
    )
    batch = next(iter(datamodule.val_dataloader()))
    flat = batch["weights"]
    n_stats = (
        8 * len(model.spec.param_shapes())
        + spectrum * len(spectrum_names(model.spec))
        + products * len(product_spectrum_names(model.spec))
        + function * len(function_feature_names(model.spec))
    )
    params = datamodule.normalizer.denormalize_params(unflatten_params(flat, model.spec))
    # The function features run on the task's training inputs the model drew, with their labels.
    task = datamodule.task
    rows = [int((task.x_train == x).all(1).nonzero()[0]) for x in model.probe_inputs]
    if function:
        assert torch.equal(model.probe_targets, task.y_train[rows])
    probe = (task.x_train[rows], task.y_train[rows]) if function else None
    features = FeatureSpec(spectrum, products, function).compute(params, model.spec, probe)
    expected = (features - np.array(model.hparams.stats_mean)) / np.array(model.hparams.stats_std)
    np.testing.assert_allclose(model.weight_statistics(flat).numpy(), expected, atol=2e-3)
    z = model.encode(flat)
    assert (
        z.shape
        == (len(flat), model.hparams.latent_dim + n_stats)
        == (
            len(flat),
            model.latent_width,
        )
    )
    # The last coordinates are the standardized statistics themselves, the first the encoder's.
    torch.testing.assert_close(z[:, -n_stats:], model.weight_statistics(flat))
    torch.testing.assert_close(z[:, :-n_stats], model.encoder(flat))
    # The decoder reads the whole latent: the statistics' coordinates move its output.
    moved = z.clone()
    moved[:, -n_stats:] += 1.0
    assert model.decode(z).shape == flat.shape
    assert not torch.allclose(model.decode(moved), model.decode(z))
    terms = model.compute_losses(next(iter(datamodule.train_dataloader())))
    assert torch.isfinite(terms["loss"]) and "stats" not in terms
    # The evaluation's reference for this latent: the same features, spectra always included.
    reference = FeatureSpec(True, products, function).compute(params, model.spec, probe)
    np.testing.assert_allclose(model.invariant_features(params), reference, rtol=1e-6)


def test_outputs_use_each_members_activation():
    """Zoos may mix activations: each network runs with its own."""
    spec = MLPSpec((4, 3, 2))
    x = torch.randn(5, 4)
    model = WeightAutoencoder(
        widths=spec.widths, activations=["relu", "tanh"], n_probe=5, probe_inputs=x
    )
    flat = torch.randn(6, spec.n_params())
    codes = torch.tensor([0, 1, 1, 0, 1, 0])
    out = model.network_outputs(flat, codes)
    params = unflatten_params(flat, spec)
    for i, code in enumerate(codes.tolist()):
        one = {n: p[i : i + 1] for n, p in params.items()}
        expected = forward(one, x, spec, ["relu", "tanh"][code])[0]
        torch.testing.assert_close(out[i], expected)
    # The function features assume one activation for the whole zoo: a clear error otherwise.
    with pytest.raises(ConfigError, match=r"^features.function: .* mixes relu, tanh"):
        WeightAutoencoder(
            widths=spec.widths, activations=["relu", "tanh"], features={"function": True}, n_probe=5
        )
    with pytest.raises(ConfigError, match=r"^probe_targets: shape \(4,\), expected \(5,\)"):
        WeightAutoencoder(
            widths=spec.widths, features={"function": True}, n_probe=5, probe_targets=torch.zeros(4)
        )


def test_probe_encoder_is_invariant_to_the_networks_symmetries(datamodule):
    """The probe encoder reads what a network computes: hidden-unit permutations and relu's
    rescaling leave its latent unchanged, while another network moves it."""
    model = small_model(datamodule, "probe").eval()
    spec, norm = model.spec, datamodule.normalizer
    flat = next(iter(datamodule.val_dataloader()))["weights"]
    params = norm.denormalize_params(unflatten_params(flat, spec))
    gen = torch.Generator().manual_seed(0)
    ps = mlp_permutation_spec(spec)
    moved = apply_permutation(ps, random_permutations(ps, len(flat), gen), params)
    c = torch.rand(len(flat), spec.widths[1], generator=gen) + 0.5  # relu: scale a unit's in/out
    moved["layers.0.weight"] = moved["layers.0.weight"] * c[:, :, None]
    moved["layers.0.bias"] = moved["layers.0.bias"] * c
    moved["layers.1.weight"] = moved["layers.1.weight"] / c[:, None, :]
    moved_flat = flatten_params(norm.normalize_params(moved), spec)
    assert not torch.allclose(moved_flat, flat, atol=1e-3)  # other weights ...
    with torch.no_grad():
        z = model.encode(flat)
        torch.testing.assert_close(model.encode(moved_flat), z, rtol=1e-4, atol=1e-4)  # same latent
        assert not torch.allclose(model.encode(flat.roll(1, 0)), z, atol=1e-3)
    with pytest.raises(ConfigError, match=r"^encoder.kind: probe needs a zoo of one activation"):
        WeightAutoencoder(
            widths=spec.widths, activations=["relu", "tanh"], encoder=part("encoder", "probe")
        )


def test_bad_options_are_config_errors(datamodule):
    with pytest.raises(ConfigError, match="functional_kind"):
        small_model(datamodule, functional_kind="l1")
    with pytest.raises(ConfigError, match="encoder.kind"):
        WeightAutoencoder.from_datamodule(datamodule, encoder={"kind": "cnn"})
    with pytest.raises(ConfigError, match="recon_weight"):
        small_model(datamodule, recon_weight=0.0)
    with pytest.raises(ConfigError, match="stats_mean"):
        WeightAutoencoder(widths=[4, 3, 2], features={"weight": 1.0})
    with pytest.raises(ConfigError, match="features.input"):
        small_model(datamodule, features={"input": "sum"})
    with pytest.raises(ConfigError, match="features.weight"):
        small_model(datamodule, features={"input": "concat", "weight": 1.0})
    with pytest.raises(ConfigError, match="field_hidden"):
        small_model(datamodule, field_weight=1.0, field_hidden=[])
    model = small_model(datamodule, contrastive_weight=0.5)
    with pytest.raises(ConfigError, match="two augmented views"):
        model.compute_losses(next(iter(datamodule.train_dataloader())))


@pytest.mark.parametrize("encoder", ["mlp", "transformer", "probe"])
def test_checkpoint_reloads_strictly_with_identical_outputs(encoder, views_datamodule, tmp_path):
    model = small_model(
        views_datamodule,
        encoder,
        contrastive_weight=0.1,
        functional_weight=1.0,
        field_weight=0.5,
        field_hidden=[16],
        features={"weight": 0.5, "input": True, "origin": 0.5},
    )
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=views_datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = WeightAutoencoder.load_from_checkpoint(path, strict=True)  # no datamodule
    model.eval()
    loaded.eval()
    batch = next(iter(views_datamodule.val_dataloader()))
    with torch.no_grad():
        for k, v in model.compute_losses(batch, functional=True).items():
            assert torch.equal(loaded.compute_losses(batch, functional=True)[k], v), k
        z = model.encode(batch)
        assert torch.equal(loaded.encode(batch), z)
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert torch.equal(loaded.probe_inputs, model.probe_inputs)
    assert loaded.normalizer == views_datamodule.normalizer
    # The hyperparameters are plain values; the feature use in its one canonical form.
    assert loaded.hparams.features == {
        "input": "add",
        "weight": 0.5,
        "origin": 0.5,
        "spectrum": False,
        "products": False,
        "function": False,
    }
    assert loaded.encoder_kind == encoder


def test_checkpoints_and_configs_from_before_the_restructure_still_load(datamodule, tmp_path):
    """Old checkpoints name their parts by kind and carry five stats_* options; old run
    configs name the old module paths: both are read as today's."""
    model = small_model(datamodule, "transformer", features={"input": "concat", "spectrum": True})
    hparams = {k: v for k, v in model.hparams.items() if k != "features"}
    hparams["encoder"] = dict(SMALL["transformer"])  # kind only, no _target_
    hparams["decoder"] = dict(SMALL["transformer"])
    hparams.update(stats_weight=0.0, stats_input="concat", stats_spectrum=True)
    hparams.update(stats_products=False, stats_function=False)
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    loaded = WeightAutoencoder.load_from_checkpoint(path, strict=True)
    assert loaded.hparams.features == model.hparams.features
    assert loaded.hparams.encoder["_target_"] == TARGETS["encoder"]["transformer"]
    flat = next(iter(datamodule.val_dataloader()))["weights"]
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode(flat), model.eval().encode(flat))

    old = OmegaConf.create(
        {
            "data": {"_target_": "weightspace.dataset.WeightDataModule", "seed": 0},
            "model": {"_target_": "weightspace.autoencoder.WeightAutoencoder.from_datamodule"},
        }
    )
    new = upgrade_config(old)
    assert get_class(new.data._target_) is WeightDataModule
    assert get_method(new.model._target_) == WeightAutoencoder.from_datamodule


def test_parts_must_be_weightspace_modules(datamodule):
    """A checkpoint's hyperparameters name classes to build: only weightspace's modules."""
    with pytest.raises(ConfigError, match=r"^encoder._target_: 'os.system' is not a class of"):
        WeightAutoencoder(widths=[4, 3, 2], encoder={"_target_": "os.system", "_partial_": True})
    with pytest.raises(ConfigError, match=r"^decoder._target_: .* is not an nn.Module"):
        WeightAutoencoder(
            widths=[4, 3, 2], decoder={"_target_": "weightspace.features.FeatureSpec"}
        )
    with pytest.raises(ConfigError, match=r"^encoder: .*unexpected keyword argument 'depth'"):
        WeightAutoencoder(widths=[4, 3, 2], encoder={**part("encoder", "mlp"), "depth": 3})


# --------------------------------------------------------------------------- train(cfg)
@pytest.mark.parametrize("encoder", ["mlp", "transformer", "probe"])
def test_train_fast_dev_run(encoder, api_zoo_path, tmp_path):
    cfg = ae_cfg(
        tmp_path,
        api_zoo_path,
        f"encoder={encoder}",
        "canon=augment",
        "model.functional_weight=1.0",
        "trainer.fast_dev_run=true",
    )
    metrics = train(cfg)
    for key in ("train/loss", "train/recon", "train/contrastive", "train/functional"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    for key in ("val/recon", "val/functional", "val/agreement", "test/recon", "test/functional"):
        assert key in metrics, key
    assert metrics["global_step"] == 1
    run = Path(metrics["run_dir"])
    assert run == tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["zoo"] == str(api_zoo_path)
    assert OmegaConf.load(run / "config.yaml").model.encoder.kind == encoder


@pytest.mark.parametrize("canon", ["none", "canonical", "augment"])
@pytest.mark.parametrize("encoder, decoder", [("mlp", "mlp"), ("transformer", "mlp")])
def test_every_config_builds(canon, encoder, decoder, api_zoo_path, tmp_path):
    cfg = ae_cfg(
        tmp_path, api_zoo_path, f"encoder={encoder}", f"decoder={decoder}", f"canon={canon}"
    )
    dm = instantiate(cfg.data, zoo_paths=str(api_zoo_path), _convert_="all")
    model = instantiate(cfg.model, _convert_="all")(dm)
    batch = next(iter(dm.train_dataloader()))
    assert torch.isfinite(model.compute_losses(batch)["loss"])
    assert (batch["weights"].dim() == 3) == (canon == "augment")
    assert ("contrastive" in model.compute_losses(batch)) == (canon == "augment")


@pytest.mark.parametrize("trainer", ["default", "ddp"])
def test_trainer_configs_instantiate(trainer, tmp_path):
    cfg = ae_cfg(tmp_path, None, f"trainer={trainer}")
    built = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(built, pl.Trainer) and built.max_epochs == cfg.trainer.max_epochs


def test_align_reads_the_merge_many_zoo(zoo_copy, tmp_path):
    cfg = ae_cfg(tmp_path, zoo_copy, "canon=align", "trainer.fast_dev_run=true")
    with pytest.raises(ZooError) as err:
        train(cfg)
    message = str(err.value)
    assert "canon=align" in message and "\n" not in message
    assert f"canonicalize_zoo.py parent={zoo_copy} transform.kind=merge_many" in message

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        dcfg = compose(
            "canonicalize",
            overrides=[f"parent={zoo_copy}", "transform.kind=merge_many", "progress=false"],
        )
    derive(dcfg)
    metrics = train(cfg)
    record = json.loads((Path(metrics["run_dir"]) / "run.json").read_text())
    assert record["zoo"] == f"{zoo_copy}-merge_many"

    # The main job's preset (make demo) on the same derived zoo: every loss it turns on runs.
    demo = ae_cfg(
        tmp_path / "demo", zoo_copy, "experiment=autoencoder/demo", "trainer.fast_dev_run=true"
    )
    assert demo.canon.name == "align" and demo.model.features.input == "concat"
    metrics = train(demo)
    for key in ("train/recon", "train/functional", "val/agreement"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    model = WeightAutoencoder.load_from_checkpoint(metrics["last_checkpoint"], strict=True)
    n_features = (
        8 * len(model.spec.param_shapes())
        + len(spectrum_names(model.spec))
        + len(product_spectrum_names(model.spec))
        + len(function_feature_names(model.spec))
    )
    features = demo.model.features
    assert features.products and features.spectrum and features.function
    assert model.latent_width == demo.model.latent_dim + n_features


def test_missing_zoo_is_one_line_error_naming_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"^zoo: required"):
        train(ae_cfg(tmp_path, None))
    with pytest.raises(ZooError, match=rf"^zoo: {tmp_path / 'zoos' / 'nameless'} is not"):
        train(ae_cfg(tmp_path, Path("nameless")))  # a name: under paths.zoo_dir
    with pytest.raises(ZooError, match=r"^zoo: .*nowhere is not a finished zoo") as err:
        train(ae_cfg(tmp_path, tmp_path / "nowhere"))
    assert "\n" not in str(err.value)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    folder = tmp_path / "2026-01-01_00-00-00"  # Hydra's timestamped folder, shared
    first = claim_run_dir(folder, fresh=True)
    second = claim_run_dir(folder, fresh=True)
    third = claim_run_dir(folder, fresh=True)
    assert (first, second, third) == (
        folder,
        tmp_path / "2026-01-01_00-00-00-1",
        tmp_path / "2026-01-01_00-00-00-2",
    )
    # A resumed run keeps its folder; a claimed folder starts a new record (new W&B id).
    assert claim_run_dir(folder, fresh=False) == folder
    assert (second / "run.json").read_text() == ""
    a, b = _run_record(first, tmp_path), _run_record(second, tmp_path)
    assert a["wandb_id"] != b["wandb_id"]


def test_resume_continues_the_run(api_zoo_path, tmp_path):
    first = train(ae_cfg(tmp_path, api_zoo_path, "trainer.max_epochs=1"))
    run = Path(first["run_dir"])
    assert Path(first["best_checkpoint"]).is_file() and Path(first["last_checkpoint"]).is_file()
    wandb_id = json.loads((run / "run.json").read_text())["wandb_id"]

    second = train(
        ae_cfg(
            tmp_path,
            api_zoo_path,
            "trainer.max_epochs=2",
            "run_dir=null",  # the checkpoint's run folder is found from ckpt_path
            f"ckpt_path={first['last_checkpoint']}",
        )
    )
    assert second["run_dir"] == str(run)
    assert second["global_step"] > first["global_step"] > 0
    assert json.loads((run / "run.json").read_text())["wandb_id"] == wandb_id
    assert (run / "csv" / "version_0" / "metrics.csv").is_file()
    assert (run / "csv" / "version_1" / "metrics.csv").is_file()


def test_last_checkpoint_is_the_last_epoch_not_the_best(api_zoo_path, tmp_path):
    """last.ckpt (what a resume starts from) holds the last epoch even when an earlier epoch
    stays the best: at lr 1e-30 nothing moves, val/recon never improves after epoch 0."""
    m = train(ae_cfg(tmp_path, api_zoo_path, "trainer.max_epochs=3", "model.lr=1e-30"))
    last = torch.load(m["last_checkpoint"], map_location="cpu", weights_only=False)
    best = torch.load(m["best_checkpoint"], map_location="cpu", weights_only=False)
    assert Path(m["last_checkpoint"]).name == "last.ckpt"
    names = sorted(p.name for p in Path(m["last_checkpoint"]).parent.iterdir())
    assert names == [Path(m["best_checkpoint"]).name, "last.ckpt"]  # no last-v1.ckpt
    assert (best["epoch"], last["epoch"]) == (0, 2)
    assert last["global_step"] == m["global_step"] > best["global_step"]


@pytest.mark.slow
def test_resume_continues_the_wandb_run(api_zoo_path, tmp_path):
    common = ("logger=wandb", "logger.mode=offline", "trainer.max_epochs=1")
    first = train(ae_cfg(tmp_path, api_zoo_path, *common))
    train(
        ae_cfg(
            tmp_path,
            api_zoo_path,
            *common,
            "trainer.max_epochs=2",
            f"ckpt_path={first['last_checkpoint']}",
        )
    )
    wandb_id = json.loads((Path(first["run_dir"]) / "run.json").read_text())["wandb_id"]
    runs = sorted((tmp_path / "outputs" / "wandb").glob("offline-run-*"))
    # Two offline folders of one W&B run (a second folder started within the same second
    # gets a "-1" suffix, so check the run file each holds, not the folder name).
    assert len(runs) == 2 and all((r / f"run-{wandb_id}.wandb").is_file() for r in runs)


# --------------------------------------------------------------------------- the script
def run_script(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(root, *args, timeout=300, script=SCRIPT)


@pytest.mark.slow
def test_script_multirun_and_errors(api_zoo_path, tmp_path):
    result = run_script(
        tmp_path,
        "-m",
        f"zoo={api_zoo_path}",
        "encoder=mlp,transformer",
        "trainer.fast_dev_run=true",
        *SMALL_OVERRIDES,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted((tmp_path / "outputs" / "autoencoder-multirun").glob("*/*/run.json"))
    assert len(runs) == 2, "one run folder per job, under paths.log_dir"

    result = run_script(tmp_path, f"zoo={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: zoo: ")


@pytest.mark.slow
def test_training_ends_with_the_evaluation_written_to_the_run_folder(api_zoo_path, tmp_path):
    """The whole end of the pipeline: train, test, then probes / reconstruction / generation
    against the baselines on the held-out members, written as tables."""
    cfg = ae_cfg(tmp_path, api_zoo_path, "evaluate=true", "trainer.max_epochs=2")
    metrics = train(cfg)
    results = metrics["evaluation"]
    assert {"latent", "stats", "pca"} <= set(results["probes"]["representation"])
    assert {"autoencoder", "pca"} <= set(results["reconstruction"].index)
    folder = Path(metrics["run_dir"]) / "evaluation"
    for name in ("probes.csv", "reconstruction.csv", "table.md", "results.json"):
        assert (folder / name).stat().st_size > 0, name
    assert "test_acc" in (folder / "table.md").read_text()
    # What the script prints: the table, a readable reconstruction summary per epoch.
    text = summarize_evaluation(results, Path(metrics["run_dir"]))
    assert results["table"] in text and f"written to {folder}" in text
    rec_lines = [line for line in text.splitlines() if line.startswith(("autoencoder", "pca"))]
    assert len(rec_lines) == len(results["reconstruction"])
    assert "agreement" in text and "r2/layers.0.weight" not in text  # the full table: CSV
