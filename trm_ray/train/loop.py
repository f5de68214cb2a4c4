"""The per-worker training loop: plain torch.distributed, the same in one process and under Ray.

    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession
    final = train(config, LocalSession("runs/my-run"))     # one process, no Ray
    # under Ray Train, trm_ray.train.trainer runs the same function with a RaySession

What it does, as the reference's pretrain.py:
    loader = the train split, epochs_per_iter = eval_interval (one iteration = one eval interval)
    state  = create_train_state(...)   (+ load_checkpoint weights, or resume from a checkpoint)
    for iteration in range(epochs // eval_interval):
        for batch in loader: train_step(state, batch)           report train metrics now and then
        evaluate (EMA weights when ema=true), unless iteration < min_eval_interval
        (a text evaluator's prompts: continuations logged by rank 0)
        checkpoint + report                                      every rank reports (a barrier)

A runner (trm_ray.train.session.Session) supplies where to resume from, how to report metrics
and a checkpoint folder, and where the run's files go; trm_ray.checkpoint writes and reads the
checkpoint folders. Everything else here is plain PyTorch.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from trm_ray.checkpoint import restore_checkpoint, start_from_weights, write_checkpoint
from trm_ray.config import ConfigError, DataShape, TrainConfig
from trm_ray.data.layout import dataset_fingerprint, has_test_split
from trm_ray.data.loader import PuzzleLoader
from trm_ray.errors import first_line
from trm_ray.optim import total_train_steps
from trm_ray.run_folder import (EPOCH_KEY, EVAL_METRIC, NUM_PARAMETERS_KEY, SAMPLES_PER_S_KEY, STEP_KEY,
                                TEXT_EVAL_METRIC, Score, score_for)
from trm_ray.tracking import NullTracker, Tracker, create_tracker
from trm_ray.train.progress import Averager, Progress
from trm_ray.train.session import LocalSession, Session, kept_checkpoint
from trm_ray.train.step import TrainState, create_train_state, distributed_world, train_step

# Test hook (fault tolerance): "STEP:RANK:MARKER_FILE" makes RANK os._exit at STEP, once
# (the marker file records that it happened, so the restarted worker carries on).
FAULT_ENV = "TRM_RAY_FAULT_AT_STEP"
# Steps timed at the start of an eval interval before the ranks agree on the report cadence.
CADENCE_WARMUP_STEPS = 5


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
    data = TrainData.from_config(config, rank, world)
    eval_interval = config.eval_interval or config.epochs
    num_iterations = config.epochs // eval_interval

    state = create_train_state(config, data.shape, data.total_steps, device)
    with session.resume_checkpoint() as resume_dir:
        if resume_dir is not None:
            restore_checkpoint(Path(resume_dir), state, data.train, data.fingerprint)
        elif config.load_checkpoint:
            start_from_weights(state, config.load_checkpoint)

    tracker: Tracker = NullTracker()
    if rank == 0:
        tracker = create_tracker(config, run_dir=session.run_dir, num_parameters=state.num_parameters,
                                 score=data.score)
    progress = Progress(data.total_steps, state.step, enabled=rank == 0, samples_per_step=config.global_batch_size,
                        exact=data.score.key == EVAL_METRIC)
    if state.step:
        progress.message(f"trm-ray: resumed at step {state.step} (iteration {data.train.iteration})")
    reports = Reports(session, tracker, progress, ReportCadence(report_every_steps, report_every_s),
                      config.global_batch_size)
    try:
        for iteration in range(data.train.iteration, num_iterations):
            done = run_interval(state, data.train, reports, rank)
            report = reports.interval_metrics(state.step, epoch=(iteration + 1) * eval_interval)
            report[NUM_PARAMETERS_KEY] = state.num_parameters
            if data.test is not None and iteration >= config.min_eval_interval:
                report.update(evaluate_averaged(state, data, device))
                reports.evaluated(state.step, report)
                log_continuations(state, data, reports, rank)
            elif data.test is not None:
                report[data.score.key] = data.score.unevaluated
            every_eval = (config.checkpoint_every_eval if config.checkpoint_every_eval is not None
                          else config.checkpoint.every_eval)
            if every_eval or iteration == num_iterations - 1 or done:
                checkpoint_and_report(report, state, config, data, reports, rank)
            else:
                reports.send(report)
            reports.interval_done()  # throughput leaves out eval and checkpoint time
            if done:
                break
        tracker.training_finished()
    finally:
        progress.close()
        tracker.finish()
    return reports.last


def run_interval(state: TrainState, loader: PuzzleLoader, reports: Reports, rank: int) -> bool:
    """Train one eval interval (one pass of the loader); True once the schedule's total steps are done."""
    state.model.train()
    reports.cadence.start_interval()
    for item in loader:
        metrics = train_step(state, item.batch)
        if metrics is None:  # the schedule's total steps are done
            return True
        maybe_fault(state.step, rank)
        reports.step(state.step, metrics)
    return False


def evaluate_averaged(state: TrainState, data: TrainData, device: torch.device) -> dict[str, float]:
    """The test split's metrics of the EMA weights (the live ones with ema=false)."""
    from trm_ray.eval import evaluate

    with state.averaged_weights() as module:
        metrics = evaluate(module, data.test, data.evaluators, device=device)
    state.model.train()
    return metrics


def log_continuations(state: TrainState, data: TrainData, reports: Reports, rank: int) -> None:
    """Rank 0, after an evaluation: the greedy and sampled continuations of the text evaluators'
    prompts by the weights just evaluated (EMA ones with ema=true), as a tracker table
    ("text/continuations"), lines of <run_dir>/continuations.jsonl and one console line each."""
    generators = [e for e in data.evaluators if hasattr(e, "continuations")]
    if rank != 0 or not generators:
        return
    from trm_ray import jsonl, storage
    from trm_ray.text.evaluate import CONTINUATIONS_FILE, CONTINUATIONS_TABLE
    from trm_ray.text.generate import CONTINUATION_COLUMNS

    with state.averaged_weights() as module:
        rows = [row for evaluator in generators for row in evaluator.continuations(module)]
    state.model.train()
    if not rows:
        return
    step = state.step
    reports.tracker.log_table(CONTINUATIONS_TABLE, ["step", *CONTINUATION_COLUMNS],
                              [[step, *(row[c] for c in CONTINUATION_COLUMNS)] for row in rows], step)
    if reports.session.run_dir is not None:
        for row in rows:
            jsonl.append(storage.join(reports.session.run_dir, CONTINUATIONS_FILE), {"step": step, **row})
    for row in rows:
        reports.progress.message(f"trm-ray: step {step}: {_clip(row['prompt'], 30)} -> {_clip(row['greedy'], 60)}")


def _clip(text: str, width: int) -> str:
    """A short one-line repr of generated text for the console."""
    return repr(text if len(text) <= width else text[:width - 3] + "...")


def checkpoint_and_report(report: dict[str, float], state: TrainState, config: TrainConfig, data: TrainData,
                          reports: Reports, rank: int) -> None:
    """Rank 0 writes the checkpoint folder; every rank reports (the report is the barrier)."""
    with tempfile.TemporaryDirectory(prefix="trm-ray-ckpt-") if rank == 0 else contextlib.nullcontext() as tmp:
        folder = Path(tmp) if tmp is not None else None
        if folder is not None:
            write_checkpoint(folder, state, config, data.shape, data.train, data.fingerprint)
            # before report(): the session may move the folder away
            reports.tracker.checkpoint_saved(state.step, folder, kept_checkpoint(reports.session, state.step),
                                             report.get(data.score.key))
        reports.send(report, folder)


# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """What the loop trains and evaluates on: the reference's loader over the train split
    (epochs_per_iter = eval_interval), the test split's (None without one) and its evaluators,
    the data shape the model is built for, the fingerprint a resumed run must match, the
    schedule's total steps and what ranks its evaluations (exact accuracy; text: val loss)."""

    train: PuzzleLoader
    test: Optional[PuzzleLoader]
    evaluators: list[Any]
    shape: DataShape
    fingerprint: str
    total_steps: int
    score: Score

    @classmethod
    def from_config(cls, config: TrainConfig, rank: int, world: int) -> TrainData:
        train = PuzzleLoader.from_config(config, "train", rank=rank, world_size=world)
        test = (PuzzleLoader.from_config(config, "test", rank=rank, world_size=world)
                if has_test_split(config.eval_paths) else None)
        evaluators = build_evaluators(config) if test is not None else []
        meta = train.metadata
        shape = DataShape(seq_len=meta.seq_len, vocab_size=meta.vocab_size,
                          num_puzzle_identifiers=meta.num_puzzle_identifiers)
        # Of every split: a resumed run must see the same train AND test data.
        fingerprint = dataset_fingerprint(train.dataset_dirs)
        total_steps = total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples,
                                        config.global_batch_size)
        return cls(train, test, evaluators, shape, fingerprint, total_steps, score_for(config))


class Throughput:
    """Samples/s over the steps since the window began: a train report's own wait counts, the
    eval and checkpoint at the end of an interval do not (the window restarts after them)."""

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def add_step(self) -> None:
        self.steps += 1

    def pop(self) -> dict[str, float]:
        """The rate so far; a new window starts."""
        now = time.perf_counter()
        rate = self.steps * self.global_batch_size / max(now - self.start, 1e-9)
        self.start, self.steps = now, 0
        return {SAMPLES_PER_S_KEY: rate}


class ReportCadence:
    """When train metrics are reported: every `steps` steps, or (None) about every `seconds`,
    from the step time of the first CADENCE_WARMUP_STEPS steps of an eval interval, the same on
    every rank (one small all-reduce)."""

    def __init__(self, steps: Optional[int], seconds: float):
        self.every, self.seconds = steps, seconds
        self.start_interval()

    def start_interval(self) -> None:
        self.counted, self.started = 0, time.perf_counter()

    def due(self, step: int) -> bool:
        """Called after every step: is a report due at `step`?"""
        self.counted += 1
        if self.every is None and self.counted == CADENCE_WARMUP_STEPS:  # after warm-up: measure, then agree
            step_seconds = (time.perf_counter() - self.started) / CADENCE_WARMUP_STEPS
            self.every = agree_on_report_every(step_seconds, self.seconds)
        return self.every is not None and step % self.every == 0


class Reports:
    """Where metrics go: every step to the tracker and the progress display (rank 0, the others
    have null ones), train-metric means to the session when the cadence says, and each eval
    interval's report."""

    def __init__(self, session: Session, tracker: Tracker, progress: Progress, cadence: ReportCadence,
                 global_batch_size: int):
        self.session, self.tracker, self.progress, self.cadence = session, tracker, progress, cadence
        self.averager = Averager()
        self.throughput = Throughput(global_batch_size)
        self.last_train: dict[str, float] = {}  # the means of the latest train report
        self.last: dict[str, float] = {}  # the latest report

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.averager.add(metrics)
        self.tracker.log(metrics, step=step)
        self.progress.step(step, metrics)
        self.throughput.add_step()
        if self.cadence.due(step):
            self.last_train = self.averager.pop()
            self.send({**self.last_train, **self.throughput.pop(), STEP_KEY: step})

    def interval_metrics(self, step: int, epoch: int) -> dict[str, float]:
        """The end of an eval interval: train metrics since the last report (or that report's
        again, when it was at this step) and samples/s."""
        self.last_train = self.averager.pop() or self.last_train
        return {**self.last_train, **self.throughput.pop(), STEP_KEY: step, EPOCH_KEY: epoch}

    def evaluated(self, step: int, report: dict[str, float]) -> None:
        if TEXT_EVAL_METRIC in report:
            result = (f"val loss {report[TEXT_EVAL_METRIC]:.4f} "
                      f"(perplexity {report.get('text/perplexity', math.nan):.2f}), "
                      f"next-token accuracy {report.get('text/next_token_accuracy', math.nan):.4f}")
        else:
            result = (f"exact accuracy {report[EVAL_METRIC]:.4f} [{report.get('eval/exact_accuracy_low', 0):.3f}, "
                      f"{report.get('eval/exact_accuracy_high', 1):.3f}]")
        self.progress.message(f"trm-ray: epoch {report[EPOCH_KEY]} step {step}: eval {result}")
        self.tracker.log({k: v for k, v in report.items() if not k.startswith("train/")}, step=step)

    def send(self, report: dict[str, float], checkpoint_dir: Optional[Path] = None) -> None:
        self.session.report(report, checkpoint_dir)
        self.last = report

    def interval_done(self) -> None:
        self.throughput.restart()


def default_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def build_evaluators(config: TrainConfig) -> list[Any]:
    """config.evaluators ([{name: arc, ...}]) -> evaluator objects for evaluate(); a bad entry
    is a config error."""
    from trm_ray.eval import build_evaluators as from_specs

    try:
        return from_specs(config.evaluators, config.eval_paths)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # unknown name, or an option ARCEvaluator lacks
        raise ConfigError(first_line(error)) from None


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
