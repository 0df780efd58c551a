"""Exceptions raised by the core tracker.

Tree::

    SSTError
    ├── InputError (also ValueError)      bad user input: file, field, expected vs got
    ├── ModelError                        a model/checkpoint/export that cannot be used
    ├── SessionError                      unknown, expired or over-capacity sessions
    └── RequestCancelled                  the caller gave up on the request
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SSTError", "InputError", "ModelError", "SessionError", "RequestCancelled"]


class SSTError(Exception):
    """Base class of every error SST Serve raises on purpose."""


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
