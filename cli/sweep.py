"""`trm-ray sweep` and `trm-ray compare`: hyperparameter sweeps on Ray Tune with ASHA.

    trm-ray sweep experiments/sweeps/quickstart.yaml
    trm-ray sweep experiments/sweeps/quickstart.yaml --resume          # after an interruption
    trm-ray sweep experiments/sweeps/quickstart.yaml data_paths=[s3://bucket/data/q] --storage-path s3://bucket/sweeps
    trm-ray compare runs/sweeps/quickstart --plot curves.png --best-config best.yaml
    trm-ray compare s3://bucket/sweeps/quickstart                     # a sweep whose storage_path is a URI
"""

from __future__ import annotations

from typing import Optional

import click

from trm_ray.cli import one_line

from trm_ray.config import ConfigError


@click.command(epilog="Examples:\n\n\b\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml --dry-run\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml --resume\n"
               "  trm-ray sweep experiments/sweeps/sudoku-paper.yaml --address auto\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml data_paths=[s3://bucket/data/q] "
               "--storage-path s3://bucket/sweeps")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--storage-path", help="Where the sweep folder goes (a local path or a URI such as s3://bucket/sweeps; "
                                     "default: the sweep file's storage_path, else <recipe ray.storage_path>/sweeps).")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep: finished trials are kept, "
                                            "unfinished ones continue from their last checkpoint.")
@click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance).")
@click.option("--dry-run", is_flag=True, help="Validate every trial's config, print the trials and exit.")
def sweep(sweep_file: str, overrides: tuple[str, ...], storage_path: Optional[str], resume: bool,
          address: Optional[str], dry_run: bool) -> None:
    """Run the sweep SWEEP_FILE (experiments/sweeps/*.yaml): one Ray Train run per trial, ASHA
    stopping weak trials early. Every trial's config is checked before anything launches.
    OVERRIDES (key=value) change the base recipe, after the sweep file's own overrides; give
    the same ones with --resume."""
    from trm_ray.tune.spec import expand_trials, load_sweep_spec, varied_keys

    try:
        spec = load_sweep_spec(sweep_file, overrides, storage_path)
        trials = expand_trials(spec)
        if dry_run:
            keys = list(spec.spec.search_space)
            click.echo(f"sweep {spec.name}: {len(trials)} trials -> {spec.directory()}")
            click.echo(f"metric {spec.spec.metric} ({spec.spec.mode}); varied: {', '.join(varied_keys(trials)) or '-'}")
            for index, params in enumerate(trials):
                click.echo(f"  {index:3d}  " + "  ".join(f"{k}={_short(params[k])}" for k in keys))
            return
        from trm_ray.storage import StorageError
        from trm_ray.tune.driver import SweepError, run_sweep

        try:
            sweep_dir = run_sweep(spec, trials, resume=resume, address=address, log=click.echo)
        except (SweepError, StorageError) as error:
            raise click.ClickException(one_line(str(error))) from None
        from trm_ray.tune.compare import format_table, summarize_sweep

        click.echo(format_table(summarize_sweep(sweep_dir)))
        click.echo(f"trm-ray compare {sweep_dir} --plot curves.png --best-config best.yaml")
    except ConfigError as error:
        raise click.ClickException(one_line(str(error))) from None


@click.command(epilog="Examples:\n\n\b\n"
               "  trm-ray compare runs/sweeps/quickstart\n"
               "  trm-ray compare runs/sweeps/quickstart --metric eval/accuracy --plot curves.png\n"
               "  trm-ray compare runs/sweeps/quickstart --best-config best.yaml && trm-ray train best.yaml\n"
               "  trm-ray compare s3://bucket/sweeps/quickstart --plot curves.png")
@click.argument("sweep_dir")
@click.option("--metric", help="Rank by this reported metric (default: the sweep's).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write every trial's metric curve here (PNG).")
@click.option("--best-config", "best_config_path", type=click.Path(dir_okay=False),
              help="Write the winning trial's recipe here (YAML that `trm-ray train` accepts).")
def compare(sweep_dir: str, metric: Optional[str], plot_path: Optional[str], best_config_path: Optional[str]) -> None:
    """Rank the trials of the sweep folder SWEEP_DIR (a local folder or a URI such as
    s3://bucket/sweeps/NAME): varied keys, best metric, epochs run, stopped early or not, wall
    time. --plot and --best-config write local files."""
    from trm_ray.tune.compare import format_table, plot_curves, summarize_sweep, write_best_config

    try:
        summary = summarize_sweep(sweep_dir, metric)
        click.echo(format_table(summary))
        if plot_path:
            plot_curves(summary, plot_path)
            click.echo(f"wrote {plot_path}")
        if best_config_path:
            write_best_config(summary, best_config_path)
            click.echo(f"wrote {best_config_path} (trial {summary.winner.history.trial_id})")
    except ConfigError as error:
        raise click.ClickException(one_line(str(error))) from None


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
