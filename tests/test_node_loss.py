"""Losing a whole node mid-run, on a simulated three-node cluster, with every file on a real
S3-protocol server (tests/s3_server.py).

ray.cluster_utils.Cluster starts a head and two worker nodes as child processes of this test,
after the S3 server's settings are exported, so every node's processes find the store and its
credentials in their own environment (nothing secret travels through Ray). Placement is fixed
by resources, not left to Ray's scheduler:
- each worker node has {"CPU": 1, "node_worker": 1} and the runs ask for exactly that per Train
  worker, so the two Train workers sit one on each worker node, with no CPU left beside them;
- the head has no `node_worker`: what must survive the loss stays there. Ray Train V2 pins its
  controller to the node of the process that calls fit() (a label selector on that node's id):
  the driver (attached to the head) in a plain run, the Tune trainable in a sweep, which asks
  for 2 CPUs so that only the head (2 CPUs; 1 on a worker node) can hold it. The actor table
  shows every other actor of the runs there too.
Each worker node stages the dataset into a cache of its own (TRM_RAY_CACHE, set per node), and
the lost node's cache is deleted with it: nothing on its disk is needed afterwards.

- a 2-worker run (ray.max_failures=1, a checkpoint at every evaluation) loses a worker node with
  SIGKILL after its first checkpoint reached the store; a replacement node joins; the run
  finishes: its steps continue from the last checkpoint (no restart at 0) to the full schedule,
  the lr follows the schedule across the loss, checkpoints after the loss are objects in the
  store, and a Train worker ran on the replacement node while the lost one stayed dead;
- the same for the Train run of a one-trial sweep whose folder is at an s3:// URI: the trial
  completes, its run resumed from its last stored checkpoint.
Outcomes are read back from the store (boto3 and trm_ray.storage) and Ray's actor table.
"""

from __future__ import annotations

import collections
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

from datasets_util import write_tiny_dataset  # noqa: E402
from ray_util import wait_until_ray_is_gone  # noqa: E402
from trm_ray import storage  # noqa: E402
from trm_ray.checkpoint import MODEL_FILE, TRAIN_STATE_FILE  # noqa: E402
from trm_ray.config import TrainConfig  # noqa: E402
from trm_ray.data.layout import load_metadata  # noqa: E402
from trm_ray.optim import cosine_schedule_lr, total_train_steps  # noqa: E402
from trm_ray.train.trainer import REPORT_EVERY_STEPS_ENV, check_inputs, fit  # noqa: E402
from trm_ray.run_folder import read_metrics  # noqa: E402

BUCKET = "trm"
DATA = f"s3://{BUCKET}/data/node-loss"
NODE_RESOURCE = "node_worker"
PER_WORKER = {"CPU": 1, NODE_RESOURCE: 1}
# The sweep's trainable: more CPUs than a worker node has, so only the head can hold it.
TRIAL_CPU = 2
# Long enough that a node can be lost well before the end: an evaluation and a checkpoint every
# 4 epochs (at steps 13, 26, 39, 52 of this dataset); the loss comes right after step 13 is
# stored, three evaluations and checkpoints (over 35 step reports, each a barrier) before the end.
EPOCHS, EVAL_INTERVAL = 16, 4
# Hang guards only: a 2-core machine shared with other work can be several times slower than
# an idle one (each run takes ~1-2 minutes there).
CHECKPOINT_TIMEOUT_S, RUN_TIMEOUT_S = 240, 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------
class Nodes:
    """The simulated cluster: a head, and worker nodes that can be lost and replaced."""

    def __init__(self, cluster: Any, caches: Path):
        self.cluster, self.caches = cluster, caches
        self.cache_of: dict[str, Path] = {}  # worker node id -> its dataset cache

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    @property
    def workers(self) -> list:
        return list(self.cluster.worker_nodes)

    def add_worker(self):
        cache = self.caches / f"node-{len(self.cache_of)}"
        # TRM_RAY_CACHE reaches this node's raylet and so its workers; the driver sets none,
        # so the trainer forwards none over it.
        node = self.cluster.add_node(num_cpus=1, resources={NODE_RESOURCE: 1},
                                     env_vars={"TRM_RAY_CACHE": str(cache)})
        self.cache_of[node.node_id] = cache
        return node

    def lose(self, node) -> None:
        """SIGKILL every process of the node (no goodbye to the GCS), and its disk's cache."""
        self.cluster.remove_node(node, allow_graceful=False)
        shutil.rmtree(self.cache_of[node.node_id])

    def alive(self) -> dict[str, bool]:
        return {n["NodeID"]: n["Alive"] for n in ray.nodes()}


@pytest.fixture(scope="module")
def nodes(s3, tmp_path_factory):
    """Head (2 CPUs) + 2 worker nodes, started after `s3` exported the store's settings."""
    from ray.cluster_utils import Cluster

    patch = pytest.MonkeyPatch()
    # Ray's temp dir becomes <temp_dir>/ray; short, as Ray's sockets live under it. Our own
    # folder, so the address file Cluster writes never redirects anyone else's ray.init().
    temp_dir = tempfile.mkdtemp(prefix="trmn-", dir="/tmp")
    patch.setenv("RAY_TMPDIR", temp_dir)
    patch.delenv("RAY_ADDRESS", raising=False)
    # Per-node caches come from each node's environment; one set here would reach every node.
    patch.delenv("TRM_RAY_CACHE", raising=False)
    # Every step reported: fine-grained steps in metrics.jsonl. Set before the nodes start, so
    # a sweep trial's fit() (a process on the head) reads it too.
    patch.setenv(REPORT_EVERY_STEPS_ENV, "1")
    if ray.is_initialized():
        ray.shutdown()
    clock = Clock()
    dashboard_port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": TRIAL_CPU, "gcs_server_port": _free_port(), "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port, "include_dashboard": True,  # the State API's actor table
        # A SIGKILLed node is declared dead after ~5 failed health checks 1 s apart (instead
        # of ~15 s with Ray's defaults): the run notices the loss that much sooner.
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5},
    })
    try:
        group = Nodes(cluster, tmp_path_factory.mktemp("node-caches"))
        group.add_worker()
        group.add_worker()
        cluster.wait_for_nodes()
        # The driver sits on the head (ray.init prefers the head among a host's nodes). Worker
        # logs stay in Ray's files: streaming every step's to the driver costs a 2-core
        # machine. RAY_ADDRESS lets Ray's own helpers (the State API lookups of Train's
        # placement-group cleaner) find this cluster among others on the host.
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
        assert ray.get_runtime_context().get_node_id() == group.head_id
        clock(f"cluster up: head {group.head_id[:8]}, worker nodes {[n.node_id[:8] for n in group.workers]}")
        yield group
    finally:
        clock = Clock()
        ray.shutdown()
        cluster.shutdown()
        patch.undo()
        left = wait_until_ray_is_gone(timeout_s=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
        clock("cluster shut down")
        assert not left, f"Ray processes left behind after cluster.shutdown(): {[p.cmdline()[:2] for p in left]}"


# --------------------------------------------------------------------------------------------
# Data and recipe
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory) -> Path:
    """The reference layout written by hand (tests/test_train_ray.py's tiny recipe)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("node-loss-dataset"))


@pytest.fixture(scope="module")
def remote_dataset(s3, local_dataset) -> str:
    storage.upload_dir(local_dataset, DATA)
    keys = s3.keys(BUCKET, "data/node-loss/")
    assert "data/node-loss/train/dataset.json" in keys and "data/node-loss/test/dataset.json" in keys
    return DATA


def recipe(**overrides) -> dict:
    base = dict(
        arch=dict(hidden_size=32, num_heads=4, H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_len=2,
                  forward_dtype="float32", halt_max_steps=2, halt_exploration_prob=0.0),
        data_paths=[DATA], global_batch_size=8, epochs=EPOCHS, eval_interval=EVAL_INTERVAL, lr=3e-3,
        lr_warmup_steps=2, seed=5, tracking={"wandb": False}, checkpoint={"num_to_keep": 2, "every_eval": True},
        ray={"num_workers": 2, "resources_per_worker": PER_WORKER, "max_failures": 1},
    )
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _actors(nodes: Nodes) -> list:
    from ray.util.state import list_actors

    return list_actors(address=nodes.cluster.address, detail=True, limit=10_000, raise_on_missing_output=False)


class Clock:
    """Seconds since the test started, printed as it goes (shown with a failure's output)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, what: str) -> float:
        now = time.monotonic() - self.start
        print(f"[{now:6.1f}s] {what}", flush=True)
        return now


def _in_background(work: Callable[[], Any]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # reported by the test, not lost in the thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_checkpoint(run_dir: Callable[[], str | None], thread: threading.Thread, outcome: dict,
                         clock: "Clock") -> list[dict]:
    """Poll the run's metrics.jsonl in the store until a report carrying a checkpoint is
    followed by a later step report: the checkpoint is registered, the run goes on."""
    deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
    records: list[dict] = []
    while time.monotonic() < deadline:
        assert thread.is_alive(), f"the run ended before any checkpoint: {outcome}"
        folder = run_dir()
        had_records = bool(records)
        records = read_metrics(folder) if folder else []
        if records and not had_records:
            clock(f"first report in the store: step {records[0]['step']}")
        checkpointed = [r["step"] for r in records if r.get("checkpoint")]
        if checkpointed and any("epoch" not in r and r["step"] > checkpointed[0] for r in records):
            return records
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint in the store within {CHECKPOINT_TIMEOUT_S}s; steps seen: "
                         f"{[r['step'] for r in records]}")


def _lose_a_worker_node(nodes: Nodes) -> tuple[str, str]:
    """SIGKILL the first worker node, start a replacement with the same resources."""
    lost = nodes.workers[0]
    lost_id = lost.node_id
    nodes.lose(lost)
    replacement = nodes.add_worker()
    return lost_id, replacement.node_id


def _steps_around_the_loss(records: list[dict]) -> tuple[list[int], int, int]:
    """(steps of the per-step train reports in report order, the last step reported before the
    loss, the checkpoint step the new worker group started from). The restart shows as a step
    that does not grow; when the loss came right after a checkpoint with no report between,
    the continuation is seamless and the checkpoint is that last step."""
    steps = [r["step"] for r in records if "epoch" not in r]
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    if restart is None:
        return steps, -1, -1
    last_before = steps[restart - 1]
    # every report before the restart index, eval reports included, in file order
    position = [i for i, r in enumerate(records) if "epoch" not in r][restart]
    checkpoints = [r["step"] for r in records[:position] if r.get("checkpoint")]
    return steps, last_before, max(checkpoints)


def _assert_resumed_from_the_last_checkpoint(records: list[dict], seen_checkpoint: int, evaluations: list[int],
                                             total: int) -> tuple[int, int]:
    """The run's step reports: 1..m before the loss, then c+1..total, c being the last checkpoint
    registered before the loss (c <= m). Returns (c, m); (-1, -1) when the continuation was
    seamless."""
    steps, last_before, resumed_from = _steps_around_the_loss(records)
    # Every evaluation exactly once, each with its checkpoint: those up to c before the loss
    # (every evaluation checkpoints, so none falls between c and m), the rest after it.
    assert [r["step"] for r in records if "epoch" in r] == evaluations, records
    assert [r["step"] for r in records if r.get("checkpoint")] == evaluations
    if last_before < 0:
        # seamless: the loss fell right after a checkpoint; the Train workers' count shows it happened
        assert steps == list(range(1, total + 1)), steps
        return -1, -1
    restart = steps.index(last_before) + 1
    assert steps[:restart] == list(range(1, last_before + 1)), steps  # one history up to the loss
    assert resumed_from >= seen_checkpoint > 0  # from a stored checkpoint, not from scratch
    # the first step after the loss follows the checkpoint; then every step to the end, once
    assert steps[restart:] == list(range(resumed_from + 1, total + 1)), steps
    return resumed_from, last_before


def _full_schedule(config: TrainConfig, local_dataset: Path) -> tuple[int, list[int]]:
    """(the steps a whole run takes, the steps at which it evaluates and checkpoints), from the
    loader's own walk over the local copy of the dataset: the loader drops the batches it cannot
    fill, so a run ends there, before the lr schedule's horizon (total_train_steps) when that
    is later."""
    from trm_ray.data.loader import PuzzleLoader

    loader = PuzzleLoader.from_config(config.model_copy(update={"data_paths": [str(local_dataset)]}), "train")
    meta = loader.metadata
    horizon = total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples, config.global_batch_size)
    step, evaluations = 0, []
    for _ in range(config.epochs // config.eval_interval):
        step = min(horizon, step + sum(1 for _ in loader))
        evaluations.append(step)
    return step, evaluations


def _assert_lr_follows_the_schedule(records: list[dict], config: TrainConfig, local_dataset: Path) -> None:
    meta = load_metadata(local_dataset, "train")
    horizon = total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples, config.global_batch_size)
    for record in records:
        expected = cosine_schedule_lr(record["step"], config.lr, config.lr_warmup_steps, horizon, config.lr_min_ratio)
        assert record["train/lr"] == pytest.approx(expected), record["step"]


def _assert_checkpoints_after_the_loss_are_stored(s3, prefix: str, records: list[dict], after_step: int) -> None:
    """Checkpoints the resumed run registered are objects in the store (boto3), whole."""
    keys = s3.keys(BUCKET, prefix)
    stored = {k[len(prefix):].split("/", 1)[0] for k in keys if k[len(prefix):].startswith("checkpoint_")}
    later = [r["checkpoint"] for r in records if r.get("checkpoint") and r["step"] > after_step]
    kept_later = [name for name in later if name in stored]
    assert kept_later and later[-1] in kept_later, (later, sorted(stored))  # the final one at least
    for name in kept_later:
        for file in (MODEL_FILE, "all_config.yaml", TRAIN_STATE_FILE):
            assert f"{prefix}{name}/{file}" in keys, (name, file)


def _assert_placement(nodes: Nodes, new_actors: list, lost_id: str, replacement_id: str,
                      head_classes: tuple[str, ...]) -> collections.Counter:
    """Train workers: one on each worker node before the loss, then one on the surviving node
    and one on the replacement; never on the head. Every other actor of the run (`head_classes`
    among them: the controller, the trial's trainable) on the head, so the loss took nothing
    but a worker.

    A restart attempt made while the lost node's resources were still missing can create
    workers that are never placed (no node, DEAD): they ran nowhere, so they are left out of the
    placement, but they must be dead, not waiting."""
    unplaced = [(a.class_name, a.state) for a in new_actors if a.node_id is None]
    assert all(state == "DEAD" for _, state in unplaced), unplaced
    new_actors = [a for a in new_actors if a.node_id is not None]
    workers = collections.Counter(a.node_id for a in new_actors if a.class_name == "RayTrainWorker")
    survivor = next(node_id for node_id in workers if node_id not in (lost_id, replacement_id))
    assert workers == {lost_id: 1, survivor: 2, replacement_id: 1}, workers
    assert set(head_classes) <= {a.class_name for a in new_actors}
    elsewhere = [(a.class_name, a.node_id) for a in new_actors
                 if a.class_name != "RayTrainWorker" and a.node_id != nodes.head_id]
    assert not elsewhere, elsewhere
    alive = nodes.alive()
    assert alive[lost_id] is False and alive[replacement_id] is True and alive[survivor] is True
    return workers


def _short(workers: collections.Counter) -> dict[str, int]:
    return {node_id[:8]: count for node_id, count in workers.items()}


def _others(actors: list, nodes: Nodes) -> list[str]:
    return sorted({a.class_name for a in actors if a.node_id == nodes.head_id})


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
def test_a_run_survives_losing_a_worker_node(nodes, remote_dataset, local_dataset, s3):
    clock = Clock()
    config = check_inputs(TrainConfig(**recipe(run_name="lost-node", ray={"storage_path": f"s3://{BUCKET}/runs"})))
    run_dir = f"s3://{BUCKET}/runs/lost-node"
    known = {a.actor_id for a in _actors(nodes)}

    thread, outcome = _in_background(lambda: fit(config))
    seen = _wait_for_checkpoint(lambda: run_dir, thread, outcome, clock)
    seen_checkpoint = max(r["step"] for r in seen if r.get("checkpoint"))
    lost_at = clock(f"checkpoint of step {seen_checkpoint} in the store, last step seen {seen[-1]['step']}")
    lost_id, replacement_id = _lose_a_worker_node(nodes)
    clock(f"lost worker node {lost_id[:8]}, replacement {replacement_id[:8]} joined")
    thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), "the run did not finish after the node loss"
    assert "error" not in outcome, repr(outcome.get("error"))
    result = outcome["result"]
    elapsed_s = clock("run finished")

    records = read_metrics(run_dir)
    _assert_lr_follows_the_schedule(records, config, local_dataset)
    total, evaluations = _full_schedule(config, local_dataset)
    resumed_from, last_before = _assert_resumed_from_the_last_checkpoint(records, seen_checkpoint, evaluations, total)
    assert records[-1]["epoch"] == EPOCHS and records[-1]["step"] == total == result.final["step"]
    assert result.run_dir == run_dir and result.last_checkpoint.startswith(run_dir + "/checkpoint_")
    _assert_checkpoints_after_the_loss_are_stored(s3, "runs/lost-node/", records, max(resumed_from, seen_checkpoint))

    new = [a for a in _actors(nodes) if a.actor_id not in known]
    workers = _assert_placement(nodes, new, lost_id, replacement_id, head_classes=("TrainController",))
    # the replacement staged the dataset from the store into its own cache; the lost node's is gone
    assert list((nodes.cache_of[replacement_id] / "datasets").glob("*.stamp"))
    assert not nodes.cache_of[lost_id].exists()
    print(f"\nnode loss (run): lost {lost_id[:8]} at {lost_at:.1f}s, just after the checkpoint of step "
          f"{seen_checkpoint} reached the store; steps 1..{last_before} "
          f"before the loss, then from {resumed_from + 1} to {total}; Train workers "
          f"per node {_short(workers)}; on the head {nodes.head_id[:8]}: {_others(new, nodes)}; "
          f"{elapsed_s:.1f}s in all")


def test_a_sweep_trial_survives_losing_a_worker_node(nodes, remote_dataset, local_dataset, s3, tmp_path,
                                                     monkeypatch):
    from trm_ray.tune.driver import run_sweep
    from trm_ray.tune.records import read_records, trial_histories
    from trm_ray.tune.spec import expand_trials, load_sweep_spec

    clock = Clock()
    # The driver's copy of the records (a URI sweep appends locally, then uploads); set after
    # the nodes started, so no node inherits it.
    monkeypatch.setenv("TRM_RAY_CACHE", str(tmp_path / "driver-cache"))
    (tmp_path / "base.yaml").write_text(json.dumps(recipe()))  # JSON is YAML
    (tmp_path / "lost.yaml").write_text(json.dumps({
        "name": "lost-node", "base": "base.yaml", "search_space": {"lr": {"grid": [3e-3]}},
        "metric": "eval/exact_accuracy", "mode": "max",
        "asha": {"grace_period": EVAL_INTERVAL, "max_t": EPOCHS, "enabled": False},
        "resources": {"workers": 2, "trial_cpu": TRIAL_CPU}, "max_concurrent_trials": 1,
        "storage_path": f"s3://{BUCKET}/sweeps",
    }))
    sweep = load_sweep_spec(tmp_path / "lost.yaml")
    trials = expand_trials(sweep)
    sweep_dir = f"s3://{BUCKET}/sweeps/lost-node"
    assert sweep.directory() == sweep_dir
    known = {a.actor_id for a in _actors(nodes)}
    log: list[str] = []

    def trial_run_dir() -> str | None:
        names = storage.list_dir(storage.join(sweep_dir, "train"))
        return storage.join(sweep_dir, "train", names[0]) if names else None

    thread, outcome = _in_background(lambda: run_sweep(sweep, trials, log=log.append))
    seen = _wait_for_checkpoint(trial_run_dir, thread, outcome, clock)
    seen_checkpoint = max(r["step"] for r in seen if r.get("checkpoint"))
    lost_at = clock(f"checkpoint of step {seen_checkpoint} in the store, last step seen {seen[-1]['step']}")
    lost_id, replacement_id = _lose_a_worker_node(nodes)
    clock(f"lost worker node {lost_id[:8]}, replacement {replacement_id[:8]} joined")
    thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), "the sweep did not finish after the node loss"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["result"] == sweep_dir
    elapsed_s = clock("sweep finished")

    histories = trial_histories(read_records(sweep_dir))
    assert len(histories) == 1
    (trial_id, history), = histories.items()
    assert history.status == "complete" and history.epochs_run == EPOCHS, (history.status, history.epochs_run)
    run_dir = trial_run_dir()
    assert run_dir == f"{sweep_dir}/train/{trial_id}"
    records = read_metrics(run_dir)
    config = TrainConfig(**recipe())
    _assert_lr_follows_the_schedule(records, config, local_dataset)
    total, evaluations = _full_schedule(config, local_dataset)
    resumed_from, last_before = _assert_resumed_from_the_last_checkpoint(records, seen_checkpoint, evaluations, total)
    assert records[-1]["epoch"] == EPOCHS and records[-1]["step"] == total
    _assert_checkpoints_after_the_loss_are_stored(s3, f"sweeps/lost-node/train/{trial_id}/", records,
                                                  max(resumed_from, seen_checkpoint))
    # the store's copy of the records (uploaded from the driver's) ends with the completion
    assert json.loads(s3.get(BUCKET, "sweeps/lost-node/trials.jsonl").decode().splitlines()[-1])["event"] == "complete"

    new = [a for a in _actors(nodes) if a.actor_id not in known]
    workers = _assert_placement(nodes, new, lost_id, replacement_id,
                                head_classes=("TrainController", "ImplicitFunc"))
    assert list((nodes.cache_of[replacement_id] / "datasets").glob("*.stamp"))
    assert not nodes.cache_of[lost_id].exists()
    print(f"\nnode loss (sweep trial {trial_id}): lost {lost_id[:8]} at {lost_at:.1f}s, just after the checkpoint "
          f"of step {seen_checkpoint} reached the store; steps 1..{last_before} "
          f"before the loss, then from {resumed_from + 1} to {total}; Train "
          f"workers per node {_short(workers)}; on the head {nodes.head_id[:8]}: {_others(new, nodes)}; "
          f"{elapsed_s:.1f}s in all")
