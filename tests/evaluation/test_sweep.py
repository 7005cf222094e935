"""Autoencoder sweeps: an Optuna multirun, and one table + plot of it (summarize_sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli
from helpers import SMALL_OVERRIDES

from weightspace.errors import ConfigError
from weightspace.evaluation.probes import PROBE_COLUMNS
from weightspace.evaluation.results import EvalResults
from weightspace.evaluation.sweep import summarize_sweep

SUMMARIZE = REPO / "scripts" / "summarize_sweep.py"
TRAIN = REPO / "scripts" / "train_autoencoder.py"


def fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "config.yaml").write_text("optimized_metric: val/recon\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({**metrics, "run_dir": str(job)}))
    else:
        (job / "run.json").write_text("{}")  # started, never finished


def test_table_has_one_row_per_job_sorted_by_the_metric(tmp_path):
    common = ["zoo=tiny", "trainer.max_epochs=3"]
    fake_job(tmp_path, 0, [*common, "model.lr=0.01", "encoder=mlp"], {"val/recon": 0.5})
    fake_job(tmp_path, 1, [*common, "model.lr=0.001", "encoder=transformer"], {"val/recon": 0.2})
    fake_job(tmp_path, 2, [*common, "model.lr=0.1", "encoder=mlp"], None)
    out = summarize_sweep(tmp_path)
    table = out["table"]
    assert list(table["job"]) == ["1", "0", "2"]  # best first, the failed job last
    assert list(table["status"]) == ["done", "done", "failed"]
    assert list(table["model.lr"]) == [0.001, 0.01, 0.1]  # numbers, not strings
    assert out["varying"] == ["model.lr", "encoder"] and out["metric"] == "val/recon"
    assert out["constant"] == {"zoo": "tiny", "trainer.max_epochs": 3}
    lines = out["markdown"].splitlines()
    assert lines[1] == "same in every job: zoo=tiny trainer.max_epochs=3"
    assert lines[3].split(" | ")[:5] == ["| job", "status", "model.lr", "encoder", "val/recon |"]
    assert lines[5].startswith("| 1 | done | 0.001 | transformer | 0.2 |")
    for path in out["paths"].values():
        assert path.stat().st_size > 0
    assert out["paths"]["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_probes_of_the_latent_and_the_learned_coordinates(tmp_path):
    """A job's evaluation gives the linear test-accuracy probe of the latent and of the
    encoder's own coordinates ("learned") a column each."""
    fake_job(tmp_path, 0, ["model.lr=0.01"], {"val/recon": 0.5})
    fake_job(tmp_path, 1, ["model.lr=0.1"], {"val/recon": 0.4})
    rows = [
        (rep, probe, "test_acc", metric, value, 1.0, "")
        for rep, base in [("latent", 0.8), ("learned", 0.6), ("stats", 0.9)]
        for probe, metric, value in [
            ("ridge", "r2", base),
            ("ridge", "kendall_tau", 0.5),
            ("boosting", "r2", base + 0.05),
        ]
    ]
    probes = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    rec = pd.DataFrame({"r2_mean": [0.3]}, index=["autoencoder"])
    EvalResults(probes, rec).save(tmp_path / "0" / "evaluation")
    out = summarize_sweep(tmp_path, plot=False)
    table = out["table"].set_index("job")
    assert table.loc["0", "eval/probe/test_acc"] == 0.8
    assert table.loc["0", "eval/probe_learned/test_acc"] == 0.6
    assert pd.isna(table.loc["1", "eval/probe_learned/test_acc"])  # no evaluation
    header = next(line for line in out["markdown"].splitlines() if line.startswith("| job"))
    assert "| eval/probe/test_acc | eval/probe_learned/test_acc |" in header


def test_bad_sweep_dir_is_one_line_error_and_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="holds no job folders"):
        summarize_sweep(tmp_path)
    for bad in (tmp_path, tmp_path / "nowhere"):
        result = run_cli(tmp_path, str(bad), script=SUMMARIZE)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            result.stderr.strip().splitlines()[-1]
        ] and result.stderr.startswith(f"error: sweep dir: {bad}")


@pytest.mark.slow
def test_optuna_sweep_then_summary(api_zoo_path, tmp_path):
    """A real two-trial Optuna sweep of tiny trainings (with the evaluation), summarized."""
    result = run_cli(
        tmp_path,
        "-m",
        f"zoo={api_zoo_path}",
        "hydra/sweeper=optuna_search",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.params=null",  # the preset's search space replaced by one axis:
        "model.latent_dim=choice(4,8)",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.max_epochs=1",  # (fast_dev_run would replace the W&B logger by a dummy)
        "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]",
        *[o for o in SMALL_OVERRIDES if not o.startswith("evaluate")],
        "evaluate=true",
        "logger=wandb",
        "logger.mode=offline",  # offline W&B runs under outputs/wandb, no network
        script=TRAIN,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "autoencoder-multirun").iterdir())
    jobs = {p.name: json.loads((p / "metrics.json").read_text()) for p in sweep.glob("[0-9]")}
    assert sorted(jobs) == ["0", "1"]
    # The study minimized what each job returned: its val/recon.
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(m["val/recon"] for m in jobs.values()))

    # Each job its own W&B run (the id in its run.json), both in a group named after the sweep.
    runs = sorted((tmp_path / "outputs" / "wandb").glob("offline-run-*"))
    ids = {json.loads((sweep / n / "run.json").read_text())["wandb_id"] for n in jobs}
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[-1] for r in runs} == ids
    for r in runs:
        assert sweep.name.encode() in next(r.glob("*.wandb")).read_bytes()

    result = run_cli(tmp_path, str(sweep), script=SUMMARIZE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| job | status | model.latent_dim | val/recon |" in result.stdout
    out = summarize_sweep(sweep, plot=False)
    table = out["table"].set_index("job")
    for num, metrics in jobs.items():
        assert table.loc[num, "val/recon"] == pytest.approx(metrics["val/recon"])
        assert table.loc[num, "status"] == "done"
        # The evaluation's headline numbers, from <job>/evaluation/results.json.
        assert -10 < table.loc[num, "eval/recon/r2_mean"] < 1
        assert "eval/probe/test_acc" in table and "eval/gen/sample_acc_median" in table
    assert set(table["model.latent_dim"]) <= {4, 8}
    assert (sweep / "parallel_coordinates.png").stat().st_size > 0
