"""A tiny hand-written writer of the reference dataset layout (docs/formats.md#dataset-folder) for tests.

It spells every file name out itself (it does not use trm_ray.data.layout or the builder),
so the loader's tests also check that trm-ray reads the layout the spec describes.

Every example row says where it came from, so a test can decode any batch row:
    inputs[e] = [1 + group, 1 + puzzle, 1 + k, 1 + e, marker, marker, ...]
    labels[e] = [1 + group, 1 + puzzle, 1 + k, 1 + e, ignore_label_id or 0, marker + 1, ...]
(k: position of the example inside its puzzle; e: its index in the set). Puzzle p has
identifier 1 + p; identifier 0 is "<blank>".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

GROUP, PUZZLE, EXAMPLE_IN_PUZZLE, EXAMPLE = 0, 1, 2, 3  # columns of an inputs row
IGNORED_COLUMN = 4  # labels column that holds ignore_label_id


def write_dataset(
    dataset_dir: str | os.PathLike,
    groups: Sequence[Sequence[int]],
    split: str = "train",
    set_name: str = "all",
    seq_len: int = 6,
    pad_id: int = 0,
    ignore_label_id: Optional[int] = 0,
    marker: int = 7,
    vocab_size: int = 64,
    dtype: type = np.int32,
    metadata_overrides: Optional[dict] = None,
) -> dict:
    """Write one split of one set. groups[g][v] = number of examples of variant v of group g.

    Returns the dataset.json content written.
    """
    assert seq_len >= 6
    assert sum(map(sum, groups)) + 2 <= vocab_size and marker + 2 <= vocab_size, "raise vocab_size"
    root = Path(dataset_dir)
    (root / split).mkdir(parents=True, exist_ok=True)
    puzzle_sizes = [size for group in groups for size in group]
    num_puzzles, num_examples = len(puzzle_sizes), sum(puzzle_sizes)

    inputs = np.full((num_examples, seq_len), marker, dtype=np.int64)
    labels = np.full((num_examples, seq_len), marker + 1, dtype=np.int64)
    puzzle_indices, group_indices = [0], [0]
    e = p = 0
    for g, group in enumerate(groups):
        for size in group:
            for k in range(size):
                inputs[e, :4] = labels[e, :4] = (1 + g, 1 + p, 1 + k, 1 + e)
                labels[e, IGNORED_COLUMN] = 0 if ignore_label_id is None else ignore_label_id
                e += 1
            p += 1
            puzzle_indices.append(e)
        group_indices.append(p)

    def save(field: str, array: np.ndarray) -> None:
        np.save(root / split / f"{set_name}__{field}.npy", array)

    save("inputs", inputs.astype(dtype))
    save("labels", labels.astype(dtype))
    save("puzzle_identifiers", np.arange(1, num_puzzles + 1, dtype=np.int32))
    save("puzzle_indices", np.array(puzzle_indices, dtype=np.int32))
    save("group_indices", np.array(group_indices, dtype=np.int32))

    metadata = {
        "pad_id": pad_id,
        "ignore_label_id": ignore_label_id,
        "blank_identifier_id": 0,
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "num_puzzle_identifiers": num_puzzles + 1,
        "total_groups": len(groups),
        "mean_puzzle_examples": num_examples / max(num_puzzles, 1),
        "total_puzzles": num_puzzles,
        "sets": [set_name],
    }
    metadata.update(metadata_overrides or {})
    (root / split / "dataset.json").write_text(json.dumps(metadata))
    names = ["<blank>"] + [f"puzzle{q}" for q in range(num_puzzles)]
    (root / "identifiers.json").write_text(json.dumps(names))
    return metadata


def decode_rows(inputs: np.ndarray) -> np.ndarray:
    """(rows, 4): group, puzzle, example-in-puzzle, example index of each row (0-based)."""
    return np.asarray(inputs)[:, :4].astype(np.int64) - 1


def write_tiny_dataset(dataset_dir: str | os.PathLike) -> Path:
    """The small dataset the Ray training tests share: 12 train groups of 1-2 variants with
    1-3 examples each, and a test split of 6 one-example puzzles."""
    write_dataset(dataset_dir, [[1 + (g % 3), 2] if g % 2 else [3] for g in range(12)], split="train")
    write_dataset(dataset_dir, [[1]] * 6, split="test")
    return Path(dataset_dir)
