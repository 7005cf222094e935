"""One encoder over several architectures: the graph encoder's pooled readout (its invariances
on three architectures of different widths and depths, what it refuses) and the
MixedAutoencoder (a shared encoder, a head per architecture) trained, reloaded and run from
the entry point on zoos of three architectures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_cfg
from helpers import SMALL_OVERRIDES, quiet_trainer
from hydra import compose, initialize_config_dir
from test_graph_encoder import (
    GRAPH,
    MLP_DECODER,
    SMALL,
    TOL,
    assert_moved,
    permuted,
    random_params,
    rescaled,
)

from weightspace.autoencoder.graph import GraphEncoder
from weightspace.autoencoder.mixed import MixedAutoencoder
from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train
from weightspace.data.mixed import MixedDataModule
from weightspace.errors import ConfigError
from weightspace.nets.layout import flatten_params, unflatten_params
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.generate import generate

# Three architectures of one task (12 inputs, 3 classes): widths and depths differ.
ARCHS = ((12, 8, 3), (12, 8, 6, 3), (12, 5, 7, 4, 3))


def pooled(spec: MLPSpec, **options) -> GraphEncoder:
    torch.manual_seed(0)
    return GraphEncoder(spec, 5, readout="pooled", **{**SMALL, **options}).eval()


@pytest.mark.parametrize(
    "activation, readouts",
    [
        ("relu", {}),
        ("tanh", {}),
        ("relu", {"gram": 3}),
        ("tanh", {"gram": 3, "spectral": 3, "entries": 3}),
    ],
)
def test_one_encoder_reads_three_architectures_invariantly(activation, readouts):
    """The deepest architecture's encoder reads all three; each latent is unchanged (1e-5)
    by permutations of hidden units and by relu rescaling / tanh sign flips (with the angle
    readout too: first / last / mean over any number of hidden layers)."""
    enc = pooled(MLPSpec(ARCHS[-1], activation), **readouts)
    latents = []
    for k, widths in enumerate(ARCHS):
        spec = MLPSpec(widths, activation)
        params = random_params(spec, seed=k)
        moved = permuted(spec, rescaled(spec, params, signs=activation == "tanh"))
        assert_moved(params, moved)
        with torch.no_grad():
            z = enc(params)
            assert z.shape == (16, 5) and torch.isfinite(z).all()
            torch.testing.assert_close(enc(moved), z, **TOL)
        latents.append(z)
    # One latent space: architectures are told apart (their mean latents differ).
    means = torch.stack([z.mean(0) for z in latents])
    assert torch.cdist(means, means).fill_diagonal_(1.0).min() > 1e-4


def test_pooled_readout_is_one_width_for_every_depth():
    enc = pooled(MLPSpec(ARCHS[-1]))
    width = enc.head[0].in_features
    for widths in ARCHS:  # the pooled vector the head reads has one width
        spec = MLPSpec(widths)
        with torch.no_grad():
            assert enc(random_params(spec)).shape == (16, 5)
    assert width == 3 * SMALL["hidden"] + 3 * SMALL["hidden"] + SMALL["hidden"] + 3 * 4


def test_architectures_an_encoder_cannot_read_are_refused():
    layers = GraphEncoder(MLPSpec(ARCHS[1]), 5, **SMALL)  # the per-layer readout: one spec
    with pytest.raises(ConfigError, match=r"^encoder: reads 12-8-6-3 networks, got 12-8-3; "):
        layers(random_params(MLPSpec(ARCHS[0])))
    enc = pooled(MLPSpec(ARCHS[1]))
    for widths in ((12, 5, 7, 4, 3), (10, 8, 3), (12, 8, 4)):  # deeper; other inputs; outputs
        with pytest.raises(ConfigError, match=r"^encoder: reads 12-8-6-3 networks \(pooled"):
            enc(random_params(MLPSpec(widths)))
    with pytest.raises(ConfigError, match=r"^encoder.readout: 'mean' \(choose layers or pooled"):
        GraphEncoder(MLPSpec(ARCHS[0]), 5, readout="mean")
    with pytest.raises(
        ConfigError, match=r"^encoder.center: entry standardizes .* set encoder.center=null"
    ):
        GraphEncoder(MLPSpec(ARCHS[0]), 5, readout="pooled", center="entry")


# --------------------------------------------------------------------------- the model
# Three tiny digits zoos of three architectures (one task); 10 members each, 3 epochs.
ZOO_HIDDEN = {"h16": "[16]", "h12x8": "[12,8]", "h8x3": "[8,8,8]"}


@pytest.fixture(scope="module")
def zoo_paths(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("mixed_zoos")
    return [
        str(generate(compose_cfg(root / k, f"model.hidden={h}", "zoo.size=10")).path)
        for k, h in ZOO_HIDDEN.items()
    ]


@pytest.fixture(scope="module")
def mixed(zoo_paths) -> MixedDataModule:
    dm = MixedDataModule(zoo_paths, batch_size=8, seed=0)
    dm.setup()
    return dm


def mixed_model(dm: MixedDataModule, **hparams) -> MixedAutoencoder:
    torch.manual_seed(0)
    return MixedAutoencoder.from_datamodule(
        dm,
        n_probe=32,
        scheduler=None,
        encoder=GRAPH,
        decoder=MLP_DECODER,
        functional_weight=1.0,
        functional_kind="kl",
        latent_dim=6,
        **hparams,
    )


def one_batch_each(dm: MixedDataModule, split: str = "train") -> list[dict]:
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    first = {}
    for batch in loader:
        first.setdefault(batch["arch"], batch)
    return [first[k] for k in range(len(dm.parts))]


def test_one_encoder_and_a_head_per_architecture_train_together(mixed):
    model = mixed_model(mixed)
    assert [h.spec.widths for h in model.heads] == [s.widths for s in mixed.specs]
    assert all(h.encoder is model.encoder for h in model.heads)  # one encoder, shared
    assert model.encoder.readout == "pooled" and model.encoder.spec.n_layers == 4  # deepest
    shared, total = model.n_shared_parameters()
    decoders = sum(p.numel() for h in model.heads for p in h.decoder.parameters())
    assert total == shared + decoders  # every tensor counted once
    batches = one_batch_each(mixed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = last = None
    for _ in range(30):
        opt.zero_grad()
        losses = [model.heads[b["arch"]].compute_losses(b)["loss"] for b in batches]
        sum(losses).backward()
        opt.step()
        first = first or [v.item() for v in losses]
        last = [v.item() for v in losses]
    for k, (a, b) in enumerate(zip(first, last)):
        assert b < 0.8 * a, f"architecture {mixed.names[k]}: {a:.4f} -> {b:.4f}"
    # Each architecture's batch reaches the shared encoder: a gradient from each alone.
    for b in batches:
        model.zero_grad()
        model.heads[b["arch"]].compute_losses(b)["loss"].backward()
        assert all(p.grad is not None for p in model.encoder.parameters())


def test_each_heads_latent_is_invariant_to_its_networks_symmetries(mixed):
    model = mixed_model(mixed).eval()
    for batch, head, part in zip(one_batch_each(mixed, "val"), model.heads, mixed.parts):
        spec, norm = head.spec, part.normalizer
        flat = batch["weights"]
        params = norm.denormalize_params(unflatten_params(flat, spec))
        n = len(flat)
        moved = permuted(spec, rescaled(spec, params, signs=False, n=n), n=n)
        moved_flat = flatten_params(norm.normalize_params(moved), spec)
        assert not torch.allclose(moved_flat, flat, atol=1e-3)
        with torch.no_grad():
            torch.testing.assert_close(
                model.encode({**batch, "weights": moved_flat}), model.encode(batch), **TOL
            )


def test_checkpoint_reloads_strictly_with_one_shared_encoder(mixed, tmp_path):
    model = mixed_model(mixed)
    trainer = quiet_trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=mixed)
    path = tmp_path / "mixed.ckpt"
    trainer.save_checkpoint(path)
    loaded = MixedAutoencoder.load_from_checkpoint(path, strict=True).eval()
    assert all(h.encoder is loaded.encoder for h in loaded.heads)
    model.eval()
    with torch.no_grad():
        for batch in one_batch_each(mixed, "val"):
            k = batch["arch"]
            for name, v in model.heads[k].compute_losses(batch, functional=True).items():
                assert torch.equal(loaded.heads[k].compute_losses(batch, functional=True)[name], v)
            assert torch.equal(loaded.encode(batch), model.encode(batch))


def test_what_a_mixed_model_cannot_read_stops_before_training(mixed):
    with pytest.raises(
        ConfigError,
        match=r"^encoder: mlp reads one architecture; zoos of "
        r"several \(64-16-10, 64-12-8-10, 64-8-8-8-10\) need encoder=graph "
        r"\(zoo: digits, digits, digits\)$",
    ):
        MixedAutoencoder.from_datamodule(mixed, n_probe=8)
    with pytest.raises(ConfigError, match=r"^model.features.input: concat: .* set it to false"):
        mixed_model(mixed, features={"input": "concat"})


def test_entry_point_trains_three_architectures_in_one_model(zoo_paths, tmp_path):
    def config(run: str, *encoder: str):
        overrides = [
            f"paths.root_dir={tmp_path}",
            f"run_dir={tmp_path / run}",
            f"zoo=[{','.join(zoo_paths)}]",
            *SMALL_OVERRIDES,
            *encoder,
            "model.latent_dim=6",
            "model.functional_weight=1.0",
            "model.functional_kind=kl",
            "trainer.max_epochs=2",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(CONFIG_NAME, overrides=overrides)

    graph = ["encoder=graph", *(f"model.encoder.{k}={v}" for k, v in SMALL.items())]
    metrics = train(config("run", *graph, "model.decoder.hidden=[32]"))
    names = ["64-16-10", "64-12-8-10", "64-8-8-8-10"]
    for key in ["val/recon", "test/recon", *(f"test/{n}/agreement" for n in names)]:
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["zoo"] == zoo_paths
    loaded = MixedAutoencoder.load_from_checkpoint(metrics["best_checkpoint"], strict=True)
    assert loaded.names == names
    # The same zoos with the MLP encoder: refused before training, naming the option.
    with pytest.raises(ConfigError, match=r"^encoder: mlp reads one architecture"):
        train(config("run2"))
    assert not (tmp_path / "run2").exists()


def test_a_mixed_run_is_read_per_architecture_and_compared_with_a_run_of_one(zoo_paths, tmp_path):
    """load_run(RUN, arch=...) rebuilds one architecture's head and members; compare_latents
    probes it against a run trained on that zoo alone, on the same held-out members."""
    from weightspace.autoencoder.run import load_run
    from weightspace.evaluation.paired import compare_latents, main

    base = [
        f"paths.root_dir={tmp_path}",
        *SMALL_OVERRIDES,
        "encoder=graph",
        *(f"model.encoder.{k}={v}" for k, v in SMALL.items()),
        "model.decoder.hidden=[32]",
        "model.latent_dim=6",
        "trainer.max_epochs=2",
    ]
    runs = {"mixed": f"zoo=[{','.join(zoo_paths)}]", "one": f"zoo={zoo_paths[1]}"}
    for name, zoo in runs.items():
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            train(compose(CONFIG_NAME, overrides=[*base, zoo, f"run_dir={tmp_path / name}"]))
    with pytest.raises(ConfigError, match=r"^arch: None: run .* choose one of 64-16-10, "):
        load_run(tmp_path / "mixed")
    head = load_run(tmp_path / "mixed", arch="64-12-8-10")
    one = load_run(tmp_path / "one")
    assert head.model.spec == one.model.spec and head.datamodule.splits == one.datamodule.splits
    assert torch.equal(head.model.weight_mean, one.model.weight_mean)  # same training split
    # The same model against itself: every difference exactly 0, tied.
    _, same = compare_latents({"a": one.model, "b": one.model}, one.datamodule)
    assert len(same) and (same["difference"] == 0).all() and (same["verdict"] == "tied").all()
    # The entry point: the mixed run's head of the other run's architecture, found by itself.
    out = tmp_path / "cmp"
    table = main([str(tmp_path / "mixed"), str(tmp_path / "one"), "--out", str(out)])
    assert set(table["representation"]) == {"A: mixed"} and set(table["baseline"]) == {"B: one"}
    assert {"test_acc", "epoch"} <= set(table["target"])
    assert (out / "comparisons.csv").is_file() and (out / "probes.csv").is_file()
    # The analyses read one architecture of it: latent.arch.
    from weightspace.analysis.run import load_autoencoder

    def analysis(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("analyze", overrides=[f"autoencoder={tmp_path / 'mixed'}", *overrides])

    with pytest.raises(ConfigError, match=r"^latent.arch: None: run .* choose one of 64-16-10"):
        load_autoencoder(analysis())
    run = load_autoencoder(analysis("latent.arch=64-8-8-8-10"))
    assert run.model.spec.widths == (64, 8, 8, 8, 10) and run.datamodule.spec == run.model.spec
