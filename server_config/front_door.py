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

from sst.server_config.security import TlsFiles

__all__ = ["FrontDoor", "MESSAGE_OVERHEAD_BYTES"]

log = logging.getLogger(__name__)

#: Allowance over the request-byte cap for the rest of an inference message (tensor
#: names, shapes, parameters, framing): the cap is on the image bytes it carries.
MESSAGE_OVERHEAD_BYTES = 1 << 20
#: Metadata that gRPC sets itself and must not be forwarded as the caller's.
_NOT_FORWARDED = ("user-agent", "grpc-", ":")


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

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _unary(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        call = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await call(request, metadata=_forwarded(context),
                                  timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise  # abort raises; this line is not reached

        return forward

    def _stream(self, method: str) -> Callable[[Any, Any], AsyncIterator[bytes]]:
        call = self._channel.stream_stream(method)

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[bytes]:
            try:
                async for response in call(requests, metadata=_forwarded(context),
                                           timeout=context.time_remaining()):
                    yield response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return forward


class FrontDoor:
    """Forwards ``host:port`` to ``target`` (tritonserver's gRPC on loopback), refusing
    messages over ``max_message_bytes``; TLS with ``tls``. Start it, stop it once."""

    def __init__(self, host: str, port: int, target: str, max_message_bytes: int,
                 tls: TlsFiles | None = None) -> None:
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
        self._server.add_generic_rpc_handlers((_Forward(self._channel),))
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
