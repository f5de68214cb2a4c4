"""Experiment tracking behind one small interface: W&B, Trackio, or a no-op twin.

    tracker = create_tracker(config, run_dir="runs/sudoku-mlp", num_parameters=7_000_000)
    tracker.log({"train/lm_loss": 0.8}, step=10)
    tracker.log_table("text/continuations", ["prompt", "greedy"], [["Once", "Once upon"]], step=10)
    tracker.checkpoint_saved(step=10, folder=tmp, location="runs/sudoku-mlp/checkpoint_0000010", score=0.4)
    tracker.training_finished()
    tracker.finish()

tracking.backend picks the tracker: wandb (the default; below), trackio (local SQLite files,
trm_ray.trackio_tracker) or none; tracking.wandb=false records nothing whatever the backend.
Everything after a run ended (add_to_summary, track_eval, the repro's run) is W&B's only and
does nothing for the other backends (resolve_mode says "disabled").

Only rank 0 tracks: the training loop calls `create_tracker` on rank 0 and uses `NullTracker`
elsewhere (Ray's own `setup_wandb(rank_zero_only=True)` does not work inside Train V2 workers).
W&B's mode: `tracking.mode` when set; else WANDB_MODE when set; else online with credentials
(WANDB_API_KEY, or a `wandb login` entry in ~/.netrc) and offline files without them, so a run
on a machine without network or account still records everything (`wandb sync` uploads it).

What a run records, so that W&B's runs table filters and sorts them:
- job_type: "train" (`trm-ray train`), "sweep-trial" (a run inside a sweep folder,
  <sweep>/train/<trial>), "eval" (`track_eval`);
- tags: the dataset names, the architecture ("trm", or "trm-mlp" with arch.mlp_t), the sweep's
  name for trials, then tracking.tags;
- summary: besides the last values, the best of what runs are compared by (SUMMARY_OPS, and a
  trial's sweep metric): eval/exact_accuracy {max, last}, ARC/pass@K {max, last} with an ARC
  evaluator, train/lm_loss {min, last}; every metric is charted against `step`, the train step;
- a trial's ASHA outcome (tune/*), added by the sweep driver with `add_to_summary` once the
  trial's run has ended (a trial ASHA stops is killed mid-run, before its W&B run is
  finished: the driver also completes its summary from the sweep's records);
- with tracking.log_checkpoints=all|best, checkpoints as "model" artifacts (references to the
  objects when the run folder is on object storage).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import netrc
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Protocol, Sequence

from trm_ray.errors import first_line
from trm_ray.run_folder import PUZZLE_SCORE, Score, is_metric_value, score_for
from trm_ray.storage import is_uri

if TYPE_CHECKING:
    from trm_ray.config import TrainConfig

NUM_PARAMETERS_KEY = "num_params"
JOB_TRAIN, JOB_SWEEP_TRIAL, JOB_EVAL = "train", "sweep-trial", "eval"
# The x-axis of every chart: the train step, logged with every row (trm_ray.run_folder.STEP_KEY).
# Not W&B's own _step: a run resumed from an earlier checkpoint logs steps again.
STEP_METRIC = "step"
# Summary aggregates beside the last value (W&B define_metric): what runs are sorted by;
# ARC/pass@K {max, last} too, for the K of the run's ARC evaluator (arc_metrics). By name, not
# by glob: wandb 0.31 picks one of the globs matching a key at random ("*" is one of them).
SUMMARY_OPS = {
    "eval/exact_accuracy": ("max", "last"),
    "eval/accuracy": ("max", "last"),
    "train/lm_loss": ("min", "last"),
}
BEST_OPS = ("max", "last")
MAX_TAG_LENGTH = 64  # W&B refuses longer tags
EVAL_TABLE_KEY = "eval/sets"
EVAL_TABLE_COLUMNS = ("count", "exact_accuracy", "exact_accuracy_low", "exact_accuracy_high", "accuracy",
                      "q_halt_accuracy", "steps")
# Settings of the short runs this module opens besides a training run (eval, ASHA outcome):
# no console capture, no system metrics, no banner.
_SHORT_RUN_SETTINGS = {"silent": True, "console": "off", "x_disable_stats": True, "save_code": False}


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Any], step: int) -> None:
        """A table at the train step: `rows` are lists in column order, or mappings by column."""

    def checkpoint_saved(self, step: int, folder: Path, location: Optional[str], score: Optional[float]) -> None:
        """A checkpoint was written to `folder` (deleted once this returns) and is kept at
        `location` (the run folder's checkpoint_<step>, a path or a URI; None: not kept)."""

    def training_finished(self) -> None:
        """Training ended normally (not on an error): the moment to log the best checkpoint."""

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing: other ranks, `tracking.wandb=false`, `tracking.backend=none`,
    `tracking.mode=disabled`."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Any], step: int) -> None:
        pass

    def checkpoint_saved(self, step: int, folder: Path, location: Optional[str], score: Optional[float]) -> None:
        pass

    def training_finished(self) -> None:
        pass

    def finish(self) -> None:
        pass


def table_rows(columns: Sequence[str], rows: Sequence[Any]) -> list[list[Any]]:
    """A table's rows as lists in column order (a row given as a mapping is read by column name)."""
    return [[row.get(c) for c in columns] if isinstance(row, Mapping) else list(row) for row in rows]


# --------------------------------------------------------------------------------------------
# What a run is: job type, tags, summary aggregates
# --------------------------------------------------------------------------------------------
@dataclass
class RunKind:
    job_type: str
    tags: list[str]
    summary_ops: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SUMMARY_OPS))


def _dataset_name(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def arch_tag(config: "TrainConfig") -> str:
    """The architecture as a tag: trm, trm-mlp, hrm, transformers-baseline, trm-singlez, ..."""
    name = config.arch.name.replace("_", "-")
    return f"{name}-mlp" if config.arch.mlp_t else name


def run_tags(config: "TrainConfig", *, datasets: Optional[list[str]] = None, sweep: Optional[str] = None) -> list[str]:
    """Dataset names, the architecture, the sweep's name, then tracking.tags: in that order,
    without repeats, each cut to W&B's 64 characters."""
    names = [_dataset_name(p) for p in (datasets if datasets is not None
                                        else [*config.data_paths, *config.data_paths_test])]
    tags: list[str] = []
    for tag in [*names, arch_tag(config), *([sweep] if sweep else []), *config.tracking.tags]:
        tag = str(tag)[:MAX_TAG_LENGTH]
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def sweep_of(run_dir: Optional[str]) -> Optional[dict[str, Any]]:
    """The sweep a run belongs to (sweep.json's name, metric, mode) when its folder is a sweep
    trial's, <sweep>/train/<trial>; None otherwise (or when the folder cannot be read)."""
    from trm_ray import storage
    from trm_ray.tune.records import TRAIN_DIR, read_sweep_info

    if not run_dir:
        return None
    parent = str(run_dir).rstrip("/").rsplit("/", 1)[0]
    if storage.name_of(parent) != TRAIN_DIR:
        return None
    try:
        info = read_sweep_info(parent.rsplit("/", 1)[0])
    except (OSError, ValueError):  # not a sweep's folder, or unreadable: an ordinary run
        return None
    return {"name": info.get("name"), "metric": info.get("metric"), "mode": info.get("mode")}


def arc_metrics(config: "TrainConfig") -> list[str]:
    """ARC/pass@K for each K the run's ARC evaluators report (trm_ray.eval.arc)."""
    specs = [e for e in config.evaluators if str(e.get("name", "")).lower().split("@")[0] == "arc"]
    if not specs:
        return []
    from trm_ray.eval.arc import METRIC_PREFIX, PASS_KS

    ks = dict.fromkeys(int(k) for spec in specs for k in spec.get("pass_Ks", PASS_KS))
    return [f"{METRIC_PREFIX}/pass@{k}" for k in ks]


def run_kind(config: "TrainConfig", run_dir: Optional[str]) -> RunKind:
    """job_type, tags and summary aggregates of the training run of `config` in `run_dir`."""
    ops = {**SUMMARY_OPS, **{name: BEST_OPS for name in arc_metrics(config)}}
    sweep = sweep_of(run_dir)
    if sweep is None:
        return RunKind(JOB_TRAIN, run_tags(config), ops)
    if sweep.get("metric") and sweep.get("mode") in ("max", "min"):
        # the trial's best on the metric ASHA judges, as its own summary column
        ops[sweep["metric"]] = tuple(dict.fromkeys([*ops.get(sweep["metric"], ()), sweep["mode"], "last"]))
    return RunKind(JOB_SWEEP_TRIAL, run_tags(config, sweep=sweep.get("name")), ops)


# --------------------------------------------------------------------------------------------
# Mode, project, id, where the files go
# --------------------------------------------------------------------------------------------
def has_wandb_credentials() -> bool:
    """An API key in the environment or a `wandb login` entry for the configured host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def tracking_backend(config: "TrainConfig") -> str:
    """wandb | trackio | none: tracking.backend, none when tracking.wandb is false."""
    return config.tracking.backend if config.tracking.wandb else "none"


def resolve_mode(config: "TrainConfig") -> str:
    """W&B's mode, online | offline | disabled, as the module docstring says; disabled when the
    run's backend is not W&B."""
    if tracking_backend(config) != "wandb":
        return "disabled"
    if config.tracking.mode is not None:
        mode = config.tracking.mode
    elif os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        mode = os.environ["WANDB_MODE"]
    else:
        mode = "online" if has_wandb_credentials() else "offline"
    if mode == "online" and not has_wandb_credentials():
        mode = "offline"
    return mode


def project_name(config: "TrainConfig") -> str:
    """tracking.project, else the reference's project_name, else '<dataset>-ACT-torch' as the
    reference derives it."""
    if config.tracking.project:
        return config.tracking.project
    if config.project_name:
        return config.project_name
    dataset = Path(str(config.data_paths[0]).rstrip("/")).name if config.data_paths else "trm"
    return f"{dataset}-ACT-torch"


def run_id(project: str, name: str) -> str:
    """A stable id from the run name: `--resume`, worker restarts and the sweep driver's
    summary update all reach the same W&B run."""
    return hashlib.sha256(f"{project}/{name}".encode()).hexdigest()[:16]


def files_location(folder: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(directory for wandb.init, URI its wandb/ folder is uploaded to at the end).

    WANDB_DIR wins; a local folder holds the files itself; a folder at a URI gets them through
    a local scratch folder (W&B writes to local disk), uploaded to <folder>/wandb/ at the end,
    or offline runs would stay on whichever node wrote them."""
    if os.environ.get("WANDB_DIR"):
        return os.environ["WANDB_DIR"], None
    if folder and is_uri(folder):
        return tempfile.mkdtemp(prefix="trm-ray-wandb-"), folder
    return folder, None


def _publish(directory: Optional[str], upload_to: Optional[str]) -> None:
    """Upload a scratch folder's wandb/ to <upload_to>/wandb/ and remove the scratch folder."""
    if upload_to is None or directory is None:
        return
    from trm_ray import storage

    local = Path(directory) / "wandb"
    try:
        if local.is_dir():
            storage.upload_dir(local, storage.join(upload_to, "wandb"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _warn(text: str) -> None:
    print(f"trm-ray: W&B: {text}", file=sys.stderr, flush=True)


def finish_run(run: Any, timeout_s: float = 60.0) -> None:
    """run.finish(), then wait until wandb has closed the run's transaction log.

    finish() can return before wandb-core writes the log's last (partial) 32 KiB block
    (seen with wandb 0.31: about one run in 30); an upload of the folder right after (a URI
    run folder) or a reader would get the log without its tail. Closed = the exit record,
    the log's last, is on disk."""
    path = Path(run.settings.sync_file)
    run.finish()
    deadline, checked = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.is_file() else 0
        if size != checked:
            checked = size
            if any(r.WhichOneof("record_type") == "exit" for r in read_transaction_log(path.read_bytes())):
                return
        time.sleep(0.05)
    _warn(f"{path} was not closed within {timeout_s:.0f} s")


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------
class WandbTracker:
    """One W&B run per training run; a resumed training run continues the same W&B run."""

    def __init__(self, *, project: str, name: str, group: str | None, config: dict[str, Any], mode: str,
                 directory: str | None, num_parameters: int | None, upload_to: str | None = None,
                 kind: RunKind | None = None, log_checkpoints: str = "none", score: Score = PUZZLE_SCORE):
        """score: what picks the best checkpoint (trm_ray.run_folder.score_for)."""
        import wandb

        kind = kind or RunKind(JOB_TRAIN, [])
        self.upload_to = upload_to
        if upload_to is not None and directory is None:
            directory = tempfile.mkdtemp(prefix="trm-ray-wandb-")
        self.directory = directory
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, group=group, config=config, mode=mode, dir=directory,
                              id=run_id(project, name), resume="allow", reinit="finish_previous",
                              job_type=kind.job_type, tags=kind.tags)
        if num_parameters is not None:
            self.run.summary[NUM_PARAMETERS_KEY] = num_parameters
            self.run.config.update({NUM_PARAMETERS_KEY: num_parameters}, allow_val_change=True)
        self.run.define_metric(STEP_METRIC)
        for metric, ops in kind.summary_ops.items():
            self.run.define_metric(metric, step_metric=STEP_METRIC, summary=",".join(ops))
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self.log_checkpoints = log_checkpoints
        self.score = score
        self.artifact_name = "model-" + re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        # (score ranked higher-is-better, step, location, score as reported)
        self._best: Optional[tuple[float, int, Optional[str], Optional[float]]] = None
        self._best_logged = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({**metrics, STEP_METRIC: step})

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Any], step: int) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=list(columns), data=table_rows(columns, rows)), STEP_METRIC: step})

    # ---- checkpoints as artifacts -----------------------------------------------------------
    def checkpoint_saved(self, step: int, folder: Path, location: Optional[str], score: Optional[float]) -> None:
        """`score`: the run's score metric (self.score: exact accuracy, or a text run's val loss).
        log_checkpoints=all: every checkpoint now (aliases latest, step_N, and best on a new
        best). best: remember the best (ties go to the later one, as Ray keeps it) and log it at
        training_finished() from where the run keeps it; a checkpoint kept nowhere (a run
        without a run folder) is logged now, while its files exist, each time a best appears."""
        if self.log_checkpoints == "none":
            return
        ranked = self.score.ranked(score)
        new_best = self._best is None or ranked >= self._best[0]
        if new_best:
            self._best, self._best_logged = (ranked, step, location, score), False
        if self.log_checkpoints == "all":
            self._log_model(step, folder, location, ["latest", f"step_{step}", *(["best"] if new_best else [])], score)
        elif new_best and location is None:
            self._log_model(step, folder, None, ["best", f"step_{step}"], score)
            self._best_logged = True

    def training_finished(self) -> None:
        if self.log_checkpoints != "best" or self._best is None or self._best_logged:
            return
        _, step, location, score = self._best
        if location is not None and not is_uri(location) and not Path(location).is_dir():
            _warn(f"best checkpoint {location} is gone; not logged as an artifact")
            return
        self._log_model(step, Path(location) if location and not is_uri(location) else None, location,
                        ["best", f"step_{step}"], score)
        self._best_logged = True

    def _log_model(self, step: int, folder: Optional[Path], location: Optional[str], aliases: list[str],
                   score: Optional[float]) -> None:
        """One version of the run's "model" artifact: the files' bytes from `folder` (W&B
        copies them to its staging area at once, so the folder may go), or, for a location
        on object storage, references to the objects there (nothing is read or uploaded:
        the checkpoint may still be uploading)."""
        import wandb

        from trm_ray import storage
        from trm_ray.checkpoint import CONFIG_FILE, MODEL_FILE

        # The reference-format weights and config (train_state.pt, the optimizer state for
        # resuming, stays in the run folder).
        artifact_files = (MODEL_FILE, CONFIG_FILE)
        metadata: dict[str, Any] = {STEP_METRIC: step}
        if is_metric_value(score):
            metadata[self.score.key] = score
        artifact = wandb.Artifact(self.artifact_name, type="model", metadata=metadata)
        try:
            if location is not None and is_uri(location):
                for name in artifact_files:
                    artifact.add_reference(storage.join(location, name), name=name, checksum=False)
            else:
                for name in artifact_files:
                    if (Path(folder) / name).is_file():
                        artifact.add_file(str(Path(folder) / name), name=name)
            self.run.log_artifact(artifact, aliases=aliases)
        except Exception as error:  # W&B's own errors (a missing boto3 for s3:// references, ...)
            # must not stop training: the checkpoint itself is safe in the run folder
            _warn(f"checkpoint at step {step} not logged as an artifact: {first_line(error)}")

    def finish(self) -> None:
        try:
            finish_run(self.run)
        finally:
            _publish(self.directory, self.upload_to)


def create_tracker(config: "TrainConfig", *, run_dir: str | None = None,
                   num_parameters: int | None = None, score: Optional[Score] = None) -> Tracker:
    """The tracker of this run (call on rank 0 only); W&B files go to WANDB_DIR or run_dir,
    Trackio's to TRACKIO_DIR (trm_ray.trackio_tracker). score: what picks the best checkpoint
    (default: score_for(config))."""
    backend = tracking_backend(config)
    if backend == "trackio":
        from trm_ray.trackio_tracker import TrackioTracker

        kind = run_kind(config, run_dir)
        return TrackioTracker(project=project_name(config), name=config.run_name or "trm", group=config.tracking.group,
                              config=config.model_dump(mode="json"), job_type=kind.job_type, tags=kind.tags,
                              num_parameters=num_parameters, score=score or score_for(config))
    mode = resolve_mode(config)
    if mode == "disabled":
        return NullTracker()
    directory = os.environ.get("WANDB_DIR") or (run_dir if run_dir and not is_uri(run_dir) else None)
    upload_to = run_dir if run_dir and is_uri(run_dir) and not os.environ.get("WANDB_DIR") else None
    return WandbTracker(project=project_name(config), name=config.run_name or "trm", group=config.tracking.group,
                        config=config.model_dump(mode="json"), mode=mode, directory=directory,
                        num_parameters=num_parameters, upload_to=upload_to, kind=run_kind(config, run_dir),
                        log_checkpoints=config.tracking.log_checkpoints, score=score or score_for(config))


# --------------------------------------------------------------------------------------------
# After a run finished: add to its summary (the sweep driver's ASHA outcome)
# --------------------------------------------------------------------------------------------
LOG_HEADER = b":W&B"
LOG_HEADER_SIZE = 7  # ":W&B", magic 0xBEE1 (uint16), version (uint8)
LOG_BLOCK_SIZE = 32768
LOG_RECORD_HEADER = struct.Struct("<IHB")  # checksum, length, type: full=1 first=2 middle=3 last=4


def read_transaction_log(data: bytes) -> Iterator[Any]:
    """The records (wandb.proto Record messages) of a .wandb file: LevelDB's log format in
    32 KiB blocks after a 7-byte header. A record cut short at the end (a writer killed
    mid-write) or unreadable ends the reading."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    if data[:4] != LOG_HEADER:
        return
    position, pieces = LOG_HEADER_SIZE, b""
    while position + LOG_RECORD_HEADER.size <= len(data):
        left_in_block = LOG_BLOCK_SIZE - position % LOG_BLOCK_SIZE
        if left_in_block < LOG_RECORD_HEADER.size:  # zero padding at a block's end
            position += left_in_block
            continue
        _, length, kind = LOG_RECORD_HEADER.unpack_from(data, position)
        start = position + LOG_RECORD_HEADER.size
        if kind == 0 or start + length > len(data):
            return
        payload, position = data[start:start + length], start + length
        if kind in (1, 2):
            pieces = payload
        else:
            pieces += payload
        if kind in (1, 4):
            record = pb.Record()
            try:
                record.ParseFromString(pieces)
            except DecodeError:
                return
            yield record


def _apply(target: dict[str, Any], item: Any) -> None:
    path = list(item.nested_key) or [item.key]
    node = target
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = json.loads(item.value_json)


def _remove(target: dict[str, Any], item: Any) -> None:
    path = list(item.nested_key) or [item.key]
    node = target
    for part in path[:-1]:
        node = node.get(part, {})
    node.pop(path[-1], None)


def replay_state(records: Iterator[Any], config: dict[str, Any], summary: dict[str, Any]) -> None:
    """Fold a run's config and summary records into `config` and `summary` (W&B's own keys,
    _wandb and _*, left out)."""
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            for item in record.run.config.update:
                _apply(config, item)
            for item in record.run.summary.update:
                _apply(summary, item)
        elif kind == "config":
            for item in record.config.update:
                _apply(config, item)
            for item in record.config.remove:
                _remove(config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _apply(summary, item)
            for item in record.summary.remove:
                _remove(summary, item)
    for state in (config, summary):
        for key in [k for k in state if k.startswith("_")]:
            del state[key]


def run_logs(run_dir: Optional[str], wandb_id: str) -> tuple[Optional[str], list[str]]:
    """(folder, its transaction logs of run `wandb_id`, oldest first): the folder is
    WANDB_DIR/wandb or <run_dir>/wandb (a URI too); the logs are paths relative to it."""
    from trm_ray import storage

    if os.environ.get("WANDB_DIR"):
        root = os.path.join(os.environ["WANDB_DIR"], "wandb")
    elif run_dir:
        root = storage.join(run_dir, "wandb")
    else:
        return None, []
    pattern = f"*run-*-{wandb_id}/run-{wandb_id}.wandb"
    try:
        found = [p for p in storage.list_files(root) if fnmatch.fnmatch(p, pattern)]
    except OSError:
        return root, []
    return root, sorted(found, key=_log_time)


def _log_time(relative: str) -> str:
    """YYYYmmdd_HHMMSS of a log in a folder named [offline-]run-<YYYYmmdd_HHMMSS>-<id>."""
    return relative.split("/", 1)[0].removeprefix("offline-").removeprefix("run-")[:15]


@dataclass
class LoggedState:
    """What a run's transaction logs hold: its config and summary, and the logs without a
    run record (a run killed before wandb wrote its first 32 KiB block)."""

    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    empty_logs: list[str] = field(default_factory=list)  # locations, paths or URIs


def logged_state(run_dir: Optional[str], wandb_id: str) -> LoggedState:
    """Fold the run's transaction logs (run_logs), oldest first."""
    from trm_ray import storage

    root, found = run_logs(run_dir, wandb_id)
    state = LoggedState()
    for relative in found:
        location = storage.join(root, relative)
        seen: set[str] = set()

        def noted(records: Iterator[Any]) -> Iterator[Any]:
            for record in records:
                seen.add(record.WhichOneof("record_type"))
                yield record

        replay_state(noted(read_transaction_log(storage.read_bytes(location))), state.config, state.summary)
        if "run" not in seen:
            state.empty_logs.append(location)
    return state


def mark_unsyncable(logs: list[str]) -> None:
    """A `<log>.synced` marker beside each log: `wandb sync` skips them. A log without a run
    record holds nothing to upload, and wandb 0.31 refuses to sync any of the paths it is
    given when one of them is such a log ("Failed to read ...: EOF")."""
    from trm_ray import storage

    for location in logs:
        storage.write_bytes(f"{location}.synced", b"")


def _after_last_log(run_dir: Optional[str], wandb_id: str) -> None:
    """Wait until the clock's second is past the run's newest log folder's: W&B names a run's
    folder by the second it started, and a second run with the same id in that second would
    get the same name (an upload to a URI run folder would then replace the first)."""
    _, found = run_logs(run_dir, wandb_id)
    newest = _log_time(found[-1]) if found else ""
    deadline = time.monotonic() + 2.0  # a folder from a node whose clock runs ahead: not forever
    while time.strftime("%Y%m%d_%H%M%S") <= newest and time.monotonic() < deadline:
        time.sleep(0.05)


def _ops_for(key: str, summary_ops: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    if key in summary_ops:
        return summary_ops[key]
    return next((ops for name, ops in summary_ops.items() if name.endswith("*") and fnmatch.fnmatchcase(key, name)), ())


def summary_from_results(results: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
                         summary_ops: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """The summary entries that `results` (rows of reported metrics, oldest first: `epoch`,
    `step` and the `<group>/<name>` metrics) imply, merged with what `base` (the summary so
    far) holds: max and min over both, last from the results, first from base when there."""
    summary: dict[str, Any] = {}
    keys = dict.fromkeys(k for row in results for k in row if "/" in k or k in ("epoch", STEP_METRIC))
    for key in keys:
        values = [row[key] for row in results if is_metric_value(row.get(key))]
        if not values:
            continue
        ops = _ops_for(key, summary_ops)
        if not ops:
            summary[key] = values[-1]
            continue
        before = base.get(key)
        before = dict(before.items()) if hasattr(before, "items") else {}
        merged: dict[str, Any] = {}
        for op in ops:
            earlier = [before[op]] if is_metric_value(before.get(op)) else []
            if op in ("max", "min"):
                merged[op] = (max if op == "max" else min)([*values, *earlier])
            elif op == "last":
                merged[op] = values[-1]
            elif op == "first":
                merged[op] = earlier[0] if earlier else values[0]
            elif op == "mean":
                merged[op] = sum(values) / len(values)
        summary[key] = merged
    return summary


def add_to_summary(config: "TrainConfig", run_dir: str, values: Mapping[str, Any], *,
                   results: Sequence[Mapping[str, Any]] = (), mode: Optional[str] = None) -> bool:
    """Add `values` to the summary of the training run of `config` in `run_dir` after that run
    finished, or was killed; False when W&B is off for it or W&B refused.

    Online: the run is resumed by its id (W&B brings back its summary and config) and
    finished again. Offline: a new offline run with the same id is written beside the first;
    `wandb sync` uploads both into the same run, in order of start time. It carries the first
    one's config and summary again (read from its transaction log) besides `values`, so the
    run ends with everything whether the server merges or replaces them; a first log left
    without a run record is marked synced (mark_unsyncable), or `wandb sync` would refuse both.

    `results`: the metrics the run reported (a sweep's records), oldest first. A trial stopped
    by ASHA is killed before it finishes its W&B run, and wandb writes its log in 32 KiB
    blocks, so the log's tail (all of it, for a short trial) is lost offline, as is the last
    summary update online: the summary entries are completed from these."""
    mode = mode or resolve_mode(config)
    if mode == "disabled":
        return False
    import wandb

    project, name = project_name(config), config.run_name or "trm"
    wandb_id = run_id(project, name)
    kind = run_kind(config, run_dir)
    logged = LoggedState() if mode == "online" else logged_state(run_dir, wandb_id)
    previous_summary = logged.summary
    _after_last_log(run_dir, wandb_id)
    directory, upload_to = files_location(run_dir)
    try:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, name=name, group=config.tracking.group, id=wandb_id, dir=directory,
                         job_type=kind.job_type, tags=kind.tags, mode=mode, resume="allow", reinit="finish_previous",
                         config=None if mode == "online" else {**config.model_dump(mode="json"), **logged.config},
                         settings=wandb.Settings(**_SHORT_RUN_SETTINGS))
        if mode == "online":  # the summary the server holds, brought back by resuming
            previous_summary = {key: run.summary.get(key) for key in run.summary.keys()}
        completed = summary_from_results(results, previous_summary, kind.summary_ops)
        run.summary.update({**(previous_summary if mode != "online" else {}), **completed, **values})
        finish_run(run)
    except Exception as error:  # W&B's errors (no network, a refused resume)
        # must not fail the sweep that calls this
        _warn(f"could not update run {name}: {first_line(error)}")
        return False
    finally:
        _publish(directory, upload_to)
    mark_unsyncable(logged.empty_logs)  # the run just written holds what they lack
    return True


# --------------------------------------------------------------------------------------------
# Eval-only runs
# --------------------------------------------------------------------------------------------
def eval_table_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of per-set metrics: one row per `eval/<set>/...` set, then `all`
    (the `eval/...` totals)."""
    sets = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/") and k.count("/") == 2})
    prefixes = [(s, f"eval/{s}/") for s in sets] + [("all", "eval/")]
    names = list(EVAL_TABLE_COLUMNS)
    for _, prefix in prefixes:
        for key in metrics:
            rest = key[len(prefix):] if key.startswith(prefix) else ""
            if rest and "/" not in rest and rest not in names:
                names.append(rest)
    names = [n for n in names if any(f"{p}{n}" in metrics for _, p in prefixes)]
    rows = [[label, *(metrics.get(f"{prefix}{n}") for n in names)] for label, prefix in prefixes
            if any(f"{prefix}{n}" in metrics for n in names)]
    return ["set", *names], rows


def track_eval(metrics: Mapping[str, Any], *, checkpoint: str, dataset: str, outdir: Optional[str] = None,
               config: Optional["TrainConfig"] = None, mode: Optional[str] = None) -> Optional[str]:
    """Record an eval-only run: a W&B run with job_type "eval", the metrics in its summary and
    a table of the per-set metrics (`eval/sets`). Returns where to find it (the run's URL
    online, its offline folder otherwise, under <outdir>/wandb/), None when W&B is off.

    `config`: the checkpoint's training recipe when known (its project, group, tags and keys
    then match the training run's, so both filter together); else the project is derived from
    the dataset. Mode as for training runs (`mode` overrides). Files go to WANDB_DIR, else
    <outdir>/wandb/ (a URI outdir: a local scratch folder uploaded there at the end), else
    ./wandb/; call it after the eval outputs are written, since their writer refuses an
    existing outdir. W&B failing is a warning on stderr (and None), never an exception."""
    from trm_ray import storage
    from trm_ray.config import TrainConfig

    recipe = config or TrainConfig(data_paths=[dataset])
    mode = mode or resolve_mode(recipe)
    if mode == "disabled":
        return None
    import wandb

    checkpoint_name = storage.name_of(checkpoint)
    name = f"eval-{config.run_name}-{checkpoint_name}" if config and config.run_name else f"eval-{checkpoint_name}"
    tags = run_tags(recipe, datasets=[dataset]) if config else [_dataset_name(dataset)[:MAX_TAG_LENGTH]]
    run_config = {**(config.model_dump(mode="json") if config else {}), "checkpoint": str(checkpoint),
                  "dataset": str(dataset)}
    directory, upload_to = files_location(str(outdir) if outdir is not None else None)
    try:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project_name(recipe), name=name, group=recipe.tracking.group, config=run_config,
                         mode=mode, dir=directory, job_type=JOB_EVAL, tags=tags, reinit="finish_previous",
                         settings=wandb.Settings(**_SHORT_RUN_SETTINGS))
        columns, rows = eval_table_rows(metrics)
        run.log({**metrics, EVAL_TABLE_KEY: wandb.Table(columns=columns, data=rows)})
        local_folder = Path(run.settings.sync_dir)
        where = run.url if mode == "online" else str(local_folder)
        finish_run(run)
        if upload_to is not None and mode != "online":
            where = storage.join(upload_to, "wandb", local_folder.name)
    except Exception as error:  # W&B's errors (no network, refused credentials): the evaluation's
        # own files are written already, so this is a warning, not a failed eval
        _warn(f"eval run not recorded: {first_line(error)}")
        return None
    finally:
        _publish(directory, upload_to)
    return where
