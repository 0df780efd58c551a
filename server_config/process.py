"""Run one ``tritonserver`` process: start, readiness, stop, restart, leftovers.

Typical use::

    with TritonServer(Path("model_repository"), cpu_settings(grpc_port=0)) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

The server runs in its own process group (its Python-backend stubs included), so a stop
or a kill reaches every process it started. Before a start the ports are checked and
Python-backend shared memory left by dead servers is removed; after a stop, a kill or a
failed start, the regions this server made are removed once no live process maps them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import psutil

from sst.server_config import shm
from sst.server_config.backends_check import require_backends
from sst.server_config.front_door import MESSAGE_OVERHEAD_BYTES, FrontDoor
from sst.server_config.install import (
    LauncherError,
    TritonInstall,
    find_tritonserver,
    prepare_backend_dir,
)
from sst.server_config.launch_settings import (
    LaunchSettings,
    check_ports_free,
    pick_free_ports,
)
from sst.server_config.readiness import fatal_line, grpc_probe, http_probe
from sst.server_config.security import ENV_ADMIN_TOKEN, ENV_TOKEN, Security, TokenGate
from sst.tracker.serving.limits import ServiceConfig

__all__ = ["TritonServer", "noted_regions"]

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 40
_STUB_NAME = "triton_python_backend_stub"
_NOTED_REGIONS: set[str] = set()


def noted_regions() -> set[str]:
    """Every shared-memory region a server started by this process was seen mapping."""
    return set(_NOTED_REGIONS)


def _connect_host(host: str) -> str:
    """Address to reach a server bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host


def _host_port(host: str, port: int) -> str:
    host = _connect_host(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


_SOCKET_NAME = "tritonserver-grpc"
#: tritonserver appends ``:PORT`` to its gRPC address, a Unix socket's too
_SOCKET_PORT = 1


def _socket_dir() -> Path:
    """A new folder (mode 700) for tritonserver's gRPC socket: only this user can connect.
    Under the temporary folder, whose path is short (a socket path has ~100 bytes)."""
    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="sst-grpc-", dir=base))


def _python_libdir() -> Path | None:
    """Directory holding this interpreter's shared libpython, if it has one."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname or not (Path(libdir) / str(soname)).exists():
        return None
    return Path(libdir)


class TritonServer:
    """One ``tritonserver`` process.

    Args:
        model_repository: The model repository to serve.
        settings: Addresses, ports, flags and security (see :class:`LaunchSettings`).
        install: Installation to run; found with :func:`find_tritonserver` if omitted.
        workdir: Directory for the prepared backends copy and the default log. If
            omitted, a temporary directory is used and removed by :meth:`stop`.
        env: Extra environment variables for the server process.
        log_path: Server log (stdout and stderr); defaults to ``<workdir>/tritonserver.log``.
            The log is appended to, never truncated.
        config: The server's settings (the front door forgets a session idle
            this long, as the engine does).
    """

    def __init__(
        self,
        model_repository: Path,
        settings: LaunchSettings,
        install: TritonInstall | None = None,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        config: ServiceConfig | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).absolute()
        self.settings = settings
        self.install = install
        self._workdir = Path(workdir).absolute() if workdir is not None else None
        self._owns_workdir = False
        self._env = dict(env or {})
        self._log_path = Path(log_path).absolute() if log_path is not None else None
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None
        #: tritonserver's own gRPC socket's folder when a front door takes the public port
        self._socket_dir: Path | None = None
        #: tritonserver's own tokens behind a front door (random, per run)
        self._internal: Security | None = None
        self._front: FrontDoor | None = None
        self._command: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._shm_before: set[str] = set()
        self._shm_seen: set[str] = set()
        self.config = config if config is not None else ServiceConfig()

    # -- properties ---------------------------------------------------------------------

    def _require_ports(self) -> tuple[int, int, int]:
        if self._ports is None:
            raise LauncherError("the server has not been started")
        return self._ports

    @property
    def grpc_url(self) -> str:
        """gRPC endpoint as ``host:port`` (what ``tritonclient.grpc`` expects)."""
        return _host_port(self.settings.host, self._require_ports()[0])

    @property
    def triton_grpc_url(self) -> str:
        """tritonserver's own gRPC endpoint: a Unix socket behind the front door (which
        :attr:`grpc_url` names; ``unix:PATH``), else :attr:`grpc_url` itself."""
        if self._socket_dir is None:
            return self.grpc_url
        return f"unix:{self._socket_dir / _SOCKET_NAME}:{_SOCKET_PORT}"

    @property
    def triton_headers(self) -> dict[str, str]:
        """gRPC metadata for tritonserver's own endpoint, client APIs (behind a front door:
        its internal token, which no user holds)."""
        if self._internal is None:
            return self.client_headers
        return self._internal.client_headers("grpc")

    @property
    def http_url(self) -> str:
        """HTTP endpoint as ``http://host:port`` (loopback when gRPC uses TLS).

        Raises:
            LauncherError: the server serves no HTTP (behind a front door)."""
        if not self.settings.serves_http:
            raise LauncherError("this server serves gRPC only (behind its front door, "
                                "tritonserver's HTTP API is off)")
        return "http://" + _host_port(self.settings.local_host, self._require_ports()[1])

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL, ``http://host:port/metrics``."""
        host = self.settings.local_host
        return "http://" + _host_port(host, self._require_ports()[2]) + "/metrics"

    @property
    def client_headers(self) -> dict[str, str]:
        """gRPC metadata a client must send (the access token, if one is set)."""
        return self.settings.security.client_headers("grpc")

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC metadata that opens the admin APIs."""
        return self.settings.security.admin_headers("grpc")

    @property
    def pid(self) -> int | None:
        """Process id of the server (``None`` before :meth:`start`)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """Server log file (``None`` before :meth:`start` unless given)."""
        return self._log_path

    @property
    def command(self) -> tuple[str, ...]:
        """The command line of the last :meth:`start`."""
        return self._command

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has ended and been reaped, else ``None``."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def front_door(self) -> FrontDoor | None:
        """The gRPC front door, while it listens (None without one)."""
        return self._front

    def drain(self, wait_s: float) -> int:
        """Refuse new sessions, give open ones up to ``wait_s`` seconds to end, then end
        the rest on the server (their clients move them); returns how many were ended
        that way. A server without a front door cannot tell sessions apart: 0."""
        front = self._front
        if front is None or not self.is_running():
            return 0
        return front.drain(wait_s)

    def is_running(self) -> bool:
        """Whether the server process is alive (does not reap it)."""
        return (
            self._proc is not None
            and self._proc.returncode is None
            and not self._exited_unreaped(0)
        )

    # -- lifecycle ----------------------------------------------------------------------

    def _build_command(self, backend_dir: Path, ports: tuple[int, int, int]) -> list[str]:
        assert self.install is not None
        p = self.settings
        grpc_port, http_port, metrics_port = ports
        if self._socket_dir is not None:  # behind the front door: a socket only we open
            assert self._internal is not None
            endpoints = [f"--grpc-address=unix:{self._socket_dir / _SOCKET_NAME}",
                         f"--grpc-port={_SOCKET_PORT}", "--allow-http=false"]
            security = self._internal.triton_args(tls=False)
        else:
            endpoints = [f"--grpc-address={p.host}", f"--grpc-port={grpc_port}",
                         f"--http-address={p.local_host}", f"--http-port={http_port}"]
            security = p.security.triton_args()
        return [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            *endpoints,
            f"--metrics-address={p.local_host}",
            f"--metrics-port={metrics_port}",
            f"--model-control-mode={p.model_control}",
            f"--exit-timeout-secs={p.exit_timeout}",
            f"--log-verbose={p.log_verbose}",
            # no request objects kept for reuse: they would keep the buffers of the
            # largest message received (a 60 MiB request: +27% RSS with them, +19% without)
            "--grpc-infer-allocation-pool-size=0",
            *security,
            *p.extra_args,
        ]

    def stub_pids(self) -> set[int]:
        """Pids of the server's live Python-backend stub processes."""
        if self._proc is None:
            return set()
        try:
            children = psutil.Process(self._proc.pid).children()
        except psutil.Error:
            return set()
        pids = set()
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and _STUB_NAME in child.name():
                    pids.add(child.pid)
        return pids

    def _build_env(self) -> dict[str, str]:
        assert self.install is not None
        env = dict(os.environ)
        env.update(self._env)
        for name in (ENV_TOKEN, ENV_ADMIN_TOKEN):  # no child of the server needs them
            env.pop(name, None)
        lib_dirs = [str(d) for d in self.install.lib_dirs]
        existing = [d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
        libdir = _python_libdir() if self.install.kind == "pytriton" else None
        # The pytriton stub links libpython<maj.min>; prefer this interpreter's own copy.
        tail = [str(libdir)] if libdir is not None and str(libdir) not in existing else []
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + existing + tail)
        # The Python backend stub finds its packages through the first python on PATH.
        python_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([python_bin, env.get("PATH", os.defpath)])
        return env

    def start(self, timeout_s: float = 120, cancel: threading.Event | None = None) -> None:
        """Start the server and wait until ``/v2/health/ready`` answers 200 (or until
        ``cancel`` is set).

        Raises:
            LauncherError: already started, no GPU for gpu settings, nothing to run, or
                the server exited or was not ready within ``timeout_s`` (the message
                ends with the last lines of the server log).
        """
        self._start(timeout_s, cancel)

    def _start(self, timeout_s: float, cancel: threading.Event | None) -> None:
        if self.is_running():
            raise LauncherError(f"server already running (pid {self.pid})")
        try:
            self._launch()
            self._wait_ready(timeout_s, cancel)
        except BaseException:
            self._note_regions()
            self.stop(timeout_s=10)
            raise
        self._note_regions()

    def restart(self, timeout_s: float = 120, cancel: threading.Event | None = None) -> None:
        """Kill the server (and its stubs) and start it again on the same ports.

        For a server that has lost a process: in-flight requests fail (clients retry
        UNAVAILABLE), and until it is ready again nothing listens on its ports.
        """
        self.kill()
        self._stop_locked(timeout_s=10, remove_workdir=False)
        self._start(timeout_s, cancel)

    def _launch(self) -> None:
        with self._lock:
            env_path = self._env.get("PATH", os.environ.get("PATH", os.defpath))
            if self.settings.name == "gpu" and shutil.which("nvidia-smi", path=env_path) is None:
                raise LauncherError("no NVIDIA GPU found (nvidia-smi missing)")
            if self.install is None:
                self.install = find_tritonserver()
                # a repository whose backends this server lacks fails here, by name (a
                # missing repository is left to the server, whose log names it)
                if self.model_repository.is_dir():
                    require_backends(self.install, self.model_repository)
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="sst-triton-"))
                self._owns_workdir = True
            self._workdir.mkdir(parents=True, exist_ok=True)
            backend_dir = prepare_backend_dir(self.install, self._workdir / "backends")

            p = self.settings
            if self._ports is None:  # a restart keeps the ports it had
                wanted = [p.grpc_port, p.http_port if p.serves_http else -1, p.metrics_port]
                free = iter(pick_free_ports(p.host, wanted.count(0)))
                ports = tuple(port or next(free) for port in wanted)
                self._ports = (ports[0], ports[1], ports[2])
            grpc, http, metrics = self._ports
            endpoints = {"gRPC": (p.host, grpc)}
            if p.serves_http:
                endpoints["HTTP"] = (p.local_host, http)
            endpoints["metrics"] = (p.local_host, metrics)
            if not p.serves_http and self._socket_dir is None:
                self._socket_dir = _socket_dir()
                self._internal = Security.internal()
            if self._socket_dir is not None:  # a killed server's socket may be left
                with contextlib.suppress(FileNotFoundError):
                    (self._socket_dir / f"{_SOCKET_NAME}:{_SOCKET_PORT}").unlink()
            if self._front is None:  # a restart keeps the front door listening
                check_ports_free(endpoints)
                if p.max_request_bytes is not None:
                    assert self._internal is not None
                    front = FrontDoor(p.host, grpc, self.triton_grpc_url,
                                      p.max_request_bytes + MESSAGE_OVERHEAD_BYTES,
                                      p.security.tls, config=self.config,
                                      gate=TokenGate(p.security, self._internal))
                    front.start()
                    self._front = front
            else:
                check_ports_free({k: v for k, v in endpoints.items() if k != "gRPC"})
            self._command = tuple(self._build_command(backend_dir, self._ports))
            shm.remove_orphans()  # left by servers that were killed
            self._shm_before = shm.regions()
            self._shm_seen = set()

            if self._log_path is None:
                self._log_path = self._workdir / "tritonserver.log"
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._log_path, "ab") as log:
                self._log_offset = log.tell()
                try:
                    self._proc = subprocess.Popen(
                        self._command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=self._build_env(),
                        cwd=self._workdir,
                        start_new_session=True,  # own process group: stubs included
                    )
                except OSError as exc:
                    raise LauncherError(f"cannot run {self._command[0]}: {exc}") from exc

    def _wait_ready(self, timeout_s: float, cancel: threading.Event | None) -> None:
        if self._socket_dir is not None:
            ready = grpc_probe(self.triton_grpc_url, self.triton_headers)
        else:
            ready = http_probe(self.http_url, self.settings.security.client_headers("http"))
        self._wait(timeout_s, cancel, ready)

    def _wait(self, timeout_s: float, cancel: threading.Event | None,
              ready: Callable[[], bool]) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            if not self.is_running():
                code = self._proc.wait()
                raise LauncherError(
                    f"tritonserver exited with code {code} before becoming ready.\n"
                    + self.log_report()
                )
            if cancel is not None and cancel.is_set():
                return
            if ready():
                return
            fatal = fatal_line(self.log_tail(400))
            if fatal is not None:
                raise LauncherError(f"a model could not be loaded ({fatal}).\n"
                                    + self.log_report())
            if time.monotonic() >= deadline:
                raise LauncherError(
                    f"tritonserver was not ready after {timeout_s:g}s (stopping it).\n"
                    + self.log_report()
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> list[str]:
        """Last ``lines`` lines the server wrote to its log during this run."""
        if self._log_path is None:
            return []
        try:
            with open(self._log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - 256 * 1024))
                data = f.read()
        except OSError:
            return []
        return data.decode("utf-8", errors="replace").splitlines()[-lines:]

    def log_report(self) -> str:
        """The last lines of the server log, for error messages and the supervisor."""
        tail = self.log_tail()
        body = "\n".join(f"  | {line}" for line in tail) or "  | (empty)"
        return f"Last {len(tail)} lines of {self._log_path}:\n{body}"

    def _signal_group(self, sig: int) -> None:
        """Signal the server's process group (stub processes included)."""
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _exited_unreaped(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the server to exit, leaving it unreaped."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.returncode is not None:
                return True
            try:
                info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def kill(self) -> None:
        """Send SIGKILL to the server's process group at once."""
        if self._proc is not None and self._proc.returncode is None:
            self._signal_group(signal.SIGKILL)

    def stop(self, timeout_s: float = 30) -> int | None:
        """Stop the server: SIGTERM, wait ``timeout_s``, then SIGKILL. Idempotent.

        Leftover processes of the server's process group (Python backend stubs) are
        killed too. Returns the exit code (``None`` if it was never started).
        """
        return self._stop_locked(timeout_s, remove_workdir=True)

    def _stop_locked(self, timeout_s: float, remove_workdir: bool) -> int | None:
        with self._lock:
            if remove_workdir and self._front is not None:
                # First the door: no new call is taken, and every call it took gets up to
                # the exit timeout to be answered by tritonserver, still running; then
                # tritonserver stops with nothing of theirs in flight. Whatever happens
                # to the door, tritonserver is stopped below.
                front, self._front = self._front, None
                # a dead tritonserver answers nothing: no grace then
                grace = min(timeout_s, self.settings.exit_timeout) if self.is_running() else 0.0
                try:
                    front.stop(grace_s=grace)
                except Exception as exc:  # stopping the server matters more
                    log.warning("the gRPC front door did not stop cleanly: %s", exc)
            proc = self._proc
            if proc is not None and proc.returncode is None:
                if not self._exited_unreaped(0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)  # the server only: it stops stubs
                    if not self._exited_unreaped(timeout_s):
                        log.warning(
                            "tritonserver (pid %d) still running %gs after SIGTERM; killing it",
                            proc.pid,
                            timeout_s,
                        )
                        self._signal_group(signal.SIGKILL)
                        self._exited_unreaped(10)
                # The leader is a zombie until reaped, so its group id cannot be reused.
                self._signal_group(signal.SIGKILL)
                proc.wait()
            if proc is not None:
                # A server that died by itself leaves its stubs running: end them too.
                self._kill_group_leftovers(proc.pid, 10)
                self._remove_own_regions()
            if remove_workdir and self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
                self._internal = None
            if remove_workdir and self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
                self._owns_workdir = False
            return proc.returncode if proc is not None else None

    @staticmethod
    def _kill_group_leftovers(pgid: int, timeout_s: float) -> None:
        """SIGKILL each live process of group ``pgid`` (by pid) and wait until none is left.

        The group is the one the server was started in. Only Python-backend stubs are
        ended: once the leader is reaped its pid (so the group id) may be reused by a
        new process, here a new server that leads a group of the same number.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            alive = []
            for proc in psutil.process_iter():
                with contextlib.suppress(psutil.Error, OSError):
                    if (os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE
                            and _STUB_NAME in proc.name()):
                        alive.append(proc)
            if not alive or time.monotonic() >= deadline:
                return
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
            time.sleep(0.05)

    def _note_regions(self) -> None:
        """Remember the shared-memory regions this server's processes map."""
        if self._proc is None:
            return
        pids = {self._proc.pid, *self.stub_pids()}
        self._shm_seen |= set(shm.mapped_regions(pids=pids))
        _NOTED_REGIONS.update(self._shm_seen)

    def _remove_own_regions(self) -> None:
        """Remove the regions made since this server's launch that nobody maps any more."""
        made = (shm.regions() - self._shm_before) | self._shm_seen
        removed = shm.remove_orphans(candidates=made)
        if removed:
            log.info("removed %d shared-memory region(s) left by tritonserver", len(removed))

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the server to exit and return its exit code.

        Raises:
            LauncherError: never started.
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        if self._proc is None:
            raise LauncherError("the server has not been started")
        return self._proc.wait(timeout)

    def __enter__(self) -> TritonServer:
        """Start the server (unless running) and return it."""
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Short description."""
        state = "running" if self.is_running() else "stopped"
        return f"TritonServer({self.model_repository}, {self.settings.name}, {state})"

