"""`trm-ray data build arc` against the reference ARC builder, as a user runs them.

Both commands run as subprocesses, one after the other in one run, on the same inputs
(ARC-AGI-1 + ConceptARC: subsets training evaluation concept, test set evaluation): wall time
from start to exit (interpreter start, imports, Ray start if any, build, write), and the peak
of the summed memory of the command's whole process tree, sampled every 0.2 s (PSS from
/proc/<pid>/smaps_rollup, which splits shared pages among the processes sharing them; RSS
counts them once per process and over-states).

    flock /tmp/trm-bench.lock python benchmarks/build_arc.py --num-aug 100 1000 \\
        --reference /tmp/ref/TinyRecursiveModels --reference-python /tmp/refvenv/bin/python
    python benchmarks/build_arc.py --num-aug 10                   # trm-ray alone, and its content check
    python benchmarks/build_arc.py --trm-ray-flags=--ray          # trm-ray on a local Ray (flags after '=')
    python benchmarks/build_arc.py --generated                    # 1000 hard 9x9 Sudoku + 1000 Maze-Hard 30x30

--reference is a checkout of the reference repository (it holds dataset/build_arc_dataset.py
and dataset/common.py) and --reference-python an interpreter with its requirements (numpy,
pydantic, argdantic). Without them only trm-ray runs, and the table says so. The reference
holds the whole augmented dataset in Python objects: at --num-aug 1000 it needs ~17 GB, so
check `free -g` before asking for it. After the timing, the content check maps every example
of the trm-ray output back to its source pair (--no-check skips it; it takes ~1 min per 100
augmentations).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PREFIX = os.path.join(REPO, "..", "shared", "data", "arc", "arc-agi")


# ---------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc
# ---------------------------------------------------------------------------------------------
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # ended while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; PSS is RSS where smaps_rollup is missing."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, pss or rss


class TreeSampler(threading.Thread):
    """Peak of the summed RSS / PSS of process `root` and all its descendants."""

    def __init__(self, root: int, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval_s = root, interval_s
        self.peak_rss_kb = self.peak_pss_kb = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            rss = pss = 0
            for pid in _descendants(self.root):
                r, p = _memory_kb(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss_kb, self.peak_pss_kb = max(self.peak_rss_kb, rss), max(self.peak_pss_kb, pss)
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def measure(command: list[str], cwd: Optional[str] = None) -> dict:
    """Run `command`; its wall seconds, peak memory (GB) and output tail."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(process.pid)
    sampler.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - started
    sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"wall_s": wall, "pss_gb": sampler.peak_pss_kb / 1e6, "rss_gb": sampler.peak_rss_kb / 1e6, "output": output}


# ---------------------------------------------------------------------------------------------
# The two commands
# ---------------------------------------------------------------------------------------------
def trm_ray_command(args, num_aug: int, out: str) -> list[str]:
    executable = shutil.which("trm-ray", path=os.path.dirname(sys.executable)) or shutil.which("trm-ray")
    if executable is None:
        raise SystemExit("trm-ray is not installed in this environment: pip install -e . first")
    return [executable, "data", "build", "arc", "--input-file-prefix", args.input_file_prefix, "--subsets", *args.subsets,
            "--test-set-name", args.test_set_name, "--num-aug", str(num_aug), "--output-dir", out, *shlex.split(args.trm_ray_flags)]


def reference_command(args, num_aug: int, out: str) -> list[str]:
    return [args.reference_python, "-m", "dataset.build_arc_dataset", "--input-file-prefix", os.path.abspath(args.input_file_prefix),
            "--output-dir", out, "--subsets", *args.subsets, "--test-set-name", args.test_set_name, "--num-aug", str(num_aug)]


def bench_arc(args) -> None:
    if args.reference:
        if not os.path.isfile(os.path.join(args.reference, "dataset", "build_arc_dataset.py")):
            raise SystemExit(f"--reference {args.reference!r} has no dataset/build_arc_dataset.py: point it at the reference checkout")
        if not args.reference_python:
            raise SystemExit("--reference needs --reference-python (an interpreter with numpy, pydantic, argdantic)")
    rows = []
    for num_aug in args.num_aug:
        workdir = tempfile.mkdtemp(prefix="bench-arc-", dir=args.workdir)
        try:
            out = os.path.join(workdir, "trm-ray")
            ours = measure(trm_ray_command(args, num_aug, out))
            with open(os.path.join(out, "build.json")) as f:
                ours["sha256"] = json.load(f)["content_sha256"]
            ours["bytes"] = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
            print(f"--num-aug {num_aug}: trm-ray {ours['wall_s']:.1f} s, peak PSS {ours['pss_gb']:.2f} GB "
                  f"(RSS {ours['rss_gb']:.2f} GB); {ours['output'].strip().splitlines()[-1]}", flush=True)
            if not args.no_check:
                t = time.perf_counter()
                print(check_arc_content(out, args.input_file_prefix, args.subsets, args.test_set_name, num_aug),
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
            shutil.rmtree(out, ignore_errors=True)  # before the reference writes its copy: disk and page cache
            ref = None
            if args.reference:
                ref = measure(reference_command(args, num_aug, os.path.join(workdir, "reference")), cwd=args.reference)
                print(f"--num-aug {num_aug}: reference {ref['wall_s']:.1f} s, peak PSS {ref['pss_gb']:.2f} GB "
                      f"(RSS {ref['rss_gb']:.2f} GB)", flush=True)
            rows.append((num_aug, ours, ref))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(args, rows)


def print_table(args, rows) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nARC build, {'+'.join(args.subsets)} (test set {args.test_set_name}), {cpus} CPUs; "
          f"trm-ray flags: {args.trm_ray_flags or '(none)'}; peak = summed PSS of the process tree")
    print("| --num-aug | reference wall s | reference peak GB | trm-ray wall s | trm-ray peak GB | speed-up | memory ratio "
          "| output GB | content_sha256 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for num_aug, ours, ref in rows:
        if ref is None:
            cells = ["not run", "not run", f"{ours['wall_s']:.1f}", f"{ours['pss_gb']:.2f}", "-", "-"]
        else:
            cells = [f"{ref['wall_s']:.1f}", f"{ref['pss_gb']:.2f}", f"{ours['wall_s']:.1f}", f"{ours['pss_gb']:.2f}",
                     f"{ref['wall_s'] / ours['wall_s']:.1f}x", f"1/{ref['pss_gb'] / ours['pss_gb']:.1f}"]
        print(f"| {num_aug} | " + " | ".join(cells) + f" | {ours['bytes'] / 1e9:.2f} | {ours['sha256'][:16]} |")
    if not args.reference:
        print("The reference builder was NOT run (pass --reference DIR --reference-python PY): no ratios.")


# ---------------------------------------------------------------------------------------------
# Content check: every example maps back, by its variant's name, to its source pair
# ---------------------------------------------------------------------------------------------
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
    sys.path.insert(0, REPO)
    from trm_ray.data import layout
    from trm_ray.data.sources import load_arc
    from trm_ray.data.transforms import arc_decode_grid, invert_arc_variant

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
                        tokens = np.asarray(tokens)
                        grid = arc_decode_grid(tokens) if split == "test" else _crop_translated(tokens)
                        assert np.array_equal(back(grid), np.array(pair[key], np.uint8)), (base, split, e, key)
                    checked += 1
    return f"content check: {checked} examples map back to their source pair; {short_groups} groups have < {num_aug} variants (duplicates)"


# ---------------------------------------------------------------------------------------------
# Generated Sudoku / Maze (in this process)
# ---------------------------------------------------------------------------------------------
def bench_generated(args) -> None:
    sys.path.insert(0, REPO)
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe

    workdir = tempfile.mkdtemp(prefix="bench-gen-", dir=args.workdir)
    try:
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
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-file-prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--subsets", nargs="+", default=["training", "evaluation", "concept"])
    parser.add_argument("--test-set-name", default="evaluation")
    parser.add_argument("--num-aug", type=int, nargs="+", default=[100], help="One row per value, e.g. --num-aug 100 1000.")
    parser.add_argument("--reference", help="Checkout of the reference repository (holds dataset/build_arc_dataset.py).")
    parser.add_argument("--reference-python", help="Interpreter with the reference's requirements.")
    parser.add_argument("--trm-ray-flags", default="", help="Extra flags for trm-ray, e.g. '--ray' or '--num-cpus 1'.")
    parser.add_argument("--workdir", default=None, help="Where the temporary outputs go (default: system temp).")
    parser.add_argument("--no-check", action="store_true", help="Skip the per-example content check of the trm-ray output.")
    parser.add_argument("--generated", action="store_true", help="Time 1000 hard Sudoku and 1000 Maze-Hard instead.")
    args = parser.parse_args()
    bench_generated(args) if args.generated else bench_arc(args)


if __name__ == "__main__":
    main()
