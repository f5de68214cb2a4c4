"""Pure data transforms (no Ray): variant names, ARC encoding, Sudoku shuffles, maze labels."""

from __future__ import annotations

import io

import numpy as np
import pytest

from trm_ray.data import maze as maze_lib
from trm_ray.data import sudoku as sudoku_lib
from trm_ray.data.groups import arc_group, maze_group, sudoku_group
from trm_ray.data.transforms import (
    DIHEDRAL_INVERSE,
    apply_arc_variant,
    arc_decode_grid,
    arc_encode_example,
    arc_encode_puzzle,
    arc_variants,
    dihedral_transform,
    inverse_dihedral_transform,
    invert_arc_variant,
    maze_decode,
    maze_encode,
    rng_for,
    sudoku_is_valid_solution,
    sudoku_shuffle,
)
from trm_ray.data.writer import NpyAppender


def _random_pairs(rng, num=3):
    pairs = []
    for _ in range(num):
        shape_in = tuple(rng.integers(1, 8, size=2))
        shape_out = tuple(rng.integers(1, 8, size=2))
        pairs.append((rng.integers(0, 10, shape_in).astype(np.uint8), rng.integers(0, 10, shape_out).astype(np.uint8)))
    return pairs


def test_dihedral_transforms_are_the_references_numpy_ops():
    grid = np.arange(12).reshape(3, 4)
    expected = [grid, np.rot90(grid, 1), np.rot90(grid, 2), np.rot90(grid, 3), np.fliplr(grid), np.flipud(grid), grid.T,
                np.fliplr(np.rot90(grid, 1))]
    for t, want in enumerate(expected):
        assert np.array_equal(dihedral_transform(grid, t), want), t


def test_dihedral_inverse_table_undoes_every_transform():
    grid = np.arange(12).reshape(3, 4)
    for t in range(8):
        assert np.array_equal(inverse_dihedral_transform(dihedral_transform(grid, t), t), grid)
    # the 8 transforms are distinct on an asymmetric grid
    assert len({dihedral_transform(grid, t).tobytes() + bytes(dihedral_transform(grid, t).shape) for t in range(8)}) == 8
    assert DIHEDRAL_INVERSE == (0, 3, 2, 1, 4, 5, 6, 7)


def test_every_variant_name_decodes_to_the_transform_that_maps_it_back():
    rng = np.random.default_rng(0)
    splits = {"train": _random_pairs(rng, 3), "test": _random_pairs(rng, 1)}
    group = arc_variants("abc123", splits, num_aug=20, rng=rng_for(1, 1, 0))
    assert len(group) == 21 and group[0][0] == "abc123"
    names = [name for name, _ in group]
    assert len(set(names)) == len(names)
    for name, variant in group:
        base, back = invert_arc_variant(name)
        assert base == "abc123"
        if name != "abc123":
            t_text, colours = name.split("|||")[1:]
            assert t_text[0] == "t" and 0 <= int(t_text[1:]) <= 7
            assert len(colours) == 10 and colours[0] == "0" and sorted(colours) == list("0123456789")
        for split in splits:
            for (i, o), (vi, vo) in zip(splits[split], variant[split]):
                assert np.array_equal(back(vi), i) and np.array_equal(back(vo), o)


def test_variants_are_deduplicated_and_tries_are_bounded():
    # A single-colour 1x1 puzzle has only 9 distinct variants (dihedral does nothing, colour 0 fixed).
    splits = {"train": [(np.array([[3]], np.uint8), np.array([[3]], np.uint8))]}
    group = arc_variants("one", splits, num_aug=50, rng=rng_for(0, 1, 0))
    assert len(group) == 9
    # An all-black puzzle has none.
    black = {"train": [(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))]}
    assert len(arc_variants("black", black, num_aug=5, rng=rng_for(0, 1, 0))) == 1


def test_arc_encoding_places_grid_and_end_markers():
    inp = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    out = np.array([[7]], np.uint8)
    a, b = arc_encode_example(inp, out, offset=(4, 5))
    canvas = a.reshape(30, 30)
    assert np.array_equal(canvas[4:6, 5:8], inp + 2)
    assert (canvas[6, 5:8] == 1).all() and (canvas[4:6, 8] == 1).all()  # row below, column right
    assert canvas[6, 8] == 0  # the corner is not a marker
    assert (canvas != 0).sum() == 6 + 3 + 2
    # a grid touching the canvas edge gets no marker beyond it
    full = np.full((30, 30), 9, np.uint8)
    a, _ = arc_encode_example(full, out)
    assert (a == 11).all()
    # untranslated encodings crop back to the grid
    a, b = arc_encode_example(inp, out)
    assert np.array_equal(arc_decode_grid(a), inp) and np.array_equal(arc_decode_grid(b), out)


def test_arc_translation_keeps_both_grids_inside_and_one_example_at_origin():
    rng = np.random.default_rng(3)
    pairs = [(np.ones((10, 4), np.uint8), np.ones((3, 20), np.uint8)) for _ in range(6)]
    for seed in range(20):
        inputs, labels = arc_encode_puzzle(pairs, translate=True, rng=rng_for(seed, 1, 0))
        at_origin = 0
        for a, b in zip(inputs, labels):
            ca, cb = a.reshape(30, 30), b.reshape(30, 30)
            r, c = np.argwhere(ca >= 2).min(0)
            assert (np.argwhere(cb >= 2).min(0) == (r, c)).all()  # same offset for input and output
            assert (ca >= 2).sum() == 40 and (cb >= 2).sum() == 60  # nothing cut off
            at_origin += (r, c) == (0, 0)
        assert at_origin >= 1
    inputs, _ = arc_encode_puzzle(pairs, translate=False, rng=rng)
    assert all(np.array_equal(arc_decode_grid(a), pairs[0][0] ) for a in inputs)


def test_arc_group_splits_and_test_split_is_untranslated():
    rng = np.random.default_rng(5)
    as_json = lambda pairs: [{"input": i.tolist(), "output": o.tolist()} for i, o in pairs]  # noqa: E731
    puzzle = {"train": as_json(_random_pairs(rng, 3)), "test": as_json(_random_pairs(rng, 2))}
    group = arc_group(0, "p", puzzle, is_test_set=True, seed=0, num_aug=4)
    train, test = group.parts["train"], group.parts["test"]
    assert train.names == test.names and len(test.names) == 5
    assert train.puzzle_sizes == [3] * 5 and test.puzzle_sizes == [2] * 5
    for k, name in enumerate(test.names):
        _, back = invert_arc_variant(name)
        for j, pair in enumerate(puzzle["test"]):
            row = 2 * k + j
            assert np.array_equal(back(arc_decode_grid(test.inputs[row])), np.array(pair["input"]))
            assert np.array_equal(back(arc_decode_grid(test.labels[row])), np.array(pair["output"]))
    other = arc_group(0, "p", puzzle, is_test_set=False, seed=0, num_aug=0)
    assert list(other.parts) == ["train"] and other.parts["train"].puzzle_sizes == [5]
    # same inputs, same seed -> same bytes
    again = arc_group(0, "p", puzzle, is_test_set=True, seed=0, num_aug=4)
    assert np.array_equal(again.parts["train"].inputs, train.inputs)


@pytest.mark.parametrize("size", [4, 9])
def test_generated_sudoku_is_unique_and_shuffles_keep_validity(size):
    rng = rng_for(0, 4, size)
    board, solution, rating = sudoku_lib.generate_sudoku(rng, size)
    assert sudoku_is_valid_solution(solution) and rating >= 0
    assert sudoku_lib.count_solutions(board)[0] == 1
    assert np.array_equal(sudoku_lib.solve(board), solution)
    clues = board != 0
    for _ in range(20):
        b, s = sudoku_shuffle(board, solution, rng)
        assert sudoku_is_valid_solution(s)
        assert np.array_equal(b[b != 0], s[b != 0]) and (b != 0).sum() == clues.sum()
        assert sudoku_lib.count_solutions(b)[0] == 1


def test_4x4_symmetry_class_is_shared_by_exactly_the_shuffles():
    rng = rng_for(0, 4, 1)
    board, solution, _ = sudoku_lib.generate_sudoku(rng, 4, min_clues=6)
    key = sudoku_lib.symmetry_class(board)
    for _ in range(20):
        assert sudoku_lib.symmetry_class(sudoku_shuffle(board, solution, rng)[0]) == key
    other, _, _ = sudoku_lib.generate_sudoku(rng, 4, min_clues=9, max_clues=9)
    assert (other != 0).sum() == 9 and sudoku_lib.symmetry_class(other) != key  # a different clue count


def test_sudoku_group_encoding_and_bad_rows():
    rng = rng_for(0, 4, 0)
    board, solution, _ = sudoku_lib.generate_sudoku(rng, 4)
    q = "".join(map(str, board.reshape(-1))).replace("0", ".")
    a = "".join(map(str, solution.reshape(-1)))
    group = sudoku_group(0, "train", q, a, "x:2", 4, seed=0, num_aug=3)
    part = group.parts["train"]
    assert part.inputs.shape == (4, 16) and part.puzzle_sizes == [1] * 4
    assert np.array_equal(part.inputs[0], board.reshape(-1) + 1)  # blank -> 1, d -> d + 1
    assert part.inputs.max() <= 5 and part.labels.min() >= 2
    assert len(sudoku_group(0, "test", q, a, "x:2", 4, seed=0, num_aug=3).parts["test"].names) == 1  # no aug in test
    wrong = a[:-2] + a[-1] + a[-2]
    assert "not a valid solution" in sudoku_group(0, "train", q, wrong, "x:3", 4, 0, 0).error
    clash = str((int(a[0]) % 4) + 1) + q[1:]
    assert "x:4" in sudoku_group(0, "train", clash, a, "x:4", 4, 0, 0).error


def _bfs_dist(grid, start):
    dist = np.full(grid.shape, -1)
    dist[start] = 0
    frontier = [start]
    while frontier:
        nxt = []
        for r, c in frontier:
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < grid.shape[0] and 0 <= cc < grid.shape[1] and grid[rr, cc] != "#" and dist[rr, cc] < 0:
                    dist[rr, cc] = dist[r, c] + 1
                    nxt.append((rr, cc))
        frontier = nxt
    return dist


@pytest.mark.parametrize("size,min_len", [(11, 10), (30, 110)])
def test_maze_labels_mark_the_unique_shortest_path(size, min_len):
    for k in range(3):
        question, answer, length = maze_lib.generate_maze(rng_for(1, 4, k), size, min_len)
        assert length >= min_len
        q = np.array(list(question)).reshape(size, size)
        a = np.array(list(answer)).reshape(size, size)
        assert np.array_equal(q == "#", a == "#") and (a == "S").sum() == 1 and (a == "G").sum() == 1
        start, goal = tuple(np.argwhere(q == "S")[0]), tuple(np.argwhere(q == "G")[0])
        ds, dg = _bfs_dist(q, start), _bfs_dist(q, goal)
        total = ds[goal]
        assert total == length and (a == "o").sum() == length - 1
        on_some_shortest = (ds >= 0) & (dg >= 0) & (ds + dg == total)
        # unique shortest path: exactly one cell per distance lies on a shortest path, and those are the 'o's
        assert on_some_shortest.sum() == total + 1
        assert np.array_equal(on_some_shortest & (q == " "), a == "o")


def test_maze_encoding_and_dihedral_variants():
    question, answer, _ = maze_lib.generate_maze(rng_for(0, 4, 0), 7, 4)
    assert maze_decode(maze_encode(answer)) == answer
    assert set(np.unique(maze_encode(answer))) <= {1, 2, 3, 4, 5}
    part = maze_group(0, "train", question, answer, "m:2", 7, aug=True).parts["train"]
    assert part.inputs.shape == (8, 49)
    base = maze_encode(question).reshape(7, 7)
    for t in range(8):
        assert np.array_equal(inverse_dihedral_transform(part.inputs[t].reshape(7, 7), t), base)
    assert maze_group(0, "test", question, answer, "m:2", 7, aug=True).parts["test"].inputs.shape == (1, 49)
    assert "charset" in maze_group(0, "train", question.replace(" ", "x", 1), answer, "m:3", 7, aug=False).error


def test_rng_streams_are_reproducible_and_independent():
    assert rng_for(5, 1, 3).integers(0, 1 << 30) == rng_for(5, 1, 3).integers(0, 1 << 30)
    assert rng_for(5, 1, 3).integers(0, 1 << 30) != rng_for(5, 1, 4).integers(0, 1 << 30)
    assert rng_for(5, 1, 3).integers(0, 1 << 30) != rng_for(5, 2, 3).integers(0, 1 << 30)


def test_streamed_npy_is_byte_identical_to_np_save(tmp_path):
    rows = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    appender = NpyAppender(str(tmp_path / "a.npy"), np.uint8, (7,))
    appender.append(rows[:2])
    appender.append(rows[2:])
    appender.close()
    expected = io.BytesIO()
    np.save(expected, rows)
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()
    ids = NpyAppender(str(tmp_path / "b.npy"), np.int32)
    ids.append(np.array([0, 3], np.int32))
    ids.close()
    assert np.array_equal(np.load(tmp_path / "b.npy"), [0, 3]) and np.load(tmp_path / "b.npy").dtype == np.int32


def test_apply_variant_is_colour_map_then_dihedral():
    grid = np.array([[0, 1], [2, 3]], np.uint8)
    colour_map = np.array([0, 2, 3, 1, 4, 5, 6, 7, 8, 9], np.uint8)
    assert np.array_equal(apply_arc_variant(grid, 1, colour_map), np.rot90(colour_map[grid]))
