"""The reference code's hydra command lines work unchanged with trm-ray recipes.

Each command line below is pasted from a README (the table in this repository's README, the
reference's and its alphaXiv fork's) and split by shlex as a shell splits it; the resolved config
must equal the experiment written out here by hand, both on the trm-ray recipe of that experiment
(experiments/*.yaml) and on a config in the reference's own layout
(tests/fixtures/reference_config: cfg_pretrain.yaml + arch/trm.yaml)."""

from __future__ import annotations

import math
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import trm_ray.overrides as overrides_module
from trm_ray.cli.main import main
from trm_ray.config import ConfigError, TrainConfig, apply_overrides, load_train_config, parse_value

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "trm_ray" / "recipes" / "experiments"
REFERENCE_CFG = Path(__file__).resolve().parent / "fixtures" / "reference_config" / "cfg_pretrain.yaml"


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees the once-per-process stderr notes afresh."""
    monkeypatch.setattr(overrides_module, "_notes_printed", set())


def shell_args(command: str, run_name: str = "") -> list[str]:
    """The arguments a shell hands the training script: line continuations joined, $run_name
    expanded (the READMEs set it on the line before), words split, the launcher dropped."""
    words = shlex.split(command.replace("\\\n", " ").replace("${run_name}", run_name))
    script = next(i for i, word in enumerate(words) if word.endswith(("pretrain.py", "train.py")))
    return words[script + 1:]


# --------------------------------------------------------------------------------------------
# The experiments, written out: the reference's cfg_pretrain.yaml + arch/trm.yaml defaults
# with each command's overrides applied by hand.
# --------------------------------------------------------------------------------------------
BASE = {
    "arch.H_layers": 0, "arch.L_layers": 2, "arch.H_cycles": 3, "arch.hidden_size": 512, "arch.num_heads": 8,
    "arch.expansion": 4.0, "arch.puzzle_emb_dim": 512, "arch.puzzle_emb_len": 16, "arch.halt_max_steps": 16,
    "arch.halt_exploration_prob": 0.1, "arch.forward_dtype": "bfloat16", "arch.no_ACT_continue": True,
    "arch.loss_type": "stablemax_cross_entropy",
    "global_batch_size": 768, "lr_min_ratio": 1.0, "lr_warmup_steps": 2000, "beta1": 0.9, "beta2": 0.95,
    "ema": True, "ema_rate": 0.999, "seed": 0, "min_eval_interval": 0, "freeze_weights": False,
}
SUDOKU = {
    "data_paths": ["data/sudoku-extreme-1k-aug-1000"], "evaluators": [], "epochs": 50000, "eval_interval": 5000,
    "lr": 1e-4, "puzzle_emb_lr": 1e-4, "weight_decay": 1.0, "puzzle_emb_weight_decay": 1.0, "arch.L_cycles": 6,
}
EXPECTED = {
    "sudoku-mlp": {**BASE, **SUDOKU, "arch.mlp_t": True, "arch.pos_encodings": "none"},
    "sudoku-att": {**BASE, **SUDOKU, "arch.mlp_t": False, "arch.pos_encodings": "rope"},
    "maze-att": {**BASE, **SUDOKU, "data_paths": ["data/maze-30x30-hard-1k"], "arch.L_cycles": 4,
                 "arch.mlp_t": False, "arch.pos_encodings": "rope"},
    "arc1": {**BASE, "data_paths": ["data/arc1concept-aug-1000"], "evaluators": ["arc"], "epochs": 100000,
             "eval_interval": 10000, "lr": 1e-4, "puzzle_emb_lr": 1e-2, "weight_decay": 0.1,
             "puzzle_emb_weight_decay": 0.1, "arch.L_cycles": 4, "arch.mlp_t": False, "arch.pos_encodings": "rope"},
}
EXPECTED["arc2"] = {**EXPECTED["arc1"], "data_paths": ["data/arc2concept-aug-1000"]}


def experiment(config: TrainConfig) -> dict:
    """The keys of `config` that EXPECTED names (evaluators by name: arc and arc@ARC are one)."""
    values = {}
    for key in EXPECTED["arc1"]:
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    values["evaluators"] = [spec["name"].split("@")[0] for spec in config.evaluators]
    return values


# This repository's README, table "The paper's experiments" (the rows that say "the same ..."
# written out).
README_TABLE = {
    "sudoku-mlp": 'python pretrain.py arch=trm data_paths="[data/sudoku-extreme-1k-aug-1000]" evaluators="[]" '
                  'epochs=50000 eval_interval=5000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 '
                  'puzzle_emb_weight_decay=1.0 arch.mlp_t=True arch.pos_encodings=none arch.L_layers=2 '
                  'arch.H_cycles=3 arch.L_cycles=6 ema=True',
    "sudoku-att": 'python pretrain.py arch=trm data_paths="[data/sudoku-extreme-1k-aug-1000]" evaluators="[]" '
                  'epochs=50000 eval_interval=5000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 '
                  'puzzle_emb_weight_decay=1.0 arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=6 ema=True',
    "maze-att": 'torchrun --nproc-per-node 4 pretrain.py arch=trm data_paths="[data/maze-30x30-hard-1k]" '
                'evaluators="[]" epochs=50000 eval_interval=5000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 '
                'puzzle_emb_weight_decay=1.0 arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=4 ema=True',
    "arc1": 'torchrun --nproc-per-node 4 pretrain.py arch=trm data_paths="[data/arc1concept-aug-1000]" '
            'arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=4 ema=True',
    "arc2": 'torchrun --nproc-per-node 4 pretrain.py arch=trm data_paths="[data/arc2concept-aug-1000]" '
            'arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=4 ema=True',
}

# The reference README's blocks as printed there (run_name set on the line before each).
REFERENCE_README = {
    "sudoku-mlp": ("pretrain_mlp_t_sudoku", """python pretrain.py \\
arch=trm \\
data_paths="[data/sudoku-extreme-1k-aug-1000]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
arch.mlp_t=True arch.pos_encodings=none \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=6 \\
+run_name=${run_name} ema=True"""),
    "sudoku-att": ("pretrain_att_sudoku", """python pretrain.py \\
arch=trm \\
data_paths="[data/sudoku-extreme-1k-aug-1000]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=6 \\
+run_name=${run_name} ema=True"""),
    "maze-att": ("pretrain_att_maze30x30", """torchrun --nproc-per-node 4 --rdzv_backend=c10d \\
--rdzv_endpoint=localhost:0 --nnodes=1 pretrain.py \\
arch=trm \\
data_paths="[data/maze-30x30-hard-1k]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=${run_name} ema=True"""),
    "arc1": ("pretrain_att_arc1concept_4", """torchrun --nproc-per-node 4 --rdzv_backend=c10d \\
--rdzv_endpoint=localhost:0 --nnodes=1 pretrain.py \\
arch=trm \\
data_paths="[data/arc1concept-aug-1000]" \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=${run_name} ema=True"""),
    "arc2": ("pretrain_att_arc2concept_4", """torchrun --nproc-per-node 4 --rdzv_backend=c10d \\
--rdzv_endpoint=localhost:0 --nnodes=1 pretrain.py \\
arch=trm \\
data_paths="[data/arc2concept-aug-1000]" \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=${run_name} ema=True"""),
}

# The alphaXiv fork's README: the same experiments at batch 1536, lr 2e-4, 4000 warmup steps.
ALPHAXIV = {
    "arc1": ("pretrain_att_arc1concept", """torchrun --nproc-per-node 8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 \\
  scripts/train.py \\
  arch=trm \\
  data_paths="[data/arc1concept-aug-1000]" \\
  arch.L_layers=2 \\
  arch.H_cycles=3 arch.L_cycles=6 \\
  lr=2e-4 weight_decay=0.1 puzzle_emb_lr=1e-2 \\
  global_batch_size=1536 lr_warmup_steps=4000 \\
  epochs=100000 eval_interval=5000 checkpoint_every_eval=True \\
  +run_name=${run_name} ema=True""",
             {"arch.L_cycles": 6, "lr": 2e-4, "global_batch_size": 1536, "lr_warmup_steps": 4000,
              "eval_interval": 5000}),
    "arc2": ("pretrain_att_arc2concept", """torchrun --nproc-per-node 8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 \\
  scripts/train.py \\
  arch=trm \\
  data_paths="[data/arc2concept-aug-1000]" \\
  arch.L_layers=2 \\
  arch.H_cycles=3 arch.L_cycles=6 \\
  lr=2e-4 weight_decay=0.1 puzzle_emb_lr=1e-2 \\
  global_batch_size=1536 lr_warmup_steps=4000 \\
  epochs=100000 eval_interval=5000 checkpoint_every_eval=True \\
  +run_name=${run_name} ema=True""",
             {"arch.L_cycles": 6, "lr": 2e-4, "global_batch_size": 1536, "lr_warmup_steps": 4000,
              "eval_interval": 5000}),
    "sudoku-mlp": ("pretrain_mlp_t_sudoku", """torchrun --nproc-per-node 8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 \\
  scripts/train.py \\
  arch=trm \\
  data_paths="[data/sudoku-extreme-1k-aug-1000]" \\
  evaluators="[]" \\
  epochs=50000 eval_interval=5000 \\
  lr=2e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
  arch.mlp_t=True arch.pos_encodings=none \\
  arch.L_layers=2 \\
  arch.H_cycles=3 arch.L_cycles=6 \\
  lr_warmup_steps=4000 \\
  global_batch_size=1536 \\
  +run_name=${run_name} ema=True""",
                   {"lr": 2e-4, "global_batch_size": 1536, "lr_warmup_steps": 4000}),
    "sudoku-att": ("pretrain_att_sudoku", """torchrun --nproc-per-node 8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 \\
  scripts/train.py \\
  arch=trm \\
  data_paths="[data/sudoku-extreme-1k-aug-1000]" \\
  evaluators="[]" \\
  epochs=50000 eval_interval=5000 \\
  lr=2e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
  arch.L_layers=2 \\
  arch.H_cycles=3 arch.L_cycles=6 \\
  lr_warmup_steps=4000 \\
  global_batch_size=1536 \\
  +run_name=${run_name} ema=True""",
                   {"lr": 2e-4, "global_batch_size": 1536, "lr_warmup_steps": 4000}),
    "maze-att": ("pretrain_att_maze30x30", """torchrun --nproc-per-node 8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 \\
  scripts/train.py \\
  arch=trm \\
  data_paths="[data/maze-30x30-hard-1k]" \\
  evaluators="[]" \\
  epochs=50000 eval_interval=5000 \\
  lr=2e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \\
  arch.L_layers=2 \\
  arch.H_cycles=3 arch.L_cycles=4 \\
  global_batch_size=1536 lr_warmup_steps=4000 \\
  checkpoint_every_eval=True \\
  +run_name=${run_name} ema=True""",
                 {"lr": 2e-4, "global_batch_size": 1536, "lr_warmup_steps": 4000}),
}


def test_shell_split_of_a_pasted_command():
    args = shell_args(REFERENCE_README["arc1"][1], "r1")
    assert args == ["arch=trm", "data_paths=[data/arc1concept-aug-1000]", "arch.L_layers=2", "arch.H_cycles=3",
                    "arch.L_cycles=4", "+run_name=r1", "ema=True"]


@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_readme_table_commands_resolve_to_the_experiment(name):
    args = shell_args(README_TABLE[name])
    on_recipe = load_train_config(EXPERIMENTS / f"{name}.yaml", args)
    on_reference_layout = load_train_config(REFERENCE_CFG, args)
    assert experiment(on_recipe) == EXPECTED[name]
    assert experiment(on_reference_layout) == EXPECTED[name]
    # the recipe alone is already that experiment: the command line changes nothing
    assert experiment(load_train_config(EXPERIMENTS / f"{name}.yaml")) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_README))
def test_reference_readme_commands_with_run_name(name):
    run_name, command = REFERENCE_README[name]
    config = load_train_config(EXPERIMENTS / f"{name}.yaml", shell_args(command, run_name))
    assert experiment(config) == EXPECTED[name]
    assert config.run_name == run_name


def test_reference_one_gpu_maze_command():
    command = """python pretrain.py \\
arch=trm \\
data_paths="[data/maze-30x30-hard-1k]" \\
evaluators="[]" \\
epochs=50000 eval_interval=5000 \\
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 global_batch_size=128 \\
arch.L_layers=2 \\
arch.H_cycles=3 arch.L_cycles=4 \\
+run_name=${run_name} ema=True"""
    args = shell_args(command, "pretrain_att_maze30x30_1gpu")
    config = load_train_config(EXPERIMENTS / "maze-att.yaml", args + ["ray.num_workers=1"])
    assert experiment(config) == {**EXPECTED["maze-att"], "global_batch_size": 128}
    assert experiment(load_train_config(REFERENCE_CFG, args)) == {**EXPECTED["maze-att"], "global_batch_size": 128}


@pytest.mark.parametrize("name", sorted(ALPHAXIV))
def test_alphaxiv_commands(name):
    run_name, command, changed = ALPHAXIV[name]
    args = shell_args(command, run_name)
    for recipe in (EXPERIMENTS / f"{name}.yaml", REFERENCE_CFG):
        config = load_train_config(recipe, args)
        assert experiment(config) == {**EXPECTED[name], **changed}, recipe
        assert config.run_name == run_name
    if "checkpoint_every_eval=True" in args:
        assert load_train_config(EXPERIMENTS / f"{name}.yaml", args).checkpoint_every_eval is True


# --------------------------------------------------------------------------------------------
# Arch groups and the reference's layout
# --------------------------------------------------------------------------------------------
def test_reference_layout_alone(capsys):
    config = load_train_config(REFERENCE_CFG)
    assert config.lr == 1e-4 and isinstance(config.lr, float) and config.puzzle_emb_lr == 1e-2
    assert config.data_paths == ["data/arc-aug-1000"] and config.evaluators == [{"name": "arc@ARC"}]
    assert config.checkpoint_every_eval is True and config.ema is False
    # arch/trm.yaml beside it, in the reference's keys
    assert (config.arch.name, config.arch.loss_type) == ("trm", "stablemax_cross_entropy")
    assert (config.arch.puzzle_emb_ndim, config.arch.L_cycles, config.arch.mlp_t) == (512, 6, False)
    load_train_config(REFERENCE_CFG)
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [f"trm-ray: ignoring the hydra: block of {REFERENCE_CFG} (hydra's own settings; "
                     f"trm-ray needs none)"]


def test_arch_file_beside_the_recipe_comes_first(tmp_path):
    shutil.copytree(REFERENCE_CFG.parent, tmp_path / "config")
    arch_file = tmp_path / "config" / "arch" / "trm.yaml"
    arch_file.write_text(arch_file.read_text().replace("hidden_size: 512", "hidden_size: 256")
                         .replace("num_heads: 8", "num_heads: 4"))
    recipe = tmp_path / "config" / "cfg_pretrain.yaml"
    config = load_train_config(recipe, ["arch=trm"])
    assert (config.arch.hidden_size, config.arch.num_heads, config.arch.puzzle_emb_ndim) == (256, 4, 256)
    # ${.hidden_size} follows an override, as it does in hydra
    config = load_train_config(recipe, ["arch.hidden_size=128"])
    assert (config.arch.hidden_size, config.arch.puzzle_emb_ndim) == (128, 128)
    # a group only the package has
    assert load_train_config(recipe, ["arch=trm_mlp"]).arch.mlp_t is True


def test_group_is_the_base_and_the_recipe_arch_keys_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("arch:\n  hidden_size: 64\n  num_heads: 4\n  L_cycles: 2\n")
    config = load_train_config(recipe, ["arch=trm_mlp", "arch.L_cycles=3"])
    assert (config.arch.mlp_t, config.arch.pos_encodings, config.arch.hidden_size) == (True, "rope", 64)
    assert (config.arch.L_cycles, config.arch.H_cycles, config.arch.halt_max_steps) == (3, 3, 16)
    # the reference's arch=trm on a trm-ray recipe keeps the recipe's own arch keys
    config = load_train_config(EXPERIMENTS / "quickstart.yaml", ["arch=trm"])
    assert (config.arch.hidden_size, config.arch.mlp_t, config.arch.pos_encodings) == (64, True, "none")
    assert config.arch.puzzle_emb_ndim == 0


def test_self_before_the_group_lets_the_group_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults:\n  - _self_\n  - arch: trm_mlp\narch:\n  L_cycles: 2\n  mlp_t: false\n")
    config = load_train_config(recipe)
    assert (config.arch.L_cycles, config.arch.mlp_t) == (6, True)
    assert load_train_config(recipe, ["arch.L_cycles=3"]).arch.L_cycles == 3
    recipe.write_text("defaults:\n  - arch: trm_mlp\n  - _self_\narch:\n  L_cycles: 2\n  mlp_t: false\n")
    assert (load_train_config(recipe).arch.L_cycles, load_train_config(recipe).arch.mlp_t) == (2, False)


def test_shipped_groups_are_the_reference_values():
    trm = yaml.safe_load((REPO / "trm_ray" / "arch" / "trm.yaml").read_text())
    assert trm == {"name": "trm", "loss_type": "stablemax_cross_entropy", "halt_exploration_prob": 0.1,
                   "halt_max_steps": 16, "H_cycles": 3, "L_cycles": 6, "H_layers": 0, "L_layers": 2,
                   "hidden_size": 512, "num_heads": 8, "expansion": 4, "puzzle_emb_ndim": None,
                   "puzzle_emb_len": 16, "pos_encodings": "rope", "forward_dtype": "bfloat16", "mlp_t": False,
                   "no_ACT_continue": True}
    mlp = yaml.safe_load((REPO / "trm_ray" / "arch" / "trm_mlp.yaml").read_text())
    assert mlp == {**trm, "mlp_t": True}
    # ArchConfig's defaults are the trm group
    assert load_train_config(None, ["arch=trm"]) == load_train_config(None, [])
    # the ablations are TRM's values under their own name
    for ablation in ("trm_singlez", "trm_hier6"):
        group = yaml.safe_load((REPO / "trm_ray" / "arch" / f"{ablation}.yaml").read_text())
        assert group == {**trm, "name": ablation}
    # the values of the reference's hrm.yaml and transformers_baseline.yaml, written out by hand
    hrm = load_train_config(None, ["arch=hrm"]).arch
    assert (hrm.name, hrm.H_cycles, hrm.L_cycles, hrm.H_layers, hrm.L_layers, hrm.hidden_size, hrm.num_heads,
            hrm.expansion, hrm.puzzle_emb_dim, hrm.puzzle_prefix_len, hrm.pos_encodings, hrm.forward_dtype,
            hrm.mlp_t, hrm.halt_max_steps, hrm.halt_exploration_prob) == \
        ("hrm", 2, 2, 4, 4, 512, 8, 4, 512, 1, "rope", "bfloat16", False, 16, 0.1)
    tf = load_train_config(None, ["arch=transformers_baseline"]).arch
    assert (tf.name, tf.H_layers, tf.hidden_size, tf.num_heads, tf.head_dim, tf.expansion, tf.puzzle_prefix_len,
            tf.pos_encodings, tf.forward_dtype, tf.halt_max_steps, tf.halt_exploration_prob, tf.act_enabled,
            tf.act_inference, tf.compute_target_q) == \
        ("transformers_baseline", 8, 512, 12, 42, 4, 1, "rope", "bfloat16", 16, 0.1, True, False, False)


# --------------------------------------------------------------------------------------------
# Values typed as hydra types them
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("true", True), ("False", False), ("TRUE", True), ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"),
    ("10", 10), ("-20", -20), ("1_000", 1000), ("01", "01"), ("1e-4", 1e-4), ("3.0", 3.0), ("1e4", 10000.0),
    (".5", 0.5), ("-10e3", -10000.0), ("null", None), ("NULL", None), ("none", "none"), ("2024-01-01", "2024-01-01"),
    ("12:30", "12:30"), ("s3://bucket/runs", "s3://bucket/runs"), ("  spaced out  ", "spaced out"),
    ("'quoted, 1'", "quoted, 1"), ('"2"', "2"), ("a\\,b", "a,b"), ("", ""),
    ("[a, 1, 2.5, true, null, 'x,y']", ["a", 1, 2.5, True, None, "x,y"]), ("[]", []),
    ("[data/a,data/b]", ["data/a", "data/b"]), ("{name: arc, submission_K: 2}", {"name": "arc", "submission_K": 2}),
    ("[{name: arc@ARC}]", [{"name": "arc@ARC"}]), ("${oc.env:X,a}", "${oc.env:X,a}"),
])
def test_values_keep_hydra_types(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_special_floats():
    assert parse_value("inf") == math.inf and parse_value("-inf") == -math.inf and math.isnan(parse_value("nan"))


def test_string_keys_keep_text():
    config = load_train_config(EXPERIMENTS / "quickstart.yaml", ["run_name=yes"])
    assert config.run_name == "yes"
    for text in ("2024-01-01", "12:30", "2024", "1e-4", "true", "off"):
        assert load_train_config(EXPERIMENTS / "quickstart.yaml", [f"run_name={text}"]).run_name == text
    assert load_train_config(EXPERIMENTS / "quickstart.yaml", ["run_name=null"]).run_name is None
    config = load_train_config(EXPERIMENTS / "quickstart.yaml", ["lr=1e-4", "data_paths=[2024, data/x]", "ema=True"])
    assert config.lr == 1e-4 and config.data_paths == ["2024", "data/x"] and config.ema is True


def test_recipe_yaml_reads_as_hydra_reads_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 3e-4\nrun_name: 2024-01-01\n")
    config = load_train_config(recipe)
    assert (config.lr, config.run_name) == (3e-4, "2024-01-01")


def test_add_and_force_prefixes():
    recipe = EXPERIMENTS / "quickstart.yaml"  # sets epochs, not run_name
    assert load_train_config(recipe, ["+run_name=a"]).run_name == "a"
    assert load_train_config(recipe, ["++run_name=a", "++epochs=20", "eval_interval=5"]).epochs == 20


# --------------------------------------------------------------------------------------------
# Environment variables
# --------------------------------------------------------------------------------------------
def test_oc_env_in_overrides(monkeypatch):
    monkeypatch.setenv("TRM_TEST_USER", "alice")
    monkeypatch.delenv("TRM_TEST_UNSET", raising=False)
    recipe = EXPERIMENTS / "quickstart.yaml"
    assert load_train_config(recipe, ["+run_name=${oc.env:TRM_TEST_USER}"]).run_name == "alice"
    assert load_train_config(recipe, ["run_name=run-${oc.env:TRM_TEST_USER}-1"]).run_name == "run-alice-1"
    assert load_train_config(recipe, ["run_name=${oc.env:TRM_TEST_UNSET,bob}"]).run_name == "bob"
    assert load_train_config(recipe, ["run_name=${oc.env:TRM_TEST_UNSET,'b c'}"]).run_name == "b c"
    assert load_train_config(recipe, ["run_name=${oc.env:TRM_TEST_UNSET,null}"]).run_name is None
    assert load_train_config(recipe, ["run_name=${oc.env:TRM_TEST_USER,bob}"]).run_name == "alice"


def test_oc_env_in_recipe_files(monkeypatch, tmp_path):
    monkeypatch.setenv("TRM_TEST_ROOT", "/data/team")
    monkeypatch.delenv("TRM_TEST_LR", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data_paths: ['${oc.env:TRM_TEST_ROOT}/sudoku']\nlr: ${oc.env:TRM_TEST_LR,3e-4}\n"
                      "ray:\n  storage_path: ${oc.env:TRM_TEST_ROOT}/runs\n")
    config = load_train_config(recipe)
    assert (config.data_paths, config.lr, config.ray.storage_path) == (["/data/team/sudoku"], 3e-4, "/data/team/runs")
    monkeypatch.setenv("TRM_TEST_LR", "0.01")
    assert load_train_config(recipe).lr == 0.01


# --------------------------------------------------------------------------------------------
# Errors: one line that says what to write instead
# --------------------------------------------------------------------------------------------
QUICKSTART = EXPERIMENTS / "quickstart.yaml"


@pytest.mark.parametrize("override, message", [
    ("~lr", "override '~lr': trm-ray cannot delete keys; write lr=0.0001 for the default, or remove lr from the "
            "recipe"),
    ("~run_name", "write run_name=null for the default"),
    ("~arch", "override '~arch': trm-ray cannot delete keys; remove arch: from the recipe or set its keys one by "
              "one (arch.<name>=value)"),
    ("~nonsense=1", "trm-ray cannot delete keys, and 'nonsense' is not a trm-ray key; drop the override"),
    ("lr=1e-4,3e-4", "override 'lr=1e-4,3e-4': a comma-separated value is a hydra sweep over 2 values; trm-ray "
                     "train runs one config: put the values in a sweep file's search_space (examples in "
                     "experiments/sweeps/) and run `trm-ray sweep FILE` (escape a literal comma as \\,)"),
    ("arch.L_cycles=4,6,8", "a hydra sweep over 3 values"),
    ("lr=choice(1e-4,3e-4)", "choice(...) is a hydra sweep; trm-ray train runs one config"),
    ("arch.H_cycles=range(1,4)", "range(...) is a hydra sweep"),
    ("run_name=str(2)", "hydra's function str(...) is not supported; write the value itself"),
    ("-m", "-m: hydra's multirun is not supported; trm-ray train runs one config"),
    ("arch=nope", "arch=nope: no architecture group 'nope'; available: hrm, transformers_baseline, trm, trm_hier6, "
                  "trm_mlp, trm_singlez (or put arch/nope.yaml beside the recipe)"),
    (("arch=trm_hier6", "arch.L_cycles=7"), "trm_hier6 has 6 latent slots, one written per latent update; use L_cycles <= 6"),
    ("arch.name=hrm2", "arch.name='hrm2' is not an architecture trm-ray builds; known: trm, hrm, transformers_baseline, "
                       "trm_singlez, trm_hier6"),
    ("arch=../trm", "no architecture group '../trm'"),
    ("arch=[trm]", "arch takes an architecture group name (arch=trm)"),
    ("+epochs=3", "override '+epochs=3': epochs is already set (+ only adds a new key); write epochs=... or "
                  "++epochs=..."),
    ("run_name=${now:%Y}", "run_name: interpolation ${now:%Y} is not supported: write the value, or use "
                           "${oc.env:VAR}, ${oc.env:VAR,default}"),
    ("run_name=${oc.env:TRM_TEST_UNSET}", "run_name: environment variable TRM_TEST_UNSET is not set; set it, or "
                                          "give a default: ${oc.env:TRM_TEST_UNSET,default}"),
    ("run_name=${oc.env:}", "${oc.env:} needs a variable name"),
    ("run_name=${run_name}", "interpolation ${run_name} refers to itself"),
    ("run_name=${arch.nope}", "interpolation ${arch.nope} points at 'arch.nope', which is not set"),
    ("db/mysql=x", "hydra group paths and packages (a/b=, group@pkg=) are not supported"),
    ("arch@model=trm", "hydra group paths and packages"),
    ("data_paths=[a,b", "a list needs a closing ]"),
    ("run_name='abc", "the quote ' is not closed"),
    ("evaluators=[{name arc}]", "dict key 'name' needs a ':' and a value"),
    ("lr", "override 'lr' is not key=value (e.g. arch.L_cycles=6)"),
    ("=3", "override '=3' has an empty key"),
    ("arch..x=1", "'arch..x' is not a key"),
])
def test_error_messages(override, message, monkeypatch):
    monkeypatch.delenv("TRM_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as error:
        load_train_config(QUICKSTART, [override] if isinstance(override, str) else list(override))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_recipe_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults:\n  - optimizer: adam\n  - _self_\n")
    with pytest.raises(ConfigError, match=r"defaults entry \{'optimizer': 'adam'\} is not supported; trm-ray "
                                          r"composes the arch group \(- arch: trm\) and _self_ only"):
        load_train_config(recipe)
    recipe.write_text("defaults:\n  - arch: ???\n")
    with pytest.raises(ConfigError, match=r"the defaults list leaves the architecture open \(arch: \?\?\?\); add "
                                          r"arch=<name> \(hrm, transformers_baseline, trm, trm_hier6, trm_mlp, trm_singlez\)"):
        load_train_config(recipe)
    assert load_train_config(recipe, ["arch=trm_mlp"]).arch.mlp_t is True
    recipe.write_text("run_name: ${oc.decode:'1'}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: run_name: interpolation \$\{oc.decode:'1'\} is not supported"):
        load_train_config(recipe)


def test_hydra_overrides_are_ignored_with_a_note(capsys):
    config = load_train_config(QUICKSTART, ["hydra.run.dir=outputs/x", "hydra.job.chdir=false", "lr=2e-3"])
    assert config.lr == 2e-3
    assert capsys.readouterr().err.strip().splitlines() == [
        "trm-ray: ignoring hydra.* overrides (hydra's own settings; trm-ray needs none)"]


def test_sweep_files_keep_working():
    """apply_overrides (sweep files, quickstart) takes the same grammar."""
    data = apply_overrides({"lr": 3e-3, "arch": {"hidden_size": 64}},
                           ["tracking.project=p", "data_paths=[/tmp/a b/data]", "arch=trm_mlp", "epochs=20"])
    assert data["tracking"] == {"project": "p"} and data["data_paths"] == ["/tmp/a b/data"] and data["epochs"] == 20
    assert data["arch"]["hidden_size"] == 64 and data["arch"]["mlp_t"] is True and data["lr"] == 3e-3


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def train(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def test_cli_dry_run_of_a_reference_command():
    run_name, command = REFERENCE_README["sudoku-mlp"]
    result = train(str(EXPERIMENTS / "sudoku-mlp.yaml"), *shell_args(command, run_name), "--dry-run")
    assert result.exit_code == 0, result.output
    config = TrainConfig(**yaml.safe_load(result.stdout))
    assert experiment(config) == EXPECTED["sudoku-mlp"] and config.run_name == "pretrain_mlp_t_sudoku"


def test_cli_dry_run_of_the_reference_layout():
    result = train(str(REFERENCE_CFG), *shell_args(README_TABLE["arc1"]), "run_name=2024-01-01", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (f"trm-ray: ignoring the hydra: block of {REFERENCE_CFG} (hydra's own "
                                     f"settings; trm-ray needs none)")
    printed = yaml.safe_load(result.stdout)
    assert printed["run_name"] == "2024-01-01" and printed["lr"] == 1e-4
    assert experiment(TrainConfig(**printed)) == EXPECTED["arc1"]


@pytest.mark.parametrize("args, message", [
    (["-m", "lr=1e-4,3e-4"], "Error: -m: hydra's multirun is not supported by trm-ray train; put the values to "
                             "sweep in a sweep file's search_space (examples in experiments/sweeps/) and run "
                             "`trm-ray sweep FILE`"),
    (["--multirun"], "Error: --multirun: hydra's multirun is not supported by trm-ray train"),
    (["lr=1e-4,3e-4"], "Error: override 'lr=1e-4,3e-4': a comma-separated value is a hydra sweep over 2 values"),
    (["arch=nope"], "Error: arch=nope: no architecture group 'nope'; available: hrm, transformers_baseline, trm"),
    (["~ema"], "Error: override '~ema': trm-ray cannot delete keys; write ema=false for the default"),
])
def test_cli_errors_are_one_line(args, message):
    result = train(str(QUICKSTART), *args, "--dry-run")
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
