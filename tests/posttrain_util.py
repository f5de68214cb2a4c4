"""A tiny pretrained ARC checkpoint and a handful of real ARC-AGI-2 tasks, for the post-training
tests (tests/test_posttrain.py) and benchmark (benchmarks/posttrain.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

ARC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc" / "arc-agi"
TASKS = ["135a2760", "136b0064", "13e47133", "142ca369"]  # 1, 1, 2, 2 test inputs; at most 3 demonstrations each


def tiny_checkpoint(folder: Path, vocab_size: int = 12, seq_len: int = 900, rows: int = 5) -> Path:
    """A tiny attention TRM as a pretrained ARC checkpoint folder: random weights, and a puzzle
    table of `rows` random rows (so that their mean, where new puzzles start, is not zero)."""
    import torch

    from trm_ray.checkpoint import save_checkpoint
    from trm_ray.config import ArchConfig, DataShape, TrainConfig
    from trm_ray.model import build_model

    torch.manual_seed(0)
    arch = ArchConfig(hidden_size=32, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_ndim=32,
                      puzzle_emb_len=1, halt_max_steps=2, forward_dtype="float32", pos_encodings="learned")
    shape = DataShape(seq_len=seq_len, vocab_size=vocab_size, num_puzzle_identifiers=rows)
    model = build_model(arch, shape, batch_size=1)
    with torch.no_grad():
        model.model.inner.puzzle_emb.weights.normal_()
    config = TrainConfig(arch=arch, global_batch_size=8, lr=1e-3, puzzle_emb_lr=1e-2)
    return save_checkpoint(model, f"{folder}/", config, shape).parent


def write_tasks(folder: Path, names: Sequence[str] = TASKS, drop_solution: Optional[str] = None) -> Path:
    """<folder>/arc-agi_tiny_challenges.json (+ _solutions.json) with the evaluation2 tasks `names`."""
    challenges = json.loads(Path(f"{ARC}_evaluation2_challenges.json").read_text())
    solutions = json.loads(Path(f"{ARC}_evaluation2_solutions.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "arc-agi_tiny_challenges.json"
    path.write_text(json.dumps({n: challenges[n] for n in names}))
    (folder / "arc-agi_tiny_solutions.json").write_text(json.dumps({n: solutions[n] for n in names if n != drop_solution}))
    return path
