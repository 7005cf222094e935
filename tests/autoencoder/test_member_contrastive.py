"""A member's checkpoints together: contrastive positives, the origin head, the grouped sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_autoencoder import ae_cfg, small_model

from weightspace.autoencoder.losses import first_checkpoint_rows, member_keys, nt_xent, sup_con
from weightspace.autoencoder.options import FeatureUse
from weightspace.autoencoder.train import build, train
from weightspace.data.datamodule import EpochShuffleSampler, WeightDataModule
from weightspace.data.dataset import WeightDataset
from weightspace.errors import ConfigError


# --------------------------------------------------------------------------- the loss
def test_sup_con_with_two_rows_per_label_is_nt_xent():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    labels = torch.arange(7).repeat(2)
    assert torch.allclose(sup_con(torch.cat([a, b]), labels, 0.3), nt_xent(a, b, 0.3), atol=1e-6)


def test_sup_con_is_lower_when_a_members_rows_agree():
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 8, generator=gen)
    labels = torch.arange(4).repeat_interleave(3)  # three rows per member
    together = centers[labels] + 0.05 * torch.randn(12, 8, generator=gen)
    apart = torch.randn(12, 8, generator=gen)
    assert sup_con(together, labels, 0.1) < 0.5 * sup_con(apart, labels, 0.1)


def test_sup_con_without_positives_is_zero_and_differentiable():
    p = torch.randn(5, 3, requires_grad=True)
    loss = sup_con(p, torch.arange(5), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and p.grad is not None and not p.grad.any()
    # rows without a positive are left out of the mean, not counted as 0
    labels = torch.tensor([0, 0, 1, 2, 3])
    both = sup_con(p.detach(), labels, 0.1)
    q = p.detach()
    pair = -torch.log_softmax(
        (torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(q, dim=-1).T)
        .div(0.1)
        .fill_diagonal_(float("-inf")),
        -1,
    )
    assert torch.allclose(both, (pair[0, 1] + pair[1, 0]) / 2, atol=1e-6)


# --------------------------------------------------------------------------- the sampler
def test_grouped_sampler_keeps_a_members_checkpoints_together(api_zoo_path):
    ds = WeightDataset(api_zoo_path)  # 12 members x 3 epochs
    s = EpochShuffleSampler(ds, seed=0, group_by_member=True)
    order = list(s)
    assert sorted(order) == list(range(len(ds))) and list(s) == order
    members = ds.member_index()[order]
    runs = members[np.r_[True, members[1:] != members[:-1]]]
    assert len(runs) == 12 == len(set(runs.tolist()))  # each member in one block
    s.set_epoch(1)
    again = list(s)
    assert sorted(again) == sorted(order)
    assert ds.member_index()[again].tolist() != members.tolist()  # members reshuffled
    plain = list(EpochShuffleSampler(ds, seed=0))
    assert ds.member_index()[plain].tolist() != members.tolist()  # the plain shuffle mixes


def test_grouped_train_batches_hold_several_checkpoints_of_each_member(api_zoo_path):
    dm = WeightDataModule(api_zoo_path, batch_size=6, seed=0, group_by_member=True)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    _, counts = np.unique(batch["member_id"].numpy(), return_counts=True)
    assert counts.sum() == 6 and counts.max() >= 2
    assert dm.hparams["group_by_member"] is True


# --------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def grouped(api_zoo_path) -> WeightDataModule:
    dm = WeightDataModule(api_zoo_path, batch_size=12, seed=0, group_by_member=True)
    dm.setup()
    return dm


def assert_term_falls(model, batch, term: str, steps: int = 40) -> None:
    """``steps`` AdamW steps on one batch lower the loss term ``term`` by 30% or more."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        terms = model.compute_losses(batch)
        terms["loss"].backward()
        opt.step()
        values.append(terms[term].item())
    assert values[-1] < 0.7 * values[0], f"{term}: {values[0]:.4f} -> {values[-1]:.4f}"


def test_member_positives_train_the_latent_to_gather_a_members_checkpoints(grouped):
    model = small_model(
        grouped, recon_weight=0.0, contrastive_weight=1.0, contrastive_positives="member"
    )
    batch = next(iter(grouped.train_dataloader()))
    assert_term_falls(model, batch, "contrastive")
    with torch.no_grad():
        p = torch.nn.functional.normalize(model.projection(model.encode(batch)), dim=-1)
    same = batch["member_id"][:, None] == batch["member_id"][None, :]
    cos = p @ p.T
    off = ~torch.eye(len(p), dtype=torch.bool)
    assert cos[same & off].mean() > cos[~same].mean() + 0.2


def test_member_positives_need_no_views_and_refuse_a_bad_value(grouped):
    batch = next(iter(grouped.train_dataloader()))
    model = small_model(grouped, contrastive_weight=0.5, contrastive_positives="member")
    assert torch.isfinite(model.compute_losses(batch)["contrastive"])
    views = small_model(grouped, contrastive_weight=0.5)  # the default asks for two views
    with pytest.raises(ConfigError, match="contrastive_positives=member"):
        views.compute_losses(batch)
    with pytest.raises(ConfigError, match=r"^contrastive_positives: 'runs'"):
        small_model(grouped, contrastive_weight=0.5, contrastive_positives="runs")


# --------------------------------------------------------------------------- the origin head
def test_first_checkpoint_rows_find_each_members_earliest_checkpoint_in_the_batch():
    keys = torch.tensor([7, 7, 3, 7, 3, 5, 9])
    epochs = torch.tensor([5, 0, 1, 20, 0, 1, 0])
    assert first_checkpoint_rows(keys, epochs).tolist() == [1, 1, 4, 1, 4, -1, 6]
    batch = {"zoo_index": torch.tensor([0, 1]), "member_id": torch.tensor([4, 4])}
    assert member_keys(batch)[0] != member_keys(batch)[1]  # one id in two zoos: two members


def test_origin_head_predicts_the_features_of_each_members_first_checkpoint(grouped):
    model = small_model(grouped, features={"weight": 0.0, "origin": 1.0})
    assert model.stats_head is None and model.origin_head is not None
    batch = next(iter(grouped.train_dataloader()))
    terms = model.compute_losses(batch)
    flat = model.flat_weights(batch)
    with torch.no_grad():
        stats = model.weight_statistics(flat)
        pred = model.origin_head(model.encode(batch))
    first = first_checkpoint_rows(member_keys(batch), batch["epoch"])
    has = first >= 0
    assert has.sum() >= 6 and (batch["epoch"][first[has]] == batch["epoch"].min()).all()
    expected = torch.nn.functional.mse_loss(pred[has], stats[first[has]])
    torch.testing.assert_close(terms["origin"], expected)
    # the trained checkpoints' own features are another target: the head is asked the start
    assert not torch.allclose(terms["origin"], torch.nn.functional.mse_loss(pred, stats))
    assert_term_falls(model, batch, "origin")


def test_origin_option_is_saved_only_when_on_and_checked():
    assert "origin" not in FeatureUse.from_dict({"weight": 1.0}).to_dict()
    use = FeatureUse.from_dict({"origin": 2.0})
    assert use.to_dict()["origin"] == 2.0 and use.used
    with pytest.raises(ConfigError, match=r"^features.origin: -1.0, must be >= 0"):
        FeatureUse.from_dict({"origin": -1})


def test_origin_head_is_refused_beside_concatenated_features(grouped):
    with pytest.raises(
        ConfigError, match=r"^features.origin: must be 0 with features.input=concat"
    ):
        small_model(grouped, features={"input": "concat", "origin": 1.0})


# --------------------------------------------------------------------------- the config
MEMBER = ["model.contrastive_weight=1.0", "model.contrastive_positives=member"]
ORIGIN = ["model.features.origin=1.0"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (MEMBER, "^model.contrastive_positives=member: .* set data.group_by_member=true"),
        ([*MEMBER, "data.group_by_member=true", "data.epochs=last"], "keeps one checkpoint"),
        ([*MEMBER, "data.group_by_member=true", "data.epochs=[3]"], "keeps one checkpoint"),
        (ORIGIN, "^model.features.origin: .* set data.group_by_member=true"),
        ([*ORIGIN, "data.group_by_member=true", "data.epochs=last"], "keeps one checkpoint"),
    ],
)
def test_member_options_without_siblings_stop_before_training(
    extra, message, api_zoo_path, tmp_path
):
    cfg = ae_cfg(tmp_path, api_zoo_path, *extra)
    with pytest.raises(ConfigError, match=message):
        build(cfg, [api_zoo_path])
    assert not (tmp_path / "run").exists()


def test_train_fast_dev_run_with_member_positives(api_zoo_path, tmp_path):
    cfg = ae_cfg(
        tmp_path,
        api_zoo_path,
        *MEMBER,
        "data.group_by_member=true",
        "data.batch_size=12",
        "trainer.fast_dev_run=true",
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/contrastive"]) and metrics["train/contrastive"] > 0
