"""Exceptions raised by the core tracker and the server, and the reasons of refusals.

Tree::

    SSTError
    ├── InputError (also ValueError)      bad user input: file, field, expected vs got
    │   ├── SessionKeyError               a request without its session's key (bad_key)
    │   └── BudgetError                   over a per-request budget (pixel_budget,
    │                                     request_too_large)
    ├── ModelError                        a model/checkpoint/export that cannot be used
    ├── SessionError                      unknown, expired or over-capacity sessions
    │   ├── UnknownSessionError           unknown_session, session_expired
    │   └── SessionLimitError             over_capacity
    ├── RequestCancelled                  the caller gave up on the request
    ├── ServerStopping                    the engine stopped before a request ran
    ├── ComponentUnavailable              a component model cannot run now: retry
    ├── LauncherError (also RuntimeError) Triton not found, prepared, started, stopped
    └── ClientError                       raised by the client library (sst.client),
        ├── ServerUnavailable             mapped from gRPC answers by sst.client.errors
        ├── RequestTimeout
        ├── InvalidRequest
        ├── SessionLost
        ├── TooManySessions
        ├── ResourceExhausted
        ├── AccessDenied
        └── ServerError

and ``PlanMismatch`` (a :class:`ModelError`: a TensorRT plan built elsewhere). Every
exception class SST Serve defines is here; the modules that raise them re-export them.

Every refusal a client must tell apart carries one :class:`Reason` (``err.reason``). A
Triton Python-backend model can answer an error with a status code and a message only,
so the server puts the reason at the head of the message in one fixed form
(:func:`tag`, ``"[sst-reason=over_capacity] ..."``); the front door of ``sst serve``
lifts it into the gRPC trailing metadata :data:`REASON_TRAILER` and the client reads it
from there (or with :func:`split_tag` from a tritonserver reached directly). Nothing
ever matches the prose of a message.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

__all__ = ["SSTError", "InputError", "ModelError", "SessionError", "RequestCancelled",
           "Reason", "REASON_TRAILER", "UnknownSessionError", "SessionLimitError",
           "SessionKeyError", "BudgetError", "tag", "split_tag"]

#: gRPC trailing metadata key of a refusal's reason.
REASON_TRAILER = "sst-reason"


class Reason(str, Enum):
    """Why a request was refused: one machine-readable value per refusal a client acts on."""

    SESSION_EXPIRED = "session_expired"      # idle longer than the limit: START again
    UNKNOWN_SESSION = "unknown_session"      # never held, ended, or the server restarted
    OVER_CAPACITY = "over_capacity"          # the server holds as many sessions as it may
    BAD_KEY = "bad_key"                      # the request lacks the session's key
    PIXEL_BUDGET = "pixel_budget"            # more decoded pixels than a request may carry
    REQUEST_TOO_LARGE = "request_too_large"  # more bytes / images than a request may carry
    DRAINING = "draining"                    # the replica is shutting down: go elsewhere
    BUSY = "busy"                            # too many large requests in flight: retry

    def __str__(self) -> str:
        return self.value


_TAG = re.compile(r"^\[sst-reason=([a-z_]+)\] ")


def tag(reason: Reason | None, message: str) -> str:
    """``message`` with ``reason`` at its head in the one fixed form (unchanged if None)."""
    return message if reason is None else f"[sst-reason={reason.value}] {message}"


def split_tag(message: str) -> tuple[Reason | None, str]:
    """``(reason, message without the tag)`` of a message made by :func:`tag`; an
    unknown or missing tag gives ``(None, message)``."""
    m = _TAG.match(message)
    if m is None:
        return None, message
    try:
        return Reason(m.group(1)), message[m.end():]
    except ValueError:
        return None, message


class SSTError(Exception):
    """Base class of every error SST Serve raises on purpose. ``reason``: the refusal's
    :class:`Reason` where a client acts on it, else None."""

    reason: Reason | None = None


class InputError(SSTError, ValueError):
    """A user-supplied input is unusable.

    ``source`` names the file or field, ``problem`` says what is wrong (ideally
    "expected X, got Y"). ``str(err)`` is ``"<source>: <problem>"``.
    """

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")


class ModelError(SSTError):
    """A model, checkpoint or exported graph that cannot be used."""


class SessionError(SSTError):
    """A session that is unknown, expired, or cannot be created (cap reached)."""


class RequestCancelled(SSTError):
    """The caller cancelled the request (or its deadline passed) before it ran."""


class UnknownSessionError(SessionError):
    """The session is not (or no longer) held by the server: prime it again. ``reason``
    says whether it expired (:attr:`Reason.SESSION_EXPIRED`) or was never (or no
    longer) known (:attr:`Reason.UNKNOWN_SESSION`)."""

    def __init__(self, message: str, reason: Reason = Reason.UNKNOWN_SESSION) -> None:
        super().__init__(message)
        self.reason = reason


class SessionLimitError(SessionError):
    """The server holds as many sessions as it may."""

    reason = Reason.OVER_CAPACITY


class SessionKeyError(InputError):
    """A request on a session without the key the session was started with."""

    reason = Reason.BAD_KEY


class PlanMismatch(ModelError):
    """A TensorRT plan that must not be used here; the message names every difference."""


class ServerStopping(SSTError):
    """The engine stopped before the request could run: send it again (to a server that
    is up)."""


class ComponentUnavailable(SSTError):
    """A component model cannot run now (server starting or shutting down): retry."""


class LauncherError(SSTError, RuntimeError):
    """Triton could not be found, prepared, started or stopped."""


class ClientError(SSTError):
    """Base of every client error. ``reason``: the server's machine-readable reason for
    a refusal (:class:`Reason`, a ``str``), None when it gave none."""


class ServerUnavailable(ClientError):
    """Cannot reach the server (retried with backoff first)."""


class RequestTimeout(ClientError):
    """No answer within the timeout."""


class InvalidRequest(ClientError):
    """The server rejected the input (its message names it)."""


class SessionLost(ClientError):
    """The server no longer holds the session (re-primed first)."""


class TooManySessions(ClientError):
    """The server is at its session cap (not retried)."""


class ResourceExhausted(ClientError):
    """A limit of the transport was passed (RESOURCE_EXHAUSTED; not retried)."""


class AccessDenied(ClientError):
    """Missing or wrong access token (not retried)."""


class ServerError(ClientError):
    """Anything else the server reported."""


class BudgetError(InputError):
    """A request over one of its budgets (bytes, images, decoded pixels); ``reason``
    names which (:attr:`Reason.PIXEL_BUDGET` or :attr:`Reason.REQUEST_TOO_LARGE`)."""

    def __init__(self, source: str | Path | None, problem: str,
                 reason: Reason = Reason.REQUEST_TOO_LARGE) -> None:
        super().__init__(source, problem)
        self.reason = reason
