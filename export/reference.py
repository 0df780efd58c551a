"""Each component computed by sam2's own code paths (the parity reference).

These functions take the same inputs as the exported graphs (numpy, per
:mod:`sst.export.specs`) and compute the outputs with sam2's original modules and
methods: the complex-valued RoPE memory attention, ``_forward_sam_heads``,
``_use_mask_as_output`` and ``_encode_new_memory``. They are slow and branchy on
purpose: they are the definition of correct, not a serving path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_utils import get_1d_sine_pe

from sst.export.reference_rows import Arrays, Row, decoder_rows
from sst.export.reference_rows import seq_first as _seq
from sst.export.reference_rows import tensor as _t

__all__ = ["REFERENCES", "reference_outputs"]


def image_encoder_ref(model: Any, x: Arrays) -> Arrays:
    out = model.forward_image(_t(x["image"]))
    s0, s1, top = out["backbone_fpn"][:3]
    return {"feat_s0": s0.numpy(), "feat_s1": s1.numpy(), "feat_top": top.numpy()}


def memory_attention_ref(model: Any, x: Arrays) -> Arrays:
    feat = _t(x["feat_top"])
    B, C, h, w = feat.shape
    memory = _t(x["memory"])  # [B,F,M,h,w]
    tpos = x["memory_tpos"]
    ptrs = _t(x["obj_ptrs"])  # [B,P,C]
    ptr_tpos = _t(x["obj_ptr_tpos"])  # [B,P]
    M = model.mem_dim
    num_frames = memory.shape[1]
    curr_pos = model.image_encoder.neck.position_encoding(feat)
    mem_pos_enc = model.memory_encoder.position_encoding(memory[:, 0])
    to_cat, to_cat_pos = [], []
    for i in range(num_frames):
        to_cat.append(_seq(memory[:, i]))
        enc = _seq(mem_pos_enc)  # [hw, B, M]
        tp = torch.from_numpy(model.num_maskmem - tpos[:, i] - 1)
        enc = enc + model.maskmem_tpos_enc[tp][:, 0, 0][None]  # per batch row
        to_cat_pos.append(enc)
    num_ptr_tokens = 0
    if ptrs.shape[1] > 0:
        obj_ptrs = ptrs.permute(1, 0, 2)  # [P,B,C]
        tpos_dim = C if model.proj_tpos_enc_in_obj_ptrs else M
        obj_pos = model.obj_ptr_tpos_proj(get_1d_sine_pe(ptr_tpos.permute(1, 0), dim=tpos_dim))
        obj_ptrs = obj_ptrs.reshape(-1, B, C // M, M).permute(0, 2, 1, 3).flatten(0, 1)
        obj_pos = obj_pos.repeat_interleave(C // M, dim=0)
        to_cat.append(obj_ptrs)
        to_cat_pos.append(obj_pos)
        num_ptr_tokens = obj_ptrs.shape[0]
    out = model.memory_attention(
        curr=[_seq(feat)], curr_pos=[_seq(curr_pos)],
        memory=torch.cat(to_cat, dim=0), memory_pos=torch.cat(to_cat_pos, dim=0),
        num_obj_ptr_tokens=num_ptr_tokens)
    return {"conditioned": out.permute(1, 2, 0).reshape(B, C, h, w).numpy()}


def mask_decoder_ref(model: Any, x: Arrays) -> Arrays:
    """Row by row, because sam2 takes its branches per call."""

    def row(b: int) -> Row:
        embed = _t(x["image_embed"][b:b + 1])
        if x["no_memory"][b, 0] > 0.5:
            embed = embed + model.no_mem_embed.reshape(1, -1, 1, 1)
        hrf = [_t(x["feat_s0"][b:b + 1]), _t(x["feat_s1"][b:b + 1])]
        if x["mask_from_support"][b, 0] > 0.5:
            res = model._use_mask_as_output(embed, hrf, _t(x["support_mask"][b:b + 1]))
            # _use_mask_as_output's mask is the support mask itself, not a decoder output
            # (the tracker computes it on the host); report the decoder-independent parts.
            return None, res[2], res[5], res[6]
        points = {"point_coords": _t(x["point_coords"][b:b + 1]),
                  "point_labels": _t(x["point_labels"][b:b + 1]).int()}
        mask_in = _t(x["mask_input"][b:b + 1]) if x["has_mask_input"][b, 0] > 0.5 else None
        res = model._forward_sam_heads(
            backbone_features=embed, point_inputs=points, mask_inputs=mask_in,
            high_res_features=hrf, multimask_output=bool(x["multimask"][b, 0] > 0.5))
        ious = res[2]
        if ious.shape[1] > 1:
            ious = ious.max(dim=1, keepdim=True).values
        return res[3], ious, res[5], res[6]

    return decoder_rows(x, row)


def memory_encoder_ref(model: Any, x: Arrays) -> Arrays:
    feat = _t(x["feat_top"])
    B, C, h, w = feat.shape
    high = F.interpolate(_t(x["mask_logits"]), size=(model.image_size, model.image_size),
                         mode="bilinear", align_corners=False)
    feats, _ = model._encode_new_memory(
        current_vision_feats=[_seq(feat)], feat_sizes=[(h, w)], pred_masks_high_res=high,
        object_score_logits=_t(x["object_score_logits"]), is_mask_from_pts=False)
    return {"maskmem_features": feats.numpy()}


REFERENCES = {
    "image_encoder": image_encoder_ref,
    "memory_attention": memory_attention_ref,
    "mask_decoder": mask_decoder_ref,
    "memory_encoder": memory_encoder_ref,
}


@torch.inference_mode()
def reference_outputs(model: Any, component: str, inputs: Arrays) -> Arrays:
    """Outputs of ``component`` for ``inputs`` computed by sam2's own code.

    Entries that sam2 does not produce for a row (the decoder's mask on support rows)
    are NaN and are skipped by the comparison.
    """
    return REFERENCES[component](model, inputs)
