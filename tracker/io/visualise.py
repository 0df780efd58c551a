"""Label colours and overlays for looking at masks."""

from __future__ import annotations

import numpy as np

from sst.tracker.errors import InputError
from sst.tracker.io.images import as_label_array, as_uint8_picture

_GOLDEN = 0.6180339887498949


def label_palette(n: int = 256) -> np.ndarray:
    """Deterministic colours for label values ``0..n-1``.

    Entry 0 (background) is black; entry ``k`` walks the hue circle by the golden
    ratio, alternating saturation and brightness, so neighbouring labels contrast.

    Returns:
        ``uint8`` array ``[n, 3]`` (RGB).
    """
    if n < 1:
        raise InputError("label_palette", f"expected n >= 1, got {n}")
    k = np.arange(n, dtype=np.float64)
    hue = (0.05 + k * _GOLDEN) % 1.0
    sat = np.where(np.arange(n) % 2 == 0, 0.95, 0.7)
    val = np.where((np.arange(n) // 2) % 2 == 0, 1.0, 0.82)
    # vectorised colorsys.hsv_to_rgb
    sector = np.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    idx = sector.astype(np.int64) % 6
    choices = np.stack(
        [
            np.stack([val, t, p], axis=1),
            np.stack([q, val, p], axis=1),
            np.stack([p, val, t], axis=1),
            np.stack([p, q, val], axis=1),
            np.stack([t, p, val], axis=1),
            np.stack([val, p, q], axis=1),
        ]
    )
    rgb = choices[idx, np.arange(n)]
    palette = np.round(rgb * 255.0).astype(np.uint8)
    palette[0] = 0
    return palette


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour the labelled pixels of an image.

    Args:
        image: ``uint8`` ``[H, W, 3]`` RGB (``[H, W]`` grey and ``[H, W, 4]`` RGBA
            are accepted; alpha is dropped).
        labels: integer ``[H, W]`` label map, 0 = background.
        alpha: weight of the label colour in the blend, 0..1.

    Returns:
        ``uint8`` ``[H, W, 3]``: background pixels unchanged, labelled pixels blended
        with ``label_palette()[label]``, and the 1-pixel inner boundary of every
        label region (where a 4-neighbour has another value) in full label colour.
    """
    rgb = as_uint8_picture(image, "overlay image", (3, 4))
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    rgb = rgb[:, :, :3]
    lab = as_label_array(labels, "overlay labels")
    if lab.shape != rgb.shape[:2]:
        raise InputError(
            "overlay labels", f"expected shape {rgb.shape[:2]} (the image's), got {lab.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InputError("alpha", f"expected a value in 0..1, got {alpha}")
    out = rgb.copy()
    labelled = lab != 0
    if not labelled.any():
        return out
    palette = label_palette(max(256, int(lab.max()) + 1))
    colours = palette[lab]
    blend = rgb.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
    out[labelled] = np.clip(np.round(blend[labelled]), 0, 255).astype(np.uint8)
    padded = np.pad(lab, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    boundary = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    ) & labelled
    out[boundary] = colours[boundary]
    return out
