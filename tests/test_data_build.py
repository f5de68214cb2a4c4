"""The Ray Data build: reference layout, same bytes whatever the batching/CPUs, URI output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from trm_ray.data import layout
from trm_ray.data.builder import _class_key, build_dataset
from trm_ray.data.recipe import load_recipe
from trm_ray.data.transforms import arc_decode_grid, invert_arc_variant

pytestmark = pytest.mark.ray


def write_arc_prefix(directory, rng) -> str:
    """A tiny kaggle-style ARC source: subsets 'training' (3 puzzles) and 'evaluation' (2)."""

    def grid():
        return rng.integers(0, 10, tuple(rng.integers(1, 6, size=2))).tolist()

    prefix = os.path.join(directory, "arc-agi")
    for subset, count in (("training", 3), ("evaluation", 2)):
        challenges, solutions = {}, {}
        for k in range(count):
            name = f"{subset[:2]}{k:06d}"
            challenges[name] = {
                "train": [{"input": grid(), "output": grid()} for _ in range(2 + k % 2)],
                "test": [{"input": grid()} for _ in range(1 + k % 2)],
            }
            solutions[name] = [grid() for _ in challenges[name]["test"]]
        with open(f"{prefix}_{subset}_challenges.json", "w") as f:
            json.dump(challenges, f)
        with open(f"{prefix}_{subset}_solutions.json", "w") as f:
            json.dump(solutions, f)
    return prefix


def dataset_bytes(path) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            if name != "build.json":
                full = os.path.join(root, name)
                out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def test_sudoku_same_bytes_whatever_the_batching_and_ray(ray_cpus2, tmp_path):
    recipe = load_recipe(
        None, {"kind": "sudoku", "source": "generate", "num_aug": 3, "generate.size": 4, "generate.num_train": 40, "generate.num_test": 10, "generate.min_clues": 5, "generate.max_clues": 9}
    )
    local = build_dataset(recipe, str(tmp_path / "local"), use_ray=False)
    a = build_dataset(recipe, str(tmp_path / "a"), batch_size=3, num_blocks=7)
    b = build_dataset(recipe, str(tmp_path / "b"), batch_size=16, num_blocks=2)
    assert local["content_sha256"] == a["content_sha256"] == b["content_sha256"]
    assert dataset_bytes(tmp_path / "local") == dataset_bytes(tmp_path / "a") == dataset_bytes(tmp_path / "b")
    meta = layout.load_metadata(tmp_path / "a", "train")
    assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers, meta.total_groups, meta.total_puzzles) == (6, 16, 1, 40, 160)
    arrays = layout.load_set_arrays(tmp_path / "a", "train", "all", meta)
    assert list(arrays.group_indices[:3]) == [0, 4, 8] and arrays.inputs.dtype == np.uint8
    test = layout.load_set_arrays(tmp_path / "a", "test", "all", layout.load_metadata(tmp_path / "a", "test"))
    train_questions = {row.tobytes() for row in arrays.inputs[arrays.puzzle_indices[arrays.group_indices[:-1]]]}
    assert not train_questions & {row.tobytes() for row in test.inputs}  # test puzzles are not train puzzles
    text = lambda row: "".join("." if v == 1 else str(v - 1) for v in row)  # noqa: E731
    train_classes = {_class_key("sudoku", text(row), 4) for row in arrays.inputs}
    assert not train_classes & {_class_key("sudoku", text(row), 4) for row in test.inputs}  # nor shuffles of them
    assert json.load(open(tmp_path / "a" / "identifiers.json")) == ["<blank>"]
    other_seed = build_dataset(recipe.model_copy(update={"seed": 7}), str(tmp_path / "c"), use_ray=False)
    assert other_seed["content_sha256"] != a["content_sha256"]


def test_arc_build_layout_and_determinism(ray_cpus2, tmp_path):
    prefix = write_arc_prefix(str(tmp_path), np.random.default_rng(0))
    recipe = load_recipe(None, {"kind": "arc", "input_file_prefix": prefix, "subsets": ["training", "evaluation"], "num_aug": 3})
    a = build_dataset(recipe, str(tmp_path / "a"), batch_size=1, num_blocks=5)
    b = build_dataset(recipe, str(tmp_path / "b"), use_ray=False)
    assert dataset_bytes(tmp_path / "a") == dataset_bytes(tmp_path / "b") and a["content_sha256"] == b["content_sha256"]
    out = tmp_path / "a"
    assert sorted(os.listdir(out)) == ["build.json", "identifiers.json", "test", "test_puzzles.json", "train"]
    for split in ("train", "test"):
        assert sorted(os.listdir(out / split)) == sorted(["dataset.json"] + [f"all__{f}.npy" for f in layout.ARRAY_FIELDS])
        assert set(json.load(open(out / split / "dataset.json"))) == set(layout.DatasetMetadata.model_fields)
    names = json.load(open(out / "identifiers.json"))
    assert names[0] == "<blank>" and names[1] == "tr000000" and len(names) == 1 + 5 * 4
    test_puzzles = json.load(open(out / "test_puzzles.json"))
    assert sorted(test_puzzles) == ["ev000000", "ev000001"]
    meta = layout.load_metadata(out, "test")
    test = layout.load_set_arrays(out, "test", "all", meta)
    assert meta.total_groups == 2 and meta.num_puzzle_identifiers == len(names)
    # every test example, cropped and mapped back by its variant's name, is the original test pair
    for p in range(test.num_puzzles):
        base, back = invert_arc_variant(names[test.puzzle_identifiers[p]])
        for k, e in enumerate(range(test.puzzle_indices[p], test.puzzle_indices[p + 1])):
            pair = test_puzzles[base]["test"][k]
            assert np.array_equal(back(arc_decode_grid(test.inputs[e])), np.array(pair["input"]))
            assert np.array_equal(back(arc_decode_grid(test.labels[e])), np.array(pair["output"]))
    # training puzzles send all pairs to train; evaluation puzzles only their train pairs
    train = layout.load_set_arrays(out, "train", "all", layout.load_metadata(out, "train"))
    sizes = np.diff(train.puzzle_indices)
    assert list(sizes[:4]) == [3] * 4 and list(sizes[-4:]) == [3] * 4  # tr000000: 2 train + 1 test; ev000001: 3 train
    build = json.load(open(out / "build.json"))
    assert build["seed"] == 42 and build["recipe"]["num_aug"] == 3 and "ray" in build["versions"]


def test_uri_output_and_maze(ray_cpus2, tmp_path):
    recipe = load_recipe(
        None,
        {"kind": "maze", "source": "generate", "aug": True, "min_difficulty": 8, "generate.size": 9, "generate.num_train": 12, "generate.num_test": 4},
    )
    uri = "file://" + str(tmp_path / "maze")
    info = build_dataset(recipe, uri, batch_size=5)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    meta = layout.load_metadata(tmp_path / "maze", "train")
    assert (meta.vocab_size, meta.seq_len, meta.total_groups, meta.total_puzzles) == (6, 81, 12, 96)
    assert info["ratings"]["train"]["min"] >= 8
    local = build_dataset(recipe, str(tmp_path / "maze-local"), use_ray=False)
    assert local["content_sha256"] == info["content_sha256"]
