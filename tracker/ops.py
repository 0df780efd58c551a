"""Array operations on a backend's device: the engine's only way to touch tensors.

The engine (:mod:`sst.tracker.engine`) keeps sessions, selects memories and schedules
steps; every tensor it handles (features, memories, pointers, logits) is an array of the
backend's own kind, and stays where the backend keeps it. The engine works on them only
through an :class:`ArrayOps`:

* :class:`NumpyOps`: numpy arrays in host memory (ONNX Runtime on the CPU). Pre- and
  postprocessing reproduce sam2's exactly (PIL resize, PyTorch's bilinear weights).
* ``TorchOps`` (:mod:`sst.tracker.torch_ops`): torch tensors on any device; on a GPU the
  memory bank, preprocessing and postprocessing live there.

Per frame, only the image (``uint8 [H,W,3]``) crosses into the device and only the label
mask (``uint8 [H,W]``) and per-object scores cross back (:meth:`ArrayOps.to_host`).
``bytes_in``/``bytes_out`` count exactly those crossings.

Memories are stored in bfloat16 as sam2 stores them (``bf16_memories=True``), or in
float32 for comparisons whose batch shapes differ (bf16 rounding can amplify last-bit
differences between batch shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from sst.tracker.bank import from_bf16, to_bf16
from sst.tracker.resize import (
    bilinear_weights,
    mask_to_low_res_logits,
    mask_to_model,
    preprocess_image,
    resize_bilinear,
)

__all__ = ["ArrayOps", "NumpyOps", "SAFE_LOGIT", "labels_from_logits", "streamed_labels"]

Array = Any


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


#: Finite low-res logits under this magnitude cannot upsample to a NaN or an overflow
#: (the weights of a bilinear row are non-negative and sum to 1), so mask making may skip
#: the NaN rule of ``argmax`` for them.
SAFE_LOGIT = 1e37


def streamed_labels(low: np.ndarray, labels: Sequence[int], size: tuple[int, int]
                    ) -> np.ndarray:
    """``[K,lo,lo]`` low-res logits -> ``[H,W]`` label map at ``size``, equal to
    ``labels_from_logits(resize_bilinear(low, size), labels)`` without the ``[K,H,W]``
    stack: one label's logits are upsampled at a time into one full-size plane and folded
    into a running maximum and the index that holds it (the first of equal maxima, as
    ``argmax``). Memory is about two float32 planes and three byte planes at ``size``,
    whatever ``K`` is."""
    dtype = np.uint8 if max(labels, default=0) <= 255 else np.uint16
    k = int(low.shape[0])
    if k == 0:
        return np.zeros(size, dtype)
    h, w = size
    wy = bilinear_weights(int(low.shape[-2]), h)
    wx_t = bilinear_weights(int(low.shape[-1]), w).T
    low = np.asarray(low, dtype=np.float32)
    # A NaN (or an overflow) in the upsampled logits wins argmax: keep that rule only
    # when the low-res logits could make one.
    exact_nan = not (np.isfinite(low).all() and float(np.abs(low).max()) < SAFE_LOGIT)
    best = np.matmul(np.matmul(wy, low[0]), wx_t)
    index = np.zeros(size, np.uint8 if k <= 256 else np.uint16)
    plane = np.empty_like(best)
    wins = np.empty(size, np.bool_)
    for j in range(1, k):
        np.matmul(np.matmul(wy, low[j]), wx_t, out=plane)
        np.greater(plane, best, out=wins)
        if exact_nan:
            wins |= np.isnan(plane) & ~np.isnan(best)
            np.copyto(best, plane, where=wins)
        else:
            np.maximum(best, plane, out=best)
        np.putmask(index, wins, j)
    del plane, wins
    out = np.asarray(labels, dtype=dtype)[index]
    del index
    out[best <= 0] = 0
    return out


class ArrayOps(Protocol):
    """What the engine needs from a device. Shapes: ``S`` model image size, ``lo`` the
    decoder's low resolution, ``K`` objects, ``M`` memory channels, ``f`` feature size."""

    bf16_memories: bool
    bytes_in: int
    bytes_out: int

    def preprocess(self, images: Sequence[np.ndarray], size: int,
                   resample: str = "bicubic") -> Array:
        """RGB ``uint8 [H,W,3]`` images (each its own size) -> ``float32 [B,3,S,S]``,
        resized with PIL's filter ``resample`` (the model family's)."""
        ...

    def support_masks(self, masks: Sequence[np.ndarray], size: int, low_res: int
                      ) -> tuple[Array, Array]:
        """Binary ``[H,W]`` masks -> (``[N,1,S,S]`` model masks, ``[N,1,lo,lo]`` low-res
        logits ``mask*20-10``), as sam2's ``add_new_mask`` and ``_use_mask_as_output``."""
        ...

    def asarray(self, host: np.ndarray) -> Array:
        """A small host array (time positions, flags) on the device."""
        ...

    def full(self, shape: tuple[int, ...], value: float) -> Array:
        """A float32 array of ``shape`` filled with ``value``."""
        ...

    def take(self, x: Array, rows: np.ndarray) -> Array:
        """``x[rows]`` along the first axis (``rows`` int64 on the host)."""
        ...

    def concat(self, xs: Sequence[Array]) -> Array:
        """Concatenation along the first axis."""
        ...

    def store_memory(self, x: Array) -> Array:
        """``float32 [K,M,f,f]`` memory features -> what the bank keeps."""
        ...

    def gather_memories(self, per_item: Sequence[Sequence[Array]]) -> Array:
        """Stored memories, ``F`` per item (each ``[K_i,M,f,f]``) -> ``float32
        [sum K_i, F, M, f, f]``."""
        ...

    def gather_pointers(self, per_item: Sequence[Sequence[Array]], rows: int,
                        channels: int) -> Array:
        """Object pointers, ``P`` per item (each ``[K_i,C]``) -> ``float32 [rows,P,C]``."""
        ...

    def to_masks(self, low: Array, labels: Sequence[Sequence[int]],
                 sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Low-res logits ``[sum K_i, lo, lo]`` of several frames (``K_i = len(labels[i])``
        rows each) -> one ``[H_i,W_i]`` label mask per frame, on the host: bilinear
        upsampling, then the highest positive logit wins. Never a ``[K_i,H_i,W_i]``
        stack: labels are folded into a running maximum (:func:`streamed_labels`)."""
        ...

    def logits(self, low: Array, size: tuple[int, int]) -> np.ndarray:
        """``[K,lo,lo]`` low-res logits -> ``float32 [K,H,W]`` at ``size`` on the host."""
        ...

    def to_host(self, x: Array) -> np.ndarray:
        """A device array as numpy (counted in ``bytes_out``)."""
        ...


class NumpyOps:
    """Host-memory arrays: the CPU path, exactly as sam2 computes it."""

    def __init__(self, bf16_memories: bool = True) -> None:
        self.bf16_memories = bf16_memories
        self.bytes_in = 0
        self.bytes_out = 0

    def preprocess(self, images: Sequence[np.ndarray], size: int,
                   resample: str = "bicubic") -> np.ndarray:
        self.bytes_in += sum(int(im.nbytes) for im in images)
        return np.stack([preprocess_image(im, size, resample) for im in images])

    def support_masks(self, masks: Sequence[np.ndarray], size: int, low_res: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        self.bytes_in += sum(int(np.asarray(m).size) for m in masks)
        mask_s = np.stack([mask_to_model(m, size) for m in masks])[:, None]
        return mask_s, mask_to_low_res_logits(mask_s, low_res).astype(np.float32)

    def asarray(self, host: np.ndarray) -> np.ndarray:
        return host

    def full(self, shape: tuple[int, ...], value: float) -> np.ndarray:
        return np.full(shape, value, np.float32)

    def take(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return x[rows]

    def concat(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0] if len(xs) == 1 else np.concatenate(xs)

    def store_memory(self, x: np.ndarray) -> np.ndarray:
        return to_bf16(x) if self.bf16_memories else np.array(x, np.float32, copy=True)

    def gather_memories(self, per_item: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        parts = [np.stack(mems, axis=1) for mems in per_item]
        stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return from_bf16(stacked) if self.bf16_memories else stacked

    def gather_pointers(self, per_item: Sequence[Sequence[np.ndarray]], rows: int,
                        channels: int) -> np.ndarray:
        if not per_item or not per_item[0]:
            return np.zeros((rows, 0, channels), np.float32)
        return np.concatenate([np.stack(p, axis=1) for p in per_item]).astype(np.float32,
                                                                             copy=False)

    def to_masks(self, low: np.ndarray, labels: Sequence[Sequence[int]],
                 sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        out, r = [], 0
        for labs, size in zip(labels, sizes):
            k = len(labs)
            mask = streamed_labels(low[r:r + k], labs, size)
            self.bytes_out += int(mask.nbytes)
            out.append(mask)
            r += k
        return out

    def logits(self, low: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return resize_bilinear(low, size)

    def to_host(self, x: np.ndarray) -> np.ndarray:
        self.bytes_out += int(x.nbytes)
        return x


def mask_labels(mask: np.ndarray) -> list[int]:
    """Sorted distinct non-zero values of an integer ``[H, W]`` label array."""
    values = np.unique(np.asarray(mask))
    return [int(v) for v in values if v != 0]
