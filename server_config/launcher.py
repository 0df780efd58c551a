"""Find, prepare and run an NVIDIA Triton Inference Server for SST Serve.

The launcher works with two kinds of Triton installation:

* the ``tritonserver`` binary shipped inside the ``nvidia-pytriton`` wheel
  (``<site-packages>/pytriton/tritonserver``). It runs on a CPU-only machine once its
  bundled shared libraries (``<site-packages>/nvidia_pytriton.libs``) are on
  ``LD_LIBRARY_PATH`` and the Python backend stub matching the running interpreter has
  been placed beside ``libtriton_python.so`` in a private copy of ``backends/``;
* a system install such as NVIDIA's container (``/opt/tritonserver``), used as is.

Every address flag defaults to ``127.0.0.1`` and the model control mode is ``none``:
clients can infer, but can never load or unload models.

Typical use::

    with TritonServer(Path("model_repository"), cpu_profile(grpc_port=0)) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

__all__ = [
    "ENV_TRITONSERVER",
    "LaunchProfile",
    "LauncherError",
    "TritonInstall",
    "TritonServer",
    "build_arg_parser",
    "cpu_profile",
    "find_tritonserver",
    "gpu_profile",
    "main",
    "prepare_backend_dir",
    "run_serve",
    "serve_forever",
]

ENV_TRITONSERVER = "SST_TRITONSERVER"
"""Environment variable naming a ``tritonserver`` binary (or its install directory)."""

_CONTAINER_BINARY = Path("/opt/tritonserver/bin/tritonserver")
_CONTAINER_BACKENDS = Path("/opt/tritonserver/backends")
_STUB_NAME = "triton_python_backend_stub"
_PYTHON_BACKEND_LIB = "libtriton_python.so"
_MARKER_NAME = ".sst-backends.json"
_LOG_TAIL_LINES = 40
_HOW_TO_GET = (
    "Install one with `pip install nvidia-pytriton` (ships a CPU-capable tritonserver), "
    "use NVIDIA's container (nvcr.io/nvidia/tritonserver:<xx.yy>-py3, binary in "
    f"{_CONTAINER_BINARY}), or point {ENV_TRITONSERVER} / --tritonserver at a binary."
)
# Flags the launcher manages itself; a profile's extra args may not override them.
_MANAGED_FLAGS = (
    "--model-repository",
    "--backend-directory",
    "--grpc-address",
    "--grpc-port",
    "--http-address",
    "--http-port",
    "--metrics-address",
    "--metrics-port",
    "--model-control-mode",
    "--load-model",
    "--exit-timeout-secs",
    "--log-verbose",
)
_MODEL_CONTROL_MODES = ("none", "poll")


class LauncherError(RuntimeError):
    """Triton could not be found, prepared, started or stopped."""


# --------------------------------------------------------------------------------------
# Locating an installation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` installation the launcher can run.

    Attributes:
        binary: Path of the ``tritonserver`` executable.
        backends_dir: The install's ``backends/`` directory (read-only for pytriton).
        lib_dirs: Directories to put on ``LD_LIBRARY_PATH`` when running the binary.
        python_stub: ``triton_python_backend_stub`` for the running Python version, or
            ``None`` if the install has none.
        kind: ``"pytriton"`` for the nvidia-pytriton wheel layout, ``"system"`` otherwise.
        stubs_dir: For the pytriton layout, the ``python_backend_stubs`` directory.
        origin: Where the binary was found (for messages).
    """

    binary: Path
    backends_dir: Path
    lib_dirs: tuple[Path, ...] = ()
    python_stub: Path | None = None
    kind: Literal["pytriton", "system"] = "system"
    stubs_dir: Path | None = None
    origin: str = ""


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _resolve_binary_path(path: Path) -> Path | None:
    """Return the ``tritonserver`` executable for ``path`` (a binary or install dir)."""
    path = path.expanduser()
    candidates = [path]
    if path.is_dir():
        candidates = [path / "bin" / "tritonserver", path / "tritonserver"]
    for candidate in candidates:
        if _is_executable_file(candidate):
            return candidate.absolute()
    return None


def _install_from_binary(binary: Path, origin: str) -> TritonInstall:
    """Describe the installation that ``binary`` belongs to."""
    root = binary.resolve().parent.parent
    stubs_dir = root / "python_backend_stubs"
    if stubs_dir.is_dir():
        # nvidia-pytriton layout: <site>/pytriton/tritonserver/{bin,backends,...}
        lib_dirs = tuple(
            d
            for d in (root.parent.parent / "nvidia_pytriton.libs", root / "external_libs")
            if d.is_dir()
        )
        stub = stubs_dir / _python_version() / _STUB_NAME
        return TritonInstall(
            binary=binary,
            backends_dir=root / "backends",
            lib_dirs=lib_dirs,
            python_stub=stub if stub.is_file() else None,
            kind="pytriton",
            stubs_dir=stubs_dir,
            origin=origin,
        )
    backends = root / "backends"
    if not backends.is_dir() and _CONTAINER_BACKENDS.is_dir():
        backends = _CONTAINER_BACKENDS
    system_stub = backends / "python" / _STUB_NAME
    return TritonInstall(
        binary=binary,
        backends_dir=backends,
        lib_dirs=tuple(d for d in (root / "lib",) if d.is_dir()),
        python_stub=system_stub if system_stub.is_file() else None,
        kind="system",
        origin=origin,
    )


def _pytriton_binary() -> tuple[Path | None, str]:
    """Locate the wheel's binary without importing pytriton; return (binary, place)."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, "nvidia-pytriton wheel (package `pytriton` not installed)"
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    binary = package_dir / "tritonserver" / "bin" / "tritonserver"
    found = binary if _is_executable_file(binary) else None
    return found, f"nvidia-pytriton wheel ({binary})"


def find_tritonserver(explicit: str | Path | None = None) -> TritonInstall:
    """Find a ``tritonserver`` installation.

    Search order:

    1. ``explicit`` (a binary or an install directory); an invalid path is an error;
    2. the ``SST_TRITONSERVER`` environment variable; an invalid value is an error;
    3. the binary inside the ``nvidia-pytriton`` wheel (found with
       :func:`importlib.util.find_spec`, without importing pytriton);
    4. ``tritonserver`` on ``PATH``;
    5. ``/opt/tritonserver/bin/tritonserver`` (NVIDIA's containers).

    Raises:
        LauncherError: nothing was found; the message lists every place looked.
    """
    if explicit is not None and str(explicit) != "":
        binary = _resolve_binary_path(Path(explicit))
        if binary is None:
            raise LauncherError(
                f"tritonserver not found at {explicit} (explicit path): not an executable "
                f"file nor a directory containing bin/tritonserver. {_HOW_TO_GET}"
            )
        return _install_from_binary(binary, f"explicit path {explicit}")

    env_value = os.environ.get(ENV_TRITONSERVER, "")
    if env_value:
        binary = _resolve_binary_path(Path(env_value))
        if binary is None:
            raise LauncherError(
                f"tritonserver not found at {env_value} (from ${ENV_TRITONSERVER}): not an "
                f"executable file nor a directory containing bin/tritonserver. {_HOW_TO_GET}"
            )
        return _install_from_binary(binary, f"${ENV_TRITONSERVER}={env_value}")

    looked = [f"${ENV_TRITONSERVER} (not set)"]
    wheel_binary, wheel_place = _pytriton_binary()
    if wheel_binary is not None:
        return _install_from_binary(wheel_binary, wheel_place)
    looked.append(wheel_place)

    on_path = shutil.which("tritonserver")
    if on_path is not None:
        return _install_from_binary(Path(on_path).absolute(), f"PATH ({on_path})")
    looked.append("`tritonserver` on PATH")

    if _is_executable_file(_CONTAINER_BINARY):
        return _install_from_binary(_CONTAINER_BINARY, f"NVIDIA container ({_CONTAINER_BINARY})")
    looked.append(str(_CONTAINER_BINARY))

    places = "\n".join(f"  - {place}" for place in looked)
    raise LauncherError(f"tritonserver not found. Looked in:\n{places}\n{_HOW_TO_GET}")


def _file_signature(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_prepared(dest: Path, expected: Mapping[str, object]) -> bool:
    try:
        marker = json.loads((dest / _MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker == dict(expected)
        and (dest / "python" / _PYTHON_BACKEND_LIB).is_file()
        and _is_executable_file(dest / "python" / _STUB_NAME)
    )


def prepare_backend_dir(install: TritonInstall, dest: Path) -> Path:
    """Return a ``--backend-directory`` usable by ``install``.

    For the nvidia-pytriton layout, ``backends/`` is copied into ``dest`` and the
    ``triton_python_backend_stub`` built for the running Python (major.minor) is placed
    beside ``libtriton_python.so``. The copy is made once: a ``dest`` prepared earlier
    from the same source is reused as is. For a system install the install's own
    backends directory is returned and ``dest`` is not touched.

    Raises:
        LauncherError: no stub for this Python, the source is incomplete, or ``dest``
            exists with content the launcher did not create.
    """
    if install.kind != "pytriton":
        if not install.backends_dir.is_dir():
            raise LauncherError(
                f"backends directory {install.backends_dir} of {install.binary} does not exist"
            )
        return install.backends_dir

    version = _python_version()
    stub = install.python_stub
    if stub is None or not stub.is_file():
        available = (
            sorted(p.parent.name for p in install.stubs_dir.glob(f"*/{_STUB_NAME}"))
            if install.stubs_dir is not None
            else []
        )
        raise LauncherError(
            f"no Python backend stub for Python {version} in {install.stubs_dir or install.binary}"
            f" (available: {', '.join(available) or 'none'}). Run with a Python version "
            "the installed nvidia-pytriton supports, or use NVIDIA's container."
        )
    source_lib = install.backends_dir / "python" / _PYTHON_BACKEND_LIB
    if not source_lib.is_file():
        raise LauncherError(f"{source_lib} is missing; the nvidia-pytriton install is broken")

    expected: dict[str, object] = {
        "backends": str(install.backends_dir),
        "python": version,
        "stub": _file_signature(stub),
        "lib": _file_signature(source_lib),
    }
    dest = dest.absolute()
    if _is_prepared(dest, expected):
        return dest
    if dest.exists():
        if (dest / _MARKER_NAME).exists():
            shutil.rmtree(dest)  # an older copy made by the launcher
        elif dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            raise LauncherError(
                f"{dest} exists and was not prepared by the launcher; refusing to overwrite it"
            )

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copytree(
            install.backends_dir,
            tmp,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        target = tmp / "python" / _STUB_NAME
        shutil.copy2(stub, target)
        target.chmod(0o755)
        (tmp / _MARKER_NAME).write_text(json.dumps(expected, indent=2, sort_keys=True))
        try:
            os.rename(tmp, dest)
        except OSError:
            # Someone else prepared ``dest`` concurrently; accept their copy if it matches.
            if not _is_prepared(dest, expected):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------
# Launch profiles
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchProfile:
    """How to run the server.

    Attributes:
        name: ``"cpu"`` or ``"gpu"``.
        host: Address every endpoint binds to (loopback unless you mean otherwise).
        grpc_port: gRPC port; ``0`` picks a free port at launch time.
        http_port: HTTP port; ``0`` picks a free port at launch time.
        metrics_port: Prometheus metrics port; ``0`` picks a free port at launch time.
        model_control: ``"none"`` (default) or ``"poll"``. ``"explicit"`` is refused so
            clients can never load or unload models.
        extra_args: Further ``tritonserver`` arguments (not the flags the launcher sets).
        log_verbose: ``--log-verbose`` level.
        exit_timeout: ``--exit-timeout-secs``: grace period for in-flight requests.
    """

    name: Literal["cpu", "gpu"] = "cpu"
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    model_control: str = "none"
    extra_args: tuple[str, ...] = ()
    log_verbose: int = 0
    exit_timeout: int = 30

    def __post_init__(self) -> None:
        """Validate the fields."""
        if self.name not in ("cpu", "gpu"):
            raise ValueError(f"profile name must be 'cpu' or 'gpu', not {self.name!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        for field in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, field)
            if not 0 <= port <= 65535:
                raise ValueError(f"{field} must be in 0..65535, not {port}")
        fixed = [p for p in (self.grpc_port, self.http_port, self.metrics_port) if p]
        if len(fixed) != len(set(fixed)):
            raise ValueError("grpc_port, http_port and metrics_port must differ")
        if self.model_control not in _MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control must be one of {_MODEL_CONTROL_MODES}, not "
                f"{self.model_control!r} (explicit model control is never exposed)"
            )
        if self.log_verbose < 0 or self.exit_timeout < 0:
            raise ValueError("log_verbose and exit_timeout must be >= 0")
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        for arg in self.extra_args:
            if arg.split("=", 1)[0] in _MANAGED_FLAGS:
                raise ValueError(f"{arg!r} is set by the launcher; use the profile fields")


def cpu_profile(**overrides: Any) -> LaunchProfile:
    """Return the CPU profile (loopback, ports 8001/8000/8002), with ``overrides``."""
    return dataclasses.replace(LaunchProfile(name="cpu"), **overrides)


def gpu_profile(**overrides: Any) -> LaunchProfile:
    """Return the GPU profile; it builds anywhere but only starts where a GPU exists."""
    return dataclasses.replace(LaunchProfile(name="gpu"), **overrides)


# --------------------------------------------------------------------------------------
# Running the server
# --------------------------------------------------------------------------------------


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


def _pick_free_ports(host: str, count: int) -> list[int]:
    """Bind ``count`` sockets to ``host``:0 at once and return the distinct ports."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = host.strip("[]")
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((bind_host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


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
        profile: Addresses, ports and flags (see :class:`LaunchProfile`).
        install: Installation to run; found with :func:`find_tritonserver` if omitted.
        workdir: Directory for the prepared backends copy and the default log. If
            omitted, a temporary directory is used and removed by :meth:`stop`.
        env: Extra environment variables for the server process.
        log_path: Server log (stdout and stderr); defaults to ``<workdir>/tritonserver.log``.
            The log is appended to, never truncated.
    """

    def __init__(
        self,
        model_repository: Path,
        profile: LaunchProfile,
        install: TritonInstall | None = None,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).absolute()
        self.profile = profile
        self.install = install
        self._workdir = Path(workdir).absolute() if workdir is not None else None
        self._owns_workdir = False
        self._env = dict(env or {})
        self._log_path = Path(log_path).absolute() if log_path is not None else None
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None
        self._command: tuple[str, ...] = ()
        self._lock = threading.Lock()

    # -- properties ---------------------------------------------------------------------

    def _require_ports(self) -> tuple[int, int, int]:
        if self._ports is None:
            raise LauncherError("the server has not been started")
        return self._ports

    @property
    def grpc_url(self) -> str:
        """gRPC endpoint as ``host:port`` (what ``tritonclient.grpc`` expects)."""
        return _host_port(self.profile.host, self._require_ports()[0])

    @property
    def http_url(self) -> str:
        """HTTP endpoint as ``http://host:port``."""
        return "http://" + _host_port(self.profile.host, self._require_ports()[1])

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL, ``http://host:port/metrics``."""
        return "http://" + _host_port(self.profile.host, self._require_ports()[2]) + "/metrics"

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
        p = self.profile
        grpc_port, http_port, metrics_port = ports
        return [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--grpc-address={p.host}",
            f"--grpc-port={grpc_port}",
            f"--http-address={p.host}",
            f"--http-port={http_port}",
            f"--metrics-address={p.host}",
            f"--metrics-port={metrics_port}",
            f"--model-control-mode={p.model_control}",
            f"--exit-timeout-secs={p.exit_timeout}",
            f"--log-verbose={p.log_verbose}",
            *p.extra_args,
        ]

    def _build_env(self) -> dict[str, str]:
        assert self.install is not None
        env = dict(os.environ)
        env.update(self._env)
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

    def start(self, timeout_s: float = 120) -> None:
        """Start the server and wait until ``/v2/health/ready`` answers 200.

        Raises:
            LauncherError: already started, no GPU for a gpu profile, nothing to run, or
                the server exited or was not ready within ``timeout_s`` (the message
                ends with the last lines of the server log).
        """
        self._start(timeout_s, cancel=None)

    def _start(self, timeout_s: float, cancel: threading.Event | None) -> None:
        if self.is_running():
            raise LauncherError(f"server already running (pid {self.pid})")
        try:
            self._launch()
            self._wait_ready(timeout_s, cancel)
        except BaseException:
            self.stop(timeout_s=10)
            raise

    def _launch(self) -> None:
        with self._lock:
            env_path = self._env.get("PATH", os.environ.get("PATH", os.defpath))
            if self.profile.name == "gpu" and shutil.which("nvidia-smi", path=env_path) is None:
                raise LauncherError("no NVIDIA GPU found (nvidia-smi missing)")
            if self.install is None:
                self.install = find_tritonserver()
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="sst-triton-"))
                self._owns_workdir = True
            self._workdir.mkdir(parents=True, exist_ok=True)
            backend_dir = prepare_backend_dir(self.install, self._workdir / "backends")

            p = self.profile
            wanted = [p.grpc_port, p.http_port, p.metrics_port]
            free = iter(_pick_free_ports(p.host, wanted.count(0)))
            ports = tuple(port or next(free) for port in wanted)
            self._ports = (ports[0], ports[1], ports[2])
            self._command = tuple(self._build_command(backend_dir, self._ports))

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
        assert self._proc is not None
        url = self.http_url + "/v2/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxies
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            if not self.is_running():
                code = self._proc.wait()
                raise LauncherError(
                    f"tritonserver exited with code {code} before becoming ready.\n"
                    + self._log_report()
                )
            if cancel is not None and cancel.is_set():
                return
            try:
                with opener.open(url, timeout=2.0) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                exc.close()  # 400 while models are loading
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise LauncherError(
                    f"tritonserver was not ready after {timeout_s:g}s (stopping it).\n"
                    + self._log_report()
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

    def _log_report(self) -> str:
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
        with self._lock:
            proc = self._proc
            if proc is not None and proc.returncode is None:
                if not self._exited_unreaped(0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)  # the server only: it stops stubs
                    if not self._exited_unreaped(timeout_s):
                        self._signal_group(signal.SIGKILL)
                        self._exited_unreaped(10)
                # The leader is a zombie until reaped, so its group id cannot be reused.
                self._signal_group(signal.SIGKILL)
                proc.wait()
            if self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
                self._owns_workdir = False
            return proc.returncode if proc is not None else None

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
        return f"TritonServer({self.model_repository}, profile={self.profile.name}, {state})"


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _exit_status(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def serve_forever(server: TritonServer, startup_timeout_s: float = 120) -> int:
    """Run ``server`` in the foreground until it exits or SIGINT/SIGTERM arrives.

    Prints one line per endpoint once the server is ready. The first SIGINT/SIGTERM
    stops the server gracefully; a second one kills it. Returns the server's exit
    status (0 on a clean shutdown, ``128 + N`` if it died from signal ``N``).

    Raises:
        LauncherError: the server could not start.
    """
    stop_requested = threading.Event()
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        stop_requested.set()
        if signals > 1:
            server.kill()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        server._start(startup_timeout_s, cancel=stop_requested)
        if not stop_requested.is_set():
            print(f"gRPC     {server.grpc_url}", flush=True)
            print(f"HTTP     {server.http_url}", flush=True)
            print(f"metrics  {server.metrics_url}", flush=True)
            print(f"pid      {server.pid}", flush=True)
            print(f"log      {server.log_path}", flush=True)
        while not stop_requested.is_set() and server.is_running():
            stop_requested.wait(0.5)
        if stop_requested.is_set():
            print("stopping tritonserver ...", file=sys.stderr, flush=True)
            code = server.stop(timeout_s=server.profile.exit_timeout + 15)
        else:
            report = server._log_report()  # before stop() removes a temporary workdir
            code = server.stop(timeout_s=5)
            print(
                f"tritonserver exited unexpectedly with code {code}.\n{report}",
                file=sys.stderr,
                flush=True,
            )
        return _exit_status(code)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0 = any free), not {text}")
    return value


def build_arg_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument(
        "--profile", choices=("cpu", "gpu"), default="cpu", help="launch profile (default: cpu)"
    )
    parser.add_argument(
        "--model-repository", type=Path, required=True, metavar="DIR", help="model repository"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address for every endpoint (default: 127.0.0.1)"
    )
    parser.add_argument("--grpc-port", type=_port, default=8001, help="0 = any free port")
    parser.add_argument("--http-port", type=_port, default=8000, help="0 = any free port")
    parser.add_argument("--metrics-port", type=_port, default=8002, help="0 = any free port")
    parser.add_argument(
        "--tritonserver",
        type=Path,
        metavar="PATH",
        help=f"tritonserver binary or install dir (default: ${ENV_TRITONSERVER}, "
        "nvidia-pytriton, PATH, /opt/tritonserver)",
    )
    parser.add_argument("--log-file", type=Path, metavar="PATH", help="server log file")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for readiness (default: 120)",
    )
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose")


def run_serve(args: argparse.Namespace) -> int:
    """Run ``sst serve`` with parsed ``args``; return the process exit status."""
    builder = gpu_profile if args.profile == "gpu" else cpu_profile
    try:
        profile = builder(
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            log_verbose=getattr(args, "log_verbose", 0),
        )
        install = find_tritonserver(args.tritonserver)
        server = TritonServer(
            args.model_repository, profile, install=install, log_path=args.log_file
        )
        return serve_forever(server, startup_timeout_s=args.startup_timeout)
    except (LauncherError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m sst.server_config.launcher``."""
    parser = argparse.ArgumentParser(
        prog="python -m sst.server_config.launcher",
        description="Serve a model repository with NVIDIA Triton Inference Server.",
    )
    build_arg_parser(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
