"""Experiment tracking behind one small interface: W&B, or a no-op twin.

    tracker = create_tracker(config, run_dir="runs/sudoku-mlp", num_parameters=7_000_000)
    tracker.log({"train/lm_loss": 0.8}, step=10)
    tracker.finish()

Only rank 0 tracks: the training loop calls `create_tracker` on rank 0 and uses `NullTracker`
elsewhere (Ray's own `setup_wandb(rank_zero_only=True)` does not work inside Train V2 workers).
Mode: `tracking.mode` when set; else WANDB_MODE when set; else online with credentials
(WANDB_API_KEY, or a `wandb login` entry in ~/.netrc) and offline files without them, so a run
on a machine without network or account still records everything (`wandb sync` uploads it).
"""

from __future__ import annotations

import hashlib
import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from trm_ray.data.layout import is_uri

if TYPE_CHECKING:
    from trm_ray.config import TrainConfig

NUM_PARAMETERS_KEY = "num_params"


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing: other ranks, `tracking.wandb=false`, `tracking.mode=disabled`."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run per training run; a resumed training run continues the same W&B run."""

    def __init__(self, *, project: str, name: str, group: str | None, config: dict[str, Any], mode: str,
                 directory: str | None, num_parameters: int | None, upload_to: str | None = None):
        import wandb

        # A run folder at a URI: W&B writes to local disk, so its files are written to a
        # scratch folder here and uploaded to <run folder>/wandb/ by finish(); offline runs
        # would otherwise stay on whichever node ran rank 0.
        self.upload_to = upload_to
        if upload_to is not None and directory is None:
            import tempfile

            directory = tempfile.mkdtemp(prefix="trm-ray-wandb-")
        self.directory = directory
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        # A stable id from the run name: `--resume` and worker restarts append to the same run.
        run_id = hashlib.sha256(f"{project}/{name}".encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, name=name, group=group, config=config, mode=mode,
                              dir=directory, id=run_id, resume="allow", reinit="finish_previous")
        if num_parameters is not None:
            self.run.summary[NUM_PARAMETERS_KEY] = num_parameters
            self.run.config.update({NUM_PARAMETERS_KEY: num_parameters}, allow_val_change=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self) -> None:
        self.run.finish()
        if self.upload_to is not None and self.directory is not None:
            from trm_ray import storage

            local = Path(self.directory) / "wandb"
            try:
                if local.is_dir():
                    storage.upload_dir(local, storage.join(self.upload_to, "wandb"))
            finally:
                import shutil

                shutil.rmtree(self.directory, ignore_errors=True)


def has_wandb_credentials() -> bool:
    """An API key in the environment or a `wandb login` entry for the configured host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(config: "TrainConfig") -> str:
    """online | offline | disabled, as the module docstring says."""
    if not config.tracking.wandb:
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


def create_tracker(config: "TrainConfig", *, run_dir: str | None = None,
                   num_parameters: int | None = None) -> Tracker:
    """The tracker of this run (call on rank 0 only); W&B files go to WANDB_DIR or run_dir."""
    mode = resolve_mode(config)
    if mode == "disabled":
        return NullTracker()
    directory = os.environ.get("WANDB_DIR") or (run_dir if run_dir and not is_uri(run_dir) else None)
    upload_to = run_dir if run_dir and is_uri(run_dir) and not os.environ.get("WANDB_DIR") else None
    return WandbTracker(project=project_name(config), name=config.run_name or "trm", group=config.tracking.group,
                        config=config.model_dump(mode="json"), mode=mode, directory=directory,
                        num_parameters=num_parameters, upload_to=upload_to)
