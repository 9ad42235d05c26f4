"""Memory the daemon frees goes back to the system (glibc's allocator on Linux).

Theory of operation: glibc serves a request of at least ``M_MMAP_THRESHOLD`` bytes with its
own ``mmap`` and unmaps it when freed; smaller ones come from the heap, whose freed memory
mostly stays with the process. The threshold starts at 128 KiB but, by default, rises to
the size of every mmapped block freed (up to 32 MiB). A round at model scale frees 13 MB
layer tensors and 8 MB chunks, after which blocks of those sizes come from the heap and
stay resident: 120–200 MB per daemon at 10 M parameters (docs/benchmarks.md, *A round
with a big model*). Setting the threshold with ``mallopt`` fixes it (the dynamic rule is
off), so every block of 1 MiB or more is returned when freed. Elsewhere (no glibc) this
does nothing.

Why 1 MiB and not lower: the ring and the transport handle 256 KiB chunks (payload,
frame, cipher text; several per chunk). At a threshold of 256 KiB each of those buffers was
mapped, faulted in page by page and unmapped again: about 3× the CPU of taking them from
the heap, where the freed ones are reused (a bounded handful of chunks stays resident, and
up to ``TRIM`` of free memory at the heap's top).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 1024 * 1024
"""Blocks this large or larger are mapped on their own and unmapped when freed."""
TRIM = 8 * 1024 * 1024
"""Free memory at the top of the heap kept, not given back (at 128 KiB, glibc's default,
a freed chunk buffer at the top went back and the next one faulted in again)."""


def return_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # a C library without mallopt (musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM))
