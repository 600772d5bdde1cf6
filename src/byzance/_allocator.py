"""Keep the large tensors of a training round in malloc's heap (glibc on Linux).

PyTorch allocates CPU tensors with plain ``malloc``. In glibc, a block above the mmap
threshold (dynamic, at most 32 MiB on 64-bit) is a fresh ``mmap``: the kernel faults in and
zeroes every page on first touch, and ``free`` unmaps it; memory freed at the top of the heap
beyond the trim threshold is given back too. A simulator round allocates the same few
megabytes-to-tens-of-megabytes tensors every round (activations, per-worker gradients, the
(n, d) matrix of received vectors), so it paid those page faults every round: on the
Fashion-MNIST CNN round of ``benchmarks/simulator.py`` (2 cores), the honest gradients took
73 ms instead of 58-64 ms and an evaluation of the test set 1.4 s instead of 0.9 s.

``keep_large_blocks()`` sets the mmap threshold to its maximum and a large trim threshold,
so that such blocks are reused from the heap round after round. The cost is memory: up to
``TRIM_THRESHOLD`` of freed heap stays mapped. It is process-wide and idempotent; set
``BYZANCE_MALLOC=default`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

#: mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (glibc's largest accepted value on 64-bit)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: freed memory kept at the top of the heap before it is given back to the system
TRIM_THRESHOLD = 512 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def keep_large_blocks() -> bool:
    """Tune glibc malloc for repeated large allocations; True if it was done.

    A no-op (False) off Linux, with another C library, or with ``BYZANCE_MALLOC=default``.
    """
    if not sys.platform.startswith("linux") or os.environ.get("BYZANCE_MALLOC") == "default":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(ok)
