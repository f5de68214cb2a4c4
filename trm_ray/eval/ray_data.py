"""The Ray Data path of eval-only runs: the test rows predicted by a pool of Ray Data workers,
scored on the driver (what evaluate_checkpoint runs with num_workers >= 1).

Why Ray Data (map_batches over a pool of N tasks on CPU, of N actors on GPUs) and not Ray
Train workers:
- eval-only is stateless batch inference: no gradients, no collectives, nothing shared
  between workers but the final counts. Ray Data streams work items (a few per worker,
  each a run of batches) to whichever worker is free, so a slow or lost node only delays
  (its items are retried) instead of failing a gang; Train's fixed worker group must start
  together (~20-30 s of start-up here), and one failed rank stops every rank.
- the pool can be sized to what the cluster has (`concurrency`), mixes CPU and GPU nodes,
  and needs no process group (no nccl/gloo rendezvous) to start.
- ARC voting needs every prediction in one place anyway: the workers send their rows back
  (compact dtypes) and the driver runs the very same EvalAccumulator that evaluate() runs
  inside training, so both paths compute identical metrics (a test checks it).
- each worker reads its rows straight from the dataset's memory-mapped .npy files (a remote
  URI is staged once per node, as the training loader does); only (set, start, stop)
  triples travel through Ray, and the model goes through the object store once.
Inside training, evaluation stays in the Train workers (evaluate() under torch.distributed):
the weights are already there.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from trm_ray import storage
from trm_ray.data import layout
from trm_ray.data.loader import read_rows
from trm_ray.data.staging import resolve_data_path
from trm_ray.eval.core import ROW_OUTPUTS, EvalAccumulator, predict_real_rows

ITEMS_PER_WORKER = 4  # Ray Data work items per worker (see _stream)


class _Predictor:
    """Loads (set, start, stop) rows from the dataset and predicts them: the Ray Data actor of
    GPU runs, and the per-process state of the CPU tasks (_predict_on_cpu)."""

    def __init__(self, model_ref: Any, dataset_dir: str, use_gpu: bool, num_threads: int, batch_size: int):
        import ray

        self.num_threads = max(1, num_threads)
        torch.set_num_threads(self.num_threads)
        device = torch.device("cuda" if use_gpu else "cpu")
        self.model = ray.get(model_ref).to(device).eval()
        local = resolve_data_path(dataset_dir)
        self.meta = layout.load_metadata(local, "test")
        self.arrays = {s: layout.load_set_arrays(local, "test", s, self.meta) for s in self.meta.sets}
        self.token_dtype = np.uint8 if self.meta.vocab_size <= 256 else np.int32
        self.batch_size = batch_size

    def __call__(self, item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """item: (set, start, stop) chunks, one batch of rows each; their real rows in order,
        with each row's set and chunk start (the driver scores chunk by chunk, as in-process)."""
        parts = [self._chunk(str(s), int(a), int(b)) for s, a, b in zip(item["set"], item["start"], item["stop"])]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _chunk(self, set_name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        # Padded to the full batch as PuzzleLoader pads a set's last batch: a forward pass
        # over fewer rows runs matmuls of another shape, whose float32 sums round
        # differently, and the real rows' logits would then differ from the in-process
        # (and in-training) eval in the last bits.
        batch = read_rows(self.arrays[set_name], self.meta, start, stop, pad_to=self.batch_size)
        batch_np, outputs_np = predict_real_rows(self.model, batch, stop - start)
        rows = {**batch_np, **outputs_np}
        # Compact transport: tokens fit a byte for every paper dataset; labels keep -100.
        for k in ("inputs", "preds"):
            rows[k] = rows[k].astype(self.token_dtype)
        rows["labels"] = rows["labels"].astype(np.int16 if self.meta.vocab_size < 2**15 else np.int32)
        rows["set"] = np.full(stop - start, set_name, dtype=object)
        rows["chunk_start"] = np.full(stop - start, start, dtype=np.int64)
        return rows


# This worker process's _Predictor for the run whose model is in the object store under the
# key's ObjectRef; one entry, so a process that served an earlier run drops that model.
_CPU_PREDICTOR: dict[tuple, _Predictor] = {}


def _predict_on_cpu(item: dict[str, np.ndarray], *, model_ref: Any, dataset_dir: str, num_threads: int,
                    batch_size: int) -> dict[str, np.ndarray]:
    """A Ray Data task's work item on CPU. Tasks and not actors: Ray keeps a task's worker
    process for the next task, so the model is fetched once per process and run, and a later
    run in the same session (a notebook, a sweep's evals) finds torch already imported; a
    Ray Data actor is a new process each run, which spends ~1-2 s of its CPU on importing
    ray.data and torch before its first batch (as much as 3-6 batches of a small model)."""
    key = (model_ref.hex(), dataset_dir, num_threads, batch_size)
    predictor = _CPU_PREDICTOR.get(key)
    if predictor is None:
        _CPU_PREDICTOR.clear()
        predictor = _CPU_PREDICTOR[key] = _Predictor(model_ref, dataset_dir, False, num_threads, batch_size)
    elif torch.get_num_threads() != predictor.num_threads:  # other work in this process changed it
        torch.set_num_threads(predictor.num_threads)
    return predictor(item)


def evaluate_on_ray(model: torch.nn.Module, dataset_dir: str, chunks: list[tuple[str, int, int]],
                    accumulator: EvalAccumulator, on_batch: Callable, num_workers: int, use_gpu: bool,
                    cpus_per_worker: Optional[int], batch_size: int) -> None:
    """Predict the (set, start, stop) chunks of the test split of `dataset_dir` over a pool of
    num_workers Ray Data workers (tasks on CPU, actors with one GPU each with use_gpu), and add
    each chunk's rows to `accumulator` and to on_batch(set, batch, outputs) in dataset order."""
    import ray

    from trm_ray.cluster import ray_session

    with ray_session(include_dashboard=False, logging_level="ERROR", log_to_driver=False):
        context = ray.data.DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.print_on_execution_start)
        context.execution_options.preserve_order = True  # saved outputs in dataset order
        context.print_on_execution_start = False
        policies = _without_resource_budget_backpressure(context)
        try:
            _stream(model, dataset_dir, chunks, accumulator, on_batch, num_workers, use_gpu, cpus_per_worker,
                    batch_size)
        finally:  # the caller's (a notebook's) Ray Data settings come back
            context.execution_options.preserve_order, context.print_on_execution_start = saved
            if policies is not None:
                context.set_config(*policies)


def _without_resource_budget_backpressure(context: Any) -> Optional[tuple[str, Any]]:
    """Ray Data's resource-budget backpressure holds an operator to one running work item
    until the first is done (its progress line says "backpressured:tasks(ResourceBudget)"),
    so the other workers idle through the first item, a quarter of a run. Here the pool's
    size already bounds the work in flight and the driver takes each result as it comes, so
    the policy is left out for the run. Returns (key, the setting to restore); None where
    this Ray has no such policy (it moves in Ray's internals), which changes only the speed."""
    try:
        from ray.data._internal.execution import backpressure_policy as bp

        key, budget = bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, bp.ResourceBudgetBackpressurePolicy
        policies = context.get_config(key, bp.ENABLED_BACKPRESSURE_POLICIES)
    except (ImportError, AttributeError):
        return None
    context.set_config(key, [p for p in policies if p is not budget])
    return key, policies


def _stream(model: torch.nn.Module, dataset_dir: str, chunks: list[tuple[str, int, int]], accumulator: EvalAccumulator,
            on_batch: Callable, num_workers: int, use_gpu: bool, cpus_per_worker: Optional[int],
            batch_size: int) -> None:
    import logging

    from trm_ray.cluster import quiet_ray_data_console

    import ray

    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    cpus_per_actor = cpus_per_worker or (1 if use_gpu else max(1, total_cpus // num_workers))
    num_workers = min(num_workers, len(chunks))  # more workers than work items would idle
    items = [{"set": s, "start": a, "stop": b} for s, a, b in chunks]
    # A few work items per worker, each several batches in a row: a Ray Data task costs
    # ~0.1-0.2 s of scheduling between one item and the next here (2 CPUs, both busy), a
    # tenth of the work when an item is one batch of a small model; and a few per worker
    # still keep them finishing together (contiguous, equal batch counts) and let a slow
    # or lost worker's items go elsewhere.
    num_items = min(len(items), num_workers * ITEMS_PER_WORKER)
    model_ref = ray.put(model.cpu())  # held here for the whole run (retried items re-read it)
    if use_gpu:
        # Actors on GPUs: each keeps its device and CUDA context for the whole run.
        work: dict[str, Any] = {
            "fn": _Predictor, "compute": ray.data.ActorPoolStrategy(size=num_workers), "num_gpus": 1,
            "fn_constructor_kwargs": {"model_ref": model_ref, "dataset_dir": dataset_dir, "use_gpu": True,
                                      "num_threads": cpus_per_actor, "batch_size": batch_size}}
    else:
        work = {"fn": _predict_on_cpu, "compute": ray.data.TaskPoolStrategy(size=num_workers),
                "fn_kwargs": {"model_ref": model_ref, "dataset_dir": dataset_dir, "num_threads": cpus_per_actor,
                              "batch_size": batch_size}}
    fn = work.pop("fn")
    dataset = ray.data.from_items(items, override_num_blocks=num_items).map_batches(
        fn,
        batch_size=None,  # one block = one work item
        num_cpus=cpus_per_actor,
        # the workers stage a URI dataset themselves, on nodes whose environment may not say
        # where the object store is (settings only, never credentials)
        **({"runtime_env": {"env_vars": endpoint}} if (endpoint := storage.endpoint_env()) else {}),
        **work,
    )
    quiet_ray_data_console(logging.WARNING)  # the metrics table is this command's output
    for rows in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        sets, starts = rows.pop("set"), rows.pop("chunk_start")
        # Scored chunk by chunk, in dataset order, as evaluate() scores its batches: the
        # float64 sums then add up in the same order and the metrics are equal to the bit.
        new_chunk = np.flatnonzero((sets[1:] != sets[:-1]) | (starts[1:] != starts[:-1])) + 1
        for select in np.split(np.arange(len(sets)), new_chunk):
            set_name = str(sets[select[0]])
            batch = {k: rows[k][select].astype(np.int32) for k in ("inputs", "labels", "puzzle_identifiers")}
            outputs = {k: rows[k][select] for k in ROW_OUTPUTS if k in rows}
            outputs["preds"] = outputs["preds"].astype(np.int32)
            accumulator.add(set_name, batch, outputs)
            on_batch(set_name, batch, outputs)
