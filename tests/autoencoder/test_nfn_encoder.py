"""The neural-functional encoder (``encoder=nfn``): equivariant NP layers, a latent invariant
to permutations, relu rescaling and tanh sign flips of hidden units (and to nothing else),
training, strict reload and the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SMALL_OVERRIDES, quiet_trainer
from hydra import compose, initialize_config_dir

from weightspace.autoencoder import WeightAutoencoder
from weightspace.autoencoder.blocks import EntryReadout, GramReadout, SpectralReadout
from weightspace.autoencoder.nfn import NFNEncoder, NPLayer
from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError
from weightspace.nets.forward import forward
from weightspace.nets.layout import flatten_params, unflatten_params
from weightspace.nets.spec import MLPSpec, Params, bias_name, layers, weight_name
from weightspace.symmetry import (
    apply_permutation,
    mlp_permutation_spec,
    perm_name,
    random_permutations,
    rescale_units,
)

SMALL_NFN = {"channels": 8, "n_layers": 2, "hidden": [32]}
ENCODER = {
    "_target_": "weightspace.autoencoder.nfn.NFNEncoder",
    "_partial_": True,
    "kind": "nfn",
    **SMALL_NFN,
}
DECODER = {"_target_": "weightspace.autoencoder.decoders.MLPDecoder", "_partial_": True}


def random_params(spec: MLPSpec, n: int, seed: int = 0) -> Params:
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for l, (o, i) in enumerate(spec.layer_shapes()):
        # Layers of very different scales, as a zoo's are.
        params[weight_name(l)] = torch.randn(n, o, i, generator=gen) * 3.0**l / i**0.5
        if spec.bias:
            params[bias_name(l)] = torch.randn(n, o, generator=gen) * 0.1
    return params


def unit_factors(spec: MLPSpec, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per hidden unit: a random positive scale (relu) or a random sign (tanh)."""
    factors = {}
    for l, width in enumerate(spec.widths[1:-1]):
        if spec.activation == "tanh":
            f = torch.randint(0, 2, (n, width), generator=gen).float() * 2 - 1
        else:
            f = torch.rand(n, width, generator=gen) * 4.0 + 0.25
        factors[perm_name(l)] = f
    return factors


@pytest.mark.parametrize(
    "activation, bias, gram, spectral",
    [
        ("relu", True, 0, 0),
        ("tanh", True, 0, 0),
        ("relu", False, 0, 0),
        ("relu", True, 4, 0),
        ("tanh", False, 4, 0),
        ("relu", True, 0, 3),
        ("tanh", True, 4, 3),
        ("relu", False, 0, -3),  # negative: the entry readout with 3 channels
        ("tanh", True, 0, -3),
    ],
)
def test_latent_is_invariant_to_the_symmetries_of_hidden_units(activation, bias, gram, spectral):
    spec = MLPSpec((7, 6, 5, 4, 3), activation, bias)
    torch.manual_seed(0)
    readouts = {"spectral": spectral} if spectral >= 0 else {"entries": -spectral}
    encoder = NFNEncoder(spec, 8, **SMALL_NFN, gram=gram, **readouts).eval()
    params = random_params(spec, 16)
    gen = torch.Generator().manual_seed(1)
    ps = mlp_permutation_spec(spec)
    moved = rescale_units(params, spec, unit_factors(spec, 16, gen))
    moved = apply_permutation(ps, random_permutations(ps, 16, gen), moved)
    x = torch.randn(32, 7, generator=gen)
    same = torch.testing.assert_close
    same(forward(moved, x, spec), forward(params, x, spec), rtol=1e-4, atol=1e-4)  # function
    assert not torch.allclose(moved["layers.1.weight"], params["layers.1.weight"], atol=0.1)
    with torch.no_grad():
        z = encoder(params)
        torch.testing.assert_close(encoder(moved), z, rtol=1e-5, atol=1e-5)
        # ... and not invariant to what is not a symmetry: inputs, outputs, other networks,
        # and the other activation's transform (a tanh unit scaled, a relu unit negated).
        inputs = dict(params, **{"layers.0.weight": params["layers.0.weight"].roll(1, -1)})
        outputs = dict(params)
        for name in ("layers.3.weight", "layers.3.bias")[: 1 + bias]:
            outputs[name] = params[name].roll(1, 1)
        other = {perm_name(0): torch.full((16, 6), -1.0 if activation == "relu" else 2.0)}
        for changed in (inputs, outputs, rescale_units(params, spec, other)):
            assert (encoder(changed) - z).abs().amax(-1).min() > 1e-3
        assert (encoder({k: v.roll(1, 0) for k, v in params.items()}) - z).abs().amax() > 1e-3


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_canonical_sign_keeps_permutations_and_sign_flips_not_relu_scales(activation):
    """canonical="sign": invariant to permutations and (tanh) sign flips, as the default; a
    relu unit's scale is read as trained, so rescaling moves the latent."""
    spec = MLPSpec((7, 6, 5, 4, 3), activation)
    torch.manual_seed(0)
    encoder = NFNEncoder(
        spec, 8, **SMALL_NFN, gram=4, spectral=3, entries=3, canonical="sign"
    ).eval()
    params = random_params(spec, 16)
    gen = torch.Generator().manual_seed(1)
    ps = mlp_permutation_spec(spec)
    moved = rescale_units(params, spec, unit_factors(spec, 16, gen))
    permuted = apply_permutation(ps, random_permutations(ps, 16, gen), params)
    with torch.no_grad():
        z = encoder(params)
        torch.testing.assert_close(encoder(permuted), z, rtol=1e-5, atol=1e-5)
        if activation == "tanh":  # sign flips: canonicalized, as canonical=True does
            torch.testing.assert_close(encoder(moved), z, rtol=1e-5, atol=1e-5)
        else:  # every member's scales changed: every latent moves
            assert (encoder(moved) - z).abs().amax(-1).min() > 1e-3
    with pytest.raises(ConfigError, match=r"^encoder.canonical: 'scale' \(choose true, false"):
        NFNEncoder(spec, 8, canonical="scale")


def permute_features(feats: list, perms: list[torch.Tensor]) -> list:
    """Hidden units of layer l reordered by ``perms[l]`` (N, n): rows of W_l and b_l,
    columns of W_{l+1}; features channels last."""
    out = []
    for l, (w, b) in enumerate(feats):  # (N, out, in, C), (N, out, C)
        n, _, _, c = w.shape
        if l < len(perms):
            rows = perms[l][:, :, None]
            w = w.gather(1, rows[..., None].expand(-1, -1, w.shape[2], c))
            b = b.gather(1, rows.expand(-1, -1, c))
        if l > 0:
            cols = perms[l - 1][:, None, :, None].expand(-1, w.shape[1], -1, c)
            w = w.gather(2, cols)
        out.append((w, b))
    return out


def test_np_layer_is_permutation_equivariant():
    """Permuting the hidden units of the input features permutes the output features the
    same way (the layer's own property, before any pooling)."""
    spec = MLPSpec((5, 4, 3, 2))
    torch.manual_seed(0)
    layer = NPLayer(spec.layer_shapes(), 2, 3, io_embed=True)
    feats = [(torch.randn(6, o, i, 2), torch.randn(6, o, 2)) for o, i in spec.layer_shapes()]
    perms = [torch.stack([torch.randperm(n) for _ in range(6)]) for n in spec.widths[1:-1]]
    moved = permute_features(feats, perms)
    assert not torch.allclose(moved[1][0], feats[1][0])
    expected = permute_features(layer(feats), perms)
    for (w, b), (w_exp, b_exp) in zip(layer(moved), expected):
        torch.testing.assert_close(w, w_exp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, b_exp, rtol=1e-5, atol=1e-5)


def test_gram_readout_is_a_mean_over_pairs_of_units():
    """Per hidden layer, the mean of the learned map over the cosines between two distinct
    units' incoming (row and bias) and outgoing (column) vectors; orthogonal rows give cosines
    0, and the readout ignores the order of the units."""
    spec = MLPSpec((6, 4, 3, 2), "relu", bias=True)
    torch.manual_seed(0)
    readout = GramReadout(3)
    params = random_params(spec, 5)
    w0 = torch.linalg.qr(torch.randn(5, 7, 4))[0].transpose(1, 2)  # 4 orthonormal rows in R^7
    params[weight_name(0)], params[bias_name(0)] = w0[..., :6], w0[..., 6]
    wb = list(layers(params, spec))
    with torch.no_grad():
        z = torch.cat(readout(wb), -1)
        expected = []
        for l in range(2):
            w, b = wb[l]
            for vecs in (torch.cat([w, b[..., None]], -1), wb[l + 1][0].transpose(1, 2)):
                h = vecs.shape[1]
                cos = torch.stack(
                    [
                        torch.nn.functional.cosine_similarity(vecs[:, i], vecs[:, j], dim=-1)
                        for i in range(h)
                        for j in range(h)
                        if i != j
                    ],
                    1,
                )  # (N, h (h - 1))
                expected.append(readout.phi(cos[..., None]).mean(1))
                if l == 0 and vecs.shape[-1] == 7:
                    torch.testing.assert_close(cos, torch.zeros_like(cos), atol=1e-6, rtol=0)
        torch.testing.assert_close(z, torch.cat(expected, -1), rtol=1e-5, atol=1e-6)
        ps = mlp_permutation_spec(spec)
        perms = random_permutations(ps, 5, torch.Generator().manual_seed(1))
        moved = list(layers(apply_permutation(ps, perms, params), spec))
        torch.testing.assert_close(torch.cat(readout(moved), -1), z, rtol=1e-5, atol=1e-6)
    assert z.shape == (5, 2 * readout.out_dim) == (5, 2 * 2 * 3)


def test_spectral_readout_is_a_mean_over_each_matrixs_singular_values():
    """Per layer, the learned map's mean over (singular value over their RMS, rank): an
    orthogonal matrix's values are all 1; permuting or negating rows and columns changes
    nothing; matrices of any shape are read; a different spectrum reads differently."""
    torch.manual_seed(0)
    readout = SpectralReadout(3)
    q = torch.linalg.qr(torch.randn(2, 6, 6))[0][:, :4]  # (2, 4, 6): orthonormal rows
    w = torch.randn(2, 5, 3)
    wb = [(2.5 * q, None), (w, torch.randn(2, 5))]
    with torch.no_grad():
        z = readout(wb)
        torch.testing.assert_close(readout.spectrum(2.5 * q), torch.ones(2, 4))
        for x, out in ((2.5 * q, z[0]), (w, z[1])):
            s = torch.linalg.svdvals(x)
            s = s / s.square().mean(-1, keepdim=True).sqrt()
            k = s.shape[-1]
            rank = ((torch.arange(k) + 0.5) / k).expand_as(s)
            expected = readout.phi(torch.stack([s, rank], -1)).mean(1)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        perm, signs = torch.randperm(5), torch.tensor([1.0, -1.0, 1.0])
        moved = readout([(2.5 * q[:, torch.randperm(4)], None), (w[:, perm] * signs, None)])
        for a, b in zip(moved, z):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        skewed = w * torch.tensor([3.0, 1.0, 0.2])  # a different spectrum
        assert (readout([(skewed, None)])[0] - z[1]).abs().max() > 1e-3
    assert [t.shape for t in z] == [(2, 3), (2, 3)] and readout.out_dim == 3


def test_entry_readout_is_a_mean_over_each_tensors_entries_with_its_scale():
    """Per layer, the learned map's mean over the weight's entries over their RMS and its log
    RMS, then the bias's (zeros without one); the entries' order does not matter; a uniform
    and a Gaussian matrix of one RMS read differently."""
    torch.manual_seed(0)
    readout = EntryReadout(3)
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(4, 6, 5, generator=gen), torch.randn(4, 6, generator=gen)
    w2 = torch.randn(4, 3, 6, generator=gen)
    with torch.no_grad():
        z = readout([(w, b), (w2, None)])
        assert [t.shape for t in z] == [(4, 8), (4, 8)] and readout.out_dim == 4
        for x, got in ((w, z[0][:, :4]), (b, z[0][:, 4:]), (w2, z[1][:, :4])):
            x = x.flatten(1)
            rms = x.square().mean(1, keepdim=True).sqrt()
            expected = torch.cat([readout.phi((x / rms)[..., None]).mean(1), rms.log()], -1)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not z[1][:, 4:].any()  # no bias: zeros
        shuffled = w.flatten(1)[:, torch.randperm(30)].view(4, 6, 5)
        torch.testing.assert_close(readout([(shuffled, b)])[0], z[0], rtol=1e-5, atol=1e-6)
        gauss = torch.randn(1, 64, 64, generator=gen)
        unif = (torch.rand(1, 64, 64, generator=gen) * 2 - 1) * 3**0.5  # RMS 1 as well
        a, c = readout([(gauss, None)])[0], readout([(unif, None)])[0]
        assert abs(a[0, 3] - c[0, 3]) < 0.05  # same scale ...
        assert (a[0, :3] - c[0, :3]).abs().max() > 1e-3  # ... different shape


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"^encoder.kind: nfn needs networks with a hidden"):
        NFNEncoder(MLPSpec((4, 2)), 8)
    with pytest.raises(ConfigError, match=r"^encoder.activation: unknown 'swish'"):
        NFNEncoder(MLPSpec((4, 3, 2)), 8, activation="swish")
    with pytest.raises(ConfigError, match=r"^encoder.gram: channels of the angle readout, >= 0"):
        NFNEncoder(MLPSpec((4, 3, 2)), 8, gram=-1)
    with pytest.raises(ConfigError, match=r"^encoder.spectral: channels of the spectral"):
        NFNEncoder(MLPSpec((4, 3, 2)), 8, spectral=-1)
    with pytest.raises(ConfigError, match=r"^encoder.entries: channels of the entry readout"):
        NFNEncoder(MLPSpec((4, 3, 2)), 8, entries=-1)
    # Canonicalized for the spec's one activation: a zoo mixing them is refused up front.
    with pytest.raises(ConfigError, match=r"^encoder.kind: nfn needs a zoo of one activation"):
        WeightAutoencoder(widths=(4, 3, 2), activations=["relu", "tanh"], encoder=ENCODER)


# --------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def datamodule(api_zoo_path) -> WeightDataModule:
    dm = WeightDataModule(api_zoo_path, batch_size=8, seed=0)
    dm.setup()
    return dm


def nfn_model(dm: WeightDataModule, **hparams) -> WeightAutoencoder:
    torch.manual_seed(0)
    return WeightAutoencoder.from_datamodule(
        dm, n_probe=64, scheduler=None, encoder=ENCODER, decoder=DECODER, **hparams
    )


def test_model_latent_is_invariant_on_the_zoo(datamodule):
    """Through the model: normalized flat weights in, the zoo's own parameters to the
    encoder; permuted and rescaled members of the zoo get the same latent."""
    model = nfn_model(datamodule).eval()
    spec, norm = model.spec, datamodule.normalizer
    flat = next(iter(datamodule.val_dataloader()))["weights"]
    params = norm.denormalize_params(unflatten_params(flat, spec))
    gen = torch.Generator().manual_seed(0)
    ps = mlp_permutation_spec(spec)
    moved = rescale_units(params, spec, unit_factors(spec, len(flat), gen))
    moved = apply_permutation(ps, random_permutations(ps, len(flat), gen), moved)
    moved_flat = flatten_params(norm.normalize_params(moved), spec)
    with torch.no_grad():
        z = model.encode(flat)
        torch.testing.assert_close(model.encode(moved_flat), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_learned(moved_flat), z, rtol=1e-5, atol=1e-5)
    assert model.encoder_kind == "nfn"


def test_trains_and_reloads_strictly(datamodule, tmp_path):
    model = nfn_model(datamodule, functional_weight=1.0)
    batch = next(iter(datamodule.train_dataloader()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    values = []
    for _ in range(30):
        opt.zero_grad()
        terms = model.compute_losses(batch)
        terms["loss"].backward()
        opt.step()
        values.append(terms["loss"].item())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert values[-1] < 0.7 * values[0], f"{values[0]:.4f} -> {values[-1]:.4f}"

    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = WeightAutoencoder.load_from_checkpoint(path, strict=True).eval()
    model.eval()
    with torch.no_grad():
        z = model.encode(batch)
        assert torch.equal(loaded.encode(batch), z)
        for k, v in model.compute_losses(batch, functional=True).items():
            assert torch.equal(loaded.compute_losses(batch, functional=True)[k], v), k


def test_train_fast_dev_run(api_zoo_path, tmp_path):
    overrides = [
        f"paths.root_dir={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        f"zoo={api_zoo_path}",
        *SMALL_OVERRIDES,
        "encoder=nfn",  # decoder=${encoder}: conf/decoder/nfn.yaml, the MLP decoder
        *(f"model.encoder.{k}={v}".replace(" ", "") for k, v in SMALL_NFN.items()),
        "model.decoder.hidden=[64]",
        "canon=augment",  # two views per network and the contrastive loss
        "model.functional_weight=1.0",
        "trainer.fast_dev_run=true",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    assert cfg.model.decoder._target_.endswith("MLPDecoder")
    metrics = train(cfg)
    for key in ("train/loss", "train/contrastive", "train/functional", "val/recon", "test/recon"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["global_step"] == 1
    assert Path(metrics["run_dir"]) == tmp_path / "run"


def test_nfn_weights_preset_trains_every_term(api_zoo_path, tmp_path):
    """``experiment=autoencoder/nfn_weights``: angle readout, field decoder and statistics
    head all train (on the API zoo as it is: canon=none)."""
    overrides = [
        "experiment=autoencoder/nfn_weights",
        f"paths.root_dir={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        f"zoo={api_zoo_path}",
        "canon=none",
        *SMALL_OVERRIDES,
        *(f"model.encoder.{k}={v}".replace(" ", "") for k, v in SMALL_NFN.items()),
        "model.decoder.hidden=[64]",
        "model.field_hidden=[32]",
        "trainer.fast_dev_run=true",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    assert cfg.model.encoder.gram == 16 and cfg.model.latent_dim == 64
    assert cfg.model.encoder.canonical == "sign"  # relu scales read as trained
    metrics = train(cfg)
    for key in ("train/field", "train/stats", "train/functional", "train/recon", "val/recon"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key


def test_nfn_weights_preset_with_the_graph_encoder_as_its_comment_says(api_zoo_path, tmp_path):
    overrides = [
        "experiment=autoencoder/nfn_weights",
        "encoder=graph",
        "~model.encoder.canonical",
        "model.encoder.symmetry=sign",
        f"paths.root_dir={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        f"zoo={api_zoo_path}",
        "canon=none",
        *SMALL_OVERRIDES,
        "model.encoder.hidden=8",
        "model.encoder.readout_hidden=16",
        "model.encoder.gram=2",
        "model.decoder.hidden=[32]",
        "model.field_hidden=[16]",
        "trainer.fast_dev_run=true",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    assert "canonical" not in cfg.model.encoder and cfg.model.encoder.symmetry == "sign"
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/stats"]))
