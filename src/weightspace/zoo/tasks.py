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

``inr_digits``, ``inr_mnist1d``, ``inr_mnist``, ``inr_fashion_mnist``
    INR tasks, whose targets differ per member (each fits its own signal): loaded as a
    :class:`~weightspace.zoo.inr.SignalTask` (:mod:`weightspace.zoo.inr`).

mnist1d, mnist and fashion_mnist come with their own train/test split; the other tasks are
split by ``test_fraction`` (stratified for classification), seeded by ``seed``. Inputs are
standardized per feature with statistics fitted on the training split only, so nothing about
the test split leaks into training. The same config always gives bit-identical tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits, make_blobs, make_moons
from sklearn.model_selection import train_test_split

from weightspace.errors import ConfigError
from weightspace.zoo.inr import INR_TASKS, SignalTask, load_signal_task
from weightspace.zoo.sources import (
    MAX_SEED,
    get_data_dir,
    get_float,
    get_int,
    mnist1d_arrays,
    read_idx_folder,
)

# Features whose training std is below this are constant (digits has always-blank pixels);
# they get std 1 so standardization leaves them finite.
_STD_FLOOR = 1e-6


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


def load_task(cfg: Mapping[str, Any]) -> Task | SignalTask:
    """Load the task described by ``cfg`` (the ``task`` config group); see the module docs.

    Raises :class:`ConfigError` for invalid options and :class:`DataError` for missing or
    malformed files.
    """
    name = cfg.get("name")
    if name in INR_TASKS:
        return load_signal_task(cfg)
    if name not in _LOADERS:
        known = ", ".join([*_LOADERS, *INR_TASKS])
        raise ConfigError(f"task.name: unknown task {name!r} (choose from {known})")
    standardize = cfg.get("standardize", True)
    if not isinstance(standardize, bool):
        raise ConfigError(f"task.standardize: expected true or false, got {standardize!r}")
    split = _LOADERS[name](cfg, get_int(cfg, "seed", 0, minimum=0, maximum=MAX_SEED))

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


def task_summary(task: Task | SignalTask) -> dict[str, Any]:
    """The facts about a task that a zoo manifest records."""
    if isinstance(task, SignalTask):
        return task.summary()
    return {
        "name": task.name,
        "n_train": len(task.x_train),
        "n_test": len(task.x_test),
        "input_dim": task.input_dim,
        "output_dim": task.output_dim,
        "n_classes": task.n_classes,
    }


# --- config access -----------------------------------------------------------------------


def _get_test_fraction(cfg: Mapping[str, Any]) -> float:
    value = cfg.get("test_fraction")
    if value is None:
        return 0.2
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"task.test_fraction: expected a number in (0, 1), got {value!r}")
    return float(value)


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
    n_classes = get_int(cfg, "n_classes", 3, minimum=2)
    x, y = make_blobs(
        n_samples=get_int(cfg, "n_samples", 2000, minimum=2),
        n_features=get_int(cfg, "n_features", 2, minimum=1),
        centers=n_classes,
        random_state=seed,
    )
    return _split(cfg, seed, x, y, n_classes)


def _load_moons(cfg: Mapping[str, Any], seed: int) -> _Split:
    x, y = make_moons(
        n_samples=get_int(cfg, "n_samples", 2000, minimum=2),
        noise=get_float(cfg, "noise", 0.1),
        random_state=seed,
    )
    return _split(cfg, seed, x, y, n_classes=2)


def _load_sine(cfg: Mapping[str, Any], seed: int) -> _Split:
    n_samples = get_int(cfg, "n_samples", 1000, minimum=2)
    noise = get_float(cfg, "noise", 0.05)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, size=(n_samples, 1))
    y = np.sin(x) + noise * rng.standard_normal((n_samples, 1))
    return _split(cfg, seed, x, y, n_classes=None)


# --- mnist1d, mnist, fashion_mnist: their own splits (weightspace.zoo.sources) ----------


def _load_mnist1d(cfg: Mapping[str, Any], seed: int) -> _Split:
    # mnist1d draws n_samples // 10 per class, so fewer than 10 would give an empty dataset.
    n_samples = get_int(cfg, "n_samples", 5000, minimum=10)
    arrays = mnist1d_arrays(seed, n_samples, get_data_dir(cfg))
    return _Split(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], n_classes=10)


def _load_idx_task(cfg: Mapping[str, Any], name: str) -> _Split:
    return _Split(*read_idx_folder(cfg, name), n_classes=10)


_LOADERS: dict[str, Callable[[Mapping[str, Any], int], _Split]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "blobs": _load_blobs,
    "moons": _load_moons,
    "sine": _load_sine,
    "mnist": lambda cfg, _seed: _load_idx_task(cfg, "mnist"),
    "fashion_mnist": lambda cfg, _seed: _load_idx_task(cfg, "fashion_mnist"),
}
