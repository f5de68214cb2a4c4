"""Sudoku: a plain solver, a unique-solution puzzle generator and the token encoding (blank 1, digit d -> d + 1).

Boards are (n, n) uint8 arrays with 0 for blank. Boxes are r rows x c columns with
r * c = n, r <= c and as close to square as possible (see box_shape): 9x9 has 3x3 boxes,
the 4x4 quickstart 2x2, 6x6 2x3. Tokens: 0 pad, blank -> 1, digit d -> d + 1, so
V = n + 2, S = n * n.

    board, solution, rating = generate_sudoku(rng_for(0, STREAM_GENERATE_TRAIN, 0), size=9)
    count, backtracks = count_solutions(board, limit=2)

The difficulty rating is the number of dead ends a plain backtracking solver (most
constrained cell first, no other inference) meets before it proves the solution unique:
0 means the puzzle falls to naked singles; sudoku-extreme's hardest need hundreds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np


class SudokuError(ValueError):
    """A Sudoku that cannot be used (wrong size, contradictory clues, wrong solution)."""


def _box_rows(n: int) -> int:
    """The largest r with 2 <= r <= sqrt(n) dividing n, or 0 when there is none."""
    return next((r for r in range(int(n**0.5) + 1, 1, -1) if r * r <= n and n % r == 0), 0)


# Listed in the error for an unusable side; larger ones follow the same rule.
VALID_SIDES = tuple(n for n in range(1, 17) if _box_rows(n))
# The CSV question/answer format writes each digit as one character (parse_board).
MAX_TEXT_SIDE = 9


@lru_cache(maxsize=None)
def box_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of the boxes of an n x n Sudoku: r * c = n, r <= c, as square as can be.

    A 1 x n box would repeat the row constraint, so sides with no other split (1..3, primes) raise.
    """
    r = _box_rows(n) if n >= 1 else 0
    if not r:
        sides = ", ".join(map(str, VALID_SIDES))
        raise SudokuError(
            f"a Sudoku side must split into boxes of r x c cells with 2 <= r <= c ({sides}...), got {n}"
        )
    return r, n // r


@lru_cache(maxsize=None)
def _geometry(n: int) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Box shape and, per flat cell index, its row, column and box (boxes numbered row-major)."""
    r, c = box_shape(n)
    rows = tuple(i // n for i in range(n * n))
    cols = tuple(i % n for i in range(n * n))
    boxes = tuple((i // n) // r * (n // c) + (i % n) // c for i in range(n * n))
    return (r, c), rows, cols, boxes


def _search(cells: list[int], n: int, limit: int, rng: Optional[np.random.Generator]) -> tuple[list[list[int]], int]:
    """Depth-first search with the most constrained cell first.

    Returns up to `limit` solutions and the number of dead ends met. With `rng` the digits
    of each cell are tried in random order (used to draw a random full grid).
    """
    _, rows, cols, boxes = _geometry(n)
    full = (1 << (n + 1)) - 2  # bits 1..n
    row_used = [0] * n
    col_used = [0] * n
    box_used = [0] * n
    empties = []
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if (row_used[rows[i]] | col_used[cols[i]] | box_used[boxes[i]]) & bit:
                return [], 1  # contradictory clues
            row_used[rows[i]] |= bit
            col_used[cols[i]] |= bit
            box_used[boxes[i]] |= bit
        else:
            empties.append(i)
    solutions: list[list[int]] = []
    dead_ends = 0

    def recurse(remaining: list[int]) -> None:
        nonlocal dead_ends
        if not remaining:
            solutions.append(list(cells))
            return
        best, best_free, best_count = -1, 0, n + 1
        for position, i in enumerate(remaining):
            free = full & ~(row_used[rows[i]] | col_used[cols[i]] | box_used[boxes[i]])
            count = free.bit_count()
            if count < best_count:
                best, best_free, best_count = position, free, count
                if count <= 1:
                    break
        if best_count == 0:
            dead_ends += 1
            return
        i = remaining[best]
        rest = remaining[:best] + remaining[best + 1 :]
        digits = [d for d in range(1, n + 1) if best_free >> d & 1]
        if rng is not None:
            digits = [digits[k] for k in rng.permutation(len(digits))]
        r, c, b = rows[i], cols[i], boxes[i]
        for d in digits:
            bit = 1 << d
            cells[i] = d
            row_used[r] |= bit
            col_used[c] |= bit
            box_used[b] |= bit
            recurse(rest)
            row_used[r] &= ~bit
            col_used[c] &= ~bit
            box_used[b] &= ~bit
            cells[i] = 0
            if len(solutions) >= limit:
                return

    recurse(empties)
    return solutions, dead_ends


def count_solutions(board: np.ndarray, limit: int = 2) -> tuple[int, int]:
    """(number of solutions found, up to `limit`; dead ends met by the search)."""
    n = board.shape[0]
    solutions, dead_ends = _search([int(v) for v in board.reshape(-1)], n, limit, None)
    return len(solutions), dead_ends


def solve(board: np.ndarray) -> Optional[np.ndarray]:
    """One solution, or None when the clues admit none."""
    n = board.shape[0]
    solutions, _ = _search([int(v) for v in board.reshape(-1)], n, 1, None)
    return np.array(solutions[0], np.uint8).reshape(n, n) if solutions else None


def rate(board: np.ndarray) -> int:
    """Difficulty: dead ends met while proving the solution unique."""
    return count_solutions(board, limit=2)[1]


def generate_sudoku(
    rng: np.random.Generator, size: int = 9, min_clues: int = 0, max_clues: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """A random unique-solution puzzle: a random full grid, then clues removed in random order
    while the solution stays unique, until none can go (a minimal puzzle) or `min_clues` remain.
    With `max_clues` the clue target is drawn per puzzle from [min_clues, max_clues].

    Returns (board, solution, rating), boards (size, size) uint8 with 0 for blank.
    """
    if max_clues is not None:
        min_clues = int(rng.integers(min_clues, max(min_clues, max_clues) + 1))
    solutions, _ = _search([0] * (size * size), size, 1, rng)
    solution = solutions[0]
    cells = list(solution)
    clues = size * size
    for i in rng.permutation(size * size):
        if clues <= min_clues:
            break
        keep = cells[i]
        cells[i] = 0
        found, _ = _search(list(cells), size, 2, None)
        if len(found) == 1:
            clues -= 1
        else:
            cells[i] = keep
    board = np.array(cells, np.uint8).reshape(size, size)
    return board, np.array(solution, np.uint8).reshape(size, size), rate(board)


def generate_sudoku_rated(
    rng: np.random.Generator,
    size: int,
    min_clues: int,
    min_difficulty: Optional[int],
    max_clues: Optional[int] = None,
    max_tries: int = 2000,
) -> tuple[np.ndarray, np.ndarray, int]:
    """generate_sudoku until the rating reaches `min_difficulty` (same rng, so deterministic)."""
    for _ in range(max_tries):
        board, solution, rating = generate_sudoku(rng, size, min_clues, max_clues)
        if min_difficulty is None or rating >= min_difficulty:
            return board, solution, rating
    raise SudokuError(
        f"no {size}x{size} Sudoku with rating >= {min_difficulty} in {max_tries} tries: lower --min-difficulty"
    )


def symmetry_class(board: np.ndarray) -> bytes:
    """A key shared by exactly the boards one sudoku_shuffle can turn into each other.

    The smallest relabelled board over transposes and band/row/stack/column permutations
    (digits renamed in order of first appearance). Only for 4x4 (128 placements): in 9x9
    the group has ~3.4M placements and two random puzzles essentially never share a class.
    """
    n = board.shape[0]
    if n != 4:
        raise SudokuError(f"symmetry_class is implemented for 4x4 boards only, got {n}x{n}")
    best = None
    for grid in (board, board.T):
        for rows in _PERMS_4:
            for cols in _PERMS_4:
                names: dict[int, int] = {0: 0}
                key = bytes(names.setdefault(int(v), len(names)) for v in grid[rows][:, cols].reshape(-1))
                if best is None or key < best:
                    best = key
    return best


# Row (or column) orders of a 4x4 board that keep its 2x2 boxes: swap bands, swap within each.
_PERMS_4 = [
    [b * 2 + i0, b * 2 + (1 - i0), (1 - b) * 2 + i1, (1 - b) * 2 + (1 - i1)] for b in (0, 1) for i0 in (0, 1) for i1 in (0, 1)
]


def parse_board(text: str, n: int, blank_ok: bool) -> np.ndarray:
    """A CSV question/answer string ('.' or '0' for blank) as an (n, n) uint8 board."""
    if len(text) != n * n:
        raise SudokuError(f"has {len(text)} cells, expected {n * n}")
    text = text.replace(".", "0")
    if not text.isdigit() or n > MAX_TEXT_SIDE:
        raise SudokuError(f"must hold digits 0-{n} and '.' only")
    board = (np.frombuffer(text.encode(), np.uint8) - ord("0")).reshape(n, n)
    if board.max() > n:
        raise SudokuError(f"holds a digit above {n}")
    if not blank_ok and (board == 0).any():
        raise SudokuError("answer has blank cells")
    return board


def check_pair(board: np.ndarray, solution: np.ndarray) -> None:
    """The answer must be a valid full grid that agrees with every clue."""
    from trm_ray.data.transforms import sudoku_is_valid_solution

    if not sudoku_is_valid_solution(solution):
        raise SudokuError("answer is not a valid solution (a row, column or box repeats a digit)")
    clues = board != 0
    if not np.array_equal(board[clues], solution[clues]):
        raise SudokuError("answer disagrees with the question's clues: the puzzle is unsolvable as given")


def encode(board: np.ndarray) -> np.ndarray:
    """(n, n) board -> flat tokens: blank 1, digit d -> d + 1."""
    return (board.reshape(-1) + 1).astype(np.uint8)
