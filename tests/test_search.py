"""Model-based search (search: {algorithm: optuna | hyperopt}): the sweep file's rules, the Tune
space, seeded proposals, architectures as choices, the missing-extra error (no Ray), and on
local Ray a TPE sweep whose driver is killed and `--resume`d: the search continues from the
searcher's saved state, no finished trial trains again, compare names the winner.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from trm_ray.cli.main import main
from trm_ray.tune.search import propose, tune_space
from trm_ray.tune.spec import Domain, expand_trials, load_sweep_spec, searched_space

REPO = Path(__file__).resolve().parents[1]
BASE = """\
data_paths: [data/nowhere]
arch: {hidden_size: 64, num_heads: 4, H_cycles: 2, L_cycles: 2}
global_batch_size: 64
epochs: 20
eval_interval: 5
ray: {num_workers: 2}
"""
LR = (1.0e-4, 1.0e-2)


def write_sweep(tmp_path, body: str, base: str = BASE) -> str:
    (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\nasha: {grace_period: 5}\n" + textwrap.dedent(body))
    return str(path)


def dry_run(path):
    return CliRunner().invoke(main, ["sweep", path, "--dry-run"], catch_exceptions=False)


def assert_one_line_error(output: str, *words):
    lines = [line for line in output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for word in words:
        assert word in lines[0], (word, lines[0])


SEARCHED = f"""\
search: {{algorithm: optuna, num_samples: 6, seed: 3, random_startup: 4}}
search_space:
  lr: {{loguniform: {list(LR)}}}
  arch.H_cycles: {{randint: [1, 4]}}
  puzzle_emb_lr: {{choice: [0.01, 0.1]}}
  weight_decay: {{uniform: [0.0, 1.0]}}
"""


# --------------------------------------------------------------------------------------------
# Without Ray
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, words", [
    (SEARCHED.replace("{randint: [1, 4]}", "{grid: [1, 2]}"), ["search_space.arch.H_cycles", "grid", "choice"]),
    (SEARCHED.replace("algorithm: optuna", "algorithm: tpe"), ["search.algorithm", "'optuna'"]),
    (SEARCHED + "num_samples: 3\n", ["num_samples and search.num_samples are both set"]),
    (SEARCHED + "seed: 1\n", ["seed and search.seed are both set"]),
    (SEARCHED.replace("num_samples: 6, ", ""), ["search.num_samples is missing"]),
    # a corner of the space is checked before launch: 64 / 3 heads is no head width
    (SEARCHED.replace("arch.H_cycles: {randint: [1, 4]}", "arch.num_heads: {randint: [3, 5]}"),
     ["arch.num_heads=3"]),
])
def test_bad_searched_sweeps_fail_with_one_line(tmp_path, body, words):
    result = dry_run(write_sweep(tmp_path, body))
    assert result.exit_code != 0
    assert_one_line_error(result.output, *words)


def test_tune_space_maps_every_kind():
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

    space = tune_space({"lr": Domain(loguniform=(1e-4, 1e-2)), "wd": Domain(uniform=(0.0, 1.0)),
                        "h": Domain(randint=(1, 3)), "p": Domain(choice=[0.01, 0.1])})
    assert isinstance(space["lr"], Float) and isinstance(space["lr"].get_sampler(), LogUniform)
    assert (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-2)
    assert isinstance(space["wd"], Float) and isinstance(space["wd"].get_sampler(), Uniform)
    assert (space["wd"].lower, space["wd"].upper) == (0.0, 1.0)
    assert isinstance(space["h"], Integer) and (space["h"].lower, space["h"].upper) == (1, 3)
    assert sorted(set(space["h"].sample(size=200))) == [1, 2]  # [low, high), as ours
    assert isinstance(space["p"], Categorical) and space["p"].categories == [0.01, 0.1]


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_proposals_are_seeded_inside_the_space_and_off_any_grid(tmp_path, algorithm):
    sweep = load_sweep_spec(write_sweep(tmp_path, SEARCHED.replace("optuna", algorithm)))
    search, space = sweep.spec.search_config(), searched_space(sweep)
    assert search.seed == 3 and search.num_samples == 6
    first = propose(search, space, "eval/accuracy", "max", 4)
    assert first == propose(search, space, "eval/accuracy", "max", 4)
    other = propose(search.model_copy(update={"seed": 4}), space, "eval/accuracy", "max", 4)
    assert [p["lr"] for p in other] != [p["lr"] for p in first]
    for point in first:
        assert list(point) == ["lr", "arch.H_cycles", "puzzle_emb_lr", "weight_decay"]
        assert LR[0] < point["lr"] < LR[1] and type(point["lr"]) is float
        assert point["arch.H_cycles"] in (1, 2, 3) and type(point["arch.H_cycles"]) is int
        assert point["puzzle_emb_lr"] in (0.01, 0.1) and 0.0 <= point["weight_decay"] <= 1.0
    # continuous draws: four different values, none a 1-2-3 step of a grid (1e-4, 3e-4, 1e-3, ...)
    lrs = [p["lr"] for p in first]
    assert len(set(lrs)) == 4
    assert all(min(abs(math.log10(lr) - round(math.log10(lr))), abs(math.log10(lr / 3) - round(math.log10(lr / 3))))
               > 1e-6 for lr in lrs)


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_a_restored_searcher_continues_where_it_stopped(tmp_path, algorithm):
    # saved and restored as Tune's controller does it (SearchGenerator.save_to_dir / restore_from_dir)
    from ray.tune.search import SearchGenerator

    from trm_ray.tune.search import build_searcher, trial_params, trial_space
    from trm_ray.tune.spec import SearchConfig

    search = SearchConfig(algorithm=algorithm, num_samples=6, seed=0, random_startup=2)
    space = {"lr": Domain(loguniform=(1e-4, 1e-2)), "arch": Domain(choice=[{"name": "trm"}, {"name": "hrm"}])}

    def searcher() -> SearchGenerator:
        generator = SearchGenerator(build_searcher(search, space, metric="m", mode="max", max_concurrent=4))
        generator.set_search_properties("m", "max", trial_space(space))
        return generator

    running = searcher()
    first = [trial_params(running.searcher.suggest(f"t{i}")) for i in range(2)]
    running.searcher.on_trial_complete("t0", {"m": 0.5, "training_iteration": 1})
    running.save_to_dir(str(tmp_path), session_str="s")
    restored = searcher()
    restored.restore_from_dir(str(tmp_path))
    assert trial_params(restored.searcher.suggest("t2")) == trial_params(running.searcher.suggest("t2"))
    assert first == propose(search, space, "m", "max", 2)
    assert first[0]["arch"] in ({"name": "trm"}, {"name": "hrm"})  # a mapping choice comes back as the mapping
    # restored, it goes on: a fresh searcher would start with the first point again
    later = trial_params(restored.searcher.suggest("t3"))
    assert later not in first and later["lr"] != first[0]["lr"]


def test_architectures_are_searched_as_their_arch_sections(tmp_path):
    sweep = load_sweep_spec(write_sweep(tmp_path, """\
        search: {algorithm: optuna, num_samples: 4, random_startup: 4}
        search_space:
          arch: {choice: [trm, {name: hrm, H_cycles: 3}]}
          lr: {loguniform: [1.0e-4, 1.0e-2]}
        """))
    checked = expand_trials(sweep)  # the points validated before launch: both architectures among them
    assert {point["arch"]["name"] for point in checked} == {"trm", "hrm"}
    points = propose(sweep.spec.search_config(), searched_space(sweep), "eval/accuracy", "max", 8)
    for point in points:
        section = point["arch"]
        assert section["hidden_size"] == 64  # the recipe's shared size, in every architecture
        assert (section["name"], section["H_cycles"]) in (("trm", 2), ("hrm", 3))  # the group's own mapping
    assert len({point["arch"]["name"] for point in points}) == 2


def test_missing_extra_is_one_line_naming_it():
    # optuna made unimportable in a fresh interpreter (a None entry in sys.modules)
    code = ("import sys; sys.modules['optuna'] = None; from trm_ray.cli.main import main; "
            "main(['sweep', 'experiments/sweeps/quickstart-tpe.yaml', '--dry-run'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert_one_line_error(result.stdout + result.stderr, "search algorithm optuna needs optuna",
                          'pip install "trm-ray[search]"')


# --------------------------------------------------------------------------------------------
# On local Ray (one instance for the module)
# --------------------------------------------------------------------------------------------
EPOCHS = 2
METRIC = "eval/accuracy"
RAY_LR = (1.0e-3, 1.0e-2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from ray_util import tiny_sudoku4

    return tiny_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", num_train=128, num_test=32)


def write_search(folder: Path, dataset: Path, name: str, num_samples: int, concurrent: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(textwrap.dedent(f"""\
        data_paths: [{dataset}]
        arch: {{hidden_size: 32, num_heads: 2, L_layers: 1, H_cycles: 1, L_cycles: 2, halt_max_steps: 2,
                puzzle_emb_ndim: 0, mlp_t: true, pos_encodings: none, forward_dtype: float32}}
        global_batch_size: 64
        epochs: {EPOCHS}
        eval_interval: 1
        lr_warmup_steps: 1
        lr_min_ratio: 1.0
        checkpoint: {{num_to_keep: 1}}
        """))
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base: base.yaml
        search: {{algorithm: optuna, num_samples: {num_samples}, seed: 0, random_startup: 2}}
        search_space:
          lr: {{loguniform: {list(RAY_LR)}}}
        metric: {METRIC}
        mode: max
        asha: {{grace_period: 1, reduction_factor: 2, max_t: {EPOCHS}}}
        resources: {{workers: 1, cpus_per_worker: 0.5, trial_cpu: 0.1}}
        max_concurrent_trials: {concurrent}
        storage_path: {folder / 'runs'}
        """))
    return path


def histories(sweep_dir):
    from trm_ray.tune.records import read_records, trial_histories

    return trial_histories(read_records(sweep_dir))


def first_proposals(path: Path, n: int) -> list[float]:
    sweep = load_sweep_spec(path)
    return [p["lr"] for p in propose(sweep.spec.search_config(), searched_space(sweep), METRIC, "max", n)]


def wait_until_trials_are_gone(address: str, timeout_s: float = 60.0) -> None:
    """The killed driver's trials (Tune trainables, Train controllers and workers) die with it,
    a few seconds later: until then a Train run may still write its metrics."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [a for a in list_actors(address, filters=[("state", "=", "ALIVE")])
                 if any(n in a.class_name for n in ("ImplicitFunc", "RayTrainWorker", "Controller"))]
        if not alive:
            return
        time.sleep(0.5)
    raise AssertionError(f"the killed driver's trials still run: {[a.class_name for a in alive]}")


@pytest.mark.ray
@pytest.mark.slow
def test_tpe_sweep_runs_and_resumes_from_the_searchers_state(tmp_path, dataset, ray_instance):
    """One search does both (a second would double the module's time): 5 trials, 2 at once,
    the driver killed once two have finished (two more then run, the fifth is not yet
    proposed), then --resume."""
    import ray

    from trm_ray.config import load_train_config
    from trm_ray.run_folder import read_metrics

    path = write_search(tmp_path, dataset, "tpe", num_samples=5, concurrent=2)
    sweep_dir = tmp_path / "runs" / "tpe"
    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ, RAY_ADDRESS=address)
    command = [sys.executable, "-m", "trm_ray.cli.main", "sweep", str(path), "--address", address]
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            if sum(h.status in ("complete", "stopped") for h in histories(sweep_dir).values()) >= 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    wait_until_trials_are_gone(address)
    before = histories(sweep_dir)
    finished = [h.trial_id for h in before.values() if h.status in ("complete", "stopped")]
    assert len(finished) >= 2 and len(before) < 5
    metrics = {t: (sweep_dir / "train" / t / "metrics.jsonl").read_text() for t in finished}
    assert list(sweep_dir.glob("searcher-state-*.pkl")), "the searcher's state is saved with Tune's"

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = histories(sweep_dir)
    # num_samples trials in all, each finished once: none lost to the kill, none added twice
    assert len(after) == 5 and all(h.status in ("complete", "stopped") for h in after.values()), \
        {t: h.status for t, h in after.items()}
    for trial_id in finished:  # not trained again
        assert (sweep_dir / "train" / trial_id / "metrics.jsonl").read_text() == metrics[trial_id]
        assert after[trial_id].results == before[trial_id].results
    added = [t for t in after if t not in before]
    assert added, "the fifth trial is proposed after the resume"
    for trial_id in added:  # each epoch evaluated once, none lost
        epochs = [r["epoch"] for r in read_metrics(sweep_dir / "train" / trial_id) if "epoch" in r]
        recorded = after[trial_id].epochs_run
        # A trial ASHA stops keeps training until the stop reaches its Train worker: the worker
        # does not wait for Tune's decision on a report, so a fast epoch can finish in between.
        # Its run folder may then hold epochs past the last one Tune recorded, each once.
        late = after[trial_id].status == "stopped"
        assert epochs == list(range(1, len(epochs) + 1)) and (len(epochs) >= recorded if late else
                                                             len(epochs) == recorded), (trial_id, epochs, recorded)
    # the seeded first two proposals (both asked before any result) are among the trials, in
    # whichever order their first results were recorded; every lr is its own draw of the range:
    # a searcher that restarted instead of resuming its state would propose the first point again
    lrs = [h.params["lr"] for h in after.values()]
    assert set(first_proposals(path, 2)) <= set(lrs), (lrs, first_proposals(path, 2))
    assert len(set(lrs)) == 5 and all(RAY_LR[0] < lr < RAY_LR[1] for lr in lrs)

    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert info["search"]["algorithm"] == "optuna" and info["varied"] == ["lr"] and info["trials"] == []
    # --resume compares the search (a grid sweep: its trials): another seed is another search
    path.write_text(path.read_text().replace("seed: 0", "seed: 1"))
    changed = CliRunner().invoke(main, ["sweep", str(path), "--resume"], catch_exceptions=False)
    assert changed.exit_code != 0
    assert_one_line_error(changed.output, "changed since", "another search or search space")
    out = CliRunner().invoke(main, ["compare", str(sweep_dir), "--best-config", str(tmp_path / "best.yaml")],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].split()[:2] == ["trial", "lr"]
    ranked = [h for h in after.values() if h.best(METRIC, "max")]
    winner = max(ranked, key=lambda h: h.best(METRIC, "max")[0])
    assert load_train_config(tmp_path / "best.yaml").lr == winner.params["lr"]
