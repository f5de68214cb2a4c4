"""`trm-ray`: TRM experiments as a Ray workload.

    trm-ray --help
"""

from __future__ import annotations

import click

from trm_ray import __version__


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example:\n\n  trm-ray data build datasets/sudoku-4x4-quickstart.yaml",
)
@click.version_option(__version__, prog_name="trm-ray")
def main() -> None:
    """Tiny Recursive Model research on Ray: build datasets, train, sweep, evaluate."""


def _register() -> None:
    # Subcommand groups live one per file; each registers itself here so that a missing
    # optional piece never breaks `trm-ray --help`.
    import importlib

    for module_name, attr in [("trm_ray.cli.data", "data"), ("trm_ray.cli.eval", "eval"), ("trm_ray.cli.train", "train"),
                              ("trm_ray.cli.sweep", "sweep"), ("trm_ray.cli.sweep", "compare"),
                              ("trm_ray.cli.submit", "submit"), ("trm_ray.cli.submit", "jobs")]:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        main.add_command(getattr(module, attr))


_register()

if __name__ == "__main__":
    main()
