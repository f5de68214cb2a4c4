"""Eval-only runs of any checkpoint (trm-ray or reference), in this process or on Ray.

    # notebook, no Ray:
    run = evaluate_checkpoint("step_50000", "data/arc1concept-aug-1000")
    run.metrics["ARC/pass@2"], run.submission

    # data-parallel batch inference on Ray (what `trm-ray eval --num-workers N` does):
    run = evaluate_checkpoint("runs/x/checkpoint_000010", "data/sudoku-extreme", num_workers=8, use_gpu=True)

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

With num_workers=0 everything runs in this process through evaluate() and PuzzleLoader.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from trm_ray import storage
from trm_ray.checkpoint import CheckpointError, load_weights_into, read_state_dict
from trm_ray.data import layout
from trm_ray.eval.arc import ARCEvaluator
from trm_ray.eval.core import ROW_OUTPUTS, EvalAccumulator, Evaluator, evaluate, predict_real_rows

SAVABLE_OUTPUTS = ("inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "q_continue_logits")
LIVE_WEIGHTS_FILE = "train_state.pt"  # in a trm-ray training checkpoint folder: {"model": live weights, ...}
DEFAULT_BATCH_SIZE = 64
NUM_PNG_EXAMPLES = 4
ITEMS_PER_WORKER = 4  # Ray Data work items per worker (see _stream)


@dataclass
class EvalRun:
    """What an eval-only run produced."""

    metrics: dict[str, float]
    submission: Optional[dict[str, Any]]  # ARC datasets only
    outputs: dict[str, dict[str, np.ndarray]]  # set -> name -> rows (the requested save_outputs)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few ARC rows for --png
    num_examples: int = 0
    seconds: float = 0.0

    @property
    def examples_per_s(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_eval_model(checkpoint: str | os.PathLike, ema: bool = True, config: Any = None) -> torch.nn.Module:
    """The model to evaluate, in eval mode on CPU.

    checkpoint: a reference weights file (with all_config.yaml beside it) or a trm-ray
    checkpoint folder (model.pt + all_config.yaml). model.pt holds the weights training
    evaluates with: the EMA weights when the run had ema=true. ema=False picks the live
    weights instead, from the folder's train_state.pt ("model" entry); a checkpoint that
    holds only one set of weights is an error with ema=False. A URI (s3://...) is fetched
    to a temporary folder first, a Hub path into the Hugging Face cache (train_state.pt only
    with ema=False)."""
    from trm_ray.checkpoint import is_remote, load_checkpoint, with_local_checkpoint

    if is_remote(checkpoint):  # a storage URI or a Hub path (bare owner/repo/... too)
        return with_local_checkpoint(checkpoint, lambda local: load_eval_model(local, ema, config),
                                     extra=() if ema else (LIVE_WEIGHTS_FILE,))
    model = load_checkpoint(checkpoint, config=config)
    if not ema:
        folder = Path(checkpoint)
        live = folder / LIVE_WEIGHTS_FILE if folder.is_dir() else None
        if live is None or not live.is_file():
            raise CheckpointError(f"--no-ema: {str(checkpoint)!r} holds one set of weights (no {LIVE_WEIGHTS_FILE} "
                                  f"with the live weights); evaluate it with --ema")
        try:
            state = torch.load(live, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise CheckpointError(f"{str(live)!r} cannot be read ({type(error).__name__}: {error})") from None
        weights = state.get("model") if isinstance(state, dict) else None
        if not isinstance(weights, dict):
            raise CheckpointError(f"{str(live)!r} has no 'model' state dict with the live weights; evaluate with --ema")
        load_weights_into(model, {k.removeprefix("_orig_mod."): v for k, v in weights.items()},
                          source=f"live weights {str(live)!r}")
    return model.eval()


def check_fits(model: torch.nn.Module, meta: layout.DatasetMetadata, dataset: str) -> None:
    """Refuse a dataset the model cannot read (vocabulary, fixed length, identifiers)."""
    inner = model.model.inner
    shape, arch = inner.shape, model.model.arch
    if meta.vocab_size != shape.vocab_size:
        raise CheckpointError(f"dataset {dataset!r} has vocab_size {meta.vocab_size}, the checkpoint "
                              f"{shape.vocab_size}: evaluate on a dataset of the kind the model was trained on")
    if (arch.pos_encodings == "learned" or arch.mlp_t) and meta.seq_len != shape.seq_len:
        raise CheckpointError(f"dataset {dataset!r} has seq_len {meta.seq_len}, the checkpoint {shape.seq_len}")
    if meta.num_puzzle_identifiers > shape.num_puzzle_identifiers:
        raise CheckpointError(f"dataset {dataset!r} has {meta.num_puzzle_identifiers} puzzle identifiers, the "
                              f"checkpoint's puzzle table {shape.num_puzzle_identifiers} rows: evaluate on the "
                              f"dataset the model was trained on")


def is_arc_dataset(dataset_dir: str | os.PathLike) -> bool:
    return layout.test_puzzles_path(dataset_dir).is_file()


# --------------------------------------------------------------------------------------------
# Collecting outputs
# --------------------------------------------------------------------------------------------
class _Collector:
    """Keeps the requested outputs per set, and a few un-augmented ARC rows for the PNG."""

    def __init__(self, save_outputs: Sequence[str], identifiers: Optional[list[str]]):
        self.save_outputs = tuple(save_outputs)
        self.identifiers = identifiers
        self.parts: dict[str, dict[str, list[np.ndarray]]] = {}
        self.examples: list[dict[str, Any]] = []
        self.num_examples = 0

    def __call__(self, set_name: str, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        self.num_examples += len(batch["inputs"])
        rows = {**batch, **outputs}
        if self.save_outputs:
            store = self.parts.setdefault(set_name, {})
            for name in self.save_outputs:
                store.setdefault(name, []).append(rows[name])
        if self.identifiers is not None and len(self.examples) < NUM_PNG_EXAMPLES:
            for i, identifier in enumerate(batch["puzzle_identifiers"]):
                name = self.identifiers[int(identifier)] if 0 < int(identifier) < len(self.identifiers) else ""
                if name and "|||" not in name and len(self.examples) < NUM_PNG_EXAMPLES:
                    self.examples.append({"name": name, **{k: np.asarray(v[i]) for k, v in rows.items()}})

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: {k: np.concatenate(v) for k, v in parts.items()} for s, parts in self.parts.items()}


# --------------------------------------------------------------------------------------------
# Ray Data path
# --------------------------------------------------------------------------------------------
class _Predictor:
    """Loads (set, start, stop) rows from the dataset and predicts them: the Ray Data actor of
    GPU runs, and the per-process state of the CPU tasks (_predict_on_cpu)."""

    def __init__(self, model_ref: Any, dataset_dir: str, use_gpu: bool, num_threads: int, batch_size: int):
        import ray

        from trm_ray.data.loader import resolve_data_path

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


def read_rows(arrays: layout.SetArrays, meta: layout.DatasetMetadata, start: int, stop: int,
              pad_to: int = 0) -> dict[str, np.ndarray]:
    """Rows [start, stop) of a test set as the loader gives them (labels -> -100, int32),
    then padding rows up to pad_to rows as the loader pads (inputs pad_id, labels -100,
    identifiers blank)."""
    examples = np.arange(start, stop)
    puzzle = np.searchsorted(arrays.puzzle_indices, examples, side="right") - 1
    labels = np.asarray(arrays.labels[start:stop]).astype(np.int32)
    if meta.ignore_label_id is not None:
        labels[labels == meta.ignore_label_id] = layout.IGNORE_LABEL_ID
    rows = {"inputs": np.asarray(arrays.inputs[start:stop]).astype(np.int32), "labels": labels,
            "puzzle_identifiers": np.asarray(arrays.puzzle_identifiers[puzzle]).astype(np.int32)}
    missing = pad_to - (stop - start)
    if missing > 0:
        fill = {"inputs": meta.pad_id, "labels": layout.IGNORE_LABEL_ID, "puzzle_identifiers": meta.blank_identifier_id}
        rows = {k: np.concatenate([v, np.full((missing, *v.shape[1:]), fill[k], dtype=np.int32)])
                for k, v in rows.items()}
    return rows


def _evaluate_on_ray(model: torch.nn.Module, dataset_dir: str, meta: layout.DatasetMetadata,
                     chunks: list[tuple[str, int, int]], accumulator: EvalAccumulator,
                     on_batch: Callable, num_workers: int, use_gpu: bool,
                     cpus_per_worker: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
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


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------
def evaluate_checkpoint(
    checkpoint: str | os.PathLike | torch.nn.Module,
    dataset: str | os.PathLike,
    *,
    ema: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    one_batch: bool = False,
    evaluators: Optional[Sequence[Evaluator]] = None,
    save_outputs: Sequence[str] = (),
    num_workers: int = 0,
    use_gpu: bool = False,
    cpus_per_worker: Optional[int] = None,
    config: Any = None,
) -> EvalRun:
    """Evaluate a checkpoint (path, or an already loaded TRMWithLoss) on a dataset's test split.

    batch_size: rows per forward pass (per worker); one_batch: only the first global batch
    (batch_size rows per worker) of each set (a smoke test; ARC/pass@K then counts the puzzles
    not reached as unsolved).
    evaluators: None adds an ARCEvaluator on ARC datasets (test_puzzles.json present).
    num_workers: 0 runs in this process (no Ray); N >= 1 runs Ray Data batch inference over
    N workers (one GPU each with use_gpu); cpus_per_worker: CPUs (and torch threads) per worker,
    None: the cluster's CPUs / N (1 with use_gpu)."""
    from trm_ray.data.loader import resolve_data_path

    unknown = sorted(set(save_outputs) - set(SAVABLE_OUTPUTS))
    if unknown:
        raise ValueError(f"save_outputs: unknown {', '.join(unknown)}; choose from {', '.join(SAVABLE_OUTPUTS)}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
    if use_gpu and not num_workers and not torch.cuda.is_available():
        raise ValueError("use_gpu: no CUDA device in this process")
    # Absolute: Ray workers (on other nodes too) resolve it themselves.
    dataset_dir = str(dataset) if layout.is_uri(dataset) else os.path.abspath(dataset)
    local = resolve_data_path(dataset_dir)
    meta = layout.load_metadata(local, "test")
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_eval_model(checkpoint, ema, config)
    check_fits(model, meta, dataset_dir)
    arc = is_arc_dataset(local)
    if evaluators is None:
        evaluators = [ARCEvaluator(dataset_dir)] if arc else []
    identifiers = layout.load_identifiers(local) if arc else None
    collector = _Collector(save_outputs, identifiers)

    start_time = time.perf_counter()
    if num_workers == 0:
        from trm_ray.data.loader import PuzzleLoader

        device = torch.device("cuda" if use_gpu else "cpu")
        model = model.to(device)
        loader = PuzzleLoader([dataset_dir], "test", global_batch_size=batch_size, to_torch=False)
        batches = _first_per_set(loader) if one_batch else loader
        metrics = evaluate(model, batches, evaluators, on_batch=collector)
    else:
        sets = {s: layout.load_set_arrays(local, "test", s, meta).num_examples for s in meta.sets}
        chunks = [(s, a, min(n, a + batch_size)) for s, n in sets.items() for a in range(0, n, batch_size)]
        if one_batch:
            # One global batch per set, as one_batch means in this process: batch_size rows on
            # each of the num_workers workers.
            chunks = [c for s in sets for c in [c for c in chunks if c[0] == s][:num_workers]]
        accumulator = EvalAccumulator(evaluators, model.model.arch.halt_max_steps)
        for s in sets:
            accumulator.add_set(s)
        if chunks:
            _evaluate_on_ray(model, dataset_dir, meta, chunks, accumulator, collector, num_workers, use_gpu,
                             cpus_per_worker, batch_size)
        metrics = accumulator.result()
    seconds = time.perf_counter() - start_time

    submission = next((e.submission() for e in evaluators if isinstance(e, ARCEvaluator)), None)
    for e in evaluators:
        if isinstance(e, ARCEvaluator) and e.num_unmatched:
            print(f"trm-ray eval: {e.num_unmatched} predictions matched no test pair of test_puzzles.json",
                  file=sys.stderr)
    return EvalRun(metrics, submission, collector.outputs(), collector.examples, collector.num_examples, seconds)


def _first_per_set(loader: Any):
    seen: set[str] = set()
    for item in loader:
        if item.set_name not in seen:
            seen.add(item.set_name)
            yield item
            if len(seen) == len(loader.set_names):
                return


# --------------------------------------------------------------------------------------------
# Reporting: table, files, PNG
# --------------------------------------------------------------------------------------------
def format_metrics(metrics: dict[str, float], wilson_lines: bool = True) -> str:
    """A table: one row per set (and `all sets`), exact accuracy with its 95% interval; then,
    with wilson_lines, the same intervals as the alphaXiv fork's eval script prints them
    (format_wilson_lines)."""
    header = f"{'set':<16} {'count':>8} {'exact_accuracy':>14} {'95% interval':>18} {'accuracy':>9} {'q_halt_acc':>10}"
    lines = [header, "-" * len(header)]
    for label, prefix in _table_rows(metrics):
        interval = f"[{metrics[f'{prefix}/exact_accuracy_low']:.4f}, {metrics[f'{prefix}/exact_accuracy_high']:.4f}]"
        lines.append(f"{label:<16} {int(metrics[f'{prefix}/count']):>8} {metrics[f'{prefix}/exact_accuracy']:>14.4f} "
                     f"{interval:>18} {metrics[f'{prefix}/accuracy']:>9.4f} {metrics[f'{prefix}/q_halt_accuracy']:>10.4f}")
    if wilson_lines and (wilson := format_wilson_lines(metrics)):
        lines += ["", wilson]
    others = {k: v for k, v in metrics.items() if not k.startswith("eval/") and k != "eval"}
    if others:
        lines.append("")
        lines += [f"{k:<16} {v:.4f}" for k, v in others.items()]
    return "\n".join(lines)


def format_wilson_lines(metrics: dict[str, float]) -> str:
    """Each set's exact accuracy interval in the words of the alphaXiv fork's eval script, so
    numbers read off its logs compare at a glance (853 of 1000 rows exactly right):

          all.exact_accuracy 95% Wilson CI [82.97%, 87.36%] (N=1000)
            -> approx: 85.16 ± 2.19 %

    N is the number of rows with a label (the proportion's own denominator). The overall line
    (`all_sets`) comes only with several sets; with one it would repeat the set's. The fork
    also prints an interval for token accuracy over seq_len * puzzles "trials"; that is left
    out: the tokens of a row are not independent trials, so such an interval would be too narrow."""
    rows = _table_rows(metrics)
    if len(rows) == 2:  # one set, then `all sets` with the same numbers
        rows = rows[:1]
    lines = []
    for label, prefix in rows:
        name = "all_sets" if prefix == "eval" else label
        low, high = metrics[f"{prefix}/exact_accuracy_low"], metrics[f"{prefix}/exact_accuracy_high"]
        lines.append(f"  {name}.exact_accuracy 95% Wilson CI [{low * 100:.2f}%, {high * 100:.2f}%] "
                     f"(N={int(metrics[f'{prefix}/count'])})")
        lines.append(f"    -> approx: {(low + high) * 50:.2f} ± {(high - low) * 50:.2f} %")
    return "\n".join(lines)


def _table_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """(label, metric prefix) per set that has metrics, then ("all sets", "eval")."""
    prefixes = sorted({k.rsplit("/", 1)[0] for k in metrics if k.startswith("eval/") and k.count("/") == 2})
    candidates = [(p.split("/", 1)[1], p) for p in prefixes] + [("all sets", "eval")]
    return [(label, prefix) for label, prefix in candidates if f"{prefix}/count" in metrics]


def write_outputs(run: EvalRun, outdir: str | os.PathLike, overwrite: bool = False,
                  png: Optional[str | os.PathLike] = None, extra: Optional[dict[str, Any]] = None) -> Path | str:
    """metrics.json, submission.json (ARC), outputs.npz (`<set>__<name>` arrays) in `outdir`,
    and the PNG at `png`; everything is written to temporary names first and renamed into
    place at the end, so a failure leaves nothing half-written. `outdir` and `png` may be URIs
    (s3://...): see _write_outputs_remote."""
    import json
    import shutil
    import uuid

    if layout.is_uri(outdir) or (png is not None and layout.is_uri(png)):
        return _write_outputs_remote(run, str(outdir), overwrite, png, extra)
    outdir = Path(outdir)
    if outdir.exists() and not overwrite:
        raise FileExistsError(f"output folder {str(outdir)!r} exists: pass --overwrite or another --outdir")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = outdir.parent / f".{outdir.name}.tmp-{uuid.uuid4().hex[:8]}"
    png_tmp = None
    staging.mkdir()
    try:
        record = {"metrics": run.metrics, "num_examples": run.num_examples, "seconds": run.seconds, **(extra or {})}
        (staging / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        if run.submission is not None:
            (staging / "submission.json").write_text(json.dumps(run.submission))
        if run.outputs:
            np.savez(staging / "outputs.npz",
                     **{f"{s}__{k}": v for s, arrays in run.outputs.items() for k, v in arrays.items()})
        if png is not None:
            png = Path(png)
            png.parent.mkdir(parents=True, exist_ok=True)
            png_tmp = png.parent / f".{png.name}.tmp-{uuid.uuid4().hex[:8]}"
            render_predictions_png(run.examples, png_tmp)
        if outdir.exists():
            shutil.rmtree(outdir)
        os.rename(staging, outdir)
        if png_tmp is not None:
            os.replace(png_tmp, png)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if png_tmp is not None:
            png_tmp.unlink(missing_ok=True)
        raise
    return outdir


def _write_outputs_remote(run: EvalRun, outdir: str, overwrite: bool, png: Optional[str | os.PathLike],
                          extra: Optional[dict[str, Any]]) -> Path | str:
    """write_outputs to a local scratch folder, then up to the store. An object store has no
    folder rename: the files go up one by one and metrics.json, which says the evaluation
    finished, goes last."""
    import tempfile

    from trm_ray import storage

    if layout.is_uri(outdir) and storage.exists(outdir) and not overwrite:
        raise FileExistsError(f"output folder {outdir!r} exists: pass --overwrite or another --outdir")
    with tempfile.TemporaryDirectory(prefix="trm-ray-eval-") as scratch:
        local_out = Path(scratch, "out") if layout.is_uri(outdir) else Path(outdir)
        local_png = Path(scratch, "png", storage.name_of(png)) if png is not None and layout.is_uri(png) else png
        write_outputs(run, local_out, overwrite=overwrite, png=local_png, extra=extra)
        if layout.is_uri(outdir):
            if overwrite:
                storage.delete_dir(outdir)  # no file of an earlier evaluation stays beside the new ones
            storage.upload_dir(local_out, outdir, skip=("metrics.json",))
            storage.write_bytes(storage.join(outdir, "metrics.json"), (local_out / "metrics.json").read_bytes())
        if png is not None and layout.is_uri(png):
            storage.write_bytes(str(png), Path(local_png).read_bytes())
    return outdir if layout.is_uri(outdir) else Path(outdir)


def render_predictions_png(examples: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """ARC rows side by side: input, truth, prediction (cropped grids, the puzzle's own colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from trm_ray.data.inspect import _ARC_COLOURS
    from trm_ray.eval.arc import crop_arc_grid

    if not examples:
        raise ValueError("--png: no un-augmented ARC test rows were evaluated; nothing to render")
    cmap = ListedColormap(_ARC_COLOURS)
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.6 * len(examples)), squeeze=False)
    for example, row in zip(examples, axes):
        truth = crop_arc_grid(np.where(example["labels"] < 0, 0, example["labels"]))
        pred = crop_arc_grid(example["preds"])
        solved = truth.shape == pred.shape and bool(np.all(truth == pred))
        for ax, grid, title in ((row[0], crop_arc_grid(example["inputs"]), "input"), (row[1], truth, "truth"),
                                (row[2], pred, "prediction" + (" (solved)" if solved else ""))):
            if grid.size:
                ax.imshow(grid, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
            ax.set_title(f"{example['name'][:30]}\n{title}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
