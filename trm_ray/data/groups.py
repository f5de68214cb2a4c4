"""One source puzzle -> its group (the puzzle and its variants), encoded, per split.

These are the per-task functions of the build (Ray Data tasks, local processes), and plain
functions otherwise:

    group = arc_group(index=0, name="007bbfb7", puzzle=..., is_test_set=True, seed=42, num_aug=8)
    group.parts["train"].inputs      # (examples, 900) uint8

Each group draws from its own generator, rng_for(seed, stream, index), so the bytes do not
depend on batch boundaries or on the number of CPUs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from trm_ray.data import maze as maze_lib
from trm_ray.data import sudoku as sudoku_lib
from trm_ray.data.transforms import (
    STREAM_ARC,
    STREAM_GENERATE_TEST,
    STREAM_GENERATE_TRAIN,
    STREAM_SUDOKU_AUG,
    arc_encode_puzzle,
    arc_group_arrays,
    arc_variants,
    dihedral_transform,
    maze_encode,
    rng_for,
    sudoku_shuffle,
)


@dataclass
class SplitPart:
    """A group's rows in one split: one name and example count per puzzle (variant)."""

    names: list[str]
    puzzle_sizes: list[int]
    inputs: np.ndarray  # (examples, S) uint8
    labels: np.ndarray  # (examples, S) uint8


@dataclass
class Group:
    parts: dict[str, SplitPart] = field(default_factory=dict)
    error: Optional[str] = None  # a user-caused problem, reported by the driver as one line


# ---------------------------------------------------------------------------------------------
# ARC
# ---------------------------------------------------------------------------------------------
def arc_group(index: int, name: str, puzzle: dict[str, Any], is_test_set: bool, seed: int, num_aug: int) -> Group:
    """Test-set puzzles send their test pairs to the test split; every other pair goes to train.

    Variants are drawn over both splits together (one transform, one duplicate check), so a
    variant's name identifies the same transform in train and test. Computed array-at-once
    (transforms.arc_group_arrays); arc_group_per_call is the same group from the per-grid
    functions, used where the array path cannot follow numpy's draws.
    """
    splits = _arc_splits(puzzle, is_test_set)
    if _arrays_match_per_call():
        parts = arc_group_arrays(name, splits, num_aug, rng_for(seed, STREAM_ARC, index))
        if parts is not None:
            sizes = {split: len(pairs) for split, pairs in splits.items()}
            return Group({split: SplitPart(names, [sizes[split]] * len(names), inputs, labels)
                          for split, names, inputs, labels in parts})
    return arc_group_per_call(index, name, puzzle, is_test_set, seed, num_aug)


def _arc_splits(puzzle: dict[str, Any], is_test_set: bool) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    def pairs(kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.array(p["input"], np.uint8), np.array(p["output"], np.uint8)) for p in puzzle[kind]]

    if is_test_set:
        return {"train": pairs("train"), "test": pairs("test")}
    return {"train": pairs("train") + pairs("test")}


def arc_group_per_call(index: int, name: str, puzzle: dict[str, Any], is_test_set: bool, seed: int, num_aug: int) -> Group:
    """arc_group from the per-grid functions (arc_variants, arc_encode_puzzle): the definition
    of its bytes."""
    rng = rng_for(seed, STREAM_ARC, index)
    splits = _arc_splits(puzzle, is_test_set)
    variants = arc_variants(name, splits, num_aug, rng)
    group = Group()
    for split in splits:
        names, sizes, inputs, labels = [], [], [], []
        for variant_name, variant in variants:
            # Translation only in train: the test split keeps offset (0, 0) so predictions crop cleanly.
            i, o = arc_encode_puzzle(variant[split], translate=(split == "train"), rng=rng)
            names.append(variant_name)
            sizes.append(len(variant[split]))
            inputs.append(i)
            labels.append(o)
        group.parts[split] = SplitPart(names, sizes, np.concatenate(inputs), np.concatenate(labels))
    return group


@functools.lru_cache(maxsize=None)
def _arrays_match_per_call() -> bool:
    """Once per process: do both ARC paths give the same group here? The array path decodes
    numpy's draws itself, so a numpy that draws differently must not change the bytes."""
    grid = lambda h, w, k: [[(3 * r + 5 * c + k) % 10 for c in range(w)] for r in range(h)]  # noqa: E731
    puzzle = {"train": [{"input": grid(3, 5, 1), "output": grid(30, 2, 2)}, {"input": grid(2, 2, 0), "output": grid(1, 4, 3)}],
              "test": [{"input": grid(4, 4, 7), "output": grid(5, 3, 9)}]}
    for is_test_set in (True, False):
        parts = arc_group_arrays("check", _arc_splits(puzzle, is_test_set), 6, rng_for(7, STREAM_ARC, 3))
        expected = arc_group_per_call(3, "check", puzzle, is_test_set, 7, 6)
        if parts is None or [p[0] for p in parts] != list(expected.parts):
            return False
        for split, names, inputs, labels in parts:
            want = expected.parts[split]
            if names != want.names or not np.array_equal(inputs, want.inputs) or not np.array_equal(labels, want.labels):
                return False
    return True


# ---------------------------------------------------------------------------------------------
# Sudoku
# ---------------------------------------------------------------------------------------------
def sudoku_group(
    index: int, split: str, question: str, answer: str, where: str, size: int, seed: int, num_aug: int
) -> Group:
    """The puzzle and, in train, `num_aug` validity-preserving shuffles; one example each."""
    try:
        board = sudoku_lib.parse_board(question, size, blank_ok=True)
        solution = sudoku_lib.parse_board(answer, size, blank_ok=False)
        sudoku_lib.check_pair(board, solution)
    except sudoku_lib.SudokuError as error:
        return Group(error=f"{where}: Sudoku {error}: fix or drop that row")
    boards = [(board, solution)]
    if split == "train" and num_aug > 0:
        rng = rng_for(seed, STREAM_SUDOKU_AUG, index)
        boards += [sudoku_shuffle(board, solution, rng) for _ in range(num_aug)]
    inputs = np.stack([sudoku_lib.encode(b) for b, _ in boards])
    labels = np.stack([sudoku_lib.encode(s) for _, s in boards])
    return Group({split: SplitPart([""] * len(boards), [1] * len(boards), inputs, labels)})


def generate_sudoku_row(
    index: int, split: str, seed: int, size: int, min_clues: int, max_clues: Optional[int], min_difficulty: Optional[int]
) -> tuple:
    stream = STREAM_GENERATE_TRAIN if split == "train" else STREAM_GENERATE_TEST
    try:
        board, solution, rating = sudoku_lib.generate_sudoku_rated(
            rng_for(seed, stream, index), size, min_clues, min_difficulty, max_clues
        )
    except sudoku_lib.SudokuError as error:
        return ("", "", 0, str(error))
    text = lambda b: "".join(str(int(v)) for v in b.reshape(-1)).replace("0", ".")  # noqa: E731
    return (text(board), text(solution), rating, None)


# ---------------------------------------------------------------------------------------------
# Maze
# ---------------------------------------------------------------------------------------------
def maze_group(index: int, split: str, question: str, answer: str, where: str, size: int, aug: bool) -> Group:
    """The maze and, with `aug` in train, its 8 dihedral variants (the first is the identity)."""
    if len(question) != size * size or len(answer) != size * size:
        return Group(error=f"{where}: maze has {len(question)}/{len(answer)} cells, expected {size * size}: fix the row")
    try:
        inp = maze_encode(question).reshape(size, size)
        out = maze_encode(answer).reshape(size, size)
    except ValueError as error:
        return Group(error=f"{where}: {error}: fix the row")
    transforms = range(8) if (split == "train" and aug) else range(1)
    inputs = np.stack([dihedral_transform(inp, t).reshape(-1) for t in transforms])
    labels = np.stack([dihedral_transform(out, t).reshape(-1) for t in transforms])
    return Group({split: SplitPart([""] * len(inputs), [1] * len(inputs), inputs, labels)})


def generate_maze_row(index: int, split: str, seed: int, size: int, loop_prob: float, min_difficulty: Optional[int]) -> tuple:
    stream = STREAM_GENERATE_TRAIN if split == "train" else STREAM_GENERATE_TEST
    try:
        question, answer, length = maze_lib.generate_maze(rng_for(seed, stream, index), size, min_difficulty or 0, loop_prob)
    except maze_lib.MazeError as error:
        return ("", "", 0, str(error))
    return (question, answer, length, None)
