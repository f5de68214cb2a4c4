"""What runs the loop supplies (a `Session`): where to resume from, where reports and checkpoint
folders go, and the run folder. LocalSession is the one-process runner; under Ray Train,
trm_ray.train.trainer.RaySession is.

    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession
    final = train(config, LocalSession("runs/my-run"))     # one process, no Ray
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import ContextManager, Iterator, Optional, Protocol

from trm_ray import storage
from trm_ray.checkpoint import TRAIN_STATE_FILE
from trm_ray.run_folder import METRICS_FILE, STEP_KEY, append_metrics, checkpoint_dir_name


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
