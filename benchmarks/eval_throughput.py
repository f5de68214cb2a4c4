"""Eval throughput (examples/s) of `trm-ray eval` on Ray Data with 2 CPU workers vs in-process.

    flock /tmp/trm-bench.lock python benchmarks/eval_throughput.py      # Sudoku shape, 2048 examples, hidden 64
    python benchmarks/eval_throughput.py --examples 4096 --hidden 128 --workers 4 --repeats 3

Same checkpoint, same dataset, one process, side by side; every run times the whole
evaluate_checkpoint call (checkpoint load to metrics), the same span for both paths, once
Ray is up (ray.init and Ray Data's one-off start-up in a process are left out: a trivial
Ray Data pipeline runs first; it imports no torch in the workers).

The baseline is in-process at one torch thread, and each Ray worker gets one CPU and one
torch thread (cpus_per_worker=1):
- the ratio then says what the workers add on the same per-worker compute, which is how the
  goal was set (2 workers at 1 thread vs in-process at 1 thread);
- only with equal thread counts are the results equal to the bit (how a float32 sum is split
  between threads changes its last bits), and the benchmark checks that they are.
A second in-process row at --workers threads (torch's default here, the cores: what
`trm-ray eval --num-workers 0` gets on this machine) is printed for context, with its ratio;
its results are compared too but may differ in the last bits.

The Ray rows:
- "first eval": the session's first evaluation, when each worker process still imports
  torch and the model (~1-2 s of CPU per worker, before its first batch);
- "next eval": a later evaluation in the same session (a notebook, a sweep's evals): the
  workers are Ray Data tasks in worker processes Ray keeps, which hold torch and the model.
Each in-process and "next eval" row is the median of --repeats runs, taken in turns (one of
each, then again) so that load coming and going on a shared machine falls on every row; Ray
is up (idle) during the in-process runs too. The ratio against the goal (1.8x at 2 workers)
is printed for both Ray rows, with the machine's own ceiling: the same forward passes in
--workers plain processes side by side vs one alone (no Ray, no data, no scoring), since
2 vCPUs that share a host's cores or caches give less than 2x. Exit status 1 when any Ray
run's predictions, halting logits or metrics differ from the 1-thread in-process run's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import trm_ray
from trm_ray.config import ArchConfig, DataShape
from trm_ray.eval import evaluate_checkpoint
from trm_ray.model import build_model

GOAL = 1.8  # 2 Ray workers vs in-process, examples/s
COMPARED = ("preds", "q_halt_logits", "q_continue_logits")


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


def _forward_passes(arch: ArchConfig, shape: DataShape, batch_size: int, passes: int, barrier, results) -> None:
    """One process: `passes` eval rollouts of a batch at one torch thread, timed from a common start."""
    from trm_ray.inference import predict

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(arch, shape, batch_size=1).eval()
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(1, shape.vocab_size, (batch_size, shape.seq_len)).astype(np.int32),
             "puzzle_identifiers": np.zeros(batch_size, np.int32)}
    predict(model, batch)
    barrier.wait()
    start = time.perf_counter()
    for _ in range(passes):
        predict(model, batch)
    results.put((time.perf_counter() - start) / passes)


def parallel_ceiling(arch: ArchConfig, shape: DataShape, batch_size: int, workers: int, passes: int = 8) -> float:
    """What `workers` processes can give at best here: the same forward passes in 1 process
    alone, then in `workers` processes at once with nothing else (no Ray, no data, no
    scoring); the ratio workers * (time per pass alone) / (time per pass side by side)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")

    def per_pass(count: int) -> float:
        barrier, results = context.Barrier(count), context.Queue()
        processes = [context.Process(target=_forward_passes, args=(arch, shape, batch_size, passes, barrier, results))
                     for _ in range(count)]
        for process in processes:
            process.start()
        times = [results.get() for _ in processes]
        for process in processes:
            process.join()
        return float(np.mean(times))

    return workers * per_pass(1) / per_pass(workers)


def identical(run, reference) -> bool:
    """Predictions, halting logits and every metric equal to the bit."""
    return run.metrics == reference.metrics and all(
        np.array_equal(run.outputs["all"][k], reference.outputs["all"][k]) for k in COMPARED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="Rows per forward pass (per worker).")
    parser.add_argument("--seq-len", type=int, default=81)
    parser.add_argument("--halt-max-steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="Ray Data workers (1 CPU, 1 torch thread each).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per in-process and 'next eval' row (median).")
    args = parser.parse_args()
    if args.examples < 1 or args.workers < 1 or args.repeats < 1:
        parser.error("--examples, --workers and --repeats must be >= 1")
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.examples, args.seq_len, vocab=11)
        arch = ArchConfig(hidden_size=args.hidden, num_heads=max(1, args.hidden // 32), H_cycles=2, L_cycles=2,
                          L_layers=2, puzzle_emb_ndim=0, forward_dtype="float32", halt_max_steps=args.halt_max_steps)
        shape = DataShape(seq_len=args.seq_len, vocab_size=11, num_puzzle_identifiers=1)
        torch.manual_seed(0)
        model = build_model(arch, shape, batch_size=1)
        (root / "ckpt").mkdir()
        trm_ray.save_checkpoint(model, root / "ckpt")

        def timed(**kwargs):
            start = time.perf_counter()
            run = evaluate_checkpoint(root / "ckpt", root / "data", batch_size=args.batch_size, save_outputs=COMPARED,
                                      **kwargs)
            return run, time.perf_counter() - start

        print(f"{args.examples} examples, seq {args.seq_len}, hidden {args.hidden}, halt_max_steps "
              f"{args.halt_max_steps}, batch {args.batch_size} per worker, {os.cpu_count()} CPUs visible")
        ceiling = parallel_ceiling(arch, shape, args.batch_size, args.workers) if args.workers > 1 else 1.0
        thread_counts = [1, args.workers] if args.workers > 1 else [1]
        label = f"Ray Data, {args.workers} worker{'s' if args.workers > 1 else ''}"
        names = [f"in-process, {t} thread{'s' if t > 1 else ''}" for t in thread_counts]
        timings: dict[str, list] = {name: [] for name in names + [f"{label}, first eval", f"{label}, next eval"]}
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            import logging

            from trm_ray.cluster import quiet_ray_data_console

            ray.data.DataContext.get_current().print_on_execution_start = False
            quiet_ray_data_console(logging.WARNING)
            ray.data.range(args.workers, override_num_blocks=args.workers).map_batches(lambda b: b).take_all()
            timings[f"{label}, first eval"].append(timed(num_workers=args.workers, cpus_per_worker=1))
            # Interleaved, so load that comes and goes on a shared machine falls on every row.
            for _ in range(args.repeats):
                for threads, name in zip(thread_counts, names):
                    saved = torch.get_num_threads()
                    torch.set_num_threads(threads)
                    try:
                        timings[name].append(timed(num_workers=0))
                    finally:
                        torch.set_num_threads(saved)
                timings[f"{label}, next eval"].append(timed(num_workers=args.workers, cpus_per_worker=1))
        finally:
            ray.shutdown()
        # (name, median seconds, first run, every run)
        rows = [(name, float(np.median([s for _, s in runs])), runs[0][0], [r for r, _ in runs])
                for name, runs in timings.items()]

    reference_name, reference_seconds, reference, _ = rows[0]
    print(f"{'path':<32} {'seconds':>8} {'examples/s':>11} {'vs ' + reference_name:>24} {'identical':>10}")
    for name, seconds, run, _ in rows:
        print(f"{name:<32} {seconds:>8.2f} {args.examples / seconds:>11.1f} {reference_seconds / seconds:>23.2f}x "
              f"{'yes' if identical(run, reference) else 'NO':>10}")
    ray_rows = [r for r in rows if r[0].startswith("Ray")]
    same = all(identical(run, reference) for r in ray_rows for run in r[3])
    print(f"parallel ceiling here: {args.workers} processes doing the same forward passes side by side, nothing "
          f"else, give {ceiling:.2f}x one process alone")
    if args.workers == 2:
        figures = ", ".join(f"{name.rsplit(', ', 1)[1]} {reference_seconds / s:.2f}x "
                            f"({'met' if reference_seconds / s >= GOAL else 'not met'})" for name, s, _, _ in ray_rows)
        print(f"goal: 2 Ray workers >= {GOAL}x in-process (1 thread): {figures}")
    print(f"Ray results identical to in-process (predictions, q logits, every metric): {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
