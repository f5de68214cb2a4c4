"""What Ray Train costs on top of the plain training loop, and how well 2 workers scale.

    python benchmarks/train_overhead.py                       # 4x4 Sudoku, hidden 128, batch 256, attention
    python benchmarks/train_overhead.py --hidden 64 --batch 128 --mlp-t --steps-per-window 15 --windows 3
    python benchmarks/train_overhead.py --hidden 256 --steps-per-window 30 --windows 5

Runs one config three ways, all with 1 torch thread per worker:
  (a) the plain loop in this process (trm_ray.train.loop.train, no Ray)
  (b) the same loop under a TorchTrainer with 1 worker
  (c) a TorchTrainer with 2 workers (gloo), same global batch
and prints steady-state samples/s side by side: the median over report windows after the
first (warm-up) one, each window's time including its ray.train.report wait. Goals:
(b)/(a) >= 0.95 (<= 5% overhead) and (c)/(2 x (b)) >= 0.85 (data-parallel efficiency).
Needs 2 free cores for a fair (c); on a shared machine the figures move with the load.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trm_ray.config import TrainConfig
from trm_ray.data.layout import load_metadata
from trm_ray.train.loop import SAMPLES_PER_S_KEY, LocalSession, train

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = REPO / "data" / "sudoku-4x4-quickstart"


def dataset(scratch: Path) -> Path:
    if (QUICKSTART_DATA / "train" / "dataset.json").is_file():
        return QUICKSTART_DATA
    from trm_ray.data.builder import build_dataset

    output = scratch / "sudoku-4x4-quickstart"
    build_dataset(REPO / "datasets" / "sudoku-4x4-quickstart.yaml", str(output), use_ray=False)
    return output


def make_config(args, data: Path, storage: Path, name: str, num_workers: int) -> TrainConfig:
    meta = load_metadata(data, "train")
    steps_per_epoch = meta.total_groups * meta.mean_puzzle_examples / args.batch
    epochs = math.ceil((args.windows + 1) * args.steps_per_window / steps_per_epoch) + 1
    return TrainConfig(
        arch=dict(hidden_size=args.hidden, num_heads=4, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=4,
                  puzzle_emb_ndim=0, mlp_t=args.mlp_t, forward_dtype="float32"),
        data_paths=[str(train_only(storage, data))],
        global_batch_size=args.batch, epochs=epochs, eval_interval=epochs, lr=1e-3, lr_warmup_steps=10, seed=0,
        run_name=name, tracking={"wandb": False},
        ray={"num_workers": num_workers, "storage_path": str(storage), "threads_per_worker": 1},
    )


def train_only(storage: Path, data: Path) -> Path:
    """A view of the dataset with no test split: the benchmark times training only."""
    view = storage / "train-only"
    if not view.exists():
        (view / "train").mkdir(parents=True)
        for item in (data / "train").iterdir():
            (view / "train" / item.name).symlink_to(item)
        for item in data.iterdir():
            if item.is_file():
                (view / item.name).symlink_to(item)
    return view


def steady(rates: list[float]) -> float:
    rates = rates[1:] if len(rates) > 1 else rates  # the first window holds the warm-up
    return statistics.median(rates)


def plain(config: TrainConfig, args) -> float:
    torch.set_num_threads(1)
    session = LocalSession(None)
    train(config, session, report_every_steps=args.steps_per_window)
    return steady([h[SAMPLES_PER_S_KEY] for h in session.history if "epoch" not in h])


def under_ray(config: TrainConfig, args) -> float:
    from trm_ray.train.trainer import check_inputs, fit, read_metrics

    config = check_inputs(config)
    result = fit(config, report_every_steps=args.steps_per_window)
    records = read_metrics(result.run_dir)
    return steady([r[SAMPLES_PER_S_KEY] for r in records if "epoch" not in r])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--mlp-t", action="store_true", help="MLP-T instead of attention")
    parser.add_argument("--steps-per-window", type=int, default=20, help="steps between reports")
    parser.add_argument("--windows", type=int, default=4, help="timed windows after the warm-up one")
    parser.add_argument("--num-cpus", type=int, default=3, help="CPUs of the local Ray instance")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory(prefix="trm-ray-bench-") as scratch:
        scratch = Path(scratch)
        data = dataset(scratch)
        rates = {}
        started = time.perf_counter()
        rates["a"] = plain(make_config(args, data, scratch, "plain", 1), args)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
        try:
            rates["b"] = under_ray(make_config(args, data, scratch, "ray1", 1), args)
            rates["c"] = under_ray(make_config(args, data, scratch, "ray2", 2), args)
        finally:
            ray.shutdown()
        wall = time.perf_counter() - started

    print(f"\nconfig: 4x4 Sudoku, hidden {args.hidden}, {'MLP-T' if args.mlp_t else 'attention'}, global batch "
          f"{args.batch}, 1 thread/worker, windows of {args.steps_per_window} steps ({wall:.0f} s in all)")
    print(f"{'run':<34}{'samples/s':>12}{'ratio':>10}  goal")
    print(f"{'(a) plain loop, 1 process':<34}{rates['a']:>12.1f}{'1.00':>10}")
    print(f"{'(b) TorchTrainer, 1 worker':<34}{rates['b']:>12.1f}{rates['b'] / rates['a']:>10.2f}  >= 0.95 of (a)")
    print(f"{'(c) TorchTrainer, 2 workers':<34}{rates['c']:>12.1f}{rates['c'] / (2 * rates['b']):>10.2f}"
          f"  >= 0.85 of 2 x (b)")


if __name__ == "__main__":
    main()
