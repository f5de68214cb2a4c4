"""`trm-ray posttrain`: ARC test-time post-training over the cluster, one Ray Train run per chunk.

    trm-ray posttrain runs/arc2/checkpoint_0100000 --tasks data/arc-agi --subset evaluation2 --chunks 8
    trm-ray posttrain hf://owner/trm-arc2/step_723914 --tasks /kaggle/input/arc-prize-2025/arc-agi_test_challenges.json \\
        --chunks 4 --num-aug 100 --steps 500 --resources-per-chunk GPU=1,CPU=4 --time-limit 11h --out /kaggle/working/pt
"""

from __future__ import annotations

import re
from typing import Optional

import click

from trm_ray.cli import CLUSTER_ADDRESS_HELP, one_line

EPILOG = """\b
Output (--out, a folder or a URI): submission.json (every task and test input of the tasks file,
attempt_1 and attempt_2), posttrain.json (scores, per-chunk status, timings), chunks/chunk-K/
(dataset, base checkpoint, predictions) and runs/<job id>-chunk-K/ (each chunk's Ray Train run;
W&B project arc-posttrain, group posttrain-<job id>, one run per chunk; job id: <out name>-<start time>).

\b
Examples:
  trm-ray posttrain runs/arc2/checkpoint_0100000 --tasks data/arc-agi --subset evaluation2 --chunks 8
  trm-ray posttrain CKPT --tasks arc-agi_test_challenges.json --chunks 4 --resources-per-chunk GPU=1,CPU=4 \\
      --num-aug 100 --steps 500 --time-limit 11h --out /kaggle/working/posttrain
  trm-ray posttrain CKPT --tasks data/arc-agi --subset evaluation2 --chunks 8 --out posttrain/eval2 --resume
"""


def parse_duration(text: str) -> float:
    """Seconds from 3600, 90s, 45m, 11h or 1h30m."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(f"{text!r} is not a duration: use seconds (3600) or e.g. 11h, 45m, 1h30m, 90s")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse_resources(text: str) -> dict[str, float]:
    """{"CPU": 4.0, "GPU": 1.0} from CPU=4,GPU=1 (other names are custom Ray resources)."""
    resources = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            resources[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: write NAME=AMOUNT, e.g. CPU=4,GPU=1") from None
        if resources[name.strip()] < 0 or not name.strip():
            raise click.BadParameter(f"{item!r}: write NAME=AMOUNT with AMOUNT >= 0, e.g. CPU=4,GPU=1")
    if not resources:
        raise click.BadParameter("name at least one resource, e.g. CPU=1")
    return resources


@click.command(epilog=EPILOG)
@click.argument("checkpoint")
@click.option("--tasks", required=True, help="An ARC challenges JSON file, or a Kaggle-style prefix with --subset "
                                             "(<prefix>_<subset>_challenges.json).")
@click.option("--subset", help="With a prefix: the subset to post-train on, e.g. evaluation2.")
@click.option("--solutions", help="Solutions JSON (default: the _solutions.json beside the challenges, if any); "
                                  "with solutions, pass@1/pass@2 are printed.")
@click.option("--chunks", type=int, default=1, show_default=True, help="Chunks (fine-tuned separately, in parallel).")
@click.option("--num-aug", type=int, default=100, show_default=True, help="Augmented variants per task: more votes, "
                                                                         "more time.")
@click.option("--steps", type=int, help="Optimizer steps per chunk (default 500).")
@click.option("--epochs", type=int, help="Epochs per chunk instead of --steps.")
@click.option("--lr", type=float, help="Learning rate (default: the checkpoint's).")
@click.option("--puzzle-emb-lr", type=float, help="Puzzle-embedding learning rate (default: the checkpoint's).")
@click.option("--global-batch-size", type=int, help="Examples per step over a chunk's workers (default: the "
                                                    "checkpoint's).")
@click.option("--warmup", "warmup_fraction", type=float, default=0.1, show_default=True,
              help="Learning-rate warmup as a fraction of the steps.")
@click.option("--puzzle-table", type=click.Choice(["keep", "new"]), default="keep", show_default=True,
              help="keep: the checkpoint's puzzle table plus a row per new puzzle (a puzzle the checkpoint's own dataset "
                   "had keeps its row); new: only the chunk's puzzles, all starting at the mean row (small checkpoints "
                   "when the pretrained table is large, e.g. on a Kaggle disk).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the augmentations and the fine-tunes.")
@click.option("--resources-per-chunk", default="CPU=1", show_default=True, help="Ray resources of one worker of a "
                                                                               "chunk, e.g. GPU=1,CPU=4.")
@click.option("--workers-per-chunk", type=int, default=1, show_default=True, help="Ray Train workers per chunk.")
@click.option("--max-concurrent", type=int, help="Chunks training at once (default: as many as the cluster holds).")
@click.option("--max-retries", type=int, default=2, show_default=True, help="Restarts of a chunk's lost worker, "
                                                                           "each from its last checkpoint.")
@click.option("--time-limit", help="Wall time for the whole job (e.g. 11h, 45m); chunks not finished by then "
                                   "submit the pretrained model's predictions.")
@click.option("--out", help="Output folder or URI (default: posttrain/<tasks name>-<chunks>chunks).")
@click.option("--resume", is_flag=True, help="Continue the job in --out: finished chunks are kept, the others "
                                            "continue from what they finished.")
@click.option("--no-wandb", is_flag=True, help="Do not record the chunks' runs to W&B.")
@click.option("--wandb-project", help="W&B project (default: arc-posttrain).")
@click.option("--address", help=CLUSTER_ADDRESS_HELP)
def posttrain(checkpoint: str, tasks: str, subset: Optional[str], solutions: Optional[str], chunks: int,
              num_aug: int, steps: Optional[int], epochs: Optional[int], lr: Optional[float],
              puzzle_emb_lr: Optional[float], global_batch_size: Optional[int], warmup_fraction: float, puzzle_table: str,
              seed: int,
              resources_per_chunk: str, workers_per_chunk: int, max_concurrent: Optional[int], max_retries: int,
              time_limit: Optional[str], out: Optional[str], resume: bool, no_wandb: bool,
              wandb_project: Optional[str], address: Optional[str]) -> None:
    """Post-train CHECKPOINT (a folder, weights file, URI or hf:// path) on the ARC tasks of
    --tasks: split them into --chunks balanced by test inputs; per chunk, build an augmented
    dataset of its demonstration pairs (Ray Data), fine-tune a copy of the checkpoint on it (its
    own Ray Train run, chunks in parallel), predict its test inputs by voting over the
    augmentations; merge the chunks into one submission.json."""
    from trm_ray.posttrain.job import PosttrainOptions, run_posttrain
    from trm_ray.storage import StorageError

    if steps is not None and epochs is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    for name, value in (("--steps", steps), ("--epochs", epochs), ("--num-aug", num_aug), ("--chunks", chunks),
                        ("--workers-per-chunk", workers_per_chunk), ("--max-concurrent", max_concurrent)):
        if value is not None and value < (0 if name == "--num-aug" else 1):
            raise click.BadParameter(f"{name} {value} must be >= {0 if name == '--num-aug' else 1}")
    if out is None:
        stem = re.sub(r"_challenges\.json$|\.json$", "", tasks.rstrip("/").split("/")[-1]) + (f"_{subset}" if subset else "")
        out = f"posttrain/{stem}-{chunks}chunks"
    train = {"lr": lr, "puzzle_emb_lr": puzzle_emb_lr, "global_batch_size": global_batch_size, "seed": seed,
             "warmup_fraction": warmup_fraction}
    options = PosttrainOptions(
        checkpoint=checkpoint, tasks=tasks, subset=subset, solutions=solutions, out=out, chunks=chunks,
        num_aug=num_aug, keep_table=puzzle_table == "keep", seed=seed, steps=steps, epochs=epochs, train={k: v for k, v in train.items() if v is not None},
        resources_per_chunk=parse_resources(resources_per_chunk), workers_per_chunk=workers_per_chunk,
        max_concurrent=max_concurrent, max_retries=max_retries,
        time_limit=parse_duration(time_limit) if time_limit else None, resume=resume, wandb=not no_wandb,
        wandb_project=wandb_project, address=address)
    try:
        run_posttrain(options, log=click.echo)
    # Every user-fixable error of the job is a ValueError (PosttrainError, ChunkError, ConfigError,
    # CheckpointError, DatasetBuildError), also when a chunk's Ray task raised it.
    except (ValueError, StorageError) as error:
        raise click.ClickException(one_line(str(error))) from None
