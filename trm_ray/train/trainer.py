"""The Ray Train wrapper: the per-worker loop (trm_ray.train.loop) under a TorchTrainer.

    from trm_ray.train.trainer import check_inputs, fit
    config = check_inputs(load_train_config("experiments/quickstart.yaml"))   # fails fast, no Ray
    result = fit(config)            # local Ray unless ray.address / RAY_ADDRESS names a cluster
    result.final, result.best, result.run_dir

Ray only prepares (process group, threads, device), reports and checkpoints; the loop is the
same function that runs in one process. The run folder <ray.storage_path>/<run_name>/ is
described in trm_ray/run_folder.py (here the controller writes its metrics.jsonl, and W&B its
wandb/ files). Kept checkpoints: the `checkpoint.num_to_keep` best by eval/exact_accuracy (a text run: the lowest text/val_loss), and the latest
always (Ray never deletes the latest one), so best and last both survive.

ray.storage_path may be an object-store URI (s3://bucket/runs): the run folder, checkpoints
and metrics then live only there (trm_ray.storage), and every question about the folder
(does it exist, which checkpoints are kept) is asked of the store.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from trm_ray import storage
from trm_ray.config import ConfigError, TrainConfig, to_yaml
from trm_ray.data.layout import METADATA_FILE, DatasetError, has_test_split, load_metadata
from trm_ray.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    STEP_KEY,
    TrainRunResult,
    append_metrics,
    checkpoint_dir_name,
    run_dir_of,
    run_started,
    score_for,
    summarize,
)
from trm_ray.storage import is_uri
from trm_ray.train.loop import FAULT_ENV, build_evaluators, train

# Environment variables the workers get from the driver (dataset cache, test hooks).
FORWARDED_ENV = ("TRM_RAY_CACHE", FAULT_ENV, "WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_BASE_URL",
                 "WANDB_SILENT", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRM_RAY_SWEEP_TRIAL", "TRACKIO_DIR")  # HF_TOKEN: a node's own, like cloud keys
# Each ray.train.report waits for one controller poll (2 s by default): 0.5 s keeps periodic
# train reports cheap without loading the controller. A value the user sets wins.
DEFAULT_HEALTH_CHECK_INTERVAL_S = "0.5"
# Train metrics are reported about once a minute (each report is a barrier); this sets a
# fixed number of steps instead (e.g. 1 in tests, to see every step in metrics.jsonl).
REPORT_EVERY_STEPS_ENV = "TRM_RAY_REPORT_EVERY_STEPS"
# Ray Train helpers that a local instance started by fit() has no use for (see fit()).
LOCAL_RAY_TRAIN_OFF = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED")


# --------------------------------------------------------------------------------------------
# Before Ray: resolve paths and fail fast on user errors
# --------------------------------------------------------------------------------------------
def _absolute(path: str) -> str:
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def _check_remote_dataset(path: str, split: str) -> None:
    """A dataset URI must hold <split>/dataset.json: one line now instead of a failure in every worker."""
    marker = storage.join(path, split, METADATA_FILE)
    try:
        found = storage.is_file(marker)
    except storage.StorageError as error:
        raise DatasetError(f"dataset {path!r}: {error}") from None
    if not found:
        raise DatasetError(f"dataset {path!r} has no {split}/{METADATA_FILE}: build it there with "
                           f"`trm-ray data build RECIPE --output-dir {path}`, or fix the data path")


def check_storage(location: str) -> None:
    """ray.storage_path must be writable (a URI: a probe object is written and removed), so a
    missing bucket, refused credentials or an unreachable endpoint is one line before Ray starts."""
    try:
        storage.check_writable(location)
    except storage.StorageError as error:
        # the message names the probe object; the user knows the storage path
        reason = str(error).split(": ", 1)[-1]
        raise ConfigError(f"ray.storage_path={location}: {reason}") from None


def check_inputs(config: TrainConfig) -> TrainConfig:
    """Absolute local paths (workers may run elsewhere) and one-line errors for what a user
    can get wrong, before any Ray process starts. Raises ConfigError / DatasetError."""
    if not config.data_paths:
        raise ConfigError("data_paths is empty: name the dataset folder(s), e.g. data_paths=[data/sudoku-4x4-quickstart]")
    update: dict[str, Any] = {
        "data_paths": [_absolute(p) for p in config.data_paths],
        "data_paths_test": [_absolute(p) for p in config.data_paths_test],
        "ray": config.ray.model_copy(update={"storage_path": _absolute(config.ray.storage_path)}),
    }
    from trm_ray import hub

    if config.load_checkpoint and hub.is_hub_path(config.load_checkpoint):
        # Fetched now (a missing one fails before Ray starts) and pinned to the commit fetched,
        # so every worker loads the same weights and the run's config.yaml records which.
        try:
            update["load_checkpoint"] = hub.pinned_uri(config.load_checkpoint)
        except hub.HubCheckpointError as error:
            raise ConfigError(f"load_checkpoint={config.load_checkpoint!r}: {error.reason}") from None
    elif config.load_checkpoint:
        update["load_checkpoint"] = _absolute(config.load_checkpoint)
        try:
            found = storage.exists(update["load_checkpoint"])
        except storage.StorageError as error:
            raise ConfigError(f"load_checkpoint={config.load_checkpoint!r}: {error}") from None
        if not found:
            raise ConfigError(f"load_checkpoint={config.load_checkpoint!r} does not exist")
    config = config.model_copy(update=update)
    config = TrainConfig.model_validate(config.model_dump())  # re-validate the copy
    for path in config.data_paths:
        if is_uri(path):
            _check_remote_dataset(path, "train")
        else:
            load_metadata(path, "train")  # DatasetError names the folder and how to build it
    for path in config.data_paths_test:
        if is_uri(path):
            _check_remote_dataset(path, "test")
        else:
            load_metadata(path, "test")
    from trm_ray.text.info import check_text_task

    check_text_task(config)  # a text dataset needs arch.causal and one tokenizer
    if config.evaluators and has_test_split(config.eval_paths):
        build_evaluators(config)  # unknown evaluator names fail here, not in the workers
    if not any(is_uri(p) for p in config.data_paths):
        from trm_ray.data.loader import PuzzleLoader

        PuzzleLoader.from_config(config, "train")  # too few examples for one batch, mismatched sets, ...
    check_storage(config.ray.storage_path)
    return config


# --------------------------------------------------------------------------------------------
# Inside the workers
# --------------------------------------------------------------------------------------------
class RaySession:
    """The loop's runner under Ray Train: resume from get_checkpoint(), report to Ray."""

    def __init__(self, run_dir: Optional[str], async_upload: bool = True):
        self.run_dir = run_dir
        # Only uploads to object storage are slow enough to be worth a background upload; a
        # local (or mounted) storage path keeps the synchronous copy, whose checkpoint is
        # registered by the time report() returns, so a failure right after still resumes from it.
        self.async_upload = async_upload and run_dir is not None and storage.is_uri(run_dir)

    @contextlib.contextmanager
    def resume_checkpoint(self) -> Iterator[Optional[Path]]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # Ray Train: the latest checkpoint, after a restart or --resume
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        """With object storage, checkpoints upload in the background (Ray's ASYNC mode): at
        ARC size a synchronous upload stalls every rank at the report barrier for seconds
        (benchmarks/storage.py measures it). Ray deletes the folder once it is stored, while
        the loop may delete the folder it passed as soon as this returns, so Ray gets it
        under another name (a rename beside it: same filesystem, no copy). Reports without a
        checkpoint are ASYNC too: reports reach the controller in call order, and a SYNC one
        would wait for the pending upload."""
        import ray.train

        _exit_quietly_if_interrupted()  # after the tracker's own exit handler (see there)
        checkpoint = None
        if checkpoint_dir is not None:
            if self.async_upload:
                owned = checkpoint_dir.with_name(f"{checkpoint_dir.name}-upload")
                os.rename(checkpoint_dir, owned)
                checkpoint_dir = owned
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        mode = ray.train.CheckpointUploadMode.ASYNC if self.async_upload else ray.train.CheckpointUploadMode.SYNC
        # Ray Train: report metrics + checkpoint
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=checkpoint_dir_name(int(metrics[STEP_KEY])),
                         checkpoint_upload_mode=mode)


def _quiet_report_logging() -> None:
    """Ray Train 2.60 logs every report's whole metrics dict at INFO, on every rank, through a
    logger named by its source file's path: outside the `ray.train` loggers that RunConfig's
    LoggingConfig sets, so it floods the console. Progress lines are the loop's own."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: nothing of ours to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


_TRAINING_THREADS: list[threading.Thread] = []


def _exit_quietly_if_interrupted() -> None:
    """Called where a Ray Train worker starts training, in its training thread (a daemon one).

    When a worker process is told to exit mid-run (Tune stops a trial: its Train controller
    dies, and with it the workers it owns), Python finalizes while the training thread is still
    inside torch. Python 3.11-3.13 end such a daemon thread with pthread_exit when it next takes
    the GIL; the unwind hits a C++ frame of torch that cannot unwind (noexcept), std::terminate
    aborts the process and Ray prints a ~100-line C++ and Python stack for an ordinary stop.
    This exit handler (run before Python finalizes, after the non-daemon threads are joined)
    ends such a process at once, after flushing its output, so the thread is never unwound.
    A run whose training thread has returned finalizes as usual.

    Called again at every report: atexit runs the last registered handler first, and this one
    must come before W&B's own teardown (registered when rank 0's tracker starts), which fails
    with a traceback once the process is told to exit mid-run and W&B's service is gone."""
    thread = threading.current_thread()
    if thread is threading.main_thread() or not thread.daemon:
        return
    if thread not in _TRAINING_THREADS:
        _TRAINING_THREADS.append(thread)
    atexit.unregister(_end_if_training)
    atexit.register(_end_if_training)


def _end_if_training() -> None:
    if any(thread.is_alive() for thread in _TRAINING_THREADS):
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # a closed or replaced stream: nothing left to flush there
                pass
        os._exit(0)


def worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: set threads and device, then the plain loop."""
    import ray.train
    import torch

    config = TrainConfig.model_validate(loop_config["config"])
    _exit_quietly_if_interrupted()
    _quiet_report_logging()
    torch.set_num_threads(loop_config["threads_per_worker"])
    device = None
    if config.ray.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()  # Ray Train: this worker's GPU
        if device.type == "cuda":
            torch.cuda.set_device(device)
    train(config, RaySession(loop_config["run_dir"], config.checkpoint.async_upload), device=device,
          report_every_s=loop_config["report_every_s"], report_every_steps=loop_config["report_every_steps"])


# --------------------------------------------------------------------------------------------
# The controller side: our metrics file
# --------------------------------------------------------------------------------------------
def _metrics_file_callback(run_dir: str):
    import ray.train

    class MetricsFile(ray.train.UserCallback):
        """Appends every report (rank 0's metrics, plus the checkpoint folder name) to
        <run_dir>/metrics.jsonl. Ray Train V2 writes no result.json/progress.csv of its own."""

        def __init__(self, run_dir: str):
            self.run_dir = run_dir
            # The controller runs in a Ray worker process of the driver's node, whose environment
            # is the one Ray started with (a cluster started before the user exported
            # AWS_ENDPOINT_URL lacks it): carry where the store is, never a credential.
            self.endpoint_env = storage.endpoint_env()

        def after_report(self, run_context, metrics, checkpoint) -> None:
            for key, value in self.endpoint_env.items():
                os.environ.setdefault(key, value)
            record = dict(metrics[0]) if metrics else {}
            if checkpoint is not None:
                record["checkpoint"] = storage.name_of(checkpoint.path)
            append_metrics(storage.join(self.run_dir, METRICS_FILE), record)

    return MetricsFile(run_dir)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
def forwarded_env() -> dict[str, str]:
    """What processes started elsewhere on the cluster need from this one's environment: the
    object store's endpoint and FORWARDED_ENV; their credentials come from their own
    environment or role, never through Ray."""
    return {**storage.endpoint_env(), **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}


def ensure_ray(address: Optional[str]) -> bool:
    """Join the cluster `address` names (trm_ray.cluster.cluster_address), else start a local
    Ray. True when this call initialized Ray (the caller shuts it down)."""
    from trm_ray.cluster import connect

    # Not a bare ray.init(): see trm_ray.cluster (stopped runs must free their placement
    # groups even with another local Ray instance on the host).
    return connect(address)


def worker_cpus(config: TrainConfig, node_cpus: Optional[float]) -> tuple[Optional[dict[str, float]], int]:
    """(resources_per_worker for Ray, torch threads per worker).

    node_cpus: the CPUs of a local Ray instance this run started itself (the node is the
    run's alone), None on a cluster that was already up. A CPU count the user set is used as
    it is, threads following it unless ray.threads_per_worker says otherwise. Without one, on
    the run's own local instance the workers share the node's CPUs: one worker gets them all,
    as the same loop in a plain process would use them (with 1 CPU it ran ~1.5x slower per
    step on a 2-core machine). Claiming them cannot starve anything: Ray Train's controller
    actor asks for no CPU, and the loop starts no Ray tasks of its own. On a cluster that was
    already up (an address, or a sweep's trial inside Tune), other runs and trials share the
    CPUs and were sized for Ray's default of 1 CPU per worker
    (trm_ray.tune.driver.concurrent_trials), so that default stays, with threads to match:
    more threads than claimed CPUs would oversubscribe the node.
    """
    resources = dict(config.ray.resources_per_worker)
    if "CPU" not in resources and node_cpus is not None:
        resources["CPU"] = float(max(1, int(node_cpus // config.ray.num_workers)))
    cpus_per_worker = resources.get("CPU", 1)
    threads = config.ray.threads_per_worker or max(1, int(cpus_per_worker))
    return resources or None, threads


def local_ray_train_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment for Ray Train on a local instance the run started: no node can be preempted
    and nobody scrapes Ray Train's Prometheus metrics, so both helpers only take start-up time
    and CPU from the worker (Ray passes these variables on to the controller and the workers).
    A value the user set wins."""
    return {key: "0" for key in LOCAL_RAY_TRAIN_OFF if key not in environ}


def fit(config: TrainConfig, *, address: Optional[str] = None, resume: bool = False,
        report_every_s: float = 60.0, report_every_steps: Optional[int] = None,
        callbacks: Sequence[Any] = ()) -> TrainRunResult:
    """Train `config` with a TorchTrainer (config should come through check_inputs).

    resume=False refuses an existing run folder (Ray would silently continue it);
    resume=True continues it from its latest checkpoint: the same RunConfig(name, storage_path).
    callbacks: more ray.train.UserCallbacks (e.g. a sweep's TuneReportCallback), run after the
    one that writes metrics.jsonl."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trm_ray.cluster import starts_local_instance

    if not config.run_name:
        raise ConfigError("run_name is not set (the CLI generates one)")
    run_dir = run_dir_of(config)
    try:
        started_before = run_started(run_dir)
        if started_before and not resume:
            raise ConfigError(f"run folder {run_dir} already exists: continue it with --resume {run_dir}, "
                              f"or choose another run_name=")
        if resume and not started_before:
            raise ConfigError(f"--resume {run_dir}: no run there (no {CONFIG_FILE})")
        storage.write_text(storage.join(run_dir, CONFIG_FILE), to_yaml(config))
        storage_path, storage_filesystem = storage.ray_storage(config.ray.storage_path)
    except storage.StorageError as error:  # the store refused or cannot be reached: before any Ray process
        raise ConfigError(f"ray.storage_path={config.ray.storage_path}: {error}") from None

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    if report_every_steps is None and os.environ.get(REPORT_EVERY_STEPS_ENV):
        report_every_steps = int(os.environ[REPORT_EVERY_STEPS_ENV])
    # A cluster that was already up (a submitted job, a `ray up` head node) is shared and its
    # nodes can be preempted; only a local instance this run starts is the run's alone.
    own_instance = starts_local_instance(address or config.ray.address)
    started = ensure_ray(address or config.ray.address)
    local_env = local_ray_train_env(os.environ) if own_instance else {}
    os.environ.update(local_env)
    try:
        resources, threads = worker_cpus(config, ray.cluster_resources().get("CPU", 1.0) if own_instance else None)
        evaluates = has_test_split(config.eval_paths)
        score = score_for(config)  # exact accuracy, or a text run's validation loss
        checkpoint_config = ray.train.CheckpointConfig(
            num_to_keep=config.checkpoint.num_to_keep,
            checkpoint_score_attribute=score.key if evaluates else None,
            checkpoint_score_order=score.mode,
        )
        # Workers on other nodes need to know where the object store is; their credentials
        # come from their own environment or role, never through Ray.
        env = forwarded_env()
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"config": config.model_dump(mode="json"), "run_dir": run_dir,
                               "threads_per_worker": threads, "report_every_s": report_every_s,
                               "report_every_steps": report_every_steps},
            torch_config=TorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=config.run_name,
                storage_path=storage_path,
                storage_filesystem=storage_filesystem,
                checkpoint_config=checkpoint_config,
                failure_config=ray.train.FailureConfig(max_failures=config.ray.max_failures),
                callbacks=[_metrics_file_callback(run_dir), *callbacks],
                worker_runtime_env={"env_vars": env} if env else None,
                # Ray Train logs every report's whole metrics dict at INFO; progress is ours.
                logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            ),
        )
        trainer.fit()
    finally:
        for key in local_env:
            os.environ.pop(key, None)
        if started:
            ray.shutdown()
    return summarize(run_dir)
