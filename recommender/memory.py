"""glibc malloc settings for tensor work: few arenas in the server, big transient buffers kept, not re-faulted."""

from __future__ import annotations

import ctypes
import functools
import os

# From glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _mallopt(option: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(option, value))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas in a long-running threaded server; False where it does not apply.

    By default every thread that decodes pictures may get an arena of its own (8 per core), and
    their fragmentation grew the app's memory by about 23 MB a minute under 16 users; with 2 it
    levelled off (benchmarks/load.py, 180 s: +60 MB against +10 MB) and served 9% more requests.
    A MALLOC_ARENA_MAX the user set is left alone.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return _mallopt(_M_ARENA_MAX, arenas)


@functools.cache
def keep_freed_buffers(*, mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let freed tensor buffers under 32 MB be re-used from the heap; False where it does not apply.

    A CPU forward allocates and frees the same few-MB activations at every layer. glibc serves
    those with fresh mmaps, and every 4 KB page of them faults and is zeroed again: about 69k page
    faults per batch of 16 on DINOv2-small, which took the model from 27 to 21 images/s on a
    2-core CPU (and made it noisy, 17-26). Keeping them in the heap, and not trimming its top
    below 256 MB, removes that; memory held stays bounded by the forward's peak. A
    MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ the user set is left alone.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    # Both at once: setting either one turns off glibc's own adjustment of the other.
    return _mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and _mallopt(_M_TRIM_THRESHOLD, trim_threshold)
