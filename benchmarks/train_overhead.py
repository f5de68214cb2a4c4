"""What `trm-ray train` costs end to end against the plain training loop in one process.

    python benchmarks/train_overhead.py                    # the full run: 100 epochs, 1562 steps (~3-7 min a side)
    python benchmarks/train_overhead.py --epochs 10        # a short one (156 steps)
    python benchmarks/train_overhead.py --wandb            # both sides record to W&B (offline files)

The run: 6x6 Sudoku (datasets/sudoku-6x6-archs.yaml: 1000 train puzzles, built here with
--no-ray unless --data names a built one) with experiments/sudoku6-archs.yaml: hidden 64, MLP-T,
H_cycles 2 / L_cycles 2, global batch 64, 1 worker, evaluation and checkpoint at the end (or
every --eval-interval epochs). Each side is a fresh process timed from launch to exit, start-up
included, one after the other:
  (a) the plain loop: trm_ray.train.loop.train in one Python process, no Ray, torch's default
      threads, a LocalSession writing checkpoints and metrics.jsonl to a run folder
  (b) `trm-ray train RECIPE key=value...` as a user runs it: the CLI starts a local Ray
      instance, runs one Ray Train worker, shuts Ray down
and prints both wall times, (b)/(a) (goal <= 1.15) and each run's final step and eval exact
accuracy (the same model maths and seed: they should match). On a shared machine the figures
move with the load: run it alone (`flock /tmp/trm-bench.lock python benchmarks/train_overhead.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "trm_ray" / "recipes"
DATASET_RECIPE = RECIPES / "datasets" / "sudoku-6x6-archs.yaml"
TRAIN_RECIPE = RECIPES / "experiments" / "sudoku6-archs.yaml"
GOAL = 1.15


def overrides(args, data: Path, storage: Path, run_name: str) -> list[str]:
    """The measured run on top of the recipe (which already has hidden 64, MLP-T, H2/L2, batch 64)."""
    return [f"data_paths=[{data}]", f"epochs={args.epochs}", f"eval_interval={args.eval_interval}",
            "arch.hidden_size=64", "arch.mlp_t=true", "arch.H_cycles=2", "arch.L_cycles=2",
            "global_batch_size=64", "ray.num_workers=1", f"tracking.wandb={'true' if args.wandb else 'false'}",
            f"ray.storage_path={storage}", f"run_name={run_name}"]


def plain_child(argv: list[str]) -> None:
    """Side (a), in its own process: the loop as a script without Ray would run it."""
    from trm_ray.config import load_train_config
    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession
    from trm_ray.run_folder import run_dir_of

    config = load_train_config(str(TRAIN_RECIPE), argv)
    train(config, LocalSession(run_dir_of(config)))


def timed(command: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        completed = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if completed.returncode:
        sys.exit(f"{' '.join(command[:4])} ... failed (exit {completed.returncode}); its output:\n{log.read_text()}")
    return wall


def summary(run_dir: Path) -> tuple[int, float, float]:
    """(last step, its eval/exact_accuracy, median train samples/s) from the run's metrics.jsonl.
    The rate is the loop's own (steps only, evaluations excluded), over every report but the
    first, which holds the warm-up: it tells per-step cost from start-up cost."""
    from trm_ray.run_folder import SAMPLES_PER_S_KEY, read_metrics

    records = read_metrics(run_dir)
    rates = [r[SAMPLES_PER_S_KEY] for r in records if r.get(SAMPLES_PER_S_KEY)]
    rate = statistics.median(rates[1:] or rates) if rates else float("nan")
    last = records[-1] if records else {}
    exact = last.get("eval/exact_accuracy")
    return last.get("step", 0), exact if isinstance(exact, (int, float)) else float("nan"), rate


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-child":
        plain_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs of 1000 puzzles (100: 1562 steps)")
    parser.add_argument("--eval-interval", type=int,
                        help="epochs between evaluations + checkpoints (default: one, at the end; each "
                             "interval's steps are rounded down, so 10 intervals of 100 epochs make 1560 steps)")
    parser.add_argument("--data", type=Path, help="a built datasets/sudoku-6x6-archs.yaml dataset (else built here)")
    parser.add_argument("--wandb", action="store_true", help="both sides record to W&B (offline files)")
    args = parser.parse_args()
    args.eval_interval = args.eval_interval or args.epochs
    if args.epochs % args.eval_interval:
        parser.error(f"--eval-interval {args.eval_interval} must divide --epochs {args.epochs}")

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # (b) starts its own local Ray
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory(prefix="trm-ray-bench-") as scratch:
        scratch = Path(scratch)
        data = args.data
        if data is None:
            data = scratch / "sudoku-6x6"
            subprocess.run([sys.executable, "-m", "trm_ray.cli.main", "data", "build", str(DATASET_RECIPE),
                            "--output-dir", str(data), "--no-ray"], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        data = data.resolve()
        storage = scratch / "runs"
        plain_args = overrides(args, data, storage, "plain")
        ray_args = overrides(args, data, storage, "ray")
        wall_a = timed([sys.executable, str(Path(__file__).resolve()), "--plain-child", *plain_args], env,
                       scratch / "plain.log")
        cli = Path(sys.executable).with_name("trm-ray")
        wall_b = timed([str(cli), "train", str(TRAIN_RECIPE), *ray_args], env, scratch / "ray.log")
        step_a, exact_a, rate_a = summary(storage / "plain")
        step_b, exact_b, rate_b = summary(storage / "ray")

    ratio = wall_b / wall_a
    print(f"\nrun: 6x6 Sudoku (1000 train puzzles), hidden 64, MLP-T, H2/L2, batch 64, {args.epochs} epochs = {step_a} "
          f"steps, eval + checkpoint every {args.eval_interval} epochs, W&B {'offline' if args.wandb else 'off'}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'side':<46}{'wall s':>8}{'ratio':>7}{'samples/s':>11}{'final step':>12}{'eval exact':>12}")
    rows = (("(a) plain loop, 1 process, start-up included", wall_a, rate_a, step_a, exact_a),
            ("(b) trm-ray train, 1 worker, local Ray", wall_b, rate_b, step_b, exact_b))
    for name, wall, rate, step, exact in rows:
        print(f"{name:<46}{wall:>8.1f}{wall / wall_a:>7.2f}{rate:>11.1f}{step:>12}{exact:>12.4f}")
    same = step_a == step_b and exact_a == exact_b
    print(f"(b)/(a) wall time = {ratio:.3f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}); "
          f"both runs learned {'the same' if same else 'DIFFERENTLY'}")


if __name__ == "__main__":
    main()
