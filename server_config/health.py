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
binds the gRPC address, where the orchestrator's prober can reach it.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client as prom

__all__ = ["Probes", "HealthServer"]

log = logging.getLogger(__name__)


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
    on a daemon thread. Start it, stop it once.

    Bounded: at most :attr:`MAX_CONNECTIONS` connections are served at once (one thread
    each; a connection beyond them is closed at once) and a connection that sends
    nothing for :attr:`idle_timeout_s` seconds is closed."""

    MAX_CONNECTIONS = 16
    idle_timeout_s = 5.0

    def __init__(self, host: str, port: int, probes: Probes,
                 registry: prom.CollectorRegistry | None = None) -> None:
        self.probes = probes
        self.registry = registry
        handler = _handler(self)
        address = host.strip("[]")
        server_class = _server_class(address)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self._httpd = server_class((address, port), handler)
        self._httpd.slots = self._slots
        self.port = int(self._httpd.server_address[1])
        self.host = host
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sst-health",
                                        daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host.strip('[]')}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        self._httpd.server_close()


class _Bounded(ThreadingHTTPServer):
    """A thread per connection, up to ``slots`` of them; a connection beyond is closed."""

    daemon_threads = True
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _server_class(host: str) -> type[_Bounded]:
    if ":" not in host:
        return _Bounded

    class V6(_Bounded):
        address_family = socket.AF_INET6

    return V6


def _handler(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.connection.settimeout(health.idle_timeout_s)

        def do_GET(self) -> None:  # (the name http.server calls)
            path = self.path.split("?", 1)[0]
            probes = health.probes
            if path == "/live":
                self._answer(200 if probes.live else 503, "live" if probes.live else "dead")
            elif path == "/ready":
                word = ("ready" if probes.serving else "draining" if probes.draining
                        else "not ready")
                self._answer(200 if probes.serving else 503, word)
            elif path == "/metrics":
                body = prom.generate_latest(health.registry) if health.registry else b""
                self._answer(200, body, prom.CONTENT_TYPE_LATEST)
            else:
                self._answer(404, "not found: /live, /ready or /metrics")

        def _answer(self, status: int, body: str | bytes,
                    content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health: " + format, *args)

    return Handler
