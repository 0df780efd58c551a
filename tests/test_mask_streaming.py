"""Label masks are made by a running argmax over labels at full size: equal to the
``[K,H,W]`` stack's argmax bit for bit, in memory that does not grow with ``K``."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from sst.tracker.ops import NumpyOps, labels_from_logits, streamed_labels
from sst.tracker.resize import resize_bilinear


def _stacked(low: np.ndarray, labels: list[int], size: tuple[int, int]) -> np.ndarray:
    """The mask as it was made before streaming: the whole ``[K,H,W]`` stack."""
    return labels_from_logits(resize_bilinear(low, size), labels)


@pytest.mark.parametrize("seed", range(12))
def test_streamed_equals_stacked_with_ties_and_many_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 70))
    lo = int(rng.choice([8, 32, 64]))
    low = rng.normal(0, 2, (k, lo, lo)).astype(np.float32)
    if seed % 2 == 0:  # integer logits: many exact ties, and exact zeros
        low = np.round(low).astype(np.float32)
    if k > 3:  # whole planes equal: the first label must win every tie
        low[2] = low[0]
        low[3] = low[1]
    size = (int(rng.integers(8, 300)), int(rng.integers(8, 300)))
    top = 300 if seed % 4 == 1 else 256  # labels over 255: a uint16 mask
    labels = sorted(int(v) for v in rng.choice(np.arange(1, top), k, replace=False))
    want = _stacked(low, labels, size)
    got = streamed_labels(low, labels, size)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


def test_streamed_ties_zero_threshold_and_nan() -> None:
    low = np.zeros((4, 16, 16), np.float32)  # every logit 0: never positive -> 0
    assert not streamed_labels(low, [1, 2, 3, 4], (40, 40)).any()
    low[1:] = 1.5  # three equal positive planes: the first of them
    assert (streamed_labels(low, [5, 6, 7, 8], (40, 40)) == 6).all()
    rng = np.random.default_rng(3)
    low = rng.normal(0, 3, (6, 16, 16)).astype(np.float32)
    low[2, 4, 4] = np.nan
    low[4, 9, 9] = np.inf
    low[1, 9, 10] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = _stacked(low, [1, 2, 3, 4, 5, 6], (50, 70))
        got = streamed_labels(low, [1, 2, 3, 4, 5, 6], (50, 70))
    assert np.array_equal(got, want)
    assert streamed_labels(low[:0], [], (9, 10)).shape == (9, 10)


def test_to_masks_of_several_frames_equal_stacked() -> None:
    rng = np.random.default_rng(7)
    labels = [[1, 2, 3], [4], [1, 9, 10, 11, 12]]
    sizes = [(120, 90), (33, 200), (64, 64)]
    low = np.round(rng.normal(0, 2, (9, 32, 32))).astype(np.float32)
    got = NumpyOps().to_masks(low, labels, sizes)
    r = 0
    for labs, size, mask in zip(labels, sizes, got):
        assert np.array_equal(mask, _stacked(low[r:r + len(labs)], labs, size))
        r += len(labs)


def test_peak_memory_does_not_grow_with_labels() -> None:
    """K = 16 at 2000 x 2000: the stack alone would be 256 MB of float32; the running
    argmax holds about two float32 planes (32 MB) and a few byte planes."""
    k, size = 16, (2000, 2000)
    low = np.random.default_rng(0).normal(0, 3, (k, 256, 256)).astype(np.float32)
    stack_bytes = k * size[0] * size[1] * 4
    tracemalloc.start()
    try:
        mask = streamed_labels(low, list(range(1, k + 1)), size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mask.shape == size
    assert peak < 3 * size[0] * size[1] * 4, (peak, stack_bytes)
    assert peak < stack_bytes / 5


@pytest.mark.parametrize("k", [12, 300])
def test_torch_masks_stream_too(k: int) -> None:
    """One label at a time (a CPU's default), a few at a time and all at once give the
    stack's ``max`` bit for bit: ties to the first label, a NaN counted as not positive,
    label values over 255 (a uint16 mask) and over 255 labels (a wider index)."""
    torch = pytest.importorskip("torch")
    from sst.tracker import torch_ops
    from sst.tracker.torch_ops import TorchOps

    rng = np.random.default_rng(5)
    size = (150, 170)
    low = np.round(rng.normal(0, 2, (k, 32, 32))).astype(np.float32)
    low[3] = low[1]
    low[5, 4, 4] = np.nan
    labels = list(range(2, 2 + 7 * k, 7))

    def masks(chunk_bytes: int | None) -> np.ndarray:
        ops = TorchOps("cpu", mask_chunk_bytes=chunk_bytes)
        return ops.to_masks(torch.from_numpy(low), [labels], [size])[0]

    assert TorchOps("cpu").mask_chunk_bytes == 0  # one label at a time on a CPU
    up = torch.nn.functional.interpolate(torch.from_numpy(low)[None], size=size,
                                         mode="bilinear", align_corners=False)[0]
    best, arg = up.max(dim=0)
    lut = np.asarray([0, *labels], np.uint8 if max(labels) <= 255 else np.uint16)
    want = lut[((arg + 1) * (best > 0)).numpy()]
    assert best.isnan().any() and (want > 0).any() and (want == 0).any()
    for chunk_bytes in (torch_ops.MASK_CHUNK_BYTES, 4 * size[0] * size[1] * 5, None):
        got = masks(chunk_bytes)
        assert got.dtype == want.dtype and np.array_equal(got, want), chunk_bytes
