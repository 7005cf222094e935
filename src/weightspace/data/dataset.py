"""Zoos as batches: the weight dataset (items, filters, targets, representations) and its collate.

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
stacked parameters) -> ``augment`` (random views) -> normalize (:mod:`.normalizer`) -> flatten or
tokenize. Splits, the sampler and the DataModule are in :mod:`.datamodule`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from weightspace.data.callables import callable_name as callable_name
from weightspace.data.callables import resolve_callable as resolve_callable
from weightspace.data.normalizer import LayerNormalizer
from weightspace.errors import ConfigError
from weightspace.nets.layout import flatten_params, params_to_tokens, token_layout
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.store import Zoo

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
CATEGORICAL_TARGETS = ("init", "bias_init", "optimizer", "activation", "data_order", "signal_class")
# Metric targets only zoos of some tasks have (INR zoos: the fit's PSNR), kept where present.
OPTIONAL_METRIC_TARGETS = ("psnr",)


# --------------------------------------------------------------------------- the dataset
def _open(zoos: Zoo | str | Path | Sequence[Zoo | str | Path]) -> list[Zoo]:
    items = [zoos] if isinstance(zoos, Zoo | str | Path) else list(zoos)
    if not items:
        raise ConfigError("dataset: no zoo given")
    return [z if isinstance(z, Zoo) else Zoo.open(z) for z in items]


def seed_from(*words: int) -> int:
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
        self.transform = resolve_callable(transform, "transform")
        self.augment = resolve_callable(augment, "augment")
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

    @property
    def _optional_metrics(self) -> tuple[str, ...]:
        return tuple(c for c in OPTIONAL_METRIC_TARGETS if any(c in z.metrics for z in self.zoos))

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
            for col in METRIC_TARGETS + self._optional_metrics:
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
        for col in METRIC_TARGETS + self._optional_metrics:
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

    def member_index(self) -> np.ndarray:
        """Each item's member as a number ``0..members-1`` (the order of :meth:`member_keys`)."""
        keys = np.stack([self._zoo_index, self._member_id], axis=1)
        return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)

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
            setattr(out, k, resolve_callable(v, k) if k == "augment" else v)
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
                seed_from(
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
