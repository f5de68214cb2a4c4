"""trm_ray.posttrain.tasks: loading/checking ARC tasks, chunking, chunk files, merging, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trm_ray.data.sources import load_arc
from trm_ray.posttrain.tasks import (
    PosttrainError,
    TaskSet,
    format_scores,
    load_tasks,
    merge_submissions,
    score_submission,
    split_chunks,
    write_chunk_files,
)

ARC_PREFIX = Path(__file__).resolve().parents[2] / "shared/data/arc/arc-agi"
needs_arc = pytest.mark.skipif(
    not Path(f"{ARC_PREFIX}_evaluation2_challenges.json").is_file(), reason="shared ARC files absent"
)


def _grid(value: int) -> list[list[int]]:
    return [[value, value], [value, 0]]


def _task(num_tests: int, seed: int = 1) -> dict:
    return {
        "train": [{"input": _grid(seed), "output": _grid(seed + 1)}],
        "test": [{"input": _grid((seed + k) % 10)} for k in range(num_tests)],
    }


def _write(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def _set(tmp_path: Path, counts: dict[str, int], solutions: bool = True, name: str = "mine_demo"):
    challenges = {task: _task(n, i) for i, (task, n) in enumerate(counts.items())}
    _write(tmp_path / f"{name}_challenges.json", challenges)
    if solutions:
        outputs = {task: [_grid((i + k + 5) % 10) for k in range(n)] for i, (task, n) in enumerate(counts.items())}
        _write(tmp_path / f"{name}_solutions.json", outputs)
    return load_tasks(str(tmp_path / f"{name}_challenges.json"))


# ---------------------------------------------------------------------------------------------
# load_tasks
# ---------------------------------------------------------------------------------------------
@needs_arc
def test_load_by_prefix_and_subset_reads_real_evaluation2():
    task_set = load_tasks(str(ARC_PREFIX), subset="evaluation2")
    raw = json.loads(Path(f"{ARC_PREFIX}_evaluation2_challenges.json").read_text())
    assert list(task_set.challenges) == list(raw)  # file order kept
    assert len(task_set.challenges) == 120 and task_set.num_test_inputs == 172
    assert task_set.subset == "evaluation2"
    assert task_set.solutions_path == f"{ARC_PREFIX}_evaluation2_solutions.json"
    first = next(iter(raw))
    assert task_set.solutions[first] == json.loads(Path(task_set.solutions_path).read_text())[first]


def test_load_file_subset_from_name_and_solutions_beside(tmp_path):
    task_set = _set(tmp_path, {"a": 2, "b": 1})
    assert task_set.subset == "demo"
    assert task_set.test_counts() == {"a": 2, "b": 1} and task_set.num_test_inputs == 3
    assert task_set.solutions == {"a": [_grid(5), _grid(6)], "b": [_grid(6)]}
    assert task_set.solutions_path == str(tmp_path / "mine_demo_solutions.json")
    # a given subset only names an existing file
    assert load_tasks(task_set.challenges_path, subset="other").subset == "other"


def test_load_kaggle_hidden_set_has_no_solutions_and_other_names_are_tasks(tmp_path):
    path = _write(tmp_path / "arc-agi_test_challenges.json", {"x": _task(1)})
    task_set = load_tasks(path)
    assert task_set.solutions is None and task_set.solutions_path is None and task_set.subset == "test"
    plain = _write(tmp_path / "puzzles.json", {"x": _task(1)})
    assert load_tasks(plain).subset == "tasks"


def test_load_explicit_solutions_path(tmp_path):
    path = _write(tmp_path / "puzzles.json", {"x": _task(1)})
    sols = _write(tmp_path / "answers.json", {"x": [_grid(3)], "unrelated": [_grid(4)]})
    task_set = load_tasks(path, solutions=sols)
    assert task_set.solutions == {"x": [_grid(3)]}  # entries of other tasks ignored
    assert task_set.solutions_path == sols


def _error(call) -> str:
    with pytest.raises(PosttrainError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_tasks_file_names_both_tried_paths(tmp_path):
    message = _error(lambda: load_tasks(str(tmp_path / "nope"), subset="evaluation2"))
    assert str(tmp_path / "nope") in message and "nope_evaluation2_challenges.json" in message
    assert str(tmp_path / "nope.json") in _error(lambda: load_tasks(str(tmp_path / "nope.json")))


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "object of ARC tasks"),
        ("{}", "no tasks"),
        (json.dumps({"t1": {"train": [], "test": [{"input": [[1]]}]}}), "'t1'"),
        (json.dumps({"t1": {"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]}}), "'t1' train[0]"),
        (json.dumps({"t2": {"train": [{"input": [[1]], "output": [[1]]}], "test": []}}), "test inputs"),
        (json.dumps({"t2": {"train": [{"input": [[1]], "output": [[1]]}]}}), "test inputs"),
        (json.dumps({"t2": {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"output": [[1]]}]}}),
         "test inputs"),
        (json.dumps({"t3": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}}),
         "rows of different lengths"),
        (json.dumps({"t3": {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[12]]}]}}),
         "outside 0-9"),
    ],
)
def test_bad_challenges_raise_one_line_naming_file_and_task(tmp_path, content, expected):
    path = tmp_path / "bad_challenges.json"
    path.write_text(content)
    message = _error(lambda: load_tasks(str(path)))
    assert str(path) in message and expected in message
    for task in ("t1", "t2", "t3"):
        if task in content:
            assert repr(task) in message


def test_bad_solutions_raise_one_line_naming_file_and_task(tmp_path):
    path = _write(tmp_path / "p_s_challenges.json", {"a": _task(2), "b": _task(1), "c": _task(1)})
    sols = tmp_path / "p_s_solutions.json"
    _write(sols, {"a": [_grid(1), _grid(2)]})
    message = _error(lambda: load_tasks(path))
    assert "2 tasks unknown to the solutions file" in message and "b, c" in message and str(sols) in message
    _write(sols, {"a": [_grid(1)], "b": [_grid(1)], "c": [_grid(1)]})
    message = _error(lambda: load_tasks(path))
    assert "'a'" in message and "1 solution grids but 2 test inputs" in message and str(sols) in message
    _write(sols, {"a": [_grid(1), _grid(2)], "b": [[[1, 10]]], "c": [_grid(1)]})
    message = _error(lambda: load_tasks(path))
    assert "'b'" in message and "outside 0-9" in message
    _write(sols, [1])
    assert "object" in _error(lambda: load_tasks(path))


# ---------------------------------------------------------------------------------------------
# split_chunks / write_chunk_files
# ---------------------------------------------------------------------------------------------
def test_split_chunks_hand_computed(tmp_path):
    # by (-tests, position): a3 -> c0 [3,0]; d2 -> c1 [3,2]; b1 -> c1 [3,3]; c1 -> c0 (tie) [4,3]; e1 -> c1 [4,4]
    task_set = _set(tmp_path, {"a": 3, "b": 1, "c": 1, "d": 2, "e": 1})
    assert split_chunks(task_set, 2) == [["a", "c"], ["b", "d", "e"]]
    assert split_chunks(task_set, 1) == [["a", "b", "c", "d", "e"]]
    assert split_chunks(task_set, 5) == [["a"], ["d"], ["b"], ["c"], ["e"]]


def test_bad_chunk_counts(tmp_path):
    task_set = _set(tmp_path, {"a": 1, "b": 1, "c": 1})
    message = _error(lambda: split_chunks(task_set, 5))
    assert "--chunks 5" in message and "3 tasks" in message and task_set.challenges_path in message
    assert "--chunks 0" in _error(lambda: split_chunks(task_set, 0))


@needs_arc
def test_split_chunks_balances_evaluation2():
    task_set = load_tasks(str(ARC_PREFIX), subset="evaluation2")
    chunks = split_chunks(task_set, 4)
    counts = task_set.test_counts()
    flat = [name for chunk in chunks for name in chunk]
    assert sorted(flat) == sorted(counts) and len(flat) == 120
    order = list(counts)
    for chunk in chunks:
        assert chunk == sorted(chunk, key=order.index)
    totals = [sum(counts[name] for name in chunk) for chunk in chunks]
    assert sum(totals) == 172 and max(totals) - min(totals) <= max(counts.values())
    assert split_chunks(load_tasks(str(ARC_PREFIX), subset="evaluation2"), 4) == chunks


def test_write_chunk_files_round_trips_through_load_arc(tmp_path):
    task_set = _set(tmp_path, {"a": 2, "b": 1, "c": 1})
    prefix = str(tmp_path / "work" / "chunk1" / "arc")
    assert write_chunk_files(task_set, ["c", "a"], prefix) == prefix
    puzzles = load_arc(prefix, None, ["demo"])
    assert [p.name for p in puzzles] == ["c", "a"] and {p.subset for p in puzzles} == {"demo"}
    assert [pair["output"] for pair in puzzles[1].puzzle["test"]] == [_grid(5), _grid(6)]
    assert puzzles[1].puzzle["train"] == task_set.challenges["a"]["train"]
    assert json.loads(Path(f"{prefix}_demo_solutions.json").read_text()) == {"c": [_grid(7)], "a": [_grid(5), _grid(6)]}


def test_write_chunk_files_without_solutions_gives_placeholders(tmp_path):
    task_set = _set(tmp_path, {"a": 1, "b": 2}, solutions=False)
    prefix = write_chunk_files(task_set, ["b"], str(tmp_path / "out" / "arc"))
    assert not Path(f"{prefix}_demo_solutions.json").exists()
    (puzzle,) = load_arc(prefix, None, ["demo"])
    assert puzzle.name == "b" and [pair["output"] for pair in puzzle.puzzle["test"]] == [[[0]], [[0]]]


# ---------------------------------------------------------------------------------------------
# merge_submissions / score_submission / format_scores
# ---------------------------------------------------------------------------------------------
def _entry(one, two=None):
    return {"attempt_1": one, "attempt_2": two if two is not None else one}


def test_merge_covers_every_task_in_file_order(tmp_path):
    task_set = _set(tmp_path, {"a": 2, "b": 1, "c": 1, "d": 2})
    parts = [{"d": [_entry([[1]]), {"attempt_1": [[2]]}]}, {"a": [_entry([[3]], [[4]]), _entry([[5]])], "zz": []}]
    fallback = {"b": [_entry([[6]], [[7]])], "d": [_entry([[9]]), _entry([[9]])]}
    merged = merge_submissions(task_set, parts, fallback)
    assert merged == {
        "a": [{"attempt_1": [[3]], "attempt_2": [[4]]}, {"attempt_1": [[5]], "attempt_2": [[5]]}],
        "b": [{"attempt_1": [[6]], "attempt_2": [[7]]}],
        "c": [{"attempt_1": [[0]], "attempt_2": [[0]]}],
        "d": [{"attempt_1": [[1]], "attempt_2": [[1]]}, {"attempt_1": [[2]], "attempt_2": [[2]]}],
    }
    assert list(merged) == ["a", "b", "c", "d"]
    assert merge_submissions(task_set, [])["d"] == [_entry([[0]]), _entry([[0]])]


def test_merge_rejects_wrong_counts_and_duplicates(tmp_path):
    task_set = _set(tmp_path, {"a": 2, "b": 1})
    with pytest.raises(ValueError, match="'a'"):
        merge_submissions(task_set, [{"a": [_entry([[1]])]}])
    with pytest.raises(ValueError, match="'b'"):
        merge_submissions(task_set, [{"b": [_entry([[1]])]}, {"b": [_entry([[1]])]}])


def test_score_submission_hand_computed():
    from trm_ray.eval.core import wilson_interval

    solutions = {"a": [[[1]], [[2]]], "b": [[[3]]]}
    submission = {
        "a": [_entry([[1]], [[9]]), _entry([[9]], [[2]])],  # pass@1 1/2, pass@2 2/2
        "b": [_entry([[4]], [[5]])],  # nothing solved
    }
    scores = score_submission(submission, solutions)
    assert scores["tasks"] == 2 and scores["pass@1"] == 0.25 and scores["pass@2"] == 0.5
    assert (scores["pass@1_low"], scores["pass@1_high"]) == wilson_interval(0.5, 2)
    assert (scores["pass@2_low"], scores["pass@2_high"]) == wilson_interval(1.0, 2)
    only_a = score_submission(submission, solutions, tasks=["a"])
    assert only_a["tasks"] == 1 and only_a["pass@1"] == 0.5 and only_a["pass@2"] == 1.0
    with pytest.raises(ValueError, match="'c'"):
        score_submission(submission, solutions, tasks=["c"])


def test_format_scores_table():
    scores = {"tasks": 2, "pass@1": 0.25, "pass@1_low": 0.046, "pass@1_high": 0.699,
              "pass@2": 0.5, "pass@2_low": 0.1, "pass@2_high": 0.9}
    text = format_scores([("overall", None, scores), ("chunk 0", scores, None)])
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    assert "pretrained pass@1" in lines[0] and "post-trained pass@2" in lines[0]
    assert lines[1].split()[:4] == ["overall", "2", "-", "-"]
    assert lines[1].endswith("0.250 [0.046, 0.699]  0.500 [0.100, 0.900]")
    assert lines[2].startswith("chunk 0") and lines[2].split()[-2:] == ["-", "-"]
    assert "0.250 [0.046, 0.699]" in lines[2]


def test_merge_turns_empty_predictions_into_placeholder_grids():
    task_set = TaskSet(challenges={"a": {"train": [], "test": [{"input": [[1]]}, {"input": [[2]]}]}}, solutions=None,
                       challenges_path="x_challenges.json", solutions_path=None, subset="tasks")
    part = {"a": [{"attempt_1": [], "attempt_2": [[3]]}, {"attempt_1": [[4]], "attempt_2": [[]]}]}
    assert merge_submissions(task_set, [part]) == {"a": [{"attempt_1": [[0]], "attempt_2": [[3]]},
                                                         {"attempt_1": [[4]], "attempt_2": [[0]]}]}
