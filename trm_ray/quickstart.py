"""The whole trm-ray pipeline in minutes on a laptop CPU: `trm-ray quickstart`.

    trm-ray quickstart --workdir trm-ray-quickstart

On one local Ray instance, no account and no network:
1. Ray Data builds the quickstart dataset (4x4 Sudoku, generated; datasets/sudoku-4x4-quickstart.yaml);
2. Ray Train trains a small TRM-MLP on it, 2 workers on CPU (experiments/quickstart.yaml);
3. the best checkpoint is evaluated on the held-out puzzles (Ray Data batch inference);
4. Ray Tune runs a small ASHA sweep over lr and H_cycles (experiments/sweeps/quickstart.yaml);
5. the trials are compared, and the command says where checkpoints, W&B runs and plots are.

Every stage calls the same library functions as `trm-ray data build / train / eval / sweep /
compare`: this file only chains them and chooses the folders.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from trm_ray.config import ConfigError
from trm_ray.recipes import find_recipe

# Shipped recipes (trm_ray/recipes/), found by name from any folder and any install.
DATASET_RECIPE = "datasets/sudoku-4x4-quickstart.yaml"
TRAIN_RECIPE = "experiments/quickstart.yaml"
SWEEP_FILE = "experiments/sweeps/quickstart.yaml"


@dataclass
class QuickstartResult:
    workdir: Path
    dataset: Path
    run_dir: str = ""
    best_checkpoint: Optional[str] = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    sweep_dir: Optional[str] = None
    plot: Optional[Path] = None
    best_recipe: Optional[Path] = None
    seconds: dict[str, float] = field(default_factory=dict)


def _stage(result: QuickstartResult, name: str, log: Callable[[str], None]):
    """Context manager that logs a stage header and records its wall time."""
    from contextlib import contextmanager

    @contextmanager
    def timed():
        log(f"\n== {name} ==")
        start = time.perf_counter()
        yield
        result.seconds[name] = time.perf_counter() - start
        log(f"({name}: {result.seconds[name]:.0f} s)")

    return timed()


def run_quickstart(workdir: str | os.PathLike = "trm-ray-quickstart", *, sweep: bool = True, num_workers: int = 2,
                   log: Callable[[str], None] = print) -> QuickstartResult:
    import ray

    from trm_ray.config import build, read_yaml, apply_overrides, TrainConfig
    from trm_ray.data import build_dataset
    from trm_ray.eval import evaluate_checkpoint, format_metrics
    from trm_ray.train.trainer import check_inputs, fit
    from trm_ray.cluster import connect, quiet_ray_data_console

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    result = QuickstartResult(workdir=workdir, dataset=workdir / "data" / "sudoku-4x4-quickstart")
    # W&B offline unless the user set a mode: the quickstart needs no account.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # Spot-instance preemption handling means nothing on a laptop, and its actor logs an error.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

    started = connect(num_cpus=None)  # one local Ray for every stage (or RAY_ADDRESS)
    quiet_ray_data_console(logging.WARNING)  # each stage prints its own summary
    try:
        with _stage(result, "1/5 build the dataset with Ray Data", log):
            build_dataset(find_recipe(DATASET_RECIPE), result.dataset, overwrite=True, log=log)

        with _stage(result, "2/5 train with Ray Train", log):
            data = read_yaml(find_recipe(TRAIN_RECIPE))
            config = build(TrainConfig, apply_overrides(data, [
                f"data_paths=[{result.dataset}]",
                f"ray.storage_path={workdir / 'runs'}",
                f"ray.num_workers={num_workers}",
                f"run_name=quickstart-{time.strftime('%Y%m%d-%H%M%S')}",
            ]), TRAIN_RECIPE)
            train_result = fit(check_inputs(config))
            result.run_dir = train_result.run_dir
            result.best_checkpoint = train_result.best_checkpoint or train_result.last_checkpoint

        with _stage(result, "3/5 evaluate the best checkpoint on held-out puzzles", log):
            if result.best_checkpoint is None:
                raise ConfigError(f"training wrote no checkpoint under {result.run_dir}")
            run = evaluate_checkpoint(result.best_checkpoint, result.dataset, num_workers=num_workers)
            result.eval_metrics = run.metrics
            log(format_metrics(run.metrics))

        if sweep:
            with _stage(result, "4/5 ASHA sweep with Ray Tune", log):
                from trm_ray.tune.driver import run_sweep
                from trm_ray.tune.spec import expand_trials, load_sweep_spec

                spec = load_sweep_spec(find_recipe(SWEEP_FILE))
                spec.base_data["data_paths"] = [str(result.dataset)]
                spec.spec.storage_path = str(workdir / "sweeps")
                result.sweep_dir = run_sweep(spec, expand_trials(spec), resume=False, log=log)

            with _stage(result, "5/5 compare the trials", log):
                from trm_ray.tune.compare import format_table, plot_curves, summarize_sweep, write_best_config

                summary = summarize_sweep(result.sweep_dir)
                log(format_table(summary))
                result.plot = workdir / "sweep-curves.png"
                plot_curves(summary, result.plot)
                result.best_recipe = workdir / "best.yaml"
                write_best_config(summary, result.best_recipe)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    return result


def where_things_are(result: QuickstartResult) -> str:
    """The closing summary: headline numbers and the folders a newcomer looks at next."""
    wandb_runs = sorted(str(p) for p in result.workdir.rglob("offline-run-*") if p.is_dir())
    exact = result.eval_metrics.get("eval/exact_accuracy")
    low, high = result.eval_metrics.get("eval/exact_accuracy_low"), result.eval_metrics.get("eval/exact_accuracy_high")
    lines = ["", "== done =="]
    if exact is not None:
        lines.append(f"held-out exact accuracy: {exact:.3f} (95% CI [{low:.3f}, {high:.3f}])")
    lines.append(f"wall time: {sum(result.seconds.values()):.0f} s  ("
                 + ", ".join(f"{k.split(' ', 1)[1]}: {v:.0f} s" for k, v in result.seconds.items()) + ")")
    lines += [
        f"dataset:          {result.dataset}",
        f"training run:     {result.run_dir}  (metrics.jsonl, checkpoint_*/)",
        f"best checkpoint:  {result.best_checkpoint}  (trm_ray.load_checkpoint(...) loads it)",
    ]
    if result.sweep_dir:
        lines += [
            f"sweep:            {result.sweep_dir}  (trm-ray compare {result.sweep_dir})",
            f"sweep plot:       {result.plot}",
            f"winning recipe:   {result.best_recipe}  (trm-ray train {result.best_recipe})",
        ]
    lines.append(f"W&B offline runs: {len(wandb_runs)} under {result.workdir}  (wandb sync <dir> uploads one)")
    return "\n".join(lines)
