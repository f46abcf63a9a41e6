"""Process settings that make XLA:CPU training steps faster. CLIs that run steps (bench,
train) call `configure()` first thing, before JAX allocates device buffers.

Why: XLA:CPU allocates each step's temporaries (hundreds of MB for a small model) with
malloc and frees them at the end of the step. glibc serves blocks that large with fresh mmap
pages and unmaps them on free, so every step page-faults its whole working set again (a
large share of a small model's step goes to the kernel). Keeping freed
memory in the heap makes steps after the first one fault-free. No effect on results.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def configure() -> bool:
    """Tunes glibc malloc for large, recurring allocations; True if applied (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    ok = mallopt(_M_ARENA_MAX, 1)  # one heap: large blocks from any thread come from it
    ok &= mallopt(_M_MMAP_MAX, 0)  # never serve blocks with mmap (freed ones get unmapped)
    ok &= mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)  # never give the heap top back to the OS
    return bool(ok)
