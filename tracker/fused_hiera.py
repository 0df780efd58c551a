"""SAM 2's image encoder (Hiera trunk, FPN neck) for the torch engine, with the same
arithmetic as sam2's modules in fewer passes over memory.

In eager BF16 on a CPU, sam2's Hiera spends as much time moving tensors as multiplying
them: every ``nn.Linear`` with a bias first copies the broadcast bias into its output
(``addmm``), GELU and the residual additions are passes of their own, pooled queries
are copied out of their projection and to NCHW and back, and windows are cut and pasted
with six-axis permutes. Here, block by block:

- linear layers run through oneDNN with their weights packed once
  (``mkldnn._linear_pointwise``), the bias, the MLP's GELU and the MLP's residual
  addition applied in the matrix product's epilogue (BF16 on a CPU with oneDNN; elsewhere
  plain ``F.linear``, ``F.gelu`` and ``+``, as sam2 computes them);
- max-pooling of queries and of the stage-change shortcut is the element-wise maximum
  of strided subsamples of the channels-last map, without layout copies;
- attention reads queries, keys and values as views of their projection;
- windows are cut and put back as 4-D transposes with long contiguous runs;
- the attention output is unpartitioned and added to the shortcut in one pass where
  windows tile the map without padding.

Nothing is approximated: the products, GELU (erf) and maxima are sam2's; a fused
epilogue rounds once where sam2 rounds twice. :func:`fused_image_encoder` returns the
wrapper unchanged for trunks it does not know."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FusedImageEncoder", "FusedLinear", "fused_image_encoder", "onednn_packs"]


def onednn_packs(weight: Tensor) -> bool:
    """Whether :class:`FusedLinear` runs ``weight`` through oneDNN: BF16 on a CPU whose
    PyTorch has oneDNN (elsewhere the fused epilogues are not available)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16
            and torch.backends.mkldnn.is_available())


class FusedLinear(nn.Module):
    """``layer`` (an ``nn.Linear``, or a 1x1 convolution as a product over channels),
    optionally followed by GELU or by adding ``residual``, in one oneDNN call where
    :func:`onednn_packs` holds for its weight. The weight is packed for oneDNN on the
    first such call (laid out for that call's row count; any row count is computed
    exactly) and packed again if the layer's weight has been replaced or changed since."""

    def __init__(self, layer: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        self.layer = layer
        self._packed: tuple[Tensor, Any] | None = None  # (weight packed, packed from)

    def forward(self, x: Tensor, gelu: bool = False, residual: Tensor | None = None
                ) -> Tensor:
        weight, bias = self.layer.weight.flatten(1), self.layer.bias
        if not onednn_packs(weight) or x.dtype != weight.dtype:
            y = F.linear(x, weight, bias)
            if gelu:
                y = F.gelu(y)
            return y if residual is None else residual + y
        source = (weight.data_ptr(), weight.dtype, self.layer.weight._version)
        if self._packed is None or self._packed[1] != source:
            rows = x.numel() // x.shape[-1]
            self._packed = (torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows),
                            source)
        packed = self._packed[0]
        x = x.contiguous()
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(
                x, residual.contiguous(), packed, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(
            x, packed, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def _max_pool(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """``nn.MaxPool2d(stride, stride)`` (floor mode) of a ``[B, H, W, C]`` map (any
    strides: a slice of the query-key-value projection is read in place), as the
    element-wise maximum of its ``sh x sw`` strided subsamples."""
    H, W = x.shape[1:3]
    sh, sw = stride
    h, w = H // sh, W // sw
    out: Tensor | None = None
    for i in range(sh):
        for j in range(sw):
            part = x[:, i: i + h * sh: sh, j: j + w * sw: sw]
            out = part if out is None else torch.maximum(out, part)
    assert out is not None
    return out.contiguous()


def _partition(x: Tensor, ws: int) -> tuple[Tensor, tuple[int, int]]:
    """sam2's ``window_partition``: ``[B, H, W, C]`` zero-padded to whole windows ->
    ``[B * windows, ws, ws, C]``, and the padded size."""
    B, H, W, C = x.shape
    ph, pw = (ws - H % ws) % ws, (ws - W % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    # [B, Hp/ws, ws, Wp/ws, ws*C]: whole window rows move together
    x = x.view(B * (Hp // ws), ws, Wp // ws, ws * C).transpose(1, 2)
    return x.reshape(-1, ws, ws, C), (Hp, Wp)


def _unpartition_add(windows: Tensor, ws: int, padded: tuple[int, int],
                     shortcut: Tensor) -> Tensor:
    """``shortcut + window_unpartition(windows)``: one pass where the windows tile the
    map exactly; sam2's unpartition (a cropping copy) and then the sum otherwise."""
    B, H, W, C = shortcut.shape
    Hp, Wp = padded
    win = windows.view(B * (Hp // ws), Wp // ws, ws, ws * C).transpose(1, 2)
    if (Hp, Wp) == (H, W):
        out = torch.empty_like(shortcut, memory_format=torch.contiguous_format)
        torch.add(shortcut.reshape(B * (H // ws), ws, W // ws, ws * C), win,
                  out=out.view(B * (H // ws), ws, W // ws, ws * C))
        return out
    return shortcut + win.reshape(B, Hp, Wp, C)[:, :H, :W]


class _Block(nn.Module):
    """One sam2 ``MultiScaleBlock`` with its linear layers as :class:`FusedLinear`."""

    def __init__(self, blk: Any) -> None:
        super().__init__()
        self.norm1, self.norm2 = blk.norm1, blk.norm2
        self.window_size = int(blk.window_size)
        self.stride = tuple(blk.q_stride) if blk.q_stride else None
        self.heads = int(blk.attn.num_heads)
        self.dim_out = int(blk.dim_out)
        self.proj = FusedLinear(blk.proj) if blk.dim != blk.dim_out else None
        self.qkv = FusedLinear(blk.attn.qkv)
        self.attn_proj = FusedLinear(blk.attn.proj)
        self.fc1, self.fc2 = (FusedLinear(layer) for layer in blk.mlp.layers)

    def _attention(self, x: Tensor) -> Tensor:
        """sam2's ``MultiScaleAttention`` on ``[B', h, w, C]`` windows (or the map)."""
        Bw, h, w, _ = x.shape
        Co, heads = self.dim_out, self.heads
        qkv = self.qkv(x)  # [Bw, h, w, 3 Co]
        # sdpa reads q, k and v through their strides: views of the projection, no copies
        if self.stride is not None:
            q = _max_pool(qkv[..., :Co], self.stride)
            h, w = q.shape[1:3]
            q = q.view(Bw, h * w, heads, -1).transpose(1, 2)
            k, v = qkv[..., Co:].reshape(Bw, -1, 2, heads, Co // heads).permute(
                2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = qkv.view(Bw, -1, 3, heads, Co // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.attn_proj(out.transpose(1, 2).reshape(Bw, h, w, Co))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            assert self.stride is not None  # sam2 changes width only where it pools
            shortcut = _max_pool(self.proj(x), self.stride)
        ws = self.window_size
        if ws > 0:
            windows, padded = _partition(x, ws)
            out = self._attention(windows)
            if self.stride is not None:
                ws //= self.stride[0]
                H, W = shortcut.shape[1:3]
                padded = (H + (ws - H % ws) % ws, W + (ws - W % ws) % ws)
            x = _unpartition_add(out, ws, padded, shortcut)
        else:
            x = shortcut + self._attention(x)
        return self.fc2(self.fc1(self.norm2(x), gelu=True), residual=x)


def _known_block(blk: Any) -> bool:
    mlp = getattr(blk, "mlp", None)
    return (type(blk).__name__ == "MultiScaleBlock" and mlp is not None
            and len(mlp.layers) == 2 and not getattr(mlp, "sigmoid_output", False)
            and isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
            and isinstance(blk.drop_path, nn.Identity)
            and (not blk.q_stride or _pair(blk.q_stride) == _pair(blk.pool.kernel_size)
                 == _pair(blk.pool.stride)) and not getattr(blk.pool, "ceil_mode", False))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class FusedImageEncoder(nn.Module):
    """``ImageEncoderExport`` (``wrapper``) with its Hiera blocks as :class:`_Block` and
    the neck's 1x1 lateral convolutions as :class:`FusedLinear`; the same inputs and
    outputs."""

    def __init__(self, wrapper: Any) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.blocks = nn.ModuleList(_Block(b) for b in wrapper.image_encoder.trunk.blocks)
        self.laterals = nn.ModuleList(FusedLinear(c.conv) for c in wrapper.image_encoder.neck.convs)

    def _lateral(self, j: int, x: Tensor) -> Tensor:
        # the neck's maps are channels-last underneath their NCHW view
        return self.laterals[j](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.wrapper.encode(image, blocks=self.blocks, lateral=self._lateral)


def fused_image_encoder(wrapper: Any) -> nn.Module:
    """:class:`FusedImageEncoder` of an ``ImageEncoderExport`` over a Hiera trunk whose
    blocks are all of the kind it reproduces; otherwise ``wrapper`` itself."""
    trunk = getattr(getattr(wrapper, "image_encoder", None), "trunk", None)
    blocks = getattr(trunk, "blocks", None)
    if (blocks is None or not hasattr(wrapper, "encode")
            or not all(_known_block(b) for b in blocks)):
        return wrapper
    return FusedImageEncoder(wrapper)
