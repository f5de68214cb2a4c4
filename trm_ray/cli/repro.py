"""`trm-ray repro`: one recipe trained with several seeds, every seed to the end, reported with
honest statistics (mean, std, 95% intervals over seeds; Welch's interval against another repro).

    trm-ray repro experiments/quickstart.yaml --seeds 5
    trm-ray repro experiments/quickstart.yaml lr=1e-3 --seeds 3,7,11 --name quickstart-lr1e-3
    trm-ray repro experiments/quickstart.yaml --resume                 # after an interruption
    trm-ray repro experiments/quickstart.yaml lr=1e-3 --seeds 5 --name lr1e-3 --compare runs/repro/quickstart-seeds
"""

from __future__ import annotations

from typing import Optional

import click

from trm_ray.cli import CLUSTER_ADDRESS_HELP, one_line

from trm_ray.config import ConfigError


@click.command(epilog="A repro file can stand for RECIPE: base (a recipe, relative to the file), overrides, "
               "seeds (a list or a count), name, storage_path, resources, max_concurrent_trials.\n\n"
               "Examples:\n\n\b\n"
               "  trm-ray repro experiments/quickstart.yaml --seeds 5\n"
               "  trm-ray repro experiments/quickstart.yaml lr=1e-3 --seeds 3,7,11 --name quickstart-lr1e-3\n"
               "  trm-ray repro experiments/quickstart.yaml --resume\n"
               "  trm-ray repro experiments/quickstart.yaml lr=1e-3 --seeds 5 --name lr1e-3 "
               "--compare runs/repro/quickstart-seeds\n"
               "  trm-ray compare runs/repro/quickstart-seeds --format csv")
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--seeds", "seeds_text", help="K: seeds 0..K-1; or a comma list: 3,7,11. Default with --resume: "
                                            "the repro's own.")
@click.option("--name", help="The repro's folder and W&B group (default: <recipe stem>-seeds).")
@click.option("--storage-path", help="Where the repro folder goes (a local path or a URI; default: "
                                     "<recipe ray.storage_path>/repro).")
@click.option("--resume", is_flag=True, help="Continue an interrupted repro: finished seeds are kept, unfinished "
                                            "ones continue from their last checkpoint.")
@click.option("--address", help=CLUSTER_ADDRESS_HELP)
@click.option("--compare", "compare_dir", help="Another repro folder: the difference of the means with Welch's "
                                               "95% interval, per metric.")
@click.option("--dry-run", is_flag=True, help="Validate every seed's config, print the runs and exit.")
def repro(recipe: str, overrides: tuple[str, ...], seeds_text: Optional[str], name: Optional[str],
          storage_path: Optional[str], resume: bool, address: Optional[str], compare_dir: Optional[str],
          dry_run: bool) -> None:
    """Train RECIPE (a training recipe, or a repro file) once per seed, all of them to the end
    and as many at once as the cluster holds (a sweep over `seed`, without early stopping),
    then print each seed's best and final evaluation with the mean, std, the 95% t interval
    over seeds and the pooled Wilson interval, and write them to <repro>/repro.json.
    OVERRIDES (key=value) change the recipe."""
    from trm_ray.recipes import find_recipe
    from trm_ray.storage import StorageError
    from trm_ray.tune.repro import check_folder, format_report, load_repro, parse_seeds, summarize_repro, track_repro

    try:
        seeds = parse_seeds(seeds_text) if seeds_text is not None else None
        # a path, or a shipped recipe by name (experiments/quickstart.yaml from any folder)
        spec = load_repro(find_recipe(recipe, "experiments"), list(overrides), seeds, name, storage_path, resume=resume)
        # the folder to compare with is read first: a typo costs nothing, not a whole repro
        other = summarize_repro(compare_dir) if compare_dir else None
        if dry_run:
            click.echo(f"repro {spec.name}: {len(spec.seeds)} run(s), seeds {', '.join(map(str, spec.seeds))} "
                       f"-> {spec.directory()}")
            if other is not None:
                click.echo(f"compared with repro {other.name} ({other.repro_dir})")
            return
        check_folder(spec, resume)
        from trm_ray.tune.driver import SweepError
        from trm_ray.tune.repro import run_repro

        try:
            report = run_repro(spec, resume=resume, address=address, log=click.echo, compare_with=other)
        except (SweepError, StorageError) as error:
            # the sweep's advice names `trm-ray sweep`; a repro resumes with its own command
            raise click.ClickException(one_line(str(error)).replace("`trm-ray sweep ", "`trm-ray repro ")) from None
        click.echo(format_report(report))
        where = track_repro(report, log=click.echo)
        if where:
            click.echo(f"W&B: {where}")
        click.echo(f"wrote {report.repro_dir}/repro.json; trm-ray compare {report.repro_dir} --format csv")
    except ConfigError as error:
        raise click.ClickException(one_line(str(error))) from None
