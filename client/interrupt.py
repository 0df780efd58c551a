"""SIGTERM as a clean exit: raised in the main thread like Ctrl-C, so that ``finally``
blocks and context managers run (server sessions are ended, outputs stay whole).

Exit statuses follow the shell's 128 + signal number: 130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "sigterm_raises", "exit_status", "signal_name"]

log = logging.getLogger("sst")


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def exit_status(exc: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def signal_name(exc: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` in the main thread;
    later ones are ignored while the cleanup that the first one started runs. The previous
    handler is restored on exit. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            log.warning("SIGTERM again: still ending sessions and closing files")
            return
        fired = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
