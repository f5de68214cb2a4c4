"""ResumableASHA without Ray actors: rungs rebuilt from the records judge resumed trials as an
uninterrupted scheduler would, with time in reported epochs (Tune's iteration restarts)."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from trm_ray.tune.records import read_records, trial_histories
from trm_ray.tune.scheduler import REPLAYED_KEY, ResumableASHA

METRIC = "eval/accuracy"


def scheduler(sweep_dir):
    return ResumableASHA(str(sweep_dir), time_attr="epoch", metric=METRIC, mode="max", max_t=8,
                         grace_period=2, reduction_factor=2)


def trial(trial_id, index):
    return SimpleNamespace(trial_id=trial_id, config={"trial": {"index": index, "params": {"lr": 0.1 * index}}})


def report(sched, t, epoch, value, iteration):
    return sched.on_trial_result(None, t, {"epoch": epoch, METRIC: value, "training_iteration": iteration,
                                           "time_this_iter_s": 1.0})


def test_resumed_scheduler_rebuilds_rungs_and_judges_on_epochs(tmp_path):
    # ---- first driver: A runs to max_t; B reaches epoch 3, then the driver dies -------------
    first = scheduler(tmp_path)
    a, b = trial("A", 0), trial("B", 1)
    first.on_trial_add(None, a)
    first.on_trial_add(None, b)
    for epoch in range(1, 9):
        action = report(first, a, epoch, 0.1 * epoch, epoch)
    assert action == TrialScheduler.STOP  # max_t
    first.on_trial_complete(None, a, {"epoch": 8, METRIC: 0.8})
    assert report(first, b, 1, 0.05, 1) == TrialScheduler.CONTINUE
    assert report(first, b, 2, 0.30, 2) == TrialScheduler.CONTINUE  # above A's 0.2 at rung 2
    assert report(first, b, 3, 0.31, 3) == TrialScheduler.CONTINUE
    rungs_before = first.rungs()

    # ---- second driver: a fresh scheduler (as Tuner.restore unpickles it) --------------------
    second = scheduler(tmp_path)
    assert all(not recorded for _, recorded in second.rungs())
    second.on_trial_add(None, trial("A", 0))
    second.on_trial_add(None, trial("B", 1))
    assert second.rungs() == rungs_before  # A at 2, 4, 8; B at 2
    # B's Train run continues from its checkpoint: epoch 4 arrives as Tune's iteration 1.
    # Judged at rung 4 against A's 0.4, a 0.35 is stopped; iteration 1 would have been ignored.
    assert report(second, trial("B", 1), 4, 0.35, 1) == TrialScheduler.STOP
    histories = trial_histories(read_records(tmp_path))
    assert histories["B"].stopped_early and histories["B"].epochs_run == 4
    assert histories["A"].status == "complete" and not histories["A"].stopped_early
    # trial events are written once, not again by the resumed driver
    assert sum(r["event"] == "trial" for r in read_records(tmp_path)) == 2


def test_without_rebuild_a_weak_resumed_trial_would_pass(tmp_path):
    # The decisive contrast: a plain fresh ASHA (what Tuner.restore gives) has no record at
    # rung 2 and lets the weak trial continue; ResumableASHA stops it.
    first = scheduler(tmp_path)
    strong, weak = trial("S", 0), trial("W", 1)
    first.on_trial_add(None, strong)
    for epoch in range(1, 9):
        report(first, strong, epoch, 0.5, epoch)
    first.on_trial_complete(None, strong, {"epoch": 8, METRIC: 0.5})

    from ray.tune.schedulers import AsyncHyperBandScheduler

    plain = AsyncHyperBandScheduler(time_attr="epoch", metric=METRIC, mode="max", max_t=8, grace_period=2,
                                    reduction_factor=2)
    plain.on_trial_add(None, weak)
    assert plain.on_trial_result(None, weak, {"epoch": 2, METRIC: 0.01}) == TrialScheduler.CONTINUE

    resumed = scheduler(tmp_path)
    resumed.on_trial_add(None, trial("S", 0))
    resumed.on_trial_add(None, weak)
    assert report(resumed, weak, 2, 0.01, 1) == TrialScheduler.STOP


def test_replayed_result_of_a_finished_trial_is_not_judged_again(tmp_path):
    sched = scheduler(tmp_path)
    t = trial("A", 0)
    sched.on_trial_add(None, t)
    before = len(read_records(tmp_path))
    assert sched.on_trial_result(None, t, {"epoch": 8, METRIC: 0.9, REPLAYED_KEY: 1}) == TrialScheduler.STOP
    assert len(read_records(tmp_path)) == before


def test_non_finite_metric_is_recorded_but_not_ranked(tmp_path):
    sched = scheduler(tmp_path)
    t = trial("A", 0)
    sched.on_trial_add(None, t)
    assert report(sched, t, 2, float("-inf"), 1) == TrialScheduler.CONTINUE  # before min_eval_interval
    assert all(not recorded for _, recorded in sched.rungs())
    assert trial_histories(read_records(tmp_path))["A"].results[0][METRIC] is None
