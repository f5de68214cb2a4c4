"""`trm-ray quickstart`: data, training, evaluation and an ASHA sweep on local Ray in minutes."""

from __future__ import annotations

import click


@click.command(epilog="Example:\n\n  trm-ray quickstart --workdir trm-ray-quickstart")
@click.option("--workdir", default="trm-ray-quickstart", show_default=True,
              help="Folder for the dataset, runs, sweep and plots (reused: the dataset is rebuilt).")
@click.option("--no-sweep", is_flag=True, help="Skip the ASHA sweep (stages 4-5).")
def quickstart(workdir: str, no_sweep: bool) -> None:
    """Build the 4x4 Sudoku quickstart dataset with Ray Data, train a small TRM with Ray Train
    (2 CPU workers), evaluate it on held-out puzzles, run a small ASHA sweep with Ray Tune and
    compare its trials. No account, no network; about 5-10 minutes on 2 cores."""
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.config import ConfigError
    from trm_ray.data.layout import DatasetError
    from trm_ray.quickstart import run_quickstart, where_things_are

    try:
        result = run_quickstart(workdir, sweep=not no_sweep, log=click.echo)
    except (ConfigError, DatasetError, CheckpointError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(where_things_are(result))
