"""Time and memory of the Ray Data ARC build, and a per-puzzle content check.

    python benchmarks/build_arc.py                    # ARC-AGI-1 + ConceptARC, --num-aug 100
    python benchmarks/build_arc.py --num-aug 10 --num-cpus 2
    python benchmarks/build_arc.py --generated        # 1000 hard 9x9 Sudoku + 1000 Maze-Hard 30x30

Reference figures (issue 3, the reference single-process builder on the 2-core CI machine):
--num-aug 100 takes 128 s at 1.77 GB peak RSS. Memory here is sampled every 0.1 s over the
driver and every descendant process (raylet, Ray workers, object store): the sum of RSS
(counts shared pages once per process, so it over-states) and of PSS (shares split).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import ray  # noqa: F401  (also puts Ray's vendored psutil on sys.path)
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PREFIX = os.path.join(REPO, "..", "shared", "data", "arc", "arc-agi")


class MemorySampler(threading.Thread):
    """Peak of the summed RSS / PSS of this process and all its descendants."""

    def __init__(self, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.interval_s, self.peak_rss, self.peak_pss = interval_s, 0, 0
        self._done = threading.Event()

    def sample(self) -> None:
        me = psutil.Process()
        rss = pss = 0
        for proc in [me] + me.children(recursive=True):
            try:
                info = proc.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _crop_translated(tokens: np.ndarray) -> np.ndarray:
    from trm_ray.data.transforms import arc_decode_grid

    canvas = tokens.reshape(30, 30)
    rows, cols = np.nonzero(canvas >= 2)
    shifted = np.zeros_like(canvas)
    r0, c0 = rows.min(), cols.min()
    shifted[: 30 - r0, : 30 - c0] = canvas[r0:, c0:]
    return arc_decode_grid(shifted.reshape(-1))


def check_arc_content(out: str, prefix: str, subsets: list[str], test_set_name: str, num_aug: int) -> str:
    """Every example of every puzzle maps back (by its variant's name) to its source pair."""
    from trm_ray.data import layout
    from trm_ray.data.sources import load_arc
    from trm_ray.data.transforms import invert_arc_variant

    sources = {p.name: p for p in load_arc(prefix, None, subsets)}
    names = layout.load_identifiers(out)
    checked, short_groups = 0, 0
    for split in ("train", "test"):
        meta = layout.load_metadata(out, split)
        arrays = layout.load_set_arrays(out, split, "all", meta)
        for g in range(arrays.num_groups):
            first, last = arrays.group_indices[g], arrays.group_indices[g + 1]
            short_groups += split == "train" and (last - first) < num_aug + 1
            for p in range(first, last):
                base, back = invert_arc_variant(names[arrays.puzzle_identifiers[p]])
                src = sources[base]
                if split == "test":
                    pairs = src.puzzle["test"]
                elif src.subset == test_set_name:
                    pairs = src.puzzle["train"]
                else:
                    pairs = src.puzzle["train"] + src.puzzle["test"]
                lo, hi = arrays.puzzle_indices[p], arrays.puzzle_indices[p + 1]
                assert hi - lo == len(pairs), (base, split)
                for pair, e in zip(pairs, range(lo, hi)):
                    for key, tokens in (("input", arrays.inputs[e]), ("output", arrays.labels[e])):
                        grid = _crop_translated(np.asarray(tokens)) if split == "train" else None
                        if split == "test":
                            from trm_ray.data.transforms import arc_decode_grid

                            grid = arc_decode_grid(np.asarray(tokens))
                        assert np.array_equal(back(grid), np.array(pair[key], np.uint8)), (base, split, e, key)
                    checked += 1
    return f"content check: {checked} examples map back to their source pair; {short_groups} groups have < {num_aug} variants (duplicates)"


def bench_arc(args) -> None:
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe

    recipe = load_recipe(
        None,
        {"kind": "arc", "input_file_prefix": args.input_file_prefix, "subsets": args.subsets, "test_set_name": args.test_set_name, "num_aug": args.num_aug, "seed": 42},
    )
    workdir = tempfile.mkdtemp(prefix="bench-arc-", dir=args.workdir)
    out = os.path.join(workdir, "arc")
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    import ray

    baseline = 0
    if not args.no_ray:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        time.sleep(1.0)  # let the idle Ray processes settle, then take their footprint as the baseline
        sampler.sample()
        baseline = sampler.peak_pss
    ray_ready = time.perf_counter()
    info = build_dataset(recipe, out, batch_size=args.batch_size, use_ray=not args.no_ray)
    done = time.perf_counter()
    if not args.no_ray:
        ray.shutdown()
    sampler.stop()
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(
        f"ARC build {'(in-process, no Ray) ' if args.no_ray else ''}{'+'.join(args.subsets)} --num-aug {args.num_aug} on {args.num_cpus or os.cpu_count()} CPUs: "
        f"{done - ray_ready:.1f} s build + {ray_ready - started:.1f} s Ray start = {done - started:.1f} s "
        f"(reference 128 s: {128 / (done - started):.1f}x); peak memory of all processes: "
        f"RSS sum {sampler.peak_rss / 1e9:.2f} GB, PSS sum {sampler.peak_pss / 1e9:.2f} GB (reference 1.77 GB), "
        f"of which idle Ray processes {baseline / 1e9:.2f} GB PSS; "
        f"output {size / 1e9:.2f} GB; counts {info['counts']}"
    )
    if not args.no_check:
        t = time.perf_counter()
        print(check_arc_content(out, args.input_file_prefix, args.subsets, args.test_set_name, args.num_aug), f"({time.perf_counter() - t:.0f} s)")
    shutil.rmtree(workdir, ignore_errors=True)


def bench_generated(args) -> None:
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    workdir = tempfile.mkdtemp(prefix="bench-gen-", dir=args.workdir)
    for name, overrides in (
        ("sudoku 9x9 rating>=50", {"kind": "sudoku", "min_difficulty": 50, "generate.size": 9}),
        ("maze 30x30 path>=110", {"kind": "maze", "min_difficulty": 110, "generate.size": 30}),
    ):
        recipe = load_recipe(None, {"source": "generate", "generate.num_train": 1000, "generate.num_test": 1, **overrides})
        t = time.perf_counter()
        info = build_dataset(recipe, os.path.join(workdir, name.split()[0]))
        r = info["ratings"]["train"]
        print(
            f"{name}: 1000 puzzles in {time.perf_counter() - t:.1f} s; rating min {r['min']}, p25 {r['p25']}, "
            f"median {r['median']}, p75 {r['p75']}, max {r['max']}, mean {r['mean']}"
        )
    ray.shutdown()
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-file-prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--subsets", nargs="+", default=["training", "evaluation", "concept"])
    parser.add_argument("--test-set-name", default="evaluation")
    parser.add_argument("--num-aug", type=int, default=100)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="Where the temporary output goes (default: system temp).")
    parser.add_argument("--no-ray", action="store_true", help="Build in this process (the same steps, no Ray).")
    parser.add_argument("--no-check", action="store_true", help="Skip the per-puzzle content check.")
    parser.add_argument("--generated", action="store_true", help="Time 1000 hard Sudoku and 1000 Maze-Hard instead.")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    bench_generated(args) if args.generated else bench_arc(args)


if __name__ == "__main__":
    main()
