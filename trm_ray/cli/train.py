"""`trm-ray train`: train TRM data-parallel with Ray Train.

    trm-ray train experiments/quickstart.yaml
    trm-ray train experiments/sudoku-mlp.yaml arch.L_cycles=6 lr=1e-4 ray.num_workers=8 ray.use_gpu=true
    trm-ray train --resume runs/sudoku-mlp-20260101-120000
    trm-ray train experiments/quickstart.yaml ray.storage_path=s3://bucket/runs   # run folder in object storage
    trm-ray train --resume s3://bucket/runs/quickstart-20260101-120000
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

from trm_ray.cli import CLUSTER_ADDRESS_HELP, one_line

if TYPE_CHECKING:
    from trm_ray.config import TrainConfig
    from trm_ray.run_folder import TrainRunResult

EPILOG = """\b
Run folder: <ray.storage_path>/<run_name>/ with config.yaml, metrics.jsonl, checkpoint_<step>/
(model.pt + all_config.yaml in the reference format, train_state.pt) and wandb/.
TRM_RAY_REPORT_EVERY_STEPS=N reports train metrics every N steps (default: about once a minute).

\b
Examples:
  trm-ray data build datasets/sudoku-4x4-quickstart.yaml
  trm-ray train experiments/quickstart.yaml
  trm-ray train experiments/sudoku-mlp.yaml arch.L_cycles=6 lr=1e-4 ray.num_workers=8 ray.use_gpu=true --address auto
  trm-ray train --resume runs/quickstart-20260101-120000
  trm-ray train --resume s3://bucket/runs/quickstart-20260101-120000
"""


def _reject_multirun(args: tuple[str, ...]) -> None:
    """Hydra's -m/--multirun launches one run per combination; trm-ray sweeps with Ray Tune."""
    flags = [arg for arg in args if arg in ("-m", "--multirun")]
    if flags:
        raise click.ClickException(f"{flags[0]}: hydra's multirun is not supported by trm-ray train; put the "
                                   f"values to sweep in a sweep file's search_space (examples in "
                                   f"experiments/sweeps/) and run `trm-ray sweep FILE`")


def _split_args(args: tuple[str, ...]) -> tuple[Optional[str], list[str]]:
    """RECIPE (the first argument without '=') and the key=value overrides."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def _run_folder(resume_dir: str) -> tuple[str, str, str]:
    """(run_name, ray.storage_path, config.yaml location) of a run folder, a path or a URI.
    URIs are split as strings: pathlib would fold 's3://' into 's3:/'."""
    from trm_ray import storage
    from trm_ray.config import ConfigError
    from trm_ray.run_folder import CONFIG_FILE

    if storage.is_uri(resume_dir):
        run_dir = resume_dir.rstrip("/")
        scheme, rest = run_dir.split("://", 1)
        if "/" not in rest:
            raise ConfigError(f"--resume {resume_dir}: a run folder URI names the run inside the storage path, "
                              f"e.g. {scheme}://bucket/runs/RUN_NAME")
        parent, name = run_dir.rsplit("/", 1)
        return name, parent, storage.join(run_dir, CONFIG_FILE)
    run_dir = Path(resume_dir).expanduser().resolve()
    return run_dir.name, str(run_dir.parent), str(run_dir / CONFIG_FILE)


def _finished_run(config: "TrainConfig") -> Optional[tuple[int, "TrainRunResult"]]:
    """(the epoch of its last checkpoint, the run's summary) when the run's records say it is
    done: that checkpoint was taken at an epoch >= config.epochs (a run checkpoints at its last
    evaluation). Resuming it would start Ray and a worker group only to find nothing left to
    train. None: not finished."""
    from trm_ray.run_folder import EPOCH_KEY, read_metrics, run_dir_of, summarize

    run_dir = run_dir_of(config)
    checkpointed = [r for r in read_metrics(run_dir) if r.get("checkpoint")]
    epoch = checkpointed[-1].get(EPOCH_KEY) if checkpointed else None
    if not isinstance(epoch, (int, float)) or epoch < config.epochs:
        return None
    return int(epoch), summarize(run_dir)


def _metrics_line(metrics: dict) -> str:
    if "text/val_loss" in metrics:  # a text run: exact accuracy of whole windows says nothing
        keys = ["step", "epoch", "train/lm_loss", "train/accuracy", "text/val_loss", "text/perplexity",
                "text/next_token_accuracy"]
    else:
        keys = ["step", "epoch", "train/lm_loss", "train/accuracy", "train/exact_accuracy", "eval/exact_accuracy",
                "eval/exact_accuracy_low", "eval/exact_accuracy_high"]
    parts = [f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if metrics.get(k) is not None]
    return " ".join(parts) or "(none)"


@click.command(context_settings={"ignore_unknown_options": True}, epilog=EPILOG)
@click.argument("args", nargs=-1, metavar="[RECIPE.yaml] [KEY=VALUE]...")
@click.option("--address", help=CLUSTER_ADDRESS_HELP)
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the stopped run in this run folder (a path or a URI).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
def train(args: tuple[str, ...], address: Optional[str], resume_dir: Optional[str], dry_run: bool) -> None:
    """Train a TRM recipe on Ray Train (data-parallel, checkpointed, restartable).

    RECIPE.yaml is a training recipe: a YAML path, or a shipped one by name (experiments/quickstart.yaml,
    or just quickstart); KEY=VALUE pairs override its keys
    with the reference's names (arch.L_cycles=6 lr=1e-4) and the Ray ones (ray.num_workers=4).
    With --resume, RECIPE is optional: the run's own config.yaml is the base.
    """
    from trm_ray import storage
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.config import ConfigError, TrainConfig, apply_overrides, build, read_yaml, set_key, to_yaml
    from trm_ray.data.layout import DatasetError
    from trm_ray.errors import first_line
    from trm_ray.overrides import load_recipe
    from trm_ray.recipes import find_recipe

    _reject_multirun(args)
    recipe, overrides = _split_args(args)
    try:
        if resume_dir is not None:
            run_name, storage_path, saved = _run_folder(resume_dir)
            try:
                found = storage.is_file(saved)
            except storage.StorageError as error:
                raise ConfigError(f"--resume {resume_dir}: {error}") from None
            if not found:
                raise ConfigError(f"--resume {resume_dir}: no config.yaml there; pass the run folder "
                                  f"(<ray.storage_path>/<run_name>) of a run started by `trm-ray train`")
            data = load_recipe(find_recipe(recipe, "experiments"), overrides) if recipe \
                else apply_overrides(read_yaml(saved), overrides)  # local or at a URI
            # The run's identity comes from the folder, whatever the recipe says.
            data = set_key(set_key(data, "run_name", run_name), "ray.storage_path", storage_path)
            source = str(recipe or saved)
        else:
            if recipe is None:
                raise ConfigError("give a recipe: trm-ray train RECIPE.yaml [key=value ...] "
                                  "(e.g. experiments/quickstart.yaml, shipped in trm_ray/recipes/)")
            data = load_recipe(find_recipe(recipe, "experiments"), overrides)  # a path or a shipped recipe
            source = recipe
        config = build(TrainConfig, data, source)
        if not config.run_name:
            stem = Path(recipe).stem if recipe else "run"
            config = build(TrainConfig, {**config.model_dump(), "run_name": f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"},
                           source)
        if dry_run:
            click.echo(to_yaml(config), nl=False)
            return

        from trm_ray.train.trainer import check_inputs, fit

        finished = _finished_run(config) if resume_dir is not None else None
        if finished is not None:
            epoch, result = finished
            click.echo(f"run already finished: its last checkpoint is at epoch {epoch} (epochs={config.epochs}); "
                       f"nothing to train")
        else:
            config = check_inputs(config)
            result = fit(config, address=address, resume=resume_dir is not None)
    except (ConfigError, DatasetError, CheckpointError, storage.StorageError) as error:
        raise click.ClickException(one_line(str(error))) from None
    except Exception as error:  # Ray's TrainingFailedError and friends: one line, plus where to look
        if type(error).__name__ not in ("TrainingFailedError", "WorkerGroupError", "ControllerError"):
            raise
        raise click.ClickException(f"training failed: {first_line(error)} (the run folder keeps its checkpoints; "
                                   f"continue with --resume)") from None

    click.echo(f"final: {_metrics_line(result.final)}")
    click.echo(f"best:  {_metrics_line(result.best)}")
    if result.best_checkpoint:
        click.echo(f"best checkpoint: {result.best_checkpoint}")
    if result.last_checkpoint:
        click.echo(f"last checkpoint: {result.last_checkpoint}")
    click.echo(f"run folder: {result.run_dir}")
