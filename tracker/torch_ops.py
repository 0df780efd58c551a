"""Array operations on torch tensors, on any device (the engine's GPU path).

Everything the engine keeps (features, memories in bfloat16 as sam2 stores them,
pointers, logits) stays on ``device``. Per frame, the image goes in as ``uint8`` and
each pixel's winning label comes back as a byte index (labels are looked up on the
host):

* **preprocessing** reproduces sam2's loader exactly: on a GPU, Pillow's bicubic resize
  in fixed point (:mod:`sst.tracker.pil_resize`) for landscape and square frames, where
  the two passes run in Pillow's order (tested bit-exact against Pillow); a portrait
  frame, or any frame on the CPU (where Pillow's own resize is several times faster), is
  resized by Pillow on the host. Then the same per-byte normalisation table as the
  CPU path;
* **postprocessing** upsamples the low-res logits bilinearly (``align_corners=False``,
  as :func:`sst.tracker.resize.resize_bilinear`) a few labels at a time on a GPU, one
  at a time on a CPU, and keeps a running highest positive logit, so that its memory
  does not grow with the labels.

Inside a step nothing waits on the device until the step's results come back: uploads
(frames, position tables) go through pinned memory as asynchronous copies (a copy from
pageable memory would first wait for the stream); row selections are slices, repeats and
one concatenation, with no index tensor copied from the host. Only the step's results
(label indices, scores) are copied back, at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sst.tracker.ops import SAFE_LOGIT
from sst.tracker.pil_resize import resize_uint8
from sst.tracker.resize import NORMALISE, mask_to_low_res_logits, mask_to_model

__all__ = ["TorchOps", "MASK_CHUNK_BYTES"]

#: Float32 logits upsampled at once on a GPU when label masks are made (a few labels at
#: a time, whatever their number); a CPU upsamples one label at a time.
MASK_CHUNK_BYTES = 256 * 2**20


class TorchOps:
    """:class:`~sst.tracker.ops.ArrayOps` over torch tensors on ``device``."""

    def __init__(self, device: Any = "cpu", bf16_memories: bool = True,
                 compute_dtype: Any = torch.float32, device_resize: bool | None = None,
                 mask_chunk_bytes: int | None = None) -> None:
        self.torch, self.F = torch, F
        self.device = torch.device(device)
        self.bf16_memories = bf16_memories
        #: The dtype memories and pointers are gathered in: the engine's autocast dtype.
        self.compute_dtype = compute_dtype
        #: Whether landscape and square frames are resized on the device (default: on a
        #: GPU); otherwise Pillow resizes every frame on the host.
        self.device_resize = self.device.type != "cpu" if device_resize is None \
            else device_resize
        #: Float32 logits upsampled at once when label masks are made: default
        #: :data:`MASK_CHUNK_BYTES` on a GPU, 0 (one label at a time) on a CPU, where a
        #: batch of planes gains nothing and each would be host memory.
        self.mask_chunk_bytes = (0 if self.device.type == "cpu" else MASK_CHUNK_BYTES) \
            if mask_chunk_bytes is None else mask_chunk_bytes
        self.bytes_in = 0
        self.bytes_out = 0
        #: host -> device copies made (one per uploaded array)
        self.uploads = 0
        self._pin = self.device.type == "cuda"
        self._normalise = torch.from_numpy(NORMALISE).to(self.device)  # [3,256]

    def _upload(self, host: np.ndarray) -> Any:
        self.bytes_in += int(host.nbytes)
        self.uploads += 1
        if not (host.flags.writeable and host.flags.c_contiguous):
            host = np.array(host)  # torch needs a writable, contiguous array
        t = self.torch.from_numpy(host)
        if self._pin:  # from pinned memory the copy is asynchronous
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def preprocess(self, images: Sequence[np.ndarray], size: int,
                   resample: str = "bicubic") -> Any:
        out = []
        filt = getattr(Image.Resampling, resample.upper())
        for im in images:
            if self.device_resize and im.shape[0] <= im.shape[1] and resample == "bicubic":
                # landscape or square: PIL's bicubic reproduced exactly on the device
                resized = resize_uint8(self._upload(im), (size, size))
            else:  # on the CPU (Pillow is the fastest exact resize there), a portrait frame
                # (Pillow's pass order differs) or another filter: Pillow on the host
                resized = self._upload(np.asarray(
                    Image.fromarray(im).resize((size, size), filt)))
            idx = resized.to(self.torch.long).permute(2, 0, 1)  # [3,S,S]
            out.append(self.torch.stack([self._normalise[c][idx[c]] for c in range(3)]))
        return self.torch.stack(out)

    def support_masks(self, masks: Sequence[np.ndarray], size: int, low_res: int
                      ) -> tuple[Any, Any]:
        # Support masks come once per session (and are cached by content): the exact
        # host resize keeps priming identical to the CPU path.
        mask_s = np.stack([mask_to_model(m, size) for m in masks])[:, None]
        low = mask_to_low_res_logits(mask_s, low_res).astype(np.float32)
        return self._upload(mask_s), self._upload(low)

    def asarray(self, host: np.ndarray) -> Any:
        return self._upload(host)

    def full(self, shape: tuple[int, ...], value: float) -> Any:
        return self.torch.full(shape, value, dtype=self.torch.float32, device=self.device)

    def take(self, x: Any, rows: np.ndarray) -> Any:
        """``x[rows]`` from views of ``x``: each run of consecutive rows is a slice, each
        repeated row a broadcast view; one concatenation copies them (no index tensor)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        n = int(rows.size)
        if n and (rows.min() < 0 or rows.max() >= x.shape[0]):
            raise IndexError(f"rows {rows.min()}..{rows.max()} out of range for {x.shape[0]}")
        pieces = _runs(rows)
        if len(pieces) == 1:
            start, length, times = pieces[0]
            if times == 1:
                return x[start:start + length]
        if len({(ln, t) for _, ln, t in pieces}) == 1 and pieces[0][1] == 1 and \
                all(b[0] == a[0] + 1 for a, b in zip(pieces, pieces[1:])):
            # each of a range of rows repeated the same number of times
            start, times, m = pieces[0][0], pieces[0][2], len(pieces)
            block = x[start:start + m]
            return block.unsqueeze(1).expand(m, times, *x.shape[1:]).reshape(
                m * times, *x.shape[1:])
        views = [x[s:s + ln] if t == 1 else x[s:s + 1].expand(t, *x.shape[1:])
                 for s, ln, t in pieces]
        return views[0].contiguous() if len(views) == 1 else self.torch.cat(views)

    def concat(self, xs: Sequence[Any]) -> Any:
        return xs[0] if len(xs) == 1 else self.torch.cat(list(xs))

    def store_memory(self, x: Any) -> Any:
        dtype = self.torch.bfloat16 if self.bf16_memories else self.torch.float32
        return x.to(dtype).clone()

    def gather_memories(self, per_item: Sequence[Sequence[Any]]) -> Any:
        torch = self.torch
        return torch.cat([torch.stack(list(m), 1) for m in per_item]).to(self.compute_dtype)

    def gather_pointers(self, per_item: Sequence[Sequence[Any]], rows: int,
                        channels: int) -> Any:
        torch = self.torch
        if not per_item or not per_item[0]:
            return torch.zeros((rows, 0, channels), dtype=self.compute_dtype,
                               device=self.device)
        return torch.cat([torch.stack(list(p), 1) for p in per_item]).to(self.compute_dtype)

    def _upsample(self, low: Any, size: tuple[int, int]) -> Any:
        return self.F.interpolate(low[None].float(), size=size, mode="bilinear",
                                  align_corners=False)[0]

    def to_masks(self, low: Any, labels: Sequence[Sequence[int]],
                 sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        out, r = [], 0
        for labs, size in zip(labels, sizes):
            k = len(labs)
            index = self._winners(low[r:r + k], size).cpu().numpy()
            dtype = np.uint8 if max(labs, default=0) <= 255 else np.uint16
            host = np.asarray((0, *labs), dtype)[index]  # the label of each winner
            self.bytes_out += int(index.nbytes)
            out.append(host)
            r += k
        return out

    def _winners(self, low: Any, size: tuple[int, int]) -> Any:
        """``[H,W]`` 1-based index of the label whose logit, of ``low [K,lo,lo]``
        upsampled to ``size``, is highest, and 0 where that logit is not positive: as
        ``self._upsample(low, size).max(dim=0)`` gives them (equal maxima keep the first
        label, a NaN wins and then counts as not positive), without the ``[K,H,W]`` stack.

        Labels are upsampled :attr:`mask_chunk_bytes` of float32 logits at a time (at
        least one label) and folded in place into a running maximum and a byte index, so
        memory after the first chunk does not grow with ``K``."""
        torch = self.torch
        k = int(low.shape[0])
        plane = 4 * size[0] * size[1]
        step = max(1, self.mask_chunk_bytes // max(plane, 1))
        index = torch.zeros(size, dtype=torch.uint8 if k < 256 else torch.int16,
                            device=self.device)
        # A NaN (or an overflow) in the upsampled logits wins: keep that rule only when
        # the low-res logits could make one.
        exact_nan = k > 1 and not bool(low.isfinite().all() & (low.abs().max() < SAFE_LOGIT))
        best = None
        for first in range(0, k, step):
            up = self._upsample(low[first:first + step], size)
            if up.shape[0] == 1:
                part, part_arg = up[0], None
            else:
                part, part_arg = up.max(dim=0)
            del up  # before the next chunk is made: one chunk at a time
            if best is None:
                best = part
                if part_arg is not None:
                    index.copy_(part_arg)
                index.add_(1)
                continue
            wins = part > best
            if exact_nan:
                wins |= part.isnan() & ~best.isnan()
                torch.where(wins, part, best, out=best)
            else:
                torch.maximum(best, part, out=best)
            if part_arg is None:
                index.masked_fill_(wins, first + 1)
            else:
                torch.where(wins, (part_arg + first + 1).to(index.dtype), index, out=index)
            del part, part_arg, wins
        if best is None:
            return index
        return index.masked_fill_(~(best > 0), 0)

    def logits(self, low: Any, size: tuple[int, int]) -> np.ndarray:
        return self._upsample(low, size).cpu().numpy()

    def to_host(self, x: Any) -> np.ndarray:
        host = x.detach().float().cpu().numpy()
        self.bytes_out += int(host.nbytes)
        return host


def _runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """``rows`` as pieces ``(start, length, times)``: ``times == 1`` is the range
    ``start..start+length-1``; otherwise row ``start`` repeated ``times`` times
    (``length`` 1)."""
    if rows.size == 0:
        return []
    change = np.flatnonzero(rows[1:] != rows[:-1]) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [rows.size]]))
    pieces: list[tuple[int, int, int]] = []
    for v, c in zip(rows[starts].tolist(), counts.tolist()):
        if c == 1 and pieces and pieces[-1][2] == 1 and pieces[-1][0] + pieces[-1][1] == v:
            s, ln, _ = pieces[-1]
            pieces[-1] = (s, ln + 1, 1)
        else:
            pieces.append((v, 1, c))
    return pieces
