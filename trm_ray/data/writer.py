"""Ordered, streaming writer of the reference dataset layout (docs/formats.md, trm_ray.data.layout).

Groups arrive in order, one at a time; their rows are appended to the .npy files as they
come (the header is written first with a placeholder shape and rewritten in place at the
end), so no process ever holds the whole dataset. Everything is written to a local staging
folder first; a failed build removes it. Then it is published:
- local output: the staging folder is `<output>.tmp-<id>` beside it and is renamed to
  `<output>` when complete (one atomic rename);
- URI output (s3://, gs://, ...): object stores have no folder rename, so the files are
  uploaded in place behind a commit protocol: `.trm-ray-building` first (readers refuse the
  folder from then on), then the old build's files removed, then every file but build.json,
  then build.json (the commit marker), then `.trm-ray-building` removed. A build interrupted
  at any point leaves either nothing or a folder readers refuse; running it again replaces it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import shutil
import tempfile
import threading
import uuid
from typing import Any, Optional, Sequence

import numpy as np

from trm_ray import storage
from trm_ray.data import layout
from trm_ray.data.groups import Group
from trm_ray.data.sources import DatasetBuildError

SET_NAME = "all"


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


class BackgroundWrites:
    """File writes done in order by one thread, so that the build computes the next groups
    while the disk takes these: past a few GB of unwritten pages the kernel makes a writer
    wait for the disk (a few hundred MB/s), and an ARC build at --num-aug 1000 writes 7 GB.
    The thread starts with the first write (a local pool forks its workers before that)."""

    def __init__(self, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(depth)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def write(self, file: Any, data: Any) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trm-ray-writes", daemon=True)
            self._thread.start()
        self._queue.put((file, data))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    item[0].write(item[1])
                except BaseException as error:  # noqa: BLE001 - re-raised in the build's thread
                    self._error = error

    def drain(self) -> None:
        """Wait until every queued write is done; raise the first write's error, if any."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error


class NpyAppender:
    """A .npy file written row block by row block; `close()` fixes the shape in the header.
    With `writes`, blocks are written by its thread: drain it before `close()`."""

    def __init__(self, path: str, dtype: Any, row_shape: tuple[int, ...] = (), writes: Optional[BackgroundWrites] = None):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.num_rows = 0
        self._writes = writes
        self._file = open(path, "wb")
        self._header_len = len(_npy_header(self.dtype, (0, *self.row_shape)))
        self._file.write(b"\0" * self._header_len)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.shape[1:] == self.row_shape, (rows.shape, self.row_shape)
        data = memoryview(rows).cast("B")  # the array's own bytes, no copy
        if self._writes is not None:
            self._writes.write(self._file, data)
        else:
            self._file.write(data)
        self.num_rows += rows.shape[0]

    def close(self) -> None:
        header = _npy_header(self.dtype, (self.num_rows, *self.row_shape))
        if len(header) == self._header_len:
            self._file.seek(0)
            self._file.write(header)
            self._file.close()
            return
        # The shape outgrew the placeholder's padding (numpy leaves room for 21 digits, so
        # this is theoretical): rewrite the file behind a header of the right size.
        self._file.close()
        moved = self.path + ".body"
        os.replace(self.path, moved)
        with open(moved, "rb") as src, open(self.path, "wb") as dst:
            src.seek(self._header_len)
            dst.write(header)
            shutil.copyfileobj(src, dst, 1 << 24)
        os.remove(moved)


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype of inputs/labels: the smallest that holds tokens 0..vocab_size-1: uint8 for
    every puzzle vocabulary (so their bytes stay as they were), uint16 for a text tokenizer's,
    int32 beyond (the loader turns every one into int32 rows)."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


class _SplitWriter:
    def __init__(self, directory: str, seq_len: int, vocab_size: int, writes: BackgroundWrites):
        os.makedirs(directory, exist_ok=True)
        path = lambda f: os.path.join(directory, layout.array_filename(SET_NAME, f))  # noqa: E731
        dtype = token_dtype(vocab_size)
        self.inputs = NpyAppender(path("inputs"), dtype, (seq_len,), writes)
        self.labels = NpyAppender(path("labels"), dtype, (seq_len,), writes)
        self.puzzle_identifiers = NpyAppender(path("puzzle_identifiers"), np.int32, (), writes)
        self.puzzle_indices = NpyAppender(path("puzzle_indices"), np.int32, (), writes)
        self.group_indices = NpyAppender(path("group_indices"), np.int32, (), writes)
        self.puzzle_indices.append(np.zeros(1, np.int32))
        self.group_indices.append(np.zeros(1, np.int32))
        self.num_examples = self.num_puzzles = self.num_groups = 0

    def close(self) -> None:
        for appender in (self.inputs, self.labels, self.puzzle_identifiers, self.puzzle_indices, self.group_indices):
            appender.close()


class DatasetWriter:
    """Use as a context manager: on an exception nothing is left behind.

        with DatasetWriter(out, use_identifiers=False) as w:
            w.set_shape(seq_len=81, vocab_size=11)
            for group in groups: w.add(group)
            w.finish(build_info)
    """

    def __init__(self, output: str, *, use_identifiers: bool, overwrite: bool = False,
                 reserved_identifiers: Sequence[str] = ()):
        """reserved_identifiers: names that take identifiers 1..len (after the blank) before the
        build's own puzzles, e.g. the puzzle table of a checkpoint that will train on this
        dataset (trm_ray.posttrain): a puzzle whose name is reserved keeps that row."""
        output = os.fspath(output)  # a Path or a str; URIs stay strings
        self.output = output
        self.seq_len: Optional[int] = None
        self.vocab_size: Optional[int] = None
        self.use_identifiers = use_identifiers
        self.overwrite = overwrite
        self._identifiers: dict[str, int] = {layout.BLANK_IDENTIFIER: 0}
        for name in reserved_identifiers:
            self._identifiers.setdefault(name, len(self._identifiers))
        self._splits: dict[str, _SplitWriter] = {}
        self._writes = BackgroundWrites()
        suffix = f".tmp-{uuid.uuid4().hex[:8]}"
        self._remote = layout.is_uri(output)
        self._published_any = False
        if self._remote:
            self.output = output.rstrip("/")
            try:
                self._check_free_remote()
                storage.check_writable(self.output)  # before any work: bucket, credentials, endpoint
            except storage.StorageError as error:
                raise DatasetBuildError(f"output {error}") from None
            self.staging = tempfile.mkdtemp(prefix="trm-ray-build-")
        else:
            self._check_free(os.path.exists(output))
            parent = os.path.dirname(os.path.abspath(output))
            os.makedirs(parent, exist_ok=True)
            self.staging = os.path.abspath(output).rstrip("/") + suffix
            os.makedirs(self.staging)

    def _check_free(self, exists: bool) -> None:
        if exists and not self.overwrite:
            raise DatasetBuildError(f"output {self.output!r} already exists: pass --overwrite or choose another --output-dir")

    def _check_free_remote(self) -> None:
        """A folder at the URI blocks the build unless --overwrite, or unless it is one of our
        own unfinished builds (re-running a failed build is how it gets replaced)."""
        entries = [e for e in storage.list_dir(self.output) if not e.startswith(storage.PROBE_PREFIX)]
        if not entries:
            return
        unfinished = layout.PENDING_FILE in entries and layout.BUILD_FILE not in entries
        self._check_free(not unfinished)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        try:
            self._writes.drain()
        except BaseException:  # noqa: BLE001 - the build failed already; its error is the one to show
            pass
        for split in self._splits.values():
            for appender in (split.inputs, split.labels, split.puzzle_identifiers, split.puzzle_indices, split.group_indices):
                if not appender._file.closed:
                    appender._file.close()
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._remote and self._published_any:
            # Take the partial upload away. If that fails too (the store went away), the
            # .trm-ray-building marker written first stays, and readers refuse the folder.
            try:
                for rel in storage.list_files(self.output):
                    if rel != layout.PENDING_FILE:
                        storage.delete_file(storage.join(self.output, rel))
                storage.delete_file(storage.join(self.output, layout.PENDING_FILE))
            except OSError:
                pass

    def set_shape(self, seq_len: int, vocab_size: int) -> None:
        """S and V of the dataset; before the first `add`."""
        self.seq_len, self.vocab_size = seq_len, vocab_size

    # -- rows ---------------------------------------------------------------------------------
    def add(self, group: Group) -> None:
        """Append one group; its splits' puzzles get identifiers in order of first appearance."""
        if group.error:
            raise DatasetBuildError(group.error)
        for split in sorted(group.parts, key=layout.SPLITS.index):  # train first, as the reference numbers them
            part = group.parts[split]
            writer = self._split_writer(split)
            if self.use_identifiers:
                ids = self._identify(part.names)
            else:
                ids = [0] * len(part.names)
            writer.inputs.append(part.inputs)
            writer.labels.append(part.labels)
            writer.puzzle_identifiers.append(np.array(ids, np.int32))
            writer.puzzle_indices.append(writer.num_examples + np.cumsum(part.puzzle_sizes, dtype=np.int64).astype(np.int32))
            writer.num_examples += int(sum(part.puzzle_sizes))
            writer.num_puzzles += len(part.names)
            writer.num_groups += 1
            writer.group_indices.append(np.array([writer.num_puzzles], np.int32))

    def add_examples(self, split: str, inputs: np.ndarray, labels: np.ndarray) -> None:
        """Append n groups of one puzzle of one example each, with the blank identifier: the same
        bytes as n `add` calls (a text dataset's windows; millions of them for a large corpus)."""
        writer, n = self._split_writer(split), inputs.shape[0]
        steps = np.arange(1, n + 1, dtype=np.int64)
        writer.inputs.append(inputs)
        writer.labels.append(labels)
        writer.puzzle_identifiers.append(np.zeros(n, np.int32))
        writer.puzzle_indices.append((writer.num_examples + steps).astype(np.int32))
        writer.group_indices.append((writer.num_puzzles + steps).astype(np.int32))
        writer.num_examples += n
        writer.num_puzzles += n
        writer.num_groups += n

    def _split_writer(self, split: str) -> _SplitWriter:
        """The files of `split`, opened on its first rows."""
        if split not in self._splits:
            self._splits[split] = _SplitWriter(os.path.join(self.staging, split), self.seq_len, self.vocab_size,
                                               self._writes)
        return self._splits[split]

    def _identify(self, names: list[str]) -> list[int]:
        """Identifiers of `names`, new names numbered on in order of first appearance (dict and
        map calls instead of a Python loop: an ARC build has a million names)."""
        table = self._identifiers
        new = [name for name in dict.fromkeys(names) if name not in table]
        table.update(zip(new, range(len(table), len(table) + len(new))))
        return list(map(table.__getitem__, names))

    # -- finish -------------------------------------------------------------------------------
    def finish(self, build_info: dict[str, Any], test_puzzles: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Write metadata, identifiers, build.json; publish under the final name. Returns build.json."""
        if "train" not in self._splits:
            raise DatasetBuildError("the build produced no train puzzles: check the source and filters")
        self._writes.drain()
        counts = {}
        for split, writer in self._splits.items():
            writer.close()
            metadata = layout.DatasetMetadata(
                pad_id=0,
                ignore_label_id=0,
                blank_identifier_id=0,
                vocab_size=self.vocab_size,
                seq_len=self.seq_len,
                num_puzzle_identifiers=len(self._identifiers),
                total_groups=writer.num_groups,
                mean_puzzle_examples=writer.num_examples / max(1, writer.num_puzzles),
                total_puzzles=writer.num_puzzles,
                sets=[SET_NAME],
            )
            layout.write_metadata(self.staging, split, metadata)
            counts[split] = {"groups": writer.num_groups, "puzzles": writer.num_puzzles, "examples": writer.num_examples}
        names = sorted(self._identifiers, key=self._identifiers.__getitem__)
        with open(os.path.join(self.staging, layout.IDENTIFIERS_FILE), "w") as f:
            f.write(json.dumps(names))  # dumps, not dump: the same text from the C encoder
        if test_puzzles is not None:
            with open(os.path.join(self.staging, layout.TEST_PUZZLES_FILE), "w") as f:
                f.write(json.dumps(test_puzzles))
        files = content_hashes(self.staging)
        info = dict(build_info)
        info["counts"] = counts
        info["num_puzzle_identifiers"] = len(self._identifiers)
        info["files"] = files
        info["content_sha256"] = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()
        with open(os.path.join(self.staging, layout.BUILD_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        self._publish()
        return info

    def _publish(self) -> None:
        if not self._remote:
            if os.path.exists(self.output):  # --overwrite: swap, then drop the old one
                old = self.staging + ".old"
                os.replace(self.output, old)
                os.replace(self.staging, self.output)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.staging, self.output)
            return
        try:
            self._publish_remote()
        except storage.StorageError as error:
            raise DatasetBuildError(f"publishing to {error}") from None
        shutil.rmtree(self.staging, ignore_errors=True)

    def _publish_remote(self) -> None:
        """The commit protocol of the module docstring; each step is one object PUT or DELETE."""
        pending = storage.join(self.output, layout.PENDING_FILE)
        self._published_any = True
        storage.write_text(pending, json.dumps({"building": os.path.basename(self.staging), "pid": os.getpid()}))
        # An old build stops being complete before any of its files change.
        storage.delete_file(storage.join(self.output, layout.BUILD_FILE))
        for rel in storage.list_files(self.output):
            if rel != layout.PENDING_FILE:
                storage.delete_file(storage.join(self.output, rel))
        storage.upload_dir(self.staging, self.output, skip=(layout.BUILD_FILE,))
        storage.write_bytes(storage.join(self.output, layout.BUILD_FILE),
                            open(os.path.join(self.staging, layout.BUILD_FILE), "rb").read())
        storage.delete_file(pending)


def content_hashes(directory: str) -> dict[str, str]:
    """sha256 of every data file under `directory` (build.json excluded), by relative path.

    Files are hashed side by side in threads (hashlib lets go of the GIL), largest first: an
    ARC build's inputs and labels are most of its bytes."""
    from concurrent.futures import ThreadPoolExecutor

    paths = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if rel != layout.BUILD_FILE:
                paths[rel] = path
    order = sorted(paths, key=lambda rel: -os.path.getsize(paths[rel]))
    with ThreadPoolExecutor(max(1, min(len(order), os.cpu_count() or 1))) as pool:
        digests = dict(zip(order, pool.map(lambda rel: _file_sha256(paths[rel]), order)))
    return dict(sorted(digests.items()))


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
