"""Instrumentation by wrapping: per-component calls, items and seconds of a backend.

:class:`InstrumentedBackend` wraps any :class:`~sst.tracker.backends.Backend`; the engine
sees the wrapped backend's attributes (``meta``, ``ops``, batching preferences) through
it. Items are the rows of a call's first input: frames for the image encoder, objects for
the other components, so a component's mean batch is ``items / calls``. The counters are
totals (bounded state); the server exports them as Prometheus counters, benchmarks read
and reset them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

__all__ = ["InstrumentedBackend"]


class InstrumentedBackend:
    """Counts ``calls``, ``items`` and ``seconds`` per component around ``inner``. With
    ``record_attention``, also keeps ``(objects, memory frames, pointers)`` of every
    memory-attention call in ``attention_shapes`` (benchmarks: FLOP counts; the list
    grows with the run, so servers leave it off)."""

    def __init__(self, inner: Any, record_attention: bool = False) -> None:
        self.inner = inner
        self.meta = inner.meta
        self.attention_shapes: list[tuple[int, int, int]] | None = (
            [] if record_attention else None)
        self.calls: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes not set here: the inner backend's preferences
        return getattr(self.__dict__["inner"], name)

    def run(self, component: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        out = self.inner.run(component, feeds)
        self.seconds[component] = self.seconds.get(component, 0.0) + time.perf_counter() - t
        self.calls[component] += 1
        self.items[component] += int(next(iter(feeds.values())).shape[0])
        if component == "memory_attention" and self.attention_shapes is not None:
            self.attention_shapes.append((int(feeds["memory"].shape[0]),
                                          int(feeds["memory"].shape[1]),
                                          int(feeds["obj_ptrs"].shape[1])))
        return out

    def mean_batch(self, component: str) -> float:
        calls = self.calls[component]
        return self.items[component] / calls if calls else 0.0

    def reset(self) -> None:
        self.calls.clear()
        self.items.clear()
        self.seconds.clear()
        if self.attention_shapes is not None:
            self.attention_shapes.clear()
