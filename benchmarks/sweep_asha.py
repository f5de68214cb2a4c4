"""ASHA vs no early stopping on the quickstart sweep: trial-epochs used and the winner.

    trm-ray data build datasets/sudoku-4x4-quickstart.yaml
    python benchmarks/sweep_asha.py [--sweep experiments/sweeps/quickstart.yaml] [--num-cpus 2]

Runs the sweep twice on one local Ray instance: as written (ASHA), and with asha.enabled=false
(every trial to max_t). Prints both side by side: trial-epochs, wall time, the winning
configuration and its metric. Goal: >= 50% of trial-epochs saved, same winner.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="experiments/sweeps/quickstart.yaml")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--storage", help="Where both sweep folders go (default: a temporary folder).")
    parser.add_argument("--data", help="Override data_paths (one dataset folder).")
    args = parser.parse_args()

    import ray

    from trm_ray.cluster import connect
    from trm_ray.tune.compare import summarize_sweep
    from trm_ray.tune.driver import run_sweep
    from trm_ray.tune.spec import Sweep, expand_trials, load_sweep_spec, set_key

    storage = args.storage or tempfile.mkdtemp(prefix="trm-sweep-bench-")
    loaded = load_sweep_spec(args.sweep)
    base = set_key(loaded.base_data, "data_paths", [args.data]) if args.data else loaded.base_data
    base = set_key(base, "tracking.wandb", False)
    runs = {}
    started = connect(num_cpus=args.num_cpus)
    try:
        for label, enabled in (("ASHA", True), ("full", False)):
            spec = loaded.spec.model_copy(update={
                "name": f"{loaded.name}-bench-{label.lower()}-{int(time.time())}",
                "storage_path": storage,
                "asha": loaded.spec.asha.model_copy(update={"enabled": enabled}),
            })
            sweep = Sweep(spec, loaded.source, base)
            trials = expand_trials(sweep)
            begin = time.perf_counter()
            sweep_dir = run_sweep(sweep, trials, log=lambda line: None)
            runs[label] = (summarize_sweep(sweep_dir), time.perf_counter() - begin)
    finally:
        if started:
            ray.shutdown()

    def winner(summary):
        row = summary.winner
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.history.params.items())

    rows = [("", "ASHA", "every trial to max_t")]
    (asha, asha_s), (full, full_s) = runs["ASHA"], runs["full"]
    epochs = {k: sum(r.history.epochs_run for r in s.rows) for k, (s, _) in runs.items()}
    rows.append(("trials", str(len(asha.rows)), str(len(full.rows))))
    rows.append(("stopped early", str(sum(r.history.stopped_early for r in asha.rows)),
                 str(sum(r.history.stopped_early for r in full.rows))))
    rows.append(("trial-epochs", str(epochs["ASHA"]), str(epochs["full"])))
    rows.append(("wall time (s)", f"{asha_s:.0f}", f"{full_s:.0f}"))
    rows.append(("winner", winner(asha), winner(full)))
    rows.append((f"winner {asha.metric}", f"{asha.winner.best:.4f}", f"{full.winner.best:.4f}"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"sweep {args.sweep} (metric {asha.metric}, {asha.mode}); folders under {storage}")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width)))
    saved = 1 - epochs["ASHA"] / epochs["full"]
    same = asha.winner.history.params == full.winner.history.params
    print(f"trial-epochs saved by ASHA: {saved:.0%} (goal >= 50%); same winner: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
