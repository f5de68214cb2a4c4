"""Evaluation (TRM_SPEC 9): per-set exact/token accuracy with Wilson intervals, the ARC
voting evaluator and its submission, eval-only runs of any checkpoint.

    from trm_ray.eval import evaluate, wilson_interval, ARCEvaluator
    metrics = evaluate(model, test_loader, evaluators=[ARCEvaluator("data/arc1concept-aug-1000")])
"""

from trm_ray.eval.core import EVAL_PREFIX, EvalAccumulator, Evaluator, evaluate, metrics_from_sums, wilson_interval

__all__ = ["EVAL_PREFIX", "EvalAccumulator", "Evaluator", "evaluate", "metrics_from_sums", "wilson_interval"]
