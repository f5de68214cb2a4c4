"""How many CPUs and torch threads fit() gives each Ray Train worker, and which Ray Train
helpers it turns off on a local instance it started.

A local Ray instance that fit() starts itself is the run's alone: without a CPU count from the
user, the workers split the node's CPUs (one worker takes them all, as a plain process would).
A cluster that was already up keeps Ray's default of 1 CPU per worker (sweeps size their trials
by it). A CPU count or ray.threads_per_worker the user sets wins. The expected figures are
written out by hand; tests/test_train_ray.py runs fit() on a real local instance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from trm_ray.config import TrainConfig  # noqa: E402
from trm_ray.train.trainer import LOCAL_RAY_TRAIN_OFF, local_ray_train_env, worker_cpus  # noqa: E402


def config(tmp_path: Path, **ray_keys) -> TrainConfig:
    return TrainConfig(data_paths=[str(tmp_path / "data")], global_batch_size=24, run_name="run",
                       tracking={"wandb": False}, ray={"storage_path": str(tmp_path / "runs"), **ray_keys})


@pytest.mark.parametrize("cpus, ray_keys, expected", [
    # a local instance of this run: the node's CPUs split between the workers
    (2.0, {}, ({"CPU": 2.0}, 2)),
    (2.0, {"num_workers": 2}, ({"CPU": 1.0}, 1)),
    (16.0, {"num_workers": 3}, ({"CPU": 5.0}, 5)),
    (2.0, {"num_workers": 4}, ({"CPU": 1.0}, 1)),  # never below 1 CPU
    # the user's CPU count and threads win
    (2.0, {"resources_per_worker": {"CPU": 0.5}}, ({"CPU": 0.5}, 1)),
    (8.0, {"resources_per_worker": {"CPU": 3}}, ({"CPU": 3}, 3)),
    (2.0, {"threads_per_worker": 1}, ({"CPU": 2.0}, 1)),
    (2.0, {"resources_per_worker": {"CPU": 1}, "threads_per_worker": 4}, ({"CPU": 1}, 4)),
])
def test_a_local_instance_of_the_run_gives_workers_the_node(tmp_path, cpus, ray_keys, expected):
    assert worker_cpus(config(tmp_path, **ray_keys), node_cpus=cpus) == expected


@pytest.mark.parametrize("ray_keys, expected", [
    ({}, (None, 1)),  # Ray's default: 1 CPU per worker
    ({"num_workers": 2}, (None, 1)),
    ({"threads_per_worker": 2}, (None, 2)),
    ({"resources_per_worker": {"CPU": 2}}, ({"CPU": 2}, 2)),
    ({"resources_per_worker": {"custom": 1}}, ({"custom": 1}, 1)),
])
def test_a_running_cluster_keeps_one_cpu_per_worker(tmp_path, ray_keys, expected):
    assert worker_cpus(config(tmp_path, **ray_keys), node_cpus=None) == expected


def test_ray_train_helpers_off_unless_the_user_set_them():
    assert set(LOCAL_RAY_TRAIN_OFF) == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED"}
    assert local_ray_train_env({}) == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
    assert local_ray_train_env({"RAY_TRAIN_METRICS_ENABLED": "1", "HOME": "/x"}) == \
        {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
