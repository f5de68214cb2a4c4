"""The ARC tasks of a post-training run: load and check them, split them into chunks, write a
chunk as a Kaggle-layout file pair, merge and score the per-chunk submissions. No Ray, no torch.

    task_set = load_tasks("data/arc/arc-agi", subset="evaluation2")
    chunks = split_chunks(task_set, 4)                       # [[task id, ...] per chunk]
    prefix = write_chunk_files(task_set, chunks[0], "work/chunk0/arc-agi")
    submission = merge_submissions(task_set, [part0, part1, part2, part3], fallback=pretrained)
    print(format_scores([("overall", None, score_submission(submission, task_set.solutions))]))

Every user-caused problem is a PosttrainError whose one-line message names the input and says
what to do; a ValueError from merge_submissions or score_submission is a bug of the caller.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from trm_ray.data.sources import DatasetBuildError, check_arc_grid, read_json

_CHALLENGES_SUFFIX = "_challenges.json"
_SOLUTIONS_SUFFIX = "_solutions.json"


class PosttrainError(ValueError):
    """A user-fixable problem; the message is one line naming the input and what to do."""


@dataclass
class TaskSet:
    """The tasks of one challenges file, with their test outputs when a solutions file exists."""

    challenges: dict[str, dict]  # task id -> {"train": [{"input", "output"}], "test": [{"input"}]}, file order
    solutions: Optional[dict[str, list]]  # task id -> one output grid per test input, or None
    challenges_path: str
    solutions_path: Optional[str]
    subset: str  # "evaluation2" of <prefix>_evaluation2_challenges.json, else "tasks"

    @property
    def num_test_inputs(self) -> int:
        return sum(self.test_counts().values())

    def test_counts(self) -> dict[str, int]:
        """Task id -> number of test inputs, in file order."""
        return {name: len(task["test"]) for name, task in self.challenges.items()}


# ---------------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------------
def load_tasks(tasks: str, subset: Optional[str] = None, solutions: Optional[str] = None) -> TaskSet:
    """The checked tasks of a challenges file: `tasks` itself, or `<tasks>_<subset>_challenges.json`.

    The solutions are `solutions`, else the `_solutions.json` file beside the challenges when
    it exists, else None (Kaggle's hidden test set has none)."""
    prefixed = f"{tasks}_{subset}{_CHALLENGES_SUFFIX}"
    if os.path.isfile(tasks):
        challenges_path = tasks
        subset = subset or _subset_of(tasks)
    elif subset and os.path.isfile(prefixed):
        challenges_path = prefixed
    else:
        tried = f"neither {tasks!r} nor {prefixed!r} is a file" if subset else f"{tasks!r} is not a file"
        raise PosttrainError(
            f"tasks: {tried}: pass a challenges JSON file, "
            "or a prefix such as data/arc/arc-agi with --subset evaluation2"
        )
    challenges = _read_json(challenges_path, "challenges file")
    _check_challenges(challenges, challenges_path)
    if solutions is None and challenges_path.endswith(_CHALLENGES_SUFFIX):
        beside = challenges_path[: -len(_CHALLENGES_SUFFIX)] + _SOLUTIONS_SUFFIX
        solutions = beside if os.path.isfile(beside) else None
    outputs = None
    if solutions is not None:
        outputs = _checked_solutions(_read_json(solutions, "solutions file"), solutions, challenges)
    return TaskSet(challenges, outputs, challenges_path, solutions, subset)


def _subset_of(path: str) -> str:
    base = os.path.basename(path)
    stem = base[: -len(_CHALLENGES_SUFFIX)] if base.endswith(_CHALLENGES_SUFFIX) else ""
    prefix, _, subset = stem.rpartition("_")
    return subset if prefix and subset else "tasks"


def _read_json(path: str, what: str) -> Any:
    try:
        return read_json(path, what, missing_advice="check the path")
    except DatasetBuildError as error:
        raise PosttrainError(str(error)) from None


def _check_grid(grid: Any, where: str) -> None:
    try:
        check_arc_grid(grid, where)
    except DatasetBuildError as error:
        raise PosttrainError(str(error)) from None


def _check_challenges(challenges: Any, path: str) -> None:
    if not isinstance(challenges, dict):
        raise PosttrainError(f"{path!r} must hold a JSON object of ARC tasks by id: pass an ARC challenges file")
    if not challenges:
        raise PosttrainError(f"{path!r} has no tasks: pass an ARC challenges file with at least one task")
    for name, task in challenges.items():
        where = f"{path}: task {name!r}"
        train = task.get("train") if isinstance(task, dict) else None
        if not isinstance(train, list) or not train:
            raise PosttrainError(f"{where} needs a 'train' list of at least one input/output pair: fix the file")
        for k, pair in enumerate(train):
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise PosttrainError(f"{where} train[{k}] needs 'input' and 'output' grids: fix the file")
            _check_grid(pair["input"], f"{where} train[{k}] input")
            _check_grid(pair["output"], f"{where} train[{k}] output")
        test = task.get("test")
        if not isinstance(test, list) or not test or not all(isinstance(p, dict) and "input" in p for p in test):
            raise PosttrainError(
                f"{where} has no test inputs ('test' must list {{'input': grid}} items): "
                "post-training needs a challenges file with test inputs"
            )
        for k, pair in enumerate(test):
            _check_grid(pair["input"], f"{where} test[{k}] input")
            if "output" in pair:  # a chunk file keeps it, and load_arc checks it there
                _check_grid(pair["output"], f"{where} test[{k}] output")


def _checked_solutions(solutions: Any, path: str, challenges: dict[str, dict]) -> dict[str, list]:
    """The solutions of the challenges' tasks, in challenges order (others are ignored: Kaggle
    solution files cover whole sets)."""
    if not isinstance(solutions, dict):
        raise PosttrainError(f"{path!r} must hold a JSON object of output grid lists by task id: fix the file")
    missing = [name for name in challenges if name not in solutions]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise PosttrainError(
            f"{len(missing)} tasks unknown to the solutions file {path!r} ({shown}): "
            "pass the solutions file of this challenges file, or none"
        )
    for name, task in challenges.items():
        grids = solutions[name]
        if not isinstance(grids, list) or len(grids) != len(task["test"]):
            found = len(grids) if isinstance(grids, list) else type(grids).__name__
            raise PosttrainError(
                f"{path}: task {name!r} has {found} solution grids but {len(task['test'])} test inputs: "
                "pass the solutions file of this challenges file"
            )
        for k, grid in enumerate(grids):
            _check_grid(grid, f"{path}: task {name!r} solution {k}")
    return {name: solutions[name] for name in challenges}


# ---------------------------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------------------------
def split_chunks(task_set: TaskSet, num_chunks: int) -> list[list[str]]:
    """Task ids per chunk, balanced by test inputs (greedy longest-processing-time), in file order.

    Tasks go, most test inputs first (then file order), to the chunk with the fewest test
    inputs so far (then the lowest index), so the split depends on nothing but the file."""
    counts = task_set.test_counts()
    if num_chunks < 1 or num_chunks > len(counts):
        raise PosttrainError(
            f"--chunks {num_chunks} but tasks file {task_set.challenges_path!r} has {len(counts)} tasks: "
            f"use --chunks between 1 and {len(counts)}"
        )
    position = {name: i for i, name in enumerate(counts)}
    loads = [0] * num_chunks
    owner: dict[str, int] = {}
    for name in sorted(counts, key=lambda n: (-counts[n], position[n])):
        chunk = min(range(num_chunks), key=lambda c: (loads[c], c))
        owner[name] = chunk
        loads[chunk] += counts[name]
    return [[name for name in counts if owner[name] == c] for c in range(num_chunks)]


def write_chunk_files(task_set: TaskSet, names: list[str], prefix: str) -> str:
    """Write `<prefix>_<subset>_challenges.json` (and `_solutions.json` when the set has
    solutions) with only `names`, readable by trm_ray.data.sources.load_arc(prefix, None, [subset])."""
    unknown = [name for name in names if name not in task_set.challenges]
    if unknown:
        raise ValueError(f"write_chunk_files: tasks {unknown[:3]} are not in {task_set.challenges_path!r}")
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    base = f"{prefix}_{task_set.subset}"
    _write_json(base + _CHALLENGES_SUFFIX, {name: task_set.challenges[name] for name in names})
    if task_set.solutions is not None:
        _write_json(base + _SOLUTIONS_SUFFIX, {name: task_set.solutions[name] for name in names})
    return prefix


def _write_json(path: str, value: Any) -> None:
    from trm_ray import storage

    storage.write_text(path, json.dumps(value))  # whole or not at all


# ---------------------------------------------------------------------------------------------
# Submissions
# ---------------------------------------------------------------------------------------------
Submission = dict[str, list[dict[str, list[list[int]]]]]


def merge_submissions(
    task_set: TaskSet, parts: Sequence[Mapping[str, list]], fallback: Optional[Mapping[str, list]] = None
) -> Submission:
    """One ARC Prize submission ({task: [{"attempt_1", "attempt_2"} per test input]}) with every
    task of the challenges file in file order: from the part that has it, else from `fallback`,
    else placeholder attempts. Tasks a part has beyond the challenges file are ignored. An empty
    grid (a prediction with no colour cell at its top-left, which crops to nothing) becomes the
    placeholder: every attempt of an ARC Prize submission must be a grid."""
    from trm_ray.eval.arc import PLACEHOLDER_GRID  # lazily: trm_ray.eval imports torch

    merged: Submission = {}
    for name, count in task_set.test_counts().items():
        holders = [i for i, part in enumerate(parts) if name in part]
        if len(holders) > 1:
            raise ValueError(f"merge_submissions: task {name!r} is in parts {holders}; each task belongs to one chunk")
        if holders:
            entries = _attempts(parts[holders[0]][name], count, name)
        elif fallback is not None and name in fallback:
            entries = _attempts(fallback[name], count, name)
        else:
            entries = [{"attempt_1": PLACEHOLDER_GRID, "attempt_2": PLACEHOLDER_GRID}] * count
        merged[name] = json.loads(json.dumps(entries))  # a private copy: no grid shared with the inputs
    return merged


def _attempts(entries: Any, count: int, name: str) -> list[dict[str, list[list[int]]]]:
    if not isinstance(entries, list) or len(entries) != count:
        raise ValueError(f"submission entry of task {name!r} is not a list of {count} test inputs: {entries!r:.80}")
    out = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "attempt_1" not in entry:
            raise ValueError(f"submission entry {k} of task {name!r} has no attempt_1")
        first = prize_grid(entry["attempt_1"])
        out.append({"attempt_1": first, "attempt_2": prize_grid(entry.get("attempt_2", first))})
    return out


def prize_grid(grid: Any) -> Any:
    """The grid, or the placeholder grid when it is empty (not a valid ARC Prize attempt)."""
    from trm_ray.eval.arc import PLACEHOLDER_GRID

    return grid if grid and all(grid) else PLACEHOLDER_GRID


def score_submission(
    submission: Mapping[str, list], solutions: Mapping[str, list], tasks: Optional[Sequence[str]] = None
) -> dict[str, float]:
    """ARC pass@1 / pass@2 over `tasks` (default: every task of the submission): a task scores
    the fraction of its test inputs solved; low/high are the Wilson 95% interval of the mean."""
    from trm_ray.eval.core import wilson_interval  # lazily: trm_ray.eval imports torch

    names = list(submission) if tasks is None else list(tasks)
    solved = {1: 0.0, 2: 0.0}
    for name in names:
        if name not in solutions or name not in submission:
            raise ValueError(f"score_submission: task {name!r} needs both a submission entry and solutions")
        entries = _attempts(submission[name], len(solutions[name]), name)
        for entry, truth in zip(entries, solutions[name]):
            first = entry["attempt_1"] == truth
            solved[1] += first / len(entries)
            solved[2] += (first or entry["attempt_2"] == truth) / len(entries)
    scores: dict[str, float] = {"tasks": len(names)}
    for k, total in solved.items():
        scores[f"pass@{k}"] = total / len(names) if names else 0.0
        scores[f"pass@{k}_low"], scores[f"pass@{k}_high"] = wilson_interval(total, len(names))
    return scores


def _score_cell(scores: Mapping[str, float], key: str) -> str:
    return f"{scores[key]:.3f} [{scores[key + '_low']:.3f}, {scores[key + '_high']:.3f}]"


def format_scores(rows: Sequence[tuple[str, Optional[Mapping[str, float]], Optional[Mapping[str, float]]]]) -> str:
    """A plain-text table: label, tasks, pretrained and post-trained pass@1 / pass@2 with their
    Wilson intervals; a missing score prints '-'."""
    table = [["", "tasks", "pretrained pass@1", "pretrained pass@2", "post-trained pass@1", "post-trained pass@2"]]
    for label, before, after in rows:
        known = after if after is not None else before
        line = [label, str(int(known["tasks"])) if known is not None else "-"]
        for scores in (before, after):
            for k in (1, 2):
                line.append("-" if scores is None else _score_cell(scores, f"pass@{k}"))
        table.append(line)
    widths = [max(len(line[c]) for line in table) for c in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in table
    )
