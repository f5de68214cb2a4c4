"""The run folder's format, in one place: file names, the metric keys every report carries,
the metrics file's writer and reader, and the final/best summary of a run.

    <ray.storage_path>/<run_name>/      a local folder or a URI (s3://bucket/runs/<run_name>)
        config.yaml           the resolved recipe (what `--resume` reads back)
        metrics.jsonl         every report, one JSON object a line, in report order
        checkpoint_<step>/    model.pt + all_config.yaml (reference format), train_state.pt
        wandb/                W&B files (offline runs when there are no credentials)
        checkpoint_manager_snapshot.json, ...   Ray's own bookkeeping (what resuming reads)

    summarize(run_dir).best, .final, .best_checkpoint      # what `trm-ray train` prints
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from trm_ray import jsonl, storage
from trm_ray.config import TrainConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"

# Metric names beside the training step's `train/*` and the evaluator's `eval/*`.
STEP_KEY = "step"
EPOCH_KEY = "epoch"
EVAL_METRIC = "eval/exact_accuracy"  # what a puzzle run's best checkpoint is chosen by
TEXT_EVAL_METRIC = "text/val_loss"  # and a text run's (the lowest validation loss)
SAMPLES_PER_S_KEY = "train/samples_per_s"
# The network's parameter count (the puzzle table is a buffer: not counted), in every evaluation
# report, so a sweep's records carry it for `trm-ray compare`; a train/ key is not logged to W&B
# again at evaluations (the tracker has it as num_params).
NUM_PARAMETERS_KEY = "train/num_parameters"
# A checkpoint reported before any evaluation still needs the score key for Ray's ranking;
# -inf ranks it below every evaluated one.
NO_EVAL_SCORE = float("-inf")


@dataclass(frozen=True)
class Score:
    """What ranks a run's evaluations and picks its best checkpoint: a metric and its direction."""

    key: str
    mode: str  # "max" or "min"

    @property
    def unevaluated(self) -> float:
        """The value a checkpoint reported before any evaluation gets: below every evaluated one."""
        return NO_EVAL_SCORE if self.mode == "max" else -NO_EVAL_SCORE

    def ranked(self, value: Any) -> float:
        """Higher is better: the value itself ("max") or its negative ("min"); -inf for no value.
        Its own inverse on numbers."""
        if not is_metric_value(value):
            return NO_EVAL_SCORE
        return float(value) if self.mode == "max" else -float(value)

    def best(self, records: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        """The best of `records` (each has the key); ties go to the later step, as Ray keeps that one."""
        return max(records, key=lambda r: (self.ranked(r[self.key]), r.get(STEP_KEY, 0)))


PUZZLE_SCORE = Score(EVAL_METRIC, "max")
TEXT_SCORE = Score(TEXT_EVAL_METRIC, "min")


def score_for(config: TrainConfig) -> Score:
    """Text runs (their eval dataset has text.json) rank by validation loss, puzzle runs by exact accuracy."""
    from trm_ray.text.info import is_text_dataset

    return TEXT_SCORE if config.eval_paths and is_text_dataset(config.eval_paths[0]) else PUZZLE_SCORE


def is_metric_value(value: Any) -> bool:
    """A value a metric can be ranked or averaged by: a finite number, not a bool (metrics.jsonl
    keeps a non-finite one as null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:07d}"


def append_metrics(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """One report at the end of a metrics.jsonl (a local file or a URI), as trm_ray.jsonl writes."""
    jsonl.append(path, record)


def run_dir_of(config: TrainConfig) -> str:
    location = config.ray.storage_path
    if storage.is_uri(location):
        return f"{location.rstrip('/')}/{config.run_name}"
    return str(Path(location) / str(config.run_name))


def run_started(run_dir: str) -> bool:
    """A run was started in `run_dir` (local or URI): our config.yaml or Ray's snapshot is there."""
    return any(storage.is_file(storage.join(run_dir, name)) for name in (CONFIG_FILE, RAY_SNAPSHOT_FILE))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of <run_dir>/metrics.jsonl (a local folder or a URI); [] when there is none.
    A line cut short by a crash is skipped with one note (trm_ray.jsonl.read)."""
    return jsonl.read(storage.join(str(run_dir), METRICS_FILE))


@dataclass
class TrainRunResult:
    run_dir: str
    final: dict[str, Any] = field(default_factory=dict)  # the last report
    best: dict[str, Any] = field(default_factory=dict)  # the report with the highest eval metric
    best_checkpoint: Optional[str] = None
    last_checkpoint: Optional[str] = None


def summarize(run_dir: str) -> TrainRunResult:
    """Final and best metrics from the run's metrics file (a local folder or a URI)."""
    run_dir = str(run_dir)
    records = read_metrics(run_dir)
    result = TrainRunResult(run_dir=run_dir)
    if not records:
        return result
    result.final = records[-1]
    score = TEXT_SCORE if any(is_metric_value(r.get(TEXT_EVAL_METRIC)) for r in records) else PUZZLE_SCORE
    evaluated = [r for r in records if is_metric_value(r.get(score.key))]
    if evaluated:
        result.best = score.best(evaluated)
    with_checkpoint = [r for r in records if r.get("checkpoint")]
    if with_checkpoint:
        result.last_checkpoint = storage.join(run_dir, with_checkpoint[-1]["checkpoint"])
    # One listing of the run folder (one request on an object store) says which checkpoints
    # Ray kept.
    present = set(storage.list_dir(run_dir))
    kept = [r for r in evaluated if r.get("checkpoint") in present]
    if kept:
        best_kept = score.best(kept)
        result.best_checkpoint = storage.join(run_dir, best_kept["checkpoint"])
    return result


