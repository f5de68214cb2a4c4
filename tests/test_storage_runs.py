"""Runs whose folder is an object-store URI, against a real S3-protocol server (tests/s3_server.py).

- `trm-ray train ... ray.storage_path=s3://trm/runs` writes config.yaml, metrics.jsonl and the
  checkpoints to the store (nothing to the local disk) and prints the run's URIs;
- a run that died continues with `trm-ray train --resume s3://trm/runs/NAME`: the step and the
  lr schedule go on from the stored checkpoint;
- `trm-ray eval --checkpoint s3://...` (dataset and outdir at URIs too) scores exactly as a
  local copy of the checkpoint; `trm_ray.load_checkpoint("s3://...")` (folder or reference file)
  and `load_checkpoint=` weights are those of the local copy;
- a missing bucket, refused credentials, an unreachable endpoint, a missing run or checkpoint
  are one-line errors before any Ray process starts, and nothing is written;
- read_metrics skips a torn line of metrics.jsonl, local or at a URI.
Every outcome is read back with boto3 (the server's helpers), independently of pyarrow.
"""

from __future__ import annotations

import json
import re
import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from datasets_util import write_tiny_dataset  # noqa: E402
from ray_util import wait_until_ray_is_gone  # noqa: E402
from s3_server import refused_endpoint  # noqa: E402
from trm_ray import storage  # noqa: E402
from trm_ray.checkpoint import MODEL_FILE, TRAIN_STATE_FILE, load_checkpoint, read_state_dict  # noqa: E402
from trm_ray.cli.main import main  # noqa: E402
from trm_ray.config import ConfigError, TrainConfig  # noqa: E402
from trm_ray.data.layout import load_metadata  # noqa: E402
from trm_ray.inference import predict  # noqa: E402
from trm_ray.optim import cosine_schedule_lr, total_train_steps  # noqa: E402
from trm_ray.train.loop import FAULT_ENV  # noqa: E402
from trm_ray.train.trainer import REPORT_EVERY_STEPS_ENV, check_inputs  # noqa: E402
from trm_ray.run_folder import read_metrics  # noqa: E402

BUCKET = "trm"
DATA = f"s3://{BUCKET}/data/tiny"


@pytest.fixture(scope="module", autouse=True)
def dataset_cache(tmp_path_factory):
    """Staged copies of dataset URIs go to a folder of this module, not to ~/.cache
    (the workers get it too: the trainer forwards TRM_RAY_CACHE)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRM_RAY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def local_ray(s3):
    # Started after the S3 server's settings are exported, so Ray's workers inherit them.
    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
    assert not wait_until_ray_is_gone(), "Ray processes left behind after ray.shutdown()"


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory) -> Path:
    """The reference layout written by hand (tests/test_train_ray.py's tiny recipe)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny-dataset"))


@pytest.fixture(scope="module")
def remote_dataset(s3, local_dataset) -> str:
    storage.upload_dir(local_dataset, DATA)
    assert "data/tiny/train/dataset.json" in s3.keys(BUCKET, "data/tiny/")
    return DATA


def recipe_dict(**overrides) -> dict:
    base = dict(
        arch=dict(hidden_size=32, num_heads=4, H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_len=2,
                  forward_dtype="float32", halt_max_steps=2, halt_exploration_prob=0.0),
        data_paths=[DATA], global_batch_size=8, epochs=4, eval_interval=2, lr=3e-3, lr_warmup_steps=2, seed=5,
        tracking={"wandb": False}, ray={"storage_path": f"s3://{BUCKET}/runs", "num_workers": 1},
    )
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def write_recipe(folder: Path, **overrides) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(json.dumps(recipe_dict(**overrides)))  # JSON is YAML
    return path


def stored_metrics(s3, run: str) -> list[dict]:
    return [json.loads(line) for line in s3.get(BUCKET, f"runs/{run}/metrics.jsonl").decode().splitlines()]


def assert_one_line_error(result, *fragments: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained_run(s3, local_ray, remote_dataset, tmp_path_factory):
    """One `trm-ray train` run stored at s3://trm/runs/a, run from an empty working folder."""
    workdir = tmp_path_factory.mktemp("workdir")
    recipe = write_recipe(tmp_path_factory.mktemp("recipe"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        result = CliRunner().invoke(main, ["train", str(recipe), "run_name=a"])
    return result, workdir


# --------------------------------------------------------------------------------------------
# Before Ray: one-line errors, nothing written
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing bucket", "wrong credentials", "unreachable endpoint", "missing run"])
def test_unusable_storage_is_one_line_before_ray(case, s3, remote_dataset, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path)
    args = ["train", str(recipe), "run_name=bad"]
    held = contextlib.ExitStack()  # the refused endpoint's port, until the command has run
    expected = {"missing bucket": ["ray.storage_path=s3://no-such-bucket/runs",
                                   "bucket 'no-such-bucket' does not exist"],
                "wrong credentials": [DATA, "access denied", "AWS_SECRET_ACCESS_KEY"],
                "unreachable endpoint": [DATA, "cannot reach the object store", "AWS_ENDPOINT_URL"],
                "missing run": ["--resume s3://trm/runs/does-not-exist", "no config.yaml"]}[case]
    if case == "missing bucket":
        args.append("ray.storage_path=s3://no-such-bucket/runs")
    elif case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", held.enter_context(refused_endpoint()))
    else:
        args = ["train", "--resume", "s3://trm/runs/does-not-exist"]
    monkeypatch.chdir(tmp_path)
    keys_before = s3.keys(BUCKET)
    ray_before = ray.is_initialized()

    with held:
        result = CliRunner().invoke(main, args)

    assert_one_line_error(result, *expected)
    assert s3.keys(BUCKET) == keys_before  # nothing written (the probe object is gone too)
    assert ray.is_initialized() == ray_before  # failed before any Ray process started
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # nor on the local disk


def test_missing_checkpoint_uris_are_one_line(s3, remote_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keys_before = s3.keys(BUCKET)
    result = CliRunner().invoke(main, ["eval", "--checkpoint", "s3://trm/nope", "--dataset", DATA,
                                       "--num-workers", "0", "--outdir", "s3://trm/evals/nope"])
    assert_one_line_error(result, "s3://trm/nope", "does not exist")
    assert s3.keys(BUCKET) == keys_before and not list(tmp_path.iterdir())

    with pytest.raises(ConfigError, match="load_checkpoint='s3://trm/nope' does not exist"):
        check_inputs(TrainConfig(**recipe_dict(load_checkpoint="s3://trm/nope", run_name="x")))
    # a dataset URI without train/dataset.json: the data path is named
    with pytest.raises(Exception, match="s3://trm/data/none.*train/dataset.json"):
        check_inputs(TrainConfig(**recipe_dict(data_paths=["s3://trm/data/none"], run_name="x")))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_train_with_a_storage_uri_keeps_the_run_in_the_store(s3, trained_run, tmp_path, monkeypatch):
    result, workdir = trained_run
    assert result.exit_code == 0, result.output + repr(result.exception)
    keys = s3.keys(BUCKET, "runs/a/")
    assert "runs/a/config.yaml" in keys and "runs/a/metrics.jsonl" in keys
    checkpoints = sorted({k.split("/")[2] for k in keys if re.match(r"runs/a/checkpoint_\d+/", k)})
    assert checkpoints, keys
    for name in checkpoints:
        for file in (MODEL_FILE, "all_config.yaml", TRAIN_STATE_FILE):
            assert f"runs/a/{name}/{file}" in keys, (name, file)
    saved = yaml.safe_load(s3.get(BUCKET, "runs/a/config.yaml"))
    assert saved["run_name"] == "a" and saved["ray"]["storage_path"] == "s3://trm/runs" \
        and saved["data_paths"] == [DATA]
    assert not list(workdir.iterdir())  # nothing of the run on the local disk

    records = stored_metrics(s3, "a")
    assert records[-1]["epoch"] == 4 and records[-1]["checkpoint"] == checkpoints[-1]
    assert f"final: step={records[-1]['step']} epoch=4" in result.output
    best_line = next(line for line in result.output.splitlines() if line.startswith("best checkpoint: "))
    best = best_line.removeprefix("best checkpoint: ")
    assert best.startswith("s3://trm/runs/a/checkpoint_") and best.rsplit("/", 1)[1] in checkpoints
    assert f"last checkpoint: s3://trm/runs/a/{checkpoints[-1]}" in result.output
    assert "run folder: s3://trm/runs/a" in result.output
    assert read_metrics("s3://trm/runs/a") == records  # the library reads the store as boto3 does

    # the same command again is refused: the run is in the store, not on this disk
    monkeypatch.chdir(tmp_path)
    again = CliRunner().invoke(main, ["train", str(write_recipe(tmp_path)), "run_name=a"])
    assert_one_line_error(again, "already exists", "--resume s3://trm/runs/a")
    assert s3.keys(BUCKET, "runs/a/") == keys


@pytest.mark.ray
@pytest.mark.slow
def test_a_stopped_run_continues_with_resume_from_the_uri(s3, local_ray, remote_dataset, local_dataset, tmp_path,
                                                           monkeypatch):
    marker = tmp_path / "killed"
    # Synchronous uploads pin which checkpoint the dead run left: with background uploads the
    # step-6 checkpoint may still be on its way when rank 0 dies five fast steps later (the
    # run would then resume from the start, correctly but not what this test pins down).
    recipe = write_recipe(tmp_path, epochs=6, run_name="b", checkpoint={"async_upload": False})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(REPORT_EVERY_STEPS_ENV, "1")
    # rank 0 dies at step 11 (eval intervals end at steps 6, 12, 19); max_failures=0: the run fails.
    # The checkpoint of step 6 reaches the controller on its next poll, well before step 11.
    monkeypatch.setenv(FAULT_ENV, f"11:0:{marker}")
    failed = CliRunner().invoke(main, ["train", str(recipe), "ray.max_failures=0"])
    assert failed.exit_code != 0 and "--resume" in failed.output, failed.output
    before = stored_metrics(s3, "b")
    steps_before = [r["step"] for r in before if "epoch" not in r]
    assert steps_before == list(range(1, len(steps_before) + 1)) and len(steps_before) <= 10
    assert [r["step"] for r in before if r.get("checkpoint")] == [6]

    resumed = CliRunner().invoke(main, ["train", "--resume", "s3://trm/runs/b/"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    records = stored_metrics(s3, "b")
    assert records[:len(before)] == before  # the history is kept, the new reports appended
    steps = [r["step"] for r in records if "epoch" not in r]
    assert steps == steps_before + list(range(7, steps[-1] + 1))  # the first new step follows the checkpoint's
    assert records[-1]["epoch"] == 6
    assert f"final: step={records[-1]['step']} epoch=6" in resumed.output
    assert "run folder: s3://trm/runs/b\n" in resumed.output
    assert yaml.safe_load(s3.get(BUCKET, "runs/b/config.yaml"))["run_name"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "recipe.yaml"]
    # the lr schedule carried on: every step's lr, before and after the resume, is the schedule's
    config = TrainConfig(**recipe_dict(epochs=6, checkpoint={"async_upload": False}))
    meta = load_metadata(local_dataset, "train")
    total = total_train_steps(config.epochs, meta.total_groups, meta.mean_puzzle_examples, config.global_batch_size)
    for record in records:
        expected = cosine_schedule_lr(record["step"], config.lr, config.lr_warmup_steps, total, config.lr_min_ratio)
        assert record["train/lr"] == pytest.approx(expected), record["step"]


# --------------------------------------------------------------------------------------------
# Checkpoints and eval at URIs
# --------------------------------------------------------------------------------------------
def _download(s3, prefix: str, folder: Path) -> Path:
    """The objects under `prefix` into `folder`, with boto3 (not the code under test)."""
    folder.mkdir(parents=True)
    for key in s3.keys(BUCKET, prefix + "/"):
        if key.endswith("/"):  # a folder marker object, no file
            continue
        target = folder / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3.get(BUCKET, key))
    return folder


@pytest.mark.ray
@pytest.mark.slow
def test_checkpoints_at_a_uri_load_and_evaluate_as_their_local_copy(s3, trained_run, local_dataset, tmp_path,
                                                                     monkeypatch):
    assert trained_run[0].exit_code == 0
    name = stored_metrics(s3, "a")[-1]["checkpoint"]
    uri = f"s3://trm/runs/a/{name}"
    local = _download(s3, f"runs/a/{name}", tmp_path / name)

    # the notebook API: a folder URI, and the reference form (weights file + all_config.yaml beside it)
    s3.put(BUCKET, "refs/step_100", (local / MODEL_FILE).read_bytes())
    s3.put(BUCKET, "refs/all_config.yaml", (local / "all_config.yaml").read_bytes())
    inputs = np.load(local_dataset / "test" / "all__inputs.npy")
    batch = {"inputs": inputs, "puzzle_identifiers": np.ones(len(inputs), dtype=np.int32)}
    expected = predict(load_checkpoint(local), batch)
    for source in (uri, uri + "/", "s3://trm/refs/step_100"):
        got = predict(load_checkpoint(source), batch)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{source} {key}")
    # load_checkpoint= (a run's initial weights) reads the same tensors from the URI
    remote_weights, local_weights = read_state_dict(uri), read_state_dict(local)
    assert remote_weights.keys() == local_weights.keys()
    assert all(torch.equal(remote_weights[k], local_weights[k]) for k in local_weights)
    assert check_inputs(TrainConfig(**recipe_dict(load_checkpoint=uri, run_name="init"))).load_checkpoint == uri

    # `trm-ray eval`: checkpoint, dataset and outdir at URIs == the local copy on the local dataset
    monkeypatch.chdir(tmp_path)
    remote = CliRunner().invoke(main, ["eval", "--checkpoint", uri, "--dataset", DATA, "--num-workers", "0",
                                       "--outdir", "s3://trm/evals/a", "--save-outputs", "preds"])
    assert remote.exit_code == 0, remote.output + repr(remote.exception)
    here = CliRunner().invoke(main, ["eval", "--checkpoint", str(local), "--dataset", str(local_dataset),
                                     "--num-workers", "0", "--outdir", str(tmp_path / "eval-local"),
                                     "--save-outputs", "preds"])
    assert here.exit_code == 0, here.output + repr(here.exception)
    # (pyarrow marks folders with empty "name/" objects; the files are what counts)
    assert [k for k in s3.keys(BUCKET, "evals/a/") if not k.endswith("/")] == \
        ["evals/a/metrics.json", "evals/a/outputs.npz"]
    remote_record = json.loads(s3.get(BUCKET, "evals/a/metrics.json"))
    local_record = json.loads((tmp_path / "eval-local" / "metrics.json").read_text())
    assert remote_record["metrics"] == local_record["metrics"] and remote_record["metrics"]["eval/count"] == 6
    assert remote_record["checkpoint"] == uri and remote_record["dataset"] == DATA
    (tmp_path / "remote.npz").write_bytes(s3.get(BUCKET, "evals/a/outputs.npz"))
    with np.load(tmp_path / "remote.npz") as got, np.load(tmp_path / "eval-local" / "outputs.npz") as want:
        np.testing.assert_array_equal(got["all__preds"], want["all__preds"])
    assert "wrote s3://trm/evals/a" in remote.output
    # an existing outdir URI is refused unless --overwrite
    again = CliRunner().invoke(main, ["eval", "--checkpoint", uri, "--dataset", DATA, "--num-workers", "0",
                                      "--outdir", "s3://trm/evals/a"])
    assert_one_line_error(again, "s3://trm/evals/a", "--overwrite")


# --------------------------------------------------------------------------------------------
# metrics.jsonl
# --------------------------------------------------------------------------------------------
def test_read_metrics_skips_a_torn_line(s3, tmp_path, capsys):
    lines = '{"step": 1, "train/lr": 0.1}\n{"step": 2, "train/l\n{"step": 3}\n'
    (tmp_path / "metrics.jsonl").write_text(lines)
    s3.put(BUCKET, "runs/torn/metrics.jsonl", lines.encode())
    for run_dir in (tmp_path, "s3://trm/runs/torn"):
        assert read_metrics(run_dir) == [{"step": 1, "train/lr": 0.1}, {"step": 3}]
        assert "skipped 1 unreadable line" in capsys.readouterr().err
    assert read_metrics("s3://trm/runs/none") == [] and read_metrics(tmp_path / "none") == []
