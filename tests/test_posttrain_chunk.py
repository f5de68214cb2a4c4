"""One chunk's pieces without Ray: the grown puzzle table, the reserved identifiers of the chunk's
dataset, the fine-tune's budget and config, the demonstration-pair fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.posttrain_util import ARC, TASKS, tiny_checkpoint, write_tasks
from trm_ray.checkpoint import PUZZLE_TABLE_KEY, load_checkpoint, read_state_dict
from trm_ray.data import layout
from trm_ray.data.builder import build_dataset
from trm_ray.data.recipe import DatasetRecipe
from trm_ray.posttrain import chunk as C
from trm_ray.posttrain.tasks import load_tasks

needs_arc = pytest.mark.skipif(not Path(f"{ARC}_evaluation2_challenges.json").is_file(), reason="needs ../shared/data/arc")


def test_grown_table_keeps_the_saved_rows_and_starts_new_ones_at_their_mean():
    table = torch.tensor([[1.0, 2.0], [3.0, -4.0], [5.0, 8.0]])
    grown = C.grown_state({PUZZLE_TABLE_KEY: table, "other": torch.ones(1)}, 5)[PUZZLE_TABLE_KEY]
    assert grown.tolist() == [[1, 2], [3, -4], [5, 8], [3, 2], [3, 2]]
    assert C.grown_state({PUZZLE_TABLE_KEY: table}, 3)[PUZZLE_TABLE_KEY] is table
    # --puzzle-table new: the chunk's rows only, every one at the saved rows' mean
    assert C.grown_state({PUZZLE_TABLE_KEY: table}, 2, keep=False)[PUZZLE_TABLE_KEY].tolist() == [[3, 2], [3, 2]]


@needs_arc
def test_chunk_dataset_numbers_its_puzzles_after_the_reserved_rows(tmp_path):
    task_set = load_tasks(str(write_tasks(tmp_path / "tasks", TASKS[:2])))
    prefix = str(tmp_path / "chunk" / "tasks")
    from trm_ray.posttrain.tasks import write_chunk_files

    write_chunk_files(task_set, TASKS[:2], prefix)
    recipe = DatasetRecipe(kind="arc", input_file_prefix=prefix, subsets=["tiny"], test_set_name="tiny", num_aug=2, seed=0)
    plain = build_dataset(recipe, str(tmp_path / "plain"), use_ray=False)
    # "135a2760" (an original puzzle of the chunk) is reserved: it keeps row 2
    reserved = ["<pretrained row 1>", TASKS[0], "<pretrained row 3>"]
    built = build_dataset(recipe, str(tmp_path / "reserved"), use_ray=False, reserved_identifiers=reserved)
    names_plain = layout.load_identifiers(tmp_path / "plain")
    names = layout.load_identifiers(tmp_path / "reserved")
    assert names[:4] == ["<blank>", *reserved]
    # every other puzzle comes after the reserved rows, in the order the plain build numbers them
    assert names[4:] == [n for n in names_plain[1:] if n != TASKS[0]]
    # 3 reserved rows, one of them a puzzle of the chunk: 2 more than the plain build
    assert built["num_puzzle_identifiers"] == len(names) == plain["num_puzzle_identifiers"] + 2
    ids = np.load(tmp_path / "reserved" / "train" / "all__puzzle_identifiers.npy")
    assert sorted(set(ids.tolist())) == [2, *range(4, len(names))]
    test_ids = np.load(tmp_path / "reserved" / "test" / "all__puzzle_identifiers.npy")
    assert set(test_ids.tolist()) <= set(ids.tolist())  # a test input's variant is a trained puzzle


def test_reserved_names_are_the_checkpoints_dataset_names_when_they_match(tmp_path):
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "identifiers.json").write_text(json.dumps(["<blank>", "a", "b|||t1|0123456789"]))
    assert C.reserved_names({"data_paths": [str(dataset)]}, 3) == ["a", "b|||t1|0123456789"]
    assert C.reserved_names({"data_paths": [str(dataset)]}, 4) == ["<pretrained row 1>", "<pretrained row 2>",
                                                                    "<pretrained row 3>"]
    assert C.reserved_names({}, 1) == []


def test_budget_in_steps_becomes_epochs_and_checkpoint_intervals():
    meta = layout.DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
                                  num_puzzle_identifiers=10, total_groups=4, mean_puzzle_examples=2.5,
                                  total_puzzles=8, sets=["all"])
    # 10 examples per epoch, batch 8: 16 steps need 128 examples, 13 epochs (12.8 rounded up)
    assert C.epochs_for(16, meta, 8) == 13
    assert C.epochs_for(1, meta, 8) == 1
    assert [C.checkpoint_interval(e) for e in (13, 12, 6, 3, 1)] == [13, 3, 2, 1, 1]


@needs_arc
def test_prepare_and_config_inherit_the_checkpoint_and_fit_its_table(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", rows=5)
    task_set = load_tasks(str(write_tasks(tmp_path / "tasks", TASKS[:2])))
    folder = str(tmp_path / "chunk")
    info = C.prepare(folder, str(checkpoint), task_set, TASKS[:2], num_aug=2, seed=0, use_ray=False)
    assert info["table_rows"] == 5
    names = layout.load_identifiers(Path(folder) / "data")
    base = read_state_dict(Path(folder) / "base" / "model.pt")
    saved = read_state_dict(checkpoint / "model.pt")
    table, old = base[PUZZLE_TABLE_KEY], saved[PUZZLE_TABLE_KEY]
    assert table.shape[0] == len(names) > 5
    assert torch.equal(table[:5], old) and torch.allclose(table[5:], old.mean(0).expand(len(names) - 5, -1))
    load_checkpoint(Path(folder) / "base")  # the base is a whole checkpoint of its own

    _, arch, saved_config = C.read_base(str(checkpoint))
    config = C.chunk_config(saved_config, arch, data_dir=str(Path(folder) / "data"), base_dir=str(Path(folder) / "base"),
                            run_name="chunk-0", storage_path=str(tmp_path / "runs"), budget={"steps": 20, "epochs": None},
                            train={"lr": 3e-4, "warmup_fraction": 0.25}, tracking={"wandb": False},
                            resources={"CPU": 1.0}, workers=1, max_failures=2)
    assert (config.lr, config.puzzle_emb_lr, config.global_batch_size) == (3e-4, 1e-2, 8)  # lr given; the rest saved
    assert config.arch.hidden_size == 32 and config.arch.pos_encodings == "learned"
    meta = layout.load_metadata(Path(folder) / "data", "train")
    examples = meta.total_groups * meta.mean_puzzle_examples
    assert config.epochs == int(np.ceil(20 * 8 / examples - 1e-9))
    assert config.epochs % config.eval_interval == 0 and config.min_eval_interval == config.epochs // config.eval_interval
    assert config.ray.max_failures == 2 and config.load_checkpoint.endswith("base/model.pt")
    steps = int(config.epochs * examples / 8)
    assert config.lr_warmup_steps == int(steps * 0.25)

    model = load_checkpoint(Path(folder) / "base")
    fit = C.demo_fit(model, str(Path(folder) / "data"), max_rows=6)
    assert fit["demo_rows"] == 6 and 0 <= fit["demo_token_accuracy"] <= 1

    # --puzzle-table new: nothing reserved, a table of the chunk's puzzles at the mean row
    fresh = str(tmp_path / "fresh")
    C.prepare(fresh, str(checkpoint), task_set, TASKS[:2], num_aug=2, seed=0, use_ray=False, keep_table=False)
    fresh_names = layout.load_identifiers(Path(fresh) / "data")
    assert fresh_names[0] == "<blank>" and fresh_names[1:] == names[5:]  # the same puzzles, numbered from 1
    fresh_table = read_state_dict(Path(fresh) / "base" / "model.pt")[PUZZLE_TABLE_KEY]
    assert torch.allclose(fresh_table, old.mean(0).expand(len(fresh_names), -1))
