"""`trm-ray eval`: score any checkpoint (trm-ray or reference) on a dataset's test split.

    trm-ray eval --checkpoint step_50000 --dataset data/arc1concept-aug-1000 --num-workers 4 --use-gpu
    trm-ray eval --checkpoint runs/x/checkpoint_000010 --dataset data/sudoku-4x4-quickstart --one-batch
    trm-ray eval --checkpoint s3://bucket/runs/x/checkpoint_000010 --dataset s3://bucket/data/q --outdir s3://bucket/evals/x

Inference runs as Ray Data batch inference over --num-workers actors (see
trm_ray/eval/ray_data.py for why not Train workers); --num-workers 0 runs in this process.

Command lines written for the alphaXiv fork's scripts/run_eval_only.py work too: its flags
are aliases here (--apply-ema, --eval-save-outputs, --global-batch-size, --config, ...), and
the few with no meaning in trm-ray stop with a line that says what to write instead:

    trm-ray eval --checkpoint step_32550 --dataset data/sudoku-extreme-1k-aug-1000 --outdir sudoku_eval \
        --eval-save-outputs inputs labels puzzle_identifiers preds --global-batch-size 1536 --apply-ema
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click
from click.core import ParameterSource

from trm_ray.cli import checkpoint_of_run, one_line

from trm_ray.config import ConfigError

from trm_ray.eval.outputs import SAVABLE_OUTPUTS
LIST_OPTIONS = ("--save-outputs", "--eval-save-outputs")

# Flags of the alphaXiv fork's scripts/run_eval_only.py that trm-ray has no use for: flag ->
# what to write instead. They are hidden from --help and stop the command with that line.
FORK_ONLY_FLAGS = {
    "--ema-shadow": "trm-ray evaluates the weights stored in the checkpoint (the EMA ones with --ema, the "
                    "default; the live ones with --no-ema): drop --ema-shadow",
    "--repeats": "trm-ray eval is deterministic (every row runs all ACT steps, nothing is sampled), so a "
                 "repeat gives the same numbers: drop --repeats",
    "--seed-start": "trm-ray eval uses no random seed (nothing is sampled): drop --seed-start",
    "--no-eval-only": "trm-ray eval never builds an optimizer: drop --no-eval-only (to train, run `trm-ray train`)",
    "--no-bf16": "trm-ray eval computes in the checkpoint config's arch.forward_dtype: to evaluate in float32, "
                 "pass --config with a copy of its all_config.yaml that says forward_dtype: float32",
    "--nproc-per-node": "trm-ray eval needs no torchrun: pass --num-workers N (Ray actors; --use-gpu gives "
                        "each one GPU)",
}


class _ListOptionCommand(click.Command):
    """Accepts `--save-outputs inputs labels preds` (the reference's argparse nargs list style,
    also after `--save-outputs=inputs`) and commas; --eval-save-outputs likewise."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten, i = [], 0
        while i < len(args):
            name, equals, first = args[i].partition("=")
            if name not in LIST_OPTIONS:
                rewritten.append(args[i])
                i += 1
                continue
            values = [first] if equals else []
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            rewritten += [name, ",".join(values)]
        return super().parse_args(ctx, rewritten)


def _refuse_fork_flag(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Callback of a FORK_ONLY_FLAGS option: given at all (--repeats 1 aside) -> its one-line error."""
    if value is None or value is False or (param.name == "repeats" and value == "1"):
        return
    flag = next(o for o in (*param.opts, *param.secondary_opts) if o.replace("_", "-") in FORK_ONLY_FLAGS)
    raise click.ClickException(f"{flag}: {FORK_ONLY_FLAGS[flag.replace('_', '-')]}")


def _fork_only_options(command: Any) -> Any:
    """The hidden FORK_ONLY_FLAGS options, and the fork flags that mean what trm-ray does anyway."""
    refuse = dict(hidden=True, expose_value=False, is_eager=True, callback=_refuse_fork_flag)
    for decorator in (
        click.option("--ema-shadow", **refuse),
        click.option("--repeats", **refuse),
        click.option("--seed-start", **refuse),
        click.option("--no-eval-only", is_flag=True, **refuse),
        click.option("--no-bf16", is_flag=True, **refuse),
        click.option("--nproc-per-node", "--nproc_per_node", **refuse),
        # The fork's defaults, which are what trm-ray eval always does: accepted, no effect.
        click.option("--eval-only", is_flag=True, hidden=True, expose_value=False),
        click.option("--bf16", is_flag=True, hidden=True, expose_value=False),
    ):
        command = decorator(command)
    return command


@click.command(
    "eval",
    cls=_ListOptionCommand,
    epilog="Examples:\n\n\b\n"
    "  trm-ray eval --checkpoint step_50000 --dataset data/arc1concept-aug-1000 --num-workers 4 --use-gpu "
    "--png arc.png\n"
    "  trm-ray eval --checkpoint step_32550 --dataset data/maze-30x30-hard-1k --global-batch-size 1536 "
    "--apply-ema --outdir maze_eval\n"
    "  trm-ray eval --checkpoint runs/x/checkpoint_000010 --dataset data/sudoku-4x4-quickstart --one-batch "
    "--save-outputs inputs preds q_halt_logits",
)
@click.option("--checkpoint", required=True, type=click.Path(), help="Reference weights file (all_config.yaml beside it), trm-ray checkpoint folder, or a run folder (its best checkpoint); a path or a URI (s3://...).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The run's composed config YAML (all_config.yaml form) for its arch settings; default: the all_config.yaml beside the checkpoint.")
@click.option("--dataset", required=True, type=click.Path(), help="Dataset folder (or URI); its test split is evaluated.")
@click.option("--ema/--no-ema", "--apply-ema/--no-apply-ema", default=True, show_default=True, help="--ema: model.pt (EMA weights when the run had ema=true); --no-ema: the live weights of a trm-ray checkpoint's train_state.pt.")
@click.option("--one-batch", is_flag=True, help="Only the first batch of each set (smoke test; ARC pass@K counts unreached puzzles as unsolved).")
@click.option("--outdir", type=click.Path(file_okay=False), help="Where metrics.json, submission.json, outputs.npz go, a folder or a URI (default: eval-<checkpoint name>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --outdir.")
@click.option("--save-outputs", "--eval-save-outputs", "save_outputs", default="", help=f"Arrays to save in outputs.npz, space or comma separated: {', '.join(SAVABLE_OUTPUTS)}.")
@click.option("--num-workers", type=int, default=1, show_default=True, help="Ray Data inference actors; 0 runs in this process without Ray.")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Rows per forward pass, per worker.")
@click.option("--global-batch-size", type=int, help="Rows per forward pass over all workers (instead of --batch-size): split evenly over --num-workers.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="ARC: render a few predictions beside input and truth.")
@click.option("--wandb/--no-wandb", "track", default=True, show_default=True, help="Record the evaluation as a W&B run (job_type eval, with the training run's project, group and tags when the checkpoint is in a run folder); offline files under OUTDIR/wandb without credentials.")
@_fork_only_options
def eval_command(checkpoint: str, config_path: Optional[str], dataset: str, ema: bool, one_batch: bool,
                 outdir: Optional[str], overwrite: bool, save_outputs: str, num_workers: int, use_gpu: bool,
                 batch_size: int, global_batch_size: Optional[int], png_path: Optional[str], track: bool) -> None:
    """Evaluate CHECKPOINT on DATASET: per-set exact accuracy with 95% intervals, token accuracy,
    ARC pass@K and submission.json on ARC datasets. Files are written only when the whole
    evaluation succeeded. Command lines of the alphaXiv fork's run_eval_only.py run as they are
    (its --eval-only and --bf16 are what trm-ray does anyway)."""
    from trm_ray import storage
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.data.layout import DatasetError
    from trm_ray.storage import is_uri
    from trm_ray.eval import format_metrics, write_outputs
    from trm_ray.eval.loading import is_arc_dataset
    from trm_ray.eval.run import evaluate_checkpoint

    names = [s for s in save_outputs.replace(",", " ").split() if s]
    batch_size_given = click.get_current_context().get_parameter_source("batch_size") is not ParameterSource.DEFAULT
    batch_size = _per_worker_batch_size(batch_size, batch_size_given, global_batch_size, num_workers)
    try:
        config = _run_config(config_path) if config_path else None
        given = checkpoint
        checkpoint = _checkpoint_of_run(checkpoint)
        outdir = outdir or f"eval-{Path(checkpoint.rstrip('/')).name}"
        if storage.exists(outdir) and not overwrite:
            raise FileExistsError(f"output folder {outdir!r} exists: pass --overwrite or another --outdir")
        if not Path(dataset).exists() and not is_uri(dataset):
            raise DatasetError(f"dataset {dataset!r} does not exist: build it with `trm-ray data build ...`")
        if png_path and not is_uri(dataset) and not is_arc_dataset(dataset):
            raise ValueError("--png renders ARC datasets only (this one has no test_puzzles.json)")
        run = evaluate_checkpoint(checkpoint, dataset, ema=ema, batch_size=batch_size, one_batch=one_batch,
                                  save_outputs=names, num_workers=num_workers, use_gpu=use_gpu, config=config)
        click.echo(format_metrics(run.metrics))
        click.echo(f"\n{run.num_examples} examples in {run.seconds:.1f} s ({run.examples_per_s:.1f} examples/s)")
        written = write_outputs(run, outdir, overwrite=overwrite, png=png_path,
                                extra={"checkpoint": str(checkpoint), "dataset": str(dataset), "ema": ema,
                                       "one_batch": one_batch, "num_workers": num_workers,
                                       "batch_size": batch_size})
    except (CheckpointError, DatasetError, ConfigError, ValueError, FileExistsError, OSError) as error:
        raise click.ClickException(one_line(str(error))) from None
    click.echo(f"wrote {written}" + (f" and {png_path}" if png_path else ""))
    if track:
        from trm_ray.tracking import track_eval

        where = track_eval(run.metrics, checkpoint=checkpoint, dataset=dataset, outdir=outdir,
                           config=_training_recipe(given, checkpoint))
        if where:
            click.echo(f"W&B eval run: {where}")


def _training_recipe(given: str, checkpoint: str):
    """The TrainConfig of the run the checkpoint comes from (the run folder given, or the one
    holding the checkpoint), so its W&B eval run shares the training run's project and tags;
    None for a checkpoint outside a run folder (a reference file, a Hub path)."""
    from trm_ray import storage
    from trm_ray.config import ConfigError, TrainConfig, build, read_yaml
    from trm_ray.hub import as_hub_uri
    from trm_ray.run_folder import CONFIG_FILE, run_started

    if as_hub_uri(checkpoint) is not None:
        return None
    checkpoint = checkpoint.rstrip("/")
    holder = checkpoint.rsplit("/", 1)[0] if storage.is_uri(checkpoint) else str(Path(checkpoint).parent)
    for folder in (given.rstrip("/"), holder):
        try:
            if run_started(folder) and storage.is_file(storage.join(folder, CONFIG_FILE)):
                return build(TrainConfig, read_yaml(storage.join(folder, CONFIG_FILE)))
        except (ConfigError, storage.StorageError, OSError):
            return None
    return None


def _per_worker_batch_size(batch_size: int, batch_size_given: bool, global_batch_size: Optional[int],
                           num_workers: int) -> int:
    """--batch-size is per worker; the fork's --global-batch-size counts the rows of one forward
    pass over all workers (all torchrun ranks there), so it is split over --num-workers (0: this
    process alone)."""
    if global_batch_size is None:
        return batch_size
    if batch_size_given:
        raise click.ClickException("pass either --batch-size (rows per worker) or --global-batch-size (rows over "
                                   "all workers), not both")
    if global_batch_size < 1:
        raise click.ClickException(f"--global-batch-size {global_batch_size} must be >= 1")
    workers = max(num_workers, 1)
    if global_batch_size % workers:
        raise click.ClickException(f"--global-batch-size {global_batch_size} is not divisible by --num-workers "
                                   f"{num_workers}: pass a multiple of {num_workers}, or --batch-size (rows per "
                                   f"worker)")
    return global_batch_size // workers


def _run_config(path: str) -> dict[str, Any]:
    """The --config YAML. The fork's default, config/cfg_pretrain.yaml, is a Hydra file whose arch
    settings live in another file (its `defaults:` list): read alone it would silently give the
    default arch, so only a composed config (what the run saved as all_config.yaml) is taken."""
    from trm_ray.config import read_yaml

    if not Path(path).is_file():
        raise ConfigError(f"--config {path!r} does not exist: pass the all_config.yaml the run saved beside its "
                          f"checkpoints")
    data = read_yaml(path)
    if "defaults" in data and not isinstance(data.get("arch"), dict):
        raise ConfigError(f"--config {path!r} is a Hydra file (a defaults: list, no arch: settings): pass the "
                          f"composed all_config.yaml the run saved beside its checkpoints")
    return data


def _checkpoint_of_run(checkpoint: str) -> str:
    chosen, which = checkpoint_of_run(checkpoint, "evaluate it")
    if which:
        click.echo(f"trm-ray: run folder {checkpoint}: evaluating its {which} checkpoint {chosen}")
    return chosen


eval = eval_command  # the name cli/main.py registers
