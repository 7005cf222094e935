"""The zoo manifest's schema and the checks :meth:`Zoo.open` runs before any weight is read.

Nothing a zoo's files say is trusted until checked against the rest (``docs/zoo-format.md``,
"Validation"):

- ``manifest.json``: an object with the required keys, each of its JSON type and range
  (:func:`check_manifest`); ``files`` names exactly the zoo's files, each with a sha256 and
  a size;
- each safetensors header: its length inside the file, valid JSON, every tensor a known dtype
  with a shape whose bytes are exactly its ``data_offsets``, the offsets tiling the data
  section of the file without gap or overlap (:func:`read_header`); then a weight shard holds
  exactly the spec's tensors, each ``(rows, checkpoints, *shape)``, with ``member_ids`` and
  ``epochs`` in its metadata (:func:`check_shard`), a transform file the permutations (and
  factors) of the hidden layers (:func:`check_transform`);
- across files (:func:`check_members`): ``n_members`` == rows of ``members.parquet`` == the
  shards' rows, every member at one (shard, row) whose ``member_ids`` entry is that member,
  ``checkpoint_epochs`` == the union of the shards' epochs, ``n_diverged`` and the
  activations as the table has them.

A violation raises one :class:`ZooError` line ``<file>: <field>: <problem>``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from weightspace.errors import ZooError
from weightspace.nets.spec import ACTIVATIONS, MLPSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("members.parquet", "metrics.parquet", "config.yaml")
DTYPES = {"F32": 4, "I64": 8}  # the dtypes a zoo's safetensors files hold, bytes per item
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header, in bytes
_SHA256 = re.compile(r"[0-9a-f]{64}")
# shards/shard-00003.safetensors, .parquet, .transform.safetensors (a derived zoo's extra)
_SHARD_FILE = re.compile(r"shards/shard-(\d{5,})\.((?:[a-z0-9_]+\.)?safetensors|parquet)")


def shard_name(index: int) -> str:
    return f"shards/shard-{index:05d}"


def _show(value: Any, limit: int = 60) -> str:
    """A value as one short line (JSON escapes any newline in it)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(path: Path, field: str, problem: str) -> NoReturn:
    raise ZooError(f"{path}: {field}: {problem}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _get(path: Path, obj: dict, key: str, prefix: str = "") -> Any:
    if key not in obj:
        _fail(path, prefix + key, "missing")
    return obj[key]


def _int(path: Path, field: str, v: Any, lo: int = 0, hi: float = math.inf) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        _fail(path, field, f"must be an integer, got {_kind(v)} {_show(v)}")
    if not lo <= v <= hi:
        bound = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        _fail(path, field, f"must be {bound}, got {v}")
    return v


def _typed(path: Path, field: str, v: Any, kind: type) -> Any:
    if not isinstance(v, kind):
        _fail(path, field, f"must be {_kind(kind())}, got {_kind(v)} {_show(v)}")
    return v


def _ints(path: Path, field: str, v: Any, increasing: bool = False) -> list[int]:
    """A non-empty list of integers >= 0 (strictly increasing if asked)."""
    items = _typed(path, field, v, list)
    if not items:
        _fail(path, field, "must not be empty")
    out = [_int(path, f"{field}[{i}]", x) for i, x in enumerate(items)]
    if increasing and any(a >= b for a, b in zip(out, out[1:])):
        _fail(path, field, f"must be strictly increasing, got {_show(out)}")
    return out


# --------------------------------------------------------------------------- manifest.json
def check_manifest(path: Path, m: Any) -> dict[str, Any]:
    """``m`` (the parsed ``manifest.json`` at ``path``) checked against the schema."""
    _typed(path, "(top level)", m, dict)
    version = m.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ZooError(
            f"{path}: schema version {_show(version)}, this weightspace reads {SCHEMA_VERSION}"
        )
    _typed(path, "fingerprint", _get(path, m, "fingerprint"), str)
    spec = check_architecture(
        path, _typed(path, "architecture", _get(path, m, "architecture"), dict)
    )
    task = _typed(path, "task", _get(path, m, "task"), dict)
    _typed(path, "task.name", _get(path, task, "name", "task."), str)
    for key, width in (("input_dim", spec.widths[0]), ("output_dim", spec.widths[-1])):
        if key in task and _int(path, f"task.{key}", task[key], 1) != width:
            _fail(path, f"task.{key}", f"{task[key]}, but architecture.widths says {width}")
    for key in ("n_signals", "n_coords"):  # an INR zoo's task
        if key in task:
            _int(path, f"task.{key}", task[key], 1)
    _ints(path, "checkpoint_epochs", _get(path, m, "checkpoint_epochs"), increasing=True)
    n = _int(path, "n_members", _get(path, m, "n_members"), 1)
    n_shards = _int(path, "n_shards", _get(path, m, "n_shards"), 1, n)
    _int(path, "n_diverged", _get(path, m, "n_diverged"), 0, n)
    derived = m.get("derived_from")
    if derived is not None:
        _typed(path, "derived_from", derived, dict)
        for key in ("path", "manifest_sha256", "fingerprint"):
            _typed(path, f"derived_from.{key}", _get(path, derived, key, "derived_from."), str)
        _typed(
            path, "derived_from.transform", _get(path, derived, "transform", "derived_from."), dict
        )
    check_files(path, _typed(path, "files", _get(path, m, "files"), dict), n_shards, derived)
    return m


def check_architecture(path: Path, a: dict[str, Any]) -> MLPSpec:
    """``architecture``: widths, bias, weight_norm, activations; shapes and count agree."""
    p = "architecture."
    widths = _ints(path, p + "widths", _get(path, a, "widths", p))
    if len(widths) < 2 or min(widths) < 1:
        _fail(path, p + "widths", f"need >= 2 widths, all >= 1, got {_show(widths)}")
    bias = _typed(path, p + "bias", _get(path, a, "bias", p), bool)
    weight_norm = _typed(path, p + "weight_norm", _get(path, a, "weight_norm", p), bool)
    acts = _typed(path, p + "activations", _get(path, a, "activations", p), list)
    if not acts or len(set(map(str, acts))) != len(acts):
        _fail(path, p + "activations", f"must be distinct names, got {_show(acts)}")
    for i, act in enumerate(acts):
        if not isinstance(act, str) or act not in ACTIVATIONS:
            _fail(path, f"{p}activations[{i}]", f"unknown activation {_show(act)}")
    spec = MLPSpec(tuple(widths), acts[0], bias, weight_norm)
    shapes = _typed(path, p + "param_shapes", _get(path, a, "param_shapes", p), dict)
    expected = {k: list(v) for k, v in {**spec.param_shapes(True), **spec.param_shapes()}.items()}
    if shapes != expected:
        _fail(path, p + "param_shapes", f"{_show(shapes)} does not match widths/bias/weight_norm")
    if _int(path, p + "n_params", _get(path, a, "n_params", p)) != spec.n_params():
        _fail(path, p + "n_params", f"{a['n_params']}, but the widths give {spec.n_params()}")
    return spec


def check_files(path: Path, files: dict[str, Any], n_shards: int, derived: Any) -> None:
    """``files``: exactly the zoo's files, each ``{"sha256": hex, "bytes": int}``."""
    for rel, meta in files.items():
        field = f"files[{_show(rel)}]"
        match = _SHARD_FILE.fullmatch(rel)
        if rel not in TABLES and match is None:
            _fail(path, field, "not a file of a zoo")
        if match is not None and (
            rel != f"{shard_name(int(match[1]))}.{match[2]}" or int(match[1]) >= n_shards
        ):
            _fail(path, field, f"no such shard (n_shards is {n_shards})")
        _typed(path, field, meta, dict)
        sha = _get(path, meta, "sha256", field + ".")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            _fail(path, field + ".sha256", f"must be 64 lowercase hex digits, got {_show(sha)}")
        _int(path, field + ".bytes", _get(path, meta, "bytes", field + "."))
    shard_files = [
        f"{shard_name(s)}.{ext}" for s in range(n_shards) for ext in ("safetensors", "parquet")
    ]
    if derived is not None:
        shard_files += [f"{shard_name(s)}.transform.safetensors" for s in range(n_shards)]
    for rel in (*TABLES, *shard_files):
        if rel not in files:
            _fail(path, f"files[{_show(rel)}]", "missing")


# --------------------------------------------------------------------------- safetensors
@dataclass(frozen=True)
class Header:
    """A checked safetensors header: tensors ``{name: (dtype, shape, start, end)}`` with
    offsets into the data section, which starts at byte ``data_start`` of the file."""

    metadata: dict[str, str]
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]
    data_start: int


def read_header(path: Path) -> Header:
    """The header of the safetensors file at ``path``, its structure checked against the
    file's size; nothing in it is used before that."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            _fail(path, "header", f"the file has {size} bytes, fewer than 8")
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(size - 8, MAX_HEADER):
            _fail(path, "header", f"length {n} does not fit the file ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        _fail(path, "header", f"not valid JSON ({_show(str(e), 80)})")
    _typed(path, "header", header, dict)
    metadata = _typed(path, "header.__metadata__", header.pop("__metadata__", {}), dict)
    for k, v in metadata.items():
        _typed(path, f"header.__metadata__.{_show(k)}", v, str)
    tensors, data_bytes = {}, size - 8 - n
    for name, info in header.items():
        field = f"header.{_show(name)}"
        _typed(path, field, info, dict)
        if set(info) != {"dtype", "shape", "data_offsets"}:
            _fail(path, field, f"keys must be dtype, shape, data_offsets, got {_show(list(info))}")
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            _fail(path, field + ".dtype", f"{_show(dtype)} is not one of {', '.join(DTYPES)}")
        shape = _typed(path, field + ".shape", info["shape"], list)
        shape = tuple(_int(path, f"{field}.shape[{i}]", d) for i, d in enumerate(shape))
        offsets = _typed(path, field + ".data_offsets", info["data_offsets"], list)
        if len(offsets) != 2:
            _fail(path, field + ".data_offsets", f"must be [start, end], got {_show(offsets)}")
        lo, hi = (_int(path, f"{field}.data_offsets", x, 0, data_bytes) for x in offsets)
        if hi - lo != math.prod(shape) * DTYPES[dtype]:
            _fail(
                path,
                field,
                f"shape {list(shape)} of {dtype} needs {math.prod(shape) * DTYPES[dtype]} "
                f"bytes, data_offsets give {hi - lo}",
            )
        tensors[name] = (dtype, shape, lo, hi)
    end = 0
    for name, (_, _, lo, hi) in sorted(tensors.items(), key=lambda kv: kv[1][2:]):
        if lo != end:
            _fail(
                path,
                f"header.{_show(name)}.data_offsets",
                f"start {lo}, expected {end} (tensors must tile the data, no gap or overlap)",
            )
        end = hi
    if end != data_bytes:
        _fail(path, "header", f"tensors cover {end} of the {data_bytes} data bytes")
    return Header(metadata, tensors, 8 + n)


def _metadata_ints(path: Path, header: Header, key: str, increasing: bool) -> list[int]:
    field = f"header.__metadata__.{key}"
    text = _get(path, header.metadata, key, "header.__metadata__.")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        _fail(path, field, f"not a JSON list ({_show(text)})")
    return _ints(path, field, value, increasing)


def check_shard(
    path: Path, header: Header, spec: MLPSpec, epochs: list[int]
) -> tuple[list[int], list[int]]:
    """A weight shard: its ``(member_ids, epochs)`` from the metadata, and exactly the
    spec's tensors, each float32 ``(rows, checkpoints, *shape)``."""
    ids = _metadata_ints(path, header, "member_ids", increasing=False)
    own = _metadata_ints(path, header, "epochs", increasing=True)
    if not set(own) <= set(epochs):
        _fail(
            path,
            "header.__metadata__.epochs",
            f"{own} not among the manifest's checkpoint_epochs {epochs}",
        )
    shapes = {**spec.param_shapes(), **(spec.param_shapes(True) if spec.weight_norm else {})}
    _same_names(path, header, shapes)
    for name, shape in shapes.items():
        dtype, got, _, _ = header.tensors[name]
        want = (len(ids), len(own), *shape)
        if dtype != "F32" or got != want:
            _fail(path, f"header.{name}", f"{dtype} {list(got)}, expected F32 {list(want)}")
    return ids, own


def check_transform(path: Path, header: Header, spec: MLPSpec, rows: int, n_epochs: int) -> None:
    """A derived zoo's transform file: ``perm.P_l`` (int64) and optionally ``factor.P_l``
    (float32) of every hidden layer ``l``, each ``(rows, checkpoints, width)``."""
    hidden = {f"P_{l}": spec.widths[l + 1] for l in range(spec.n_layers - 1)}
    perms = {f"perm.{k}" for k in hidden}
    factors = {f"factor.{k}" for k in hidden} & set(header.tensors)
    _same_names(path, header, {k: () for k in perms | factors})
    for name in perms | factors:
        dtype, got, _, _ = header.tensors[name]
        want = ("I64" if name in perms else "F32", (rows, n_epochs, hidden[name.split(".")[1]]))
        if (dtype, got) != want:
            _fail(
                path, f"header.{name}", f"{dtype} {list(got)}, expected {want[0]} {list(want[1])}"
            )


def _same_names(path: Path, header: Header, expected: dict[str, Any]) -> None:
    missing, extra = (
        sorted(set(expected) - set(header.tensors)),
        sorted(set(header.tensors) - set(expected)),
    )
    if missing or extra:
        _fail(path, "header", f"tensors missing {_show(missing)}, unexpected {_show(extra)}")


# --------------------------------------------------------------------------- across files
_COLUMNS = {
    "member_id": "i",
    "shard": "i",
    "shard_row": "i",
    "diverged_epoch": "i",
    "diverged": "b",
}


def check_members(
    root: Path,
    manifest: dict[str, Any],
    members: pd.DataFrame,
    shards: dict[int, tuple[list[int], list[int]]],
) -> None:
    """``members.parquet`` against the manifest and the shards' ``(member_ids, epochs)``."""
    mpath, tpath = root / MANIFEST, root / "members.parquet"
    for col, kind in _COLUMNS.items():
        if col not in members.columns:
            _fail(tpath, col, "missing column")
        if members[col].dtype.kind != kind:
            _fail(
                tpath,
                col,
                f"dtype {members[col].dtype}, expected {'integer' if kind == 'i' else 'bool'}",
            )
    if "activation" not in members.columns:
        _fail(tpath, "activation", "missing column")
    n_signals = manifest["task"].get("n_signals")
    if n_signals is not None:  # an INR zoo: each member's signal and its class
        for col in ("signal", "signal_class"):
            if col not in members.columns:
                _fail(tpath, col, "missing column (an INR zoo: task.n_signals is set)")
            if members[col].dtype.kind != "i":
                _fail(tpath, col, f"dtype {members[col].dtype}, expected integer")
        sig = members["signal"].to_numpy()
        if len(sig) and (sig.min() < 0 or sig.max() >= n_signals):
            _fail(tpath, "signal", f"must be in [0, {n_signals}) (task.n_signals)")
    n = manifest["n_members"]
    if len(members) != n:
        _fail(mpath, "n_members", f"{n}, but {tpath.name} has {len(members)} rows")
    if not np.array_equal(members["member_id"].to_numpy(), np.arange(n)):
        _fail(tpath, "member_id", "must be 0 .. n-1 in row order")
    n_rows = sum(len(ids) for ids, _ in shards.values())
    if n_rows != n:
        _fail(mpath, "n_members", f"{n}, but the shards hold {n_rows} rows")
    shard, row = members["shard"].to_numpy(), members["shard_row"].to_numpy()
    if shard.min() < 0 or shard.max() >= len(shards):
        _fail(tpath, "shard", f"must be in [0, {len(shards)})")
    for s, (ids, _) in shards.items():
        mine = np.flatnonzero(shard == s)
        order = mine[np.argsort(row[mine], kind="stable")]
        if not np.array_equal(row[order], np.arange(len(ids))) or list(order) != ids:
            _fail(
                root / f"{shard_name(s)}.safetensors",
                "header.__metadata__.member_ids",
                f"do not match the rows of shard {s} in {tpath.name}",
            )
    trained = members["epochs"].to_numpy() if "epochs" in members.columns else None
    imported = "imported" in manifest  # one checkpoint per member, no initialization
    for s, (ids, own) in shards.items():  # 0 (the initialization) .. the last epoch trained
        if (own[0] != 0 and not imported) or (
            trained is not None and set(trained[ids]) != {own[-1]}
        ):
            _fail(
                root / f"{shard_name(s)}.safetensors",
                "header.__metadata__.epochs",
                f"{own}: must run from 0 to the members' epochs in {tpath.name}",
            )
    held = sorted({e for _, own in shards.values() for e in own})
    if held != manifest["checkpoint_epochs"]:
        _fail(
            mpath,
            "checkpoint_epochs",
            f"{_show(manifest['checkpoint_epochs'])}, but the shards hold {_show(held)}",
        )
    diverged = members["diverged"].to_numpy()
    if not np.array_equal(diverged, members["diverged_epoch"].to_numpy() >= 0):
        _fail(tpath, "diverged", "must be diverged_epoch >= 0")
    if int(diverged.sum()) != manifest["n_diverged"]:
        _fail(
            mpath,
            "n_diverged",
            f"{manifest['n_diverged']}, but {tpath.name} has {int(diverged.sum())}",
        )
    counts = members["activation"].astype(str).value_counts()
    acts = manifest["architecture"]["activations"]
    if set(counts.index) != set(acts) or counts[acts[0]] != counts.max():
        _fail(
            mpath,
            "architecture.activations",
            f"{_show(acts)}, but {tpath.name} has {_show(dict(counts))} (most common first)",
        )


def check_layout(
    root: Path, manifest: dict[str, Any], read_members: Callable[[], pd.DataFrame]
) -> dict[int, Header]:
    """Every shard's header, the members table and the (checked) manifest agree; returns
    the checked headers ``{shard: Header}``."""
    a = manifest["architecture"]
    spec = MLPSpec(tuple(a["widths"]), a["activations"][0], a["bias"], a["weight_norm"])
    headers, shards = {}, {}
    for s in range(manifest["n_shards"]):
        path = root / f"{shard_name(s)}.safetensors"
        headers[s] = read_header(path)
        shards[s] = check_shard(path, headers[s], spec, manifest["checkpoint_epochs"])
    check_members(root, manifest, read_members(), shards)
    if manifest.get("derived_from") is not None:
        for s, (ids, own) in shards.items():
            path = root / f"{shard_name(s)}.transform.safetensors"
            check_transform(path, read_header(path), spec, len(ids), len(own))
    return headers


def record_files(root: Path, index: int) -> dict[str, dict[str, Any]]:
    """The ``files`` of shard ``index``'s record (``shards/shard-K.json``, which the writer
    keeps for resuming): ``{path: {"sha256", "bytes"}}``, each path a file of that shard."""
    path = root / f"{shard_name(index)}.json"
    try:
        files = json.loads(path.read_text())["files"]
        ok = isinstance(files, dict) and all(
            isinstance(rel, str)
            and (m := _SHARD_FILE.fullmatch(rel)) is not None
            and rel == f"{shard_name(index)}.{m[2]}"
            and isinstance(meta, dict)
            and _SHA256.fullmatch(str(meta.get("sha256")))
            and type(meta.get("bytes")) is int
            for rel, meta in files.items()
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        _fail(path, "files", "not a valid shard record; delete it to retrain the shard")
    return files
