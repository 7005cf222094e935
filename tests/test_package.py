"""The package as a user installs it: a wheel, installed without ``-e``, runs every entry point.

The wheel is built from a copy of the checkout (nothing is written into it) and installed into
a fresh virtual environment that sees this one's dependencies (a ``.pth`` file: nothing is
downloaded) but not its source tree, so the configs and the kernel's source must come from
the wheel itself.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from weightspace.config import CONF_DIR

REPO = CONF_DIR.parent
ENTRY_POINTS = (
    "weightspace-generate",
    "weightspace-canonicalize",
    "weightspace-train-ae",
    "weightspace-analyze",
    "weightspace-import",
)


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def test_packaging_maps_conf_into_the_package():
    """Fast guard of what the slow test proves: ``conf/`` is package data of
    ``weightspace.conf``, and the checkout's config root is the one in use here."""
    text = (REPO / "pyproject.toml").read_text()
    assert '"weightspace.conf" = "conf"' in text and '"weightspace.conf" = ["**/*.yaml"]' in text
    assert 'weightspace-import = "weightspace.zoo.importer:cli"' in text
    assert CONF_DIR == REPO / "conf" and (CONF_DIR / "import_zoo.yaml").is_file()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding the wheel (not editable); returns its bin folder."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
    wheel = run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, src)
    assert wheel.returncode == 0, wheel.stderr
    (whl,) = tmp.glob("weightspace-*.whl")
    venv = tmp / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    done = run(*pip, "--python", python, "install", "--no-deps", "--no-index", whl)
    assert done.returncode == 0, done.stderr
    # This venv's dependencies (torch, hydra, ...), added after the install so pip never saw
    # the editable weightspace; a .pth line adds a folder, not the .pth files inside it.
    where = run(python, "-c", "import site; print(site.getsitepackages()[0])", cwd=tmp)
    Path(where.stdout.strip(), "_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    return venv / "bin"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WEIGHTSPACE_ROOT")}
    # Outputs under tmp; the kernel compiled afresh from the wheel's source, not a cached build.
    return env | {"WEIGHTSPACE_ROOT": str(tmp / "root"), "WEIGHTSPACE_CACHE": str(tmp / "cache")}


@pytest.mark.slow
def test_wheel_runs_generate_with_the_fused_kernel(installed, tmp_path):
    env = _env(tmp_path)
    where = run(
        installed / "python",
        "-c",
        "import weightspace.config as c, weightspace.zoo.train.fused as f; "
        "print(c.CONF_DIR); print(f.SOURCE)",
        cwd=tmp_path,
        env=env,
    )
    conf, source = map(Path, where.stdout.split())
    venv = installed.parent
    assert conf.is_relative_to(venv) and (conf / "generate.yaml").is_file(), where.stderr
    assert source.is_relative_to(venv) and source.is_file()

    gen = run(installed / "weightspace-generate", "debug=fast", cwd=tmp_path, env=env)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "unavailable" not in gen.stderr  # no silent fall-back to the torch path
    manifest = json.loads((tmp_path / "root" / "zoos" / "digits" / "manifest.json").read_text())
    assert manifest["trainer"] == "fused" and manifest["n_members"] == 8
    assert list((tmp_path / "cache" / "kernels").glob("fused_mlp-*.so"))  # built from the wheel


PROBE = """
import importlib.metadata as md, json
from hydra import compose, initialize_config_dir
from weightspace.config import CONF_DIR
dist = md.distribution("weightspace")  # the wheel's: first on sys.path
scripts = {ep.name: ep.load().__module__ for ep in dist.entry_points}
with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
    composed = {n: sorted(compose(n)) for n in %r}
print(json.dumps({"scripts": scripts, "composed": composed, "dist": str(dist._path)}))
"""


@pytest.mark.slow
def test_wheel_entry_points_load_and_their_configs_compose(installed, tmp_path):
    """Every console script's function imports from the wheel, and every primary config
    composes from the shipped config root (one process: each command starts torch)."""
    primary = ("generate", "canonicalize", "train_autoencoder", "analyze", "import_zoo")
    probe = run(installed / "python", "-c", PROBE % (primary,), cwd=tmp_path, env=_env(tmp_path))
    assert probe.returncode == 0, probe.stderr[-2000:]
    out = json.loads(probe.stdout.splitlines()[-1])
    assert Path(out["dist"]).is_relative_to(installed.parent)
    assert set(ENTRY_POINTS) <= set(out["scripts"]) and all(
        (installed / name).is_file() for name in out["scripts"]
    )
    assert all("paths" in keys for keys in out["composed"].values())
