"""Keep large CPU tensors' memory in the process heap instead of fresh mmaps.

glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a new
mmap and returns it to the kernel on free, so each such tensor costs a page fault per 4 KiB
page, every time it is allocated. TRM's CPU step allocates activations of exactly that size
and more over and over (hidden 512, batch 32: MLP-T's (32, 512, 512) fp32 gate is 33.5 MiB), and
benchmarks/train_step.py measured the MLP-T step at 66% of the machine's matmul rate with
glibc's defaults and 84% with these settings, the attention step at 84% and 88% (2-core CPU).

Raising the mmap and trim thresholds makes freed blocks stay in the heap for the next
allocation of that size. The cost is memory the process keeps after a free (bounded by the
trim threshold); the results are unchanged. Set TRM_RAY_HOST_MALLOC=default to leave glibc as
it is (e.g. when a tuned allocator such as jemalloc is preloaded).
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 29
ENV = "TRM_RAY_HOST_MALLOC"

_applied: bool | None = None


def keep_large_allocations_in_heap() -> bool:
    """Apply once per process; True when glibc accepted the settings."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get(ENV, "").lower() != "default" and platform.system() == "Linux" \
                and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD))) and \
                    bool(libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD)))
            except (OSError, AttributeError):  # no usable libc: keep the defaults
                _applied = False
    return _applied
