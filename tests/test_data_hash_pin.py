"""The bytes of an ARC build are pinned: nine real ARC-AGI-1 / ConceptARC puzzles built at
--num-aug 10 and 100 give the content hashes recorded before the builder was sped up.

Any change to augmentation draws, encoding, de-duplication, identifier numbering or the
file layout changes these hashes; a faster builder must keep them. The puzzles include
two-colour ones (28e73c20, 6f8cd79b, 1990f7a8, Count5) whose variants repeat, so the
de-duplication and the short groups it leaves are pinned too. In-process, local worker
processes and Ray Data must all give them.

The array-at-once ARC path (transforms.arc_group_arrays) must also give exactly the groups
of the per-call functions on puzzles built to reach its corners: pairs that a transform maps
onto each other, symmetric puzzles, grids filling the canvas, a single pair.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import numpy as np

from trm_ray.data import builder
from trm_ray.data import groups as G
from trm_ray.data import transforms as T
from trm_ray.data.builder import build_dataset
from trm_ray.data.recipe import load_recipe

ARC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc" / "arc-agi"
PICK = {
    "training": ["007bbfb7", "00d62c1b", "28e73c20", "6f8cd79b"],
    "evaluation": ["00576224", "009d5c81", "1990f7a8"],
    "concept": ["ExtractObjects10", "Count5"],
}
# content_sha256 and counts of the build, recorded with the builder as it was before the speed work.
PINNED = {
    10: ("2ab44ff6997ab6972090b3bfef7ed705e970b1715e17376abf4258fd9989e189",
         {"train": {"groups": 9, "puzzles": 99, "examples": 484}, "test": {"groups": 3, "puzzles": 33, "examples": 33}}),
    100: ("89ff6d4c622929a2993f67319e92374fea8818d902aa8873a49f36a284767cdb",
          {"train": {"groups": 9, "puzzles": 739, "examples": 3594}, "test": {"groups": 3, "puzzles": 274, "examples": 274}}),
}

needs_arc = pytest.mark.skipif(not Path(f"{ARC}_concept_challenges.json").is_file(), reason="needs ../shared/data/arc")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> str:
    """A kaggle-style prefix holding the PICK puzzles (with their solutions), in PICK's order."""
    folder = tmp_path_factory.mktemp("arc-src")
    for subset, names in PICK.items():
        challenges = json.loads(Path(f"{ARC}_{subset}_challenges.json").read_text())
        solutions = json.loads(Path(f"{ARC}_{subset}_solutions.json").read_text())
        (folder / f"arc_{subset}_challenges.json").write_text(json.dumps({n: challenges[n] for n in names}))
        (folder / f"arc_{subset}_solutions.json").write_text(json.dumps({n: solutions[n] for n in names}))
    return str(folder / "arc")


def _build(prefix: str, out: Path, num_aug: int, **options) -> dict:
    recipe = load_recipe(None, {"kind": "arc", "input_file_prefix": prefix, "subsets": list(PICK),
                                "test_set_name": "evaluation", "num_aug": num_aug})
    return build_dataset(recipe, str(out), **options)


def _check(info: dict, num_aug: int) -> None:
    digest, counts = PINNED[num_aug]
    assert info["counts"] == counts
    assert info["content_sha256"] == digest


@needs_arc
@pytest.mark.parametrize("num_aug", [10, 100])
def test_in_process_build_keeps_the_pinned_bytes(prefix, tmp_path, num_aug):
    _check(_build(prefix, tmp_path / "out", num_aug, use_ray=False, num_cpus=1), num_aug)


@needs_arc
def test_local_processes_keep_the_pinned_bytes(prefix, tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "POOL_MIN_VARIANTS", 0)  # a pool even for this small build
    # Tasks of 2 groups on 2 processes: results must come back in source order.
    _check(_build(prefix, tmp_path / "out", 100, use_ray=False, num_cpus=2, batch_size=2), 100)


@needs_arc
def test_cli_build_keeps_the_pinned_bytes(prefix, tmp_path):
    from click.testing import CliRunner

    from trm_ray.cli.main import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["data", "build", "arc", "--input-file-prefix", prefix, "--subsets", *PICK,
                                       "--test-set-name", "evaluation", "--num-aug", "100", "--output-dir", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _check(json.loads((out / "build.json").read_text()), 100)


@needs_arc
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("num_aug", [10, 100])
def test_ray_data_build_keeps_the_pinned_bytes(ray_cpus2, prefix, tmp_path, num_aug):
    # Small batches: several Ray Data tasks, whose results must come back in source order.
    _check(_build(prefix, tmp_path / "out", num_aug, use_ray=True, batch_size=2), num_aug)


# ---------------------------------------------------------------------------------------------
# The array path against the per-call functions
# ---------------------------------------------------------------------------------------------
def _as_json(pairs):
    return [{"input": np.asarray(i).tolist(), "output": np.asarray(o).tolist()} for i, o in pairs]


def _same_group(a, b) -> None:
    assert list(a.parts) == list(b.parts)
    for split in a.parts:
        x, y = a.parts[split], b.parts[split]
        assert x.names == y.names and x.puzzle_sizes == y.puzzle_sizes
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.labels, y.labels)


def _corner_puzzles():
    rng = np.random.default_rng(11)
    two = lambda h, w: rng.choice(np.array([0, 4], np.uint8), (h, w))  # noqa: E731
    a, b = two(2, 3), two(3, 1)
    m = np.array([0, 5, 6, 7, 8, 9, 1, 2, 3, 4], np.uint8)
    # Pair 2 is pair 1 transposed (a transform that swaps rows and columns) and recoloured:
    # a variant can hold the same pairs as another in the other order.
    yield "orbit", {"train": _as_json([(a, b), (m[a].T, m[b].T)]), "test": _as_json([(two(2, 2), two(1, 1))])}
    # Every transform of a one-colour square puzzle is a recolouring of the identity's.
    sym = np.full((3, 3), 2, np.uint8)
    yield "symmetric", {"train": _as_json([(sym, sym[:1, :1])]), "test": _as_json([(sym, sym)])}
    # Grids that fill the canvas: draws with a single choice take no word, markers do not fit.
    yield "full", {"train": _as_json([(rng.integers(0, 10, (30, 4)), rng.integers(0, 10, (2, 30))),
                                      (rng.integers(0, 10, (30, 30)), rng.integers(0, 10, (5, 5)))]),
                   "test": _as_json([(rng.integers(0, 10, (30, 1)), rng.integers(0, 10, (1, 30)))])}
    yield "one pair", {"train": _as_json([(rng.integers(0, 10, (4, 7)), rng.integers(0, 10, (7, 4)))]), "test": []}
    yield "colourful", {"train": _as_json([(rng.integers(0, 10, (6, 9)), rng.integers(0, 10, (9, 6))) for _ in range(3)]),
                        "test": _as_json([(rng.integers(0, 10, (3, 8)), rng.integers(0, 10, (8, 3)))])}


@pytest.mark.parametrize("name,puzzle", list(_corner_puzzles()))
def test_array_path_gives_the_per_call_groups(name, puzzle):
    assert G._arrays_match_per_call()  # this numpy draws as the array path reads it
    for is_test_set in (True, False):
        for num_aug in (0, 1, 7, 60):
            _same_group(G.arc_group(3, name, puzzle, is_test_set, 42, num_aug),
                        G.arc_group_per_call(3, name, puzzle, is_test_set, 42, num_aug))


def test_pair_orbits_are_exact():
    a = np.array([[1, 2, 0]], np.uint8)
    b = np.array([[3], [3]], np.uint8)
    m = np.array([0, 9, 8, 7, 6, 5, 4, 3, 2, 1], np.uint8)
    for t in range(8):  # any transform and recolouring of a pair is in its orbit...
        assert T._pair_orbit(m[T.dihedral_transform(a, t)], m[T.dihedral_transform(b, t)]) == T._pair_orbit(a, b)
    # ...but not a pair whose colour 0 moved, nor one with input and output transformed apart.
    assert T._pair_orbit(np.array([[1, 2, 3]], np.uint8), b) != T._pair_orbit(a, b)
    assert T._pair_orbit(a.T, b) != T._pair_orbit(a, b)


def test_a_redrawn_word_takes_the_per_call_path(monkeypatch):
    """Lemire's method redraws a word with odds ~1e-8; the array path then gives up on the group."""
    assert T._lemire(np.array([0, 1 << 31], np.uint32), np.array([30, 30]))[1] is False  # low bits 0 < 2**32 % 30
    assert T._lemire(np.array([(1 << 32) - 1], np.uint32), np.array([30]))[1] is True
    _, puzzle = next(iter(_corner_puzzles()))
    expected = G.arc_group_per_call(0, "p", puzzle, True, 1, 5)
    monkeypatch.setattr(T, "_lemire", lambda words, bound: (np.zeros(np.shape(words), np.int64), False))
    assert T.arc_group_arrays("p", G._arc_splits(puzzle, True), 5, T.rng_for(1, T.STREAM_ARC, 0)) is None
    _same_group(G.arc_group(0, "p", puzzle, True, 1, 5), expected)
