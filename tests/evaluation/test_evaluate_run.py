"""``scripts/evaluate_run.py``: a trained run evaluated again reproduces its own evaluation,
writes where it is told, and keeps what is already written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from helpers import SMALL_OVERRIDES, load_script
from hydra import compose, initialize_config_dir

from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "evaluate_run.py"


def _script():
    return load_script("scripts/evaluate_run.py")


@pytest.fixture(scope="module")
def run_dir(api_zoo_path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate_run")
    overrides = [
        f"zoo={api_zoo_path}",
        f"paths.root_dir={root}",
        f"run_dir={root / 'run'}",
        *SMALL_OVERRIDES,
        "evaluate=true",
        "seed=3",
        "model.latent_dim=4",
        "trainer.max_epochs=1",
        "trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        train(compose(CONFIG_NAME, overrides=overrides))
    return root / "run"


def test_evaluating_a_run_again_reproduces_its_evaluation(run_dir, tmp_path, capsys):
    main = _script().main
    assert main([str(run_dir), "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "(best-" in printed and "seed 3" in printed and "| target" in printed
    for name in ("probes.csv", "comparisons.csv", "table.md"):
        assert (tmp_path / "again" / name).read_bytes() == (
            run_dir / "evaluation" / name
        ).read_bytes(), name


def test_an_existing_evaluation_is_kept_and_bad_runs_are_one_line(run_dir, tmp_path, capsys):
    main = _script().main
    saved = (run_dir / "evaluation" / "probes.csv").read_bytes()
    assert main([str(run_dir)]) == 2  # RUN/evaluation exists
    err = capsys.readouterr().err
    assert err.startswith("error: --out: ") and "--overwrite" in err and err.count("\n") == 1
    assert (run_dir / "evaluation" / "probes.csv").read_bytes() == saved
    assert main([str(run_dir), "--checkpoint", "nope.ckpt", "--out", str(tmp_path / "x")]) == 2
    assert "has no checkpoint nope.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    out = run_cli(tmp_path, str(tmp_path / "missing"), script=SCRIPT)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "is not an autoencoder run folder" in out.stderr
