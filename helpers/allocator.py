"""Keep freed CPU memory in the process for reuse, instead of handing it back to the OS.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, a training
loop whose activations are tens of megabytes (the transfer study's stacked networks: 13 MB per
layer output) returns that memory to the OS after each step and takes it back, page by page,
at the next: the page faults cost as much as the arithmetic (stacked training of 8 CNNs: 0.8 s
with the defaults, 0.4 s with freed memory kept). PyTorch's performance guide suggests an
allocator such as jemalloc for this; the same effect is two settings of glibc's own allocator,
made here at run time so that nothing has to be preloaded. Elsewhere (macOS, Windows, musl)
this does nothing.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1       # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # blocks up to 32 MB (glibc's maximum) come from the reusable heap
TRIM_THRESHOLD = 1 << 30    # give memory back to the OS only when over 1 GB of it is free


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's allocator to reuse freed memory (once per process); True if it applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
