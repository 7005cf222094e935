"""Reading and writing IDX files, the array format MNIST and Fashion-MNIST ship in.

An IDX file starts with the magic ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the data in C order and big-endian byte order. Files may be
gzip-compressed; :func:`read_idx` recognises that from the content, not the file name.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from weightspace.errors import DataError

# IDX dtype code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {dtype: code for code, dtype in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed, into a native-byte-order array.

    Raises :class:`DataError` naming the path if the file is missing, unreadable, not IDX,
    or holds a different amount of data than its header declares.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from e
    if content.startswith(_GZIP_MAGIC):
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: damaged or truncated gzip data ({e})") from e

    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (it does not start with bytes 00 00)")
    code, ndim = content[2], content[3]
    if code not in _DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _DTYPES)
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    dtype = _DTYPES[code]
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise DataError(
            f"{path}: truncated IDX header ({ndim} dimensions need {header_len} bytes, "
            f"the file holds {len(content)})"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(content) - header_len
    if actual != expected:
        dims = "x".join(map(str, shape)) or "scalar"
        raise DataError(
            f"{path}: IDX header says {dims} {dtype.name} ({expected} bytes) "
            f"but the file holds {actual} bytes"
        )
    # astype copies, so the result is writable and in the machine's byte order.
    return (
        np.frombuffer(content, dtype, offset=header_len)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Supported dtypes are uint8, int8, int16, int32, float32 and float64; anything else raises
    :class:`DataError`.
    """
    path = Path(path)
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">")
    if big_endian not in _CODES:
        supported = ", ".join(dtype.name for dtype in _DTYPES.values())
        raise DataError(f"{path}: cannot write {array.dtype} as IDX (supported: {supported})")
    header = bytes([0, 0, _CODES[big_endian], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    content = header + np.ascontiguousarray(array, dtype=big_endian).tobytes()
    if path.suffix == ".gz":
        # mtime=0 keeps the output byte-identical across runs.
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
