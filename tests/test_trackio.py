"""What the Trackio tracker (tracking.backend=trackio) records, read back from the project's
SQLite file with the sqlite3 module (not trackio's reader): table `metrics` (run_name, step,
metrics: a JSON object per logged row) and table `configs` (run_name, config: a JSON object,
trackio's own keys starting with "_", the group as `_Group`). The expected values are the
ones the tests log, or the training session's own records."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from test_tracking_wandb import log_records, of_kind, offline, run_files  # noqa: F401 (offline: a fixture)
from trm_ray.config import ConfigError, TrainConfig, load_train_config
from trm_ray.tracking import NullTracker, add_to_summary, create_tracker, resolve_mode, tracking_backend


def forget_trackio() -> None:
    for name in [m for m in sys.modules if m == "trackio" or m.startswith("trackio.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def trackio_dir(tmp_path_factory):
    """TRACKIO_DIR for the module. trackio reads it once, when it is first imported, so it is
    loaded afresh after setting the variable, and dropped again after the module."""
    directory = tmp_path_factory.mktemp("trackio")
    saved = os.environ.get("TRACKIO_DIR")
    os.environ["TRACKIO_DIR"] = str(directory)
    forget_trackio()
    import trackio.utils

    assert Path(trackio.utils.TRACKIO_DIR) == directory
    yield directory
    if saved is None:
        os.environ.pop("TRACKIO_DIR", None)
    else:
        os.environ["TRACKIO_DIR"] = saved
    forget_trackio()


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt (a name lookup included) recorded and refused; an HF token set,
    with which trackio would otherwise ask the Hub who the user is."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)
    return attempts


def child_processes() -> set[int]:
    """The pids whose parent is this process (from /proc: Linux)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if int(fields[1]) == os.getpid():
            children.add(int(stat.parent.name))
    return children


def rows_of(db: Path, run: str) -> list[tuple[int, dict]]:
    """(step, metrics) of every row the run logged, in the order written."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        found = connection.execute("SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id", (run,))
        return [(step, json.loads(metrics)) for step, metrics in found.fetchall()]


def config_of(db: Path, run: str) -> dict:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        [(config,)] = connection.execute("SELECT config FROM configs WHERE run_name = ?", (run,)).fetchall()
    return json.loads(config)


def values_of(rows: list[tuple[int, dict]], key: str) -> list[tuple[int, object]]:
    return [(step, metrics[key]) for step, metrics in rows if key in metrics]


def trackio_config(project: str, **tracking) -> dict:
    return {"backend": "trackio", "project": project, **tracking}


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------
def test_a_run_s_file_holds_its_metrics_table_config_and_checkpoints(trackio_dir, no_network, tmp_path, capfd):
    config = TrainConfig(run_name="r1", data_paths=["data/sudoku-extreme-1k-aug-1000/"],
                         tracking=trackio_config("metrics-test", group="g1", tags=["paper"]))
    threads_before, children_before = set(threading.enumerate()), child_processes()
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"), num_parameters=1234)
    for step, loss in [(1, 2.0), (2, 0.5), (3, 1.25)]:
        tracker.log({"train/lm_loss": loss, "train/accuracy": loss / 4}, step=step)
    tracker.log({"eval/exact_accuracy": 0.25, "epoch": 1, "step": 2}, step=2)
    tracker.log_table("text/continuations", ["prompt", "greedy", "sampled"],
                      [["Once", "Once upon", "Once a"], {"prompt": "The", "greedy": "The end", "sampled": "The cat"}],
                      step=3)
    tracker.checkpoint_saved(2, tmp_path, str(tmp_path / "run" / "checkpoint_0000002"), 0.25)
    tracker.checkpoint_saved(3, tmp_path, str(tmp_path / "run" / "checkpoint_0000003"), 0.25)  # a tie: the later
    tracker.checkpoint_saved(4, tmp_path, None, 0.9)  # kept nowhere: not named
    tracker.training_finished()
    tracker.finish()
    tracker.finish()  # a second finish does nothing

    db = trackio_dir / "metrics-test.db"
    rows = rows_of(db, "r1")
    assert values_of(rows, "train/lm_loss") == [(1, 2.0), (2, 0.5), (3, 1.25)]
    assert values_of(rows, "train/accuracy") == [(1, 0.5), (2, 0.125), (3, 0.3125)]
    assert values_of(rows, "eval/exact_accuracy") == [(2, 0.25)] and values_of(rows, "epoch") == [(2, 1)]
    assert not any("step" in metrics or "__step" in metrics for _, metrics in rows)  # the step is the row's
    [(step, table)] = values_of(rows, "text/continuations")
    assert step == 3 and table["_type"] == "trackio.table"
    assert table["_value"] == [{"prompt": "Once", "greedy": "Once upon", "sampled": "Once a"},
                               {"prompt": "The", "greedy": "The end", "sampled": "The cat"}]
    assert values_of(rows, "checkpoint/location") == [(2, str(tmp_path / "run" / "checkpoint_0000002")),
                                                      (3, str(tmp_path / "run" / "checkpoint_0000003"))]
    assert values_of(rows, "checkpoint/best") == [(3, str(tmp_path / "run" / "checkpoint_0000003"))]

    run_config = config_of(db, "r1")
    assert run_config["_Group"] == "g1" and run_config["job_type"] == "train"
    assert run_config["tags"] == ["sudoku-extreme-1k-aug-1000", "trm", "paper"]
    assert run_config["num_params"] == 1234 and run_config["run_name"] == "r1"
    assert run_config["tracking"]["backend"] == "trackio" and run_config["lr"] == config.lr

    # local only: nothing contacted, no thread or process of trackio's left, one line saying where to look
    assert no_network == []
    assert set(threading.enumerate()) <= threads_before and child_processes() <= children_before
    out, err = capfd.readouterr()
    assert out == ""
    [line] = [line for line in err.splitlines() if "Trackio" in line]
    assert str(trackio_dir) in line and "trackio show --project metrics-test" in line


def test_a_second_tracker_of_the_same_run_continues_it(trackio_dir, no_network, tmp_path):
    config = TrainConfig(run_name="again", data_paths=["data/x"], tracking=trackio_config("resume-test"))
    first = create_tracker(config, run_dir=str(tmp_path / "run"))
    first.log({"train/lm_loss": 1.0}, step=1)
    first.finish()
    second = create_tracker(config, run_dir=str(tmp_path / "run"))  # a resumed training run
    second.log({"train/lm_loss": 0.5}, step=2)
    second.finish()
    assert values_of(rows_of(trackio_dir / "resume-test.db", "again"), "train/lm_loss") == [(1, 1.0), (2, 0.5)]
    with contextlib.closing(sqlite3.connect(trackio_dir / "resume-test.db")) as connection:
        assert connection.execute("SELECT COUNT(DISTINCT run_id) FROM metrics").fetchone() == (1,)


def test_sweep_trials_are_grouped_by_their_sweep(trackio_dir, no_network, tmp_path):
    from trm_ray.run_folder import run_dir_of
    from trm_ray.tune.driver import record_outcomes_in_wandb, trial_train_config
    from trm_ray.tune.records import append_record

    sweep_dir = tmp_path / "sweeps" / "lr-sweep"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "lr-sweep", "metric": "eval/accuracy", "mode": "max"}))
    base = TrainConfig(data_paths=[str(tmp_path / "data" / "maze-30x30-hard-1k")],
                       tracking=trackio_config("sweep-test", tags=["nightly"])).model_dump(mode="json")
    context = {"trial_base": base, "sweep_dir": str(sweep_dir), "sweep_name": "lr-sweep"}
    for trial_id, lr in [("t1", 1e-3), ("t2", 1e-4)]:
        config = trial_train_config(context, trial_id, {"lr": lr})
        tracker = create_tracker(config, run_dir=run_dir_of(config))
        tracker.log({"eval/accuracy": lr * 100}, step=5)
        tracker.finish()

    db = trackio_dir / "sweep-test.db"
    for trial_id, lr in [("t1", 1e-3), ("t2", 1e-4)]:
        run_config = config_of(db, trial_id)
        assert run_config["_Group"] == "lr-sweep" and run_config["job_type"] == "sweep-trial"
        assert run_config["tags"] == ["maze-30x30-hard-1k", "trm", "lr-sweep", "nightly"]
        assert run_config["lr"] == lr
        assert values_of(rows_of(db, trial_id), "eval/accuracy") == [(5, lr * 100)]

    # ASHA's outcome goes to W&B summaries only: nothing to do for Trackio runs, nothing written
    append_record(sweep_dir, {"event": "trial", "trial_id": "t1", "index": 0, "params": {"lr": 1e-3}})
    append_record(sweep_dir, {"event": "result", "trial_id": "t1", "epoch": 1, "eval/accuracy": 0.1})
    append_record(sweep_dir, {"event": "stop", "trial_id": "t1", "time": 1, "early": True})
    assert record_outcomes_in_wandb(str(sweep_dir), context, log=lambda line: None) == 0
    assert not list(sweep_dir.rglob("wandb"))


# --------------------------------------------------------------------------------------------
# A training run
# --------------------------------------------------------------------------------------------
def tiny_training(tmp_path: Path, tracking: dict, name: str):
    from datasets_util import write_tiny_dataset
    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession

    dataset = write_tiny_dataset(tmp_path / "data" / "tiny")
    config = TrainConfig(
        arch=dict(hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_len=1,
                  forward_dtype="float32", halt_max_steps=2),
        data_paths=[str(dataset)], global_batch_size=4, epochs=2, eval_interval=1, lr=1e-2, lr_warmup_steps=1,
        seed=3, run_name=name, tracking=tracking)
    session = LocalSession(tmp_path / "run")
    train(config, session, report_every_steps=100)
    return session


def test_a_training_run_records_train_and_eval_metrics_at_their_steps(trackio_dir, tmp_path):
    from trm_ray.run_folder import EVAL_METRIC

    session = tiny_training(tmp_path, trackio_config("train-test"), "tiny")
    rows = rows_of(trackio_dir / "train-test.db", "tiny")

    last_step = session.history[-1]["step"]
    # every train step's metrics, at that step
    assert [step for step, _ in values_of(rows, "train/lm_loss")] == list(range(1, last_step + 1))
    evaluated = [r for r in session.history if EVAL_METRIC in r]
    assert len(evaluated) == 2
    assert values_of(rows, EVAL_METRIC) == [(r["step"], r[EVAL_METRIC]) for r in evaluated]
    assert values_of(rows, "eval/accuracy") == [(r["step"], r["eval/accuracy"]) for r in evaluated]
    # each kept checkpoint's location at its step, the best one's at the end
    kept = [(r["step"], str(tmp_path / "run" / f"checkpoint_{r['step']:07d}")) for r in evaluated]
    assert values_of(rows, "checkpoint/location") == kept
    best = max(evaluated, key=lambda r: (r[EVAL_METRIC], r["step"]))
    assert values_of(rows, "checkpoint/best") == [(best["step"], str(tmp_path / "run" / f"checkpoint_{best['step']:07d}"))]
    assert all(Path(location).is_dir() for _, location in kept)
    assert config_of(trackio_dir / "train-test.db", "tiny")["job_type"] == "train"
    assert not (tmp_path / "run" / "wandb").exists()  # W&B recorded nothing


def projects_in(directory: Path) -> list[str]:
    """The projects with files in a Trackio folder (a project's database, lock, media...)."""
    return sorted({p.relative_to(directory).parts[0].split(".")[0] for p in directory.rglob("*")})


def test_backend_none_and_wandb_false_record_nothing(trackio_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    before = projects_in(trackio_dir)
    for tracking in ({"backend": "none"}, {"backend": "trackio", "wandb": False}, {"wandb": False}):
        config = TrainConfig(run_name="off", data_paths=["data/x"], tracking={**tracking, "project": "off-test"})
        assert tracking_backend(config) == "none" and resolve_mode(config) == "disabled"
        tracker = create_tracker(config, run_dir=str(tmp_path / "run"))
        assert isinstance(tracker, NullTracker)
        tracker.log_table("text/continuations", ["prompt"], [["a"]], step=1)  # a no-op
    # nor does anything after a run: W&B's summary update is off for them and for trackio runs
    trackio_run = TrainConfig(run_name="off", data_paths=["data/x"], tracking=trackio_config("off-test"))
    assert resolve_mode(trackio_run) == "disabled"
    assert add_to_summary(trackio_run, str(tmp_path / "run"), {"tune/stopped_early": True}) is False

    tiny_training(tmp_path, {"backend": "none", "project": "off-test"}, "none-run")
    assert projects_in(trackio_dir) == before and "off-test" not in before
    assert not (tmp_path / "run" / "wandb").exists()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, named", [
    ("tracking.mode=offline", "tracking.mode=offline"),
    ("tracking.log_checkpoints=best", "tracking.log_checkpoints=best"),
])
def test_wandb_only_settings_with_trackio_are_a_one_line_error(override, named):
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["tracking.backend=trackio", override])
    message = str(caught.value)
    assert "\n" not in message and named in message and "tracking.backend=trackio" in message
    # with backend none they are ignored: nothing is recorded anyway
    assert tracking_backend(load_train_config(None, ["tracking.backend=none", override])) == "none"


def test_an_unknown_backend_is_a_one_line_error():
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["tracking.backend=mlflow"])
    assert "\n" not in str(caught.value) and "tracking.backend" in str(caught.value)


@pytest.mark.parametrize("variable", ["TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"])
def test_a_trackio_server_in_the_environment_is_a_one_line_error(trackio_dir, no_network, monkeypatch, variable):
    monkeypatch.setenv(variable, "someone/somewhere")
    config = TrainConfig(run_name="r", data_paths=["data/x"], tracking=trackio_config("remote-test"))
    with pytest.raises(ConfigError) as caught:
        create_tracker(config)
    assert "\n" not in str(caught.value) and variable in str(caught.value)
    assert "remote-test" not in projects_in(trackio_dir) and no_network == []


def test_trackio_not_installed_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # what an import of a missing package meets
    config = TrainConfig(run_name="r", data_paths=["data/x"], tracking=trackio_config("missing-test"))
    with pytest.raises(ConfigError) as caught:
        create_tracker(config)
    assert "\n" not in str(caught.value) and "trm-ray[trackio]" in str(caught.value)


def test_trackio_dir_set_after_trackio_was_loaded_is_a_one_line_error(trackio_dir, no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "elsewhere"))
    config = TrainConfig(run_name="r", data_paths=["data/x"], tracking=trackio_config("late-dir-test"))
    with pytest.raises(ConfigError) as caught:
        create_tracker(config)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "elsewhere") in message and str(trackio_dir) in message
    assert not (tmp_path / "elsewhere").exists() and "late-dir-test" not in projects_in(trackio_dir)


# --------------------------------------------------------------------------------------------
# log_table on the W&B tracker too
# --------------------------------------------------------------------------------------------
def test_the_wandb_tracker_logs_a_table_at_the_train_step(offline, tmp_path):  # noqa: F811 (a fixture)
    config = TrainConfig(run_name="tables", data_paths=["data/x"])
    tracker = create_tracker(config, run_dir=str(tmp_path / "run"))
    tracker.log_table("text/continuations", ["step", "prompt", "greedy"],
                      [[4, "Once", "Once upon"], {"step": 4, "prompt": "The", "greedy": "The end"}], step=4)
    tracker.finish()

    [log] = run_files(tmp_path / "run")
    [history] = of_kind(log_records(log.read_bytes()), "history")
    items = {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in history.item}
    assert items[("step",)] == 4 and items[("text/continuations", "_type")] == "table-file"
    table = json.loads((log.parent / "files" / items[("text/continuations", "path")]).read_text())
    assert table["columns"] == ["step", "prompt", "greedy"]
    assert table["data"] == [[4, "Once", "Once upon"], [4, "The", "The end"]]
