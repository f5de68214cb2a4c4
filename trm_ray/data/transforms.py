"""Pure, seeded puzzle transforms shared by the ARC, Sudoku and Maze builders (TRM_SPEC 7).

No Ray, no I/O: every function maps arrays to arrays, so it runs in a notebook and is
unit-tested directly. Randomness always comes from an explicit `np.random.Generator`;
`rng_for(seed, stream, index)` derives one per puzzle so that the output does not depend
on how puzzles are spread over processes or batches.

    rng = rng_for(42, STREAM_ARC, 7)
    name, t, colour_map = random_arc_variant("007bbfb7", rng)
    back = invert_arc_variant(name)       # (original name, function mapping a grid back)
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from trm_ray.data.sudoku import box_shape

# Independent random streams per use, so e.g. a subsample never shifts augmentation draws.
STREAM_ARC = 1
STREAM_SUDOKU_AUG = 2
STREAM_SUBSAMPLE = 3
STREAM_GENERATE_TRAIN = 4
STREAM_GENERATE_TEST = 5


def rng_for(seed: int, stream: int, index: int) -> np.random.Generator:
    """The random generator of puzzle `index` in `stream` of a build seeded with `seed`."""
    if seed < 0:
        raise ValueError(f"seed={seed} must be a non-negative integer")
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, stream, index])))


# ---------------------------------------------------------------------------------------------
# Dihedral group (ids as in the reference: 0 id, 1 rot90, 2 rot180, 3 rot270, 4 flip left-right,
# 5 flip up-down, 6 transpose, 7 anti-transpose)
# ---------------------------------------------------------------------------------------------
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral_transform(grid: np.ndarray, t: int) -> np.ndarray:
    """A view of `grid` under transform t (slicing instead of np.rot90: this runs per grid)."""
    if t == 0:
        return grid
    if t == 1:  # np.rot90(grid, 1)
        return grid.T[::-1]
    if t == 2:  # np.rot90(grid, 2)
        return grid[::-1, ::-1]
    if t == 3:  # np.rot90(grid, 3)
        return grid.T[:, ::-1]
    if t == 4:  # np.fliplr
        return grid[:, ::-1]
    if t == 5:  # np.flipud
        return grid[::-1]
    if t == 6:
        return grid.T
    if t == 7:  # np.fliplr(np.rot90(grid, 1))
        return grid.T[::-1, ::-1]
    raise ValueError(f"dihedral transform id {t} is not in 0..7")


def inverse_dihedral_transform(grid: np.ndarray, t: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[t])


# ---------------------------------------------------------------------------------------------
# ARC
# ---------------------------------------------------------------------------------------------
ARC_MAX_GRID_SIZE = 30
ARC_SEQ_LEN = ARC_MAX_GRID_SIZE * ARC_MAX_GRID_SIZE
ARC_VOCAB_SIZE = 12  # 0 pad, 1 end-of-grid marker, colours 0..9 -> 2..11
ARC_AUGMENT_RETRIES_FACTOR = 5
PUZZLE_ID_SEPARATOR = "|||"


def arc_variant_name(name: str, t: int, colour_map: np.ndarray) -> str:
    """`<name>|||t<t>|||<10 digits>`: digit i is the colour that colour i becomes."""
    return f"{name}{PUZZLE_ID_SEPARATOR}t{t}{PUZZLE_ID_SEPARATOR}{''.join(str(int(c)) for c in colour_map)}"


def apply_arc_variant(grid: np.ndarray, t: int, colour_map: np.ndarray) -> np.ndarray:
    """Colour map first, then the dihedral transform (the reference's order)."""
    return np.ascontiguousarray(dihedral_transform(colour_map[grid], t))


def random_arc_variant(name: str, rng: np.random.Generator) -> tuple[str, int, np.ndarray]:
    """Draw a dihedral id and a permutation of colours 1..9 (black, 0, stays fixed)."""
    t = int(rng.integers(0, 8))
    colour_map = np.concatenate([np.zeros(1, np.uint8), rng.permutation(np.arange(1, 10, dtype=np.uint8))])
    return arc_variant_name(name, t, colour_map), t, colour_map


def invert_arc_variant(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Original puzzle name and the function that maps a variant's grid back to the original."""
    if PUZZLE_ID_SEPARATOR not in name:
        return name, lambda grid: grid
    base, t_text, map_text = name.split(PUZZLE_ID_SEPARATOR)[-3:]
    t = int(t_text[1:])
    inverse_map = np.argsort(np.array([int(c) for c in map_text])).astype(np.uint8)
    return base, lambda grid: inverse_map[inverse_dihedral_transform(grid, t)]


def grid_hash(grid: np.ndarray) -> str:
    """sha256 of the grid's shape bytes and contents (the reference's puzzle-equality key)."""
    buffer = bytes(grid.shape) + np.ascontiguousarray(grid, np.uint8).tobytes()  # sides <= 30: one byte each
    return hashlib.sha256(buffer).hexdigest()


def examples_hash(examples: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """Order-free hash of a puzzle's (input, output) pairs, used to de-duplicate variants."""
    hashes = sorted(f"{grid_hash(i)}|{grid_hash(o)}" for i, o in examples)
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()


def arc_encode_example(
    inp: np.ndarray, out: np.ndarray, offset: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    """Place both grids at `offset` in 30x30 canvases with end markers; returns two (900,) uint8."""
    encoded = np.zeros((2, ARC_SEQ_LEN), np.uint8)
    _place(encoded[0], inp, offset)
    _place(encoded[1], out, offset)
    return encoded[0], encoded[1]


def _place(row: np.ndarray, grid: np.ndarray, offset: tuple[int, int]) -> None:
    """Write `grid` (colours + 2) and its end markers into a zeroed (900,) row, in place."""
    r, c = offset
    rows, cols = grid.shape
    canvas = row.reshape(ARC_MAX_GRID_SIZE, ARC_MAX_GRID_SIZE)
    canvas[r : r + rows, c : c + cols] = grid + 2
    # End markers: the row just below the grid and the column just right of it, where they fit.
    if r + rows < ARC_MAX_GRID_SIZE:
        canvas[r + rows, c : c + cols] = 1
    if c + cols < ARC_MAX_GRID_SIZE:
        canvas[r : r + rows, c + cols] = 1


def random_arc_offset(inp: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A top-left offset at which both grids fit in the canvas."""
    r = int(rng.integers(0, ARC_MAX_GRID_SIZE - max(inp.shape[0], out.shape[0]) + 1))
    c = int(rng.integers(0, ARC_MAX_GRID_SIZE - max(inp.shape[1], out.shape[1]) + 1))
    return r, c


def crop_arc_grids(tokens: np.ndarray) -> list[np.ndarray]:
    """Each (900,) token row -> its largest-area all-colour top-left rectangle, colours 0..9
    (TRM_SPEC 9; the reference's `_crop`). The inverse of arc_encode_example at offset (0, 0),
    and the crop the ARC evaluator applies to predictions.

    Row r of the rectangle can be at most as wide as the colour run starting each row above
    it; of those (rows, width) candidates the first with the largest area wins. Vectorised
    over the batch."""
    canvas = np.asarray(tokens).reshape(-1, ARC_MAX_GRID_SIZE, ARC_MAX_GRID_SIZE)
    is_colour = (canvas >= 2) & (canvas <= 11)
    run = np.where(is_colour.all(-1), ARC_MAX_GRID_SIZE, np.argmin(is_colour, axis=-1))  # (B, 30)
    width = np.minimum.accumulate(run, axis=1)
    area = width * np.arange(1, ARC_MAX_GRID_SIZE + 1)
    best = np.argmax(area, axis=1)  # first maximum, as the reference's strict '>'
    grids = []
    for b, r in enumerate(best):
        rows, cols = (int(r) + 1, int(width[b, r])) if area[b, r] > 0 else (0, 0)
        grids.append((canvas[b, :rows, :cols] - 2).astype(np.uint8))
    return grids


def arc_decode_grid(tokens: np.ndarray) -> np.ndarray:
    """One (900,) token sequence -> its grid (crop_arc_grids of one row)."""
    return crop_arc_grids(np.asarray(tokens)[None])[0]


def arc_variants(
    name: str,
    splits: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    num_aug: int,
    rng: np.random.Generator,
) -> list[tuple[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]]:
    """The original puzzle plus up to `num_aug` distinct variants, trying at most 5 * num_aug.

    `splits` maps a destination split to its (input, output) pairs; one variant transforms
    all of them alike, and duplicates are judged on all of them together.
    """
    group = [(name, splits)]
    if num_aug <= 0:
        return group
    seen = {examples_hash([pair for pairs in splits.values() for pair in pairs])}
    for _ in range(ARC_AUGMENT_RETRIES_FACTOR * num_aug):
        variant_name, t, colour_map = random_arc_variant(name, rng)
        variant = {
            split: [(apply_arc_variant(i, t, colour_map), apply_arc_variant(o, t, colour_map)) for i, o in pairs]
            for split, pairs in splits.items()
        }
        key = examples_hash([pair for pairs in variant.values() for pair in pairs])
        if key not in seen:
            seen.add(key)
            group.append((variant_name, variant))
        if len(group) >= num_aug + 1:
            break
    return group


def arc_encode_puzzle(
    pairs: list[tuple[np.ndarray, np.ndarray]], translate: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Encode a puzzle's pairs as (examples, 900) inputs and labels.

    With `translate` every pair but one (chosen at random) gets a random offset; the one
    left at (0, 0) keeps an example of the untranslated layout the test split uses.
    """
    num = len(pairs)
    inputs = np.zeros((num, ARC_SEQ_LEN), np.uint8)
    labels = np.zeros((num, ARC_SEQ_LEN), np.uint8)
    keep = int(rng.integers(0, num)) if (translate and num) else -1
    for k, (inp, out) in enumerate(pairs):
        offset = random_arc_offset(inp, out, rng) if (translate and k != keep) else (0, 0)
        _place(inputs[k], inp, offset)
        _place(labels[k], out, offset)
    return inputs, labels


# ---------------------------------------------------------------------------------------------
# Sudoku (side n = r * c, boxes of r rows x c columns: 9x9 3x3, 4x4 2x2, 6x6 2x3; see box_shape)
# ---------------------------------------------------------------------------------------------
def sudoku_shuffle(
    board: np.ndarray, solution: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A validity-preserving relabelling: digits, transpose (square boxes only), bands/rows,
    stacks/columns.

    Boards are (n, n) with 0 for blank; the same transform is applied to both. A band is the
    r rows of a box row (c bands), a stack the c columns of a box column (r stacks). With
    r != c a transpose would turn the boxes into c x r, so none is drawn.
    """
    n = board.shape[0]
    r, c = box_shape(n)
    digit_map = np.concatenate([[0], rng.permutation(np.arange(1, n + 1))]).astype(board.dtype)
    transpose = r == c and rng.random() < 0.5
    bands = rng.permutation(n // r)
    row_perm = np.concatenate([b * r + rng.permutation(r) for b in bands])
    stacks = rng.permutation(n // c)
    col_perm = np.concatenate([s * c + rng.permutation(c) for s in stacks])

    def apply(grid: np.ndarray) -> np.ndarray:
        if transpose:
            grid = grid.T
        return digit_map[grid[row_perm][:, col_perm]]

    return apply(board), apply(solution)


def sudoku_is_valid_solution(solution: np.ndarray) -> bool:
    """Every row, column and box holds each digit 1..n once."""
    n = solution.shape[0]
    r, c = box_shape(n)
    want = np.arange(1, n + 1)
    boxes = solution.reshape(n // r, r, n // c, c).transpose(0, 2, 1, 3).reshape(n, n)
    return all(
        np.array_equal(np.sort(lines, axis=1), np.broadcast_to(want, (n, n))) for lines in (solution, solution.T, boxes)
    )


# ---------------------------------------------------------------------------------------------
# Maze
# ---------------------------------------------------------------------------------------------
MAZE_CHARSET = "# SGo"  # wall, open, start, goal, path -> tokens 1..5 (0 pad)
MAZE_VOCAB_SIZE = len(MAZE_CHARSET) + 1

_MAZE_CHAR_TO_ID = np.zeros(256, np.uint8)
_MAZE_CHAR_TO_ID[[ord(ch) for ch in MAZE_CHARSET]] = np.arange(1, len(MAZE_CHARSET) + 1)


def maze_encode(text: str) -> np.ndarray:
    """Characters of "# SGo" -> tokens 1..5, flat (n*n,) uint8. Unknown characters raise."""
    bad = set(text) - set(MAZE_CHARSET)
    if bad:
        raise ValueError(f"characters {sorted(bad)!r} are not in the maze charset {MAZE_CHARSET!r}")
    return _MAZE_CHAR_TO_ID[np.frombuffer(text.encode(), np.uint8)]


def maze_decode(tokens: np.ndarray) -> str:
    """Tokens back to characters; pad (0) shows as '?'."""
    return "".join(("?" + MAZE_CHARSET)[int(t)] for t in np.asarray(tokens).reshape(-1))
