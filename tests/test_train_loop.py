"""The per-worker training loop in one process (no Ray): checkpoints and exact resume.

With halt_max_steps=1 every row halts at every step, so the ACT carry (not checkpointed)
carries nothing; then a run stopped after a checkpoint and resumed must end bit-identical to
one that never stopped: step counter, lr schedule, loader position, both optimizers and the
EMA all continue the same curve.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datasets_util import write_dataset
from trm_ray.checkpoint import TRAIN_STATE_FILE, read_state_dict
from trm_ray.config import ConfigError, TrainConfig
from trm_ray.train.loop import train
from trm_ray.train.session import LocalSession


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference-layout")
    write_dataset(root, [[2, 1], [3], [1, 1, 2], [2], [1], [2, 2], [3], [1]], split="train")
    write_dataset(root, [[1]] * 4, split="test")
    return root


def config_for(dataset: Path, **overrides) -> TrainConfig:
    arch = dict(hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_len=1,
                forward_dtype="float32", halt_max_steps=1)
    base = dict(arch=arch, data_paths=[str(dataset)], global_batch_size=4, epochs=6, eval_interval=2, lr=1e-2,
                lr_warmup_steps=2, lr_min_ratio=0.1, ema=True, ema_rate=0.9, seed=1, run_name="r",
                tracking={"wandb": False})
    base.update(overrides)
    return TrainConfig(**base)


class StopAfterCheckpoints(LocalSession):
    """Dies (an exception) right after its n-th checkpoint was written: a stopped run."""

    def __init__(self, run_dir, n: int):
        super().__init__(run_dir)
        self.n = n

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt("stopped")


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, dataset):
    config = config_for(dataset)
    straight = LocalSession(tmp_path / "straight")
    train(config, straight, report_every_steps=3)

    with pytest.raises(KeyboardInterrupt):
        train(config, StopAfterCheckpoints(tmp_path / "stopped", n=1), report_every_steps=3)
    resumed = LocalSession(tmp_path / "stopped")
    train(config, resumed, report_every_steps=3)

    a = torch.load(sorted((tmp_path / "straight").glob("checkpoint_*"))[-1] / TRAIN_STATE_FILE, weights_only=True)
    b = torch.load(sorted((tmp_path / "stopped").glob("checkpoint_*"))[-1] / TRAIN_STATE_FILE, weights_only=True)
    assert a["step"] == b["step"] > 0
    assert a["loader"] == b["loader"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key
    # the resumed process reported only steps after the checkpoint, with the same metrics
    first_resumed_step = resumed.history[0]["step"]
    stopped_at = int(sorted((tmp_path / "stopped").glob("checkpoint_*"))[0].name.split("_")[1])
    assert first_resumed_step > stopped_at
    same_step = [h for h in straight.history if h["step"] == first_resumed_step][0]
    assert same_step["train/lr"] == resumed.history[0]["train/lr"]
    assert same_step["train/lm_loss"] == resumed.history[0]["train/lm_loss"]


def test_checkpoint_contents_load_as_data_and_model_pt_holds_the_ema_weights(tmp_path, dataset):
    session = LocalSession(tmp_path / "run")
    final = train(config_for(dataset, epochs=2), session)
    folder = sorted((tmp_path / "run").glob("checkpoint_*"))[-1]
    assert {p.name for p in folder.iterdir()} == {"model.pt", "all_config.yaml", TRAIN_STATE_FILE}
    state = torch.load(folder / TRAIN_STATE_FILE, weights_only=True)
    assert set(state) == {"version", "step", "model", "ema", "optimizers", "loader", "config", "dataset_fingerprint"}
    assert len(state["optimizers"]) == 2  # sign-SGD of the puzzle table + AdamATan2
    assert state["config"]["run_name"] == "r" and state["step"] == final["step"]
    weights = read_state_dict(folder)  # model.pt: reference keys, EMA weights (ema=true)
    for name, shadow in state["ema"]["shadow"].items():
        assert torch.equal(weights[name], shadow), name
    assert any(not torch.equal(state["model"][n], s) for n, s in state["ema"]["shadow"].items())
    # metrics: eval with Wilson bounds at each eval interval
    assert 0 <= final["eval/exact_accuracy_low"] <= final["eval/exact_accuracy"] <= final["eval/exact_accuracy_high"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == len(session.history)


def test_resume_refuses_other_data(tmp_path, dataset):
    train(config_for(dataset, epochs=2), LocalSession(tmp_path / "run"))
    other = tmp_path / "other"
    write_dataset(other, [[2, 1], [3], [1, 1, 2], [2], [1], [2, 2], [3], [1], [2]], split="train")
    with pytest.raises(ConfigError, match="other data"):
        train(config_for(other, epochs=2), LocalSession(tmp_path / "run"))


def test_load_checkpoint_starts_from_the_saved_weights(tmp_path, dataset):
    original = train(config_for(dataset, epochs=2, ema=False), LocalSession(tmp_path / "run"))
    folder = sorted((tmp_path / "run").glob("checkpoint_*"))[-1]
    # lr = 0 keeps the loaded weights, so the new run's eval is the saved model's eval
    loaded = train(config_for(dataset, epochs=2, ema=False, lr=0.0, puzzle_emb_lr=0.0,
                              load_checkpoint=str(folder / "model.pt")), LocalSession(None))
    fresh = train(config_for(dataset, epochs=2, ema=False, lr=0.0, puzzle_emb_lr=0.0), LocalSession(None))
    evals = lambda m: {k: v for k, v in m.items() if k.startswith("eval/")}  # noqa: E731
    assert evals(loaded) == evals(original)
    assert loaded["train/lm_loss"] != fresh["train/lm_loss"]
