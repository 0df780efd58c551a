"""The gRPC client library: sync :class:`Client` and :class:`AsyncClient`.

::

    client = Client()  # the default server address: sst.tracker.defaults
    session = client.open_session([support_png_bytes], [mask_png_bytes])
    result = session.segment(query_bytes_or_rgb_array)      # sequential SST, one query
    session.close()
    results = client.segment(supports, masks, queries)      # one stateless request
    results[0].random_weights   # True: the server's model is UNTRAINED, its masks meaningless

The transport is injectable (anything with :meth:`Transport.infer`), so the client is
tested without a network. Requests time out, UNAVAILABLE is retried with exponential
backoff for a bounded time, and a session the server has lost (restart, expiry) is primed
again from the support the session keeps, then the query is retried: nothing accepted is
lost. After a re-prime, tracking continues from the supports (the server lost the
earlier queries).

Every call carries the session's ID as the gRPC metadata ``sst-session`` (START to END;
a stateless request carries a fresh random one), so that a proxy in front of several
replicas can hash it and send all of a session's calls to one replica. A replica that
is draining refuses a START with UNAVAILABLE and the reason ``draining`` (trailing
metadata ``sst-reason``); the client then starts the session again under a fresh ID,
which the proxy hashes anew, after a jittered backoff (many clients refused at once do
not come back at once).

A session always ends on the server: a START that fails is followed by an END (the
server may hold the sequence slot already), and leaving ``with session:`` (normally, by
an exception or by KeyboardInterrupt), ``session.close()`` and ``client.close()`` send
END, once, best effort (one try, short timeout). :class:`AsyncClient` (``_aio.py``) has
the same semantics for asyncio.
"""

from __future__ import annotations

import io
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from sst.client.errors import ClientError, ServerUnavailable, SessionLost, convert, reason_of
from sst.tracker.defaults import DEFAULT_SERVER, TRACKER_MODEL, new_session_id
from sst.tracker.errors import REASON_TRAILER, InputError, Reason
from sst.tracker.io.intensity import Intensity
from sst.tracker.result import FrameResult
from sst.tracker.serving.limits import ServiceConfig, header_size
from sst.tracker.serving.wire import (
    GRPC_ACCESS_HEADER,
    INDEPENDENT,
    INTENSITY,
    LABELS,
    OUTPUT_NAMES,
    QUALITY,
    QUERY_IMAGES,
    SESSION_KEY,
    SUPPORT_IMAGES,
    SUPPORT_MASKS,
    decode_intensity,
    decode_results,
)

__all__ = ["Client", "ClientSession", "FrameResult", "Transport", "GrpcTransport",
           "ImageLike", "to_image_bytes", "TOKEN_HEADER", "SESSION_HEADER", "REASON_TRAILER",
           "Backoff", "refusal_reason", "new_session_id", "answer_chunks", "ANSWER_BYTES"]

log = logging.getLogger(__name__)

#: The mask bytes one answer may carry (the server's default ``max_answer_bytes``).
ANSWER_BYTES = ServiceConfig().max_answer_bytes
ImageLike = bytes | np.ndarray
#: gRPC metadata key of the access token. The server restricts inference with Triton's
#: ``inference`` API group with it (checked by its front door, Triton's way), and a
#: restricted gRPC header's key carries the prefix ``triton-grpc-protocol-``.
TOKEN_HEADER = GRPC_ACCESS_HEADER
#: gRPC metadata that names the session of a call (a proxy hashes it to pick a replica).
SESSION_HEADER = "sst-session"
DRAINING = Reason.DRAINING.value
MAX_BACKOFF = 5.0
END_TIMEOUT = 5.0


def in_session(call: Mapping[str, Any]) -> bool:
    """Whether a call's keyword arguments belong to a session: a sequence ID that is not
    a stateless request's (START and END at once, a fresh ID of its own)."""
    return bool(call.get("sequence_id")) and not (call.get("start") and call.get("end"))


def refusal_reason(exc: BaseException) -> str:
    """The machine-readable reason of a refusal (a :class:`~sst.tracker.errors.Reason`
    value), ``""`` when it carries none: a client error's own ``reason``, else what
    :func:`~sst.client.errors.reason_of` reads from a gRPC error (its ``sst-reason``
    trailing metadata, or the reason tag of its message)."""
    reason = exc.reason if isinstance(exc, ClientError) else reason_of(exc)[0]
    return reason.value if reason is not None else ""


def to_image_bytes(image: ImageLike) -> bytes:
    """Encoded bytes pass through; ``uint8`` arrays (RGB or label masks) become PNG."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


class Transport(Protocol):
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, sequence_id: int = 0,
              start: bool = False, end: bool = False, timeout: float | None = None
              ) -> dict[str, np.ndarray]:
        """Run one request; raise the transport's own errors (converted by the client)."""
        ...


_OUTPUTS = list(OUTPUT_NAMES)


def _batched(model: str, arrays: Mapping[str, np.ndarray], add: bool
             ) -> dict[str, np.ndarray]:
    """``sst_tracker`` batches requests of many sessions (its tensors have a leading
    batch axis of 1 per request); ``sst_segment``'s tensors have none."""
    if model != TRACKER_MODEL:
        return dict(arrays)
    return {k: (v[None] if add else v[0]) for k, v in arrays.items() if v is not None}


def _stateless_inputs(supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                      queries: Sequence[ImageLike], quality: bool = False,
                      intensity: str | Intensity | None = None) -> dict[str, np.ndarray]:
    """A stateless request: sent to ``sst_tracker`` as a one-request sequence whose
    queries are each conditioned on the supports alone."""
    return {**_support_inputs([to_image_bytes(s) for s in supports],
                              [to_image_bytes(m) for m in masks], intensity),
            INDEPENDENT: np.ones(1, np.uint8), **_query_inputs(queries, quality)}


def _infer_inputs(mod: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    out = []
    for name, arr in inputs.items():
        dtype = "BYTES" if arr.dtype == object else "UINT8"
        t = mod.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def channel_options(ssl: bool = False, root_certificates: str | None = None,
                    token: str | None = None) -> tuple[dict[str, Any], dict[str, str] | None]:
    """``InferenceServerClient`` keyword arguments and request headers for TLS (``ssl``,
    verified against ``root_certificates``, a PEM file, or the system's CAs) and a token."""
    ssl = ssl or root_certificates is not None
    return ({"ssl": ssl, "root_certificates": root_certificates},
            {TOKEN_HEADER: token} if token else None)


def session_headers(headers: Mapping[str, str] | None, session_id: int = 0
                    ) -> dict[str, str]:
    """``headers`` and :data:`SESSION_HEADER` naming ``session_id`` (a call outside any
    session, ``0``, gets a fresh ID of its own)."""
    return {**(headers or {}), SESSION_HEADER: str(session_id or new_session_id())}


def _outputs(model: str, res: Any) -> dict[str, np.ndarray]:
    return _batched(model, {n: res.as_numpy(n) for n in _OUTPUTS}, False)


class GrpcChannel:
    """What the sync and asyncio gRPC transports share: ``_module``'s
    ``InferenceServerClient`` for ``url`` and the request headers. ``ssl`` /
    ``root_certificates`` (a PEM file) use TLS; ``token`` is sent with every request as the
    :data:`TOKEN_HEADER` header."""

    _module: Any

    def __init__(self, url: str, *, ssl: bool = False, root_certificates: str | None = None,
                 token: str | None = None) -> None:
        self.url = url
        kwargs, self._headers = channel_options(ssl, root_certificates, token)
        self._client = self._module.InferenceServerClient(url, **kwargs)

    def _request(self, model: str, inputs: Mapping[str, np.ndarray], sequence_id: int,
                 start: bool, end: bool, timeout: float | None) -> dict[str, Any]:
        """Keyword arguments of ``InferenceServerClient.infer`` (sync and asyncio alike):
        the headers name the session (:data:`SESSION_HEADER`; a call outside any session
        gets a fresh ID of its own). No output is named: the answer has every output the
        server has, and a server older than an output (``MODEL``) still answers."""
        mod = self._module
        return dict(model_name=model, inputs=_infer_inputs(mod, _batched(model, inputs, True)),
                    outputs=None,
                    sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                    client_timeout=timeout,
                    headers=session_headers(self._headers, sequence_id))


class GrpcTransport(GrpcChannel):
    """``tritonclient.grpc`` transport (thread-safe: one channel, used concurrently)."""

    _module = grpcclient

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, sequence_id: int = 0,
              start: bool = False, end: bool = False, timeout: float | None = None
              ) -> dict[str, np.ndarray]:
        return _outputs(model, self._client.infer(
            **self._request(model, inputs, sequence_id, start, end, timeout)))

    def close(self) -> None:
        self._client.close()


class Backoff:
    """Delays between retries of one request: ``first``, then doubling up to 5 seconds,
    for as long as the next try still starts within ``budget`` seconds of the first one.
    ``clock`` is injectable so that tests do not wait.

    The one retry policy of the sync and the asyncio client (each sleeps in its own way).
    ``tenacity`` would give the same schedule, but a retry here is not a plain re-call:
    a lost session is re-primed and replayed first, which the caller's loop decides."""

    def __init__(self, first: float, budget: float, clock: Callable[[], float],
                 rng: random.Random | None = None, first_contact: str | None = None) -> None:
        self._clock = clock
        self._started = clock()
        self._give_up = self._started + budget
        self._delay = first
        self._rng = rng or random.Random()
        #: the server's address while it has never answered this client: a refused
        #: connection is then retried for FIRST_CONTACT_S only
        self._first_contact = first_contact

    def after(self, exc: Exception, in_session: bool, start: bool = False) -> float:
        """The delay before retrying a request that raised ``exc``: the error converted
        (:func:`~sst.client.errors.convert`) is raised instead when it is not a
        :class:`ServerUnavailable` or the budget is spent. A START that a draining server
        refused is not retried as it is (the same ID would reach the same replica): the
        caller starts it again under a fresh ID after :meth:`jittered`."""
        err = convert(exc, in_session=in_session)
        retry = isinstance(err, ServerUnavailable) and not (
            start and refusal_reason(exc) == DRAINING)
        delay = self.next_delay() if retry else None
        url = self._first_contact
        if url is not None and isinstance(err, ServerUnavailable) and refused_connection(exc):
            if delay is None or self._clock() + delay - self._started > FIRST_CONTACT_S:
                raise ServerUnavailable(
                    f"no server at {url} (connection refused for "
                    f"{self._clock() - self._started:.0f}s): start one with `sst serve "
                    f"--model-repository DIR`, or give --server the address of a running "
                    f"one") from None
            log.debug("no server at %s yet; trying again in %.1fs", url, delay)
            return delay
        if delay is None:
            raise err from None
        log.warning("server unavailable (%s); retrying in %.1fs", err, delay)
        return delay

    def next_delay(self) -> float | None:
        """The delay before the next try, or None when the budget is spent."""
        delay = self._delay
        if self._clock() + delay >= self._give_up:
            return None
        self._delay = min(delay * 2, MAX_BACKOFF)
        return delay

    def jittered(self) -> float | None:
        """:meth:`next_delay` drawn uniformly from its upper half ("equal jitter"): clients
        refused together spread their next tries. None when the budget is spent."""
        delay = self.next_delay()
        return None if delay is None else delay * (0.5 + 0.5 * self._rng.random())


#: While a server has never answered a client, a refused connection is retried this many
#: seconds only (a server that is not there fails fast); once it has answered, a restart
#: is waited out for the client's whole ``retry_for``.
FIRST_CONTACT_S = 5.0


def refused_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says that nothing listens at the client's own address (not a
    server's own hop behind it, which speaks of a ``unix:`` socket)."""
    text = str(exc).lower()
    return (("connection refused" in text or "dns resolution failed" in text)
            and "unix:" not in text)


def _retry_delay(backoff: Backoff, exc: Exception, rekey: Callable[[], int] | None,
                 kw: dict[str, Any]) -> float:
    """The delay before sending a call that raised ``exc`` again (``kw``: its keyword
    arguments); the error converted is raised when it is not retried. A START refused by
    a draining replica is started again under ``rekey()``'s fresh ID (set in ``kw``)
    after :meth:`Backoff.jittered`."""
    try:
        return backoff.after(exc, in_session=in_session(kw), start=bool(kw.get("start")))
    except ServerUnavailable as err:
        moving = rekey is not None and refusal_reason(err) == DRAINING
        delay = backoff.jittered() if moving else None
        if delay is None or rekey is None:
            raise
    old, kw["sequence_id"] = kw["sequence_id"], rekey()
    log.warning("session %d refused by a draining server; starting it as %d in %.1fs",
                old, kw["sequence_id"], delay)
    return delay


def _bytes_array(items: Iterable[bytes]) -> np.ndarray:
    return np.array(list(items), dtype=object)


def answer_chunks(queries: Sequence[bytes], limit: int | None = None) -> list[list[bytes]]:
    """Encoded queries in consecutive groups, each as long as the answer to it (one byte
    per pixel, from each image's header) fits ``limit`` (default :data:`ANSWER_BYTES`):
    one request per group. A query whose header cannot be read counts 0 (the server
    names what is wrong with it)."""
    if len(queries) <= 1:  # (a session's frame: one group, no header to read)
        return [list(queries)]
    limit = ANSWER_BYTES if limit is None else limit
    groups: list[list[bytes]] = [[]]
    size = 0
    for blob in queries:
        try:
            w, h = header_size(blob, QUERY_IMAGES)
        except InputError:
            w = h = 0
        if groups[-1] and size + w * h > limit:
            groups.append([])
            size = 0
        groups[-1].append(blob)
        size += w * h
    return groups


def _query_inputs(queries: Sequence[ImageLike], quality: bool = False
                  ) -> dict[str, np.ndarray]:
    """Query images, and the flag that asks for their quality scores."""
    out = {QUERY_IMAGES: _bytes_array(to_image_bytes(q) for q in queries)}
    if quality:
        out[QUALITY] = np.ones(1, np.uint8)
    return out


def _support_inputs(supports: Sequence[bytes], masks: Sequence[bytes],
                    intensity: str | Intensity | None = None) -> dict[str, np.ndarray]:
    """Supports and masks, and the mapping of their session's deep pixels (``INTENSITY``:
    checked here, sent only when given; the server's default is ``auto``)."""
    out = {SUPPORT_IMAGES: _bytes_array(supports), SUPPORT_MASKS: _bytes_array(masks)}
    if intensity is not None:
        out[INTENSITY] = _bytes_array(
            [str(Intensity.parse(intensity, field="intensity")).encode()])
    return out


def _end_inputs() -> dict[str, np.ndarray]:
    return {QUERY_IMAGES: _bytes_array([])}


def _keyed(inputs: dict[str, np.ndarray], key: bytes) -> dict[str, np.ndarray]:
    """``inputs`` with the session's secret ``SESSION_KEY`` (none when ``key`` is empty)."""
    return {**inputs, SESSION_KEY: _bytes_array([key])} if key else inputs


class Client:
    """Synchronous client. ``timeout`` is per request (seconds). While the server is
    UNAVAILABLE (down, restarting, shutting down) a request is retried with exponential
    backoff from ``backoff`` seconds (capped at 5 seconds) for up to ``retry_for`` seconds;
    ``retry_for=0`` fails at once. ``ssl``, ``root_certificates`` and ``token`` configure
    the default :class:`GrpcTransport`; ``transport``, ``clock`` and ``sleep`` are
    injectable (tests run without a network and without waiting)."""

    def __init__(self, url: str = DEFAULT_SERVER, *, timeout: float = 120.0,
                 retry_for: float = 180.0, backoff: float = 0.5,
                 transport: Transport | None = None, ssl: bool = False,
                 root_certificates: str | None = None, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff = backoff
        self.clock, self.sleep = clock, sleep
        self.rng = rng or random.Random()
        self.transport: Transport = transport or GrpcTransport(
            url, ssl=ssl, root_certificates=root_certificates, token=token)
        self._open: set[ClientSession] = set()  # ended by close()
        #: whether the server has answered this client (see FIRST_CONTACT_S)
        self.answered = False

    def _call(self, model: str, inputs: Mapping[str, np.ndarray],
              rekey: Callable[[], int] | None = None, **kw: Any) -> dict[str, np.ndarray]:
        """One request, retried while the server is unavailable. A START refused by a
        draining replica is sent again under ``rekey()``'s fresh ID after a jittered
        delay (without ``rekey`` the refusal is raised)."""
        backoff = Backoff(self.backoff, self.retry_for, self.clock, self.rng,
                          first_contact=None if self.answered else self.url)
        while True:
            try:
                out = self.transport.infer(model, inputs, timeout=self.timeout, **kw)
                self.answered = True
                return out
            except Exception as exc:
                self.answered = self.answered or not refused_connection(exc)
                self.sleep(_retry_delay(backoff, exc, rekey, kw))

    def _end(self, session_id: int, key: bytes = b"") -> None:
        """END a session: one try with a short timeout; failures are only logged (the
        server expires idle sessions anyway)."""
        try:
            self.transport.infer(TRACKER_MODEL, _keyed(_end_inputs(), key),
                                 sequence_id=session_id, end=True,
                                 timeout=min(self.timeout, END_TIMEOUT))
        except Exception as exc:
            log.debug("ending session %d: %s", session_id, convert(exc))

    def segment(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                queries: Sequence[ImageLike], quality: bool = False,
                intensity: str | Intensity | None = None) -> list[FrameResult]:
        """One stateless request: every query conditioned on the supports alone;
        ``quality`` also asks for each query's quality score; ``intensity`` maps deeper
        than 8-bit images (``auto``, ``range:LO,HI``, ``highbyte``; the server's default:
        ``auto``). Each result's ``intensity`` is the mapping the server used. Queries
        whose masks would not fit one answer go as several requests
        (:func:`answer_chunks`)."""
        sup, msk = [to_image_bytes(s) for s in supports], [to_image_bytes(m) for m in masks]
        results: list[FrameResult] = []
        for chunk in answer_chunks([to_image_bytes(q) for q in queries]):
            results += decode_results(self._call(
                TRACKER_MODEL, _stateless_inputs(sup, msk, chunk, quality, intensity),
                rekey=new_session_id, sequence_id=new_session_id(), start=True, end=True))
        return results

    def open_session(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                     intensity: str | Intensity | None = None) -> ClientSession:
        """START a session (``intensity``: its mapping of deeper than 8-bit images, see
        :meth:`segment`). If the START fails (e.g. INVALID_ARG for an empty mask), END
        is sent for its ID before the error is raised."""
        session = ClientSession(self, [to_image_bytes(s) for s in supports],
                                [to_image_bytes(m) for m in masks], intensity)
        try:
            session.prime()
        except BaseException:
            session.close()
            raise
        self._open.add(session)
        return session

    def segment_folder(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                       queries: Iterable[tuple[Any, Callable[[], ImageLike]]],
                       inflight: int = 4, batch: int = 1, quality: bool = False
                       ) -> Iterator[tuple[Any, FrameResult | ClientError]]:
        """Pipelined stateless runner: keeps ``inflight`` requests of ``batch`` queries in
        flight; yields ``(key, result or error)`` in submission order. ``queries`` yields
        ``(key, loader)`` pairs; a loader error is yielded for that key. ``quality`` asks
        for quality scores."""
        sup = [to_image_bytes(s) for s in supports]
        msk = [to_image_bytes(m) for m in masks]

        def work(chunk: list[tuple[Any, Callable[[], ImageLike]]]
                 ) -> list[tuple[Any, FrameResult | ClientError]]:
            loaded, out = [], []
            for key, load in chunk:
                try:
                    loaded.append((key, to_image_bytes(load())))
                except ClientError as exc:
                    out.append((key, exc))
                except Exception as exc:
                    out.append((key, ClientError(f"{key}: {exc}")))
            if loaded:
                try:
                    res = self.segment(sup, msk, [b for _, b in loaded], quality)
                    out += [(k, r) for (k, _), r in zip(loaded, res)]
                except ClientError as exc:
                    out += [(k, exc) for k, _ in loaded]
            return out

        with ThreadPoolExecutor(max_workers=inflight) as pool:
            pending: list[Any] = []
            chunk: list[tuple[Any, Callable[[], ImageLike]]] = []
            for item in queries:
                chunk.append(item)
                if len(chunk) == batch:
                    pending.append(pool.submit(work, chunk))
                    chunk = []
                while len(pending) > inflight:
                    yield from pending.pop(0).result()
            if chunk:
                pending.append(pool.submit(work, chunk))
            for fut in pending:
                yield from fut.result()

    def close(self) -> None:
        """END every session still open, then close the transport."""
        for session in list(self._open):
            session.close()
        close = getattr(self.transport, "close", None)
        if close:
            close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionState:
    """What the client holds of one server-side session, sync or asyncio: its supports (to
    prime the server again if the server loses it), its id, its secret key (sent with every
    request: the server refuses another) and the labels the server answered."""

    closed: bool
    reprimes: int
    #: starts refused by a draining replica and sent again under a fresh ID
    moves: int

    def __init__(self, supports: list[bytes], masks: list[bytes],
                 intensity: str | Intensity | None = None) -> None:
        self.supports = supports
        self.masks = masks
        #: The mapping asked for on START (sent again when the session is primed again).
        self.intensity_mode = (None if intensity is None
                               else Intensity.parse(intensity, field="intensity"))
        #: The server's record of the session's mapping (its ``INTENSITY`` output), as of
        #: its last answer.
        self.intensity: dict[str, Any] | None = None
        self.session_id = new_session_id()
        self.key = secrets.token_hex(16).encode()
        self.labels: list[int] = []
        self.reprimes = 0
        self.moves = 0
        self.closed = False

    def rekey(self) -> int:
        """Take a fresh session ID (a draining replica refused the START under the old
        one, which a proxy would send to the same replica again); returns it."""
        self.session_id = new_session_id()
        self.moves += 1
        return self.session_id

    def close_once(self) -> bool:
        """Mark the session closed; True only the first time (then end it on the server)."""
        first, self.closed = not self.closed, True
        return first


class ClientSession(SessionState):
    """A server-side SST session (sequential mode), re-primed if the server loses it."""

    def __init__(self, client: Client, supports: list[bytes], masks: list[bytes],
                 intensity: str | Intensity | None = None) -> None:
        super().__init__(supports, masks, intensity)
        self.client = client
        self._lock = threading.Lock()

    def prime(self) -> None:
        inputs = _keyed(_support_inputs(self.supports, self.masks, self.intensity_mode),
                        self.key)
        out = self.client._call(TRACKER_MODEL, inputs, rekey=self.rekey,
                                sequence_id=self.session_id, start=True)
        self.labels = [int(v) for v in out[LABELS]]
        self.intensity = decode_intensity(out)

    def segment(self, image: ImageLike, quality: bool = False) -> FrameResult:
        """Track one query (the next frame of this session's pseudo-video)."""
        return self.segment_many([image], quality)[0]

    def segment_many(self, images: Sequence[ImageLike], quality: bool = False
                     ) -> list[FrameResult]:
        """Track ``images`` in order; as several requests where their masks would not
        fit one answer (:func:`answer_chunks`)."""
        chunks = answer_chunks([to_image_bytes(i) for i in images])
        return [r for chunk in chunks for r in self._segment_chunk(chunk, quality)]

    def _segment_chunk(self, images: Sequence[bytes], quality: bool) -> list[FrameResult]:
        if self.closed:
            raise ClientError(f"session {self.session_id} is closed")
        inputs = _keyed(_query_inputs(images, quality), self.key)
        with self._lock:
            try:
                out = self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id)
            except SessionLost as exc:
                log.warning("session %d lost (%s); priming it again", self.session_id, exc)
                self.reprimes += 1
                self.prime()
                out = self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id)
        results = decode_results(out)
        self.intensity = decode_intensity(out)
        return results

    def close(self) -> None:
        """End the session on the server (frees its state): once, best effort. Safe to
        call twice."""
        if self.close_once():
            self.client._open.discard(self)
            self.client._end(self.session_id, self.key)

    def __enter__(self) -> ClientSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
