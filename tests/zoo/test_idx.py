import gzip
import struct

import numpy as np
import pytest

from weightspace.errors import DataError
from weightspace.zoo.idx import read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype: type) -> np.ndarray:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    # Extremes included so byte order and signedness mistakes show up.
    values = np.array([info.min, info.max, 0, 1, 2, 3], dtype=dtype)
    return np.resize(values, (2, 3, 4)).astype(dtype)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, dtype, suffix):
    path = tmp_path / f"data-idx3-ubyte{suffix}"
    array = _sample(dtype)
    write_idx(path, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    assert out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_header_is_big_endian_mnist_layout(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 2, 1])
    write_idx(path, np.array([1], dtype=np.int32))
    assert path.read_bytes()[2] == 0x0C
    assert path.read_bytes()[-4:] == b"\x00\x00\x00\x01"


def test_gzip_detected_by_content_not_suffix(tmp_path):
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    write_idx(tmp_path / "a.gz", array)
    renamed = tmp_path / "no-suffix"
    renamed.write_bytes((tmp_path / "a.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(renamed), array)


def test_missing_file(tmp_path):
    path = tmp_path / "absent"
    with pytest.raises(DataError, match="absent: IDX file not found"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data(tmp_path, suffix):
    path = tmp_path / f"images{suffix}"
    write_idx(tmp_path / "full", np.zeros((5, 28, 28), dtype=np.uint8))
    content = (tmp_path / "full").read_bytes()[:-100]
    path.write_bytes(gzip.compress(content) if suffix else content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert "5x28x28 uint8 (3920 bytes) but the file holds 3820 bytes" in message


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "images.gz"
    write_idx(path, np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 10))
    with pytest.raises(DataError, match="truncated IDX header") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_extra_data_is_a_size_mismatch(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(b"\x00\x00\x0b\x01" + struct.pack(">I", 2) + b"\x00" * 6)
    with pytest.raises(
        DataError, match="IDX header says 2 int16 \\(4 bytes\\) but the file holds 6"
    ):
        read_idx(path)


@pytest.mark.parametrize("content", [b"", b"\x00", b"PK\x03\x04rest", b"\x01\x00\x08\x01"])
def test_bad_magic(tmp_path, content):
    path = tmp_path / "not-idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "odd"
    path.write_bytes(b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="unknown IDX dtype code 0x0A"):
        read_idx(path)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    assert not (tmp_path / "x").exists()
