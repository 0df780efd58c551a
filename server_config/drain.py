"""What the front door knows of the sessions that pass through it, and how it drains.

The front door reads the header fields of every ``ModelInfer`` request it forwards (model,
sequence ID, START/END flags, the session's ``SESSION_KEY``) with Triton's own protobuf
classes, and keeps a table of the sessions started through it. That table serves three
purposes:

* **Drain.** Once draining, a new START (a session or a stateless request) is refused
  with UNAVAILABLE and the trailing metadata ``sst-reason: draining``: a client starts
  it again under a fresh session ID, which a proxy hashes to another replica. Frames of
  open sessions are still forwarded; sessions still open when the drain period ends are
  ended by the door itself (an END with their key, as their client would send it), and
  a later frame of one of them is answered NOT_FOUND with the same reason: its client
  primes it again elsewhere from the supports it keeps. With no sequence left open,
  tritonserver stops at once instead of waiting out its exit timeout.
* **Affinity, measured.** A frame of a session that was not started through this door
  (``sst_door_frames_total{session="unknown"}``) is a frame a proxy sent to the wrong
  replica, or one that outlived a restart.
* **Load.** ``sst_door_sessions_open`` and ``sst_door_starts_total`` are the sessions
  this replica holds and has taken.
* **Keys.** A call on the ID of a session started with a ``SESSION_KEY`` (open, or whose
  START is in flight) that does not carry that key is refused here (INVALID_ARG, reason
  ``bad_key``): an END, a re-START or a stateless request on another's ID never reaches
  Triton's sequence batcher, which would act on its flags before the engine refuses it.
  So the table changes only on a keyed call.
* **Nothing held by a failed START.** A START that fails (or is cancelled) for an ID that
  was not open leaves a sequence open in Triton's batcher; the door ends it (see
  :meth:`~sst.server_config.front_door.FrontDoor`), and it ends sessions it forgets for
  idleness, so that neither holds a sequence slot until Triton's own idle timeout.

Entries expire after the server's session idle time (the engine forgets such a session
too), so the table stays bounded. Only integer sequence IDs are tracked (the client
library's); string IDs and streaming calls are forwarded without it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import prometheus_client as prom
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from sst.tracker.errors import Reason
from sst.tracker.serving.limits import ServiceConfig
from sst.tracker.serving.wire import QUERY_IMAGES, SESSION_KEY

__all__ = ["CallInfo", "SessionTable", "parse_infer", "end_request", "DRAINING",
           "BAD_KEY"]

DRAINING = Reason.DRAINING.value
BAD_KEY = Reason.BAD_KEY.value


@dataclass(frozen=True)
class CallInfo:
    """The header of one ``ModelInfer`` request."""

    model: str
    session_id: int  # 0: not part of a sequence
    start: bool  # a new session, or a stateless request (a one-request sequence)
    end: bool
    key: bytes = b""

    @property
    def opens(self) -> bool:
        """Starts a session that stays open after this call."""
        return self.start and not self.end and self.session_id != 0


def _int_param(params: Any, name: str) -> int:
    if name not in params:  # indexing a protobuf map would add the key
        return 0
    value = params[name]
    kind = value.WhichOneof("parameter_choice")
    return int(getattr(value, kind)) if kind in ("int64_param", "uint64_param") else 0


def _bool_param(params: Any, name: str) -> bool:
    return bool(name in params and params[name].bool_param)


def parse_infer(raw: bytes) -> CallInfo | None:
    """The header of a serialized ``ModelInferRequest`` (None if it does not parse)."""
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except Exception:  # a malformed message is Triton's to refuse
        return None
    params = request.parameters
    key = b""
    for index, tensor in enumerate(request.inputs):
        if tensor.name == SESSION_KEY and index < len(request.raw_input_contents):
            try:
                values = deserialize_bytes_tensor(request.raw_input_contents[index])
            except Exception:  # the model names a malformed key
                values = np.zeros(0, object)
            key = bytes(values[0]) if len(values) else b""
    return CallInfo(request.model_name, _int_param(params, "sequence_id"),
                    _bool_param(params, "sequence_start"), _bool_param(params, "sequence_end"),
                    key)


def end_request(model: str, session_id: int, key: bytes) -> bytes:
    """A serialized END for ``session_id`` (no queries), as the client library sends it."""
    request = pb.ModelInferRequest(model_name=model)
    request.parameters["sequence_id"].int64_param = session_id
    request.parameters["sequence_start"].bool_param = False
    request.parameters["sequence_end"].bool_param = True
    request.inputs.add(name=QUERY_IMAGES, datatype="BYTES", shape=[1, 0])
    request.raw_input_contents.append(b"")
    if key:
        request.inputs.add(name=SESSION_KEY, datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(
            serialize_byte_tensor(np.array([key], dtype=object)).item())
    return request.SerializeToString()


@dataclass
class _Open:
    model: str
    key: bytes
    seen: float


class SessionTable:
    """The sessions started through one front door, its drain state and its metrics
    (a registry of its own, served on the health port). Not thread-safe: the door's
    event loop is its only user."""

    def __init__(self, idle_s: float = ServiceConfig.idle_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self.open: dict[int, _Open] = {}
        #: keys of sessions whose START is in flight (session_id -> key, count of such STARTs)
        self.starting: dict[int, tuple[bytes, int]] = {}
        #: sessions the door ended while draining: their next frame is told to move
        self.moved: set[int] = set()
        self.draining = False
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.m_starts = prom.Counter("sst_door_starts", "STARTs forwarded: sessions and "
                                     "stateless requests taken by this replica", registry=r)
        self.m_frames = prom.Counter("sst_door_frames", "requests of sessions after their "
                                     "START, by whether the session was started here",
                                     ["session"], registry=r)
        self.m_answered = prom.Counter("sst_door_answered", "calls answered without error, "
                                       "by kind (start, frame, end)", ["kind"], registry=r)
        self.m_refused = prom.Counter("sst_door_refused", "calls refused by the door",
                                      ["reason"], registry=r)
        self.m_ended = prom.Counter("sst_door_sessions_ended", "sessions ended, by whom",
                                    ["by"], registry=r)
        self.m_open = prom.Gauge("sst_door_sessions_open", "sessions open through this door",
                                 registry=r)
        self.m_draining = prom.Gauge("sst_door_draining", "1 while the replica drains",
                                     registry=r)
        for label in ("known", "unknown"):
            self.m_frames.labels(session=label)
        for kind in ("start", "frame", "end"):
            self.m_answered.labels(kind=kind)
        self.m_refused.labels(reason=DRAINING)
        self.m_refused.labels(reason=BAD_KEY)
        self.m_cleaned = prom.Counter("sst_door_sequences_ended", "sequences the door "
                                      "ended itself, by why (a failed or cancelled START, "
                                      "a session idle past the limit)", ["why"], registry=r)
        for why in ("failed_start", "idle"):
            self.m_cleaned.labels(why=why)
        for by in ("client", "drain", "expiry"):
            self.m_ended.labels(by=by)

    # -- decisions before forwarding ----------------------------------------------------

    def refusal(self, call: CallInfo) -> str | None:
        """Why ``call`` must not be forwarded: ``"start"`` (a START while draining),
        ``"moved"`` (a frame of a session the drain ended), or None."""
        if not self.draining:
            return None
        if call.start:
            self.m_refused.labels(reason=DRAINING).inc()
            return "start"
        if call.session_id in self.moved:
            self.m_refused.labels(reason=DRAINING).inc()
            return "moved"
        return None

    def key_refusal(self, call: CallInfo) -> str | None:
        """The error message (reason ``bad_key``) for a call on the ID of a keyed
        session (open, or starting) that lacks its key; None when it may pass. A
        stateless request on such an ID is refused even with the key (it would end the
        session in Triton's batcher)."""
        if call.session_id == 0:
            return None
        entry = self.open.get(call.session_id)
        key = entry.key if entry is not None else self.starting.get(call.session_id,
                                                                    (b"", 0))[0]
        if not key:
            return None
        session_id = call.session_id
        if call.start and call.end:
            why = (f"SESSION_KEY: session {session_id} is open with a key; a stateless request "
                   f"must not use its ID (send it with a fresh one)")
        elif hmac.compare_digest(key, call.key):
            return None
        else:
            why = (f"SESSION_KEY: session {session_id} was started with a key and this request "
                   f"does not carry it")
        self.m_refused.labels(reason=BAD_KEY).inc()
        return why

    def seen(self, call: CallInfo) -> None:
        """Count a call about to be forwarded."""
        if call.opens:
            key, n = self.starting.get(call.session_id, (call.key, 0))
            self.starting[call.session_id] = (key, n + 1)
        if call.start:
            return
        if call.session_id == 0:
            return
        entry = self.open.get(call.session_id)
        self.m_frames.labels(session="known" if entry is not None else "unknown").inc()
        if entry is not None:
            entry.seen = self.clock()

    # -- what the answer says -----------------------------------------------------------

    def answered(self, call: CallInfo, ok: bool, lost: bool = False) -> None:
        """Record the outcome of a forwarded call (``lost``: the server did not know its
        session)."""
        if call.opens:
            key, n = self.starting.pop(call.session_id, (b"", 1))
            if n > 1:
                self.starting[call.session_id] = (key, n - 1)
        if call.start and ok:
            self.m_starts.inc()
        if ok and call.session_id != 0:
            kind = "start" if call.start else "end" if call.end else "frame"
            self.m_answered.labels(kind=kind).inc()
        if call.opens and ok:
            self.open[call.session_id] = _Open(call.model, call.key, self.clock())
        elif call.end or lost:
            if self.open.pop(call.session_id, None) is not None:
                self.m_ended.labels(by="client").inc()
        self.m_open.set(len(self.open))

    def expire(self) -> list[tuple[int, _Open]]:
        """Forget sessions idle longer than the server's idle time; returns them (the
        door ends their sequences)."""
        now = self.clock()
        stale = [(session_id, e) for session_id, e in self.open.items()
                 if now - e.seen > self.idle_s]
        for session_id, _ in stale:
            del self.open[session_id]
            self.m_ended.labels(by="expiry").inc()
        if stale:
            self.m_open.set(len(self.open))
        return stale

    # -- drain --------------------------------------------------------------------------

    def start_draining(self) -> None:
        self.draining = True
        self.m_draining.set(1)

    def take_open(self) -> list[tuple[int, _Open]]:
        """Every open session, now marked as moved (the door ends them)."""
        taken = list(self.open.items())
        for session_id, _ in taken:
            self.moved.add(session_id)
        self.open.clear()
        self.m_open.set(0)
        self.m_ended.labels(by="drain").inc(len(taken))
        return taken
