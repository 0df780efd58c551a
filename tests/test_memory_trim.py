"""After a large request the serving side gives freed memory back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import psutil
import pytest

from sst.tracker.serving.memory import trim_heap

BLOCK = 64 * 1024  # under glibc's mmap threshold: served from the thread's arena


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(ctypes.CDLL(name), "malloc_trim"):
        pytest.skip("not glibc: nothing keeps freed arenas, nothing to trim")
    libc = ctypes.CDLL(name)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return libc


def test_trim_heap_returns_what_a_worker_thread_freed() -> None:
    """256 MiB malloc'd, touched and freed on another thread (all but its last block,
    which pins the arena's top, as a request's buffers do) stay resident until
    trim_heap() gives them back."""
    libc = _libc()
    proc = psutil.Process()
    base = proc.memory_info().rss
    pinned: list[int] = []

    def request() -> None:
        blocks = [libc.malloc(BLOCK) for _ in range(4096)]
        for b in blocks:
            libc.memset(b, 1, BLOCK)
        pinned.append(blocks[-1])
        for b in blocks[:-1]:
            libc.free(b)

    worker = threading.Thread(target=request)
    worker.start()
    worker.join()
    try:
        kept = proc.memory_info().rss - base
        assert kept > 200 * 2**20, f"the allocator gave back the memory by itself ({kept})"
        assert trim_heap() is True
        assert proc.memory_info().rss - base < 32 * 2**20
    finally:
        libc.free(pinned[0])
