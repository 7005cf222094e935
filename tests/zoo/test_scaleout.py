"""Scale-out: launcher presets (joblib, submitit), and DDP training over two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from conftest import REPO, cli_env, cli_overrides, compose_cfg, run_cli
from hydra import compose, initialize_config_dir

from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME
from weightspace.config import CONF_DIR
from weightspace.data.datamodule import WeightDataModule
from weightspace.zoo.generate import generate
from weightspace.zoo.store import Zoo

PARTS = ("zoo.size=12", "zoo.shard_size=3")  # 4 shard files, 2 per job


class RecordTrainItems(pl.Callback):
    """Test-only: writes the (zoo, member, epoch) of every training item this rank saw to
    ``<folder>/seen-<rank>.json``. Given by config (``+callbacks.record._target_=...``), so
    the DDP processes Lightning starts build it too."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.items: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        keys = zip(batch["zoo_index"], batch["member_id"], batch["epoch"])
        self.items += [[int(z), int(m), int(e)] for z, m, e in keys]

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "items": self.items}
        (self.folder / f"seen-{trainer.global_rank}.json").write_text(json.dumps(record))


def launcher_cfg(config_dir: Path, name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("root, name", [(CONF_DIR, "generate"), (CONFIG_DIR, CONFIG_NAME)])
def test_launcher_presets_compose_in_both_config_roots(root, name):
    slurm = launcher_cfg(
        root,
        name,
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.timeout_min=240",
    ).hydra.launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (slurm.partition, slurm.gpus_per_node, slurm.tasks_per_node) == ("gpu", 4, 4)
    assert (slurm.timeout_min, slurm.cpus_per_task, slurm.mem_gb) == (240, 4, 16)
    local = launcher_cfg(root, name, "hydra/launcher=slurm_local").hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")
    joblib = launcher_cfg(root, name, "hydra/launcher=parallel").hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == -1


def test_optuna_preset_composes_for_the_autoencoder():
    cfg = launcher_cfg(CONFIG_DIR, CONFIG_NAME, "hydra/sweeper=optuna_search", "seed=3")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {"model.lr", "model.weight_decay", "model.latent_dim"}
    assert cfg.optimized_metric == "val/recon"


# --------------------------------------------------------------------------- launchers
def assert_same_zoo(made: Path, reference: Path) -> None:
    zoo = Zoo.open(made)  # finished: every shard there, manifest written
    assert len(zoo) == 12 and zoo.manifest["n_shards"] == 4
    for f in sorted((reference / "shards").iterdir()):
        assert (made / "shards" / f.name).read_bytes() == f.read_bytes(), f.name
    assert zoo.members.equals(Zoo.open(reference).members)
    assert zoo.metrics.equals(Zoo.open(reference).metrics)


@pytest.fixture(scope="module")
def one_job_zoo(tmp_path_factory) -> Path:
    return generate(compose_cfg(tmp_path_factory.mktemp("one"), *PARTS)).path


@pytest.mark.slow
def test_joblib_multirun_makes_the_zoo_in_parallel_jobs(tmp_path, one_job_zoo):
    args = cli_overrides(*PARTS, "zoo.shard=0,1", "zoo.num_shards=2")
    result = run_cli(tmp_path, "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel" in result.stderr + result.stdout
    jobs = sorted((tmp_path / "outputs" / "generate-multirun").glob("*/[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    assert_same_zoo(tmp_path / "zoos" / "digits", one_job_zoo)


@pytest.mark.slow
def test_submitit_local_multirun_makes_the_zoo(tmp_path, one_job_zoo):
    args = cli_overrides(*PARTS, "zoo.shard=0,1", "zoo.num_shards=2")
    result = run_cli(tmp_path, "-m", "hydra/launcher=slurm_local", *args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "generate-multirun").iterdir())
    logs = sorted(sweep.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2, "one submitit job folder (with its logs) per job"
    assert_same_zoo(tmp_path / "zoos" / "digits", one_job_zoo)


# --------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_cpu_processes_see_disjoint_data_and_write_one_run(api_zoo_path, tmp_path):
    from helpers import SMALL_OVERRIDES

    seen = tmp_path / "seen"
    fractions = "data.fractions=[0.5,0.25,0.25]"  # 6 of 12 members: 18 items, 9 per rank
    args = [
        f"zoo={api_zoo_path}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data.batch_size=4",
        fractions,
        *[o for o in SMALL_OVERRIDES if not o.startswith("evaluate")],
        "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]",
        "evaluate=true",
        f"+callbacks.record._target_={__name__}.RecordTrainItems",
        f"+callbacks.record.folder={seen}",
    ]
    # The callback's module (this file) must import in the processes Lightning starts.
    env = {
        **cli_env(tmp_path),
        "PYTHONPATH": os.pathsep.join(map(str, (Path(__file__).parent, REPO / "tests"))),
    }
    script = REPO / "scripts" / "train_autoencoder.py"
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Each rank saw half of the training split, and the halves do not overlap.
    records = [json.loads((seen / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in records] == [(0, 2), (1, 2)]
    halves = [{tuple(i) for i in r["items"]} for r in records]
    assert all(len(h) == len(r["items"]) == 9 for h, r in zip(halves, records))
    assert not halves[0] & halves[1]
    dm = WeightDataModule(api_zoo_path, fractions=[0.5, 0.25, 0.25], seed=0)
    dm.setup()
    train = dm.dataset("train").items
    expected = set(zip(train["zoo_index"], train["member_id"], train["epoch"]))
    assert halves[0] | halves[1] == {tuple(map(int, k)) for k in expected}

    # One run folder, written once: run record, config, metrics, evaluation, checkpoints.
    runs = list((tmp_path / "outputs" / "autoencoder").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    # The process of rank 1 adds only its Hydra log (hydra.output_subdir=null for it).
    assert {p.name for p in run.iterdir()} == {
        *(".hydra", "checkpoints", "config.yaml", "csv", "evaluation", "metrics.json"),
        *("run.json", "train_autoencoder.log", "train_ddp_process_1.log"),
    }
    for name in ("run.json", "config.yaml", "metrics.json", "evaluation/table.md"):
        assert (run / name).is_file(), name
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run_dir"] == str(run) and metrics["global_step"] > 0
    # The results were printed once (by rank zero), not once per process.
    assert result.stdout.count('"global_step"') == 1
