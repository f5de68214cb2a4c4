"""`trm-ray eval`: score any checkpoint (trm-ray or reference) on a dataset's test split.

    trm-ray eval --checkpoint step_50000 --dataset data/arc1concept-aug-1000 --num-workers 4 --use-gpu
    trm-ray eval --checkpoint runs/x/checkpoint_000010 --dataset data/sudoku-4x4-quickstart --one-batch
    trm-ray eval --checkpoint s3://bucket/runs/x/checkpoint_000010 --dataset s3://bucket/data/q --outdir s3://bucket/evals/x

Inference runs as Ray Data batch inference over --num-workers actors (see
trm_ray/eval/run.py for why not Train workers); --num-workers 0 runs in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from trm_ray.cli import one_line

from trm_ray.config import ConfigError

SAVABLE = ("inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "q_continue_logits")


class _ListOptionCommand(click.Command):
    """Accepts `--save-outputs inputs labels preds` (the reference's list style) and commas."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten, i = [], 0
        while i < len(args):
            rewritten.append(args[i])
            if args[i] == "--save-outputs":
                i += 1
                values = []
                while i < len(args) and not args[i].startswith("-"):
                    values.append(args[i])
                    i += 1
                rewritten.append(",".join(values))
                continue
            i += 1
        return super().parse_args(ctx, rewritten)


@click.command(
    "eval",
    cls=_ListOptionCommand,
    epilog="Examples:\n\n\b\n"
    "  trm-ray eval --checkpoint step_50000 --dataset data/arc1concept-aug-1000 --num-workers 4 --use-gpu "
    "--png arc.png\n"
    "  trm-ray eval --checkpoint runs/x/checkpoint_000010 --dataset data/sudoku-4x4-quickstart --one-batch "
    "--save-outputs inputs preds q_halt_logits",
)
@click.option("--checkpoint", required=True, type=click.Path(), help="Reference weights file (all_config.yaml beside it), trm-ray checkpoint folder, or a run folder (its best checkpoint); a path or a URI (s3://...).")
@click.option("--dataset", required=True, type=click.Path(), help="Dataset folder (or URI); its test split is evaluated.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="--ema: model.pt (EMA weights when the run had ema=true); --no-ema: the live weights of a trm-ray checkpoint's train_state.pt.")
@click.option("--one-batch", is_flag=True, help="Only the first batch of each set (smoke test; ARC pass@K counts unreached puzzles as unsolved).")
@click.option("--outdir", type=click.Path(file_okay=False), help="Where metrics.json, submission.json, outputs.npz go, a folder or a URI (default: eval-<checkpoint name>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --outdir.")
@click.option("--save-outputs", default="", help=f"Arrays to save in outputs.npz, space or comma separated: {', '.join(SAVABLE)}.")
@click.option("--num-workers", type=int, default=1, show_default=True, help="Ray Data inference actors; 0 runs in this process without Ray.")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Rows per forward pass, per worker.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="ARC: render a few predictions beside input and truth.")
def eval_command(checkpoint: str, dataset: str, ema: bool, one_batch: bool, outdir: Optional[str], overwrite: bool,
                 save_outputs: str, num_workers: int, use_gpu: bool, batch_size: int, png_path: Optional[str]) -> None:
    """Evaluate CHECKPOINT on DATASET: per-set exact accuracy with 95% intervals, token accuracy,
    ARC pass@K and submission.json on ARC datasets. Files are written only when the whole
    evaluation succeeded."""
    from trm_ray import storage
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.data.layout import DatasetError, is_uri
    from trm_ray.eval.run import evaluate_checkpoint, format_metrics, is_arc_dataset, write_outputs

    names = [s for s in save_outputs.replace(",", " ").split() if s]
    try:
        checkpoint = _checkpoint_of_run(checkpoint)
        outdir = outdir or f"eval-{Path(checkpoint.rstrip('/')).name}"
        if storage.exists(outdir) and not overwrite:
            raise FileExistsError(f"output folder {outdir!r} exists: pass --overwrite or another --outdir")
        if not Path(dataset).exists() and not is_uri(dataset):
            raise DatasetError(f"dataset {dataset!r} does not exist: build it with `trm-ray data build ...`")
        if png_path and not is_uri(dataset) and not is_arc_dataset(dataset):
            raise ValueError("--png renders ARC datasets only (this one has no test_puzzles.json)")
        run = evaluate_checkpoint(checkpoint, dataset, ema=ema, batch_size=batch_size, one_batch=one_batch,
                                  save_outputs=names, num_workers=num_workers, use_gpu=use_gpu)
        click.echo(format_metrics(run.metrics))
        click.echo(f"\n{run.num_examples} examples in {run.seconds:.1f} s ({run.examples_per_s:.1f} examples/s)")
        written = write_outputs(run, outdir, overwrite=overwrite, png=png_path,
                                extra={"checkpoint": str(checkpoint), "dataset": str(dataset), "ema": ema,
                                       "one_batch": one_batch, "num_workers": num_workers})
    except (CheckpointError, DatasetError, ConfigError, ValueError, FileExistsError, OSError) as error:
        raise click.ClickException(one_line(str(error))) from None
    click.echo(f"wrote {written}" + (f" and {png_path}" if png_path else ""))


def _checkpoint_of_run(checkpoint: str) -> str:
    """A run folder (what `trm-ray train` prints as `run folder:`) stands for its best
    checkpoint, else its last one; anything else is returned as given."""
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.train.trainer import run_started, summarize

    if not run_started(checkpoint.rstrip("/")):
        return checkpoint
    run = summarize(checkpoint.rstrip("/"))
    chosen = run.best_checkpoint or run.last_checkpoint
    if chosen is None:
        raise CheckpointError(f"run folder {checkpoint!r} has no checkpoint yet: evaluate it after its first "
                              f"evaluation interval, or pass a checkpoint folder")
    click.echo(f"trm-ray: run folder {checkpoint}: evaluating its {'best' if run.best_checkpoint else 'last'} "
               f"checkpoint {chosen}")
    return chosen


eval = eval_command  # the name cli/main.py registers
