"""Trackio as the tracker (`tracking.backend: trackio`): local files, no server.

    TRACKIO_DIR=runs/trackio trm-ray train experiments/quickstart.yaml tracking.backend=trackio
    TRACKIO_DIR=runs/trackio trackio show --project sudoku-extreme-1k-aug-1000-ACT-torch

A training run is one Trackio run in its project's SQLite file, <TRACKIO_DIR>/<project>.db
(trackio's own folder, ~/.cache/huggingface/trackio, when TRACKIO_DIR is unset). trackio reads
TRACKIO_DIR once, when a process first imports it, so the variable must be set before that.

It records what the W&B run records (trm_ray.tracking): the project, the run name, the group (a
sweep's trials share the sweep's, tracking.group), every metric row at its train step, tables,
and the recipe as the run's config with the job type, the tags and the number of parameters
added (Trackio has no tags, job types or summary). A kept checkpoint's location is logged as a
text value at its step (`checkpoint/location`), the best one's at the end (`checkpoint/best`):
the checkpoints stay in the run folder, nothing is uploaded.

Local only: trackio.init gets no Space and no server, and TRACKIO_SPACE_ID or
TRACKIO_SERVER_URL in the environment (which would make trackio send the run there) is an
error. No dashboard is started, no system-metric thread runs, and `finish` joins trackio's one
writer thread, so nothing of trackio's is left running after it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from trm_ray.errors import first_line
from trm_ray.run_folder import PUZZLE_SCORE, Score
from trm_ray.tracking import NUM_PARAMETERS_KEY, STEP_METRIC, table_rows

CHECKPOINT_KEY = "checkpoint/location"
BEST_CHECKPOINT_KEY = "checkpoint/best"
# What W&B keeps beside the config and Trackio has no place for: in the config, by these names.
JOB_TYPE_KEY, TAGS_KEY = "job_type", "tags"
# trackio's own variables that send a run to a Hugging Face Space or a Trackio server.
REMOTE_ENV = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL")


def import_trackio() -> Any:
    """The trackio module; a one-line error when it is not installed (an optional extra)."""
    from trm_ray.config import ConfigError

    try:
        import trackio
    except ImportError as error:
        raise ConfigError(f"tracking.backend=trackio needs the trackio package ({first_line(error)}); install it "
                          f"with `pip install 'trm-ray[trackio]'`, or choose tracking.backend=wandb|none") from None
    return trackio


def trackio_dir() -> Path:
    """The folder trackio writes to in this process (fixed when trackio was first imported)."""
    return Path(import_trackio().utils.TRACKIO_DIR)


def check_local_only() -> None:
    """One-line errors for an environment in which trackio would not write local files where
    TRACKIO_DIR says."""
    from trm_ray.config import ConfigError

    for name in REMOTE_ENV:
        if os.environ.get(name):
            raise ConfigError(f"{name} is set: tracking.backend=trackio records local files only; unset {name} "
                              f"(`trackio sync` can upload a local project later)")
    wanted = os.environ.get("TRACKIO_DIR")
    if wanted and Path(wanted).expanduser().resolve() != trackio_dir().expanduser().resolve():
        raise ConfigError(f"TRACKIO_DIR={wanted} was set after trackio was loaded in this process, which writes "
                          f"to {trackio_dir()}; set TRACKIO_DIR before the run starts")


def show_command(project: str) -> str:
    """The command that opens the project's dashboard (TRACKIO_DIR spelled out when set)."""
    command = f"trackio show --project {shlex.quote(project)}"
    if os.environ.get("TRACKIO_DIR"):
        command = f"TRACKIO_DIR={shlex.quote(str(trackio_dir()))} {command}"
    return command


@contextlib.contextmanager
def _quiet(trackio: Any):
    """trackio prints a banner at init and "Uploading logs ..." at finish; one line of ours
    says where the files are instead. Its modules get a `print` of their own that drops the
    text: redirecting sys.stdout would not do under Ray Train, whose patched print sends
    every line to its logger as well (and it would swallow other threads' output). trackio's
    warnings (the warnings module) still show."""
    modules = [trackio, *(sys.modules[name] for name in ("trackio.utils", "trackio.run") if name in sys.modules)]
    shadowed = [m for m in modules if "print" not in vars(m)]
    for module in shadowed:
        module.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for module in shadowed:
            del module.print


@contextlib.contextmanager
def _no_hub_lookup(run_class: Any):
    """trackio 0.43 asks the Hugging Face Hub who the user is (a network call when an HF token
    is present) to fill a username column; a local run names no user and contacts nothing."""
    if not hasattr(run_class, "_get_username"):
        yield
        return
    original = run_class.__dict__.get("_get_username")
    run_class._get_username = lambda self: None
    try:
        yield
    finally:
        if original is not None:
            run_class._get_username = original
        else:
            del run_class._get_username


class TrackioTracker:
    """One Trackio run per training run; a resumed training run continues the run of that name."""

    def __init__(self, *, project: str, name: str, group: Optional[str], config: dict[str, Any],
                 job_type: str, tags: list[str], num_parameters: Optional[int] = None, score: Score = PUZZLE_SCORE):
        """score: what picks the best checkpoint (trm_ray.run_folder.score_for)."""
        check_local_only()
        trackio = import_trackio()
        from trackio.run import Run

        from trm_ray.config import ConfigError

        run_config = {**config, JOB_TYPE_KEY: job_type, TAGS_KEY: list(tags)}
        if num_parameters is not None:
            run_config[NUM_PARAMETERS_KEY] = num_parameters
        try:
            with _quiet(trackio), _no_hub_lookup(Run):
                self.run = trackio.init(project=project, name=name, group=group, config=run_config, resume="allow",
                                        embed=False, auto_log_cpu=False, auto_log_gpu=False)
        except ValueError as error:  # trackio refuses some project names (a "registry-" prefix, ...)
            raise ConfigError(f"tracking.backend=trackio: project {project!r}: {first_line(error)}") from None
        self.project, self.name, self.score = project, name, score
        self._best: Optional[tuple[float, int, str]] = None  # (score, step, location)
        self._finished = False
        # to the process's real stderr, as trm_ray.train.progress does: Ray Train's print patch
        # would print a line to sys.stderr twice
        print(f"trm-ray: Trackio: run {name} of project {project} is recorded under {trackio_dir()}; "
              f"look at it with: {show_command(project)}", file=sys.__stderr__ or sys.stderr, flush=True)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        # the step is the row's own (trackio would rename a metric of that name)
        self.run.log({k: v for k, v in metrics.items() if k != STEP_METRIC}, step=step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Any], step: int) -> None:
        self.run.log({key: import_trackio().Table(columns=list(columns), data=table_rows(columns, rows))}, step=step)

    def checkpoint_saved(self, step: int, folder: Path, location: Optional[str], score: Optional[float]) -> None:
        """The kept checkpoint's location at its step; the best (ties go to the later one, as
        Ray keeps it) remembered for training_finished. A checkpoint kept nowhere is not named."""
        if location is None:
            return
        self.run.log({CHECKPOINT_KEY: str(location)}, step=step)
        value = self.score.ranked(score)
        if self._best is None or value >= self._best[0]:
            self._best = (value, step, str(location))

    def training_finished(self) -> None:
        if self._best is not None:
            _, step, location = self._best
            self.run.log({BEST_CHECKPOINT_KEY: location}, step=step)

    def finish(self) -> None:
        """Write what is queued and end trackio's writer thread (finish joins it)."""
        if self._finished:
            return
        self._finished = True
        trackio = import_trackio()
        from trackio import context_vars

        try:
            with _quiet(trackio):
                self.run.finish()
        finally:
            # trackio.init made this the current run; its exit handler would finish it again
            if context_vars.current_run.get() is self.run:
                context_vars.current_run.set(None)
