"""Process-wide settings for long computations: torch threads and the memory allocator.

:func:`set_threads` sets torch's CPU threads (the CLI's ``--threads``). :func:`tune_allocator`
keeps freed memory inside the process, so that large tensors stop page-faulting on every call.

A backward pass allocates and frees tensors of many megabytes (the coefficients of every
specification row over a layer's neurons). With glibc's default settings, freed blocks of that
size go back to the operating system and the next allocation faults its pages in again, one by
one; on the 2-core development VM that cost a third of CROWN-IBP (R)'s time
(docs/performance.md). :func:`tune_allocator` raises glibc's thresholds so the memory is kept
and reused: the process's resident memory then stays near its peak instead of shrinking
between batches. It is process-wide, so the library never calls it on import; the ``relaxlab``
command line does, and scripts may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["set_threads", "tune_allocator"]

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems (32 MiB).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap kept before any is returned to the system.
TRIM_THRESHOLD = 2**30


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Ask glibc's malloc to serve blocks below ``mmap_threshold`` bytes from its heap and to keep
    up to ``trim_threshold`` bytes of freed memory instead of returning it to the system.

    :return: whether the settings took effect (``False`` off Linux/glibc, e.g. on macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1)))
    )


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch CPU threads (``None``: leave torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
