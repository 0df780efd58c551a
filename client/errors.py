"""Exceptions raised by the SST Serve client.

Tree (every class is also an :class:`sst.tracker.errors.SSTError`)::

    ClientError
    ├── ServerUnavailable        cannot reach the server (retried with backoff first)
    ├── RequestTimeout           no answer within the timeout
    ├── InvalidRequest           the server rejected the input (its message names it)
    ├── SessionLost              the server no longer holds the session (re-primed first)
    ├── TooManySessions          the server is at its session cap (not retried)
    ├── AccessDenied             missing or wrong access token (not retried)
    └── ServerError              anything else the server reported

``tritonclient``/``grpc`` errors are converted at the boundary (:func:`convert`) by their
gRPC status code, through one table (:data:`BY_STATUS`); the server's message is kept.
No caller ever needs to import ``tritonclient`` or ``grpc``.
"""

from __future__ import annotations

from sst.tracker.errors import SSTError

__all__ = ["ClientError", "ServerUnavailable", "RequestTimeout", "InvalidRequest",
           "SessionLost", "TooManySessions", "AccessDenied", "ServerError", "BY_STATUS",
           "status_name", "convert"]


class ClientError(SSTError):
    """Base of every client error."""


class ServerUnavailable(ClientError):
    pass


class RequestTimeout(ClientError):
    pass


class InvalidRequest(ClientError):
    pass


class SessionLost(ClientError):
    pass


class TooManySessions(ClientError):
    pass


class AccessDenied(ClientError):
    pass


class ServerError(ClientError):
    pass


#: gRPC status code name -> client exception. Codes not listed become ServerError.
BY_STATUS: dict[str, type[ClientError]] = {
    "UNAVAILABLE": ServerUnavailable,
    # This client never cancels a call, so a CANCELLED answer means the server (or its
    # front door, stopping) dropped it: retried like UNAVAILABLE.
    "CANCELLED": ServerUnavailable,
    "DEADLINE_EXCEEDED": RequestTimeout,
    "INVALID_ARGUMENT": InvalidRequest,
    "OUT_OF_RANGE": InvalidRequest,
    "NOT_FOUND": SessionLost,           # the orchestrator's "unknown session"
    "RESOURCE_EXHAUSTED": TooManySessions,
    "UNAUTHENTICATED": AccessDenied,
    "PERMISSION_DENIED": AccessDenied,
}

# Servers that predate some codes, and answers of Triton itself that share a code with
# other errors: the message is the only thing that tells them apart. These are the only
# message checks, each for one known answer, applied after the code says what it can.
_BY_MESSAGE: tuple[tuple[str, str, type[ClientError]], ...] = (
    # Triton's sequence batcher, for a non-START request of a sequence it does not hold
    # (e.g. after a restart): INVALID_ARGUMENT, though the session is what was lost.
    ("INVALID_ARGUMENT", "must specify the start flag", SessionLost),
    # The session cap. A Triton model cannot answer RESOURCE_EXHAUSTED (Triton's error
    # codes map to UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE,
    # UNIMPLEMENTED, ALREADY_EXISTS and CANCELLED only), so the orchestrator answers
    # UNAVAILABLE; retrying that for minutes would not help, so it must not look unavailable.
    ("UNAVAILABLE", "sessions, its limit", TooManySessions),
    # The front door of `sst serve`, for a message over the request-size cap (gRPC's own
    # "Received message larger than max (N vs. M)"): the request, not the sessions.
    ("RESOURCE_EXHAUSTED", "larger than max", InvalidRequest),
    # Triton's restricted-protocol check answers a missing or wrong token with UNAVAILABLE.
    ("UNAVAILABLE", "protocol is restricted", AccessDenied),
    # A model process that died (its stub "is not healthy", INTERNAL): `sst serve`
    # restarts the server within seconds, so this is retried like UNAVAILABLE.
    ("INTERNAL", "is not healthy", ServerUnavailable),
    # A model unloaded while the server stops ("... has no available versions",
    # NOT_FOUND): the server is going down or coming up, not the session lost.
    ("NOT_FOUND", "has no available versions", ServerUnavailable),
)


def status_name(exc: BaseException) -> str:
    """The gRPC status code name of a ``tritonclient`` or ``grpc`` error
    (``"UNAVAILABLE"``), or ``""`` when it carries none."""
    status: object = None
    status_fn = getattr(exc, "status", None)
    code_fn = getattr(exc, "code", None)
    if callable(status_fn):  # tritonclient's InferenceServerException: "StatusCode.X"
        status = status_fn()
    elif callable(code_fn):  # a raw grpc.RpcError: grpc.StatusCode.X
        status = code_fn()
    if status is None:
        return ""
    name = getattr(status, "name", None)
    return str(name) if name else str(status).rpartition(".")[2]


def _message(exc: BaseException) -> str:
    for attr in ("message", "details"):
        fn = getattr(exc, attr, None)
        if callable(fn):
            msg = fn()
            if msg:
                return str(msg)
    return str(exc)


def convert(exc: BaseException, *, in_session: bool = True) -> ClientError:
    """Map a ``tritonclient`` / ``grpc`` exception to the client's own tree.

    ``in_session=False`` (a stateless request): NOT_FOUND cannot mean a lost session
    there, so it is a :class:`ServerError` (e.g. a model the server does not serve)."""
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, ConnectionError):  # a transport's own socket errors, by type
        return ServerUnavailable(str(exc))
    if isinstance(exc, TimeoutError):
        return RequestTimeout(str(exc))
    code = status_name(exc)
    message = _message(exc)
    low = message.lower()
    for when, text, cls in _BY_MESSAGE:
        if code == when and text in low:
            return cls(message)
    cls = BY_STATUS.get(code, ServerError)
    if cls is SessionLost and not in_session:
        cls = ServerError
    if cls is ServerError:
        return ServerError(f"{code}: {message}" if code else message)
    return cls(message)
