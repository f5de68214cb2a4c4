"""Eval throughput (examples/s) of `trm-ray eval`'s Ray Data path with 1 and 2 workers on CPU.

    python benchmarks/eval_throughput.py                       # Sudoku shape, 2048 examples, hidden 64
    python benchmarks/eval_throughput.py --examples 2048 --hidden 128 --workers 1 2 4

Same checkpoint, same dataset, run side by side in one process: the in-process path (no Ray)
first as the baseline, then Ray Data with each worker count; every row uses one torch thread
per worker (cpus_per_worker=1), so the ratio shows what a worker adds. Times cover what a user waits for once Ray is up: actor start, model load from the
object store, reading rows, the full ACT loop and the driver's scoring; not the ray.init.
Prints examples/s per row and the ratio of each to the 1-worker row.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import trm_ray
from trm_ray.config import ArchConfig, DataShape
from trm_ray.eval import evaluate_checkpoint
from trm_ray.model import build_model


def write_dataset(root: Path, examples: int, seq_len: int, vocab: int) -> None:
    rng = np.random.default_rng(0)
    (root / "test").mkdir(parents=True)
    arrays = {
        "inputs": rng.integers(1, vocab, (examples, seq_len)).astype(np.uint8),
        "labels": rng.integers(1, vocab, (examples, seq_len)).astype(np.uint8),
        "puzzle_identifiers": np.zeros(examples, np.int32),
        "puzzle_indices": np.arange(examples + 1, dtype=np.int32),
        "group_indices": np.arange(examples + 1, dtype=np.int32),
    }
    for name, array in arrays.items():
        np.save(root / "test" / f"all__{name}.npy", array)
    meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": vocab, "seq_len": seq_len,
            "num_puzzle_identifiers": 1, "total_groups": examples, "mean_puzzle_examples": 1.0,
            "total_puzzles": examples, "sets": ["all"]}
    (root / "test" / "dataset.json").write_text(json.dumps(meta))
    (root / "identifiers.json").write_text(json.dumps(["<blank>"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=81)
    parser.add_argument("--halt-max-steps", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-in-process", action="store_true", help="Skip the in-process baseline row.")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the in-process row uses one core, like one actor
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.examples, args.seq_len, vocab=11)
        arch = ArchConfig(hidden_size=args.hidden, num_heads=max(1, args.hidden // 32), H_cycles=2, L_cycles=2,
                          L_layers=2, puzzle_emb_ndim=0, forward_dtype="float32", halt_max_steps=args.halt_max_steps)
        torch.manual_seed(0)
        model = build_model(arch, DataShape(seq_len=args.seq_len, vocab_size=11, num_puzzle_identifiers=1), batch_size=1)
        (root / "ckpt").mkdir()
        trm_ray.save_checkpoint(model, root / "ckpt")

        print(f"{args.examples} examples, seq {args.seq_len}, hidden {args.hidden}, halt_max_steps "
              f"{args.halt_max_steps}, batch {args.batch_size}/worker, {os.cpu_count()} CPUs visible")
        rows = []
        if not args.no_in_process:
            run = evaluate_checkpoint(root / "ckpt", root / "data", batch_size=args.batch_size, num_workers=0)
            rows.append(("in-process (no Ray)", run.examples_per_s, run.metrics["eval/accuracy"]))
        ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            # Ray Data's first pipeline in a process pays ~5 s of one-off start-up: not eval's cost.
            evaluate_checkpoint(root / "ckpt", root / "data", batch_size=args.batch_size, num_workers=1, one_batch=True,
                                cpus_per_worker=1)
            for workers in args.workers:
                start = time.perf_counter()
                run = evaluate_checkpoint(root / "ckpt", root / "data", batch_size=args.batch_size, num_workers=workers,
                                          cpus_per_worker=1)
                seconds = time.perf_counter() - start
                rows.append((f"Ray Data, {workers} worker{'s' if workers > 1 else ''}", args.examples / seconds,
                             run.metrics["eval/accuracy"]))
        finally:
            ray.shutdown()

    base = next((r[1] for r in rows if r[0].startswith("Ray Data, 1 ")), rows[0][1])
    print(f"{'path':<24} {'examples/s':>11} {'vs 1 worker':>12} {'eval/accuracy':>14}")
    for name, rate, accuracy in rows:
        print(f"{name:<24} {rate:>11.1f} {rate / base:>11.2f}x {accuracy:>14.6f}")


if __name__ == "__main__":
    main()
