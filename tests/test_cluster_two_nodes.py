"""A two-node Ray cluster simulated on this machine trains TRM with one worker on each node.

ray.cluster_utils.Cluster starts a head and one more node (1 CPU each) as child processes of
this test (its shutdown ends them; no `ray stop`). RAY_TMPDIR points at a temp dir of our own,
so the "latest cluster" address file Cluster writes never redirects other users' `ray.init()`.
`trm_ray.train.trainer.fit` then runs a 2-worker TorchTrainer (gloo) with 1 CPU per worker,
so each node can hold one worker; the test asserts from Ray's own actor table (State API) that
the two RayTrainWorker actors ran on the two distinct nodes, and that training went through:
steps were reported, evaluation ran, a checkpoint loads.
"""

from __future__ import annotations

import shutil
import socket
import tempfile

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(Cluster, attempts: int = 3):
    """The head on ports chosen just before: another process (Ray's own components pick random
    ports too) can take one in between, and the head then fails to start. End whatever of it
    did start, so no stray GCS or dashboard outlives this test, and try other ports."""
    from ray_util import ray_processes_of_this_session, wait_until_ray_is_gone

    for attempt in range(attempts):
        try:
            return Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "gcs_server_port": _free_port(), "dashboard_host": "127.0.0.1",
                "dashboard_port": _free_port(), "include_dashboard": True,
            })
        except Exception:
            for process in ray_processes_of_this_session():
                process.kill()
            wait_until_ray_is_gone()
            if attempt == attempts - 1:
                raise


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    monkeypatch = pytest.MonkeyPatch()
    # Ray's temp dir becomes <temp_dir>/ray; short, as Ray's sockets live under it.
    temp_dir = tempfile.mkdtemp(prefix="trmc-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    cluster = _start_head(Cluster)
    try:
        worker_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        yield cluster, worker_node
    finally:
        ray.shutdown()
        cluster.shutdown()
        monkeypatch.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_workers_train_one_on_each_node(two_nodes, tmp_path):
    from ray.util.state import list_actors

    from datasets_util import write_dataset
    from trm_ray.checkpoint import load_checkpoint
    from trm_ray.config import TrainConfig
    from trm_ray.train.trainer import check_inputs, fit
    from trm_ray.run_folder import read_metrics

    cluster, worker_node = two_nodes
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2 and worker_node.node_id in node_ids

    data = tmp_path / "data"
    write_dataset(data, [[2, 1], [1], [3], [1, 1], [2], [1], [1, 2], [1]], split="train")
    write_dataset(data, [[1]] * 4, split="test")
    config = check_inputs(TrainConfig(
        arch=dict(hidden_size=32, num_heads=4, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_len=2,
                  forward_dtype="float32", halt_max_steps=2),
        data_paths=[str(data)], global_batch_size=4, epochs=2, eval_interval=1, lr=3e-3, lr_warmup_steps=1,
        seed=3, run_name="two-nodes", tracking={"wandb": False},
        ray={"storage_path": str(tmp_path / "runs"), "num_workers": 2, "resources_per_worker": {"CPU": 1}},
    ))
    result = fit(config, address=cluster.address, report_every_steps=1)

    # Where Ray ran the workers: its actor table keeps finished actors with their node.
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=100,
                          raise_on_missing_output=False)
    worker_nodes = [w.node_id for w in workers]
    assert len(worker_nodes) == 2, workers
    assert set(worker_nodes) == node_ids  # one worker on each node

    records = read_metrics(result.run_dir)
    assert max(r["step"] for r in records) >= 2
    assert [r["epoch"] for r in records if r.get("eval/exact_accuracy") is not None] == [1, 2]
    assert result.last_checkpoint and load_checkpoint(result.last_checkpoint) is not None


def test_a_stale_cluster_record_is_not_a_cluster(tmp_path, monkeypatch):
    """The record of a head that was killed (not stopped) names an address no Ray process on
    this machine serves: commands start their own local instance instead of waiting for it."""
    from trm_ray.cluster import cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert cluster_address() is None  # no record
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
    assert cluster_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "10.0.0.1:6379"  # named: used as it is
