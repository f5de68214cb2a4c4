"""`trm-ray`: TRM experiments as a Ray workload.

    trm-ray --help
"""

from __future__ import annotations

import importlib

import click

from trm_ray import __version__

# (module, command) pairs in the order `--help` lists them: the pipeline, then cluster work.
# Each module imports only click at the top, so `trm-ray --help` stays fast.
COMMANDS = [
    ("trm_ray.cli.quickstart", "quickstart"),
    ("trm_ray.cli.data", "data"),
    ("trm_ray.cli.train", "train"),
    ("trm_ray.cli.eval", "eval"),
    ("trm_ray.cli.generate", "generate"),
    ("trm_ray.cli.hub", "hub"),
    ("trm_ray.cli.sweep", "sweep"),
    ("trm_ray.cli.sweep", "compare"),
    ("trm_ray.cli.repro", "repro"),
    ("trm_ray.cli.posttrain", "posttrain"),
    ("trm_ray.cli.submit", "submit"),
    ("trm_ray.cli.submit", "jobs"),
]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example:\n\n  trm-ray quickstart    # data, training, eval, ASHA sweep on local Ray",
)
@click.version_option(__version__, prog_name="trm-ray")
def main() -> None:
    """Tiny Recursive Model research on Ray: build datasets, train, sweep, evaluate."""


for _module, _name in COMMANDS:
    main.add_command(getattr(importlib.import_module(_module), _name))

if __name__ == "__main__":
    main()
