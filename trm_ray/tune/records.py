"""The sweep folder's own records: what ran, what each trial reported, what ASHA decided.

    <storage>/<sweep name>/
        sweep.json        written at launch: the spec, the base recipe, every trial's values
        trials.jsonl      appended by the driver as results arrive (one JSON object a line):
                            {"event": "trial",  "trial_id", "index", "params"}
                            {"event": "result", "trial_id", "time", "epoch", <metrics>, "time_this_iter_s", "decision"}
                            {"event": "stop",   "trial_id", "time", "early": true|false}
                            {"event": "complete" | "error", "trial_id"}
        train/<trial_id>/ each trial's Ray Train run (checkpoints)
        ...               Ray Tune's experiment state (Tuner.restore reads it)

Tune keeps neither ASHA's rungs nor a continuing iteration count across `--resume`; these
records are what the resumed scheduler rebuilds its rungs from, and what `trm-ray compare`
reads (Ray Train V2 itself writes no result files).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SWEEP_FILE = "sweep.json"
RECORDS_FILE = "trials.jsonl"
TRAIN_DIR = "train"


def append_record(sweep_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """One line, flushed and fsync'ed: a killed driver loses at most the line being written."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    path = Path(sweep_dir) / RECORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(clean, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_records(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / RECORDS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed driver
    return records


def write_sweep_info(sweep_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    path = Path(sweep_dir) / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str))
    os.replace(tmp, path)


def read_sweep_info(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(sweep_dir)!r} is not a sweep folder (no {SWEEP_FILE}); "
                                f"pass the folder `trm-ray sweep` printed")
    return json.loads(path.read_text())


@dataclass
class TrialHistory:
    """Everything the records say about one trial."""

    trial_id: str
    index: Optional[int] = None
    params: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)  # one per epoch, the latest kept
    stopped_early: bool = False
    status: str = "pending"  # pending | running | stopped | complete | error
    wall_time_s: float = 0.0

    def curve(self, metric: str) -> list[tuple[float, float]]:
        """(epoch, metric) of every result with a finite metric, by epoch."""
        points = [(r["epoch"], r[metric]) for r in self.results
                  if r.get("epoch") is not None and isinstance(r.get(metric), (int, float))]
        return sorted(points)

    def best(self, metric: str, mode: str) -> Optional[tuple[float, float]]:
        """(metric, epoch) of the best result, None when the metric was never reported."""
        points = self.curve(metric)
        if not points:
            return None
        epoch, value = (max if mode == "max" else min)(points, key=lambda p: p[1])
        return value, epoch

    @property
    def epochs_run(self) -> int:
        return int(max((r.get("epoch") or 0 for r in self.results), default=0))


def trial_histories(records: list[dict[str, Any]]) -> dict[str, TrialHistory]:
    """Fold the records into one history per trial, in the order trials were added."""
    trials: dict[str, TrialHistory] = {}
    for record in records:
        trial_id = record.get("trial_id")
        if not trial_id:
            continue
        trial = trials.setdefault(trial_id, TrialHistory(trial_id))
        event = record.get("event")
        if event == "trial":
            trial.index, trial.params = record.get("index"), dict(record.get("params") or {})
        elif event == "result":
            trial.wall_time_s += float(record.get("time_this_iter_s") or 0.0)
            # a resumed Train run may repeat an epoch it reported before its last checkpoint
            trial.results = [r for r in trial.results if r.get("epoch") != record.get("epoch")] + [record]
            if trial.status == "pending":
                trial.status = "running"
        elif event == "stop":
            trial.stopped_early = bool(record.get("early"))
            trial.status = "stopped" if trial.stopped_early else "complete"
        elif event == "complete":
            if trial.status != "stopped":
                trial.status = "complete"
        elif event == "error":
            trial.status = "error"
    return trials
