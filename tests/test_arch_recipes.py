"""The baseline recipes (experiments/hrm-*.yaml, experiments/transformer-*.yaml) resolve to the
published settings written out here by hand, and build the network those settings describe.

Expected values: the HRM repository's README commands applied by hand to its cfg_pretrain.yaml and
hrm_v1.yaml (the numbers each recipe's header cites), and for the transformer baseline the TRM
recipe of the same task with the transformers_baseline group. Parameter counts come from a formula
over the layer shapes (embedding, heads, attention and SwiGLU blocks), with the paper-size totals
also written out as numbers. No Ray, no data: each recipe builds one model on a tiny data shape.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from trm_ray.config import DataShape, TrainConfig, load_train_config
from trm_ray.data.recipe import load_recipe as load_dataset_recipe
from trm_ray.model import build_model

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "trm_ray" / "recipes" / "experiments"

# Building a 27M-parameter model is a fixed cost; more threads only contend on a shared CPU.
torch.set_num_threads(1)

# --------------------------------------------------------------------------------------------
# The settings, written out
# --------------------------------------------------------------------------------------------
HRM_ARCH = {
    "arch.name": "hrm", "arch.H_cycles": 2, "arch.L_cycles": 2, "arch.H_layers": 4, "arch.L_layers": 4,
    "arch.hidden_size": 512, "arch.num_heads": 8, "arch.expansion": 4.0, "arch.puzzle_emb_dim": 512,
    "arch.puzzle_prefix_len": 1, "arch.pos_encodings": "rope", "arch.halt_max_steps": 16,
    "arch.halt_exploration_prob": 0.1, "arch.forward_dtype": "bfloat16", "arch.mlp_t": False,
    "arch.loss_type": "stablemax_cross_entropy",
}
# HRM's cfg_pretrain.yaml: the values no README command changes. HRM has no weight EMA.
HRM_TRAIN = {
    "global_batch_size": 768, "lr": 1e-4, "lr_warmup_steps": 2000, "lr_min_ratio": 1.0, "beta1": 0.9,
    "beta2": 0.95, "ema": False, "ray.num_workers": 8, "ray.use_gpu": True,
}
HRM_PUZZLE = {  # README: Sudoku and Maze commands
    "evaluators": [], "epochs": 20000, "eval_interval": 2000, "puzzle_emb_lr": 1e-4, "weight_decay": 1.0,
    "puzzle_emb_weight_decay": 1.0,
}
HRM_ARC = {  # README: the ARC commands change only the data
    "evaluators": ["arc"], "epochs": 100000, "eval_interval": 10000, "puzzle_emb_lr": 1e-2, "weight_decay": 0.1,
    "puzzle_emb_weight_decay": 0.1,
}

TRANSFORMER_ARCH = {
    "arch.name": "transformers_baseline", "arch.H_layers": 8, "arch.hidden_size": 512, "arch.num_heads": 12,
    "arch.head_dim": 42, "arch.expansion": 4.0, "arch.puzzle_emb_dim": 512, "arch.puzzle_prefix_len": 1,
    "arch.pos_encodings": "rope", "arch.halt_max_steps": 16, "arch.halt_exploration_prob": 0.1,
    "arch.forward_dtype": "bfloat16", "arch.act_enabled": True, "arch.act_inference": False,
    "arch.compute_target_q": False, "arch.loss_type": "stablemax_cross_entropy",
}
# The TRM rows' settings (experiments/sudoku-att.yaml, maze-att.yaml, arc1.yaml, arc2.yaml).
TRM_TRAIN = {
    "global_batch_size": 768, "lr": 1e-4, "lr_warmup_steps": 2000, "lr_min_ratio": 1.0, "beta1": 0.9,
    "beta2": 0.95, "ema": True, "ema_rate": 0.999, "ray.use_gpu": True,
}
TRM_PUZZLE = {
    "evaluators": [], "epochs": 50000, "eval_interval": 5000, "puzzle_emb_lr": 1e-4, "weight_decay": 1.0,
    "puzzle_emb_weight_decay": 1.0,
}
TRM_ARC = {
    "evaluators": ["arc"], "epochs": 100000, "eval_interval": 10000, "puzzle_emb_lr": 1e-2, "weight_decay": 0.1,
    "puzzle_emb_weight_decay": 0.1, "ray.num_workers": 4,
}

SUDOKU, MAZE = ["data/sudoku-extreme-1k-aug-1000"], ["data/maze-30x30-hard-1k"]
ARC1, ARC2 = ["data/arc1concept-aug-1000"], ["data/arc2concept-aug-1000"]

EXPECTED = {
    "hrm-sudoku": {**HRM_ARCH, **HRM_TRAIN, **HRM_PUZZLE, "data_paths": SUDOKU},
    "hrm-maze": {**HRM_ARCH, **HRM_TRAIN, **HRM_PUZZLE, "data_paths": MAZE},
    "hrm-arc1": {**HRM_ARCH, **HRM_TRAIN, **HRM_ARC, "data_paths": ARC1},
    "hrm-arc2": {**HRM_ARCH, **HRM_TRAIN, **HRM_ARC, "data_paths": ARC2},
    "transformer-sudoku": {**TRANSFORMER_ARCH, **TRM_TRAIN, **TRM_PUZZLE, "data_paths": SUDOKU, "ray.num_workers": 1},
    "transformer-maze": {**TRANSFORMER_ARCH, **TRM_TRAIN, **TRM_PUZZLE, "data_paths": MAZE, "ray.num_workers": 4},
    "transformer-arc1": {**TRANSFORMER_ARCH, **TRM_TRAIN, **TRM_ARC, "data_paths": ARC1},
    "transformer-arc2": {**TRANSFORMER_ARCH, **TRM_TRAIN, **TRM_ARC, "data_paths": ARC2},
}
# The score each header names (paper row), as it must appear there.
PAPER_ROW = {
    "hrm-sudoku": "55.0%", "hrm-maze": "74.5%", "hrm-arc1": "40.3%", "hrm-arc2": "5.0%",
    "transformer-sudoku": "0.0%", "transformer-maze": "0.0%", "transformer-arc1": "21.0%", "transformer-arc2": "0.0%",
}


def resolved(config: TrainConfig, keys) -> dict:
    """The values of the dotted `keys` in `config` (evaluators by name)."""
    values = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    if "evaluators" in values:
        values["evaluators"] = [spec["name"].split("@")[0] for spec in config.evaluators]
    return values


def recipe_path(name: str) -> Path:
    return EXPERIMENTS / f"{name}.yaml"


def test_every_baseline_recipe_is_covered():
    on_disk = {p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem.startswith(("hrm-", "transformer-"))}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_resolves_to_the_published_settings(name):
    config = load_train_config(recipe_path(name))
    expected = EXPECTED[name]
    assert resolved(config, expected) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_names_the_row_the_data_build_and_itself(name):
    text = recipe_path(name).read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert PAPER_ROW[name] in header
    assert f"trm-ray train experiments/{name}.yaml" in header
    build = re.search(r"trm-ray data build (datasets/\S+\.yaml)", header)
    assert build, "the header gives no data build command"
    dataset = load_dataset_recipe(REPO / "trm_ray" / "recipes" / build.group(1))
    assert [dataset.resolved_output_dir] == EXPECTED[name]["data_paths"]


def test_transformer_single_pass_override_from_the_header():
    config = load_train_config(recipe_path("transformer-sudoku"), ["arch.halt_max_steps=1"])
    assert config.arch.name == "transformers_baseline" and config.arch.halt_max_steps == 1


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------
def swiglu_inner(width: int, expansion: float) -> int:
    """Inner width: round(expansion * width * 2/3), then up to the next multiple of 256."""
    return math.ceil(round(expansion * width * 2 / 3) / 256) * 256


def attention_block_params(D: int, heads: int, expansion: float) -> int:
    head_dim = D // heads
    qkv = 3 * heads * head_dim * D
    o_proj = D * heads * head_dim
    inner = swiglu_inner(D, expansion)
    return qkv + o_proj + 2 * inner * D + inner * D  # gate_up, down


def shared_params(V: int, D: int) -> int:
    """embed_tokens + lm_head + q_head (weight and bias); the puzzle table is a buffer."""
    return V * D + V * D + 2 * D + 2


SHAPE = DataShape(seq_len=16, vocab_size=11, num_puzzle_identifiers=3)

# At the recipes' sizes (D 512, expansion 4; V 11): HRM's block has 8 heads of 64, its SwiGLU
# 1536 wide: 786432 + 262144 + 1572864 + 786432 = 3407872; the transformer's 12 heads of 42:
# 774144 + 258048 + 2359296 = 3391488.
PAPER_SIZE = {"hrm": 8 * 3407872 + 11264 + 1026, "transformers_baseline": 8 * 3391488 + 11264 + 1026}


def expected_params(config: TrainConfig) -> int:
    arch = config.arch
    blocks = arch.H_layers + arch.L_layers if arch.name == "hrm" else arch.H_layers
    return shared_params(SHAPE.vocab_size, arch.hidden_size) + \
        blocks * attention_block_params(arch.hidden_size, arch.num_heads, arch.expansion)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_has_the_parameters_and_keys_of_its_architecture(name):
    config = load_train_config(recipe_path(name))
    model = build_model(config.arch, SHAPE, batch_size=2)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_params(config) == PAPER_SIZE[config.arch.name]
    assert 27_000_000 < count < 27_500_000  # the "27M" both papers give for these baselines

    state = model.state_dict()
    stacks = {re.match(r"model\.inner\.(\w+)\.layers\.(\d+)\.", key).groups() for key in state if ".layers." in key}
    inits = {key.rsplit(".", 1)[1] for key in state if key.endswith("_init")}
    if config.arch.name == "hrm":
        assert stacks == {(stack, str(i)) for stack in ("H_level", "L_level") for i in range(4)}
        assert inits == {"H_init", "L_init"}
    else:
        assert stacks == {("H_level", str(i)) for i in range(8)}
        assert inits == {"H_init"}
    assert state["model.inner.puzzle_emb.weights"].shape == (SHAPE.num_puzzle_identifiers, 512)
    assert state["model.inner.H_level.layers.0.self_attn.qkv_proj.weight"].shape == \
        ((3 * 8 * 64, 512) if config.arch.name == "hrm" else (3 * 12 * 42, 512))
