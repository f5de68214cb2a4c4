"""Pure, seeded puzzle transforms shared by the ARC, Sudoku and Maze builders (docs/paper.md#augmentations).

No Ray, no I/O: every function maps arrays to arrays, so it runs in a notebook and is
unit-tested directly. Randomness always comes from an explicit `np.random.Generator`;
`rng_for(seed, stream, index)` derives one per puzzle so that the output does not depend
on how puzzles are spread over processes or batches.

    rng = rng_for(42, STREAM_ARC, 7)
    name, t, colour_map = random_arc_variant("007bbfb7", rng)
    back = invert_arc_variant(name)       # (original name, function mapping a grid back)
"""

from __future__ import annotations

import functools
import hashlib
from typing import Callable, Optional

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
    (docs/paper.md#arc-voting; the reference's `_crop`). The inverse of arc_encode_example at offset (0, 0),
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


# ---------------------------------------------------------------------------------------------
# ARC, vectorised: the same draws and bytes as arc_variants + arc_encode_puzzle, per group
# ---------------------------------------------------------------------------------------------
# The per-grid functions above make ~10 numpy calls per variant and ~5 per example; at
# --num-aug 1000 that is ~10^7 calls. Here a group's random draws are read from its
# generator's raw 32-bit stream in one call and decoded with numpy's own algorithms, so the
# rest is array work. What numpy does per call, for the bounds this code uses:
# - `integers(0, n)`: nothing is drawn when n == 1; else Lemire's method on one 32-bit word
#   x, giving (x * n) >> 32, with a redraw when the low 32 bits of x * n are below 2**32 % n
#   (odds ~n / 2**32: such a group takes the per-call path instead, see arc_group_arrays);
# - `permutation` of 9 items: Fisher-Yates from the end, j = the next word & mask (the
#   smallest 2**k - 1 >= i), redrawn while j > i.
# trm_ray.data.groups compares this with the per-call functions once per process, so a numpy
# whose algorithms differ falls back to them rather than change the bytes.
_PERM_STEPS = tuple(range(8, 0, -1))  # Fisher-Yates positions i of a 9-item permutation
_PERM_MASKS = tuple((1 << i.bit_length()) - 1 for i in _PERM_STEPS)
_TRANSPOSING = np.array([t in (1, 3, 6, 7) for t in range(8)])  # dihedral ids that swap rows and columns
_SHAPE_CODE = 10  # shape values s are stored as 10 + s in dedup keys, past the colours 0..9


class _Words:
    """The 32-bit words a fresh generator's integers/permutation calls consume, in order."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.u = rng.integers(0, 1 << 32, size=max(size, 64), dtype=np.uint32)

    def ensure(self, size: int) -> np.ndarray:
        if size > self.u.size:
            more = self.rng.integers(0, 1 << 32, size=max(size - self.u.size, self.u.size), dtype=np.uint32)
            self.u = np.concatenate([self.u, more])
        return self.u


def _lemire(words: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, bool]:
    """integers(0, bound) from one word each; False when a word would be redrawn."""
    m = words.astype(np.uint64) * np.asarray(bound, np.uint64)
    low = m & np.uint64(0xFFFFFFFF)
    threshold = (np.uint64(1 << 32) % np.asarray(bound, np.uint64))
    return (m >> np.uint64(32)).astype(np.int64), not bool(np.any(low < threshold))


def _next_accepted(accept: np.ndarray) -> np.ndarray:
    """For every position p, the first q >= p where accept[q] (len(accept) when none)."""
    n = accept.size
    q = np.where(accept, np.arange(n), n)
    return np.minimum.accumulate(q[::-1])[::-1]


def _variant_trials(words: _Words, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `count` random_arc_variant draws: dihedral ids, colour maps (count, 10), and
    the word position after each trial."""
    size = 12 * count + 64  # a trial takes 10.2 words on average
    while True:
        u = words.ensure(size)[:size]
        n = u.size
        # Every position p as a trial's start, at once: the word each step accepts is the first
        # one at or after the previous step's that passes the step's mask test.
        chain, cur = [], np.arange(1, n + 1)  # the dihedral id takes word p
        for i, mask in zip(_PERM_STEPS, _PERM_MASKS):
            at = cur if mask == i else _next_accepted((u & mask) <= i)[np.minimum(cur, n - 1)]
            at = np.where(cur >= n, n, at)
            chain.append(at)
            cur = at + 1  # n + 1: the words ran out
        starts, p, end_list = [], 0, cur.tolist()
        for _ in range(count):
            if p >= n or end_list[p] > n:
                break
            starts.append(p)
            p = end_list[p]
        if len(starts) == count:
            break
        size *= 2
    starts = np.array(starts, np.int64)
    trans = (u[starts].astype(np.uint64) * 8 >> 32).astype(np.int64)  # integers(0, 8): no redraws
    perm = np.tile(np.arange(1, 10, dtype=np.uint8), (count, 1))
    rows = np.arange(count)
    for step, (i, mask) in enumerate(zip(_PERM_STEPS, _PERM_MASKS)):
        j = (u[chain[step][starts]] & mask).astype(np.int64)
        at_i, at_j = perm[:, i].copy(), perm[rows, j]
        perm[:, i] = at_j
        perm[rows, j] = at_i
    maps = np.concatenate([np.zeros((count, 1), np.uint8), perm], axis=1)
    return trans, maps, cur[starts]


@functools.lru_cache(maxsize=4096)
def _dihedral_positions(h: int, w: int) -> np.ndarray:
    """(8, h*w): row t lists, in row-major order of the transformed grid, the source cells."""
    cells = np.arange(h * w).reshape(h, w)
    return np.stack([dihedral_transform(cells, t).reshape(-1) for t in range(8)])


# Where each of the 4 shape codes of a pair comes from under transform t: swapped when it transposes.
_HEAD_POSITIONS = np.array([[1, 0, 3, 2] if swap else [0, 1, 2, 3] for swap in _TRANSPOSING])


class _ArcLayout:
    """A puzzle's grids under each dihedral transform, flattened for array-at-once work.

    Row t of `flat` holds, per pair, [10+h_in, 10+w_in, 10+h_out, 10+w_out, input cells,
    output cells] of the pair under transform t; a variant's content is its colour map
    applied to row t (extended by the identity on the shape codes 10..40)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        self.pairs = pairs
        parts, index, spans, grid_spans, start = [], [], [], [], 0
        for inp, out in pairs:
            parts += [np.array(inp.shape + out.shape, np.uint8) + _SHAPE_CODE, inp.reshape(-1), out.reshape(-1)]
            index += [_HEAD_POSITIONS + start, _dihedral_positions(*inp.shape) + (start + 4),
                      _dihedral_positions(*out.shape) + (start + 4 + inp.size)]
            end = start + 4 + inp.size + out.size
            spans.append((start, end))
            grid_spans.append(((start + 4, start + 4 + inp.size), (start + 4 + inp.size, end)))
            start = end
        row = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        self.flat = row[np.concatenate(index, axis=1)] if index else np.zeros((8, 0), np.uint8)  # (8, L)
        self.spans, self.grid_spans = spans, grid_spans
        self._ordered: Optional[bool] = None

    @property
    def ordered(self) -> bool:
        """When no transform plus colour map takes one pair onto another, two variants hold the
        same pairs exactly when they hold them in the same order, and a variant's content is
        known from (transform, colour map) alone (see variant_keys); else pairs are compared."""
        if self._ordered is None:
            self._ordered = _distinct_orbits(self.pairs)
            if self._ordered:
                self._classes()
        return self._ordered

    def _classes(self) -> None:
        """Transforms whose rows are the same up to renaming colours share a class; in class
        c with representative row R = flat[rep], flat[t] = sigma_t(R), so (t, m) gives the
        content m(sigma_t(R)): equal for two variants of a class exactly when m . sigma_t agree
        on the colours of R."""
        self.cls = np.arange(8, dtype=np.int64)
        self.sigma = np.zeros((8, 10), np.int64)  # padded with colour 0, weighted 0
        self.weights = np.zeros((8, 10), np.int64)
        if not _renamed_rows(self.flat).any():
            # No transform is a recolouring of another (the usual case): classes of one, and
            # any fixed order of the colours present serves.
            present = np.nonzero(np.bincount(self.flat[0], minlength=256)[:10])[0]
            self.sigma[:, : present.size] = present
            self.weights[:, : present.size] = 1 << (4 * np.arange(present.size))
            return
        reps: dict[bytes, tuple[int, np.ndarray]] = {}  # form -> (class, first position of each colour)
        for t in range(8):
            row = self.flat[t]
            present, first = _first_positions(row)
            firsts = np.sort(first[present])  # R's colours' first positions, in order
            rename = np.arange(256, dtype=np.uint8)
            rename[row[firsts]] = np.arange(firsts.size)
            cls, firsts = reps.setdefault(rename[row].tobytes(), (t, firsts))
            # sigma_t of R's colours, in R's order of first appearance: the same positions in both rows.
            self.cls[t] = cls
            self.sigma[t, : firsts.size] = row[firsts]
            self.weights[t, : firsts.size] = 1 << (4 * np.arange(firsts.size))

    def variant_keys(self, trans: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """Ordered puzzles: one int per variant, equal exactly when the contents are."""
        rows = np.arange(maps.shape[0])[:, None]
        digits = maps[rows, self.sigma[trans]].astype(np.int64)
        return (self.cls[trans] << 40) | (digits * self.weights[trans]).sum(axis=1)

    def content_keys(self, trans: np.ndarray, maps: np.ndarray) -> list:
        """Any puzzle: the variant's sorted per-pair contents (shapes included)."""
        table = np.concatenate([maps, np.broadcast_to(np.arange(10, 41, dtype=np.uint8), (maps.shape[0], 31))], axis=1)
        content = table[np.arange(maps.shape[0])[:, None], self.flat[trans]]
        width = self.flat.shape[1]
        blob = content.tobytes()
        return [tuple(sorted(blob[i * width + a:i * width + b] for a, b in self.spans)) for i in range(maps.shape[0])]


def _renamed_rows(flat: np.ndarray) -> np.ndarray:
    """Which rows t > 0 of a layout are row 0 with colours renamed one-to-one? (Shape codes
    sit at the same positions in every row and must be equal.)"""
    shape_at = flat[0] >= _SHAPE_CODE
    same_shapes = (flat[1:, shape_at] == flat[0, shape_at]).all(axis=1)
    codes = flat[1:, ~shape_at].astype(np.intp) * 10 + flat[0, ~shape_at] + (np.arange(1, 8) * 100)[:, None]
    seen = (np.bincount(codes.reshape(-1), minlength=800).reshape(8, 10, 10) > 0)[1:]
    return same_shapes & (seen.sum(axis=2) <= 1).all(axis=1) & (seen.sum(axis=1) <= 1).all(axis=1)


def _distinct_orbits(pairs: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """No dihedral transform plus colour map (0 fixed) takes one pair onto another?"""
    def cheap(grid: np.ndarray) -> tuple:  # equal within an orbit, mostly distinct across
        counts = np.bincount(grid.reshape(-1), minlength=10)
        return (min(grid.shape), max(grid.shape), int(counts[0]), *np.sort(counts[1:]).tolist())

    invariants = [cheap(inp) + cheap(out) for inp, out in pairs]
    if len(set(invariants)) == len(pairs):
        return True
    suspects = [pair for pair, key in zip(pairs, invariants) if invariants.count(key) > 1]
    return len({_pair_orbit(inp, out) for inp, out in suspects}) == len(suspects)


def _pair_orbit(inp: np.ndarray, out: np.ndarray) -> bytes:
    """Equal for two pairs exactly when a dihedral transform and a colour map (0 fixed) take
    one onto the other: the least of the pair's transforms with colours renamed 1, 2, ... in
    order of first appearance."""
    cells = np.concatenate([inp.reshape(-1)[_dihedral_positions(*inp.shape)],
                            out.reshape(-1)[_dihedral_positions(*out.shape)]], axis=1)  # (8, n)
    hits = cells[:, :, None] == np.arange(1, 10, dtype=cells.dtype)  # colours 1..9
    first = np.where(hits.any(axis=1), np.argmax(hits, axis=1), cells.shape[1])  # (8, 9)
    rename = np.zeros((8, 10), np.uint8)
    rename[:, 1:] = np.argsort(np.argsort(first, axis=1, kind="stable"), axis=1) + 1
    forms = np.take_along_axis(rename, cells.astype(np.intp), axis=1)
    shapes = inp.shape + out.shape
    return min(bytes(shapes[1::-1] + shapes[:1:-1] if _TRANSPOSING[t] else shapes) + forms[t].tobytes() for t in range(8))


def _first_positions(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colours 0..9 present among `cells` (values >= 10 ignored) and, per colour, its first position."""
    hits = cells[:, None] == np.arange(10, dtype=cells.dtype)
    found = hits.any(axis=0)
    return np.nonzero(found)[0], np.argmax(hits, axis=0)


def _first_new(keys: np.ndarray, original: int, wanted: int) -> np.ndarray:
    """Indices of the first `wanted` keys, in order, that differ from `original` and every
    earlier key."""
    _, first = np.unique(keys, return_index=True)
    first.sort()
    return first[keys[first] != original][:wanted]


def _accepted_variants(layout: _ArcLayout, words: _Words, num_aug: int) -> tuple[np.ndarray, np.ndarray, int]:
    """arc_variants' accepted draws (dihedral ids, colour maps) and the words it consumed."""
    if num_aug <= 0:
        return np.zeros(0, np.int64), np.zeros((0, 10), np.uint8), 0
    tries = ARC_AUGMENT_RETRIES_FACTOR * num_aug
    identity = (np.zeros(1, np.int64), np.arange(10, dtype=np.uint8)[None])
    count = min(tries, int(1.25 * num_aug) + 16)  # most puzzles fill up within the first tries
    while True:
        trans, maps, ends = _variant_trials(words, count)
        if layout.ordered:
            picked = _first_new(layout.variant_keys(trans, maps), int(layout.variant_keys(*identity)[0]), num_aug)
        else:
            seen, accepted = set(layout.content_keys(*identity)), []
            for k, key in enumerate(layout.content_keys(trans, maps)):
                if key not in seen:
                    seen.add(key)
                    accepted.append(k)
                    if len(accepted) >= num_aug:
                        break
            picked = np.array(accepted, np.int64)
        if picked.size >= num_aug or count == tries:
            break
        count = tries
    last = int(picked[-1]) if picked.size >= num_aug else tries - 1
    return trans[picked], maps[picked], int(ends[last])


def _encode_split(layout: _ArcLayout, pair_ids: list[int], trans: np.ndarray, maps: np.ndarray,
                  rows_off: np.ndarray, cols_off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """arc_encode_puzzle for every variant at once: examples (variant, pair) in order, pair
    `slot` of variant v placed at (rows_off[v, slot], cols_off[v, slot])."""
    num_v, num = len(trans), len(pair_ids)
    size = num_v * num * ARC_SEQ_LEN
    encoded = np.zeros(2 * size, np.uint8)  # inputs then labels, flat
    if size:
        side = ARC_MAX_GRID_SIZE
        # Token of every cell of every variant: colour c of variant v is maps[v, c] + 2.
        table = np.zeros((num_v, 41), np.uint8)
        table[:, :10] = maps + 2
        tokens = np.empty((num_v, layout.flat.shape[1]), np.uint8)
        for t in range(8):  # one lookup per transform: a 1-d index, numpy's fast path
            vs = np.nonzero(trans == t)[0]
            if vs.size:
                tokens[vs] = np.take(table[vs], layout.flat[t], axis=1)
        transposed = _TRANSPOSING[trans]
        everyone = np.arange(num_v)
        classes = [everyone] if not transposed.any() else [np.nonzero(~transposed)[0], np.nonzero(transposed)[0]]
        runs: dict[int, np.ndarray] = {}  # w -> every window of w cells of `encoded`: one grid row per index
        for slot, k in enumerate(pair_ids):
            example = (everyone * num + slot) * ARC_SEQ_LEN + rows_off[:, slot] * side + cols_off[:, slot]
            for which, (lo, hi) in enumerate(layout.grid_spans[k]):
                shape = layout.pairs[k][which].shape
                # A square grid (or no transposing variant) keeps its shape: all variants in one pass.
                parts = [(everyone, shape)] if shape[0] == shape[1] or len(classes) == 1 else \
                    [(vs, shape[::-1] if tc else shape) for tc, vs in enumerate(classes) if vs.size]
                for vs, (h, w) in parts:
                    if w not in runs:
                        runs[w] = np.ndarray((encoded.size - w + 1, w), np.uint8, encoded, 0, (1, 1))
                    base = example[vs] + which * size
                    runs[w][(base[:, None] + np.arange(0, h * side, side)).reshape(-1)] = tokens[vs, lo:hi].reshape(-1, w)
                    # End markers: the row below and the column right of the grid, where they fit.
                    runs[w][base[rows_off[vs, slot] + h < side] + h * side] = 1
                    right = base[cols_off[vs, slot] + w < side]
                    encoded[(right[:, None] + np.arange(w, h * side, side)).reshape(-1)] = 1
    return encoded[:size].reshape(-1, ARC_SEQ_LEN), encoded[size:].reshape(-1, ARC_SEQ_LEN)


def _translations(layout: _ArcLayout, pair_ids: list[int], trans: np.ndarray, words: _Words,
                  position: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """arc_encode_puzzle's translate draws for every variant in order, from word `position`:
    (rows, cols) offsets of shape (variants, pairs); None when a word would be redrawn."""
    num_v, num = len(trans), len(pair_ids)
    rows_off = np.zeros((num_v, num), np.int64)
    cols_off = np.zeros((num_v, num), np.int64)
    if num_v == 0 or num == 0:
        return rows_off, cols_off
    # Bounds of the (row, col) draws of each pair, per transposed-or-not; a bound 1 draws nothing.
    bounds = np.zeros((2, num, 2), np.int64)
    for slot, k in enumerate(pair_ids):
        (hi_, wi), (ho, wo) = layout.pairs[k][0].shape, layout.pairs[k][1].shape
        bounds[0, slot] = ARC_MAX_GRID_SIZE - max(hi_, ho) + 1, ARC_MAX_GRID_SIZE - max(wi, wo) + 1
        bounds[1, slot] = bounds[0, slot, ::-1]
    draws = bounds > 1  # (2, num, 2)
    per_pair = draws.sum(axis=2)  # words per translated pair
    keep_words = int(num > 1)
    # Words used by a variant: the keep draw, then every pair but the kept one.
    used = keep_words + per_pair.sum(axis=1)[:, None] - per_pair  # (2, keep)
    tclass = _TRANSPOSING[trans].astype(np.int64)
    if (used == used[0, 0]).all():
        starts = position + np.arange(num_v) * int(used[0, 0])
        u = words.ensure(int(starts[-1]) + int(used[0, 0]) + 1)
        keep, ok = _lemire(u[starts], num) if keep_words else (np.zeros(num_v, np.int64), True)
    else:  # some pair fills a side of the canvas: what a variant uses depends on its keep draw
        end = position + num_v * int(used.max()) + 1
        u = words.ensure(end)
        keep_at, _ = _lemire(u[position:end], num) if keep_words else (np.zeros(end - position, np.int64), True)
        starts, p, used_list, keep_list, class_list = [], position, used.tolist(), keep_at.tolist(), tclass.tolist()
        for v in range(num_v):  # one variant's start decides the next's: a plain loop over lists
            starts.append(p)
            p += used_list[class_list[v]][keep_list[p - position]]
        starts = np.array(starts, np.int64)
        keep, ok = _lemire(u[starts], num) if keep_words else (np.zeros(num_v, np.int64), True)
    if not ok:
        return None
    # Word of each (variant, slot, axis): after the keep word, the drawing slots in order, skipping keep.
    drawn = draws[tclass]  # (num_v, num, 2)
    drawn[np.arange(num_v), keep] = False
    index = starts[:, None, None] + keep_words + np.cumsum(drawn.reshape(num_v, -1), axis=1).reshape(num_v, num, 2) - 1
    picked, ok = _lemire(u[index[drawn]], bounds[tclass][drawn])
    if not ok:
        return None
    values = np.zeros((num_v, num, 2), np.int64)
    values[drawn] = picked
    return values[..., 0], values[..., 1]


def arc_group_arrays(
    name: str, splits: dict[str, list[tuple[np.ndarray, np.ndarray]]], num_aug: int, rng: np.random.Generator
) -> Optional[list[tuple[str, list[str], np.ndarray, np.ndarray]]]:
    """arc_variants, then arc_encode_puzzle per split of every variant (translated in
    "train"), from a fresh `rng`: [(split, variant names, inputs, labels)], the same bytes.
    None in the ~1e-8-per-draw case of a redrawn word: use the per-call functions then."""
    layout = _ArcLayout([pair for pairs in splits.values() for pair in pairs])
    words = _Words(rng, 32 * max(num_aug, 0) + 256)  # about what most groups use; more are drawn on demand
    trans, maps, position = _accepted_variants(layout, words, num_aug)
    trans = np.concatenate([np.zeros(1, np.int64), trans])
    maps = np.concatenate([np.arange(10, dtype=np.uint8)[None], maps])
    digits = (maps[1:] + ord("0")).tobytes().decode("ascii")
    names = [name] + [f"{name}{PUZZLE_ID_SEPARATOR}t{t}{PUZZLE_ID_SEPARATOR}{digits[10 * v:10 * v + 10]}"
                      for v, t in enumerate(trans[1:].tolist())]
    out, first = [], 0
    for split, pairs in splits.items():
        pair_ids = list(range(first, first + len(pairs)))
        first += len(pairs)
        if split == "train":  # the only split whose pairs are translated, so the only one that draws
            offsets = _translations(layout, pair_ids, trans, words, position)
            if offsets is None:
                return None
        else:
            offsets = (np.zeros((len(trans), len(pairs)), np.int64),) * 2
        out.append((split, names, *_encode_split(layout, pair_ids, trans, maps, *offsets)))
    return out
