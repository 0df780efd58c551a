"""EdgeTAM computed by ``transformers``' own code: the definition of correct for the
EdgeTAM wrappers (:mod:`sst.export.edgetam_wrappers`) and for an SST run.

:func:`reference_outputs` computes one component from the same numpy inputs as the
exported graphs, through ``EdgeTamVideoModel``'s own methods (``get_image_features``,
its memory attention, ``_single_frame_forward``, ``_use_mask_as_output``,
``_encode_new_memory``), one object at a time where the model takes its branches per
object. :func:`run_reference_sst` runs the SST pseudo-video (a support image and its
label mask, then the queries) through transformers' video inference session and
processor. Slow and branchy on purpose; never a serving path. transformers is imported
inside the functions (the ``edgetam`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sst.export.reference_rows import Arrays, Row, decoder_rows
from sst.export.reference_rows import seq_first as _seq
from sst.export.reference_rows import tensor as _t

__all__ = ["EDGETAM_REFERENCES", "reference_outputs", "edgetam_processor",
           "run_reference_sst"]


def image_encoder_ref(model: Any, x: Arrays) -> Arrays:
    image = _t(x["image"])
    B = image.shape[0]
    out = model.get_image_features(image, return_dict=True)
    maps = [h.permute(1, 2, 0).reshape(B, -1, *size)
            for h, size in zip(out.fpn_hidden_states, model.backbone_feature_sizes)]
    return {"feat_s0": maps[0].numpy(), "feat_s1": maps[1].numpy(), "feat_top": maps[2].numpy()}


def _memory_token_pos(model: Any, f: int) -> torch.Tensor:
    """Position encoding ``[T, M]`` of one frame's memory tokens, as the perceiver returns
    it with every new memory (it does not depend on the memory's content)."""
    M = model.mem_dim
    feats = torch.zeros(1, M, f, f)
    pos = model.memory_encoder.position_encoding(feats.shape, feats.device, feats.dtype)
    _, out_pos = model.spatial_perceiver(feats, pos)
    return out_pos[0]


def memory_attention_ref(model: Any, x: Arrays) -> Arrays:
    """One row at a time: the reference conditions one object per call."""
    from transformers.models.edgetam_video.modeling_edgetam_video import get_1d_sine_pe

    feat = _t(x["feat_top"])
    B, C, h, w = feat.shape
    M = model.mem_dim
    curr_pos = model.vision_encoder.neck.position_encoding((1, C, h, w), feat.device, feat.dtype)
    token_pos = _memory_token_pos(model, h)  # [T, M]
    outs = []
    for b in range(B):
        mems, poss = [], []
        for i in range(x["memory"].shape[1]):
            mems.append(_t(x["memory"][b, i])[:, None])  # [T,1,M]
            t_pos = int(x["memory_tpos"][b, i])
            offset = 0 if t_pos == 0 else model.num_maskmem - t_pos  # frames back
            enc = model.memory_temporal_positional_encoding[offset - 1]  # [1,1,M]
            poss.append(token_pos[:, None] + enc)
        num_ptr_tokens = 0
        P = x["obj_ptrs"].shape[1]
        if P > 0:
            ptrs = _t(x["obj_ptrs"][b])[:, None]  # [P,1,C]
            pe = get_1d_sine_pe(_t(x["obj_ptr_tpos"][b]), dim=C)
            ptr_pos = model.temporal_positional_encoding_projection_layer(pe)[:, None]  # [P,1,M]
            split = C // M
            ptrs = ptrs.reshape(P, 1, split, M).permute(0, 2, 1, 3).flatten(0, 1)
            mems.append(ptrs)
            poss.append(ptr_pos.repeat_interleave(split, dim=0))
            num_ptr_tokens = ptrs.shape[0]
        out = model.memory_attention(
            current_vision_features=_seq(feat[b:b + 1]),
            current_vision_position_embeddings=_seq(curr_pos),
            memory=torch.cat(mems), memory_posision_embeddings=torch.cat(poss),
            num_object_pointer_tokens=num_ptr_tokens,
            num_spatial_memory_tokens=x["memory"].shape[1])
        outs.append(out.squeeze(1).transpose(1, 2).reshape(1, C, h, w))
    return {"conditioned": torch.cat(outs).numpy()}


def mask_decoder_ref(model: Any, x: Arrays) -> Arrays:
    """Row by row, because the reference takes its branches per call."""

    def row(b: int) -> Row:
        embed = _t(x["image_embed"][b:b + 1])
        hrf = [_t(x["feat_s0"][b:b + 1]), _t(x["feat_s1"][b:b + 1])]
        if x["mask_from_support"][b, 0] > 0.5:
            res = model._use_mask_as_output(embed, hrf, _t(x["support_mask"][b:b + 1]))
            low = None  # the support mask itself stands for the output (computed on the host)
        else:
            if x["no_memory"][b, 0] > 0.5:
                embed = embed + model.no_memory_embedding.reshape(1, -1, 1, 1)
            mask_in = _t(x["mask_input"][b:b + 1]) if x["has_mask_input"][b, 0] > 0.5 else None
            res = model._single_frame_forward(
                input_points=_t(x["point_coords"][b:b + 1])[:, None],
                input_labels=_t(x["point_labels"][b:b + 1]).long()[:, None],
                input_masks=mask_in, image_embeddings=hrf + [embed],
                multimask_output=bool(x["multimask"][b, 0] > 0.5))
            low = res.pred_masks.reshape(1, 1, *res.pred_masks.shape[-2:])
        return (low, res.iou_scores.reshape(1, -1).max(dim=1, keepdim=True).values,
                res.object_pointer.reshape(1, -1), res.object_score_logits.reshape(1, 1))

    return decoder_rows(x, row)


def memory_encoder_ref(model: Any, x: Arrays) -> Arrays:
    S = model.image_size
    outs = []
    for b in range(x["feat_top"].shape[0]):
        high = F.interpolate(_t(x["mask_logits"][b:b + 1]), size=(S, S), mode="bilinear",
                             align_corners=False)
        feats, _ = model._encode_new_memory(
            current_vision_feats=_seq(_t(x["feat_top"][b:b + 1])), pred_masks_high_res=high,
            object_score_logits=_t(x["object_score_logits"][b:b + 1]),
            is_mask_from_pts=bool(x["binarize"][b, 0] > 0.5))
        outs.append(feats.numpy())
    return {"maskmem_features": np.concatenate(outs)}


EDGETAM_REFERENCES = {
    "image_encoder": image_encoder_ref,
    "memory_attention": memory_attention_ref,
    "mask_decoder": mask_decoder_ref,
    "memory_encoder": memory_encoder_ref,
}


@torch.inference_mode()
def reference_outputs(model: Any, component: str, inputs: Arrays) -> Arrays:
    """Outputs of ``component`` for ``inputs`` computed by transformers' EdgeTAM code.
    The decoder's mask on support rows is NaN (the reference does not make one)."""
    return EDGETAM_REFERENCES[component](model, inputs)


def edgetam_processor(image_size: int) -> Any:
    """transformers' video processor for EdgeTAM (``Sam2VideoProcessor``: resize to
    ``image_size`` squared, bilinear; /255; ImageNet mean and std), built offline."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    size = {"height": image_size, "width": image_size}
    return Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size=size),
                              video_processor=Sam2VideoVideoProcessor(size=size),
                              target_size=image_size)


def run_reference_sst(model: Any, support: np.ndarray, support_mask: np.ndarray,
                      queries: Sequence[np.ndarray], *, full_res: bool = False,
                      processor: Any = None) -> dict[str, Any]:
    """SST with transformers' EdgeTAM video session: the support ``[H,W,3]`` uint8 image
    is frame 0, with one object per nonzero label of ``support_mask [H,W]`` given as a
    mask prompt there; the queries are frames 1..n, propagated in order.

    Returns ``labels``; ``logits`` ``{frame: [K,lo,lo]}`` (the model's low-res logits, one
    row per label), or, with ``full_res``, ``[K,H,W]`` at the support's size (the video
    resolution, as the processor's post-processing upsamples them); ``object_scores``
    ``{frame: [K]}``; per-frame ``seconds``.
    """
    from transformers.models.edgetam_video.modeling_edgetam_video import (
        EdgeTamVideoInferenceSession,
    )

    if support_mask.shape != support.shape[:2]:
        raise ValueError(f"support mask {support_mask.shape} does not fit its image "
                         f"{support.shape[:2]}")
    labels = [int(v) for v in np.unique(support_mask) if v != 0]
    if not labels:
        raise ValueError("the support mask has no labels")
    proc = processor if processor is not None else edgetam_processor(int(model.image_size))
    frames = [support, *queries]
    pixels = torch.cat([proc.video_processor(videos=[f[None]], return_tensors="pt")
                        .pixel_values_videos[0] for f in frames])  # [N,3,S,S]
    H, W = support.shape[:2]
    logits: dict[int, np.ndarray] = {}
    scores: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    with torch.inference_mode():
        session = EdgeTamVideoInferenceSession(video=pixels, video_height=H, video_width=W,
                                               dtype=torch.float32)
        proc.add_inputs_to_inference_session(
            session, frame_idx=0, obj_ids=list(labels),  # (the session consumes the list)
            input_masks=[torch.from_numpy(support_mask == lab) for lab in labels])
        t = time.perf_counter()
        for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
            assert list(out.object_ids) == labels
            masks = out.pred_masks  # [K,1,lo,lo]
            if full_res:
                masks = proc.post_process_masks([masks], original_sizes=[[H, W]],
                                                binarize=False)[0]
            logits[out.frame_idx] = masks[:, 0].float().numpy().copy()
            scores[out.frame_idx] = out.object_score_logits.reshape(-1).float().numpy().copy()
            now = time.perf_counter()
            seconds[out.frame_idx] = now - t
            t = now
    return {"labels": labels, "logits": logits, "object_scores": scores, "seconds": seconds}
