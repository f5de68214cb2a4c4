"""A sweep's progress lines between evaluations (trm_ray.tune.driver.TrialProgress), without Ray:
the line of a train report, the latest report read from a metrics.jsonl that a trial is still
writing, the setting's one-line error. The lines in a real sweep: tests/test_sweep_ray.py."""

from __future__ import annotations

import json

import pytest

from trm_ray.tune.driver import (
    SweepError,
    TrialProgress,
    latest_train_report,
    progress_every_s,
    trial_progress_line,
)


def test_progress_line_has_the_share_of_planned_steps_and_the_time_left_at_the_reports_speed():
    report = {"step": 250, "train/lm_loss": 1.23456, "train/accuracy": 0.5, "train/samples_per_s": 128.0}
    # 750 steps left of 64 samples at 128 samples/s: 375 s
    assert trial_progress_line("t_00001", report, total_steps=1000, global_batch_size=64) == (
        "trm-ray: trial t_00001 step 250/1000 (25%): train/lm_loss 1.2346, train/accuracy 0.5000, "
        "128 samples/s | ETA 6m15s")
    # no speed yet, no accuracy in this report: unknown ETA, the loss alone
    assert trial_progress_line("t", {"step": 1, "train/lm_loss": 2.0, "train/samples_per_s": 0.0}, 4, 8) == (
        "trm-ray: trial t step 1/4 (25%): train/lm_loss 2.0000, 0 samples/s | ETA ?")


def test_latest_train_report_skips_evaluations_and_a_line_being_written_without_a_word(tmp_path, capsys):
    run = tmp_path / "run"
    assert pytest.raises(OSError, latest_train_report, str(run))  # no file: the caller waits
    run.mkdir()
    lines = [{"step": 5, "train/lm_loss": 2.0, "train/samples_per_s": 10.0},
             {"step": 10, "train/lm_loss": 1.5, "train/samples_per_s": 12.0},
             {"step": 10, "epoch": 1, "eval/accuracy": 0.3}]  # an evaluation: no speed of its own
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run / "metrics.jsonl").write_text(text + '{"step": 15, "train/lm_lo')  # the trial is writing
    assert latest_train_report(str(run)) == lines[1]
    assert capsys.readouterr().err == ""
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "epoch": 0}) + "\n")
    assert latest_train_report(str(run)) is None


def test_progress_every_s_reads_the_setting_and_refuses_a_bad_one():
    assert progress_every_s({}) == 300.0
    assert progress_every_s({"TRM_RAY_PROGRESS_EVERY_S": "60"}) == 60.0
    with pytest.raises(SweepError, match=r"TRM_RAY_PROGRESS_EVERY_S='5m' is not a number of seconds"):
        progress_every_s({"TRM_RAY_PROGRESS_EVERY_S": "5m"})


class _Trial:
    def __init__(self, trial_id: str, status: str):
        self.trial_id, self.status, self.config = trial_id, status, {}


def test_trial_progress_prints_each_new_report_of_running_trials_once(tmp_path, monkeypatch):
    import trm_ray.tune.driver as driver

    clock = [1000.0]
    monkeypatch.setattr(driver.time, "time", lambda: clock[0])
    lines: list[str] = []
    progress = TrialProgress({}, every_s=60, log=lines.append)
    runs = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for folder in runs.values():
        folder.mkdir()
    progress.plans = {name: (str(folder), 100, 10) for name, folder in runs.items()}  # as _plan works them out
    (runs["a"] / "metrics.jsonl").write_text(json.dumps({"step": 20, "train/samples_per_s": 50.0}) + "\n")
    (runs["b"] / "metrics.jsonl").write_text(json.dumps({"step": 30, "train/samples_per_s": 50.0}) + "\n")
    trials = [_Trial("a", "RUNNING"), _Trial("b", "TERMINATED")]  # b ended: its report is old news

    progress(trials)  # the first call starts the clock
    clock[0] += 59
    progress(trials)
    assert lines == []
    clock[0] += 1
    progress(trials)
    assert lines == ["trm-ray: trial a step 20/100 (20%): 50 samples/s | ETA 16s"]
    clock[0] += 60
    progress(trials)  # no newer report: nothing
    assert len(lines) == 1
    with open(runs["a"] / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"step": 40, "train/samples_per_s": 40.0}) + "\n")
    clock[0] += 60
    progress(trials)
    assert lines[1:] == ["trm-ray: trial a step 40/100 (40%): 40 samples/s | ETA 15s"]


def test_planned_steps_of_a_dataset_in_a_folder_and_at_a_uri(tmp_path):
    """The driver stages no dataset: one at a URI is read from its dataset.json in the store
    (file:// here; the sweeps at an s3:// URI use the same storage calls)."""
    from datasets_util import write_dataset
    from trm_ray.config import TrainConfig
    from trm_ray.tune.driver import planned_steps

    data = tmp_path / "data"
    write_dataset(data, [[2, 1], [1], [3], [1, 1], [2], [1]], split="train")  # 6 groups
    meta = json.loads((data / "train" / "dataset.json").read_text())
    expected = int(10 * meta["total_groups"] * meta["mean_puzzle_examples"] / 4)
    for path in (str(data), f"file://{data}"):
        config = TrainConfig(data_paths=[path], epochs=10, eval_interval=5, global_batch_size=4)
        assert planned_steps(config) == expected, path
