"""Files written so that a killed run leaves the old file or the new one, never half of one.

:func:`atomic_write_bytes` / :func:`atomic_write_parquet` write through a temporary file in
the same folder and a rename; :func:`sha256_file` is the checksum a zoo's records and manifest
hold; :func:`save_safetensors` gives a safetensors file whose bytes do not change from run to
run (a resumed zoo ends with the same bytes as an uninterrupted one).

Temporary names carry the writer's host and process id (``.NAME.HOST.PID.XXXXXXXX.tmp``), so
the next run can tell a file orphaned by a killed writer (:func:`remove_orphans`) from one a
live job is still writing. Files and folders get the modes the umask gives (``mkstemp`` alone
would make them owner-only, and a group could not share a zoo).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save

#: A temporary file or folder of this module: ``.NAME.HOST.PID.RANDOM.tmp``.
TEMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
#: Age after which a temporary file of another host (whose processes cannot be asked), or of
#: the older unmarked form ``.NAME.RANDOM.tmp``, counts as orphaned.
ORPHAN_AGE = 24 * 3600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_prefix(name: str) -> str:
    """The prefix of a temporary file or folder for ``name`` (``mkstemp(prefix=...)``)."""
    return f".{name}.{_host()}.{os.getpid()}."


def umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_orphans(folder: Path, only: str | None = None) -> list[Path]:
    """Remove temporary files and folders in ``folder`` left by killed writers; returns them.

    A temporary entry of this host is orphaned when its writer process is gone; one of
    another host, or of the older unmarked form, when older than :data:`ORPHAN_AGE`. With
    ``only``, just the entries for that name (``.ONLY.*``): a zoo cleans its own temporary
    folders among its siblings', never theirs.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host, now = _host(), time.time()
    for p in folder.iterdir():
        name = p.name
        if not name.startswith(".") or (only is not None and not name.startswith(f".{only}.")):
            continue
        m = TEMP_NAME.match(name)
        try:
            if m and m["host"] == host:
                orphan = not _alive(int(m["pid"]))
            elif m or (name.endswith(".tmp") and only is None):
                orphan = now - p.lstat().st_mtime > ORPHAN_AGE
            else:
                continue
            if orphan:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def make_temp_dir(parent: Path, name: str) -> Path:
    """A temporary folder for ``name`` in ``parent``, with the umask's mode (not 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save`` with a reproducible header.

    safetensors keeps the metadata in a hash map, so its key order (and with it the file's
    bytes) changes from call to call; here the metadata keys are sorted.
    """
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    ordered.update(header)  # tensor entries keep the order safetensors wrote them in
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen for the same keys and values; keep the original
        return data
    return data[:8] + text.ljust(n) + data[8 + n :]  # same length: padded with spaces
