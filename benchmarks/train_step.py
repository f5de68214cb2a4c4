"""Throughput of the TRM training step on this machine, next to its measured matmul rate.

    python benchmarks/train_step.py                      # hidden 512, H3 L6, seq 81, batch 32, fp32
    python benchmarks/train_step.py --variants attention --steps 2
    python benchmarks/train_step.py --compile           # eager and torch.compile'd rows
    python benchmarks/train_step.py --host-malloc tuned # only what training uses (no glibc-default rows)

Prints samples/s and achieved GFLOP/s per variant (FLOPs counted by torch's FlopCounterMode
over one whole step, forward + backward) beside the fp32 matmul GFLOP/s measured in the same
run: their ratio is how much of the machine the step uses; the goal is 80%. The public
reference code reaches about 75% at this config on a 2-core CPU.

Each variant runs in a process of its own, twice by default: with the heap settings training
applies (trm_ray/host_memory.py) and with glibc's defaults (TRM_RAY_HOST_MALLOC=default), so the
two rows show what the settings buy. The model and step are the same code; the outputs are
bit-identical either way (tests/test_model_reference_bits.py checks the maths).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from trm_ray.config import DataShape, TrainConfig
from trm_ray.train.step import create_train_state, train_step


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def make_batch(batch: int, seq_len: int, vocab: int, num_ids: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "inputs": torch.randint(1, vocab, (batch, seq_len), generator=g, dtype=torch.int32),
        "labels": torch.randint(1, vocab, (batch, seq_len), generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(1, num_ids, (batch,), generator=g, dtype=torch.int32),
    }


def bench_variant(mlp_t: bool, compiled: bool, args) -> dict[str, float]:
    config = TrainConfig(
        compile=compiled,
        arch=dict(hidden_size=args.hidden, L_layers=2, H_cycles=3, L_cycles=6, mlp_t=mlp_t, num_heads=8,
                  forward_dtype="float32", halt_exploration_prob=0.0),
        global_batch_size=args.batch, lr_warmup_steps=0, lr=1e-4, seed=0,
    )
    shape = DataShape(seq_len=args.seq_len, vocab_size=11, num_puzzle_identifiers=1000)
    state = create_train_state(config, shape, total_steps=10**6)
    g = torch.Generator().manual_seed(0)
    batches = [make_batch(args.batch, args.seq_len, 11, 1000, g) for _ in range(args.steps + 1)]

    with FlopCounterMode(display=False) as counter:  # also the warm-up step
        train_step(state, batches[0])
    flops_per_step = counter.get_total_flops()

    start = time.perf_counter()
    for batch in batches[1:]:
        train_step(state, batch)
    seconds_per_step = (time.perf_counter() - start) / args.steps
    return {"s/step": seconds_per_step, "samples/s": args.batch / seconds_per_step,
            "GFLOP/step": flops_per_step / 1e9, "GFLOP/s": flops_per_step / seconds_per_step / 1e9}


def run_in_child(variant: str, compiled: bool, host_malloc: str, args) -> dict[str, float]:
    """One variant in a fresh process: the allocator settings are per process and one-way."""
    env = dict(os.environ, TRM_RAY_HOST_MALLOC=host_malloc)
    command = [sys.executable, __file__, "--child", variant, "--hidden", str(args.hidden), "--seq-len",
               str(args.seq_len), "--batch", str(args.batch), "--steps", str(args.steps)] + (["--compile"] if compiled else [])
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=81)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--compile", action="store_true",
                        help="also time each variant with the recursion torch.compile'd (Inductor C++ on CPU)")
    parser.add_argument("--variants", nargs="+", default=["attention", "mlp_t"], choices=["attention", "mlp_t"])
    parser.add_argument("--host-malloc", choices=["tuned", "default", "both"], default="both",
                        help="heap settings of trm_ray/host_memory.py, glibc's defaults, or both side by side")
    parser.add_argument("--child", choices=["attention", "mlp_t"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one row, as JSON, for the parent
        print(json.dumps(bench_variant(args.child == "mlp_t", args.compile, args)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; hidden {args.hidden}, L_layers 2, "
          f"H_cycles 3, L_cycles 6, seq_len {args.seq_len}, batch {args.batch}, fp32")
    modes = {"both": ["tuned", "default"], "tuned": ["tuned"], "default": ["default"]}[args.host_malloc]
    peak_before = matmul_gflops()
    rows = []
    for variant in args.variants:
        for compiled in ([False, True] if args.compile else [False]):
            for mode in modes:
                name = variant + (" +compile" if compiled else "")
                print(f"  timing {name} (host malloc {mode}) ...", flush=True)
                rows.append((name, mode, run_in_child(variant, compiled, mode, args)))
    peak = max(peak_before, matmul_gflops())  # measured around the runs: the better of two
    print(f"\nfp32 matmul (2048^3): {peak:.1f} GFLOP/s")
    print(f"{'variant':<20} {'host malloc':<12} {'s/step':>8} {'samples/s':>10} {'GFLOP/step':>11} {'GFLOP/s':>8} "
          f"{'of matmul':>10}")
    for variant, mode, r in rows:
        print(f"{variant:<20} {mode:<12} {r['s/step']:>8.2f} {r['samples/s']:>10.3f} {r['GFLOP/step']:>11.1f} "
              f"{r['GFLOP/s']:>8.1f} {r['GFLOP/s'] / peak:>9.0%}")
    print("goal: >= 80% of the matmul rate (tuned rows, which training uses); the reference code reaches ~75%")


if __name__ == "__main__":
    main()
