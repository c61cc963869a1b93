"""obsdb.pipeline.memory: a worker keeps freed frame-sized arrays in its heap for reuse."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: the setting is process-wide and must be seen from its start.
_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, json, sys
    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "worker":
        from obsdb.pipeline.memory import keep_freed_memory
        assert keep_freed_memory() and keep_freed_memory()
    before = libc.mallinfo2()
    frame = np.ones((2048, 2048), np.float32)  # 16 MB, as a calibrated frame's plane
    during = libc.mallinfo2()
    del frame
    after = libc.mallinfo2()
    print(json.dumps({"mapped": during.hblkhd - before.hblkhd, "heap_free_after": after.fordblks}))
""")


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_worker_serves_frame_sized_arrays_from_its_heap_and_keeps_them():
    frame_bytes = 2048 * 2048 * 4
    default = _probe("default")
    assert default["mapped"] >= frame_bytes  # glibc maps a fresh block for it, and unmaps it on free
    worker = _probe("worker")
    assert worker["mapped"] == 0
    assert worker["heap_free_after"] >= frame_bytes  # freed, kept for the next frame
