"""Datasets at a URI, staged once per node: the local folder the loader memory-maps.

    local = resolve_data_path("s3://bucket/data/sudoku-extreme")   # ~/.cache/trm-ray/datasets/<key>
    local = resolve_data_path("data/sudoku-extreme")               # a local folder: itself

A data path may be a URI (s3://, gs://, file://, anything trm_ray.storage opens): its folder
is copied once per node into a local cache (stage_dataset), and the training loader, the eval
workers and `trm-ray data inspect` read the copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Optional, Union

from trm_ray import storage
from trm_ray.data.layout import (
    BUILD_FILE,
    IDENTIFIERS_FILE,
    METADATA_FILE,
    PENDING_FILE,
    SPLITS,
    DatasetError,
    unfinished_build,
)

PathLike = Union[str, os.PathLike]

# Small files whose content identifies a build; a change at the URI triggers a fresh copy.
_STAMP_FILES = (IDENTIFIERS_FILE, BUILD_FILE) + tuple(f"{s}/{METADATA_FILE}" for s in SPLITS)


def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """Where staged datasets live: `cache_dir`, else $TRM_RAY_CACHE/datasets, else
    ~/.cache/trm-ray/datasets."""
    return Path(cache_dir) if cache_dir is not None else storage.cache_dir() / "datasets"


def _copy_tree(uri: str, destination: str) -> None:
    """Copy the folder at `uri` to a local one (its own function so tests can count copies)."""
    storage.download_dir(uri, destination)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    # flock: held per open file, released by the kernel if the holder dies mid-copy.
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def stage_dataset(uri: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Copy the dataset at `uri` to this node's cache once and return the local folder.

    The copy goes to a temporary folder that is renamed into place when complete, under an
    fcntl lock, so the workers of a node that ask at the same time copy once and never see a
    partial folder. A later call reuses the copy while the dataset's small metadata files at
    the URI (identifiers.json, build.json, dataset.json) are unchanged, and copies afresh when
    they changed (a rebuilt dataset).
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    uri = str(uri).rstrip("/")
    try:
        filesystem, remote = storage.open_uri(uri)
        info = filesystem.get_file_info(remote)
    except (pa.ArrowException, OSError, ValueError) as error:
        message = str(error) if isinstance(error, storage.StorageError) else storage.explain(error, uri)
        raise DatasetError(f"dataset {message}") from None
    if info.type != pafs.FileType.Directory:
        raise DatasetError(f"dataset URI {uri!r} is not a folder: build the dataset there with `trm-ray data build ...`")
    marker_types = {name: filesystem.get_file_info(f"{remote}/{name}").type for name in (BUILD_FILE, PENDING_FILE)}
    unfinished = unfinished_build(uri, marker_types[BUILD_FILE] == pafs.FileType.File,
                                  marker_types[PENDING_FILE] != pafs.FileType.NotFound)
    if unfinished is not None:
        raise unfinished
    if not any(filesystem.get_file_info(f"{remote}/{s}/{METADATA_FILE}").type == pafs.FileType.File for s in SPLITS):
        raise DatasetError(f"dataset URI {uri!r} holds no train/ or test/ dataset.json: "
                           f"build it with `trm-ray data build ...`")

    stamp = hashlib.sha256(uri.encode())
    for name in _STAMP_FILES:
        path = f"{remote}/{name}"
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            with filesystem.open_input_stream(path) as stream:
                stamp.update(f"\x00{name}\x00".encode() + stream.read())
    stamp_text = stamp.hexdigest()

    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target, stamp_file = root / key, root / f"{key}.stamp"

    def current() -> bool:
        return target.is_dir() and stamp_file.is_file() and stamp_file.read_text() == stamp_text

    if current():
        return target
    with _exclusive_lock(root / f"{key}.lock"):
        if current():  # another worker of this node copied it while we waited
            return target
        temporary = root / f"{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _copy_tree(uri, str(temporary))
            stale = root / f"{key}.stale-{uuid.uuid4().hex[:8]}"
            if target.exists():
                # Workers that memory-mapped the old copy keep reading it until they close it.
                os.rename(target, stale)
            os.rename(temporary, target)
            shutil.rmtree(stale, ignore_errors=True)
            partial_stamp = root / f"{key}.stamp-{uuid.uuid4().hex[:8]}"
            partial_stamp.write_text(stamp_text)
            os.replace(partial_stamp, stamp_file)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return target


def resolve_data_path(path: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """A local folder for `path`: itself when local, the staged copy when a URI."""
    return stage_dataset(str(path), cache_dir) if storage.is_uri(path) else Path(path)
