"""pyarrow filesystems for tests that behave like object stores, or watch what is done to one.

- `norename:///abs/path`: the local disk without folder rename: `move` of a folder raises, as
  it does on S3, GCS and Azure (objects are copied one by one there). Code that publishes
  through it cannot be relying on a folder rename.
- `recs3://bucket/key`: the real S3 store named by AWS_ENDPOINT_URL, with every write and delete
  recorded in order (`OPERATIONS`), and, when `FAIL_AFTER_WRITES` is set, every change from the
  N+1-th write on fails, deletes included, as a network drop or a killed process leaves it.

They are opened through trm_ray.storage's registry: `storage.register_filesystem` in this
process, or `TRM_RAY_FILESYSTEMS=norename=fs_wrappers:norename` for every process (Ray workers,
with this folder on PYTHONPATH).
"""

from __future__ import annotations

from typing import Optional

import pyarrow.fs as pafs

OPERATIONS: list[tuple[str, str]] = []  # ("write" | "delete" | "delete_dir", path)
FAIL_AFTER_WRITES: Optional[int] = None


class FolderRenameRefused(OSError):
    pass


class _Wrapped(pafs.FileSystemHandler):
    def __init__(self, base: pafs.FileSystem, name: str):
        self.base, self.name = base, name

    def __eq__(self, other):
        return isinstance(other, _Wrapped) and other.name == self.name

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return self.name

    def normalize_path(self, path):
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(selector)

    def _written(self, kind: str, path: str) -> None:
        # Once the limit is reached every later change fails too, deletes included: the store
        # is gone for this process, so nothing can be cleaned up (as after a kill or an outage).
        if FAIL_AFTER_WRITES is not None and sum(1 for k, _ in OPERATIONS if k == "write") >= FAIL_AFTER_WRITES:
            raise OSError(f"injected failure: the store is unreachable ({kind} {path})")
        OPERATIONS.append((kind, path))

    def create_dir(self, path, recursive):
        self.base.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._written("delete_dir", path)
        self.base.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._written("delete_dir", path)
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to empty the root")

    def delete_file(self, path):
        self._written("delete", path)
        self.base.delete_file(path)

    def move(self, src, dest):
        if self.base.get_file_info(src).type == pafs.FileType.Directory:
            raise FolderRenameRefused(f"{self.name}: folders cannot be renamed here ({src} -> {dest})")
        self._written("write", dest)
        self.base.move(src, dest)

    def copy_file(self, src, dest):
        self._written("write", dest)
        self.base.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.base.open_input_stream(path)

    def open_input_file(self, path):
        return self.base.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._written("write", path)
        return self.base.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        # Object stores cannot append; neither can this.
        raise OSError(f"{self.name}: append is not supported ({path})")


def norename(uri: str) -> tuple[pafs.FileSystem, str]:
    path = uri.split("://", 1)[1]
    return pafs.PyFileSystem(_Wrapped(pafs.LocalFileSystem(), "norename")), path


def recording_s3(uri: str) -> tuple[pafs.FileSystem, str]:
    filesystem, path = pafs.FileSystem.from_uri("s3://" + uri.split("://", 1)[1])
    return pafs.PyFileSystem(_Wrapped(filesystem, "recs3")), path
