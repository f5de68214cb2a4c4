"""Data parallelism for tests without Ray: `world` processes joined by a gloo group.

    result = run_data_parallel(fn, world=2, tmp_path=tmp_path)   # fn(rank, world) on every rank

fn must be a module-level function (the processes are spawned and import it); rank 0's return
value comes back (torch.save-able)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, out_path: str, fn: Callable[[int, int], Any]) -> None:
    # file:// rendezvous: a probed free TCP port can be taken again before rank 0 binds it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        result = fn(rank, world)
        if rank == 0:
            torch.save(result, out_path)
        dist.barrier()  # no rank tears gloo down while another still talks to it (SIGABRT)
    finally:
        dist.destroy_process_group()


def run_data_parallel(fn: Callable[[int, int], Any], world: int, tmp_path: Path) -> Any:
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_entry, args=(world, str(tmp_path / "init"), out, fn), nprocs=world, join=True)
    return torch.load(out, weights_only=True)
