"""`trm-ray submit` and `trm-ray jobs`: trm-ray commands as Ray jobs on a cluster.

    trm-ray submit -- trm-ray train experiments/quickstart.yaml ray.num_workers=8 ray.use_gpu=true
    trm-ray submit --no-wait --env WANDB_API_KEY -- trm-ray sweep experiments/sweeps/sudoku.yaml
    trm-ray jobs list
    trm-ray jobs logs raysubmit_abc123 --follow

The address is --address, else RAY_ADDRESS, else http://127.0.0.1:8265 (where
`ray dashboard cluster/<config>.yaml` forwards a cluster's dashboard). The token is
RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
"""

from __future__ import annotations

import datetime
import sys
from typing import Optional

import click

from trm_ray.cli import one_line

ADDRESS_HELP = "Ray dashboard URL (default: RAY_ADDRESS, else http://127.0.0.1:8265)."


def _client(address: Optional[str]):
    import logging

    from trm_ray.jobs import JobClient, JobError

    # Ray's SDK logs every upload step at INFO; what the user needs is printed here.
    logging.getLogger("ray").setLevel(logging.WARNING)

    try:
        return JobClient(address)
    except JobError as error:
        raise click.ClickException(one_line(str(error))) from None


def _run(action):
    from trm_ray.jobs import JobError

    try:
        return action()
    except JobError as error:
        raise click.ClickException(one_line(str(error))) from None


def _note(message: str) -> None:
    click.echo(message, err=True)


def _finish(client, job_id: str, follow: bool) -> None:
    """Wait for the job (streaming its output with follow); exit 1 unless it succeeded."""
    if follow:
        for chunk in _stream(client.follow(job_id)):
            click.echo(chunk, nl=False)
    status = _run(lambda: client.wait(job_id, on_status=lambda s: _note(f"job {job_id}: {s}")))
    if status != "SUCCEEDED":
        message = _run(lambda: client.info(job_id)).message or ""
        raise click.ClickException(one_line(f"job {job_id} {status}: {message} (logs: trm-ray jobs logs {job_id})"))


def _stream(iterator):
    # Errors inside the generator surface while iterating; wrap each step so they stay one line.
    from trm_ray.jobs import JobError

    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except JobError as error:
            raise click.ClickException(one_line(str(error))) from None


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="Examples:\n\n\b\n"
    "  trm-ray submit -- trm-ray train experiments/quickstart.yaml ray.num_workers=8 ray.use_gpu=true\n"
    "  trm-ray submit --follow --env WANDB_API_KEY -- 'trm-ray train experiments/quickstart.yaml "
    "data_paths=[$TRM_RAY_STORAGE/data/sudoku-4x4-quickstart] ray.storage_path=$TRM_RAY_STORAGE/runs'\n"
    "  JOB=$(trm-ray submit --no-wait -- trm-ray sweep experiments/sweeps/sudoku.yaml)",
)
@click.option("--address", help=ADDRESS_HELP)
@click.option(
    "--working-dir", default=".", show_default=True, type=click.Path(file_okay=False),
    help="Folder shipped with the job (data/, runs/, .git, venvs left out); a trm-ray checkout ships its code too.",
)
@click.option("--no-working-dir", is_flag=True, help="Ship nothing: run the trm-ray installed on the cluster.")
@click.option("--env", "env_items", multiple=True, metavar="NAME[=VALUE]",
              help="Environment variable for the job; NAME alone copies it from this shell (e.g. WANDB_API_KEY). Repeatable.")
@click.option("--follow", is_flag=True, help="Stream the job's output until it ends.")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.option("--submission-id", help="Job id to use instead of a generated raysubmit_... one.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def submit(address, working_dir, no_working_dir, env_items, follow, no_wait, submission_id, command) -> None:
    """Run COMMAND (a trm-ray command, after `--`) on a Ray cluster as a Ray job.

    Prints the job id, then waits for the job and exits non-zero unless it SUCCEEDED.
    Several words are quoted as given; one quoted string runs as a shell line on the
    cluster, so $TRM_RAY_STORAGE (set by the cluster configs) expands there.
    """
    from trm_ray.jobs import parse_env

    if follow and no_wait:
        raise click.UsageError("--follow and --no-wait exclude each other")
    env = _run(lambda: parse_env(env_items))
    client = _client(address)
    job_id = _run(lambda: client.submit(command, working_dir=None if no_working_dir else working_dir, env=env,
                                        submission_id=submission_id))
    click.echo(job_id)
    sys.stdout.flush()
    if no_wait:
        _note(f"follow it with: trm-ray jobs logs {job_id} --follow")
        return
    _finish(client, job_id, follow)


@click.group(epilog="Example:\n\n  trm-ray jobs list --address http://127.0.0.1:8265")
def jobs() -> None:
    """List, inspect, follow and stop Ray jobs (those of `trm-ray submit` and any other)."""


@jobs.command(name="list", epilog="Example:\n\n  trm-ray jobs list")
@click.option("--address", help=ADDRESS_HELP)
def list_jobs(address) -> None:
    """One line per job: id, status, start time, duration, command."""
    client = _client(address)
    rows = _run(client.list)
    if not rows:
        _note(f"no jobs on {client.address}")
        return
    for job in rows:
        start = datetime.datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if job.start_time else "-"
        duration = f"{(job.end_time - job.start_time) / 1000:.0f}s" if job.start_time and job.end_time else "-"
        entrypoint = job.entrypoint if len(job.entrypoint) <= 80 else job.entrypoint[:77] + "..."
        click.echo(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {start}  {duration:>6}  {entrypoint}")


@jobs.command(epilog="Example:\n\n  trm-ray jobs status raysubmit_abc123")
@click.argument("job_id")
@click.option("--address", help=ADDRESS_HELP)
def status(job_id, address) -> None:
    """Print the job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    info = _run(lambda: _client(address).info(job_id))
    click.echo(f"{info.status.value}" + (f": {one_line(info.message)}" if info.message else ""))


@jobs.command(epilog="Example:\n\n  trm-ray jobs logs raysubmit_abc123 --follow")
@click.argument("job_id")
@click.option("--address", help=ADDRESS_HELP)
@click.option("--follow", is_flag=True, help="Keep streaming until the job ends.")
def logs(job_id, address, follow) -> None:
    """Print the job's output (its driver's stdout and stderr)."""
    client = _client(address)
    if follow:
        for chunk in _stream(client.follow(job_id)):
            click.echo(chunk, nl=False)
    else:
        click.echo(_run(lambda: client.logs(job_id)), nl=False)


@jobs.command(epilog="Example:\n\n  trm-ray jobs stop raysubmit_abc123 --wait")
@click.argument("job_id")
@click.option("--address", help=ADDRESS_HELP)
@click.option("--wait", "wait_for_end", is_flag=True, help="Return once the job has stopped.")
def stop(job_id, address, wait_for_end) -> None:
    """Stop a running job (its Ray Train/Tune work ends with it)."""
    client = _client(address)
    if not _run(lambda: client.stop(job_id)):
        click.echo(f"job {job_id} had already ended: {_run(lambda: client.status(job_id))}")
        return
    if wait_for_end:
        click.echo(f"job {job_id}: {_run(lambda: client.wait(job_id, timeout_s=300))}")
    else:
        click.echo(f"job {job_id}: stop requested")
