"""`trm-ray hub`: checkpoints to the Hugging Face Hub; they load back anywhere as hf:// paths.

    trm-ray hub push runs/sudoku-mlp me/trm-sudoku            # the run's best checkpoint + a model card
    trm-ray eval --checkpoint hf://me/trm-sudoku/checkpoint_0000312 --dataset data/sudoku-extreme-1k-aug-1000
"""

from __future__ import annotations

from typing import Optional

import click

from trm_ray.cli import one_line


@click.group(
    "hub",
    epilog="Example:\n\n  trm-ray hub push runs/sudoku-mlp me/trm-sudoku",
)
def hub() -> None:
    """Checkpoints on the Hugging Face Hub. Any checkpoint argument (eval --checkpoint,
    load_checkpoint=, trm_ray.load_checkpoint) also takes hf://owner/repo[@revision]/path, or
    owner/repo/path when no local path of that name exists. Downloads use the Hugging Face cache
    (HF_HOME, HF_HUB_CACHE); HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE=1 apply."""


@hub.command(
    "push",
    epilog="Examples:\n\n\b\n"
    "  trm-ray hub push runs/sudoku-mlp me/trm-sudoku --private\n"
    "  trm-ray hub push runs/x/checkpoint_0000312 me/trm-sudoku --path-in-repo att/step_312 "
    "--eval-metrics eval-checkpoint_0000312/metrics.json\n"
    "  trm-ray hub push step_50000 me/trm-arc1 --branch v1",
)
@click.argument("checkpoint")
@click.argument("repo")
@click.option("--path-in-repo", help="Where in the repo, the path it loads by (hf://REPO/PATH): the folder of a "
              "checkpoint folder, the file of a weights file. Default: the checkpoint's name ('.' for a folder "
              "at the repo root).")
@click.option("--revision", "--branch", "revision", help="Branch to commit to (created from main when missing). "
              "Default: main.")
@click.option("--private", is_flag=True, help="Create the repo private (a repo that exists keeps its visibility).")
@click.option("--eval-metrics", type=click.Path(), help="metrics.json of `trm-ray eval` (or its --outdir) for the "
              "model card. Default: the run's evaluation of the checkpoint, when it is in a run folder.")
@click.option("--message", "-m", help="Commit message.")
def push(checkpoint: str, repo: str, path_in_repo: Optional[str], revision: Optional[str], private: bool,
         eval_metrics: Optional[str], message: Optional[str]) -> None:
    """Upload CHECKPOINT to the Hub repo REPO (owner/name) in one commit: the weights, the
    all_config.yaml beside them and a README.md model card (config, eval metrics). CHECKPOINT is
    a run folder (its best checkpoint, else its last), a trm-ray checkpoint folder or a reference
    weights file with all_config.yaml beside it. The repo is created when missing; pushing
    needs a token with write access (HF_TOKEN or `hf auth login`)."""
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.config import ConfigError
    from trm_ray.hub import push_checkpoint

    try:
        result = push_checkpoint(checkpoint, repo, path_in_repo=path_in_repo, revision=revision, private=private,
                                 eval_metrics=eval_metrics, message=message)
    except (CheckpointError, ConfigError, ValueError, OSError) as error:
        raise click.ClickException(one_line(str(error))) from None
    click.echo(f"pushed {', '.join(result.files)} (commit {result.commit[:10]})")
    click.echo(result.url)
    click.echo(f"load it with: trm-ray eval --checkpoint {result.load_uri} --dataset ...   "
               f"or trm_ray.load_checkpoint({result.load_uri!r})")
