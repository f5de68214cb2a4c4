"""Eval-only runs of any checkpoint (trm-ray or reference), in this process or on Ray.

    # notebook, no Ray:
    run = evaluate_checkpoint("step_50000", "data/arc1concept-aug-1000")
    run.metrics["ARC/pass@2"], run.submission

    # data-parallel batch inference on Ray (what `trm-ray eval --num-workers N` does):
    run = evaluate_checkpoint("runs/x/checkpoint_000010", "data/sudoku-extreme", num_workers=8, use_gpu=True)

    # what `trm-ray eval` prints and writes (trm_ray/eval/table.py, trm_ray/eval/outputs.py):
    print(format_metrics(run.metrics)); write_outputs(run, "eval-out")

With num_workers=0 everything runs in this process through evaluate() and PuzzleLoader; with
N >= 1 the rows are predicted by Ray Data workers (trm_ray/eval/ray_data.py says why Ray Data
and not Ray Train workers) and scored here by the same EvalAccumulator. The rest of an
eval-only run has a module each: loading.py (the model, whether a dataset suits it),
table.py (the metrics as text), outputs.py (the files), png.py (--png).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from trm_ray import storage
from trm_ray.data import layout
from trm_ray.data.loader import PuzzleLoader
from trm_ray.data.staging import resolve_data_path
from trm_ray.eval.arc import ARCEvaluator, build_evaluators
from trm_ray.eval.core import EvalAccumulator, Evaluator, evaluate
from trm_ray.eval.loading import check_fits, is_arc_dataset, load_eval_model
from trm_ray.eval.outputs import SAVABLE_OUTPUTS
from trm_ray.eval.png import NUM_PNG_EXAMPLES

DEFAULT_BATCH_SIZE = 64


@dataclass
class EvalRun:
    """What an eval-only run produced."""

    metrics: dict[str, float]
    submission: Optional[dict[str, Any]]  # ARC datasets only
    outputs: dict[str, dict[str, np.ndarray]]  # set -> name -> rows (the requested save_outputs)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few ARC rows for --png
    num_examples: int = 0
    seconds: float = 0.0

    @property
    def examples_per_s(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else 0.0


class _Collector:
    """Keeps the requested outputs per set, and a few un-augmented ARC rows for the PNG."""

    def __init__(self, save_outputs: Sequence[str], identifiers: Optional[list[str]]):
        self.save_outputs = tuple(save_outputs)
        self.identifiers = identifiers
        self.parts: dict[str, dict[str, list[np.ndarray]]] = {}
        self.examples: list[dict[str, Any]] = []
        self.num_examples = 0

    def __call__(self, set_name: str, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        self.num_examples += len(batch["inputs"])
        rows = {**batch, **outputs}
        if self.save_outputs:
            store = self.parts.setdefault(set_name, {})
            for name in self.save_outputs:
                store.setdefault(name, []).append(rows[name])
        if self.identifiers is not None and len(self.examples) < NUM_PNG_EXAMPLES:
            for i, identifier in enumerate(batch["puzzle_identifiers"]):
                name = self.identifiers[int(identifier)] if 0 < int(identifier) < len(self.identifiers) else ""
                if name and "|||" not in name and len(self.examples) < NUM_PNG_EXAMPLES:
                    self.examples.append({"name": name, **{k: np.asarray(v[i]) for k, v in rows.items()}})

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: {k: np.concatenate(v) for k, v in parts.items()} for s, parts in self.parts.items()}


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------
def evaluate_checkpoint(
    checkpoint: str | os.PathLike | torch.nn.Module,
    dataset: str | os.PathLike,
    *,
    ema: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    one_batch: bool = False,
    evaluators: Optional[Sequence[Evaluator]] = None,
    save_outputs: Sequence[str] = (),
    num_workers: int = 0,
    use_gpu: bool = False,
    cpus_per_worker: Optional[int] = None,
    config: Any = None,
) -> EvalRun:
    """Evaluate a checkpoint (path, or an already loaded TRMWithLoss) on a dataset's test split.

    batch_size: rows per forward pass (per worker); one_batch: only the first global batch
    (batch_size rows per worker) of each set (a smoke test; ARC/pass@K then counts the puzzles
    not reached as unsolved).
    evaluators: None adds an ARCEvaluator on ARC datasets (test_puzzles.json present), a
    TextEvaluator on text datasets (text.json).
    num_workers: 0 runs in this process (no Ray); N >= 1 runs Ray Data batch inference over
    N workers (one GPU each with use_gpu); cpus_per_worker: CPUs (and torch threads) per worker,
    None: the cluster's CPUs / N (1 with use_gpu)."""
    unknown = sorted(set(save_outputs) - set(SAVABLE_OUTPUTS))
    if unknown:
        raise ValueError(f"save_outputs: unknown {', '.join(unknown)}; choose from {', '.join(SAVABLE_OUTPUTS)}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
    if use_gpu and not num_workers and not torch.cuda.is_available():
        raise ValueError("use_gpu: no CUDA device in this process")
    # Absolute: Ray workers (on other nodes too) resolve it themselves.
    dataset_dir = str(dataset) if storage.is_uri(dataset) else os.path.abspath(dataset)
    local = resolve_data_path(dataset_dir)
    meta = layout.load_metadata(local, "test")
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_eval_model(checkpoint, ema, config)
    check_fits(model, meta, dataset_dir)
    arc = is_arc_dataset(local)
    if evaluators is None:  # ARC voting on ARC data; on text data build_evaluators adds the text evaluator
        evaluators = [ARCEvaluator(dataset_dir)] if arc else build_evaluators([], [dataset_dir])
    identifiers = layout.load_identifiers(local) if arc else None
    collector = _Collector(save_outputs, identifiers)

    start_time = time.perf_counter()
    if num_workers == 0:
        device = torch.device("cuda" if use_gpu else "cpu")
        model = model.to(device)
        loader = PuzzleLoader([dataset_dir], "test", global_batch_size=batch_size, to_torch=False)
        batches = _first_per_set(loader) if one_batch else loader
        metrics = evaluate(model, batches, evaluators, on_batch=collector)
    else:
        sets = {s: layout.load_set_arrays(local, "test", s, meta).num_examples for s in meta.sets}
        chunks = [(s, a, min(n, a + batch_size)) for s, n in sets.items() for a in range(0, n, batch_size)]
        if one_batch:
            # One global batch per set, as one_batch means in this process: batch_size rows on
            # each of the num_workers workers.
            chunks = [c for s in sets for c in [c for c in chunks if c[0] == s][:num_workers]]
        accumulator = EvalAccumulator(evaluators, model.model.arch.halt_max_steps)
        for s in sets:
            accumulator.add_set(s)
        if chunks:
            from trm_ray.eval.ray_data import evaluate_on_ray

            evaluate_on_ray(model, dataset_dir, chunks, accumulator, collector, num_workers, use_gpu,
                            cpus_per_worker, batch_size)
        metrics = accumulator.result()
    seconds = time.perf_counter() - start_time

    submission = next((e.submission() for e in evaluators if isinstance(e, ARCEvaluator)), None)
    for e in evaluators:
        if isinstance(e, ARCEvaluator) and e.num_unmatched:
            print(f"trm-ray eval: {e.num_unmatched} predictions matched no test pair of test_puzzles.json",
                  file=sys.stderr)
    return EvalRun(metrics, submission, collector.outputs(), collector.examples, collector.num_examples, seconds)


def _first_per_set(loader: Any):
    seen: set[str] = set()
    for item in loader:
        if item.set_name not in seen:
            seen.add(item.set_name)
            yield item
            if len(seen) == len(loader.set_names):
                return
