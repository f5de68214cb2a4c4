"""The console: rank 0's progress line, the sweep driver's per-trial lines, Ray's noise filter,
and figures drawn without touching the caller's matplotlib backend."""

from __future__ import annotations

import numpy as np
import pytest

from trm_ray.train.progress import SWEEP_TRIAL_ENV, Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _metrics(loss: float) -> dict[str, float]:
    return {"train/lm_loss": loss, "train/accuracy": 0.5, "train/exact_accuracy": 0.25, "train/count": 8.0}


def test_progress_line_has_rate_and_eta_from_the_clock(monkeypatch):
    monkeypatch.delenv(SWEEP_TRIAL_ENV, raising=False)
    clock, lines = FakeClock(), []
    progress = Progress(200, 0, enabled=True, every_s=10.0, samples_per_step=64, clock=clock, out=lines.append)
    for step in range(1, 11):  # 10 steps in 5 s: nothing due yet
        clock.now += 0.5
        progress.step(step, _metrics(1.0 if step % 2 else 3.0))
    assert lines == []
    for step in range(11, 21):  # 10 more in 5 s: 20 steps in 10 s, due
        clock.now += 0.5
        progress.step(step, _metrics(1.0 if step % 2 else 3.0))
    # 2 steps/s * 64 samples = 128 samples/s; 180 steps left at 2 steps/s = 90 s
    assert lines == ["trm-ray: step 20/200 (10%) loss 2.0000 acc 0.500 exact 0.250 | 128 samples/s | ETA 1m30s"]


def test_progress_rate_is_over_the_last_window_and_the_last_step_always_prints(monkeypatch):
    monkeypatch.delenv(SWEEP_TRIAL_ENV, raising=False)
    clock, lines = FakeClock(), []
    progress = Progress(30, 10, enabled=True, every_s=10.0, clock=clock, out=lines.append)  # resumed at 10
    clock.now += 10.0
    progress.step(15, _metrics(1.0))  # 5 steps in 10 s
    clock.now += 1.0
    progress.step(30, _metrics(1.0))  # the last step: printed though not due; 15 steps in 1 s
    assert lines[0].endswith("| 0.50 steps/s | ETA 30s")
    assert lines[1].startswith("trm-ray: step 30/30 (100%)") and lines[1].endswith("| 15.00 steps/s | ETA 0s")


def test_progress_is_silent_off_rank_zero_and_inside_a_sweep_trial(monkeypatch):
    clock, lines = FakeClock(), []
    monkeypatch.delenv(SWEEP_TRIAL_ENV, raising=False)
    other_rank = Progress(10, 0, enabled=False, clock=clock, out=lines.append)
    monkeypatch.setenv(SWEEP_TRIAL_ENV, "1")
    in_trial = Progress(10, 0, enabled=True, clock=clock, out=lines.append)
    for progress in (other_rank, in_trial):
        clock.now += 60
        progress.step(10, _metrics(1.0))
        progress.message("trm-ray: epoch 1 step 10: eval exact accuracy 0.5")
    assert lines == []


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (65, "1m05s"), (3600 * 2 + 180, "2h03m"),
                                           (float("nan"), "?"), (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_trial_lines():
    from trm_ray.tune.driver import trial_end_line, trial_result_line, trial_started_line

    assert trial_started_line("93336_00001", {"lr": 0.003, "arch.H_cycles": 2}) == \
        "trm-ray: trial 93336_00001 started: lr=0.003 arch.H_cycles=2"
    assert trial_started_line("93336_00001", {}) == "trm-ray: trial 93336_00001 started: (base recipe)"
    result = {"epoch": 5, "eval_round": 1.0, "eval/exact_accuracy": 0.005}
    assert trial_result_line("t1", result, "eval/exact_accuracy", stopped=True) == \
        "trm-ray: trial t1 epoch 5: eval/exact_accuracy 0.0050 -> ASHA stops it"
    assert trial_result_line("t1", result, "eval/exact_accuracy", stopped=False) == \
        "trm-ray: trial t1 epoch 5: eval/exact_accuracy 0.0050 -> continues"
    assert trial_end_line("t1", result, "eval/exact_accuracy", stopped_early=True) == \
        "trm-ray: trial t1 stopped early by ASHA at epoch 5 (eval/exact_accuracy 0.0050)"
    last = {"epoch": 20, "eval_round": 4.0, "eval/exact_accuracy": 0.99}
    assert trial_end_line("t1", last, "eval/exact_accuracy") == \
        "trm-ray: trial t1 completed at epoch 20 (eval/exact_accuracy 0.9900)"
    assert trial_end_line("t1", None, "eval/exact_accuracy") == "trm-ray: trial t1 completed at epoch ? (no evaluation)"
    assert trial_end_line("t1", None, "eval/exact_accuracy", error="/s/t1/error.txt") == \
        "trm-ray: trial t1 failed: see /s/t1/error.txt"


def test_trial_console_says_asha_stops_only_before_max_t():
    from trm_ray.tune.driver import TrialConsole

    class Trial:
        def __init__(self, trial_id: str):
            self.trial_id, self.last_result = trial_id, {}
            self.config = {"trial": {"index": 0, "params": {"lr": 0.001}}}

    lines: list[str] = []
    console = TrialConsole("eval/exact_accuracy", 4, "eval_round", lines.append)
    done, stopped = Trial("t1"), Trial("t2")
    console.on_trial_start(0, [], done)
    console.on_trial_result(0, [], done, {"epoch": 5, "eval_round": 1.0, "eval/exact_accuracy": 0.5, "done": False})
    # Tune marks the result it stops a trial on done; at max_t that is the trial's own end
    console.on_trial_result(0, [], done, {"epoch": 20, "eval_round": 4.0, "eval/exact_accuracy": 0.9, "done": True})
    console.on_trial_complete(0, [], done)
    console.on_trial_result(0, [], stopped, {"epoch": 5, "eval_round": 1.0, "eval/exact_accuracy": 0.1, "done": True})
    console.on_trial_complete(0, [], stopped)
    assert lines == ["trm-ray: trial t1 started: lr=0.001",
                     "trm-ray: trial t1 epoch 5: eval/exact_accuracy 0.5000 -> continues",
                     "trm-ray: trial t1 epoch 20: eval/exact_accuracy 0.9000 -> continues",
                     "trm-ray: trial t1 completed at epoch 20 (eval/exact_accuracy 0.9000)",
                     "trm-ray: trial t2 epoch 5: eval/exact_accuracy 0.1000 -> ASHA stops it",
                     "trm-ray: trial t2 stopped early by ASHA at epoch 5 (eval/exact_accuracy 0.1000)"]


def test_ray_console_noise_is_dropped_and_the_rest_kept():
    from trm_ray.cluster import drop_noise

    noise = ("Detected that the Ray Train controller actor (3a1c) is dead. Cleaning up placement group = [x] "
             "created by this run.")
    batch = {"pid": 31087, "is_err": True, "lines": [noise, "Traceback (most recent call last):"]}
    assert drop_noise(batch) == {**batch, "lines": ["Traceback (most recent call last):"]}
    assert drop_noise({"pid": 1, "lines": [noise]}) is None
    raylet = ("WARNING: 8 PYTHON worker processes have been started on node: d68c with address: 192.0.2.2, "
              "which is 4x the maximum expected startup concurrency (2).")
    assert drop_noise({"pid": "raylet", "lines": [raylet]}) is None
    kept = {"pid": 7, "lines": ["trm-ray: step 1/2"]}
    assert drop_noise(kept) is kept


def _sweep_summary(tmp_path):
    from trm_ray.tune.compare import summarize_sweep
    from trm_ray.tune.records import append_record, write_sweep_info

    sweep_dir = str(tmp_path / "sweep")
    write_sweep_info(sweep_dir, {"name": "s", "metric": "eval/exact_accuracy", "mode": "max", "time_attr": "epoch",
                                 "trials": [{"index": 0, "params": {"lr": 0.001}}], "varied": ["lr"],
                                 "trial_base": {}})
    append_record(sweep_dir, {"event": "trial", "trial_id": "t0", "index": 0, "params": {"lr": 0.001}})
    for epoch, value in ((5, 0.25), (10, 0.5)):
        append_record(sweep_dir, {"event": "result", "trial_id": "t0", "time": epoch, "epoch": epoch,
                                  "eval/exact_accuracy": value, "decision": "continue"})
    append_record(sweep_dir, {"event": "complete", "trial_id": "t0"})
    return summarize_sweep(sweep_dir)


def test_plots_leave_the_callers_backend_and_figures_alone(tmp_path):
    import matplotlib

    matplotlib.use("pdf")  # a caller's non-Agg backend
    import matplotlib.pyplot as plt

    from trm_ray.figures import new_figure, save_png
    from trm_ray.tune.compare import plot_curves

    before = matplotlib.get_backend()
    open_figures = plt.get_fignums()
    figure, axes = new_figure(1, 2, figsize=(4, 2))
    axes[0].imshow(np.eye(3))
    path = save_png(figure, tmp_path / "sub" / "eye.png")
    plot_curves(_sweep_summary(tmp_path), tmp_path / "curves.png")
    assert matplotlib.get_backend() == before == "pdf"
    assert plt.get_fignums() == open_figures  # nothing registered with pyplot
    for png in (path, tmp_path / "curves.png"):
        with open(png, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_ray_token_notice_is_held_back_and_other_lines_are_not():
    import logging

    from trm_ray.cluster import _TokenNotice

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray", logging.WARNING, __file__, 1, message, None, None)

    notice = _TokenNotice()
    assert not notice.filter(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE="
                                    "disabled to opt out."))
    assert notice.filter(record("Token authentication is disabled for this Ray cluster. Anyone with network "
                                "access to the cluster can run arbitrary code"))


@pytest.mark.parametrize("started", [True, False])
def test_ray_session_is_connect_for_a_block(monkeypatch, started):
    import ray

    from trm_ray import cluster

    calls: list = []
    monkeypatch.setattr(cluster, "connect", lambda *args, **kwargs: calls.append((args, kwargs)) or started)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    # eval's spelling: keyword arguments of ray.init that connect takes too
    with cluster.ray_session(include_dashboard=False, logging_level="ERROR", log_to_driver=False) as answer:
        assert answer is started
        assert calls == [((None, None), {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"})]
    assert calls[1:] == (["shutdown"] if started else [])  # only what this block started is shut down
