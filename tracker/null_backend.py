"""A backend that does no math, to measure what the engine itself costs the host.

Every component answers at once with zeros of the right shape, and every device
operation of :class:`NullOps` (preprocessing, gathering memories, upsampling) is free:
they stand for device time. What remains is the engine's host work per frame
(scheduling, memory selection, book-keeping) and the bytes that cross between host and
device (``bytes_in``/``bytes_out``: images in; masks and scores out).
``python -m sst.benchmarks.host_overhead`` runs it; tests use it to check scheduling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sst.export.meta import ModelMeta
from sst.tracker.ops import NumpyOps

__all__ = ["NullBackend", "NullOps"]

_ZERO = np.zeros(1, np.float32)


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A read-only array of zeros that costs no memory and no time."""
    return np.broadcast_to(_ZERO.reshape((1,) * len(shape)), shape)


class NullOps(NumpyOps):
    """Device operations that cost nothing (shapes only); crossings are counted as
    :class:`~sst.tracker.ops.NumpyOps` counts them."""

    def preprocess(self, images: Sequence[np.ndarray], size: int,
                   resample: str = "bicubic") -> np.ndarray:
        self.bytes_in += sum(int(im.nbytes) for im in images)
        return _zeros((len(images), 3, size, size))

    def support_masks(self, masks: Sequence[np.ndarray], size: int, low_res: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        self.bytes_in += sum(int(np.asarray(m).size) for m in masks)
        return _zeros((len(masks), 1, size, size)), _zeros((len(masks), 1, low_res, low_res))

    def asarray(self, host: np.ndarray) -> np.ndarray:
        self.bytes_in += int(host.nbytes)
        return host

    def full(self, shape: tuple[int, ...], value: float) -> np.ndarray:
        return _zeros(shape)

    def take(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _zeros((len(rows), *x.shape[1:]))

    def concat(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        return _zeros((sum(int(x.shape[0]) for x in xs), *xs[0].shape[1:]))

    def store_memory(self, x: np.ndarray) -> np.ndarray:
        return x

    def gather_memories(self, per_item: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        first = per_item[0][0]
        rows = sum(int(mems[0].shape[0]) for mems in per_item)
        return _zeros((rows, len(per_item[0]), *first.shape[1:]))

    def gather_pointers(self, per_item: Sequence[Sequence[np.ndarray]], rows: int,
                        channels: int) -> np.ndarray:
        return _zeros((rows, len(per_item[0]) if per_item else 0, channels))

    def to_masks(self, low: np.ndarray, labels: Sequence[Sequence[int]],
                 sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        out = [np.zeros(size, np.uint8) for size in sizes]
        self.bytes_out += sum(int(m.nbytes) for m in out)
        return out

    def logits(self, low: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return np.zeros((low.shape[0], *size), np.float32)

    def to_host(self, x: np.ndarray) -> np.ndarray:
        self.bytes_out += int(np.prod(x.shape)) * x.itemsize
        return np.zeros(x.shape, x.dtype)



class NullBackend:
    """Zeros of each component's output shapes (see :mod:`sst.export.specs`), at once."""

    encode_batch = 16
    attention_bytes = 0

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self.ops = NullOps()
        g = meta
        f, lo = g.feat, g.low_res
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {
            "image_encoder": {"feat_s0": (g.s0_dim, 4 * f, 4 * f),
                              "feat_s1": (g.s1_dim, 2 * f, 2 * f),
                              "feat_top": (g.hidden_dim, f, f)},
            "memory_attention": {"conditioned": (g.hidden_dim, f, f)},
            "mask_decoder": {"mask_logits": (1, lo, lo), "iou": (1,),
                             "obj_ptr": (g.hidden_dim,), "object_score_logits": (1,)},
            "memory_encoder": {"maskmem_features": (
                (g.mem_tokens, g.mem_dim) if g.mem_tokens else (g.mem_dim, f, f))},
        }

    def run(self, component: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        B = int(next(iter(feeds.values())).shape[0])
        return {k: _zeros((B, *s)) for k, s in self._shapes[component].items()}
