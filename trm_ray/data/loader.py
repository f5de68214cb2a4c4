"""The training and evaluation loader of TRM, one per worker: the reference's walk over a
puzzle dataset, with a position that resumes at the next batch.

    loader = PuzzleLoader(["data/sudoku-extreme-1k-aug-1000"], "train", global_batch_size=768,
                          rank=rank, world_size=world_size, seed=0, epochs_per_iter=eval_interval)
    for iteration in range(epochs // eval_interval):
        for item in loader:                     # one iteration = eval_interval epochs
            train_step(item.batch, item.global_effective_batch_size)
        checkpoint({"loader": loader.state_dict(), ...})   # resumes at exactly the next batch

Train split, per pass over a set (the reference's walk):
- rng = Generator(Philox(seed + pass number)), pass numbers counting from 1 over every set of
  every data path in order (the reference's `_iters`);
- group order = `epochs_per_iter` permutations of the groups, concatenated;
- each group visit takes one variant (puzzle) of the group uniformly at random; the group
  order and the variant draws consume `rng` exactly as the reference does, so the same seed
  visits the same puzzles in the same order;
- the visited puzzle's examples enter the global batch in a random order; when the puzzle does
  not fit, it is CUT: only as many of its (shuffled) examples as fill the batch are taken and
  the rest of that visit is dropped; the next batch starts with the next group visit;
- a final batch that cannot be filled is dropped;
- worker `rank` takes rows [rank * local, (rank + 1) * local) of every global batch.
The example order is the one place the reference used the unseeded global RNG (a defect,
fixed here): here batch k of a pass shuffles with the k-th child of the pass's
SeedSequence, so any batch can be rebuilt from (seed, pass, k) alone; that is what makes the
position resumable without replaying the pass.

Test split: examples in file order, global batches of `global_batch_size`, worker `rank`
takes its slice, the last batch padded (inputs pad_id, labels -100, identifiers blank);
`num_real_rows` says how many of this worker's rows are real.

Several data paths are combined as the reference does: their metadata are merged
(layout.merge_metadata) and every (set, path) pair is its own pass, named `<set>` for the
first path and `<set><i>` for path i.

A data path may be a URI (s3://, gs://, file://, ...): it is copied once per node into a local
cache (trm_ray.data.staging) and memory-mapped there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import numpy as np

from trm_ray.data.layout import (
    IGNORE_LABEL_ID,
    SPLITS,
    DatasetError,
    DatasetMetadata,
    SetArrays,
    dataset_fingerprint,
    load_metadata,
    load_set_arrays,
    merge_metadata,
)
from trm_ray.data.staging import resolve_data_path

if TYPE_CHECKING:
    from trm_ray.config import TrainConfig

PathLike = Union[str, os.PathLike]

STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Batches and positions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoaderBatch:
    """One worker's share of one global batch.

    `batch` holds int32 arrays (torch tensors unless the loader was made with
    to_torch=False), local = global_batch_size // world_size rows:
      inputs (local, S), labels (local, S) with -100 where the loss ignores a token,
      puzzle_identifiers (local,).
    Iterating a LoaderBatch gives the reference's triple (set_name, batch,
    global_effective_batch_size), so `for set_name, batch, n in loader:` works as in the reference.
    """

    set_name: str  # reference name: "<set>" for data_paths[0], "<set><i>" for data_paths[i]
    batch: dict[str, Any]
    global_effective_batch_size: int  # real rows over all workers (train: always global_batch_size)
    num_real_rows: int  # real rows of this worker's slice, which come first; the rest is padding
    state: dict[str, Any]  # loader.state_dict() right after this batch (for prefetching loops)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.set_name, self.batch, self.global_effective_batch_size))


@dataclass(frozen=True)
class _Set:
    name: str
    arrays: SetArrays


class _TrainPass:
    """One pass over one set: group order, variant draws and batch boundaries.

    Variants are drawn lazily in chunks (the draws are the same, one at a time or in chunks;
    tests check it), so a pass of eval_interval x groups visits starts at once.
    """

    _DRAW_CHUNK = 1 << 16

    def __init__(self, arrays: SetArrays, seed: int, pass_number: int, epochs_per_iter: int, global_batch_size: int):
        self.arrays = arrays
        self.global_batch_size = global_batch_size
        self.seed_sequence = np.random.SeedSequence(seed + pass_number)
        self.rng = np.random.Generator(np.random.Philox(seed=seed + pass_number))
        num_groups = arrays.num_groups
        permutations = [self.rng.permutation(num_groups) for _ in range(epochs_per_iter)]
        self.group_order = np.concatenate(permutations).astype(np.int64 if num_groups >= 2**31 else np.int32)
        group_indices = arrays.group_indices.astype(np.int64)
        self.group_lo, self.group_hi = group_indices[:-1], group_indices[1:]
        self.puzzle_sizes = np.diff(arrays.puzzle_indices.astype(np.int64))
        self.num_visits = self.group_order.size
        self.visit_puzzles = np.empty(self.num_visits, dtype=np.int64 if arrays.num_puzzles >= 2**31 else np.int32)
        self.num_drawn = 0
        self.next_visit = 0  # first group visit of the next batch

    def _draw_until(self, end: int) -> None:
        while self.num_drawn < end:
            stop = min(self.num_visits, max(end, self.num_drawn + self._DRAW_CHUNK))
            groups = self.group_order[self.num_drawn:stop]
            # Same draws as the reference's rng.integers(lo, hi) per visit, in visit order.
            self.visit_puzzles[self.num_drawn:stop] = self.rng.integers(self.group_lo[groups], self.group_hi[groups])
            self.num_drawn = stop

    def next_visits(self) -> Optional[tuple[int, int]]:
        """The group visits [start, stop) that fill the next batch; None when they cannot."""
        start, window = self.next_visit, self.global_batch_size
        while True:
            stop = min(self.num_visits, start + window)
            self._draw_until(stop)
            filled = np.cumsum(self.puzzle_sizes[self.visit_puzzles[start:stop]])
            if filled.size and filled[-1] >= self.global_batch_size:
                last = int(np.searchsorted(filled, self.global_batch_size, side="left"))
                self.next_visit = start + last + 1
                return start, start + last + 1
            if stop == self.num_visits:
                self.next_visit = self.num_visits
                return None  # the last, incomplete batch is dropped
            window *= 2  # only puzzles without examples can make B visits fall short

    def batch_rows(self, batch_index: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(example index, puzzle index) of each of the batch's global_batch_size rows."""
        puzzles = self.visit_puzzles[start:stop]
        sizes = self.puzzle_sizes[puzzles]
        visit_of_row = np.repeat(np.arange(puzzles.size), sizes)
        offset_in_puzzle = np.arange(visit_of_row.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        shuffle_rng = np.random.Generator(
            np.random.Philox(np.random.SeedSequence(self.seed_sequence.entropy, spawn_key=(batch_index,)))
        )
        # Sort by visit, then by a random key: each puzzle's examples stay contiguous, shuffled.
        order = np.lexsort((shuffle_rng.random(visit_of_row.size), visit_of_row))[: self.global_batch_size]
        first_example = self.arrays.puzzle_indices[puzzles].astype(np.int64)
        example_index = first_example[visit_of_row[order]] + offset_in_puzzle[order]
        return example_index, puzzles[visit_of_row[order]]


# --------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------
class PuzzleLoader:
    """Batches of one worker over one split of one or more datasets.

    Train: one `for item in loader` is one iteration: one pass over every (set, path), each
    pass covering `epochs_per_iter` epochs of that set's groups. Training passes
    epochs_per_iter = eval_interval (or epochs when eval_interval is None), so one iteration
    is one eval interval, as in the reference. Test: one `for` covers every example once.

    The position (`state_dict`) counts batches handed out; restoring it into a fresh loader
    (any world_size) continues with exactly the next global batch. A loop that prefetches
    should checkpoint `item.state` of the last batch it consumed instead.
    """

    def __init__(
        self,
        data_paths: Sequence[PathLike],
        split: str,
        *,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epochs_per_iter: int = 1,
        to_torch: bool = True,
        cache_dir: Optional[PathLike] = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
        if isinstance(data_paths, (str, os.PathLike)):
            data_paths = [data_paths]
        if not data_paths:
            raise DatasetError("data_paths is empty: give at least one dataset folder or URI")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a positive multiple of world_size={world_size}"
            )
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0 (it seeds numpy's Philox, as in the reference)")
        if epochs_per_iter < 1:
            raise ValueError(f"epochs_per_iter={epochs_per_iter} must be >= 1")

        self.split = split
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epochs_per_iter = seed, epochs_per_iter
        self.to_torch = to_torch
        self.data_paths = [str(p) for p in data_paths]
        self.dataset_dirs = [resolve_data_path(p, cache_dir) for p in data_paths]
        metadatas = [load_metadata(d, split) for d in self.dataset_dirs]
        self.metadata: DatasetMetadata = merge_metadata(metadatas, names=self.data_paths)
        # Of this split only: adding a test split to a dataset does not invalidate a train position.
        # Checkpoints that want the whole dataset's: layout.dataset_fingerprint(loader.dataset_dirs).
        self.fingerprint = dataset_fingerprint(self.dataset_dirs, splits=(split,))
        # Reference order: set-major, then path; path i > 0 renames "<set>" to "<set><i>".
        self._sets = [
            _Set(set_name if i == 0 else f"{set_name}{i}", load_set_arrays(d, split, set_name, meta))
            for set_name in self.metadata.sets
            for i, (d, meta) in enumerate(zip(self.dataset_dirs, metadatas))
        ]
        if split == "train":
            for s in self._sets:
                # Upper bound on one pass's examples; below one batch the pass yields nothing.
                most = s.arrays.num_groups and int(
                    np.maximum.reduceat(np.diff(s.arrays.puzzle_indices), s.arrays.group_indices[:-1]).sum()
                )
                if most * epochs_per_iter < global_batch_size:
                    raise DatasetError(
                        f"set {s.name!r} of {self.split} has too few examples to fill one global batch of "
                        f"{global_batch_size} in {epochs_per_iter} epochs: lower global_batch_size or use more data"
                    )
        self._passes_completed = 0
        self._batch_index = 0

    @classmethod
    def from_config(
        cls, config: "TrainConfig", split: str, *, rank: int = 0, world_size: int = 1, **kwargs: Any
    ) -> "PuzzleLoader":
        """The loader the reference's pretrain.py builds for `split` from a training recipe."""
        if split == "train":
            paths = config.data_paths
            epochs_per_iter = config.eval_interval if config.eval_interval is not None else config.epochs
        else:
            paths = config.eval_paths
            epochs_per_iter = 1
        return cls(paths, split, global_batch_size=config.global_batch_size, rank=rank,
                   world_size=world_size, seed=config.seed, epochs_per_iter=epochs_per_iter, **kwargs)

    @property
    def set_names(self) -> list[str]:
        return [s.name for s in self._sets]

    @property
    def iteration(self) -> int:
        """Completed iterations (train): passes completed // number of (set, path) passes."""
        return self._passes_completed // len(self._sets)

    # ---- position ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out. The pass in progress is the reference's
        pass number `passes_completed + 1` (seeded seed + that), `batch_index` batches into it."""
        return {
            "version": STATE_VERSION,
            "passes_completed": self._passes_completed,
            "batch_index": self._batch_index,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "epochs_per_iter": self.epochs_per_iter,
            "set_names": self.set_names,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        for key in ("seed", "global_batch_size", "epochs_per_iter", "set_names", "fingerprint"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state.get(key)!r} but this loader has {getattr(self, key)!r}: "
                    "a run resumes only with the seed, global_batch_size, eval_interval and datasets it started with"
                )
        self._passes_completed = int(state["passes_completed"])
        self._batch_index = int(state["batch_index"])

    # ---- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[LoaderBatch]:
        return self._iter_train() if self.split == "train" else self._iter_test()

    def _iter_train(self) -> Iterator[LoaderBatch]:
        while True:
            position = self._passes_completed % len(self._sets)
            current = self._sets[position]
            walk = _TrainPass(current.arrays, self.seed, self._passes_completed + 1,
                              self.epochs_per_iter, self.global_batch_size)
            for _ in range(self._batch_index):  # resume: skip the batches already handed out
                if walk.next_visits() is None:
                    break
            while (visits := walk.next_visits()) is not None:
                example_index, puzzle_index = walk.batch_rows(self._batch_index, *visits)
                rows = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
                batch = self._handed_out(collate_rows(current.arrays, self.metadata, example_index[rows],
                                                      puzzle_index[rows], self.local_batch_size))
                self._batch_index += 1
                yield LoaderBatch(current.name, batch, self.global_batch_size, self.local_batch_size, self.state_dict())
            self._passes_completed += 1
            self._batch_index = 0
            if position == len(self._sets) - 1:
                return

    def _iter_test(self) -> Iterator[LoaderBatch]:
        for current in self._sets:
            arrays = current.arrays
            for start in range(0, arrays.num_examples, self.global_batch_size):
                end = min(arrays.num_examples, start + self.global_batch_size)
                local_start = start + self.rank * self.local_batch_size
                local_end = min(start + (self.rank + 1) * self.local_batch_size, end)
                local_end = max(local_start, local_end)  # a worker past the end gets only padding
                batch = self._handed_out(read_rows(arrays, self.metadata, local_start, local_end,
                                                   pad_to=self.local_batch_size))
                yield LoaderBatch(current.name, batch, end - start, local_end - local_start, self.state_dict())

    def _handed_out(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.to_torch:
            import torch

            batch = {k: torch.from_numpy(v) for k, v in batch.items()}
        return batch


# --------------------------------------------------------------------------------------------
# Rows as the loader gives them (also what the eval workers read)
# --------------------------------------------------------------------------------------------
def collate_rows(arrays: SetArrays, meta: DatasetMetadata, examples: Union[np.ndarray, slice],
                 puzzle_index: np.ndarray, num_rows: int) -> dict[str, np.ndarray]:
    """int32 rows for these examples (one puzzle index per row), labels mapped to -100, then
    padding up to num_rows rows (inputs pad_id, labels -100, identifiers blank)."""
    num_real = puzzle_index.size
    inputs = np.full((num_rows, meta.seq_len), meta.pad_id, dtype=np.int32)
    labels = np.full((num_rows, meta.seq_len), IGNORE_LABEL_ID, dtype=np.int32)
    identifiers = np.full(num_rows, meta.blank_identifier_id, dtype=np.int32)
    if num_real:
        # Indexing the memmaps reads only these rows.
        inputs[:num_real] = arrays.inputs[examples]
        labels[:num_real] = arrays.labels[examples]
        identifiers[:num_real] = arrays.puzzle_identifiers[puzzle_index]
        if meta.ignore_label_id is not None:
            real = labels[:num_real]
            real[real == meta.ignore_label_id] = IGNORE_LABEL_ID
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": identifiers}


def read_rows(arrays: SetArrays, meta: DatasetMetadata, start: int, stop: int, pad_to: int = 0) -> dict[str, np.ndarray]:
    """Rows [start, stop) of a set in file order, as the test loader gives them, padded up to
    pad_to rows as it pads a set's last batch."""
    examples = np.arange(start, stop)
    puzzle_index = np.searchsorted(arrays.puzzle_indices, examples, side="right") - 1
    return collate_rows(arrays, meta, slice(start, stop), puzzle_index, max(pad_to, stop - start))
