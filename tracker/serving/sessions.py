"""Session bookkeeping and request handling for serving, independent of Triton.

The Triton orchestrator models (``model_repository/sst_tracker`` and ``sst_segment``)
are thin adapters: they turn ``pb_utils`` tensors into the plain numpy values used here
and turn :class:`~sst.tracker.errors.SSTError` into per-request error responses.

Wire format (all models):

* images: encoded PNG/JPEG bytes (``BYTES`` tensors), or one raw ``uint8 [H,W,3]`` array;
* support masks: encoded PNG label images (0 = background);
* results: label masks concatenated flat (``MASKS uint8 [sum H*W]``) with their shapes
  (``MASK_SHAPES int32 [Q,2]``), ``LABELS int32 [K]``, and per query and label
  ``OBJECT_SCORES``/``IOUS float32 [Q,K]``, ``AREAS int64 [Q,K]`` and ``QUALITY float32
  [Q,K]`` (each query's cycle IoU per label when the request set ``QUALITY``, else NaN).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sst.tracker.engine import Engine, Frame, Scheduler, Session, Support
from sst.tracker.errors import (
    InputError,
    Reason,
    SessionKeyError,
    SessionLimitError,
    UnknownSessionError,
)
from sst.tracker.quality import QualityScorer
from sst.tracker.result import FrameResult
from sst.tracker.serving.limits import (
    ServiceConfig,
    ServiceLimits,
    check_raw_image,
    check_request,
    decode_images,
    decode_masks,
)

__all__ = ["SessionManager", "ServiceConfig", "ServiceLimits", "Request", "encode_results",
           "decode_images", "decode_masks", "check_raw_image", "check_request",
           "new_session_id", "SessionLimitError", "UnknownSessionError", "SessionKeyError"]

#: Expired session IDs remembered (to answer ``session_expired`` rather than
#: ``unknown_session``), oldest first out.
_EXPIRED_KEPT = 4096


def new_session_id() -> int:
    """A random non-zero 63-bit session (correlation) ID: never sequential."""
    return secrets.randbits(63) or 1


def encode_results(labels: Sequence[int], results: Sequence[FrameResult],
                   quality: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Results of ``Q`` queries as the wire tensors described in the module docstring
    (``QUALITY`` is NaN where it was not asked for)."""
    K = len(labels)
    flat = [r.mask.astype(np.uint8).ravel() for r in results]
    return {
        "LABELS": np.asarray(labels, np.int32),
        "MASKS": np.concatenate(flat) if flat else np.zeros(0, np.uint8),
        "MASK_SHAPES": np.asarray([r.mask.shape for r in results], np.int32).reshape(-1, 2),
        "OBJECT_SCORES": np.asarray([r.object_scores for r in results],
                                    np.float32).reshape(-1, K),
        "IOUS": np.asarray([r.ious for r in results], np.float32).reshape(-1, K),
        "AREAS": np.asarray([r.areas for r in results], np.int64).reshape(-1, K),
        "QUALITY": (np.full((len(results), K), np.nan, np.float32) if quality is None
                    else np.asarray(quality, np.float32).reshape(-1, K)),
    }


@dataclass
class Request:
    """One decoded wire request. ``sid``: the session (0 for a stateless request);
    ``start``/``end``: sequence control; ``supports``: on START (and stateless) requests;
    ``queries``: images, tracked in order (sequential) or each conditioned on the
    supports alone (``independent``; always so for stateless requests)."""

    sid: int = 0
    start: bool = False
    end: bool = False
    supports: list[Support] | None = None
    queries: list[np.ndarray] = field(default_factory=list)
    independent: bool = False
    #: The session's secret: a session STARTed with a key answers only requests that
    #: carry the same key (knowing the session ID is not enough).
    key: bytes = b""
    #: Also answer each query's quality (cycle IoU per label, :mod:`sst.tracker.quality`).
    quality: bool = False

    @property
    def stateless(self) -> bool:
        return self.start and self.end and self.independent


class SessionManager:
    """Live sessions by ID, with an idle expiry and a cap, over one :class:`Engine`.

    :meth:`run` takes every request of one server batch and runs them as engine steps:
    all STARTs (and stateless requests) are primed in one batched call, then every
    session's queries are scheduled together (one frame per session per step, with the
    independent queries of stateless requests joining the same steps). Each request
    gets its own result or its own error; nothing is shared between requests but the
    steps. Not thread-safe: one server instance calls it from one thread.
    """

    def __init__(self, engine: Engine, limits: ServiceConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.limits = limits if limits is not None else ServiceConfig()
        self.clock = clock
        self._sessions: OrderedDict[int, Session] = OrderedDict()
        self._keys: dict[int, bytes] = {}
        self._expired: OrderedDict[int, None] = OrderedDict()
        self.expired_total = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: int) -> bool:
        return sid in self._sessions

    @property
    def bank_bytes(self) -> int:
        """Bytes held by every live session's memory bank."""
        return sum(s.bank.nbytes for s in self._sessions.values())

    def expire(self, now: float | None = None) -> list[int]:
        """Drop sessions idle for longer than the limit; returns their IDs."""
        now = self.clock() if now is None else now
        gone = [sid for sid, s in self._sessions.items()
                if now - s.last_used > self.limits.idle_seconds]
        for sid in gone:
            del self._sessions[sid]
            self._keys.pop(sid, None)
            self._expired[sid] = None
            if len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)
        self.expired_total += len(gone)
        return gone

    def end(self, sid: int) -> None:
        self._sessions.pop(sid, None)
        self._keys.pop(sid, None)

    def _owner_error(self, req: Request) -> SessionKeyError | None:
        """The error for a request on a held session whose key it does not carry."""
        want = self._keys.get(req.sid, b"")
        if req.sid in self._sessions and want and not hmac.compare_digest(want, req.key):
            return SessionKeyError("SESSION_KEY", f"session {req.sid} was started with a "
                                   f"key and this request does not carry it")
        return None

    def _unknown(self, sid: int) -> UnknownSessionError:
        if sid in self._expired:
            return UnknownSessionError(
                f"session {sid} expired after {self.limits.idle_seconds:.0f}s idle; start "
                f"it again with its support (START)", Reason.SESSION_EXPIRED)
        return UnknownSessionError(f"unknown session {sid}: it ended, or the server "
                                   f"restarted; start it again with its support (START)")

    def _limit_error(self, live: int) -> SessionLimitError:
        return SessionLimitError(
            f"the server holds {live} sessions, its limit "
            f"(max_sessions={self.limits.max_sessions}); end a session (send END) or wait "
            f"for idle ones to expire ({self.limits.idle_seconds:.0f}s)")

    def _quality(self, session: Session, req: Request, results: Sequence[FrameResult | None]
                 ) -> np.ndarray:
        """``[Q,K]`` cycle IoU of each query's mask per label (``session.labels``); the
        session's scorer (its supports encoded once) is made on first use."""
        assert session.supports, "every session primed here keeps its supports"
        done = [r for r in results if r is not None]
        if session.scorer is None:
            session.scorer = QualityScorer(self.engine, session.supports)
        scores = session.scorer(req.queries, [r.mask for r in done],
                                [r.features for r in done])
        return np.asarray([[q.get(lab, 0.0) for lab in session.labels] for q in scores],
                          np.float32).reshape(len(done), len(session.labels))

    def run(self, requests: Sequence[Request | Exception]
            ) -> list[tuple[list[int], list[FrameResult], np.ndarray | None] | Exception]:
        """Run one batch of requests; per request ``(labels, results in query order,
        quality [Q,K] or None)`` or the exception that request gets (an exception passed
        in is passed through)."""
        self.expire()
        out: list[Any] = list(requests)
        sessions: dict[int, Session] = {}  # request index -> its session for this batch
        # 1. Sessions to prime: STARTs within the cap, and stateless requests.
        prime: list[int] = []
        # sessions that this batch ends without using again free their slots first
        live = len(self._sessions) - len({
            req.sid for req in requests if isinstance(req, Request) and req.end
            and not req.start and not req.queries and req.sid in self._sessions
            and self._owner_error(req) is None})
        for r, req in enumerate(requests):
            if isinstance(req, Exception):
                continue
            denied = None if req.stateless else self._owner_error(req)
            if denied is not None:
                out[r] = denied
                continue
            if req.start:
                try:  # a START that cannot succeed takes no slot
                    self.engine.labels_of(req.supports or [])
                except InputError as exc:
                    out[r] = exc
                    continue
                if req.stateless or req.sid in self._sessions:
                    prime.append(r)
                elif live >= self.limits.max_sessions:
                    out[r] = self._limit_error(live)
                else:
                    live += 1
                    prime.append(r)
            elif req.supports:
                out[r] = InputError("SUPPORT_IMAGES", "supports are only accepted on the "
                                    "START request of a session")
            elif req.sid not in self._sessions:
                out[r] = self._unknown(req.sid)
            else:
                sessions[r] = self._sessions[req.sid]
        if prime:
            opened = self.engine.open_sessions(
                [requests[r].supports for r in prime],  # type: ignore[union-attr]
                [len(requests[r].queries) if requests[r].stateless  # type: ignore[union-attr]
                 else None for r in prime])
            for r, res in zip(prime, opened):
                req = requests[r]
                assert isinstance(req, Request)
                if isinstance(res, Exception):
                    out[r] = res
                    continue
                sessions[r] = res
                res.supports = list(req.supports or [])
                if not req.stateless:
                    self._sessions[req.sid] = res
                    self._sessions.move_to_end(req.sid)
                    self._keys[req.sid] = req.key
                    self._expired.pop(req.sid, None)
        # 2. Every query of every request, scheduled as engine steps.
        sched = Scheduler(self.engine)
        results: dict[int, list[FrameResult | None]] = {}
        for r, session in sessions.items():
            req = requests[r]
            assert isinstance(req, Request)
            results[r] = [None] * len(req.queries)
            for q, img in enumerate(req.queries):
                sched.submit(Frame(session, img, independent=req.independent, tag=(r, q),
                                   keep_features=req.quality))
        try:
            for frame, res in sched.drain():
                r, q = frame.tag
                results[r][q] = res
        except Exception as exc:  # a failed step fails every request still waiting on it
            for r, per in results.items():
                if any(x is None for x in per):
                    out[r] = exc
        now = self.clock()
        for r, per in results.items():
            sessions[r].last_used = now
            if not isinstance(out[r], Exception):
                req = requests[r]
                assert isinstance(req, Request)
                try:
                    quality = self._quality(sessions[r], req, per) if req.quality else None
                except Exception as exc:
                    out[r] = exc
                    continue
                out[r] = (sessions[r].labels, per, quality)
        # 3. END frees the session, whatever else happened to the request (but not for a
        # request without the session's key).
        for r, req in enumerate(requests):
            if isinstance(req, Request) and req.end and not req.stateless \
                    and not isinstance(out[r], SessionKeyError):
                self.end(req.sid)
        return out
