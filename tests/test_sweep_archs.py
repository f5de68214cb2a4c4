"""Sweeps over architectures: `search_space: {arch: ...}` expansion (values written out from the
group YAMLs by hand), its one-line errors, compare's arch and params columns (counts by hand
formula and from the saved model.pt), and one end-to-end sweep of TRM, HRM and the transformer
baseline on 6x6 Sudoku (slow, local Ray).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from datasets_util import write_dataset
from trm_ray.cli.main import main
from trm_ray.config import ConfigError, TrainConfig
from trm_ray.tune.compare import format_table, summarize_sweep
from trm_ray.tune.records import append_record, write_sweep_info
from trm_ray.tune.spec import expand_trials, load_sweep_spec, trial_config, varied_keys

REPO = Path(__file__).resolve().parent.parent
BASE = """\
data_paths: [/data/sudoku6]
arch: {hidden_size: 32, num_heads: 2, forward_dtype: float32, puzzle_emb_ndim: 0,
       H_cycles: 1, L_cycles: 3, mlp_t: true, pos_encodings: none}
global_batch_size: 64
epochs: 4
eval_interval: 2
"""
GRID = "[trm, {name: hrm, H_cycles: 2, L_cycles: 2, H_layers: 2}, transformers_baseline]"


def write_files(folder: Path, arch_domain: str = f"{{grid: {GRID}}}", base: str = BASE, extra: str = "") -> Path:
    (folder / "base.yaml").write_text(base)
    path = folder / "archs.yaml"
    path.write_text("base: base.yaml\n"
                    "overrides: {arch.halt_max_steps: 2}\n"
                    f"search_space:\n  arch: {arch_domain}\n{extra}\n"
                    "metric: eval/exact_accuracy\n"
                    "asha: {grace_period: 2, max_t: 4, enabled: false}\n"
                    "resources: {workers: 1}\n")
    return path


def sweep_cli(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)], catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------------------------
def test_each_trial_gets_its_group_the_shared_recipe_sizes_and_its_own_keys(tmp_path):
    trials = expand_trials(load_sweep_spec(write_files(tmp_path)))
    assert [str(t["arch"]) for t in trials] == ["trm", "hrm", "transformers_baseline"]
    assert varied_keys(trials) == ["arch"]
    # trm: trm.yaml, then every recipe key (the recipe is TRM's), then the override
    assert dict(trials[0]["arch"]) == {
        "name": "trm", "loss_type": "stablemax_cross_entropy", "halt_exploration_prob": 0.1, "halt_max_steps": 2,
        "H_cycles": 1, "L_cycles": 3, "H_layers": 0, "L_layers": 2, "hidden_size": 32, "num_heads": 2,
        "expansion": 4, "puzzle_emb_ndim": 0, "puzzle_emb_len": 16, "pos_encodings": "none",
        "forward_dtype": "float32", "mlp_t": True, "no_ACT_continue": True}
    # hrm: hrm.yaml, the recipe's sizes only (not its cycles, mlp_t, pos_encodings), the mapping
    assert dict(trials[1]["arch"]) == {
        "name": "hrm", "loss_type": "stablemax_cross_entropy", "halt_exploration_prob": 0.1, "halt_max_steps": 2,
        "H_cycles": 2, "L_cycles": 2, "H_layers": 2, "L_layers": 4, "hidden_size": 32, "num_heads": 2,
        "expansion": 4, "puzzle_emb_ndim": 0, "pos_encodings": "rope", "forward_dtype": "float32", "mlp_t": False}
    assert dict(trials[2]["arch"]) == {
        "name": "transformers_baseline", "loss_type": "stablemax_cross_entropy", "halt_exploration_prob": 0.1,
        "halt_max_steps": 2, "H_cycles": 1, "H_layers": 8, "hidden_size": 32, "num_heads": 2, "expansion": 4,
        "puzzle_emb_ndim": 0, "pos_encodings": "rope", "forward_dtype": "float32", "act_enabled": True,
        "act_inference": False, "compute_target_q": False}
    sweep = load_sweep_spec(tmp_path / "archs.yaml")
    hrm = trial_config(sweep, trials[1])
    assert (hrm.arch.name, hrm.arch.L_layers, hrm.arch.mlp_t, hrm.epochs) == ("hrm", 4, False, 4)
    # what sweep.json keeps and the driver applies: a plain mapping, the same config
    stored = json.loads(json.dumps(trials[1]))
    assert trial_config(sweep, stored) == hrm


def test_dry_run_lists_trials_as_arch_names(tmp_path):
    result = sweep_cli(write_files(tmp_path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "varied: arch" in result.output
    listed = [line.split() for line in result.output.splitlines() if line.startswith("  ")]
    assert [line[1] for line in listed] == \
        ["arch=trm", "arch=hrm", "arch=transformers_baseline"]


def test_recipe_name_does_not_pick_the_group_and_its_keys_go_to_its_own_architecture(tmp_path):
    base = "data_paths: [/d]\narch: {name: hrm, L_cycles: 5, hidden_size: 48, num_heads: 4}\nepochs: 4\neval_interval: 2\n"
    trials = expand_trials(load_sweep_spec(write_files(tmp_path, "{grid: [trm, hrm]}", base=base)))
    trm, hrm = (t["arch"] for t in trials)
    assert (trm["name"], trm["L_cycles"], trm["hidden_size"]) == ("trm", 6, 48)  # trm.yaml's L_cycles
    assert (hrm["name"], hrm["L_cycles"], hrm["hidden_size"]) == ("hrm", 5, 48)  # the recipe's, for hrm


def test_plain_arch_name_key_sets_only_the_name(tmp_path):
    path = write_files(tmp_path, "{grid: [1]}")
    path.write_text(path.read_text().replace("arch: {grid: [1]}", "arch.name: {grid: [trm, hrm]}"))
    sweep = load_sweep_spec(path)
    trials = expand_trials(sweep)
    assert trials == [{"arch.name": "trm"}, {"arch.name": "hrm"}]
    hrm = trial_config(sweep, trials[1]).arch
    assert (hrm.name, hrm.L_cycles, hrm.mlp_t, hrm.halt_max_steps) == ("hrm", 3, True, 2)  # the recipe's keys


def test_same_architecture_twice_is_labelled_by_its_keys_and_choice_draws_groups(tmp_path):
    trials = expand_trials(load_sweep_spec(write_files(tmp_path, "{grid: [{name: trm, L_cycles: 2}, trm]}")))
    assert [str(t["arch"]) for t in trials] == ["trm(L_cycles=2)", "trm(L_cycles=3)"]
    path = write_files(tmp_path, "{choice: [trm, hrm]}", extra="num_samples: 6\nseed: 3")
    drawn = [str(t["arch"]) for t in expand_trials(load_sweep_spec(path))]
    assert set(drawn) == {"trm", "hrm"} and len(drawn) == 6
    assert drawn == [str(t["arch"]) for t in expand_trials(load_sweep_spec(path))]  # seeded


def test_searched_arch_keys_apply_on_top_of_every_architecture(tmp_path):
    path = write_files(tmp_path, "{grid: [trm, hrm]}", extra="  arch.hidden_size: {grid: [16, 64]}")
    sweep = load_sweep_spec(path)
    trials = expand_trials(sweep)
    assert [(str(t["arch"]), t["arch.hidden_size"]) for t in trials] == \
        [("trm", 16), ("trm", 64), ("hrm", 16), ("hrm", 64)]
    assert [trial_config(sweep, t).arch.hidden_size for t in trials] == [16, 64, 16, 64]


@pytest.mark.parametrize("domain, expected", [
    ("{grid: [trm, hrn]}", ["no architecture group 'hrn'", "available:", "hrm"]),
    ("{grid: [trm, {name: hrm, H_cycle: 2}]}", ["unknown config key 'arch.H_cycle'", "arch.H_cycles"]),
    ("{grid: [trm, {H_cycles: 2}]}", ["is not an architecture", "{name: hrm, H_cycles: 2}"]),
    ("{grid: [trm, {name: transformers_baseline, pos_encodings: none}]}",
     ["trial {arch=transformers_baseline}", "transformers_baseline needs rope or learned positions"]),
    ("{grid: [{name: hrm, H_cycles: 0}]}", ["trial {arch=hrm}", "arch.H_cycles"]),
    ("{uniform: [1, 2]}", ["uniform cannot range over architectures"]),
])
def test_bad_architectures_are_one_line_errors(tmp_path, domain, expected):
    result = CliRunner().invoke(main, ["sweep", str(write_files(tmp_path, domain)), "--dry-run"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in result.output, result.output
    assert "archs.yaml" in message and all(part in message for part in expected), message


def test_arch_chosen_twice_is_refused(tmp_path):
    path = write_files(tmp_path, extra="  arch.name: {grid: [trm]}")
    with pytest.raises(ConfigError, match="drop arch.name"):
        load_sweep_spec(path)
    result = sweep_cli(write_files(tmp_path), "arch=hrm", "--dry-run")
    assert result.exit_code != 0 and "arch is searched" in result.output


# --------------------------------------------------------------------------------------------
# compare: arch and params columns
# --------------------------------------------------------------------------------------------
def parameters_by_hand(layers: int) -> int:
    """A D=16, 2-head, expansion-4 network on V=64 with `layers` attention blocks in all and
    no puzzle table: embed_tokens and lm_head V*D each, q_head 2*D + 2; per block qkv 3*D*D,
    o_proj D*D, SwiGLU gate_up 2*I*D and down D*I with I = round(4*16*2/3) = 43 -> 256."""
    d, v, i = 16, 64, 256
    return 2 * v * d + 2 * d + 2 + layers * (3 * d * d + d * d + 2 * i * d + d * i)


def test_compare_shows_each_trials_architecture_and_reported_parameter_count(tmp_path):
    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession

    data = tmp_path / "data"
    write_dataset(data, [[1]] * 8, split="train")
    write_dataset(data, [[1]] * 4, split="test")
    base = dict(data_paths=[str(data)], global_batch_size=4, epochs=2, eval_interval=2, lr_warmup_steps=1,
                tracking={"wandb": False})
    shared = dict(hidden_size=16, num_heads=2, puzzle_emb_ndim=0, forward_dtype="float32", halt_max_steps=1)
    archs = {"trm": dict(name="trm", L_layers=1, H_cycles=1, L_cycles=1),
             "hrm": dict(name="hrm", H_layers=1, L_layers=1, H_cycles=1, L_cycles=1)}
    folder = tmp_path / "sweep"
    trials, reports = [], {}
    for index, (trial_id, arch) in enumerate(archs.items()):
        config = TrainConfig(**base, arch={**shared, **arch}, run_name=trial_id)
        train(config, LocalSession(tmp_path / trial_id), report_every_steps=100)
        records = [json.loads(line) for line in (tmp_path / trial_id / "metrics.jsonl").read_text().splitlines()]
        reports[trial_id] = records[-1]
        trials.append({"arch": {**shared, **arch}})
        # the saved weights minus the init-state buffers (H_init, L_init): the network's parameters
        weights = torch.load(tmp_path / trial_id / "checkpoint_0000004" / "model.pt", weights_only=True)
        assert sum(t.numel() for k, t in weights.items() if not k.endswith("_init")) == \
            parameters_by_hand(1 if trial_id == "trm" else 2)
    assert parameters_by_hand(1) == 15394 and parameters_by_hand(2) == 28706
    write_sweep_info(folder, {"name": "archs", "metric": "eval/accuracy", "mode": "max",
                              "trial_base": {**base, "arch": shared}, "varied": ["arch"],
                              "trials": [{"index": i, "params": p} for i, p in enumerate(trials)]})
    for index, trial_id in enumerate(archs):
        append_record(folder, {"event": "trial", "trial_id": trial_id, "index": index, "params": trials[index]})
        # what the sweep's scheduler keeps of a result: the epoch and every "/" metric
        report = reports[trial_id]
        append_record(folder, {"event": "result", "trial_id": trial_id, "epoch": report["epoch"],
                               **{k: v for k, v in report.items() if "/" in k},
                               "eval/accuracy": 0.5 if trial_id == "hrm" else 0.25, "time_this_iter_s": 3.0})
        append_record(folder, {"event": "complete", "trial_id": trial_id})
    summary = summarize_sweep(folder)
    assert [(r.arch, r.num_parameters) for r in summary.rows] == [("hrm", 28706), ("trm", 15394)]
    lines = format_table(summary).splitlines()
    print("\n" + "\n".join(lines))
    assert lines[0].split()[:3] == ["trial", "arch", "params"]  # leading: the architecture varies
    assert [line.split()[:4] for line in lines[2:4]] == [["hrm", "hrm", "28.7K", "0.5000"],
                                                         ["trm", "trm", "15.4K", "0.2500"]]
    assert lines[-1] == ("architectures by best eval/accuracy: hrm 0.5000 (28.7K params) > "
                         "trm 0.2500 (15.4K params)")
    # the winner's recipe trains the winning architecture
    from trm_ray.config import load_train_config
    from trm_ray.tune.compare import write_best_config

    write_best_config(summary, tmp_path / "best.yaml")
    best = load_train_config(tmp_path / "best.yaml")
    assert (best.arch.name, best.arch.H_layers, best.arch.hidden_size) == ("hrm", 1, 16)
    assert "trial hrm: arch=hrm" in (tmp_path / "best.yaml").read_text()


def test_compare_of_a_sweep_over_other_keys_keeps_its_layout_and_adds_arch_and_params(tmp_path):
    folder = tmp_path / "sweep"
    write_sweep_info(folder, {"name": "lr", "metric": "eval/accuracy", "mode": "max", "varied": ["lr"],
                              "trial_base": {"data_paths": ["/d"], "arch": {"name": "hrm", "hidden_size": 64}},
                              "trials": [{"index": 0, "params": {"lr": 1e-3}}]})
    append_record(folder, {"event": "trial", "trial_id": "t0", "index": 0, "params": {"lr": 1e-3}})
    append_record(folder, {"event": "result", "trial_id": "t0", "epoch": 2, "eval/accuracy": 0.4,
                           "train/num_parameters": 1_234_567, "time_this_iter_s": 5.0})
    lines = format_table(summarize_sweep(folder)).splitlines()
    assert lines[0].split() == ["trial", "lr", "best", "eval/accuracy", "at", "epoch", "epochs", "run", "stopped",
                                "early", "status", "arch", "params", "wall", "time"]
    assert lines[2].split() == ["t0", "0.001", "0.4000", "2", "2", "no", "running", "hrm", "1.23M", "0:05"]


# --------------------------------------------------------------------------------------------
# End to end: experiments/sweeps/archs-sudoku6.yaml on local Ray
# --------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_archs_sudoku6_sweep_ranks_trm_hrm_and_the_transformer(tmp_path, ray_instance):
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe
    from trm_ray.tune.records import read_records, trial_histories

    started = time.monotonic()
    data = tmp_path / "sudoku-6x6-archs"
    build_dataset(load_recipe(REPO / "trm_ray/recipes/datasets/sudoku-6x6-archs.yaml"), str(data), use_ray=False)
    built = time.monotonic()
    result = sweep_cli(REPO / "trm_ray/recipes/experiments/sweeps/archs-sudoku6.yaml", f"data_paths=[{data}]",
                       "--storage-path", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    swept = time.monotonic()
    sweep_dir = tmp_path / "runs" / "archs-sudoku6"
    histories = trial_histories(read_records(sweep_dir))
    assert len(histories) == 3 and all(h.status == "complete" and h.epochs_run == 8 for h in histories.values())

    out = CliRunner().invoke(main, ["compare", str(sweep_dir)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    print(f"\ndataset {built - started:.0f} s, sweep {swept - built:.0f} s\n{out.output}")
    lines = out.output.splitlines()
    assert lines[0].split()[:3] == ["trial", "arch", "params"]
    rows = [line.split() for line in lines[2:5]]
    assert sorted(row[1] for row in rows) == ["hrm", "transformers_baseline", "trm"]
    summary = summarize_sweep(sweep_dir)
    for row in summary.rows:  # each count is that trial's network: its saved weights minus buffers
        run = sweep_dir / "train" / row.history.trial_id
        checkpoint = max(run.glob("checkpoint_0*"))
        weights = torch.load(checkpoint / "model.pt", weights_only=True)
        assert row.num_parameters == sum(t.numel() for k, t in weights.items() if not k.endswith("_init"))
    # TRM learns 6x6 Sudoku at this budget (the others stay near 0 exact), so it ranks first
    assert [row.arch for row in summary.rows][0] == "trm"
    assert summary.rows[0].history.best("eval/exact_accuracy", "max")[0] >= 0.05
    assert lines[-1].startswith("architectures by best eval/accuracy: trm ")
