"""Keep a server up: run it in the foreground, restart it when it or a model process dies.

A Python-backend model runs in a stub process, a child of ``tritonserver``. When a stub
dies (a crash, the OOM killer, ``kill -9``) the model is broken until the server
restarts; when ``tritonserver`` itself dies nothing answers. :class:`Supervisor` polls
both, and on either event kills what is left of the server and starts it again on the
same ports. While it restarts nothing listens, so clients see UNAVAILABLE (not ready)
and retry; the client library primes lost sessions again from the supports it kept.

Asked to stop (SIGTERM), it drains before it stops: the readiness probe fails, new
sessions are refused (reason ``draining``), open sessions get ``drain_s`` seconds to end
and the rest are ended by the server itself (their clients move them), then tritonserver
stops with no sequence open, so it exits 0 at once instead of waiting out its exit
timeout.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sst.server_config.health import HealthServer, Probes
from sst.server_config.install import LauncherError
from sst.server_config.process import TritonServer

__all__ = ["Supervisor", "serve_forever"]

log = logging.getLogger(__name__)


def _exit_status(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code


@dataclass
class Supervisor:
    """Runs ``server`` until asked to stop, restarting it after a lost process.

    Attributes:
        server: The server to run.
        startup_timeout_s: Readiness timeout of each (re)start.
        poll_s: How often the server and its stubs are checked.
        max_restarts: Restarts allowed within ``restart_window_s``; one more ends
            supervision with an error (a server that keeps dying needs a person).
        restart_window_s: See ``max_restarts``.
        clock: Monotonic clock (injectable for tests).
        restarts: Seconds each restart took, from detection to ready (for reports).
        detected: Clock reading at each detected failure.
        probes: What the liveness and readiness probes answer (kept up to date here).
        drain_s: On stop, how long open sessions get to end before the server ends them.
    """

    server: TritonServer
    startup_timeout_s: float = 120.0
    poll_s: float = 0.5
    max_restarts: int = 5
    restart_window_s: float = 600.0
    clock: Callable[[], float] = time.monotonic
    restarts: list[float] = field(default_factory=list)
    detected: list[float] = field(default_factory=list)
    probes: Probes = field(default_factory=Probes)
    drain_s: float = 0.0
    _recent: deque[float] = field(default_factory=deque)

    def check(self, known_stubs: set[int]) -> str | None:
        """What went wrong since the last check (``None``: all well); updates ``known_stubs``."""
        if not self.server.is_running():
            return f"tritonserver (pid {self.server.pid}) exited"
        current = self.server.stub_pids()
        lost = known_stubs - current
        known_stubs |= current
        if lost:
            known_stubs -= lost
            pids = ", ".join(str(p) for p in sorted(lost))
            return f"Python-backend stub process(es) {pids} of tritonserver died"
        return None

    def _allow_restart(self) -> bool:
        now = self.clock()
        while self._recent and now - self._recent[0] > self.restart_window_s:
            self._recent.popleft()
        if len(self._recent) >= self.max_restarts:
            return False
        self._recent.append(now)
        return True

    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> int:
        """Start the server, watch it until ``stop`` is set, then stop it gracefully.

        Returns the exit status: the server's own (0 after a clean stop), or 1 if it
        could not be kept up.

        Raises:
            LauncherError: the first start failed.
        """
        server = self.server
        try:
            server.start(self.startup_timeout_s, cancel=stop)
        except BaseException:
            self.probes.live = False
            raise
        if stop.is_set():
            return _exit_status(server.stop(timeout_s=server.settings.exit_timeout + 5))
        self.probes.ready = True
        if on_ready is not None:
            on_ready()
        known = server.stub_pids()
        while not stop.wait(self.poll_s):
            problem = self.check(known)
            if problem is None:
                continue
            detected = self.clock()
            self.detected.append(detected)
            self.probes.ready = False
            log.error("%s; restarting the server (it is not ready until then)", problem)
            report = server.log_report()
            log.info("server log before the restart:\n%s", report)
            if not self._allow_restart():
                log.error(
                    "%d restarts within %gs: giving up", self.max_restarts, self.restart_window_s
                )
                self.probes.live = False
                server.stop(timeout_s=5)
                return 1
            try:
                server.restart(self.startup_timeout_s, cancel=stop)
            except LauncherError as exc:
                self.probes.live = False
                log.error("restart failed: %s", exc)
                return 1
            if stop.is_set():
                break
            took = self.clock() - detected
            self.restarts.append(took)
            log.warning("server restarted and ready again %.1fs after the failure", took)
            self.probes.ready = True
            if on_ready is not None:
                on_ready()
            known = server.stub_pids()
        self.probes.draining = True
        if server.is_running():
            print(f"draining: no new sessions; open ones get {self.drain_s:g}s to end ...",
                  file=sys.stderr, flush=True)
            ended = server.drain(self.drain_s)
            if ended:
                print(f"ended {ended} open session(s); their clients start them elsewhere",
                      file=sys.stderr, flush=True)
        print("stopping tritonserver ...", file=sys.stderr, flush=True)
        return _exit_status(server.stop(timeout_s=server.settings.exit_timeout + 5))


def serve_forever(
    server: TritonServer,
    startup_timeout_s: float = 120,
    supervisor: Supervisor | None = None,
    health_port: int | None = None,
) -> int:
    """Run ``server`` in the foreground, supervised, until SIGINT/SIGTERM arrives.

    Prints one line per endpoint once the server is ready. The first SIGINT/SIGTERM
    drains and stops the server gracefully (in-flight requests get ``exit_timeout``
    seconds); a second one kills it. With ``health_port`` (0: any free port) the probes
    are served over HTTP on the gRPC address (:mod:`~sst.server_config.health`). Returns
    the exit status (0 on a clean shutdown).

    Raises:
        LauncherError: the server could not start.
    """
    stop_requested = threading.Event()
    signals = 0
    sup = supervisor or Supervisor(server, startup_timeout_s=startup_timeout_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        stop_requested.set()
        if signals > 1:
            server.kill()

    health: HealthServer | None = None
    if health_port is not None:
        health = HealthServer(server.settings.host, health_port, sup.probes)

    def on_ready() -> None:
        front = server.front_door
        if health is not None and front is not None:
            health.registry = front.sessions.registry
        print(f"gRPC     {server.grpc_url}", flush=True)
        if health is not None:
            print(f"health   {health.url}", flush=True)
        if server.settings.serves_http:
            print(f"HTTP     {server.http_url}", flush=True)
        print(f"metrics  {server.metrics_url}", flush=True)
        print(f"pid      {server.pid}", flush=True)
        print(f"log      {server.log_path}", flush=True)

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        if health is not None:
            health.start()
        return sup.run(stop_requested, on_ready=on_ready)
    finally:
        if health is not None:
            health.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
