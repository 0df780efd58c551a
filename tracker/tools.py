"""Tools around the tracker: trait retrieval, crops, and ways to make a first mask.

* **Retrieval** (:func:`cycle_consistency`, :func:`rank_items`, :func:`run_retrieve`):
  ranks query images by how well one trait carries over from the support, scored by
  cycle consistency (support -> query -> support, IoU with the support's own trait).
* **Crops** (:func:`mask_bbox`, :func:`expand_bbox`, :func:`make_crop`, :func:`run_crop`):
  a tight crop of the segmented specimen per query.
* **First masks**:

  - :func:`match_cutout` / :func:`run_from_cutout`: locate an RGBA cut-out (saved by an
    external "cut out object" tool, possibly rescaled) in its image by multi-scale
    normalised cross-correlation and paste its alpha as a label;
  - :func:`segment_prompt` / :func:`run_from_prompts`: SAM 2's image-prompt path (points
    and/or a box, no memory) on the exported graphs;
  - :func:`clean_mask` / :func:`run_clean`: relabel values, fill holes, drop specks.

Conventions (as :mod:`sst.tracker.imageio`): images are ``uint8 [H,W,3]`` RGB, label
maps are integer ``[H,W]`` with 0 = background, boxes are ``(x0, y0, x1, y1)`` pixel
boxes, inclusive-exclusive, in the image's own coordinates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sst.tracker import imageio
from sst.tracker.backends import Backend
from sst.tracker.engine import Frame
from sst.tracker.errors import InputError
from sst.tracker.resize import (
    preprocess_image,
    resize_bilinear,
)
from sst.tracker.tracker import MODES, FrameResult, Session, Tracker

__all__ = [
    "BACKGROUNDS",
    "CleanReport",
    "CropRow",
    "CropSummary",
    "CutoutMatch",
    "PromptResult",
    "RetrievalItem",
    "RetrieveSummary",
    "binary_iou",
    "clean_mask",
    "cycle_consistency",
    "expand_bbox",
    "fill_holes",
    "load_label_map",
    "make_crop",
    "mask_bbox",
    "match_cutout",
    "paint_label",
    "parse_relabel",
    "prompt_feeds",
    "rank_items",
    "relabel",
    "remove_small_components",
    "run_clean",
    "run_crop",
    "run_from_cutout",
    "run_from_prompts",
    "run_retrieve",
    "segment_prompt",
    "trait_mask",
]

log = logging.getLogger("sst.tools")

#: Crop backgrounds: ``transparent`` gives RGBA, the others RGB composites.
BACKGROUNDS = ("transparent", "black", "white")
_MAX_LABEL = 65535


# =========================================================================== shared helpers


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean ``[H,W]`` masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError("iou", f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _label_dtype(max_value: int) -> type:
    return np.uint8 if max_value <= 255 else np.uint16


def load_label_map(path: str | Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Like :func:`imageio.load_mask` (up to 65535 labels) but an all-zero mask is
    accepted. ``image_size = (width, height)`` if the mask must match an image.

    Returns:
        ``[H,W]`` ``uint8`` (``uint16`` if a label exceeds 255).
    """
    try:
        return imageio.load_mask(path, image_size=image_size, max_labels=_MAX_LABEL)
    except InputError as exc:
        if not exc.problem.startswith("mask has no labels"):
            raise
    # Decoding and the size check passed; every pixel is 0.
    with Image.open(path) as im:
        width, height = im.size
    return np.zeros((height, width), np.uint8)


def _segment_stream(tracker: Tracker, session: Session, paths: Sequence[Path], mode: str,
                    batch: int, failed: list[tuple[str, str]]
                    ) -> Iterator[tuple[Path, np.ndarray, FrameResult]]:
    """Run ``session`` over the query files (``mode`` as ``sst segment``), reading them
    lazily. Yields ``(path, rgb [H,W,3], result)``; unreadable files go to ``failed``."""

    def loaded() -> Iterator[tuple[Path, np.ndarray]]:
        for p in paths:
            try:
                yield p, imageio.load_image(p)
            except InputError as exc:
                failed.append((str(p), exc.problem))
                log.error("skipping %s", exc)

    if mode == "sequential":
        buffered: list[tuple[Path, np.ndarray]] = []

        def images() -> Iterator[np.ndarray]:
            for p, img in loaded():
                buffered.append((p, img))
                yield img

        for res in tracker.track(session, images()):
            p, img = buffered.pop(0)
            yield p, img, res
        return
    items = loaded()
    while True:
        chunk = [item for _, item in zip(range(batch), items)]
        if not chunk:
            return
        results = tracker.segment_independent(session, [c[1] for c in chunk], batch=batch)
        for (p, img), res in zip(chunk, results):
            yield p, img, res


def _load_support(image: str | Path, mask: str | Path, max_labels: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    rgb = imageio.load_image(image)
    lab = imageio.load_mask(mask, image_size=(rgb.shape[1], rgb.shape[0]),
                            max_labels=max_labels)
    return rgb, lab


# =========================================================================== retrieval


def trait_mask(mask: np.ndarray, trait: int, source: str = "--trait") -> np.ndarray:
    """Binary ``[H,W]`` bool mask of label ``trait`` in the label map ``mask [H,W]``.

    Raises:
        InputError: ``trait`` is 0 or not present (the message lists the labels present).
    """
    present = imageio.mask_labels(mask)
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
        fwd = engine.step([Frame(fwd_session, q, independent=True, features=dict(r))
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
            results = engine.step([Frame(s, support, independent=True, features=sup_feats)
                                   for s in sessions])
            back = dict(zip(live, results))
        for j, res in enumerate(fwd):
            b = back.get(j)
            back_mask = None if b is None else b.mask == 1
            items.append(RetrievalItem(
                index=i + j, name=names[i + j],
                score=0.0 if back_mask is None else binary_iou(back_mask, target),
                forward_object_score=float(res.object_score_logits[0]),
                forward_area=int(np.count_nonzero(fwd_masks[j])), forward=fwd_masks[j],
                backward=back_mask,
                backward_object_score=None if b is None else float(b.object_score_logits[0])))
    return items


def rank_items(items: Sequence[RetrievalItem]) -> list[RetrievalItem]:
    """Best score first; equal scores in natural order of their names (``img2`` before
    ``img10``), then input order, so the ranking is deterministic."""
    return sorted(items, key=lambda it: (-it.score, imageio.natural_key(it.name), it.index))


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
    (``i`` from 1) and ``top_k.gif`` of those overlays. Unreadable queries are reported
    in the summary and skipped.
    """
    if top_k < 1:
        raise InputError("--top-k", f"expected K >= 1, got {top_k}")
    if batch < 1:
        raise InputError("--batch", f"expected a batch size >= 1, got {batch}")
    t_start = time.perf_counter()
    sup, sup_mask = _load_support(support, support_mask, max_labels=_MAX_LABEL)
    trait_mask(sup_mask, trait)  # fail before reading any query
    paths = imageio.collect_queries(queries, exclude=[support])
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
    for p in paths:
        try:
            images.append(imageio.load_image(p))
        except InputError as exc:
            summary.failed.append((str(p), exc.problem))
            log.error("skipping %s", exc)
            continue
        kept.append(p)
        if len(images) >= 8 * batch:
            flush()
    if images:
        flush()
    summary.ranked = rank_items(items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    imageio.save_csv(out / "ranking.csv", RANKING_COLUMNS, [
        [r, it.name, f"{it.score:.6f}", f"{it.forward_object_score:.4f}", it.forward_area]
        for r, it in enumerate(summary.ranked, start=1)])
    frames = []
    for r, it in enumerate(summary.ranked[:top_k], start=1):
        path = kept[it.index]
        assert it.forward is not None
        shown: np.ndarray = np.where(it.forward, trait, 0).astype(_label_dtype(trait))
        ov = imageio.overlay(imageio.load_image(path), shown)
        imageio.save_png(out / f"rank_{r}_{path.stem}.png", ov)
        frames.append(ov)
    if frames:
        imageio.save_gif(out / "top_k.gif", frames)
    summary.seconds = time.perf_counter() - t_start
    return summary


# =========================================================================== crops


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` inclusive-exclusive box of the true pixels of ``mask [H,W]``,
    or None when the mask is empty."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


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


def run_crop(tracker: Tracker, support: str | Path, support_mask: str | Path,
             queries: str | Path, out: str | Path, *, mode: str = "sequential",
             background: str = "transparent", margin: int = 0,
             labels: Sequence[int] | None = None, batch: int = 4) -> CropSummary:
    """``sst crop``: segment the queries and write a tight crop of the chosen labels.

    Every label of the support is tracked (as ``sst segment``); the crop keeps the union
    of ``labels`` (default: all) in the predicted label map. Writes ``<stem>.png`` per
    query (RGBA, or RGB on black/white) and ``crops.csv`` (:data:`CROP_COLUMNS`; an
    empty prediction has empty box fields, area 0 and no crop file).
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
    sup, sup_mask = _load_support(support, support_mask, max_labels=tracker.max_labels)
    present = imageio.mask_labels(sup_mask)
    chosen = list(present) if not labels else [int(v) for v in labels]
    missing = [v for v in chosen if v not in present]
    if missing:
        raise InputError("--labels", f"label(s) {missing} not in the support mask; labels "
                         f"present: {present}")
    paths = imageio.collect_queries(queries, exclude=[support])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = CropSummary(labels=chosen)
    session = tracker.start_session([(sup, sup_mask)], num_queries=len(paths))
    for path, img, res in _segment_stream(tracker, session, paths, mode, batch, summary.failed):
        union = np.isin(res.mask, chosen)
        box = mask_bbox(union)
        row = CropRow(query=path.name, bbox=None, area=int(np.count_nonzero(union)))
        if box is not None:
            row.bbox = expand_bbox(box, margin, (union.shape[0], union.shape[1]))
            row.crop = out / f"{path.stem}.png"
            imageio.save_png(row.crop, make_crop(img, union, row.bbox, background))
        else:
            log.warning("%s: empty prediction, no crop written", path.name)
        summary.rows.append(row)
    imageio.save_csv(out / "crops.csv", CROP_COLUMNS, [
        [r.query, *(r.bbox if r.bbox is not None else ("", "", "", "")), r.area]
        for r in summary.rows])
    summary.seconds = time.perf_counter() - t_start
    return summary


# =========================================================================== from a cut-out


@dataclass
class CutoutMatch:
    """Where a cut-out was found: ``quality`` = normalised cross-correlation in [-1, 1]
    of its opaque pixels with the image; ``scale`` = object size in the image / size in
    the cut-out; ``x, y`` = top-left of the scaled cut-out's opaque bounding box in the
    image; ``mask [H,W]`` bool = its alpha (>= 128) pasted there."""

    quality: float
    scale: float
    x: int
    y: int
    mask: np.ndarray


@dataclass
class _Template:
    """A cut-out at one scale and pyramid level: ``rgb [h,w,3]`` float64, ``opaque
    [h,w]`` bool, and the zero-mean opaque pixels ``tz [n,3]`` with their norm."""

    rgb: np.ndarray
    opaque: np.ndarray
    tz: np.ndarray
    norm: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.opaque.shape[0]), int(self.opaque.shape[1])


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(h', w')`` of an ``h x w`` picture scaled by exactly ``scale`` (whole pixels)."""
    return max(1, math.floor(h * scale + 1e-9)), max(1, math.floor(w * scale + 1e-9))


def _scale_rgba(rgba: np.ndarray, scale: float) -> np.ndarray:
    """``uint8 [h,w,4]`` scaled by exactly ``scale`` (not by a rounded size, which matters
    for small cut-outs): ``uint8 [h',w',4]`` (:func:`_scaled_size`), Pillow bilinear,
    alpha-premultiplied, antialiased when shrinking."""
    h, w = rgba.shape[:2]
    th, tw = _scaled_size(h, w, scale)
    if scale == 1.0:
        return rgba
    box = (0.0, 0.0, tw / scale, th / scale)  # within the source: tw <= w * scale
    return np.asarray(Image.fromarray(rgba, "RGBA").resize(
        (tw, th), Image.Resampling.BILINEAR, box=box))


def _template(rgba: np.ndarray, scale: float) -> _Template | None:
    """The cut-out ``rgba [h,w,4]`` resized by ``scale``; None if too few opaque pixels
    remain or its opaque pixels have no contrast."""
    t = _scale_rgba(rgba, scale)
    opaque = t[:, :, 3] >= 128
    n = int(np.count_nonzero(opaque))
    if n < 16:
        return None
    rgb = t[:, :, :3].astype(np.float64) / 255.0
    pix = rgb[opaque]
    tz = pix - pix.mean(axis=0)
    norm = float(np.sqrt((tz * tz).sum()))
    if norm < 1e-6 * math.sqrt(n):
        return None
    return _Template(rgb=rgb, opaque=opaque, tz=tz, norm=norm)


class _Correlator:
    """FFT correlation of one image ``[H,W,3]`` (float, values in [0, 1]) with many
    templates: the image's transforms are computed once.

    Only offsets where a template fits are needed, so a transform of the image's own
    (fast) size suffices: the circular wrap-around never reaches a valid offset.
    """

    def __init__(self, image: np.ndarray) -> None:
        from scipy import fft

        self._fft = fft
        self.image = image - image.reshape(-1, 3).mean(axis=0)  # centred: smaller sums
        H, W = image.shape[:2]
        self.shape = (fft.next_fast_len(H, real=True), fft.next_fast_len(W, real=True))
        self.f_img = fft.rfft2(self.image, s=self.shape, axes=(0, 1))  # [., ., 3]
        self.f_sq = fft.rfft2((self.image ** 2).sum(axis=2), s=self.shape)

    def ncc_map(self, tpl: _Template) -> np.ndarray:
        """Masked, zero-mean normalised cross-correlation of ``tpl`` at every offset where
        it fits: ``[H-h+1, W-w+1]`` in [-1, 1] (0 on flat windows). Window means are
        taken per channel over the template's opaque pixels; the channels are pooled."""
        fft = self._fft
        H, W = self.image.shape[:2]
        h, w = tpl.shape
        vh, vw = H - h + 1, W - w + 1
        m = tpl.opaque.astype(np.float64)
        n = float(m.sum())
        tz = np.zeros((h, w, 3))
        tz[tpl.opaque] = tpl.tz
        f_t = np.conj(fft.rfft2(tz, s=self.shape, axes=(0, 1)))
        f_m = np.conj(fft.rfft2(m, s=self.shape))
        num = fft.irfft2((self.f_img * f_t).sum(axis=2), s=self.shape)[:vh, :vw]
        s1 = fft.irfft2(self.f_img * f_m[:, :, None], s=self.shape, axes=(0, 1))[:vh, :vw]
        s2 = fft.irfft2(self.f_sq * f_m, s=self.shape)[:vh, :vw]
        var = s2 - (s1 * s1).sum(axis=2) / n
        floor = 1e-8 * n
        ncc = np.where(var > floor, num / (np.sqrt(np.maximum(var, floor)) * tpl.norm), 0.0)
        return np.clip(ncc, -1.0, 1.0)


def _ncc_at(image: np.ndarray, tpl: _Template, x: int, y: int) -> float:
    """The correlation of :meth:`_Correlator.ncc_map` at one offset (``x, y`` = top-left
    of the template in ``image [H,W,3]``)."""
    h, w = tpl.shape
    pix = image[y:y + h, x:x + w][tpl.opaque]  # [n,3]
    n = len(pix)
    s1 = pix.sum(axis=0)
    var = float(np.einsum("ij,ij->", pix, pix) - s1 @ s1 / n)
    if var <= 1e-8 * n:
        return 0.0
    num = float(np.einsum("ij,ij->", pix, tpl.tz))  # tz sums to 0: no mean to remove
    return float(np.clip(num / (math.sqrt(var) * tpl.norm), -1.0, 1.0))


def _pyramid(rgb: np.ndarray, levels: int) -> list[np.ndarray]:
    """``[level 0 = full, level 1 = /2, ...]`` float64 ``[H_l,W_l,3]`` in [0, 1]
    (box-reduced by 2 per level)."""
    im = Image.fromarray(rgb)
    return [np.asarray(im.reduce(2 ** level) if level else im, dtype=np.float64) / 255.0
            for level in range(levels + 1)]


#: Scale step of the exhaustive coarse search, and the finest step of the refinement.
_COARSE_STEP = 1.04
_FINE_STEP = 1.0025


def match_cutout(image: np.ndarray, cutout: np.ndarray, *, min_scale: float = 0.8,
                 max_scale: float = 1.25, source: str = "--cutout") -> CutoutMatch:
    """Locate the RGBA ``cutout [h,w,4]`` in ``image [H,W,3]``.

    Coarse to fine: on an image pyramid (2x per level; the coarsest has a long side of
    ~160-320 px and the object a short side of >= 24 px), every scale in ``[min_scale,
    max_scale]`` (log-spaced, 4 % apart) is searched exhaustively by FFT correlation;
    the 3 best peaks at distinct positions are refined level by level down to full
    resolution (position +-2 px, scale step halved in log each time, down to 0.25 %),
    and the best refined one wins. Only the cut-out's opaque pixels (alpha >= 128) are
    compared; its transparent border is trimmed first.

    Raises:
        InputError: not RGBA, no opaque pixel, a flat (single-colour) cut-out, or a
            cut-out larger than the image at every searched scale.
    """
    from scipy.ndimage import maximum_filter

    if cutout.ndim != 3 or cutout.shape[2] != 4:
        raise InputError(source, "expected an RGBA cut-out (object opaque, background "
                         "transparent)")
    if not 0 < min_scale <= max_scale:
        raise InputError("--min-scale/--max-scale", f"expected 0 < min <= max, got "
                         f"{min_scale}, {max_scale}")
    box = mask_bbox(cutout[:, :, 3] >= 128)
    if box is None:
        raise InputError(source, "the cut-out has no opaque pixel (alpha >= 128)")
    x0, y0, x1, y1 = box
    rgba = np.ascontiguousarray(cutout[y0:y1, x0:x1])  # trim the transparent border
    h, w = rgba.shape[:2]
    H, W = image.shape[:2]
    sh, sw = _scaled_size(h, w, min_scale)
    if sh > H or sw > W:
        raise InputError(source, f"the cut-out's object ({w}x{h} px, at least {sw}x{sh} at "
                         f"scale {min_scale}) is larger than the image ({W}x{H})")
    levels = 0
    while (max(H, W) >> (levels + 1)) >= 160 and min(h, w) * min_scale / 2 ** (levels + 1) >= 24:
        levels += 1
    pyr = _pyramid(image[:, :, :3], levels)
    n_scales = max(1, math.ceil(math.log(max_scale / min_scale) / math.log(_COARSE_STEP)) + 1)
    scales = np.geomspace(min_scale, max_scale, n_scales)
    f = 2 ** levels
    coarse = _Correlator(pyr[levels])
    candidates: list[tuple[float, float, float, float]] = []  # (ncc, scale, centre x, y)
    for s in scales:
        tpl = _template(rgba, s / f)
        if tpl is None or tpl.shape[0] > pyr[levels].shape[0] or (
                tpl.shape[1] > pyr[levels].shape[1]):
            continue
        ncc = coarse.ncc_map(tpl)
        # two local maxima per scale, so a near miss of the true peak is refined too
        peaks = ncc == maximum_filter(ncc, size=5)
        ys, xs = np.nonzero(peaks)
        for k in np.argsort(-ncc[ys, xs], kind="stable")[:2]:
            th, tw = tpl.shape
            candidates.append((float(ncc[ys[k], xs[k]]), float(s),
                               (xs[k] + tw / 2) * f, (ys[k] + th / 2) * f))
    if not candidates:
        raise InputError(source, f"the cut-out ({w}x{h} px) cannot be located: it does not "
                         f"fit in the image ({W}x{H}) at any scale in [{min_scale}, "
                         f"{max_scale}], or it is a single flat colour")
    candidates.sort(key=lambda c: -c[0])
    # the 3 best peaks at distinct places (neighbouring scales peak at about the same
    # place: within a tenth of the object's size)
    near = max(2.0 * f, 0.1 * min(h, w) * min_scale)
    distinct: list[tuple[float, float, float, float]] = []
    for c in candidates:
        if all(abs(c[2] - d[2]) > near or abs(c[3] - d[3]) > near for d in distinct):
            distinct.append(c)
    best: tuple[float, float, int, int] | None = None
    for _, s, cx, cy in distinct[:3]:
        found = _refine(pyr, rgba, s, cx, cy, levels, min_scale, max_scale)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    if best is None:
        raise InputError(source, "the cut-out could not be located in the image")
    quality, s, x, y = best
    alpha = _scale_rgba(rgba, s)[:, :, 3] >= 128
    th, tw = alpha.shape
    mask = np.zeros((H, W), bool)
    mask[y:y + th, x:x + tw] = alpha
    return CutoutMatch(quality=quality, scale=s, x=x, y=y, mask=mask)


def _refine(pyr: Sequence[np.ndarray], rgba: np.ndarray, scale: float, cx: float, cy: float,
            levels: int, min_scale: float, max_scale: float
            ) -> tuple[float, float, int, int] | None:
    """Refine a coarse match (``scale``; object centre ``cx, cy`` in full-resolution
    pixels) from pyramid level ``levels - 1`` down to level 0, then keep refining the
    scale at full resolution. Returns ``(ncc, scale, x, y)`` (top-left at full
    resolution), or None when nothing fits."""
    h, w = rgba.shape[:2]
    schedule: list[tuple[int, float, int]] = []  # (level, scale step, radius)
    q = math.sqrt(_COARSE_STEP)
    for level in range(levels - 1, -1, -1):
        schedule.append((level, q, 2))
        q = math.sqrt(q)
    if not schedule:
        schedule.append((0, q, 1))
        q = math.sqrt(q)
    while q > _FINE_STEP * 0.999:
        schedule.append((0, q, 1))
        q = math.sqrt(q)
    best: tuple[float, float, int, int] | None = None
    for level, q, radius in schedule:
        img = pyr[level]
        f = 2 ** level
        tries = []  # (scale, template, guessed top-left x, y) at this level
        for s in sorted({min(max(v, min_scale), max_scale) for v in (scale / q, scale,
                                                                       scale * q)}):
            tpl = _template(rgba, s / f)
            if tpl is not None:
                th, tw = tpl.shape
                tries.append((s, tpl, round(cx / f - tw / 2), round(cy / f - th / 2)))
        if not tries:
            return None
        # one correlator over the region every placement of every scale falls in
        rx0 = max(0, min(gx for _, _, gx, _ in tries) - radius)
        ry0 = max(0, min(gy for _, _, _, gy in tries) - radius)
        rx1 = min(img.shape[1], max(gx + t.shape[1] for _, t, gx, _ in tries) + radius)
        ry1 = min(img.shape[0], max(gy + t.shape[0] for _, t, _, gy in tries) + radius)
        corr = _Correlator(img[ry0:ry1, rx0:rx1])
        best = None
        for s, tpl, gx, gy in tries:
            th, tw = tpl.shape
            if th > ry1 - ry0 or tw > rx1 - rx0:
                continue
            ncc = corr.ncc_map(tpl)
            # allowed offsets, relative to the region
            ax0, ay0 = max(0, gx - radius - rx0), max(0, gy - radius - ry0)
            ax1 = min(ncc.shape[1], gx + radius + 1 - rx0)
            ay1 = min(ncc.shape[0], gy + radius + 1 - ry0)
            if ax1 <= ax0 or ay1 <= ay0:
                continue
            win = ncc[ay0:ay1, ax0:ax1]
            k = int(np.argmax(win))
            v = float(win.flat[k])
            if best is None or v > best[0]:
                best = (v, s, rx0 + ax0 + k % win.shape[1], ry0 + ay0 + k // win.shape[1])
        if best is None:
            return None
        _, scale, bx, by = best
        th, tw = _scaled_size(h, w, scale / f)
        cx, cy = (bx + tw / 2) * f, (by + th / 2) * f
    if best is None:
        return None
    # the reported quality: evaluated directly, without FFT rounding
    _, scale, bx, by = best
    final = _template(rgba, scale)
    return None if final is None else (_ncc_at(pyr[0], final, bx, by), scale, bx, by)


def run_from_cutout(image: str | Path, cutout: str | Path, out: str | Path, *, label: int = 1,
                    min_quality: float = 0.8, min_scale: float = 0.8,
                    max_scale: float = 1.25) -> CutoutMatch:
    """``sst mask from-cutout``: find ``cutout`` in ``image``, write the label mask ``out``
    (value ``label`` on the cut-out's opaque pixels, 0 elsewhere).

    Raises:
        InputError: unreadable files, label out of 1..65535, a cut-out that cannot be
            located, or a best match below ``min_quality``.
    """
    if not 1 <= label <= _MAX_LABEL:
        raise InputError("--label", f"expected a label in 1..{_MAX_LABEL}, got {label}")
    if not -1.0 <= min_quality <= 1.0:
        raise InputError("--min-quality", f"expected a value in [-1, 1], got {min_quality}")
    rgb = imageio.load_image(image)
    rgba = _load_rgba(cutout)
    match = match_cutout(rgb, rgba, min_scale=min_scale, max_scale=max_scale,
                         source=str(cutout))
    if match.quality < min_quality:
        raise InputError(str(cutout), f"best match quality {match.quality:.3f} (scale "
                         f"{match.scale:.3f} at x={match.x}, y={match.y}) is below "
                         f"--min-quality {min_quality}: is this cut-out from this image?")
    out_mask: np.ndarray = np.where(match.mask, label, 0).astype(_label_dtype(label))
    imageio.save_label_png(out, out_mask)
    return match


def _load_rgba(path: str | Path) -> np.ndarray:
    """An RGBA cut-out file as ``uint8 [h,w,4]``; InputError without an alpha channel."""
    source = str(path)
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode in ("P", "RGB", "L") and "transparency" in im.info)
            if not has_alpha:
                raise InputError(source, f"the cut-out has no transparency (mode {im.mode}); "
                                 "expected an RGBA PNG with a transparent background")
            return np.array(im.convert("RGBA"), dtype=np.uint8)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(source, "cut-out file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(source, f"cannot read the cut-out image: {exc}") from None


# =========================================================================== from prompts


@dataclass
class PromptResult:
    """``logits [H,W]`` float32 at the image's size; ``mask [H,W]`` bool (logits > 0);
    ``iou``/``object_score``: the decoder's predicted IoU and object score logit;
    ``multimask``: whether the best of the 3 multimask outputs was taken."""

    logits: np.ndarray
    mask: np.ndarray
    iou: float
    object_score: float
    multimask: bool


def _check_prompts(points: Sequence[tuple[float, float, int]],
                   box: tuple[float, float, float, float] | None,
                   size: tuple[int, int]) -> None:
    H, W = size
    if not points and box is None:
        raise InputError("--point/--box", "give at least one point or a box")
    for x, y, lab in points:
        if lab not in (0, 1):
            raise InputError("--point", f"point label must be 1 (positive) or 0 (negative), "
                             f"got {lab} at ({x:g}, {y:g})")
        if not (0 <= x < W and 0 <= y < H):
            raise InputError("--point", f"point ({x:g}, {y:g}) is outside the image "
                             f"({W}x{H}: x in [0, {W}), y in [0, {H}))")
    if box is not None:
        x0, y0, x1, y1 = box
        for name, v, lim in (("x0", x0, W), ("y0", y0, H), ("x1", x1, W), ("y1", y1, H)):
            if not 0 <= v <= lim:
                raise InputError("--box", f"box {name}={v:g} is outside the image ({W}x{H}: "
                                 f"x in [0, {W}], y in [0, {H}])")
        if x1 <= x0 or y1 <= y0:
            raise InputError("--box", f"expected x0 < x1 and y0 < y1, got {box}")


def prompt_feeds(feats: Mapping[str, np.ndarray], image_size: int, low_res: int,
                 points: Sequence[tuple[float, float, int]],
                 box: tuple[float, float, float, float] | None,
                 size: tuple[int, int]) -> dict[str, np.ndarray]:
    """``mask_decoder`` feeds for one image prompted as sam2's ``add_new_points_or_box``
    prompts a first frame without memory.

    ``feats``: encoder outputs of the image (batch 1); ``points``: ``(x, y, label)`` in
    image pixels; ``box``: ``(x0, y0, x1, y1)`` in image pixels (two leading points with
    labels 2 and 3); ``size = (H, W)`` of the image. Coordinates are scaled to model
    pixels (``x * S / W``, ``y * S / H``). Multimask iff exactly one point in total.
    """
    H, W = size
    S = image_size
    coords: list[tuple[float, float]] = []
    labels: list[float] = []
    if box is not None:
        coords += [(box[0], box[1]), (box[2], box[3])]
        labels += [2.0, 3.0]
    coords += [(x, y) for x, y, _ in points]
    labels += [float(lab) for _, _, lab in points]
    # as sam2: normalise by the video size in float32, then scale by the model size
    xy = np.asarray(coords, np.float32) / np.asarray([W, H], np.float32)
    xy = (xy * np.float32(S)).astype(np.float32)
    one = np.ones((1, 1), np.float32)
    zero = np.zeros((1, 1), np.float32)
    return {
        "image_embed": feats["feat_top"], "feat_s0": feats["feat_s0"],
        "feat_s1": feats["feat_s1"],
        "point_coords": xy[None], "point_labels": np.asarray([labels], np.float32),
        "mask_input": np.zeros((1, 1, low_res, low_res), np.float32),
        "support_mask": np.zeros((1, 1, 4, 4), np.float32),
        "has_mask_input": zero, "mask_from_support": zero, "no_memory": one,
        "multimask": one if len(coords) == 1 else zero,
    }


def segment_prompt(backend: Backend, rgb: np.ndarray,
                   points: Sequence[tuple[float, float, int]] = (),
                   box: tuple[float, float, float, float] | None = None) -> PromptResult:
    """SAM 2's image-prompt path on ``rgb [H,W,3]``: ``image_encoder`` then
    ``mask_decoder`` with the prompts (see :func:`prompt_feeds`); the low-res logits
    ``[1,1,S/4,S/4]`` are resized (bilinear, as sam2) to ``[H,W]``.

    Raises:
        InputError: no prompt, a point label not 0/1, a point/box outside the image.
    """
    H, W = int(rgb.shape[0]), int(rgb.shape[1])
    _check_prompts(points, box, (H, W))
    S = backend.meta.image_size
    feats = backend.run("image_encoder", {"image": preprocess_image(rgb, S)[None]})
    feeds = prompt_feeds(feats, S, backend.meta.low_res, points, box, (H, W))
    dec = backend.run("mask_decoder", feeds)
    logits = resize_bilinear(dec["mask_logits"][0, 0], (H, W))
    return PromptResult(logits=logits, mask=logits > 0, iou=float(dec["iou"][0, 0]),
                        object_score=float(dec["object_score_logits"][0, 0]),
                        multimask=bool(feeds["multimask"][0, 0] > 0))


def paint_label(existing: np.ndarray | None, new: np.ndarray, label: int, *,
                overwrite: bool = False, source: str = "--mask") -> np.ndarray:
    """Paint the bool ``new [H,W]`` with ``label`` into ``existing [H,W]`` (or into a new
    all-zero map). New pixels take ``label`` whatever they held; other pixels keep their
    value. A label already in ``existing`` needs ``overwrite``: its old pixels are then
    cleared first (the label is replaced).

    Returns:
        ``[H,W]`` ``uint8`` (``uint16`` if a label exceeds 255), a new array.
    """
    if not 1 <= label <= _MAX_LABEL:
        raise InputError("--label", f"expected a label in 1..{_MAX_LABEL} (0 is the "
                         f"background), got {label}")
    new = np.asarray(new, dtype=bool)
    if existing is None:
        base = np.zeros(new.shape, np.int64)
    else:
        if existing.shape != new.shape:
            raise InputError(source, f"mask is {existing.shape[1]}x{existing.shape[0]} but "
                             f"the image is {new.shape[1]}x{new.shape[0]}")
        base = existing.astype(np.int64)
        present = imageio.mask_labels(existing)
        if label in present:
            if not overwrite:
                raise InputError("--label", f"label {label} is already in {source} (labels "
                                 f"present: {present}); choose another --label or pass "
                                 "--overwrite to replace it")
            base[base == label] = 0
    base[new] = label
    return base.astype(_label_dtype(int(base.max(initial=0))))


def run_from_prompts(backend: Backend, image: str | Path, out: str | Path, *,
                     points: Sequence[tuple[float, float, int]] = (),
                     box: tuple[float, float, float, float] | None = None, label: int = 1,
                     existing: str | Path | None = None,
                     overwrite: bool = False) -> tuple[PromptResult, np.ndarray]:
    """``sst mask from-prompts``: prompt SAM 2 on ``image`` and write the label map
    ``out`` (the new object painted into ``existing`` if given). Nothing is written when
    the prediction is empty.

    Returns:
        ``(prompt result, label map [H,W])``.
    """
    if not 1 <= label <= _MAX_LABEL:
        raise InputError("--label", f"expected a label in 1..{_MAX_LABEL} (0 is the "
                         f"background), got {label}")
    rgb = imageio.load_image(image)
    old = None
    if existing is not None:
        old = load_label_map(existing, image_size=(rgb.shape[1], rgb.shape[0]))
        present = imageio.mask_labels(old)
        if label in present and not overwrite:  # fail before running the model
            raise InputError("--label", f"label {label} is already in {existing} (labels "
                             f"present: {present}); choose another --label or pass "
                             "--overwrite to replace it")
    result = segment_prompt(backend, rgb, points, box)
    labels = paint_label(old, result.mask, label, overwrite=overwrite,
                         source=str(existing) if existing is not None else "--mask")
    if result.mask.any():
        imageio.save_label_png(out, labels)
    return result, labels


# =========================================================================== cleaning


def parse_relabel(spec: str) -> tuple[int, int]:
    """``"255:1"`` -> ``(255, 1)``: value ``255`` becomes ``1`` (0..65535 each)."""
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        src, dst = int(parts[0]), int(parts[1])
    except ValueError:
        raise InputError("--relabel", f"expected OLD:NEW integer values, got {spec!r}") from None
    for v in (src, dst):
        if not 0 <= v <= _MAX_LABEL:
            raise InputError("--relabel", f"values must be in 0..{_MAX_LABEL}, got {spec!r}")
    return src, dst


def relabel(mask: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Replace values of ``mask [H,W]`` all at once (``{1: 2, 2: 1}`` swaps); values
    not in ``mapping`` are kept. Returns ``[H,W]`` ``uint8``/``uint16``."""
    out = np.asarray(mask).astype(np.int64)
    src = np.asarray(mask)
    for old, new in mapping.items():
        out[src == old] = new
    return out.astype(_label_dtype(int(out.max(initial=0))))


_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_EIGHT = np.ones((3, 3), bool)


def fill_holes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill background regions enclosed by one label.

    A hole is a 4-connected region of 0s that does not touch the image border and
    whose 4-neighbours all carry the same label; it takes that label. Regions touching
    two labels (say a gap between two parts) stay background.

    Returns:
        ``(filled [H,W] same dtype, number of pixels filled)``.
    """
    from scipy import ndimage

    lab = np.asarray(mask)
    bg = lab == 0
    comps, n = ndimage.label(bg, structure=_FOUR)
    if n == 0:
        return lab.copy(), 0
    # Components touching the border are never holes.
    border = np.unique(np.concatenate([comps[0], comps[-1], comps[:, 0], comps[:, -1]]))
    # (component, neighbouring label) pairs over the 4 neighbour directions.
    pairs = []
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        for p, q in ((a, b), (b, a)):
            cp, lq = comps[p], lab[q]
            sel = (cp > 0) & (lq != 0)
            pairs.append(np.stack([cp[sel].astype(np.int64), lq[sel].astype(np.int64)], 1))
    both = np.unique(np.concatenate(pairs), axis=0)
    counts = np.bincount(both[:, 0], minlength=n + 1)
    fill_value = np.zeros(n + 1, np.int64)
    single = counts == 1
    fill_value[both[single[both[:, 0]], 0]] = both[single[both[:, 0]], 1]
    fill_value[border] = 0
    fill_value[0] = 0
    add = fill_value[comps]
    out = lab.copy()
    holes = add > 0
    out[holes] = add[holes].astype(out.dtype)
    return out, int(np.count_nonzero(holes))


def remove_small_components(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, int, int]:
    """Set to 0 every 8-connected component of a label with fewer than ``min_size``
    pixels.

    Returns:
        ``(cleaned [H,W] same dtype, components removed, pixels removed)``.
    """
    from scipy import ndimage

    if min_size < 0:
        raise InputError("--min-size", f"expected a size >= 0 pixels, got {min_size}")
    out = np.asarray(mask).copy()
    removed = pixels = 0
    if min_size <= 1:
        return out, 0, 0
    for value in imageio.mask_labels(out):
        comps, n = ndimage.label(out == value, structure=_EIGHT)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        small = sizes < min_size
        small[0] = False
        if small.any():
            drop = small[comps]
            out[drop] = 0
            removed += int(small.sum())
            pixels += int(drop.sum())
    return out, removed, pixels


@dataclass
class CleanReport:
    """What :func:`clean_mask` changed."""

    relabelled: dict[int, int] = field(default_factory=dict)  # old value -> pixels changed
    components_removed: int = 0
    pixels_removed: int = 0
    pixels_filled: int = 0
    labels: list[int] = field(default_factory=list)  # labels of the result


def clean_mask(mask: np.ndarray, *, mapping: Mapping[int, int] | None = None,
               fill: bool = False, min_size: int = 0) -> tuple[np.ndarray, CleanReport]:
    """Relabel, then drop components smaller than ``min_size``, then fill holes (so a
    dropped speck inside a part becomes part of it).

    Args:
        mask: ``[H,W]`` integer label map.

    Returns:
        ``(cleaned [H,W] uint8/uint16, report)``.
    """
    report = CleanReport()
    out = np.asarray(mask)
    if mapping:
        for old in mapping:
            report.relabelled[int(old)] = int(np.count_nonzero(out == old))
        out = relabel(out, mapping)
    out, report.components_removed, report.pixels_removed = remove_small_components(
        out, min_size)
    if fill:
        out, report.pixels_filled = fill_holes(out)
    out = out.astype(_label_dtype(int(out.max(initial=0))))
    report.labels = imageio.mask_labels(out)
    return out, report


def run_clean(mask: str | Path, out: str | Path, *, relabels: Sequence[str] = (),
              fill: bool = False, min_size: int = 0) -> CleanReport:
    """``sst mask clean``: read ``mask``, clean it (:func:`clean_mask`), write ``out``.
    ``relabels`` are ``"OLD:NEW"`` strings, applied all at once."""
    mapping: dict[int, int] = {}
    for spec in relabels:
        src, dst = parse_relabel(spec)
        if src in mapping and mapping[src] != dst:
            raise InputError("--relabel", f"value {src} is relabelled twice ({mapping[src]} "
                             f"and {dst})")
        mapping[src] = dst
    lab = load_label_map(mask)
    cleaned, report = clean_mask(lab, mapping=mapping, fill=fill, min_size=min_size)
    imageio.save_label_png(out, cleaned)
    return report
