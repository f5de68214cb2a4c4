"""Training under Ray Train on CPU (gloo), one local Ray for the whole module.

- 2 workers equal 1 worker with the same global batch (parameters after N steps, fp32), on a
  dataset hand-written in the reference layout (tests/datasets_util.py);
- a quickstart-style recipe trains and its held-out accuracy rises (through the CLI);
- a worker killed with os._exit under ray.max_failures=1 is replaced and the run resumes from
  the last checkpoint: the step counter does not restart;
- a run that died (max_failures=0) continues with `trm-ray train --resume RUN_DIR`; resuming
  it once finished trains nothing and prints its summary;
- checkpoints load with weights_only=True, model.pt in the reference format;
- nothing of Ray is left running afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from datasets_util import write_tiny_dataset  # noqa: E402
from ray_util import wait_until_ray_is_gone  # noqa: E402
from trm_ray.checkpoint import TRAIN_STATE_FILE, load_checkpoint  # noqa: E402
from trm_ray.cli.main import main  # noqa: E402
from trm_ray.config import DataShape, TrainConfig  # noqa: E402
from trm_ray.data.layout import load_metadata  # noqa: E402
from trm_ray.optim import cosine_schedule_lr, total_train_steps  # noqa: E402
from trm_ray.train.loop import FAULT_ENV  # noqa: E402
from trm_ray.train.step import create_train_state  # noqa: E402
from trm_ray.train.trainer import REPORT_EVERY_STEPS_ENV, check_inputs, fit  # noqa: E402
from trm_ray.run_folder import read_metrics  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # 3 logical CPUs: two 1-CPU workers plus room for Ray's own actors on a 2-core machine.
    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
    assert not wait_until_ray_is_gone(), "Ray processes left behind after ray.shutdown()"


def tiny_config(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    arch = dict(hidden_size=32, num_heads=4, H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_len=2,
                forward_dtype="float32", halt_max_steps=2, halt_exploration_prob=0.0)
    arch.update(overrides.pop("arch", {}))
    base = dict(arch=arch, data_paths=[str(data)], global_batch_size=8, epochs=4, eval_interval=2, lr=3e-3,
                lr_warmup_steps=2, seed=5, run_name="run", tracking={"wandb": False},
                ray={"storage_path": str(tmp_path / "runs"), "num_workers": 1})
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return check_inputs(TrainConfig(**base))


@pytest.fixture(scope="module")
def reference_dataset(tmp_path_factory) -> Path:
    """Reference layout, written by hand: 12 groups of 1-2 variants with 1-3 examples, a test split."""
    return write_tiny_dataset(tmp_path_factory.mktemp("reference-layout"))


# --------------------------------------------------------------------------------------------
def test_two_workers_equal_one_worker_with_the_same_global_batch(tmp_path, reference_dataset):
    results = {}
    for workers in (1, 2):
        config = tiny_config(tmp_path / f"w{workers}", reference_dataset, ray={"num_workers": workers},
                             checkpoint={"num_to_keep": 1})
        result = fit(config, report_every_steps=1000)
        state = torch.load(Path(result.last_checkpoint) / TRAIN_STATE_FILE, weights_only=True)
        results[workers] = (state, result)

    one, two = results[1][0], results[2][0]
    assert one["step"] == two["step"] > 5  # the same steps were taken...
    for key in one["model"]:
        torch.testing.assert_close(two["model"][key], one["model"][key], rtol=0, atol=1e-5, msg=key)
    # ...and they trained: the puzzle table (sign-SGD over both workers' rows) and a weight moved
    shape = DataShape(seq_len=6, vocab_size=64, num_puzzle_identifiers=19)
    initial = create_train_state(tiny_config(tmp_path, reference_dataset), shape, total_steps=10).module.state_dict()
    for key in ("model.inner.puzzle_emb.weights", "model.inner.lm_head.weight"):
        assert not torch.equal(one["model"][key], initial[key]), key
    assert one["loader"] == two["loader"]  # the position is global, whatever the world size

    # model.pt is the reference format (+ all_config.yaml) and loads as a model
    model = load_checkpoint(results[2][1].last_checkpoint)
    assert set(torch.load(Path(results[2][1].last_checkpoint) / "model.pt", weights_only=True)) == \
        {"_orig_mod." + k for k in model.state_dict()}


def test_quickstart_style_recipe_trains_and_held_out_accuracy_rises(tmp_path):
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe

    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "sudoku4"
    recipe = load_recipe(repo / "trm_ray" / "recipes" / "datasets" / "sudoku-4x4-quickstart.yaml",
                         {"generate": {"size": 4, "num_train": 300, "num_test": 100, "min_clues": 0}})
    build_dataset(recipe, str(data), use_ray=False)

    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, [
        "train", str(repo / "trm_ray" / "recipes" / "experiments" / "quickstart.yaml"), f"data_paths=[{data}]", f"ray.storage_path={runs}",
        "run_name=qs", "ray.num_workers=2", "epochs=40", "eval_interval=10", "tracking.mode=offline",
        "arch.H_cycles=1", "arch.L_cycles=1",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "run folder: " + str(runs / "qs") in result.output
    records = [r for r in read_metrics(runs / "qs") if r.get("eval/accuracy") is not None]
    assert [r["epoch"] for r in records] == [10, 20, 30, 40]
    accuracy = [r["eval/accuracy"] for r in records]
    assert accuracy[-1] > accuracy[0] + 0.05, accuracy  # held-out token accuracy rises
    assert records[-1]["train/lm_loss"] < records[0]["train/lm_loss"]
    assert 0 <= records[-1]["eval/exact_accuracy_low"] <= records[-1]["eval/exact_accuracy"] \
        <= records[-1]["eval/exact_accuracy_high"] <= 1
    # W&B recorded offline into the run folder (no credentials, no network)
    assert list((runs / "qs" / "wandb").glob("offline-run-*"))


def _train_steps_and_checkpoints(run_dir: Path) -> tuple[list[int], list[int]]:
    """Steps of the per-step train reports (report_every_steps=1; eval reports, which carry
    `epoch`, left out) in report order, and the steps whose report carried a checkpoint."""
    records = read_metrics(run_dir)
    return [r["step"] for r in records if "epoch" not in r], [r["step"] for r in records if r.get("checkpoint")]


def test_killed_worker_is_replaced_and_resumes_from_the_last_checkpoint(tmp_path, reference_dataset, monkeypatch):
    marker = tmp_path / "killed"
    # eval intervals (checkpoints) end at steps 6, 12, 19, 26 of this dataset and seed
    monkeypatch.setenv(FAULT_ENV, f"9:1:{marker}")  # rank 1 calls os._exit at step 9, once
    config = tiny_config(tmp_path, reference_dataset, ray={"num_workers": 2, "max_failures": 1}, epochs=8,
                         checkpoint={"num_to_keep": 2})
    result = fit(config, report_every_steps=1)
    assert marker.read_text() == "9"
    steps, checkpoints = _train_steps_and_checkpoints(Path(result.run_dir))
    # Reports up to some step m <= 8 reached the controller before it saw the death (how many
    # depends on its poll); the new worker group went on right after the last checkpoint c <= m.
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), len(steps))
    m = steps[restart - 1]
    resumed_from = max(s for s in checkpoints if s <= m)
    if restart == len(steps):  # c == m: the continuation looks seamless
        assert steps == list(range(1, steps[-1] + 1)) and m > 9
    else:
        assert m <= 8 and steps[:restart] == list(range(1, m + 1))
        assert steps[restart:] == list(range(resumed_from + 1, steps[-1] + 1))
        assert resumed_from > 0  # not from scratch
    assert result.final["epoch"] == 8 and result.final["step"] == steps[-1] > 9


def test_stopped_run_continues_with_resume(tmp_path, reference_dataset, monkeypatch):
    marker = tmp_path / "killed"
    runs = tmp_path / "runs"
    recipe = tmp_path / "recipe.yaml"
    config = tiny_config(tmp_path, reference_dataset, epochs=6, ray={"num_workers": 2}, run_name="stopped")
    recipe.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML

    monkeypatch.setenv(REPORT_EVERY_STEPS_ENV, "1")
    # rank 0 dies at step 11 (eval intervals end at steps 6, 12, 19); max_failures=0: the run fails.
    # A checkpoint reaches the controller on its next poll: 5 steps leave it time to register.
    monkeypatch.setenv(FAULT_ENV, f"11:0:{marker}")
    failed = CliRunner().invoke(main, ["train", str(recipe), "ray.max_failures=0"])
    assert failed.exit_code != 0 and "--resume" in failed.output, failed.output
    steps_before, checkpoints_before = _train_steps_and_checkpoints(runs / "stopped")
    assert steps_before == list(range(1, len(steps_before) + 1)) and len(steps_before) <= 10
    assert checkpoints_before == [6]

    resumed = CliRunner().invoke(main, ["train", "--resume", str(runs / "stopped")])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    steps, _ = _train_steps_and_checkpoints(runs / "stopped")
    resumed_from = checkpoints_before[-1]
    assert steps == steps_before + list(range(resumed_from + 1, steps[-1] + 1))
    records = read_metrics(runs / "stopped")
    assert records[-1]["epoch"] == 6
    assert "final: step=" in resumed.output and "best:" in resumed.output and "run folder:" in resumed.output
    # the lr schedule carried on: every step's lr, before and after the resume, is the schedule's
    meta = load_metadata(reference_dataset, "train")
    total = total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples, config.global_batch_size)
    for record in records:
        expected = cosine_schedule_lr(record["step"], config.lr, config.lr_warmup_steps, total, config.lr_min_ratio)
        assert record["train/lr"] == pytest.approx(expected), record["step"]

    # resuming the finished run trains nothing (no worker group): it says so, prints the run's
    # summary and leaves the records as they were
    finished = (runs / "stopped" / "metrics.jsonl").read_text()
    monkeypatch.setattr("trm_ray.train.trainer.fit", lambda *a, **k: pytest.fail("the finished run was trained again"))
    again = CliRunner().invoke(main, ["train", "--resume", str(runs / "stopped")])
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert "run already finished: its last checkpoint is at epoch 6 (epochs=6)" in again.output
    assert f"final: step={records[-1]['step']} epoch=6 " in again.output and "run folder:" in again.output
    assert (runs / "stopped" / "metrics.jsonl").read_text() == finished
