"""Checkpoints from and to the Hugging Face Hub, against a real Hub-protocol HTTP server on
127.0.0.1 (tests/hub_server.py); nothing reaches the internet.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so everything
that talks to the Hub runs in a child process with those variables set (DRIVER below: one
process runs a list of CLI calls and loads, so each environment costs one interpreter start).
Expectations come from outside the code under test: bytes read back from the server over plain
HTTP, the local files that were pushed, metrics.jsonl read by hand, tensors of the saved models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import trm_ray
from datasets_util import write_dataset
from hub_server import HubServer, hub_env
from trm_ray.checkpoint import CheckpointError, read_state_dict
from trm_ray.config import ArchConfig, DataShape, TrainConfig, to_yaml
from trm_ray.eval import evaluate_checkpoint
from trm_ray.hub import HubPath, as_hub_uri, is_hub_path, parse_hub_path
from trm_ray.model import build_model
from trm_ray.train.loop import train
from trm_ray.train.session import LocalSession

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

TOKEN = "hf_alice_writes"
ROOT = Path(__file__).resolve().parent.parent
ARCH = dict(hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_len=1,
            forward_dtype="float32", halt_max_steps=1)

# Runs steps in one process: {"cli": [args]} (the real command line, in-process), {"load": path,
# "save": file} (trm_ray.load_checkpoint, state dict saved), {"check_inputs": TrainConfig JSON}
# (training's checks: its load_checkpoint, or the error), {"env": {...}} (set variables; the
# token is read per request). Prints one JSON list of results.
DRIVER = r"""
import json, os, sys, traceback
from click.testing import CliRunner
import torch, trm_ray
from trm_ray.cli.main import main

results = []
for step in json.loads(sys.argv[1]):
    if "env" in step:
        for key, value in step["env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        results.append(None)
    elif "cli" in step:
        result = CliRunner().invoke(main, step["cli"])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            traceback.print_exception(result.exception)
        results.append({"exit_code": result.exit_code, "output": result.output})
    elif "check_inputs" in step:
        from trm_ray.config import TrainConfig
        from trm_ray.train.trainer import check_inputs
        try:
            config = check_inputs(TrainConfig.model_validate_json(step["check_inputs"]))
            results.append("LOAD " + config.load_checkpoint)
        except Exception as error:
            results.append(f"{type(error).__name__}: {error}")
    else:
        try:
            model = trm_ray.load_checkpoint(step["load"])
            torch.save(model.state_dict(), step["save"])
            results.append("ok")
        except Exception as error:
            results.append(f"{type(error).__name__}: {error}")
print("RESULTS " + json.dumps(results))
"""


def drive(env: dict[str, str], steps: list[dict], cwd: Path) -> list:
    process = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(steps)], env=env, cwd=cwd,
                             capture_output=True, text=True, timeout=300)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULTS ")]
    assert process.returncode == 0 and lines, process.stdout[-3000:] + process.stderr[-5000:]
    return json.loads(lines[-1][len("RESULTS "):])


def cli_ok(result: dict) -> str:
    assert result["exit_code"] == 0, result["output"]
    return result["output"]


def one_line_error(result: dict) -> str:
    lines = [line for line in result["output"].splitlines() if line.strip()]
    assert result["exit_code"] != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result["output"]
    return lines[0]


def assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def tiny_model(seed: int, num_ids: int = 4):
    torch.manual_seed(seed)
    arch = ArchConfig(hidden_size=16, num_heads=2, expansion=2.0, H_cycles=1, L_cycles=1, L_layers=1,
                      puzzle_emb_ndim=16, puzzle_emb_len=1, pos_encodings="rope", forward_dtype="float32",
                      halt_max_steps=2)
    model = build_model(arch, DataShape(seq_len=8, vocab_size=12, num_puzzle_identifiers=num_ids), batch_size=4)
    with torch.no_grad():
        model.model.inner.puzzle_emb.weights.normal_()  # the table starts at zero: make it tell
    return model.eval()


# --------------------------------------------------------------------------------------------
# fixtures: one server, one trained run pushed once
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    hub = HubServer.start(tokens={TOKEN: "alice"})
    try:
        yield hub
    finally:
        hub.stop()


def train_config(dataset: Path, **overrides) -> TrainConfig:
    base = dict(arch=ARCH, data_paths=[str(dataset)], global_batch_size=4, epochs=4, eval_interval=2, lr=1e-2,
                lr_warmup_steps=2, seed=1, run_name="hubrun", ema=False, tracking={"wandb": False})
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run folder (config.yaml, metrics.jsonl with evaluations, two checkpoints) and its dataset."""
    root = tmp_path_factory.mktemp("hubrun")
    dataset = root / "data"
    write_dataset(dataset, [[2, 1], [3], [1, 1, 2], [2], [1], [2, 2], [3], [1]], split="train")
    write_dataset(dataset, [[1]] * 5, split="test")
    run_dir = root / "runs" / "hubrun"
    config = train_config(dataset)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(config))
    train(config, LocalSession(run_dir))
    return run_dir, dataset


@pytest.fixture(scope="module")
def pushed(server, run, tmp_path_factory):
    """The run folder pushed to alice/trm-run with `trm-ray hub push` (its best checkpoint)."""
    run_dir, _ = run
    home = tmp_path_factory.mktemp("hf-home-push")
    out = drive(server.env(home, token=TOKEN), [{"cli": ["hub", "push", str(run_dir), "alice/trm-run"]}], home)
    return cli_ok(out[0])


def best_record(run_dir: Path) -> dict:
    """By hand: the evaluated report with the highest exact accuracy (ties: the later one)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluated = [r for r in records if "eval/exact_accuracy" in r and r.get("checkpoint")]
    return max(evaluated, key=lambda r: (r["eval/exact_accuracy"], r["step"]))


# --------------------------------------------------------------------------------------------
# naming
# --------------------------------------------------------------------------------------------
def test_hub_paths_are_recognised_and_a_local_path_wins(tmp_path, monkeypatch):
    assert parse_hub_path("hf://alice/m/ck") == HubPath("alice/m", "ck")
    assert parse_hub_path("alice/m@dev/a/step_5") == HubPath("alice/m", "a/step_5", "dev")
    assert parse_hub_path("hf://alice/m@refs/pr/3/step_5") == HubPath("alice/m", "step_5", "refs/pr/3")
    assert parse_hub_path("hf://alice/m/ck/") == HubPath("alice/m", "ck", None, folder=True)
    assert parse_hub_path("hf://alice/m") == HubPath("alice/m", "")
    # what the alphaXiv README and its loader test type
    assert parse_hub_path("alphaxiv/trm-model-maze/maze_hard_step_32550") == \
        HubPath("alphaxiv/trm-model-maze", "maze_hard_step_32550")
    assert parse_hub_path("https://huggingface.co/alphaXiv/trm-model-maze/blob/main/maze_hard_step_32550") == \
        HubPath("alphaXiv/trm-model-maze", "maze_hard_step_32550", "main")
    assert parse_hub_path("https://huggingface.co/alice/m/tree/dev/runs/ck") == HubPath("alice/m", "runs/ck", "dev",
                                                                                         folder=True)
    for not_hub in ("/abs/alice/m/ck", "s3://bucket/alice/m", "./alice/m/ck", "~/alice/m", "step_5",
                    "a--b/m/ck", "alice/m/../ck", "https://example.com/alice/m"):
        assert parse_hub_path(not_hub) is None and not is_hub_path(not_hub), not_hub
    with pytest.raises(CheckpointError, match="model repos"):
        parse_hub_path("hf://datasets/alice/m/x")
    with pytest.raises(CheckpointError, match="not a Hub path"):
        parse_hub_path("hf://alice")

    monkeypatch.chdir(tmp_path)
    assert is_hub_path("alice/m/ck") and as_hub_uri("alice/m@v1/ck") == "hf://alice/m@v1/ck"
    model = tiny_model(0)
    (tmp_path / "alice" / "m" / "ck").mkdir(parents=True)
    trm_ray.save_checkpoint(model, "alice/m/ck/")
    assert not is_hub_path("alice/m/ck") and as_hub_uri("alice/m/ck") is None  # local wins
    assert is_hub_path("hf://alice/m/ck")  # unless the URI says otherwise
    assert_same_tensors(trm_ray.load_checkpoint("alice/m/ck").state_dict(), model.state_dict())


# --------------------------------------------------------------------------------------------
# push, model card, eval by hf:// and bare paths
# --------------------------------------------------------------------------------------------
def test_push_of_a_run_folder_uploads_its_best_checkpoint_and_a_model_card(server, run, pushed):
    run_dir, _ = run
    best = best_record(run_dir)
    name = best["checkpoint"]
    assert f"{server.endpoint}/alice/trm-run/tree/main/{name}" in pushed
    assert f"hf://alice/trm-run/{name}" in pushed
    for file in ("model.pt", "all_config.yaml"):
        assert server.file("alice/trm-run", f"{name}/{file}") == (run_dir / name / file).read_bytes(), file
    card = server.file("alice/trm-run", "README.md").decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "trm-ray" and {"trm", "trm-ray"} <= set(front["tags"])
    config_text = (run_dir / name / "all_config.yaml").read_text()
    assert f"```yaml\n{config_text.rstrip()}\n```" in card  # the run's config, verbatim
    config = yaml.safe_load(config_text)
    assert config["arch"]["hidden_size"] == 16 and config["lr"] == 0.01 and config["global_batch_size"] == 4
    assert f"| eval/exact_accuracy | {best['eval/exact_accuracy']:.4f} |" in card
    assert f"| eval/count | {int(best['eval/count'])} |" in card and f"(step {best['step']})" in card
    assert f'trm_ray.load_checkpoint("hf://alice/trm-run/{name}")' in card
    assert [summary for _, summary in server.commits("alice/trm-run")] == ["initial commit", f"trm-ray: push {name}"]


def test_eval_reads_a_hub_checkpoint_by_uri_and_by_bare_path(server, run, pushed, tmp_path):
    run_dir, dataset = run
    name = best_record(run_dir)["checkpoint"]
    local = evaluate_checkpoint(run_dir / name, dataset, save_outputs=["preds", "q_halt_logits"])
    args = ["--dataset", str(dataset), "--num-workers", "0", "--save-outputs", "preds,q_halt_logits"]
    steps = [{"cli": ["eval", "--checkpoint", f"hf://alice/trm-run/{name}", "--outdir", "by-uri", *args]},
             {"cli": ["eval", "--checkpoint", f"alice/trm-run/{name}", "--outdir", "by-bare-path", *args]}]
    for result in drive(server.env(tmp_path / "home"), steps, tmp_path):
        cli_ok(result)
    for outdir in ("by-uri", "by-bare-path"):
        written = json.loads((tmp_path / outdir / "metrics.json").read_text())
        assert written["metrics"] == local.metrics, outdir
        outputs = np.load(tmp_path / outdir / "outputs.npz")
        for key in ("preds", "q_halt_logits"):
            assert np.array_equal(outputs[f"all__{key}"], local.outputs["all"][key]), (outdir, key)
    # downloaded once, into the Hugging Face cache under HF_HOME
    snapshots = list((tmp_path / "home" / "hub" / "models--alice--trm-run" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / name / "model.pt").read_bytes() == \
        (run_dir / name / "model.pt").read_bytes()


def test_revisions_pin_the_weights_and_eval_metrics_fill_the_card(server, tmp_path):
    first, second = tiny_model(0), tiny_model(1)
    trm_ray.save_checkpoint(first, tmp_path / "v1" / "step_5")  # reference layout: a file + all_config.yaml
    trm_ray.save_checkpoint(second, tmp_path / "v2" / "step_5")
    metrics = {"metrics": {"eval/exact_accuracy": 0.8525, "eval/count": 400, "ARC/pass@2": 0.4375,
                           "train/lm_loss": 1.5}, "dataset": "data/maze-30x30-hard-1k", "num_examples": 400}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    env = server.env(tmp_path / "home", token=TOKEN)
    pushes = [["hub", "push", str(tmp_path / "v1" / "step_5"), "alice/ref", "--eval-metrics", "metrics.json"],
              ["hub", "push", str(tmp_path / "v2" / "step_5"), "alice/ref", "-m", "second weights"],
              ["hub", "push", str(tmp_path / "v1" / "step_5"), "alice/ref", "--branch", "dev",
               "--path-in-repo", "old/step_7"]]
    results = drive(env, [{"cli": args} for args in pushes], tmp_path)
    assert f"{server.endpoint}/alice/ref/blob/main/step_5" in cli_ok(results[0])
    assert "hf://alice/ref@dev/old/step_7" in cli_ok(results[2])
    commits = server.commits("alice/ref")
    assert [summary for _, summary in commits] == ["initial commit", "trm-ray: push step_5", "second weights",
                                                   "trm-ray: push step_5 as old/step_7"]
    first_commit = commits[1][0]
    card = server.file("alice/ref", "README.md", revision=first_commit).decode()
    assert "| eval/exact_accuracy | 0.8525 |" in card and "| eval/count | 400 |" in card
    assert "| ARC/pass@2 | 0.4375 |" in card and "train/lm_loss" not in card
    assert "`trm-ray eval` on data/maze-30x30-hard-1k (400 examples)" in card
    assert server.file("alice/ref", "all_config.yaml") == (tmp_path / "v2" / "all_config.yaml").read_bytes()

    loads = {f"hf://alice/ref@{first_commit}/step_5": first, f"alice/ref@{first_commit[:7]}/step_5": first,
             "hf://alice/ref/step_5": second, "alice/ref/step_5": second, "hf://alice/ref@dev/old/step_7": first}
    steps = [{"load": path, "save": str(tmp_path / f"loaded{i}.pt")} for i, path in enumerate(loads)]
    assert drive(server.env(tmp_path / "home-reader"), steps, tmp_path) == ["ok"] * len(loads)
    for i, (path, model) in enumerate(loads.items()):
        assert_same_tensors(torch.load(tmp_path / f"loaded{i}.pt", weights_only=True), model.state_dict())


def test_training_starts_from_a_hub_checkpoint_pinned_with_the_puzzle_table_reset(server, run, pushed, tmp_path):
    run_dir, _ = run
    name = best_record(run_dir)["checkpoint"]
    other = tmp_path / "other"  # 3 puzzles: a puzzle table of another size than the checkpoint's
    write_dataset(other, [[2], [3, 1]], split="train")
    write_dataset(other, [[1]] * 2, split="test")
    config = train_config(other, epochs=2, lr=0.0, puzzle_emb_lr=0.0, run_name="from-hub",
                          load_checkpoint=f"alice/trm-run/{name}", ray={"storage_path": str(tmp_path / "runs")})
    script = ("import json, sys\n"
              "from trm_ray.config import TrainConfig\n"
              "from trm_ray.train.trainer import check_inputs\n"
              "from trm_ray.train.loop import train\n"
              "from trm_ray.train.session import LocalSession\n"
              "config = check_inputs(TrainConfig.model_validate_json(sys.argv[1]))\n"
              "print('LOAD ' + config.load_checkpoint)\n"
              "train(config, LocalSession(sys.argv[2]))\n")
    process = subprocess.run([sys.executable, "-c", script, config.model_dump_json(), str(tmp_path / "run")],
                             env=server.env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stderr[-5000:]
    commit = server.commits("alice/trm-run")[-1][0]
    assert f"LOAD hf://alice/trm-run@{commit}/{name}" in process.stdout  # pinned: what the workers load
    assert "puzzle table has" in process.stderr and "reset to the mean" in process.stderr
    saved = read_state_dict(run_dir / name)
    trained = read_state_dict(sorted((tmp_path / "run").glob("checkpoint_*"))[-1])
    table = "model.inner.puzzle_emb.weights"
    assert trained[table].shape[0] == 4 != saved[table].shape[0]
    assert torch.equal(trained[table], saved[table].mean(0, keepdim=True).expand(4, -1))
    # lr 0: every other tensor is the checkpoint's
    assert_same_tensors({k: v for k, v in trained.items() if k != table},
                        {k: v for k, v in saved.items() if k != table})


# --------------------------------------------------------------------------------------------
# the cache and offline mode
# --------------------------------------------------------------------------------------------
def test_offline_mode_loads_from_the_cache_and_says_when_it_cannot(run, tmp_path):
    run_dir, dataset = run
    name = best_record(run_dir)["checkpoint"]
    model = tiny_model(2)
    trm_ray.save_checkpoint(model, tmp_path / "ck" / "step_3")
    own = HubServer.start(tokens={TOKEN: "alice"})
    try:
        results = drive(own.env(tmp_path / "home", token=TOKEN),
                        [{"cli": ["hub", "push", str(tmp_path / "ck" / "step_3"), "alice/off"]},
                         {"cli": ["hub", "push", str(run_dir / name), "alice/off"]},
                         {"load": "hf://alice/off/step_3", "save": str(tmp_path / "online.pt")},
                         {"load": f"hf://alice/off/{name}", "save": str(tmp_path / "online-folder.pt")}], tmp_path)
        cli_ok(results[0]), cli_ok(results[1])
        assert results[2:] == ["ok", "ok"]
        offline = own.env(tmp_path / "home", offline=True)
    finally:
        own.stop()
    local = evaluate_checkpoint(run_dir / name, dataset)
    steps = [{"load": "hf://alice/off/step_3", "save": str(tmp_path / "offline.pt")},
             {"load": "alice/off/step_3", "save": str(tmp_path / "offline-bare.pt")},
             {"load": f"hf://alice/off/{name}", "save": str(tmp_path / "offline-folder.pt")},
             {"cli": ["eval", "--checkpoint", f"alice/off/{name}", "--dataset", str(dataset), "--num-workers", "0",
                      "--outdir", "eval-offline"]},
             {"load": "hf://alice/off/step_9", "save": str(tmp_path / "x.pt")},
             {"cli": ["eval", "--checkpoint", f"hf://alice/off/{name}", "--dataset", str(dataset), "--num-workers",
                      "0", "--outdir", "eval-offline-uri"]}]
    got = drive(offline, steps, tmp_path)
    assert got[:3] == ["ok"] * 3
    for file in ("online.pt", "offline.pt", "offline-bare.pt"):
        assert_same_tensors(torch.load(tmp_path / file, weights_only=True), model.state_dict())
    assert_same_tensors(torch.load(tmp_path / "offline-folder.pt", weights_only=True),
                        torch.load(tmp_path / "online-folder.pt", weights_only=True))
    cli_ok(got[3])
    assert json.loads((tmp_path / "eval-offline" / "metrics.json").read_text())["metrics"] == local.metrics
    cli_ok(got[5])
    assert json.loads((tmp_path / "eval-offline-uri" / "metrics.json").read_text())["metrics"] == local.metrics
    assert got[4] == ("HubCheckpointError: checkpoint 'hf://alice/off/step_9': HF_HUB_OFFLINE=1 and 'step_9' of Hub "
                      f"repo 'alice/off' is not in the Hugging Face cache ({tmp_path / 'home' / 'hub'}): download it "
                      "once online, or unset HF_HUB_OFFLINE")


def test_a_cache_filled_beforehand_is_used_offline(tmp_path):
    """The standard cache layout (models--owner--name/refs, snapshots/<commit>) under HF_HUB_CACHE,
    written by hand; no server at all."""
    model = tiny_model(3)
    trm_ray.save_checkpoint(model, tmp_path / "src" / "step_9")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--alice--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / "sub"
    snapshot.mkdir(parents=True)
    for file in ("step_9", "all_config.yaml"):
        (snapshot / file).write_bytes((tmp_path / "src" / file).read_bytes())
    env = hub_env("http://127.0.0.1:9", tmp_path / "home", offline=True)  # port 9: nothing listens
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    steps = [{"load": "hf://alice/cached/sub/step_9", "save": str(tmp_path / "a.pt")},
             {"load": f"alice/cached@{commit}/sub/step_9", "save": str(tmp_path / "b.pt")}]
    assert drive(env, steps, tmp_path) == ["ok", "ok"]
    for file in ("a.pt", "b.pt"):
        assert_same_tensors(torch.load(tmp_path / file, weights_only=True), model.state_dict())


# --------------------------------------------------------------------------------------------
# errors: one line, what is wrong and what to do
# --------------------------------------------------------------------------------------------
def test_hub_errors_are_one_line_and_say_what_to_do(server, run, pushed, tmp_path):
    run_dir, dataset = run
    name = best_record(run_dir)["checkpoint"]
    trm_ray.save_checkpoint(tiny_model(4), tmp_path / "ck" / "step_1")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.pt").write_bytes(b"x")  # a folder without all_config.yaml
    setup = [{"cli": ["hub", "push", str(tmp_path / "ck" / "step_1"), "alice/secret", "--private"]},
             {"cli": ["hub", "push", str(tmp_path / "ck" / "step_1"), "alice/gated"]},
             {"cli": ["hub", "push", str(tmp_path / "ck" / "step_1"), "bob/theirs"]},
             {"cli": ["hub", "push", str(tmp_path / "missing"), "alice/x"]},
             {"cli": ["hub", "push", str(tmp_path / "bare"), "alice/x"]},
             {"cli": ["hub", "push", str(tmp_path / "ck" / "step_1"), "not a repo"]},
             {"cli": ["hub", "push", str(tmp_path / "ck" / "step_1"), "alice/trm-run", "--private"]}]
    results = drive(server.env(tmp_path / "home", token=TOKEN), setup, tmp_path)
    cli_ok(results[0]), cli_ok(results[1])
    assert "access to Hub repo 'bob/theirs' denied (403 Forbidden): the token needs write access" in \
        one_line_error(results[2])
    assert "does not exist: pass a run folder" in one_line_error(results[3])
    assert "no all_config.yaml beside checkpoint" in one_line_error(results[4])
    assert "is not a Hub repo id" in one_line_error(results[5])
    assert "--private: Hub repo 'alice/trm-run' exists and is public, so nothing was pushed" in \
        one_line_error(results[6])
    server.gate("alice/gated")

    login = "set HF_TOKEN or run `hf auth login`"
    steps = [{"load": "hf://alice/nothere/step_1"}, {"load": "hf://alice/secret/step_1"},
             {"load": "hf://alice/gated/step_1"}, {"load": f"hf://alice/trm-run/{name}x"},
             {"load": f"hf://alice/trm-run@nobranch/{name}"}, {"load": "alice/trm-run/nope"},
             {"load": "hf://datasets/alice/d/x"},
             {"cli": ["eval", "--checkpoint", "alice/nothere/ck", "--dataset", str(dataset), "--num-workers", "0"]},
             {"cli": ["hub", "push", str(tmp_path / "ck" / "step_1"), "alice/new"]},
             {"env": {"HF_TOKEN": "hf_not_a_token"}}, {"load": "hf://alice/trm-run/x"},
             {"env": {"HF_TOKEN": TOKEN}}, {"load": "hf://alice/gated/step_1"}, {"load": "hf://alice/none/x"},
             {"load": "hf://alice/secret/step_1"},
             {"check_inputs": train_config(dataset, load_checkpoint="alice/nothere/ck").model_dump_json()}]
    for step in steps:
        if "load" in step:
            step["save"] = str(tmp_path / "w.pt")
    got = drive(server.env(tmp_path / "reader", token=None), steps, tmp_path)
    assert got[0] == ("HubCheckpointError: checkpoint 'hf://alice/nothere/step_1': Hub repo 'alice/nothere' does "
                      f"not exist, or it is private or gated and no token was sent: check the name, or {login}")
    assert got[1].replace("secret", "nothere") == got[0]  # a private repo looks missing without a token
    assert "Hub repo 'alice/gated' is gated: request access on" in got[2] and login in got[2]
    assert f"Hub repo 'alice/trm-run' has no file '{name}x' and no folder of that name with model.pt; " \
           f"it holds: {name}" in got[3]
    assert "revision 'nobranch' does not exist in Hub repo 'alice/trm-run'" in got[4]
    assert got[5].startswith("HubCheckpointError: checkpoint 'alice/trm-run/nope': no local file or folder of that "
                             "name, and on the Hugging Face Hub: Hub repo 'alice/trm-run' has no file 'nope'")
    assert "checkpoints live in model repos" in got[6]
    line = one_line_error(got[7])
    assert "'alice/nothere/ck': no local file or folder of that name, and on the Hugging Face Hub" in line
    assert login in line and not list(tmp_path.glob("eval-*"))
    assert "pushing to Hub repo 'alice/new' needs a token with write access: " + login in one_line_error(got[8])
    assert "the Hub refused the token (401 Unauthorized)" in got[10]
    assert "Hub repo 'alice/gated' is gated" in got[12]
    assert "the token sent has no access to it" in got[13]
    assert got[14] == "ok"  # private: readable with a token
    assert all("\n" not in message for message in got[:7] + got[9:] if isinstance(message, str))

    # load_checkpoint= of a run: checked before any Ray process starts
    assert got[15].startswith("ConfigError: load_checkpoint='alice/nothere/ck': no local file or folder of that "
                              "name, and on the Hugging Face Hub: Hub repo 'alice/nothere' does not exist")
