"""Build a dataset from a recipe (`trm-ray data build`): Ray Data on a cluster, this
machine's processes otherwise.

    from trm_ray.data.builder import build_dataset
    info = build_dataset("datasets/sudoku-4x4-quickstart.yaml", "data/sudoku-4x4-quickstart")

The driver reads the source puzzles (small), tasks turn batches of them into encoded groups
(augment, encode, de-duplicate), and the driver appends the groups in order to the output
files as they arrive (trm_ray.data.writer): memory stays bounded by a few batches, and the
bytes depend only on the recipe and its seed, never on where the tasks ran, CPUs or batching.

Where tasks run (`use_ray`): True, Ray Data on the running Ray or a local one it starts;
False, this machine: worker processes on its idle CPUs when the build is large enough to
repay starting them, else this process; None (the default), Ray Data when a Ray cluster is
at hand (Ray initialised here, or RAY_ADDRESS set), else as False. On one machine Ray would
only add its start (seconds) and a copy of every group through its object store.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import platform
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from trm_ray.cluster import ray_session
from trm_ray.data import groups as G
from trm_ray.data import sudoku as sudoku_lib
from trm_ray.data.recipe import DatasetRecipe, load_recipe
from trm_ray.data.sources import CsvRow, DatasetBuildError, load_arc, read_source_csvs
from trm_ray.data.transforms import (
    ARC_SEQ_LEN,
    ARC_VOCAB_SIZE,
    MAZE_VOCAB_SIZE,
    STREAM_SUBSAMPLE,
    dihedral_transform,
    rng_for,
)
from trm_ray.data.writer import DatasetWriter

FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Ordered parallel map: Ray Data, local processes or a plain loop (same results)
# ---------------------------------------------------------------------------------------------
def _apply_batch(batch: "pa.Table", fn: Callable[[Any], Any]) -> "pa.Table":
    # One output row per batch: the pickled list of results keeps ragged groups in one blob.
    # Plain Arrow binary both ways: an object column would be pickled once more by Ray Data.
    import pyarrow as pa

    results = [fn(pickle.loads(item.as_buffer())) for item in batch.column("item").combine_chunks()]
    return pa.table({"out": pa.array([pickle.dumps(results, protocol=5)], type=pa.large_binary())})


def ordered_map(
    fn: Callable[[Any], Any],
    items: list[Any],
    *,
    batch_size: int,
    use_ray: bool,
    num_blocks: Optional[int] = None,
    processes: int = 1,
) -> Iterator[Any]:
    """fn(item) for every item, in order: Ray Data tasks of `batch_size` items (use_ray), else
    tasks of `batch_size` items on `processes` local worker processes (1: this process)."""
    if not items:
        return
    if not use_ray:
        if processes > 1 and len(items) > batch_size:
            yield from _process_map(fn, items, batch_size, processes)
        else:
            for item in items:
                yield fn(item)
        return
    import ray.data

    context = ray.data.DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # the writer needs groups in source order
    try:
        import pyarrow as pa

        blobs = pa.array([pickle.dumps(item, protocol=5) for item in items], type=pa.large_binary())
        num_blocks = num_blocks or min(len(items), 200)
        bounds = np.linspace(0, len(items), num_blocks + 1).astype(int)
        ds = ray.data.from_arrow([pa.table({"item": blobs[lo:hi]}) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo])
        ds = ds.map_batches(
            functools.partial(_apply_batch, fn=fn), batch_size=batch_size, batch_format="pyarrow", num_cpus=1
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for blob in batch.column("out").combine_chunks():
                yield from pickle.loads(blob.as_buffer())
    finally:
        context.execution_options.preserve_order = previous


def _run_batch(fn: Callable[[Any], Any], batch: list[Any]) -> list[Any]:
    return [fn(item) for item in batch]


def _process_map(fn: Callable[[Any], Any], items: list[Any], batch_size: int, processes: int) -> Iterator[Any]:
    """ordered_map on a local process pool. At most two tasks per process are in flight or
    waiting to be written, so memory stays bounded when the writer is the slower side."""
    import collections
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    # fork starts workers in milliseconds and shares the loaded sources; a process with
    # threads (a Ray driver, say) must not fork, so it spawns them instead.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1 \
        and "ray" not in sys.modules else "spawn"
    batches = (items[lo:lo + batch_size] for lo in range(0, len(items), batch_size))
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method)) as pool:
        pending: collections.deque = collections.deque()
        try:
            for batch in batches:
                pending.append(pool.submit(_run_batch, fn, batch))
                if len(pending) >= 2 * processes:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# Module-level functions so that Ray pickles them by reference.
def _call(item: tuple) -> Any:
    fn, kwargs = item
    return fn(**kwargs)


# ---------------------------------------------------------------------------------------------
# Sources -> per-group tasks
# ---------------------------------------------------------------------------------------------
def _side(rows: list[CsvRow], kind: str) -> int:
    length = len(rows[0].question)
    side = int(round(math.sqrt(length)))
    if side * side != length or (kind == "sudoku" and side not in sudoku_lib.VALID_SIDES):
        raise DatasetBuildError(
            f"{rows[0].where}: question has {length} cells, not a square {kind} grid"
            + (" (81 for 9x9, 36 for 6x6, 16 for 4x4)" if kind == "sudoku" else "")
        )
    return side


# 4x4 Sudoku has few symmetry classes (minimal puzzles: a few dozen), so a test set merely
# free of train puzzles would still hold shuffles of them. There, one class in
# TEST_CLASS_SHARE goes to test only, the rest to train only.
TEST_CLASS_SHARE = 5


def _class_key(kind: str, question: str, size: int) -> bytes:
    """Equal for puzzles the train augmentation can map onto each other."""
    if kind == "sudoku" and size == 4:
        return sudoku_lib.symmetry_class(sudoku_lib.parse_board(question, size, blank_ok=True))
    if kind == "maze":
        grid = np.array(list(question)).reshape(size, size)
        return min("".join(dihedral_transform(grid, t).reshape(-1)).encode() for t in range(8))
    return question.encode()


def _generated_rows(recipe: DatasetRecipe, run: Callable) -> dict[str, list[CsvRow]]:
    """Puzzles from the built-in generator; test puzzles are neither train puzzles nor
    shuffles/dihedral variants of one (see _class_key).

    Puzzle k of a split comes from rng_for(seed, stream of the split, k); rejected puzzles
    are replaced by the next indices, so the set is a pure function of the recipe.
    """
    gen = recipe.generate
    if recipe.kind == "sudoku":
        fn, extra = G.generate_sudoku_row, {"min_clues": gen.min_clues, "max_clues": gen.max_clues}
    else:
        fn, extra = G.generate_maze_row, {"loop_prob": gen.loop_prob}
    split_classes = recipe.kind == "sudoku" and recipe.generate_size == 4
    seen: set[bytes] = set()
    out: dict[str, list[CsvRow]] = {}
    for split, wanted in (("train", gen.num_train), ("test", gen.num_test)):
        rows: list[CsvRow] = []
        start, tried = 0, 0
        for _ in range(6):
            if len(rows) >= wanted:
                break
            rate = max(0.05, len(rows) / tried) if tried else (0.2 if split_classes and split == "test" else 0.8)
            count = int((wanted - len(rows)) / rate * 1.1) + 8
            items = [
                (fn, dict(index=k, split=split, seed=recipe.seed, size=recipe.generate_size, min_difficulty=recipe.min_difficulty, **extra))
                for k in range(start, start + count)
            ]
            for k, (question, answer, rating, error) in zip(range(start, start + count), run(_call, items)):
                if error:
                    raise DatasetBuildError(f"generate {recipe.kind} {split}[{k}]: {error}")
                key = _class_key(recipe.kind, question, recipe.generate_size)
                if split_classes:
                    reserved = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % TEST_CLASS_SHARE == 0
                    if reserved != (split == "test"):
                        continue
                # Small class spaces: classes are split above, puzzles must only differ; else one per class.
                unique = question.encode() if split_classes else key
                if unique not in seen and len(rows) < wanted:
                    seen.add(unique)
                    rows.append(CsvRow(question, answer, rating, f"generate {split}[{k}]"))
            start += count
            tried += count
        if len(rows) < wanted:
            raise DatasetBuildError(
                f"the generator found only {len(rows)} distinct {split} puzzles of {wanted}: "
                "ask for fewer, a larger size, or more clues (generate.min_clues / max_clues)"
            )
        out[split] = rows
    return out


def _csv_tasks(recipe: DatasetRecipe, run: Callable) -> tuple[list[tuple], int, int, dict[str, Any]]:
    source = recipe.resolved_source
    rows = _generated_rows(recipe, run) if source == "generate" else read_source_csvs(source, recipe.min_difficulty)
    for split in ("train", "test"):
        if not rows[split] and not (split == "test" and source == "generate"):
            raise DatasetBuildError(f"no {split} puzzles in {source!r} (after --min-difficulty): check the source and filters")
    if recipe.subsample_size is not None and recipe.subsample_size < len(rows["train"]):
        # The reference subsamples with an unseeded global RNG; here it comes from the seed.
        picked = rng_for(recipe.seed, STREAM_SUBSAMPLE, 0).choice(len(rows["train"]), recipe.subsample_size, replace=False)
        rows["train"] = [rows["train"][i] for i in picked]
    side = _side(rows["train"], recipe.kind)
    tasks = []
    for split in ("train", "test"):
        for k, row in enumerate(rows[split]):
            common = dict(index=k, split=split, question=row.question, answer=row.answer, where=row.where, size=side)
            if recipe.kind == "sudoku":
                tasks.append((G.sudoku_group, dict(common, seed=recipe.seed, num_aug=recipe.resolved_num_aug)))
            else:
                tasks.append((G.maze_group, dict(common, aug=recipe.aug)))
    vocab = side + 2 if recipe.kind == "sudoku" else MAZE_VOCAB_SIZE
    ratings = {split: _summary([r.rating for r in rows[split]]) for split in ("train", "test")}
    return tasks, side * side, vocab, {"ratings": ratings}


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = np.array(values)
    return {
        "count": int(v.size),
        "min": int(v.min()),
        "p25": float(np.percentile(v, 25)),
        "median": float(np.median(v)),
        "p75": float(np.percentile(v, 75)),
        "max": int(v.max()),
        "mean": round(float(v.mean()), 3),
    }


def _arc_tasks(recipe: DatasetRecipe) -> tuple[list[tuple], dict[str, Any]]:
    puzzles = load_arc(recipe.input_file_prefix, recipe.source, recipe.subsets)
    tasks, test_puzzles = [], {}
    for index, p in enumerate(puzzles):
        is_test = p.subset == recipe.test_set_name
        if is_test:
            test_puzzles[p.name] = p.puzzle
        tasks.append(
            (G.arc_group, dict(index=index, name=p.name, puzzle=p.puzzle, is_test_set=is_test, seed=recipe.seed, num_aug=recipe.resolved_num_aug))
        )
    return tasks, test_puzzles


def _versions() -> dict[str, str]:
    # Installed versions from the package metadata: importing Ray and pyarrow to ask them
    # would cost an in-process build a second or two.
    from importlib import metadata

    import trm_ray

    versions = {"python": platform.python_version(), "trm_ray": trm_ray.__version__, "numpy": np.__version__}
    for package in ("pyarrow", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return versions


def default_batch_size(recipe: DatasetRecipe) -> int:
    """Groups per task: about 2000 puzzles (variants) per task, so tasks are ~10-50 MB."""
    return int(min(512, max(1, 2000 // _variants_per_group(recipe))))


def _variants_per_group(recipe: DatasetRecipe) -> int:
    return 1 + recipe.resolved_num_aug if recipe.kind != "maze" else (8 if recipe.aug else 1)


# A local pool pays for its start (~0.1 s with fork, ~1 s with spawn) and for sending every
# group back through a pipe from about this many variants (ARC: 0.1-0.2 ms each), or this
# many generated puzzles (1-100 ms each).
POOL_MIN_VARIANTS = 20_000
POOL_MIN_GENERATED = 200


def ray_at_hand() -> bool:
    """A Ray cluster to build on: Ray initialised in this process, RAY_ADDRESS set, or a
    cluster whose head runs on this machine (trm_ray.cluster.cluster_address)."""
    from trm_ray.cluster import cluster_address

    ray = sys.modules.get("ray")
    return (ray is not None and ray.is_initialized()) or cluster_address() is not None


def build_session(use_ray: bool, num_cpus: Optional[int]):
    """Where a build's tasks run: the running Ray (or a local one started with num_cpus, its
    console quiet) when use_ray, else nothing to start."""
    return ray_session(num_cpus=num_cpus, log_to_driver=False, quiet_data=True) if use_ray else nullcontext()


def local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class IdleCpus:
    """How many CPUs sat idle between construction and `count()` (from /proc/stat).

    A worker process only pays when it gets a CPU of its own: on a machine that other jobs
    keep busy, sending every group back through a pipe costs more than it saves, and one
    process is faster. The driver is busy reading sources meanwhile, so its own CPU is not
    among the idle ones."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> Optional[tuple[int, int]]:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):  # not Linux
            return None
        return fields[3] + fields[4], sum(fields[:8])  # idle + iowait, all but guest time

    def count(self, cpus: int) -> float:
        end = self._read()
        if self.start is None or end is None or end[1] - self.start[1] < 10:  # no reading, or too short to tell
            return float(cpus)
        return cpus * (end[0] - self.start[0]) / (end[1] - self.start[1])


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def build_dataset(
    recipe: Union[DatasetRecipe, str, os.PathLike],
    output_dir: Optional[str] = None,
    *,
    overwrite: bool = False,
    use_ray: Optional[bool] = None,
    num_cpus: Optional[int] = None,
    batch_size: Optional[int] = None,
    num_blocks: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
    reserved_identifiers: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the dataset of `recipe` (a DatasetRecipe or a YAML path) into `output_dir`.

    output_dir: local folder or pyarrow filesystem URI; default the recipe's output_dir
    (or data/<name>). use_ray: True, Ray Data on the running Ray instance or a local one
    started with `num_cpus`; False, this machine: `num_cpus` processes (1: this process
    only) or, by default, for a build large enough to repay them, this process plus one
    per idle CPU (see IdleCpus); None, Ray Data when a Ray cluster is at hand, else this
    machine. Same bytes either way. Returns build.json's content.
    Raises DatasetBuildError (a ValueError) with a one-line message for bad inputs; then no
    output folder is left behind. reserved_identifiers (ARC): names that take the identifiers
    right after the blank one, before the build's own (see DatasetWriter).
    """
    if not isinstance(recipe, DatasetRecipe):
        recipe = load_recipe(recipe)
    if use_ray is None:
        use_ray = ray_at_hand()
    output = output_dir or recipe.resolved_output_dir
    batch = batch_size or default_batch_size(recipe)
    started = time.perf_counter()
    idle = IdleCpus()
    cpus = 1 if use_ray else max(1, num_cpus or local_cpus())
    generate = recipe.kind != "arc" and recipe.resolved_source == "generate"
    # Output folder and source files are checked before Ray starts: a bad input fails in a second.
    with DatasetWriter(output, use_identifiers=recipe.kind == "arc", overwrite=overwrite,
                       reserved_identifiers=reserved_identifiers) as writer:
        test_puzzles, extra = None, {}
        if recipe.kind == "arc":
            tasks, test_puzzles = _arc_tasks(recipe)
            seq_len, vocab = ARC_SEQ_LEN, ARC_VOCAB_SIZE
        elif not generate:
            tasks, seq_len, vocab, extra = _csv_tasks(recipe, None)
        with build_session(use_ray, num_cpus):
            if generate:
                # Generating is a parallel step of its own; its rows are small and come back here.
                # Its own batch size: one generated puzzle costs ~1-100 ms whatever num_aug is.
                wanted = recipe.generate.num_train + recipe.generate.num_test
                run_generate = functools.partial(ordered_map, batch_size=batch_size or 16, use_ray=use_ray, num_blocks=num_blocks,
                                                 processes=cpus if wanted >= POOL_MIN_GENERATED else 1)
                tasks, seq_len, vocab, extra = _csv_tasks(recipe, functools.partial(_listed, run_generate))
            processes = 1  # the main map's; generating (above) decides on its own
            if cpus > 1 and len(tasks) > batch and len(tasks) * _variants_per_group(recipe) >= POOL_MIN_VARIANTS:
                # The driver's CPU plus those idle while it read the sources; all asked for with num_cpus.
                processes = cpus if num_cpus else min(cpus, 1 + int(idle.count(cpus) + 0.5))
            writer.set_shape(seq_len=seq_len, vocab_size=vocab)
            for group in ordered_map(_call, tasks, batch_size=batch, use_ray=use_ray, num_blocks=num_blocks,
                                     processes=processes):
                writer.add(group)
        info = {
            "format_version": FORMAT_VERSION,
            "kind": recipe.kind,
            "seed": recipe.seed,
            "recipe": recipe.model_dump(mode="json"),
            "versions": _versions(),
            **extra,
        }
        info = writer.finish(info, test_puzzles)
    if log is not None:
        counts = ", ".join(
            f"{split} {c['groups']} groups / {c['puzzles']} puzzles / {c['examples']} examples" for split, c in info["counts"].items()
        )
        where = "Ray Data" if use_ray else f"{processes} processes" if processes > 1 else "this process"
        log(f"built {output}: {counts}; seq_len {seq_len}, vocab {vocab}; {time.perf_counter() - started:.1f} s on {where}; "
            f"content sha256 {info['content_sha256'][:16]}")
    return info


def _listed(run: Callable, fn: Callable, items: list) -> Iterable:
    return list(run(fn, items))


__all__ = ["build_dataset", "ordered_map", "default_batch_size", "DatasetBuildError"]
