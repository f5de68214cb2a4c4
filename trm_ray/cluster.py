"""Start or join Ray, one way for every command (data build, train, eval, sweep, quickstart).

    started = connect(address=None, num_cpus=2)    # True: we started (or joined) Ray
    ...
    if started: ray.shutdown()

    with ray_session(num_cpus=2):                  # the same, as a block
        ...

Why not a bare ray.init(): when Tune stops a trial, Ray Train's PlacementGroupCleaner actor
asks the State API whether the trial's controller is alive, and the State API finds "its"
cluster by auto-detection. With two local Ray instances on one host (two users, or a test
beside a run) that fails with "Found multiple active Ray instances", the stopped trial's
placement group is never removed and the next trial waits forever for workers. Giving every
process of our job RAY_API_SERVER_ADDRESS (local instance: a dashboard port we choose) or
RAY_ADDRESS (a named cluster) makes the lookup unambiguous.

Token file: a local ray.init() may write a new token to ~/.ray/auth_token readable by every
user; connect makes it private right after ray.init (trm_ray.auth).

The console: a local instance prints its dashboard URL once; lines a user cannot act on are
kept off the driver's console (Ray's log files under /tmp/ray/session_*/logs keep them all):
Ray's "token authentication is enabled" notice when the token file is private to the user, the
raylet's "N PYTHON worker processes have been started" (short-lived trial, controller and
cleaner actors on a small machine), Ray Train's "controller actor is dead, cleaning up
placement group" (the end of every sweep trial) and the core worker's error line about the
preemption watcher's constructor arguments (the start of every Train run).

Where: `address`, else RAY_ADDRESS, else the head of a running cluster on this machine (a `ray up`
head node; Ray's temp folder records it), else a new local instance (see cluster_address).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

# Worker and raylet lines dropped from the driver's console (substrings of one line).
CONSOLE_NOISE = (
    "PYTHON worker processes have been started on node",
    "Detected that the Ray Train controller actor",
    # Logged at every Train run's start as an error by the controller's core worker: Ray's note
    # on its own preemption watcher's restart, nothing a user can act on.
    "has constructor arguments in the object store and max_restarts > 0",
)
# Ray's notice at a local start or join with RAY_AUTH_MODE unset (see _TokenNotice).
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drop_noise(batch: dict) -> Optional[dict]:
    """A log batch as Ray hands it to the driver's console ({"lines": [...], "pid": ...}),
    without the CONSOLE_NOISE lines; None when nothing is left."""
    lines = [line for line in batch.get("lines", ()) if not any(noise in line for noise in CONSOLE_NOISE)]
    if not lines:
        return None
    return batch if len(lines) == len(batch["lines"]) else {**batch, "lines": lines}


def _filter_console() -> None:
    """Route Ray's driver-side printing of worker and raylet lines through drop_noise.

    Both the worker-log stream and the raylet's messages reach the console through
    ray._private.worker.print_to_stdstream (looked up when ray.init starts its printer), so
    it is wrapped once, before ray.init. Without that function (another Ray) nothing changes."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_trm_ray_filtered", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        kept = drop_noise(data)
        if kept is not None:
            original(kept, *args, **kwargs)

    print_to_stdstream._trm_ray_filtered = True
    worker.print_to_stdstream = print_to_stdstream


class _TokenNotice(logging.Filter):
    """Holds back Ray's "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt
    out" while Ray starts or joins an instance on this machine: the token lives in a folder only
    the user can enter (auth.secure_token_file), so there is nothing to do about it. If the file
    cannot be made private, auth prints its own line saying what to run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def cluster_address(address: Optional[str] = None) -> Optional[str]:
    """The running Ray cluster that connect(address) joins, or None: it starts a new local instance.

    `address` itself ("auto" and ray:// included), else RAY_ADDRESS, else a cluster whose head
    runs on this machine: `ray start --head` (as on a `ray up` head node, where people run
    commands after `ray attach`) records its address in Ray's temp folder, and Ray would join it
    from a bare ray.init() too. A recorded address no live Ray process on this machine uses
    (the head was killed, not stopped) is stale: None. "local" is always a new instance."""
    return _where(address)[0]


def _where(address: Optional[str]) -> tuple[Optional[str], bool]:
    """(cluster_address(address), whether it is a head found on this machine rather than named)."""
    if address == "local":
        return None, False
    named = address or os.environ.get("RAY_ADDRESS")
    if named:
        return named, False
    head = _head_on_this_machine()
    return head, head is not None


def _head_on_this_machine() -> Optional[str]:
    # Private helpers of Ray's (where its temp folder keeps the record; the GCS addresses the
    # Ray processes running here were started with): Ray is pinned to one minor series.
    from ray._common.utils import get_ray_address_file
    from ray._private.services import find_gcs_addresses

    try:
        with open(get_ray_address_file(None)) as file:
            recorded = file.read().strip()
    except OSError:
        return None
    if not recorded:
        return None
    find_gcs_addresses.cache_clear()  # it keeps a nonempty answer for the life of the process
    return recorded if recorded in find_gcs_addresses() else None


def starts_local_instance(address: Optional[str] = None) -> bool:
    """Whether connect(address) would start a new local Ray instance, which the caller then has
    to itself (no other job shares its CPUs, no node of it can be preempted)."""
    import ray

    return not ray.is_initialized() and cluster_address(address) is None


@contextmanager
def _token_notice_held_back(create_folder: bool) -> Iterator[None]:
    """Ray's notice that it turned token authentication on, held back while Ray starts or
    joins an instance when the token file is private (see _TokenNotice). create_folder: Ray may
    write a new token (a local start), so its folder is created private first."""
    from trm_ray import auth

    notice = logging.getLogger(_TOKEN_NOTICE_LOGGER)
    hold_back = _TokenNotice()
    if auth.secure_token_file(create_folder=create_folder):
        notice.addFilter(hold_back)
    try:
        yield
    finally:
        notice.removeFilter(hold_back)


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None, *, include_dashboard: bool = True,
            log_to_driver: bool = True, logging_level: str = "WARNING") -> bool:
    """ray.init: join the cluster_address(address), else start a new local instance (its
    dashboard on 127.0.0.1, URL printed once; num_cpus applies only to it). Returns True when
    this call initialized Ray (the caller shuts it down: stops the local instance or leaves the
    cluster); False when Ray was already initialized in this process (used as it is)."""
    import ray

    from trm_ray import auth

    if ray.is_initialized():
        return False
    address, found_here = _where(address)
    common = {"logging_level": logging_level, "log_to_driver": log_to_driver}
    _filter_console()
    if address and not found_here and address != "auto":
        env = {} if address.startswith("ray://") else {"RAY_ADDRESS": address}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **common)
    elif address:
        # "auto", or a head found on this machine: joined as Ray joins it from a bare
        # ray.init(). "auto" is the only way Ray turns on the token this machine holds (with
        # RAY_AUTH_MODE unset); for an address given, it never does.
        env = {} if address == "auto" else {"RAY_ADDRESS": address}
        with _token_notice_held_back(create_folder=False):
            ray.init(address="auto", runtime_env={"env_vars": env} if env else None, **common)
    else:
        # A new local instance may write a token: let it land in a folder only we can enter.
        with _token_notice_held_back(create_folder=True):
            if include_dashboard:
                port = _free_port()
                # address="local": a new instance even where Ray's temp folder records a cluster
                # (a stale record, see cluster_address); a bare ray.init() would try to join it.
                context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                                   dashboard_host="127.0.0.1", dashboard_port=port, **common,
                                   runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
                dashboard = getattr(context, "dashboard_url", None) or f"127.0.0.1:{port}"
                print(f"trm-ray: started a local Ray instance; dashboard: http://{dashboard.removeprefix('http://')}",
                      file=sys.stderr, flush=True)
            else:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)
    auth.secure_tokens()
    return True


@contextmanager
def ray_session(address: Optional[str] = None, num_cpus: Optional[int] = None, *, include_dashboard: bool = True,
                log_to_driver: bool = True, logging_level: str = "WARNING", quiet_data: bool = False
                ) -> Iterator[bool]:
    """connect() for a block: a running Ray (or the cluster_address) is used as it is; a local
    instance this call started is shut down at the end. Yields connect's answer.
    quiet_data: Ray Data's progress lines kept off the console for the block (the caller
    prints its own summary)."""
    import ray

    started = connect(address, num_cpus, include_dashboard=include_dashboard, log_to_driver=log_to_driver,
                      logging_level=logging_level)
    restore = quiet_ray_data_console(logging.WARNING) if quiet_data else (lambda: None)
    try:
        yield started
    finally:
        restore()
        if started:
            ray.shutdown()


def quiet_ray_data_console(level: int) -> Callable[[], None]:
    """Raise the console threshold of Ray Data's logger (its per-dataset progress lines on a
    non-interactive terminal) where a command prints its own summary; Ray's log files keep all.
    Returns a function that puts the previous thresholds back."""
    import ray.data  # noqa: F401  its import sets up the handlers changed here (none before it)

    previous = []
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            previous.append((handler, handler.level))
            handler.setLevel(level)

    def restore() -> None:
        for handler, old in previous:
            handler.setLevel(old)

    return restore
