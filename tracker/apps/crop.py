"""Specimen cut-outs: a tight crop of the segmented specimen per query.

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
from sst.tracker.apps.common import QuerySource, TrackerSource, load_support, mask_bbox
from sst.tracker.errors import InputError
from sst.tracker.tracker import MODES, Tracker

#: Crop backgrounds: ``transparent`` gives RGBA, the others RGB composites.
BACKGROUNDS = ("transparent", "black", "white")

log = logging.getLogger(__name__)



def expand_bbox(bbox: tuple[int, int, int, int], margin: int,
                size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Grow ``bbox`` by ``margin`` pixels on every side, clamped to an image of
    ``size = (H, W)``."""
    if margin < 0:
        raise InputError("--margin", f"expected a margin >= 0 pixels, got {margin}")
    H, W = size
    x0, y0, x1, y1 = bbox
    return max(0, x0 - margin), max(0, y0 - margin), min(W, x1 + margin), min(H, y1 + margin)


def make_crop(rgb: np.ndarray, mask: np.ndarray, bbox: tuple[int, int, int, int],
              background: str = "transparent") -> np.ndarray:
    """Cut ``bbox`` out of ``rgb [H,W,3]``, keeping the pixels of ``mask [H,W]`` (bool).

    Returns:
        ``uint8 [h,w,4]`` RGBA with alpha 255 on the mask and 0 elsewhere
        (``background="transparent"``), or ``uint8 [h,w,3]`` RGB with non-mask pixels
        black / white.
    """
    if background not in BACKGROUNDS:
        raise InputError("--background", f"expected one of {BACKGROUNDS}, got {background!r}")
    x0, y0, x1, y1 = bbox
    part = rgb[y0:y1, x0:x1, :3]
    keep = np.asarray(mask, dtype=bool)[y0:y1, x0:x1]
    if background == "transparent":
        alpha = np.where(keep, 255, 0).astype(np.uint8)
        return np.ascontiguousarray(np.concatenate([part, alpha[:, :, None]], axis=2))
    fill = 0 if background == "black" else 255
    out = np.full_like(part, fill)
    out[keep] = part[keep]
    return out


@dataclass
class CropRow:
    """One query: ``bbox`` is the crop box written (the mask's box grown by the margin,
    clamped), None when the prediction was empty; ``area`` counts the mask's pixels."""

    query: str
    bbox: tuple[int, int, int, int] | None
    area: int
    crop: Path | None = None


@dataclass
class CropSummary:
    rows: list[CropRow] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


CROP_COLUMNS = ("query", "x0", "y0", "x1", "y1", "area")


def run_crop(source: Tracker | QuerySource, support: str | Path, support_mask: str | Path,
             queries: str | Path, out: str | Path, *, mode: str = "sequential",
             background: str = "transparent", margin: int = 0,
             labels: Sequence[int] | None = None, batch: int = 4) -> CropSummary:
    """``sst crop``: segment the queries and write a tight crop of the chosen labels.

    Every label of the support is tracked (as ``sst segment``: in process on a
    :class:`Tracker`, or on a server with :class:`~sst.client.server_stream.ServerSource`);
    the crop keeps the union of ``labels`` (default: all) in the predicted label map.
    Writes ``<stem>.png`` per query (RGBA, or RGB on black/white) and ``crops.csv``
    (:data:`CROP_COLUMNS`; an empty prediction has empty box fields, area 0 and no crop
    file).
    """
    if mode not in MODES:
        raise InputError("--mode", f"expected one of {MODES}, got {mode!r}")
    if background not in BACKGROUNDS:
        raise InputError("--background", f"expected one of {BACKGROUNDS}, got {background!r}")
    if margin < 0:
        raise InputError("--margin", f"expected a margin >= 0 pixels, got {margin}")
    if batch < 1:
        raise InputError("--batch", f"expected a batch size >= 1, got {batch}")
    t_start = time.perf_counter()
    if isinstance(source, Tracker):
        source = TrackerSource(source)
    sup, sup_mask = load_support(support, support_mask, max_labels=source.max_labels)
    present = sio.mask_labels(sup_mask)
    chosen = list(present) if not labels else [int(v) for v in labels]
    missing = [v for v in chosen if v not in present]
    if missing:
        raise InputError("--labels", f"label(s) {missing} not in the support mask; labels "
                         f"present: {present}")
    paths = sio.collect_queries(queries, exclude=[support])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = CropSummary(labels=chosen)
    for path, img, res in source.stream((Path(support), sup, sup_mask), paths, mode, batch,
                                        summary.failed):
        union = np.isin(res.mask, chosen)
        box = mask_bbox(union)
        row = CropRow(query=path.name, bbox=None, area=int(np.count_nonzero(union)))
        if box is not None:
            row.bbox = expand_bbox(box, margin, (union.shape[0], union.shape[1]))
            row.crop = out / f"{path.stem}.png"
            sio.save_png(row.crop, make_crop(img, union, row.bbox, background))
        else:
            log.warning("%s: empty prediction, no crop written", path.name)
        summary.rows.append(row)
    sio.save_csv(out / "crops.csv", CROP_COLUMNS, [
        [r.query, *(r.bbox if r.bbox is not None else ("", "", "", "")), r.area]
        for r in summary.rows])
    summary.seconds = time.perf_counter() - t_start
    return summary
