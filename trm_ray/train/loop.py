"""The per-worker training loop: plain torch.distributed, the same in one process and under Ray.

    from trm_ray.train.loop import train, LocalSession
    final = train(config, LocalSession("runs/my-run"))     # one process, no Ray
    # under Ray Train, trm_ray.train.trainer runs the same function with a RaySession

What it does, as the reference's pretrain.py (TRM_SPEC 6, 8, 9):
    loader = the train split, epochs_per_iter = eval_interval (one iteration = one eval interval)
    state  = create_train_state(...)   (+ load_checkpoint weights, or resume from a checkpoint)
    for iteration in range(epochs // eval_interval):
        for batch in loader: train_step(state, batch)           report train metrics now and then
        evaluate (EMA weights when ema=true), unless iteration < min_eval_interval
        checkpoint + report                                      every rank reports (a barrier)

A runner (`Session`) supplies three things: where to resume from, how to report metrics and a
checkpoint folder, and where the run's files go. Everything else here is plain PyTorch.

A checkpoint folder holds
    model.pt + all_config.yaml   the reference's format (EMA weights when ema=true): loads in the
                                 reference code, in `trm_ray.load_checkpoint`, in `load_checkpoint=`
    train_state.pt               what a resumed run needs to continue the same curve: live weights,
                                 EMA shadow, both optimizers, step, loader position, config,
                                 dataset fingerprint; plain tensors/dicts (weights_only=True loads it)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ContextManager, Iterator, Optional, Protocol

import torch
import torch.distributed as dist

from trm_ray import storage
from trm_ray.checkpoint import MODEL_FILE, load_weights_into, read_state_dict, save_checkpoint
from trm_ray.config import ConfigError, DataShape, TrainConfig
from trm_ray.data.layout import METADATA_FILE, dataset_fingerprint, metadata_path
from trm_ray.data.loader import PuzzleLoader, is_uri
from trm_ray.ema import EMA
from trm_ray.optim import total_train_steps
from trm_ray.run_folder import (
    EPOCH_KEY,
    EVAL_METRIC,
    METRICS_FILE,
    NO_EVAL_SCORE,
    NUM_PARAMETERS_KEY,
    SAMPLES_PER_S_KEY,
    STEP_KEY,
    append_metrics,
    checkpoint_dir_name,
)
from trm_ray.tracking import NullTracker, Tracker, create_tracker
from trm_ray.train.progress import Averager, Progress
from trm_ray.train.step import TrainState, create_train_state, distributed_world, train_step

TRAIN_STATE_FILE = "train_state.pt"
TRAIN_STATE_VERSION = 1
# Test hook (fault tolerance): "STEP:RANK:MARKER_FILE" makes RANK os._exit at STEP, once
# (the marker file records that it happened, so the restarted worker carries on).
FAULT_ENV = "TRM_RAY_FAULT_AT_STEP"


# --------------------------------------------------------------------------------------------
# Sessions: what the runner provides
# --------------------------------------------------------------------------------------------
class Session(Protocol):
    run_dir: Optional[str]  # the run folder (metrics file, W&B files); None: nowhere

    def resume_checkpoint(self) -> ContextManager[Optional[Path]]:
        """A local folder of the checkpoint to resume from (None: start fresh)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        """Called by every rank with the same metrics; rank 0 alone passes a checkpoint folder,
        which it may delete once this returns."""


class LocalSession:
    """A single process without Ray: checkpoints go to <run_dir>/checkpoint_<step>, metrics to
    <run_dir>/metrics.jsonl; resumes from the newest checkpoint there."""

    def __init__(self, run_dir: Optional[str | os.PathLike] = None, keep_checkpoints: bool = True):
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.keep_checkpoints = keep_checkpoints and run_dir is not None
        self.history: list[dict[str, float]] = []

    @contextlib.contextmanager
    def resume_checkpoint(self) -> Iterator[Optional[Path]]:
        folders = sorted(Path(self.run_dir).glob("checkpoint_*")) if self.run_dir else []
        folders = [f for f in folders if (f / TRAIN_STATE_FILE).is_file()]
        yield folders[-1] if folders else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        self.history.append(dict(metrics))
        if self.run_dir is None:
            return
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = dict(metrics)
        if checkpoint_dir is not None and self.keep_checkpoints:
            target = run_dir / checkpoint_dir_name(int(metrics[STEP_KEY]))
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(checkpoint_dir, target)
            record["checkpoint"] = target.name
        append_metrics(run_dir / METRICS_FILE, record)


def kept_checkpoint(session: Session, step: int) -> Optional[str]:
    """Where the session keeps the checkpoint reported at `step`: <run_dir>/checkpoint_<step>
    (a path or a URI), for the tracker's artifacts; None when it keeps none."""
    if session.run_dir is None or not getattr(session, "keep_checkpoints", True):
        return None
    return storage.join(session.run_dir, checkpoint_dir_name(step))


# --------------------------------------------------------------------------------------------
# Pieces of the loop
# --------------------------------------------------------------------------------------------
def default_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def has_test_split(paths: list[str]) -> bool:
    """Every dataset has test/dataset.json (local folders and URIs alike: one small request each)."""
    return all(storage.is_file(storage.join(p, "test", METADATA_FILE)) if is_uri(p)
               else metadata_path(p, "test").is_file() for p in paths)


def build_evaluators(config: TrainConfig) -> list[Any]:
    """config.evaluators ([{name: arc, ...}]) -> evaluator objects for evaluate(), as the eval
    issue defines them; a bad entry is a config error."""
    from trm_ray.eval import build_evaluators as from_specs

    try:
        return from_specs(config.evaluators, config.eval_paths)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # unknown name, or an option ARCEvaluator lacks
        raise ConfigError(str(error).splitlines()[0]) from None


def initial_weights(state: TrainState, config: TrainConfig) -> None:
    """load_checkpoint=: start from a reference or trm-ray checkpoint's weights (the puzzle
    table is reset to the saved rows' mean when its size differs, as in the reference)."""
    weights = read_state_dict(config.load_checkpoint)
    load_weights_into(state.module, weights, source=f"load_checkpoint={config.load_checkpoint!r}")
    if state.ema is not None:
        state.ema = EMA(state.module, config.ema_rate)  # the average starts at the loaded weights


def write_checkpoint(folder: Path, state: TrainState, config: TrainConfig, shape: DataShape,
                     loader: PuzzleLoader, fingerprint: str) -> None:
    """model.pt + all_config.yaml (reference format; EMA weights with ema=true) and train_state.pt."""
    live = {k: v.detach().cpu().clone() for k, v in state.module.state_dict().items()}
    with state.ema.swapped(state.module) if state.ema is not None else contextlib.nullcontext():
        save_checkpoint(state.module, folder / MODEL_FILE, config, shape)
    blob = {
        "version": TRAIN_STATE_VERSION,
        "step": state.step,
        "model": live,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "optimizers": [optimizer.state_dict() for optimizer in state.optimizers],
        "loader": loader.state_dict(),
        "config": config.model_dump(mode="json"),
        "dataset_fingerprint": fingerprint,
    }
    torch.save(blob, folder / TRAIN_STATE_FILE)


def restore_checkpoint(folder: Path, state: TrainState, config: TrainConfig, loader: PuzzleLoader,
                       fingerprint: str) -> None:
    """Continue from train_state.pt: weights, EMA, optimizers, step (so the lr schedule), loader."""
    path = folder / TRAIN_STATE_FILE
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {str(folder)!r} has no {TRAIN_STATE_FILE}: it cannot resume a run "
                          f"(use load_checkpoint= to start from its weights)") from None
    if blob.get("version") != TRAIN_STATE_VERSION:
        raise ConfigError(f"{path}: train state version {blob.get('version')!r} is not {TRAIN_STATE_VERSION}")
    if blob["dataset_fingerprint"] != fingerprint:
        raise ConfigError(f"{path} was trained on other data (fingerprint {blob['dataset_fingerprint']} vs "
                          f"{fingerprint} now): resume with the datasets the run started with")
    state.module.load_state_dict(blob["model"])
    for optimizer, saved in zip(state.optimizers, blob["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    if state.ema is not None:
        if blob["ema"] is not None:
            state.ema.load_state_dict(blob["ema"])
        else:
            state.ema = EMA(state.module, config.ema_rate)
    state.step = int(blob["step"])
    loader.load_state_dict(blob["loader"])


def maybe_fault(step: int, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_step, fault_rank, marker = spec.split(":", 2)
    if step == int(fault_step) and rank == int(fault_rank) and not os.path.exists(marker):
        Path(marker).write_text(str(step))
        os._exit(1)


def agree_on_report_every(step_seconds: float, report_every_s: float) -> int:
    """Steps between train-metric reports, the same on every rank (one small all-reduce)."""
    seconds = torch.tensor([step_seconds], dtype=torch.float64)
    _, world = distributed_world()
    if world > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        seconds = seconds.to(backend_device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return max(1, int(report_every_s / max(float(seconds.item()), 1e-6)))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(config: TrainConfig, session: Optional[Session] = None, *, report_every_s: float = 60.0,
          report_every_steps: Optional[int] = None, device: Optional[torch.device] = None) -> dict[str, float]:
    """Train `config` on this worker (every rank calls it); returns the last reported metrics.

    Train metrics are reported (a barrier under Ray) every `report_every_steps` steps, or, when
    None, about every `report_every_s` seconds (measured over the first steps, agreed by all
    ranks); eval metrics and checkpoints at every eval interval.
    """
    session = session or LocalSession()
    rank, world = distributed_world()
    device = device or default_device(config.ray.use_gpu)

    # ---- data: the reference's loader, epochs_per_iter = eval_interval ---------------------
    train_loader = PuzzleLoader.from_config(config, "train", rank=rank, world_size=world)
    test_paths = config.eval_paths
    test_loader = (PuzzleLoader.from_config(config, "test", rank=rank, world_size=world)
                   if has_test_split(test_paths) else None)
    evaluators = build_evaluators(config) if test_loader is not None else []
    meta = train_loader.metadata
    shape = DataShape(seq_len=meta.seq_len, vocab_size=meta.vocab_size,
                      num_puzzle_identifiers=meta.num_puzzle_identifiers)
    # Of every split: a resumed run must see the same train AND test data.
    fingerprint = dataset_fingerprint(train_loader.dataset_dirs)
    total_steps = total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples,
                                    config.global_batch_size)
    eval_interval = config.eval_interval or config.epochs
    num_iterations = config.epochs // eval_interval

    # ---- model and optimizers; resume or initial weights ----------------------------------
    state = create_train_state(config, shape, total_steps, device)
    with session.resume_checkpoint() as resume_dir:
        if resume_dir is not None:
            restore_checkpoint(Path(resume_dir), state, config, train_loader, fingerprint)
        elif config.load_checkpoint:
            initial_weights(state, config)
    resumed_step = state.step

    num_parameters = sum(p.numel() for p in state.module.parameters())
    tracker: Tracker = NullTracker()
    if rank == 0:
        tracker = create_tracker(config, run_dir=session.run_dir, num_parameters=num_parameters)
    progress = Progress(total_steps, state.step, enabled=rank == 0)
    if resumed_step:
        progress.message(f"trm-ray: resumed at step {resumed_step} (iteration {train_loader.iteration})")

    averager = Averager()
    last_train: dict[str, float] = {}
    every = report_every_steps
    last: dict[str, float] = {}
    done = False
    # Throughput over the steps since the previous report, that report's own wait included.
    window_start, window_steps = time.perf_counter(), 0

    def throughput() -> dict[str, float]:
        nonlocal window_start, window_steps
        now = time.perf_counter()
        rate = window_steps * config.global_batch_size / max(now - window_start, 1e-9)
        window_start, window_steps = now, 0
        return {SAMPLES_PER_S_KEY: rate}

    try:
        for iteration in range(train_loader.iteration, num_iterations):
            # ---- train one eval interval ------------------------------------------------------
            state.model.train()
            steps_this_call, started = 0, time.perf_counter()
            for item in train_loader:
                metrics = train_step(state, item.batch)
                if metrics is None:  # the schedule's total steps are done
                    done = True
                    break
                maybe_fault(state.step, rank)
                averager.add(metrics)
                tracker.log(metrics, step=state.step)
                progress.step(state.step, metrics)
                steps_this_call += 1
                window_steps += 1
                if every is None and steps_this_call == 5:  # after warm-up: measure, then agree
                    every = agree_on_report_every((time.perf_counter() - started) / 5, report_every_s)
                if every is not None and state.step % every == 0:
                    last_train = averager.pop()
                    last = {**last_train, **throughput(), STEP_KEY: state.step}
                    session.report(last, None)

            # ---- evaluate and checkpoint ------------------------------------------------------
            epoch = (iteration + 1) * eval_interval
            # train metrics since the last report (or that report's again, when it was at this step)
            last_train = averager.pop() or last_train
            report = {**last_train, **throughput(), STEP_KEY: state.step, EPOCH_KEY: epoch,
                      NUM_PARAMETERS_KEY: num_parameters}
            evaluated = test_loader is not None and iteration >= config.min_eval_interval
            if evaluated:
                from trm_ray.eval import evaluate

                with state.ema.swapped(state.module) if state.ema is not None else contextlib.nullcontext():
                    report.update(evaluate(state.module, test_loader, evaluators, device=device))
                state.model.train()
                progress.message(f"trm-ray: epoch {epoch} step {state.step}: eval exact accuracy "
                                 f"{report[EVAL_METRIC]:.4f} [{report.get('eval/exact_accuracy_low', 0):.3f}, "
                                 f"{report.get('eval/exact_accuracy_high', 1):.3f}]")
                tracker.log({k: v for k, v in report.items() if not k.startswith("train/")}, step=state.step)
            elif test_loader is not None:
                report[EVAL_METRIC] = NO_EVAL_SCORE
            last_iteration = iteration == num_iterations - 1 or done
            checkpoint_now = (config.checkpoint_every_eval if config.checkpoint_every_eval is not None
                              else config.checkpoint.every_eval) or last_iteration
            if checkpoint_now:
                # rank 0 writes the folder; every rank reports (the report is the barrier)
                with tempfile.TemporaryDirectory(prefix="trm-ray-ckpt-") if rank == 0 \
                        else contextlib.nullcontext() as tmp:
                    if tmp is not None:
                        write_checkpoint(Path(tmp), state, config, shape, train_loader, fingerprint)
                        # before report(): the session may move the folder away
                        tracker.checkpoint_saved(state.step, Path(tmp), kept_checkpoint(session, state.step),
                                                 report.get(EVAL_METRIC))
                    session.report(report, Path(tmp) if tmp is not None else None)
            else:
                session.report(report, None)
            last = report
            window_start, window_steps = time.perf_counter(), 0  # throughput excludes eval + checkpoint
            if done:
                break
        tracker.training_finished()
    finally:
        progress.close()
        tracker.finish()
    return last

