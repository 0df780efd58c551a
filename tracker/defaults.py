"""Every default that more than one layer uses, defined once (the lowest layer: it imports
nothing). A change here changes the engine, the server, its configs, the CLI and the
client together; ``tests/test_defaults.py`` fails if one is written anywhere else."""

from __future__ import annotations

import secrets

__all__ = ["MAX_LABELS", "GRPC_PORT", "METRICS_PORT", "DEFAULT_SERVER", "IDLE_SECONDS",
           "EXIT_TIMEOUT_S", "SUPPORT_CACHE_MB", "TRACKER_MODEL", "SEGMENT_MODEL",
           "DEFAULT_MODEL", "DEMO_IMAGE_SIZE", "MODES", "ENV_TOKEN", "ENV_ADMIN_TOKEN",
           "ENV_TLS_CA", "ENV_TRITONSERVER", "ENV_ENGINE", "ENGINES",
           "new_session_id"]

#: The most labels (objects) one support mask may hold, in process and on a server.
MAX_LABELS = 64
#: The gRPC port clients connect to (the front door of ``sst serve``).
GRPC_PORT = 8001
#: Triton's Prometheus metrics port.
METRICS_PORT = 8002
#: Where a client looks for a server when told nothing else.
DEFAULT_SERVER = f"127.0.0.1:{GRPC_PORT}"
#: Seconds a session may stay idle before the server forgets it.
IDLE_SECONDS = 600.0
#: Seconds in-flight requests get to finish once a server is asked to stop.
EXIT_TIMEOUT_S = 10
#: MiB of primed supports the engine keeps (by content) for requests that repeat them.
SUPPORT_CACHE_MB = 256
#: The Triton model that holds sessions, and the one for stateless requests.
TRACKER_MODEL = "sst_tracker"
SEGMENT_MODEL = "sst_segment"
#: The model a command uses when told none (``sst models`` lists the others).
DEFAULT_MODEL = "sam2.1_hiera_tiny"
#: ``sst demo``'s model input size: its pictures are small.
DEMO_IMAGE_SIZE = 512
#: How a run's queries are tracked: sequential (each remembers the ones before it) or
#: independent (each from the supports alone).
MODES = ("sequential", "independent")
#: The environment variables of the access token (client and server), the admin token
#: (server), the CA bundle a client checks the server with, and tritonserver's location.
ENV_TOKEN = "SST_TOKEN"
ENV_ADMIN_TOKEN = "SST_ADMIN_TOKEN"
ENV_TLS_CA = "SST_TLS_CA"
ENV_TRITONSERVER = "SST_TRITONSERVER"
#: The engine used where none is named (``auto``, ``ort`` or ``torch``; unset: ``auto``),
#: in process and on a server's CPU profile alike: pins it for reproducible runs.
ENV_ENGINE = "SST_ENGINE"
#: The engines a command may name: ``auto`` (measured, :mod:`sst.tracker.engine_choice`),
#: ``ort`` (ONNX Runtime) and ``torch`` (PyTorch).
ENGINES = ("auto", "ort", "torch")


def new_session_id() -> int:
    """A random non-zero 63-bit session ID (Triton's correlation ID): never sequential,
    so one session's ID says nothing about another's."""
    return secrets.randbits(63) or 1
