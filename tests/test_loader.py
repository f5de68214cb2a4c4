"""The loader (docs/paper.md#training-loader) against hand computations on hand-built datasets."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from trm_ray.data import layout, loader as loader_module, staging
from trm_ray.data.layout import DatasetError, dataset_fingerprint, load_metadata
from trm_ray.data.loader import PuzzleLoader

from datasets_util import EXAMPLE, EXAMPLE_IN_PUZZLE, GROUP, IGNORED_COLUMN, PUZZLE, decode_rows, write_dataset

# Groups of variants of various sizes: sizes 1..4 so cuts, single variants and single
# examples all occur.
GROUPS = [[2, 3], [1], [4, 1, 2], [3], [2, 2], [1, 4, 3, 1]]


def puzzle_offsets(groups):
    sizes = [s for g in groups for s in g]
    return np.concatenate([[0], np.cumsum(sizes)]), np.concatenate([[0], np.cumsum([len(g) for g in groups])])


def reference_walk(groups, seed, pass_number, epochs_per_iter, global_batch_size):
    """The reference's _iter_train/_sample_batch, one visit at a time: per batch, the list of
    (puzzle, examples taken) visits."""
    puzzle_indices, group_indices = puzzle_offsets(groups)
    rng = np.random.Generator(np.random.Philox(seed=seed + pass_number))
    order = np.concatenate([rng.permutation(len(groups)) for _ in range(epochs_per_iter)])
    batches, current, filled = [], [], 0
    for g in order:
        p = int(rng.integers(group_indices[g], group_indices[g + 1]))
        take = min(int(puzzle_indices[p + 1] - puzzle_indices[p]), global_batch_size - filled)
        current.append((p, take))
        filled += take
        if filled == global_batch_size:
            batches.append(current)
            current, filled = [], 0
    return batches  # the incomplete last batch is dropped


def collect(loader):
    return [(item.set_name, {k: np.asarray(v).copy() for k, v in item.batch.items()}) for item in loader]


@pytest.fixture
def train_dir(tmp_path):
    write_dataset(tmp_path / "ds", GROUPS, split="train")
    return tmp_path / "ds"


# ---------------------------------------------------------------------------------------------
# Train sampling
# ---------------------------------------------------------------------------------------------
def test_train_walk_matches_hand_computed_reference_walk(train_dir, monkeypatch):
    # Small draw chunks: lazily chunked variant draws must equal the reference's one-by-one draws.
    monkeypatch.setattr(loader_module._TrainPass, "_DRAW_CHUNK", 3)
    seed, epochs, batch_size = 3, 4, 5
    loader = PuzzleLoader([train_dir], "train", global_batch_size=batch_size, seed=seed, epochs_per_iter=epochs)
    got = collect(loader)
    expected = reference_walk(GROUPS, seed, 1, epochs, batch_size)
    assert len(got) == len(expected) > 3
    puzzle_indices, group_indices = puzzle_offsets(GROUPS)
    shuffled = False
    for (set_name, batch), visits in zip(got, expected):
        assert set_name == "all"
        rows = decode_rows(batch["inputs"])
        assert rows.shape == (batch_size, 4)
        # Each row is a real example of the puzzle its identifier names, inside that puzzle's group.
        assert np.array_equal(batch["puzzle_identifiers"], rows[:, PUZZLE] + 1)
        assert np.array_equal(rows[:, EXAMPLE], puzzle_indices[rows[:, PUZZLE]] + rows[:, EXAMPLE_IN_PUZZLE])
        assert np.all(group_indices[rows[:, GROUP]] <= rows[:, PUZZLE])
        assert np.all(rows[:, PUZZLE] < group_indices[rows[:, GROUP] + 1])
        position = 0
        for puzzle, take in visits:  # one variant per visit, its examples contiguous, no repeats
            part = rows[position:position + take]
            assert np.all(part[:, PUZZLE] == puzzle)
            size = puzzle_indices[puzzle + 1] - puzzle_indices[puzzle]
            assert len(set(part[:, EXAMPLE_IN_PUZZLE])) == take and part[:, EXAMPLE_IN_PUZZLE].max() < size
            shuffled |= take > 1 and not np.all(np.diff(part[:, EXAMPLE_IN_PUZZLE]) > 0)
            position += take
        assert position == batch_size
    assert shuffled, "examples of a puzzle should come in a random order"


def test_each_group_appears_epochs_per_iter_times_per_pass(tmp_path):
    # One example per puzzle and 12 visits = 3 full batches: every visit is in a batch.
    groups = [[1, 1], [1], [1, 1, 1], [1], [1, 1], [1]]
    write_dataset(tmp_path / "ds", groups)
    loader = PuzzleLoader([tmp_path / "ds"], "train", global_batch_size=4, seed=0, epochs_per_iter=2)
    for _ in range(2):  # two iterations: new permutations, same counts
        rows = np.concatenate([decode_rows(b["inputs"]) for _, b in collect(loader)])
        assert rows.shape[0] == 12
        for epoch in (rows[:6], rows[6:]):  # each epoch is a permutation of the groups
            assert sorted(epoch[:, GROUP]) == list(range(6))
    assert loader.state_dict()["passes_completed"] == 2


def test_labels_equal_to_ignore_label_become_minus_100(train_dir, tmp_path):
    batch = next(iter(PuzzleLoader([train_dir], "train", global_batch_size=4))).batch
    assert batch["labels"].dtype == torch.int32 and batch["inputs"].dtype == torch.int32
    assert torch.all(batch["labels"][:, IGNORED_COLUMN] == -100)
    assert torch.all(batch["labels"][:, :4] == batch["inputs"][:, :4])
    assert not torch.any(batch["labels"][:, IGNORED_COLUMN + 1:] == -100)
    # ignore_label_id null: nothing is mapped (the zeros stay).
    write_dataset(tmp_path / "keep", GROUPS, ignore_label_id=None, dtype=np.uint8)
    batch = next(iter(PuzzleLoader([tmp_path / "keep"], "train", global_batch_size=4, to_torch=False))).batch
    assert batch["labels"].dtype == np.int32 and np.all(batch["labels"][:, IGNORED_COLUMN] == 0)


# ---------------------------------------------------------------------------------------------
# Seeds, sharding, resume
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_batches_other_seed_other_batches(train_dir):
    def run(seed):
        loader = PuzzleLoader([train_dir], "train", global_batch_size=4, seed=seed, epochs_per_iter=3)
        return np.concatenate([b["inputs"] for _, b in collect(loader) + collect(loader)])

    first = run(7)
    assert np.array_equal(first, run(7))
    other = run(8)
    assert first.shape != other.shape or not np.array_equal(first, other)


@pytest.mark.parametrize("split", ["train", "test"])
def test_rank_slices_concatenate_to_the_single_worker_batch(train_dir, split):
    if split == "test":
        write_dataset(train_dir, GROUPS, split="test")
    kwargs = dict(global_batch_size=6, seed=1, epochs_per_iter=2)
    whole = collect(PuzzleLoader([train_dir], split, world_size=1, **kwargs))
    shards = [collect(PuzzleLoader([train_dir], split, rank=r, world_size=2, **kwargs)) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) > 1
    for (name, batch), (_, b0), (_, b1) in zip(whole, *shards):
        for key in batch:
            assert b0[key].shape[0] == 3
            assert np.array_equal(np.concatenate([b0[key], b1[key]]), batch[key]), key


@pytest.mark.parametrize("stop_after", [0, 1, 4, 7])
def test_resume_continues_with_exactly_the_next_batch(tmp_path, stop_after):
    # Two data paths: passes of "all" then "all1"; stopping points inside and between passes.
    write_dataset(tmp_path / "a", GROUPS)
    write_dataset(tmp_path / "b", [[2], [3, 1], [2, 2]], marker=8)
    kwargs = dict(global_batch_size=4, seed=5, epochs_per_iter=2)
    paths = [tmp_path / "a", tmp_path / "b"]
    full = PuzzleLoader(paths, "train", **kwargs)
    first_iteration, second_iteration = collect(full), collect(full)
    assert 7 < len(first_iteration) and {n for n, _ in first_iteration} == {"all", "all1"}

    interrupted = PuzzleLoader(paths, "train", **kwargs)
    iterator = iter(interrupted)
    for _ in range(stop_after):
        next(iterator)
    state = json.loads(json.dumps(interrupted.state_dict()))  # checkpoints hold plain data
    # Another world_size continues the same global batches.
    resumed = [PuzzleLoader(paths, "train", rank=r, world_size=2, **kwargs) for r in range(2)]
    for loader in resumed:
        loader.load_state_dict(state)
    shards = [collect(loader) + collect(loader) for loader in resumed]
    continued = [(n, {k: np.concatenate([b0[k], b1[k]]) for k in b0}) for (n, b0), (_, b1) in zip(*shards)]
    # The first `for` finishes the interrupted iteration, the second runs the next one.
    expected = first_iteration[stop_after:] + second_iteration
    assert len(continued) == len(expected)
    for (name, batch), (expected_name, expected_batch) in zip(continued, expected):
        assert name == expected_name
        for key in batch:
            assert np.array_equal(batch[key], expected_batch[key])


def test_batch_state_allows_prefetching_loops_to_checkpoint_what_they_consumed(train_dir):
    loader = PuzzleLoader([train_dir], "train", global_batch_size=4, epochs_per_iter=2)
    items = list(loader)
    resumed = PuzzleLoader([train_dir], "train", global_batch_size=4, epochs_per_iter=2)
    resumed.load_state_dict(items[1].state)
    assert np.array_equal(next(iter(resumed)).batch["inputs"], items[2].batch["inputs"])


def test_state_from_another_seed_or_dataset_is_refused(train_dir, tmp_path):
    state = PuzzleLoader([train_dir], "train", global_batch_size=4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        PuzzleLoader([train_dir], "train", global_batch_size=4, seed=2).load_state_dict(state)
    write_dataset(tmp_path / "other", [[1, 2], [3]])
    with pytest.raises(ValueError, match="fingerprint"):
        PuzzleLoader([tmp_path / "other"], "train", global_batch_size=4, seed=1).load_state_dict(state)
    # A test split added later leaves the train position valid.
    write_dataset(train_dir, GROUPS, split="test")  # (same identifiers.json)
    PuzzleLoader([train_dir], "train", global_batch_size=4, seed=1).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Test split
# ---------------------------------------------------------------------------------------------
def test_test_split_in_order_with_padded_last_batch(tmp_path):
    # 7 examples, global batch 4, 2 workers: [0 1 | 2 3], [4 5 | 6 pad].
    write_dataset(tmp_path / "ds", [[2, 1], [4]], split="test", pad_id=3)
    got = [
        list(PuzzleLoader([tmp_path / "ds"], "test", global_batch_size=4, rank=r, world_size=2, seed=9))
        for r in range(2)
    ]
    assert [item.global_effective_batch_size for item in got[0]] == [4, 3]
    assert [[item.num_real_rows for item in items] for items in got] == [[2, 2], [2, 1]]
    order = [decode_rows(item.batch["inputs"][: item.num_real_rows])[:, EXAMPLE] for pair in zip(*got) for item in pair]
    assert np.array_equal(np.concatenate(order), np.arange(7))
    last = got[1][1].batch
    assert torch.equal(last["puzzle_identifiers"], torch.tensor([3, 0], dtype=torch.int32))  # example 6: puzzle 2
    assert torch.all(last["inputs"][1] == 3) and torch.all(last["labels"][1] == -100)
    assert torch.all(last["labels"][0, IGNORED_COLUMN] == -100)


def test_a_worker_past_the_end_gets_only_padding(tmp_path):
    write_dataset(tmp_path / "ds", [[5]], split="test")  # batches [0 1 | 2 3], [4 | pad]
    items = list(PuzzleLoader([tmp_path / "ds"], "test", global_batch_size=4, rank=1, world_size=2))
    assert [item.num_real_rows for item in items] == [2, 0]
    assert torch.all(items[1].batch["puzzle_identifiers"] == 0) and torch.all(items[1].batch["labels"] == -100)
    set_name, batch, effective = items[1]  # the reference's triple
    assert (set_name, effective) == ("all", 1)


# ---------------------------------------------------------------------------------------------
# Several data paths, metadata
# ---------------------------------------------------------------------------------------------
def test_two_data_paths_are_two_passes_with_merged_metadata(tmp_path):
    groups_b = [[2], [3, 1], [2, 2]]
    write_dataset(tmp_path / "a", GROUPS)
    write_dataset(tmp_path / "b", groups_b, marker=8)
    loader = PuzzleLoader([tmp_path / "a", tmp_path / "b"], "train", global_batch_size=4, seed=2, epochs_per_iter=3)
    assert loader.set_names == ["all", "all1"]
    merged = loader.metadata
    assert merged.total_groups == 6 + 3 and merged.total_puzzles == 13 + 5
    assert merged.num_puzzle_identifiers == 14 + 6
    assert merged.mean_puzzle_examples == pytest.approx((sum(map(sum, GROUPS)) + 10) / 18)
    got = collect(loader)
    names = [name for name, _ in got]
    count_a = len(reference_walk(GROUPS, 2, 1, 3, 4))
    count_b = len(reference_walk(groups_b, 2, 2, 3, 4))  # the second pass is seeded seed + 2
    assert names == ["all"] * count_a + ["all1"] * count_b
    for (name, batch), visits in zip(got[count_a:], reference_walk(groups_b, 2, 2, 3, 4)):
        assert np.all(batch["inputs"][:, 5] == 8)
        assert list(decode_rows(batch["inputs"])[:, PUZZLE]) == [p for p, take in visits for _ in range(take)]


def test_disagreeing_metadata_is_refused(tmp_path):
    write_dataset(tmp_path / "a", GROUPS)
    write_dataset(tmp_path / "b", GROUPS, seq_len=8)
    with pytest.raises(DatasetError, match="disagree on seq_len"):
        PuzzleLoader([tmp_path / "a", tmp_path / "b"], "train", global_batch_size=4)


def test_missing_or_malformed_dataset_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError) as error:
        PuzzleLoader([tmp_path / "nowhere"], "train", global_batch_size=4)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "nowhere" / "train" / "dataset.json") in message
    assert "trm-ray data build" in message
    write_dataset(tmp_path / "ds", GROUPS, metadata_overrides={"seq_len": "long"})
    with pytest.raises(DatasetError, match="seq_len") as error:
        load_metadata(tmp_path / "ds", "train")
    assert "\n" not in str(error.value)
    write_dataset(tmp_path / "ds", GROUPS)
    (tmp_path / "ds" / "train" / "all__labels.npy").unlink()
    with pytest.raises(DatasetError, match="all__labels.npy"):
        PuzzleLoader([tmp_path / "ds"], "train", global_batch_size=4)


def test_batch_larger_than_a_pass_is_refused(train_dir):
    with pytest.raises(DatasetError, match="global_batch_size"):
        PuzzleLoader([train_dir], "train", global_batch_size=1000, epochs_per_iter=2)


def test_hrm_era_metadata_without_total_puzzles_loads(train_dir):
    path = train_dir / "train" / "dataset.json"
    meta = json.loads(path.read_text())
    del meta["total_puzzles"]
    path.write_text(json.dumps(meta))
    assert load_metadata(train_dir, "train").total_puzzles == 13


def test_fingerprint_follows_content_not_location(train_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(train_dir, copy)
    assert dataset_fingerprint([train_dir]) == dataset_fingerprint([copy])
    write_dataset(copy, GROUPS, metadata_overrides={"num_puzzle_identifiers": 20})
    assert dataset_fingerprint([train_dir]) != dataset_fingerprint([copy])
    assert len(dataset_fingerprint([train_dir])) == 16


def test_from_config_uses_eval_interval_as_epochs_per_iter(train_dir):
    from trm_ray.config import TrainConfig

    config = TrainConfig(data_paths=[str(train_dir)], global_batch_size=4, epochs=6, eval_interval=3, seed=4)
    loader = PuzzleLoader.from_config(config, "train", rank=0, world_size=1)
    assert loader.epochs_per_iter == 3 and loader.seed == 4
    assert len(collect(loader)) == len(reference_walk(GROUPS, 4, 1, 3, 4))


# ---------------------------------------------------------------------------------------------
# Remote datasets
# ---------------------------------------------------------------------------------------------
def test_file_uri_is_staged_once_and_reused(train_dir, tmp_path, monkeypatch):
    copies = []
    real_copy = staging._copy_tree
    monkeypatch.setattr(staging, "_copy_tree", lambda *a: (copies.append(a), real_copy(*a)))
    cache = tmp_path / "cache"
    uri = train_dir.as_uri()
    results = []
    threads = [threading.Thread(target=lambda: results.append(staging.stage_dataset(uri, cache))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(copies) == 1 and len(set(results)) == 1
    staged = results[0]
    assert staged.parent == cache and (staged / "train" / "all__inputs.npy").is_file()
    assert not [p for p in cache.iterdir() if "partial" in p.name]

    loader = PuzzleLoader([uri], "train", global_batch_size=4, cache_dir=cache)
    assert len(copies) == 1 and loader.dataset_dirs == [staged]
    local = PuzzleLoader([train_dir], "train", global_batch_size=4)
    assert loader.fingerprint == local.fingerprint
    assert np.array_equal(collect(loader)[0][1]["inputs"], collect(local)[0][1]["inputs"])

    # A rebuilt dataset at the same URI is copied afresh.
    write_dataset(train_dir, [[1], [2]])
    assert staging.stage_dataset(uri, cache) == staged and len(copies) == 2
    assert load_metadata(staged, "train").total_groups == 2


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("TRM_RAY_CACHE", str(tmp_path))
    assert staging.cache_root() == tmp_path / "datasets"
    monkeypatch.delenv("TRM_RAY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert staging.cache_root() == tmp_path / "home" / ".cache" / "trm-ray" / "datasets"


def test_bad_uri_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        staging.stage_dataset((tmp_path / "missing").as_uri(), tmp_path / "cache")
