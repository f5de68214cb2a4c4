"""6x6 Sudoku (boxes of 2 rows x 3 columns): box shapes, generator, shuffles, CLI build.

Validity and uniqueness are judged by a checker and a brute-force counter written here,
independent of trm_ray's solver. No Ray: builds run with --no-ray.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from trm_ray.cli.main import main
from trm_ray.data import sudoku as sudoku_lib
from trm_ray.data.transforms import rng_for, sudoku_is_valid_solution, sudoku_shuffle

# A valid 6x6 grid written out by hand: every row, column and 2x3 box holds 1..6.
GRID_6 = np.array(
    [
        [1, 2, 3, 4, 5, 6],
        [4, 5, 6, 1, 2, 3],
        [2, 3, 1, 5, 6, 4],
        [5, 6, 4, 2, 3, 1],
        [3, 1, 2, 6, 4, 5],
        [6, 4, 5, 3, 1, 2],
    ],
    np.uint8,
)


def units_6(grid) -> list[list[int]]:
    """The 18 units of a 6x6 grid: rows, columns, and the 2-row x 3-column boxes."""
    g = [[int(v) for v in row] for row in grid]
    rows = [list(row) for row in g]
    cols = [[g[r][c] for r in range(6)] for c in range(6)]
    boxes = [[g[r][c] for r in range(r0, r0 + 2) for c in range(c0, c0 + 3)] for r0 in (0, 2, 4) for c0 in (0, 3)]
    return rows + cols + boxes


def is_valid_6(grid) -> bool:
    return np.asarray(grid).shape == (6, 6) and all(sorted(unit) == [1, 2, 3, 4, 5, 6] for unit in units_6(grid))


def count_6(board, limit: int = 2) -> int:
    """Solutions of a 6x6 board (0 blank), up to `limit`, by plain cell-order backtracking."""
    cells = [int(v) for v in np.asarray(board).reshape(-1)]

    def ok(i: int, d: int) -> bool:
        r, c = divmod(i, 6)
        r0, c0 = r - r % 2, c - c % 3
        peers = [cells[r * 6 + k] for k in range(6)] + [cells[k * 6 + c] for k in range(6)]
        peers += [cells[rr * 6 + cc] for rr in range(r0, r0 + 2) for cc in range(c0, c0 + 3)]
        return d not in peers

    def recurse(i: int) -> int:
        while i < 36 and cells[i]:
            i += 1
        if i == 36:
            return 1
        found = 0
        for d in range(1, 7):
            if ok(i, d):
                cells[i] = d
                found += recurse(i + 1)
                cells[i] = 0
                if found >= limit:
                    break
        return found

    return recurse(0)


def test_hand_grid_and_checkers_agree():
    assert is_valid_6(GRID_6) and sudoku_is_valid_solution(GRID_6)
    # Transposed, the boxes would have to be 3x2: the top-left 2x3 box repeats a 2.
    assert not is_valid_6(GRID_6.T) and not sudoku_is_valid_solution(GRID_6.T)
    swapped = GRID_6[[0, 2, 1, 3, 4, 5]]  # rows 1 and 2 sit in different bands
    assert not is_valid_6(swapped) and not sudoku_is_valid_solution(swapped)


@pytest.mark.parametrize(
    "n, shape", [(4, (2, 2)), (6, (2, 3)), (8, (2, 4)), (9, (3, 3)), (12, (3, 4)), (16, (4, 4))]
)
def test_box_shape(n, shape):
    assert sudoku_lib.box_shape(n) == shape


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 11, 13])
def test_box_shape_rejects_sides_without_boxes(n):
    with pytest.raises(sudoku_lib.SudokuError) as error:
        sudoku_lib.box_shape(n)
    message = str(error.value)
    assert "\n" not in message and f"got {n}" in message and "4, 6, 8, 9" in message


def test_generated_6x6_puzzles_are_valid_and_unique():
    for k in range(4):
        board, solution, rating = sudoku_lib.generate_sudoku(rng_for(3, 4, k), 6)
        assert board.shape == solution.shape == (6, 6) and rating >= 0
        assert is_valid_6(solution)
        clues = board != 0
        assert 0 < clues.sum() < 36 and np.array_equal(board[clues], solution[clues])
        assert count_6(board) == 1
        assert np.array_equal(sudoku_lib.solve(board), solution)
        assert sudoku_lib.count_solutions(board)[0] == 1


def test_6x6_solver_and_rating_on_hand_boards():
    one_blank = GRID_6.copy()
    one_blank[2, 4] = 0
    assert sudoku_lib.rate(one_blank) == 0 and np.array_equal(sudoku_lib.solve(one_blank), GRID_6)
    empty = np.zeros((6, 6), np.uint8)
    assert sudoku_lib.count_solutions(empty)[0] == 2 and is_valid_6(sudoku_lib.solve(empty))
    clash = np.zeros((6, 6), np.uint8)
    clash[0, 0] = clash[1, 2] = 5  # same 2x3 box, different row and column
    assert sudoku_lib.solve(clash) is None


def test_6x6_shuffles_are_valid_sudokus():
    rng = rng_for(5, 4, 0)
    board, solution, _ = sudoku_lib.generate_sudoku(rng, 6)
    for k in range(60):
        b, s = sudoku_shuffle(board, solution, rng)
        assert is_valid_6(s), s
        assert (b != 0).sum() == (board != 0).sum() and np.array_equal(b[b != 0], s[b != 0])
        if k < 3:
            assert count_6(b) == 1


def digest(arrays) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a, np.uint8).tobytes() for a in arrays)).hexdigest()


@pytest.mark.parametrize(
    "size, rating, expected",
    [
        (4, 0, "e2541cd28e072d040677e8b986090a1c06acc4711eeb6c05bfcf19a12b14ddc3"),
        (9, 13, "936d02ab73ea202a98030eca29c36f7ccff733fa9e8d54c455421680d7c4ffbf"),
    ],
)
def test_square_sides_keep_their_bytes(size, rating, expected):
    # Digests recorded with the square-only implementation: generator and shuffle draws must not move.
    rng = rng_for(7, 4, size)
    board, solution, got_rating = sudoku_lib.generate_sudoku(rng, size)
    outputs = [board, solution]
    for _ in range(5):
        outputs += list(sudoku_shuffle(board, solution, rng))
    assert got_rating == rating and digest(outputs) == expected


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_builds_a_6x6_dataset(tmp_path):
    out = str(tmp_path / "six")
    result = run(
        "data", "build", "sudoku", "--source", "generate", "--size", "6", "--num-train", "12", "--num-test", "4",
        "--num-aug", "2", "--output-dir", out, "--no-ray",
    )
    assert result.exit_code == 0, result.output
    meta = json.load(open(os.path.join(out, "train", "dataset.json")))
    assert meta["seq_len"] == 36 and meta["vocab_size"] == 8
    for split, examples in (("train", 36), ("test", 4)):
        inputs = np.load(os.path.join(out, split, "all__inputs.npy"))
        labels = np.load(os.path.join(out, split, "all__labels.npy"))
        assert inputs.shape == labels.shape == (examples, 36)
        assert inputs.min() >= 1 and inputs.max() <= 7 and labels.min() >= 2 and labels.max() <= 7
        for inp, lab in zip(inputs, labels):
            grid = lab.reshape(6, 6) - 1  # digit d is token d + 1
            assert is_valid_6(grid)
            clues = inp != 1  # blank is token 1
            assert np.array_equal(inp[clues], lab[clues])


def test_cli_rejects_side_7(tmp_path):
    out = tmp_path / "seven"
    result = run(
        "data", "build", "sudoku", "--source", "generate", "--size", "7", "--num-train", "3", "--num-test", "1",
        "--output-dir", str(out), "--no-ray",
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "7" in lines[0] and "6" in lines[0], result.output
    assert not out.exists()
