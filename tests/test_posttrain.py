"""`trm-ray posttrain` end to end on local Ray: a tiny ARC checkpoint post-trained on four real
ARC-AGI-2 evaluation tasks in two chunks (marked slow: one job ~1.5 min, a time-limited one
~40 s).

The job runs once per module, its --out in a bucket of a real S3-protocol server (as on a
cluster: every chunk's dataset, base checkpoint, run and predictions go through it), with a
worker killed mid-run; the tests read what it left: the merged submission against the tasks
file read here, the chunks' timings, the demonstration pairs' fit before and after, the W&B
offline runs, then a --resume and a --time-limit job.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.posttrain_util import ARC, TASKS, tiny_checkpoint, write_tasks
from tests.ray_util import ray_processes_of_this_session
from trm_ray import storage
from trm_ray.cli.main import main
from trm_ray.posttrain import chunk as C
from trm_ray.posttrain.job import FALLBACK, FINETUNED, PLACEHOLDER, PosttrainOptions, chunk_dir, run_posttrain
from trm_ray.train.loop import FAULT_ENV

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.skipif(not Path(f"{ARC}_evaluation2_challenges.json").is_file(),
                                                   reason="needs ../shared/data/arc")]


def options(checkpoint: Path, tasks: Path, out: Path, **overrides) -> PosttrainOptions:
    values = dict(checkpoint=str(checkpoint), tasks=str(tasks), out=str(out), chunks=2, num_aug=3, steps=16,
                  train={"global_batch_size": 8, "lr": 1e-3}, resources_per_chunk={"CPU": 1.0})
    return PosttrainOptions(**{**values, **overrides})


@pytest.fixture(scope="module")
def ray_instance(s3, tmp_path_factory):
    """One local Ray for the module, started after the S3 server's AWS_* variables are set (every
    Ray worker inherits them) and with the dataset cache in a temporary folder."""
    import ray

    from trm_ray.cluster import connect

    previous = os.environ.get("TRM_RAY_CACHE")
    os.environ["TRM_RAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    connect(num_cpus=2)
    yield
    ray.shutdown()
    os.environ.pop("TRM_RAY_CACHE") if previous is None else os.environ.__setitem__("TRM_RAY_CACHE", previous)


@pytest.fixture(scope="module")
def job(ray_instance, s3, tmp_path_factory):
    """The job, run once into s3://trm/posttrain: two chunks at once, one of them losing its
    worker at step 8."""
    root = tmp_path_factory.mktemp("posttrain")
    checkpoint, tasks = tiny_checkpoint(root / "ckpt"), write_tasks(root / "tasks")
    marker = root / "fault-marker"
    saved = {k: os.environ.get(k) for k in (FAULT_ENV,)}
    os.environ.update({FAULT_ENV: f"8:0:{marker}"})
    lines: list[str] = []
    out = "s3://trm/posttrain"
    try:
        # W&B off here: a worker killed mid-run leaves its W&B service holding the run id, and
        # the restarted worker's wandb.init is refused ("run ID is in use"), seen under load.
        summary = run_posttrain(options(checkpoint, tasks, out, wandb=False), log=lines.append)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return {"root": root, "checkpoint": checkpoint, "tasks": tasks, "out": out, "summary": summary,
            "lines": lines, "marker": marker}


def read_json(location: str):
    return json.loads(storage.read_text(location))


def test_merged_submission_covers_every_task_and_test_input_in_order(job):
    challenges = json.loads(job["tasks"].read_text())
    submission = read_json(storage.join(job["out"], "submission.json"))
    assert list(submission) == list(challenges) == TASKS
    for name, task in challenges.items():
        assert len(submission[name]) == len(task["test"])
        for entry in submission[name]:
            assert set(entry) == {"attempt_1", "attempt_2"}
            for grid in entry.values():
                assert grid and all(isinstance(row, list) and all(0 <= c <= 9 for c in row) for row in grid)
    assert [c["status"] for c in job["summary"]["chunks"]] == [FINETUNED, FINETUNED]
    # each chunk's part of the merge is that chunk's own submission
    for k, chunk in enumerate(job["summary"]["chunks"]):
        part = read_json(storage.join(chunk_dir(job["out"], k), C.SUBMISSION_FILE))
        assert {n: submission[n] for n in chunk["tasks"]} == part


def test_scores_match_the_solutions_counted_here(job):
    solutions = json.loads(job["tasks"].with_name("arc-agi_tiny_solutions.json").read_text())
    submission = read_json(storage.join(job["out"], "submission.json"))
    solved = {1: 0.0, 2: 0.0}
    for name, outputs in solutions.items():
        for entry, truth in zip(submission[name], outputs):
            solved[1] += (entry["attempt_1"] == truth) / len(outputs)
            solved[2] += (truth in (entry["attempt_1"], entry["attempt_2"])) / len(outputs)
    overall = job["summary"]["scores"]["overall"]["posttrained"]
    assert overall["pass@1"] == pytest.approx(solved[1] / 4) and overall["pass@2"] == pytest.approx(solved[2] / 4)
    assert set(job["summary"]["scores"]) == {"overall", "chunk 0", "chunk 1"}
    assert any("pretrained pass@1" in line for line in job["lines"])  # the table was printed


def test_two_chunks_fine_tuned_at_the_same_time(job):
    first, second = job["summary"]["chunks"]
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]


def test_post_training_fits_the_demonstration_pairs_better(job):
    for chunk in job["summary"]["chunks"]:
        before, after = chunk["fit_before"], chunk["fit_after"]
        assert before["demo_rows"] == after["demo_rows"] > 0
        assert after["demo_token_accuracy"] > before["demo_token_accuracy"] + 0.05, chunk


def test_a_killed_worker_is_retried_from_its_last_checkpoint(job):
    assert job["marker"].is_file()  # a worker died at step 8 (of the chunk that got there first)
    for k, chunk in enumerate(job["summary"]["chunks"]):
        text = storage.read_text(storage.join(chunk["run"], "metrics.jsonl"))
        steps = [json.loads(line)["step"] for line in text.splitlines()]
        # every step ran, and none was reported twice: the restarted worker went on from the
        # checkpoint before step 8, it did not start over
        assert chunk["steps"] == steps[-1] > 8 and steps == sorted(set(steps)), steps
        assert steps[0] < 8


def test_one_wandb_group_with_one_run_per_chunk_in_the_runs_configs(job):
    import yaml

    groups = set()
    for k, chunk in enumerate(job["summary"]["chunks"]):
        config = yaml.safe_load(storage.read_text(storage.join(chunk["run"], "config.yaml")))
        assert config["run_name"] == f"{job['summary']['job_id']}-chunk-{k}"
        assert config["tracking"]["project"] == "arc-posttrain" and "posttrain" in config["tracking"]["tags"]
        groups.add(config["tracking"]["group"])
    assert groups == {f"posttrain-{job['summary']['job_id']}"} and job["summary"]["job_id"].startswith("posttrain-")


def test_resume_reruns_nothing_finished(job, s3):
    def objects() -> dict[str, object]:
        pages = s3._client("s3").get_paginator("list_objects_v2").paginate(Bucket="trm", Prefix="posttrain/chunks/")
        return {o["Key"]: (o["LastModified"], o["ETag"]) for page in pages for o in page.get("Contents", [])}

    before = objects()
    lines: list[str] = []
    summary = run_posttrain(options(job["checkpoint"], job["tasks"], job["out"], resume=True), log=lines.append)
    assert [line for line in lines if line.startswith("chunk")] == ["chunk 0: finished before, kept",
                                                                     "chunk 1: finished before, kept"]
    assert objects() == before and len(before) > 10  # no chunk object written again, none added
    assert summary["scores"] == job["summary"]["scores"] and summary["job_id"] == job["summary"]["job_id"]


def test_time_limit_still_gives_a_complete_submission(job, tmp_path):
    # The chunks' datasets and pretrained predictions are those of the finished job (copied),
    # so the limit falls in the fine-tunes, which would need far more than the time given.
    out = tmp_path / "limited"
    for k in (0, 1):
        source, target = chunk_dir(job["out"], k), Path(chunk_dir(str(out), k))
        for name in (C.DATA_DIR, C.BASE_DIR):
            storage.download_dir(storage.join(source, name), target / name)
        (target / C.PRETRAINED_FILE).write_text(storage.read_text(storage.join(source, C.PRETRAINED_FILE)))
    limited = options(job["checkpoint"], job["tasks"], out, steps=100000, time_limit=25.0, resume=True)
    (out / "job.json").write_text(json.dumps({"job_id": "limited-0", **limited.identity()}))
    summary = run_posttrain(limited, log=lambda line: None)
    assert [c["status"] for c in summary["chunks"]] == [FALLBACK, FALLBACK]
    submission = json.loads((out / "submission.json").read_text())
    assert list(submission) == TASKS
    pretrained = {}
    for k in (0, 1):
        pretrained.update(json.loads((Path(chunk_dir(str(out), k)) / C.PRETRAINED_FILE).read_text())["submission"])
    assert submission == {n: pretrained[n] for n in TASKS}
    assert PLACEHOLDER not in {c["status"] for c in summary["chunks"]}
    # and the cancelled fine-tunes stopped: no training process outlives the job
    deadline = time.time() + 30
    while training_processes() and time.time() < deadline:
        time.sleep(0.5)
    left = training_processes()
    assert left == [], [" ".join(line.split()) for line in left]


def training_processes() -> list[str]:
    import psutil

    found = []
    for process in ray_processes_of_this_session():
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:  # ended while we looked
            continue
        if any(name in line for name in ("RayTrainWorker", "TrainController", "_wave_two")):
            found.append(line)
    return found


# --------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written (no Ray needed)
# --------------------------------------------------------------------------------------------
def posttrain_cli(*args: str):
    return CliRunner().invoke(main, ["posttrain", *args])


def test_bad_inputs_are_one_line_errors(tmp_path):
    checkpoint, tasks = tiny_checkpoint(tmp_path / "ckpt"), write_tasks(tmp_path / "tasks")
    out = tmp_path / "out"

    no_tests = tmp_path / "bad" / "arc-agi_notest_challenges.json"
    no_tests.parent.mkdir()
    data = json.loads(tasks.read_text())
    data[TASKS[1]]["test"] = []
    no_tests.write_text(json.dumps(data))
    unknown = write_tasks(tmp_path / "unknown", drop_solution=TASKS[2])
    sudoku = tiny_checkpoint(tmp_path / "sudoku", vocab_size=11, seq_len=81)
    short = tiny_checkpoint(tmp_path / "short", seq_len=400)
    cases = [
        ([str(checkpoint), "--tasks", str(no_tests)], [TASKS[1], "test input"]),
        ([str(checkpoint), "--tasks", str(unknown)], [TASKS[2], "solutions"]),
        ([str(sudoku), "--tasks", str(tasks)], ["vocabulary of 11", "12"]),
        ([str(short), "--tasks", str(tasks)], ["400", "900"]),
        ([str(checkpoint), "--tasks", str(tasks), "--chunks", "5"], ["--chunks 5", "4 tasks"]),
        ([str(tmp_path / "missing"), "--tasks", str(tasks)], ["missing"]),
    ]
    for args, needles in cases:
        result = posttrain_cli(*args, "--out", str(out))
        assert result.exit_code == 1, (args, result.output)
        message = result.output.strip()
        assert message.startswith("Error: ") and "\n" not in message and "Traceback" not in message, message
        for needle in needles:
            assert needle in message, (needle, message)
        assert not out.exists()


def test_an_existing_job_needs_resume(tmp_path):
    checkpoint, tasks = tiny_checkpoint(tmp_path / "ckpt"), write_tasks(tmp_path / "tasks")
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text(json.dumps(options(checkpoint, tasks, out).identity()))
    result = posttrain_cli(str(checkpoint), "--tasks", str(tasks), "--out", str(out))
    assert result.exit_code == 1 and "--resume" in result.output and "\n" not in result.output.strip()
    other = posttrain_cli(str(checkpoint), "--tasks", str(tasks), "--out", str(out), "--resume", "--num-aug", "7")
    assert other.exit_code == 1 and "num_aug" in other.output, other.output
