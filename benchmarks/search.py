"""Grid+ASHA vs TPE+ASHA: trial-epochs needed to reach the grid's best eval accuracy.

    python benchmarks/search.py                      # 324-trial grid, TPE (optuna) over seeds 0 1 2
    python benchmarks/search.py --quick              # 48-trial grid, smaller budget: a smoke run
    python benchmarks/search.py --algorithm hyperopt --seeds 0 1 2 3 4
    python benchmarks/search.py --random-baseline    # also random search + ASHA, same seeds

Both searches go through the Tune path `trm-ray sweep` uses: a function trainable under
ray.tune.Tuner, judged by trm-ray's ResumableASHA (its records in a temporary sweep folder);
the grid's trials expanded by expand_trials (the quickstart sweep with this search space) and
given to Tune as the driver does; TPE proposed by trm_ray.tune.search.build_searcher's searcher
(optuna or hyperopt behind a ConcurrencyLimiter) over the driver's trial_space.

The objective is synthetic, so a run takes seconds instead of GPU-days: each trial reports an
eval-accuracy-like value (token accuracy, chance level 0.25) every epoch, a saturating curve
whose ceiling and speed depend on five TRM settings: lr (log scale, optimum between grid
points; a high lr learns fast but saturates lower, so early rungs favour it), H_cycles and
L_cycles (optimum 3 and 6, on the grid), puzzle_emb_lr (log scale) and weight_decay (optima
between grid points; more weight decay also learns slower). A per-trial offset and
per-evaluation noise, seeded by the trial's values, stand in for seed-to-seed variation.

The grid (3-4 values per key) runs first, whole; its best reported value is the target. TPE
then searches continuous/integer domains over the same ranges, for each searcher seed, until a
trial reports >= the target (or its trial budget runs out). Counted for each: trial-epochs
(summed over all trials, in the order results reached the driver, from the sweep records)
until the first report >= target. Goal: TPE+ASHA needs <= 50% of grid+ASHA's trial-epochs.
The grid's count is where its best first appeared, so it depends on the grid's launch order
(expand_trials'); its whole run is printed too.

One trial at a time by default, so a run is a function of its seeds alone: with two at once,
which of two concurrent trials reaches a rung first decides whom ASHA cuts, and the same
searcher seed can then find the target in its first trial or not in hundreds.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

# Few per-trial side effects: no per-trial result files, no progress tables.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

METRIC = "eval/accuracy"
MODE = "max"
TIME_ATTR = "epoch"
CHANCE = 0.25        # token accuracy of guessing on 4x4 Sudoku (4 symbols)
CEILING = 0.97       # the best the objective allows

# Optimum of each setting and how far from it (in its scale) the accuracy falls by e^-1/2 of its weight.
OPTIMUM = {"lr": 6e-4, "arch.H_cycles": 3, "arch.L_cycles": 6, "puzzle_emb_lr": 2e-2, "weight_decay": 0.7}
WIDTH = {"lr": 0.5, "arch.H_cycles": 1.2, "arch.L_cycles": 2.5, "puzzle_emb_lr": 0.8, "weight_decay": 0.4}
WEIGHT = {"lr": 0.5, "arch.H_cycles": 0.25, "arch.L_cycles": 0.2, "puzzle_emb_lr": 0.15, "weight_decay": 0.1}
LOG_KEYS = ("lr", "puzzle_emb_lr")
QUICKSTART_SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "trm_ray", "recipes", "experiments", "sweeps", "quickstart.yaml")

# The grid people run (ascending values), and the same ranges for the model-based searcher.
GRID = {
    "lr": [1e-4, 3e-4, 1e-3, 3e-3],
    "arch.H_cycles": [1, 2, 3],
    "arch.L_cycles": [2, 4, 6],
    "puzzle_emb_lr": [1e-3, 1e-2, 1e-1],
    "weight_decay": [0.1, 0.5, 1.0],
}
QUICK_GRID = {
    "lr": [1e-4, 1e-3, 3e-3],
    "arch.H_cycles": [1, 3],
    "arch.L_cycles": [2, 6],
    "puzzle_emb_lr": [1e-3, 1e-2],
    "weight_decay": [0.1, 1.0],
}


# --------------------------------------------------------------------------------------------
# The synthetic objective
# --------------------------------------------------------------------------------------------
def ceiling(params: dict[str, Any]) -> float:
    """Accuracy the trial saturates at: CEILING at the optimum, lower away from it."""
    quality = 1.0
    for key, best in OPTIMUM.items():
        value = float(params[key])
        distance = (math.log10(value) - math.log10(best)) if key in LOG_KEYS else value - best
        quality *= 1 - WEIGHT[key] * (1 - math.exp(-0.5 * (distance / WIDTH[key]) ** 2))
    return CHANCE + (CEILING - CHANCE) * quality


def time_constant(params: dict[str, Any]) -> float:
    """Epochs to ~63% of the ceiling: shorter with a higher lr, longer with more weight decay."""
    tau = 5.0 * (OPTIMUM["lr"] / float(params["lr"])) ** 0.6 * (1 + 0.3 * float(params["weight_decay"]))
    return min(60.0, max(1.0, tau))


def accuracy_curve(params: dict[str, Any], epochs: int, noise_seed: int = 0) -> list[float]:
    """The eval accuracy a trial reports after each of `epochs` epochs (noise seeded by its values)."""
    key = repr(sorted((k, round(float(v), 12)) for k, v in params.items())) + f"/{noise_seed}"
    rng = random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    top, tau = ceiling(params), time_constant(params)
    offset = rng.gauss(0.0, 0.004)  # what another init seed would change
    values = []
    for epoch in range(1, epochs + 1):
        mean = CHANCE + (top - CHANCE) * (1 - math.exp(-((epoch / tau) ** 1.5)))
        values.append(min(1.0, max(0.0, mean + offset + rng.gauss(0.0, 0.003))))
    return values


def synthetic_trial(config: dict[str, Any], max_t: int, noise_seed: int) -> None:
    """Tune function trainable: one result per epoch, as trm-ray's trials report evaluations."""
    from ray import tune

    from trm_ray.tune.search import trial_params

    params = {key: trial_params(config)[key] for key in OPTIMUM}
    for epoch, value in enumerate(accuracy_curve(params, max_t, noise_seed), start=1):
        tune.report({TIME_ATTR: epoch, METRIC: value})


# --------------------------------------------------------------------------------------------
# One search through Tune, and what it took to reach the target
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    label: str
    seed: Optional[int]
    to_target: Optional[int]      # trial-epochs until the first report >= target; None: not reached
    trials_to_target: Optional[int]
    trial_epochs: int             # the whole run
    trials: int
    best: float
    wall_s: float
    sweep_dir: str


def _target_stopper(target: Optional[float]):
    """Ends the whole experiment after the first result >= target (the count stops there anyway)."""
    from ray import tune

    class ReachTarget(tune.Stopper):
        def __init__(self) -> None:
            self.reached = False

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            # Never stop the trial itself here: a stopper's STOP skips the scheduler, which
            # would leave that result out of the sweep records the count is read from.
            value = result.get(METRIC)
            if target is not None and isinstance(value, (int, float)) and value >= target:
                self.reached = True
            return False

        def stop_all(self) -> bool:
            return self.reached

    return ReachTarget()


def count(sweep_dir: str, target: Optional[float]) -> tuple[Optional[int], Optional[int], int, int, float]:
    """From the sweep records, in arrival order: (trial-epochs and trials started until the first
    result >= target, or None; trial-epochs and trials of the whole run; best value reported)."""
    from trm_ray.tune.records import read_records

    last_epoch: dict[str, float] = {}
    used, best = 0, -math.inf
    to_target = trials_to_target = None
    for record in read_records(sweep_dir):
        if record.get("event") != "result" or record.get(TIME_ATTR) is None:
            continue
        trial = record["trial_id"]
        used += int(record[TIME_ATTR] - last_epoch.get(trial, 0))
        last_epoch[trial] = record[TIME_ATTR]
        value = record.get(METRIC)
        if isinstance(value, (int, float)):
            best = max(best, value)
            if to_target is None and target is not None and value >= target:
                to_target, trials_to_target = used, len(last_epoch)
    return to_target, trials_to_target, used, len(last_epoch), best


def run_search(label: str, *, seed: Optional[int], searcher: Any, param_space: dict[str, Any], num_samples: int,
               target: Optional[float], args: argparse.Namespace, storage: str) -> Outcome:
    from ray import tune

    from trm_ray.tune.scheduler import ResumableASHA

    name = f"{label.replace('+', '-').lower()}-{seed if seed is not None else 'grid'}"
    sweep_dir = os.path.join(storage, name)
    os.makedirs(sweep_dir, exist_ok=True)
    scheduler = ResumableASHA(sweep_dir, time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=args.max_t,
                              grace_period=args.grace_period, reduction_factor=args.reduction_factor)
    trainable = tune.with_resources(
        tune.with_parameters(synthetic_trial, max_t=args.max_t, noise_seed=args.noise_seed), {"cpu": 0.5})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        # a searcher comes limited to args.concurrency already (build_searcher's ConcurrencyLimiter)
        tune_config=tune.TuneConfig(scheduler=scheduler, search_alg=searcher, num_samples=num_samples,
                                    max_concurrent_trials=None if searcher else args.concurrency,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, stop=_target_stopper(target),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    begin = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - begin
    if results.errors:
        raise SystemExit(f"{label}: {len(results.errors)} trial(s) failed: {results.errors[0]}")
    to_target, trials_to_target, used, trials, best = count(sweep_dir, target)
    print(f"  {label}{'' if seed is None else f' seed {seed}'}: {trials} trials, {used} trial-epochs, "
          f"{wall:.0f} s", file=sys.stderr, flush=True)
    return Outcome(label, seed, to_target, trials_to_target, used, trials, best, wall, sweep_dir)


# --------------------------------------------------------------------------------------------
def search_space(grid: dict[str, list[Any]], continuous: bool) -> dict[str, Any]:
    """The grid as trm-ray Domains, or Domains over the same ranges for a model-based searcher."""
    from trm_ray.tune.spec import Domain

    if not continuous:
        return {key: Domain(grid=values) for key, values in grid.items()}
    space = {}
    for key, values in grid.items():
        low, high = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            space[key] = Domain(randint=(low, high + 1))  # [low, high)
        elif key in LOG_KEYS:
            space[key] = Domain(loguniform=(low, high))
        else:
            space[key] = Domain(uniform=(low, high))
    return space


def grid_param_space(grid_space: dict[str, Any]) -> dict[str, Any]:
    """The Tuner's param_space of a grid sweep, as `trm-ray sweep` builds it: the quickstart sweep
    with this search space, its trials expanded (and validated) by expand_trials, in launch order."""
    from ray import tune

    from trm_ray.tune.spec import Sweep, expand_trials, load_sweep_spec

    loaded = load_sweep_spec(QUICKSTART_SWEEP)
    sweep = Sweep(loaded.spec.model_copy(update={"search_space": grid_space}), loaded.source, loaded.base_data)
    trials = expand_trials(sweep)
    return {"trial": tune.grid_search([{"index": i, "params": p} for i, p in enumerate(trials)])}


def describe(space: dict[str, Any]) -> str:
    return ", ".join(f"{key} {domain.kind} {list(domain.value)}" for key, domain in space.items())


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Searcher seeds (default 0 1 2).")
    parser.add_argument("--algorithm", choices=("optuna", "hyperopt"), default="optuna",
                        help="The TPE implementation (default optuna).")
    parser.add_argument("--quick", action="store_true",
                        help="A 48-trial grid (3 lr x 2 values of each other key) instead of 324: a smoke run.")
    parser.add_argument("--budget", type=int,
                        help="Most trials TPE may start per seed (default: as many as the grid has).")
    parser.add_argument("--startup", type=int,
                        help="TPE's random trials before its model proposes (default: SearchConfig's, 10 here).")
    parser.add_argument("--random-baseline", action="store_true",
                        help="Also run random search + ASHA over the same seeds and domains (the TPE sampler "
                             "with every trial random): how much of the gain is the model's.")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="Trials at once, both searches (default 1: reproducible; 2, as the quickstart "
                             "sweep, makes ASHA's cuts depend on which of two trials reports first).")
    # ASHA as the quickstart sweep sets it: rungs at 5 and 15 epochs, top third kept, max_t 20.
    parser.add_argument("--max-t", type=int, default=20, help="Epochs of a trial ASHA does not stop (default 20).")
    parser.add_argument("--grace-period", type=int, default=5, help="ASHA's first rung, in epochs (default 5).")
    parser.add_argument("--reduction-factor", type=int, default=3, help="ASHA keeps the top 1/this (default 3).")
    parser.add_argument("--noise-seed", type=int, default=0, help="Seeds the synthetic noise (default 0).")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2).")
    parser.add_argument("--storage", help="Where the sweep folders go (default: a temporary folder).")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    # Without the per-trial result files, ResultGrid warns once per trial that it found none;
    # the counts come from the sweep records.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    import ray

    from trm_ray.cluster import connect
    from trm_ray.tune.search import build_searcher, trial_space
    from trm_ray.tune.spec import SearchConfig

    grid = QUICK_GRID if args.quick else GRID
    grid_space, tpe_space = search_space(grid, continuous=False), search_space(grid, continuous=True)
    grid_size = math.prod(len(values) for values in grid.values())
    budget = args.budget or grid_size
    storage = args.storage or tempfile.mkdtemp(prefix="trm-search-bench-")
    outcomes = []
    started = connect(num_cpus=args.num_cpus)
    try:
        grid_run = run_search("grid+ASHA", seed=None, searcher=None, param_space=grid_param_space(grid_space),
                              num_samples=1, target=None, args=args, storage=storage)
        target = grid_run.best
        grid_run.to_target, grid_run.trials_to_target = count(grid_run.sweep_dir, target)[:2]
        outcomes.append(grid_run)
        for seed in args.seeds:
            runs = [("TPE+ASHA", args.startup)] + ([("random+ASHA", budget)] if args.random_baseline else [])
            for label, startup in runs:
                search = SearchConfig(algorithm=args.algorithm, num_samples=budget, seed=seed, random_startup=startup)
                searcher = build_searcher(search, tpe_space, metric=METRIC, mode=MODE, max_concurrent=args.concurrency)
                outcomes.append(run_search(label, seed=seed, searcher=searcher, param_space=trial_space(tpe_space),
                                           num_samples=budget, target=target, args=args, storage=storage))
    finally:
        if started:
            ray.shutdown()
    report(outcomes, args, grid_space, tpe_space, target, budget, storage)


def report(outcomes: list[Outcome], args: argparse.Namespace, grid_space: dict[str, Any], tpe_space: dict[str, Any],
           target: float, budget: int, storage: str) -> None:
    optimum = ceiling(OPTIMUM)
    best_grid_point = max(ceiling(dict(zip(grid_space, point))) for point in _points(grid_space))
    print(f"synthetic TRM objective ({METRIC}, {MODE}); ASHA {TIME_ATTR}: grace_period {args.grace_period}, "
          f"reduction_factor {args.reduction_factor}, max_t {args.max_t}; {args.concurrency} trials at once; "
          f"folders under {storage}")
    print(f"grid: {describe(grid_space)}")
    print(f"TPE ({args.algorithm}, up to {budget} trials a seed): {describe(tpe_space)}")
    print(f"target = grid's best reported {METRIC}: {target:.4f} (noise-free ceiling: best grid point "
          f"{best_grid_point:.4f}, optimum {optimum:.4f})")
    rows = [("method", "seed", "trial-epochs to target", "trials to target", "best reached", "run: trial-epochs",
             "run: trials", "wall s")]
    for o in outcomes:
        rows.append((o.label, "-" if o.seed is None else str(o.seed),
                     str(o.to_target) if o.to_target is not None else f"not reached (> {o.trial_epochs})",
                     str(o.trials_to_target) if o.trials_to_target is not None else "-",
                     f"{o.best:.4f}", str(o.trial_epochs), str(o.trials), f"{o.wall_s:.0f}"))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip())
    grid_run = outcomes[0]
    for label in dict.fromkeys(o.label for o in outcomes[1:]):
        print(ratio_line(label, [o for o in outcomes if o.label == label], grid_run))
    print(f"(grid+ASHA's whole run: {grid_run.trial_epochs} trial-epochs; trial-epochs to target is where its "
          f"best first appeared, which depends on the grid's launch order)")


def ratio_line(label: str, runs: list[Outcome], grid_run: Outcome) -> str:
    """Mean trial-epochs to target over seeds, over grid+ASHA's. A seed that never reached the
    target counts with its whole run: the mean is then a lower bound (>=)."""
    spent = [o.to_target if o.to_target is not None else o.trial_epochs for o in runs]
    missed = sum(o.to_target is None for o in runs)
    mean = statistics.mean(spent)
    each = ", ".join(f"{s / grid_run.to_target:.2f}" for s in spent)
    goal = " (goal <= 0.50)" if label.startswith("TPE") else ""
    line = (f"{label} / grid+ASHA trial-epochs: {'>= ' if missed else ''}{mean / grid_run.to_target:.2f}{goal}; "
            f"mean {mean:.0f} vs {grid_run.to_target} (per seed: {each})")
    return line + (f"; {missed} of {len(runs)} seeds never reached the target" if missed else "")


def _points(space: dict[str, Any]):
    return itertools.product(*(domain.value for domain in space.values()))


if __name__ == "__main__":
    main()
