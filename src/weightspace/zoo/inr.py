"""INR tasks: every member fits its own signal (coordinates in, values out) and carries its class.

An implicit neural representation (INR) is a small MLP trained to represent one signal: a
digit image as (x, y) -> intensity, an MNIST-1D signal as t -> value. Zoos of INRs are the
field's standard test of weight-space learning (classify the digit an INR represents from its
weights alone). The tasks (``task.name``):

``inr_digits``
    scikit-learn's 1,797 8x8 digits: coordinates the 64 pixel centres (x, y) in [-1, 1]^2
    (row-major: pixel (row r, column c) is coordinate ``8 r + c``, x from the column, y from
    the row), target the intensity / 16 in [0, 1], class the digit.
``inr_mnist1d``
    MNIST-1D signals made offline by ``mnist1d.data.make_dataset`` (as the ``mnist1d`` task,
    cached alike): coordinates t the 40 points of linspace(-1, 1), target the signal's value
    (the dataset's own standardized scale), class its label. Signal ``i`` is row ``i`` of the
    dataset's ``x`` followed by ``x_test``.
``inr_mnist``, ``inr_fashion_mnist``
    28x28 images from the IDX files in ``task.data_dir`` (:mod:`weightspace.zoo.sources`):
    784 coordinates as for digits, intensity / 255, the 60,000 training images first, then
    the 10,000 test images.

``task.fourier_features`` (m > 0) feeds the networks random Fourier features of the
coordinates instead of the coordinates (Tancik et al., 2020: [sin(2 pi B v), cos(2 pi B v)],
B (m, in) drawn from N(0, ``fourier_scale``^2) with the task's seed), the alternative to
SIREN for ReLU networks: ``coords`` are then those 2m features, the networks' input.

``task.n_signals`` keeps the first n signals (default: all; for inr_mnist1d, how many to make,
default 5000). Member ``i`` fits signal ``signal[i]``: the ``zoo.hparams.signal`` column when
the config gives one (a value, a grid axis, a distribution), else ``member_id mod n_signals``,
so a zoo of ``k * n_signals`` members holds ``k`` fits of every signal with different seeds.
:func:`assign_signals` writes ``signal`` and ``signal_class`` into the members table;
:func:`split_by_signal` splits members so that no signal's INRs land in two splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from torch import Tensor

from weightspace.errors import ConfigError
from weightspace.zoo.sources import (
    MAX_SEED,
    get_data_dir,
    get_float,
    get_int,
    mnist1d_arrays,
    read_idx_folder,
)

INR_TASKS = ("inr_digits", "inr_mnist1d", "inr_mnist", "inr_fashion_mnist")
# Options of the classification tasks that mean nothing for a signal: refused, not ignored.
_CLASSIFICATION_ONLY = ("test_fraction", "standardize", "n_samples", "noise", "n_classes")
_MNIST1D_LENGTH = 40


@dataclass(frozen=True, eq=False)
class SignalTask:
    """Signals on a shared coordinate grid, one per member to fit, each with a class.

    coords: float32 (N, in) in [-1, 1]; signals: float32 (S, N, out); classes: int64 (S,).
    """

    name: str
    coords: Tensor
    signals: Tensor
    classes: Tensor
    n_classes: int

    is_classification = False  # targets are values: mean squared error, no accuracy

    @property
    def input_dim(self) -> int:
        return self.coords.shape[1]

    @property
    def output_dim(self) -> int:
        return self.signals.shape[2]

    @property
    def n_signals(self) -> int:
        return self.signals.shape[0]

    @property
    def peaks(self) -> Tensor:
        """(S,) each signal's value range, max - min: the peak of its PSNR."""
        flat = self.signals.flatten(1)
        return flat.amax(1) - flat.amin(1)

    def summary(self) -> dict[str, Any]:
        """The facts a zoo manifest records (``task``)."""
        return {
            "name": self.name,
            "n_signals": self.n_signals,
            "n_coords": len(self.coords),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "n_classes": self.n_classes,
        }

    def member_targets(self, signal: np.ndarray) -> Tensor:
        """(M, N, out) the targets of members fitting ``signal`` (M,) (signal indices)."""
        return self.signals[torch.from_numpy(np.array(signal, dtype=np.int64))]


def load_signal_task(cfg: Mapping[str, Any]) -> SignalTask:
    """The INR task ``cfg`` describes (``task.name`` one of :data:`INR_TASKS`)."""
    name = cfg.get("name")
    if name not in INR_TASKS:
        raise ConfigError(f"task.name: {name!r} is not an INR task ({', '.join(INR_TASKS)})")
    for key in _CLASSIFICATION_ONLY:
        if cfg.get(key) is not None:
            raise ConfigError(
                f"task.{key}: a classification option; INR task {name} fits every coordinate "
                "of each signal (no split, no standardization, no sample count: use n_signals)"
            )
    seed = get_int(cfg, "seed", 0, minimum=0, maximum=MAX_SEED)
    if name == "inr_mnist1d":
        n = get_int(cfg, "n_signals", 5000, minimum=1)
        # make_dataset draws num_samples // 10 per class: ask for a multiple of 10.
        arrays = mnist1d_arrays(seed, -(-n // 10) * 10, get_data_dir(cfg))
        values = np.concatenate([arrays["x"], arrays["x_test"]])[:, :, None]
        labels = np.concatenate([arrays["y"], arrays["y_test"]])
        coords = np.linspace(-1, 1, _MNIST1D_LENGTH)[:, None]
    else:
        if name == "inr_digits":
            images, labels = load_digits(return_X_y=True)
            images = images / 16.0
        else:
            x_train, y_train, x_test, y_test = read_idx_folder(cfg, name.removeprefix("inr_"))
            images, labels = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        side = int(round(images.shape[1] ** 0.5))
        values, coords = images[:, :, None], grid_coords(side, side)
    n = get_int(cfg, "n_signals", len(values), minimum=1)
    if n > len(values):
        raise ConfigError(
            f"task.n_signals: {n} out of range, task {name} holds {len(values)} signals"
        )
    coords = fourier_features(
        coords,
        get_int(cfg, "fourier_features", 0, minimum=0),
        get_float(cfg, "fourier_scale", 1.0),
        seed,
    )
    return SignalTask(
        name=name,
        coords=torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32)),
        signals=torch.from_numpy(np.ascontiguousarray(values[:n], dtype=np.float32)),
        classes=torch.from_numpy(np.asarray(labels[:n], dtype=np.int64)),
        n_classes=10,
    )


def network_inputs(task: Any) -> Tensor:
    """The inputs every member of a zoo of ``task`` reads: an INR task's coordinates (shared by
    all members), else the task's training inputs (what probe inputs are drawn from)."""
    return task.coords if isinstance(task, SignalTask) else task.x_train


def fourier_features(coords: np.ndarray, m: int, scale: float, seed: int) -> np.ndarray:
    """(N, 2m) random Fourier features [sin(2 pi B v), cos(2 pi B v)] of ``coords`` (N, in),
    B (m, in) ~ N(0, scale^2) from ``seed``; the coordinates themselves when ``m`` is 0."""
    if m == 0:
        return coords
    if not (np.isfinite(scale) and scale > 0):
        raise ConfigError(f"task.fourier_scale: {scale!r}: expected a finite number > 0")
    b = np.random.default_rng([int(seed), 7]).normal(0.0, scale, size=(m, coords.shape[1]))
    angles = 2 * np.pi * coords @ b.T  # (N, m)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def grid_coords(height: int, width: int) -> np.ndarray:
    """(height * width, 2) pixel centres (x, y) in [-1, 1]^2, row-major (x from the column)."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


# --------------------------------------------------------------------------- members
def member_signals(members: pd.DataFrame, task: SignalTask) -> np.ndarray:
    """(M,) the signal each member fits: the ``signal`` column where given (checked against
    the task), else ``member_id mod n_signals``."""
    ids = members["member_id"].to_numpy(np.int64)
    auto = ids % task.n_signals
    if "signal" not in members.columns:
        return auto
    col = pd.to_numeric(members["signal"], errors="coerce").to_numpy(np.float64)
    given = members["signal"].notna().to_numpy()
    bad = given & ~((col == np.round(col)) & (col >= 0) & (col < task.n_signals))
    if bad.any():
        value = members["signal"][bad].iloc[0]
        value = value.item() if hasattr(value, "item") else value
        raise ConfigError(
            f"zoo.hparams.signal: {value!r} out of range, task "
            f"{task.name} holds signals 0..{task.n_signals - 1} (task.n_signals)"
        )
    return np.where(given, np.nan_to_num(col), auto).astype(np.int64)


def check_members(members: pd.DataFrame, task: SignalTask) -> None:
    """Refuse the classification-only hyperparameters on an INR task, one line each."""
    if (members["label_noise"] > 0).any():
        raise ConfigError(
            f"zoo.hparams.label_noise: a classification option; INR task {task.name} has no "
            "labels to corrupt (set it to 0)"
        )
    if (members["subset"] < 1).any():
        raise ConfigError(
            f"zoo.hparams.subset: a classification option; every member of INR task "
            f"{task.name} fits all {len(task.coords)} coordinates of its signal (set it to 1)"
        )


def assign_signals(members: pd.DataFrame, task: SignalTask) -> pd.DataFrame:
    """The members table with ``signal`` (int64) and ``signal_class`` (int64) columns."""
    check_members(members, task)
    signal = member_signals(members, task)
    return members.assign(signal=signal, signal_class=task.classes.numpy()[signal])


def split_by_signal(
    signal: np.ndarray | Sequence[int],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Member indices of each split (train, val, test by default), split BY SIGNAL.

    The distinct signals are shuffled with ``numpy.random.default_rng(seed)`` and cut by
    ``fractions`` (``floor(fraction * n_signals)`` each, at least one for a fraction > 0, the
    last split takes the rest); each member goes where its
    signal went, so no signal's INRs are in two splits. Each index array is ascending.
    """
    signal = np.asarray(signal, dtype=np.int64)
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) < 1 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ConfigError(f"split fractions: non-negative numbers summing to 1, got {fractions}")
    distinct = np.unique(signal)
    if ((fr > 0).sum()) > len(distinct):
        raise ConfigError(
            f"split fractions: {len(distinct)} distinct signals cannot fill "
            f"{int((fr > 0).sum())} splits"
        )
    order = np.random.default_rng(int(seed)).permutation(distinct)
    n = len(distinct)
    counts = np.floor(fr * n).astype(np.int64)
    counts[(fr > 0) & (counts == 0)] = 1  # a split asked for gets at least one signal
    counts[-1] = n - counts[:-1].sum()  # the last split takes the rest
    while counts[-1] < (1 if fr[-1] > 0 else 0):  # ... at least one, if asked for
        counts[np.argmax(counts[:-1])] -= 1
        counts[-1] += 1
    parts = np.split(order, np.cumsum(counts)[:-1])
    return tuple(np.flatnonzero(np.isin(signal, p)) for p in parts)
