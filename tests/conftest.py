"""Shared fixtures: Hydra configs composed into tmp_path, tiny zoos, the digits task."""

from __future__ import annotations

import os

# No W&B run (nor its network access) from any test, whatever the logger config says.
os.environ["WANDB_MODE"] = "disabled"

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import settings
from omegaconf import DictConfig

from weightspace.config import CONF_DIR
from weightspace.zoo.generate import generate
from weightspace.zoo.tasks import load_task

# The test populations are tiny: extra intra-op threads only add synchronization, and on a
# busy 2-core machine OpenMP spin-waiting makes them many times slower. Subprocesses too.
torch.set_num_threads(1)

# Property tests draw the same examples on every run (a fixed seed sequence, no example
# database): a clean checkout passes or fails the same way each time. HYPOTHESIS_PROFILE=explore
# draws fresh ones, to look for new counterexamples on purpose.
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

REPO = CONF_DIR.parent
SCRIPT = REPO / "scripts" / "generate_zoo.py"

# A zoo that trains in well under a second: 8 members of [64, 16, 10] on digits, 2 shards.
TINY = {
    "progress": "false",
    "model.hidden": "[16]",
    "zoo.size": "8",
    "zoo.shard_size": "4",
    "zoo.checkpoints": "[0,1]",
    "zoo.hparams.epochs": "2",
}


def _merge(overrides: tuple[str, ...] | list[str], base: dict[str, str]) -> list[str]:
    """Hydra override strings, later ones replacing earlier ones for the same key."""
    merged = dict(base)
    for o in overrides:
        key, _, value = o.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def compose_cfg(root: Path, *overrides: str, tiny: bool = True) -> DictConfig:
    """``conf/generate.yaml`` with every output under ``root`` (and a tiny zoo by default)."""
    base = {"paths.root_dir": str(root), **(TINY if tiny else {"progress": "false"})}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("generate", overrides=_merge(overrides, base))


def cli_overrides(*overrides: str) -> list[str]:
    """Command-line arguments for scripts/generate_zoo.py: the tiny zoo plus ``overrides``."""
    return _merge(overrides, TINY)


def run_cli(
    root: Path, *args: str, timeout: float = 120, script: Path = SCRIPT
) -> subprocess.CompletedProcess:
    """Run an entry point (default scripts/generate_zoo.py) with all outputs under root."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=cli_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WEIGHTSPACE_ROOT": str(root),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides, root=None)``: a composed config writing under tmp_path."""

    def make(*overrides: str, root: Path | None = None, tiny: bool = True) -> DictConfig:
        return compose_cfg(root or tmp_path, *overrides, tiny=tiny)

    return make


@pytest.fixture(scope="session")
def digits():
    return load_task({"name": "digits"})


@pytest.fixture(scope="session")
def sine():
    return load_task({"name": "sine"})


# Zoo for the read-side tests: 12 members in shards of 5, 5 and 2, two learning rates,
# checkpoints 0, 1 and 3. Generated once; tests that damage it work on a copy.
API_ZOO = (
    "zoo.size=12",
    "zoo.shard_size=5",
    "zoo.hparams.epochs=3",
    "zoo.hparams.lr=[0.02,0.1]",
    "zoo.checkpoints=[0,1]",
)


@pytest.fixture(scope="session")
def api_zoo_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api_zoo")
    return generate(compose_cfg(root, *API_ZOO)).path


@pytest.fixture
def zoo_copy(api_zoo_path, tmp_path) -> Path:
    """A private copy of the API zoo that a test may damage."""
    dst = tmp_path / "zoo"
    shutil.copytree(api_zoo_path, dst)
    return dst
