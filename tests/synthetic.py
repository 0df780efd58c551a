"""Synthetic specimen-like frames: textured background, an elliptical body with parts."""

from __future__ import annotations

import numpy as np


def specimen(seed: int, size: tuple[int, int] = (240, 320), shift: float = 0.0,
             labels: tuple[int, ...] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb [H,W,3] uint8, label mask [H,W] uint8)``: head/pronotum/elytra-like parts
    stacked along the body axis; ``shift`` moves the body (fraction of the width)."""
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = rng.integers(60, 200, 3).astype(np.float32)
    img = base + rng.normal(0, 12, (H, W, 3)).astype(np.float32)
    img += 30 * np.sin(xx[..., None] / (7 + seed % 5)) * np.array([1, 0.5, 0.2], np.float32)
    cx, cy = W * (0.5 + shift), H * 0.5
    mask = np.zeros((H, W), np.uint8)
    n = len(labels)
    for k, lab in enumerate(labels):
        oy = (k - (n - 1) / 2) * H * 0.22
        ry, rx = H * (0.09 + 0.03 * k), W * (0.12 + 0.02 * k)
        inside = ((yy - cy - oy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        mask[inside] = lab
        color = np.array([40 + 60 * k, 200 - 50 * k, 90 + 40 * (k % 2)], np.float32)
        img[inside] = 0.3 * img[inside] + 0.7 * color
    return np.clip(img, 0, 255).astype(np.uint8), mask
