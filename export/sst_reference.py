"""SST run by sam2's own ``SAM2VideoPredictor``: the end-to-end parity reference.

This is how the original SST drives SAM 2: frames written as a JPEG folder, the support
mask(s) added with ``add_new_mask`` per label, then ``propagate_in_video``. It keeps every
frame's state (sam2's predictor grows without bound), and it sizes every output like
the first frame. Used by tests and benchmarks, never for serving.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["write_jpeg_video", "run_reference_sst"]


def write_jpeg_video(images: Sequence[np.ndarray], folder: Path, quality: int = 95) -> list[Path]:
    """Write ``images`` as ``00000.jpg ...`` (sam2's frame folder format)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=quality)
        paths.append(p)
    return paths


def run_reference_sst(predictor: Any, frames_dir: Path, support_masks: Sequence[np.ndarray],
                      labels: Sequence[int]) -> dict[str, Any]:
    """Run SST with sam2's predictor over the JPEG folder ``frames_dir``.

    Frames ``0..len(support_masks)-1`` are supports; every label gets a mask on every
    support (empty where absent). Returns per-frame logits ``{frame: [K,H,W]}`` at the
    video resolution (the first frame's size) and per-frame seconds.
    """
    logits: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    with torch.inference_mode():
        state = predictor.init_state(video_path=str(frames_dir))
        for i, mask in enumerate(support_masks):
            for lab in labels:
                predictor.add_new_mask(state, frame_idx=i, obj_id=int(lab), mask=(mask == lab))
        t = time.perf_counter()
        for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
            assert list(obj_ids) == [int(v) for v in labels]
            logits[frame_idx] = masks[:, 0].float().cpu().numpy().copy()
            now = time.perf_counter()
            seconds[frame_idx] = now - t
            t = now
    return {"logits": logits, "seconds": seconds, "state": state}


def reference_from_images(predictor: Any, supports: Sequence[tuple[np.ndarray, np.ndarray]],
                          queries: Sequence[np.ndarray], labels: Sequence[int],
                          workdir: Path | None = None) -> tuple[list[Path], dict[str, Any]]:
    """Write supports + queries as a JPEG video and run :func:`run_reference_sst`.

    Returns the frame paths (decode them to feed the same pixels to our tracker)."""
    root = Path(workdir or tempfile.mkdtemp(prefix="sst-ref-"))
    paths = write_jpeg_video([s for s, _ in supports] + list(queries), root)
    return paths, run_reference_sst(predictor, root, [m for _, m in supports], labels)
