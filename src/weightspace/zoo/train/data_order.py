"""What data each member of a population sees, and in which order.

A member trains on a subset of the training examples (:func:`member_subset`), visited each
epoch in an order shuffled by a splitmix64 stream keyed by its data seed and the epoch
(:func:`shuffled`, :func:`member_epoch_order`), with a fraction of its labels replaced by
other classes (:func:`member_labels`). Everything here depends on the member's data seed
alone, never on the other members of its population.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def member_subset(data_seed: int, n_train: int, subset: float) -> np.ndarray:
    """Sorted indices of the training examples a member sees (all of them if subset == 1)."""
    if subset >= 1.0:
        return np.arange(n_train)
    n = max(1, int(round(subset * n_train)))
    rng = np.random.default_rng([int(data_seed), 1])
    return np.sort(rng.choice(n_train, size=n, replace=False))


# The shuffle is a Fisher-Yates pass driven by a splitmix64 stream keyed by (data seed,
# epoch): cheap enough for the fused kernel to shuffle each member's examples itself, right
# before its epoch, and written out here in numpy, vectorized over members, as the reference
# (tests check that the two agree). docs/zoo-format.md states it.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX[0]
    z = (z ^ (z >> np.uint64(27))) * _MIX[1]
    return z ^ (z >> np.uint64(31))


def shuffled(base: np.ndarray, data_seeds: np.ndarray, epoch: int) -> np.ndarray:
    """Each row of ``base`` (M or 1, n) shuffled by the stream of its member's (seed, epoch).

    For i = n - 1 down to 1: the stream's next 64-bit word r gives j = ((r >> 32) * (i + 1))
    >> 32, and entries i and j swap. The stream starts at mix(mix(seed) ^ epoch * golden) and
    advances by golden (0x9E3779B97F4A7C15) before each word r = mix(state).
    """
    seeds = np.asarray(data_seeds, dtype=np.int64).reshape(-1).view(np.uint64)
    m, n = len(seeds), np.shape(base)[-1]
    base = np.broadcast_to(np.asarray(base, dtype=np.int64), (m, n))
    state = _mix64(_mix64(seeds) ^ np.uint64((int(epoch) * int(_GOLDEN)) % (1 << 64)))
    flat = base.T.copy().ravel()  # position-major: position i of every member contiguous
    cols = np.arange(m)
    step = 256  # swaps whose random words are drawn at once, for all members
    for top in range(n - 1, 0, -step):
        i = np.arange(top, max(0, top - step), -1, dtype=np.uint64)  # this run's positions
        k = np.uint64(n) - i  # words drawn so far, this one included
        r = _mix64(state[:, None] + k * _GOLDEN)  # (m, len(i))
        js = (((r >> np.uint64(32)) * (i + np.uint64(1))) >> np.uint64(32)).astype(np.int64)
        at = js * m + cols[:, None]  # flat index of (position j, member)
        for c, ii in enumerate(i.astype(np.int64)):
            a = at[:, c]
            at_j = flat[a]
            flat[a] = flat[ii * m : (ii + 1) * m]
            flat[ii * m : (ii + 1) * m] = at_j
    return flat.reshape(n, m).T.copy()


def member_subsets(data_seeds: np.ndarray, n_train: int, subset: float) -> np.ndarray:
    """(1, n) when every member sees every example, else each member's subset, (M, n_seen)."""
    if subset >= 1.0:
        return np.arange(n_train, dtype=np.int64)[None]
    drawn = {s: member_subset(s, n_train, subset) for s in np.unique(data_seeds)}
    return np.stack([drawn[s] for s in data_seeds]).astype(np.int64)


def member_epoch_order(data_seed: int, n_train: int, subset: float, epoch: int) -> np.ndarray:
    """Order in which a member visits its training examples in ``epoch`` (1-based)."""
    return shuffled(member_subset(data_seed, n_train, subset)[None], [data_seed], epoch)[0]


def member_labels(data_seed: int, y: Tensor, n_classes: int, label_noise: float) -> Tensor:
    """A member's training labels: a ``label_noise`` fraction replaced by a different class."""
    if label_noise <= 0:
        return y
    rng = np.random.default_rng([int(data_seed), 3])
    n = int(round(label_noise * len(y)))
    which = rng.choice(len(y), size=n, replace=False)
    shift = rng.integers(1, n_classes, size=n)  # never the true class
    noisy = y.clone()
    noisy[which] = (y[which] + torch.from_numpy(shift)) % n_classes
    return noisy
