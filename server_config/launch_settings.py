"""Launch settings (addresses, ports, flags, security) and the port checks made before a
start. (Not a *serving profile*, which an export records: ``cpu``, ``gpu``, ``gpu-native``.)

Every address defaults to ``127.0.0.1`` and the model control mode to ``none``: clients
can infer, but never load or unload models. Binding beyond loopback needs TLS and an
access token (see :mod:`sst.server_config.security`) unless ``insecure`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from sst.server_config.install import LauncherError
from sst.server_config.security import Security
from sst.tracker.defaults import EXIT_TIMEOUT_S, GRPC_PORT, METRICS_PORT
from sst.tracker.serving.limits import ServiceConfig

__all__ = ["LaunchSettings", "check_ports_free", "cpu_settings", "gpu_settings"]

LOOPBACK = "127.0.0.1"
# Flags the launcher manages itself; the settings' extra args may not override them.
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
    "--grpc-use-ssl",
    "--grpc-use-ssl-mutual",
    "--grpc-server-cert",
    "--grpc-server-key",
    "--grpc-root-cert",
    "--grpc-restricted-protocol",
    "--http-restricted-api",
    "--grpc-infer-allocation-pool-size",
)
_MODEL_CONTROL_MODES = ("none", "poll")


@dataclass(frozen=True)
class LaunchSettings:
    """How to run the server.

    Attributes:
        name: ``"cpu"`` or ``"gpu"``.
        host: Address gRPC binds to (loopback unless you mean otherwise). HTTP and
            metrics bind it too, except with TLS: Triton's HTTP has none, so they stay
            on loopback.
        grpc_port: gRPC port; ``0`` picks a free port at launch time.
        http_port: HTTP port; ``0`` picks a free port at launch time.
        metrics_port: Prometheus metrics port; ``0`` picks a free port at launch time.
        model_control: ``"none"`` (default) or ``"poll"``. ``"explicit"`` is refused so
            clients can never load or unload models.
        extra_args: Further ``tritonserver`` arguments (not the flags the launcher sets).
        log_verbose: ``--log-verbose`` level.
        exit_timeout: ``--exit-timeout-secs``: how long in-flight requests may finish
            after a stop is asked for.
        security: Tokens and TLS (a random admin token by default).
        max_request_bytes: The most bytes of one gRPC request. Clients then reach the
            server through its front door (:mod:`~sst.server_config.front_door`), which
            refuses a larger message before receiving it, and tritonserver listens on a
            loopback port; HTTP and metrics stay on loopback. ``None``: tritonserver
            serves gRPC itself, without a size limit.
    """

    name: Literal["cpu", "gpu"] = "cpu"
    host: str = LOOPBACK
    grpc_port: int = GRPC_PORT
    http_port: int = 8000
    metrics_port: int = METRICS_PORT
    model_control: str = "none"
    extra_args: tuple[str, ...] = ()
    log_verbose: int = 0
    exit_timeout: int = EXIT_TIMEOUT_S
    security: Security = field(default_factory=Security)
    max_request_bytes: int | None = ServiceConfig.max_request_bytes

    def __post_init__(self) -> None:
        """Validate the fields."""
        if self.name not in ("cpu", "gpu"):
            raise ValueError(f"settings name must be 'cpu' or 'gpu', not {self.name!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, not {port}")
        fixed = [p for p in (self.grpc_port, self.http_port, self.metrics_port) if p]
        if len(fixed) != len(set(fixed)):
            raise ValueError("grpc_port, http_port and metrics_port must differ")
        if self.model_control not in _MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control must be one of {_MODEL_CONTROL_MODES}, not "
                f"{self.model_control!r} (explicit model control is never exposed)"
            )
        if self.max_request_bytes is not None and self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, not {self.max_request_bytes}")
        if self.log_verbose < 0 or self.exit_timeout < 0:
            raise ValueError("log_verbose and exit_timeout must be >= 0")
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        for arg in self.extra_args:
            if arg.split("=", 1)[0] in _MANAGED_FLAGS:
                raise ValueError(f"{arg!r} is set by the launcher; use the settings' fields")
        self.security.check_bind(self.host)

    @property
    def serves_http(self) -> bool:
        """Whether tritonserver's HTTP API is served: not behind a front door, where
        tritonserver listens on a Unix socket only the server's user can open (HTTP
        cannot, and its keys would then be reachable by any local user)."""
        return self.max_request_bytes is None

    @property
    def local_host(self) -> str:
        """Address of the HTTP and metrics endpoints: loopback behind a front door or
        with TLS (Triton's HTTP has neither a size limit nor TLS), else ``host``."""
        if self.security.tls is not None or self.max_request_bytes is not None:
            return LOOPBACK
        return self.host


def cpu_settings(**overrides: Any) -> LaunchSettings:
    """Return the CPU settings (loopback, the default ports), with ``overrides``."""
    return dataclasses.replace(LaunchSettings(name="cpu"), **overrides)


def gpu_settings(**overrides: Any) -> LaunchSettings:
    """Return the GPU settings; they build anywhere but only start where a GPU exists."""
    return dataclasses.replace(LaunchSettings(name="gpu"), **overrides)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def pick_free_ports(host: str, count: int) -> list[int]:
    """Bind ``count`` sockets to ``host``:0 at once and return the distinct ports."""
    bind_host = host.strip("[]")
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(_family(host), socket.SOCK_STREAM))
            sock.bind((bind_host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def check_ports_free(endpoints: dict[str, tuple[str, int]]) -> None:
    """Bind each ``name: (host, port)`` once and release it, before any model loads.

    Raises:
        LauncherError: names the endpoint, the address and why it cannot be bound.
    """
    for name, (host, port) in endpoints.items():
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            # As the server binds: a port left in TIME_WAIT by a stopped server is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host.strip("[]"), port))
            except OSError as exc:
                why = (
                    "it is already in use (another server?)"
                    if exc.errno == errno.EADDRINUSE
                    else exc.strerror or str(exc)
                )
                raise LauncherError(
                    f"{name} port {port} on {host} cannot be bound: {why}. "
                    f"Choose another with --{name.lower()}-port (0 = any free port)."
                ) from None
