"""Post-training throughput: chunks/hour with 1 and 2 chunks fine-tuning at once, and where a
chunk's time goes (build, pretrained predictions, fine-tune, predictions).

    python benchmarks/posttrain.py                  # 4 chunks of 1 real ARC-AGI-2 task, 24 steps each
    python benchmarks/posttrain.py --steps 60 --num-aug 8

The same job (a tiny attention TRM, random weights, as the pretrained checkpoint; 4 tasks of
../shared/data/arc evaluation2, one per chunk; 1 CPU per chunk) runs twice on one local Ray with
2 CPUs: --max-concurrent 1, then 2, each into a fresh folder. chunks/hour is the whole job's
(both waves: datasets and pretrained predictions, then fine-tunes), as a user sees it; scaling
efficiency = rate with 2 / (2 x rate with 1). Both runs train and predict the same chunks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.posttrain_util: the tiny checkpoint and the real tasks

STAGES = ("build_s", "pretrained_predict_s", "finetune_s", "predict_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--num-aug", type=int, default=3)
    args = parser.parse_args()

    import ray

    from tests.posttrain_util import TASKS, tiny_checkpoint, write_tasks
    from trm_ray.cluster import connect
    from trm_ray.posttrain.job import PosttrainOptions, run_posttrain

    root = Path(tempfile.mkdtemp(prefix="trm-ray-bench-posttrain-"))
    checkpoint, tasks = tiny_checkpoint(root / "ckpt"), write_tasks(root / "tasks")
    connect(num_cpus=2)
    rows = []
    try:
        for concurrent in (1, 2):
            options = PosttrainOptions(
                checkpoint=str(checkpoint), tasks=str(tasks), out=str(root / f"out-{concurrent}"), chunks=len(TASKS),
                num_aug=args.num_aug, steps=args.steps, train={"global_batch_size": 8, "lr": 1e-3},
                resources_per_chunk={"CPU": 1.0}, max_concurrent=concurrent, wandb=False)
            started = time.perf_counter()
            summary = run_posttrain(options, log=lambda line: print(f"  [{concurrent} at once] {line}", flush=True))
            wall = time.perf_counter() - started
            chunks = summary["chunks"]
            rows.append((concurrent, wall, len(chunks) / wall * 3600,
                         {s: statistics.mean(c[s] or 0.0 for c in chunks) for s in STAGES}))
    finally:
        ray.shutdown()

    print()
    print(f"post-training, {len(TASKS)} chunks x 1 task, {args.steps} steps, num_aug {args.num_aug}, 2 CPUs")
    print(f"{'at once':>7}  {'wall s':>7}  {'chunks/hour':>11}  " + "  ".join(f"{s:>20}" for s in STAGES))
    for concurrent, wall, rate, stages in rows:
        print(f"{concurrent:>7}  {wall:>7.1f}  {rate:>11.1f}  " + "  ".join(f"{stages[s]:>20.1f}" for s in STAGES))
    (_, _, rate1, _), (_, _, rate2, _) = rows
    print(f"2 at once vs 1: {rate2 / rate1:.2f}x the chunks/hour; scaling efficiency {rate2 / (2 * rate1):.0%}")
    print("(stage columns: seconds per chunk, mean; a chunk's fine-tune includes its Ray Train start)")


if __name__ == "__main__":
    main()
