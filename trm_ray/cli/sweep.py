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

from trm_ray.cli import CLUSTER_ADDRESS_HELP, one_line

from trm_ray.config import ConfigError


@click.command(epilog="Examples:\n\n\b\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml --dry-run\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml --resume\n"
               "  trm-ray sweep experiments/sweeps/quickstart-tpe.yaml --dry-run   # TPE: the space, first proposals\n"
               "  trm-ray sweep experiments/sweeps/sudoku-paper.yaml --address auto\n"
               "  trm-ray sweep experiments/sweeps/quickstart.yaml data_paths=[s3://bucket/data/q] "
               "--storage-path s3://bucket/sweeps")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--storage-path", help="Where the sweep folder goes (a local path or a URI such as s3://bucket/sweeps; "
                                     "default: the sweep file's storage_path, else <recipe ray.storage_path>/sweeps).")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep: finished trials are kept, "
                                            "unfinished ones continue from their last checkpoint.")
@click.option("--address", help=CLUSTER_ADDRESS_HELP)
@click.option("--dry-run", is_flag=True, help="Validate every trial's config, print the trials and exit (a "
                                             "searched sweep: its space and the searcher's first proposals).")
def sweep(sweep_file: str, overrides: tuple[str, ...], storage_path: Optional[str], resume: bool,
          address: Optional[str], dry_run: bool) -> None:
    """Run the sweep SWEEP_FILE (a path, or a shipped one by name: experiments/sweeps/quickstart.yaml):
    one Ray Train run per trial, ASHA stopping weak trials early. Every trial's config is checked
    before anything launches.
    OVERRIDES (key=value) change the base recipe, after the sweep file's own overrides; give
    the same ones with --resume."""
    from trm_ray.tune.spec import expand_trials, load_sweep_spec, varied_keys

    try:
        spec = load_sweep_spec(sweep_file, overrides, storage_path)
        trials = expand_trials(spec)  # a searched sweep: the points checked before launch
        if dry_run and spec.spec.searcher:
            # Its trials are proposed as results come in: show the space and where it starts.
            from trm_ray.tune.search import propose
            from trm_ray.tune.spec import searched_space

            search, space = spec.spec.search_config(), searched_space(spec)
            proposals = propose(search, space, spec.spec.metric, spec.spec.mode, min(4, search.num_samples))
            click.echo(f"sweep {spec.name}: {search.num_samples} trials proposed by {search.algorithm} (seed "
                       f"{search.seed}, first {search.startup_trials()} random) -> {spec.directory()}")
            click.echo(f"metric {spec.spec.metric} ({spec.spec.mode}); {len(trials)} points of the space checked")
            click.echo("space:")
            for key, domain in space.items():
                values = ", ".join(_short(v) for v in domain.value)
                click.echo(f"  {key}: {domain.kind} [{values}{')' if domain.kind == 'randint' else ']'}")
            click.echo(f"first {len(proposals)} proposals:")
            for index, params in enumerate(proposals):
                click.echo(f"  {index:3d}  " + "  ".join(f"{k}={_short(v)}" for k, v in params.items()))
            return
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
               "  trm-ray compare s3://bucket/sweeps/quickstart --plot curves.png\n"
               "  trm-ray compare runs/sweeps/quickstart --format csv > trials.csv\n"
               "  trm-ray compare runs/repro/quickstart-seeds --format json   # a repro: per-seed view")
@click.argument("sweep_dir")
@click.option("--metric", help="Rank by this reported metric (default: the sweep's).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write every trial's metric curve here (PNG).")
@click.option("--best-config", "best_config_path", type=click.Path(dir_okay=False),
              help="Write the winning trial's recipe here (YAML that `trm-ray train` accepts).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="How to print the rows: an aligned table, CSV or JSON (full precision, for scripts).")
def compare(sweep_dir: str, metric: Optional[str], plot_path: Optional[str], best_config_path: Optional[str],
            fmt: str) -> None:
    """Rank the trials of the sweep folder SWEEP_DIR (a local folder or a URI such as
    s3://bucket/sweeps/NAME): varied keys, best metric, epochs run, stopped early or not, wall
    time. A repro folder (`trm-ray repro`) shows every seed's best and final evaluation with the
    mean, std and 95% intervals over seeds instead (--metric: that metric's rows only).
    --plot and --best-config write local files."""
    from trm_ray.tune.compare import format_summary, plot_curves, summarize_sweep, write_best_config
    from trm_ray.tune.repro import format_report, is_repro, load_report

    try:
        if is_repro(sweep_dir):
            if best_config_path:
                raise ConfigError(f"--best-config: {sweep_dir} is a repro (one recipe, several seeds): it has no "
                                  f"winning trial to write; drop --best-config")
            click.echo(format_report(load_report(sweep_dir), fmt, metric))
            summary = summarize_sweep(sweep_dir, metric) if plot_path else None
        else:
            summary = summarize_sweep(sweep_dir, metric)
            click.echo(format_summary(summary, fmt))
        # notes go to stderr when stdout is CSV or JSON for a script to read
        if plot_path:
            plot_curves(summary, plot_path)
            click.echo(f"wrote {plot_path}", err=fmt != "table")
        if best_config_path:
            write_best_config(summary, best_config_path)
            click.echo(f"wrote {best_config_path} (trial {summary.winner.history.trial_id})", err=fmt != "table")
    except ConfigError as error:
        raise click.ClickException(one_line(str(error))) from None


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
