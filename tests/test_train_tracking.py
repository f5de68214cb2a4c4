"""Tracking: W&B offline without credentials, a no-op when disabled, rank 0 only (loop)."""

from __future__ import annotations

import pytest

from trm_ray.config import TrainConfig
from trm_ray.tracking import NullTracker, create_tracker, project_name, resolve_mode


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` entry
    monkeypatch.setenv("HOME", str(tmp_path))


def test_mode_follows_config_then_environment_then_credentials(no_credentials, monkeypatch):
    assert resolve_mode(TrainConfig(tracking={"wandb": False})) == "disabled"
    assert resolve_mode(TrainConfig(tracking={"mode": "disabled"})) == "disabled"
    assert resolve_mode(TrainConfig()) == "offline"  # no credentials: offline files
    assert resolve_mode(TrainConfig(tracking={"mode": "online"})) == "offline"  # cannot go online without them
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(TrainConfig()) == "online"
    assert resolve_mode(TrainConfig(tracking={"mode": "offline"})) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(TrainConfig()) == "disabled"


def test_project_name_as_the_reference_derives_it():
    assert project_name(TrainConfig(data_paths=["data/sudoku-extreme-1k-aug-1000/"])) == "sudoku-extreme-1k-aug-1000-ACT-torch"
    assert project_name(TrainConfig(project_name="ref", tracking={"project": "mine"})) == "mine"
    assert project_name(TrainConfig(project_name="ref")) == "ref"


def test_disabled_is_a_no_op_and_offline_writes_files(no_credentials, tmp_path, monkeypatch):
    assert isinstance(create_tracker(TrainConfig(tracking={"wandb": False})), NullTracker)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    config = TrainConfig(run_name="r1", data_paths=["data/x"], tracking={"group": "g"})
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"), num_parameters=1234)
    assert tracker.run.name == "r1" and tracker.run.group == "g" and tracker.run.project == "x-ACT-torch"
    assert tracker.run.config["num_params"] == 1234 and tracker.run.config["run_name"] == "r1"
    tracker.log({"train/lm_loss": 1.0}, step=1)
    tracker.finish()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
