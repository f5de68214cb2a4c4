"""One source puzzle -> its group (the puzzle and its variants), encoded, per split.

These are the per-task functions of the Ray Data build, and plain functions otherwise:

    group = arc_group(index=0, name="007bbfb7", puzzle=..., is_test_set=True, seed=42, num_aug=8)
    group.parts["train"].inputs      # (examples, 900) uint8

Each group draws from its own generator, rng_for(seed, stream, index), so the bytes do not
depend on batch boundaries or on the number of CPUs.
"""

from __future__ import annotations

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
    variant's name identifies the same transform in train and test.
    """
    rng = rng_for(seed, STREAM_ARC, index)

    def pairs(kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.array(p["input"], np.uint8), np.array(p["output"], np.uint8)) for p in puzzle[kind]]

    if is_test_set:
        splits = {"train": pairs("train"), "test": pairs("test")}
    else:
        splits = {"train": pairs("train") + pairs("test")}
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
