"""What W&B records of trm-ray runs, read back from the offline files wandb 0.31 writes.

An offline run is a folder <dir>/wandb/offline-run-<time>-<id>/ whose run-<id>.wandb is the
run's transaction log (wandb 0.31 writes no wandb-summary.json offline): LevelDB's log format
after a 7-byte ":W&B" header, each record a wandb.proto Record. The reader below is this
test's own; the expected values are computed by hand from what the tests log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from trm_ray import storage
from trm_ray.config import TrainConfig
from trm_ray.tracking import NullTracker, add_to_summary, create_tracker, summary_from_results, track_eval
from trm_ray.tune.records import append_record, trial_histories, trial_outcome


# --------------------------------------------------------------------------------------------
# Reading what wandb wrote
# --------------------------------------------------------------------------------------------
def log_records(data: bytes) -> list[pb.Record]:
    assert data[:4] == b":W&B", "not a W&B transaction log"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk = (b"" if kind in (1, 2) else chunk) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
    return records


def run_files(root: Path, run_id: str = "*") -> list[Path]:
    """The offline runs' logs under root/wandb, oldest first."""
    return sorted((root / "wandb").glob(f"offline-run-*-{run_id}/run-*.wandb"))


def of_kind(records: list[pb.Record], kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def folded(items_of_records) -> dict:
    """A summary or config as the records leave it (later updates win; W&B's _keys dropped)."""
    state: dict = {}
    for items in items_of_records:
        for item in items:
            key = "/".join(item.nested_key) if item.nested_key else item.key
            state[key] = json.loads(item.value_json)
    return {k: v for k, v in state.items() if not k.startswith("_")}


def summary_of(records) -> dict:
    return folded(s.update for s in of_kind(records, "summary"))


def config_of(records) -> dict:
    run = of_kind(records, "run")[0]
    return folded([run.config.update, *(c.update for c in of_kind(records, "config"))])


def only_run(root: Path) -> list[pb.Record]:
    files = run_files(root)
    assert len(files) == 1, files
    return log_records(files[0].read_bytes())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No credentials, offline, W&B's files and artifact staging under tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------
def test_training_run_has_job_type_tags_and_the_best_values_in_its_summary(offline, tmp_path):
    config = TrainConfig(run_name="mlp-1", data_paths=["data/sudoku-extreme-1k-aug-1000/"], arch={"mlp_t": True},
                         evaluators=[{"name": "arc", "pass_Ks": [1, 2]}], tracking={"tags": ["paper", "trm-mlp", "ablation"]})
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"), num_parameters=99)
    for step, loss in [(1, 2.0), (2, 0.5), (3, 1.25)]:
        tracker.log({"train/lm_loss": loss}, step=step)
    tracker.log({"eval/exact_accuracy": 0.25, "ARC/pass@2": 0.1, "ARC/pass@5": 0.5, "epoch": 1}, step=2)
    tracker.log({"eval/exact_accuracy": 0.125, "ARC/pass@2": 0.3, "ARC/pass@5": 0.25, "epoch": 2}, step=3)
    tracker.finish()

    records = only_run(tmp_path / "run")
    run = of_kind(records, "run")[0]
    assert run.job_type == "train" and run.display_name == "mlp-1"
    assert list(run.tags) == ["sudoku-extreme-1k-aug-1000", "trm-mlp", "paper", "ablation"]  # no repeat
    summary = summary_of(records)
    assert summary["train/lm_loss"] == {"min": 0.5, "last": 1.25}
    assert summary["eval/exact_accuracy"] == {"max": 0.25, "last": 0.125}
    assert summary["ARC/pass@2"] == {"max": 0.3, "last": 0.3}
    assert summary["ARC/pass@5"] == 0.25  # a K the evaluator does not report: the last value only
    assert summary["num_params"] == 99
    # every chart's x-axis is the train step, logged with every row
    metrics = of_kind(records, "metric")
    assert any(m.glob_name == "*" and m.step_metric == "step" for m in metrics)
    steps = [json.loads(i.value_json) for h in of_kind(records, "history") for i in h.item if i.nested_key == ["step"]]
    assert steps == [1, 2, 3, 2, 3]


def sweep_folder(tmp_path: Path, name: str = "lr-sweep") -> tuple[Path, dict]:
    sweep_dir = tmp_path / "sweeps" / name
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": name, "metric": "eval/accuracy", "mode": "max"}))
    base = TrainConfig(data_paths=[str(tmp_path / "data" / "maze-30x30-hard-1k")], arch={"mlp_t": False},
                       tracking={"tags": ["nightly"]}).model_dump(mode="json")
    return sweep_dir, {"trial_base": base, "sweep_dir": str(sweep_dir), "sweep_name": name}


def test_sweep_trials_record_the_sweep_and_asha_outcome_after_they_finished(offline, tmp_path):
    from trm_ray.run_folder import run_dir_of
    from trm_ray.tune.driver import record_outcomes_in_wandb, trial_train_config

    sweep_dir, context = sweep_folder(tmp_path)
    curves = {"t1": [0.5, 0.75], "t2": [0.25, 0.875, 0.5, 0.625]}  # eval/accuracy per epoch
    for index, (trial_id, curve) in enumerate(curves.items()):
        config = trial_train_config(context, trial_id, {"lr": 0.01 * (index + 1)})
        tracker = create_tracker(config, run_dir=run_dir_of(config), num_parameters=7)
        for epoch, value in enumerate(curve, start=1):
            tracker.log({"eval/accuracy": value, "epoch": epoch}, step=10 * epoch)
        tracker.finish()
    # t1 was killed by ASHA's stop: wandb had written no block of its log yet, only the header
    [t1_log] = run_files(sweep_dir / "train" / "t1")
    t1_log.write_bytes(t1_log.read_bytes()[:7])
    # the driver's records: t1 stopped by ASHA after epoch 2, t2 ran to the end, t3 still pending
    # (no outcome yet), t4 failed before its W&B run started
    for trial_id, index in [("t1", 0), ("t2", 1), ("t3", 2), ("t4", 3)]:
        append_record(sweep_dir, {"event": "trial", "trial_id": trial_id, "index": index,
                                  "params": {"lr": 0.01 * (index + 1)}})
    for trial_id, curve in curves.items():
        for epoch, value in enumerate(curve, start=1):
            append_record(sweep_dir, {"event": "result", "trial_id": trial_id, "epoch": epoch, "eval/accuracy": value,
                                      "time": epoch, "decision": "continue"})
    append_record(sweep_dir, {"event": "stop", "trial_id": "t1", "time": 2, "early": True})
    append_record(sweep_dir, {"event": "stop", "trial_id": "t2", "time": 4, "early": False})
    append_record(sweep_dir, {"event": "complete", "trial_id": "t2"})
    append_record(sweep_dir, {"event": "error", "trial_id": "t4"})

    assert record_outcomes_in_wandb(str(sweep_dir), context, log=lambda line: None) == 3

    outcome = {
        "t1": {"tune/status": "stopped", "tune/stopped_early": True, "tune/stopped_at_epoch": 2, "tune/epochs_run": 2},
        "t2": {"tune/status": "complete", "tune/stopped_early": False, "tune/epochs_run": 4},
    }
    for trial_id, curve in curves.items():
        files = run_files(sweep_dir / "train" / trial_id)
        assert len(files) == 2  # the trial's run, then the driver's with the same id
        first, second = (log_records(f.read_bytes()) for f in files)
        run2 = of_kind(second, "run")[0]
        assert run2.job_type == "sweep-trial" and run2.run_group == "lr-sweep"
        assert list(run2.tags) == ["maze-30x30-hard-1k", "trm", "lr-sweep", "nightly"]
        assert run2.resume
        best = {"max": max(curve), "last": curve[-1]}  # the sweep metric's best (mode max)
        if trial_id == "t1":  # its own log lost everything: the summary comes from the records
            assert first == []
            # and `wandb sync` is told to skip it (it refuses every path when one has no run record)
            assert Path(f"{files[0]}.synced").is_file() and not Path(f"{files[1]}.synced").exists()
            assert summary_of(second) == {"eval/accuracy": best, "epoch": 2, **outcome["t1"]}
            assert config_of(second)["lr"] == 0.01 and config_of(second)["run_name"] == "t1"
            continue
        run1 = of_kind(first, "run")[0]
        assert (run1.job_type, list(run1.tags), run1.run_group) == (run2.job_type, list(run2.tags), run2.run_group)
        # what `wandb sync` groups by (project/run id) and orders by (start time)
        assert (run2.project, run2.run_id) == (run1.project, run1.run_id)
        assert run2.start_time.ToNanoseconds() > run1.start_time.ToNanoseconds()
        assert summary_of(first)["eval/accuracy"] == best
        # the second run repeats the first's summary and config: complete whatever the server does
        last = {"epoch": len(curve), "step": 10 * len(curve)}
        assert summary_of(second) == {"eval/accuracy": best, "num_params": 7, **last, **outcome[trial_id]}
        assert config_of(second) == config_of(first) and config_of(first)["num_params"] == 7
        assert not list((sweep_dir / "train" / trial_id).rglob("*.synced"))
    [t4] = run_files(sweep_dir / "train" / "t4")  # its outcome, in a run of its own
    assert summary_of(log_records(t4.read_bytes())) == {"tune/status": "error", "tune/epochs_run": 0}
    assert not (sweep_dir / "train" / "t3").exists()


def test_trial_outcome_of_each_status():
    def history(*events):
        return trial_histories([{"trial_id": "t", **e} for e in events])["t"]

    result = {"event": "result", "epoch": 3}
    assert trial_outcome(history({"event": "trial"}, result)) is None  # still running
    assert trial_outcome(history(result, {"event": "stop", "early": True})) == {
        "tune/status": "stopped", "tune/stopped_early": True, "tune/stopped_at_epoch": 3, "tune/epochs_run": 3}
    assert trial_outcome(history(result, {"event": "complete"})) == {
        "tune/status": "complete", "tune/stopped_early": False, "tune/epochs_run": 3}
    assert trial_outcome(history(result, {"event": "error"})) == {"tune/status": "error", "tune/epochs_run": 3}


def test_summary_from_results_merges_with_what_the_run_had():
    ops = {"eval/exact_accuracy": ("max", "last"), "train/lm_loss": ("min", "first", "last"), "ARC/pass@*": ("max",)}
    results = [{"epoch": 1, "eval/exact_accuracy": 0.5, "train/lm_loss": 0.75, "ARC/pass@2": None, "time": 1},
               {"epoch": 2, "eval/exact_accuracy": 0.25, "train/lm_loss": 0.5, "ARC/pass@2": 0.125}]
    base = {"eval/exact_accuracy": {"max": 0.625, "last": 0.5}, "train/lm_loss": {"min": 0.25, "first": 2.0}}
    assert summary_from_results(results, base, ops) == {
        "epoch": 2,
        "eval/exact_accuracy": {"max": 0.625, "last": 0.25},  # the run had seen a better one
        "train/lm_loss": {"min": 0.25, "first": 2.0, "last": 0.5},
        "ARC/pass@2": {"max": 0.125},  # a glob's ops; the unreported value is skipped
    }


def test_nothing_is_written_when_wandb_is_off(offline, tmp_path):
    config = TrainConfig(run_name="r", data_paths=["data/x"], tracking={"wandb": False})
    assert isinstance(create_tracker(config, run_dir=str(tmp_path / "run")), NullTracker)
    assert add_to_summary(config, str(tmp_path / "run"), {"tune/status": "complete"}) is False
    assert track_eval({"eval/exact_accuracy": 1.0}, checkpoint="c", dataset="data/x", outdir=str(tmp_path / "e"),
                      config=config) is None
    assert not (tmp_path / "run").exists() and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------------------------
# Checkpoints as artifacts
# --------------------------------------------------------------------------------------------
FILES = {"model.pt": b"weights %d", "all_config.yaml": b"arch: %d", "train_state.pt": b"optimizer state %d"}


def checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    for name, content in FILES.items():
        (folder / name).write_bytes(content % step)
    return folder


def artifacts_of(records) -> list[tuple[set, dict]]:
    """(aliases, {path: entry}) of every artifact logged, in order."""
    found = []
    for record in records:
        kind = record.WhichOneof("record_type")
        artifact = record.artifact if kind == "artifact" else (
            record.request.log_artifact.artifact if kind == "request"
            and record.request.WhichOneof("request_type") == "log_artifact" else None)
        if artifact is not None:
            assert artifact.type == "model" and artifact.name == "model-run-1"
            found.append((set(artifact.aliases), {e.path: e for e in artifact.manifest.contents}))
    return found


def test_log_checkpoints_all_logs_every_checkpoint_with_its_aliases(offline, tmp_path):
    config = TrainConfig(run_name="run 1", data_paths=["data/x"], tracking={"log_checkpoints": "all"})
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"))
    for step, score in [(1, 0.5), (2, 0.25), (3, 0.5)]:  # a tie: the later one is the best, as Ray keeps it
        folder = checkpoint(tmp_path / "tmp" / str(step), step)
        tracker.checkpoint_saved(step, folder, str(tmp_path / "run" / f"checkpoint_{step:07d}"), score)
        shutil.rmtree(folder)  # the loop's temporary folder goes right after
    tracker.training_finished()
    tracker.finish()

    logged = artifacts_of(only_run(tmp_path / "run"))
    assert [aliases for aliases, _ in logged] == [{"latest", "step_1", "best"}, {"latest", "step_2"},
                                                  {"latest", "step_3", "best"}]
    for step, (_, entries) in enumerate(logged, start=1):
        assert set(entries) == {"model.pt", "all_config.yaml"}  # the weights, not the optimizer state
        for name, entry in entries.items():
            assert entry.digest == md5_b64(FILES[name] % step)
            # staged by W&B when logged, so `wandb sync` uploads it after the folder is gone
            assert Path(entry.local_path).read_bytes() == FILES[name] % step


def test_log_checkpoints_best_logs_the_best_kept_checkpoint_once_at_the_end(offline, tmp_path):
    config = TrainConfig(run_name="run-1", data_paths=["data/x"], tracking={"log_checkpoints": "best"})
    run_dir = tmp_path / "run"
    tracker = create_tracker(config, run_dir=str(run_dir))
    for step, score in [(1, 0.25), (2, 0.75), (3, float("-inf"))]:
        folder = checkpoint(tmp_path / "tmp" / str(step), step)
        kept = run_dir / f"checkpoint_{step:07d}"
        shutil.copytree(folder, kept)  # what the session keeps
        tracker.checkpoint_saved(step, folder, str(kept), score)
        shutil.rmtree(folder)
    assert not artifacts_of(log_records(run_files(run_dir)[0].read_bytes()))  # nothing before the end
    tracker.training_finished()
    tracker.finish()

    [(aliases, entries)] = artifacts_of(only_run(run_dir))
    assert aliases == {"best", "step_2", "latest"}  # W&B adds "latest" to every new version itself
    assert {n: e.digest for n, e in entries.items()} == {n: md5_b64(FILES[n] % 2) for n in ("model.pt", "all_config.yaml")}


def test_log_checkpoints_best_without_a_kept_copy_logs_each_new_best(offline, tmp_path):
    config = TrainConfig(run_name="run-1", data_paths=["data/x"], tracking={"log_checkpoints": "best"})
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"))
    for step, score in [(1, 0.25), (2, 0.125), (3, 0.5)]:
        folder = checkpoint(tmp_path / "tmp" / str(step), step)
        tracker.checkpoint_saved(step, folder, None, score)
        shutil.rmtree(folder)
    tracker.training_finished()
    tracker.finish()
    assert [a for a, _ in artifacts_of(only_run(tmp_path / "run"))] == [{"best", "step_1", "latest"},
                                                                        {"best", "step_3", "latest"}]


def test_checkpoints_on_object_storage_are_logged_as_references(offline, tmp_path):
    config = TrainConfig(run_name="run-1", data_paths=["data/x"], tracking={"log_checkpoints": "all"})
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"))
    folder = checkpoint(tmp_path / "tmp" / "4", 4)
    location = "s3://bucket/runs/run-1/checkpoint_0000004"  # never read: the upload may be under way
    tracker.checkpoint_saved(4, folder, location, 0.5)
    tracker.finish()
    [(aliases, entries)] = artifacts_of(only_run(tmp_path / "run"))
    assert aliases == {"latest", "step_4", "best"}
    assert {n: e.ref for n, e in entries.items()} == {n: f"{location}/{n}" for n in ("model.pt", "all_config.yaml")}
    assert not any(e.local_path for e in entries.values())  # no bytes uploaded


def test_a_short_training_logs_its_best_checkpoint(offline, tmp_path):
    from datasets_util import write_tiny_dataset
    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession
    from trm_ray.run_folder import EVAL_METRIC

    dataset = write_tiny_dataset(tmp_path / "data" / "tiny")
    config = TrainConfig(
        arch=dict(hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_len=1,
                  forward_dtype="float32", halt_max_steps=2),
        data_paths=[str(dataset)], global_batch_size=4, epochs=4, eval_interval=1, lr=1e-2, lr_warmup_steps=1,
        seed=3, run_name="tiny", tracking={"log_checkpoints": "best"})
    session = LocalSession(tmp_path / "run")
    train(config, session, report_every_steps=100)

    evaluated = [r for r in session.history if EVAL_METRIC in r]
    assert len(evaluated) == 4
    best = max(evaluated, key=lambda r: (r[EVAL_METRIC], r["step"]))  # ties: the later one
    records = only_run(tmp_path / "run")
    assert of_kind(records, "run")[0].job_type == "train"
    assert summary_of(records)[EVAL_METRIC] == {"max": max(r[EVAL_METRIC] for r in evaluated),
                                                "last": evaluated[-1][EVAL_METRIC]}
    [(aliases, entries)] = artifacts_of_named(records, "model-tiny")
    assert aliases == {"best", f"step_{best['step']}", "latest"}
    kept = tmp_path / "run" / f"checkpoint_{best['step']:07d}" / "model.pt"
    assert entries["model.pt"].digest == md5_b64(kept.read_bytes())


def artifacts_of_named(records, name: str) -> list[tuple[set, dict]]:
    return [(set(a.aliases), {e.path: e for e in a.manifest.contents})
            for a in of_kind(records, "artifact") if a.name == name]


# --------------------------------------------------------------------------------------------
# Eval-only runs
# --------------------------------------------------------------------------------------------
EVAL_METRICS = {
    "eval/easy/count": 4.0, "eval/easy/exact_accuracy": 0.75, "eval/easy/accuracy": 0.9,
    "eval/hard/count": 4.0, "eval/hard/exact_accuracy": 0.25, "eval/hard/accuracy": 0.5,
    "eval/count": 8.0, "eval/exact_accuracy": 0.5, "eval/accuracy": 0.7, "ARC/pass@2": 0.375,
}


def test_eval_run_has_job_type_eval_its_metrics_and_a_per_set_table(offline, tmp_path):
    config = TrainConfig(run_name="arc-run", data_paths=["data/arc1concept-aug-1000"], tracking={"tags": ["v2"]})
    where = track_eval(EVAL_METRICS, checkpoint="runs/arc-run/checkpoint_0000010", dataset="data/arc-eval-set",
                       outdir=str(tmp_path / "eval"), config=config)
    folder = Path(where)
    assert folder.parent == tmp_path / "eval" / "wandb" and folder.name.startswith("offline-run-")
    records = log_records(next(folder.glob("run-*.wandb")).read_bytes())
    run = of_kind(records, "run")[0]
    assert run.job_type == "eval" and run.display_name == "eval-arc-run-checkpoint_0000010"
    assert run.project == "arc1concept-aug-1000-ACT-torch"  # beside the training run
    assert list(run.tags) == ["arc-eval-set", "trm", "v2"]
    summary = summary_of(records)
    assert {k: summary[k] for k in EVAL_METRICS} == EVAL_METRICS
    config_logged = config_of(records)
    assert config_logged["checkpoint"] == "runs/arc-run/checkpoint_0000010" and config_logged["run_name"] == "arc-run"
    [table_file] = (folder / "files" / "media" / "table" / "eval").glob("sets_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["set", "count", "exact_accuracy", "accuracy"]
    assert table["data"] == [["easy", 4.0, 0.75, 0.9], ["hard", 4.0, 0.25, 0.5], ["all", 8.0, 0.5, 0.7]]


def test_eval_run_without_a_recipe_and_with_wandb_dir(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    where = track_eval({"eval/exact_accuracy": 1.0}, checkpoint="step_50000", dataset="data/sudoku-extreme/",
                       outdir=str(tmp_path / "eval"))
    assert Path(where).parent == tmp_path / "wandb-dir" / "wandb"
    run = of_kind(only_run(tmp_path / "wandb-dir"), "run")[0]
    assert (run.job_type, run.project, list(run.tags)) == ("eval", "sudoku-extreme-ACT-torch", ["sudoku-extreme"])


def test_uri_folders_get_their_wandb_files_uploaded(offline, tmp_path, s3):
    where = track_eval(EVAL_METRICS, checkpoint="s3://trm/runs/x/checkpoint_0000002", dataset="s3://trm/data/q",
                       outdir="s3://trm/evals/x")
    assert where.startswith("s3://trm/evals/x/wandb/offline-run-")
    uploaded = storage.list_files("s3://trm/evals/x/wandb")
    [log] = [p for p in uploaded if p.endswith(".wandb")]
    assert of_kind(log_records(storage.read_bytes(f"s3://trm/evals/x/wandb/{log}")), "run")[0].job_type == "eval"

    # a run whose folder is at a URI: the driver's summary update reads and writes it there too
    config = TrainConfig(run_name="r", data_paths=["s3://trm/data/q"])
    tracker = create_tracker(config, run_dir="s3://trm/runs/r")
    tracker.log({"eval/exact_accuracy": 0.5}, step=1)
    tracker.finish()
    assert add_to_summary(config, "s3://trm/runs/r", {"tune/status": "complete"})
    logs = sorted(p for p in storage.list_files("s3://trm/runs/r/wandb") if p.endswith(".wandb"))
    assert len(logs) == 2
    last = log_records(storage.read_bytes(f"s3://trm/runs/r/wandb/{logs[-1]}"))
    assert summary_of(last) == {"eval/exact_accuracy": {"max": 0.5, "last": 0.5}, "step": 1, "tune/status": "complete"}
