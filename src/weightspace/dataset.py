"""Zoos as batches: the weight dataset, per-layer normalization, splits by member, DataModule.

An *item* is one checkpoint of one member, ``(zoo_index, member_id, epoch)``. Each network is
given either as a flat vector in ``state_dict`` order or as neuron tokens::

    representation="flat"    batch["weights"]      (B, D)            D = spec.n_params()
    representation="tokens"  batch["tokens"]       (B, T, d_tok)     one token per neuron
                             batch["layer_id"]     (B, T) long       layer of the neuron
                             batch["position_id"]  (B, T) long       its row in that layer
                             batch["mask"]         (B, T, d_tok) bool  real entries vs padding

A neuron's token holds its incoming weights in ``tokens[:fan_in]`` and its bias in the last
slot ``tokens[-1]`` (so a bias is always in the same channel), zeros in between:
``T = sum(widths[1:])`` and ``d_tok = max(widths[:-1]) + 1`` (``+ 0`` without biases).

With ``augment`` and ``views=V > 1`` the weights get a view axis after the batch axis:
``batch["weights"]`` is ``(B, V, D)`` (``batch["tokens"]`` ``(B, V, T, d_tok)``). Every batch
also holds ``"targets"`` (float tensors, and long codes of the categorical hyperparameters
whose names are in :attr:`WeightDataset.categories`), ``"member_id"``, ``"epoch"``,
``"zoo_index"`` and ``"index"`` (the item's position in the dataset), all ``(B,)``.

Weights stay on disk: :meth:`WeightDataset.__getitems__` reads a batch with one
:meth:`Zoo.weights` call per (zoo, epoch) present in it, from the memory-mapped shards. The
DataLoader then must not collate again: use :func:`collate_batch` (the DataModule does).

Per batch, in this order: read -> ``transform`` (canonicalize / align, deterministic, on the
stacked parameters) -> ``augment`` (random views) -> normalize -> flatten or tokenize.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from weightspace.errors import ConfigError
from weightspace.nets.layout import flatten_params, params_to_tokens, token_dim, token_layout
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.store import Zoo

Params = dict[str, Tensor]
Transform = Callable[[Params, MLPSpec], Params]
Augment = Callable[[Params, MLPSpec, torch.Generator], Params]
Representation = Literal["flat", "tokens"]
MemberKey = int | tuple[int, int]

# Targets read from a checkpoint's metrics row, and from its member's hyperparameters.
METRIC_TARGETS = ("test_acc", "test_loss", "train_acc", "train_loss")
MEMBER_TARGETS = {  # column in members.parquet -> target name
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "init_scale": "init_scale",
    "init_std": "init_std",
    "init_value": "init_value",
    "batch_size": "batch_size",
    "epochs": "train_epochs",
    "subset": "subset",
    "label_noise": "label_noise",
    "diverged": "diverged",
}
CATEGORICAL_TARGETS = ("init", "bias_init", "optimizer", "activation", "data_order")


# --------------------------------------------------------------------------- normalization
class LayerNormalizer:
    """Per parameter tensor standardization: ``(x - mean[name]) / std[name]``.

    One mean and one std per ``state_dict`` tensor (each layer's weight and bias separately),
    fitted on the training split only (:meth:`fit`). Works on stacked parameter dicts, flat
    vectors ``(..., D)`` and tokens ``(..., T, d_tok)`` (token padding stays zero), and is
    inverted by :meth:`denormalize`. A tensor whose std is below ``eps`` (e.g. constant
    initializations only) keeps std 1, so it is only centred. :meth:`to_dict` gives plain
    Python values for checkpoints; :meth:`from_dict` reads them back.
    """

    def __init__(
        self,
        spec: MLPSpec,
        mean: Mapping[str, float],
        std: Mapping[str, float],
        count: int = 0,
    ):
        self.spec = MLPSpec(spec.widths, bias=spec.bias)
        names = list(self.spec.param_shapes())
        if set(mean) != set(names) or set(std) != set(names):
            raise ValueError(f"normalizer stats must cover exactly {names}")
        self.mean = {n: float(mean[n]) for n in names}
        self.std = {n: float(std[n]) for n in names}
        self.count = int(count)
        self._flat: tuple[Tensor, Tensor] | None = None
        self._tokens: tuple[Tensor, Tensor] | None = None

    # ---- fitting
    @classmethod
    def fit(
        cls,
        dataset: WeightDataset,
        indices: Iterable[int] | None = None,
        chunk_size: int = 4096,
        eps: float = 1e-8,
    ) -> LayerNormalizer:
        """Statistics over ``dataset`` items ``indices`` (default: all), read in chunks.

        Uses the parameters after the dataset's ``transform`` and before augmentation.
        """
        idx = np.arange(len(dataset)) if indices is None else np.asarray(list(indices), int)
        if len(idx) == 0:
            raise ConfigError("normalizer: cannot fit on an empty training split")
        # Chunks in (zoo, epoch, member) order read few (zoo, epoch) groups each.
        idx = idx[dataset._read_order(idx)]
        acc = _Moments()
        for lo in range(0, len(idx), chunk_size):
            acc.update(dataset.params(idx[lo : lo + chunk_size]))
        return acc.normalizer(dataset.spec, eps)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Tensor], spec: MLPSpec, eps: float = 1e-8
    ) -> LayerNormalizer:
        """Statistics of stacked parameters already in memory."""
        acc = _Moments()
        acc.update(params)
        return acc.normalizer(spec, eps)

    # ---- parameter dicts
    def normalize_params(self, params: Mapping[str, Tensor]) -> Params:
        return {n: (p - self.mean[n]) / self.std[n] for n, p in params.items()}

    def denormalize_params(self, params: Mapping[str, Tensor]) -> Params:
        return {n: p * self.std[n] + self.mean[n] for n, p in params.items()}

    # ---- flat vectors and tokens: precomputed per-entry mean / std
    def _flat_stats(self) -> tuple[Tensor, Tensor]:
        if self._flat is None:
            shapes = self.spec.param_shapes()
            mean = {n: torch.full(s, self.mean[n]) for n, s in shapes.items()}
            std = {n: torch.full(s, self.std[n]) for n, s in shapes.items()}
            self._flat = flatten_params(mean, self.spec), flatten_params(std, self.spec)
        return self._flat

    def _token_stats(self) -> tuple[Tensor, Tensor]:
        if self._tokens is None:
            shapes = self.spec.param_shapes()
            mean = {n: torch.full(s, self.mean[n]) for n, s in shapes.items()}
            std = {n: torch.full(s, self.std[n]) for n, s in shapes.items()}
            pad = ~token_layout(self.spec).mask
            tok_std = params_to_tokens(std, self.spec).masked_fill(pad, 1.0)
            self._tokens = params_to_tokens(mean, self.spec), tok_std
        return self._tokens

    def normalize_flat(self, x: Tensor) -> Tensor:
        mean, std = self._flat_stats()
        return (x - mean.to(x)) / std.to(x)

    def denormalize_flat(self, x: Tensor) -> Tensor:
        mean, std = self._flat_stats()
        return x * std.to(x) + mean.to(x)

    def normalize_tokens(self, x: Tensor) -> Tensor:
        mean, std = self._token_stats()
        return (x - mean.to(x)) / std.to(x)

    def denormalize_tokens(self, x: Tensor) -> Tensor:
        mean, std = self._token_stats()
        return x * std.to(x) + mean.to(x)

    def _kind(self, x: Tensor) -> str:
        layout_shape = (sum(self.spec.widths[1:]), token_dim(self.spec))
        if x.dim() >= 2 and tuple(x.shape[-2:]) == layout_shape:
            # A single-layer net with one output has T=1, d_tok=D: both layouts coincide.
            return "tokens"
        if x.shape[-1] == self.spec.n_params():
            return "flat"
        raise ValueError(
            f"tensor of shape {tuple(x.shape)} is neither flat (..., {self.spec.n_params()}) "
            f"nor tokens (..., {layout_shape[0]}, {layout_shape[1]})"
        )

    def normalize(self, x: Tensor | Mapping[str, Tensor]) -> Tensor | Params:
        """A parameter dict, flat vectors ``(..., D)`` or tokens ``(..., T, d_tok)``."""
        if isinstance(x, Mapping):
            return self.normalize_params(x)
        return self.normalize_tokens(x) if self._kind(x) == "tokens" else self.normalize_flat(x)

    def denormalize(self, x: Tensor | Mapping[str, Tensor]) -> Tensor | Params:
        if isinstance(x, Mapping):
            return self.denormalize_params(x)
        if self._kind(x) == "tokens":
            return self.denormalize_tokens(x)
        return self.denormalize_flat(x)

    # ---- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.spec.widths),
            "bias": self.spec.bias,
            "mean": dict(self.mean),
            "std": dict(self.std),
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerNormalizer:
        spec = MLPSpec(tuple(d["widths"]), bias=bool(d["bias"]))
        return cls(spec, d["mean"], d["std"], d.get("count", 0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerNormalizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        stats = ", ".join(f"{n}: {self.mean[n]:.3g}±{self.std[n]:.3g}" for n in self.mean)
        return f"LayerNormalizer({stats})"


class _Moments:
    """Running count / mean / sum of squared deviations per tensor (Chan et al. merge)."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}
        self.mean: dict[str, float] = {}
        self.m2: dict[str, float] = {}

    def update(self, params: Mapping[str, Tensor]) -> None:
        for name, p in params.items():
            x = p.detach().reshape(-1).double()
            nb = x.numel()
            if nb == 0:
                continue
            mb = float(x.mean())
            m2b = float(((x - mb) ** 2).sum())
            na, ma, m2a = self.n.get(name, 0), self.mean.get(name, 0.0), self.m2.get(name, 0.0)
            n = na + nb
            delta = mb - ma
            self.n[name] = n
            self.mean[name] = ma + delta * nb / n
            self.m2[name] = m2a + m2b + delta * delta * na * nb / n

    def normalizer(self, spec: MLPSpec, eps: float) -> LayerNormalizer:
        std = {}
        for name, m2 in self.m2.items():
            s = math.sqrt(m2 / self.n[name])
            std[name] = s if s > eps else 1.0
        first, shape = next(iter(spec.param_shapes().items()))
        count = self.n.get(first, 0) // math.prod(shape)  # networks seen
        return LayerNormalizer(spec, self.mean, std, count)


# --------------------------------------------------------------------------- the dataset
def _open(zoos: Zoo | str | Path | Sequence[Zoo | str | Path]) -> list[Zoo]:
    items = [zoos] if isinstance(zoos, Zoo | str | Path) else list(zoos)
    if not items:
        raise ConfigError("dataset: no zoo given")
    return [z if isinstance(z, Zoo) else Zoo.open(z) for z in items]


def _resolve_callable(obj: Callable | str | None, what: str) -> Callable | None:
    """A callable, or its import path ``"package.module.name"`` / ``"package.module:name"``."""
    if obj is None or callable(obj):
        return obj
    if isinstance(obj, str):
        module, _, name = obj.partition(":") if ":" in obj else obj.rpartition(".")
        try:
            return functools.reduce(getattr, name.split("."), importlib.import_module(module))
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"{what}: cannot import '{obj}' ({e})") from e
    raise ConfigError(f"{what}: expected a callable or an import path, got {type(obj).__name__}")


def _callable_name(obj: Callable | str | None) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}" if module else name


def _seed_from(*words: int) -> int:
    """A 64-bit seed that depends on every word (numpy's SeedSequence hashing)."""
    entropy = [int(w) & 0xFFFFFFFFFFFFFFFF for w in words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class WeightDataset(Dataset):
    """Checkpoints of one or more zoos, as flat vectors or neuron tokens, read lazily.

    Args:
        zoos: a :class:`Zoo` (or its path) or several with the same widths and bias.
        representation: ``"flat"`` or ``"tokens"`` (see the module docstring).
        epochs: checkpoint epochs to keep; ``None`` all, ``"last"`` each member's last.
        exclude_diverged: drop every checkpoint of members whose training diverged.
        test_acc_range: ``(lo, hi)`` bounds (inclusive, ``None`` for open) on the test
            accuracy of that checkpoint; checkpoints without one (regression) are dropped.
        members: keep only these members: ids (one zoo) or ``(zoo_index, member_id)`` pairs.
        transform: ``f(params, spec) -> params`` on stacked parameters ``{name: (n, ...)}``,
            deterministic (canonicalization, alignment); called once per (zoo, epoch,
            activation) group of a batch, with that group's spec. A tuple result
            ``(params, extra)`` is accepted too (``extra`` is dropped).
        augment: ``f(params, spec, generator) -> params``, random and function-preserving,
            drawing an independent transform for every member in the stack. Called once per
            item on ``views`` copies of it, with a generator seeded by ``seed``, the
            augmentation epoch (:meth:`set_epoch`) and the item's (zoo, member, epoch): the
            same item gets the same views wherever and in whatever batch it is read.
        views: with ``augment``, how many views per item; ``> 1`` adds a view axis.
        normalizer: applied to every item (the DataModule sets the one fitted on train).
        cache: read all selected weights into memory once (after ``transform``).
    """

    def __init__(
        self,
        zoos: Zoo | str | Path | Sequence[Zoo | str | Path],
        representation: Representation = "flat",
        *,
        epochs: Sequence[int] | Literal["last"] | None = None,
        exclude_diverged: bool = True,
        test_acc_range: tuple[float | None, float | None] | None = None,
        members: Iterable[MemberKey] | None = None,
        transform: Transform | str | None = None,
        augment: Augment | str | None = None,
        views: int = 1,
        seed: int = 0,
        normalizer: LayerNormalizer | None = None,
        cache: bool = False,
    ):
        self.zoos = _open(zoos)
        specs = [z.spec for z in self.zoos]
        if any((s.widths, s.bias) != (specs[0].widths, specs[0].bias) for s in specs):
            got = ", ".join(f"{list(s.widths)} bias={s.bias}" for s in specs)
            raise ConfigError(f"dataset: zoos must have the same widths and bias; got {got}")
        if representation not in ("flat", "tokens"):
            raise ConfigError(f"representation: '{representation}' (choose flat or tokens)")
        views = int(views)
        if views < 1 or (views > 1 and augment is None):
            raise ConfigError(f"views={views}: need views >= 1, and an augment for views > 1")
        # Effective weights: weight-normalized zoos are read as plain weight / bias tensors.
        self.spec = MLPSpec(specs[0].widths, specs[0].activation, specs[0].bias)
        self.representation: Representation = representation
        self.transform = _resolve_callable(transform, "transform")
        self.augment = _resolve_callable(augment, "augment")
        self.views = views
        self.seed = int(seed)
        self.aug_epoch = 0
        self.normalizer = normalizer
        self.layout = token_layout(self.spec)
        self._shapes = self.spec.param_shapes()
        self.categories = self._categories()
        self._select(epochs, exclude_diverged, test_acc_range, members)
        if len(self) == 0:
            raise ConfigError(
                f"dataset: no checkpoint matches epochs={epochs}, exclude_diverged="
                f"{exclude_diverged}, test_acc_range={test_acc_range}, members={members}"
            )
        self._cache: Params | None = None
        if cache:
            self._cache = self._read(np.arange(len(self)))

    # ---- item table
    def _categories(self) -> dict[str, list[str]]:
        """Code -> name of each categorical target, over all members of all zoos."""
        cats = {}
        for col in CATEGORICAL_TARGETS:
            values = set()
            for z in self.zoos:
                if col in z.members:
                    values.update(z.members[col].astype(str))
            if values:
                cats[col] = sorted(values)
        return cats

    def _select(self, epochs, exclude_diverged, test_acc_range, members) -> None:
        wanted = self._member_filter(members)
        if epochs is not None and not isinstance(epochs, str):
            epochs = [int(e) for e in epochs]
            known = set().union(*(z.epochs for z in self.zoos))
            if missing := sorted(set(epochs) - known):
                raise ConfigError(f"epochs: {missing} not in any zoo (zoos hold {sorted(known)})")
        elif isinstance(epochs, str) and epochs != "last":
            raise ConfigError(f"epochs: '{epochs}' (a list of epochs, 'last' or null)")
        frames = []
        for zi, zoo in enumerate(self.zoos):
            met, mem = zoo.metrics, zoo.members
            ids = met["member_id"].to_numpy()
            keep = np.ones(len(met), dtype=bool)
            if epochs == "last":
                keep &= (
                    met["epoch"] == met.groupby("member_id")["epoch"].transform("max")
                ).to_numpy()
            elif epochs is not None:
                keep &= met["epoch"].isin(epochs).to_numpy()
            if exclude_diverged:
                keep &= ~mem["diverged"].to_numpy(bool)[ids]
            if test_acc_range is not None:
                lo, hi = test_acc_range
                acc = met["test_acc"].to_numpy(float)
                ok = np.isfinite(acc)
                if lo is not None:
                    ok &= acc >= lo
                if hi is not None:
                    ok &= acc <= hi
                keep &= ok
            if wanted is not None:
                keep &= np.isin(ids, wanted.get(zi, []))
            rows = met[keep]
            mrows = mem.iloc[rows["member_id"].to_numpy()]
            df = pd.DataFrame(
                {
                    "zoo_index": zi,
                    "member_id": rows["member_id"].to_numpy(np.int64),
                    "epoch": rows["epoch"].to_numpy(np.int64),
                }
            )
            for col in METRIC_TARGETS:
                df[col] = rows[col].to_numpy(float) if col in rows else np.nan
            for col, name in MEMBER_TARGETS.items():
                df[name] = mrows[col].to_numpy(float) if col in mrows else np.nan
            for col in self.categories:
                df[col] = mrows[col].astype(str).to_numpy() if col in mrows else ""
            frames.append(df)
        items = pd.concat(frames, ignore_index=True)
        items = items.sort_values(["zoo_index", "member_id", "epoch"], ignore_index=True)
        self._set_items(items)

    def _member_filter(self, members: Iterable[MemberKey] | None) -> dict[int, list[int]] | None:
        if members is None:
            return None
        wanted: dict[int, list[int]] = {}
        for key in members:
            if isinstance(key, Iterable):
                zi, mid = (int(k) for k in key)
            else:
                if len(self.zoos) > 1:
                    raise ConfigError(
                        "members: with several zoos give (zoo_index, member_id) pairs"
                    )
                zi, mid = 0, int(key)
            if not (0 <= zi < len(self.zoos) and 0 <= mid < len(self.zoos[zi])):
                raise ConfigError(f"members: no member {mid} in zoo {zi}")
            wanted.setdefault(zi, []).append(mid)
        return wanted

    def _set_items(self, items: pd.DataFrame) -> None:
        self._zoo_index = items["zoo_index"].to_numpy(np.int64)
        self._member_id = items["member_id"].to_numpy(np.int64)
        self._epoch = items["epoch"].to_numpy(np.int64)
        self._activation = items["activation"].to_numpy(str) if "activation" in items else None
        targets: dict[str, np.ndarray] = {}
        for col in METRIC_TARGETS:
            targets[col] = items[col].to_numpy(np.float32)
        targets["generalization_gap"] = (items["train_acc"] - items["test_acc"]).to_numpy(
            np.float32
        )
        targets["loss_gap"] = (items["test_loss"] - items["train_loss"]).to_numpy(np.float32)
        targets["epoch"] = items["epoch"].to_numpy(np.float32)
        for name in MEMBER_TARGETS.values():
            targets[name] = items[name].to_numpy(np.float32)
        for col, names in self.categories.items():
            codes = pd.Categorical(items[col], categories=names).codes
            targets[col] = codes.astype(np.int64)
        self._targets = targets

    @property
    def target_names(self) -> list[str]:
        """Float targets, then categorical ones (long codes; names in :attr:`categories`)."""
        return list(self._targets)

    @property
    def items(self) -> pd.DataFrame:
        """One row per item: zoo_index, member_id, epoch and every target (codes as codes)."""
        df = pd.DataFrame(
            {"zoo_index": self._zoo_index, "member_id": self._member_id, "epoch": self._epoch}
        )
        for name, values in self._targets.items():
            if name != "epoch":
                df[name] = values
        return df

    def member_keys(self) -> list[tuple[int, int]]:
        """The distinct ``(zoo_index, member_id)`` of the items, sorted."""
        keys = np.unique(np.stack([self._zoo_index, self._member_id], axis=1), axis=0)
        return [(int(z), int(m)) for z, m in keys]

    def select_members(self, members: Iterable[MemberKey], **overrides: Any) -> WeightDataset:
        """A dataset of the items of ``members`` only (same zoos, codes and options).

        ``overrides`` replace attributes: ``augment``, ``views``, ``normalizer``, ``seed``.
        """
        allowed = {"augment", "views", "normalizer", "seed"}
        if bad := set(overrides) - allowed:
            raise TypeError(f"select_members: cannot override {sorted(bad)}")
        wanted = self._member_filter(members) or {}
        keep = np.zeros(len(self), dtype=bool)
        for zi, ids in wanted.items():
            keep |= (self._zoo_index == zi) & np.isin(self._member_id, ids)
        out = copy.copy(self)
        out._zoo_index = self._zoo_index[keep]
        out._member_id = self._member_id[keep]
        out._epoch = self._epoch[keep]
        out._activation = None if self._activation is None else self._activation[keep]
        out._targets = {k: v[keep] for k, v in self._targets.items()}
        if self._cache is not None:
            rows = torch.from_numpy(np.flatnonzero(keep))
            out._cache = {k: v[rows] for k, v in self._cache.items()}
        for k, v in overrides.items():
            setattr(out, k, _resolve_callable(v, k) if k == "augment" else v)
        if out.views < 1 or (out.views > 1 and out.augment is None):
            raise ConfigError(f"views={out.views}: need views >= 1, and an augment for views > 1")
        return out

    # ---- specs and sizes
    @property
    def n_params(self) -> int:
        return self.spec.n_params()

    @property
    def n_tokens(self) -> int:
        return self.layout.n_tokens

    @property
    def token_dim(self) -> int:
        return self.layout.token_dim

    def _spec_for(self, activation: str | None) -> MLPSpec:
        if activation is None or activation == self.spec.activation:
            return self.spec
        return MLPSpec(self.spec.widths, activation, self.spec.bias)

    def member_spec(self, index: int) -> MLPSpec:
        """The spec of item ``index``, with its member's activation."""
        act = None if self._activation is None else str(self._activation[index])
        return self._spec_for(act)

    def verify_files(self) -> None:
        """Check the sha256 of every shard this dataset reads (zoos opened with ``verify``).

        A zoo checks each file the first time a process reads it. Loader workers start from
        the main process's state at every epoch, so without this they would each hash the
        same shards again and again; :func:`make_loader` calls it before starting workers.
        """
        for zi, zoo in enumerate(self.zoos):
            if not zoo.verify:
                continue
            here = self._zoo_index == zi
            members, epochs = self._member_id[here], self._epoch[here]
            shards = zoo.members["shard"].to_numpy()[members]
            _, first = np.unique(shards, return_index=True)
            for j in first:  # one tiny read per shard: one member at one of its epochs
                zoo.weights(int(epochs[j]), [int(members[j])])

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations (the train sampler calls it at each epoch)."""
        self.aug_epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._epoch)

    def __repr__(self) -> str:
        return (
            f"WeightDataset({len(self)} checkpoints of {len(self.member_keys())} members from "
            f"{len(self.zoos)} zoo(s), {self.representation}, widths={list(self.spec.widths)})"
        )

    # ---- reading
    def _indices(self, indices: Iterable[int] | Tensor | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} items")
        return idx % n if n else idx

    def _read_order(self, idx: np.ndarray) -> np.ndarray:
        return np.lexsort((self._member_id[idx], self._epoch[idx], self._zoo_index[idx]))

    def _read(self, idx: np.ndarray) -> Params:
        """Stacked parameters of items ``idx``, transformed; one zoo read per (zoo, epoch)."""
        out = {n: torch.empty((len(idx), *s)) for n, s in self._shapes.items()}
        groups = np.stack([self._zoo_index[idx], self._epoch[idx]], axis=1)
        keys, group_of = np.unique(groups, axis=0, return_inverse=True)
        group_of = group_of.reshape(-1)
        for g, (zi, epoch) in enumerate(keys):
            pos = np.flatnonzero(group_of == g)
            ids, inverse = np.unique(self._member_id[idx[pos]], return_inverse=True)
            zoo = self.zoos[int(zi)]
            w = zoo.weights(int(epoch), ids)  # {name: (len(ids), ...)} from the mmapped shards
            w = {n: w[n] for n in self._shapes}
            if self.transform is not None:
                w = self._transform_group(w, zoo, ids)
            rows, inverse = torch.from_numpy(pos), torch.from_numpy(inverse.reshape(-1))
            for n in self._shapes:
                out[n][rows] = w[n][inverse]
        return out

    def _transform_group(self, w: Params, zoo: Zoo, ids: np.ndarray) -> Params:
        if "activation" not in zoo.members:
            return self._checked(self.transform(w, self.spec), w)
        acts = zoo.members["activation"].to_numpy(str)[ids]
        kinds = np.unique(acts)
        if len(kinds) == 1:
            return self._checked(self.transform(w, self._spec_for(str(kinds[0]))), w)
        out = {n: v.clone() for n, v in w.items()}
        for act in kinds:
            sel = torch.from_numpy(acts == act)
            res = self._checked(
                self.transform({n: v[sel] for n, v in w.items()}, self._spec_for(str(act))),
                {n: v[sel] for n, v in w.items()},
            )
            for n in out:
                out[n][sel] = res[n]
        return out

    @staticmethod
    def _checked(result: Any, like: Mapping[str, Tensor]) -> Params:
        if isinstance(result, tuple):  # (params, extra), as symmetry.canonicalize returns
            result = result[0]
        for n, v in like.items():
            if n not in result or result[n].shape != v.shape:
                got = None if n not in result else tuple(result[n].shape)
                raise ValueError(
                    f"transform/augment returned {n}: {got}, expected {tuple(v.shape)}"
                )
        return {n: result[n].to(torch.float32) for n in like}

    def params(self, indices: Iterable[int]) -> Params:
        """Stacked parameters ``{name: (B, ...)}`` of items, after ``transform`` only."""
        idx = self._indices(indices)
        if self._cache is not None:
            rows = torch.from_numpy(idx)
            return {n: v[rows] for n, v in self._cache.items()}
        return self._read(idx)

    def _augmented(self, params: Params, idx: np.ndarray) -> Params:
        """``views`` augmented copies of each item: ``{name: (B, V, ...)}``."""
        b, v = len(idx), self.views
        out = {n: torch.empty((b, v, *s)) for n, s in self._shapes.items()}
        for row, i in enumerate(idx):
            gen = torch.Generator().manual_seed(
                _seed_from(
                    self.seed,
                    self.aug_epoch,
                    self._zoo_index[i],
                    self._member_id[i],
                    self._epoch[i],
                )
            )
            stack = {n: p[row].expand(v, *p.shape[1:]).clone() for n, p in params.items()}
            res = self._checked(self.augment(stack, self.member_spec(int(i)), gen), stack)
            for n in out:
                out[n][row] = res[n]
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch (already collated: pass it through with :func:`collate_batch`)."""
        idx = self._indices(indices)
        b = len(idx)
        params = self.params(idx)
        if self.augment is not None:
            params = self._augmented(params, idx)  # (B, V, ...)
            if self.views == 1:
                params = {n: p[:, 0] for n, p in params.items()}
        if self.normalizer is not None:
            params = self.normalizer.normalize_params(params)
        batch: dict[str, Any] = {}
        if self.representation == "flat":
            batch["weights"] = flatten_params(params, self.spec)
        else:
            batch["tokens"] = params_to_tokens(params, self.spec)
            t, d = self.layout.n_tokens, self.layout.token_dim
            batch["layer_id"] = self.layout.layer_id.expand(b, t)
            batch["position_id"] = self.layout.position_id.expand(b, t)
            batch["mask"] = self.layout.mask.expand(b, t, d)
        batch["targets"] = {k: torch.from_numpy(v[idx]) for k, v in self._targets.items()}
        batch["member_id"] = torch.from_numpy(self._member_id[idx])
        batch["epoch"] = torch.from_numpy(self._epoch[idx])
        batch["zoo_index"] = torch.from_numpy(self._zoo_index[idx])
        batch["index"] = torch.from_numpy(idx)
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.__getitems__([int(index)])
        return {
            k: ({t: x[0] for t, x in v.items()} if isinstance(v, dict) else v[0])
            for k, v in batch.items()
        }


def collate_batch(batch: Any) -> Any:
    """``collate_fn`` for a :class:`WeightDataset`: its ``__getitems__`` returns a whole batch.

    torch's map-style fetcher calls ``dataset.__getitems__(indices)`` when the dataset has
    it and hands the result to ``collate_fn``; default collation would try to stack it again.
    A list of single items (e.g. from a ``Subset`` without ``__getitems__``) is collated as usual.
    """
    if isinstance(batch, Mapping):
        return batch
    return default_collate(batch)


# --------------------------------------------------------------------------- splits
def split_members(
    source: WeightDataset | Zoo | pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> list[list[MemberKey]]:
    """Split members (never single checkpoints) into ``len(fractions)`` disjoint groups.

    ``source`` is a dataset (its members after filtering; returns ``(zoo_index, member_id)``
    pairs), a zoo or a members table (a ``member_id`` column, returns ids; with a
    ``zoo_index`` column, pairs). The members, sorted, are shuffled by ``seed`` and cut by
    ``fractions`` (largest remainders; every positive fraction gets a member if there are
    enough). Deterministic: the same members and seed give the same split.
    """
    f = np.asarray(list(fractions), dtype=float)
    if f.ndim != 1 or len(f) == 0 or (f < 0).any() or not math.isclose(f.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(f"fractions: {list(fractions)} must be >= 0 and sum to 1")
    if isinstance(source, WeightDataset):
        keys: list[MemberKey] = list(source.member_keys())
    else:
        table = source.members if isinstance(source, Zoo) else source
        if "zoo_index" in table:
            pairs = table[["zoo_index", "member_id"]].drop_duplicates().to_numpy(np.int64)
            keys = sorted((int(z), int(m)) for z, m in pairs)
        else:
            keys = sorted(int(m) for m in table["member_id"].unique())
    n = len(keys)
    raw = f * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    if n >= (f > 0).sum():
        for k in np.flatnonzero((f > 0) & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [sorted(keys[i] for i in perm[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- loading
class EpochShuffleSampler(Sampler[int]):
    """A seeded shuffle that changes with :meth:`set_epoch` (Lightning calls it each epoch).

    ``set_epoch`` is forwarded to the dataset so that augmentations change too. Workers get
    the dataset when an epoch's iterator starts, so keep ``persistent_workers=False``.
    """

    def __init__(self, dataset: WeightDataset, seed: int = 0, shuffle: bool = True):
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        gen = torch.Generator().manual_seed(_seed_from(self.seed, self.epoch))
        return iter(torch.randperm(n, generator=gen).tolist())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)


def make_loader(
    dataset: WeightDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that fetches whole batches through ``__getitems__``."""
    if num_workers > 0:
        dataset.verify_files()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset, seed, shuffle),
        collate_fn=collate_batch,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


@dataclass
class _Splits:
    train: WeightDataset
    val: WeightDataset
    test: WeightDataset
    members: dict[str, list[MemberKey]] = field(default_factory=dict)


class WeightDataModule(pl.LightningDataModule):
    """Zoos -> train / val / test loaders, split by member, normalized with train statistics.

    All arguments are plain values; ``transform`` and ``augment`` may be callables or import
    paths (``"weightspace.symmetry.canonicalize"``), stored in the hyperparameters by name.
    ``augment`` / ``views`` apply to every split (val and test views are fixed: their
    augmentation epoch stays 0); :meth:`dataset` builds other variants, e.g. without
    augmentation for evaluation.
    """

    def __init__(
        self,
        zoo_paths: str | Path | Sequence[str | Path],
        representation: Representation = "flat",
        epochs: Sequence[int] | str | None = None,
        exclude_diverged: bool = True,
        test_acc_range: Sequence[float | None] | None = None,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        normalize: bool = True,
        transform: Transform | str | None = None,
        augment: Augment | str | None = None,
        views: int = 1,
        cache: bool = False,
        verify: bool = True,
    ):
        super().__init__()
        paths = [zoo_paths] if isinstance(zoo_paths, str | Path) else list(zoo_paths)
        self.zoo_paths = [str(p) for p in paths]
        self.representation = representation
        self.epochs = epochs if epochs is None or isinstance(epochs, str) else list(epochs)
        self.exclude_diverged = bool(exclude_diverged)
        self.test_acc_range = None if test_acc_range is None else tuple(test_acc_range)
        self.fractions = tuple(float(f) for f in fractions)
        if len(self.fractions) != 3:
            raise ConfigError(f"fractions: need (train, val, test), got {list(self.fractions)}")
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.normalize = bool(normalize)
        self.transform = _resolve_callable(transform, "transform")
        self.augment = _resolve_callable(augment, "augment")
        self.views = int(views)
        self.cache = bool(cache)
        self.verify = bool(verify)
        self.save_hyperparameters(
            {
                "zoo_paths": self.zoo_paths,
                "representation": representation,
                "epochs": self.epochs,
                "exclude_diverged": self.exclude_diverged,
                "test_acc_range": None if test_acc_range is None else list(self.test_acc_range),
                "fractions": list(self.fractions),
                "seed": self.seed,
                "batch_size": self.batch_size,
                "num_workers": self.num_workers,
                "normalize": self.normalize,
                "transform": _callable_name(transform),
                "augment": _callable_name(augment),
                "views": self.views,
                "cache": self.cache,
                "verify": self.verify,
            }
        )
        self.normalizer: LayerNormalizer | None = None
        self._splits: _Splits | None = None
        self._full: WeightDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        zoos = [Zoo.open(p, verify=self.verify) for p in self.zoo_paths]
        full = WeightDataset(
            zoos,
            self.representation,
            epochs=self.epochs,
            exclude_diverged=self.exclude_diverged,
            test_acc_range=self.test_acc_range,
            transform=self.transform,
            augment=self.augment,
            views=self.views,
            seed=self.seed,
            cache=self.cache,
        )
        train_m, val_m, test_m = split_members(full, self.fractions, self.seed)
        train = full.select_members(train_m)
        if self.normalize and self.normalizer is None:
            self.normalizer = LayerNormalizer.fit(train)
        self._full = full
        self._splits = _Splits(
            train=full.select_members(train_m, normalizer=self.normalizer),
            val=full.select_members(val_m, normalizer=self.normalizer),
            test=full.select_members(test_m, normalizer=self.normalizer),
            members={"train": train_m, "val": val_m, "test": test_m},
        )

    def _need(self) -> _Splits:
        if self._splits is None:
            raise RuntimeError("WeightDataModule: call setup() first")
        return self._splits

    # ---- what models need to know
    @property
    def full_dataset(self) -> WeightDataset:
        self._need()
        assert self._full is not None
        return self._full

    @property
    def spec(self) -> MLPSpec:
        return self.full_dataset.spec

    @property
    def n_params(self) -> int:
        return self.full_dataset.n_params

    @property
    def n_tokens(self) -> int:
        return self.full_dataset.n_tokens

    @property
    def token_dim(self) -> int:
        return self.full_dataset.token_dim

    @property
    def target_names(self) -> list[str]:
        return self.full_dataset.target_names

    @property
    def categories(self) -> dict[str, list[str]]:
        return self.full_dataset.categories

    @property
    def splits(self) -> dict[str, list[MemberKey]]:
        """The members of each split: ``{"train": [(zoo_index, member_id), ...], ...}``."""
        return self._need().members

    def dataset(self, split: str, **overrides: Any) -> WeightDataset:
        """The dataset of ``split`` ("train", "val", "test"), optionally with other options
        (``augment=None, views=1`` for evaluation); always with the fitted normalizer."""
        splits = self._need()
        if split not in splits.members:
            raise ValueError(f"split: '{split}' (choose train, val or test)")
        if not overrides:
            return getattr(splits, split)
        overrides.setdefault("normalizer", self.normalizer)
        return self.full_dataset.select_members(splits.members[split], **overrides)

    # ---- loaders
    def train_dataloader(self) -> DataLoader:
        return make_loader(self._need().train, self.batch_size, True, self.seed, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self._need().val, self.batch_size, False, self.seed, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self._need().test, self.batch_size, False, self.seed, self.num_workers)

    # ---- checkpoints: the normalizer travels with the model
    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": None if self.normalizer is None else self.normalizer.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        d = state_dict.get("normalizer")
        self.normalizer = None if d is None else LayerNormalizer.from_dict(d)
        if self._splits is not None:
            for name in ("train", "val", "test"):
                getattr(self._splits, name).normalizer = self.normalizer
