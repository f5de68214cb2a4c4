"""The post-training job: chunks fanned out over the cluster, their submissions merged.

    summary = run_posttrain(PosttrainOptions(checkpoint="runs/arc2/checkpoint_0100000",
                                             tasks="data/arc-agi_test_challenges.json", chunks=8,
                                             out="posttrain/arc2-test"))

Chunks are Ray tasks, not Tune trials: a chunk is a pipeline of different stages (a Ray Data
build, predictions, a Ray Train run, predictions again) on its own dataset, not one training
function over a searched space, and a task maps onto what the job needs: one retry when its
process or node is lost (the rerun resumes every finished stage from the chunk folder, and the
Ray Train run from its last checkpoint), cancellation at the time limit. Each chunk's
orchestrating task holds no CPU; the stages that compute ask for the chunk's resources
(predictions a Ray task, training the TorchTrainer's workers), and the driver keeps no more
chunks training at once than the cluster holds.

Two waves, so that --time-limit can always fall back: first every chunk's dataset and the
pretrained model's predictions (cheap: no training), then the fine-tunes. A chunk that has not
finished by the deadline is cancelled and submits the pretrained predictions.

<out>/job.json (the job's id and inputs, refused on --resume if they changed), <out>/chunks/chunk-K/
(trm_ray.posttrain.chunk), <out>/runs/<job id>-chunk-K (Ray Train runs; W&B project arc-posttrain,
group posttrain-<job id>), then <out>/submission.json and <out>/posttrain.json (scores, per-chunk
status and timings) when the job ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from trm_ray import storage
from trm_ray.errors import last_line
from trm_ray.posttrain import chunk as C
from trm_ray.posttrain.tasks import PosttrainError, TaskSet, format_scores, load_tasks, merge_submissions, \
    score_submission, split_chunks

JOB_FILE, SUMMARY_FILE = "job.json", "posttrain.json"
SUBMISSION_FILE = C.SUBMISSION_FILE  # the job's merged submission: the chunks' format and name
# What a resumed job must share with the one it continues (everything that changes results).
JOB_IDENTITY = ("checkpoint", "tasks", "subset", "chunks", "num_aug", "seed", "steps", "epochs", "train", "keep_table")
FINETUNED, FALLBACK, PLACEHOLDER = "post-trained", "pretrained (time limit)", "placeholder (time limit)"
FAILED = "pretrained (chunk failed)"
WANDB_PROJECT = "arc-posttrain"  # every job's chunks in one project, a group per job


@dataclass
class PosttrainOptions:
    checkpoint: str
    tasks: str
    out: str
    chunks: int = 1
    subset: Optional[str] = None
    solutions: Optional[str] = None
    num_aug: int = 100
    keep_table: bool = True  # False: each chunk's puzzle table holds only its own puzzles (trm_ray.posttrain.chunk)
    seed: int = 0
    steps: Optional[int] = None
    epochs: Optional[int] = None
    train: dict[str, Any] = field(default_factory=dict)  # lr, global_batch_size, warmup_fraction, seed
    resources_per_chunk: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    workers_per_chunk: int = 1
    max_concurrent: Optional[int] = None
    max_retries: int = 2
    time_limit: Optional[float] = None  # seconds for the whole job
    resume: bool = False
    wandb: bool = True
    wandb_project: Optional[str] = None
    address: Optional[str] = None

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoint"], data["tasks"] = str(self.checkpoint), str(self.tasks)
        return {k: data[k] for k in JOB_IDENTITY}


def chunk_dir(out: str, index: int) -> str:
    return storage.join(out, "chunks", f"chunk-{index}")


def run_name(job_id: str, index: int) -> str:
    """The chunk's Ray Train run (<out>/runs/<name>) and W&B run name."""
    return f"{job_id}-chunk-{index}"


# --------------------------------------------------------------------------------------------
# The Ray tasks (module level: Ray pickles them by reference)
# --------------------------------------------------------------------------------------------
def _predict(opts: PosttrainOptions, checkpoint: str, folder: str, out_file: str) -> dict[str, Any]:
    """C.predict as a Ray task with one chunk worker's resources (and as many torch threads as CPUs)."""
    import ray

    resources = opts.resources_per_chunk
    task = ray.remote(C.predict).options(
        num_cpus=float(resources.get("CPU", 1)), num_gpus=float(resources.get("GPU", 0)),
        resources={k: v for k, v in resources.items() if k not in ("CPU", "GPU")} or None, max_retries=1)
    return ray.get(task.remote(checkpoint, folder, out_file, max(1, int(resources.get("CPU", 1)))))


def _wave_one(opts: PosttrainOptions, index: int, task_set: TaskSet, names: list[str]) -> dict:
    """Dataset, base checkpoint and the pretrained predictions of one chunk."""
    import logging

    import ray

    # The job prints one line per chunk stage; Ray Data's bars and per-dataset lines from every
    # chunk would bury them (this process is the chunk's own, so its logger is ours to set).
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
    folder = chunk_dir(opts.out, index)
    info = C.prepare(folder, opts.checkpoint, task_set, names, opts.num_aug, opts.seed, keep_table=opts.keep_table)
    if not storage.is_file(storage.join(folder, C.PRETRAINED_FILE)):
        _predict(opts, storage.join(folder, C.BASE_DIR), folder, C.PRETRAINED_FILE)
    return info


def _wave_two(opts: PosttrainOptions, index: int, job_id: str, arch: Any, saved: dict[str, Any]) -> dict:
    """Fine-tune one chunk, predict with the result, commit the chunk. arch, saved: the
    checkpoint's (C.read_base, read once by the driver)."""
    folder = chunk_dir(opts.out, index)
    tracking = {"wandb": opts.wandb, "group": f"posttrain-{job_id}", "tags": ["posttrain"],
                "project": opts.wandb_project or WANDB_PROJECT}
    config = C.chunk_config(saved, arch, data_dir=storage.join(folder, C.DATA_DIR),
                            base_dir=storage.join(folder, C.BASE_DIR), run_name=run_name(job_id, index),
                            storage_path=storage.join(opts.out, "runs"),
                            budget={"steps": opts.steps, "epochs": opts.epochs}, train=opts.train,
                            tracking=tracking, resources=opts.resources_per_chunk,
                            workers=opts.workers_per_chunk, max_failures=opts.max_retries)
    started = time.time()
    trained = C.finetune(config)
    record = _predict(opts, trained["checkpoint"], folder, "finetuned.json")
    result = {**trained, "predict_s": record["seconds"], "fit": record["fit"], "started_at": started,
              "finished_at": time.time()}
    C.commit(folder, record["submission"], result)
    return result


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
def _check_out(opts: PosttrainOptions) -> str:
    """Start the job's folder (job.json) or check that --resume continues the same job; the
    job's id: <out name>-<start time>, which names its W&B group and its chunks' runs (W&B run
    ids derive from run names, so two jobs never write to the same W&B run)."""
    job_file = storage.join(opts.out, JOB_FILE)
    try:
        existing = C.read_json(job_file)
        if existing is None:
            if opts.resume:
                raise PosttrainError(f"--resume: no post-training job in {opts.out!r} (no {JOB_FILE}); run without --resume")
            if storage.exists(opts.out) and storage.list_dir(opts.out):
                raise PosttrainError(f"--out {opts.out!r} exists and is not empty: choose another --out")
            job_id = f"{storage.name_of(opts.out)}-{time.strftime('%Y%m%d-%H%M%S')}"
            storage.write_text(job_file, json.dumps({"job_id": job_id, **opts.identity()}, indent=2, sort_keys=True))
            return job_id
        if not opts.resume:
            raise PosttrainError(f"--out {opts.out!r} holds a post-training job: continue it with --resume, "
                                 f"or choose another --out")
        changed = [k for k in JOB_IDENTITY if existing.get(k) != opts.identity()[k]]
        if changed:
            raise PosttrainError(f"--resume {opts.out!r}: the job was started with other {', '.join(changed)}; "
                                 f"resume with the same options or choose another --out")
        return str(existing.get("job_id") or storage.name_of(opts.out))
    except storage.StorageError as error:
        raise PosttrainError(f"--out {error}") from None


def _max_concurrent(opts: PosttrainOptions) -> int:
    import ray

    if opts.max_concurrent:
        return opts.max_concurrent
    total = ray.cluster_resources()
    fits = [total.get(k, 0) // (v * opts.workers_per_chunk) for k, v in opts.resources_per_chunk.items() if v > 0]
    return max(1, int(min(fits))) if fits else 1


def _fan_out(keys: list[int], submit: Callable[[int], Any], limit: int, deadline: Optional[float],
             on_done: Callable[[int, Any], None]) -> list[int]:
    """submit(k) for every key, at most `limit` running at once, on_done(k, ref) as each one
    finishes; at the deadline, what still runs is cancelled (its processes killed). Returns the
    keys that did not finish."""
    import ray

    queue, running = list(keys), {}
    try:
        while queue or running:
            if deadline is not None and time.time() >= deadline:
                break
            while queue and len(running) < limit:
                k = queue.pop(0)
                running[submit(k)] = k
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            done, _ = ray.wait(list(running), num_returns=1, timeout=timeout)
            for ref in done:
                on_done(running.pop(ref), ref)
    finally:  # the deadline, or an error on_done raised: nothing keeps running behind it
        for ref in running:
            ray.cancel(ref, force=True, recursive=True)
    return [*running.values(), *queue]


def _get(ref: Any) -> Any:
    """ray.get, with a user-fixable error (a ValueError) raised in a chunk's task re-raised as
    itself, so that it reaches the user as its one line."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ValueError):
            raise error.cause from None
        raise


def run_posttrain(opts: PosttrainOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or --resume) the job; returns what posttrain.json holds."""
    import ray

    from trm_ray.cluster import connect

    started_at = time.time()
    deadline = started_at + opts.time_limit if opts.time_limit else None
    if opts.steps is None and opts.epochs is None:
        opts.steps = 500
    task_set = load_tasks(opts.tasks, opts.subset, opts.solutions)
    chunks = split_chunks(task_set, opts.chunks)
    # A checkpoint that cannot post-train fails before anything is written; its tensors are
    # not kept (GBs with a paper-scale puzzle table), only its architecture and config.
    arch, saved = C.read_base(opts.checkpoint)[1:]
    job_id = _check_out(opts)
    log(f"trm-ray posttrain: {len(task_set.challenges)} tasks, {task_set.num_test_inputs} test inputs, "
        f"{len(chunks)} chunks -> {opts.out}")
    started_ray = connect(opts.address)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes > 1 and not storage.is_uri(opts.out):
        # Chunks run on any node and write their folders themselves.
        log(f"trm-ray posttrain: warning: --out {opts.out} is a local path and the cluster has {nodes} nodes: "
            f"it must be a filesystem every node shares, else use a URI (s3://..., gs://...)")
    failed: set[int] = set()  # retries spent; every other status follows from the chunk folders
    build_s: dict[int, float] = {}
    try:
        from trm_ray.train.trainer import forwarded_env

        env = forwarded_env()
        options = {"num_cpus": 0, "max_retries": 1, "runtime_env": {"env_vars": env} if env else None}
        wave_one = ray.remote(_wave_one).options(**options)
        # A fresh process per fine-tune: Ray Train's SIGINT handler keeps a handle on each run's
        # controller actor in the process that called fit(), which would keep every finished
        # chunk's controller alive as long as a pooled worker lives.
        wave_two = ray.remote(max_calls=1)(_wave_two).options(**options)
        todo = [k for k in range(len(chunks)) if not C.finished(chunk_dir(opts.out, k))]
        for k in sorted(set(range(len(chunks))) - set(todo)):
            log(f"chunk {k}: finished before, kept")

        # ---- wave 1: datasets and pretrained predictions -----------------------------------
        limit = _max_concurrent(opts)
        task_set_ref = ray.put(task_set)  # one copy in the object store, not one per chunk

        def ready(k: int, ref: Any) -> None:
            build_s[k] = _get(ref)["build_s"]
            log(f"chunk {k}: dataset and pretrained predictions ready ({build_s[k]:.1f} s to build)")

        # Orchestrators wait on their stages without a CPU: a bound keeps 100 chunks from
        # starting 100 processes at once.
        left = _fan_out(todo, lambda k: wave_one.remote(opts, k, task_set_ref, chunks[k]), 2 * limit, deadline, ready)

        # ---- wave 2: fine-tunes, as many at once as the cluster holds ----------------------
        def trained(k: int, ref: Any) -> None:
            try:
                result = _get(ref)
            except ray.exceptions.RayError as error:  # retries spent: the chunk submits its fallback
                failed.add(k)
                log(f"chunk {k}: failed ({last_line(error)}); it submits the pretrained predictions")
                return
            before = (C.read_json(storage.join(chunk_dir(opts.out, k), C.PRETRAINED_FILE)) or {}).get("fit", {})
            after = result["fit"]
            log(f"chunk {k}: {result['steps']} steps in {result['finetune_s']:.0f} s; demonstration pairs: token "
                f"accuracy {before.get('demo_token_accuracy', float('nan')):.3f} -> {after['demo_token_accuracy']:.3f}, "
                f"exact {before.get('demo_exact_accuracy', float('nan')):.3f} -> {after['demo_exact_accuracy']:.3f}")

        def start(k: int) -> Any:
            log(f"chunk {k}: fine-tuning ({len(chunks[k])} tasks)")
            return wave_two.remote(opts, k, job_id, arch, saved)

        for k in _fan_out([k for k in todo if k not in left], start, limit, deadline, trained):
            log(f"chunk {k}: not finished at the time limit")
    finally:
        if started_ray:
            ray.shutdown()
    return _finish(opts, job_id, task_set, chunks, failed, build_s, started_at, log)


def _finish(opts: PosttrainOptions, job_id: str, task_set: TaskSet, chunks: list[list[str]], failed: set[int],
            build_s: dict[int, float], started_at: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Merge every chunk's submission (pretrained predictions where a chunk did not finish),
    score both against the solutions when there are any, write submission.json and posttrain.json."""
    finetuned, pretrained, per_chunk = {}, {}, []
    test_counts = task_set.test_counts()
    for k, names in enumerate(chunks):
        folder = chunk_dir(opts.out, k)
        base = C.read_json(storage.join(folder, C.PRETRAINED_FILE))
        if base is not None:
            pretrained.update(base["submission"])
        if C.finished(folder):
            finetuned.update(C.read_json(storage.join(folder, C.SUBMISSION_FILE)) or {})
            result = C.read_json(storage.join(folder, C.RESULT_FILE)) or {}
            status = FINETUNED
        else:
            result = {}
            status = (FAILED if k in failed else FALLBACK) if base is not None else PLACEHOLDER
        per_chunk.append({"chunk": k, "tasks": names, "status": status,
                          "run": storage.join(opts.out, "runs", run_name(job_id, k)),
                          "test_inputs": sum(test_counts[n] for n in names),
                          "fit_before": (base or {}).get("fit"), "fit_after": result.get("fit"),
                          "pretrained_predict_s": (base or {}).get("seconds"),
                          **{key: result.get(key) for key in ("steps", "finetune_s", "predict_s", "started_at", "finished_at")},
                          "build_s": build_s.get(k)})
    submission = merge_submissions(task_set, [finetuned], fallback=pretrained)
    baseline = merge_submissions(task_set, [pretrained])
    storage.write_text(storage.join(opts.out, SUBMISSION_FILE), json.dumps(submission))
    summary: dict[str, Any] = {"job_id": job_id, "wandb_group": f"posttrain-{job_id}",
                               "tasks": len(task_set.challenges), "test_inputs": task_set.num_test_inputs,
                               "chunks": per_chunk, "seconds": round(time.time() - started_at, 3),
                               "submission": storage.join(opts.out, SUBMISSION_FILE)}
    if task_set.solutions is not None:
        rows = [("overall", score_submission(baseline, task_set.solutions), score_submission(submission, task_set.solutions))]
        for k, names in enumerate(chunks):
            rows.append((f"chunk {k}", score_submission(baseline, task_set.solutions, names),
                         score_submission(submission, task_set.solutions, names)))
        summary["scores"] = {label: {"pretrained": before, "posttrained": after} for label, before, after in rows}
        log(format_scores(rows))
    counts = {s: sum(1 for c in per_chunk if c["status"] == s) for s in (FINETUNED, FALLBACK, FAILED, PLACEHOLDER)}
    log(f"trm-ray posttrain: {', '.join(f'{n} chunk(s) {s}' for s, n in counts.items() if n)}; "
        f"submission {summary['submission']} ({summary['seconds']:.0f} s)")
    storage.write_text(storage.join(opts.out, SUMMARY_FILE), json.dumps(summary, indent=2))
    return summary


__all__ = ["PosttrainOptions", "run_posttrain", "PosttrainError", "chunk_dir", "FINETUNED", "FALLBACK", "FAILED",
           "PLACEHOLDER"]
