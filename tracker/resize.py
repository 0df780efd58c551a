"""Image and mask resampling that reproduces sam2's (PyTorch's) exactly, in numpy.

Every resize here is separable and linear, so it is a pair of weight matrices:
``out = Wy @ x @ Wx.T``. The weights follow ``torch.nn.functional.interpolate`` with
``mode="bilinear", align_corners=False``, with or without ``antialias`` (which sam2 uses
when it shrinks masks). Tests check them against PyTorch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["bilinear_weights", "resize_bilinear", "preprocess_image", "IMAGE_MEAN", "IMAGE_STD",
           "mask_to_model", "mask_to_low_res_logits", "NORMALISE"]

IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@lru_cache(maxsize=64)
def bilinear_weights(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """``[n_out, n_in]`` float32 weights of a 1-D bilinear resize (half-pixel centres)."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in), dtype=np.float64)
    if antialias and scale > 1.0:
        # Triangle filter stretched by the scale; taps renormalised at the borders.
        support = scale
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            taps = np.arange(lo, hi)
            vals = np.clip(1.0 - np.abs((taps - center + 0.5) / scale), 0.0, None)
            total = vals.sum()
            if total > 0:
                w[i, lo:hi] = vals / total
        return w.astype(np.float32)
    for i in range(n_out):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        w[i, i0] += 1.0 - lam
        w[i, i1] += lam
    return w.astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """Resize the last two axes of ``x [..., H, W]`` to ``size = (h, w)`` (float32)."""
    h_in, w_in = x.shape[-2:]
    h, w = size
    wy = bilinear_weights(h_in, h, antialias)
    wx = bilinear_weights(w_in, w, antialias)
    x = np.asarray(x, dtype=np.float32)
    return np.matmul(np.matmul(wy, x), wx.T)


def _normalise_table() -> np.ndarray:
    """``[3,256]`` float32: the normalised value of every byte per channel, computed as
    sam2's loader computes it (``v / 255`` in float64, cast to float32, then
    ``(x - mean) / std`` in float32), so that a lookup is bit-identical to it."""
    x = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
    return ((x[None, :] - IMAGE_MEAN[:, None]) / IMAGE_STD[:, None]).astype(np.float32)


NORMALISE = _normalise_table()


def preprocess_image(rgb: np.ndarray, image_size: int, resample: str = "bicubic"
                     ) -> np.ndarray:
    """``rgb [H,W,3] uint8`` -> ``[3,S,S] float32`` exactly as sam2's video frame loader:
    PIL resize to SxS (its default filter, bicubic; ``resample`` names another), /255,
    ImageNet mean/std (one table lookup per byte, see :data:`NORMALISE`)."""
    filt = getattr(Image.Resampling, resample.upper())
    img = np.asarray(Image.fromarray(rgb).resize((image_size, image_size), filt))
    return np.stack([NORMALISE[c][img[..., c]] for c in range(3)])


def mask_to_model(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Binary ``[H,W]`` -> binary ``[S,S]`` float32 as ``SAM2VideoPredictor.add_new_mask``:
    antialiased bilinear resize, then ``>= 0.5``."""
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != (image_size, image_size):
        m = resize_bilinear(m, (image_size, image_size), antialias=True)
        m = (m >= 0.5).astype(np.float32)
    return m


def mask_to_low_res_logits(mask_s: np.ndarray, low_res: int) -> np.ndarray:
    """sam2's ``_use_mask_as_output`` logits: ``mask*20-10`` shrunk (antialiased) to the
    decoder's low resolution. ``mask_s [..., S, S]`` -> ``[..., low_res, low_res]``."""
    return resize_bilinear(mask_s * 20.0 - 10.0, (low_res, low_res), antialias=True)
