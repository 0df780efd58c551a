"""The torch engine path (the GPU path) on whatever device is here, and its harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from sst.tracker.ops import NumpyOps
from sst.tracker.pil_resize import device_weights, resize_uint8
from sst.tracker.scheduler import run_step
from sst.tracker.torch_ops import TorchOps

from .synthetic import specimen

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


@pytest.mark.parametrize("device_resize", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_ops_match_the_cpu_path(device, device_resize):
    """Preprocessing (landscape on the device as on a GPU, or Pillow on the host as on
    the CPU; portrait: Pillow, uploaded) is identical to the CPU path's; masks made on
    the device equal the CPU path's."""
    rng = np.random.default_rng(1)
    t_ops, n_ops = TorchOps(device, device_resize=device_resize), NumpyOps()
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


@pytest.mark.parametrize("device", DEVICES)
def test_resize_weights_are_copied_to_the_device_once_per_size(device):
    """After the first frame of a size, a resize copies no weights from the host."""
    rng = np.random.default_rng(2)
    device_weights.cache_clear()
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3)]
    first = resize_uint8(torch.from_numpy(frames[0]).to(device), (256, 256))
    assert device_weights.cache_info().misses == 2  # one matrix per axis
    for f in frames[1:]:
        resize_uint8(torch.from_numpy(f).to(device), (256, 256))
    info = device_weights.cache_info()
    assert (info.misses, info.hits) == (2, 4)
    other = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    resize_uint8(torch.from_numpy(other).to(device), (256, 256))
    assert device_weights.cache_info().misses == 4
    np.testing.assert_array_equal(first.cpu().numpy(),
                                  np.asarray(Image.fromarray(frames[0]).resize((256, 256))))


class _Ops(TorchDispatchMode):
    """The aten operators called inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
def test_take_selects_rows_without_an_index_tensor(device):
    """Ranges, per-frame repeats (each frame's features once per label), ranges of
    several sessions and arbitrary orders equal numpy's fancy indexing; no index tensor
    is made (so none is copied from the host)."""
    ops = TorchOps(device)
    x = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3).to(device)
    host = x.cpu().numpy()
    patterns = [np.arange(2, 5), np.repeat(np.arange(3), 2), np.repeat(np.arange(1, 4), [1, 3, 2]),
                np.concatenate([np.arange(0, 2), np.arange(4, 7)]), np.array([5, 0, 1, 1, 6]),
                np.array([3]), np.array([4, 4, 4])]
    for rows in patterns:
        with _Ops() as seen:
            got = ops.take(x, rows)
        np.testing.assert_array_equal(got.cpu().numpy(), host[rows], err_msg=str(rows))
        assert not [n for n in seen.names if "index" in n or "_to_copy" in n], (rows, seen.names)
    with pytest.raises(IndexError, match="out of range for 7"):
        ops.take(x, np.array([1, 7]))


@pytest.mark.slow
def test_engine_steps_upload_only_their_frames_and_time_tables(sam2_tiny):
    """TorchOps counts every host -> device copy: after the first step, a step copies its
    frames' pixels and the small time-position tables, nothing else (no resize weights,
    label tables or row indices)."""
    from sst.tracker.engine import Engine, Frame
    from sst.tracker.torch_backend import TorchBackend

    backend = TorchBackend(sam2_tiny, device="cpu")
    ops = backend.ops
    ops.device_resize = True  # as on a GPU (on the CPU, Pillow resizes on the host)
    uploads: list[tuple[str, tuple[int, ...]]] = []
    real = ops._upload

    def counted(host):
        uploads.append((str(host.dtype), tuple(host.shape)))
        return real(host)

    ops._upload = counted
    engine = Engine(backend)
    sup = [specimen(0, labels=(1, 2)), specimen(1, labels=(3,))]
    sessions = engine.open_sessions([[s] for s in sup])
    device_weights.cache_clear()
    per_step = []
    for i in range(3):
        uploads.clear()
        frames = [Frame(s, specimen(10 + i)[0]) for s in sessions]
        run_step(engine, frames)
        per_step.append(list(uploads))
    for step in per_step[1:]:
        images = [u for u in step if u[0] == "uint8" and len(u[1]) == 3]
        assert len(images) == len(sessions)
        others = [u for u in step if u not in images]
        assert all(u[0] in ("int64", "float32") and len(u[1]) <= 2
                   and int(np.prod(u[1])) <= 1024 for u in others), others
        assert len(others) <= 4, others  # memory and pointer time positions
    assert device_weights.cache_info().misses == 2  # the first step's frame size, once


class _HostOnly:
    """A backend without ``ops``: its outputs are post-processed by NumpyOps on the host."""

    def __init__(self, backend):
        self.meta, self._backend = backend.meta, backend

    def run(self, component, feeds):
        return {k: v.cpu().numpy() for k, v in self._backend.run(component, feeds).items()}


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_prompts_run_on_the_backends_device(sam2_tiny, device):
    """``sst mask from-prompts --engine torch --device D``: the image-prompt path keeps
    the torch backend's tensors on its device (its own ops) and gives the masks the host
    path gives."""
    from sst.export.sam2_model import build_sam2_model
    from sst.tracker.apps.prompts import segment_prompt
    from sst.tracker.torch_backend import TorchBackend

    from .conftest import TEST_IMAGE_SIZE, TEST_MODEL, TEST_SEED

    host = TorchBackend(sam2_tiny)
    model = sam2_tiny if device == "cpu" else build_sam2_model(
        TEST_MODEL, random_weights=True, seed=TEST_SEED, image_size=TEST_IMAGE_SIZE,
        device=device)
    backend = TorchBackend(model, device=device)
    rgb = specimen(3)[0]
    for points, box in (([(160.0, 120.0, 1)], None),
                        ([(150.0, 118.0, 1)], (100.0, 60.0, 230.0, 190.0))):
        got = segment_prompt(backend, rgb, points, box)
        want = segment_prompt(_HostOnly(host), rgb, points, box)
        assert got.ops is backend.ops and isinstance(got.object_scores, np.ndarray)
        assert got.mask.shape == want.mask.shape == rgb.shape[:2]
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-3)
        assert float((got.mask == want.mask).mean()) >= 0.999
        np.testing.assert_allclose(got.ious, want.ious, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_engine_step_waits_on_the_device_only_for_its_results():
    """On CUDA, with ``torch.cuda.set_sync_debug_mode("error")``, a step of two sessions
    runs without a synchronising call until its masks and scores come back."""
    from sst.export.sam2_model import build_sam2_model
    from sst.tracker.engine import Engine, Frame
    from sst.tracker.torch_backend import TorchBackend

    from .conftest import TEST_IMAGE_SIZE, TEST_MODEL, TEST_SEED

    model = build_sam2_model(TEST_MODEL, random_weights=True, seed=TEST_SEED,
                             image_size=TEST_IMAGE_SIZE, device="cuda")
    backend = TorchBackend(model, precision="bf16", device="cuda")
    ops = backend.ops
    results: list[str] = []

    def results_only(name):
        real = getattr(ops, name)

        def wrapped(*args, **kwargs):
            results.append(name)
            torch.cuda.set_sync_debug_mode(0)
            try:
                return real(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return wrapped

    for name in ("to_masks", "to_host"):
        setattr(ops, name, results_only(name))
    engine = Engine(backend)
    sessions = engine.open_sessions([[specimen(0, labels=(1, 2))], [specimen(1, labels=(3,))]])
    run_step(engine, [Frame(s, specimen(10)[0]) for s in sessions])  # warm-up
    torch.cuda.synchronize()
    results.clear()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(2):
            out = run_step(engine, [Frame(s, specimen(11 + i)[0]) for s in sessions])
            assert len(out) == 2
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert results and set(results) == {"to_masks", "to_host"}


@pytest.mark.slow
def test_gpu_harness_quick_run_records_every_part_and_survives_a_failure(tmp_path, monkeypatch):
    """``python -m sst.benchmarks.gpu --device cpu --quick``: parity with sam2's predictor
    holds; one engine configuration that raises is recorded as an error while the others
    run; the JSON on disk already held the earlier parts when that one ran."""
    from sst.benchmarks.gpu import harness

    out = tmp_path / "out"
    seen: dict = {}
    real = harness.time_engine

    def failing(backend, support, queries, sessions, device):
        if backend.autocast is None and sessions == 2:
            seen.update(json.loads((out / "gpu_cpu_256_quick.json").read_text()))
            raise RuntimeError("out of memory (injected)")
        return real(backend, support, queries, sessions, device)

    monkeypatch.setattr(harness, "time_engine", failing)
    argv = ["--device", "cpu", "--quick", "--out", str(out)]
    assert harness.main(argv) == 0
    res = json.loads((out / "gpu_cpu_256_quick.json").read_text())
    assert res["argv"] == argv
    assert res["command"] == "python -m sst.benchmarks.gpu " + " ".join(argv)
    assert res["status"] == "complete"
    assert res["parity"]["passed"] and res["parity"]["max_abs_logit_diff"] <= harness.PARITY_ATOL
    bf16 = res["precision"]["bf16"]
    assert 0.0 <= bf16["worst_mask_iou"] <= bf16["median_mask_iou"] <= 1.0
    assert 0.0 <= res["precision"]["sam2_bf16_vs_fp32"]["median_mask_iou"] <= 1.0
    fp32 = res["throughput"]["engine"]["fp32"]["sequential"]
    assert fp32[0]["sessions"] == 1 and fp32[0]["frames_per_s"] > 0
    assert fp32[1] == {"sessions": 2, "error": "RuntimeError: out of memory (injected)"}
    assert res["errors"] == ["engine fp32 x2: RuntimeError: out of memory (injected)"]
    bf = res["throughput"]["engine"]["bf16"]["sequential"]
    assert [r["sessions"] for r in bf] == [1, 2] and all(r["frames_per_s"] > 0 for r in bf)
    assert bf[1]["vs_sam2_same_precision"] == pytest.approx(
        bf[1]["frames_per_s"] / res["throughput"]["sam2"]["bf16"]["frames_per_s"])
    assert res["throughput"]["engine"]["fp16"] == {"skipped": "fp16 runs on CUDA only"}
    compiled = res["throughput"]["engine"]["bf16-compiled"]["sequential"]  # compiled here too
    assert [r["sessions"] for r in compiled] == [1, 2]
    assert all(r["frames_per_s"] > 0 for r in compiled)
    assert set(res["compile_seconds"]) == {"memory_attention", "memory_encoder", "mask_decoder"}
    assert 0.0 <= res["precision"]["bf16-compiled"]["median_mask_iou"] <= 1.0
    for name in ("fp32", "bf16"):
        sam2 = res["throughput"]["sam2"][name]
        assert sam2["frames_per_s"] > 0 and sam2["frames"] == 2
    assert "--quick" in res["throughput"]["sam2"]["compiled_bf16"]["skipped"]
    assert "engine_best_vs_sam2_best" in res["ratios"]
    iou = res["targets"]["engine_bf16_vs_fp32_median_mask_iou"]
    assert iou["value"] == bf16["median_mask_iou"] and iou["target"] >= 0.98
    assert "note" in res  # a CPU run says its timings are no GPU figures
    # written before the failing configuration ran: parity, sam2 and engine fp32 x1
    assert seen["parity"]["passed"] and seen["throughput"]["sam2"]["fp32"]["frames_per_s"] > 0
    assert seen["throughput"]["engine"]["fp32"]["sequential"][0]["sessions"] == 1
    assert seen["status"] == "running"
    assert (out / "gpu_cpu_256_quick.png").stat().st_size > 0


@pytest.mark.slow
def test_gpu_harness_budget_skips_and_default_out_is_in_the_current_folder(tmp_path,
                                                                           monkeypatch):
    """A budget that fits nothing after parity and precision: every timed part is skipped
    with its reason; without --out the results land in ./sst-gpu-results."""
    from sst.benchmarks.gpu import harness

    monkeypatch.chdir(tmp_path)
    assert harness.main(["--device", "cpu", "--quick", "--budget-s", "0.5"]) == 0
    res = json.loads((tmp_path / "sst-gpu-results" / "gpu_cpu_256_quick.json").read_text())
    assert res["parity"]["passed"] and "bf16" in res["precision"]
    assert res["throughput"]["sam2"]["fp32"]["skipped"].endswith("of --budget-s 0.5")
    seq = res["throughput"]["engine"]["fp32"]["sequential"]
    assert [r["sessions"] for r in seq] == [1, 2]
    assert all(r["skipped"].startswith("skipped: needs about") for r in seq)
    assert len(res["skipped"]) >= 8 and res["errors"] == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_gpu_harness_on_cuda(tmp_path):
    from sst.benchmarks.gpu.harness import main

    assert main(["--device", "cuda", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_cuda_256_quick.json").read_text())
    assert res["errors"] == [] and res["precision"]["fp16"]["median_mask_iou"] >= 0.9
    seq = res["throughput"]["engine"]["fp16"]["sequential"]
    assert all(r["frames_per_s"] > 0 and r["peak_allocated_above_resident_mib"] >= 0
               for r in seq)
