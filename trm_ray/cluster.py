"""Connect to Ray so that Ray's own helper actors find the same cluster (trainer, sweep, quickstart).

    started = connect(address=None, num_cpus=2)    # True: we started a local instance
    ...
    if started: ray.shutdown()

Why not a bare ray.init(): when Tune stops a trial, Ray Train's PlacementGroupCleaner actor
asks the State API whether the trial's controller is alive, and the State API finds "its"
cluster by auto-detection. With two local Ray instances on one host (two users, or a test
beside a run) that fails with "Found multiple active Ray instances", the stopped trial's
placement group is never removed and the next trial waits forever for workers. Giving every
process of our job RAY_API_SERVER_ADDRESS (local instance: a dashboard port we choose) or
RAY_ADDRESS (a named cluster) makes the lookup unambiguous.

Token file: a local ray.init() may write a new token to ~/.ray/auth_token readable by every
user; both entry points here make it private right after ray.init (trm_ray.auth).
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """ray.init for a sweep: `address` (or RAY_ADDRESS), else a new local instance.
    Returns True when this call started Ray (the caller shuts it down)."""
    import ray

    from trm_ray import auth

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    common = {"logging_level": "WARNING", "log_to_driver": True}
    if address and address not in ("auto", "local"):
        env = {} if address.startswith("ray://") else {"RAY_ADDRESS": address}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **common)
    elif address == "auto":
        ray.init(address="auto", **common)
    else:
        # A new local instance may write a token: let it land in a folder only we can enter.
        auth.secure_token_file(create_folder=True)
        port = _free_port()
        context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                           runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}, **common)
        dashboard = getattr(context, "dashboard_url", None) or f"127.0.0.1:{port}"
        print(f"trm-ray: started a local Ray instance; dashboard: http://{dashboard.removeprefix('http://')}",
              file=sys.stderr, flush=True)
    auth.secure_tokens()
    return True


def quiet_ray_data_console(level: int) -> None:
    """Raise the console threshold of Ray Data's logger (its per-dataset progress lines on a
    non-interactive terminal) where a command prints its own summary; Ray's log files keep all."""
    import logging

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)


@contextmanager
def ray_session(**init_kwargs: Any) -> Iterator[None]:
    """ray.init(**init_kwargs) for the block unless Ray is already up (a running instance, or
    the cluster RAY_ADDRESS names, is used as it is); shut down only what this call started."""
    import ray

    from trm_ray import auth

    if ray.is_initialized():
        yield
        return
    if not init_kwargs.get("address"):
        auth.secure_token_file(create_folder=True)
    ray.init(**init_kwargs)
    auth.secure_tokens()
    try:
        yield
    finally:
        ray.shutdown()
