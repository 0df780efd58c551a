"""The connection of every command that talks to an ``sst serve`` server, from its options
(declared in :mod:`sst.client.arguments`).

``--server HOST:PORT``, ``--tls-ca PEM`` (TLS, the server's certificate checked against
this CA bundle) and ``--token TOKEN`` (sent with every request as the ``sst-access-token``
header; prefer the ``SST_TOKEN`` environment variable, command lines are visible to other
users). ``SST_TLS_CA`` and ``SST_TOKEN`` are the defaults of the two flags.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from sst.client._client import Client
from sst.tracker.defaults import ENV_TLS_CA, ENV_TOKEN
from sst.tracker.errors import InputError

__all__ = ["connection_options", "client_from_args"]

log = logging.getLogger("sst")


def _is_loopback(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """``ssl``, ``root_certificates`` and ``token`` for :class:`sst.client.Client` (or
    :class:`sst.client.remote.RemoteBackend`) from the flags, else the environment."""
    ca = getattr(args, "tls_ca", None) or os.environ.get(ENV_TLS_CA) or None
    token = getattr(args, "token", None) or os.environ.get(ENV_TOKEN) or None
    if ca is not None:
        path = Path(ca)
        if not path.is_file():
            raise InputError("--tls-ca", f"CA bundle {path} not found; expected a PEM file")
        if b"-----BEGIN CERTIFICATE-----" not in path.read_bytes()[:1 << 20]:
            raise InputError("--tls-ca", f"{path} holds no PEM certificate")
        ca = str(path)
    server = getattr(args, "server", None) or ""
    if token and ca is None and not _is_loopback(server):
        log.warning("the token is sent to %s without TLS; give --tls-ca to protect it",
                    server)
    return {"ssl": ca is not None, "root_certificates": ca, "token": token}


def client_from_args(args: argparse.Namespace, **kw: Any) -> Client:
    """A :class:`sst.client.Client` for ``args.server`` with the TLS/token options;
    ``kw`` go to the client (``timeout``, ``retry_for``, ...)."""
    return Client(args.server, **connection_options(args), **kw)
