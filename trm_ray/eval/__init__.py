"""Evaluation: per-set exact/token accuracy with Wilson intervals, the ARC
voting evaluator and its submission, eval-only runs of any checkpoint.

    from trm_ray.eval import evaluate, wilson_interval, ARCEvaluator, evaluate_checkpoint
    metrics = evaluate(model, test_loader, evaluators=[ARCEvaluator("data/arc1concept-aug-1000")])
    run = evaluate_checkpoint("step_50000", "data/arc1concept-aug-1000")   # notebook, no Ray
"""

from trm_ray.eval.arc import ARCEvaluator, build_evaluators, crop_arc_grid, crop_arc_grids
from trm_ray.eval.core import (
    EVAL_PREFIX,
    EvalAccumulator,
    Evaluator,
    evaluate,
    metrics_from_sums,
    wilson_interval,
)
from trm_ray.eval.outputs import write_outputs
from trm_ray.eval.run import EvalRun, evaluate_checkpoint
from trm_ray.eval.table import format_metrics

__all__ = [
    "ARCEvaluator", "EVAL_PREFIX", "EvalAccumulator", "EvalRun", "Evaluator", "build_evaluators",
    "crop_arc_grid", "crop_arc_grids", "evaluate", "evaluate_checkpoint", "format_metrics",
    "metrics_from_sums", "wilson_interval", "write_outputs",
]
