"""Every config composes and every part it names builds: configs rot otherwise.

One config root (``conf/``) serves every entry point; each primary config is composed with
each of its presets and group options, and what they name with ``_target_`` is built.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from weightspace.config import CONF_DIR
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.generate import generate
from weightspace.zoo.idx import write_idx


def write_tiny_mnist(raw) -> None:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))


PRIMARY = ("generate", "canonicalize", "train_autoencoder", "analyze")


def options(group: str) -> list[str]:
    """The options of a config group: its YAML files, subfolders included, without suffix."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_one_config_root_holds_every_primary_config_and_no_links():
    assert all((CONF_DIR / f"{name}.yaml").is_file() for name in PRIMARY)
    assert not [p for p in CONF_DIR.rglob("*") if p.is_symlink()]
    # Each entry point's presets live in experiment/<stage>/.
    assert {p.name for p in (CONF_DIR / "experiment").iterdir()} == {
        "zoo",
        "autoencoder",
        "analysis",
    }


@pytest.mark.parametrize("preset", options("experiment/zoo"))
def test_zoo_presets_compose(preset, tmp_path):
    c = cfg("generate", f"experiment=zoo/{preset}", f"paths.root_dir={tmp_path}")
    assert c.zoo.name == preset or preset == "demo"
    assert c.zoo.size > 0 and c.zoo.checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("preset", options("experiment/zoo"))
def test_zoo_presets_make_a_tiny_zoo(preset, tmp_path):
    """Each zoo preset, shrunk to the tests' tiny zoo, generates (MNIST from tiny IDX files
    the test writes)."""
    write_tiny_mnist(tmp_path / "data" / "MNIST" / "raw")
    c = cfg(
        "generate",
        f"experiment=zoo/{preset}",
        f"paths.root_dir={tmp_path}",
        *(f"{k}={v}" for k, v in TINY.items()),
    )
    summary = generate(c)
    assert summary.n_members == int(TINY["zoo.size"]) and not summary.missing_shards


@pytest.mark.parametrize("preset", options("experiment/autoencoder"))
def test_autoencoder_presets_compose(preset, tmp_path):
    c = cfg("train_autoencoder", f"experiment=autoencoder/{preset}", f"paths.root_dir={tmp_path}")
    assert c.model.encoder._target_.startswith("weightspace.autoencoder.")


@pytest.mark.parametrize("encoder", options("encoder"))
def test_every_encoder_and_its_default_decoder_build(encoder, tmp_path):
    """The encoder partial and the decoder ``decoder=${encoder}`` picks build for the demo's
    architecture (what the model calls them with: spec, width)."""
    c = cfg("train_autoencoder", f"encoder={encoder}", "zoo=x", f"paths.root_dir={tmp_path}")
    spec = MLPSpec((64, 32, 32, 10))
    enc_cfg = {k: v for k, v in c.model.encoder.items() if k != "kind"}
    extra = {"n_probe": 8} if encoder == "probe" else {}
    part = instantiate(enc_cfg)(spec, 8, **extra)
    assert sum(p.numel() for p in part.parameters()) > 0
    dec_cfg = {k: v for k, v in c.model.decoder.items() if k != "kind"}
    decoder = instantiate(dec_cfg)(spec, 8)
    assert sum(p.numel() for p in decoder.parameters()) > 0


@pytest.mark.parametrize("group", ["canon", "trainer", "logger", "decoder"])
def test_every_option_of_the_autoencoders_groups_composes(group, tmp_path):
    for option in options(group):
        c = cfg("train_autoencoder", f"{group}={option}", "zoo=x", f"paths.root_dir={tmp_path}")
        assert c.data._target_.endswith("WeightDataModule")


@pytest.mark.parametrize("task", options("task"))
def test_every_task_composes_for_the_generator(task, tmp_path):
    assert cfg("generate", f"task={task}", f"paths.root_dir={tmp_path}").task.name == task


@pytest.mark.parametrize("preset", options("experiment/analysis"))
def test_analysis_presets_compose_with_the_generators_backend_option(preset, tmp_path):
    """The generator's trainer option is named backend: trainer is the autoencoder's group."""
    c = cfg("analyze", f"experiment=analysis/{preset}", f"paths.root_dir={tmp_path}")
    assert c.generate and c.sections == [preset]
    g = cfg("generate", "backend=hand", f"paths.root_dir={tmp_path}")
    assert g.backend == "hand" and "trainer" not in g
