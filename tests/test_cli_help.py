"""Every `trm-ray` command's help ends with an example, and the README's commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from trm_ray.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, prefix + (name,))
        else:
            found.append(prefix + (name,))
    return found


def test_every_help_ends_with_an_example():
    runner = CliRunner()
    commands = all_commands(main)
    assert {("quickstart",), ("data", "build"), ("train",), ("eval",), ("sweep",), ("compare",), ("submit",),
            ("jobs", "list")} <= set(commands)
    for path in commands:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        tail = result.output.strip().splitlines()[-6:]
        assert any(line.strip().startswith("Example") for line in tail) or \
            any(re.match(r"\s*trm-ray ", line) for line in tail), (path, tail)
        assert any(re.match(r"\s*trm-ray ", line) for line in tail), (path, tail)


def test_readme_commands_name_real_subcommands_and_files():
    readme = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```.*?```", readme, re.S) + re.findall(r"`[^`\n]+`", readme))
    commands = {path[0] for path in all_commands(main) if path}
    # a command, not prose: at a line start, after `&&`, `--` (submit) or an opening quote/backtick
    for used in re.findall(r"(?:^\s*|&&\s*|--\s+|[`'(|]\s*)trm-ray ([a-z]+)", code, re.M):
        assert used in commands, used
    for recipe in re.findall(r"((?:experiments|datasets)/[\w./-]+\.yaml)", readme):
        if "my-sweep" not in recipe:
            assert (ROOT / "trm_ray" / "recipes" / recipe).is_file(), recipe
