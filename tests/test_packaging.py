"""trm-ray as an installed package: the Ray internals it relies on are still there, and a wheel
carries the CLI, the arch groups and the recipes, which resolve by name from any folder."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "trm_ray"
# What the quickstart and the README's first commands name.
QUICKSTART_RECIPES = {
    "experiments/quickstart.yaml": "experiments",
    "datasets/sudoku-4x4-quickstart.yaml": "datasets",
    "experiments/sweeps/quickstart.yaml": "sweeps",
}


# --------------------------------------------------------------------------------------------
# Recipe arguments
# --------------------------------------------------------------------------------------------
def test_a_file_of_that_name_wins_over_the_shipped_recipe(tmp_path, monkeypatch):
    from trm_ray.recipes import find_recipe

    monkeypatch.chdir(tmp_path)
    shipped = PACKAGE / "recipes" / "experiments" / "quickstart.yaml"
    assert find_recipe("experiments/quickstart.yaml") == shipped
    assert find_recipe("quickstart", "experiments") == shipped
    assert find_recipe("quickstart.yaml", "sweeps") == PACKAGE / "recipes" / "experiments" / "sweeps" / "quickstart.yaml"
    assert find_recipe("sudoku-4x4-quickstart", "datasets") == PACKAGE / "recipes" / "datasets" / "sudoku-4x4-quickstart.yaml"
    own = tmp_path / "experiments" / "quickstart.yaml"
    own.parent.mkdir()
    own.write_text("epochs: 1\n")
    assert find_recipe("experiments/quickstart.yaml").resolve() == own.resolve()


def test_a_sweep_file_of_ones_own_may_name_a_shipped_base(tmp_path, monkeypatch):
    from trm_ray.tune.spec import load_sweep_spec

    monkeypatch.chdir(tmp_path)
    own = tmp_path / "mine" / "lr.yaml"
    own.parent.mkdir()
    own.write_text("base: experiments/quickstart.yaml\noverrides: {epochs: 30}\n"
                   "search_space: {lr: {grid: [1.0e-3, 3.0e-3]}}\nmetric: eval/accuracy\nmode: max\n"
                   "asha: {time_attr: epoch, grace_period: 10, reduction_factor: 3, max_t: 30}\n")
    sweep = load_sweep_spec(own)
    assert sweep.name == "lr" and sweep.base_config.epochs == 30
    assert sweep.base_config.arch.hidden_size == 64  # experiments/quickstart.yaml's
    assert sweep.recipe_dir == PACKAGE / "recipes" / "experiments"


def test_commands_take_shipped_names_and_name_a_missing_one_in_one_line(tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from trm_ray.cli.main import main

    monkeypatch.chdir(tmp_path)  # no recipe here: the shipped ones answer
    runner = CliRunner()
    result = runner.invoke(main, ["train", "quickstart", "epochs=30", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["epochs"] == 30
    result = runner.invoke(main, ["data", "build", "sudoku-4x4-quickstart", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["name"] == "sudoku-4x4-quickstart"
    for command, named in ((["train", "experiments/nope.yaml"], "training recipe 'experiments/nope.yaml'"),
                           (["sweep", "experiments/sweeps/nope.yaml", "--dry-run"], "sweep file 'experiments/sweeps/nope.yaml'"),
                           (["data", "build", "datasets/nope.yaml", "--dry-run"], "dataset recipe 'datasets/nope.yaml'"),
                           (["repro", "nope.yaml", "--dry-run"], "training recipe 'nope.yaml'")):
        result = runner.invoke(main, command)
        assert result.exit_code != 0, command
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and f"{named} does not exist" in lines[0], (command, result.output)
    assert "experiments/sweeps/quickstart.yaml" in runner.invoke(main, ["sweep", "nope.yaml"]).output


# --------------------------------------------------------------------------------------------
# Ray internals (pyproject bounds Ray to the tested minor series because of these)
# --------------------------------------------------------------------------------------------
def _private(dotted: str) -> bool:
    return dotted.startswith("ray.") and any(part.startswith("_") for part in dotted.split("."))


def private_ray_names() -> dict[str, set[str]]:
    """Every private Ray module or attribute the package's code names, by dotted name: imports
    (`from ray._private import worker`) and string literals (logger names such as
    "ray.data._internal.progress"), with the files that name them."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(), where)):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("ray"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("ray")]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = re.findall(r"^ray(?:\.\w+)+$", node.value)
            for name in names:
                if _private(name):
                    found.setdefault(name, set()).add(where)
    return found


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of one (the longest importable prefix)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def _users(word: str) -> str:
    """The package's files that mention `word`, for the failure message."""
    files = [str(p.relative_to(REPO)) for p in sorted(PACKAGE.rglob("*.py")) if word in p.read_text()]
    return ", ".join(files) or "no file now"


def _instance_fields_missing() -> list[str]:
    """Private fields of Ray objects, and attributes of Ray-internal modules, that the code
    reads or sets (not visible to an import scan)."""
    from ray.train._internal import session
    from ray.tune.execution import experiment_state, tune_controller
    from ray.tune.schedulers import AsyncHyperBandScheduler

    missing = []
    for module, attribute in (("ray.data._internal.execution.backpressure_policy", "ENABLED_BACKPRESSURE_POLICIES"),
                              ("ray.data._internal.execution.backpressure_policy",
                               "ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY"),
                              ("ray.data._internal.execution.backpressure_policy", "ResourceBudgetBackpressurePolicy"),
                              ("ray._private.worker", "print_to_stdstream")):
        if not _resolves(f"{module}.{attribute}"):
            missing.append(f"{module}.{attribute} ({_users(attribute)})")
    # trm_ray/tune/scheduler.py: ResumableASHA reads and updates ASHA's own state
    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=10, grace_period=1,
                                   reduction_factor=3, brackets=1)
    for field in ("_time_attr", "_metric", "_metric_op", "_max_t", "_stop_last_trials", "_num_stopped",
                  "_trial_info", "_brackets"):
        if not hasattr(asha, field):
            missing.append(f"AsyncHyperBandScheduler().{field} (trm_ray/tune/scheduler.py)")
    if not isinstance(getattr(asha, "_trial_info", None), dict):
        missing.append("AsyncHyperBandScheduler()._trial_info as a dict trial_id -> bracket (trm_ray/tune/scheduler.py)")
    bracket = (getattr(asha, "_brackets", None) or [None])[0]
    for field in ("_rungs", "on_result"):
        if not hasattr(bracket, field):
            missing.append(f"AsyncHyperBandScheduler()._brackets[0].{field} (trm_ray/tune/scheduler.py)")
    # trm_ray/tune/driver.py: Ray Train's Tune-side session and Tune's forced experiment save
    train_session = getattr(session, "_TrainSession", None)
    if not hasattr(train_session, "_get_or_create_inter_actor_queue"):
        missing.append("ray.train._internal.session._TrainSession._get_or_create_inter_actor_queue "
                       "(trm_ray/tune/driver.py)")
    if train_session is None or "self.iteration" not in inspect.getsource(train_session):
        missing.append("ray.train._internal.session._TrainSession().iteration (trm_ray/tune/driver.py)")
    wrapper = getattr(tune_controller, "TrialRunnerWrapper", None)
    if wrapper is None or "self._tune_controller" not in inspect.getsource(wrapper.__init__):
        missing.append("the scheduler's TrialRunnerWrapper()._tune_controller (trm_ray/tune/driver.py)")
    if "self._checkpoint_manager" not in inspect.getsource(tune_controller.TuneController.__init__):
        missing.append("TuneController()._checkpoint_manager (trm_ray/tune/driver.py)")
    manager = getattr(experiment_state, "_ExperimentCheckpointManager", None)
    if manager is None or "self._should_force_sync_up" not in inspect.getsource(manager.__init__):
        missing.append("_ExperimentCheckpointManager()._should_force_sync_up (trm_ray/tune/driver.py)")
    return missing


@pytest.mark.slow  # imports Ray's Tune, Train and Data internals
def test_the_private_ray_names_the_code_relies_on_exist():
    import ray

    names = private_ray_names()
    # the scan sees what the modules named when this test was written (a scan finding nothing
    # would be a broken scan, not a package free of internals)
    assert "ray.train._internal.session.get_session" in names, sorted(names)
    missing = [f"{name} ({', '.join(sorted(files))})" for name, files in sorted(names.items()) if not _resolves(name)]
    missing += _instance_fields_missing()
    assert not missing, (f"Ray {ray.__version__} lacks private names trm-ray relies on, so the pin in "
                         f"pyproject.toml (ray <2.61) is what works; port these first: " + "; ".join(missing))


# --------------------------------------------------------------------------------------------
# The wheel
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds, offline, from a copy of the sources (no build/ or egg-info of the
    checkout leaks into it, and the checkout is not written to)."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "trm_ray", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(scratch / "dist"), str(source)], env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((scratch / "dist").glob("trm_ray-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow  # builds the wheel
def test_wheel_carries_the_cli_the_arch_groups_and_the_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"trm_ray/cli/main.py", "trm_ray/recipes/__init__.py"}
    expected |= {f"trm_ray/arch/{p.name}" for p in (PACKAGE / "arch").glob("*.yaml")}
    expected |= {f"trm_ray/recipes/{p.relative_to(PACKAGE / 'recipes').as_posix()}"
                 for p in (PACKAGE / "recipes").rglob("*.yaml")}
    assert {"trm_ray/arch/trm.yaml", "trm_ray/recipes/experiments/sweeps/quickstart.yaml"} <= expected
    assert not expected - names, sorted(expected - names)
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "trm-ray = trm_ray.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


RESOLVE_FROM_THE_WHEEL = r"""
import json, sys
import trm_ray
from trm_ray.config import ConfigError, load_train_config
from trm_ray.data.recipe import load_recipe
from trm_ray.recipes import find_recipe
from trm_ray.tune.spec import load_sweep_spec
import trm_ray.cli.main

found = {name: str(find_recipe(name, kind)) for name, kind in json.loads(sys.argv[1]).items()}
config = load_train_config("experiments/quickstart.yaml")
sweep = load_sweep_spec("experiments/sweeps/quickstart.yaml")
dataset = load_recipe("datasets/sudoku-4x4-quickstart.yaml")
try:
    find_recipe("experiments/no-such-recipe.yaml")
    missing = None
except ConfigError as error:
    missing = str(error)
print(json.dumps({"package": trm_ray.__file__, "cli": trm_ray.cli.main.__file__, "found": found,
                  "epochs": config.epochs, "hidden_size": config.arch.hidden_size,
                  "sweep": sweep.name, "sweep_base_epochs": sweep.base_config.epochs,
                  "dataset": [dataset.name, dataset.kind], "missing": missing}))
"""


@pytest.mark.slow
def test_recipes_resolve_from_the_unpacked_wheel_in_another_folder(wheel, tmp_path):
    import json

    import yaml

    unpacked = (tmp_path / "site").resolve()
    zipfile.ZipFile(wheel).extractall(unpacked)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    done = subprocess.run([sys.executable, "-c", RESOLVE_FROM_THE_WHEEL, json.dumps(QUICKSTART_RECIPES)],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # the wheel's package, not this checkout's
    assert Path(out["package"]).is_relative_to(unpacked) and Path(out["cli"]).is_relative_to(unpacked)
    for name, path in out["found"].items():
        assert Path(path) == unpacked / "trm_ray" / "recipes" / name, (name, path)
    # loaded as written in the checkout's copies (read here with plain yaml)
    recipes = PACKAGE / "recipes"
    train = yaml.safe_load((recipes / "experiments/quickstart.yaml").read_text())
    sweep = yaml.safe_load((recipes / "experiments/sweeps/quickstart.yaml").read_text())
    assert (out["epochs"], out["hidden_size"]) == (train["epochs"], train["arch"]["hidden_size"])
    assert (out["sweep"], out["sweep_base_epochs"]) == (sweep["name"], sweep["overrides"]["epochs"])
    assert out["dataset"] == ["sudoku-4x4-quickstart", "sudoku"]
    # a missing recipe: one line naming it and the shipped ones
    assert "\n" not in out["missing"] and "'experiments/no-such-recipe.yaml'" in out["missing"]
    assert "experiments/quickstart.yaml" in out["missing"] and "experiments/sudoku-mlp.yaml" in out["missing"]
