"""Evaluation: per-set exact/token accuracy with Wilson intervals, the ARC
voting evaluator and its submission, eval-only runs of any checkpoint.

    from trm_ray.eval import evaluate, wilson_interval, ARCEvaluator, evaluate_checkpoint
    metrics = evaluate(model, test_loader, evaluators=[ARCEvaluator("data/arc1concept-aug-1000")])
    run = evaluate_checkpoint("step_50000", "data/arc1concept-aug-1000")   # notebook, no Ray

The names below are imported on first use, so that a light module of this package (the
--outdir format in outputs.py, which the command line reads for its help) does not pull in torch.
"""

import importlib
from typing import Any

_HOMES = {
    "ARCEvaluator": "arc", "build_evaluators": "arc", "crop_arc_grid": "arc", "crop_arc_grids": "arc",
    "EVAL_PREFIX": "core", "EvalAccumulator": "core", "Evaluator": "core", "evaluate": "core",
    "metrics_from_sums": "core", "wilson_interval": "core",
    "write_outputs": "outputs",
    "EvalRun": "run", "evaluate_checkpoint": "run",
    "format_metrics": "table",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'trm_ray.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trm_ray.eval.{home}"), name)
