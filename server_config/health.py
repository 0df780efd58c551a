"""Probes of ``sst serve`` as a replica: liveness, readiness and the front door's metrics
over plain HTTP (``sst serve --health-port N``).

* ``GET /live``: 200 while the launcher runs and keeps its server (also while it
  restarts a lost one); 503 once it gives up. An orchestrator restarts a pod that fails it.
* ``GET /ready``: 200 while tritonserver is ready and the replica is not draining; 503
  while it starts, restarts or drains. An orchestrator (or a proxy's health check) sends
  new sessions elsewhere while it fails; live sessions are not cut by it.
* ``GET /metrics``: the front door's counters (Prometheus text): sessions open and
  started, frames of known and unknown sessions, refusals, sessions ended by the drain.

The answers hold no secret (a status word and counters), so the port has no token; it
binds the gRPC address, where the orchestrator's prober can reach it. It is bounded: one
event loop serves every connection (no thread per connection), at most
:attr:`HealthServer.MAX_CONNECTIONS` at once (one beyond is closed at once), a request
head of at most 8 KiB, and a connection that has not sent its request within
:attr:`HealthServer.idle_timeout_s` seconds is closed. One request per connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import prometheus_client as prom

__all__ = ["Probes", "HealthServer"]

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}
_HEAD_LIMIT = 8192


@dataclass
class Probes:
    """What the probes answer (set by the supervisor, read by the HTTP thread)."""

    live: bool = True
    ready: bool = False
    draining: bool = False

    @property
    def serving(self) -> bool:
        """Ready for new sessions."""
        return self.live and self.ready and not self.draining


class HealthServer:
    """Serves :class:`Probes` and a metrics registry on ``host:port`` (0: any free port),
    on a thread of its own running one event loop. Start it, stop it once."""

    MAX_CONNECTIONS = 256
    idle_timeout_s = 5.0

    def __init__(self, host: str, port: int, probes: Probes,
                 registry: prom.CollectorRegistry | None = None) -> None:
        self.probes = probes
        self.registry = registry
        address = host.strip("[]")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((address, port))
            self._sock.listen(1024)
        except OSError:
            self._sock.close()
            raise
        self.port = int(self._sock.getsockname()[1])
        self.host = host
        self.connections = 0
        #: the most connections held at once
        self.peak_connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="sst-health",
                                        daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host.strip('[]')}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        future: Future[None] = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10.0)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock,
                                                  limit=_HEAD_LIMIT)

    def stop(self) -> None:
        if self._thread.is_alive():
            async def close() -> None:
                if self._server is not None:
                    self._server.close()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
        self._sock.close()
        if not self._loop.is_running():
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        self.peak_connections = max(self.peak_connections, self.connections)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout_s)
            line = head.split(b"\r\n", 1)[0]
            status, body, content_type = self._answer(line)
            writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: "
                         f"{content_type}\r\nContent-Length: {len(body)}\r\nConnection: "
                         f"close\r\n\r\n".encode()
                         + (b"" if line.startswith(b"HEAD ") else body))
            await asyncio.wait_for(writer.drain(), self.idle_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError) as exc:
            log.debug("health: connection closed (%s)", type(exc).__name__)
        finally:
            self.connections -= 1
            writer.close()

    def _answer(self, request_line: bytes) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            return 400, b"bad request", text
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return 405, b"GET only", text
        path = target.split("?", 1)[0]
        probes = self.probes
        if path == "/live":
            return (200, b"live", text) if probes.live else (503, b"dead", text)
        if path == "/ready":
            word = ("ready" if probes.serving else "draining" if probes.draining
                    else "not ready")
            return 200 if probes.serving else 503, word.encode(), text
        if path == "/metrics":
            body = prom.generate_latest(self.registry) if self.registry else b""
            return 200, body, prom.CONTENT_TYPE_LATEST
        return 404, b"not found: /live, /ready or /metrics", text


