"""Whether a starting tritonserver is ready, and whether its log says it never will be.

Behind the front door tritonserver is asked over its own gRPC (a Unix socket) with its
internal token; a server without a door is asked over HTTP, as clients reach it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

__all__ = ["FATAL_MARKERS", "fatal_line", "grpc_probe", "http_probe"]

#: Log lines after which tritonserver waits for a model that will never load.
FATAL_MARKERS = ("Failed to preinitialize Python stub",)


def grpc_probe(url: str, headers: Mapping[str, str]) -> Callable[[], bool]:
    """A check of ``ServerReady`` at ``url`` (``unix:PATH`` or ``host:port``)."""
    def ready() -> bool:
        client = grpcclient.InferenceServerClient(url)
        try:
            return bool(client.is_server_ready(headers=dict(headers), client_timeout=2.0))
        except InferenceServerException:
            return False
        finally:
            client.close()

    return ready


def http_probe(url: str, headers: Mapping[str, str]) -> Callable[[], bool]:
    """A check of ``/v2/health/ready`` under ``url`` (``http://host:port``)."""
    request = urllib.request.Request(url + "/v2/health/ready", headers=dict(headers))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxies

    def ready() -> bool:
        try:
            with opener.open(request, timeout=2.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()  # 400 while models are loading
        except (OSError, ValueError):
            pass  # not listening yet
        return False

    return ready


def fatal_line(log_lines: Sequence[str]) -> str | None:
    """The message of a log line that says a model will never load although tritonserver
    keeps running (a Python model whose stub cannot start), or None."""
    for line in log_lines:
        if any(marker in line for marker in FATAL_MARKERS):
            return line.split("]", 1)[-1].strip()
    return None
