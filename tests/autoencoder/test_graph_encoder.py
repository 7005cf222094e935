"""The graph encoder (encoder=graph): its invariances, what it must still see, training inside
the autoencoder, strict reload and the entry point."""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_OVERRIDES, quiet_trainer
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from weightspace.autoencoder import WeightAutoencoder
from weightspace.autoencoder.graph import GraphEncoder
from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError
from weightspace.nets.forward import forward
from weightspace.nets.layout import flatten_params, unflatten_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name
from weightspace.symmetry import (
    apply_permutation,
    mlp_permutation_spec,
    random_permutations,
    rescale_units,
)

# Small, so every test runs in seconds on one thread.
SMALL = {"hidden": 16, "edge_dim": 4, "message_dim": 4, "n_layers": 2, "readout_hidden": 32}
GRAPH = {"_target_": "weightspace.autoencoder.graph.GraphEncoder", "_partial_": True, **SMALL}
MLP_DECODER = {"_target_": "weightspace.autoencoder.decoders.MLPDecoder", "hidden": [64]}
WIDTHS = (12, 8, 6, 3)
N = 16
TOL = {"rtol": 1e-5, "atol": 1e-5}


def random_params(spec: MLPSpec, n: int = N, seed: int = 0) -> Params:
    """``n`` random networks (kaiming-like weights, nonzero biases)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(n, *shape, generator=gen) * (shape[-1] ** -0.5 if len(shape) > 1 else 0.3)
        for name, shape in spec.param_shapes().items()
    }


def encoder(spec: MLPSpec, **options) -> GraphEncoder:
    torch.manual_seed(0)
    return GraphEncoder(spec, 5, **{**SMALL, **options}).eval()


def permuted(spec: MLPSpec, params: Params, seed: int = 1, n: int = N) -> Params:
    """Every hidden layer's units permuted at random, per network (``n`` of them)."""
    ps = mlp_permutation_spec(spec)
    perms = random_permutations(ps, n, torch.Generator().manual_seed(seed))
    return apply_permutation(ps, perms, params)


def rescaled(spec: MLPSpec, params: Params, signs: bool, seed: int = 2, n: int = N) -> Params:
    """Every hidden unit multiplied by a random factor: +-1 (``signs``) or in (e^-2, e^2)."""
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for name, size in mlp_permutation_spec(spec).sizes.items():
        u = torch.rand(n, size, generator=gen)
        factors[name] = torch.where(u < 0.5, -1.0, 1.0) if signs else torch.exp(4 * u - 2)
    return rescale_units(params, spec, factors)


def assert_moved(a: Params, b: Params) -> None:
    assert any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a), "the weights changed"


@torch.no_grad()
def assert_same_function(spec: MLPSpec, a: Params, b: Params) -> None:
    x = torch.randn(7, spec.widths[0])
    torch.testing.assert_close(forward(a, x, spec), forward(b, x, spec), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "gelu"])
def test_latent_is_invariant_to_hidden_permutations(activation):
    spec = MLPSpec(WIDTHS, activation)
    params = random_params(spec)
    moved = permuted(spec, params)
    assert_moved(params, moved)
    assert_same_function(spec, params, moved)
    enc = encoder(spec)
    with torch.no_grad():
        torch.testing.assert_close(enc(moved), enc(params), **TOL)


@pytest.mark.parametrize(
    "activation, readouts",
    [
        ("relu", {}),
        ("leaky_relu", {}),
        ("relu", {"gram": 3}),
        ("relu", {"spectral": 3}),
        ("relu", {"entries": 3}),
    ],
)
def test_latent_is_invariant_to_positive_rescaling_of_relu_units(activation, readouts):
    spec = MLPSpec(WIDTHS, activation)
    params = random_params(spec)
    moved = permuted(spec, rescaled(spec, params, signs=False))
    assert_moved(params, moved)
    assert_same_function(spec, params, moved)
    with torch.no_grad():
        enc = encoder(spec, **readouts)
        torch.testing.assert_close(enc(moved), enc(params), **TOL)
        # The invariance is the canonicalization's: without it the latent moves.
        plain = encoder(spec, symmetry="permutation", **readouts)
        assert not torch.allclose(plain(moved), plain(params), atol=1e-3)
        torch.testing.assert_close(plain(permuted(spec, params)), plain(params), **TOL)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_symmetry_sign_keeps_permutations_and_sign_flips_not_relu_scales(activation):
    spec = MLPSpec(WIDTHS, activation)
    params = random_params(spec)
    tanh = activation == "tanh"
    moved = permuted(spec, rescaled(spec, params, signs=tanh))
    with torch.no_grad():
        enc = encoder(spec, symmetry="sign", gram=3, spectral=3, entries=3)
        torch.testing.assert_close(enc(permuted(spec, params)), enc(params), **TOL)
        if tanh:
            torch.testing.assert_close(enc(moved), enc(params), **TOL)
        else:
            assert not torch.allclose(enc(moved), enc(params), atol=1e-3)
    assert (enc.scale, enc.sign) == (False, tanh)


@pytest.mark.parametrize("readouts", [{}, {"gram": 3}, {"spectral": 3}, {"entries": 3}])
def test_latent_is_invariant_to_sign_flips_of_tanh_units(readouts):
    spec = MLPSpec(WIDTHS, "tanh")
    params = random_params(spec)
    moved = permuted(spec, rescaled(spec, params, signs=True))
    assert_moved(params, moved)
    assert_same_function(spec, params, moved)
    with torch.no_grad():
        enc = encoder(spec, **readouts)
        torch.testing.assert_close(enc(moved), enc(params), **TOL)
        plain = encoder(spec, symmetry="permutation", **readouts)
        assert not torch.allclose(plain(moved), plain(params), atol=1e-3)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_per_tensor_scaling_keeps_every_invariance_and_brings_tensors_to_unit_rms(activation):
    """center=layer: each tensor over its running RMS (one number per tensor), learned on
    training batches and frozen in eval; the latent stays invariant to permutations and to
    rescaling (relu) / sign flips (tanh)."""
    spec = MLPSpec(WIDTHS, activation)
    params = random_params(spec)
    params[weight_name(2)] = params[weight_name(2)] * 1e-3  # a tensor at a far-off scale
    enc = encoder(spec, center="layer").train()
    enc(params)  # one training batch: the running statistics
    enc.eval()
    scaled = enc.standardize(enc.canonical(params))
    for w, b in scaled:
        torch.testing.assert_close(w.square().mean(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.square().mean(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    moved = permuted(spec, rescaled(spec, params, signs=activation == "tanh"))
    assert_moved(params, moved)
    with torch.no_grad():
        torch.testing.assert_close(enc(moved), enc(params), **TOL)


@pytest.mark.parametrize("activation, signs", [("relu", False), ("tanh", True), ("sine", True)])
def test_probe_features_keep_every_invariance_and_are_the_networks_values(activation, signs):
    """probe=K: every node reads its values on K inputs (computed after canonicalizing), so
    the latent stays invariant; the outputs' values are the network's outputs, and a network
    computing something else on the probe inputs gets another latent."""
    spec = MLPSpec(WIDTHS, activation)
    params = random_params(spec)
    x = torch.randn(6, spec.widths[0])
    enc = encoder(spec, probe=4, probe_inputs=x)
    assert torch.equal(enc.probe_x, x[:4])
    values = enc.probe_activations(enc.canonical(params))
    assert [v.shape[1] for v in values] == list(spec.widths)
    torch.testing.assert_close(values[-1].transpose(1, 2), forward(params, x[:4], spec), **TOL)
    moved = permuted(spec, rescaled(spec, params, signs=signs))
    assert_moved(params, moved)
    assert_same_function(spec, params, moved)
    with torch.no_grad():
        torch.testing.assert_close(enc(moved), enc(params), **TOL)
        # The probe features reach the latent: the same weights, other probe inputs.
        other = encoder(spec, probe=4, probe_inputs=x)
        other.probe_x.copy_(torch.randn(4, spec.widths[0]))
        assert not torch.allclose(other(params), enc(params), atol=1e-4)
    with pytest.raises(ConfigError, match=r"^encoder.probe: 8 probe inputs asked, the model has 6"):
        GraphEncoder(spec, 5, probe=8, probe_inputs=x)
    with pytest.raises(ConfigError, match=r"^encoder.probe: runs each network, .* relu, tanh"):
        GraphEncoder(spec, 5, activations=["relu", "tanh"], symmetry="permutation", probe=2)


def test_latent_sees_the_weights_inputs_and_outputs():
    """Input pixels and output classes have an identity: permuting them is another network,
    and so is another network. (In float64, where the invariances above hold to ~1e-15: an
    untrained encoder moves by ~1e-4 here, by ~1e-1 between networks.)"""
    spec = MLPSpec(WIDTHS)
    params = {k: v.double() for k, v in random_params(spec).items()}
    enc = encoder(spec).double()
    gen = torch.Generator().manual_seed(3)
    pixels = {
        **params,
        weight_name(0): params[weight_name(0)][..., torch.randperm(12, generator=gen)],
    }
    last = spec.n_layers - 1
    order = torch.tensor([1, 2, 0])
    classes = {
        **params,
        weight_name(last): params[weight_name(last)][:, order],
        bias_name(last): params[bias_name(last)][:, order],
    }
    with torch.no_grad():
        z = enc(params)
        assert (enc(permuted(spec, params)) - z).abs().max() < 1e-12
        for other in (pixels, classes):
            assert ((enc(other) - z).norm(dim=1) > 1e-6).all()
        assert (z[1:] - z[:1]).norm(dim=1).min() > 1e-3, "networks differ, latents too"


def test_bias_free_and_deeper_networks_encode():
    for spec in (MLPSpec((5, 4, 3), bias=False), MLPSpec((6, 5, 5, 5, 4, 2), "tanh")):
        params = random_params(spec)
        enc = encoder(spec)
        z = enc(params)
        assert z.shape == (N, 5) and torch.isfinite(z).all()
        with torch.no_grad():
            torch.testing.assert_close(enc(permuted(spec, params)), z.detach(), **TOL)


def test_zoos_it_cannot_read_stop_before_training():
    spec = MLPSpec(WIDTHS)
    with pytest.raises(
        ConfigError, match=r"^encoder.symmetry: auto cannot canonicalize a zoo mixing relu, tanh"
    ):
        GraphEncoder(spec, 5, activations=["relu", "tanh", "relu"])
    with pytest.raises(
        ConfigError, match=r"^encoder.symmetry: sign cannot canonicalize .* relu, tanh"
    ):
        GraphEncoder(spec, 5, activations=["relu", "tanh"], symmetry="sign")
    assert not GraphEncoder(spec, 5, activations=["relu", "gelu"], symmetry="sign").sign
    with pytest.raises(ConfigError, match=r"^encoder.symmetry: 'scale' \(choose auto, sign or"):
        GraphEncoder(spec, 5, symmetry="scale")
    with pytest.raises(ConfigError, match=r"^encoder.gram: channels of the angle readout, >= 0"):
        GraphEncoder(spec, 5, gram=-2)
    with pytest.raises(ConfigError, match=r"^encoder.spectral: channels of the spectral"):
        GraphEncoder(spec, 5, spectral=-2)
    with pytest.raises(ConfigError, match=r"^encoder.entries: channels of the entry readout"):
        GraphEncoder(spec, 5, entries=-2)
    # One symmetry for all members: canonicalized alike; or permutations only.
    assert GraphEncoder(spec, 5, activations=["relu", "leaky_relu"]).scale
    assert not GraphEncoder(spec, 5, activations=["relu", "tanh"], symmetry="permutation").scale
    # The model hands the encoder the zoo's activations: the error reaches it, one line.
    with pytest.raises(ConfigError, match=r"^encoder.symmetry: auto .* relu, tanh") as err:
        WeightAutoencoder(widths=WIDTHS, activations=["relu", "tanh"], encoder=GRAPH)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def datamodule(api_zoo_path) -> WeightDataModule:
    dm = WeightDataModule(api_zoo_path, batch_size=8, seed=0)
    dm.setup()
    return dm


def graph_model(dm: WeightDataModule, **hparams) -> WeightAutoencoder:
    torch.manual_seed(0)
    hparams = {"encoder": GRAPH, **hparams}
    return WeightAutoencoder.from_datamodule(
        dm, n_probe=64, scheduler=None, decoder=MLP_DECODER, **hparams
    )


def test_model_trains_and_its_latent_is_invariant(datamodule):
    model = graph_model(datamodule, latent_dim=8)
    assert model.reads_params and model.encoder_kind == "GraphEncoder"
    batch = next(iter(datamodule.train_dataloader()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    values = []
    for _ in range(40):
        opt.zero_grad()
        loss = model.compute_losses(batch)["loss"]
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < 0.7 * values[0], f"{values[0]:.4f} -> {values[-1]:.4f}"
    assert all(p.grad is not None for p in model.encoder.parameters())

    # The zoo's own networks, permuted and rescaled (relu), through the normalizer.
    model.eval()
    spec, norm = model.spec, datamodule.normalizer
    flat = next(iter(datamodule.val_dataloader()))["weights"]
    params = norm.denormalize_params(unflatten_params(flat, spec))
    ps = mlp_permutation_spec(spec)
    gen = torch.Generator().manual_seed(0)
    moved = apply_permutation(ps, random_permutations(ps, len(flat), gen), params)
    f = {name: torch.rand(len(flat), n, generator=gen) + 0.5 for name, n in ps.sizes.items()}
    moved = rescale_units(moved, spec, f)
    moved_flat = flatten_params(norm.normalize_params(moved), spec)
    assert not torch.allclose(moved_flat, flat, atol=1e-3)
    with torch.no_grad():
        z = model.encode_learned(flat)
        torch.testing.assert_close(model.encode_learned(moved_flat), z, **TOL)
        torch.testing.assert_close(model.encode(flat), z)  # no features: the latent


def test_checkpoint_reloads_strictly_with_identical_outputs(datamodule, tmp_path):
    graph = {**GRAPH, "probe": 8}  # the probe features' inputs travel in the state dict
    model = graph_model(
        datamodule, functional_weight=1.0, features={"input": "concat"}, encoder=graph
    )
    assert torch.equal(model.encoder.probe_x, model.probe_inputs[:8])
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = WeightAutoencoder.load_from_checkpoint(path, strict=True).eval()
    model.eval()
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        for k, v in model.compute_losses(batch, functional=True).items():
            assert torch.equal(loaded.compute_losses(batch, functional=True)[k], v), k
        assert torch.equal(loaded.encode(batch), model.encode(batch))
    assert isinstance(loaded.encoder, GraphEncoder) and loaded.encoder.scale
    assert torch.equal(loaded.encoder.probe_x, model.probe_inputs[:8])


def test_train_fast_dev_run_with_encoder_graph(api_zoo_path, tmp_path):
    small = [f"model.encoder.{k}={v}" for k, v in SMALL.items()]
    overrides = [
        f"paths.root_dir={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        f"zoo={api_zoo_path}",
        *SMALL_OVERRIDES,
        "encoder=graph",
        *small,
        "model.decoder.hidden=[64]",
        "model.functional_weight=1.0",
        "trainer.fast_dev_run=true",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    assert cfg.model.decoder._target_.endswith("MLPDecoder")  # decoder=${encoder}: the MLP
    metrics = train(cfg)
    for key in ("train/loss", "train/recon", "train/functional", "val/recon", "test/recon"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["global_step"] == 1
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.model.encoder.kind == "graph" and saved.name == "ae-graph-none"
