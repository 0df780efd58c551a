"""Who may talk to the server: TLS for gRPC and access tokens on Triton's API groups.

Triton checks tokens itself (``--grpc-restricted-protocol`` and ``--http-restricted-api``):
a request to a restricted API group must carry a header whose value equals the token.

* **Admin APIs** (``shared-memory``, ``model-repository``, ``statistics``, ``trace``,
  ``logging``) always need the admin token, on loopback too. Without one, a random admin
  token is made at start.
* **Client APIs** (``health``, ``metadata``, ``model-config``, ``inference``) need the
  access token when one is set; a server bound beyond loopback must have one, and gRPC
  over TLS, unless ``insecure`` is set explicitly.

Over HTTP the token goes in header :data:`ACCESS_HEADER` (:data:`ADMIN_HEADER`); over
gRPC Triton expects the metadata key prefixed with ``triton-grpc-protocol-``
(:data:`GRPC_ACCESS_HEADER`, :data:`GRPC_ADMIN_HEADER`). Triton answers a request without
the right token with UNAVAILABLE, "This protocol is restricted, expecting header ...".

TLS is gRPC's own: in the front door (:mod:`~sst.server_config.front_door`) that clients
reach, or in Triton (``--grpc-use-ssl``, ``--grpc-use-ssl-mutual``) when it serves gRPC
itself; nothing here does cryptography. Triton's HTTP endpoint has no TLS, so with TLS
on (or a front door), HTTP and metrics stay on loopback (the launcher's own readiness
checks use them).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import setproctitle

from sst.tracker.defaults import ENV_ADMIN_TOKEN, ENV_TOKEN
from sst.tracker.serving.wire import (
    ACCESS_HEADER,
    ADMIN_HEADER,
    GRPC_ACCESS_HEADER,
    GRPC_ADMIN_HEADER,
)

__all__ = [
    "ACCESS_HEADER",
    "ADMIN_API_GROUPS",
    "ADMIN_HEADER",
    "CLIENT_API_GROUPS",
    "ENV_ADMIN_TOKEN",
    "ENV_TOKEN",
    "GRPC_ACCESS_HEADER",
    "GRPC_ADMIN_HEADER",
    "GRPC_METHOD_GROUPS",
    "Security",
    "TlsFiles",
    "TokenGate",
    "hide_from_cmdline",
    "is_loopback",
    "new_token",
]


CLIENT_API_GROUPS = ("health", "metadata", "model-config", "inference")
"""What a client needs: readiness, model metadata and configs, inference."""
ADMIN_API_GROUPS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
"""Operator APIs: never open to a client without the admin token."""

#: The API group (as ``--grpc-restricted-protocol`` names it) of each method of Triton's
#: gRPC service. A method not listed is not forwarded by the front door.
GRPC_METHOD_GROUPS: dict[str, str] = {
    "ServerLive": "health", "ServerReady": "health", "ModelReady": "health",
    "ServerMetadata": "metadata", "ModelMetadata": "metadata",
    "ModelConfig": "model-config",
    "ModelInfer": "inference", "ModelStreamInfer": "inference",
    "SystemSharedMemoryStatus": "shared-memory", "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory", "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory", "CudaSharedMemoryUnregister": "shared-memory",
    "RepositoryIndex": "model-repository", "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "ModelStatistics": "statistics",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hide_from_cmdline(secrets_: Sequence[str | None]) -> bool:
    """Rewrite this process's command line (``/proc/self/cmdline``, which every local
    user can read) with each of ``secrets_`` replaced by ``***``; returns whether it had
    any. A token given as a flag is visible from the start of the process until this
    runs: the environment variables are the way to give one unseen."""
    hidden = [s for s in secrets_ if s]
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if not hidden or not any(h in arg for h in hidden for arg in argv):
        return False
    for h in hidden:
        argv = [arg.replace(h, "***") for arg in argv]
    setproctitle.setproctitle(" ".join(argv))
    return True


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a socket on this machine (``localhost``, 127/8, ::1)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _check_token(value: str, what: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(
            f"{what} must be 16-256 characters from A-Z a-z 0-9 . _ ~ + / - "
            f"(got {len(value)} characters)"
        )
    return value


def _check_file(path: Path | None, what: str) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    try:
        head = path.read_bytes()[:4096]
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN " not in head:
        raise ValueError(f"{what} {path} is not PEM (no '-----BEGIN' line)")
    return path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for gRPC over TLS.

    Attributes:
        cert: The server's certificate (chain).
        key: Its private key.
        client_ca: CA certificate(s) for client certificates; given, clients must present
            a certificate it signed (mutual TLS).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        """Check that each file exists and is PEM."""
        object.__setattr__(self, "cert", _check_file(self.cert, "TLS certificate"))
        object.__setattr__(self, "key", _check_file(self.key, "TLS key"))
        object.__setattr__(self, "client_ca", _check_file(self.client_ca, "client CA"))

    def triton_args(self) -> list[str]:
        """``tritonserver`` flags for these files."""
        args = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.cert}",
            f"--grpc-server-key={self.key}",
        ]
        if self.client_ca is not None:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return args


@dataclass(frozen=True)
class Security:
    """Tokens and TLS of one server.

    Attributes:
        admin_token: Token for the admin APIs (made at random if not given).
        access_token: Token for the client APIs; ``None`` leaves them open (loopback only,
            or with ``insecure``).
        tls: gRPC TLS files, or ``None`` for plaintext gRPC.
        insecure: Allow binding beyond loopback without TLS and an access token.
    """

    admin_token: str = ""
    access_token: str | None = None
    tls: TlsFiles | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        """Make an admin token if none was given and check the tokens."""
        if not self.admin_token:
            object.__setattr__(self, "admin_token", new_token())
        _check_token(self.admin_token, "the admin token")
        if self.access_token is not None:
            _check_token(self.access_token, "the access token")
            if self.access_token == self.admin_token:
                raise ValueError("the access token and the admin token must differ")

    @classmethod
    def from_env(
        cls,
        *,
        access_token: str | None = None,
        admin_token: str | None = None,
        tls: TlsFiles | None = None,
        insecure: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Security:
        """Tokens from the arguments, else from ``$SST_TOKEN`` / ``$SST_ADMIN_TOKEN``."""
        env = os.environ if environ is None else environ
        return cls(
            admin_token=admin_token or env.get(ENV_ADMIN_TOKEN, ""),
            access_token=access_token or env.get(ENV_TOKEN) or None,
            tls=tls,
            insecure=insecure,
        )

    def check_bind(self, host: str) -> None:
        """Refuse to bind ``host`` beyond loopback without TLS and an access token.

        Raises:
            ValueError: names what is missing and how to proceed.
        """
        if is_loopback(host) or self.insecure:
            return
        missing = []
        if self.tls is None:
            missing.append("TLS (--tls-cert and --tls-key)")
        if self.access_token is None:
            missing.append(f"an access token (--token or ${ENV_TOKEN})")
        if missing:
            raise ValueError(
                f"binding {host} exposes the server beyond this machine; that needs "
                f"{' and '.join(missing)}, or --insecure to run without them"
            )

    def triton_args(self, tls: bool = True) -> list[str]:
        """``tritonserver`` flags: TLS (unless ``tls`` is False: a front door in front of
        it does TLS) and the restricted API groups of both protocols."""
        args = self.tls.triton_args() if self.tls is not None and tls else []
        groups: list[tuple[tuple[str, ...], str, str]] = [
            (ADMIN_API_GROUPS, ADMIN_HEADER, self.admin_token)
        ]
        if self.access_token is not None:
            groups.append((CLIENT_API_GROUPS, ACCESS_HEADER, self.access_token))
        for apis, header, token in groups:
            spec = f"{','.join(apis)}:{header}={token}"
            args += [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]
        return args

    @classmethod
    def internal(cls) -> Security:
        """Fresh random tokens for a tritonserver behind a front door: both API groups
        restricted, known only to this process (never a user's token)."""
        return cls(admin_token=new_token(), access_token=new_token())

    def client_headers(self, protocol: Literal["grpc", "http"] = "grpc") -> dict[str, str]:
        """Headers a client sends to use the client APIs (empty when they are open)."""
        if self.access_token is None:
            return {}
        return {GRPC_ACCESS_HEADER if protocol == "grpc" else ACCESS_HEADER: self.access_token}

    def admin_headers(self, protocol: Literal["grpc", "http"] = "grpc") -> dict[str, str]:
        """Headers for the admin APIs."""
        return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: self.admin_token}

    def redact(self, text: str) -> str:
        """``text`` with every token replaced by ``***`` (for logs and messages)."""
        for token in (self.admin_token, self.access_token):
            if token:
                text = text.replace(token, "***")
        return text


@dataclass(frozen=True)
class TokenGate:
    """The front door's token check: a call is checked against the user's tokens
    (``user``) and forwarded with the internal ones (``internal``) that tritonserver was
    started with, so that no user token is ever on a command line.

    The check is Triton's own: a call to an admin group needs the admin token, a call to a
    client group the access token when one is set, each in its gRPC metadata key.
    """

    user: Security
    internal: Security

    def refusal(self, method: str, metadata: Mapping[str, str | bytes]) -> str | None:
        """Triton's message for a call to ``method`` (its last path part) that lacks the
        token its group needs; None when it may pass."""
        group = GRPC_METHOD_GROUPS.get(method)
        if group is None:
            return f"unknown method {method[:64]!r}"
        if group in ADMIN_API_GROUPS:
            header, token = GRPC_ADMIN_HEADER, self.user.admin_token
        elif self.user.access_token is not None:
            header, token = GRPC_ACCESS_HEADER, self.user.access_token
        else:
            return None
        got = metadata.get(header, "")
        got_bytes = got.encode() if isinstance(got, str) else got
        if hmac.compare_digest(got_bytes, token.encode()):
            return None
        return f"This protocol is restricted, expecting header '{header}'"

    def headers(self, method: str) -> tuple[tuple[str, str], ...]:
        """The internal token header that a call to ``method`` carries to tritonserver."""
        group = GRPC_METHOD_GROUPS.get(method)
        if group in ADMIN_API_GROUPS:
            return ((GRPC_ADMIN_HEADER, self.internal.admin_token),)
        assert self.internal.access_token is not None
        return ((GRPC_ACCESS_HEADER, self.internal.access_token),)
