"""Where the tasks' raw data comes from, and how their options are read: shared by the
classification tasks (:mod:`weightspace.zoo.tasks`) and the INR tasks (:mod:`weightspace.zoo.inr`).

- :func:`mnist1d_arrays`: MNIST-1D made locally with the ``mnist1d`` package, cached as
  ``<data_dir>/mnist1d/mnist1d_seed{seed}_n{n_samples}.npz`` (written atomically);
- :func:`read_idx_folder`: MNIST / Fashion-MNIST from IDX files already on disk, in the layout
  torchvision writes (``<data_dir>/MNIST/raw/``, ``<data_dir>/FashionMNIST/raw/``);
- :func:`get_int`, :func:`get_float`, :func:`get_data_dir`: typed ``task.*`` options, each
  refused with a one-line :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mnist1d.data
import numpy as np

from weightspace.errors import ConfigError, DataError
from weightspace.zoo.idx import read_idx

# scikit-learn and numpy's legacy seeding (used by mnist1d) accept 32-bit seeds only.
MAX_SEED = 2**32 - 1

MNIST1D_KEYS = ("x", "y", "x_test", "y_test")

# Task name -> folder under data_dir, as torchvision names it.
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --- config access -----------------------------------------------------------------------
def get_int(
    cfg: Mapping[str, Any], key: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    # bool is an int subclass, but `true` is never a meaningful count or seed.
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not valid or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"task.{key}: expected an integer {bounds}, got {value!r}")
    return value


def get_float(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"task.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def get_data_dir(cfg: Mapping[str, Any]) -> Path | None:
    value = cfg.get("data_dir")
    return None if value is None else Path(value).expanduser()


# --- mnist1d: generated locally, cached as .npz -------------------------------------------
def mnist1d_arrays(seed: int, n_samples: int, data_dir: Path | None) -> dict[str, np.ndarray]:
    """MNIST-1D's ``x`` (n_train, 40), ``y``, ``x_test``, ``y_test`` for (seed, n_samples),
    from the cache under ``data_dir`` when there (made and cached otherwise; no cache when
    ``data_dir`` is None)."""
    if data_dir is None:
        return _make_mnist1d(seed, n_samples)
    cache = data_dir / "mnist1d" / f"mnist1d_seed{seed}_n{n_samples}.npz"
    if cache.exists():
        return _read_npz(cache)
    arrays = _make_mnist1d(seed, n_samples)
    _write_npz_atomic(cache, arrays)
    return arrays


def _make_mnist1d(seed: int, n_samples: int) -> dict[str, np.ndarray]:
    args = mnist1d.data.get_dataset_args()
    args.seed = seed
    args.num_samples = n_samples
    # make_dataset reseeds the global `random` and numpy generators; restore them so loading
    # a task does not change the caller's random streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        dataset = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: dataset[key] for key in MNIST1D_KEYS}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in MNIST1D_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable mnist1d cache ({e}); delete it to regenerate") from e


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # A temp file in the same folder plus os.replace: concurrent or interrupted runs never
    # see a half-written cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- mnist, fashion_mnist: IDX files on disk ----------------------------------------------
def read_idx_folder(
    cfg: Mapping[str, Any], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of ``name`` (mnist / fashion_mnist) from
    ``task.data_dir``: images scaled to [0, 1] and flattened to 784, labels 0..9."""
    label = IDX_FOLDERS[name]
    data_dir = get_data_dir(cfg)
    if data_dir is None:
        raise ConfigError(
            f"task.data_dir: required for task {cfg.get('name')!r} "
            f"(the folder holding {label}/raw/)"
        )
    folder = data_dir / label / "raw"
    paths = {stem: _find_idx_file(folder, stem) for stem in _IDX_FILES}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        wanted = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES)
        raise DataError(
            f"{folder}: {label} IDX files not found ({', '.join(missing)} missing); "
            f"put {wanted} there (the layout torchvision writes)"
        )
    x_train, y_train = _read_idx_pair(
        paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"]
    )
    x_test, y_test = _read_idx_pair(
        paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"]
    )
    return x_train, y_train, x_test, y_test


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):  # raw first: no decompression
        if path.is_file():
            return path
    return None


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images scaled to [0, 1] and flattened, and their labels, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path}: expected 28x28 uint8 images, got shape {images.shape} {images.dtype}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected a 1-D integer label array, got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(labels) == 0:
        raise DataError(f"{images_path}: holds no images")
    if not 0 <= labels.min() <= labels.max() < 10:
        raise DataError(
            f"{labels_path}: labels must be in 0..9, found {labels.min()}..{labels.max()}"
        )
    return images.reshape(len(images), -1) / np.float32(255), labels
