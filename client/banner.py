"""The random-weights banner of a run against a server.

A server says with every answer which model it serves (the ``MODEL`` output, each
result's ``served_model``); :class:`ServerBanner` prints the banner of
:data:`~sst.export.cache.RANDOM_WEIGHTS_BANNER` and the reason the first time an answer
says random weights, as an in-process run prints it when it loads such a model.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from sst.export.cache import RANDOM_WEIGHTS_BANNER
from sst.export.meta import random_weights_reason

__all__ = ["ServerBanner", "print_reason_banner"]


def print_reason_banner(reason: str | None) -> None:
    """The random-weights banner and the sentence that says why, on stderr (nothing for
    None)."""
    if reason is not None:
        print(f"{RANDOM_WEIGHTS_BANNER}{reason}\n", file=sys.stderr, flush=True)


class ServerBanner:
    """Shown each answer's model record (:meth:`see`), prints the banner and the reason
    the first time one says random weights. ``reason``: that sentence (None while no
    answer said so); ``record``: the latest record (None while no answer had one)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.record: dict[str, Any] | None = None
        self.reason: str | None = None

    def see(self, record: Mapping[str, Any] | None) -> None:
        if record is None:
            return
        self.record = dict(record)
        if self.reason is None:
            self.reason = random_weights_reason(record, f"the server at {self.server}")
            print_reason_banner(self.reason)
