"""ASHA that survives `--resume`: its rungs live in the sweep's records, not in memory.

Ray 2.60's Tuner.restore brings back the scheduler as it was pickled at launch (empty rungs)
and restarts training_iteration at 1 while each trial's Train run continues from its own
checkpoint. Judged by that, a resumed trial would face empty rungs (nothing to beat) and
count its time from zero (re-judged at rungs it already passed, against nothing).

ResumableASHA fixes both:
- time is what the run reports (`epoch`, or `eval_round` = epoch / eval_interval), which a
  resumed Train run continues, never Tune's iteration counter;
- every result the driver sees is appended to trials.jsonl before ASHA decides on it, and a
  fresh scheduler (a resumed sweep) replays each trial's recorded results into its bracket
  when Tune adds the trial, so the rungs hold exactly what they held before the driver died.
  Replaying only records values at milestones (a rung's record is the trial's first result at
  or past it), so the order of the replay does not matter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from trm_ray.run_folder import is_metric_value
from trm_ray.tune.records import (append_record, end_record, read_records, result_record, stop_record, trial_histories,
                                   trial_record)

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

# Result keys recorded besides the metrics (Tune adds many more).
# Set on the result a restarted, already finished trial reports instead of training again.
REPLAYED_KEY = "trm_ray_replayed"
KEPT_KEYS = ("epoch", "eval_round", "step", "time_this_iter_s", "timestamp", "training_iteration")


class ResumableASHA(AsyncHyperBandScheduler):
    """AsyncHyperBandScheduler (one bracket) whose rungs are rebuilt from the sweep records."""

    def __init__(self, sweep_dir: str, *, time_attr: str, metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float, early_stopping: bool = True):
        # Without early stopping the rungs sit above max_t: nothing is judged, all run to max_t.
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period if early_stopping else max_t,
                         reduction_factor=reduction_factor, brackets=1)
        self.sweep_dir = sweep_dir
        self.early_stopping = early_stopping
        self._history: Optional[dict[str, Any]] = None  # loaded once per driver process

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_history"] = None
        return state

    # ---- records -------------------------------------------------------------------------
    def _histories(self) -> dict[str, Any]:
        if self._history is None:
            self._history = trial_histories(read_records(self.sweep_dir))
        return self._history

    def _time(self, result: dict[str, Any]) -> Optional[float]:
        value = result.get(self._time_attr)
        return float(value) if isinstance(value, (int, float)) else None

    def _score(self, result: dict[str, Any]) -> Optional[float]:
        value = result.get(self._metric)
        if not is_metric_value(value):
            return None  # e.g. -inf before the first evaluation (min_eval_interval)
        return self._metric_op * float(value)

    # ---- Tune's hooks --------------------------------------------------------------------
    def on_trial_add(self, tune_controller: "TuneController", trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        known = self._histories().get(trial.trial_id)
        if known is None or known.index is None:
            planned = trial.config.get("trial", {})  # the driver's {"index": i, "params": {...}}
            append_record(self.sweep_dir, trial_record(trial.trial_id, planned.get("index"), planned.get("params", {})))
        if known is None:
            return
        bracket = self._trial_info[trial.trial_id]
        for result in known.results:  # the replay that rebuilds the rungs
            time, score = self._time(result), self._score(result)
            if time is not None and score is not None:
                bracket.on_result(trial, time, score)

    def on_trial_result(self, tune_controller: "TuneController", trial: Trial, result: dict) -> str:
        if result.get(REPLAYED_KEY):
            # A trial the records say had finished, which Tune restarted because its experiment
            # state was older than the records (driver killed in between): already judged.
            return TrialScheduler.STOP
        time, score = self._time(result), self._score(result)
        action = TrialScheduler.CONTINUE
        if time is not None and time >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP
        elif time is not None and score is not None:
            action = self._trial_info[trial.trial_id].on_result(trial, time, score)
        values = {**{k: result[k] for k in KEPT_KEYS if k in result},
                  **{k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))}}
        append_record(self.sweep_dir, result_record(trial.trial_id, time, values, action == TrialScheduler.STOP))
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
            early = time is None or time < self._max_t
            append_record(self.sweep_dir, stop_record(trial.trial_id, time, early))
        return action

    def on_trial_complete(self, tune_controller: "TuneController", trial: Trial, result: dict) -> None:
        time, score = self._time(result or {}), self._score(result or {})
        if time is not None and score is not None and trial.trial_id in self._trial_info:
            self._trial_info[trial.trial_id].on_result(trial, time, score)
        self._trial_info.pop(trial.trial_id, None)
        append_record(self.sweep_dir, end_record(trial.trial_id))

    def on_trial_error(self, tune_controller: "TuneController", trial: Trial) -> None:
        append_record(self.sweep_dir, end_record(trial.trial_id, error=True))
        self._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def rungs(self) -> list[tuple[float, dict[str, float]]]:
        """(milestone, {trial_id: score}) from the lowest milestone up (tests, debugging)."""
        return [(milestone, dict(recorded)) for milestone, recorded in reversed(self._brackets[0]._rungs)]
