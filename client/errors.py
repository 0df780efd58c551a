"""Exceptions raised by the SST Serve client.

Tree (every class is also an :class:`sst.tracker.errors.SSTError`)::

    ClientError
    ├── ServerUnavailable        cannot reach the server (retried with backoff first)
    ├── RequestTimeout           no answer within the timeout
    ├── InvalidRequest           the server rejected the input (its message names it)
    ├── SessionLost              the server no longer holds the session (re-primed first)
    ├── TooManySessions          the server is at its session cap (not retried)
    ├── ResourceExhausted        a limit of the transport was passed (RESOURCE_EXHAUSTED:
    │                            e.g. metadata over gRPC's 8 KiB; not retried)
    ├── AccessDenied             missing or wrong access token (not retried)
    └── ServerError              anything else the server reported

``tritonclient``/``grpc`` errors are converted at the boundary (:func:`convert`). A
refusal the server gave a reason (:class:`~sst.tracker.errors.Reason`: the gRPC
trailing metadata ``sst-reason`` the front door sets, or the reason tag at the head of
the message of a tritonserver reached directly) is converted by its reason, through one
table (:data:`BY_REASON`), and keeps it as ``err.reason``; anything else by its gRPC
status code (:data:`BY_STATUS`). The server's message is kept. No caller ever needs to
import ``tritonclient`` or ``grpc``.
"""

from __future__ import annotations

from sst.tracker.errors import (
    REASON_TRAILER,
    AccessDenied,
    ClientError,
    InvalidRequest,
    Reason,
    RequestTimeout,
    ResourceExhausted,
    ServerError,
    ServerUnavailable,
    SessionLost,
    TooManySessions,
    split_tag,
)

__all__ = ["ClientError", "ServerUnavailable", "RequestTimeout", "InvalidRequest",
           "SessionLost", "TooManySessions", "ResourceExhausted", "AccessDenied",
           "ServerError", "BY_STATUS", "BY_REASON", "Reason", "status_name", "reason_of", "convert"]


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
    # gRPC's own limits (a message or its metadata too large): never the session cap,
    # which the server answers UNAVAILABLE with the reason over_capacity
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAUTHENTICATED": AccessDenied,
    "PERMISSION_DENIED": AccessDenied,
}

#: The server's reason of a refusal -> client exception: what the client acts on. A
#: reason not listed (``draining``) leaves the class to the status code: a START refused
#: while draining is UNAVAILABLE (start elsewhere), a later frame NOT_FOUND (prime again).
BY_REASON: dict[Reason, type[ClientError]] = {
    Reason.SESSION_EXPIRED: SessionLost,
    Reason.UNKNOWN_SESSION: SessionLost,
    Reason.OVER_CAPACITY: TooManySessions,
    Reason.BAD_KEY: InvalidRequest,
    Reason.PIXEL_BUDGET: InvalidRequest,
    Reason.REQUEST_TOO_LARGE: InvalidRequest,
}

# Servers that predate some codes, and answers of Triton itself that share a code with
# other errors: the message is the only thing that tells them apart. These are the only
# message checks, each for one known answer, applied after the code says what it can.
_BY_MESSAGE: tuple[tuple[str, str, type[ClientError]], ...] = (
    # Triton's sequence batcher, for a non-START request of a sequence it does not hold
    # (e.g. after a restart): INVALID_ARGUMENT, though the session is what was lost.
    ("INVALID_ARGUMENT", "must specify the start flag", SessionLost),
    # The front door of `sst serve`, for a message over the request-size cap (gRPC's own
    # "Received message larger than max (N vs. M)"): the request, not the sessions.
    ("RESOURCE_EXHAUSTED", "larger than max", InvalidRequest),
    # Triton's restricted-protocol check answers a missing or wrong token with UNAVAILABLE.
    ("UNAVAILABLE", "protocol is restricted", AccessDenied),
    # A model process that died (its stub "is not healthy", INTERNAL): `sst serve`
    # restarts the server within seconds, so this is retried like UNAVAILABLE.
    ("INTERNAL", "is not healthy", ServerUnavailable),
    # A stream cut by the transport before any status came (a proxy in front of a replica
    # that died closes it with END_STREAM and no trailers; gRPC reports UNKNOWN with
    # "Stream removed", where UNAVAILABLE is meant: grpc/grpc#13800, #34076): the server
    # went away, not an error in the request.
    ("UNKNOWN", "stream removed", ServerUnavailable),
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


def reason_of(exc: BaseException) -> tuple[Reason | None, str]:
    """``(reason, message)`` of a ``tritonclient`` / ``grpc`` error: the reason from the
    ``sst-reason`` trailing metadata (of the error or the gRPC error it was raised from)
    or from the reason tag at the head of the message; the message without the tag."""
    reason, message = split_tag(_message(exc))
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            break
        trailers = getattr(seen, "trailing_metadata", None)
        if callable(trailers):
            for key, value in trailers() or ():
                if key == REASON_TRAILER:
                    text = value.decode() if isinstance(value, bytes) else str(value)
                    try:
                        return Reason(text), message
                    except ValueError:
                        pass
        seen = seen.__cause__ or seen.__context__
    return reason, message


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
    reason, message = reason_of(exc)
    err = _by_code(code, message, in_session) if reason not in BY_REASON else \
        BY_REASON[reason](message)
    err.reason = reason
    return err


def _by_code(code: str, message: str, in_session: bool) -> ClientError:
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
