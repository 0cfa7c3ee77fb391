"""Loader processes keep the memory they free, so each clip's buffers reuse pages already mapped.

One clip's float frames are one buffer of about 7 MB (12 x 3 x 224 x 224 float32), plus the decoded and
resized uint8 frames. glibc's default malloc serves buffers of that size with a fresh ``mmap`` (or trims
them off the heap when freed), so every item touches new pages and pays a page fault per 4 KiB: on the
2-core development machine that first touch was most of the normalisation's cost (8.5 -> 1.3 ms per clip,
``benchmarks/video_input.py``). :func:`keep_freed_memory` sets glibc's mmap and trim thresholds in the calling
process so such buffers come from the heap and freed pages are reused; a process's memory then stays at
its peak, which for a loader worker is a few items. It changes no value, only where buffers live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: buffers up to this size come from the heap (glibc's own ceiling for the dynamic threshold on 64-bit)
HEAP_BUFFER_BYTES = 32 * 1024 * 1024
#: free memory at the top of the heap is returned to the system only beyond this much
KEEP_FREE_BYTES = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc reuse freed clip-sized buffers in this process; False (and a debug line) elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("no glibc mallopt here (%s): the allocator keeps its defaults", name)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BUFFER_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES))


def loader_worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: every loader worker keeps the memory it frees."""
    keep_freed_memory()
