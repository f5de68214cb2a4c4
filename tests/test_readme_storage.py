"""Every README command that names $TRM_RAY_STORAGE or an s3:// path runs against a real
S3-protocol server (tests/s3_server.py), in the README's order, and does what it says.

The commands are read from README.md itself (the storage section's block and the cluster
section's `trm-ray submit -- '...'` lines, whose quoted command is what the job runs on the
cluster), with $TRM_RAY_STORAGE expanded as the cluster's shell expands it. Only sizes are
changed, by options appended to each command (later ones win): a smaller dataset, CPU workers
instead of GPUs, fewer epochs. Afterwards no credential value (the S3 secret, a W&B key, the Ray token)
appears in any object of the storage or any file of the local run side.

The commands share one local Ray (started by the module, as on the cluster the commands are
submitted to; each command uses a running Ray instead of starting its own), started in the
commands' working folder with their environment, so Ray's processes see what a user's shell
would give them.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from trm_ray.cli.main import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

README = Path(__file__).resolve().parents[1] / "README.md"
STORAGE = "s3://trm/readme"
# Appended to the commands: the dataset a tenth of the quickstart's (100 train puzzles x 8
# variants, 20 test puzzles), so every run and trial computes a tenth; training CPU-sized and
# short. The README's own values stay in front and are overridden. The sweep keeps its file's
# epochs and ASHA rungs (20 epochs, rungs at 5 and 15).
DATA_SIZE = ["--num-train", "100", "--num-test", "20"]
TRAIN_SIZE = ["ray.use_gpu=false", "ray.num_workers=2", "epochs=4", "eval_interval=2"]
FAKE_WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"


def readme_commands() -> list[list[str]]:
    """The trm-ray commands of the README that name $TRM_RAY_STORAGE or s3://, as argv lists."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.strip()
            if not line.startswith("trm-ray") or not ("$TRM_RAY_STORAGE" in line or "s3://" in line):
                continue
            argv = shlex.split(line, comments=True)
            if argv[:2] == ["trm-ray", "submit"]:
                inner = argv[argv.index("--") + 1:]
                argv = shlex.split(inner[0]) if len(inner) == 1 else inner
            commands.append(argv)
    return commands


def same_work(a: list[str], b: list[str]) -> bool:
    """Two commands that compute the same once the appended sizes win: the same arguments but
    for the keys TRAIN_SIZE sets and the run's name."""
    ignored = tuple(item.split("=")[0] + "=" for item in TRAIN_SIZE) + ("run_name=",)
    return [x for x in a if not x.startswith(ignored)] == [x for x in b if not x.startswith(ignored)]


def expand(argv: list[str]) -> list[str]:
    return [a.replace("$TRM_RAY_STORAGE", STORAGE) for a in argv[1:]]  # without "trm-ray"


def test_readme_lists_the_storage_commands():
    kinds = [tuple(a for a in argv[1:3] if not a.startswith(("-", "$"))) for argv in readme_commands()]
    for expected in (("data", "build"), ("train",), ("eval",), ("sweep",), ("compare",)):
        assert any(k[:len(expected)] == expected for k in kinds), (expected, kinds)


@pytest.fixture(scope="module")
def workdir(s3, tmp_path_factory):
    """The commands' working folder and environment, then one local Ray for them all, started
    after `s3` exported the store's settings: Ray's processes (trials, Train workers) inherit
    the same working folder and variables as the commands."""
    import ray

    from ray_util import wait_until_ray_is_gone
    from trm_ray.cluster import connect

    path = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)  # the commands' local outputs (plots, recipes) land here
        patch.setenv("TRM_RAY_STORAGE", STORAGE)
        patch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)  # W&B stays offline (conftest), key present
        patch.setenv("TRM_RAY_CACHE", str(path / "cache"))
        connect(num_cpus=2)
        try:
            yield path
        finally:
            ray.shutdown()
            assert not wait_until_ray_is_gone(), "Ray processes left behind after ray.shutdown()"


def test_readme_storage_commands_run_against_s3(s3, workdir):
    repo = README.parent
    seen: dict[str, str] = {}
    commands = []
    for argv in readme_commands():
        args = [a if not a.startswith(("datasets/", "experiments/")) else str(repo / "trm_ray/recipes" / a) for a in expand(argv)]
        if args[0] == "data" and any(a.endswith("/data/q") for a in args):
            continue  # the Datasets section's example URI: tests/test_storage_data.py runs it
        if args[0] == "train":
            args += TRAIN_SIZE
        elif args[:2] == ["data", "build"]:
            args += DATA_SIZE
        commands.append(args)
    # The cluster section submits the commands the storage section shows (its train with GPU
    # workers, which TRAIN_SIZE replaces, and no run_name): each runs once, where the storage
    # section has it, so `--resume` and `eval` find the run they name.
    commands = [args for i, args in enumerate(commands)
                if not any(same_work(args, later) for later in commands[i + 1:])]
    for args in commands:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        seen[" ".join(args[:2])] = result.output

    # data build: the dataset is published with its commit marker
    keys = s3.keys("trm", "readme/data/")
    assert "readme/data/sudoku-4x4-quickstart/build.json" in keys
    # train: run folder at the URI with its config, metrics and checkpoints
    run_keys = s3.keys("trm", "readme/runs/quickstart-s3/")
    for name in ("config.yaml", "metrics.jsonl"):
        assert f"readme/runs/quickstart-s3/{name}" in run_keys
    assert any(k.endswith("/model.pt") for k in run_keys) and any(k.endswith("/train_state.pt") for k in run_keys)
    metrics = [json.loads(line) for line in s3.get("trm", "readme/runs/quickstart-s3/metrics.jsonl").splitlines()]
    assert max(r["step"] for r in metrics) > 0
    train_output = seen["train " + str(repo / "trm_ray/recipes/experiments/quickstart.yaml")]
    assert "final: (none)" not in train_output and "best checkpoint: s3://trm/readme/runs/quickstart-s3/" in train_output
    # train --resume of the finished run: found in storage, nothing left to train
    assert "run already finished" in seen["train --resume"]
    # eval of the run folder: its metrics
    assert "exact" in seen["eval --checkpoint"]
    # sweep: Tune's state, the records and every trial's Train run live in storage
    sweep_keys = s3.keys("trm", "readme/sweeps/quickstart/")
    assert "readme/sweeps/quickstart/sweep.json" in sweep_keys and "readme/sweeps/quickstart/trials.jsonl" in sweep_keys
    trials = {k.split("/")[4] for k in sweep_keys if k.startswith("readme/sweeps/quickstart/train/") and k.endswith("model.pt")}
    assert len(trials) == 6, trials
    # compare: the ranked table and local outputs
    assert (workdir / "curves.png").is_file() and (workdir / "best.yaml").is_file()
    assert not (workdir / "runs").exists(), "something was written to local disk instead of storage"

    # no credential value anywhere in storage or on the local side of the runs
    secrets = {"S3 secret": s3.secret_key, "W&B key": FAKE_WANDB_KEY}
    token_file = Path.home() / ".ray" / "auth_token"
    if token_file.is_file() and token_file.read_text().strip():
        secrets["Ray token"] = token_file.read_text().strip()
    for key in s3.keys("trm", "readme/"):
        body = s3.get("trm", key)
        for what, value in secrets.items():
            assert value.encode() not in body, f"{what} found in s3://trm/{key}"
    for path in workdir.rglob("*"):
        if path.is_file() and "cache" not in path.parts:
            body = path.read_bytes()
            for what, value in secrets.items():
                assert value.encode() not in body, f"{what} found in {path}"
