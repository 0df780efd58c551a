"""After a large request the serving side gives freed memory back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

import psutil
import pytest

from sst.export.meta import load_meta
from sst.tracker.engine import Engine
from sst.tracker.null_backend import NullBackend
from sst.tracker.serving import loop as loop_module
from sst.tracker.serving.limits import ServiceConfig
from sst.tracker.serving.loop import EngineLoop
from sst.tracker.serving.memory import trim_heap
from sst.tracker.serving.sessions import Request, SessionManager

from .synthetic import specimen

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


def test_engine_loop_trims_once_pixel_work_is_done(exported_repo, monkeypatch):
    """The loop trims when the pixels it admitted pass the threshold and nothing is
    pending (not before, and not per small request)."""
    trims: list[bool] = []
    monkeypatch.setattr(loop_module, "trim_heap", lambda: trims.append(True) or True)
    img, mask = specimen(0)  # 240 x 320: 76,800 pixels a support
    monkeypatch.setattr(loop_module, "TRIM_AFTER_PIXELS", 5 * img.shape[0] * img.shape[1])
    mgr = SessionManager(Engine(NullBackend(load_meta(exported_repo))), ServiceConfig())
    answers: list = []
    answered = threading.Event()

    def answer(token, outcome):
        answers.append((token, outcome))
        answered.set()

    def send(req: Request, token: str) -> None:
        answered.clear()
        loop.submit([req], [token])
        assert answered.wait(60)

    loop = EngineLoop(mgr, answer, idle_wait=0.05)
    try:
        send(Request(session_id=1, start=True, end=True, independent=True, supports=[(img, mask)],
                     queries=[img]), "small")
        time.sleep(0.2)
        assert loop.trims == 0 and not trims  # 2 images: under the threshold
        send(Request(session_id=2, start=True, end=True, independent=True, supports=[(img, mask)],
                     queries=[img] * 4), "large")
        deadline = time.monotonic() + 10
        while not trims and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.trims == 1 and len(trims) == 1  # 2 + 5 images: one trim, then reset
    finally:
        loop.stop()
    outcome = dict(answers)
    assert len(outcome["small"][1]) == 1 and len(outcome["large"][1]) == 4
    assert loop.trims == 1
    # what is not an image array yet counts nothing (and does not raise in the loop)
    assert loop_module._pixels(Request(queries=[b"\x89PNG", img], supports=[(img, mask)])
                               ) == 2 * img.shape[0] * img.shape[1]
