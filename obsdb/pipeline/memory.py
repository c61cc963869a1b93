"""The worker's memory allocator: freed frame-sized arrays are kept for the next frame.

Each frame's reduction and photometry allocate and free dozens of arrays of the frame's
size (16 MB for a 2048 x 2048 float32 plane) and many of a few MB (stamps, annuli).
glibc serves blocks above its mmap threshold with fresh pages from the kernel, which
zero-fills every page on first touch, and returns them on free; it raises that
threshold only as it sees blocks freed, and trims the heap's top as soon as 128 kB
are free. A worker that measures frame after frame thus pays for the same page faults
on every frame: 3–6 % of the detection-to-database time per frame on this project's
benchmark machine (``benchmarks/bench_photometry.py``). Fixing the thresholds keeps
freed blocks in the heap for reuse.

There is no such knob in a well-kept Python library: this calls glibc's ``mallopt``
through ctypes, and does nothing on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the heap's top kept for reuse before it is given back to the system.
TRIM_THRESHOLD = 512 * 1024 * 1024
#: Extra memory asked of the system whenever the heap grows.
TOP_PAD = 64 * 1024 * 1024

_applied = False


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for frame-sized arrays (once per process); True when applied."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not _applied:
        log.debug("glibc refused the allocator settings; frames are measured with its defaults")
    return _applied
