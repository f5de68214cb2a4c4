"""Where trm-ray's files live: a local path or an object-store URI, behind one small interface.

    from trm_ray import storage
    storage.write_text("s3://bucket/runs/x/config.yaml", text)     # one PUT: whole or absent
    storage.read_text("s3://bucket/runs/x/config.yaml")
    storage.upload_dir("/tmp/dataset", "s3://bucket/data/q")
    with storage.local_copy("s3://bucket/runs/x/checkpoint_0000040") as folder: ...

Every artefact that a later stage or another node reads (datasets, run folders, checkpoints,
sweep folders) may live at a URI (s3://, gs://, abfs://, file://, anything
pyarrow.fs.FileSystem.from_uri opens). Object stores differ from a disk in ways this module is
the one place to know about:
- there is no rename of a folder (S3, GCS and Azure copy object by object), so nothing here
  offers one: a folder is published by uploading its files and writing a commit marker last;
- a single object PUT is atomic (readers see the old object or the new one, never a part),
  so `write_bytes` is the way to replace a small file; appending means rewriting;
- errors come back as OSErrors with the SDK's words; `StorageError` turns the ones a user
  can fix (endpoint unreachable, bucket missing, credentials refused) into one line.

Credentials never pass through here: pyarrow's S3 client reads the standard chain itself
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, instance roles),
and the endpoint from AWS_ENDPOINT_URL (an S3-compatible server: MinIO, Ceph, a local test
server). The filesystem objects handed to Ray hold no secret, so pickling them to other nodes
carries none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

# Environment variables that say WHERE object storage is, never a secret: the driver forwards
# them to Ray workers (which may run on machines whose environment lacks them). Secrets come
# from each node's own environment or role.
ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                "AWS_EC2_METADATA_DISABLED", "TRM_RAY_FILESYSTEMS")
# "scheme=module:function,..." : filesystems every trm-ray process opens through
# `register_filesystem` (a store pyarrow has no URI scheme for, or a wrapped one); forwarded to
# Ray workers with the settings above, so the workers open the same URIs the same way.
FILESYSTEMS_ENV = "TRM_RAY_FILESYSTEMS"
# check_writable's empty object; one left behind by a lost connection means nothing.
PROBE_PREFIX = ".trm-ray-probe-"
# Variables whose values are credentials: they must never be written anywhere.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "WANDB_API_KEY", "RAY_AUTH_TOKEN",
              "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_KEY")


class StorageError(OSError):
    """A storage location that cannot be used; the message names it and says what to do."""


def is_uri(path: PathLike) -> bool:
    """A filesystem URI (s3://, gs://, file://, ...) rather than a local path."""
    return "://" in str(path)


# --------------------------------------------------------------------------------------------
# Opening a location
# --------------------------------------------------------------------------------------------
# Bytes per read/write request when copying files: object stores answer each request with a
# round trip, so large requests (what Ray's own checkpoint copies use) keep copies fast.
COPY_CHUNK = 64 << 20

# scheme -> factory(uri) -> (pyarrow filesystem, path inside it). For filesystems pyarrow cannot
# open from a URI by itself (a wrapped or custom one); registered per process.
_SCHEMES: dict[str, Callable[[str], tuple[Any, str]]] = {}


def register_filesystem(scheme: str, factory: Callable[[str], tuple[Any, str]]) -> None:
    """Open `<scheme>://...` with `factory(uri) -> (pyarrow.fs.FileSystem, path)`."""
    _SCHEMES[scheme] = factory


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def _factory(scheme: str) -> Optional[Callable[[str], tuple[Any, str]]]:
    if scheme not in _SCHEMES:
        import importlib

        for entry in filter(None, (e.strip() for e in os.environ.get(FILESYSTEMS_ENV, "").split(","))):
            name, _, target = entry.partition("=")
            if name.strip().lower() == scheme:
                module, _, function = target.strip().partition(":")
                try:
                    _SCHEMES[scheme] = getattr(importlib.import_module(module), function)
                except (ImportError, AttributeError) as error:
                    raise StorageError(f"{FILESYSTEMS_ENV}: {entry!r} cannot be loaded ({error}): "
                                       f"give scheme=module:function of an importable module") from None
    return _SCHEMES.get(scheme)


def explain(error: BaseException, location: str) -> str:
    """One line for an object-store error: what is wrong with `location` and what to do."""
    text = " ".join(str(error).split())
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f" (endpoint {endpoint})" if endpoint else ""
    lowered = text.lower()
    if ("NO_SUCH_BUCKET" in text or "NoSuchBucket" in text or "bucket does not exist" in lowered
            or ("bucket" in lowered and "not found" in lowered)):
        bucket = location.split("://", 1)[-1].split("/", 1)[0]
        return f"{location}: bucket {bucket!r} does not exist{where}: create it or fix the URI"
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
                               "INVALID_ACCESS_KEY_ID", "Forbidden", "403", "UNAUTHORIZED")):
        return (f"{location}: access denied{where}: check the credentials (AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the node's role) and the bucket's permissions")
    if any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "Couldn't connect", "Connection refused",
                               "Could not resolve host", "curlCode", "timed out")):
        return (f"{location}: cannot reach the object store{where}: check AWS_ENDPOINT_URL (or the network), "
                f"then retry")
    first = text.split(". ")[0][:300]
    return f"{location}: {first}"


def open_uri(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI; StorageError when it cannot be opened."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    uri = str(uri)
    factory = _factory(_scheme(uri))
    try:
        if factory is not None:
            return factory(uri)
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as error:
        if isinstance(error, StorageError):
            raise
        raise StorageError(explain(error, uri)) from None


def _fs(location: PathLike) -> tuple[Any, str]:
    """(filesystem, path) for a URI or a local path (pyarrow's LocalFileSystem)."""
    import pyarrow.fs as pafs

    location = str(location)
    if is_uri(location):
        return open_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


@contextlib.contextmanager
def _translated(location: str) -> Iterator[None]:
    """OSErrors of the object store become one-line StorageErrors naming `location`."""
    import pyarrow as pa

    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        raise StorageError(explain(error, location)) from None


def cache_dir() -> Path:
    """Where trm-ray keeps local copies (staged datasets, a URI sweep's records): $TRM_RAY_CACHE,
    else ~/.cache/trm-ray."""
    return Path(os.environ.get("TRM_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trm-ray"))


def join(base: PathLike, *parts: str) -> str:
    """`base/part/...` for a URI or a local path (URIs always with '/')."""
    base = str(base)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def name_of(location: PathLike) -> str:
    """The last component (a folder's or file's name)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------
def _type(location: PathLike):
    import pyarrow.fs as pafs

    filesystem, path = _fs(location)
    with _translated(str(location)):
        return filesystem.get_file_info(path).type, pafs


def exists(location: PathLike) -> bool:
    kind, pafs = _type(location)
    return kind != pafs.FileType.NotFound


def is_file(location: PathLike) -> bool:
    kind, pafs = _type(location)
    return kind == pafs.FileType.File


def is_dir(location: PathLike) -> bool:
    kind, pafs = _type(location)
    return kind == pafs.FileType.Directory


def list_files(folder: PathLike) -> list[str]:
    """Relative paths ('/'-separated) of every file under `folder`; [] when it does not exist."""
    import pyarrow.fs as pafs

    filesystem, path = _fs(folder)
    with _translated(str(folder)):
        if filesystem.get_file_info(path).type != pafs.FileType.Directory:
            return []
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    root = path.rstrip("/") + "/"
    return sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(root))


def list_dir(folder: PathLike) -> list[str]:
    """Names of the entries directly in `folder` (files and folders); [] when it does not exist."""
    import pyarrow.fs as pafs

    filesystem, path = _fs(folder)
    with _translated(str(folder)):
        if filesystem.get_file_info(path).type != pafs.FileType.Directory:
            return []
        return sorted(i.base_name for i in filesystem.get_file_info(pafs.FileSelector(path)))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def read_bytes(location: PathLike) -> bytes:
    """The whole file; FileNotFoundError when there is none."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return Path(location).expanduser().read_bytes()
    filesystem, path = _fs(location)
    with _translated(str(location)):
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"{location} does not exist")
        # One ranged GET for the whole object: a stream reads in small pieces, each a request.
        with filesystem.open_input_file(path) as handle:
            return handle.read()


def read_text(location: PathLike) -> str:
    return read_bytes(location).decode()


def write_bytes(location: PathLike, data: bytes) -> None:
    """Replace the file whole: local files through a temporary name and os.replace, objects by
    one PUT (atomic on object stores: a reader sees the old object or the new one)."""
    if not is_uri(location):
        path = Path(location).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return
    filesystem, path = _fs(location)
    with _translated(str(location)):
        if "/" in path.strip("/"):
            # object stores need no parent; a mounted or local filesystem behind a URI does
            filesystem.create_dir(path.rstrip("/").rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)


def write_text(location: PathLike, text: str) -> None:
    write_bytes(location, text.encode())


def delete_file(location: PathLike) -> None:
    """Remove a file if it is there."""
    _delete(location, lambda path: path.unlink(missing_ok=True), "delete_file")


def delete_dir(location: PathLike) -> None:
    """Remove a folder and everything under it if it is there."""
    _delete(location, lambda path: shutil.rmtree(path, ignore_errors=True), "delete_dir")


def _delete(location: PathLike, local: Callable[[Path], None], method: str) -> None:
    """`local(path)` for a local path, else the filesystem's `method`; nothing there is no error."""
    if not is_uri(location):
        local(Path(location).expanduser())
        return
    filesystem, path = _fs(location)
    with _translated(str(location)):
        try:
            getattr(filesystem, method)(path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------
def upload_dir(local_dir: PathLike, location: PathLike, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under `local_dir` to `location` (files named in `skip`, relative, are
    left out: the caller writes them last, e.g. a commit marker). Object by object: no rename.
    Returns the relative paths written."""
    import pyarrow.fs as pafs

    local_dir = Path(local_dir)
    filesystem, root = _fs(location)
    written = []
    with _translated(str(location)):
        filesystem.create_dir(root, recursive=True)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            if rel in skip:
                continue
            target = f"{root.rstrip('/')}/{rel}"
            if "/" in rel:
                filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(path), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=filesystem, chunk_size=COPY_CHUNK)
            written.append(rel)
    return written


def download_dir(location: PathLike, local_dir: PathLike) -> Path:
    """Copy the folder at `location` into `local_dir` (created); returns it."""
    import pyarrow.fs as pafs

    filesystem, root = _fs(location)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    with _translated(str(location)):
        pafs.copy_files(root, str(local_dir), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem(), use_threads=True, chunk_size=COPY_CHUNK)
    return local_dir


@contextlib.contextmanager
def local_copy(location: PathLike, *, files: Optional[tuple[str, ...]] = None) -> Iterator[Path]:
    """A local path for `location` for the duration of the block: itself when local, else a
    temporary copy (a folder, or a file together with the sibling `files` it names, such as a
    checkpoint's all_config.yaml), removed afterwards."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        yield Path(location).expanduser()
        return
    filesystem, path = _fs(location)
    with _translated(str(location)):
        kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location} does not exist")
    scratch = Path(tempfile.mkdtemp(prefix="trm-ray-fetch-"))
    try:
        if kind == pafs.FileType.Directory:
            yield download_dir(location, scratch / name_of(location))
        else:
            target = scratch / name_of(location)
            target.write_bytes(read_bytes(location))
            parent = str(location).rstrip("/").rsplit("/", 1)[0]
            for sibling in files or ():
                try:
                    (scratch / sibling).write_bytes(read_bytes(join(parent, sibling)))
                except FileNotFoundError:
                    pass
            yield target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# For Ray
# --------------------------------------------------------------------------------------------
def ray_storage(location: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for a Ray Train/Tune RunConfig: local paths as they
    are (filesystem None); URIs opened here, so Ray uses the same endpoint and the same
    one-line errors as the rest of trm-ray (and any filesystem registered above)."""
    if not is_uri(location):
        return location, None
    filesystem, path = open_uri(location)
    return path, filesystem


def check_writable(location: str) -> None:
    """Fail fast, before any Ray process starts, when `location` (a URI) cannot be written:
    a probe object is written and removed. StorageError names the location and the fix."""
    if not is_uri(location):
        return
    probe = join(location, f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(probe, b"")
        delete_file(probe)
    except StorageError as error:
        raise StorageError(str(error).replace(probe, location.rstrip("/"))) from None


def endpoint_env() -> dict[str, str]:
    """The non-secret object-store settings of this process, for Ray workers elsewhere."""
    return {k: os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)}
