"""`trm-ray submit` / `trm-ray jobs` and trm_ray.jobs.

Fast (no Ray): address and token resolution in Ray's order, entrypoint quoting, --env, the
staged checkout (the package and its recipes; data, runs and venvs left out), one-line errors.

Against a real head (marked ray + slow): the module starts its own `ray start --head` on
127.0.0.1 with unique ports and temp dir and token auth on (a test token, not ~/.ray's), and
stops it by its own process ids (the `ray start` runs in a new session; every process of that
session or naming the temp dir, and their children, is ended; none may remain). Then:
- `trm-ray submit` runs a tiny `trm-ray train` job to SUCCEEDED, shipping this checkout; the
  logs come back through `trm-ray jobs logs`; `jobs list` and `jobs status` show it;
- without a token the CLI says in one line how to supply one; a wrong token likewise;
- `jobs stop` stops a running job.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from trm_ray.cli.main import main
from trm_ray.jobs import (
    DEFAULT_ADDRESS,
    JobError,
    command_line,
    parse_env,
    resolve_address,
    resolve_token,
    stage_checkout,
)

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


# --------------------------------------------------------------------------------------------
# Fast
# --------------------------------------------------------------------------------------------
def test_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address() == DEFAULT_ADDRESS == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265/")
    assert resolve_address() == "http://10.0.0.5:8265"
    assert resolve_address("127.0.0.1:9999") == "http://127.0.0.1:9999"  # the flag wins
    with pytest.raises(JobError, match="not a dashboard URL"):
        resolve_address("ray://10.0.0.5:10001")


def test_token_precedence_is_rays(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert resolve_token() == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-default-file\n")
    assert resolve_token() == ("from-default-file", str(tmp_path / ".ray" / "auth_token"))
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert resolve_token()[0] == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH=.*cannot be read"):
        resolve_token()  # Ray treats an unreadable named file as fatal too, never falls back


def test_command_line_quotes_words_and_keeps_one_string_as_shell():
    assert command_line(["trm-ray", "train", "x.yaml", "data_paths=[a b]"]) == "trm-ray train x.yaml 'data_paths=[a b]'"
    assert command_line(["trm-ray", "train", "ray.storage_path=$X"]) == "trm-ray train 'ray.storage_path=$X'"
    assert command_line(["trm-ray train x.yaml ray.storage_path=$X/runs"]) == "trm-ray train x.yaml ray.storage_path=$X/runs"
    with pytest.raises(JobError, match="no command"):
        command_line([])


def test_env_copies_names_from_this_shell():
    assert parse_env(["A=1", "B"], environ={"B": "secret"}) == {"A": "1", "B": "secret"}
    with pytest.raises(JobError, match="not set in this shell"):
        parse_env(["WANDB_API_KEY"], environ={})
    with pytest.raises(JobError, match="NAME or NAME=VALUE"):
        parse_env(["=x"], environ={})


def test_staged_checkout_has_the_installed_layout_without_data(tmp_path):
    checkout = tmp_path / "checkout"
    for rel in ("trm_ray/__init__.py", "trm_ray/data/loader.py", "trm_ray/cli/main.py", "trm_ray/cli/__init__.py",
                "experiments/quickstart.yaml", "data/big/all__inputs.npy", "runs/r/ckpt", ".git/HEAD",
                ".venv/bin/python", "trm_ray/__pycache__/x.pyc", "trm_ray.egg-info/PKG-INFO", "README.md"):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(rel)
    staged = stage_checkout(checkout, tmp_path / "staged")
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == ["README.md", "experiments/quickstart.yaml", "trm_ray/__init__.py", "trm_ray/cli/__init__.py",
                     "trm_ray/cli/main.py", "trm_ray/data/loader.py"]


def test_cli_errors_are_one_line(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{_free_ports(1)[0]}")  # nothing listens
    runner = CliRunner()
    result = runner.invoke(main, ["jobs", "list"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "cannot reach a Ray dashboard at http://127.0.0.1:" in result.output
    result = runner.invoke(main, ["submit", "--follow", "--no-wait", "--", "trm-ray", "--help"])
    assert result.exit_code == 2 and "exclude each other" in result.output
    result = runner.invoke(main, ["submit", "--env", "TRM_SURELY_UNSET_VAR", "--", "true"])
    assert result.exit_code == 1 and "TRM_SURELY_UNSET_VAR is not set" in result.output
    for args in (["submit", "--help"], ["jobs", "--help"], ["jobs", "logs", "--help"]):
        help_text = runner.invoke(main, args).output
        assert "Example" in help_text[help_text.rindex("--help"):]  # the help ends with an example


# --------------------------------------------------------------------------------------------
# A head of our own: `ray start --head`, stopped by its own process ids
# --------------------------------------------------------------------------------------------
def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line), from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp session
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[3]), cmdline)
    return table


def _processes_of_head(session_id: int, temp_dir: str) -> set[int]:
    """Every process of the `ray start` session we created, or naming our temp dir, and all
    their descendants. Never this process, its ancestors, pid 1 or kernel threads."""
    assert session_id > 1 and len(temp_dir) > 8
    table = _processes()
    ours = {pid for pid, (_, sid, cmd) in table.items() if sid == session_id or temp_dir in cmd}
    grown = True
    while grown:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in ours} - ours
        ours |= children
        grown = bool(children)
    protected = {1, 2, os.getpid()}
    pid = os.getpid()
    while pid in table and pid > 1:  # our ancestors (pytest's shell, ...)
        protected.add(pid)
        pid = table[pid][0]
    kernel_threads = {pid for pid, (ppid, _, cmd) in table.items() if ppid == 2 or not cmd}
    return ours - protected - kernel_threads


def _stop_head(session_id: int, temp_dir: str, timeout_s: float = 8) -> None:
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        pids = _processes_of_head(session_id, temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while _processes_of_head(session_id, temp_dir) and time.monotonic() < deadline:
            time.sleep(0.3)
        if not _processes_of_head(session_id, temp_dir):
            return
    raise AssertionError(f"processes of the test head left: {sorted(_processes_of_head(session_id, temp_dir))}")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-protected head on 127.0.0.1: yields (dashboard URL, token, folder): Ray's temp
    folder is <folder>/ray, where a process with RAY_TMPDIR=<folder> finds the head's record."""
    import tempfile

    # Short: Ray's unix sockets live under it (108-byte path limit).
    temp_dir = tempfile.mkdtemp(prefix="trmj-", dir="/tmp")
    gcs, dashboard, client, node_manager, object_manager, agent_listen, agent_grpc, metrics, runtime_env = _free_ports(9)
    token = secrets.token_hex(16)
    # Job entrypoints run `trm-ray` from PATH, as on a cluster node where it is installed.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    command = [RAY, "start", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
               "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
               "--dashboard-agent-listen-port", str(agent_listen), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
               "--min-worker-port", "0", "--max-worker-port", "0",
               "--num-cpus", "2", "--temp-dir", os.path.join(temp_dir, "ray"), "--disable-usage-stats"]
    # A new session: every Ray process it spawns (daemons, workers, job drivers) inherits it,
    # so the session id names exactly this head's processes.
    starter = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, text=True)
    session_id = starter.pid
    try:
        output, _ = starter.communicate(timeout=120)
        assert starter.returncode == 0, output[-2000:]
        yield f"http://127.0.0.1:{dashboard}", token, temp_dir
    finally:
        if starter.poll() is None:
            starter.kill()
        _stop_head(session_id, temp_dir)
        assert not _processes_of_head(session_id, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def cluster_env(head, monkeypatch, tmp_path):
    """This process as a client of the head: its address, no token anywhere (tests add one)."""
    address, token, _ = head
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return token


def _tiny_train_command(tmp_path: Path) -> list[str]:
    from datasets_util import write_dataset

    data = tmp_path / "tiny-dataset"
    write_dataset(data, [[2, 1], [1], [3], [1, 1], [2], [1]], split="train")
    write_dataset(data, [[1]] * 4, split="test")
    return ["trm-ray", "train", "experiments/quickstart.yaml",  # a recipe path relative to the shipped checkout
            f"data_paths=[{data}]", f"ray.storage_path={tmp_path / 'runs'}", "run_name=job",
            "ray.num_workers=1", "global_batch_size=4", "epochs=2", "eval_interval=1", "lr_warmup_steps=1",
            "arch.hidden_size=32", "arch.num_heads=4", "arch.L_layers=1", "arch.H_cycles=1", "arch.L_cycles=1",
            "arch.halt_max_steps=2", "tracking.wandb=false"]


FAST_TRAIN_ENV = ["--env", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1", "--env", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0",
                  "--env", "RAY_TRAIN_METRICS_ENABLED=0", "--env", "WANDB_MODE=disabled"]


@pytest.mark.ray
@pytest.mark.slow
def test_submit_runs_a_tiny_training_job_and_its_logs_come_back(cluster_env, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster_env)
    monkeypatch.chdir(ROOT)  # the default --working-dir: this checkout ships
    runner = CliRunner()
    result = runner.invoke(main, ["submit", *FAST_TRAIN_ENV, "--", *_tiny_train_command(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id}: SUCCEEDED" in result.stderr

    logs = runner.invoke(main, ["jobs", "logs", job_id])
    assert logs.exit_code == 0
    assert "run folder: " + str(tmp_path / "runs" / "job") in logs.output  # trm-ray train's own output
    assert (tmp_path / "runs" / "job" / "metrics.jsonl").is_file()  # the job trained and wrote here

    status = runner.invoke(main, ["jobs", "status", job_id])
    assert status.exit_code == 0 and status.output.startswith("SUCCEEDED")
    listing = runner.invoke(main, ["jobs", "list"])
    assert listing.exit_code == 0
    (line,) = [row for row in listing.output.splitlines() if row.startswith(job_id)]
    assert "SUCCEEDED" in line and "trm-ray train experiments/quickstart.yaml" in line


@pytest.mark.ray
@pytest.mark.slow
def test_missing_or_wrong_token_is_one_clear_line(cluster_env, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(main, ["submit", "--no-wait", "--no-working-dir", "--", "true"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "requires a token and none was found: set RAY_AUTH_TOKEN" in result.output
    assert "~/.ray/auth_token" in result.output and "RAY_AUTH_TOKEN_PATH" in result.output

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-" + cluster_env)
    result = runner.invoke(main, ["jobs", "list"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "rejected the token from RAY_AUTH_TOKEN" in result.output

    # The token file works like the variable.
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token_file = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(cluster_env)
    assert runner.invoke(main, ["jobs", "list"]).exit_code == 0


@pytest.mark.ray
@pytest.mark.slow
def test_jobs_stop_stops_a_running_job(cluster_env, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster_env)
    runner = CliRunner()
    result = runner.invoke(main, ["submit", "--no-wait", "--no-working-dir", "--", "sleep 300"])
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    stopped = runner.invoke(main, ["jobs", "stop", job_id, "--wait"])
    assert stopped.exit_code == 0 and stopped.output.strip() == f"job {job_id}: STOPPED", stopped.output
    assert runner.invoke(main, ["jobs", "status", job_id]).output.startswith("STOPPED")
    missing = runner.invoke(main, ["jobs", "status", "raysubmit_doesnotexist"])
    assert missing.exit_code == 1 and "no job 'raysubmit_doesnotexist'" in missing.output


# Run in a process that joined the head: the resources each Train worker of the head asked for.
_WORKER_RESOURCES = """
import json, ray, sys
from ray.util.state import list_actors
ray.init(address="auto", logging_level="ERROR")
actors = list_actors(address=sys.argv[1], filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                     limit=1000, raise_on_missing_output=False)
print(json.dumps([a.required_resources for a in actors]))
"""


@pytest.mark.ray
@pytest.mark.slow
def test_commands_on_the_head_node_join_it_with_the_token_this_machine_holds(head, tmp_path):
    """The head node of a `ray up` cluster, as a person logged in there finds it: `ray start
    --head` with token auth recorded the cluster in Ray's temp folder, the token is in
    ~/.ray/auth_token, nobody set RAY_ADDRESS or RAY_AUTH_MODE. `trm-ray data build` builds with
    Ray Data on that cluster and `trm-ray train` trains there, its worker asking Ray's default
    of 1 CPU (the cluster is shared, its 2 CPUs are not the run's), instead of each starting a
    local instance of its own."""
    import json

    from trm_ray.run_folder import read_metrics

    dashboard, token, temp_dir = head
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True, mode=0o700)
    (home / ".ray" / "auth_token").write_text(token)
    (home / ".ray" / "auth_token").chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(home), RAY_TMPDIR=temp_dir)
    trm_ray = [sys.executable, "-m", "trm_ray.cli.main"]

    build = subprocess.run(trm_ray + ["data", "build", "text", "--source", "generate:stories", "--num-documents", "60",
                                      "--max-sequence-length", "32", "--output-dir", str(tmp_path / "stories")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    assert "on Ray Data" in build.stdout, build.stdout

    command = _tiny_train_command(tmp_path)
    train = subprocess.run(trm_ray + command[1:], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert train.returncode == 0, (train.stdout + train.stderr)[-3000:]
    assert "started a local Ray instance" not in train.stderr
    assert read_metrics(tmp_path / "runs" / "job")[-1]["epoch"] == 2

    listed = subprocess.run([sys.executable, "-c", _WORKER_RESOURCES, dashboard], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    workers = json.loads(listed.stdout.strip().splitlines()[-1])
    # This run's worker and the submitted jobs' before it (RAY_ADDRESS: the same rule), each in
    # a placement group, where its CPU is named CPU_group_<group id>.
    cpus = [[v for k, v in resources.items() if k.startswith("CPU_group_") and k.count("_") == 2]
            for resources in workers]
    assert cpus and all(c == [1.0] for c in cpus), workers
