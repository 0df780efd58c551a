"""The measurements of the GPU harness: parity, precision, and timed runs of sam2's predictor
and of the engine, each from decoded frames in memory to label masks on the host.

Timing rules shared by both sides (so that their ratio is fair):

* the clock runs from decoded ``uint8`` pixels in memory (sam2: its loader's resize and
  normalisation, done here from memory rather than from JPEG files; the engine: its own
  preprocessing) to masks on the host;
* the support frame is not timed (sam2: ``init_state``'s encoding of frame 0 and the
  support's output; the engine: opening the sessions);
* one query frame is stepped untimed first (allocations, kernel selection), then
  ``len(queries)`` query frames are timed;
* device memory is read against the resident baseline taken before the run's own state
  exists (every resident model's weights), as the peak above it, allocated and reserved;
  the caches are not emptied before timing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from PIL import Image

from sst.benchmarks.common import synthetic_frame
from sst.tracker.engine import Engine, Frame
from sst.tracker.scheduler import Scheduler, run_step
from sst.tracker.tracker import Tracker

__all__ = ["PARITY_ATOL", "make_frames", "parity", "precision", "time_engine",
           "time_independent", "time_predictor", "mask_ious"]

#: The engine must match sam2 on the same device within this (FP32).
PARITY_ATOL = 1e-3
#: sam2's loader normalisation (``sam2.utils.misc.load_video_frames``' defaults).
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_AUTOCAST = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceMemory:
    """Peak device memory of one run above the resident baseline at its start (CUDA)."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch, self.device = torch, device
        self.on = device.type == "cuda"
        if self.on:
            sync(torch, device)
            self.base_alloc = torch.cuda.memory_allocated(device)
            self.base_reserved = torch.cuda.memory_reserved(device)

    def start(self) -> None:
        """Start the peak window (after the warm-up; no cache emptied)."""
        if self.on:
            sync(self.torch, self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def report(self) -> dict[str, float | None]:
        if not self.on:
            return {"resident_mib": None, "peak_allocated_above_resident_mib": None,
                    "peak_reserved_above_resident_mib": None}
        cuda, mib = self.torch.cuda, 2.0**20
        return {"resident_mib": self.base_alloc / mib,
                "peak_allocated_above_resident_mib":
                    (cuda.max_memory_allocated(self.device) - self.base_alloc) / mib,
                "peak_reserved_above_resident_mib":
                    (cuda.max_memory_reserved(self.device) - self.base_reserved) / mib}


def stats(seconds: Sequence[float]) -> dict[str, float]:
    s = np.asarray(seconds, np.float64)
    return {"p50_ms": float(np.percentile(s, 50) * 1e3),
            "p90_ms": float(np.percentile(s, 90) * 1e3),
            "mean_ms": float(s.mean() * 1e3), "steps": int(s.size)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mask_ious(runs: Sequence[Sequence[np.ndarray]], base: Sequence[Sequence[np.ndarray]]
              ) -> dict[str, float]:
    """Median and worst IoU of boolean masks, frame by frame and label by label."""
    ious = [iou(a, b) for ra, rb in zip(runs, base) for a, b in zip(ra, rb)]
    return {"median_mask_iou": float(np.median(ious)), "worst_mask_iou": float(min(ious)),
            "masks": len(ious)}


def make_frames(n: int, labels: int, size: tuple[int, int]
                ) -> tuple[tuple[np.ndarray, np.ndarray], list[np.ndarray]]:
    """A support (image, label mask) and ``n`` drifting queries."""
    labs = tuple(range(1, labels + 1))
    support = synthetic_frame(0, size=size, labels=labs)
    queries = [synthetic_frame(100 + i, size=size, shift=0.02 * ((i % 7) - 3), labels=labs)[0]
               for i in range(n)]
    return support, queries


def parity(predictor: Any, backend: Any, support: tuple[np.ndarray, np.ndarray],
           queries: list[np.ndarray], labels: list[int]) -> dict[str, Any]:
    """sam2's predictor (its own JPEG loader) and the engine (FP32) on the same frames."""
    from sst.export.sst_reference import reference_from_images

    with tempfile.TemporaryDirectory(prefix="sst-gpu-") as tmp:
        paths, ref = reference_from_images(predictor, [support], queries, labels, Path(tmp))
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    ours = Tracker(backend).segment([(frames[0], support[1])], frames[1:])
    diffs, ious = [], []
    for i, res in enumerate(ours):
        want = ref["logits"][i + 1]
        diffs.append(float(np.abs(res.logits - want).max()))
        ious += [iou(res.logits[k] > 0, want[k] > 0) for k in range(len(labels))]
    return {"max_abs_logit_diff": max(diffs), "per_frame_max_abs_logit_diff": diffs,
            "min_mask_iou": min(ious), "tolerance": PARITY_ATOL,
            "passed": max(diffs) <= PARITY_ATOL}


def precision(backends: dict[str, Any], support: tuple[np.ndarray, np.ndarray],
              queries: list[np.ndarray]) -> tuple[dict[str, Any], dict[str, float]]:
    """FP16/BF16 engines against the FP32 engine (sequential mode); also each precision's
    seconds per frame there (the budget's first estimate)."""
    runs, per_frame = {}, {}
    for p, b in backends.items():
        t = time.perf_counter()
        runs[p] = Tracker(b).segment([support], queries)
        per_frame[p] = (time.perf_counter() - t) / max(1, len(queries))
    base = runs.pop("fp32")
    out: dict[str, Any] = {}
    for p, res in runs.items():
        diffs = [float(np.abs(r.logits - b.logits).max()) for r, b in zip(res, base)]
        out[p] = {**mask_ious([[lk > 0 for lk in r.logits] for r in res],
                              [[lk > 0 for lk in b.logits] for b in base]),
                  "max_abs_logit_diff": max(diffs),
                  "median_max_abs_logit_diff": float(np.median(diffs))}
    return out, per_frame


def _loader(torch: Any, frames: Sequence[np.ndarray], size: int, device: Any,
            timed: dict[str, float]) -> Any:
    """A stand-in for sam2's ``load_video_frames`` over decoded frames in memory: the same
    Pillow resize, scaling and normalisation as its JPEG loader. The query frames'
    share is timed into ``timed["queries_s"]``."""
    mean = torch.tensor(_MEAN, dtype=torch.float32)[:, None, None].to(device)
    std = torch.tensor(_STD, dtype=torch.float32)[:, None, None].to(device)

    def one(img: np.ndarray) -> Any:
        resized = np.array(Image.fromarray(img).resize((size, size)))
        x = torch.from_numpy(resized).permute(2, 0, 1).to(device).float() / 255.0
        return (x - mean) / std

    def load(**_: Any) -> tuple[Any, int, int]:
        first = one(frames[0])
        sync(torch, device)
        t = time.perf_counter()
        rest = [one(f) for f in frames[1:]]
        sync(torch, device)
        timed["queries_s"] = time.perf_counter() - t
        h, w = frames[0].shape[:2]
        return torch.stack([first, *rest]), h, w

    return load


def time_predictor(predictor: Any, support: tuple[np.ndarray, np.ndarray],
                   queries: list[np.ndarray], labels: list[int], device: Any,
                   precision: str = "fp32") -> tuple[dict[str, Any], list[list[np.ndarray]]]:
    """sam2's ``propagate_in_video`` over ``[support, warm-up, *queries]`` from frames in
    memory, under autocast for ``bf16``/``fp16``; masks brought to the host. Returns the
    figures and the timed frames' boolean masks (per frame, per label)."""
    import sam2.sam2_video_predictor as vp
    import torch

    frames = [support[0], queries[0], *queries]  # queries[0] twice: the untimed warm-up
    timed: dict[str, float] = {}
    dtype = _AUTOCAST[precision]
    cast = (torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype
            else nullcontext())
    memory = DeviceMemory(torch, device)
    steps, masks_out = [], []
    with torch.inference_mode(), cast, mock.patch.object(
            vp, "load_video_frames", _loader(torch, frames, predictor.image_size, device, timed)):
        state = predictor.init_state(video_path="<frames in memory>")
        for lab in labels:
            predictor.add_new_mask(state, frame_idx=0, obj_id=lab, mask=support[1] == lab)
        it = iter(predictor.propagate_in_video(state))
        next(it)  # the support's own output
        next(it)[2].cpu()  # the warm-up frame
        memory.start()
        sync(torch, device)
        t0 = t = time.perf_counter()
        for _, _, masks in it:
            masks_out.append(list((masks[:, 0] > 0).cpu().numpy()))
            now = time.perf_counter()
            steps.append(now - t)
            t = now
        wall = time.perf_counter() - t0
    # the loader preprocessed every query up front: add each timed frame's share
    share = timed["queries_s"] / (len(queries) + 1)
    steps = [s + share for s in steps]
    total = wall + share * len(queries)
    return ({**stats(steps), "frames": len(queries), "frames_per_s": len(queries) / total,
             "preprocess_ms_per_frame": share * 1e3, **memory.report()}, masks_out)


def time_engine(backend: Any, support: tuple[np.ndarray, np.ndarray],
                queries: list[np.ndarray], sessions: int, device: Any) -> dict[str, Any]:
    """``sessions`` sequential sessions stepping together: one untimed warm-up step at that
    session count, then one timed step per query."""
    import torch

    memory = DeviceMemory(torch, device)
    engine = Engine(backend)
    live = engine.open_sessions([[support]] * sessions)
    sched = Scheduler(engine)

    def step(q: np.ndarray) -> None:
        for s in live:
            sched.submit(Frame(s, q))
        n = len(sched.step())
        if n != sessions:
            raise RuntimeError(f"a step returned {n} results for {sessions} sessions")

    step(queries[0])  # warm-up at the target session count, untimed
    memory.start()
    steps = []
    t0 = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        step(q)
        steps.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"sessions": sessions, **stats(steps), "frames": sessions * len(queries),
            "frames_per_s": sessions * len(queries) / wall,
            "p50_ms_per_frame": float(np.percentile(steps, 50) * 1e3 / sessions),
            **memory.report()}


def time_independent(backend: Any, support: tuple[np.ndarray, np.ndarray],
                     queries: list[np.ndarray], batch: int, device: Any) -> dict[str, Any]:
    """Independent-mode frames of one session, ``batch`` per step (best of 3, after an
    untimed step of the same batch)."""
    import torch

    memory = DeviceMemory(torch, device)
    engine = Engine(backend)
    session = engine.open_session([support])
    frames = (queries * (batch // len(queries) + 1))[:batch]

    def step() -> None:
        run_step(engine, [Frame(session, q, independent=True) for q in frames])

    step()
    memory.start()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"batch": batch, "step_ms": best * 1e3, "frames_per_s": batch / best,
            **memory.report()}
