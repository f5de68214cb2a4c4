"""Datasets on object storage, against a real S3-protocol server (tests/s3_server.py).

- the README's `trm-ray data build ... --output-dir s3://...` (in-process and on Ray) publishes
  every file, checked object by object with boto3 against build.json's hashes, and the two
  paths publish the same bytes;
- build.json (the commit marker) is the last object written; `.trm-ray-building` the first;
- a build cut off after any number of writes, with the store gone so nothing can be cleaned
  up, is refused by every reader, and running the build again replaces it;
- --overwrite replaces a dataset whole (a stale object of the old one does not survive);
- a filesystem without folder rename (fs_wrappers.norename) publishes and stages the same way;
- bad input (missing bucket, wrong credentials, unreachable endpoint, half-published folder):
  one line naming it, non-zero exit, nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import fs_wrappers
from s3_server import refused_endpoint
from trm_ray import storage
from trm_ray.cli.main import main
from trm_ray.data.layout import BUILD_FILE, PENDING_FILE, DatasetError
from trm_ray.data.loader import PuzzleLoader
from trm_ray.data.staging import stage_dataset

pytestmark = pytest.mark.slow

README_RECIPE = "datasets/sudoku-4x4-quickstart.yaml"
# A small generated Sudoku build (~1 s): the same writer and publish path as any dataset.
SMALL = ["sudoku", "--source", "generate", "--size", "4", "--num-train", "12", "--num-test", "4",
         "--min-clues", "5", "--max-clues", "9", "--num-aug", "1", "--no-ray"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def run_in_new_process(*args: str, env: dict[str, str]):
    """`trm-ray ARGS` in a new process with `env` added; what CliRunner's result offers."""
    import subprocess
    import sys
    from types import SimpleNamespace

    done = subprocess.run([sys.executable, "-c", "from trm_ray.cli.main import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    return SimpleNamespace(exit_code=done.returncode, output=done.stdout + done.stderr)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def published_correctly(server, bucket: str, prefix: str) -> dict:
    """Every file build.json lists is an object with that sha256 (read with boto3), nothing else
    is there, and no build is pending. Returns build.json."""
    keys = [k for k in server.keys(bucket, prefix + "/") if not k.endswith("/")]
    info = json.loads(server.get(bucket, f"{prefix}/{BUILD_FILE}"))
    assert f"{prefix}/{PENDING_FILE}" not in keys
    assert sorted(keys) == sorted([f"{prefix}/{BUILD_FILE}"] + [f"{prefix}/{rel}" for rel in info["files"]])
    for rel, digest in info["files"].items():
        assert hashlib.sha256(server.get(bucket, f"{prefix}/{rel}")).hexdigest() == digest, rel
    return info


@pytest.fixture(autouse=True)
def _clean_wrappers():
    fs_wrappers.OPERATIONS.clear()
    fs_wrappers.FAIL_AFTER_WRITES = None
    storage.register_filesystem("recs3", fs_wrappers.recording_s3)
    storage.register_filesystem("norename", fs_wrappers.norename)
    yield
    fs_wrappers.FAIL_AFTER_WRITES = None


def test_readme_build_in_process_publishes_every_file(s3, tmp_path):
    result = run("data", "build", README_RECIPE, "--output-dir", "s3://trm/data/q", "--no-ray")
    assert result.exit_code == 0, result.output
    info = published_correctly(s3, "trm", "data/q")
    assert info["counts"]["train"]["groups"] == 1000 and info["counts"]["test"]["groups"] == 200
    # the loader stages it and reads the same rows boto3 sees
    local = stage_dataset("s3://trm/data/q", cache_dir=tmp_path / "cache")
    inputs = np.load(local / "train" / "all__inputs.npy")
    with open(tmp_path / "inputs.npy", "wb") as f:
        f.write(s3.get("trm", "data/q/train/all__inputs.npy"))
    assert np.array_equal(inputs, np.load(tmp_path / "inputs.npy"))
    inspected = run("data", "inspect", "s3://trm/data/q")
    assert inspected.exit_code == 0 and "1000 groups, 8000 puzzles" in inspected.output, inspected.output


@pytest.mark.ray
def test_readme_build_on_ray_publishes_the_same_bytes(s3):
    result = run("data", "build", README_RECIPE, "--output-dir", "s3://trm/data/q-ray", "--num-cpus", "2", "--ray")
    assert result.exit_code == 0, result.output
    on_ray = published_correctly(s3, "trm", "data/q-ray")
    if not s3.keys("trm", "data/q/"):  # run alone: build the in-process one here
        assert run("data", "build", README_RECIPE, "--output-dir", "s3://trm/data/q", "--no-ray").exit_code == 0
    in_process = published_correctly(s3, "trm", "data/q")
    assert on_ray["content_sha256"] == in_process["content_sha256"]
    assert on_ray["files"] == in_process["files"]


def test_commit_marker_is_written_last(s3):
    result = run("data", "build", *SMALL, "--output-dir", "recs3://trm/data/order")
    assert result.exit_code == 0, result.output
    ops = [(kind, path.removeprefix("trm/data/order/")) for kind, path in fs_wrappers.OPERATIONS]
    # the write probe comes and goes first; then the pending marker, the files, build.json
    assert ops[0][0] == "write" and ops[0][1].startswith(".trm-ray-probe-") and ops[1] == ("delete", ops[0][1])
    publish = ops[2:]
    assert publish[0] == ("write", PENDING_FILE)
    assert publish[-2:] == [("write", BUILD_FILE), ("delete", PENDING_FILE)]
    data_writes = {p for k, p in publish[1:-2] if k == "write"}
    info = published_correctly(s3, "trm", "data/order")
    assert data_writes == set(info["files"])


def test_interrupted_build_is_refused_everywhere_then_replaced(s3, tmp_path):
    clean = run("data", "build", *SMALL, "--output-dir", "s3://trm/data/clean")
    assert clean.exit_code == 0, clean.output
    expected = published_correctly(s3, "trm", "data/clean")
    writes = 2 + len(expected["files"]) + 1  # probe, pending marker, the files, build.json
    for cut in range(1, writes):
        fs_wrappers.OPERATIONS.clear()
        fs_wrappers.FAIL_AFTER_WRITES = cut
        target = f"recs3://trm/data/cut{cut}"
        failed = run("data", "build", *SMALL, "--output-dir", target)
        assert failed.exit_code != 0, (cut, failed.output)
        assert len(failed.output.strip().splitlines()) == 1, failed.output
        fs_wrappers.FAIL_AFTER_WRITES = None
        left = [k for k in s3.keys("trm", f"data/cut{cut}/") if not k.endswith("/")]
        if not left:
            continue  # nothing visible at all: fine
        assert f"data/cut{cut}/{BUILD_FILE}" not in left, (cut, left)
        uri = f"s3://trm/data/cut{cut}"
        # cut before the pending marker: only the write probe is there, which is no dataset
        why = "did not finish" if f"data/cut{cut}/{PENDING_FILE}" in left else "no train/ or test/"
        with pytest.raises(DatasetError, match=why):
            stage_dataset(uri, cache_dir=tmp_path / f"cache{cut}")
        assert_one_line_error(run("data", "inspect", uri), uri, why)
        assert_one_line_error(run("eval", "--checkpoint", str(tmp_path / "none"), "--dataset", uri))
        # the same build again (no --overwrite needed) replaces it
        again = run("data", "build", *SMALL, "--output-dir", uri)
        assert again.exit_code == 0, (cut, again.output)
        assert published_correctly(s3, "trm", f"data/cut{cut}")["files"] == expected["files"]


def test_overwrite_replaces_the_whole_dataset(s3):
    assert run("data", "build", *SMALL, "--output-dir", "s3://trm/data/over").exit_code == 0
    s3.put("trm", "data/over/train/stale.npy", b"old")
    refused = run("data", "build", *SMALL, "--output-dir", "s3://trm/data/over")
    assert_one_line_error(refused, "already exists", "--overwrite")
    replaced = run("data", "build", *SMALL, "--seed", "3", "--output-dir", "s3://trm/data/over", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    info = published_correctly(s3, "trm", "data/over")  # the stale object is gone
    assert info["seed"] == 3


def test_filesystem_without_folder_rename(tmp_path, monkeypatch):
    filesystem, path = fs_wrappers.norename(f"norename://{tmp_path}/probe")
    filesystem.create_dir(f"{tmp_path}/probe/a")
    with pytest.raises(OSError, match="cannot be renamed"):
        filesystem.move(f"{tmp_path}/probe", f"{tmp_path}/probe2")  # the wrapper really refuses
    monkeypatch.setenv(storage.FILESYSTEMS_ENV, "norename=fs_wrappers:norename")
    uri = f"norename://{tmp_path}/data/nr"
    for flags in ([], ["--overwrite"]):
        result = run("data", "build", *SMALL, "--output-dir", uri, *flags)
        assert result.exit_code == 0, result.output
    local = stage_dataset(uri, cache_dir=tmp_path / "cache")
    assert (local / BUILD_FILE).is_file() and not (local / PENDING_FILE).exists()
    loader = PuzzleLoader([str(local)], "train", global_batch_size=4, rank=0, world_size=1, seed=0)
    assert next(iter(loader)).batch["inputs"].shape == (4, 16)
    assert not any(name.startswith(("nr.", ".")) for name in os.listdir(tmp_path / "data")), os.listdir(tmp_path / "data")


def test_bad_storage_is_one_line_and_writes_nothing(s3, monkeypatch):
    missing = run("data", "build", *SMALL, "--output-dir", "s3://no-such-bucket/data/x")
    assert_one_line_error(missing, "s3://no-such-bucket/data/x", "does not exist")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    denied = run("data", "build", *SMALL, "--output-dir", "s3://trm/data/denied")
    assert_one_line_error(denied, "s3://trm/data/denied", "access denied")
    assert "not-the-secret" not in denied.output
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    assert s3.keys("trm", "data/denied") == []

    # In a process of its own: this one's S3 client has just been refused with a wrong secret,
    # and once (1 clean-clone run in 2) a later client here answered "access denied" for the
    # refused endpoint too, as if the AWS SDK had kept that endpoint or credential.
    with refused_endpoint() as endpoint:
        unreachable = run_in_new_process("data", "build", *SMALL, "--output-dir", "s3://trm/data/unreachable",
                                         env={"AWS_ENDPOINT_URL": endpoint})
    assert_one_line_error(unreachable, "s3://trm/data/unreachable", "cannot reach")
    assert s3.keys("trm", "data/unreachable") == []


def test_half_published_dataset_is_refused(s3, tmp_path):
    assert run("data", "build", *SMALL, "--output-dir", "s3://trm/data/whole").exit_code == 0
    for key in s3.keys("trm", "data/whole/"):  # the state of a build killed before its marker
        if not key.endswith(BUILD_FILE) and not key.endswith("/"):
            s3.put("trm", key.replace("data/whole/", "data/half/"), s3.get("trm", key))
    s3.put("trm", f"data/half/{PENDING_FILE}", b"{}")
    assert_one_line_error(run("data", "inspect", "s3://trm/data/half"), "s3://trm/data/half", "did not finish")
    with pytest.raises(DatasetError, match="did not finish"):
        stage_dataset("s3://trm/data/half", cache_dir=tmp_path / "cache")
    # the same files on local disk (a copied folder) are refused the same way
    local = storage.download_dir("s3://trm/data/half", tmp_path / "half")
    with pytest.raises(DatasetError, match="did not finish"):
        PuzzleLoader([str(local)], "train", global_batch_size=4, rank=0, world_size=1, seed=0)
