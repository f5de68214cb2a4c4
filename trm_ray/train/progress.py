"""What rank 0 shows while training: step metrics averaged between prints, a progress bar or a line.

    progress = Progress(total_steps, start_step, enabled=rank == 0)
    progress.step(step, metrics)        # every step; prints when due
    progress.message("...")             # a line that does not break the bar
"""

from __future__ import annotations

import sys
import time
from typing import Mapping

from trm_ray.train.step import LR_METRIC


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


class Progress:
    """Rank 0's progress: a tqdm bar on a terminal, else one line every `every_s` seconds."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, every_s: float = 10.0):
        self.enabled, self.every_s, self.total = enabled, every_s, total_steps
        self.last_print = time.perf_counter()
        self.window = Averager()
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)
            except ImportError:
                pass

    @staticmethod
    def _summary(metrics: Mapping[str, float]) -> str:
        return (f"loss {metrics.get('train/lm_loss', float('nan')):.4f} "
                f"acc {metrics.get('train/accuracy', float('nan')):.3f} "
                f"exact {metrics.get('train/exact_accuracy', float('nan')):.3f}")

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.window.add(metrics)
        if time.perf_counter() - self.last_print < (0.5 if self.bar is not None else self.every_s):
            if self.bar is not None:
                self.bar.update(step - self.bar.n)
            return
        self.last_print = time.perf_counter()
        summary = self._summary(self.window.pop())
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(summary)
        else:
            self._print(f"trm-ray: step {step}/{self.total} {summary}")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            self._print(text)

    @staticmethod
    def _print(text: str) -> None:
        # To the process's real stdout: under Ray Train with W&B, sys.stdout is W&B's wrapper
        # and Ray's print patch would tee each line to it and to its logger (printed twice).
        print(text, file=sys.__stdout__ or sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
