"""Sweeps on local Ray: a 4-trial ASHA sweep where lr=0 trials are stopped early and compare
names the winner; a sweep whose driver is killed and `--resume`d without rerunning finished
trials, the resumed trial judged against the rungs of the trials before the kill.

Trial quality differs deterministically: lr=0 never moves (token accuracy ~0.03), lr=3e-3
learns within a few epochs. One tiny 4x4 Sudoku dataset, 1 worker per trial.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]

METRIC = "eval/accuracy"
# Every trial's length (asha.max_t): the one rung, at epoch 2, is where the lr=0 trials are
# stopped; the constant lr (lr_min_ratio 1.0) makes the first 2 epochs the same at any length.
EPOCHS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from ray_util import tiny_sudoku4

    return tiny_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", num_train=200, num_test=64)


def write_sweep(folder: Path, dataset: Path, name: str, lrs: list[float], concurrent: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(textwrap.dedent(f"""\
        data_paths: [{dataset}]
        arch: {{hidden_size: 32, num_heads: 2, L_layers: 1, H_cycles: 1, L_cycles: 2, halt_max_steps: 2,
                puzzle_emb_ndim: 0, mlp_t: true, pos_encodings: none, forward_dtype: float32}}
        global_batch_size: 64
        epochs: {EPOCHS}
        eval_interval: 1
        lr_warmup_steps: 1
        lr_min_ratio: 1.0
        checkpoint: {{num_to_keep: 1}}
        """))
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base: base.yaml
        search_space:
          lr: {{grid: {lrs}}}
        metric: {METRIC}
        mode: max
        asha: {{grace_period: 2, reduction_factor: 2, max_t: {EPOCHS}}}
        resources: {{workers: 1, cpus_per_worker: 0.5, trial_cpu: 0.1}}
        max_concurrent_trials: {concurrent}
        storage_path: {folder / 'runs'}
        """))
    return path


def histories(sweep_dir):
    from trm_ray.tune.records import read_records, trial_histories

    return trial_histories(read_records(sweep_dir))


def test_asha_sweep_stops_weak_trials_and_compare_names_the_best(tmp_path, dataset, ray_instance):
    from trm_ray.cli.main import main
    from trm_ray.config import load_train_config

    path = write_sweep(tmp_path, dataset, "four", [3e-3, 0.0, 0.0, 3e-3], concurrent=2)
    result = CliRunner().invoke(main, ["sweep", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    sweep_dir = tmp_path / "runs" / "four"
    trials = histories(sweep_dir)
    assert len(trials) == 4
    by_lr = {lr: [h for h in trials.values() if h.params["lr"] == lr] for lr in (0.0, 3e-3)}
    # every lr=0 trial that met a recorded lr=3e-3 trial at a rung was stopped there, before max_t
    stopped = [h for h in trials.values() if h.stopped_early]
    assert stopped and all(h.params["lr"] == 0.0 and h.epochs_run < EPOCHS for h in stopped)
    assert all(not h.stopped_early and h.epochs_run == EPOCHS for h in by_lr[3e-3])
    # W&B: one offline run per trial, in each trial's Train run folder, grouped by the sweep
    for trial_id in trials:
        assert list((sweep_dir / "train" / trial_id / "wandb").glob("offline-run-*")), trial_id

    best = max(by_lr[3e-3], key=lambda h: h.best(METRIC, "max")[0])
    out = CliRunner().invoke(main, ["compare", str(sweep_dir), "--best-config", str(tmp_path / "best.yaml"),
                                    "--plot", str(tmp_path / "curves.png")], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    first_row = out.output.splitlines()[2].split()
    assert first_row[0] == best.trial_id and float(first_row[2]) == pytest.approx(best.best(METRIC, "max")[0], abs=1e-4)
    assert load_train_config(tmp_path / "best.yaml").lr == 3e-3
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_resume_after_killed_driver_keeps_finished_trials_and_rungs(tmp_path, dataset, ray_instance):
    import ray

    # one trial at a time: the strong trial finishes, then the driver is killed
    path = write_sweep(tmp_path, dataset, "killed", [3e-3, 0.0, 0.0], concurrent=1)
    sweep_dir = tmp_path / "runs" / "killed"
    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ, RAY_ADDRESS=address)
    command = [sys.executable, "-m", "trm_ray.cli.main", "sweep", str(path), "--address", address]
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            if any(h.status == "complete" for h in histories(sweep_dir).values()):
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = histories(sweep_dir)
    finished = [h.trial_id for h in before.values() if h.status == "complete"]
    assert len(finished) == 1 and before[finished[0]].params["lr"] == 3e-3
    finished_metrics = (sweep_dir / "train" / finished[0] / "metrics.jsonl").read_text()

    # the killed job's trial actors die with their driver; resume in a new driver
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    after = histories(sweep_dir)
    assert len(after) == 3 and all(h.status in ("complete", "stopped") for h in after.values())
    # the finished trial was not trained again
    assert (sweep_dir / "train" / finished[0] / "metrics.jsonl").read_text() == finished_metrics
    assert after[finished[0]].results == before[finished[0]].results
    # the lr=0 trials ran after the kill: each met the rebuilt rung 2 (the strong trial's
    # record) and was stopped there; a resumed plain ASHA would have let the first run to max_t
    for h in after.values():
        if h.params["lr"] == 0.0:
            assert h.stopped_early and h.epochs_run < EPOCHS, (h.trial_id, h.epochs_run)
            assert h.best(METRIC, "max")[0] < after[finished[0]].best(METRIC, "max")[0]
    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["params"]["lr"] for t in info["trials"]] == [3e-3, 0.0, 0.0]


def test_sweep_console_on_its_own_local_ray_shows_trial_events_not_worker_internals(tmp_path, dataset):
    """`trm-ray sweep` as a person runs it: no RAY_ADDRESS (it starts its own local Ray), none
    of the quiet settings the test session sets for itself. Each trial's W&B banner and run
    history, and the error line of Ray Train's preemption watcher (nothing to preempt on one
    machine), would bury the one line per trial event."""
    path = write_sweep(tmp_path, dataset, "console", [3e-3], concurrent=1)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "WANDB_SILENT", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
                        "RAY_TRAIN_METRICS_ENABLED")}
    env["WANDB_MODE"] = "offline"  # W&B on, with no account
    # A train report every step and a progress line as often as there is a new one: the
    # lines a long trial prints between its evaluations, in a trial of seconds.
    env.update(TRM_RAY_REPORT_EVERY_STEPS="1", TRM_RAY_PROGRESS_EVERY_S="0.2")
    run = subprocess.run([sys.executable, "-m", "trm_ray.cli.main", "sweep", str(path)],
                         capture_output=True, text=True, env=env, timeout=300)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-3000:]
    assert "started a local Ray instance" in run.stderr
    trial_id, = histories(tmp_path / "runs" / "console")
    assert f"trial {trial_id} completed at epoch {EPOCHS}" in run.stdout, run.stdout
    # the trial's W&B run was written all the same, silently
    assert list((tmp_path / "runs" / "console" / "train" / trial_id / "wandb").glob("offline-run-*"))
    noise = [line for line in console.splitlines() if "wandb:" in line or "PreemptionWatcher" in line]
    assert not noise, noise

    # Progress between evaluations: the planned steps as the lr schedule counts them, worked
    # out here from the dataset's own dataset.json.
    meta = json.loads((dataset / "train" / "dataset.json").read_text())
    planned = int(EPOCHS * meta["total_groups"] * meta["mean_puzzle_examples"] / 64)
    # (train/accuracy only in a report whose steps had a halted puzzle)
    progress = re.findall(rf"trm-ray: trial {trial_id} step (\d+)/(\d+) \((\d+)%\): train/lm_loss [0-9.]+, "
                          rf"(?:train/accuracy [0-9.]+, )?\d+ samples/s \| ETA \S+", run.stdout)
    assert progress, run.stdout
    assert {int(total) for _, total, _ in progress} == {planned}
    steps = [int(step) for step, _, _ in progress]
    assert steps == sorted(set(steps)) and all(1 <= step <= planned for step in steps)  # each report once
