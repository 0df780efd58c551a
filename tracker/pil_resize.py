"""Pillow's 8-bit image resize as two matrix products, so that it can run on any device.

sam2's video loader resizes frames with ``PIL.Image.resize`` (bicubic, Pillow's default
for RGB images). Pillow resamples 8-bit images in fixed point: per axis it computes the
filter taps in double precision, normalises them, rounds them to integers with 22
fractional bits, and then for each output pixel adds ``2^21`` (rounding) to the integer
sum of taps x pixels, shifts right by 22 and clips to 0..255. It resizes horizontally
first, into an 8-bit image, then vertically.

:func:`pil_weights` builds those integer taps as a dense ``[out, in]`` matrix;
:func:`resize_uint8` applies the two passes to ``float64`` tensors, where every sum is
an exact integer (|sum| < 2^31), so the result is bit-identical to Pillow's (tested
against ``PIL.Image.resize``). The taps are built and copied to a device once per
``(in, out, device, dtype)`` (:func:`device_weights`): after the first frame of a size,
a resize copies nothing from the host.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["device_weights", "pil_weights", "resize_uint8", "PRECISION_BITS"]

#: Fractional bits of Pillow's 8-bit resampling coefficients (32 - 8 - 2).
PRECISION_BITS = 22


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _trunc(v: float) -> int:
    """C's ``(int)`` cast: towards zero."""
    return int(math.trunc(v))


@lru_cache(maxsize=64)
def pil_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` int64 fixed-point taps of Pillow's bicubic resize of one axis."""
    support_base = 2.0
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = support_base * filterscale
    w = np.zeros((n_out, n_in), np.int64)
    unit = float(1 << PRECISION_BITS)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(_trunc(center - support + 0.5), 0)
        xmax = min(_trunc(center + support + 0.5), n_in) - xmin
        taps = [_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(taps)
        for x, t in enumerate(taps):
            k = t / total if total != 0.0 else t
            w[xx, xmin + x] = _trunc(k * unit + (0.5 if k >= 0 else -0.5))
    return w


@lru_cache(maxsize=64)
def device_weights(n_in: int, n_out: int, device: torch.device,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """:func:`pil_weights` as a ``dtype`` tensor on ``device``, built and copied there once
    per ``(n_in, n_out, device, dtype)`` (``cache_info().misses`` counts the copies)."""
    return torch.from_numpy(pil_weights(n_in, n_out).astype(np.float64)).to(device, dtype)


def resize_uint8(image: Any, size: tuple[int, int]) -> Any:
    """``[H,W,C]`` uint8 torch tensor (any device) -> ``[h,w,C]`` uint8, as
    ``PIL.Image.fromarray(image).resize((w, h))`` computes it."""
    H, W = int(image.shape[0]), int(image.shape[1])
    h, w = size
    dev = image.device
    half = float(1 << (PRECISION_BITS - 1))
    unit = float(1 << PRECISION_BITS)

    def rounded(acc: Any) -> Any:
        return torch.clamp(torch.floor((acc + half) / unit), 0, 255)

    x = image.to(torch.float64)
    if w != W:  # horizontal pass: [H,W,C] -> [H,w,C]
        wx = device_weights(W, w, dev)
        x = rounded(torch.einsum("ow,hwc->hoc", wx, x))
    if h != H:  # vertical pass: [H,w,C] -> [h,w,C]
        wy = device_weights(H, h, dev)
        x = rounded(torch.einsum("oh,hwc->owc", wy, x))
    return x.to(torch.uint8)
