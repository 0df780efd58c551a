"""The torch engine path (the GPU path) on whatever device is here, and its harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sst.tracker.ops import NumpyOps
from sst.tracker.pil_resize import resize_uint8
from sst.tracker.torch_ops import TorchOps

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_resize_is_bit_exact_with_pillow(device):
    """Landscape and square frames (the device path) against PIL.Image.resize."""
    rng = np.random.default_rng(0)
    sizes = [(240, 320), (480, 640), (300, 411), (1024, 1024), (37, 91), (256, 256),
             (17, 800), (599, 600)]
    for (H, W), S in zip(sizes, [256, 1024, 256, 256, 64, 256, 512, 128]):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(img).resize((S, S)))
        got = resize_uint8(torch.from_numpy(img).to(device), (S, S)).cpu().numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"{H}x{W} -> {S}")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_ops_match_the_cpu_path(device):
    """Preprocessing (landscape: on the device; portrait: Pillow, uploaded) is identical
    to the CPU path's; masks made on the device equal the CPU path's."""
    rng = np.random.default_rng(1)
    t_ops, n_ops = TorchOps(device), NumpyOps()
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((240, 320, 3), (320, 240, 3))]
    np.testing.assert_array_equal(t_ops.preprocess(images, 128).cpu().numpy(),
                                  n_ops.preprocess(images, 128))
    low = rng.normal(0, 3, (5, 64, 64)).astype(np.float32)
    labels, sizes = [[1, 2], [3, 7, 9]], [(100, 130), (48, 40)]
    got = t_ops.to_masks(torch.from_numpy(low).to(device), labels, sizes)
    want = n_ops.to_masks(low, labels, sizes)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert float((g == w).mean()) >= 0.999  # float ties may differ in the last bit
    stored = t_ops.store_memory(torch.from_numpy(low[:2, None]).to(device))
    assert stored.dtype == torch.bfloat16 and stored.device.type == device
    assert t_ops.bytes_in > 0 and t_ops.bytes_out == sum(m.nbytes for m in got)


def test_gpu_harness_quick_run_on_this_machine(tmp_path):
    """``python -m sst.benchmarks.gpu --device cpu --quick``: every part runs and
    parity with sam2's predictor holds."""
    from sst.benchmarks.gpu.harness import PARITY_ATOL, main

    assert main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_cpu_256_quick.json").read_text())
    assert res["parity"]["passed"] and res["parity"]["max_abs_logit_diff"] <= PARITY_ATOL
    bf16 = res["precision"]["bf16"]
    assert 0.0 <= bf16["worst_mask_iou"] <= bf16["median_mask_iou"] <= 1.0
    seq = res["throughput"]["engine"]["fp32"]["sequential"]
    assert [r["sessions"] for r in seq] == [1, 2] and all(r["frames_per_s"] > 0 for r in seq)
    assert res["throughput"]["sam2"]["eager"]["frames_per_s"] > 0
    assert (tmp_path / "gpu_cpu_256_quick.png").stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_gpu_harness_on_cuda(tmp_path):
    from sst.benchmarks.gpu.harness import main

    assert main(["--device", "cuda", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_cuda_256_quick.json").read_text())
    assert res["precision"]["fp16"]["median_mask_iou"] >= 0.9
