"""The memory bank as both families' memory attention reads it: the stored spatial
memories, then each object pointer split into tokens of the memory width, with their
positions. Shared by :mod:`sst.export.wrappers` (SAM 2) and
:mod:`sst.export.edgetam_wrappers` (EdgeTAM); it imports no model library."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sine_1d", "bank_tokens"]


def sine_1d(pos: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``[..., dim]`` sine then cosine encoding of the scalar positions ``pos [...]`` at
    ``dim // 2`` frequencies, each used by one sine and one cosine channel (the
    transformer's 1-D encoding, as both families encode an object pointer's distance)."""
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=pos.device)
    freq = temperature ** (2 * (freq // 2) / half)
    angle = pos[..., None] / freq
    return torch.cat((angle.sin(), angle.cos()), dim=-1)


def bank_tokens(memories: Tensor, spatial_pos: Tensor, tpos_table: Tensor,
                memory_tpos: Tensor, obj_ptrs: Tensor, ptr_pos: Tensor, split: int
                ) -> tuple[Tensor, Tensor]:
    """``(tokens, positions)``, both ``[B, F*n + P*split, M]``.

    ``memories [B, F*n, M]``: each frame's ``n`` memory tokens, frame after frame.
    ``spatial_pos [1, 1, n, M]``: a frame's token positions, to which each frame's
    temporal encoding is added: row ``num_maskmem - 1 - memory_tpos`` of ``tpos_table
    [num_maskmem, 1, 1, M]`` (``memory_tpos [B, F]``). ``obj_ptrs [B, P, split*M]``: each
    pointer cut into ``split`` tokens, which share its position ``ptr_pos [B, P, M]``."""
    num_maskmem, width = int(tpos_table.shape[0]), int(tpos_table.shape[-1])
    tpos = tpos_table[:, 0, 0][num_maskmem - 1 - memory_tpos]  # [B, F, M]
    mem_pos = (spatial_pos + tpos[:, :, None, :]).flatten(1, 2)
    ptrs = obj_ptrs.unflatten(-1, (split, width)).flatten(1, 2)
    tokens = torch.cat((memories, ptrs), dim=1)
    positions = torch.cat((mem_pos, ptr_pos.repeat_interleave(split, dim=1)), dim=1)
    return tokens, positions
