"""The SST engine: every live session steps together through each component.

One engine per device holds the backend (the models), every session's memory bank and
the support cache. A *step* takes at most one frame of each session (a session's frames
depend on each other, so they go one per step and keep their order) plus any
independent-mode frames, and runs each component once for all of them, in the manner of
the in-flight batching of LLM servers:

1. **image encoder** over every frame of the step that has no features yet (and, to fill
   the last encoder batch, the next pending frames: encoding does not depend on memory),
   ``encode_batch`` frames per call;
2. **memory attention** over every object of every frame, frames grouped by their
   memory layout ``(F memories, P pointers)`` (equal layouts stack exactly, without
   padding), at most ``attention_bytes`` of attention scores per call;
3. **mask decoder** over every object of the step, in one call;
4. **memory encoder** over every object of the step's sequential frames, in one call;
5. the label masks, made on the device (:meth:`ArrayOps.to_masks`), and the scores are
   the only things that come back to the host.

A step is three parts, as in LLM engine cores: the scheduler's pure
:func:`~sst.tracker.scheduler.schedule` makes a
:class:`~sst.tracker.scheduler.StepPlan`; :meth:`Engine.execute` runs the components
over it and returns a :class:`~sst.tracker.scheduler.StepOutput` without touching any
session; :meth:`Engine.commit` (through the scheduler's ``commit``) applies it: new
memories into the banks, next frames, clocks. A failure in any component therefore
leaves every bank and queue as it was before the step. The engine decides nothing about
what a step takes: every path that runs frames goes through :mod:`sst.tracker.scheduler`
(its queues, or :func:`~sst.tracker.scheduler.run_step` for a step chosen by the caller).

The engine holds no model math and no per-call history: it selects memories
(:mod:`sst.tracker.bank`), keeps books, and calls the backend and its
:class:`~sst.tracker.ops.ArrayOps`. Timings and call shapes come from a wrapper around
the backend (:class:`sst.tracker.instrument.InstrumentedBackend`).

Typical use (the :class:`~sst.tracker.scheduler.Scheduler` decides what each step
takes)::

    engine = Engine(backend)
    (session,) = engine.open_sessions([[(support_rgb, support_mask)]])
    sched = Scheduler(engine)
    for img in queries:
        sched.submit(Frame(session, img))
    results = [res for _, res in sched.drain()]
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sst.export.families import family, family_specs
from sst.tracker.backends import Backend
from sst.tracker.bank import Entry, MemoryBank, Selection, select_memories
from sst.tracker.defaults import MAX_LABELS
from sst.tracker.errors import InputError
from sst.tracker.ops import ArrayOps, NumpyOps, mask_labels
from sst.tracker.result import FrameResult
from sst.tracker.scheduler import StepOutput, StepPlan

__all__ = ["Engine", "Session", "Frame", "FrameResult",
           "SupportCache", "support_key", "STREAMING", "Support"]

#: Pointer horizon for streamed sessions, whose length is unknown: any length >= the
#: model's ``max_obj_ptrs_in_encoder`` gives the same selection.
STREAMING = 1 << 30
#: ``(rgb [H,W,3] uint8, label mask [H,W])``
Support = tuple[np.ndarray, np.ndarray]


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


@dataclass(eq=False)
class Frame:
    """One query frame of a session. ``independent``: conditioned on the supports alone
    (frame ``num_supports`` of a ``num_supports + 1``-frame video), otherwise the next
    frame of the session. ``features``: encoder outputs (``[1,...]`` each) once known;
    ``keep_features``: hand them on with the result. ``tag``: anything the caller needs
    to route the result."""

    session: Session
    image: np.ndarray | None
    independent: bool = False
    tag: Any = None
    features: dict[str, Any] | None = None
    size: tuple[int, int] = (0, 0)
    encode_seconds: float = 0.0
    keep_features: bool = False

    def __post_init__(self) -> None:
        if self.image is not None and self.size == (0, 0):
            self.size = (int(self.image.shape[0]), int(self.image.shape[1]))


def support_key(supports: Sequence[Support]) -> str:
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


def default_encode_batch(image_size: int) -> int:
    """Frames per encoder call on the CPU (ONNX Runtime): 8 up to 256 px, where a batch
    makes each frame cheaper, and 1 above, where it makes each frame dearer (the
    measurements are in docs/benchmarks.md, "Encoder batch and attention caps")."""
    return 8 if image_size <= 256 else 1


class Engine:
    """Sessions, their memory banks and batched steps over one :class:`Backend`.

    ``max_labels`` caps the labels of a support mask; ``encode_batch``: frames per
    encoder call (default: the backend's ``encode_batch`` or :func:`default_encode_batch`);
    ``attention_bytes``: the most attention-score bytes per memory-attention call (0: no
    limit; default: the backend's ``attention_bytes``); ``bf16_memories``: store memories
    in bfloat16 as sam2 does (False keeps float32, for exactness checks across batch
    shapes); ``support_cache_bytes`` > 0 keeps primed supports by content.
    """

    def __init__(self, backend: Backend, *, max_labels: int = MAX_LABELS,
                 encode_batch: int | None = None, attention_bytes: int | None = None,
                 max_cond_frames: int = -1, memory_stride: int = 1,
                 keep_all_memories: bool = False, support_cache_bytes: int = 0,
                 bf16_memories: bool = True) -> None:
        self.backend = backend
        self.meta = backend.meta
        #: How this model's family differs in the pipeline (sst.export.families).
        self.traits = family(self.meta.family).traits
        self.binarize_input = "binarize" in family_specs(self.meta)["memory_encoder"].input_names
        ops: ArrayOps | None = getattr(backend, "ops", None)
        self.ops: ArrayOps = ops if ops is not None else NumpyOps()
        self.ops.bf16_memories = bf16_memories and self.traits.bf16_memories
        self.max_labels = max_labels
        if encode_batch is None:
            encode_batch = getattr(backend, "encode_batch", 0) or default_encode_batch(
                self.meta.image_size)
        self.encode_batch = max(1, int(encode_batch))
        self.attention_bytes = int(attention_bytes if attention_bytes is not None
                                   else getattr(backend, "attention_bytes", 0))
        self.attention_object_bytes = int(getattr(backend, "attention_object_bytes", 0))
        self.max_cond_frames = max_cond_frames
        self.memory_stride = memory_stride
        self.keep_all_memories = keep_all_memories
        self.support_cache = SupportCache(support_cache_bytes) if support_cache_bytes else None

    # ----------------------------------------------------------------- components
    def _run(self, component: str, feeds: dict[str, Any], step: int = 0) -> dict[str, Any]:
        """One component over a batch, in chunks of ``step`` rows (0: one call)."""
        n = int(next(iter(feeds.values())).shape[0])
        if 0 < step < n:
            parts = [self.backend.run(component, {k: v[i:i + step] for k, v in feeds.items()})
                     for i in range(0, n, step)]
            return {k: self.ops.concat([p[k] for p in parts]) for k in parts[0]}
        return self.backend.run(component, feeds)

    def encode(self, images: Sequence[np.ndarray]) -> dict[str, Any]:
        """RGB uint8 images -> ``feat_s0/feat_s1/feat_top`` stacked over frames (on the
        device), ``encode_batch`` frames per encoder call."""
        S = self.meta.image_size
        parts = [self.backend.run("image_encoder", {
            "image": self.ops.preprocess(images[i:i + self.encode_batch], S,
                                         self.traits.resample)})
            for i in range(0, len(images), self.encode_batch)]
        return {k: self.ops.concat([p[k] for p in parts]) for k in parts[0]}

    def decoder_feeds(self, embed: Any, feat_s0: Any, feat_s1: Any,
                      support: Any | None = None) -> dict[str, Any]:
        """Mask-decoder feeds for ``B`` rows with no prompt: tracked frames
        (``support=None``: multimask output, as sam2 tracks) or support frames whose
        ``[B,1,S,S]`` mask stands in for the prediction (``_use_mask_as_output``; its
        pointer from the single-mask output, or the multimask one where the family's
        reference makes it so)."""
        B = int(embed.shape[0])
        lo = self.meta.low_res
        full = self.ops.full
        zeros = full((B, 1), 0.0)
        flag = full((B, 1), 1.0) if support is not None else zeros
        return {
            "image_embed": embed, "feat_s0": feat_s0, "feat_s1": feat_s1,
            "point_coords": full((B, 1, 2), 0.0), "point_labels": full((B, 1), -1.0),
            "mask_input": full((B, 1, lo, lo), 0.0),
            "support_mask": support if support is not None else full((B, 1, 4, 4), 0.0),
            "has_mask_input": flag, "mask_from_support": flag, "no_memory": zeros,
            "multimask": (zeros if support is not None and not self.traits.support_multimask
                          else full((B, 1), 1.0)),
        }

    # ----------------------------------------------------------------- sessions
    def labels_of(self, supports: Sequence[Support]) -> list[int]:
        """The sorted labels of ``supports``; raises :class:`InputError` naming the
        problem (no support, a mask of another size, no labels, too many labels)."""
        if not supports:
            raise InputError("supports", "at least one support image with its mask is needed")
        labels: set[int] = set()
        for i, (img, mask) in enumerate(supports):
            if mask.shape != img.shape[:2]:
                raise InputError(f"support {i}", f"mask is {mask.shape[1]}x{mask.shape[0]} but "
                                 f"its image is {img.shape[1]}x{img.shape[0]}")
            labels.update(mask_labels(mask))
        if not labels:
            raise InputError("support masks", "no labels: every pixel of every mask is 0")
        if len(labels) > self.max_labels:
            raise InputError("support masks", f"{len(labels)} labels, more than the cap of "
                             f"{self.max_labels} (raise --max-labels if this is intended)")
        return sorted(labels)

    def _new_bank(self, cond: dict[int, Entry] | None = None) -> MemoryBank:
        return MemoryBank(self.meta.num_maskmem, self.meta.max_obj_ptrs,
                          cond=dict(cond or {}), keep_all=self.keep_all_memories)

    def open_sessions(self, requests: Sequence[Sequence[Support]],
                      num_queries: Sequence[int | None] | None = None,
                      features: Sequence[dict[str, Any] | None] | None = None
                      ) -> list[Session | InputError]:
        """Prime one session per request (its support ``(rgb, label mask)`` pairs), all
        requests batched: every support image through the encoder, every (support,
        label) row through the decoder and the memory encoder, at once.

        Every label of any support becomes an object; a support without a label says that
        object is absent there. ``num_queries[i]`` (if known) fixes the pseudo-video
        length as sam2 would see it. ``features[i]`` (``[n_i,...]`` encoder outputs of
        request ``i``'s support images), if given, is used instead of encoding them.
        A request with bad input gets its :class:`InputError` in its place; the others
        are primed.
        """
        errors: dict[int, InputError] = {}
        labels: dict[int, list[int]] = {}
        keys: dict[int, str] = {}  # request -> support key
        conds: dict[str, dict[int, Entry]] = {}  # support key -> conditioning entries
        todo: dict[str, int] = {}  # support key -> the first request that needs it primed
        for r, supports in enumerate(requests):
            try:
                labels[r] = self.labels_of(supports)
            except InputError as exc:
                errors[r] = exc
                continue
            key = keys[r] = support_key(supports)
            if key in todo or key in conds:
                continue
            cached = self.support_cache.get(key) if self.support_cache is not None else None
            if cached is not None:
                conds[key] = cached
            else:
                todo[key] = r
        if todo:
            first = list(todo.values())
            primed = self._prime([requests[r] for r in first], [labels[r] for r in first],
                                 [features[r] if features else None for r in first])
            for key, cond in zip(todo, primed):
                conds[key] = cond
                if self.support_cache is not None:
                    self.support_cache.put(key, cond)
        out: list[Session | InputError] = []
        for r, supports in enumerate(requests):
            if r in errors:
                out.append(errors[r])
                continue
            nq = num_queries[r] if num_queries is not None else None
            n = len(supports)
            out.append(Session(labels=labels[r], bank=self._new_bank(conds[keys[r]]),
                               num_supports=n, next_frame=n,
                               num_frames=n + nq if nq is not None else STREAMING))
        return out

    def open_session(self, supports: Sequence[Support], num_queries: int | None = None,
                     features: dict[str, Any] | None = None) -> Session:
        """One session (see :meth:`open_sessions`); raises its :class:`InputError`."""
        (res,) = self.open_sessions([supports], [num_queries], [features])
        if isinstance(res, InputError):
            raise res
        return res

    def _prime(self, requests: Sequence[Sequence[Support]], labels: Sequence[list[int]],
               features: Sequence[dict[str, Any] | None]) -> list[dict[int, Entry]]:
        """Conditioning entries (frame index -> entry) of each request, all batched."""
        ops, S, lo = self.ops, self.meta.image_size, self.meta.low_res
        images: list[np.ndarray] = []
        given: list[dict[str, Any]] = []
        for supports, feats in zip(requests, features):
            if feats is None:
                images += [img for img, _ in supports]
        encoded = self.encode(images) if images else None
        img_row = base = 0
        rows: list[int] = []  # per (request, support, label): its support's feature row
        masks: list[np.ndarray] = []
        spans: list[list[tuple[int, int]]] = []  # per request, per support: (row0, K)
        for supports, labs, feats in zip(requests, labels, features):
            if feats is None:
                assert encoded is not None
                src = {k: v[img_row:img_row + len(supports)] for k, v in encoded.items()}
                img_row += len(supports)
            else:
                src = feats
            spans.append([])
            for i, (_, mask) in enumerate(supports):
                spans[-1].append((len(masks), len(labs)))
                masks += [mask == lab for lab in labs]
                rows += [base + i] * len(labs)
            base += len(supports)
            given.append(src)
        # One decoder row per (request, support, label): gather its support's features.
        feats_all = {k: ops.concat([g[k] for g in given]) for k in given[0]}
        idx = np.asarray(rows, np.int64)
        rep = {k: ops.take(v, idx) for k, v in feats_all.items()}
        mask_s, low = ops.support_masks(masks, S, lo)
        dec = self.backend.run("mask_decoder", self.decoder_feeds(
            rep["feat_top"], rep["feat_s0"], rep["feat_s1"], support=mask_s))
        mem_in = {"feat_top": rep["feat_top"], "mask_logits": low,
                  "object_score_logits": dec["object_score_logits"]}
        if self.traits.support_memory_from_mask:  # the given mask itself, thresholded
            mem_in["mask_logits"] = mask_s * 20.0 - 10.0
        if self.binarize_input:
            mem_in["binarize"] = ops.full((len(masks), 1),
                                          float(self.traits.support_memory_from_mask))
        mem = self.backend.run("memory_encoder", mem_in)["maskmem_features"]
        out = []
        for per_support in spans:
            cond = {}
            for i, (r0, K) in enumerate(per_support):
                sl = np.arange(r0, r0 + K)
                cond[i] = Entry(ops.store_memory(ops.take(mem, sl)),
                                ops.take(dec["obj_ptr"], sl))
            out.append(cond)
        return out

    # ----------------------------------------------------------------- steps
    def _select(self, frame: Frame) -> Selection:
        s = frame.session
        if frame.independent:
            idx = s.num_supports
            bank = MemoryBank(s.bank.num_maskmem, s.bank.max_obj_ptrs, cond=s.bank.cond)
            return select_memories(bank, idx, idx + 1, max_cond=self.max_cond_frames,
                                   stride=self.memory_stride)
        return select_memories(s.bank, s.next_frame, s.num_frames,
                               max_cond=self.max_cond_frames, stride=self.memory_stride)

    def _attention_step(self, rows: int, num_mem: int, num_ptr: int) -> int:
        """Objects per memory-attention call (0: all in one call): within the backend's
        score budget ``attention_bytes``, and one per call where one object's scores
        alone exceed ``attention_object_bytes``; calls of equal size."""
        f2 = (self.meta.image_size // 16) ** 2  # queries
        tokens = (num_mem * self.meta.memory_tokens
                  + num_ptr * (self.meta.hidden_dim // self.meta.mem_dim))
        per_object = 4 * f2 * tokens
        alone = self.attention_object_bytes
        if alone and per_object > alone:
            return 1
        if self.attention_bytes <= 0 or per_object * rows <= self.attention_bytes:
            return 0
        calls = -(-per_object * rows // self.attention_bytes)
        return -(-rows // calls)

    def execute(self, plan: StepPlan) -> StepOutput:
        """Run the components over ``plan``'s frames. Reads the sessions' banks and
        touches no session state and no frame: everything the step makes (encoder
        outputs, the new memories, the results) comes back in the :class:`StepOutput`,
        so an exception here leaves every session as it was before the step."""
        frames = plan.frames
        if not frames:
            return StepOutput([], {}, [])
        seen: set[int] = set()
        for f in frames:
            if not f.independent:
                if id(f.session) in seen:
                    raise ValueError("a step takes at most one sequential frame per session")
                seen.add(id(f.session))
        t0 = time.perf_counter()
        ops, C = self.ops, self.meta.hidden_dim
        features: dict[int, dict[str, Any]] = {}  # id(frame) -> this step's encoder outputs
        encode_seconds: dict[int, float] = {}
        to_encode = [f for f in (*frames, *plan.prefetch) if f.features is None]
        if to_encode:
            feats = self.encode([f.image for f in to_encode])
            share = (time.perf_counter() - t0) / len(to_encode)
            for j, f in enumerate(to_encode):
                features[id(f)] = {k: v[j:j + 1] for k, v in feats.items()}
                encode_seconds[id(f)] = share

        def feats_of(f: Frame) -> dict[str, Any]:
            return f.features if f.features is not None else features[id(f)]

        t1 = time.perf_counter()
        # Group frames by memory layout; the rest of the step runs in group order.
        sels = [self._select(f) for f in frames]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, sel in enumerate(sels):
            groups.setdefault((len(sel.memories), len(sel.pointers)), []).append(i)
        order = [i for members in groups.values() for i in members]
        ks = [frames[i].session.num_objects for i in order]
        starts = np.concatenate([[0], np.cumsum(ks)]).astype(np.int64)
        frame_rows = np.repeat(np.arange(len(order)), ks)
        feats_all = {k: ops.concat([feats_of(frames[i])[k] for i in order])
                     for k in ("feat_s0", "feat_s1", "feat_top")}
        top = ops.take(feats_all["feat_top"], frame_rows)
        conditioned = []
        pos = 0
        for (F, P), members in groups.items():
            n_rows = sum(frames[i].session.num_objects for i in members)
            r0, r1 = int(starts[pos]), int(starts[pos + len(members)])
            pos += len(members)
            mem_tpos = np.concatenate([np.tile(np.asarray([t for t, _ in sels[i].memories],
                                                          np.int64),
                                               (frames[i].session.num_objects, 1))
                                       for i in members])
            ptr_tpos = np.concatenate([np.tile(np.asarray([d for d, _ in sels[i].pointers],
                                                          np.float32).reshape(1, P),
                                               (frames[i].session.num_objects, 1))
                                       for i in members])
            feeds = {
                "feat_top": top[r0:r1],
                "memory": ops.gather_memories([[m for _, m in sels[i].memories]
                                               for i in members]),
                "memory_tpos": ops.asarray(mem_tpos),
                "obj_ptrs": ops.gather_pointers([[p for _, p in sels[i].pointers]
                                                 for i in members], n_rows, C),
                "obj_ptr_tpos": ops.asarray(ptr_tpos),
            }
            conditioned.append(self._run("memory_attention", feeds,
                                         self._attention_step(n_rows, F, P))["conditioned"])
        cond = ops.concat(conditioned)
        dec = self.backend.run("mask_decoder", self.decoder_feeds(
            cond, ops.take(feats_all["feat_s0"], frame_rows),
            ops.take(feats_all["feat_s1"], frame_rows)))
        memories: list[tuple[Frame, Entry]] = []
        seq = [j for j, i in enumerate(order) if not frames[i].independent]
        if seq:
            if len(seq) == len(order):
                mem_in = {"feat_top": top, "mask_logits": dec["mask_logits"],
                          "object_score_logits": dec["object_score_logits"]}
            else:
                sub = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in seq])
                mem_in = {"feat_top": ops.take(top, sub),
                          "mask_logits": ops.take(dec["mask_logits"], sub),
                          "object_score_logits": ops.take(dec["object_score_logits"], sub)}
            if self.binarize_input:
                mem_in["binarize"] = ops.full((int(mem_in["feat_top"].shape[0]), 1), 0.0)
            mem = self.backend.run("memory_encoder", mem_in)["maskmem_features"]
            r = 0
            for j in seq:
                f = frames[order[j]]
                K = f.session.num_objects
                rows = np.arange(int(starts[j]), int(starts[j]) + K)
                memories.append((f, Entry(ops.store_memory(mem[r:r + K]),
                                          ops.take(dec["obj_ptr"], rows))))
                r += K
        low = dec["mask_logits"][:, 0]
        masks = ops.to_masks(low, [frames[i].session.labels for i in order],
                             [frames[i].size for i in order])
        scores = ops.to_host(dec["object_score_logits"])[:, 0]
        ious = ops.to_host(dec["iou"])[:, 0]
        shared = (time.perf_counter() - t1) / len(frames)
        results: list[FrameResult | None] = [None] * len(frames)
        for j, i in enumerate(order):
            f = frames[i]
            a, b = int(starts[j]), int(starts[j + 1])
            results[i] = FrameResult(labels=list(f.session.labels), mask=masks[j],
                                     object_scores=scores[a:b].copy(),
                                     ious=ious[a:b].copy(),
                                     seconds=encode_seconds.get(id(f), f.encode_seconds)
                                     + shared,
                                     low_res=low[a:b], ops=ops,
                                     features=feats_of(f) if f.keep_features else None)
        return StepOutput(results, {k: (features[k], encode_seconds[k]) for k in features},
                          memories)

    def commit(self, plan: StepPlan, out: StepOutput) -> list[FrameResult]:
        """Advance the sessions by a step :meth:`execute` ran: each sequential frame's
        memory into its bank and its session's next frame, the use counts and clocks;
        the prefetched frames keep their encoder outputs for their own step. Cannot
        fail half-way (no model runs here). Results in ``plan.frames`` order."""
        for f, entry in out.memories:
            s = f.session
            s.bank.add_recent(s.next_frame, entry)
            s.next_frame += 1
        now = time.monotonic()
        for f in plan.frames:
            f.session.frames_seen += 1
            f.session.last_used = now
            f.features = None
        for f in plan.prefetch:
            got = out.features.get(id(f))
            if got is not None and f.features is None:
                f.features, f.encode_seconds = got
        return list(out.results)


