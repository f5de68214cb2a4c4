"""Helpers for the tests that start Ray: what of Ray this test process started is still running."""

from __future__ import annotations

import time


def ray_processes_of_this_session() -> list:
    """Ray processes (raylet, GCS, workers, dashboard) among this process's descendants."""
    import psutil

    names = ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard")
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(n in " ".join(process.cmdline()) for n in names):
                found.append(process)
        except psutil.Error:  # ended while we looked
            pass
    return found


def wait_until_ray_is_gone(timeout_s: float = 20.0) -> list:
    """Wait for this session's Ray processes to exit after a shutdown; returns those left."""
    deadline = time.time() + timeout_s
    while ray_processes_of_this_session() and time.time() < deadline:
        time.sleep(0.5)
    return ray_processes_of_this_session()
