"""One chunk of a post-training job: its dataset, its starting weights, its fine-tune, its predictions.

Each function is one stage and runs wherever the job (trm_ray.posttrain.job) places it; every
input and output is a path under the chunk's folder (a local folder or a URI), so a stage that
is run again finds what an earlier attempt finished:

    <chunk>/data/            the ARC dataset: train split = the chunk's demonstration pairs and
                             their augmentations, test split = its test inputs (same variants)
    <chunk>/base/            the checkpoint with its puzzle table grown for the chunk's puzzles
    <chunk>/pretrained.json  the base model's predictions (the fallback) and demo-pair fit
    <chunk>/result.json      the fine-tuned model's demo-pair fit, timings, steps
    <chunk>/submission.json  written last: the chunk is finished

Puzzle table: the chunk dataset reserves the identifiers 1..R-1 for the checkpoint's R rows
(with the names of the checkpoint's dataset when it is on this machine, placeholders
otherwise), so a puzzle the checkpoint trained on keeps its row and every other puzzle gets a
new row set to the mean of the saved rows, the value the reference gives rows of puzzles it
has not seen (trm_ray.checkpoint.load_weights_into); the saved rows stay as they were. With
keep_table=False the chunk's table has only its own puzzles' rows, all at that mean: a paper
ARC table is ~1M rows (GBs), which every checkpoint of every chunk would otherwise carry.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from trm_ray import storage

DATA_DIR, BASE_DIR = "data", "base"
PRETRAINED_FILE, RESULT_FILE, SUBMISSION_FILE = "pretrained.json", "result.json", "submission.json"
# Training hyperparameters a chunk takes over from the checkpoint's own config (the rest are
# the post-training job's: data, budget, warmup, storage, tracking).
INHERITED_KEYS = ("lr", "lr_min_ratio", "beta1", "beta2", "weight_decay", "puzzle_emb_lr", "puzzle_emb_weight_decay",
                  "ema", "ema_rate", "global_batch_size")
DEMO_FIT_ROWS = 256  # demonstration rows scored before and after fine-tuning (the original puzzles first)


class ChunkError(ValueError):
    """A user-fixable problem found while preparing a chunk (one line)."""


# --------------------------------------------------------------------------------------------
# The checkpoint
# --------------------------------------------------------------------------------------------
def read_base(checkpoint: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(state dict, ArchConfig fixed by the tensors, saved config dict) of a checkpoint, with a
    one-line error when it cannot post-train on ARC tasks (vocabulary, sequence length)."""
    from trm_ray.checkpoint import (CheckpointError, _arch_from, arch_fixed_by_tensors, read_config_beside,
                                    read_state_dict, shape_from_state_dict, with_local_checkpoint)
    from trm_ray.data.transforms import ARC_SEQ_LEN, ARC_VOCAB_SIZE

    def load(local: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        state = read_state_dict(local)
        config = read_config_beside(local)
        if config is None:
            raise CheckpointError(f"checkpoint {checkpoint!r} has no all_config.yaml beside its weights: "
                                  f"post-training needs the run's arch settings")
        if "model.inner.embed_tokens.embedding_weight" not in state:
            raise CheckpointError(f"checkpoint {checkpoint!r} has no model.inner.embed_tokens weights; is it a TRM checkpoint?")
        arch, saved = _arch_from(config)
        arch = arch_fixed_by_tensors(state, arch)
        shape = shape_from_state_dict(state, arch)
        if shape.vocab_size != ARC_VOCAB_SIZE:
            raise CheckpointError(f"checkpoint {checkpoint!r} has a vocabulary of {shape.vocab_size} tokens but ARC "
                                  f"tasks need {ARC_VOCAB_SIZE}: post-train a checkpoint trained on an ARC dataset")
        if shape.seq_len not in (1, ARC_SEQ_LEN):  # 1: RoPE / no positions, any length
            raise CheckpointError(f"checkpoint {checkpoint!r} holds sequences of {shape.seq_len} tokens but ARC tasks "
                                  f"need {ARC_SEQ_LEN} (30x30 grids): post-train a checkpoint trained on an ARC dataset")
        return state, arch, saved

    return with_local_checkpoint(checkpoint, load)


def table_rows(state: Mapping[str, Any]) -> int:
    """Rows of the checkpoint's puzzle table (1 when it has none: only the blank identifier)."""
    from trm_ray.checkpoint import PUZZLE_TABLE_KEY

    table = state.get(PUZZLE_TABLE_KEY)
    return int(table.shape[0]) if table is not None else 1


def reserved_names(saved_config: Mapping[str, Any], rows: int) -> list[str]:
    """Names of identifiers 1..rows-1: the checkpoint's dataset's when that dataset is on this
    machine and matches the table, else placeholders no ARC puzzle can be named."""
    from trm_ray.data import layout

    for path in saved_config.get("data_paths") or []:
        try:
            names = layout.load_identifiers(str(path))
        except (OSError, ValueError):
            continue
        if len(names) == rows:
            return list(names[1:])
    return [f"<pretrained row {i}>" for i in range(1, rows)]


def grown_state(state: Mapping[str, Any], rows: int, keep: bool = True) -> dict[str, Any]:
    """The state dict with its puzzle table grown to `rows`: saved rows kept, new rows set to
    the mean of the saved rows. keep=False: every one of the `rows` rows set to that mean (the
    reference's rule for a table of another size)."""
    import torch

    from trm_ray.checkpoint import PUZZLE_TABLE_KEY

    state = dict(state)
    table = state.get(PUZZLE_TABLE_KEY)
    if table is None or (keep and rows <= table.shape[0]):
        return state
    mean = table.float().mean(0, keepdim=True).to(table.dtype)
    kept = table if keep else table[:0]
    state[PUZZLE_TABLE_KEY] = torch.cat([kept, mean.expand(rows - kept.shape[0], -1)]).contiguous()
    return state


def write_base(state: Mapping[str, Any], arch: Any, rows: int, dataset_shape: Any, out: str, keep: bool = True) -> str:
    """model.pt + all_config.yaml of the chunk's starting point at `out` (a folder or URI)."""
    from trm_ray.checkpoint import load_weights_into, save_checkpoint
    from trm_ray.model import build_model

    model = build_model(arch, dataset_shape, batch_size=1)
    load_weights_into(model, grown_state(state, rows, keep), source="post-training base")
    with tempfile.TemporaryDirectory(prefix="trm-ray-base-") as tmp:
        save_checkpoint(model, f"{tmp}/", arch, dataset_shape)
        publish_dir(tmp, out)
    return out


def publish_dir(local: str, out: str) -> None:
    """Copy a finished local folder to `out` (local or URI) so that readers never see half of it."""
    if storage.is_uri(out):
        storage.upload_dir(local, out)
        return
    import shutil

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    staging = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(local, staging)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


# --------------------------------------------------------------------------------------------
# Stage 1: dataset and base checkpoint
# --------------------------------------------------------------------------------------------
def prepare(chunk_dir: str, checkpoint: str, task_set: Any, names: list[str], num_aug: int, seed: int,
            use_ray: bool = True, keep_table: bool = True) -> dict[str, Any]:
    """Build the dataset of the tasks `names` of `task_set` (a trm_ray.posttrain.tasks.TaskSet)
    with Ray Data on the running Ray (use_ray=False: in this process), and the chunk's base
    checkpoint; each is skipped when an earlier attempt finished it (the checkpoint, GBs with a
    paper-scale puzzle table, is then not read at all). keep_table=False: the chunk's table
    holds only its own puzzles, every row at the mean of the saved rows (nothing reserved).
    Returns {"build_s", "table_rows"} (the checkpoint's table rows; None when it was not read)."""
    from trm_ray.checkpoint import MODEL_FILE
    from trm_ray.config import DataShape
    from trm_ray.data import layout
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.staging import resolve_data_path
    from trm_ray.data.recipe import DatasetRecipe
    from trm_ray.posttrain.tasks import write_chunk_files

    started = time.perf_counter()
    base: list[tuple[dict[str, Any], Any, dict[str, Any]]] = []  # read_base's result, read once if needed

    def loaded() -> tuple[dict[str, Any], Any, dict[str, Any]]:
        if not base:
            base.append(read_base(checkpoint))
        return base[0]

    data_dir = storage.join(chunk_dir, DATA_DIR)
    if not storage.is_file(storage.join(data_dir, layout.BUILD_FILE)):
        reserved: list[str] = []
        if keep_table:
            state, _, saved = loaded()
            reserved = reserved_names(saved, table_rows(state))
        with tempfile.TemporaryDirectory(prefix="trm-ray-chunk-tasks-") as tmp:
            prefix = write_chunk_files(task_set, names, os.path.join(tmp, "tasks"))
            recipe = DatasetRecipe(kind="arc", input_file_prefix=prefix, subsets=[task_set.subset],
                                   test_set_name=task_set.subset, num_aug=num_aug, seed=seed)
            # overwrite: a folder here is an attempt that died before build.json (never a finished build)
            build_dataset(recipe, data_dir, overwrite=True, use_ray=use_ray, reserved_identifiers=reserved)
    build_s = time.perf_counter() - started
    base_dir = storage.join(chunk_dir, BASE_DIR)
    if not storage.is_file(storage.join(base_dir, MODEL_FILE)):
        meta = layout.load_metadata(resolve_data_path(data_dir), "train")
        shape = DataShape(seq_len=meta.seq_len, vocab_size=meta.vocab_size,
                          num_puzzle_identifiers=meta.num_puzzle_identifiers)
        state, arch, _ = loaded()
        write_base(state, arch, meta.num_puzzle_identifiers, shape, base_dir, keep=keep_table)
    return {"build_s": round(build_s, 3), "table_rows": table_rows(base[0][0]) if base else None}


# --------------------------------------------------------------------------------------------
# Stage 2 and 4: predictions (with voting) and the fit of the demonstration pairs
# --------------------------------------------------------------------------------------------
def demo_fit(model: Any, dataset_dir: str, max_rows: int = DEMO_FIT_ROWS, batch_size: int = 64) -> dict[str, float]:
    """How well the model reproduces the chunk's demonstration outputs: token accuracy and the
    fraction of exactly right grids over up to `max_rows` train rows, the original (not
    augmented) puzzles' rows first."""
    from trm_ray.data import layout
    from trm_ray.data.staging import resolve_data_path
    from trm_ray.data.transforms import PUZZLE_ID_SEPARATOR
    from trm_ray.eval.core import predict_real_rows
    from trm_ray.data.loader import read_rows

    local = resolve_data_path(dataset_dir)
    meta = layout.load_metadata(local, "train")
    names = layout.load_identifiers(local)
    correct = tokens = exact = rows = 0
    for set_name in meta.sets:
        arrays = layout.load_set_arrays(local, "train", set_name, meta)
        ids = np.asarray(arrays.puzzle_identifiers)
        original = np.array([PUZZLE_ID_SEPARATOR not in names[i] for i in ids])
        order = np.concatenate([np.flatnonzero(original), np.flatnonzero(~original)])
        examples = [e for p in order for e in range(int(arrays.puzzle_indices[p]), int(arrays.puzzle_indices[p + 1]))]
        for start in range(0, min(len(examples), max_rows - rows), batch_size):
            picked = examples[start:min(start + batch_size, max_rows - rows)]
            batch = {k: np.concatenate([read_rows(arrays, meta, e, e + 1)[k] for e in picked])
                     for k in ("inputs", "labels", "puzzle_identifiers")}
            batch_np, outputs = predict_real_rows(model, batch, len(picked))
            mask = batch_np["labels"] != layout.IGNORE_LABEL_ID
            right = (outputs["preds"] == batch_np["labels"]) & mask
            correct += int(right.sum())
            tokens += int(mask.sum())
            exact += int((right.sum(1) == mask.sum(1)).sum())
        rows = min(max_rows, rows + len(examples))
        if rows >= max_rows:
            break
    return {"demo_token_accuracy": correct / max(tokens, 1), "demo_exact_accuracy": exact / max(rows, 1),
            "demo_rows": rows}


def predict(checkpoint: str, chunk_dir: str, out_file: str, threads: Optional[int] = None) -> dict[str, Any]:
    """Vote over the chunk's augmented test inputs with `checkpoint` (trm_ray.eval ARC
    evaluator), score the demonstration pairs, and write {"submission", "fit", "seconds"} to
    `out_file` in the chunk folder."""
    import torch

    from trm_ray.eval.loading import load_eval_model
    from trm_ray.eval.run import evaluate_checkpoint

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    data_dir = storage.join(chunk_dir, DATA_DIR)
    model = load_eval_model(checkpoint)
    run = evaluate_checkpoint(model, data_dir)
    fit = demo_fit(model, data_dir)
    from trm_ray.posttrain.tasks import prize_grid

    submission = {name: [{k: prize_grid(grid) for k, grid in entry.items()} for entry in entries]
                  for name, entries in (run.submission or {}).items()}
    record = {"submission": submission, "fit": fit, "seconds": round(time.perf_counter() - started, 3)}
    storage.write_text(storage.join(chunk_dir, out_file), json.dumps(record))
    return record


# --------------------------------------------------------------------------------------------
# Stage 3: the fine-tune, one Ray Train run
# --------------------------------------------------------------------------------------------
def epochs_for(steps: int, meta: Any, global_batch_size: int) -> int:
    """The fewest epochs that give at least `steps` optimizer steps (trm_ray.optim.total_train_steps)."""
    examples = meta.total_groups * meta.mean_puzzle_examples
    return max(1, math.ceil(steps * global_batch_size / max(examples, 1e-9) - 1e-9))


def checkpoint_interval(epochs: int, checkpoints: int = 4) -> int:
    """eval_interval (epochs between checkpoints) giving up to `checkpoints` checkpoints: the
    largest count <= checkpoints that divides epochs (a retried worker restarts from the last)."""
    count = next(k for k in range(min(checkpoints, epochs), 0, -1) if epochs % k == 0)
    return epochs // count


def chunk_config(saved: Mapping[str, Any], arch: Any, *, data_dir: str, base_dir: str, run_name: str,
                 storage_path: str, budget: Mapping[str, Any], train: Mapping[str, Any], tracking: Mapping[str, Any],
                 resources: Mapping[str, float], workers: int, max_failures: int) -> Any:
    """The TrainConfig of a chunk's fine-tune: the checkpoint's architecture and optimizer
    settings, the chunk's dataset, the job's budget ({"steps": S} or {"epochs": E}) and
    overrides (`train`: lr, global_batch_size, warmup, seed...). No evaluation inside the run
    (the job predicts with voting afterwards); a checkpoint at each of up to 4 intervals."""
    from trm_ray.config import ConfigError, TrainConfig, build
    from trm_ray.data import layout
    from trm_ray.data.staging import resolve_data_path

    data: dict[str, Any] = {k: saved[k] for k in INHERITED_KEYS if k in saved and saved[k] is not None}
    data.update({k: v for k, v in train.items() if v is not None and k != "warmup_fraction"})
    meta = layout.load_metadata(resolve_data_path(data_dir), "train")
    batch = int(data.get("global_batch_size", TrainConfig.model_fields["global_batch_size"].default))
    epochs = int(budget["epochs"]) if budget.get("epochs") else epochs_for(int(budget["steps"]), meta, batch)
    interval = checkpoint_interval(epochs)
    from trm_ray.checkpoint import MODEL_FILE
    from trm_ray.optim import total_train_steps

    steps = total_train_steps(epochs, meta.total_groups, meta.mean_puzzle_examples, batch)
    if steps < 1:
        raise ChunkError(f"{epochs} epochs of {meta.total_groups * meta.mean_puzzle_examples:.0f} examples are less "
                         f"than one batch of {batch}: raise --steps/--epochs or lower --global-batch-size")
    if "lr_warmup_steps" not in train or train.get("lr_warmup_steps") is None:
        data["lr_warmup_steps"] = int(steps * float(train.get("warmup_fraction", 0.1)))
    use_gpu = float(resources.get("GPU", 0)) > 0
    data.update(
        arch=arch.model_dump(mode="json"), data_paths=[data_dir], epochs=epochs, eval_interval=interval,
        min_eval_interval=epochs // interval,  # never evaluate inside the run
        load_checkpoint=storage.join(base_dir, MODEL_FILE), run_name=run_name, evaluators=[],
        ray={"num_workers": workers, "use_gpu": use_gpu, "resources_per_worker": dict(resources),
             "storage_path": storage_path, "max_failures": max_failures},
        checkpoint={"num_to_keep": 2, "every_eval": True}, tracking=dict(tracking),
    )
    try:
        return build(TrainConfig, data, "post-training config")
    except ConfigError as error:
        raise ChunkError(str(error)) from None


def finetune(config: Any) -> dict[str, Any]:
    """Run (or continue) the chunk's Ray Train run; {"checkpoint", "steps", "finetune_s"}."""
    from trm_ray.train.trainer import check_inputs, fit
    from trm_ray.run_folder import run_dir_of, run_started

    started = time.perf_counter()
    config = check_inputs(config)
    result = fit(config, resume=run_started(run_dir_of(config)), report_every_s=30.0)
    if result.last_checkpoint is None:
        raise RuntimeError(f"chunk run {result.run_dir} finished without a checkpoint")
    return {"checkpoint": result.last_checkpoint, "steps": int(result.final.get("step", 0)),
            "finetune_s": round(time.perf_counter() - started, 3)}


def finished(chunk_dir: str) -> bool:
    return storage.is_file(storage.join(chunk_dir, SUBMISSION_FILE))


def read_json(location: str) -> Optional[dict[str, Any]]:
    """A JSON file written whole by this module, or None when it is not there."""
    return json.loads(storage.read_text(location)) if storage.is_file(location) else None


def commit(chunk_dir: str, submission: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """result.json, then submission.json last: its presence says the chunk is done."""
    storage.write_text(storage.join(chunk_dir, RESULT_FILE), json.dumps(result))
    storage.write_text(storage.join(chunk_dir, SUBMISSION_FILE), json.dumps(submission))


__all__ = ["ChunkError", "prepare", "predict", "chunk_config", "finetune", "commit", "finished", "demo_fit",
           "grown_state", "reserved_names", "epochs_for", "checkpoint_interval", "read_base"]
