"""Per-label quality of a segmentation without ground truth: cycle IoU.

A query and its predicted label mask become the support of a fresh session, which
segments the original support image(s) in independent mode; a label's quality is the IoU
of what comes back with the support's own mask of that label (pooled over the supports:
intersections and unions are summed). A label missing from the prediction scores 0.

:func:`quality_scores` is the one place that runs the reverse passes;
:func:`review_rows` orders queries worst first for review.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sst.tracker import imageio
from sst.tracker.engine import Engine, Frame, Session
from sst.tracker.tracker import Tracker

__all__ = ["quality_scores", "review_rows", "REVIEW_HEADER"]


def quality_scores(engine: Engine | Tracker,
                   supports: Sequence[tuple[np.ndarray, np.ndarray]],
                   queries: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   chunk: int = 16) -> list[dict[int, float]]:
    """Cycle IoU per label for each query.

    Args:
        supports: the ``(rgb [Hs,Ws,3] uint8, label mask [Hs,Ws])`` pairs the queries
            were segmented from.
        queries: query images ``[H,W,3]`` uint8.
        masks: their predicted label masks ``[H,W]`` (same label values as the supports).

    Returns:
        For each query, ``{label: IoU in 0..1}`` for every label of the supports.

    The reverse passes run batched on the tracker's engine, ``chunk`` queries at a time:
    the sessions primed with each ``(query, mask)`` in one call, then every support image
    of every session as one independent step; the support images are encoded once.
    """
    if isinstance(engine, Tracker):
        engine = engine.engine
    labels = sorted({lab for _, m in supports for lab in imageio.mask_labels(m)})
    images = [img for img, _ in supports]
    feats = engine.encode(images)
    rows = [{k: v[j:j + 1] for k, v in feats.items()} for j in range(len(images))]
    out: list[dict[int, float]] = [{lab: 0.0 for lab in labels} for _ in queries]
    live = [i for i, m in enumerate(masks)
            if any(lab in out[i] for lab in imageio.mask_labels(m))]
    for c in range(0, len(live), chunk):
        part = live[c:c + chunk]
        opened = engine.open_sessions([[(queries[i], masks[i])] for i in part])
        frames = [Frame(s, img, independent=True, features=dict(rows[j]))
                  for s in opened if isinstance(s, Session)
                  for j, img in enumerate(images)]
        assert len(frames) == len(part) * len(images)  # every mask has a label
        back = engine.step(frames)
        for n, i in enumerate(part):
            per_support = back[n * len(images):(n + 1) * len(images)]
            for lab in imageio.mask_labels(masks[i]):
                if lab not in out[i]:
                    continue
                inter = union = 0
                for res, (_, target) in zip(per_support, supports):
                    a, b_ = res.mask == lab, target == lab
                    inter += int(np.count_nonzero(a & b_))
                    union += int(np.count_nonzero(a | b_))
                out[i][lab] = inter / union if union else 0.0
    return out


REVIEW_HEADER = ["rank", "query", "quality_min", "worst_label", "flagged"]


def review_rows(quality: Mapping[str, Mapping[int, float]], names: Mapping[int, str],
                flag_below: float) -> tuple[list[str], list[list[Any]]]:
    """``review.csv`` header and rows: queries by their lowest label quality, worst first
    (ties in natural order of the names); ``flagged`` when that is below ``flag_below``;
    then one ``quality_<name>`` column per label."""
    labels = sorted(names)
    header = REVIEW_HEADER + [f"quality_{names[lab]}" for lab in labels]

    def worst(q: Mapping[int, float]) -> tuple[float, int]:
        lab = min(labels, key=lambda v: (q.get(v, 0.0), v))
        return q.get(lab, 0.0), lab

    order = sorted(quality, key=lambda name: (worst(quality[name])[0],
                                              imageio.natural_key(name)))
    rows = []
    for rank, name in enumerate(order, start=1):
        q = quality[name]
        low, lab = worst(q)
        rows.append([rank, name, f"{low:.4f}", names[lab], "yes" if low < flag_below else "no"]
                    + [f"{q.get(v, 0.0):.4f}" for v in labels])
    return header, rows
