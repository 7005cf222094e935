"""A run folder is data, never code: opening one imports and calls nothing its files name.

``load_run`` reads the saved ``config.yaml`` as plain values (its ``data`` node's ``_target_``
only the datamodule, ``transform`` / ``augment`` only functions of weightspace), and
``transform=`` / ``augment=`` strings go through the same allow-list
(``weightspace.data.callables.resolve_callable``). One tiny ``canon=canonical`` run (a
transform named by string) is trained per module, about 3 s.
"""

from __future__ import annotations

import functools
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from helpers import SMALL_OVERRIDES
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from weightspace.autoencoder.run import load_run
from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train
from weightspace.data.callables import callable_name, resolve_callable
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError
from weightspace.symmetry import augment, canonicalize


class Payload:
    """Unpickling it creates ``marker``: what a planted pickle would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def identity_transform(params, spec):
    """A transform of this (already imported) test module: the program's own code."""
    return params


@pytest.fixture(scope="module")
def run_dir(api_zoo_path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run_safety")
    overrides = [
        f"zoo={api_zoo_path}",
        f"paths.root_dir={root}",
        f"run_dir={root / 'run'}",
        *SMALL_OVERRIDES,
        "canon=canonical",
        "model.latent_dim=8",
        "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]",
        "trainer.max_epochs=1",
        "trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        train(compose(CONFIG_NAME, overrides=overrides))
    return root / "run"


def planted(run_dir: Path, dst: Path, **data) -> Path:
    """A copy of the run whose config.yaml's ``data`` node has ``data`` merged in."""
    shutil.copytree(run_dir, dst)
    cfg = OmegaConf.load(dst / "config.yaml")
    for key, value in data.items():
        cfg.data[key] = value
    (dst / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return dst


def refused(path: Path, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as e:
        load_run(path)
    message = str(e.value)
    assert "\n" not in message and str(path / "config.yaml") in message
    return message


# --------------------------------------------------------------------------- load_run
def test_a_legitimate_run_loads_with_its_named_transform(run_dir, tmp_path):
    run = load_run(run_dir)
    assert run.datamodule.transform is canonicalize and run.canon == "canonical"
    # A run written before the restructure names the datamodule by its old path.
    old = planted(run_dir, tmp_path / "old", _target_="weightspace.dataset.WeightDataModule")
    assert load_run(old).datamodule.transform is canonicalize
    # A transform given as a partial of an allowed function, as Hydra would have built it.
    node = {"_target_": "weightspace.symmetry.canonicalize", "_partial_": True}
    part = load_run(planted(run_dir, tmp_path / "partial", transform=node)).datamodule.transform
    assert isinstance(part, functools.partial) and part.func is canonicalize


def test_a_planted_pickle_payload_is_refused_and_never_runs(run_dir, tmp_path):
    marker, control = tmp_path / "pwned", tmp_path / "control"
    # The payload is real: unpickled (here, on purpose) it creates its marker ...
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()
    control.unlink()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    node = {"_target_": "pandas.read_pickle", "_args_": [str(evil)]}
    # ... and instantiating the planted node, as loading a run used to, runs it.
    evil_control = tmp_path / "control.pkl"
    evil_control.write_bytes(pickle.dumps(Payload(control)))
    instantiate({**node, "_args_": [str(evil_control)]})
    assert control.exists()

    run = planted(run_dir, tmp_path / "augment", augment=node)
    refused(run, r"data\.augment\._target_: 'pandas\.read_pickle' is not a function of weightspace")
    run = planted(run_dir, tmp_path / "transform", transform="pandas.read_pickle")
    refused(run, r"data\.transform: 'pandas\.read_pickle' is not a function of weightspace")
    run = planted(run_dir, tmp_path / "top", _target_="pandas.read_pickle", _args_=[str(evil)])
    refused(run, r"data\._target_: 'pandas\.read_pickle' is not allowed")
    assert not marker.exists()


def test_a_target_of_another_package_is_refused_naming_the_file_and_key(run_dir, tmp_path):
    foreign = {"_target_": "collections.OrderedDict"}
    aug = "weightspace.symmetry.augment"
    cases = {
        "epochs": ({"epochs": foreign}, r"data\.epochs\._target_: 'collections\.OrderedDict'"),
        "nested": (
            {"fractions": [0.7, {"x": foreign}, 0.15]},
            r"data\.fractions\.1\.x\._target_: 'collections\.OrderedDict'",
        ),
        "kwarg": (
            {
                "augment": {
                    "_target_": "weightspace.symmetry.augment",
                    "_partial_": True,
                    "g": foreign,
                }
            },
            r"data\.augment\.g\._target_: 'collections\.OrderedDict'",
        ),
        "args": (
            {"augment": {"_target_": aug, "_args_": [1]}},
            r"data\.augment\._partial_: must be true",
        ),
        "module": ({"augment": "weightspace.data.callables.importlib"}, r"data\.augment: "),
        "class": ({"_target_": "weightspace.data.dataset.WeightDataset"}, r"data\._target_: "),
        "option": ({"_args_": ["x"]}, r"data\._args_: not an option of WeightDataModule"),
    }
    for name, (data, match) in cases.items():
        refused(planted(run_dir, tmp_path / name, **data), match)


# --------------------------------------------------------------------------- transform strings
def test_transform_strings_name_only_functions_of_weightspace(api_zoo_path, tmp_path, monkeypatch):
    assert resolve_callable("weightspace.symmetry.canonicalize", "t") is canonicalize
    assert resolve_callable("weightspace.symmetry.transforms:augment", "t") is augment
    assert resolve_callable(callable_name(canonicalize), "t") is canonicalize
    # A function of the program's own, already imported code round-trips by its stored name.
    assert resolve_callable(callable_name(identity_transform), "t") is identity_transform
    refusals = {
        "pandas.read_pickle": "is not a function of weightspace",  # installed package
        "os.system": "is not a function of weightspace",  # standard library
        "shutil:rmtree": "is not a function of weightspace",
        "__main__.main": "is not a function of weightspace",
        "weightspace.data.callables.importlib": "a module of",  # a module it imported
        "weightspace.data.dataset.default_collate": "a function of torch",  # a re-export
        "weightspace.errors.ConfigError": "not a function defined in weightspace",  # a class
        "weightspace.data.callables:importlib.import_module": "is not an import path",
        "weightspace.symmetry._private": "is not an import path",
        "weightspace.nowhere.f": "cannot import",
    }
    for text, why in refusals.items():
        with pytest.raises(ConfigError, match=f"^transform: .*{why}") as e:
            resolve_callable(text, "transform")
        assert "\n" not in str(e.value)
    # A module planted on the path is never imported: its top-level code never runs.
    marker = tmp_path / "imported"
    (tmp_path / "planted_transform.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef f(params, spec):\n    return params\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="is not a function of weightspace"):
        resolve_callable("planted_transform.f", "augment")
    assert not marker.exists() and "planted_transform" not in sys.modules
    # The datamodule (what configs instantiate) goes through the same allow-list.
    with pytest.raises(ConfigError, match="^augment: 'pandas.read_pickle' is not a function"):
        WeightDataModule(api_zoo_path, augment="pandas.read_pickle", views=2)
