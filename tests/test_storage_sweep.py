"""Sweeps whose folder is an object-store URI, against a real S3-protocol server (moto, with
authentication): sweep.json, trials.jsonl, Tune's experiment state and every trial's Train run
land in the bucket and nothing under the local working folder; `trm-ray compare s3://...`
ranks the trials from the bucket; a driver killed after one trial finished is resumed on a
"fresh machine" (no local copy of the records) without training the finished trial again; a
missing bucket or refused credentials is one line before anything starts.

What is in the bucket is read back with boto3 (tests/s3_server.py), not with the pyarrow code
under test. The dataset stays on local disk: the trials' storage is what is tested here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]

METRIC = "eval/accuracy"
BUCKET = "trm"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The working folder of every driver here: a sweep at a URI must write nothing in it
    (a recipe's default ray.storage_path, `runs`, is relative to it)."""
    path = tmp_path_factory.mktemp("cwd")
    previous = os.getcwd()
    os.chdir(path)
    yield path
    os.chdir(previous)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """TRM_RAY_CACHE of the in-process drivers (where their local copy of the records goes)."""
    path = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("TRM_RAY_CACHE")
    os.environ["TRM_RAY_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TRM_RAY_CACHE", None)
    else:
        os.environ["TRM_RAY_CACHE"] = previous


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from ray_util import tiny_sudoku4

    return tiny_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", num_train=200, num_test=64)


@pytest.fixture(scope="module")
def ray_instance(s3, workdir, cache):
    """One local Ray for the module, started after the S3 server's AWS_* variables are set, so
    that every Ray worker (trials, Train controllers and workers) inherits them."""
    import ray

    from trm_ray.cluster import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def write_sweep(folder: Path, dataset: Path, name: str, lrs: list[float], concurrent: int,
                storage_path: str | None = None, recipe_storage: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(textwrap.dedent(f"""\
        data_paths: [{dataset}]
        arch: {{hidden_size: 32, num_heads: 2, L_layers: 1, H_cycles: 1, L_cycles: 2, halt_max_steps: 2,
                puzzle_emb_ndim: 0, mlp_t: true, pos_encodings: none, forward_dtype: float32}}
        global_batch_size: 64
        epochs: 4
        eval_interval: 1
        lr_warmup_steps: 1
        lr_min_ratio: 1.0
        checkpoint: {{num_to_keep: 1}}
        tracking: {{wandb: false}}
        """) + (f"ray: {{storage_path: {recipe_storage}}}\n" if recipe_storage else ""))
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base: base.yaml
        search_space:
          lr: {{grid: {lrs}}}
        metric: {METRIC}
        mode: max
        asha: {{grace_period: 1, reduction_factor: 2, max_t: 4}}
        resources: {{workers: 1, cpus_per_worker: 0.5, trial_cpu: 0.1}}
        max_concurrent_trials: {concurrent}
        """) + (f"storage_path: {storage_path}\n" if storage_path else ""))
    return path


def remote_histories(server, prefix: str):
    """The trials as the bucket's trials.jsonl says (read with boto3)."""
    from trm_ray.tune.records import trial_histories

    key = f"{prefix}/trials.jsonl"
    if key not in server.keys(BUCKET, key):
        return {}
    records = []
    for line in server.get(BUCKET, key).decode().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return trial_histories(records)


def objects(server, prefix: str) -> dict[str, bytes]:
    return {key: server.get(BUCKET, key) for key in server.keys(BUCKET, prefix)}


# --------------------------------------------------------------------------------------------
# Bad input: one line, before anything starts
# --------------------------------------------------------------------------------------------
def test_missing_bucket_or_refused_credentials_is_one_line_and_writes_nothing(tmp_path, dataset, s3, cache,
                                                                              workdir, monkeypatch):
    from trm_ray.cli.main import main

    from trm_ray.tune.spec import load_sweep_spec

    before = s3.keys(BUCKET)
    # no sweep storage_path: the sweep folder is <recipe ray.storage_path>/sweeps/<name>
    path = write_sweep(tmp_path, dataset, "nobucket", [3e-3, 0.0], 2, recipe_storage="s3://no-such-bucket")
    assert load_sweep_spec(path).directory() == "s3://no-such-bucket/sweeps/nobucket"
    result = CliRunner().invoke(main, ["sweep", str(path)])
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1, result.output
    assert "s3://no-such-bucket" in message and "does not exist" in message and "fix the URI" in message
    assert "Traceback" not in result.output

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    path = write_sweep(tmp_path, dataset, "denied", [3e-3, 0.0], 2, storage_path=f"s3://{BUCKET}/sweeps")
    result = CliRunner().invoke(main, ["sweep", str(path)])
    monkeypatch.undo()
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1, result.output
    assert f"s3://{BUCKET}/sweeps" in message and "access denied" in message and "credentials" in message

    # the command line's --storage-path replaces the file's (overrides change the base recipe)
    args = ["sweep", str(path), "global_batch_size=32", "--storage-path", "s3://no-such-bucket/cli"]
    result = CliRunner().invoke(main, args + ["--dry-run"])
    assert result.exit_code == 0 and "-> s3://no-such-bucket/cli/denied" in result.output, result.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert "s3://no-such-bucket/cli/denied" in result.output and "does not exist" in result.output

    # nothing written: no object, no bucket, no local records, no local run folder
    assert s3.keys(BUCKET) == before
    assert [b["Name"] for b in s3._client("s3").list_buckets()["Buckets"]] == [BUCKET]
    assert not list(cache.rglob("trials.jsonl"))
    assert not (workdir / "runs").exists()


# --------------------------------------------------------------------------------------------
# The records of a sweep at a URI: a local mirror, uploaded whole after every line
# --------------------------------------------------------------------------------------------
def test_records_at_a_uri_keep_lost_uploads_and_follow_another_machine(s3, cache):
    from trm_ray.tune import records

    uri, key = f"s3://{BUCKET}/sweeps/unit", "sweeps/unit/trials.jsonl"
    records.forget_records(uri)
    records.append_record(uri, {"event": "trial", "trial_id": "a", "index": 0, "params": {"lr": 0.1}})
    records.append_record(uri, {"event": "result", "trial_id": "a", "epoch": 1, METRIC: float("nan")})
    mirror = records.mirror_path(uri)
    assert s3.get(BUCKET, key) == mirror.read_bytes() and len(mirror.read_text().splitlines()) == 2
    assert str(mirror).startswith(str(cache))

    # A driver killed after writing its line locally but before the upload, the next line cut
    # short: readers on this machine take the mirror's whole lines, the next append drops the
    # cut line and uploads everything.
    with open(mirror, "a") as handle:
        handle.write(json.dumps({"event": "complete", "trial_id": "a"}) + "\n" + '{"event": "tri')
    assert [r["event"] for r in records.read_records(uri)] == ["trial", "result", "complete"]
    records.append_record(uri, {"event": "trial", "trial_id": "b", "index": 1, "params": {"lr": 0.2}})
    uploaded = [json.loads(line) for line in s3.get(BUCKET, key).decode().splitlines()]
    assert [(r["event"], r["trial_id"]) for r in uploaded] == [("trial", "a"), ("result", "a"), ("complete", "a"),
                                                               ("trial", "b")]
    assert uploaded[1][METRIC] is None

    # Another machine continued the sweep since: the bucket's copy no longer starts with this
    # machine's mirror, so readers and the next driver here follow the bucket's.
    other = uploaded[:3] + [{"event": "trial", "trial_id": "c", "index": 1, "params": {"lr": 0.3}}]
    s3.put(BUCKET, key, "".join(json.dumps(r) + "\n" for r in other).encode())
    assert records.read_records(uri) == other
    records._reconciled.discard(uri)  # as a new driver process on this machine
    records.append_record(uri, {"event": "complete", "trial_id": "c"})
    assert [r["trial_id"] for r in records.read_records(uri)] == ["a", "a", "a", "c", "c"]
    assert s3.get(BUCKET, key) == mirror.read_bytes()
    # compare and resume on a machine without the mirror read the bucket's copy
    mirror.unlink()
    assert [r["trial_id"] for r in records.read_records(uri)] == ["a", "a", "a", "c", "c"]


# --------------------------------------------------------------------------------------------
# One sweep in the bucket, its driver killed after the first trial finished and resumed on a
# "fresh machine"; then what is in the bucket, compare from the bucket, what the resume did.
# (One sweep for all three: each trial's Ray processes take most of this module's time.)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bucket_sweep(tmp_path_factory, dataset, ray_instance, s3, workdir):
    import ray

    folder = tmp_path_factory.mktemp("bucket-sweep")
    # One trial at a time: the strong trial finishes, then the driver is killed.
    path = write_sweep(folder, dataset, "pair", [3e-3, 0.0], 1, storage_path=f"s3://{BUCKET}/sweeps")
    prefix = "sweeps/pair"
    address = ray.get_runtime_context().gcs_address
    first_cache, second_cache = folder / "machine-1", folder / "machine-2"
    env = dict(os.environ, RAY_ADDRESS=address, TRM_RAY_CACHE=str(first_cache))
    command = [sys.executable, "-m", "trm_ray.cli.main", "sweep", str(path), "--address", address]
    with open(folder / "first.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and driver.poll() is None:
                if any(h.status == "complete" for h in remote_histories(s3, prefix).values()):
                    break
                time.sleep(0.3)
            assert driver.poll() is None, (folder / "first.log").read_text()[-3000:]
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = remote_histories(s3, prefix)
    finished = [h.trial_id for h in before.values() if h.status == "complete"]
    assert len(finished) == 1 and before[finished[0]].params["lr"] == 3e-3, before
    assert list(first_cache.rglob("trials.jsonl")), "the first driver kept no local copy of the records"
    finished_run = objects(s3, f"{prefix}/train/{finished[0]}/")

    # Another machine: the first one's local copy of the records is gone.
    shutil.rmtree(first_cache)
    env["TRM_RAY_CACHE"] = str(second_cache)
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, cwd=workdir,
                             timeout=400)
    return {"prefix": prefix, "uri": f"s3://{BUCKET}/{prefix}", "resumed": resumed, "before": before,
            "finished": finished[0], "finished_run": finished_run, "cache": second_cache}


def test_sweep_at_a_uri_writes_everything_to_the_bucket(bucket_sweep, s3, workdir, monkeypatch):
    from trm_ray.tune.records import mirror_path, read_records

    resumed, prefix, uri = bucket_sweep["resumed"], bucket_sweep["prefix"], bucket_sweep["uri"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"trm-ray compare {uri}" in resumed.stdout
    keys = s3.keys(BUCKET, prefix + "/")
    assert f"{prefix}/sweep.json" in keys and f"{prefix}/trials.jsonl" in keys
    info = json.loads(s3.get(BUCKET, f"{prefix}/sweep.json"))
    assert info["name"] == "pair" and [t["params"]["lr"] for t in info["trials"]] == [3e-3, 0.0]
    # Tune's experiment state (what Tuner.restore reads) is in the bucket too
    assert f"{prefix}/tuner.pkl" in keys
    assert fnmatch.filter(keys, f"{prefix}/experiment_state-*.json")

    trials = remote_histories(s3, prefix)
    assert len(trials) == 2 and all(h.status in ("complete", "stopped") for h in trials.values())
    for trial_id in trials:
        # each trial's Train run: its checkpoints and metrics, under <sweep>/train/<trial>/
        assert fnmatch.filter(keys, f"{prefix}/train/{trial_id}/checkpoint_*/model.pt"), (trial_id, keys)
        assert s3.get(BUCKET, f"{prefix}/train/{trial_id}/metrics.jsonl").strip()
    # the (second) driver's local copy of the records is what it uploaded, and readers agree
    remote = s3.get(BUCKET, f"{prefix}/trials.jsonl").decode()
    assert read_records(uri) == [json.loads(line) for line in remote.splitlines()]
    monkeypatch.setenv("TRM_RAY_CACHE", str(bucket_sweep["cache"]))
    assert mirror_path(uri).read_text() == remote
    # nothing of the sweep under the drivers' local working folder
    assert not (workdir / "runs").exists()
    assert not list(workdir.rglob("checkpoint_*")) and not list(workdir.rglob("*.jsonl"))


def test_compare_reads_the_sweep_from_the_bucket(bucket_sweep, s3, tmp_path):
    from trm_ray.cli.main import main
    from trm_ray.config import load_train_config

    assert bucket_sweep["resumed"].returncode == 0, bucket_sweep["resumed"].stderr[-3000:]
    prefix, uri = bucket_sweep["prefix"], bucket_sweep["uri"]
    trials = remote_histories(s3, prefix)
    best = max((h for h in trials.values() if h.best(METRIC, "max")), key=lambda h: h.best(METRIC, "max")[0])
    out = CliRunner().invoke(main, ["compare", uri, "--plot", str(tmp_path / "curves.png"),
                                    "--best-config", str(tmp_path / "best.yaml")], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:4] == ["trial", "lr", "best", METRIC]
    first_row = lines[2].split()  # trial, lr, best metric, ...: the best trial first
    assert first_row[0] == best.trial_id
    assert float(first_row[2]) == pytest.approx(best.best(METRIC, "max")[0], abs=1e-4)
    assert len([line for line in lines if line.split() and line.split()[0] in trials]) == 2
    # the outputs are local files
    assert load_train_config(tmp_path / "best.yaml").lr == best.params["lr"]
    assert uri in (tmp_path / "best.yaml").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    # a URI that holds no sweep: one line naming it
    for missing in (f"s3://{BUCKET}/sweeps/none", "s3://no-such-bucket/sweeps/pair"):
        out = CliRunner().invoke(main, ["compare", missing])
        assert out.exit_code != 0
        assert len(out.output.strip().splitlines()) == 1 and missing in out.output, out.output
        assert "Traceback" not in out.output


def test_resume_on_a_fresh_machine_keeps_finished_trials(bucket_sweep, s3):
    resumed, prefix, finished = bucket_sweep["resumed"], bucket_sweep["prefix"], bucket_sweep["finished"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # the records came from the bucket (this machine had none): one trial known finished
    assert "(1 of 2 trials finished)" in resumed.stdout

    before, after = bucket_sweep["before"], remote_histories(s3, prefix)
    assert len(after) == 2 and all(h.status in ("complete", "stopped") for h in after.values())
    # the finished trial was not trained again: its Train run in the bucket is byte for byte
    # what it was (same checkpoints, no new metrics line), its records unchanged
    assert objects(s3, f"{prefix}/train/{finished}/") == bucket_sweep["finished_run"]
    assert fnmatch.filter(bucket_sweep["finished_run"], f"{prefix}/train/{finished}/checkpoint_*/model.pt")
    assert after[finished].results == before[finished].results
    # the unfinished trial ran to its end after the resume (ASHA's stop at a rung, or max_t)
    other = next(h for h in after.values() if h.trial_id != finished)
    assert other.results and other.results[-1]["decision"] == "stop"
    assert other.best(METRIC, "max")[0] < after[finished].best(METRIC, "max")[0]
