"""A canonicalization with MergeMany's batched schedule; interrupted runs restart or resume."""

from __future__ import annotations

import json

import pytest
from test_derive import derive_cfg, parent  # noqa: F401 (a fixture)

import weightspace.symmetry.merge as merge_module
from weightspace.errors import ConfigError
from weightspace.nets.forward import forward
from weightspace.symmetry.derive import derive
from weightspace.zoo.store import Zoo
from weightspace.zoo.writer import ZooWriter


def test_batched_schedule_derives_the_same_functions(parent, tmp_path, digits):  # noqa: F811
    out = derive(
        derive_cfg(
            parent, tmp_path / "mm", "transform.kind=merge_many", "transform.schedule=batched"
        )
    )
    p, z = Zoo.open(parent), Zoo.open(out)
    for e in p.epochs:
        a, b = p.weights(e), z.weights(e)
        assert not all(a[k].equal(b[k]) for k in a)
        y_a, y_b = forward(a, digits.x_test, p.spec), forward(b, digits.x_test, p.spec)
        assert (y_a - y_b).abs().max() < 1e-4
    assert z.derived_from["transform"]["schedule"] == "batched"


def test_the_default_schedule_keeps_the_zoo_record_of_before(parent, tmp_path):  # noqa: F811
    """schedule / block are recorded only when not the default: a merge_many zoo derived
    before they existed keeps its fingerprint, so re-running its command leaves it be."""
    out = derive(derive_cfg(parent, tmp_path / "mm", "transform.kind=merge_many"))
    recorded = json.loads((out / "manifest.json").read_text())["derived_from"]["transform"]
    assert "schedule" not in recorded and "block" not in recorded


@pytest.mark.parametrize(
    "overrides, option",
    [(("transform.schedule=parallel",), "transform.schedule"), (("transform.block=0",), "block")],
)
def test_bad_schedule_options_are_refused(parent, tmp_path, overrides, option):  # noqa: F811
    out = tmp_path / "mm"
    args = ("transform.kind=merge_many", "transform.schedule=batched", *overrides)
    with pytest.raises(ConfigError, match=option):
        derive(derive_cfg(parent, out, *args))
    assert not out.exists()


@pytest.mark.parametrize("schedule", ["sequential", "batched"])
def test_interrupted_alignment_restarts_cleanly(
    parent,  # noqa: F811
    tmp_path,
    monkeypatch,
    schedule,
):
    """Ctrl-C during MergeMany (before any shard): the folder goes, the re-run starts over
    and gives what an uninterrupted run gives."""
    out = tmp_path / "mm"
    args = ("transform.kind=merge_many", f"transform.schedule={schedule}")
    real = merge_module._State.objective
    calls = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:  # after the first pass
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(merge_module._State, "objective", interrupted)
    with pytest.raises(KeyboardInterrupt):
        derive(derive_cfg(parent, out, *args))
    assert not out.exists()
    monkeypatch.undo()
    derive(derive_cfg(parent, out, *args))
    clean = derive(derive_cfg(parent, tmp_path / "clean", *args))
    assert _shard_bytes(out) == _shard_bytes(clean)


def test_interrupted_shards_resume(parent, tmp_path, monkeypatch):  # noqa: F811
    """Ctrl-C while the shards are written: the re-run keeps the shards done, finds the same
    alignment again (deterministic) and writes the rest; the zoo is what one run makes."""
    out = tmp_path / "mm"
    args = ("transform.kind=merge_many", "transform.schedule=batched")
    real = ZooWriter.write_shard
    written = []

    def interrupted(self, *a, **kw):
        if len(written) == 1:
            raise KeyboardInterrupt
        written.append(real(self, *a, **kw))

    monkeypatch.setattr(ZooWriter, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        derive(derive_cfg(parent, out, *args))
    monkeypatch.undo()
    kept = _shard_bytes(out)
    assert len(kept) > 0 and not (out / "manifest.json").exists()
    derive(derive_cfg(parent, out, *args))
    clean = derive(derive_cfg(parent, tmp_path / "clean", *args))
    assert _shard_bytes(out) == _shard_bytes(clean)
    assert all(_shard_bytes(out)[k] == v for k, v in kept.items())


def _shard_bytes(root) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in (root / "shards").iterdir() if f.suffix != ".json"}
