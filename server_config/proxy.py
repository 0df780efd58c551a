"""Configs of the stock proxies that put several ``sst serve`` replicas behind one address
with session affinity (the files under ``deploy/`` are rendered from these).

Every call of a session carries its ID as the gRPC metadata ``sst-session`` (HTTP/2
header ``sst-session``); the proxy hashes it onto a ring of replicas, so all of a
session's calls reach the replica that holds its memory bank, and losing one replica
moves only the sessions it held:

* **nginx** (``grpc_pass``; ``hash $http_sst_session consistent``, ketama): a replica
  that refuses connections is skipped for that call and marked failed for
  ``fail_timeout`` (passive checks: nginx without a commercial licence has no active
  ones); its sessions land on their next replica on the ring, which does not know them
  (NOT_FOUND), and their clients prime them there. Upstreams are fixed addresses.
* **HAProxy** (``balance hdr(sst-session)``, ``hash-type consistent``): the same, with
  active checks of each replica's ``/ready`` (a draining replica leaves the ring) and,
  in Kubernetes, replicas found through the DNS of a headless Service
  (``server-template``), which nginx cannot follow.

A request is never sent twice: only a call that could not be sent (connection refused)
goes to another replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sst.server_config.front_door import MESSAGE_OVERHEAD_BYTES
from sst.tracker.defaults import GRPC_PORT
from sst.tracker.serving.limits import ServiceConfig

__all__ = ["render_nginx", "render_haproxy", "Upstream", "NGINX_TEMP_DIRS"]

#: The largest gRPC message a replica takes by default, in MiB (``--max-request-mb``'s
#: default and the front door's allowance for framing).
DEFAULT_MAX_MB = (ServiceConfig.max_request_bytes + MESSAGE_OVERHEAD_BYTES) // 2**20
Upstream = tuple[str, int, int | None]  # host, gRPC port, health port (None: no checks)
#: nginx's temporary folders, ``<prefix>/<name>_temp`` with a ``prefix`` (made by the caller)
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _check(text: str, what: str) -> str:
    if not text or any(c.isspace() or c in ";{}#'\"" for c in text):
        raise ValueError(f"{what} {text!r} is not a host name or address")
    return text


def render_nginx(upstreams: Sequence[Upstream], listen: str, *, prefix: Path | None = None,
                 max_mb: int = DEFAULT_MAX_MB, user: str | None = None) -> str:
    """An ``nginx.conf`` that listens on ``listen`` (``host:port``, plaintext HTTP/2) and
    hashes ``sst-session`` onto ``upstreams``. ``prefix``: a folder for the pid file, logs
    and temporary files (a process of its own, in the foreground; the caller makes its
    :data:`NGINX_TEMP_DIRS`); None: the system's."""
    if not upstreams:
        raise ValueError("a proxy needs at least one replica")
    lines = [f"        server {_check(h, 'replica')}:{int(p)} max_fails=1 fail_timeout=5s;"
             for h, p, _ in upstreams]
    own = prefix is not None
    head = []
    if user:
        head.append(f"user {_check(user, 'user')};")
    head += ["worker_processes 1;"]
    if own:
        head += ["daemon off;", f"pid {prefix}/nginx.pid;", f"error_log {prefix}/error.log warn;"]
    temp = ""
    if own:
        temp = "".join(f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
                       for kind in NGINX_TEMP_DIRS)
    access = (f"    access_log {prefix}/access.log sst;\n" if own
              else "    access_log /dev/stdout sst;\n")
    return "\n".join(head) + f"""
events {{
    worker_connections 1024;
}}

http {{
    # which replica took each call of each session (affinity can be read from here too)
    log_format sst '$time_iso8601 session=$http_sst_session replica=$upstream_addr '
                   'status=$status grpc=$sent_trailer_grpc_status';
{access}{temp}    # a replica takes gRPC messages up to its --max-request-mb (+1 MiB of framing)
    client_max_body_size {int(max_mb)}m;

    upstream sst_replicas {{
        # every call of a session names it (sst-session): consistent hashing sends
        # them all to one replica, and a lost replica moves only its own sessions
        hash $http_sst_session consistent;
{chr(10).join(lines)}
        keepalive 64;
    }}

    server {{
        listen {_check(listen, 'listen address')} http2;
        location / {{
            grpc_pass grpc://sst_replicas;
            # only a call that could not be sent (replica down) goes to the next one:
            # a frame is never answered twice
            grpc_next_upstream error timeout;
            grpc_next_upstream_tries 3;
            grpc_connect_timeout 2s;
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
            grpc_socket_keepalive on;
        }}
    }}
}}
"""


def render_haproxy(upstreams: Sequence[Upstream] | None, listen: str, *,
                   dns_name: str | None = None, max_replicas: int = 16,
                   health_port: int = 8003, stats_socket: Path | None = None) -> str:
    """An ``haproxy.cfg`` that listens on ``listen`` (``host:port``, plaintext HTTP/2)
    and hashes ``sst-session`` onto the replicas: ``upstreams`` (fixed addresses), or
    up to ``max_replicas`` found in the DNS of ``dns_name`` (a Kubernetes headless
    Service). Each replica is checked on its ``/ready`` (``health_port``)."""
    if upstreams is None and dns_name is None:
        raise ValueError("give the replicas' addresses or a DNS name to find them")
    # the checks speak HTTP/1.1 to the health port (they would use the servers' h2)
    check = "check inter 1s fall 2 rise 2 check-proto h1"
    if upstreams is not None:
        servers = []
        for i, (h, p, hp) in enumerate(upstreams):
            port_check = f" port {int(hp)}" if hp is not None else ""
            servers.append(f"    server replica{i} {_check(h, 'replica')}:{int(p)} proto h2 "
                           f"{check}{port_check}")
        body = "\n".join(servers)
        resolvers = ""
    else:
        assert dns_name is not None
        body = (f"    server-template replica {int(max_replicas)} "
                f"{_check(dns_name, 'DNS name')}:{GRPC_PORT} proto h2 {check} "
                f"port {int(health_port)} resolvers cluster init-addr none")
        resolvers = """
resolvers cluster
    parse-resolv-conf
    hold valid 5s
"""
    stats = f"    stats socket {stats_socket} mode 600\n" if stats_socket else ""
    return f"""global
    log stdout format raw local0 info
{stats}
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    # only a call that could not be sent (replica down) is retried, on another replica
    retries 2
    option redispatch 1
    retry-on conn-failure
{resolvers}
frontend grpc_in
    bind {_check(listen, 'listen address')} proto h2
    default_backend sst_replicas

backend sst_replicas
    # every call of a session names it (sst-session): consistent hashing sends them all
    # to one replica, and a lost or draining replica moves only its own sessions
    balance hdr(sst-session)
    hash-type consistent
    option httpchk GET /ready
{body}
"""
