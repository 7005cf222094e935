"""Section 6 (analysis/inr_signals.py): an autoencoder run on an INR zoo drawn as signals
(fitted, decoded, sampled) and as a latent map coloured by class."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_cfg
from helpers import TINY_INR
from hydra import compose, initialize_config_dir

from weightspace.analysis import analyze, compose_config
from weightspace.zoo.generate import generate


@pytest.fixture(scope="module")
def inr_run(tmp_path_factory) -> tuple[Path, Path]:
    """(root, run folder): a tiny INR zoo and an experiment=autoencoder/inr_digits run on it."""
    from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train

    root = tmp_path_factory.mktemp("inr_section")
    zoo = generate(compose_cfg(root, *TINY_INR, tiny=False)).path
    run_dir = root / "outputs" / "autoencoder" / "inr"
    overrides = [
        "experiment=autoencoder/inr_digits",
        f"zoo={zoo}",
        f"paths.root_dir={root}",
        f"run_dir={run_dir}",
        "data.fractions=[0.5,0.25,0.25]",
        "data.batch_size=4",
        "model.n_probe=64",
        "model.latent_dim=4",
        "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        train(compose(CONFIG_NAME, overrides=overrides))
    return root, run_dir


def test_inr_section_draws_the_grid_and_the_class_map(inr_run, tmp_path):
    root, run_dir = inr_run
    cfg = compose_config(
        f"paths.root_dir={root}", f"autoencoder={run_dir}", "sections=[inr]", f"out={tmp_path}"
    )
    result = analyze(cfg)
    assert not result["sections"]["inr"]["skipped"]
    assert (tmp_path / "inr_signals.png").is_file()
    assert (tmp_path / "inr_latent_classes.png").is_file()
    html = (tmp_path / "report.html").read_text()
    assert "Held-out class accuracy" in html and "PSNR" in html


def test_inr_section_is_skipped_without_a_run(api_zoo_path):
    from weightspace.analysis.inr_signals import section
    from weightspace.analysis.question import Inputs
    from weightspace.zoo.store import Zoo

    s = section(Inputs(Zoo.open(api_zoo_path)), {})
    assert s.skipped and "autoencoder=RUN" in s.notes[0]
