"""Evaluation over a test split (docs/paper.md#evaluation): per-set metrics with Wilson 95% intervals.

The training loop calls this at every eval interval, on every rank:

    loader = PuzzleLoader.from_config(config, "test", rank=rank, world_size=world_size)
    metrics = evaluate(ema_model or model, loader, evaluators=[ARCEvaluator(data_path)])
    metrics["eval/exact_accuracy"], metrics["eval/all/exact_accuracy_low"], metrics["ARC/pass@2"]

Every row runs all halt_max_steps ACT steps (trm_ray.inference.predict: no early halting in
eval). Metrics are those of the loss head (TRMWithLoss) over the rows with at least one label: `count`,
`accuracy` (mean per-row token accuracy), `exact_accuracy`, `q_halt_accuracy` and `steps`,
reported per set as `eval/<set>/<name>` and over all sets as `eval/<name>`; exact accuracy
also gets its Wilson 95% interval (`..._low`, `..._high`), because with a few hundred test
puzzles the interval is as wide as most differences people compare.

Under torch.distributed each rank evaluates its own slice of every global batch (the test
loader's sharding); the sums are all-reduced and the evaluators' states all-gathered, so
every rank returns the same metrics. The same accumulator (EvalAccumulator) serves the
Ray Data path of eval-only runs (trm_ray.eval.ray_data), so both compute identical numbers.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from trm_ray.ema import unwrap
from trm_ray.inference import predict
from trm_ray.model import IGNORE_LABEL_ID

EVAL_PREFIX = "eval"
# Summed per set, divided by count at the end (the loss head's metrics, "steps" included).
SUMMED = ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps")
# Model outputs every evaluator may read (numpy, real rows only). label_nll: each row's sum over
# its label positions of -log p(label) under the model's own loss distribution (float64);
# label_count: its number of label positions (what trm_ray.text.evaluate scores text with).
EVALUATOR_OUTPUTS = ("preds", "q_halt_logits", "q_continue_logits", "label_nll", "label_count")
# What a prediction carries per row: the above, plus each row's steps where the model halts
# early in evaluation (absent otherwise).
ROW_OUTPUTS = EVALUATOR_OUTPUTS + ("actual_steps",)


# --------------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------------
def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion successes / n; (0, 1) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or n
    successes (10/10 gives (0.72, 1.0), not (1, 1))."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------------------------
# Evaluators
# --------------------------------------------------------------------------------------------
@runtime_checkable
class Evaluator(Protocol):
    """What evaluate() drives. ARCEvaluator is one; a recipe's `evaluators:` list builds them.

    reset()                  forget everything (evaluate() calls it first, so each eval stands alone)
    update(batch, outputs)   numpy, real rows only: batch "inputs", "labels", "puzzle_identifiers";
                             outputs "preds", "q_halt_logits", "q_continue_logits", "label_nll",
                             "label_count" (EVALUATOR_OUTPUTS)
    state() / merge(states)  a picklable local state; merge replaces the local state by the
                             union of `states` (one per worker, this one's included)
    result()                 {metric name: float} over everything seen (after merge: all workers)
    """

    def reset(self) -> None: ...
    def update(self, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None: ...
    def state(self) -> Any: ...
    def merge(self, states: Sequence[Any]) -> None: ...
    def result(self) -> dict[str, float]: ...


# --------------------------------------------------------------------------------------------
# Per-row statistics and their sums
# --------------------------------------------------------------------------------------------
def row_statistics(labels: np.ndarray, preds: np.ndarray, q_halt_logits: np.ndarray,
                   steps: int | np.ndarray) -> dict[str, np.ndarray]:
    """The loss head's metrics per row: valid (has a label), token accuracy, exact, q_halt correct, steps
    (halt_max_steps for all rows, or per row where the model halts early in evaluation)."""
    labels = np.asarray(labels)
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    correct = mask & (np.asarray(preds) == labels)
    seq_correct = correct.sum(-1) == counts
    valid = counts > 0
    return {
        "count": valid.astype(np.float64),
        "accuracy": np.where(valid, correct.sum(-1) / np.maximum(counts, 1), 0.0),
        "exact_accuracy": (valid & seq_correct).astype(np.float64),
        "q_halt_accuracy": (valid & ((np.asarray(q_halt_logits) >= 0) == seq_correct)).astype(np.float64),
        "steps": np.where(valid, np.asarray(steps, np.float64), 0.0),
    }


class EvalAccumulator:
    """Sums per set plus the evaluators; fed real rows only, merged across workers."""

    def __init__(self, evaluators: Sequence[Evaluator] = (), halt_max_steps: int = 1):
        self.evaluators = list(evaluators)
        self.halt_max_steps = int(halt_max_steps)
        self.sums: dict[str, np.ndarray] = {}  # set name -> float64 sums in SUMMED order
        for evaluator in self.evaluators:
            evaluator.reset()

    def add_set(self, set_name: str) -> None:
        self.sums.setdefault(set_name, np.zeros(len(SUMMED), np.float64))

    def add(self, set_name: str, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """One batch of REAL rows (numpy): batch inputs/labels/puzzle_identifiers, outputs preds/q_halt_logits/..."""
        self.add_set(set_name)
        stats = row_statistics(batch["labels"], outputs["preds"], outputs["q_halt_logits"],
                               outputs.get("actual_steps", self.halt_max_steps))
        self.sums[set_name] += np.array([stats[k].sum() for k in SUMMED])
        for evaluator in self.evaluators:
            evaluator.update(batch, outputs)

    def all_reduce(self, device: torch.device) -> None:
        """Sum every rank's sums and merge the evaluators' states on every rank (collective)."""
        import torch.distributed as dist

        world_size = dist.get_world_size()
        names: list[Any] = [None] * world_size
        dist.all_gather_object(names, sorted(self.sums))
        for set_name in sorted({n for per_rank in names for n in per_rank}):
            self.add_set(set_name)
        ordered = sorted(self.sums)
        # float64 on the collective's device (nccl needs CUDA tensors); counts stay exact.
        flat = torch.tensor(np.stack([self.sums[n] for n in ordered]), dtype=torch.float64, device=device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for name, row in zip(ordered, flat.cpu().numpy()):
            self.sums[name] = row
        for evaluator in self.evaluators:
            states: list[Any] = [None] * world_size
            dist.all_gather_object(states, evaluator.state())
            evaluator.merge(states)

    def merge(self, others: Sequence["EvalAccumulator"]) -> None:
        """Fold other accumulators (e.g. from Ray workers) into this one."""
        for other in others:
            for name, row in other.sums.items():
                self.add_set(name)
                self.sums[name] += row
        for i, evaluator in enumerate(self.evaluators):
            evaluator.merge([evaluator.state()] + [o.evaluators[i].state() for o in others])

    def result(self) -> dict[str, float]:
        return metrics_from_sums(self.sums) | {k: v for e in self.evaluators for k, v in e.result().items()}


def _named(prefix: str, sums: np.ndarray) -> dict[str, float]:
    count = float(sums[SUMMED.index("count")])
    metrics = {f"{prefix}/count": count}
    for i, name in enumerate(SUMMED):
        if name != "count":
            metrics[f"{prefix}/{name}"] = float(sums[i]) / count if count else 0.0
    exact = float(sums[SUMMED.index("exact_accuracy")])
    # Sums of 0/1 per row: exact integers in float64, rounded only against all-reduce noise.
    low, high = wilson_interval(round(exact), round(count))
    metrics[f"{prefix}/exact_accuracy_low"], metrics[f"{prefix}/exact_accuracy_high"] = low, high
    return metrics


def metrics_from_sums(sums: Mapping[str, np.ndarray]) -> dict[str, float]:
    """`eval/<set>/<name>` per set and `eval/<name>` over all sets (with Wilson bounds)."""
    metrics: dict[str, float] = {}
    for set_name in sorted(sums):
        metrics.update(_named(f"{EVAL_PREFIX}/{set_name}", sums[set_name]))
    total = np.sum([sums[n] for n in sums], axis=0) if sums else np.zeros(len(SUMMED))
    metrics.update(_named(EVAL_PREFIX, total))
    return metrics


# --------------------------------------------------------------------------------------------
# evaluate()
# --------------------------------------------------------------------------------------------
def _unpack(item: Any) -> tuple[str, Mapping[str, Any], int]:
    """A loader item -> (set name, batch, real rows).

    Accepts trm_ray.data.loader.LoaderBatch (what PuzzleLoader(..., "test") yields; its
    `num_real_rows` is used, real rows come first) or a (set_name, batch, num_real_rows) tuple.
    Note: unpacking a LoaderBatch as a tuple gives global_effective_batch_size third, which is
    NOT this worker's real rows when world_size > 1: pass the LoaderBatch itself."""
    if hasattr(item, "set_name") and hasattr(item, "num_real_rows"):
        return item.set_name, item.batch, int(item.num_real_rows)
    set_name, batch, num_real_rows = item
    return set_name, batch, int(num_real_rows)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _halt_max_steps(model: torch.nn.Module) -> int:
    return int(unwrap(model).model.arch.halt_max_steps)


def _without_ddp(model: torch.nn.Module) -> torch.nn.Module:
    # predict() needs initial_carry, which DDP does not forward; a compiled model stays compiled.
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def predict_real_rows(model: torch.nn.Module, batch: Mapping[str, Any], num_real_rows: int
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """predict() on a (padded) batch; (batch, outputs) as numpy, cut to the real rows."""
    device = _model_device(model)
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))).to(device)
               for k, v in batch.items() if k in ("inputs", "labels", "puzzle_identifiers")}
    outputs = predict(model, tensors)
    real = slice(0, num_real_rows)
    labels = tensors["labels"][real] if "labels" in tensors else None
    if labels is not None:
        outputs["label_nll"], outputs["label_count"] = label_nll(outputs["logits"][real], labels,
                                                                 _loss_type(model))
    batch_np = {k: _numpy(v)[real] for k, v in tensors.items()}
    outputs_np = {k: _numpy(outputs[k])[:num_real_rows] for k in ROW_OUTPUTS if k in outputs}
    outputs_np["preds"] = outputs_np["preds"].astype(np.int32)
    return batch_np, outputs_np


def _loss_type(model: torch.nn.Module) -> str:
    return str(unwrap(model).model.arch.loss_type)


# float64 elements of one chunk of label_nll's log-normaliser: bounds its temporary memory
# (a text batch's logits are rows x positions x vocabulary).
NLL_CHUNK_ELEMENTS = 1 << 24


def label_nll(logits: torch.Tensor, labels: torch.Tensor, loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum over label positions (labels != IGNORE_LABEL_ID) of -log p(label), p the
    distribution the model is trained on (log_softmax for softmax_cross_entropy, log_stablemax
    for stablemax_cross_entropy) in float64, and the number of those positions (int64)."""
    from trm_ray.model import log_stablemax

    mask = labels != IGNORE_LABEL_ID
    safe = torch.where(mask, labels, 0).to(torch.long).unsqueeze(-1)
    rows_per_chunk = max(1, NLL_CHUNK_ELEMENTS // max(1, logits[0].numel()))
    sums = []
    for start in range(0, logits.shape[0], rows_per_chunk):
        part = logits[start:start + rows_per_chunk].to(torch.float64)
        if loss_type == "stablemax_cross_entropy":
            logp = log_stablemax(part, dim=-1)
        else:
            logp = torch.log_softmax(part, dim=-1)
        picked = torch.gather(logp, -1, safe[start:start + rows_per_chunk]).squeeze(-1)
        sums.append(-torch.where(mask[start:start + rows_per_chunk], picked, 0.0).sum(-1))
    nll = torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64, device=logits.device)
    return nll, mask.sum(-1).to(torch.int64)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[Any],
    evaluators: Sequence[Evaluator] = (),
    *,
    device: Optional[torch.device | str] = None,
    on_batch: Optional[Callable[[str, dict[str, np.ndarray], dict[str, np.ndarray]], None]] = None,
) -> dict[str, float]:
    """Metrics of `model` (a TRMWithLoss, or the EMA copy) over `batches`.

    batches: PuzzleLoader(..., "test") items (LoaderBatch) or (set_name, batch, num_real_rows)
    tuples; batch holds "inputs", "labels", "puzzle_identifiers" (torch or numpy ints); rows
    past num_real_rows are padding and ignored. The model is put in eval mode and restored.
    evaluators: reset first, then .update(batch, outputs) with the real rows as numpy; their
    .result() is merged into the returned dict. device: where the collectives' tensors live
    under torch.distributed (None: the model's device; the model itself is never moved).
    on_batch(set_name, batch, outputs): called with every batch's real rows (saving outputs).

    Under an initialised torch.distributed group this is a collective: call it on every rank.
    """
    import torch.distributed as dist

    accumulator = EvalAccumulator(evaluators, _halt_max_steps(model))
    model = _without_ddp(model)
    was_training = model.training
    model.eval()
    try:
        for item in batches:
            set_name, batch, num_real_rows = _unpack(item)
            accumulator.add_set(set_name)  # a set this rank only pads still appears everywhere
            if num_real_rows <= 0:
                continue
            batch_np, outputs_np = predict_real_rows(model, batch, num_real_rows)
            accumulator.add(set_name, batch_np, outputs_np)
            if on_batch is not None:
                on_batch(set_name, batch_np, outputs_np)
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        accumulator.all_reduce(torch.device(device) if device is not None else _model_device(model))
    return accumulator.result()
