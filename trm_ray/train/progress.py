"""What rank 0 shows while training: step metrics averaged between prints, a progress bar or a line.

    progress = Progress(total_steps, start_step, enabled=rank == 0, samples_per_step=global_batch_size)
    progress.step(step, metrics)        # every step; prints when due
    progress.message("...")             # a line that does not break the bar

A line (no terminal): `trm-ray: step 77/312 (25%) loss 1.2102 acc 0.485 exact 0.083 | 412 samples/s | ETA 1m05s`.
Inside a sweep's trial (SWEEP_TRIAL_ENV set by trm_ray.tune.driver for the trial's workers)
nothing is printed: the sweep driver prints one line per trial event instead.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Mapping, Optional

from trm_ray.train.step import LR_METRIC

# Set (to "1") in a sweep trial's environment; forwarded to its workers by trm_ray.train.trainer.
SWEEP_TRIAL_ENV = "TRM_RAY_SWEEP_TRIAL"


class Averager:
    """Means of the step metrics since the last pop (each already all-reduced by train_step).

    Losses and lr average over every step; the per-row metrics (accuracy, steps, ...) over the
    steps where some row halted: train_step reports 0 for them when none did (count == 0).
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, float]) -> None:
        any_halted = metrics.get("train/count", 1.0) > 0
        for key, value in metrics.items():
            if any_halted or key.endswith("loss") or key == LR_METRIC:
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


def format_duration(seconds: float) -> str:
    """ETA text: 45s, 1m05s, 2h03m; '?' when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def in_sweep_trial(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(SWEEP_TRIAL_ENV, "") not in ("", "0")


class Progress:
    """Rank 0's progress: a tqdm bar on a terminal, else one line every `every_s` seconds.

    samples_per_step: the global batch size (samples/s is shown as steps/s without it);
    clock and out: for tests (a fake clock, a list of lines)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, every_s: float = 10.0, *,
                 samples_per_step: Optional[int] = None, clock: Callable[[], float] = time.perf_counter,
                 out: Optional[Callable[[str], None]] = None, exact: bool = True):
        self.enabled = enabled and not in_sweep_trial()
        self.exact = exact  # whole-row exact accuracy: a puzzle's answer, meaningless for a text window
        self.every_s, self.total, self.samples_per_step = every_s, total_steps, samples_per_step
        self.clock, self.out = clock, out
        self.last_print = clock()
        self.last_step = start_step
        self.window = Averager()
        self.bar = None
        if self.enabled and out is None and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)
            except ImportError:
                pass

    def _rate(self, steps: int, seconds: float) -> tuple[str, float]:
        """('412 samples/s', steps per second) over the last window."""
        per_s = steps / seconds if seconds > 0 else float("nan")
        if self.samples_per_step:
            return f"{per_s * self.samples_per_step:.0f} samples/s", per_s
        return f"{per_s:.2f} steps/s", per_s

    def _summary(self, metrics: Mapping[str, float]) -> str:
        summary = (f"loss {metrics.get('train/lm_loss', float('nan')):.4f} "
                   f"acc {metrics.get('train/accuracy', float('nan')):.3f}")
        if self.exact:
            summary += f" exact {metrics.get('train/exact_accuracy', float('nan')):.3f}"
        return summary

    def line(self, step: int, metrics: Mapping[str, float], seconds: float) -> str:
        """The progress line for `step`, `seconds` after the previous one (at self.last_step)."""
        rate, per_s = self._rate(step - self.last_step, seconds)
        eta = format_duration((self.total - step) / per_s if per_s > 0 else float("nan"))
        percent = 100.0 * step / self.total if self.total else 100.0
        return (f"trm-ray: step {step}/{self.total} ({percent:.0f}%) {self._summary(metrics)} "
                f"| {rate} | ETA {eta}")

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.window.add(metrics)
        now = self.clock()
        if now - self.last_print < (0.5 if self.bar is not None else self.every_s) and step < self.total:
            if self.bar is not None:
                self.bar.update(step - self.bar.n)
            return
        means = self.window.pop()
        if self.bar is not None:
            rate, _ = self._rate(step - self.last_step, now - self.last_print)
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"{self._summary(means)} {rate}")
        else:
            self._print(self.line(step, means, now - self.last_print))
        self.last_print, self.last_step = now, step

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        if self.out is not None:
            self.out(text)
            return
        # To the process's real stdout: under Ray Train with W&B, sys.stdout is W&B's wrapper
        # and Ray's print patch would tee each line to it and to its logger (printed twice).
        print(text, file=sys.__stdout__ or sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
