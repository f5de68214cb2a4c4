"""The sweep folder's own records: what ran, what each trial reported, what ASHA decided.

    <storage>/<sweep name>/   a local folder or a URI (s3://bucket/sweeps/<name>)
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

A sweep folder at a URI: an object cannot be appended to, and the driver must not lose a
record when it is killed. The driver appends to a local mirror (fsync'ed, like a local
trials.jsonl) under $TRM_RAY_CACHE/sweeps/ and, after every line, uploads the whole file with
one PUT (atomic: readers see the previous version or the new one). Readers take the mirror
when it extends the remote copy (an upload that failed or was cut short by a kill), else the
remote copy (a driver on another machine, or a machine that never ran this sweep).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trm_ray import jsonl, storage

SWEEP_FILE = "sweep.json"
RECORDS_FILE = "trials.jsonl"
TRAIN_DIR = "train"

# trials.jsonl's record kinds ("event"), as the module docstring lists them.
TRIAL, RESULT, STOP, COMPLETE, ERROR = "trial", "result", "stop", "complete", "error"
# The keys of a result record that are not the trial's reported values.
RESULT_OWN_KEYS = ("event", "trial_id", "time", "decision")

logger = logging.getLogger(__name__)

# URI sweep folders whose local mirror this process has reconciled with the remote copy: done
# once per process, before its first append (later appends only extend what it wrote).
_reconciled: set[str] = set()


def mirror_path(sweep_dir: str | os.PathLike) -> Path:
    """The driver's local copy of a URI sweep folder's trials.jsonl (one folder per URI)."""
    key = hashlib.sha256(str(sweep_dir).rstrip("/").encode()).hexdigest()[:16]
    return storage.cache_dir() / "sweeps" / key / RECORDS_FILE


def _records_text(sweep_dir: str | os.PathLike) -> str:
    """The newest trials.jsonl there is: a URI's local mirror when it extends the remote copy."""
    location = storage.join(sweep_dir, RECORDS_FILE)
    if not storage.is_uri(sweep_dir):
        path = Path(location)
        return path.read_text() if path.is_file() else ""
    try:
        remote = storage.read_text(location)
    except FileNotFoundError:
        remote = ""
    mirror = mirror_path(sweep_dir)
    local = mirror.read_text() if mirror.is_file() else ""
    return local if local.startswith(jsonl.whole_lines(remote)) and len(local) > len(remote) else remote


def append_record(sweep_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Add one record to <sweep_dir>/trials.jsonl (the driver is its only writer)."""
    if not storage.is_uri(sweep_dir):
        jsonl.append(Path(sweep_dir) / RECORDS_FILE, record)
        return
    mirror = mirror_path(sweep_dir)
    key = str(sweep_dir).rstrip("/")
    if key not in _reconciled:
        # Start from the newest copy: another machine may have continued this sweep since
        # this mirror was written, or this machine never ran it.
        current = jsonl.whole_lines(_records_text(sweep_dir))
        if not mirror.is_file() or mirror.read_text() != current:
            jsonl.replace_synced(mirror, current)
        _reconciled.add(key)
    jsonl.append(mirror, record)
    upload_records(sweep_dir, strict=False)


def trial_record(trial_id: str, index: Optional[int], params: dict[str, Any]) -> dict[str, Any]:
    """A trial was added: its index in the sweep (None: proposed by a search) and its values."""
    return {"event": TRIAL, "trial_id": trial_id, "index": index, "params": params}


def result_record(trial_id: str, time: Optional[float], values: dict[str, Any], stop: bool) -> dict[str, Any]:
    """A result the scheduler judged: its time in the scheduler's unit, the reported values
    kept, and the decision (stop or continue)."""
    return {"event": RESULT, "trial_id": trial_id, "time": time, **values, "decision": "stop" if stop else "continue"}


def stop_record(trial_id: str, time: Optional[float], early: bool) -> dict[str, Any]:
    """The scheduler stopped a trial: early (at a rung) or at max_t."""
    return {"event": STOP, "trial_id": trial_id, "time": time, "early": early}


def end_record(trial_id: str, *, error: bool = False) -> dict[str, Any]:
    """A trial finished, or failed."""
    return {"event": ERROR if error else COMPLETE, "trial_id": trial_id}


def result_values(record: dict[str, Any]) -> dict[str, Any]:
    """What the trial reported in a result record (the record's own keys and nulls left out)."""
    return {k: v for k, v in record.items() if k not in RESULT_OWN_KEYS and v is not None}


def upload_records(sweep_dir: str | os.PathLike, *, strict: bool = True) -> None:
    """Write a URI sweep's local mirror of trials.jsonl to the sweep folder, whole (one PUT).
    strict=False: a failed upload is logged and left to the next one (the mirror keeps every
    line, and readers on this machine see them)."""
    if not storage.is_uri(sweep_dir):
        return
    mirror = mirror_path(sweep_dir)
    if not mirror.is_file():
        return
    try:
        storage.write_text(storage.join(sweep_dir, RECORDS_FILE), jsonl.whole_lines(mirror.read_text()))
    except storage.StorageError as error:
        if strict:
            raise
        logger.warning("trm-ray: could not upload the sweep records (kept in %s, retried at the next "
                       "record): %s", mirror, error)


def forget_records(sweep_dir: str | os.PathLike) -> None:
    """A new sweep at a URI: drop a mirror left by an earlier sweep of the same folder (deleted
    since), so that its records are neither replayed nor uploaded into the new one."""
    if storage.is_uri(sweep_dir):
        mirror_path(sweep_dir).unlink(missing_ok=True)
        _reconciled.discard(str(sweep_dir).rstrip("/"))


def read_records(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of <sweep_dir>/trials.jsonl, the newest copy there is; a line cut short by a
    killed driver is skipped with one note (trm_ray.jsonl.parse)."""
    return jsonl.parse(_records_text(sweep_dir), storage.join(sweep_dir, RECORDS_FILE))


def write_sweep_info(sweep_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    storage.write_text(storage.join(sweep_dir, SWEEP_FILE), json.dumps(info, indent=1, default=str))


def sweep_started(sweep_dir: str | os.PathLike) -> bool:
    return storage.is_file(storage.join(sweep_dir, SWEEP_FILE))


def read_sweep_info(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    try:
        text = storage.read_text(storage.join(sweep_dir, SWEEP_FILE))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"{str(sweep_dir)!r} is not a sweep folder (no {SWEEP_FILE}); "
                                f"pass the folder `trm-ray sweep` printed") from None
    return json.loads(text)


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


def trial_outcome(history: TrialHistory) -> Optional[dict[str, Any]]:
    """What ASHA decided about a finished trial, as keys of its W&B run's summary; None
    while it has not finished (pending, running).
        tune/status           complete | stopped | error
        tune/stopped_early    True: ASHA stopped it at a rung; False: it ran to max_t
        tune/stopped_at_epoch the epoch of its last result, for a trial stopped early
        tune/epochs_run       the last epoch it reported"""
    if history.status not in ("complete", "stopped", "error"):
        return None
    outcome: dict[str, Any] = {"tune/status": history.status, "tune/epochs_run": history.epochs_run}
    if history.status != "error":
        outcome["tune/stopped_early"] = history.stopped_early
    if history.stopped_early:
        outcome["tune/stopped_at_epoch"] = history.epochs_run
    return outcome


def trial_histories(records: list[dict[str, Any]]) -> dict[str, TrialHistory]:
    """Fold the records into one history per trial, in the order trials were added."""
    trials: dict[str, TrialHistory] = {}
    for record in records:
        trial_id = record.get("trial_id")
        if not trial_id:
            continue
        trial = trials.setdefault(trial_id, TrialHistory(trial_id))
        event = record.get("event")
        if event == TRIAL:
            trial.index, trial.params = record.get("index"), dict(record.get("params") or {})
        elif event == RESULT:
            trial.wall_time_s += float(record.get("time_this_iter_s") or 0.0)
            # a resumed Train run may repeat an epoch it reported before its last checkpoint
            trial.results = [r for r in trial.results if r.get("epoch") != record.get("epoch")] + [record]
            if trial.status == "pending":
                trial.status = "running"
        elif event == STOP:
            trial.stopped_early = bool(record.get("early"))
            trial.status = "stopped" if trial.stopped_early else "complete"
        elif event == COMPLETE:
            if trial.status != "stopped":
                trial.status = "complete"
        elif event == ERROR:
            trial.status = "error"
    return trials
