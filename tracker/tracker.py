"""The SST tracker: support frames first, queries after, as a pseudo-video.

All objects (labels) of a frame go through memory attention, the mask decoder and the
memory encoder as one batch; images are encoded in batches over frames. The tracker
holds no model math: it selects and stacks memories (:mod:`sst.tracker.bank`), resizes
(:mod:`sst.tracker.resize`), and calls a :class:`~sst.tracker.backends.Backend`.

Modes:

* ``sequential`` (SST proper): each query remembers the queries before it, in order.
* ``independent``: each query sees only the support memories, as if it were the one
  query of a 2-frame (support, query) video; queries go through in batches, and the
  result does not depend on their order.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sst.tracker.backends import Backend
from sst.tracker.bank import Entry, MemoryBank, from_bf16, select_memories, to_bf16
from sst.tracker.errors import InputError
from sst.tracker.resize import (
    mask_to_low_res_logits,
    mask_to_model,
    preprocess_image,
    resize_bilinear,
)

__all__ = ["Tracker", "Session", "FrameResult", "labels_from_logits", "MODES", "SupportCache"]

MODES = ("sequential", "independent")
#: Pointer horizon for streamed sessions, whose length is unknown: any length >= the
#: model's ``max_obj_ptrs_in_encoder`` gives the same selection.
STREAMING = 1 << 30


@dataclass
class FrameResult:
    """One query's result. ``logits [K,H,W]`` float32 at the query's own size (``K`` =
    labels in ``labels`` order); ``mask [H,W]`` label values (0 = background)."""

    labels: list[int]
    logits: np.ndarray
    mask: np.ndarray
    object_score_logits: np.ndarray  # [K]
    iou: np.ndarray  # [K]
    seconds: float = 0.0

    @property
    def areas(self) -> dict[int, int]:
        return {lab: int((self.mask == lab).sum()) for lab in self.labels}

    def scores(self) -> list[dict[str, float | int]]:
        areas = self.areas
        return [{"label": lab, "area": areas[lab],
                 "object_score": float(self.object_score_logits[k]),
                 "iou": float(self.iou[k])} for k, lab in enumerate(self.labels)]


@dataclass
class Session:
    """State of one SST run: labels, the memory bank and the next frame index.

    ``num_frames`` is the pseudo-video's length when known (exact sam2 parity for finite
    runs); streamed sessions use :data:`STREAMING`.
    """

    labels: list[int]
    bank: MemoryBank
    num_supports: int
    next_frame: int
    num_frames: int = STREAMING
    frames_seen: int = 0
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def num_objects(self) -> int:
        return len(self.labels)


def labels_from_logits(logits: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``[K,H,W]`` logits -> ``[H,W]`` label map: the highest positive logit wins; 0 where
    no logit is positive."""
    dtype = np.uint8 if max(labels, default=0) <= 255 else np.uint16
    if logits.shape[0] == 0:
        return np.zeros(logits.shape[1:], dtype)
    best = logits.argmax(axis=0)
    lut = np.asarray(labels, dtype=dtype)
    out = lut[best]
    out[logits.max(axis=0) <= 0] = 0
    return out


def support_key(supports: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """Digest of support pixels and masks (dtype, shape and bytes of each array)."""
    h = hashlib.blake2b(digest_size=20)
    for img, mask in supports:
        for a in (img, mask):
            a = np.asarray(a)
            h.update(f"{a.dtype.str}{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class SupportCache:
    """Conditioning entries of primed supports by content (see :func:`support_key`; the
    labels follow from the masks), least recently used first out, bounded in bytes. A
    server sees the same species' support again and again (stateless requests, re-primed
    sessions); priming it encodes and decodes every support image, which is as much work
    as a query. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, tuple[dict[int, Entry], int]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> dict[int, Entry] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return dict(item[0])

    def put(self, key: str, cond: dict[int, Entry]) -> None:
        size = sum(e.nbytes for e in cond.values())
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._items[key] = (dict(cond), size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self.nbytes -= n


class Tracker:
    """Runs SST over a :class:`Backend`.

    ``max_labels`` caps the labels of a support mask; ``encode_batch`` is how many frames
    the image encoder takes at once (default: 2 x 512^2 pixels' worth, 1 to 4 frames:
    at 1024 px a batch of 2 was slower per frame than single frames on a 2-core CPU,
    3.7 s vs 5.0 s, while small images gain from batching); ``support_cache_bytes`` > 0
    keeps primed supports (see :class:`SupportCache`) so that the same support is
    encoded once; ``attention_batch`` caps the objects per memory-attention call
    (default: the backend's ``attention_batch``).
    """

    def __init__(self, backend: Backend, *, max_labels: int = 64,
                 encode_batch: int | None = None, attention_batch: int | None = None,
                 max_cond_frames: int = -1, memory_stride: int = 1,
                 keep_all_memories: bool = False, support_cache_bytes: int = 0) -> None:
        self.backend = backend
        #: Objects per memory-attention call (0: all); default: what the backend prefers.
        self.attention_batch = int(attention_batch if attention_batch is not None
                                   else getattr(backend, "attention_batch", 0))
        self.support_cache = SupportCache(support_cache_bytes) if support_cache_bytes else None
        self.meta = backend.meta
        self.max_labels = max_labels
        if encode_batch is None:
            size = self.meta.image_size
            encode_batch = min(4, (2 * 512 * 512) // (size * size))
        self.encode_batch = max(1, encode_batch)
        self.max_cond_frames = max_cond_frames
        self.memory_stride = memory_stride
        self.keep_all_memories = keep_all_memories
        self.timings: dict[str, float] = {}
        #: ``(batch, memory frames, pointers)`` of every memory-attention call (benchmarks).
        self.attention_shapes: list[tuple[int, int, int]] = []

    # ----------------------------------------------------------------- helpers
    def _run(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        step = 0
        if component == "memory_attention":
            self.attention_shapes.append((int(feeds["memory"].shape[0]),
                                          int(feeds["memory"].shape[1]),
                                          int(feeds["obj_ptrs"].shape[1])))
            step = self.attention_batch
        t = time.perf_counter()
        n = int(next(iter(feeds.values())).shape[0])
        if 0 < step < n:
            parts = [self.backend.run(component, {k: v[i:i + step] for k, v in feeds.items()})
                     for i in range(0, n, step)]
            out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        else:
            out = self.backend.run(component, feeds)
        self.timings[component] = self.timings.get(component, 0.0) + time.perf_counter() - t
        return out

    def encode(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """RGB uint8 images -> ``feat_s0/feat_s1/feat_top`` stacked over frames."""
        S = self.meta.image_size
        parts = []
        for i in range(0, len(images), self.encode_batch):
            batch = np.stack([preprocess_image(im, S) for im in images[i:i + self.encode_batch]])
            parts.append(self._run("image_encoder", {"image": batch}))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _decoder_feeds(self, embed: np.ndarray, s0: np.ndarray, s1: np.ndarray,
                       support: np.ndarray | None = None) -> dict[str, np.ndarray]:
        B = embed.shape[0]
        lo = self.meta.low_res
        zeros = np.zeros((B, 1), np.float32)
        return {
            "image_embed": embed, "feat_s0": s0, "feat_s1": s1,
            "point_coords": np.zeros((B, 1, 2), np.float32),
            "point_labels": -np.ones((B, 1), np.float32),
            "mask_input": np.zeros((B, 1, lo, lo), np.float32),
            "support_mask": support if support is not None
            else np.zeros((B, 1, 4, 4), np.float32),
            "has_mask_input": zeros if support is None else np.ones((B, 1), np.float32),
            "mask_from_support": zeros if support is None else np.ones((B, 1), np.float32),
            "no_memory": zeros,
            "multimask": np.ones((B, 1), np.float32) if support is None else zeros,
        }

    # ----------------------------------------------------------------- sessions
    def start_session(self, supports: Sequence[tuple[np.ndarray, np.ndarray]],
                      num_queries: int | None = None) -> Session:
        """Prime a session with support ``(rgb [H,W,3] uint8, label mask [H,W])`` pairs.

        Every label of any support becomes an object; a support without a label says
        that object is absent there. ``num_queries`` (if known) fixes the pseudo-video
        length as sam2 would see it.
        """
        if not supports:
            raise InputError("supports", "at least one support image with its mask is needed")
        labels: set[int] = set()
        for i, (img, mask) in enumerate(supports):
            if mask.shape != img.shape[:2]:
                raise InputError(f"support {i}", f"mask is {mask.shape[1]}x{mask.shape[0]} but "
                                 f"its image is {img.shape[1]}x{img.shape[0]}")
            labels.update(int(v) for v in np.unique(mask) if v != 0)
        if not labels:
            raise InputError("support masks", "no labels: every pixel of every mask is 0")
        if len(labels) > self.max_labels:
            raise InputError("support masks", f"{len(labels)} labels, more than the cap of "
                             f"{self.max_labels} (raise --max-labels if this is intended)")
        ordered = sorted(labels)
        n = len(supports)
        total = n + num_queries if num_queries is not None else STREAMING
        cache = self.support_cache
        key = support_key(supports) if cache is not None else ""
        cond = cache.get(key) if cache is not None else None
        if cond is not None:
            bank = MemoryBank(self.meta.num_maskmem, self.meta.max_obj_ptrs, cond=cond,
                              keep_all=self.keep_all_memories)
        else:
            bank = self._prime(supports, ordered)
            if cache is not None:
                cache.put(key, bank.cond)
        return Session(labels=ordered, bank=bank, num_supports=n, next_frame=n, num_frames=total)

    def _prime(self, supports: Sequence[tuple[np.ndarray, np.ndarray]],
               ordered: list[int]) -> MemoryBank:
        """A bank holding one conditioning entry per support frame."""
        S, lo = self.meta.image_size, self.meta.low_res
        feats = self.encode([img for img, _ in supports])
        K = len(ordered)
        bank = MemoryBank(self.meta.num_maskmem, self.meta.max_obj_ptrs,
                          keep_all=self.keep_all_memories)
        for i, (_, mask) in enumerate(supports):
            mask_s = np.stack([mask_to_model(mask == lab, S) for lab in ordered])[:, None]
            rep = {k: np.repeat(v[i:i + 1], K, axis=0) for k, v in feats.items()}
            dec = self._run("mask_decoder", self._decoder_feeds(
                rep["feat_top"], rep["feat_s0"], rep["feat_s1"], support=mask_s))
            low = mask_to_low_res_logits(mask_s, lo).astype(np.float32)
            mem = self._run("memory_encoder", {"feat_top": rep["feat_top"], "mask_logits": low,
                                               "object_score_logits": dec["object_score_logits"]})
            bank.add_cond(i, Entry(to_bf16(mem["maskmem_features"]), dec["obj_ptr"]))
        return bank

    def _attend_feeds(self, session: Session, frame_idx: int, num_frames: int,
                      feat_top: np.ndarray, use_recent: bool) -> dict[str, np.ndarray]:
        """Memory-attention feeds for one frame, all ``K`` objects stacked."""
        bank = session.bank
        if not use_recent:
            bank = MemoryBank(bank.num_maskmem, bank.max_obj_ptrs, cond=bank.cond)
        sel = select_memories(bank, frame_idx, num_frames, max_cond=self.max_cond_frames,
                              stride=self.memory_stride)
        K = session.num_objects
        memory = np.stack([from_bf16(m) for _, m in sel.memories], axis=1)  # [K,F,M,f,f]
        tpos = np.tile(np.asarray([t for t, _ in sel.memories], np.int64), (K, 1))
        C = self.meta.hidden_dim
        if sel.pointers:
            ptrs = np.stack([p for _, p in sel.pointers], axis=1).astype(np.float32)
            ptr_tpos = np.tile(np.asarray([d for d, _ in sel.pointers], np.float32), (K, 1))
        else:
            ptrs = np.zeros((K, 0, C), np.float32)
            ptr_tpos = np.zeros((K, 0), np.float32)
        return {"feat_top": np.repeat(feat_top[None], K, axis=0), "memory": memory,
                "memory_tpos": tpos, "obj_ptrs": ptrs, "obj_ptr_tpos": ptr_tpos}

    def _finish(self, session: Session, dec: dict[str, np.ndarray], k0: int,
                size: tuple[int, int], t0: float) -> FrameResult:
        K = session.num_objects
        low = dec["mask_logits"][k0:k0 + K, 0]
        logits = resize_bilinear(low, size)
        return FrameResult(labels=list(session.labels), logits=logits,
                           mask=labels_from_logits(logits, session.labels),
                           object_score_logits=dec["object_score_logits"][k0:k0 + K, 0].copy(),
                           iou=dec["iou"][k0:k0 + K, 0].copy(), seconds=time.perf_counter() - t0)

    # ----------------------------------------------------------------- propagation
    def track(self, session: Session, images: Iterable[np.ndarray]) -> Iterator[FrameResult]:
        """Sequential SST: each image is the next frame of the pseudo-video. Images are
        encoded ``encode_batch`` at a time (encoding does not depend on memory)."""
        it = iter(images)
        while True:
            chunk = [im for _, im in zip(range(self.encode_batch), it)]
            if not chunk:
                return
            t0 = time.perf_counter()
            feats = self.encode(chunk)
            encode_share = (time.perf_counter() - t0) / len(chunk)  # each frame's part
            for j, img in enumerate(chunk):
                size = (int(img.shape[0]), int(img.shape[1]))
                res = self._track_one(session, {k: v[j] for k, v in feats.items()}, size,
                                      time.perf_counter())
                res.seconds += encode_share
                yield res

    def _track_one(self, session: Session, feats: dict[str, np.ndarray],
                   size: tuple[int, int], t0: float) -> FrameResult:
        K = session.num_objects
        frame_idx = session.next_frame
        feeds = self._attend_feeds(session, frame_idx, session.num_frames, feats["feat_top"],
                                   use_recent=True)
        cond = self._run("memory_attention", feeds)["conditioned"]
        rep = {k: np.repeat(v[None], K, axis=0) for k, v in feats.items()}
        dec = self._run("mask_decoder", self._decoder_feeds(cond, rep["feat_s0"], rep["feat_s1"]))
        mem = self._run("memory_encoder", {"feat_top": rep["feat_top"],
                                           "mask_logits": dec["mask_logits"],
                                           "object_score_logits": dec["object_score_logits"]})
        session.bank.add_recent(frame_idx, Entry(to_bf16(mem["maskmem_features"]),
                                                 dec["obj_ptr"]))
        session.next_frame += 1
        session.frames_seen += 1
        session.last_used = time.monotonic()
        return self._finish(session, dec, 0, size, t0)

    def segment_independent(self, session: Session, images: Sequence[np.ndarray],
                            batch: int = 4) -> Iterator[FrameResult]:
        """Independent mode: every query is frame ``num_supports`` of a video of length
        ``num_supports + 1``; ``batch`` queries x ``K`` objects run as one batch."""
        K = session.num_objects
        frame_idx = session.num_supports
        for i in range(0, len(images), batch):
            t0 = time.perf_counter()
            chunk = images[i:i + batch]
            feats = self.encode(chunk)
            per = [self._attend_feeds(session, frame_idx, frame_idx + 1, feats["feat_top"][j],
                                      use_recent=False) for j in range(len(chunk))]
            feeds = {k: np.concatenate([p[k] for p in per]) for k in per[0]}
            cond = self._run("memory_attention", feeds)["conditioned"]
            rep = {k: np.repeat(v, K, axis=0) for k, v in feats.items()}
            dec = self._run("mask_decoder",
                            self._decoder_feeds(cond, rep["feat_s0"], rep["feat_s1"]))
            elapsed = (time.perf_counter() - t0) / len(chunk)
            for j, img in enumerate(chunk):
                size = (int(img.shape[0]), int(img.shape[1]))
                res = self._finish(session, dec, j * K, size, time.perf_counter())
                res.seconds = elapsed
                yield res
            session.frames_seen += len(chunk)
            session.last_used = time.monotonic()

    def segment(self, supports: Sequence[tuple[np.ndarray, np.ndarray]],
                queries: Sequence[np.ndarray], mode: str = "sequential",
                batch: int = 4) -> list[FrameResult]:
        """Convenience: one session over in-memory images; results in query order."""
        if mode not in MODES:
            raise InputError("mode", f"expected one of {MODES}, got {mode!r}")
        session = self.start_session(supports, num_queries=len(queries))
        if mode == "sequential":
            return list(self.track(session, queries))
        return list(self.segment_independent(session, queries, batch=batch))


