"""The sweep driver: one Ray Train run per trial, inside a Tune function trainable, under ASHA.

    sweep = load_sweep_spec("experiments/sweeps/quickstart.yaml")
    sweep_dir = run_sweep(sweep, expand_trials(sweep))          # resume=True continues it

Ray 2.60: `Tuner(TorchTrainer)` no longer works, so each trial is a small function trainable
(a fraction of a CPU: it only waits) that runs trm_ray.train.trainer's `fit` on the trial's config,
its Train run named by the trial id under <sweep>/train/. The Train controller forwards each
evaluation report to Tune (TuneReportCallback), so ASHA judges on the same metrics single
runs report; ResumableASHA (scheduler.py) keeps that judgement fair across --resume.

A searched sweep (search.algorithm optuna / hyperopt) hands Tune the space instead of the trial
list: its searcher (search.py) proposes each trial from the results so far, ASHA still stops the
weak ones, and the searcher's state, saved with Tune's experiment state, is what --resume
continues the search from.

The sweep folder may be a URI (s3://bucket/sweeps/<name>): Tune's experiment state, the
records and every trial's Train run then live in object storage, so trials on any node write
where every node (and a driver started on another machine) reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Optional

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler

from trm_ray import storage
from trm_ray.config import ConfigError, TrainConfig, build
from trm_ray.errors import first_line
from trm_ray.jsonl import whole_lines
from trm_ray.run_folder import EPOCH_KEY, METRICS_FILE, SAMPLES_PER_S_KEY, STEP_KEY, run_dir_of
from trm_ray.tune.records import (
    TRAIN_DIR,
    append_record,
    forget_records,
    read_records,
    read_sweep_info,
    result_values,
    sweep_started,
    trial_histories,
    trial_outcome,
    trial_record,
    upload_records,
    write_sweep_info,
)
from trm_ray.train.progress import SWEEP_TRIAL_ENV, format_duration
from trm_ray.tune.scheduler import REPLAYED_KEY, ResumableASHA
from trm_ray.tune.search import build_searcher, trial_params, trial_space
from trm_ray.tune.spec import (
    Sweep,
    searched_space,
    set_key,
    space_varied_keys,
    trial_config,
    varied_keys,
    with_resources,
)

EVAL_ROUND_KEY = "eval_round"  # epoch / eval_interval, added to what Tune sees
# Between evaluations, a progress line per running trial this often (TrialProgress).
PROGRESS_EVERY_ENV = "TRM_RAY_PROGRESS_EVERY_S"
DEFAULT_PROGRESS_EVERY_S = 300.0
PROGRESS_METRICS = ("train/lm_loss", "train/accuracy")  # of a train report, when it has them


class SweepError(RuntimeError):
    """A sweep that cannot start or continue; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Inside a trial (a Tune function trainable on some node)
# --------------------------------------------------------------------------------------------
def _eval_report_callback(eval_interval: int):
    """A TuneReportCallback that forwards only the reports made at an evaluation (they carry
    `epoch` and the eval metrics; the periodic train reports between them do not), adding
    eval_round. One Tune result = one evaluation, and Tune's strict metric check never sees
    a report without the metric."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EvalReportCallback(TuneReportCallback):
        def __init__(self, eval_interval: int):
            super().__init__()
            self.eval_interval = eval_interval

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if not metrics or EPOCH_KEY not in metrics[0]:
                return
            first = dict(metrics[0])
            first[EVAL_ROUND_KEY] = first[EPOCH_KEY] / self.eval_interval
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EvalReportCallback(eval_interval)


def trial_train_config(context: dict[str, Any], trial_id: str, params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a trial trains: the base recipe with its values, its Train run named by
    the trial id under <sweep>/train/, its W&B run in the sweep's group."""
    data = context["trial_base"]
    for key, value in params.items():
        data = set_key(data, key, value)
    data = set_key(data, "run_name", trial_id)
    data = set_key(data, "ray.storage_path", storage.join(context["sweep_dir"], TRAIN_DIR))
    data = set_key(data, "tracking.group", context["sweep_name"])
    return build(TrainConfig, data, f"trial {trial_id}")


def trial_env(environ: Mapping[str, str], own_instance: bool) -> dict[str, str]:
    """Environment the trials set before training, where the driver's own does not say otherwise.

    W&B silent: each trial's run banner and closing history would interleave in the sweep's
    console, where the driver already prints a line per trial event (WANDB_SILENT=false brings
    them back). On a local Ray the sweep started, Ray Train's preemption watcher and metrics
    are off, as for `trm-ray train` (trm_ray.train.trainer.local_ray_train_env): the trial's
    fit joins a running Ray, so it cannot tell that nothing else uses that instance."""
    from trm_ray.train.trainer import local_ray_train_env

    quiet = {} if "WANDB_SILENT" in environ else {"WANDB_SILENT": "true"}
    return {**quiet, **(local_ray_train_env(environ) if own_instance else {})}


def run_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial: the trial's TrainConfig, trained by trm_ray.train.trainer's `fit` (a TorchTrainer)."""
    from ray import tune

    from trm_ray.train.trainer import fit
    from trm_ray.run_folder import run_started

    # Its workers print no progress of their own: the driver prints a line per trial event.
    os.environ[SWEEP_TRIAL_ENV] = "1"
    # Where the object store is (never a secret): a trial on another node may lack the
    # driver's AWS_ENDPOINT_URL, and its own checks of the run folder below need it. Then the
    # console settings of trial_env, which fit() forwards to the Train workers.
    for key, value in {**context.get("storage_env", {}), **context.get("trial_env", {})}.items():
        os.environ.setdefault(key, value)
    trial_id = tune.get_context().get_trial_id()
    finished = context.get("finished", {}).get(trial_id)
    if finished is not None:
        # Finished before the driver died, but Tune's experiment state had not caught up:
        # hand Tune the last result again instead of training (or resuming a stopped trial).
        tune.report({**finished, REPLAYED_KEY: 1, "time_this_iter_s": 0.0})
        return
    train_config = trial_train_config(context, trial_id, trial_params(config))
    run_dir = run_dir_of(train_config)
    # A trial Tune resumes (driver restarted) continues its Train run from its last checkpoint.
    resume = run_started(run_dir)
    interval = train_config.eval_interval or train_config.epochs
    fit(train_config, resume=resume, callbacks=[_eval_report_callback(interval)])
    _drain_reports()
    _report_if_silent(run_dir, interval)


def _report_if_silent(run_dir: str, eval_interval: int) -> None:
    """A resumed Train run that had already finished reports nothing (the driver died after
    its last report reached Train but before Tune recorded it): give Tune that last
    evaluation from the run's metrics file, so the trial ends with its real result."""
    from ray import tune
    from ray.train._internal.session import get_session

    from trm_ray.run_folder import read_metrics

    session = get_session()
    if session is None or session.iteration > 0:
        return
    evaluations = [r for r in read_metrics(run_dir) if EPOCH_KEY in r]
    if evaluations:
        last = {k: v for k, v in evaluations[-1].items() if k != "checkpoint"}
        tune.report({**last, EVAL_ROUND_KEY: last[EPOCH_KEY] / eval_interval})


def _drain_reports(timeout_s: float = 60.0) -> None:
    """Wait until Tune has taken the Train run's last report.

    TuneReportCallback hands reports over through a one-slot queue that Tune's session reads
    while this function runs; returning as soon as fit() does can lose the final evaluation
    (seen with Ray 2.60), which is the one that matters most."""
    from ray.train._internal.session import get_session

    session = get_session()
    queue = session._get_or_create_inter_actor_queue() if session is not None else None
    if queue is None:
        return
    deadline = time.monotonic() + timeout_s
    while not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the item taken is handed to Tune's result queue by the session's thread


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
def sweep_info(sweep: Sweep, trials: list[dict[str, Any]], trial_base: dict[str, Any]) -> dict[str, Any]:
    """What sweep.json keeps. A searched sweep's trials are proposed while it runs (trials.jsonl
    records each with its values): it keeps the search and its space instead, which is also
    what --resume compares (a grid sweep: the trials)."""
    spec = sweep.spec
    if spec.searcher:
        space = searched_space(sweep)
        return {**_info(sweep, [], trial_base), "varied": space_varied_keys(space),
                "search": spec.search_config().model_dump(mode="json"),
                "search_space": {key: domain.model_dump(mode="json", exclude_none=True)
                                 for key, domain in space.items()}}
    return _info(sweep, trials, trial_base)


def _info(sweep: Sweep, trials: list[dict[str, Any]], trial_base: dict[str, Any]) -> dict[str, Any]:
    spec = sweep.spec
    return {
        "name": sweep.name,
        "source": str(sweep.source),
        "overrides": sweep.overrides,
        "spec": spec.model_dump(mode="json"),
        "metric": spec.metric,
        "mode": spec.mode,
        "time_attr": spec.asha.time_attr,
        "trial_base": trial_base,
        "trials": [{"index": i, "params": p} for i, p in enumerate(trials)],
        "varied": varied_keys(trials),
    }


def check_trials(sweep: Sweep, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Every trial through the trainer's own pre-launch checks (datasets exist, batch fits,
    evaluators known, storage writable); returns the base recipe with absolute paths, as
    trials get it."""
    from trm_ray.data.layout import DatasetError, has_test_split
    from trm_ray.train.trainer import check_inputs

    # Trials write under <sweep>/train/, never to the recipe's ray.storage_path: check that.
    trials_root = storage.join(sweep.directory(), TRAIN_DIR)

    def as_trial(config: TrainConfig) -> TrainConfig:
        return config.model_copy(update={"run_name": "check",
                                         "ray": config.ray.model_copy(update={"storage_path": trials_root})})

    checked: set[str] = set()
    try:
        for params in trials:
            config = check_inputs(as_trial(trial_config(sweep, params)))
            key = repr((config.data_paths, config.data_paths_test, config.global_batch_size, config.ray.num_workers))
            if key in checked:
                continue
            checked.add(key)
            if sweep.spec.metric.startswith("eval/") and not has_test_split(config.eval_paths):
                raise ConfigError(f"metric {sweep.spec.metric!r} needs a test split, and "
                                  f"{config.eval_paths} has none; use a train/ metric")
    except DatasetError as error:
        raise ConfigError(str(error)) from None
    recipe = build(TrainConfig, with_resources(sweep.base_data, sweep.spec.resources), "base")
    data = check_inputs(as_trial(recipe)).model_dump(mode="json")
    data["run_name"] = None
    # the recipe's own storage, as a fresh run of the winner (compare --best-config) uses it
    location = recipe.ray.storage_path
    data["ray"]["storage_path"] = location if storage.is_uri(location) else os.path.abspath(os.path.expanduser(location))
    return data


class SearchedASHA(ResumableASHA):
    """ResumableASHA for a searched sweep, whose trials are added one at a time as the searcher
    proposes them (a grid sweep's are all added in Tune's first step, before its first save).

    Tune saves its experiment state (the searcher's with it) every ~10 s: a driver killed
    between a trial's proposal and the next save leaves a trial the saved state does not know,
    and the resumed searcher proposes that point again as a new trial. So a new trial forces
    the save at the end of the step that added it, and its `trial` record waits for its first
    result (or its end), which comes after that save: the records never list a trial the
    resumed sweep would not know."""

    def __init__(self, sweep_dir: str, **kwargs: Any):
        super().__init__(sweep_dir, **kwargs)
        self._unrecorded: dict[str, dict[str, Any]] = {}  # trial id -> its `trial` record, not yet written

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_unrecorded": {}}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self._histories():
            super().on_trial_add(tune_controller, trial)  # a restored trial: its results rebuild the rungs
        else:
            AsyncHyperBandScheduler.on_trial_add(self, tune_controller, trial)
            self._unrecorded[trial.trial_id] = trial_record(trial.trial_id, None, trial_params(trial.config))
        # The flag Tune itself sets to force the next save (after num_to_keep trial checkpoints);
        # schedulers see the controller through a wrapper, the controller is its _tune_controller.
        manager = getattr(getattr(tune_controller, "_tune_controller", None), "_checkpoint_manager", None)
        if manager is not None and hasattr(manager, "_should_force_sync_up"):
            manager._should_force_sync_up = True

    def _record_trial(self, trial: Any) -> None:
        record = self._unrecorded.pop(trial.trial_id, None)
        if record is not None:
            append_record(self.sweep_dir, record)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._record_trial(trial)
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._record_trial(trial)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._record_trial(trial)
        super().on_trial_error(tune_controller, trial)


def max_t_of(sweep: Sweep, base: TrainConfig) -> int:
    asha = sweep.spec.asha
    if asha.max_t is not None:
        return asha.max_t
    return base.epochs if asha.time_attr == "epoch" else base.epochs // (base.eval_interval or base.epochs)


def concurrent_trials(sweep: Sweep, base: TrainConfig) -> int:
    """As many trials as the cluster's CPUs and GPUs hold (trainable + workers each)."""
    import ray

    if sweep.spec.max_concurrent_trials is not None:
        return sweep.spec.max_concurrent_trials
    resources = ray.cluster_resources()
    per_worker = dict(base.ray.resources_per_worker)
    cpu = sweep.spec.resources.trial_cpu + base.ray.num_workers * per_worker.get("CPU", 1.0)
    fits = int(resources.get("CPU", 1) // cpu)
    gpu = base.ray.num_workers * per_worker.get("GPU", 1.0 if base.ray.use_gpu else 0.0)
    if gpu:
        fits = min(fits, int(resources.get("GPU", 0) // gpu))
    if fits < 1:
        need = f"{cpu:g} CPUs" + (f" and {gpu:g} GPUs" if gpu else "")
        have = f"{resources.get('CPU', 0):g} CPUs" + (f" and {resources.get('GPU', 0):g} GPUs" if gpu else "")
        raise SweepError(f"one trial needs {need} but the cluster has {have}; "
                         f"lower resources.workers / cpus_per_worker")
    return fits


def finished_results(sweep_dir: str) -> dict[str, dict[str, Any]]:
    """Trials the records say are done (complete or stopped by ASHA) -> their last result."""
    finished = {}
    for trial_id, history in trial_histories(read_records(sweep_dir)).items():
        if history.status in ("complete", "stopped") and history.results:
            last = history.results[-1]
            finished[trial_id] = result_values(last)
    return finished


def run_sweep(sweep: Sweep, trials: list[dict[str, Any]], *, resume: bool = False, address: Optional[str] = None,
              log: Callable[[str], None] = print) -> str:
    """Run (or with resume=True continue) the sweep; returns its folder."""
    import ray
    from ray import tune

    from trm_ray.cluster import connect, starts_local_instance

    spec = sweep.spec
    sweep_dir = sweep.directory()
    every_s = progress_every_s()  # a bad setting is an error before anything is written
    try:
        # Before any Ray process: a missing bucket or refused credentials is one line now, not
        # a trial error minutes later.
        storage.check_writable(sweep_dir)
        started_before = sweep_started(sweep_dir)
        experiment_path, filesystem = storage.ray_storage(sweep_dir)
        root_path, _ = storage.ray_storage(sweep.storage_root())
    except storage.StorageError as error:
        raise SweepError(_storage_problem(sweep, error)) from None
    searcher = None
    if spec.searcher:
        # Its library missing is one line now, not an error inside Tune; Tuner.restore brings
        # back the searcher the sweep started with, but unpickling it needs the library too.
        searcher = build_searcher(spec.search_config(), searched_space(sweep), metric=spec.metric, mode=spec.mode,
                                  max_concurrent=1)
    trial_base = check_trials(sweep, trials)  # a searched sweep: the points check_points gives
    info = sweep_info(sweep, trials, trial_base)
    if resume:
        if not started_before or not tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
            raise SweepError(f"--resume: no sweep to continue in {sweep_dir}; run it without --resume")
        saved = read_sweep_info(sweep_dir)
        compared = ("search", "search_space") if spec.searcher else ("trials",)
        if any(saved.get(key) != info[key] for key in compared):
            what = "another search or search space" if spec.searcher else "other trials"
            raise SweepError(f"{sweep.source} changed since the sweep in {sweep_dir} started ({what}): "
                             f"resume with the file it started with, or set a new name:")
    elif started_before:
        raise SweepError(f"sweep folder {sweep_dir} already exists: continue it with --resume, "
                         f"or give the sweep another name:")
    else:
        forget_records(sweep_dir)
    write_sweep_info(sweep_dir, info)

    base = build(TrainConfig, trial_base, "base")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    own_instance = starts_local_instance(address or base.ray.address)
    started = connect(address or base.ray.address)
    time_attr = EPOCH_KEY if spec.asha.time_attr == "epoch" else EVAL_ROUND_KEY
    try:
        scheduler = (SearchedASHA if spec.searcher else ResumableASHA)(
            sweep_dir, time_attr=time_attr,
            metric=spec.metric, mode=spec.mode, max_t=max_t_of(sweep, base),
            grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor,
            early_stopping=spec.asha.enabled)
        context = {"trial_base": trial_base, "sweep_dir": sweep_dir, "sweep_name": sweep.name,
                   "storage_env": storage.endpoint_env(), "trial_env": trial_env(os.environ, own_instance)}
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                        {"cpu": spec.resources.trial_cpu})
        if resume:
            finished = finished_results(sweep_dir)
            total = spec.search_config().num_samples if spec.searcher else len(trials)
            log(f"trm-ray: resuming sweep {sweep.name} in {sweep_dir} ({len(finished)} of {total} trials finished)")
            trainable = tune.with_resources(
                tune.with_parameters(run_trial, context={**context, "finished": finished}),
                {"cpu": spec.resources.trial_cpu})
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=filesystem)
        else:
            concurrency = concurrent_trials(sweep, base)
            if searcher is not None:
                search = spec.search_config()
                log(f"trm-ray: sweep {sweep.name}: {search.num_samples} trials proposed by {search.algorithm}, "
                    f"up to {concurrency} at once -> {sweep_dir}")
                searcher.set_max_concurrency(concurrency)
                # metric/mode: the searcher's and the scheduler's, both the sweep's
                param_space = trial_space(searched_space(sweep))
                tune_config = tune.TuneConfig(scheduler=scheduler, search_alg=searcher, num_samples=search.num_samples)
            else:
                log(f"trm-ray: sweep {sweep.name}: {len(trials)} trials, up to {concurrency} at once -> {sweep_dir}")
                param_space = {"trial": tune.grid_search([{"index": i, "params": p} for i, p in enumerate(trials)])}
                tune_config = tune.TuneConfig(scheduler=scheduler,  # metric/mode: the scheduler's
                                              num_samples=1, max_concurrent_trials=concurrency)
            tuner = tune.Tuner(
                trainable, param_space=param_space, tune_config=tune_config,
                run_config=tune.RunConfig(name=sweep.name, storage_path=root_path, storage_filesystem=filesystem,
                                          # Tune's own tables and result boxes off: TrialConsole
                                          # prints one line per trial event.
                                          verbose=0, callbacks=[TrialConsole(
                                              spec.metric, max_t_of(sweep, base), time_attr, log,
                                              TrialProgress(context, every_s, log))],
                                          failure_config=tune.FailureConfig(max_failures=0)),
            )
        with _tune_output_off():
            results = tuner.fit()
        upload_records(sweep_dir)  # the upload after the last record may have failed: retry it once more
        record_outcomes_in_wandb(sweep_dir, context, log)
        if results.errors:
            failed = [r.path.rstrip("/").rsplit("/", 1)[-1] for r in results if r.error is not None]
            raise SweepError(f"{len(failed)} trial(s) failed ({', '.join(failed[:5])}); their errors are above and "
                             f"in {sweep_dir}/<trial>/error.txt. `trm-ray sweep {sweep.source} --resume` retries them")
    except BaseException:
        # What this driver recorded before failing is what --resume replays (on any machine).
        with contextlib.suppress(OSError):
            upload_records(sweep_dir)
        raise
    finally:
        if started:
            ray.shutdown()
    return sweep_dir


@contextlib.contextmanager
def _tune_output_off():
    """Tune's own console output off for tuner.fit(): RunConfig(verbose=0) silences Tune's
    older output engine entirely, but the default one still prints its experiment box
    whatever the verbosity, so the older one is chosen (RAY_AIR_NEW_OUTPUT=0, read by Tune
    at fit) unless the user set that variable. Trial errors are still logged by Tune."""
    key = "RAY_AIR_NEW_OUTPUT"
    chosen = key not in os.environ
    if chosen:
        os.environ[key] = "0"
    try:
        yield
    finally:
        if chosen:
            os.environ.pop(key, None)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def trial_started_line(trial_id: str, params: dict[str, Any]) -> str:
    values = " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                      for key, value in params.items())
    return f"trm-ray: trial {trial_id} started: {values or '(base recipe)'}"


def trial_result_line(trial_id: str, result: dict[str, Any], metric: str, stopped: bool) -> str:
    """One evaluation of a trial and ASHA's decision on it."""
    epoch = result.get(EPOCH_KEY)
    value = result.get(metric)
    where = f"epoch {epoch}" if epoch is not None else f"result {result.get('training_iteration', '?')}"
    decision = "ASHA stops it" if stopped else "continues"
    return f"trm-ray: trial {trial_id} {where}: {metric} {_number(value) if value is not None else '?'} -> {decision}"


def trial_end_line(trial_id: str, last: Optional[dict[str, Any]], metric: str, stopped_early: bool = False,
                   error: Optional[str] = None) -> str:
    """A trial's end: failed, stopped early by ASHA, or completed; its last result."""
    if error is not None:
        return f"trm-ray: trial {trial_id} failed: see {error}"
    last = last or {}
    value = last.get(metric)
    score = f"{metric} {_number(value)}" if value is not None else "no evaluation"
    how = "stopped early by ASHA" if stopped_early else "completed"
    return f"trm-ray: trial {trial_id} {how} at epoch {last.get(EPOCH_KEY, '?')} ({score})"


def trial_progress_line(trial_id: str, report: dict[str, Any], total_steps: int, global_batch_size: int) -> str:
    """A running trial between evaluations: its latest train report, the share of its planned
    steps done, and the time the rest takes at the report's speed."""
    step = int(report[STEP_KEY])
    samples_per_s = report.get(SAMPLES_PER_S_KEY) or 0.0
    eta = (total_steps - step) * global_batch_size / samples_per_s if samples_per_s > 0 else math.inf
    shown = [f"{key} {report[key]:.4f}" for key in PROGRESS_METRICS if isinstance(report.get(key), (int, float))]
    return (f"trm-ray: trial {trial_id} step {step}/{total_steps} ({100 * step / max(total_steps, 1):.0f}%): "
            f"{', '.join(shown + [f'{samples_per_s:.0f} samples/s'])} | ETA {format_duration(eta)}")


def latest_train_report(run_dir: str) -> Optional[dict[str, Any]]:
    """The last train report in the run's metrics.jsonl, None before the first. Read quietly: a
    line the trial is writing right now is not a damaged file."""
    text = whole_lines(storage.read_text(storage.join(run_dir, METRICS_FILE)))
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and SAMPLES_PER_S_KEY in record and STEP_KEY in record:
                return record
    return None


class TrialProgress:
    """Between a trial's evaluations, which can be hours apart at paper scale: every `every_s`
    seconds, a line per running trial with a train report newer than the one shown last
    (trial_progress_line), read from the trial's metrics.jsonl (its workers print nothing of
    their own in a sweep)."""

    def __init__(self, context: dict[str, Any], every_s: float, log: Callable[[str], None] = print):
        self.context, self.every_s, self.log = context, every_s, log
        self.next_at: Optional[float] = None  # wall clock: the callback is pickled with the sweep's state
        self.plans: dict[str, tuple[str, int, int]] = {}  # trial id -> (run folder, planned steps, batch)
        self.shown: dict[str, int] = {}  # trial id -> the step of its last line

    def __call__(self, trials: list) -> None:
        now = time.time()
        if self.next_at is None:
            self.next_at = now + self.every_s
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        for trial in trials:
            if trial.status != "RUNNING":
                continue
            try:
                run_dir, total, batch = self._plan(trial)
                report = latest_train_report(run_dir)
            except (OSError, ValueError, ConfigError):  # no report yet, or a folder not reachable now
                continue
            if report is not None and self.shown.get(trial.trial_id) != report[STEP_KEY]:
                self.shown[trial.trial_id] = report[STEP_KEY]
                self.log(trial_progress_line(trial.trial_id, report, total, batch))

    def _plan(self, trial: Any) -> tuple[str, int, int]:
        if trial.trial_id not in self.plans:
            config = trial_train_config(self.context, trial.trial_id, trial_params(trial.config))
            self.plans[trial.trial_id] = (run_dir_of(config), planned_steps(config), config.global_batch_size)
        return self.plans[trial.trial_id]


def planned_steps(config: TrainConfig) -> int:
    """The steps of the run's lr schedule, as its training loop counts them. A dataset at a URI
    (the driver stages none) is read from its train/dataset.json in the store."""
    from trm_ray.data.layout import METADATA_FILE, DatasetMetadata, load_metadata, merge_metadata
    from trm_ray.optim import total_train_steps

    def metadata(path: str) -> DatasetMetadata:
        if not storage.is_uri(path):
            return load_metadata(path, "train")
        return DatasetMetadata.model_validate_json(storage.read_text(storage.join(path, "train", METADATA_FILE)))

    meta = merge_metadata([metadata(path) for path in config.data_paths])
    return total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples, config.global_batch_size)


def progress_every_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between a sweep's progress lines: TRM_RAY_PROGRESS_EVERY_S, else 5 minutes."""
    value = environ.get(PROGRESS_EVERY_ENV)
    try:
        return float(value) if value else DEFAULT_PROGRESS_EVERY_S
    except ValueError:
        raise SweepError(f"{PROGRESS_EVERY_ENV}={value!r} is not a number of seconds: "
                         f"set it to e.g. 60, or unset it for every {DEFAULT_PROGRESS_EVERY_S:.0f} s") from None


class TrialConsole(Callback):
    """The sweep's console: a line when a trial starts, at each of its evaluations (with
    ASHA's decision: Tune calls callbacks after the scheduler, and marks a result it stops on
    done) and when it ends, and a TrialProgress line now and then in between. Replaces Tune's
    own reporter (RunConfig verbose=0)."""

    def __init__(self, metric: str, max_t: int, time_attr: str, log: Callable[[str], None] = print,
                 progress: Optional[TrialProgress] = None):
        self.metric, self.max_t, self.time_attr, self.log = metric, max_t, time_attr, log
        self.progress = progress
        self.last: dict[str, tuple[dict[str, Any], bool]] = {}  # trial id -> (last result, ASHA stopped it)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # getattr: a sweep started by an older trm-ray is resumed with its own pickled console
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.log(trial_started_line(trial.trial_id, trial_params(trial.config)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(REPLAYED_KEY):
            return  # a finished trial handed back after a driver restart: said when it finished
        stopped = bool(result.get("done"))
        time = result.get(self.time_attr)
        if stopped and isinstance(time, (int, float)) and time >= self.max_t:
            stopped = False  # its last evaluation: it completes, ASHA did not stop it
        self.last[trial.trial_id] = (result, stopped)
        self.log(trial_result_line(trial.trial_id, result, self.metric, stopped))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last, stopped = self.last.pop(trial.trial_id, None) or (getattr(trial, "last_result", None), False)
        self.log(trial_end_line(trial.trial_id, last, self.metric, stopped))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        where = getattr(trial, "error_file", None) or getattr(trial, "path", None) or "the sweep folder"
        self.last.pop(trial.trial_id, None)
        self.log(trial_end_line(trial.trial_id, None, self.metric, error=str(where)))


def record_outcomes_in_wandb(sweep_dir: str, context: dict[str, Any], log: Callable[[str], None] = print) -> int:
    """ASHA's decision on every finished trial (records.trial_outcome: tune/stopped_early, the
    epoch it stopped at, ...) added to the summary of the trial's W&B run, which ended before
    the driver learnt it; the trial's recorded results complete that summary (a trial ASHA
    stops is killed before its W&B run is finished). Returns how many runs were updated."""
    from trm_ray.tracking import add_to_summary

    updated = 0
    for trial_id, history in trial_histories(read_records(sweep_dir)).items():
        outcome = trial_outcome(history)
        if outcome is None:
            continue
        config = trial_train_config(context, trial_id, history.params)
        results = sorted(history.results, key=lambda r: r.get("epoch") or 0)
        try:
            updated += add_to_summary(config, run_dir_of(config), outcome, results=results)
        except OSError as error:  # the trial's folder unreadable: its W&B run only lacks the outcome
            log(f"trm-ray: W&B: trial {trial_id}: outcome not recorded: {first_line(error)}")
    if updated:
        log(f"trm-ray: W&B: ASHA's decisions added to the summaries of {updated} trial run(s)")
    return updated


def _storage_problem(sweep: Sweep, error: OSError) -> str:
    """One line: the sweep folder and the setting it comes from, what is wrong, what to do."""
    text = str(error)
    location, _, detail = text.partition(": ")
    if location.startswith(sweep.storage_root()) and detail:
        text = detail  # the probe object's or folder's own name adds nothing
    origin = "the sweep's storage_path" if sweep.spec.storage_path else "the base recipe's ray.storage_path"
    return f"sweep folder {sweep.directory()} (from {origin}): {text}"

