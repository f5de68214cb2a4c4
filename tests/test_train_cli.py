"""`trm-ray train` fails fast, before any Ray process starts, on what a user can get wrong;
--dry-run prints the resolved config; the help ends with an example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from datasets_util import write_dataset
from trm_ray.cli.main import main
from trm_ray.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "trm_ray" / "recipes" / "experiments" / "quickstart.yaml")


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Any attempt to start or join Ray is a test failure: these errors must come first."""
    import trm_ray.train.trainer as trainer

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input error was reported")

    monkeypatch.setattr(trainer, "ensure_ray", refuse)


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, [[2], [1], [3]], split="train")
    write_dataset(root, [[1]], split="test")
    return root


def run(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_config_typo_names_the_key(dataset):
    line = one_line_error(run(QUICKSTART, f"data_paths=[{dataset}]", "arch.hiden_size=32"))
    assert "arch.hiden_size" in line and "unknown key" in line


def test_bad_value_names_the_key_and_the_allowed_values():
    line = one_line_error(run(QUICKSTART, "arch.pos_encodings=sinusoid"))
    assert "arch.pos_encodings" in line and "rope" in line


def test_missing_dataset_says_how_to_build_it(tmp_path):
    line = one_line_error(run(QUICKSTART, f"data_paths=[{tmp_path / 'nope'}]"))
    assert str(tmp_path / "nope") in line and "trm-ray data build" in line


def test_batch_larger_than_the_dataset(dataset, tmp_path):
    line = one_line_error(run(QUICKSTART, f"data_paths=[{dataset}]", "global_batch_size=512", "epochs=1",
                              "eval_interval=1", f"ray.storage_path={tmp_path}"))
    assert "global_batch_size" in line


def test_missing_recipe_and_missing_resume_folder(tmp_path):
    assert "does not exist" in one_line_error(run(str(tmp_path / "missing.yaml")))
    assert "give a recipe" in one_line_error(run("lr=1e-4"))
    assert "no config.yaml" in one_line_error(run("--resume", str(tmp_path / "no-run")))


def test_existing_run_folder_needs_resume(dataset, tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "config.yaml").write_text("{}")
    line = one_line_error(run(QUICKSTART, f"data_paths=[{dataset}]", f"ray.storage_path={tmp_path / 'runs'}",
                              "run_name=taken", "global_batch_size=4"))
    assert "--resume" in line


def test_unknown_evaluator(dataset):
    line = one_line_error(run(QUICKSTART, f"data_paths=[{dataset}]", "evaluators=[{name: nonsense}]"))
    assert "nonsense" in line


def test_dry_run_prints_the_resolved_config():
    result = run(QUICKSTART, "arch.L_cycles=6", "lr=1e-4", "ray.num_workers=2", "--dry-run")
    assert result.exit_code == 0, result.output
    config = TrainConfig(**yaml.safe_load(result.output))
    assert (config.arch.L_cycles, config.lr, config.ray.num_workers) == (6, 1e-4, 2)
    assert config.arch.mlp_t and config.run_name.startswith("quickstart-")  # recipe keys + a generated name


@pytest.mark.parametrize("recipe", ["quickstart", "sudoku-mlp", "sudoku-att", "maze-att", "arc1", "arc2"])
def test_every_recipe_resolves(recipe):
    result = run(str(REPO / "trm_ray" / "recipes" / "experiments" / f"{recipe}.yaml"), "--dry-run")
    assert result.exit_code == 0, result.output


def test_help_ends_with_an_example():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert result.output.rstrip().splitlines()[-1].strip().startswith("trm-ray train")
