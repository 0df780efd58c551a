"""Trait retrieval: rank query images by how well one trait carries over from the
support, scored by cycle consistency (support -> query -> support, IoU with the
support's own trait).

Conventions (as :mod:`sst.tracker.io`): images are ``uint8 [H,W,3]`` RGB, label maps are
integer ``[H,W]`` with 0 = background, boxes are ``(x0, y0, x1, y1)`` pixel boxes,
inclusive-exclusive, in the image's own coordinates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sst.tracker import io as sio
from sst.tracker.apps.common import (
    MAX_LABEL,
    binary_iou,
    label_dtype,
    load_support,
    read_queries,
)
from sst.tracker.engine import Frame
from sst.tracker.errors import InputError
from sst.tracker.io.outputs import mark_random_weights
from sst.tracker.scheduler import run_step
from sst.tracker.tracker import FrameResult, Session, Tracker

log = logging.getLogger(__name__)


def trait_mask(mask: np.ndarray, trait: int, source: str = "--trait") -> np.ndarray:
    """Binary ``[H,W]`` bool mask of label ``trait`` in the label map ``mask [H,W]``.

    Raises:
        InputError: ``trait`` is 0 or not present (the message lists the labels present).
    """
    present = sio.mask_labels(mask)
    if trait == 0:
        raise InputError(source, f"label 0 is the background, not a trait; labels present: "
                         f"{present}")
    if trait not in present:
        raise InputError(source, f"label {trait} is not in the support mask; labels present: "
                         f"{present}")
    return np.asarray(mask) == trait


@dataclass
class RetrievalItem:
    """One query's cycle-consistency score.

    ``forward [H,W]`` bool: the trait predicted on the query (query size);
    ``backward [Hs,Ws]`` bool or None: the trait carried back onto the support (support
    size), None when the forward mask was empty (then ``score`` is 0).
    :func:`run_retrieve` drops both masks (None) of queries outside the top K.
    """

    index: int
    name: str
    score: float
    forward_object_score: float
    forward_area: int
    forward: np.ndarray | None
    backward: np.ndarray | None = None
    backward_object_score: float | None = None


def cycle_consistency(tracker: Tracker, support: np.ndarray, support_mask: np.ndarray,
                      trait: int, queries: Sequence[np.ndarray],
                      names: Sequence[str] | None = None, batch: int = 4) -> list[RetrievalItem]:
    """Score each query by the cycle consistency of one trait.

    Forward: the binary trait mask of ``support [Hs,Ws,3]`` / ``support_mask [Hs,Ws]`` is
    propagated to every query (``[H,W,3]``, independent mode, ``batch`` at a time).
    Backward: each query with its predicted (non-empty) binary mask becomes the support
    of its own one-frame session, and the support image is its query (those sessions run
    as one batch). Score = IoU of the back-propagated mask with the support's trait
    mask; 0 when the forward mask is empty. Images are encoded once.

    Returns:
        One :class:`RetrievalItem` per query, in input order.
    """
    if batch < 1:
        raise InputError("--batch", f"expected a batch size >= 1, got {batch}")
    target = trait_mask(support_mask, trait)
    names = list(names) if names is not None else [f"query{i}" for i in range(len(queries))]
    if len(names) != len(queries):
        raise InputError("names", f"{len(names)} names for {len(queries)} queries")
    engine = tracker.engine
    sup_feats = engine.encode([support])
    target_u8 = target.astype(np.uint8)
    # one support, one object (label 1); the support image is encoded once
    fwd_session = engine.open_session([(support, target_u8)], features=sup_feats)
    items: list[RetrievalItem] = []
    for i in range(0, len(queries), batch):
        chunk = queries[i:i + batch]
        feats = engine.encode(chunk)
        rows = [{k: v[j:j + 1] for k, v in feats.items()} for j in range(len(chunk))]
        fwd = run_step(engine, [Frame(fwd_session, q, independent=True, features=dict(r))
                           for q, r in zip(chunk, rows)])
        fwd_masks = [res.mask == 1 for res in fwd]
        live = [j for j, m in enumerate(fwd_masks) if m.any()]
        back: dict[int, FrameResult] = {}
        if live:
            # each query with its forward mask is the support of its own session, and
            # the support image is that session's query: all of them in one step
            opened = engine.open_sessions(
                [[(chunk[j], fwd_masks[j].astype(np.uint8))] for j in live],
                features=[rows[j] for j in live])
            sessions = [s for s in opened if isinstance(s, Session)]
            assert len(sessions) == len(live)  # every forward mask is non-empty
            results = run_step(engine, [Frame(s, support, independent=True, features=sup_feats)
                                   for s in sessions])
            back = dict(zip(live, results))
        for j, res in enumerate(fwd):
            b = back.get(j)
            back_mask = None if b is None else b.mask == 1
            items.append(RetrievalItem(
                index=i + j, name=names[i + j],
                score=0.0 if back_mask is None else binary_iou(back_mask, target),
                forward_object_score=float(res.object_scores[0]),
                forward_area=int(np.count_nonzero(fwd_masks[j])), forward=fwd_masks[j],
                backward=back_mask,
                backward_object_score=None if b is None else float(b.object_scores[0])))
    return items


def rank_items(items: Sequence[RetrievalItem]) -> list[RetrievalItem]:
    """Best score first; equal scores in natural order of their names (``img2`` before
    ``img10``), then input order, so the ranking is deterministic."""
    return sorted(items, key=lambda it: (-it.score, sio.natural_key(it.name), it.index))


@dataclass
class RetrieveSummary:
    """``ranked``: the scored queries, best first; ``failed``: unreadable queries."""

    ranked: list[RetrievalItem] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


RANKING_COLUMNS = ("rank", "query", "score", "forward_object_score", "forward_area")


def run_retrieve(tracker: Tracker, support: str | Path, support_mask: str | Path, trait: int,
                 queries: str | Path, out: str | Path, *, top_k: int = 10,
                 batch: int = 4) -> RetrieveSummary:
    """``sst retrieve``: rank queries by the cycle consistency of ``trait``.

    Writes to ``out``: ``ranking.csv`` (columns :data:`RANKING_COLUMNS`, best first),
    ``rank_<i>_<stem>.png`` overlays of the forward trait mask for the top ``top_k``
    (``i`` from 1; a red RANDOM WEIGHTS band across the top when the model is untrained) and
    ``top_k.gif`` of those overlays. Unreadable queries are reported in the summary and
    skipped.
    """
    if top_k < 1:
        raise InputError("--top-k", f"expected K >= 1, got {top_k}")
    if batch < 1:
        raise InputError("--batch", f"expected a batch size >= 1, got {batch}")
    t_start = time.perf_counter()
    sup, sup_mask = load_support(support, support_mask, max_labels=MAX_LABEL)
    trait_mask(sup_mask, trait)  # fail before reading any query
    paths = sio.collect_queries(queries, exclude=[support])
    summary = RetrieveSummary()
    images: list[np.ndarray] = []
    kept: list[Path] = []  # every readable query, in input order (index = position)
    items: list[RetrievalItem] = []

    def flush() -> None:
        first = len(items)
        scored = cycle_consistency(tracker, sup, sup_mask, trait, images,
                                   names=[p.name for p in kept[first:]], batch=batch)
        for it in scored:
            it.index += first
        items.extend(scored)
        images.clear()
        # only the top K's masks are written: drop the others' (ranks only get worse)
        for it in rank_items(items)[top_k:]:
            it.forward = it.backward = None

    # Hold a bounded number of images at a time; cycle_consistency batches within.
    for p, img in read_queries(paths, summary.failed):
        images.append(img)
        kept.append(p)
        if len(images) >= 8 * batch:
            flush()
    if images:
        flush()
    summary.ranked = rank_items(items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sio.save_csv(out / "ranking.csv", RANKING_COLUMNS, [
        [r, it.name, f"{it.score:.6f}", f"{it.forward_object_score:.4f}", it.forward_area]
        for r, it in enumerate(summary.ranked, start=1)])
    frames = []
    untrained = bool(getattr(tracker.meta, "random_weights", False))
    for r, it in enumerate(summary.ranked[:top_k], start=1):
        path = kept[it.index]
        assert it.forward is not None
        shown: np.ndarray = np.where(it.forward, trait, 0).astype(label_dtype(trait))
        ov = sio.overlay(sio.load_image(path), shown)
        if untrained:
            ov = mark_random_weights(ov)
        sio.save_png(out / f"rank_{r}_{path.stem}.png", ov)
        frames.append(ov)
    if frames:
        sio.save_gif(out / "top_k.gif", frames)
    summary.seconds = time.perf_counter() - t_start
    return summary
