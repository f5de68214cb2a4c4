"""Helpers for the tests that start Ray: a tiny dataset for trials, and what of Ray this test
process started is still running."""

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


def tiny_sudoku4(out, num_train: int, num_test: int):
    """A generated 4x4 Sudoku dataset (no augmentation, seed 1) at `out`: the sweep, search and
    repro tests' trials learn it within a few epochs."""
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe

    recipe = load_recipe(None, {"kind": "sudoku", "source": "generate", "generate.size": 4,
                                "generate.num_train": num_train, "generate.num_test": num_test,
                                "num_aug": 0, "seed": 1})
    build_dataset(recipe, str(out), use_ray=False)
    return out
