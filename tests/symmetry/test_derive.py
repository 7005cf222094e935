"""Derived zoos: canonicalized or aligned copies in the same format, same functions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra import compose, initialize_config_dir

import weightspace.symmetry.derive as derive_module
from weightspace.config import CONF_DIR
from weightspace.errors import ConfigError, ZooError
from weightspace.nets.forward import forward
from weightspace.nets.layout import flatten_params, weight_distance
from weightspace.symmetry import undo_transform
from weightspace.symmetry.derive import derive
from weightspace.zoo.files import sha256_file
from weightspace.zoo.store import Zoo
from weightspace.zoo.writer import ZooWriter


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


# --------------------------------------------------------------------------- no stub folders
@pytest.mark.parametrize(
    "overrides, option",
    [
        (("transform.kind=align", "transform.epoch=2"), "transform.epoch"),  # not a checkpoint
        (("transform.kind=align", "transform.max_iter=abc"), "transform.max_iter"),
        (("transform.kind=merge_many", "transform.max_iter=0"), "transform.max_iter"),
        (("transform.kind=merge_many", "transform.tol=-1"), "transform.tol"),
        (("transform.kind=align", "transform.reference_member=99"), "reference_member"),
        (("transform.kind=align", "transform.sign_aware=true"), "transform.sign_aware"),
        (("transform.sign=true",), "transform.sign"),  # relu has no sign symmetry
        (("transform.sort_key=incoming_norm",), "transform.sort_key"),  # 1 after scaling
        (("transform.sort_key=size",), "transform.sort_key"),
        (("transform.scale=maybe",), "transform.scale"),
    ],
)
def test_bad_options_are_refused_before_the_folder_is_made(parent, tmp_path, overrides, option):
    out = tmp_path / "derived"
    with pytest.raises(ConfigError, match=option) as err:
        derive(derive_cfg(parent, out, *overrides))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_a_failed_run_leaves_no_stub_and_never_blocks_the_corrected_one(
    parent, tmp_path, monkeypatch
):
    """A stub (fingerprint + config, nothing done) used to refuse the corrected command with
    a misleading 'made from a different config'."""
    out = tmp_path / "aligned"

    def fail(*_args, **_kwargs):
        raise RuntimeError("the alignment failed")

    monkeypatch.setattr(derive_module, "find_alignment", fail)
    with pytest.raises(RuntimeError):
        derive(derive_cfg(parent, out, "transform.kind=align", "transform.max_iter=5"))
    assert not out.exists()  # the folder the failed run made went with it
    monkeypatch.undo()

    # What a kill -9 during another command's alignment leaves: fingerprint and config only.
    ZooWriter(out, "transform: {kind: align, max_iter: 5}\n", "another", overwrite=False)
    derived = Zoo.open(derive(derive_cfg(parent, out, "transform.kind=align")))
    assert len(derived) == len(Zoo.open(parent))
    assert derived.derived_from["transform"]["max_iter"] == 100
    # A finished zoo of another config is still protected.
    with pytest.raises(ZooError, match="different config"):
        derive(derive_cfg(parent, out, "transform.kind=align", "transform.max_iter=5"))


def test_a_damaged_parent_is_refused_before_the_folder_is_made(parent, tmp_path):
    copy = Path(shutil.copytree(parent, tmp_path / "parent"))
    shard = copy / "shards" / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = tmp_path / "canon"
    with pytest.raises(ZooError, match="shard-00002.safetensors: sha256"):
        derive(derive_cfg(copy, out))
    assert not out.exists()


def test_parent_unset_is_a_config_error():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("canonicalize", overrides=["progress=false"])
    with pytest.raises(ConfigError, match="parent: required"):
        derive(cfg)


def test_rerun_with_other_non_defining_options_leaves_the_derived_zoo_untouched(parent, tmp_path):
    out = tmp_path / "canon"
    derive(derive_cfg(parent, out))
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    derive(derive_cfg(parent, out, "progress=true"))
    assert files == {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()
    }
