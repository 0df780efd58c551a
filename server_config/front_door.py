"""The server's public gRPC endpoint: a byte-for-byte forwarder in front of tritonserver
that refuses an oversized message before it is buffered.

Triton 2.51 accepts gRPC messages of any size: a 300 MiB request is received, copied
into the Python backend's shared-memory region of the model (which grows to hold it and
never shrinks) and only then refused by the orchestrator's own byte cap, so the server
stays 300 MiB larger until it stops. The front door listens where clients connect, with
gRPC's own ``max_receive_message_length`` set to the cap, and forwards every call to
tritonserver on a loopback port: gRPC reads a message's length from its 5-byte header
and fails the call (RESOURCE_EXHAUSTED, naming both sizes) without collecting the body.

* Every method of Triton's service is forwarded as raw bytes (unary calls, and the
  streaming ``ModelStreamInfer``), with the caller's metadata, deadline and cancellation;
  Triton's answer, or its status code and message, comes back unchanged.
* TLS, when configured, ends here, with gRPC's built-in TLS (optionally mutual); the hop
  to tritonserver is plaintext on loopback.
* It runs in the launcher's process, on its own asyncio loop and thread, and lives as
  long as the :class:`~sst.server_config.process.TritonServer` that owns it: a restart of
  tritonserver keeps the public port open (calls meanwhile get UNAVAILABLE, which
  clients retry).
* A refusal's reason, which the models put at the head of their error message
  (:func:`~sst.tracker.errors.tag`), is lifted into the trailing metadata ``sst-reason``
  and the message passes on without it.
* Tokens (with a :class:`~sst.server_config.security.TokenGate`, as ``sst serve`` runs
  it) are checked here, Triton's way, and exchanged for tritonserver's own random ones:
  no user token is on any command line, and tritonserver listens on a Unix socket in a
  folder only the server's user can open.
* Sessions: a call on a keyed session's ID without its key is refused here, before
  Triton's sequence batcher acts on its flags; a START that fails or is cancelled for an
  ID not open is followed by the door's own END, and so is a session the table forgets
  for idleness, so that no sequence slot is held by them (see
  :mod:`~sst.server_config.drain`).
* Bounded: while forwarding a request over 4 MiB would pass the in-flight byte budget,
  it waits (at most ``INFLIGHT_WAIT_S`` seconds) and is then refused (UNAVAILABLE,
  reason ``busy``, which clients retry); the heap is trimmed after a large request
  (answered or refused) as after a large answer.
* It drains (:meth:`FrontDoor.drain`): new STARTs are refused with the reason
  ``draining``, and the sessions still open after the drain period are ended by the door
  itself, so that tritonserver has no open sequence left to wait for (see
  :mod:`~sst.server_config.drain`, which also counts the sessions and frames it sees).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import grpc
import grpc.aio

from sst.server_config.drain import DRAINING, CallInfo, SessionTable, end_request, parse_infer
from sst.server_config.security import (
    GRPC_ACCESS_HEADER,
    GRPC_ADMIN_HEADER,
    GRPC_METHOD_GROUPS,
    TlsFiles,
    TokenGate,
)
from sst.tracker.errors import REASON_TRAILER, Reason, split_tag
from sst.tracker.serving.limits import ServiceConfig
from sst.tracker.serving.memory import trim_heap

__all__ = ["FrontDoor", "MESSAGE_OVERHEAD_BYTES"]

log = logging.getLogger(__name__)

#: Allowance over the request-byte cap for the rest of an inference message (tensor
#: names, shapes, parameters, framing): the cap is on the image bytes it carries.
MESSAGE_OVERHEAD_BYTES = 1 << 20
#: Metadata that gRPC sets itself and must not be forwarded as the caller's.
_NOT_FORWARDED = ("user-agent", "grpc-", ":")
_INFER = "/inference.GRPCInferenceService/ModelInfer"
_DRAIN_TRAILER = ((REASON_TRAILER, DRAINING),)
#: An answer at least this large is followed, once sent, by a heap trim (its buffers
#: would otherwise stay resident in the door's process).
TRIM_AFTER_BYTES = 32 * 2**20
#: A refused START: the client starts the session again under a fresh ID (another replica).
_REFUSED_START = ("draining: this server is shutting down and takes no new session; start it "
                  "again (the client library does so under a new session ID)")
_MOVED = ("draining: this server is shutting down and ended session {session_id}; start it again "
          "(the client library primes it again from its supports)")
_STREAM_START = ("ModelStreamInfer: a stream may carry frames of sessions and stateless "
                 "requests, not a session's START (session {session_id}): send START with "
                 "ModelInfer")
#: Large requests wait for room at most this long before they are refused as busy (the
#: client retries with backoff; a request held here holds its bytes).
INFLIGHT_WAIT_S = 1.0
#: Seconds after the last large call before its memory is given back.
RELEASE_AFTER_S = 0.5
#: Requests up to this size (a session's frame) are never held for room.
SMALL_REQUEST_BYTES = 4 * 2**20
_BUSY = ("busy: {mib:.0f} MiB of large requests are being forwarded, the server's limit; "
         "send it again shortly (the client library retries)")
_BUSY_TRAILER = ((REASON_TRAILER, Reason.BUSY.value),)
_BAD_KEY_TRAILER = ((REASON_TRAILER, Reason.BAD_KEY.value),)


def _refusal(exc: grpc.aio.AioRpcError
             ) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """tritonserver's error as the door answers it: code and message unchanged, the
    reason tag (if any) moved into the trailing metadata."""
    reason, message = split_tag(exc.details() or "")
    trailer = ((REASON_TRAILER, reason.value),) if reason is not None else ()
    return exc.code(), message, trailer


async def _pass_on(exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
    """Answer tritonserver's error unchanged (see :func:`_refusal`)."""
    await context.abort(*_refusal(exc))


def _lost(exc: grpc.aio.AioRpcError) -> bool:
    """Whether tritonserver's answer says it does not hold the call's session."""
    code, details = exc.code(), (exc.details() or "").lower()
    return code == grpc.StatusCode.NOT_FOUND or (
        code == grpc.StatusCode.INVALID_ARGUMENT and "must specify the start flag" in details)


_TOKEN_KEYS = (GRPC_ACCESS_HEADER, GRPC_ADMIN_HEADER)


async def _first(messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The first message of a stream, if it has one."""
    try:
        yield await messages.__anext__()
    except StopAsyncIteration:
        return


def _server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


class _Inflight:
    """Bytes of large requests being forwarded, bounded: a request over ``small`` bytes
    waits (up to ``wait_s``) while taking it would pass ``limit``, and is then refused.
    One request is always let through alone, whatever its size."""

    def __init__(self, limit: int, small: int, wait_s: float) -> None:
        self.limit, self.small, self.wait_s = limit, small, wait_s
        self.used = 0
        self._freed = asyncio.Event()

    async def take(self, size: int, deadline_s: float | None) -> bool:
        """Count ``size`` bytes in; False when there was no room in time."""
        if size <= self.small:
            return True
        wait = self.wait_s if deadline_s is None else min(self.wait_s, deadline_s)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while self.used and self.used + size > self.limit:
            left = until - loop.time()
            if left <= 0:
                return False
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except asyncio.TimeoutError:
                return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        if size > self.small:
            self.used -= size
            self._freed.set()


class _Forward(grpc.GenericRpcHandler):
    """Handlers that pass each call on to the door's channel, tokens checked (and
    exchanged for tritonserver's own) when the door has a :class:`TokenGate`."""

    def __init__(self, door: FrontDoor) -> None:
        self._door = door

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        name = method.rpartition("/")[2]
        if self._door.gate is not None and name not in GRPC_METHOD_GROUPS:
            return None  # not Triton's: UNIMPLEMENTED
        if name == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        if method == _INFER:
            return grpc.unary_unary_rpc_method_handler(self._infer(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    async def _metadata(self, method: str, context: grpc.aio.ServicerContext
                        ) -> tuple[tuple[str, str | bytes], ...]:
        """The caller's metadata to forward, after the token check (which aborts)."""
        given = tuple((k, v) for k, v in (context.invocation_metadata() or ())
                      if not k.startswith(_NOT_FORWARDED))
        gate = self._door.gate
        if gate is None:
            return given
        name = method.rpartition("/")[2]
        refusal = gate.refusal(name, dict(given))
        if refusal is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)
        return tuple((k, v) for k, v in given if k not in _TOKEN_KEYS) + gate.headers(name)

    def _infer(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        """``ModelInfer``: forwarded like any call, with the session table kept up to
        date; refused while draining when it starts a session or belongs to one the
        drain ended, and on a keyed session's ID without its key. A START that fails
        for an ID not open is followed by the door's own END (Triton's batcher keeps a
        sequence open for every START it saw)."""
        door = self._door
        sessions = door.sessions

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = await self._metadata(method, context)
            for session_id, entry in sessions.expire():
                door.end_later(entry.model, session_id, entry.key, "idle")
            info = parse_infer(request) or CallInfo("", 0, False, False)
            refusal = sessions.refusal(info)
            if refusal == "start":
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED_START,
                                    _DRAIN_TRAILER)
            elif refusal == "moved":
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    _MOVED.format(session_id=info.session_id), _DRAIN_TRAILER)
            bad_key = sessions.key_refusal(info)
            if bad_key is not None:
                del request  # (as for a busy refusal below)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad_key,
                                    _BAD_KEY_TRAILER)
            size = len(request)
            if size >= TRIM_AFTER_BYTES:
                # its buffers go back to the OS once it is answered, or refused
                context.add_done_callback(lambda _: door.release_soon())
            if not await door.inflight.take(size, context.time_remaining()):
                # dropped before the refusal, as below: the abort's traceback holds this
                # frame, and with it a large request's bytes, until some later collection
                del request
                await context.abort(grpc.StatusCode.UNAVAILABLE, _BUSY.format(
                    mib=door.inflight.limit / 2**20), _BUSY_TRAILER)
            was_open = info.session_id in sessions.open
            sessions.seen(info)
            ok = False
            failed: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None
            try:
                answer = await door.call(request, metadata=metadata,
                                         timeout=context.time_remaining())
                ok = True
            except grpc.aio.AioRpcError as exc:
                sessions.answered(info, ok=False, lost=_lost(exc))
                failed = _refusal(exc)
            finally:
                door.inflight.give(size)
                if not ok and failed is None and info.opens:  # cancelled: not answered
                    sessions.answered(info, ok=False)
                if not ok and info.opens and not was_open:
                    door.end_later(info.model, info.session_id, info.key, "failed_start")
            if failed is not None:
                # answered outside the except block, the request dropped first: an error
                # raised there would keep it alive through its traceback
                del request
                await context.abort(*failed)
            sessions.answered(info, ok=True)
            if len(answer) >= TRIM_AFTER_BYTES and size < TRIM_AFTER_BYTES:
                context.add_done_callback(lambda _: door.release_soon())
            return answer

        return forward

    def _unary(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        call = self._door.channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = await self._metadata(method, context)
            try:
                return await call(request, metadata=metadata, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await _pass_on(exc, context)
                raise  # abort raises; this line is not reached

        return forward

    def _stream(self, method: str) -> Callable[[Any, Any], AsyncIterator[bytes]]:
        call = self._door.channel.stream_stream(method)

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[bytes]:
            metadata = await self._metadata(method, context)
            sessions = self._door.sessions
            if sessions.draining:  # (streams are not tracked: refused whole)
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED_START,
                                    _DRAIN_TRAILER)
            refused: list[tuple[str, tuple[tuple[str, str], ...]]] = []

            def allowed(raw: bytes) -> bool:
                # Streams are not tracked, so they may not open a session (a failed
                # START would hold a sequence) nor touch a keyed one without its key.
                info = parse_infer(raw)
                if info is None:
                    return True
                bad_key = sessions.key_refusal(info)
                if bad_key is not None:
                    refused.append((bad_key, _BAD_KEY_TRAILER))
                elif info.opens:
                    refused.append((_STREAM_START.format(session_id=info.session_id), ()))
                return not refused

            messages = requests.__aiter__()
            first = [raw async for raw in _first(messages)]

            async def guarded() -> AsyncIterator[bytes]:
                for raw in first:  # (checked before the call was made)
                    yield raw
                async for raw in messages:
                    if not allowed(raw):
                        return
                    yield raw

            if not first or allowed(first[0]):
                try:
                    async for response in call(guarded(), metadata=metadata,
                                               timeout=context.time_remaining()):
                        yield response
                except grpc.aio.AioRpcError as exc:
                    if not refused:
                        await _pass_on(exc, context)
            if refused:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, *refused[0])

        return forward


class FrontDoor:
    """Forwards ``host:port`` to ``target`` (tritonserver's gRPC, on a Unix socket or
    loopback), refusing messages over ``max_message_bytes``; TLS with ``tls``. Start it,
    stop it once.

    ``gate``: the tokens are checked here and exchanged for tritonserver's own (without
    one, metadata passes as it is). ``headers`` go with the door's own calls (the ENDs
    it sends) when there is no gate. ``config``: the server's settings (sessions idle
    ``config.idle_seconds`` leave its table and are ended). Large requests in flight are
    bounded by ``max_inflight_bytes`` (default: ``max_message_bytes``: one full-size
    request at a time reaches tritonserver, whose Python backend keeps its shared memory
    at the largest batch it has held)."""

    def __init__(self, host: str, port: int, target: str, max_message_bytes: int,
                 tls: TlsFiles | None = None, headers: dict[str, str] | None = None,
                 config: ServiceConfig | None = None,
                 gate: TokenGate | None = None,
                 max_inflight_bytes: int | None = None) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, not {max_message_bytes}")
        self.host, self.port, self.target = host, port, target
        self.max_message_bytes = max_message_bytes
        self.tls = tls
        self.gate = gate
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sst-front-door",
                                        daemon=True)
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._headers: tuple[tuple[str, str], ...] = (
            gate.headers("ModelInfer") if gate is not None else tuple((headers or {}).items()))
        self._background: set[asyncio.Task[None]] = set()
        self._release: asyncio.TimerHandle | None = None
        #: sessions started through the door, its drain state and its metrics
        self.sessions = SessionTable((config or ServiceConfig()).idle_seconds)
        #: large requests being forwarded
        self.inflight = _Inflight(max_inflight_bytes or max_message_bytes,
                                  SMALL_REQUEST_BYTES, INFLIGHT_WAIT_S)

    @property
    def channel(self) -> grpc.aio.Channel:
        assert self._channel is not None, "the front door has not started"
        return self._channel

    def call(self, request: bytes, **kwargs: Any) -> Any:
        """``ModelInfer`` on tritonserver (an awaitable)."""
        return self._call(request, **kwargs)

    def release_soon(self) -> None:
        """Give the memory of large calls back, once they are gone (half a second after
        the last asked for it): a refused call's bytes stay referenced from its error's
        traceback, a cycle that only the collector breaks (8 refused requests of 60 MiB
        kept 480 MiB until a full collection); then the heap is trimmed."""
        if self._release is not None:
            self._release.cancel()

        def release() -> None:
            self._release = None
            gc.collect()
            trim_heap()

        self._release = self._loop.call_later(RELEASE_AFTER_S, release)

    def end_later(self, model: str, session_id: int, key: bytes, why: str) -> None:
        """End sequence ``session_id`` on tritonserver in the background (its key, the door's
        headers): a failed START's, or an idle session's."""
        async def end() -> None:
            try:
                await self.call(end_request(model, session_id, key), metadata=self._headers,
                                timeout=10.0)
            except grpc.aio.AioRpcError as exc:  # the model may not hold it: fine
                log.debug("ending sequence %d (%s): %s", session_id, why, exc.details())
            except asyncio.CancelledError:
                pass

        self.sessions.m_cleaned.labels(why=why).inc()
        task = self._loop.create_task(end())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _run(self, coro: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _start(self) -> None:
        options = [("grpc.max_receive_message_length", -1),
                   ("grpc.max_send_message_length", -1),
                   # tritonserver comes back within seconds of a restart: reconnect at
                   # once, not after gRPC's default backoff (1 s doubling up to 120 s)
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self._call = self._channel.unary_unary(_INFER)
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ])
        self._server.add_generic_rpc_handlers((_Forward(self),))
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.tls is not None:
            bound = self._server.add_secure_port(address, _server_credentials(self.tls))
        else:
            bound = self._server.add_insecure_port(address)
        if not bound:
            raise OSError(f"the front door cannot listen on {address}")
        await self._server.start()

    def start(self, timeout_s: float = 10.0) -> None:
        """Listen and forward (returns once listening).

        Raises:
            OSError: the address cannot be bound.
        """
        self._thread.start()
        try:
            self._run(self._start(), timeout_s)
        except BaseException:
            self.stop(grace_s=0.0)
            raise
        log.info("gRPC on %s:%d -> tritonserver %s (messages up to %.1f MiB%s)", self.host,
                 self.port, self.target, self.max_message_bytes / 2**20,
                 ", TLS" if self.tls is not None else "")

    async def _drain(self, wait_s: float, end_timeout_s: float) -> int:
        self.sessions.start_draining()
        deadline = self._loop.time() + wait_s
        while self.sessions.open and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        taken = self.sessions.take_open()
        if not taken or self._channel is None:
            return len(taken)

        async def end(session_id: int, model: str, key: bytes) -> None:
            try:
                await self.call(end_request(model, session_id, key), metadata=self._headers,
                                timeout=end_timeout_s)
            except grpc.aio.AioRpcError as exc:
                log.info("ending session %d for the drain: %s", session_id, exc.details())

        await asyncio.gather(*(end(session_id, e.model, e.key) for session_id, e in taken))
        return len(taken)

    def drain(self, wait_s: float, end_timeout_s: float = 5.0) -> int:
        """Drain: refuse new STARTs from now on, give open sessions up to ``wait_s``
        seconds to end, then end those still open (their next frame is told to move).
        Returns how many the door ended. Calls keep being forwarded until :meth:`stop`."""
        if not self._thread.is_alive():
            return 0
        ended: int = self._run(self._drain(wait_s, end_timeout_s), wait_s + end_timeout_s + 5)
        log.info("drained: new sessions refused; %d open session(s) ended by the server", ended)
        return ended

    async def _stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self._channel is not None:
            await self._channel.close()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking calls; those in flight get up to ``grace_s`` seconds to finish
        (it returns as soon as they have)."""
        if self._thread.is_alive():
            try:
                self._run(self._stop(grace_s), grace_s + 5.0)
            except TimeoutError:
                log.warning("the front door's calls outlived their %.0fs of grace", grace_s)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5.0)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
