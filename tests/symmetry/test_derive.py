"""Derived zoos: canonicalized or aligned copies in the same format, same functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra import compose, initialize_config_dir

from weightspace.config import CONF_DIR
from weightspace.errors import ConfigError, ZooError
from weightspace.nets.forward import forward
from weightspace.nets.layout import flatten_params, weight_distance
from weightspace.symmetry import undo_transform
from weightspace.symmetry.derive import derive
from weightspace.zoo.files import sha256_file
from weightspace.zoo.store import Zoo


def derive_cfg(parent: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "canonicalize",
            overrides=[f"parent={parent}", f"out={out}", "progress=false", *overrides],
        )


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tanh zoo (sign symmetry) and a relu zoo (scale symmetry) would both do; relu here,
    trained a few epochs so the members differ."""
    from weightspace.zoo.generate import generate

    root = tmp_path_factory.mktemp("parent")
    return generate(
        compose_cfg(
            root, "zoo.size=10", "zoo.shard_size=4", "zoo.hparams.epochs=3", "zoo.checkpoints=[0,1]"
        )
    ).path


@pytest.mark.parametrize("kind", ["canonical", "align", "merge_many"])
def test_derived_zoo_computes_the_same_functions(parent, tmp_path, kind, digits):
    out = derive(derive_cfg(parent, tmp_path / kind, f"transform.kind={kind}"))
    p, z = Zoo.open(parent), Zoo.open(out)
    assert len(z) == len(p) and z.epochs == p.epochs
    # Metrics are carried over: valid because the functions are unchanged.
    assert z.metrics.equals(p.metrics)
    x = digits.x_test
    for epoch in p.epochs:
        a, b = p.weights(epoch), z.weights(epoch)
        assert not all(torch.equal(a[k], b[k]) for k in a), "the transform changed nothing"
        torch.testing.assert_close(
            forward(b, x, z.spec), forward(a, x, p.spec), rtol=1e-4, atol=1e-4
        )
        # The stored transform maps the member's own weights onto the derived ones and back.
        back = undo_transform(b, z.spec, z.unit_transform(epoch, range(len(z))))
        for k in a:
            torch.testing.assert_close(back[k], a[k], rtol=1e-5, atol=1e-6)
    info = z.derived_from
    assert info["transform"]["kind"] == kind
    assert info["manifest_sha256"] == sha256_file(Path(parent) / "manifest.json")


def test_alignment_brings_members_closer(parent, tmp_path):
    out = derive(derive_cfg(parent, tmp_path / "mm", "transform.kind=merge_many"))
    p, z = Zoo.open(parent), Zoo.open(out)
    e = p.epochs[-1]
    raw, al = flatten_params(p.weights(e), p.spec), flatten_params(z.weights(e), z.spec)
    d_raw = weight_distance(raw, raw.mean(0, keepdim=True)).mean()
    d_al = weight_distance(al, al.mean(0, keepdim=True)).mean()
    assert d_al < d_raw


def test_rerun_keeps_the_derived_zoo_and_bad_values_are_refused(parent, tmp_path):
    out = tmp_path / "canon"
    derive(derive_cfg(parent, out))
    before = {f.name: f.read_bytes() for f in (out / "shards").iterdir()}
    derive(derive_cfg(parent, out))
    assert before == {f.name: f.read_bytes() for f in (out / "shards").iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(k.endswith(".transform.safetensors") for k in manifest["files"])
    with pytest.raises(ConfigError, match="transform.kind"):
        derive(derive_cfg(parent, tmp_path / "x", "transform.kind=rotate"))
    with pytest.raises(ConfigError, match="out"):
        derive(derive_cfg(parent, parent))
    with pytest.raises(ZooError, match="different config"):
        derive(derive_cfg(parent, out, "transform.kind=align"))


def test_a_plain_zoo_has_no_transforms(parent):
    with pytest.raises(ZooError, match="not a derived zoo"):
        Zoo.open(parent).unit_transform(0, [0])
