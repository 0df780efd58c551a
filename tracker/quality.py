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
from sst.tracker.tracker import Tracker

__all__ = ["quality_scores", "review_rows", "REVIEW_HEADER"]


def quality_scores(tracker: Tracker, supports: Sequence[tuple[np.ndarray, np.ndarray]],
                   queries: Sequence[np.ndarray], masks: Sequence[np.ndarray]
                   ) -> list[dict[int, float]]:
    """Cycle IoU per label for each query.

    Args:
        supports: the ``(rgb [Hs,Ws,3] uint8, label mask [Hs,Ws])`` pairs the queries
            were segmented from.
        queries: query images ``[H,W,3]`` uint8.
        masks: their predicted label masks ``[H,W]`` (same label values as the supports).

    Returns:
        For each query, ``{label: IoU in 0..1}`` for every label of the supports.

    One reverse pass per query: a session primed with ``(query, mask)`` segments all
    support images as one independent batch.
    """
    labels = sorted({lab for _, m in supports for lab in imageio.mask_labels(m)})
    images = [img for img, _ in supports]
    out: list[dict[int, float]] = []
    for query, mask in zip(queries, masks):
        scores = {lab: 0.0 for lab in labels}
        present = [lab for lab in imageio.mask_labels(mask) if lab in scores]
        if present:
            session = tracker.start_session([(query, mask)], num_queries=len(images))
            back = list(tracker.segment_independent(session, images, batch=len(images)))
            for lab in present:
                inter = union = 0
                for res, (_, target) in zip(back, supports):
                    a, b = res.mask == lab, target == lab
                    inter += int(np.count_nonzero(a & b))
                    union += int(np.count_nonzero(a | b))
                scores[lab] = inter / union if union else 0.0
        out.append(scores)
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
