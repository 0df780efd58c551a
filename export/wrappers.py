"""Export wrappers: one small ``nn.Module`` per served component.

These modules exist for export. They hold no weights of their own: each one wraps the
submodules of a built sam2 ``SAM2Base`` and replaces sam2's Python branches with flag
tensors and tensor arithmetic, so that one graph covers every case the tracker needs.
Constants that depend only on the image size (position encodings, RoPE tables) are
computed once at construction and stored as buffers, shared by every layer.

Shapes use ``B`` = batch (objects), ``C`` = hidden dim (256), ``M`` = memory dim (64),
``f`` = ``image_size // 16``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sst.export.memory_bank import bank_tokens, sine_1d
from sst.export.specs import NO_OBJ_SCORE, Geometry

__all__ = [
    "ImageEncoderExport",
    "MemoryAttentionExport",
    "MaskDecoderExport",
    "MemoryEncoderExport",
    "build_wrappers",
    "geometry_of",
]


def geometry_of(model: Any) -> Geometry:
    """The :class:`Geometry` of a built sam2 model."""
    dec = model.sam_mask_decoder
    return Geometry(
        image_size=int(model.image_size),
        hidden_dim=int(model.hidden_dim),
        mem_dim=int(model.mem_dim),
        s0_dim=int(dec.conv_s0.out_channels),
        s1_dim=int(dec.conv_s1.out_channels),
        num_maskmem=int(model.num_maskmem),
        max_obj_ptrs=int(model.max_obj_ptrs_in_encoder),
    )


def _check_supported(model: Any) -> None:
    """The wrappers implement the configuration SST uses (all SAM 2 / 2.1 checkpoints)."""
    need = {
        "use_high_res_features_in_sam": True,
        "use_obj_ptrs_in_encoder": True,
        "pred_obj_scores": True,
        "directly_add_no_mem_embed": True,
        "binarize_mask_from_pts_for_mem_enc": False,
        "non_overlap_masks_for_mem_enc": False,
        "soft_no_obj_ptr": False,
    }
    bad = {k: getattr(model, k) for k, v in need.items() if getattr(model, k) != v}
    if bad:
        raise NotImplementedError(f"unsupported sam2 configuration for export: {bad}")


def _pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``; a 1x1 convolution as a matrix product over channels-last pixels
    (Hiera's outputs are channels-last underneath their NCHW view), which spares the
    layout conversions a convolution makes of them: the same sums."""
    if (conv.kernel_size, conv.stride, conv.padding, conv.groups) != ((1, 1), (1, 1),
                                                                       (0, 0), 1):
        return conv(x)
    return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(
        0, 3, 1, 2)


class ImageEncoderExport(nn.Module):
    """``image [B,3,S,S]`` -> ``feat_s0 [B,32,4f,4f]``, ``feat_s1 [B,64,2f,2f]``,
    ``feat_top [B,C,f,f]``. ``conv_s0``/``conv_s1`` are applied here, as in
    ``SAM2Base.forward_image``; position encodings are constants of the other graphs."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        _check_supported(model)
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1
        trunk = model.image_encoder.trunk
        # Hiera resizes its learned position embedding (bicubic) to the patch grid on
        # every call. The grid is fixed by the image size, so the result is a constant:
        # evaluated once here it costs nothing per frame (as a graph op it was ~23% of the
        # ONNX Runtime encoder time at 1024 px).
        side = int(model.image_size) // int(trunk.patch_embed.proj.stride[0])
        with torch.no_grad():
            pos = trunk._get_pos_embed((side, side))  # [1, H, W, C]
        # Kept as [H, W, C], broadcast over the batch: with three axes it keeps its own
        # layout when the module is converted to channels-last (which takes every 4-D
        # tensor for NCHW; adding the table then read it across the grain).
        self.register_buffer("trunk_pos_embed", pos.detach()[0].contiguous(),
                             persistent=False)

    def _trunk(self, image: Tensor, blocks: Any = None) -> list[Tensor]:
        """``Hiera.forward`` with the position embedding taken from the buffer; ``blocks``
        stand in for the trunk's own where given."""
        trunk = self.image_encoder.trunk
        x = trunk.patch_embed(image) + self.trunk_pos_embed
        feats = []
        for i, blk in enumerate(trunk.blocks if blocks is None else blocks):
            x = blk(x)
            if i == trunk.stage_ends[-1] or (i in trunk.stage_ends
                                             and trunk.return_interm_layers):
                feats.append(x.permute(0, 3, 1, 2))
        return feats

    def _neck(self, xs: list[Tensor], lateral: Any = None) -> list[Tensor]:
        """``FpnNeck.forward`` without its position encodings (constants of the other
        graphs, unused here: in PyTorch they cost a sixth of the encoder's time at
        512 px). Nearest-neighbour upsampling is exact in any dtype, so it runs in the
        features' own; another mode runs in float32, as sam2 runs it. ``lateral(j, x)``
        stands in for the neck's ``j``-th 1x1 convolution where given."""
        neck = self.image_encoder.neck
        out: list[Tensor] = [xs[0]] * len(neck.convs)
        prev: Tensor | None = None
        n = len(neck.convs) - 1
        for i in range(n, -1, -1):
            side = (lateral(n - i, xs[i]) if lateral is not None
                    else _pointwise(neck.convs[n - i].conv, xs[i]))
            if i in neck.fpn_top_down_levels and prev is not None:
                nearest = neck.fpn_interp_model == "nearest"
                top_down = F.interpolate(
                    prev if nearest else prev.float(), scale_factor=2.0,
                    mode=neck.fpn_interp_model, align_corners=None if nearest else False,
                    antialias=False)
                prev = side + top_down.to(side.dtype)
                if neck.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = side
            out[i] = prev
        return out

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode(image)

    def encode(self, image: Tensor, blocks: Any = None, lateral: Any = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`, with ``blocks`` (see :meth:`_trunk`) and ``lateral`` (see
        :meth:`_neck`) standing in for sam2's where given."""
        encoder = self.image_encoder
        fpn = self._neck(self._trunk(image, blocks), lateral)
        if encoder.scalp > 0:
            fpn = fpn[: -encoder.scalp]
        return self.conv_s0(fpn[0]), self.conv_s1(fpn[1]), fpn[2]


def _rope_tables(attn: Any, side: int) -> tuple[Tensor, Tensor]:
    """RoPE tables ``cos, sin [side*side, head_dim]`` from sam2's own complex
    ``compute_axial_cis`` (evaluated once, at export time), one entry per channel of a
    rotated pair: ``cos`` is each pair's cosine twice, ``sin`` its sine negated for the
    pair's first channel (see :func:`_rotate`)."""
    cis = attn.compute_cis(end_x=side, end_y=side)
    cos, sin = cis.real.float(), cis.imag.float()
    return (torch.stack((cos, cos), dim=-1).flatten(-2).contiguous(),
            torch.stack((-sin, sin), dim=-1).flatten(-2).contiguous())


def _rotate(x: Tensor, swapped: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive channel pairs ``(x0, x1)`` of ``x [..., N, D]`` by per-token
    angles: ``(x0 cos - x1 sin, x1 cos + x0 sin)``, the real form of sam2's
    ``apply_rotary_enc``. ``swapped`` is ``x`` with each pair's channels exchanged,
    which the projection computes alongside ``x`` (:func:`_with_swapped_pairs`), so the
    rotation is two products and a sum over contiguous memory, with no strided access."""
    return torch.addcmul(x * cos, swapped, sin)


def _with_swapped_pairs(linear: nn.Linear) -> nn.Linear:
    """``linear`` with its output doubled: its own rows, then the same rows with each
    channel pair exchanged. Every output is the same dot product as before, so the
    second half is the first with its pairs swapped, exactly."""
    out_features, in_features = linear.weight.shape
    swap = torch.arange(out_features).view(-1, 2).flip(-1).flatten()
    doubled = nn.Linear(in_features, 2 * out_features, bias=linear.bias is not None)
    doubled.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        doubled.weight.copy_(torch.cat((linear.weight, linear.weight[swap])))
        if linear.bias is not None:
            doubled.bias.copy_(torch.cat((linear.bias, linear.bias[swap])))
    return doubled


class _RoPEAttention(nn.Module):
    """sam2's ``RoPEAttention`` with real-valued rotations and externally supplied
    tables. The query and key projections also give their outputs with channel pairs
    swapped (:func:`_with_swapped_pairs`), for :func:`_rotate`."""

    def __init__(self, attn: Any, late_values: bool = True) -> None:
        super().__init__()
        self.q_proj = _with_swapped_pairs(attn.q_proj)
        self.k_proj = _with_swapped_pairs(attn.k_proj)
        self.v_proj, self.out_proj = attn.v_proj, attn.out_proj
        self.num_heads = int(attn.num_heads)
        # Single head with narrow values (cross-attention to 64-d memories): project the
        # values *after* weighting them. softmax rows sum to 1, so
        # attn @ (v W^T + b) == (attn @ v) W^T + b, and the large N x L product runs over
        # 64 channels instead of 256. Exact up to float reassociation.
        # (PyTorch's fused CPU attention needs equal key and value widths, so the PyTorch
        # engine turns this off.)
        self.late_v = (late_values and self.num_heads == 1
                       and int(attn.kv_in_dim) < int(attn.internal_dim))

    def _heads(self, x: Tensor) -> Tensor:  # [B, N, H*d] -> [B, H, N, d]
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def _rotated(self, proj: nn.Linear, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        both = proj(x)
        half = both.shape[-1] // 2
        return _rotate(self._heads(both[..., :half]), self._heads(both[..., half:]), cos, sin)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor,
                k_cos: Tensor, k_sin: Tensor, num_k_rope: int | None = None) -> Tensor:
        q = self._rotated(self.q_proj, q, cos, sin)
        if num_k_rope is None:
            k = self._rotated(self.k_proj, k, k_cos, k_sin)
        else:  # object-pointer tokens at the end of the keys get no rotation
            both = self.k_proj(k)
            half = both.shape[-1] // 2
            plain, swapped = self._heads(both[..., :half]), self._heads(both[..., half:])
            k = torch.cat((_rotate(plain[:, :, :num_k_rope], swapped[:, :, :num_k_rope],
                                   k_cos, k_sin), plain[:, :, num_k_rope:]), dim=2)
        if not self.late_v:
            v = self._heads(self.v_proj(v))
        if self.late_v:
            out = self.v_proj(F.scaled_dot_product_attention(q, k, v[:, None])[:, 0])
        else:
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class MemoryAttentionExport(nn.Module):
    """Memory attention over raw stored memories, with the learned temporal encodings inside.

    Inputs: ``feat_top [B,C,f,f]``, ``memory [B,F,M,f,f]``, ``memory_tpos [B,F]`` (int64
    t_pos: 0 for conditioning frames, ``num_maskmem - k`` for the frame k steps back),
    ``obj_ptrs [B,P,C]``, ``obj_ptr_tpos [B,P]`` (signed frame distance divided by
    ``max_obj_ptrs - 1``, or by ``num_frames - 1`` for videos shorter than that).
    Output: ``conditioned [B,C,f,f]``: what sam2's ``_prepare_memory_conditioned_features``
    returns for a non-initial frame.
    """

    curr_pos: Tensor
    mem_pos: Tensor
    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, model: Any, late_values: bool = True) -> None:
        super().__init__()
        _check_supported(model)
        geom = geometry_of(model)
        self.f, self.C, self.M = geom.feat, geom.hidden_dim, geom.mem_dim
        self.num_maskmem = geom.num_maskmem
        ma = model.memory_attention
        self.layers = nn.ModuleList(ma.layers)
        self.norm = ma.norm
        self.pos_enc_at_input = bool(ma.pos_enc_at_input)
        self.maskmem_tpos_enc = model.maskmem_tpos_enc  # [num_maskmem, 1, 1, M]
        self.obj_ptr_tpos_proj = model.obj_ptr_tpos_proj
        self.proj_tpos = bool(model.proj_tpos_enc_in_obj_ptrs)
        assert model.add_tpos_enc_to_obj_ptrs, "unsupported: add_tpos_enc_to_obj_ptrs=False"
        self.self_attn = nn.ModuleList(_RoPEAttention(layer.self_attn) for layer in ma.layers)
        self.cross_attn = nn.ModuleList(
            _RoPEAttention(layer.cross_attn_image, late_values) for layer in ma.layers)
        f = self.f
        # Constants: the current frame's position encoding (top level of the image
        # encoder's neck) and the memories' position encoding (memory encoder).
        dummy_top = torch.zeros(1, self.C, f, f)
        curr_pos = model.image_encoder.neck.position_encoding(dummy_top)  # [1,C,f,f]
        mem_pos = model.memory_encoder.position_encoding(torch.zeros(1, self.M, f, f))
        self.register_buffer("curr_pos", curr_pos.flatten(2).transpose(1, 2).contiguous(),
                             persistent=True)  # [1, f*f, C]
        self.register_buffer("mem_pos", mem_pos.flatten(2).transpose(1, 2)[:, None].contiguous(),
                             persistent=True)  # [1, 1, f*f, M]
        # One RoPE table for all layers (sam2 keeps a copy per attention module).
        cos, sin = _rope_tables(ma.layers[0].self_attn, f)
        for layer in ma.layers:
            for a in (layer.self_attn, layer.cross_attn_image):
                c2, s2 = _rope_tables(a, f)
                if not (torch.equal(c2, cos) and torch.equal(s2, sin)):
                    raise NotImplementedError("attention layers with different RoPE tables")
        self.register_buffer("rope_cos", cos, persistent=True)
        self.register_buffer("rope_sin", sin, persistent=True)
        self.layer_flags = [
            (bool(layer.pos_enc_at_attn), bool(layer.pos_enc_at_cross_attn_queries),
             bool(layer.pos_enc_at_cross_attn_keys)) for layer in ma.layers
        ]

    def _ptr_pos(self, tpos: Tensor) -> Tensor:
        """sam2's 1-D sine encoding of the normalised distance, then the learned projection."""
        pe = sine_1d(tpos, dim=self.C if self.proj_tpos else self.M)
        return self.obj_ptr_tpos_proj(pe)  # [B, P, M]

    def forward(self, feat_top: Tensor, memory: Tensor, memory_tpos: Tensor,
                obj_ptrs: Tensor, obj_ptr_tpos: Tensor) -> Tensor:
        B, f, C, M = feat_top.shape[0], self.f, self.C, self.M
        x = feat_top.flatten(2).transpose(1, 2)  # [B, hw, C]
        curr_pos = self.curr_pos
        if self.pos_enc_at_input:
            x = x + curr_pos * 0.1
        # Spatial memories [B, F*hw, M], then the pointers' tokens, with their positions.
        num_frames = memory.shape[1]
        mem = memory.flatten(3).transpose(2, 3).flatten(1, 2)
        memory_tokens, memory_pos = bank_tokens(
            mem, self.mem_pos, self.maskmem_tpos_enc, memory_tpos, obj_ptrs,
            self._ptr_pos(obj_ptr_tpos), C // M)
        k_cos = self.rope_cos.repeat(num_frames, 1)
        k_sin = self.rope_sin.repeat(num_frames, 1)
        num_k_rope: int | None = num_frames * f * f
        if not torch.onnx.is_in_onnx_export():
            # In PyTorch: no rotation for the pointer tokens is cos 1, sin 0 (exact), so
            # every layer rotates its keys in one pass, with no concatenation. (Traced,
            # the pointer count would become a constant of the graph.)
            num_ptr_tokens = memory_tokens.shape[1] - mem.shape[1]
            unrotated = self.rope_cos.new_ones(num_ptr_tokens, self.rope_cos.shape[1])
            k_cos = torch.cat((k_cos, unrotated))
            k_sin = torch.cat((k_sin, unrotated * 0))
            num_k_rope = None
        cos, sin = self.rope_cos, self.rope_sin
        keyed = memory_tokens + memory_pos  # the same keys for every layer: added once
        layer: Any
        for i, layer in enumerate(self.layers):
            at_attn, at_q, at_k = self.layer_flags[i]
            t2 = layer.norm1(x)
            qk = t2 + curr_pos if at_attn else t2
            x = x + self.self_attn[i](qk, qk, t2, cos, sin, cos, sin)
            t2 = layer.norm2(x)
            q = t2 + curr_pos if at_q else t2
            k = keyed if at_k else memory_tokens
            x = x + self.cross_attn[i](q, k, memory_tokens, cos, sin, k_cos, k_sin,
                                       num_k_rope)
            t2 = layer.norm3(x)
            x = x + layer.linear2(layer.activation(layer.linear1(t2)))
        x = self.norm(x)
        return x.transpose(1, 2).unflatten(2, (f, f)).reshape(B, C, f, f)


class MaskDecoderExport(nn.Module):
    """Prompt encoder + mask decoder + object pointer, as in ``SAM2Base._forward_sam_heads``
    (and ``_use_mask_as_output`` for support frames), with flags instead of branches.

    Inputs (see :mod:`sst.export.specs`): ``image_embed [B,C,f,f]``, ``feat_s0``,
    ``feat_s1``, ``point_coords [B,N,2]``, ``point_labels [B,N]``,
    ``mask_input [B,1,4f,4f]``, ``support_mask [B,1,Hs,Ws]``, flags ``[B,1]``:
    ``has_mask_input``, ``mask_from_support``, ``no_memory``, ``multimask``.

    Outputs: ``mask_logits [B,1,4f,4f]`` (``NO_OBJ_SCORE`` where the object is judged
    absent), ``iou [B,1]``, ``obj_ptr [B,C]`` (with sam2's no-object mixing),
    ``object_score_logits [B,1]``. With ``mask_from_support=1`` the object score and the
    pointer's no-object mixing follow the support mask, as ``_use_mask_as_output`` does.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        _check_supported(model)
        self.pe = model.sam_prompt_encoder
        self.dec = model.sam_mask_decoder
        self.mask_downsample = model.mask_downsample
        self.obj_ptr_proj = model.obj_ptr_proj
        self.no_obj_ptr = model.no_obj_ptr  # [1, C]
        self.no_mem_embed = model.no_mem_embed  # [1, 1, C]
        self.fixed_no_obj_ptr = bool(model.fixed_no_obj_ptr)
        self.use_multimask_token = bool(self.dec.use_multimask_token_for_obj_ptr)
        if self.dec.dynamic_multimask_via_stability:
            raise NotImplementedError("dynamic_multimask_via_stability (apply_postprocessing)")
        self.register_buffer("dense_pe", self.pe.get_dense_pe().detach().clone(),
                             persistent=True)

    def forward(self, image_embed: Tensor, feat_s0: Tensor, feat_s1: Tensor,
                point_coords: Tensor, point_labels: Tensor, mask_input: Tensor,
                support_mask: Tensor, has_mask_input: Tensor, mask_from_support: Tensor,
                no_memory: Tensor, multimask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B = image_embed.shape[0]
        C = image_embed.shape[1]
        # sam2 adds no_mem_embed to the features of a first frame prompted without memory.
        embed = image_embed + no_memory[:, :, None, None] * self.no_mem_embed.reshape(1, C, 1, 1)
        # Mask prompt: the low-res logits given, or mask_downsample(support mask). When
        # mask_from_support=0 the support input may be a Bx1x4x4 placeholder: its
        # downsampled value is multiplied by 0 and broadcast away.
        u = mask_from_support[:, :, None, None]
        mask_prompt = (1 - u) * mask_input + u * self.mask_downsample(support_mask)
        sparse = self.pe._embed_points(point_coords, point_labels, pad=True)
        # a support mask is always a mask prompt, whatever has_mask_input says
        has = torch.maximum(has_mask_input, mask_from_support)[:, :, None, None]
        dense = has * self.pe.mask_downscaling(mask_prompt) + (1 - has) * (
            self.pe.no_mask_embed.weight.reshape(1, C, 1, 1))
        masks, iou, tokens, obj_logits = self.dec.predict_masks(
            image_embeddings=embed, image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            repeat_image=False, high_res_features=[feat_s0, feat_s1])
        # Select: mask 0 (single) or the best of masks 1..3 by predicted IoU (multimask).
        best = torch.argmax(iou[:, 1:], dim=-1, keepdim=True) + 1  # [B,1]
        mm = multimask > 0.5  # [B,1]
        idx = torch.where(mm, best, torch.zeros_like(best))
        lo = masks.shape[-1]
        sel_mask = torch.gather(masks, 1, idx[:, :, None, None].expand(B, 1, lo, lo))
        sel_iou = torch.gather(iou, 1, idx)
        tok_idx = idx if self.use_multimask_token else torch.zeros_like(idx)
        token = torch.gather(tokens, 1, tok_idx[:, :, None].expand(B, 1, C))[:, 0]
        appearing = obj_logits > 0
        sel_mask = torch.where(appearing[:, :, None, None], sel_mask,
                               torch.full_like(sel_mask, NO_OBJ_SCORE))
        lam = appearing.float()
        obj_ptr = self.obj_ptr_proj(token)
        if self.fixed_no_obj_ptr:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * self.no_obj_ptr
        # Support frames: object score from the mask itself (20 * any - 10) and the
        # pointer mixed again by it, exactly as _use_mask_as_output.
        present = (support_mask.flatten(1).amax(dim=1, keepdim=True) > 0).float()  # [B,1]
        support_score = 20.0 * present - 10.0
        lam_s = 1 - mask_from_support * (1 - present)
        if self.fixed_no_obj_ptr:
            obj_ptr = lam_s * obj_ptr
        obj_ptr = obj_ptr + (1 - lam_s) * self.no_obj_ptr
        obj_logits = mask_from_support * support_score + (1 - mask_from_support) * obj_logits
        sel_iou = mask_from_support + (1 - mask_from_support) * sel_iou
        return sel_mask, sel_iou, obj_ptr, obj_logits


class MemoryEncoderExport(nn.Module):
    """``SAM2Base._encode_new_memory`` from low-res logits.

    Inputs: ``feat_top [B,C,f,f]`` (raw image features), ``mask_logits [B,1,4f,4f]``,
    ``object_score_logits [B,1]``. The logits are upsampled to the image size (bilinear,
    as sam2 does before encoding), squashed with the sigmoid scale/bias, encoded, and the
    no-object spatial embedding is added where the object is absent.
    Output: ``maskmem_features [B,M,f,f]``.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        _check_supported(model)
        self.memory_encoder = model.memory_encoder
        self.image_size = int(model.image_size)
        self.scale = float(model.sigmoid_scale_for_mem_enc)
        self.bias = float(model.sigmoid_bias_for_mem_enc)
        self.no_obj_embed_spatial = model.no_obj_embed_spatial  # [1, M] or None

    def forward(self, feat_top: Tensor, mask_logits: Tensor,
                object_score_logits: Tensor) -> Tensor:
        high = F.interpolate(mask_logits, size=(self.image_size, self.image_size),
                             mode="bilinear", align_corners=False)
        mask_for_mem = torch.sigmoid(high) * self.scale + self.bias
        feats = self.memory_encoder(feat_top, mask_for_mem, skip_mask_sigmoid=True)
        out = feats["vision_features"]
        if self.no_obj_embed_spatial is not None:
            absent = 1.0 - (object_score_logits > 0).float()  # [B,1]
            out = out + absent[:, :, None, None] * self.no_obj_embed_spatial[:, :, None, None]
        return out


def build_wrappers(model: Any, late_values: bool = True) -> dict[str, nn.Module]:
    """The four export wrappers of a built model, keyed by component name.
    ``late_values=False`` keeps sam2's value projection order (faster in PyTorch)."""
    return {
        "image_encoder": ImageEncoderExport(model).eval(),
        "memory_attention": MemoryAttentionExport(model, late_values).eval(),
        "mask_decoder": MaskDecoderExport(model).eval(),
        "memory_encoder": MemoryEncoderExport(model).eval(),
    }
