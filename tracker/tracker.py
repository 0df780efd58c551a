"""The SST tracker: support frames first, queries after, as a pseudo-video.

A convenience layer over :class:`~sst.tracker.engine.Engine` for one run at a time
(``sst segment``, the tools, tests): every call goes through the same batched steps the
server uses. All objects (labels) of a frame go through memory attention, the mask
decoder and the memory encoder as one batch; images are encoded in batches over frames.

Modes:

* ``sequential`` (SST proper): each query remembers the queries before it, in order.
* ``independent``: each query sees only the support memories, as if it were the one
  query of a 2-frame (support, query) video; queries go through in batches, and the
  result does not depend on their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from sst.tracker.backends import Backend
from sst.tracker.defaults import MODES
from sst.tracker.engine import (
    STREAMING,
    Engine,
    Frame,
    FrameResult,
    Session,
    Support,
    SupportCache,
    support_key,
)
from sst.tracker.errors import InputError
from sst.tracker.ops import labels_from_logits
from sst.tracker.scheduler import Scheduler, run_step

__all__ = ["Tracker", "Session", "FrameResult", "labels_from_logits", "MODES", "SupportCache",
           "support_key", "STREAMING"]



class Tracker:
    """Runs SST over a :class:`Backend` through one :class:`Engine` (see its parameters:
    ``max_labels``, ``encode_batch``, ``attention_bytes``, ``support_cache_bytes``,
    ``bf16_memories`` ...)."""

    def __init__(self, backend: Backend, **engine_options: Any) -> None:
        self.engine = Engine(backend, **engine_options)
        self.backend = backend
        self.meta = backend.meta

    @property
    def max_labels(self) -> int:
        return self.engine.max_labels

    @property
    def support_cache(self) -> SupportCache | None:
        return self.engine.support_cache

    @property
    def encode_batch(self) -> int:
        return self.engine.encode_batch

    def start_session(self, supports: Sequence[Support], num_queries: int | None = None
                      ) -> Session:
        """Prime a session with support ``(rgb [H,W,3] uint8, label mask [H,W])`` pairs.

        Every label of any support becomes an object; a support without a label says
        that object is absent there. ``num_queries`` (if known) fixes the pseudo-video
        length as sam2 would see it.
        """
        return self.engine.open_session(supports, num_queries)

    def track(self, session: Session, images: Iterable[np.ndarray],
              keep_features: bool = False) -> Iterator[FrameResult]:
        """Sequential SST: each image is the next frame of the pseudo-video. Images are
        read ``encode_batch`` ahead and encoded together (encoding does not depend on
        memory). ``keep_features``: results carry their frame's encoder outputs."""
        sched = Scheduler(self.engine)
        it = iter(images)
        while True:
            chunk = list(islice(it, self.engine.encode_batch))
            if not chunk:
                return
            for img in chunk:
                sched.submit(Frame(session, img, keep_features=keep_features))
            for _, res in sched.drain():
                yield res

    def segment_independent(self, session: Session, images: Sequence[np.ndarray],
                            batch: int = 4, keep_features: bool = False
                            ) -> Iterator[FrameResult]:
        """Independent mode: every query is frame ``num_supports`` of a video of length
        ``num_supports + 1``; ``batch`` queries x ``K`` objects run as one step."""
        for i in range(0, len(images), batch):
            yield from run_step(self.engine, [Frame(session, img, independent=True,
                                               keep_features=keep_features)
                                         for img in images[i:i + batch]])

    def segment(self, supports: Sequence[Support], queries: Sequence[np.ndarray],
                mode: str = "sequential", batch: int = 4) -> list[FrameResult]:
        """Convenience: one session over in-memory images; results in query order."""
        if mode not in MODES:
            raise InputError("mode", f"expected one of {MODES}, got {mode!r}")
        session = self.start_session(supports, num_queries=len(queries))
        if mode == "sequential":
            return list(self.track(session, queries))
        return list(self.segment_independent(session, queries, batch=batch))
