"""The recipes trm-ray ships, and how a recipe argument finds its file.

The folders beside this file are package data, installed with trm-ray (wheel, Docker image,
editable checkout alike):

    experiments/*.yaml          training recipes            trm-ray train experiments/quickstart.yaml
    experiments/sweeps/*.yaml   sweep files                 trm-ray sweep experiments/sweeps/quickstart.yaml
    datasets/*.yaml             dataset recipes             trm-ray data build datasets/sudoku-4x4-quickstart.yaml

Every command that takes a recipe, sweep file or dataset recipe resolves it with find_recipe:
a file that exists at the given path (relative to the working directory) is used as is, so a
recipe of your own always wins; otherwise the argument names a shipped recipe, by its path
here (`experiments/quickstart.yaml`) or, for the command's own kind, by its bare name
(`quickstart`, `quickstart.yaml`). So the commands above run from any directory.

    from trm_ray.recipes import find_recipe
    path = find_recipe("experiments/quickstart.yaml")       # -> .../trm_ray/recipes/experiments/quickstart.yaml
    path = find_recipe("quickstart", kind="sweeps")         # -> .../trm_ray/recipes/experiments/sweeps/quickstart.yaml
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional

from trm_ray.config import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent
# kind -> (its folder here, what the error message calls one)
KINDS = {
    "experiments": ("experiments", "training recipe"),
    "sweeps": ("experiments/sweeps", "sweep file"),
    "datasets": ("datasets", "dataset recipe"),
}
SUFFIXES = (".yaml", ".yml")


def packaged_recipes(kind: Optional[str] = None) -> list[str]:
    """The shipped recipes of `kind` (every kind when None) by their names here, e.g.
    experiments/quickstart.yaml."""
    folders = [KINDS[kind][0]] if kind else [folder for folder, _ in KINDS.values()]
    return sorted({f"{folder}/{path.name}" for folder in folders for path in (RECIPES_DIR / folder).iterdir()
                   if path.is_file() and path.suffix in SUFFIXES})


def _packaged(name: str, kind: Optional[str]) -> Optional[Path]:
    """The shipped file `name` stands for, if any."""
    relative = PurePosixPath(name.replace(os.sep, "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return None
    candidates = [RECIPES_DIR.joinpath(*relative.parts)]
    if kind is not None:
        folder = RECIPES_DIR / KINDS[kind][0]
        candidates.append(folder.joinpath(*relative.parts))
        if relative.suffix not in SUFFIXES:
            candidates.append(folder.joinpath(*relative.parent.parts, relative.name + ".yaml"))
    return next((path for path in candidates if path.is_file()), None)


def is_packaged(name: str | os.PathLike, kind: Optional[str] = None) -> bool:
    """Whether `name` names a shipped recipe (see find_recipe)."""
    return _packaged(str(name), kind) is not None


def find_recipe(name: str | os.PathLike, kind: Optional[str] = None) -> Path:
    """The file a recipe argument means: `name` itself when that file exists, else the shipped
    recipe of that name (its path under trm_ray/recipes/, or for `kind` (experiments, sweeps,
    datasets) a bare name with or without .yaml). A missing one is a one-line ConfigError that
    lists where it looked and the shipped recipes of that kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    given = Path(name).expanduser()
    if given.is_file():
        return given
    found = _packaged(str(name), kind)
    if found is not None:
        return found
    what = KINDS[kind][1] if kind else "recipe"
    listed = ", ".join(packaged_recipes(kind))
    raise ConfigError(f"{what} {str(name)!r} does not exist: no such file (from {os.getcwd()}) and no shipped recipe "
                      f"of that name in {RECIPES_DIR}; pass a YAML path or one of: {listed}")
