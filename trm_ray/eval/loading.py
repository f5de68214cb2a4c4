"""The model an eval-only run evaluates, and whether a dataset suits it.

    model = load_eval_model("runs/x/checkpoint_0000040")             # model.pt: the EMA weights
    model = load_eval_model("runs/x/checkpoint_0000040", ema=False)  # train_state.pt's live weights
    check_fits(model, layout.load_metadata(dataset_dir, "test"), dataset_dir)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trm_ray.checkpoint import COMPILED_PREFIX, TRAIN_STATE_FILE, CheckpointError, load_weights_into
from trm_ray.data import layout


def load_eval_model(checkpoint: str | os.PathLike, ema: bool = True, config: Any = None) -> torch.nn.Module:
    """The model to evaluate, in eval mode on CPU.

    checkpoint: a reference weights file (with all_config.yaml beside it) or a trm-ray
    checkpoint folder (model.pt + all_config.yaml). model.pt holds the weights training
    evaluates with: the EMA weights when the run had ema=true. ema=False picks the live
    weights instead, from the folder's train_state.pt ("model" entry); a checkpoint that
    holds only one set of weights is an error with ema=False. A URI (s3://...) is fetched
    to a temporary folder first, a Hub path into the Hugging Face cache (train_state.pt only
    with ema=False)."""
    from trm_ray.checkpoint import is_remote, load_checkpoint, with_local_checkpoint

    if is_remote(checkpoint):  # a storage URI or a Hub path (bare owner/repo/... too)
        return with_local_checkpoint(checkpoint, lambda local: load_eval_model(local, ema, config),
                                     extra=() if ema else (TRAIN_STATE_FILE,))
    model = load_checkpoint(checkpoint, config=config)
    if not ema:
        folder = Path(checkpoint)
        live = folder / TRAIN_STATE_FILE if folder.is_dir() else None
        if live is None or not live.is_file():
            raise CheckpointError(f"--no-ema: {str(checkpoint)!r} holds one set of weights (no {TRAIN_STATE_FILE} "
                                  f"with the live weights); evaluate it with --ema")
        try:
            state = torch.load(live, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise CheckpointError(f"{str(live)!r} cannot be read ({type(error).__name__}: {error})") from None
        weights = state.get("model") if isinstance(state, dict) else None
        if not isinstance(weights, dict):
            raise CheckpointError(f"{str(live)!r} has no 'model' state dict with the live weights; evaluate with --ema")
        load_weights_into(model, {k.removeprefix(COMPILED_PREFIX): v for k, v in weights.items()},
                          source=f"live weights {str(live)!r}")
    return model.eval()


def check_fits(model: torch.nn.Module, meta: layout.DatasetMetadata, dataset: str) -> None:
    """Refuse a dataset the model cannot read (vocabulary, fixed length, identifiers)."""
    inner = model.model.inner
    shape, arch = inner.shape, model.model.arch
    if meta.vocab_size != shape.vocab_size:
        raise CheckpointError(f"dataset {dataset!r} has vocab_size {meta.vocab_size}, the checkpoint "
                              f"{shape.vocab_size}: evaluate on a dataset of the kind the model was trained on")
    if (arch.pos_encodings == "learned" or arch.mlp_t) and meta.seq_len != shape.seq_len:
        raise CheckpointError(f"dataset {dataset!r} has seq_len {meta.seq_len}, the checkpoint {shape.seq_len}")
    if meta.num_puzzle_identifiers > shape.num_puzzle_identifiers:
        raise CheckpointError(f"dataset {dataset!r} has {meta.num_puzzle_identifiers} puzzle identifiers, the "
                              f"checkpoint's puzzle table {shape.num_puzzle_identifiers} rows: evaluate on the "
                              f"dataset the model was trained on")


def is_arc_dataset(dataset_dir: str | os.PathLike) -> bool:
    return layout.test_puzzles_path(dataset_dir).is_file()
