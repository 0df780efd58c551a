"""Array operations on torch tensors, on any device (the engine's GPU path).

Everything the engine keeps (features, memories in bfloat16 as sam2 stores them,
pointers, logits) stays on ``device``. Per frame, the image goes in as ``uint8`` and the
label mask comes back as ``uint8``; both resizes are done on the device:

* **preprocessing** reproduces sam2's loader exactly: Pillow's bicubic resize in fixed
  point (:mod:`sst.tracker.pil_resize`) for landscape and square frames, where the two
  passes run in Pillow's order (tested bit-exact against Pillow); a portrait frame is
  resized by Pillow on the host and uploaded at ``S x S``. Then the same per-byte
  normalisation table as the CPU path;
* **postprocessing** upsamples the low-res logits bilinearly (``align_corners=False``,
  as :func:`sst.tracker.resize.resize_bilinear`) and takes the highest positive logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sst.tracker.pil_resize import resize_uint8
from sst.tracker.resize import NORMALISE, mask_to_low_res_logits, mask_to_model

__all__ = ["TorchOps"]


class TorchOps:
    """:class:`~sst.tracker.ops.ArrayOps` over torch tensors on ``device``."""

    def __init__(self, device: Any = "cpu", bf16_memories: bool = True) -> None:
        self.torch, self.F = torch, F
        self.device = torch.device(device)
        self.bf16_memories = bf16_memories
        self.bytes_in = 0
        self.bytes_out = 0
        self._normalise = torch.from_numpy(NORMALISE).to(self.device)  # [3,256]

    def _upload(self, host: np.ndarray) -> Any:
        self.bytes_in += int(host.nbytes)
        if not (host.flags.writeable and host.flags.c_contiguous):
            host = np.array(host)  # torch needs a writable, contiguous array
        return self.torch.from_numpy(host).to(self.device, non_blocking=True)

    def preprocess(self, images: Sequence[np.ndarray], size: int) -> Any:
        out = []
        for im in images:
            if im.shape[0] <= im.shape[1]:  # landscape or square: exact on the device
                resized = resize_uint8(self._upload(im), (size, size))
            else:  # portrait: Pillow's pass order differs there; resize on the host
                resized = self._upload(np.asarray(Image.fromarray(im).resize((size, size))))
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
        return x[self.torch.as_tensor(rows, dtype=self.torch.long, device=self.device)]

    def concat(self, xs: Sequence[Any]) -> Any:
        return xs[0] if len(xs) == 1 else self.torch.cat(list(xs))

    def store_memory(self, x: Any) -> Any:
        dtype = self.torch.bfloat16 if self.bf16_memories else self.torch.float32
        return x.to(dtype).clone()

    def gather_memories(self, per_item: Sequence[Sequence[Any]]) -> Any:
        torch = self.torch
        return torch.cat([torch.stack(list(m), 1) for m in per_item]).to(torch.float32)

    def gather_pointers(self, per_item: Sequence[Sequence[Any]], rows: int,
                        channels: int) -> Any:
        torch = self.torch
        if not per_item or not per_item[0]:
            return torch.zeros((rows, 0, channels), dtype=torch.float32, device=self.device)
        return torch.cat([torch.stack(list(p), 1) for p in per_item]).to(torch.float32)

    def _upsample(self, low: Any, size: tuple[int, int]) -> Any:
        return self.F.interpolate(low[None].float(), size=size, mode="bilinear",
                                  align_corners=False)[0]

    def to_masks(self, low: Any, labels: Sequence[Sequence[int]],
                 sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        torch = self.torch
        out, r = [], 0
        for labs, size in zip(labels, sizes):
            k = len(labs)
            logits = self._upsample(low[r:r + k], size)
            best, arg = logits.max(dim=0)
            dtype = torch.uint8 if max(labs) <= 255 else torch.int32
            lut = torch.as_tensor(list(labs), dtype=dtype, device=self.device)
            mask = torch.where(best > 0, lut[arg], torch.zeros((), dtype=dtype,
                                                                device=self.device))
            host = mask.cpu().numpy()
            if host.dtype != np.uint8:
                host = host.astype(np.uint16)
            self.bytes_out += int(host.nbytes)
            out.append(host)
            r += k
        return out

    def logits(self, low: Any, size: tuple[int, int]) -> np.ndarray:
        return self._upsample(low, size).cpu().numpy()

    def to_host(self, x: Any) -> np.ndarray:
        host = x.detach().float().cpu().numpy()
        self.bytes_out += int(host.nbytes)
        return host
