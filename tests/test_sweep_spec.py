"""Sweep files: schema, seeded expansion, and one-line errors for bad spaces and keys (no Ray).

Every error is checked through `trm-ray sweep --dry-run` (click's CliRunner): one line that
names the key or the offending trial, and nothing launched.
"""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from trm_ray.cli.main import main
from trm_ray.config import ConfigError
from trm_ray.recipes import RECIPES_DIR
from trm_ray.tune.spec import expand_trials, load_sweep_spec, trial_config, varied_keys

BASE = """\
data_paths: [data/nowhere]
arch: {hidden_size: 64, num_heads: 4, H_cycles: 2, L_cycles: 2}
global_batch_size: 64
epochs: 20
eval_interval: 5
ray: {num_workers: 2}
"""


def write_sweep(tmp_path, body: str, base: str = BASE):
    (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\n" + textwrap.dedent(body))
    return str(path)


def dry_run(path):
    return CliRunner().invoke(main, ["sweep", path, "--dry-run"], catch_exceptions=False)


def assert_one_line_error(result, *words):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


GOOD = """\
search_space:
  arch.H_cycles: {grid: [1, 2, 3]}
  arch.L_cycles: {randint: [2, 5]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  puzzle_emb_lr: {choice: [0.01, 0.1]}
  weight_decay: {uniform: [0.0, 1.0]}
num_samples: 2
seed: 7
asha: {grace_period: 5, reduction_factor: 2}
"""


def test_expansion_is_grid_times_samples_seeded_and_in_range(tmp_path):
    sweep = load_sweep_spec(write_sweep(tmp_path, GOOD))
    trials = expand_trials(sweep)
    assert len(trials) == 6  # 3 grid points x 2 samples
    assert [t["arch.H_cycles"] for t in trials] == [1, 2, 3, 1, 2, 3]
    for t in trials:
        assert 2 <= t["arch.L_cycles"] < 5 and isinstance(t["arch.L_cycles"], int)
        assert 1e-4 <= t["lr"] <= 1e-2 and 0.0 <= t["weight_decay"] <= 1.0
        assert t["puzzle_emb_lr"] in (0.01, 0.1)
    assert expand_trials(load_sweep_spec(write_sweep(tmp_path, GOOD))) == trials  # same seed, same trials
    other = expand_trials(load_sweep_spec(write_sweep(tmp_path, GOOD.replace("seed: 7", "seed: 8"))))
    assert [t["lr"] for t in other] != [t["lr"] for t in trials]
    assert "arch.H_cycles" in varied_keys(trials) and "lr" in varied_keys(trials)
    config = trial_config(sweep, trials[4])
    assert config.arch.H_cycles == 2 and config.lr == trials[4]["lr"] and config.ray.num_workers == 2


def test_overrides_and_resources_reach_every_trial(tmp_path):
    sweep = load_sweep_spec(write_sweep(tmp_path, """\
        overrides: {epochs: 40, arch.hidden_size: 128}
        search_space: {lr: {grid: [1.0e-4]}}
        asha: {grace_period: 10}
        resources: {workers: 4, gpus_per_worker: 1, cpus_per_worker: 2}
        """))
    config = trial_config(sweep, expand_trials(sweep)[0])
    assert config.epochs == 40 and config.arch.hidden_size == 128
    assert config.ray.num_workers == 4 and config.ray.use_gpu
    assert config.ray.resources_per_worker == {"CPU": 2, "GPU": 1}
    listed = load_sweep_spec(write_sweep(tmp_path, """\
        overrides: [epochs=40, lr=3.0e-4]
        search_space: {weight_decay: {grid: [0.1]}}
        asha: {grace_period: 10}
        """))
    assert trial_config(listed, expand_trials(listed)[0]).lr == 3e-4


def test_dry_run_lists_every_trial(tmp_path):
    result = dry_run(write_sweep(tmp_path, GOOD))
    assert result.exit_code == 0, result.output
    assert "6 trials" in result.output and "arch.H_cycles=3" in result.output
    assert len([line for line in result.output.splitlines() if "lr=" in line]) == 6


@pytest.mark.parametrize("body, words", [
    # unknown keys name the key (and the close match)
    ("search_space: {arch.H_cycle: {grid: [1, 2]}}\nasha: {grace_period: 5}\n", ["arch.H_cycle", "arch.H_cycles"]),
    ("search_space: {lr.value: {grid: [1, 2]}}\nasha: {grace_period: 5}\n", ["lr.value", "not a section"]),
    ("search_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 5}\nnum_sample: 3\n", ["num_sample", "unknown key"]),
    ("search_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 5, rungs: 3}\n", ["asha.rungs", "unknown key"]),
    ("overrides: {arch.hidden: 3}\nsearch_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 5}\n", ["arch.hidden", "unknown key"]),
    # bad domains
    ("search_space: {lr: {loguniform: [0.0, 0.1]}}\nasha: {grace_period: 5}\n", ["search_space.lr", "0 < low"]),
    ("search_space: {lr: {uniform: [0.1, 0.01]}}\nasha: {grace_period: 5}\n", ["search_space.lr", "low < high"]),
    ("search_space: {lr: {grid: [0.1], choice: [0.2]}}\nasha: {grace_period: 5}\n", ["search_space.lr", "exactly one"]),
    ("search_space: {lr: {normal: [0.0, 1.0]}}\nasha: {grace_period: 5}\n", ["search_space.lr", "grid"]),
    ("search_space: {lr: [0.1, 0.2]}\nasha: {grace_period: 5}\n", ["search_space.lr", "mapping"]),
    ("search_space: {lr: {grid: []}}\nasha: {grace_period: 5}\n", ["search_space.lr", "at least one"]),
    ("search_space: {}\nasha: {grace_period: 5}\n", ["search_space is empty"]),
    ("search_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 5}\nmode: maximum\n", ["mode"]),
    # impossible combinations, named by the trial's values
    ("search_space: {arch.num_heads: {grid: [4, 3]}}\nasha: {grace_period: 5}\n", ["arch.num_heads=3", "even head width"]),
    ("search_space: {eval_interval: {grid: [5, 3]}}\nasha: {grace_period: 1, time_attr: eval_round, max_t: 4}\n",
     ["eval_interval=3", "must divide epochs"]),
    ("search_space: {global_batch_size: {grid: [64, 65]}}\nasha: {grace_period: 5}\n",
     ["global_batch_size=65", "multiple of ray.num_workers"]),
    ("search_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 3}\n", ["grace_period=3", "eval_interval=5"]),
    ("search_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 5, max_t: 40}\n", ["max_t", "epochs=20"]),
    ("search_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 10, max_t: 5}\n", ["grace_period=10", "max_t=5"]),
])
def test_bad_sweeps_fail_with_one_line(tmp_path, body, words):
    assert_one_line_error(dry_run(write_sweep(tmp_path, body)), *words)


def test_missing_files_fail_with_one_line(tmp_path):
    assert_one_line_error(dry_run(str(tmp_path / "none.yaml")), "does not exist")
    path = tmp_path / "sweep.yaml"
    path.write_text("base: missing.yaml\nsearch_space: {lr: {grid: [0.1]}}\nasha: {grace_period: 5}\n")
    assert_one_line_error(dry_run(str(path)), "missing.yaml", "does not exist")


def test_every_sampled_trial_is_validated(tmp_path):
    # randint over num_heads: some draws (3, 7) give an odd head width 64 // heads, which RoPE cannot rotate
    sweep = load_sweep_spec(write_sweep(tmp_path, """\
        search_space: {arch.num_heads: {randint: [1, 9]}}
        num_samples: 20
        asha: {grace_period: 5}
        """))
    with pytest.raises(ConfigError, match="even head width"):
        expand_trials(sweep)


def test_shipped_sweeps_resolve(tmp_path):
    import glob

    files = sorted(glob.glob(str(RECIPES_DIR / "experiments/sweeps/*.yaml")))
    assert files, "experiments/sweeps/ has no sweep"
    for path in files:
        sweep = load_sweep_spec(path)
        trials = expand_trials(sweep)
        assert trials and varied_keys(trials), path
