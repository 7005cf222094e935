"""The W&B zoo card: logged offline to a local folder, never to the network."""

from __future__ import annotations

import pytest

from weightspace.tracking import wandb_mode
from weightspace.zoo.generate import generate


def test_wandb_mode_is_offline_unless_logged_in(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"
    assert wandb_mode("offline") == "offline"  # the config has the last word


@pytest.mark.slow
def test_zoo_card_lands_in_a_local_offline_run(make_cfg, tmp_path):
    cfg = make_cfg("logger=wandb", "logger.mode=offline", root=tmp_path)
    generate(cfg)
    runs = list((tmp_path / "outputs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "one offline run folder per generate call"
    assert list(runs[0].glob("run-*.wandb")), "the run's data file was written"
