"""Data parallelism for tests without Ray: `world` processes joined by a gloo group.

    result = run_data_parallel(fn, world=2, tmp_path=tmp_path)   # fn(rank, world) on every rank

    def worker(rank, ...):                                        # a rank of one's own
        with gloo_rank(rank, world, init_file):
            ...

fn must be a module-level function (the processes are spawned and import it); rank 0's return
value comes back (torch.save-able)."""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, init_file: str) -> Iterator[None]:
    """This process as `rank` of a gloo group for the block. A block that returns ends the
    process there, exit status 0: gloo's worker threads can still hold tensors after
    destroy_process_group, and freeing them while Python finalizes aborts the process now and
    then (SIGABRT, "terminate called without an active exception"), failing a test whose ranks
    all computed the right thing. A block that raises leaves as usual, so the error is reported."""
    # file:// rendezvous: a probed free TCP port can be taken again before rank 0 binds it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        yield
        dist.barrier()  # no rank tears gloo down while another still talks to it (SIGABRT)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _entry(rank: int, world: int, init_file: str, out_path: str, fn: Callable[[int, int], Any]) -> None:
    with gloo_rank(rank, world, init_file):
        result = fn(rank, world)
        if rank == 0:
            torch.save(result, out_path)


def run_data_parallel(fn: Callable[[int, int], Any], world: int, tmp_path: Path) -> Any:
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_entry, args=(world, str(tmp_path / "init"), out, fn), nprocs=world, join=True)
    return torch.load(out, weights_only=True)
