"""Task data: the small datasets that zoos of MLPs are trained on.

:func:`load_task` turns a ``task`` config (an omegaconf ``DictConfig`` or a plain dict) into a
:class:`Task` of float32 input tensors and targets, with a fixed train/test split. No task
downloads anything:

``digits``
    scikit-learn's bundled 8x8 handwritten digits: 1797 samples, 64 features, 10 classes.
``mnist1d``
    The MNIST-1D benchmark (40 features, 10 classes), generated locally with the ``mnist1d``
    package and cached as ``<data_dir>/mnist1d/mnist1d_seed{seed}_n{n_samples}.npz``.
``blobs``, ``moons``
    scikit-learn's synthetic Gaussian blobs and two interleaving half circles.
``sine``
    Regression of ``y = sin(x) + noise * N(0, 1)`` with ``x ~ U(-pi, pi)``.
``mnist``, ``fashion_mnist``
    Read from IDX files already on disk, in the layout torchvision writes
    (``<data_dir>/MNIST/raw/`` and ``<data_dir>/FashionMNIST/raw/``).

mnist1d, mnist and fashion_mnist come with their own train/test split; the other tasks are
split by ``test_fraction`` (stratified for classification), seeded by ``seed``. Inputs are
standardized per feature with statistics fitted on the training split only, so nothing about
the test split leaks into training. The same config always gives bit-identical tensors.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mnist1d.data
import numpy as np
import torch
from sklearn.datasets import load_digits, make_blobs, make_moons
from sklearn.model_selection import train_test_split

from weightspace.errors import ConfigError, DataError
from weightspace.zoo.idx import read_idx

# Features whose training std is below this are constant (digits has always-blank pixels);
# they get std 1 so standardization leaves them finite.
_STD_FLOOR = 1e-6

# scikit-learn and numpy's legacy seeding (used by mnist1d) accept 32-bit seeds only.
_MAX_SEED = 2**32 - 1

_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")

# Task name -> folder under data_dir, as torchvision names it.
_IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True, eq=False)
class Task:
    """A dataset with a fixed train/test split, ready for training.

    ``x_train``/``x_test`` are float32 ``[N, d]`` (standardized with ``mean``/``std`` unless the
    task was loaded with ``standardize=False``, in which case those are zeros/ones). Targets are
    int64 class indices ``[N]`` for classification and float32 ``[N, 1]`` for regression.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None  # None for regression
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def output_dim(self) -> int:
        if self.n_classes is not None:
            return self.n_classes
        return 1 if self.y_train.ndim == 1 else self.y_train.shape[-1]

    @property
    def is_classification(self) -> bool:
        return self.n_classes is not None


class _Split(NamedTuple):
    """Unstandardized numpy data of a task, as the task-specific loaders return it."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None


def load_task(cfg: Mapping[str, Any]) -> Task:
    """Load the task described by ``cfg`` (the ``task`` config group); see the module docs.

    Raises :class:`ConfigError` for invalid options and :class:`DataError` for missing or
    malformed files.
    """
    name = cfg.get("name")
    if name not in _LOADERS:
        raise ConfigError(f"task.name: unknown task {name!r} (choose from {', '.join(_LOADERS)})")
    standardize = cfg.get("standardize", True)
    if not isinstance(standardize, bool):
        raise ConfigError(f"task.standardize: expected true or false, got {standardize!r}")
    split = _LOADERS[name](cfg, _get_int(cfg, "seed", 0, minimum=0, maximum=_MAX_SEED))

    x_train = split.x_train.reshape(len(split.x_train), -1).astype(np.float32)
    x_test = split.x_test.reshape(len(split.x_test), -1).astype(np.float32)
    if standardize:
        # Statistics in float64 for accuracy, then applied in float32 exactly as
        # ``(x - task.mean) / task.std`` would, so users can reproduce it on new inputs.
        mean = x_train.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = x_train.std(axis=0, dtype=np.float64)
        std = np.where(std < _STD_FLOOR, 1.0, std).astype(np.float32)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    else:
        mean = np.zeros(x_train.shape[1], np.float32)
        std = np.ones(x_train.shape[1], np.float32)

    if split.n_classes is None:
        y_train = split.y_train.reshape(len(split.y_train), -1).astype(np.float32)
        y_test = split.y_test.reshape(len(split.y_test), -1).astype(np.float32)
    else:
        y_train = split.y_train.astype(np.int64)
        y_test = split.y_test.astype(np.int64)
    return Task(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)),
        n_classes=split.n_classes,
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
    )


def task_summary(task: Task) -> dict[str, Any]:
    """The facts about a task that a zoo manifest records."""
    return {
        "name": task.name,
        "n_train": len(task.x_train),
        "n_test": len(task.x_test),
        "input_dim": task.input_dim,
        "output_dim": task.output_dim,
        "n_classes": task.n_classes,
    }


# --- config access -----------------------------------------------------------------------


def _get_int(
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


def _get_float(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"task.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _get_test_fraction(cfg: Mapping[str, Any]) -> float:
    value = cfg.get("test_fraction")
    if value is None:
        return 0.2
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"task.test_fraction: expected a number in (0, 1), got {value!r}")
    return float(value)


def _get_data_dir(cfg: Mapping[str, Any]) -> Path | None:
    value = cfg.get("data_dir")
    return None if value is None else Path(value).expanduser()


# --- tasks split here by test_fraction ----------------------------------------------------


def _split(
    cfg: Mapping[str, Any], seed: int, x: np.ndarray, y: np.ndarray, n_classes: int | None
) -> _Split:
    test_fraction = _get_test_fraction(cfg)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x,
            y,
            test_size=test_fraction,
            random_state=seed,
            stratify=None if n_classes is None else y,
        )
    except ValueError as e:  # too few samples for this fraction (and number of classes)
        raise ConfigError(
            f"task.test_fraction: cannot split {len(y)} samples with test_fraction="
            f"{test_fraction} ({e})"
        ) from e
    return _Split(x_train, y_train, x_test, y_test, n_classes)


def _load_digits(cfg: Mapping[str, Any], seed: int) -> _Split:
    x, y = load_digits(return_X_y=True)
    return _split(cfg, seed, x, y, n_classes=10)


def _load_blobs(cfg: Mapping[str, Any], seed: int) -> _Split:
    n_classes = _get_int(cfg, "n_classes", 3, minimum=2)
    x, y = make_blobs(
        n_samples=_get_int(cfg, "n_samples", 2000, minimum=2),
        n_features=_get_int(cfg, "n_features", 2, minimum=1),
        centers=n_classes,
        random_state=seed,
    )
    return _split(cfg, seed, x, y, n_classes)


def _load_moons(cfg: Mapping[str, Any], seed: int) -> _Split:
    x, y = make_moons(
        n_samples=_get_int(cfg, "n_samples", 2000, minimum=2),
        noise=_get_float(cfg, "noise", 0.1),
        random_state=seed,
    )
    return _split(cfg, seed, x, y, n_classes=2)


def _load_sine(cfg: Mapping[str, Any], seed: int) -> _Split:
    n_samples = _get_int(cfg, "n_samples", 1000, minimum=2)
    noise = _get_float(cfg, "noise", 0.05)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, size=(n_samples, 1))
    y = np.sin(x) + noise * rng.standard_normal((n_samples, 1))
    return _split(cfg, seed, x, y, n_classes=None)


# --- mnist1d: generated locally, cached as .npz -------------------------------------------


def _load_mnist1d(cfg: Mapping[str, Any], seed: int) -> _Split:
    # mnist1d draws n_samples // 10 per class, so fewer than 10 would give an empty dataset.
    n_samples = _get_int(cfg, "n_samples", 5000, minimum=10)
    data_dir = _get_data_dir(cfg)
    if data_dir is None:
        arrays = _make_mnist1d(seed, n_samples)
    else:
        cache = data_dir / "mnist1d" / f"mnist1d_seed{seed}_n{n_samples}.npz"
        if cache.exists():
            arrays = _read_npz(cache)
        else:
            arrays = _make_mnist1d(seed, n_samples)
            _write_npz_atomic(cache, arrays)
    return _Split(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], n_classes=10)


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
    return {key: dataset[key] for key in _MNIST1D_KEYS}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in _MNIST1D_KEYS}
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


def _load_idx_task(cfg: Mapping[str, Any], name: str) -> _Split:
    label = _IDX_FOLDERS[name]
    data_dir = _get_data_dir(cfg)
    if data_dir is None:
        raise ConfigError(
            f"task.data_dir: required for task {name!r} (the folder holding {label}/raw/)"
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
    return _Split(x_train, y_train, x_test, y_test, n_classes=10)


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


_LOADERS: dict[str, Callable[[Mapping[str, Any], int], _Split]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "blobs": _load_blobs,
    "moons": _load_moons,
    "sine": _load_sine,
    "mnist": lambda cfg, _seed: _load_idx_task(cfg, "mnist"),
    "fashion_mnist": lambda cfg, _seed: _load_idx_task(cfg, "fashion_mnist"),
}
