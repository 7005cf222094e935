"""The weight dataset: items, filters, representations, splits, normalization, loaders."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import yaml
from conftest import compose_cfg
from helpers import quiet_trainer

from weightspace.data.datamodule import (
    EpochShuffleSampler,
    WeightDataModule,
    make_loader,
    split_members,
)
from weightspace.data.dataset import WeightDataset, collate_batch
from weightspace.data.normalizer import LayerNormalizer
from weightspace.errors import ConfigError
from weightspace.nets.forward import forward
from weightspace.nets.layout import (
    flatten_params,
    params_to_tokens,
    token_layout,
    tokens_to_params,
    unflatten_params,
)
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.generate import generate
from weightspace.zoo.store import Zoo

# The API zoo (conftest): 12 members of [64, 16, 10] in shards of 5, 5, 2; epochs 0, 1, 3.
N, EPOCHS, D = 12, [0, 1, 3], 64 * 16 + 16 + 16 * 10 + 10


@pytest.fixture(scope="module")
def zoo(api_zoo_path):
    return Zoo.open(api_zoo_path)


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    """8 members: relu / tanh, lr 0.05 / 1000 (two relu members diverge), kaiming / constant."""
    root = tmp_path_factory.mktemp("mixed_zoo")
    cfg = compose_cfg(
        root,
        "zoo.size=8",
        "zoo.seed=1",
        "zoo.hparams.activation=[relu,tanh]",
        "zoo.hparams.lr=[0.05,1000.0]",
        "zoo.hparams.init=[kaiming,constant]",
        "zoo.checkpoints=[0,1]",
        "zoo.hparams.epochs=2",
    )
    return Zoo.open(generate(cfg).path)


# --------------------------------------------------------------------------- test transforms
# Module-level (picklable, for DataLoader workers). All exactly preserve the function of a
# one-hidden-layer MLP: hidden units are permuted together with their incoming weights,
# biases and outgoing weights.
def _permute_hidden(params, perm):
    """perm: (M, hidden) one permutation per member."""
    rows = perm.unsqueeze(-1)
    w0 = params["layers.0.weight"].gather(1, rows.expand_as(params["layers.0.weight"]))
    b0 = params["layers.0.bias"].gather(1, perm)
    w1 = params["layers.1.weight"]
    w1 = w1.gather(2, perm.unsqueeze(1).expand_as(w1))
    return {**params, "layers.0.weight": w0, "layers.0.bias": b0, "layers.1.weight": w1}


def sort_hidden(params, spec):
    """A canonicalization: hidden units sorted by their bias, then incoming weight sum."""
    by_sum = params["layers.0.weight"].sum(-1).argsort(dim=1)
    bias = params["layers.0.bias"].gather(1, by_sum)
    return _permute_hidden(params, by_sum.gather(1, bias.argsort(dim=1, stable=True)))


def random_permutation(params, spec, gen):
    """An augmentation: an independent random hidden permutation per member."""
    m, h = params["layers.0.bias"].shape
    perm = torch.stack([torch.randperm(h, generator=gen) for _ in range(m)])
    return _permute_hidden(params, perm)


class Recorder:
    """A transform that records the group sizes and specs it sees, and changes nothing."""

    def __init__(self):
        self.calls = []

    def __call__(self, params, spec):
        self.calls.append((next(iter(params.values())).shape[0], spec.activation))
        return params


def state_vector(zoo, member, epoch):
    sd = zoo.module(member, epoch).state_dict()
    return torch.cat([v.reshape(-1) for v in sd.values()])


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_batches_equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype, k
            assert torch.equal(a[k], b[k]), k


def probe_outputs(params, spec):
    x = torch.randn(32, spec.widths[0], generator=torch.Generator().manual_seed(0))
    return forward(params, x, spec)


# --------------------------------------------------------------------------- items
def test_flat_item_is_the_members_state_dict_and_its_metrics(zoo):
    ds = WeightDataset(zoo)
    assert len(ds) == N * len(EPOCHS) and ds.n_params == D == zoo.spec.n_params()
    metrics = zoo.metrics.set_index(["member_id", "epoch"])
    for i in [0, 4, 17, len(ds) - 1]:
        item = ds[i]
        m, e = int(item["member_id"]), int(item["epoch"])
        assert item["weights"].shape == (D,) and item["weights"].dtype == torch.float32
        assert torch.equal(item["weights"], state_vector(zoo, m, e))
        row = metrics.loc[(m, e)]
        t = item["targets"]
        for name in ("test_acc", "test_loss", "train_acc", "train_loss"):
            assert t[name].item() == pytest.approx(row[name], rel=1e-6)
        gap = t["generalization_gap"].item()
        assert gap == pytest.approx(row["train_acc"] - row["test_acc"], rel=1e-5)
        assert t["epoch"].item() == e and t["lr"].item() == pytest.approx(zoo.members.lr[m])
        assert ds.categories["optimizer"][t["optimizer"]] == zoo.members.optimizer[m]
        assert t["activation"].dtype == torch.long and item["zoo_index"] == 0
    # Items are every (member, epoch), sorted.
    items = ds.items
    assert list(zip(items.member_id, items.epoch)) == [(m, e) for m in range(N) for e in EPOCHS]


def test_tokens_hold_each_neurons_incoming_weights_and_bias(zoo):
    ds = WeightDataset(zoo, "tokens")
    assert (ds.n_tokens, ds.token_dim) == (16 + 10, 64 + 1)
    item = ds[5]
    tok, mask = item["tokens"], item["mask"]
    w = zoo.weights(int(item["epoch"]), [int(item["member_id"])])
    assert tok.shape == mask.shape == (26, 65)
    assert item["layer_id"].tolist() == [0] * 16 + [1] * 10
    assert item["position_id"].tolist() == list(range(16)) + list(range(10))
    assert torch.equal(tok[3, :64], w["layers.0.weight"][0, 3])
    assert tok[3, 64] == w["layers.0.bias"][0, 3]
    assert torch.equal(tok[16 + 2, :16], w["layers.1.weight"][0, 2])
    assert tok[16 + 2, -1] == w["layers.1.bias"][0, 2]
    assert (tok[~mask] == 0).all() and mask[16:, :16].all() and not mask[16:, 16:64].any()
    assert mask.sum() == D
    back = tokens_to_params(tok, ds.spec)
    for name, v in w.items():
        assert torch.equal(back[name], v[0]), name


@pytest.mark.parametrize("bias", [True, False])
def test_token_and_flat_layouts_round_trip_with_leading_dims(bias):
    spec = MLPSpec((5, 7, 3, 2), bias=bias)
    g = torch.Generator().manual_seed(0)
    params = {n: torch.randn(4, 2, *s, generator=g) for n, s in spec.param_shapes().items()}
    tokens = params_to_tokens(params, spec)
    layout = token_layout(spec)
    assert tokens.shape == (4, 2, 7 + 3 + 2, 7 + int(bias)) == (4, 2, *layout.mask.shape)
    assert (tokens[..., ~layout.mask] == 0).all()
    flat = flatten_params(params, spec)
    assert flat.shape == (4, 2, spec.n_params())
    for back in (tokens_to_params(tokens, spec), unflatten_params(flat, spec)):
        assert back.keys() == params.keys()
        for n in params:
            assert torch.equal(back[n], params[n]), n
    with pytest.raises(ValueError, match="tokens of shape"):
        tokens_to_params(tokens[..., :-1], spec)


@pytest.mark.parametrize("representation", ["flat", "tokens"])
def test_getitems_equals_stacked_getitem(zoo, representation):
    ds = WeightDataset(zoo, representation, augment=random_permutation, views=2, seed=3)
    ds.normalizer = LayerNormalizer.fit(ds)
    # Unsorted, duplicated, several shards and epochs, a negative index.
    indices = [20, 3, 3, 35, 0, 14, -1]
    batch = ds.__getitems__(indices)
    items = [ds[i] for i in indices]
    stacked = {
        k: (
            {t: torch.stack([it[k][t] for it in items]) for t in items[0][k]}
            if isinstance(items[0][k], dict)
            else torch.stack([it[k] for it in items])
        )
        for k in items[0]
    }
    assert_batches_equal(batch, stacked)
    key = "weights" if representation == "flat" else "tokens"
    assert batch[key].shape[:2] == (7, 2)  # (B, views, ...)
    assert batch["index"].tolist() == [20, 3, 3, 35, 0, 14, len(ds) - 1]


def test_batches_read_lazily_one_zoo_read_per_zoo_and_epoch(zoo, monkeypatch):
    calls = []
    original = Zoo.weights

    def recording(self, epoch, members=None, trainable=False):
        calls.append((epoch, None if members is None else sorted(int(m) for m in members)))
        return original(self, epoch, members, trainable)

    monkeypatch.setattr(Zoo, "weights", recording)
    ds = WeightDataset(zoo, transform=Recorder())
    assert calls == []  # nothing read up front
    pick = [0, 7, 9, 21, 22, 34, 9]  # several shards and epochs, a repeat
    items = ds.items.iloc[pick]
    expected = {int(e): sorted(set(g.member_id)) for e, g in items.groupby("epoch")}
    batch = ds.__getitems__(pick)
    # One read per epoch, of exactly the batch's members; one transform call per read.
    assert sorted(calls) == sorted(expected.items())
    assert sorted(n for n, _ in ds.transform.calls) == sorted(len(m) for m in expected.values())
    calls.clear()
    cached = WeightDataset(zoo, cache=True)
    assert sorted(e for e, _ in calls) == EPOCHS  # one read per epoch, at construction
    calls.clear()
    cached_batch = cached.__getitems__(pick)
    assert calls == []
    assert_batches_equal(cached_batch, batch)


# --------------------------------------------------------------------------- filters
def test_filters_select_checkpoints(zoo, mixed_zoo):
    assert set(WeightDataset(zoo, epochs=[1]).items.epoch) == {1}
    assert len(WeightDataset(zoo, epochs=[0, 3])) == 2 * N
    last = WeightDataset(zoo, epochs="last").items
    assert len(last) == N and set(last.epoch) == {3}
    ds = WeightDataset(zoo, test_acc_range=(0.5, None))
    acc = zoo.metrics.test_acc
    assert len(ds) == (acc >= 0.5).sum() and (ds.items.test_acc >= 0.5).all()
    ds = WeightDataset(zoo, test_acc_range=(None, 0.2), epochs=[0, 1])
    assert (ds.items.test_acc <= 0.2).all() and set(ds.items.epoch) == {0}
    ds = WeightDataset(zoo, members=[4, 1])
    assert sorted(set(ds.items.member_id)) == [1, 4] and len(ds) == 2 * len(EPOCHS)

    diverged = set(np.flatnonzero(mixed_zoo.members.diverged))
    assert diverged  # lr=1000 with relu diverges
    kept = set(WeightDataset(mixed_zoo).items.member_id)
    assert kept == set(range(len(mixed_zoo))) - diverged
    everything = WeightDataset(mixed_zoo, exclude_diverged=False)
    assert set(everything.items.member_id) == set(range(len(mixed_zoo)))
    assert everything.items.loc[everything.items.member_id.isin(diverged), "diverged"].all()

    with pytest.raises(ConfigError, match=r"epochs: \[7\] not in any zoo"):
        WeightDataset(zoo, epochs=[7])
    with pytest.raises(ConfigError, match="no checkpoint matches"):
        WeightDataset(zoo, test_acc_range=(2.0, None))
    with pytest.raises(ConfigError, match="no member 99"):
        WeightDataset(zoo, members=[99])
    with pytest.raises(ConfigError, match="pairs"):
        WeightDataset([zoo, mixed_zoo], members=[1])


# --------------------------------------------------------------------------- splits
def test_split_by_member_is_disjoint_complete_and_deterministic(zoo, mixed_zoo):
    ds = WeightDataset([zoo, mixed_zoo])
    splits = split_members(ds, (0.7, 0.15, 0.15), seed=0)
    keys = [set(s) for s in splits]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set.union(*keys) == set(ds.member_keys())
    assert [len(s) for s in splits] == [12, 3, 3]  # 18 members: 12.6, 2.7, 2.7
    assert split_members(ds, (0.7, 0.15, 0.15), seed=0) == splits
    assert split_members(ds, (0.7, 0.15, 0.15), seed=1) != splits
    # Every checkpoint lands in the split of its member.
    parts = [ds.select_members(s) for s in splits]
    assert sum(len(p) for p in parts) == len(ds)
    seen = set()
    for part, members in zip(parts, keys):
        pairs = set(zip(part.items.zoo_index, part.items.member_id))
        assert pairs == members
        seen |= set(zip(part.items.zoo_index, part.items.member_id, part.items.epoch))
    assert seen == set(zip(ds.items.zoo_index, ds.items.member_id, ds.items.epoch))
    # A members table gives member ids; tiny populations still fill every split.
    ids = split_members(zoo.members, (0.5, 0.25, 0.25), seed=0)
    assert sorted(sum(ids, [])) == list(range(N)) and [len(s) for s in ids] == [6, 3, 3]
    assert split_members(zoo, (0.5, 0.25, 0.25), seed=0) == ids
    assert [len(s) for s in split_members(zoo.members.head(3), (0.9, 0.05, 0.05))] == [1, 1, 1]
    with pytest.raises(ConfigError, match="sum to 1"):
        split_members(zoo, (0.5, 0.2))


# --------------------------------------------------------------------------- normalization
def test_normalizer_statistics_come_from_the_given_items(zoo):
    ds = WeightDataset(zoo)
    train, _, _ = split_members(ds, seed=0)
    train_ds = ds.select_members(train)
    norm = LayerNormalizer.fit(train_ds, chunk_size=5)  # several chunks, mixed epochs
    ids = [m for _, m in train]
    per_epoch = [zoo.weights(e, ids) for e in EPOCHS]
    assert norm.count == len(train_ds) == len(ids) * len(EPOCHS)
    for n in per_epoch[0]:
        v = torch.cat([w[n] for w in per_epoch]).double()
        assert norm.mean[n] == pytest.approx(v.mean().item(), rel=1e-9, abs=1e-12)
        assert norm.std[n] == pytest.approx(v.std(unbiased=False).item(), rel=1e-9)
    in_train = np.flatnonzero(ds.items.member_id.isin(ids))
    assert LayerNormalizer.fit(ds, indices=in_train, chunk_size=5) == norm
    # Normalized training weights: mean 0, std 1 per tensor.
    normed = norm.normalize(train_ds.params(range(len(train_ds))))
    for v in normed.values():
        assert abs(v.mean().item()) < 1e-4 and v.std(unbiased=False).item() == pytest.approx(
            1, 1e-4
        )


def test_normalize_inverts_on_params_flat_and_tokens(zoo):
    ds = WeightDataset(zoo, "tokens")
    norm = LayerNormalizer.fit(ds)
    params = ds.params([1, 2, 30])
    back = norm.denormalize(norm.normalize(params))
    for n in params:
        torch.testing.assert_close(back[n], params[n])
    flat = flatten_params(params, ds.spec)
    normed_flat = norm.normalize(flat)
    torch.testing.assert_close(normed_flat, flatten_params(norm.normalize(params), ds.spec))
    torch.testing.assert_close(norm.denormalize(normed_flat), flat)
    tokens = params_to_tokens(params, ds.spec)
    normed_tok = norm.normalize(tokens)
    torch.testing.assert_close(normed_tok, params_to_tokens(norm.normalize(params), ds.spec))
    assert (normed_tok[:, ~ds.layout.mask] == 0).all()  # padding stays zero
    torch.testing.assert_close(norm.denormalize(normed_tok), tokens)
    # The dataset applies it, to tokens as to flat vectors.
    ds.normalizer = norm
    torch.testing.assert_close(ds.__getitems__([1, 2, 30])["tokens"], normed_tok)
    # Plain-value serialization (JSON), as checkpoints need.
    again = LayerNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    torch.testing.assert_close(again.normalize(tokens), normed_tok)
    with pytest.raises(ValueError, match="neither flat"):
        norm.normalize(torch.zeros(3, 7))


def test_datamodule_normalizer_ignores_val_and_test_members(api_zoo_path, monkeypatch):
    dm = WeightDataModule(api_zoo_path, batch_size=4)
    dm.setup()
    held_out = {m for _, m in dm.splits["val"] + dm.splits["test"]}
    val_before = next(iter(dm.val_dataloader()))["weights"]

    original = Zoo.weights

    def corrupt_held_out(self, epoch, members=None, trainable=False):
        w = original(self, epoch, members, trainable)
        bad = torch.tensor([int(m) in held_out for m in members])
        return {
            n: torch.where(bad.view(-1, *[1] * (v.dim() - 1)), v * 100 + 7, v) for n, v in w.items()
        }

    monkeypatch.setattr(Zoo, "weights", corrupt_held_out)
    dm2 = WeightDataModule(api_zoo_path, batch_size=4)
    dm2.setup()
    assert dm2.splits == dm.splits
    assert dm2.normalizer == dm.normalizer
    val_after = next(iter(dm2.val_dataloader()))["weights"]
    assert not torch.allclose(val_after, val_before)  # the corruption did reach val


# --------------------------------------------------------------------------- hooks
def test_transform_is_applied_per_group_with_the_members_activation(mixed_zoo):
    rec = Recorder()
    ds = WeightDataset(mixed_zoo, exclude_diverged=False, transform=rec)
    acts = mixed_zoo.members.activation
    ds.__getitems__(list(range(len(ds))))
    # One call per (epoch, activation), each with that activation's spec.
    expected = sorted((int((acts == a).sum()), a) for a in acts.unique() for _ in mixed_zoo.epochs)
    assert sorted(rec.calls) == expected
    assert [ds.member_spec(i).activation for i in range(len(ds))] == list(acts[ds.items.member_id])


def test_canonicalizing_transform_changes_weights_not_functions(zoo):
    plain = WeightDataset(zoo)
    canon = WeightDataset(zoo, transform=sort_hidden)
    idx = list(range(0, len(plain), 4))
    a, b = plain.params(idx), canon.params(idx)
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])
    assert (b["layers.0.bias"].diff(dim=1) >= 0).all()
    torch.testing.assert_close(probe_outputs(a, plain.spec), probe_outputs(b, canon.spec))
    # A transform may return (params, extra), as symmetry.canonicalize does.
    as_tuple = WeightDataset(zoo, transform=lambda p, spec: (sort_hidden(p, spec), "perms"))
    assert_batches_equal(as_tuple.__getitems__(idx), canon.__getitems__(idx))
    # Cached datasets hold the transformed weights.
    cached = WeightDataset(zoo, transform=sort_hidden, cache=True)
    assert_batches_equal(cached.__getitems__(idx), canon.__getitems__(idx))


def test_augmented_views_are_reproducible_and_function_preserving(zoo):
    ds = WeightDataset(zoo, augment=random_permutation, views=2, seed=7)
    item = ds[10]
    views = unflatten_params(item["weights"], ds.spec)  # (2, ...)
    assert item["weights"].shape == (2, D)
    assert not torch.equal(item["weights"][0], item["weights"][1])
    original = {k: v.expand(2, *v.shape[1:]) for k, v in ds.params([10]).items()}
    torch.testing.assert_close(probe_outputs(views, ds.spec), probe_outputs(original, ds.spec))
    # The same item gives the same views, in any batch and in a new dataset with that seed.
    assert torch.equal(ds.__getitems__([3, 10])["weights"][1], item["weights"])
    again = WeightDataset(zoo, augment=random_permutation, views=2, seed=7)
    assert torch.equal(again[10]["weights"], item["weights"])
    other_seed = WeightDataset(zoo, augment=random_permutation, views=2, seed=8)
    assert not torch.equal(other_seed[10]["weights"], item["weights"])
    ds.set_epoch(1)  # a new epoch draws new views
    assert not torch.equal(ds[10]["weights"], item["weights"])
    single = WeightDataset(zoo, augment=random_permutation, seed=7)
    assert single[10]["weights"].shape == (D,)
    with pytest.raises(ConfigError, match="views=2"):
        WeightDataset(zoo, views=2)


# --------------------------------------------------------------------------- loading
def test_loader_with_workers_matches_single_process(zoo):
    ds = WeightDataset(zoo, "tokens", augment=random_permutation, views=2, seed=1)
    ds.normalizer = LayerNormalizer.fit(ds)
    clone = pickle.loads(pickle.dumps(ds))
    assert_batches_equal(clone.__getitems__([0, 9]), ds.__getitems__([0, 9]))
    single = list(make_loader(ds, batch_size=8, shuffle=True, seed=5, num_workers=0))
    multi = list(make_loader(ds, batch_size=8, shuffle=True, seed=5, num_workers=2))
    assert len(single) == len(multi) == 5
    for a, b in zip(single, multi):
        assert_batches_equal(a, b)
    order = torch.cat([b["index"] for b in single])
    assert sorted(order.tolist()) == list(range(len(ds))) and order.tolist() != sorted(order)


def test_files_are_verified_once_before_workers_start(api_zoo_path, monkeypatch):
    import weightspace.zoo.store as zoo_module

    ds = WeightDataset(Zoo.open(api_zoo_path, verify=True), epochs=[1])
    ds.verify_files()

    def no_more_hashing(path, chunk=1 << 22):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(zoo_module, "sha256_file", no_more_hashing)
    assert len(ds.__getitems__(list(range(len(ds))))["weights"]) == N


def test_sampler_reshuffles_each_epoch_reproducibly(zoo):
    ds = WeightDataset(zoo)
    s = EpochShuffleSampler(ds, seed=0)
    first = list(s)
    assert list(s) == first and sorted(first) == list(range(len(ds)))
    s.set_epoch(1)
    assert list(s) != first and ds.aug_epoch == 1
    assert list(EpochShuffleSampler(ds, seed=0)) == first
    assert list(EpochShuffleSampler(ds, shuffle=False)) == list(range(len(ds)))
    assert collate_batch([{"a": torch.ones(2)}] * 3)["a"].shape == (3, 2)


@pytest.mark.parametrize("representation", ["flat", "tokens"])
def test_datamodule_setup_and_one_batch_per_split(api_zoo_path, representation):
    dm = WeightDataModule(
        api_zoo_path,
        representation=representation,
        epochs=[1, 3],
        batch_size=5,
        augment=f"{__name__}.random_permutation",
        views=2,
        seed=0,
    )
    dm.setup("fit")
    assert dm.spec.widths == (64, 16, 10) and dm.n_params == D
    assert (dm.n_tokens, dm.token_dim) == (26, 65)
    assert "test_acc" in dm.target_names and dm.categories["activation"] == ["relu"]
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    key = "weights" if representation == "flat" else "tokens"
    loaders = {
        "train": dm.train_dataloader(),
        "val": dm.val_dataloader(),
        "test": dm.test_dataloader(),
    }
    for split, loader in loaders.items():
        batch = next(iter(loader))
        n_items = 2 * len(dm.splits[split])  # two epochs per member
        assert batch[key].shape[:2] == (min(5, n_items), 2)  # (B, views, ...)
        assert set(batch["epoch"].tolist()) <= {1, 3}
        assert {(0, int(m)) for m in batch["member_id"]} <= set(dm.splits[split])
        assert batch["targets"]["test_acc"].shape == (min(5, n_items),)
    # Hyperparameters are plain values (the augment stored by its import path).
    hp = yaml.safe_load(yaml.safe_dump(dict(dm.hparams)))
    assert hp["augment"] == f"{__name__}.random_permutation" and hp["epochs"] == [1, 3]
    # The normalizer travels through the datamodule's state dict.
    restored = WeightDataModule(api_zoo_path, representation=representation, epochs=[1, 3])
    restored.load_state_dict(json.loads(json.dumps(dm.state_dict())))
    assert restored.normalizer == dm.normalizer
    plain = dm.dataset("test", augment=None, views=1)
    assert plain.normalizer is dm.normalizer
    assert plain[0][key].shape == ((D,) if key == "weights" else (26, 65))


def test_datamodule_task_is_the_zoos_task(api_zoo_path, zoo):
    dm = WeightDataModule(api_zoo_path, batch_size=4)
    dm.setup("fit")
    task, own = dm.task, zoo.task()
    assert torch.equal(task.x_train, own.x_train) and torch.equal(task.y_test, own.y_test)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_datamodule_in_a_lightning_fit_draws_new_views_each_epoch(api_zoo_path, tmp_path):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append((self.current_epoch, batch["index"].clone(), batch["weights"].clone()))
            return (self.w * batch["weights"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = WeightDataModule(
        api_zoo_path, batch_size=64, augment=random_permutation, views=2, epochs=[3]
    )
    model = Probe()
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    # A callable augment is kept in the hyperparameters by its import path.
    assert dm.hparams["augment"] == f"{__name__}:random_permutation"
    assert WeightDataset(api_zoo_path, augment=dm.hparams["augment"]).augment is random_permutation
    (e0, i0, w0), (e1, i1, w1) = model.seen
    assert (e0, e1) == (0, 1) and sorted(i0.tolist()) == sorted(i1.tolist())
    assert not torch.equal(i0, i1)  # reshuffled
    w1 = w1[torch.argsort(i1)][torch.argsort(torch.argsort(i0))]  # same item order as epoch 0
    assert not torch.equal(w0, w1)  # new augmentations


# --------------------------------------------------------------------------- several zoos
def test_two_zoos_are_concatenated(zoo, mixed_zoo, tmp_path):
    ds = WeightDataset([zoo, mixed_zoo], exclude_diverged=False)
    assert len(ds) == len(WeightDataset(zoo)) + len(
        WeightDataset(mixed_zoo, exclude_diverged=False)
    )
    items = ds.items
    assert set(items.zoo_index) == {0, 1}
    assert ds.categories["activation"] == ["relu", "tanh"]
    assert ds.categories["init"] == ["constant", "kaiming"]
    i = int(np.flatnonzero((items.zoo_index == 1) & (items.member_id == 5) & (items.epoch == 2))[0])
    item = ds[i]
    assert torch.equal(item["weights"], state_vector(mixed_zoo, 5, 2))
    assert ds.categories["init"][item["targets"]["init"]] == mixed_zoo.members.init[5]
    assert ds.categories["activation"][item["targets"]["activation"]] == "tanh"
    # A batch spanning both zoos equals the items read one by one.
    pick = [0, i, len(ds) - 1, 5]
    batch = ds.__getitems__(pick)
    assert batch["zoo_index"].tolist() == [0, 1, 1, 0]
    for row, j in enumerate(pick):
        assert torch.equal(batch["weights"][row], ds[j]["weights"])
    # Epoch filters apply across zoos whose checkpoints differ ([0, 1, 3] and [0, 1, 2]).
    assert set(WeightDataset([zoo, mixed_zoo], epochs=[3]).items.zoo_index) == {0}
    # A weight-normalized zoo of the same widths joins as its effective weights.
    wn = Zoo.open(
        generate(compose_cfg(tmp_path / "wn", "zoo.size=2", "model.weight_norm=true")).path
    )
    both = WeightDataset([zoo, wn], epochs=[1])
    last = both[len(both) - 1]
    assert last["zoo_index"] == 1 and both.spec == MLPSpec((64, 16, 10))
    assert torch.equal(last["weights"], state_vector(wn, int(last["member_id"]), 1))
    narrow = Zoo.open(generate(compose_cfg(tmp_path, "zoo.size=2", "model.hidden=[8]")).path)
    with pytest.raises(ConfigError, match="same widths"):
        WeightDataset([zoo, narrow])
