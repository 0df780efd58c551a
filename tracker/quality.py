"""Per-label quality of a segmentation without ground truth: cycle IoU.

A query and its predicted label mask become the support of a fresh session, which
segments the original support image(s) in independent mode; a label's quality is the IoU
of what comes back with the support's own mask of that label (pooled over the supports:
intersections and unions are summed). A label missing from the prediction scores 0.

:class:`QualityScorer` is the one place that runs the reverse passes;
:func:`sst.tracker.io.outputs.review_rows` orders queries worst first for review.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sst.tracker.engine import Engine, Frame, FrameResult, Session
from sst.tracker.ops import mask_labels
from sst.tracker.scheduler import run_step
from sst.tracker.tracker import Tracker

__all__ = ["QualityScorer", "quality_scores"]


class QualityScorer:
    """Cycle IoU per label against fixed ``supports`` (``(rgb, label mask)`` pairs), on an
    engine. The support images are encoded once, here; a query's encoder outputs from
    its forward pass (``FrameResult.features``, asked for with ``keep_features``) spare
    encoding it again, so a score costs priming, memory attention over the support
    memory and decoding: no image encoder at all."""

    def __init__(self, engine: Engine | Tracker,
                 supports: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.engine = engine.engine if isinstance(engine, Tracker) else engine
        self.supports = list(supports)
        self.labels = sorted({lab for _, m in self.supports for lab in mask_labels(m)})
        feats = self.engine.encode([img for img, _ in self.supports])
        self._rows = [{k: v[j:j + 1] for k, v in feats.items()}
                      for j in range(len(self.supports))]

    def __call__(self, queries: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 features: Sequence[dict[str, Any] | None] | None = None, chunk: int = 16
                 ) -> list[dict[int, float]]:
        """For each query (``[H,W,3]`` uint8 with its predicted label mask ``[H,W]``),
        ``{label: IoU in 0..1}`` for every label of the supports. The reverse sessions
        are primed together and step together, ``chunk`` queries at a time."""
        out: list[dict[int, float]] = []
        for c in range(0, len(queries), chunk):
            frames, score = self.frames(queries[c:c + chunk], masks[c:c + chunk],
                                        features[c:c + chunk] if features else None)
            out += score(run_step(self.engine, frames) if frames else [])
        return out

    def frames(self, queries: Sequence[np.ndarray], masks: Sequence[np.ndarray],
               features: Sequence[dict[str, Any] | None] | None = None
               ) -> tuple[list[Frame], Callable[[Sequence[FrameResult]], list[dict[int, float]]]]:
        """The reverse passes of ``queries`` as independent frames (their sessions primed
        together), to run through any step or scheduler, and the function that turns
        their results (in the frames' order) into each query's ``{label: IoU}``."""
        n = len(self.supports)
        out: list[dict[int, float]] = [{lab: 0.0 for lab in self.labels} for _ in queries]
        live = [i for i, m in enumerate(masks)
                if any(lab in out[i] for lab in mask_labels(m))]
        frames: list[Frame] = []
        if live:
            opened = self.engine.open_sessions([[(queries[i], masks[i])] for i in live],
                                               features=[features[i] if features else None
                                                         for i in live])
            frames = [Frame(s, img, independent=True, features=dict(self._rows[j]))
                      for s in opened if isinstance(s, Session)
                      for j, (img, _) in enumerate(self.supports)]
            assert len(frames) == len(live) * n  # every mask has a label

        def score(back: Sequence[FrameResult]) -> list[dict[int, float]]:
            for k, i in enumerate(live):
                per_support = back[k * n:(k + 1) * n]
                for lab in mask_labels(masks[i]):
                    if lab not in out[i]:
                        continue
                    inter = union = 0
                    for res, (_, target) in zip(per_support, self.supports):
                        a, b_ = res.mask == lab, target == lab
                        inter += int(np.count_nonzero(a & b_))
                        union += int(np.count_nonzero(a | b_))
                    out[i][lab] = inter / union if union else 0.0
            return out

        return frames, score


def quality_scores(engine: Engine | Tracker,
                   supports: Sequence[tuple[np.ndarray, np.ndarray]],
                   queries: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   chunk: int = 16) -> list[dict[int, float]]:
    """Cycle IoU per label for each query (see :class:`QualityScorer`, which keeps the
    support encoded across calls).

    Args:
        supports: the ``(rgb [Hs,Ws,3] uint8, label mask [Hs,Ws])`` pairs the queries
            were segmented from.
        queries: query images ``[H,W,3]`` uint8.
        masks: their predicted label masks ``[H,W]`` (same label values as the supports).

    Returns:
        For each query, ``{label: IoU in 0..1}`` for every label of the supports.
    """
    return QualityScorer(engine, supports)(queries, masks, chunk=chunk)
