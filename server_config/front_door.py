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
  Triton's answer, or its status code and message, comes back unchanged. Tokens are
  still checked by Triton (the restricted-protocol headers travel as metadata).
* TLS, when configured, ends here, with gRPC's built-in TLS (optionally mutual); the hop
  to tritonserver is plaintext on loopback.
* It runs in the launcher's process, on its own asyncio loop and thread, and lives as
  long as the :class:`~sst.server_config.process.TritonServer` that owns it: a restart of
  tritonserver keeps the public port open (calls meanwhile get UNAVAILABLE, which
  clients retry).
* A refusal's reason, which the models put at the head of their error message
  (:func:`~sst.tracker.errors.tag`), is lifted into the trailing metadata ``sst-reason``
  and the message passes on without it.
* It drains (:meth:`FrontDoor.drain`): new STARTs are refused with the reason
  ``draining``, and the sessions still open after the drain period are ended by the door
  itself, so that tritonserver has no open sequence left to wait for (see
  :mod:`~sst.server_config.drain`, which also counts the sessions and frames it sees).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import grpc
import grpc.aio

from sst.server_config.drain import DRAINING, CallInfo, SessionTable, end_request, parse_infer
from sst.server_config.security import TlsFiles
from sst.tracker.errors import REASON_TRAILER, split_tag
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
_MOVED = ("draining: this server is shutting down and ended session {sid}; start it again "
          "(the client library primes it again from its supports)")


async def _pass_on(exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
    """Answer tritonserver's error unchanged, its reason tag (if any) as trailing metadata."""
    reason, message = split_tag(exc.details() or "")
    trailer = ((REASON_TRAILER, reason.value),) if reason is not None else ()
    await context.abort(exc.code(), message, trailer)


def _lost(exc: grpc.aio.AioRpcError) -> bool:
    """Whether tritonserver's answer says it does not hold the call's session."""
    code, details = exc.code(), (exc.details() or "").lower()
    return code == grpc.StatusCode.NOT_FOUND or (
        code == grpc.StatusCode.INVALID_ARGUMENT and "must specify the start flag" in details)


def _forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in (context.invocation_metadata() or ())
                 if not k.startswith(_NOT_FORWARDED))


def _server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


class _Forward(grpc.GenericRpcHandler):
    """Handlers that pass each call on to ``channel`` unchanged."""

    def __init__(self, channel: grpc.aio.Channel, sessions: SessionTable) -> None:
        self._channel = channel
        self._sessions = sessions

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        if method == _INFER:
            return grpc.unary_unary_rpc_method_handler(self._infer(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _infer(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        """``ModelInfer``: forwarded like any call, with the session table kept up to
        date, and refused while draining when it starts a session or belongs to one
        the drain ended."""
        call = self._channel.unary_unary(method)
        sessions = self._sessions

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            info = parse_infer(request) or CallInfo("", 0, False, False)
            refusal = sessions.refusal(info)
            if refusal == "start":
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED_START,
                                    _DRAIN_TRAILER)
            elif refusal == "moved":
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    _MOVED.format(sid=info.session_id), _DRAIN_TRAILER)
            sessions.seen(info)
            try:
                answer = await call(request, metadata=_forwarded(context),
                                    timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                sessions.answered(info, ok=False, lost=_lost(exc))
                await _pass_on(exc, context)
                raise  # abort raises; this line is not reached
            sessions.answered(info, ok=True)
            if len(answer) >= TRIM_AFTER_BYTES:
                # once this large answer is sent, give its buffers back to the OS
                context.add_done_callback(lambda _: trim_heap())
            return answer

        return forward

    def _unary(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        call = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await call(request, metadata=_forwarded(context),
                                  timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await _pass_on(exc, context)
                raise  # abort raises; this line is not reached

        return forward

    def _stream(self, method: str) -> Callable[[Any, Any], AsyncIterator[bytes]]:
        call = self._channel.stream_stream(method)

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[bytes]:
            if self._sessions.draining:  # (streams are not tracked: refused whole)
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED_START,
                                    _DRAIN_TRAILER)
            try:
                async for response in call(requests, metadata=_forwarded(context),
                                           timeout=context.time_remaining()):
                    yield response
            except grpc.aio.AioRpcError as exc:
                await _pass_on(exc, context)

        return forward


class FrontDoor:
    """Forwards ``host:port`` to ``target`` (tritonserver's gRPC on loopback), refusing
    messages over ``max_message_bytes``; TLS with ``tls``. Start it, stop it once.
    ``headers`` go with the door's own calls (the ENDs of a drain: the access token);
    sessions idle ``session_idle_s`` leave its table."""

    def __init__(self, host: str, port: int, target: str, max_message_bytes: int,
                 tls: TlsFiles | None = None, headers: dict[str, str] | None = None,
                 session_idle_s: float = ServiceConfig.idle_seconds) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, not {max_message_bytes}")
        self.host, self.port, self.target = host, port, target
        self.max_message_bytes = max_message_bytes
        self.tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sst-front-door",
                                        daemon=True)
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._headers = tuple((headers or {}).items())
        #: sessions started through the door, its drain state and its metrics
        self.sessions = SessionTable(session_idle_s)

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
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ])
        self._server.add_generic_rpc_handlers((_Forward(self._channel, self.sessions),))
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
        call = self._channel.unary_unary(_INFER)

        async def end(sid: int, model: str, key: bytes) -> None:
            try:
                await call(end_request(model, sid, key), metadata=self._headers,
                           timeout=end_timeout_s)
            except grpc.aio.AioRpcError as exc:
                log.info("ending session %d for the drain: %s", sid, exc.details())

        await asyncio.gather(*(end(sid, e.model, e.key) for sid, e in taken))
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
