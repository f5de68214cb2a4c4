"""The on-disk dataset layout shared with the reference TRM code (docs/formats.md#dataset-folder).

```
<dataset>/identifiers.json                      list: identifier -> name, index 0 is "<blank>"
<dataset>/test_puzzles.json                     ARC only: original test-set puzzles
<dataset>/<split>/dataset.json                  DatasetMetadata
<dataset>/<split>/<set>__inputs.npy             (examples, S)
<dataset>/<split>/<set>__labels.npy             (examples, S)
<dataset>/<split>/<set>__puzzle_identifiers.npy (puzzles,)
<dataset>/<split>/<set>__puzzle_indices.npy     (puzzles + 1,) example offsets
<dataset>/<split>/<set>__group_indices.npy      (groups + 1,) puzzle offsets
```

The builder writes it and the loader reads it; both take every file name from here.

    meta = load_metadata("data/sudoku-extreme-1k-aug-1000", "train")
    arrays = load_set_arrays("data/sudoku-extreme-1k-aug-1000", "train", "all", meta)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trm_ray import storage

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "test")
ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
METADATA_FILE = "dataset.json"
IDENTIFIERS_FILE = "identifiers.json"
TEST_PUZZLES_FILE = "test_puzzles.json"
# The commit marker: a trm-ray build writes it last, after every other file is in place.
BUILD_FILE = "build.json"
# Written first when a build publishes into a folder object by object (object stores have no
# folder rename) and removed after BUILD_FILE: a folder holding it without BUILD_FILE is a build
# that did not finish. Reference-built datasets have neither file and load as they are.
PENDING_FILE = ".trm-ray-building"
BLANK_IDENTIFIER = "<blank>"
# What labels equal to `ignore_label_id` become at load time; the loss skips them.
IGNORE_LABEL_ID = -100

_BUILD_HINT = "build it with `trm-ray data build ...` (see `trm-ray data build --help`)"


from trm_ray.storage import is_uri  # noqa: E402,F401  (re-exported: data modules import it from here)


class DatasetError(ValueError):
    """A dataset folder that is missing, incomplete or inconsistent; the message says what to do."""


# --------------------------------------------------------------------------------------------
# dataset.json
# --------------------------------------------------------------------------------------------
class DatasetMetadata(BaseModel):
    """`<split>/dataset.json`: exactly the reference's fields, so files move both ways."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pad_id: int = Field(..., ge=0, description="Token that fills unused positions of inputs.")
    ignore_label_id: Optional[int] = Field(
        ..., description="Label token the loss ignores (becomes -100 at load time); None: none."
    )
    blank_identifier_id: int = Field(..., ge=0, description="Puzzle identifier of padding rows (0, '<blank>').")
    vocab_size: int = Field(..., ge=1, description="V: tokens 0..V-1.")
    seq_len: int = Field(..., ge=1, description="S: tokens per example.")
    num_puzzle_identifiers: int = Field(..., ge=1, description="Rows of the puzzle embedding table.")
    total_groups: int = Field(..., ge=0, description="Original puzzles (a group is one and its variants).")
    mean_puzzle_examples: float = Field(..., ge=0, description="Mean examples per puzzle (variant).")
    total_puzzles: int = Field(..., ge=0, description="Puzzles (variants) over all sets.")
    sets: list[str] = Field(..., min_length=1, description="Set names; files are <set>__<field>.npy.")

    @model_validator(mode="after")
    def _check(self) -> "DatasetMetadata":
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be below vocab_size={self.vocab_size}")
        if self.blank_identifier_id >= self.num_puzzle_identifiers:
            raise ValueError(
                f"blank_identifier_id={self.blank_identifier_id} must be below "
                f"num_puzzle_identifiers={self.num_puzzle_identifiers}"
            )
        for name in self.sets:
            if not name or "/" in name or os.sep in name:
                raise ValueError(f"set name {name!r} must be non-empty, without '/'")
        if len(set(self.sets)) != len(self.sets):
            raise ValueError(f"sets {self.sets} repeat a name")
        return self

    def to_json(self) -> str:
        """The text of dataset.json (the reference writes model_dump_json() the same way)."""
        return self.model_dump_json()


def split_dir(dataset_dir: PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    return Path(dataset_dir) / split


def metadata_path(dataset_dir: PathLike, split: str) -> Path:
    return split_dir(dataset_dir, split) / METADATA_FILE


def array_filename(set_name: str, field: str) -> str:
    """`<set>__<field>.npy`, the name inside a split folder."""
    if field not in ARRAY_FIELDS:
        raise ValueError(f"array field {field!r} is not one of {list(ARRAY_FIELDS)}")
    return f"{set_name}__{field}.npy"


def array_path(dataset_dir: PathLike, split: str, set_name: str, field: str) -> Path:
    return split_dir(dataset_dir, split) / array_filename(set_name, field)


def identifiers_path(dataset_dir: PathLike) -> Path:
    return Path(dataset_dir) / IDENTIFIERS_FILE


def test_puzzles_path(dataset_dir: PathLike) -> Path:
    return Path(dataset_dir) / TEST_PUZZLES_FILE


def _read_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise DatasetError(f"{what} {str(path)!r} does not exist: {_BUILD_HINT}, or fix the data path")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{what} {str(path)!r} is not valid JSON ({error}): rebuild the dataset") from None


def unfinished_build(dataset_dir: PathLike, has_build: bool, has_pending: bool) -> Optional[DatasetError]:
    """The error for a folder whose build did not finish (None when it did, or when it is a
    dataset from another builder: no marker of either kind)."""
    if has_pending and not has_build:
        return DatasetError(f"dataset {str(dataset_dir)!r} is incomplete: its build did not finish (no {BUILD_FILE}); "
                            f"run the same `trm-ray data build` again, it replaces the folder")
    return None


def check_complete(dataset_dir: PathLike) -> None:
    """Refuse a local dataset folder whose build did not finish (see PENDING_FILE)."""
    error = unfinished_build(dataset_dir, (Path(dataset_dir) / BUILD_FILE).is_file(),
                             (Path(dataset_dir) / PENDING_FILE).exists())
    if error is not None:
        raise error


def has_test_split(dataset_dirs: Sequence[PathLike]) -> bool:
    """Every dataset has test/dataset.json (local folders and URIs alike: one small request each)."""
    return all(storage.is_file(storage.join(str(d), "test", METADATA_FILE)) if storage.is_uri(d)
               else metadata_path(d, "test").is_file() for d in dataset_dirs)


def load_metadata(dataset_dir: PathLike, split: str) -> DatasetMetadata:
    """Read and validate `<dataset_dir>/<split>/dataset.json`.

    Datasets from HRM-era builders lack `total_puzzles`; it is then counted from the
    puzzle_indices files, so those datasets load unchanged.
    """
    check_complete(dataset_dir)
    path = metadata_path(dataset_dir, split)
    data = _read_json(path, "dataset metadata")
    if isinstance(data, dict) and "total_puzzles" not in data and isinstance(data.get("sets"), list):
        data = dict(data)
        data["total_puzzles"] = sum(
            _load_array(array_path(dataset_dir, split, s, "puzzle_indices"), mmap=False).shape[0] - 1
            for s in data["sets"]
        )
    try:
        return DatasetMetadata.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise DatasetError(f"dataset metadata {str(path)!r} is malformed ({problems}): rebuild the dataset") from None


def write_metadata(dataset_dir: PathLike, split: str, metadata: DatasetMetadata) -> Path:
    """Write `<split>/dataset.json` under a local folder (the split folder is created)."""
    path = metadata_path(dataset_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(metadata.to_json())
    return path


def load_identifiers(dataset_dir: PathLike) -> list[str]:
    """identifiers.json: the name of each puzzle identifier; index 0 is "<blank>"."""
    path = identifiers_path(dataset_dir)
    data = _read_json(path, "identifier list")
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise DatasetError(f"identifier list {str(path)!r} must be a JSON list of names: rebuild the dataset")
    return data


# --------------------------------------------------------------------------------------------
# Several data paths trained together
# --------------------------------------------------------------------------------------------
_MUST_AGREE = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id", "sets")


def merge_metadata(metadatas: Sequence[DatasetMetadata], names: Optional[Sequence[str]] = None) -> DatasetMetadata:
    """One metadata for several datasets trained together, as the reference merges them.

    - seq_len, vocab_size, pad_id, ignore_label_id, blank_identifier_id and sets must agree
      (one model reads every batch); a disagreement is a DatasetError naming both values.
    - total_groups and total_puzzles are summed: every group of every path is visited.
    - mean_puzzle_examples is the mean over all puzzles (weighted by total_puzzles), the same
      definition each dataset.json uses, so `total_groups * mean_puzzle_examples` (the step
      count of the lr schedule, optim.total_train_steps) matches the reference's.
    - num_puzzle_identifiers is SUMMED, as the reference does, although identifiers are not
      offset per path (path i's identifier k and path j's identifier k share one embedding
      row; rows beyond the largest path's count stay unused). Summing keeps the puzzle table
      the same shape as the reference's, so checkpoints trained on several paths move both ways.
    """
    if not metadatas:
        raise DatasetError("no datasets given: set data_paths to at least one dataset folder")
    names = list(names) if names is not None else [f"data_paths[{i}]" for i in range(len(metadatas))]
    first = metadatas[0]
    for name, meta in zip(names[1:], metadatas[1:]):
        for field in _MUST_AGREE:
            a, b = getattr(first, field), getattr(meta, field)
            if a != b:
                raise DatasetError(
                    f"datasets {names[0]} and {name} disagree on {field} ({a!r} vs {b!r}): "
                    "only datasets with the same seq_len, vocab_size, pad_id, ignore_label_id, "
                    "blank_identifier_id and sets can be trained together"
                )
    total_puzzles = sum(m.total_puzzles for m in metadatas)
    examples = sum(m.mean_puzzle_examples * m.total_puzzles for m in metadatas)
    return DatasetMetadata(
        pad_id=first.pad_id,
        ignore_label_id=first.ignore_label_id,
        blank_identifier_id=first.blank_identifier_id,
        vocab_size=first.vocab_size,
        seq_len=first.seq_len,
        num_puzzle_identifiers=sum(m.num_puzzle_identifiers for m in metadatas),
        total_groups=sum(m.total_groups for m in metadatas),
        mean_puzzle_examples=examples / total_puzzles if total_puzzles else 0.0,
        total_puzzles=total_puzzles,
        sets=list(first.sets),
    )


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetArrays:
    """One set of one split: inputs/labels memory-mapped, the small index arrays in memory."""

    inputs: np.ndarray  # (examples, S)
    labels: np.ndarray  # (examples, S)
    puzzle_identifiers: np.ndarray  # (puzzles,)
    puzzle_indices: np.ndarray  # (puzzles + 1,) example offsets
    group_indices: np.ndarray  # (groups + 1,) puzzle offsets

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_puzzles(self) -> int:
        return int(self.puzzle_identifiers.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_indices.shape[0] - 1)


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"dataset array {str(path)!r} does not exist: the dataset is incomplete; {_BUILD_HINT}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DatasetError(f"dataset array {str(path)!r} cannot be read ({error}): rebuild the dataset") from None


def load_set_arrays(dataset_dir: PathLike, split: str, set_name: str, metadata: DatasetMetadata) -> SetArrays:
    """Open one set's arrays (inputs, labels memory-mapped) and check they fit together.

    The checks are O(puzzles + groups), never O(examples x S): they touch only the index
    arrays and the shapes of the big ones.
    """
    path = {field: array_path(dataset_dir, split, set_name, field) for field in ARRAY_FIELDS}
    big = {f: _load_array(path[f], mmap=True) for f in ("inputs", "labels")}
    small = {f: _load_array(path[f], mmap=False) for f in ("puzzle_identifiers", "puzzle_indices", "group_indices")}
    arrays = SetArrays(**big, **small)

    def bad(what: str) -> DatasetError:
        return DatasetError(f"dataset {str(split_dir(dataset_dir, split))!r} set {set_name!r}: {what}; rebuild the dataset")

    for f in ARRAY_FIELDS:
        a = getattr(arrays, f)
        if not np.issubdtype(a.dtype, np.integer):
            raise bad(f"{path[f].name} has dtype {a.dtype}, expected integers")
    if arrays.inputs.ndim != 2 or arrays.inputs.shape[1] != metadata.seq_len:
        raise bad(f"inputs have shape {arrays.inputs.shape}, expected (examples, seq_len={metadata.seq_len})")
    if arrays.labels.shape != arrays.inputs.shape:
        raise bad(f"labels have shape {arrays.labels.shape}, inputs {arrays.inputs.shape}")
    for f in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        if getattr(arrays, f).ndim != 1:
            raise bad(f"{f} must be one-dimensional, has shape {getattr(arrays, f).shape}")
    pi, gi = arrays.puzzle_indices, arrays.group_indices
    if pi.shape[0] != arrays.num_puzzles + 1 or pi[0] != 0 or pi[-1] != arrays.num_examples or np.any(np.diff(pi) < 0):
        raise bad(f"puzzle_indices must rise from 0 to {arrays.num_examples} over {arrays.num_puzzles + 1} entries")
    if gi.shape[0] < 1 or gi[0] != 0 or gi[-1] != arrays.num_puzzles or np.any(np.diff(gi) <= 0):
        raise bad(f"group_indices must rise strictly from 0 to {arrays.num_puzzles} (no empty group)")
    ids = arrays.puzzle_identifiers
    if ids.size and (ids.min() < 0 or ids.max() >= metadata.num_puzzle_identifiers):
        raise bad(f"puzzle_identifiers span {ids.min()}..{ids.max()}, outside 0..{metadata.num_puzzle_identifiers - 1}")
    return arrays


# --------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------
def dataset_fingerprint(dataset_dirs: Sequence[PathLike], splits: Sequence[str] = SPLITS) -> str:
    """A short, stable hash that tells whether a checkpoint was trained on these datasets.

    Cheap: the canonical JSON of identifiers.json and of each split's dataset.json, plus the
    byte size of every array file of those splits; no array is read and no mtime or absolute
    path enters, so a copied or re-staged dataset keeps its fingerprint and a rebuilt one with
    other content (almost always) changes it. The order of `dataset_dirs` matters, as it does
    for training. `splits` narrows it (the loader checks only the split it reads).
    """
    digest = hashlib.sha256()
    for dataset_dir in dataset_dirs:
        digest.update(b"\x00dataset")
        files = [IDENTIFIERS_FILE] + [f"{s}/{METADATA_FILE}" for s in splits]
        for name in files:
            path = Path(dataset_dir) / name
            if not path.is_file():
                continue
            try:
                canonical = json.dumps(json.loads(path.read_text()), sort_keys=True, separators=(",", ":"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                canonical = path.read_bytes().hex()
            digest.update(f"\x00{name}\x00{canonical}".encode())
        for split in splits:
            directory = split_dir(dataset_dir, split)
            if directory.is_dir():
                for path in sorted(directory.glob("*.npy")):
                    digest.update(f"\x00{split}/{path.name}\x00{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]
