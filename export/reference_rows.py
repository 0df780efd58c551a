"""What the per-component parity references of every model family share, importing no
model library: the components' numpy inputs as tensors, and the mask decoder's outputs
collected row by row (the references take their branches per row)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["Arrays", "Row", "decoder_rows", "seq_first", "tensor"]

Arrays = dict[str, np.ndarray]
#: One decoder row's outputs: low-res logits ``[1,1,h,w]`` (None where the reference
#: makes no mask: a support row), best IoU ``[1,1]``, object pointer ``[1,C]`` and object
#: score ``[1,1]``.
Row = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]


def tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def seq_first(x: torch.Tensor) -> torch.Tensor:  # [B,C,H,W] -> [HW,B,C]
    return x.flatten(2).permute(2, 0, 1)


def decoder_rows(x: Arrays, row: Callable[[int], Row]) -> Arrays:
    """The mask decoder's outputs for every row ``b`` of ``x``, each from ``row(b)``; a
    row without a mask gets NaN logits (skipped by the comparison)."""
    outs: dict[str, list[np.ndarray]] = {"mask_logits": [], "iou": [], "obj_ptr": [],
                                        "object_score_logits": []}
    for b in range(x["image_embed"].shape[0]):
        low, iou, ptr, score = row(b)
        outs["mask_logits"].append(
            np.full((1, 1, *x["mask_input"].shape[2:]), np.nan, np.float32) if low is None
            else low.numpy())
        outs["iou"].append(iou.numpy())
        outs["obj_ptr"].append(ptr.numpy())
        outs["object_score_logits"].append(score.numpy())
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}
