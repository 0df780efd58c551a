"""Shared by the applications: label maps, IoU and the query stream.

Conventions (as :mod:`sst.tracker.io`): images are ``uint8 [H,W,3]`` RGB, label maps are
integer ``[H,W]`` with 0 = background, boxes are ``(x0, y0, x1, y1)`` pixel boxes,
inclusive-exclusive, in the image's own coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from sst.tracker import io as sio
from sst.tracker.errors import InputError
from sst.tracker.tracker import FrameResult, Session, Tracker

log = logging.getLogger(__name__)

#: The largest label value a mask file holds (16-bit PNG).
MAX_LABEL = 65535


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean ``[H,W]`` masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError("iou", f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def label_dtype(max_value: int) -> type:
    return np.uint8 if max_value <= 255 else np.uint16


def load_label_map(path: str | Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Like :func:`sio.load_mask` (up to 65535 labels) but an all-zero mask is
    accepted. ``image_size = (width, height)`` if the mask must match an image.

    Returns:
        ``[H,W]`` ``uint8`` (``uint16`` if a label exceeds 255).
    """
    try:
        return sio.load_mask(path, image_size=image_size, max_labels=MAX_LABEL)
    except InputError as exc:
        if not exc.problem.startswith("mask has no labels"):
            raise
    # Decoding and the size check passed; every pixel is 0.
    with Image.open(path) as im:
        width, height = im.size
    return np.zeros((height, width), np.uint8)


def read_queries(paths: Iterable[Path], failed: list[tuple[str, str]],
                 on_skip: Callable[[Path], None] | None = None,
                 read: Callable[[Path], np.ndarray] | None = None
                 ) -> Iterator[tuple[Path, np.ndarray]]:
    """``(path, rgb [H,W,3])`` of each readable query file, read lazily (by ``read``, e.g. a
    :class:`sst.tracker.io.queries.QueryReader`; default :func:`sio.load_image`); an
    unreadable one is logged, added to ``failed`` as ``(path, problem)`` and passed to
    ``on_skip``."""
    load = read if read is not None else sio.load_image
    for p in paths:
        try:
            yield p, load(p)
        except InputError as exc:
            failed.append((str(p), exc.problem))
            log.error("skipping %s", exc)
            if on_skip is not None:
                on_skip(p)


def query_stream(tracker: Tracker, session: Session, paths: Sequence[Path], mode: str,
                 batch: int, failed: list[tuple[str, str]], *, keep_features: bool = False,
                 on_skip: Callable[[Path], None] | None = None,
                 read: Callable[[Path], np.ndarray] | None = None
                 ) -> Iterator[tuple[Path, np.ndarray, FrameResult]]:
    """The one query-stream runner (``sst segment``, ``sst crop``): ``session`` over the
    query files in ``mode`` (``sequential``: tracked in order, the encoder batched over a
    few frames; ``independent``: ``batch`` queries per engine call), reading them lazily.
    Yields ``(path, rgb [H,W,3], result)``; unreadable files go to ``failed`` (see
    :func:`read_queries`). ``keep_features``: results keep their encoder outputs (for
    quality scores); ``read``: how a query is read (see :func:`read_queries`)."""
    items = read_queries(paths, failed, on_skip, read)
    if mode == "sequential":
        buffered: list[tuple[Path, np.ndarray]] = []

        def images() -> Iterator[np.ndarray]:
            for p, img in items:
                buffered.append((p, img))
                yield img

        for res in tracker.track(session, images(), keep_features=keep_features):
            p, img = buffered.pop(0)
            yield p, img, res
        return
    while chunk := [item for _, item in zip(range(batch), items)]:
        results = tracker.segment_independent(session, [c[1] for c in chunk], batch=batch,
                                              keep_features=keep_features)
        for (p, img), res in zip(chunk, results):
            yield p, img, res


#: A support as the applications hold it: ``(its file, rgb [H,W,3], label mask [H,W])``.
SupportFile = tuple[Path, np.ndarray, np.ndarray]


class QuerySource(Protocol):
    """Where an application's queries are segmented: in process (:class:`TrackerSource`)
    or on a server (:class:`sst.client.server_stream.ServerSource`)."""

    max_labels: int

    def stream(self, support: SupportFile, paths: Sequence[Path], mode: str, batch: int,
               failed: list[tuple[str, str]]) -> Iterator[tuple[Path, np.ndarray, FrameResult]]:
        """``(path, rgb, result)`` per readable query, in order (the rest in ``failed``)."""
        ...


class TrackerSource:
    """In process: a session of ``tracker`` over the queries (:func:`query_stream`)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.max_labels = tracker.max_labels

    def stream(self, support: SupportFile, paths: Sequence[Path], mode: str, batch: int,
               failed: list[tuple[str, str]]) -> Iterator[tuple[Path, np.ndarray, FrameResult]]:
        _, rgb, mask = support
        session = self.tracker.start_session([(rgb, mask)], num_queries=len(paths))
        return query_stream(self.tracker, session, paths, mode, batch, failed)


def load_support(image: str | Path, mask: str | Path, max_labels: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    rgb = sio.load_image(image)
    lab = sio.load_mask(mask, image_size=(rgb.shape[1], rgb.shape[0]), max_labels=max_labels)
    return rgb, lab


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` inclusive-exclusive box of the true pixels of ``mask [H,W]``,
    or None when the mask is empty."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
