"""Exceptions raised by the SST Serve client.

Tree (every class is also an :class:`sst.tracker.errors.SSTError`)::

    ClientError
    ├── ServerUnavailable        cannot reach the server (retried with backoff first)
    ├── RequestTimeout           no answer within the timeout
    ├── InvalidRequest           the server rejected the input (its message names it)
    ├── SessionLost              the server no longer holds the session (re-primed first)
    ├── TooManySessions          the server is at its session cap
    └── ServerError              anything else the server reported

``tritonclient``/``grpc`` errors are converted at the boundary (:func:`convert`), so no
caller ever needs to import them.
"""

from __future__ import annotations

from sst.tracker.errors import SSTError

__all__ = ["ClientError", "ServerUnavailable", "RequestTimeout", "InvalidRequest",
           "SessionLost", "TooManySessions", "ServerError", "convert"]


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


class ServerError(ClientError):
    pass


def convert(exc: BaseException) -> ClientError:
    """Map a ``tritonclient`` / ``grpc`` exception to the client's own tree."""
    status = ""
    message = str(exc)
    if hasattr(exc, "status") and callable(exc.status):
        status = str(exc.status() or "")
        message = str(exc.message() if hasattr(exc, "message") else exc)
    elif hasattr(exc, "code") and callable(exc.code):  # a raw grpc.RpcError
        status = str(exc.code())
        message = str(exc.details() if hasattr(exc, "details") else exc)
    low = message.lower()
    if "unknown session" in low or "must specify the start flag" in low:
        return SessionLost(message)
    if "sessions, its limit" in low:
        return TooManySessions(message)
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in low:
        return RequestTimeout(message)
    if ("UNAVAILABLE" in status or "failed to connect" in low or "connection refused" in low
            or "socket closed" in low or "not ready" in low or "is unavailable" in low):
        return ServerUnavailable(message)
    if "INVALID_ARGUMENT" in status or "NOT_FOUND" in status:
        return InvalidRequest(message)
    return ServerError(f"{status} {message}".strip())
