"""The manifest and the shard headers are checked before anything is read; a finished zoo
survives a re-run with other non-defining options.

Every damaged zoo is refused with one ``ZooError`` line that starts with the file at fault and
names the field; a fuzz test corrupts manifests and headers at random (and re-signs them, as a
careless tool or a hostile user would): refused so, or read exactly as before.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_cfg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightspace.errors import ZooError
from weightspace.zoo.files import sha256_file
from weightspace.zoo.generate import generate
from weightspace.zoo.store import MANIFEST, Zoo
from weightspace.zoo.writer import ZooWriter

SHARD = "shards/shard-00001.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """8 members of [64, 16, 10] in 2 shards, checkpoints 0, 1, 2: made once per module."""
    return generate(compose_cfg(tmp_path_factory.mktemp("tiny"))).path


def _read_all(zoo: Zoo) -> dict:
    """Everything a reader gets from a zoo, as plain values."""
    out = {
        "len": len(zoo),
        "epochs": zoo.epochs,
        "specs": [zoo.member_spec(i) for i in range(len(zoo))] + [zoo.spec],
        "members": zoo.members,
        "metrics": zoo.metrics,
    }
    for e in zoo.epochs:
        out[e] = {k: v.numpy() for k, v in zoo.weights(e, trainable=True).items()}
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], pd.DataFrame):
            pd.testing.assert_frame_equal(a[k], b[k])
        elif isinstance(a[k], dict):
            assert a[k].keys() == b[k].keys()
            for n in a[k]:
                np.testing.assert_array_equal(a[k][n], b[k][n])
        else:
            assert a[k] == b[k], k


_REFERENCE: dict[Path, dict] = {}


@pytest.fixture(scope="module")
def reference(tiny) -> dict:
    """What the intact zoo reads as (cached by path: hypothesis prints its test's arguments)."""
    if tiny not in _REFERENCE:
        _REFERENCE[tiny] = _read_all(Zoo.open(tiny))
    return _REFERENCE[tiny]


@pytest.fixture
def copy(tiny, tmp_path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "zoo"))


def _edit_manifest(root: Path, edit) -> None:
    path = root / MANIFEST
    data = json.loads(path.read_text())
    edit(data)  # in place
    path.write_text(json.dumps(data, indent=2))


def _resign(root: Path, rel: str) -> None:
    """Record a file's new checksum and size in the manifest, as a forger would."""
    f = root / rel
    _edit_manifest(
        root,
        lambda m: m["files"].__setitem__(
            rel, {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        ),
    )


def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(path: Path, header: dict | bytes, body: bytes, length: int | None = None) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + text + body)


def _refused(root: Path, rel: str, field: str) -> str:
    with pytest.raises(ZooError) as err:
        _read_all(Zoo.open(root))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{root / rel}: "), msg
    assert field in msg, msg
    return msg


# --------------------------------------------------------------------------- manifest.json
@pytest.mark.parametrize("n", [4, 7, 9, 40, 0, -1, "8", 8.5, True, None])
def test_wrong_member_count_is_refused(copy, n):
    # Fewer than the zoo holds used to return only those (data loss); more, an IndexError.
    _edit_manifest(copy, lambda m: m.__setitem__("n_members", n))
    _refused(copy, MANIFEST, "n_members")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m.pop("files"), "files: missing"),
        (lambda m: m.pop("architecture"), "architecture: missing"),
        (lambda m: m["architecture"].pop("widths"), "architecture.widths: missing"),
        (lambda m: m.__setitem__("files", []), "files: must be an object"),
        (lambda m: m.__setitem__("task", "digits"), "task: must be an object"),
        (lambda m: m["architecture"].__setitem__("widths", "64,16,10"), "architecture.widths"),
        (lambda m: m["architecture"].__setitem__("widths", [64, 17, 10]), "param_shapes"),
        (lambda m: m["architecture"].__setitem__("bias", "yes"), "architecture.bias"),
        (lambda m: m["architecture"].__setitem__("activations", ["tanh"]), "activations"),
        (lambda m: m["architecture"].__setitem__("activations", ["swish"]), "activations[0]"),
        (lambda m: m.__setitem__("checkpoint_epochs", [0, 2, 1]), "checkpoint_epochs"),
        (lambda m: m.__setitem__("checkpoint_epochs", [0, 1, 2, 3]), "checkpoint_epochs"),
        (lambda m: m.__setitem__("n_shards", 3), "files"),
        (lambda m: m.__setitem__("n_diverged", 1), "n_diverged"),
        (lambda m: m["files"].pop("metrics.parquet"), 'files["metrics.parquet"]: missing'),
        (lambda m: m["files"].__setitem__("../../etc/passwd", {}), "not a file of a zoo"),
        (lambda m: m["files"]["config.yaml"].__setitem__("sha256", 5), "sha256"),
        (lambda m: m["files"]["config.yaml"].pop("bytes"), "bytes: missing"),
        (lambda m: m.__setitem__("derived_from", {"path": "x"}), "derived_from"),
        (lambda m: m.__setitem__("n_members", [8]), "n_members: must be an integer"),
    ],
)
def test_manifest_schema_violations_are_one_line_naming_the_field(copy, edit, field):
    _edit_manifest(copy, edit)
    _refused(copy, MANIFEST, field)


def test_manifest_that_is_not_an_object_is_refused(copy):
    (copy / MANIFEST).write_text(json.dumps([json.loads((copy / MANIFEST).read_text())]))
    _refused(copy, MANIFEST, "(top level): must be an object")


def test_members_table_must_match_the_manifest_and_the_shards(copy):
    members = pd.read_parquet(copy / "members.parquet")
    members.iloc[:7].to_parquet(copy / "members.parquet", index=False)
    _resign(copy, "members.parquet")
    _refused(copy, MANIFEST, "n_members: 8, but members.parquet has 7 rows")

    swapped = members.copy()
    swapped.loc[[0, 1], "shard_row"] = [1, 0]  # two members trade places in their shard
    swapped.to_parquet(copy / "members.parquet", index=False)
    _resign(copy, "members.parquet")
    _refused(copy, "shards/shard-00000.safetensors", "member_ids")


# --------------------------------------------------------------------------- shard headers
def test_crafted_header_offsets_are_refused_even_when_re_signed(copy):
    # A checksum that matches says nothing about a header: offsets past the end of the file
    # used to be trusted (a MemoryError, or garbage).
    path = copy / SHARD
    header, body = _split(path)
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] = 10**15
    _join(path, header, body)
    _resign(copy, SHARD)
    _refused(copy, SHARD, f'header."{name}".data_offsets')


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda h: h["layers.0.weight"].__setitem__("dtype", "F64"), "dtype"),
        (lambda h: h["layers.0.weight"].__setitem__("dtype", "I64"), "needs"),
        (lambda h: h["layers.0.weight"].__setitem__("shape", [4, 3, 64, 16]), "layers.0.weight"),
        (lambda h: h["layers.0.bias"].__setitem__("data_offsets", [0, 4]), "needs"),
        (lambda h: h.__setitem__("layers.9.bias", h.pop("layers.1.bias")), "tensors missing"),
        (lambda h: h.pop("layers.1.bias"), "data_offsets: start"),
        (lambda h: h["__metadata__"].pop("epochs"), "__metadata__.epochs: missing"),
        (lambda h: h["__metadata__"].__setitem__("epochs", "[0, 1, 5]"), "epochs"),
        (lambda h: h["__metadata__"].__setitem__("epochs", "[0, 1"), "epochs"),
        (lambda h: h["__metadata__"].__setitem__("member_ids", "[4, 5, 7, 6]"), "member_ids"),
        (lambda h: h.__setitem__("__metadata__", []), "__metadata__"),
    ],
)
def test_header_violations_are_one_line_naming_the_field(copy, edit, field):
    path = copy / SHARD
    header, body = _split(path)
    edit(header)
    _join(path, header, body)
    _resign(copy, SHARD)
    _refused(copy, SHARD, field)


@pytest.mark.parametrize("length", [0, 7, 2**40, 2**64 - 1])
def test_header_length_outside_the_file_is_refused(copy, length):
    path = copy / SHARD
    header, body = _split(path)
    _join(path, header, body, length=length)
    _resign(copy, SHARD)
    _refused(copy, SHARD, "header")


def test_zoo_written_before_opens_and_reads_the_same(tiny, reference):
    """The validation adds checks, not bytes: a zoo as generate writes it reads as before."""
    _assert_same(_read_all(Zoo.open(tiny, verify=False)), reference)


# --------------------------------------------------------------------------- fuzz
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)


def _paths(doc, prefix=()):
    yield prefix
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    )
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _mutate(doc, data) -> object:
    """One random change to a JSON document: a key or item removed, a value replaced by any
    JSON value, an integer nudged, a list item duplicated."""
    paths = list(_paths(doc))
    path = paths[data.draw(st.integers(0, len(paths) - 1), label="where")]
    op = data.draw(st.sampled_from(["delete", "replace", "nudge", "grow"]), label="op")
    if not path:
        return data.draw(JSON_VALUES, label="document") if op == "replace" else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key, value = path[-1], parent[path[-1]]
    if op == "delete":
        del parent[key]
    elif op == "nudge" and isinstance(value, int) and not isinstance(value, bool):
        parent[key] = value + data.draw(st.sampled_from([-2, -1, 1, 2, 2**31]), label="by")
    elif op == "grow" and isinstance(value, list) and value:
        value.append(value[-1])
    else:
        parent[key] = data.draw(JSON_VALUES, label="value")
    return doc


def _corrupt_header(path: Path, data) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    how = data.draw(st.sampled_from(["json", "json", "length", "byte"]), label="header damage")
    if how == "length":
        _join(path, raw[8 : 8 + n], raw[8 + n :], length=data.draw(st.integers(0, 2**64 - 1)))
    elif how == "byte":
        i = data.draw(st.integers(8, 8 + n - 1), label="byte")
        path.write_bytes(raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :])
    else:
        # The metadata's JSON-in-a-string values are decoded, so the fuzzer reaches inside.
        header = json.loads(raw[8 : 8 + n])
        meta = header.get("__metadata__", {})
        header["__metadata__"] = {k: json.loads(v) for k, v in meta.items()}
        header = _mutate(header, data)
        if isinstance(header, dict) and isinstance(header.get("__metadata__"), dict):
            meta = header["__metadata__"]
            header["__metadata__"] = {k: json.dumps(v) for k, v in meta.items()}
        _join(path, header, raw[8 + n :])


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
@pytest.mark.usefixtures("reference")
def test_fuzz_corrupted_manifest_or_header_is_refused_in_one_line_or_read_correctly(tiny, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(tiny, Path(tmp) / "zoo"))
        target = data.draw(
            st.sampled_from([MANIFEST, MANIFEST, SHARD, "shards/shard-00000.safetensors"])
        )
        if target == MANIFEST:
            doc = _mutate(json.loads((root / MANIFEST).read_text()), data)
            (root / MANIFEST).write_text(json.dumps(doc))
        else:
            _corrupt_header(root / target, data)
            if data.draw(st.booleans(), label="re-signed"):
                _resign(root, target)
        try:
            got = _read_all(Zoo.open(root))
        except ZooError as e:
            msg = str(e)
            assert "\n" not in msg
            assert msg.startswith(str(root) + "/"), msg  # names the file at fault
            return
        _assert_same(got, _REFERENCE[tiny])  # accepted: it reads exactly what was written


# --------------------------------------------------------------------------- re-running
def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_rerun_with_non_defining_options_leaves_a_finished_zoo_untouched(
    tmp_path, reference, monkeypatch
):
    """Re-running with ``progress`` or the root changed used to rewrite config.yaml long
    before the manifest: killed in between, the zoo was refused until an identical re-run."""
    zoo = tmp_path / "zoo"
    cfg = compose_cfg(tmp_path / "a", f"zoo.path={zoo}")
    generate(cfg)
    before = _snapshot(zoo)
    again = compose_cfg(tmp_path / "b", f"zoo.path={zoo}", "progress=true")
    assert generate(again).n_trained == 0
    assert _snapshot(zoo) == before  # not a byte, not a timestamp

    # Killed right after the writer opened the folder: the zoo still opens and reads.
    class Killed(BaseException):
        pass

    def kill(*_args, **_kwargs):
        raise Killed

    monkeypatch.setattr(ZooWriter, "finalize", kill)
    with pytest.raises(Killed):
        generate(compose_cfg(tmp_path / "c", f"zoo.path={zoo}", "progress=true"))
    monkeypatch.undo()
    _assert_same(_read_all(Zoo.open(zoo)), reference)


def test_rerun_repairs_a_finished_zoo_with_a_lost_table(tmp_path, reference):
    zoo = tmp_path / "zoo"
    generate(compose_cfg(tmp_path, f"zoo.path={zoo}"))
    (zoo / "members.parquet").unlink()
    with pytest.raises(ZooError, match="members.parquet: missing"):
        Zoo.open(zoo)
    generate(compose_cfg(tmp_path / "other-root", f"zoo.path={zoo}", "progress=true"))
    _assert_same(_read_all(Zoo.open(zoo)), reference)
    assert "progress: true" in (zoo / "config.yaml").read_text()


def test_unreadable_shard_record_is_one_line(tmp_path):
    cfg = compose_cfg(tmp_path)
    zoo = generate(cfg).path
    (zoo / "shards" / "shard-00001.json").write_text("{")
    (zoo / MANIFEST).unlink()
    with pytest.raises(ZooError, match=r"shard-00001\.json: files: not a valid shard record"):
        generate(cfg)
