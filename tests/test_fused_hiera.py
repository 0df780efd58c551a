"""The torch engine's image encoder for SAM 2 on a CPU in BF16 (``FusedImageEncoder``):
each rewritten piece equals sam2's own (max-pooling, window cut and paste with and
without padding, linear layers with their fused GELU and residual), the whole encoder
equals sam2's wrapper exactly in float32, and in BF16 it is as close to float32 as the
unfused BF16 encoder is."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
window = pytest.importorskip("sam2.modeling.backbones.utils")

from sst.tracker.fused_hiera import (  # noqa: E402
    FusedImageEncoder,
    FusedLinear,
    _max_pool,
    _partition,
    _unpartition_add,
    fused_image_encoder,
    onednn_packs,
)

needs_onednn = pytest.mark.skipif(
    not onednn_packs(torch.zeros(1, dtype=torch.bfloat16)),
    reason="PyTorch here has no oneDNN for BF16 linear layers")


@pytest.mark.parametrize("H,W", [(8, 8), (9, 7), (14, 14)])
def test_max_pool_of_a_strided_channels_last_map_is_sams(H, W):
    g = torch.Generator().manual_seed(0)
    whole = torch.randn(2, H, W, 24, generator=g)
    x = whole[..., 8:16]  # a slice of a projection, as the queries are
    want = F.max_pool2d(x.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
    got = _max_pool(x, (2, 2))
    assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("H,ws", [(16, 8), (16, 14), (8, 7), (12, 4)])
def test_window_cut_and_paste_are_sams(H, ws):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, H, H, 6, generator=g)
    want, padded = window.window_partition(x, ws)
    got, got_padded = _partition(x, ws)
    assert got_padded == padded and torch.equal(got, want)
    shortcut = torch.randn(2, H, H, 6, generator=g)
    windows = torch.randn_like(want)
    pasted = shortcut + window.window_unpartition(windows, ws, padded, (H, H))
    assert torch.equal(_unpartition_add(windows, ws, padded, shortcut), pasted)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_is_the_layer_then_gelu_or_the_residual(dtype):
    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(32, 48).to(dtype)
    x = torch.randn(3, 5, 7, 32, generator=g).to(dtype)
    residual = torch.randn(3, 5, 7, 48, generator=g).to(dtype)
    fused = FusedLinear(layer)
    # one BF16 rounding of each sum where PyTorch rounds the product and the sum apart
    tol = 0.0 if dtype == torch.float32 else 0.05
    with torch.no_grad():
        plain = F.linear(x, layer.weight, layer.bias)
        assert (fused(x).float() - plain.float()).abs().max() <= tol
        assert (fused(x, gelu=True).float() - F.gelu(plain).float()).abs().max() <= tol
        assert (fused(x, residual=residual).float()
                - (residual + plain).float()).abs().max() <= 2 * tol
        layer.weight.mul_(2)  # a weight changed in place is packed again
        again = F.linear(x, layer.weight, layer.bias)
        assert (fused(x).float() - again.float()).abs().max() <= 2 * tol


def _encoder(sam2_tiny):
    from sst.export.wrappers import ImageEncoderExport

    return ImageEncoderExport(sam2_tiny).eval()


def _image(size, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 3, size, size, generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last)


def test_fused_encoder_equals_sams_wrapper_in_float32(sam2_tiny):
    """At 256 px the last two stages' windows need padding and the first two do not:
    every path of the rewrite runs. In float32 the linear layers are PyTorch's own, so
    the outputs are the same numbers."""
    wrapper = _encoder(sam2_tiny)
    fused = fused_image_encoder(wrapper)
    assert isinstance(fused, FusedImageEncoder)
    image = _image(sam2_tiny.image_size)
    with torch.inference_mode():
        want, got = wrapper(image), fused(image)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        assert (g - w).abs().max() <= 1e-5


@needs_onednn
def test_fused_encoder_in_bf16_is_as_close_to_float32_as_the_unfused_one(sam2_tiny):
    wrapper = _encoder(sam2_tiny)
    low = copy.deepcopy(wrapper).to(torch.bfloat16).to(memory_format=torch.channels_last)
    fused = fused_image_encoder(copy.deepcopy(low))
    image = _image(sam2_tiny.image_size)
    with torch.inference_mode():
        ref = wrapper(image)
        eager = low(image.to(torch.bfloat16))
        got = fused(image.to(torch.bfloat16))
    for r, e, g in zip(ref, eager, got):
        eager_err = float((e.float() - r).abs().max())
        fused_err = float((g.float() - r).abs().max())
        assert fused_err <= 1.5 * eager_err + 0.01, (fused_err, eager_err)


@needs_onednn
def test_the_bf16_torch_engine_on_a_cpu_runs_the_fused_encoder(sam2_tiny):
    from sst.tracker.torch_backend import TorchBackend

    assert isinstance(TorchBackend(sam2_tiny, precision="bf16").wrappers["image_encoder"],
                      FusedImageEncoder)
    assert not isinstance(TorchBackend(sam2_tiny).wrappers["image_encoder"],
                          FusedImageEncoder)


def test_an_encoder_of_another_kind_is_left_as_it_is():
    other = torch.nn.Conv2d(3, 8, 1)
    assert fused_image_encoder(other) is other
