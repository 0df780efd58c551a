"""The engine loop: one thread drives the session manager for the engine's life.

Front ends (the Triton model's ``execute()``, tests, benchmarks) hand it decoded
requests with a token each and return at once; the loop admits them into the one
scheduler between steps, runs step after step while frames are pending, and answers
each request through ``answer(token, outcome)`` as soon as its own frames are done (in
the manner of the engine core of LLM servers: schedule, execute, commit, answer the
finished). While nothing is pending it waits for requests, and expires idle sessions
on the engine's own clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from sst.tracker.errors import ServerStopping
from sst.tracker.scheduler import GATHER_S
from sst.tracker.serving.memory import TRIM_AFTER_PIXELS, trim_heap
from sst.tracker.serving.sessions import Outcome, Request, SessionManager

__all__ = ["EngineLoop", "ServerStopping"]

log = logging.getLogger(__name__)


def _pixels(req: Request | Exception) -> int:
    """Decoded pixels a request brought (its queries and supports; what is not an image
    array yet, such as encoded bytes, counts nothing)."""
    if not isinstance(req, Request):
        return 0
    images = [*req.queries, *(support[0] for support in req.supports or [])]
    shapes: list[tuple[int, ...]] = [getattr(img, "shape", ()) for img in images]
    return sum(int(s[0]) * int(s[1]) for s in shapes if len(s) >= 2)


Answer = Callable[[Any, "Outcome | Exception"], None]


def _continues(outcome: object) -> bool:
    """Whether an answered request is one its client may follow with another at once."""
    return not isinstance(outcome, Exception)


def _in_order(arrived: list[tuple[Request | Exception, Any]]
              ) -> list[list[tuple[Request | Exception, Any]]]:
    """Consecutive groups of the arrivals, each holding at most one request per session:
    a session's requests are admitted in the order they came (a START before the frames
    that follow it), the rest together."""
    groups: list[list[tuple[Request | Exception, Any]]] = []
    seen: set[int] = set()
    for item in arrived:
        req = item[0]
        session_id = req.session_id if isinstance(req, Request) and not req.stateless else 0
        if not groups or (session_id and session_id in seen):
            groups.append([])
            seen = set()
        groups[-1].append(item)
        if session_id:
            seen.add(session_id)
    return groups


class EngineLoop:
    """Drives ``manager`` on its own thread; ``answer(token, outcome)`` is called on
    that thread for every submitted request, exactly once; ``after_step()`` (optional)
    after each round (metrics). ``idle_wait``: seconds between expiry checks while
    nothing is pending."""

    def __init__(self, manager: SessionManager, answer: Answer,
                 after_step: Callable[[], None] | None = None, idle_wait: float = 1.0,
                 gather_s: float = GATHER_S) -> None:
        self.manager = manager
        #: After a step answered ``n`` session requests, wait up to this long for their
        #: sessions' next requests before the next step, so that they step together
        #: (clients send a session's next frame when the last one is answered).
        self.gather_s = gather_s
        self._expect = 0
        self.answer = answer
        self.after_step = after_step
        self.idle_wait = idle_wait
        self._inbox: deque[tuple[Request | Exception, Any]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._finish_by = 0.0
        self.steps = 0
        #: Decoded pixels admitted since the heap was last trimmed, and the trims made.
        self._pixels = 0
        self.trims = 0
        self._thread = threading.Thread(target=self._run, name="sst-engine", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[Request | Exception], tokens: Sequence[Any]) -> None:
        """Queue requests for the loop (thread-safe; returns at once). Once the loop is
        stopping they are answered :class:`ServerStopping` at once, on this thread."""
        with self._cond:
            stopped = self._stopping
            if not stopped:
                self._inbox.extend(zip(requests, tokens))
                self._cond.notify()
        if stopped:
            gone = ServerStopping("the server is stopping; send the request again")
            self._send([(t, gone) for t in tokens])

    def stop(self, timeout: float = 10.0) -> None:
        """Take no more requests, finish the admitted ones within ``timeout`` seconds,
        then stop; requests still unanswered get :class:`ServerStopping` (a client
        retries it like an unavailable server)."""
        with self._cond:
            self._stopping = True
            self._finish_by = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join(timeout + 5.0)

    def _send(self, answered: list[tuple[Any, Outcome | Exception]]) -> None:
        for token, outcome in answered:
            try:
                self.answer(token, outcome)
            except Exception:  # one answer that cannot be sent must not stop the loop
                log.exception("could not answer a request")

    def _run(self) -> None:
        manager = self.manager
        while True:
            with self._cond:
                if not self._inbox and not manager.pending and not self._stopping:
                    self._cond.wait(self.idle_wait)
                if self._expect and self.gather_s > 0:
                    deadline = time.monotonic() + self.gather_s
                    while (len(self._inbox) < self._expect and not self._stopping
                           and (left := deadline - time.monotonic()) > 0):
                        self._cond.wait(left)
                    self._expect = 0
                arrived = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
            if stopping and ((not manager.pending and not arrived)
                             or time.monotonic() > self._finish_by):
                self._abandon(arrived)
                return
            # (a round of its own: what it decoded and answered is freed on return, not
            # kept alive by this frame's locals while the loop waits for the next one)
            self._round(arrived)
            del arrived
            if not manager.pending and self._pixels >= TRIM_AFTER_PIXELS:
                # a large request is done and nothing waits: give its memory back
                self._pixels = 0
                self.trims += 1
                trim_heap()

    def _round(self, arrived: list[tuple[Request | Exception, Any]]) -> None:
        manager = self.manager
        try:
            self._pixels += sum(_pixels(r) for r, _ in arrived)
            for group in _in_order(arrived):
                self._admit(group)
            if manager.pending:
                done = manager.step()
                self._send(done)
                self.steps += 1
                # the sessions answered will most likely send their next frames
                self._expect = sum(1 for _, o in done if _continues(o))
            else:
                manager.expire()
            if self.after_step is not None:
                self.after_step()
        except Exception:
            log.exception("engine loop step failed")

    def _admit(self, group: list[tuple[Request | Exception, Any]]) -> None:
        """Admit one group. Should admission itself fail (a fault, not a refusal: those
        are answers), none of the group's frames stays queued and its requests are
        admitted again one by one, so that only the faulty one is answered the error
        (once)."""
        try:
            answered = self.manager.admit([r for r, _ in group], [t for _, t in group])
        except Exception as exc:
            log.exception("admitting %d request(s) failed", len(group))
            self.manager.withdraw([t for _, t in group])
            if len(group) > 1:
                for item in group:
                    self._admit([item])
                return
            answered = [(group[0][1], exc)]
        self._send(answered)

    def _abandon(self, arrived: list[tuple[Request | Exception, Any]]) -> None:
        gone = ServerStopping("the server is stopping; send the request again")
        queued = self.manager.abandon()
        self._send([(t, gone) for _, t in arrived])
        self._send([(t, gone) for t in queued])
