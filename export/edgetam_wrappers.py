"""Export wrappers for EdgeTAM: the four SST components over a built ``EdgeTamVideoModel``.

The same components, tensor names and meanings as SAM 2's (:mod:`sst.export.wrappers`,
:mod:`sst.export.specs`); each module holds no weights of its own and replaces the
reference's Python branches with flag tensors. Where EdgeTAM differs:

* **memories are tokens, not maps.** The memory encoder ends with EdgeTAM's spatial
  perceiver, so what a bank stores per object and frame is ``maskmem_features [B,T,M]``
  with ``T = mem_tokens`` (512 in every published configuration, whatever the image
  size: ``n1`` global latents, then ``n2`` latents of a ``g x g`` window grid, row-major).
  ``memory_attention`` takes ``memory [B,F,T,M]`` instead of ``[B,F,M,f,f]``.
* **memory position encodings** are a constant per token slot (zero for the global
  latents, a 2-D sine encoding of the window grid for the others) plus the learned
  temporal encoding of the frame's slot: the same ``memory_tpos`` input as SAM 2.
* **RoPE on memory keys** covers only the ``n2`` window latents of each frame, on the
  ``g x g`` grid (not the ``f x f`` feature grid); the global latents and the pointer
  tokens get none. The queries' RoPE is on the ``f x f`` grid, as in SAM 2.
* **memory attention** has 2 layers (SAM 2: 4); position encodings of the current frame
  are added once at the input (x0.1), never inside the layers.
* **memory encoder** takes ``mask_logits [B,1,h,w]`` of any square size (the low-res
  logits of a tracked frame, or a support mask's full-size ``20*m-10``; an image-size input
  is used as is) and one more flag, ``binarize [B,1]``: 1 thresholds the logits at 0
  instead of squashing them with a sigmoid, as the reference does for frames whose mask
  was given. The no-object embedding is added before the perceiver.
* **mask decoder**: ``multimask=0`` applies the reference's stability fallback (the best
  multimask output when the single-mask output is unstable); the reference computes a
  support's pointer with ``multimask=1``. Image encoder outputs: the same three maps.

``mem_tokens``, ``n1`` and the grid come from the model's config (:func:`edgetam_geometry`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sst.export.memory_bank import bank_tokens, sine_1d
from sst.export.specs import NO_OBJ_SCORE, ComponentSpec, Geometry, TensorSpec, component_specs

__all__ = [
    "EdgeTamImageEncoder",
    "EdgeTamMemoryAttention",
    "EdgeTamMaskDecoder",
    "EdgeTamMemoryEncoder",
    "build_edgetam_wrappers",
    "parity_cases",
    "wrappers_for_family",
    "edgetam_component_specs",
    "edgetam_geometry",
]




def edgetam_geometry(model: Any) -> Geometry:
    """The :class:`Geometry` of a built ``EdgeTamVideoModel``: ``family="edgetam"`` and
    its memory layout, ``mem_tokens`` per memory frame, of which the first ``mem_global``
    get no RoPE and the rest tile a ``mem_grid x mem_grid`` grid."""
    cfg = model.config
    n1, n2 = int(cfg.perceiver_resampler_num_latents), int(cfg.perceiver_resampler_num_latents_2d)
    grid = math.isqrt(n2)
    if grid * grid != n2:
        raise NotImplementedError(f"EdgeTAM with {n2} 2-D latents (not a square grid)")
    dec = model.mask_decoder
    return Geometry(
        family="edgetam", image_size=int(cfg.image_size), hidden_dim=int(model.hidden_dim),
        mem_dim=int(model.mem_dim), s0_dim=int(dec.conv_s0.out_channels),
        s1_dim=int(dec.conv_s1.out_channels), num_maskmem=int(model.num_maskmem),
        max_obj_ptrs=int(cfg.max_object_pointers_in_encoder),
        mem_tokens=n1 + n2, mem_global=n1, mem_grid=grid,
        memory_layers=int(cfg.memory_attention_num_layers))


def edgetam_component_specs(geom: Geometry, max_batch: int = 16
                            ) -> dict[str, ComponentSpec]:
    """SAM 2's specs with EdgeTAM's memory layout (see the module's docstring)."""
    specs = component_specs(geom, max_batch)
    B, T, M, S, lo = "batch", geom.mem_tokens, geom.mem_dim, geom.image_size, geom.low_res
    ma = specs["memory_attention"]
    memory = TensorSpec("memory", "float32", (B, "num_frames", T, M), "normal",
                        f"stored maskmem_features ({T} perceiver tokens per frame), "
                        "conditioning frames first")
    specs["memory_attention"] = replace(ma, inputs=tuple(
        memory if t.name == "memory" else t for t in ma.inputs))
    me = specs["memory_encoder"]
    specs["memory_encoder"] = replace(
        me,
        doc="Encodes a frame's features and mask into perceiver memory tokens.",
        inputs=(me.inputs[0],
                TensorSpec("mask_logits", "float32", (B, 1, "mask_h", "mask_w"), "logits",
                           "low-res logits, or image-size 20*mask-10 of a given mask"),
                me.inputs[2],
                TensorSpec("binarize", "float32", (B, 1), "flag",
                           "1: mask = logits > 0 (a given mask), 0: sigmoid(logits)")),
        outputs=(TensorSpec("maskmem_features", "float32", (B, T, M)),),
        trace_dims={"batch": 2, "mask_h": lo, "mask_w": lo},
        axis_ranges={**me.axis_ranges, "mask_h": (lo, lo, S), "mask_w": (lo, lo, S)})
    return specs


def _rope_tables(inv_freq: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """``cos, sin [side*side, 2*len(inv_freq)]`` for row-major tokens of a square grid:
    the first half of the rotated pairs turn with the column, the second with the row."""
    idx = torch.arange(side * side, dtype=torch.float32)
    x, y = idx % side, torch.div(idx, side, rounding_mode="floor")
    inv = inv_freq.float()
    angles = torch.cat((x[:, None] * inv, y[:, None] * inv), dim=1)
    return angles.cos().contiguous(), angles.sin().contiguous()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of ``x [..., N, D]`` by the angles of ``cos/sin [N, D/2]``."""
    pairs = x.unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def _attend(attn: Any, q: Tensor, k: Tensor, v: Tensor, q_rope: tuple[Tensor, Tensor],
            k_rope: tuple[Tensor, Tensor] | None, num_k_rope: Tensor | int | None = None
            ) -> Tensor:
    """Single- or multi-head attention through ``attn``'s projections; queries rotated by
    ``q_rope``, keys by ``k_rope`` (the first ``num_k_rope`` keys only, if given)."""
    heads = int(attn.num_attention_heads)

    def split(t: Tensor) -> Tensor:  # [B, N, H*d] -> [B, H, N, d]
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    q, k, v = split(attn.q_proj(q)), split(attn.k_proj(k)), split(attn.v_proj(v))
    q = _rotate(q, *q_rope)
    if k_rope is not None:
        if num_k_rope is None:
            k = _rotate(k, *k_rope)
        else:
            k = torch.cat((_rotate(k[:, :, :num_k_rope], *k_rope), k[:, :, num_k_rope:]), dim=2)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.o_proj(out.transpose(1, 2).flatten(2))


class EdgeTamImageEncoder(nn.Module):
    """``image [B,3,S,S]`` -> ``feat_s0 [B,32,4f,4f]``, ``feat_s1 [B,64,2f,2f]``,
    ``feat_top [B,C,f,f]``: RepViT's four stages, the FPN neck without its position
    encodings (constants of the other graphs), and the decoder's ``conv_s0``/``conv_s1``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        vision = model.vision_encoder
        self.trunk = vision.backbone.timm_model
        self.convs = vision.neck.convs
        self.top_down = tuple(int(i) for i in vision.neck.fpn_top_down_levels)
        self.levels = int(vision.num_feature_levels)
        self.conv_s0 = model.mask_decoder.conv_s0
        self.conv_s1 = model.mask_decoder.conv_s1

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.trunk(image)
        n = len(self.convs) - 1
        out: list[Tensor] = list(feats)
        prev = feats[n]
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](feats[i])
            if i == n or i not in self.top_down:
                prev = lateral
            else:
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            out[i] = prev
        levels = out[:self.levels]
        return self.conv_s0(levels[0]), self.conv_s1(levels[1]), levels[2]


class EdgeTamMemoryAttention(nn.Module):
    """Memory attention over stored perceiver tokens, temporal encodings inside.

    Inputs: ``feat_top [B,C,f,f]``, ``memory [B,F,T,M]``, ``memory_tpos [B,F]`` (int64:
    0 for conditioning frames, ``num_maskmem - k`` for the frame k steps back),
    ``obj_ptrs [B,P,C]``, ``obj_ptr_tpos [B,P]`` (normalised signed frame distance).
    Output: ``conditioned [B,C,f,f]``.
    """

    rope_cos: Tensor
    rope_sin: Tensor
    frame_cos: Tensor
    frame_sin: Tensor
    curr_pos: Tensor
    mem_pos: Tensor
    tpos_enc: Tensor
    ptr_tpos_proj: Any
    layers: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        geom = edgetam_geometry(model)
        self.f, self.C, self.M = geom.feat, geom.hidden_dim, geom.mem_dim
        self.T, self.n1 = geom.mem_tokens, geom.mem_global
        self.num_maskmem = geom.num_maskmem
        ma = model.memory_attention
        self.layers = ma.layers
        self.norm = ma.layer_norm
        self.tpos_enc = model.memory_temporal_positional_encoding  # [num_maskmem,1,1,M]
        self.ptr_tpos_proj = model.temporal_positional_encoding_projection_layer
        if not model.config.enable_temporal_pos_encoding_for_object_pointers:
            raise NotImplementedError("EdgeTAM without temporal encodings of object pointers")
        inv = ma.rotary_emb.inv_freq
        cos, sin = _rope_tables(inv, self.f)
        self.register_buffer("rope_cos", cos)
        self.register_buffer("rope_sin", sin)
        k_cos, k_sin = _rope_tables(inv, geom.mem_grid)
        # One frame's key table: the global latents unrotated (cos 1, sin 0).
        ones = torch.ones(self.n1, k_cos.shape[1])
        self.register_buffer("frame_cos", torch.cat((ones, k_cos)))
        self.register_buffer("frame_sin", torch.cat((ones * 0, k_sin)))
        with torch.no_grad():
            curr = model.vision_encoder.neck.position_encoding(
                (1, self.C, self.f, self.f), "cpu", torch.float32)
            mem_pos = _memory_pos(model, self.f)
        self.register_buffer("curr_pos", curr.flatten(2).transpose(1, 2).contiguous())
        self.register_buffer("mem_pos", mem_pos[None, None])  # [1,1,T,M]

    def _ptr_pos(self, tpos: Tensor) -> Tensor:
        """1-D sine encoding of the normalised distance (C wide), projected to M."""
        return self.ptr_tpos_proj(sine_1d(tpos, self.C))

    def forward(self, feat_top: Tensor, memory: Tensor, memory_tpos: Tensor,
                obj_ptrs: Tensor, obj_ptr_tpos: Tensor) -> Tensor:
        B, f, C, M = feat_top.shape[0], self.f, self.C, self.M
        x = feat_top.flatten(2).transpose(1, 2) + 0.1 * self.curr_pos  # [B, hw, C]
        num_frames = memory.shape[1]
        values, positions = bank_tokens(
            memory.flatten(1, 2), self.mem_pos, self.tpos_enc, memory_tpos, obj_ptrs,
            self._ptr_pos(obj_ptr_tpos), C // M)  # [B, F*T + P*C/M, M]
        keys = values + positions
        k_rope = (self.frame_cos.repeat(num_frames, 1), self.frame_sin.repeat(num_frames, 1))
        q_rope = (self.rope_cos, self.rope_sin)
        num_k_rope = num_frames * self.T
        for layer in self.layers:
            t = layer.layer_norm1(x)
            x = x + _attend(layer.self_attn, t, t, t, q_rope, q_rope)
            t = layer.layer_norm2(x)
            x = x + _attend(layer.cross_attn_image, t, keys, values, q_rope, k_rope, num_k_rope)
            t = layer.layer_norm3(x)
            x = x + layer.mlp.down_proj(layer.mlp.act_fn(layer.mlp.up_proj(t)))
        x = self.norm(x)
        return x.transpose(1, 2).reshape(B, C, f, f)


def _memory_pos(model: Any, f: int) -> Tensor:
    """Position encoding of one frame's memory tokens ``[T, M]``: zero for the global
    latents, the perceiver's 2-D sine encoding of its window grid for the others."""
    per = model.spatial_perceiver
    parts = []
    if per.num_latents_1d > 0:
        parts.append(torch.zeros(per.num_latents_1d, per.hidden_size))
    if per.num_latents_2d > 0:
        g = math.isqrt(per.num_latents_2d)
        pe = per.positional_encoding((1, per.hidden_size, g, g), "cpu", torch.float32)
        parts.append(pe[0].flatten(1).transpose(0, 1))
    return torch.cat(parts).contiguous()


class EdgeTamMaskDecoder(nn.Module):
    """Prompt encoder + mask decoder + object pointer with flags instead of branches; the
    same inputs and outputs as :class:`sst.export.wrappers.MaskDecoderExport`."""

    dense_pe: Tensor
    pe: Any
    dec: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.pe = model.prompt_encoder
        self.dec = model.mask_decoder
        self.image_size = int(model.config.image_size)
        self.mask_downsample = model.mask_downsample
        self.ptr_proj = model.object_pointer_proj
        self.no_obj_ptr = model.no_object_pointer  # [1, C]
        self.no_mem = model.no_memory_embedding  # [1, 1, C]
        self.stability = bool(self.dec.dynamic_multimask_via_stability)
        self.delta = float(self.dec.dynamic_multimask_stability_delta)
        self.thresh = float(self.dec.dynamic_multimask_stability_thresh)
        with torch.no_grad():
            dense_pe = model.get_image_wide_positional_embeddings()
        self.register_buffer("dense_pe", dense_pe.detach().clone())

    def _points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """Sparse embeddings ``[B,1,N+1,C]`` of points (pixels) and labels (-1 padding),
        with one padding point appended, as the reference pads point prompts."""
        # (padding built by arithmetic: a traced zeros_like can keep the traced batch)
        coords = torch.cat((coords, coords[:, :1] * 0), dim=1) + 0.5
        labels = torch.cat((labels, labels[:, :1] * 0 - 1), dim=1)
        unit = 2 * (coords / self.image_size) - 1
        proj = 2 * math.pi * (unit @ self.pe.shared_embedding.positional_embedding)
        emb = torch.cat((proj.sin(), proj.cos()), dim=-1)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.pe.not_a_point_embed.weight, emb)
        for k in range(self.pe.point_embed.num_embeddings):
            emb = emb + (lab == k).to(emb.dtype) * self.pe.point_embed.weight[k]
        return emb[:, None]

    def forward(self, image_embed: Tensor, feat_s0: Tensor, feat_s1: Tensor,
                point_coords: Tensor, point_labels: Tensor, mask_input: Tensor,
                support_mask: Tensor, has_mask_input: Tensor, mask_from_support: Tensor,
                no_memory: Tensor, multimask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, C = image_embed.shape[0], image_embed.shape[1]
        dec = self.dec
        embed = image_embed + no_memory[:, :, None, None] * self.no_mem.reshape(1, C, 1, 1)
        u = mask_from_support[:, :, None, None]
        mask_prompt = (1 - u) * mask_input + u * self.mask_downsample(support_mask)
        has = torch.maximum(has_mask_input, mask_from_support)[:, :, None, None]
        dense = has * self.pe.mask_embed(mask_prompt) + (1 - has) * (
            self.pe.no_mask_embed.weight.reshape(1, C, 1, 1))
        sparse = self._points(point_coords, point_labels)
        out_tokens = torch.cat((dec.obj_score_token.weight, dec.iou_token.weight,
                                dec.mask_tokens.weight))
        tokens = torch.cat((out_tokens[None, None].expand(B, 1, -1, -1), sparse), dim=2)
        pos = self.dense_pe.expand(B, -1, -1, -1)
        h, w = image_embed.shape[2], image_embed.shape[3]
        queries, keys = dec.transformer(point_embeddings=tokens, image_embeddings=embed + dense,
                                        image_positional_embeddings=pos,
                                        attention_similarity=None)
        n_mask = int(dec.num_mask_tokens)
        mask_tokens = queries[:, 0, 2:2 + n_mask]  # [B, 4, C]
        img = keys[:, 0].transpose(1, 2).reshape(B, C, h, w)
        up = dec.activation(dec.upscale_layer_norm(dec.upscale_conv1(img) + feat_s1))
        up = dec.activation(dec.upscale_conv2(up) + feat_s0)
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens[:, i])
                             for i in range(n_mask)], dim=1)  # [B, 4, C/8]
        lo = up.shape[-1]
        masks = (hyper @ up.flatten(2)).unflatten(2, (lo, lo))  # [B, 4, lo, lo]
        iou = dec.iou_prediction_head(queries[:, 0, 1])  # [B, 4]
        obj_logits = dec.pred_obj_score_head(queries[:, 0, 0])  # [B, 1]
        # Best of the multimask outputs 1..3 by predicted IoU.
        best = torch.argmax(iou[:, 1:], dim=-1, keepdim=True) + 1  # [B,1]
        best_mask = torch.gather(masks, 1, best[:, :, None, None].expand(B, 1, lo, lo))
        best_iou = torch.gather(iou, 1, best)
        best_tok = torch.gather(mask_tokens, 1, best[:, :, None].expand(B, 1, C))[:, 0]
        single_mask, single_iou = masks[:, :1], iou[:, :1]
        if self.stability:  # single-mask output falls back to the best when unstable
            logits = single_mask.flatten(1)
            inter = (logits > self.delta).float().sum(dim=1, keepdim=True)
            union = (logits > -self.delta).float().sum(dim=1, keepdim=True)
            score = inter / union.clamp(min=1) + (union <= 0).float()  # 1 when empty
            stable = score >= self.thresh  # [B,1]
            single_mask = torch.where(stable[:, :, None, None], single_mask, best_mask)
            single_iou = torch.where(stable, single_iou, best_iou)
        mm = multimask > 0.5
        sel_mask = torch.where(mm[:, :, None, None], best_mask, single_mask)
        sel_iou = torch.where(mm, best_iou, single_iou)
        token = torch.where(mm, best_tok, mask_tokens[:, 0])
        appearing = obj_logits > 0
        sel_mask = torch.where(appearing[:, :, None, None], sel_mask, NO_OBJ_SCORE)
        lam = appearing.float()
        obj_ptr = lam * self.ptr_proj(token) + (1 - lam) * self.no_obj_ptr
        # Support rows: object score and pointer mixing from the mask itself.
        present = (support_mask.flatten(1).amax(dim=1, keepdim=True) > 0).float()
        lam_s = 1 - mask_from_support * (1 - present)
        obj_ptr = lam_s * obj_ptr + (1 - lam_s) * self.no_obj_ptr
        obj_logits = mask_from_support * (20.0 * present - 10.0) + (
            1 - mask_from_support) * obj_logits
        sel_iou = mask_from_support + (1 - mask_from_support) * sel_iou
        return sel_mask, sel_iou, obj_ptr, obj_logits


class EdgeTamMemoryEncoder(nn.Module):
    """``feat_top [B,C,f,f]``, ``mask_logits [B,1,h,w]``, ``object_score_logits [B,1]``,
    ``binarize [B,1]`` -> ``maskmem_features [B,T,M]``: mask fusion as SAM 2, the
    no-object embedding, then the spatial perceiver (global latents, window latents)."""

    in_pos: Tensor
    enc: Any
    per: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        geom = edgetam_geometry(model)
        self.enc = model.memory_encoder
        self.image_size, self.f = geom.image_size, geom.feat
        self.scale = float(model.config.sigmoid_scale_for_mem_enc)
        self.bias = float(model.config.sigmoid_bias_for_mem_enc)
        self.no_obj = model.occlusion_spatial_embedding_parameter  # [1, M] or None
        self.per = model.spatial_perceiver
        self.grid = geom.mem_grid
        with torch.no_grad():
            pos = self.enc.position_encoding((1, geom.mem_dim, self.f, self.f), "cpu",
                                             torch.float32)
        self.register_buffer("in_pos", pos.flatten(2).transpose(1, 2).contiguous())  # [1,hw,M]

    @staticmethod
    def _attention(attn: Any, q: Tensor, kv: Tensor, pos: Tensor | None) -> Tensor:
        """The perceiver's attention: position encodings added to projected keys and
        values."""
        heads = int(attn.num_attention_heads)
        k, v = attn.k_proj(kv), attn.v_proj(kv)
        if pos is not None:
            k, v = k + pos, v + pos

        def split(t: Tensor) -> Tensor:
            return t.unflatten(-1, (heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(attn.q_proj(q)), split(k), split(v))
        return attn.o_proj(out.transpose(1, 2).flatten(2))

    def _perceive(self, latents: Tensor, x: Tensor, pos: Tensor | None) -> Tensor:
        for layer in self.per.layers:
            latents = latents + self._attention(layer.cross_attention,
                                                layer.layer_norm_latents(latents),
                                                layer.layer_norm_input(x), pos)
            latents = latents + layer.mlp(latents)
            t = layer.layer_norm_self(latents)
            latents = latents + self._attention(layer.self_attention, t, t, None)
            latents = latents + layer.self_mlp(latents)
        return self.per.layer_norm(latents)

    def forward(self, feat_top: Tensor, mask_logits: Tensor, object_score_logits: Tensor,
                binarize: Tensor) -> Tensor:
        S = self.image_size
        high = F.interpolate(mask_logits, size=(S, S), mode="bilinear", align_corners=False)
        b = binarize[:, :, None, None]
        mask = b * (high > 0).float() + (1 - b) * torch.sigmoid(high)
        enc = self.enc
        feats = enc.feature_projection(feat_top) + enc.mask_downsampler(mask * self.scale
                                                                        + self.bias)
        feats = enc.projection(enc.memory_fuser(feats))  # [B, M, f, f]
        if self.no_obj is not None:
            absent = 1.0 - (object_score_logits > 0).float()
            feats = feats + absent[:, :, None, None] * self.no_obj[:, :, None, None]
        B, M, f = feats.shape[0], feats.shape[1], self.f
        tokens = feats.flatten(2).transpose(1, 2)  # [B, hw, M]
        out = []
        per = self.per
        if per.num_latents_1d > 0:
            lat = per.latents_1d[None].expand(B, -1, -1)
            out.append(self._perceive(lat, tokens, self.in_pos))
        if per.num_latents_2d > 0:
            g, w = self.grid, f // self.grid
            win = feats.reshape(B, M, g, w, g, w).permute(0, 2, 4, 3, 5, 1).reshape(
                B * g * g, w * w, M)
            lat = per.latents_2d[None].expand(B, -1, -1).reshape(B * g * g, 1, M)
            out.append(self._perceive(lat, win, None).reshape(B, g * g, M))
        return torch.cat(out, dim=1)


def build_edgetam_wrappers(model: Any) -> dict[str, nn.Module]:
    """The four export wrappers of a built ``EdgeTamVideoModel``, keyed by component."""
    if model.config.vision_config.num_feature_levels != 3:
        raise NotImplementedError("EdgeTAM with other than 3 feature levels")
    return {
        "image_encoder": EdgeTamImageEncoder(model).eval(),
        "memory_attention": EdgeTamMemoryAttention(model).eval(),
        "mask_decoder": EdgeTamMaskDecoder(model).eval(),
        "memory_encoder": EdgeTamMemoryEncoder(model).eval(),
    }


def wrappers_for_family(model: Any, late_values: bool = True) -> dict[str, nn.Module]:
    """:func:`build_edgetam_wrappers` as the family registry calls it (EdgeTAM's memory
    attention has one form, so ``late_values`` changes nothing)."""
    return build_edgetam_wrappers(model)


def _points_only(x: dict[str, Any]) -> None:
    x["has_mask_input"][:] = 0
    x["mask_from_support"][:] = 0
    x["multimask"][:, 0] = np.arange(len(x["multimask"])) % 2  # both selections


def _mask_only(x: dict[str, Any]) -> None:
    x["point_labels"][:] = -1
    x["point_coords"][:] = 0
    x["has_mask_input"][:] = 1
    x["mask_from_support"][:] = 0


def _support(x: dict[str, Any]) -> None:  # as the engine primes a support
    x["point_labels"][:] = -1
    x["point_coords"][:] = 0
    x["has_mask_input"][:] = 1
    x["no_memory"][:] = 0
    x["mask_from_support"][:] = 1
    x["multimask"][:] = 1  # a support's pointer, as the reference makes it
    x["support_mask"][-1] = 0  # a label absent from this support


def _absent(x: dict[str, Any]) -> None:
    x["object_score_logits"][0] = -abs(x["object_score_logits"][0]) - 0.5
    x["binarize"][:, 0] = np.arange(len(x["binarize"])) % 2


def _given(x: dict[str, Any]) -> None:  # a support's image-size mask, as the engine gives it
    x["mask_logits"] = np.where(x["mask_logits"] > 0, 10.0, -10.0).astype(np.float32)
    x["binarize"][:] = 1


def parity_cases(name: str, geom: Geometry) -> list[tuple[str, dict[str, int], Any]]:
    """Shapes (other than the traced ones) and flag combinations at which each EdgeTAM
    component is compared with transformers: ``(label, axis sizes, input fixer)``."""
    S, small = geom.image_size, {"support_h": 4, "support_w": 4}
    cases: dict[str, list[tuple[str, dict[str, int], Any]]] = {
        "image_encoder": [("batch1", {"batch": 1}, None)],
        "memory_attention": [
            (f"b{b}_frames{fr}_ptrs{p}", {"batch": b, "num_frames": fr, "num_ptrs": p}, None)
            for b, fr, p in ((1, 1, 0), (3, 3, 2), (2, 7, 16))],
        "mask_decoder": [
            ("points_only_b3", {"batch": 3, "num_points": 4, **small}, _points_only),
            ("mask_only_b2", {"batch": 2, "num_points": 1, **small}, _mask_only),
            ("support_b3", {"batch": 3, "num_points": 1, "support_h": S, "support_w": S},
             _support)],
        "memory_encoder": [("absent_b3", {"batch": 3}, _absent),
                           ("given_b2", {"batch": 2, "mask_h": S, "mask_w": S}, _given)],
    }
    return cases[name]
