"""Giving freed memory back to the OS after a large request.

glibc's allocator keeps what a thread freed in that thread's arena (and the top of the
main heap) for reuse: after a request of a few hundred megapixels has been decoded,
tracked and answered on several threads, the process keeps its peak resident set
although nothing references it any more. :func:`trim_heap` asks glibc to return the
free pages of every arena (``malloc_trim(0)``); elsewhere (musl, macOS) it does
nothing. It costs a few milliseconds per GiB of heap, so the serving side calls it
only once a large amount of pixel work is done and nothing else is pending.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

__all__ = ["trim_heap", "TRIM_AFTER_PIXELS"]

log = logging.getLogger(__name__)

#: Decoded pixels handled since the last trim after which the next idle moment trims.
TRIM_AFTER_PIXELS = 50_000_000


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Return the free pages of the C heap to the OS; True when glibc released any."""
    fn = _malloc_trim()
    if fn is None:
        return False
    released = bool(fn(0))
    log.debug("malloc_trim: %s", "memory released" if released else "nothing to release")
    return released
