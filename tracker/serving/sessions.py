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
  [Q,K]`` (each query's cycle IoU per label when the request set ``QUALITY``, else NaN),
  and ``INTENSITY``, the JSON record of the session's pixel mapping.

Pixels deeper than 8 bits: a session maps them to 8 bits with one
:class:`~sst.tracker.io.intensity.Normaliser`, chosen by its START request (``INTENSITY``;
``auto`` by default), fitted on its support and kept here with the session, so that its
later queries use the support's mapping rather than their own. A stateless request fits
its own on its supports. 8-bit pixels pass through unchanged (except under ``range``).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sst.tracker.defaults import new_session_id
from sst.tracker.engine import Engine, Frame, Session, Support
from sst.tracker.errors import (
    InputError,
    Reason,
    SessionError,
    SessionKeyError,
    SessionLimitError,
    UnknownSessionError,
)
from sst.tracker.io.intensity import Intensity, Normaliser
from sst.tracker.quality import QualityScorer
from sst.tracker.result import FrameResult
from sst.tracker.scheduler import Scheduler
from sst.tracker.serving.limits import (
    ServiceConfig,
    check_mask_work,
    check_raw_image,
    check_request,
    decode_images,
    decode_masks,
    normalise_images,
    read_images,
)
from sst.tracker.serving.wire import (
    INTENSITY,
    QUERY_IMAGES,
    SESSION_KEY,
    SUPPORT_IMAGES,
    encode_results,
)

__all__ = ["SessionManager", "Ticket", "Served", "FrameOrigin", "Outcome", "ServiceConfig",
           "Request", "encode_results",
           "decode_images", "decode_masks", "check_raw_image", "check_request",
           "read_images", "normalise_images", "new_session_id", "settled",
           "SessionLimitError", "UnknownSessionError", "SessionKeyError"]

#: Expired session IDs remembered (to answer ``session_expired`` rather than
#: ``unknown_session``), oldest first out.
_EXPIRED_KEPT = 4096


def settled(norm: Normaliser) -> bool:
    """Whether mapping with ``norm`` changes nothing in it but the dtypes it has seen
    (``range``, ``highbyte``, or ``auto`` once fitted): then any thread may use it."""
    return norm.intensity.mode != "auto" or norm.ranges is not None




@dataclass
class Request:
    """One decoded wire request. ``session_id``: the session (0 for a stateless request);
    ``start``/``end``: sequence control; ``supports``: on START (and stateless) requests;
    ``queries``: images, tracked in order (sequential) or each conditioned on the
    supports alone (``independent``; always so for stateless requests)."""

    session_id: int = 0
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
    #: The request's ``INTENSITY`` (None: not given).
    intensity: Intensity | None = None
    #: The pixel mapping its images went through: made on START and stateless requests
    #: (fitted on their supports), the session's for later ones. A later request of a
    #: session that has one and none here carries its queries as read (deep pixels in
    #: their own type): :meth:`SessionManager.admit` maps them with the session's.
    normaliser: Normaliser | None = None

    @property
    def stateless(self) -> bool:
        return self.start and self.end and self.independent


class Outcome(NamedTuple):
    """What a finished request is answered: the session's labels, a result per query (in
    query order) and, when asked for, the ``[Q,K]`` quality scores."""

    labels: list[int]
    results: list[FrameResult | None]
    quality: np.ndarray | None


@dataclass(eq=False)
class Served:
    """One session as the server holds it: the core :class:`Session` (bank, labels,
    clock) and what only serving needs: its supports (kept for quality and re-priming),
    its key, its pixel mapping, its quality scorer, and how many of its requests are
    still running. Live sessions are kept by ID, one record each; a stateless request
    has one of its own, kept by nobody."""

    session: Session
    supports: list[Support]
    key: bytes = b""
    normaliser: Normaliser | None = None
    #: The quality scorer (the supports encoded once), made on first use.
    scorer: QualityScorer | None = None
    #: Its requests admitted and not yet answered (a busy session never expires).
    busy: int = 0


@dataclass(eq=False)
class Ticket:
    """One admitted request on its way through the scheduler: its session, its results
    as they come, and ``token`` (whatever the front end needs to answer it)."""

    request: Request
    served: Served
    token: Any = None
    results: list[FrameResult | None] = field(default_factory=list)
    pending: int = 0
    error: Exception | None = None
    #: Quality: the reverse passes' results as they come, and what scores them.
    reverse: list[FrameResult | None] = field(default_factory=list)
    score: Callable[[Sequence[FrameResult]], list[dict[int, float]]] | None = None

    @property
    def session(self) -> Session:
        return self.served.session


@dataclass(frozen=True)
class FrameOrigin:
    """Where a queued frame's result goes (its ``Frame.tag``): query ``index`` of
    ``ticket``'s request, or its ``index``-th quality pass when ``reverse``."""

    ticket: Ticket
    index: int
    reverse: bool = False


class SessionManager:
    """Live sessions by ID, with an idle expiry and a cap, over one :class:`Engine` and
    one :class:`~sst.tracker.scheduler.Scheduler` that lives as long as the manager.

    Requests join at any time (:meth:`admit`): STARTs within the cap and stateless
    requests are primed together, and their queries join the scheduler's queues with
    those of every other request already admitted. Each :meth:`step` runs one engine
    step (the next frame of every live session plus independent frames, under the
    scheduler's caps) and returns the requests whose own frames are now all done, each
    with its outcome: a request is answered as soon as it is finished, not when the
    others admitted with it are. :meth:`run` is the whole cycle for one batch (admit,
    step until these are done). The manager's clock is the one session clock: idle
    sessions expire in :meth:`expire`, which :meth:`admit` and :meth:`step` call.
    Not thread-safe: one thread drives it (:class:`~sst.tracker.serving.loop.EngineLoop`).
    """

    def __init__(self, engine: Engine, limits: ServiceConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 scheduler: Scheduler | None = None) -> None:
        self.engine = engine
        self.limits = limits if limits is not None else ServiceConfig()
        self.clock = clock
        self.scheduler = scheduler if scheduler is not None else Scheduler.for_server(engine)
        #: The live sessions by ID, least recently started first.
        self._live: OrderedDict[int, Served] = OrderedDict()
        self._expired: OrderedDict[int, None] = OrderedDict()
        self.expired_total = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, session_id: int) -> bool:
        return session_id in self._live

    @property
    def bank_bytes(self) -> int:
        """Bytes held by every live session's memory bank."""
        return sum(s.session.bank.nbytes for s in self._live.values())

    @property
    def pending(self) -> int:
        """Frames waiting in the scheduler."""
        return len(self.scheduler)

    def expire(self, now: float | None = None) -> list[int]:
        """Drop sessions idle for longer than the limit (never one with a request still
        running); returns their IDs."""
        now = self.clock() if now is None else now
        gone = [session_id for session_id, s in self._live.items()
                if now - s.session.last_used > self.limits.idle_seconds and not s.busy]
        for session_id in gone:
            del self._live[session_id]
            self._expired[session_id] = None
            if len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)
        self.expired_total += len(gone)
        return gone

    def session(self, session_id: int) -> Session | None:
        """The live session ``session_id`` (None: not held)."""
        served = self._live.get(session_id)
        return None if served is None else served.session

    def end(self, session_id: int) -> None:
        self._live.pop(session_id, None)

    def withdraw(self, tokens: Sequence[Any]) -> None:
        """Drop the queued frames of the requests admitted with ``tokens`` (admission
        failed half-way: they are admitted again, or answered the fault)."""
        ids = {id(t) for t in tokens}
        self.scheduler.remove(lambda f: id(f.tag.ticket.token) not in ids)

    def abandon(self) -> list[Any]:
        """Drop every queued frame; the tokens of the requests they belonged to, once
        each (the server stops: they are answered that)."""
        tickets = {id(f.tag.ticket): f.tag.ticket for f in self.scheduler.remove(
            lambda f: False)}
        return [t.token for t in tickets.values()]

    def normaliser(self, session_id: int) -> Normaliser | None:
        """The pixel mapping of session ``session_id`` (None: not held, or started without).
        Safe from another thread (a dict read); a decoding thread may map a later
        request's queries with it when it is :func:`settled`."""
        served = self._live.get(session_id)
        return None if served is None else served.normaliser

    def label_count(self, session_id: int) -> int:
        """Labels of session ``session_id`` (0: not held). Safe from another thread (a dict
        read): a decoding thread checks a later request's mask making with it."""
        served = self._live.get(session_id)
        return 0 if served is None else len(served.session.labels)

    def _mask_work(self, req: Request, labels: int) -> Exception | None:
        """The refusal of a request whose masks would cost more than ``max_label_pixels``
        (its queries' pixels x ``labels``), if so."""
        pixels = sum(int(q.shape[0]) * int(q.shape[1]) for q in req.queries)
        try:
            check_mask_work(pixels, labels, self.limits, QUERY_IMAGES)
        except InputError as exc:
            return exc
        return None

    def _normalise(self, req: Request) -> Exception | None:
        """Map a later request's queries with its session's mapping (refusing an
        ``INTENSITY`` other than the session's); the error, if any."""
        served = self._live.get(req.session_id)
        norm = None if served is None else served.normaliser
        if norm is None or req.normaliser is norm:
            return None
        if req.normaliser is not None:  # mapped while decoding, by a mapping now replaced
            return SessionError(f"session {req.session_id} was started again while this request "
                                f"was decoded; send it again")
        if req.intensity is not None and req.intensity != norm.intensity:
            return InputError(INTENSITY, f"session {req.session_id} maps pixels with "
                              f"{norm.intensity} (chosen on START); this request asks for "
                              f"{req.intensity}: send INTENSITY on START only, or start a "
                              f"new session")
        try:
            req.queries = normalise_images(req.queries, QUERY_IMAGES, norm)
        except InputError as exc:
            return exc
        req.normaliser = norm
        return None

    def _owner_error(self, req: Request) -> SessionKeyError | None:
        """The error for a request on a held session whose key it does not carry."""
        served = self._live.get(req.session_id)
        if served is not None and served.key and not hmac.compare_digest(served.key,
                                                                          req.key):
            return SessionKeyError(SESSION_KEY, f"session {req.session_id} was started with a "
                                   f"key and this request does not carry it")
        return None

    def _unknown(self, session_id: int) -> UnknownSessionError:
        if session_id in self._expired:
            return UnknownSessionError(
                f"session {session_id} expired after {self.limits.idle_seconds:.0f}s idle; start "
                f"it again with its support (START)", Reason.SESSION_EXPIRED)
        return UnknownSessionError(f"unknown session {session_id}: it ended, or the server "
                                   f"restarted; start it again with its support (START)")

    def _limit_error(self, live: int) -> SessionLimitError:
        return SessionLimitError(
            f"the server holds {live} sessions, its limit "
            f"(max_sessions={self.limits.max_sessions}); end a session (send END) or wait "
            f"for idle ones to expire ({self.limits.idle_seconds:.0f}s)")

    def _start_quality(self, ticket: Ticket) -> bool:
        """Queue a finished request's quality passes (cycle IoU: each query's mask as the
        support of a reverse session over the supports) as independent frames of the
        same scheduler; False when there is nothing to queue. The session's scorer (its
        supports encoded once) is made on first use."""
        served, req = ticket.served, ticket.request
        if served.scorer is None:
            served.scorer = QualityScorer(self.engine, served.supports)
        done = [r for r in ticket.results if r is not None]
        frames, ticket.score = served.scorer.frames(
            req.queries, [r.mask for r in done], [r.features for r in done])
        ticket.reverse = [None] * len(frames)
        ticket.pending = len(frames)
        for k, f in enumerate(frames):
            f.tag = FrameOrigin(ticket, k, reverse=True)
            self.scheduler.submit(f)
        return bool(frames)

    def _quality(self, ticket: Ticket) -> np.ndarray:
        """``[Q,K]`` cycle IoU of each query's mask per label (``session.labels``)."""
        labels = ticket.session.labels
        assert ticket.score is not None
        scores = ticket.score([r for r in ticket.reverse if r is not None])
        return np.asarray([[q.get(lab, 0.0) for lab in labels] for q in scores],
                          np.float32).reshape(len(scores), len(labels))

    def admit(self, requests: Sequence[Request | Exception], tokens: Sequence[Any] = ()
              ) -> list[tuple[Any, Outcome | Exception]]:
        """Admit requests (``tokens[i]`` travels with ``requests[i]``). Returns the
        requests answered at once, ``(token, outcome or exception)``: refusals, and
        requests without queries (a START or END alone). The others are queued and come
        back from :meth:`step` when done."""
        self.expire()
        tokens = list(tokens) or [None] * len(requests)
        out: list[Any] = list(requests)
        sessions: dict[int, Served] = {}  # request index -> its session
        prime: list[int] = []
        # sessions that this batch ends without using again free their slots first
        live = len(self._live) - len({
            req.session_id for req in requests if isinstance(req, Request) and req.end
            and not req.start and not req.queries and req.session_id in self._live
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
                    labels = self.engine.labels_of(req.supports or [])
                except InputError as exc:
                    out[r] = exc
                    continue
                too_much = self._mask_work(req, len(labels))
                if too_much is not None:
                    out[r] = too_much
                    continue
                if req.stateless or req.session_id in self._live:
                    prime.append(r)
                elif live >= self.limits.max_sessions:
                    out[r] = self._limit_error(live)
                else:
                    live += 1
                    prime.append(r)
            elif req.supports:
                out[r] = InputError(SUPPORT_IMAGES, "supports are only accepted on the "
                                    "START request of a session")
            elif req.session_id not in self._live:
                out[r] = self._unknown(req.session_id)
            else:
                refused = (self._mask_work(req, len(self._live[req.session_id].session.labels))
                           or self._normalise(req))
                if refused is not None:
                    out[r] = refused
                else:
                    sessions[r] = self._live[req.session_id]
        if prime:
            try:
                opened: list[Session | InputError] = self.engine.open_sessions(
                    [requests[r].supports for r in prime],  # type: ignore[union-attr]
                    [len(requests[r].queries)  # type: ignore[union-attr]
                     if requests[r].stateless else None for r in prime])  # type: ignore
            except Exception as exc:  # priming failed: these requests, not the others
                opened = [exc] * len(prime)
            for r, res in zip(prime, opened):
                req = requests[r]
                assert isinstance(req, Request)
                if isinstance(res, Exception):
                    out[r] = res
                    continue
                served = Served(res, list(req.supports or []))
                sessions[r] = served
                if not req.stateless:
                    served.key, served.normaliser = req.key, req.normaliser
                    self._live[req.session_id] = served
                    self._live.move_to_end(req.session_id)
                    self._expired.pop(req.session_id, None)
        now = self.clock()
        answered: list[tuple[Any, Outcome | Exception]] = []
        for r, req in enumerate(requests):
            if r in sessions:
                assert isinstance(req, Request)
                served = sessions[r]
                served.session.last_used = now
                ticket = Ticket(req, served, tokens[r], [None] * len(req.queries),
                                len(req.queries))
                if not req.queries:
                    answered.append((tokens[r], self._finish(ticket)))
                    continue
                served.busy += 1
                for q, img in enumerate(req.queries):
                    self.scheduler.submit(Frame(served.session, img,
                                                independent=req.independent,
                                                tag=FrameOrigin(ticket, q),
                                                keep_features=req.quality))
            else:
                if isinstance(req, Request) and self._ends(req, out[r]):
                    self.end(req.session_id)
                answered.append((tokens[r], out[r]))
        return answered

    @staticmethod
    def _ends(req: Request, outcome: Any) -> bool:
        """END frees the session whatever else happened to the request, but not for a
        request without the session's key."""
        return req.end and not req.stateless and not isinstance(outcome, SessionKeyError)

    def _finish(self, ticket: Ticket) -> Outcome | Exception:
        req, served = ticket.request, ticket.served
        session = served.session
        outcome: Outcome | Exception
        if ticket.error is not None:
            outcome = ticket.error
        else:
            try:
                quality = None if not req.quality else self._quality(ticket) \
                    if ticket.score is not None else np.zeros((0, len(session.labels)),
                                                              np.float32)
                outcome = Outcome(session.labels, ticket.results, quality)
            except Exception as exc:
                outcome = exc
        session.last_used = self.clock()
        if req.queries:
            served.busy -= 1
        if self._ends(req, outcome) and self._live.get(req.session_id) is served:
            self.end(req.session_id)
        return outcome

    def step(self) -> list[tuple[Any, Outcome | Exception]]:
        """One engine step; returns ``(token, outcome)`` of each request it finished. A
        step that fails fails the requests of its frames (and of the later frames of
        their sessions, which depend on them); the banks stay as before the step."""
        sched = self.scheduler
        plan = sched.schedule()
        if not plan.frames:
            return []
        done: list[Ticket] = []
        try:
            out = self.engine.execute(plan)
        except Exception as exc:
            for frame in sched.fail(plan):
                ticket = frame.tag.ticket
                if ticket.error is None:
                    ticket.error = exc
                ticket.pending -= 1
                if ticket.pending == 0:
                    done.append(ticket)
            # the failed requests' frames still queued (behind other sessions) go too
            failed = {id(t) for t in done} | {id(f.tag.ticket) for f in plan.frames}
            for frame in sched.remove(lambda f: id(f.tag.ticket) not in failed):
                ticket = frame.tag.ticket
                ticket.pending -= 1
                if ticket.pending == 0 and ticket not in done:
                    done.append(ticket)
        else:
            for frame, res in sched.commit(plan, out):
                origin: FrameOrigin = frame.tag
                ticket = origin.ticket
                if origin.reverse:  # a quality pass
                    ticket.reverse[origin.index] = res
                else:
                    ticket.results[origin.index] = res
                ticket.pending -= 1
                if ticket.pending == 0:
                    done.append(ticket)
        answered = []
        for t in done:
            if t.error is None and t.request.quality and t.score is None:
                try:  # the quality passes join the queues: answered when they are done
                    if self._start_quality(t):
                        continue
                except Exception as exc:
                    t.error = exc
            answered.append((t.token, self._finish(t)))
        return answered

    def run(self, requests: Sequence[Request | Exception]) -> list[Outcome | Exception]:
        """Run one batch of requests to the end; per request ``(labels, results in query
        order, quality [Q,K] or None)`` or the exception that request gets (an exception
        passed in is passed through). Requests admitted earlier and still queued step
        along and are answered by :meth:`step` as usual."""
        mine = [object() for _ in requests]
        out: dict[int, Any] = {}
        index = {id(t): i for i, t in enumerate(mine)}
        for token, outcome in self.admit(requests, mine):
            out[index[id(token)]] = outcome
        while len(out) < len(requests) and self.pending:
            for token, outcome in self.step():
                if id(token) in index:
                    out[index[id(token)]] = outcome
        return [out[i] for i in range(len(requests))]
