"""The SST tracker against sam2's SAM2VideoPredictor, and its bookkeeping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.export.meta import load_meta
from sst.export.sst_reference import reference_from_images
from sst.tracker.backends import OrtBackend
from sst.tracker.errors import InputError
from sst.tracker.torch_backend import TorchBackend
from sst.tracker.tracker import Tracker, labels_from_logits

from .synthetic import specimen

LABELS = [1, 2, 3]
#: Logit tolerance against sam2, at the documented figure (measured 0.9-1.5e-6 on 10
#: frames at 256 px on two CPUs).
LOGIT_ATOL = 1e-5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module")
def pseudo_video(tmp_path_factory, sam2_tiny):
    """2 supports (label 3 absent from the second) + 10 queries, and sam2's run of it."""
    s0 = specimen(0)
    img1, m1 = specimen(1, shift=0.05)
    m1 = m1.copy()
    m1[m1 == 3] = 0
    queries = [specimen(10 + i, shift=0.02 * i)[0] for i in range(10)]
    paths, ref = reference_from_images(sam2_tiny, [s0, (img1, m1)], queries, LABELS,
                                       tmp_path_factory.mktemp("video"))
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    supports = [(frames[0], s0[1]), (frames[1], m1)]
    return supports, frames[2:], ref["logits"]


def _check_against_reference(results, ref_logits, first_query_frame):
    assert len(results) == len(ref_logits) - first_query_frame
    worst = 0.0
    for i, res in enumerate(results):
        want = ref_logits[first_query_frame + i]
        assert res.logits.shape == want.shape
        worst = max(worst, float(np.abs(res.logits - want).max()))
        for k in range(len(LABELS)):
            assert _iou(res.logits[k] > 0, want[k] > 0) >= 0.99, (i, k)
    assert worst <= LOGIT_ATOL, worst
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_sequential_matches_sam2_video_predictor(backend, pseudo_video, sam2_tiny,
                                                 exported_repo):
    supports, queries, ref = pseudo_video
    be = OrtBackend(exported_repo) if backend == "ort" else TorchBackend(sam2_tiny)
    results = Tracker(be).segment(supports, queries, mode="sequential")
    _check_against_reference(results, ref, first_query_frame=2)
    # the label map is derived from the logits: highest positive wins
    r = results[3]
    np.testing.assert_array_equal(r.mask, labels_from_logits(r.logits, LABELS))


@pytest.mark.slow
def test_independent_matches_two_frame_runs(tmp_path, sam2_tiny, exported_repo):
    """Each query in independent mode equals a (support, query) video run by sam2."""
    support = specimen(0)
    queries = [specimen(20 + i, shift=0.03 * i)[0] for i in range(3)]
    tracker = Tracker(OrtBackend(exported_repo))
    decoded_queries, want = [], []
    for i, q in enumerate(queries):
        paths, ref = reference_from_images(sam2_tiny, [support], [q], LABELS, tmp_path / str(i))
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        decoded_queries.append(frames[1])
        want.append(ref["logits"][1])
        dec_support = frames[0]
    got = tracker.segment([(dec_support, support[1])], decoded_queries, mode="independent",
                          batch=2)
    for res, w in zip(got, want):
        assert np.abs(res.logits - w).max() <= LOGIT_ATOL
    # order does not matter in independent mode
    rev = tracker.segment([(dec_support, support[1])], decoded_queries[::-1],
                          mode="independent", batch=3)
    for a, b in zip(got, rev[::-1]):
        np.testing.assert_allclose(a.logits, b.logits, atol=LOGIT_ATOL)


class EchoBackend:
    """A deterministic stand-in for the graphs whose outputs depend on everything the
    tracker feeds them, so any change in memory selection changes the results."""

    def __init__(self, meta):
        self.meta = meta

    def run(self, component, feeds):
        m = self.meta
        f, lo = m.feat, m.low_res
        if component == "image_encoder":
            x = feeds["image"]
            B = x.shape[0]
            s = x.reshape(B, -1).mean(axis=1)[:, None, None, None]
            return {"feat_s0": np.broadcast_to(s, (B, 32, 4 * f, 4 * f)).astype(np.float32),
                    "feat_s1": np.broadcast_to(s, (B, 64, 2 * f, 2 * f)).astype(np.float32),
                    "feat_top": (np.ones((B, m.hidden_dim, f, f)) * s).astype(np.float32)}
        if component == "memory_attention":
            mem = feeds["memory"].mean(axis=(2, 3, 4))  # [B, F]
            w = np.cos(feeds["memory_tpos"] * 0.7) * mem
            pw = np.sin(feeds["obj_ptr_tpos"] * 3.1) * feeds["obj_ptrs"].mean(axis=2)
            v = w.sum(axis=1) + pw.sum(axis=1) + feeds["memory"].shape[1] * 0.01
            return {"conditioned": feeds["feat_top"] + v[:, None, None, None]}
        if component == "mask_decoder":
            B = feeds["image_embed"].shape[0]
            e = feeds["image_embed"].mean(axis=(1, 2, 3))
            logits = np.sin(e * 13.0 + np.arange(B))[:, None, None, None] * np.ones(
                (B, 1, lo, lo))
            return {"mask_logits": logits.astype(np.float32),
                    "iou": np.abs(np.cos(e))[:, None].astype(np.float32),
                    "obj_ptr": (np.ones((B, m.hidden_dim)) * np.cos(e * 5)[:, None]).astype(
                        np.float32),
                    "object_score_logits": np.sin(e * 7)[:, None].astype(np.float32)}
        if component == "memory_encoder":
            v = feeds["mask_logits"].mean(axis=(1, 2, 3)) + feeds["feat_top"].mean(axis=(1, 2, 3))
            B = v.shape[0]
            return {"maskmem_features": (np.ones((B, m.mem_dim, f, f)) * np.tanh(v)[
                :, None, None, None]).astype(np.float32)}
        raise KeyError(component)


def test_memory_is_bounded_and_matches_keep_all(exported_repo):
    meta = load_meta(exported_repo)
    rng = np.random.default_rng(0)
    support = (rng.integers(0, 255, (32, 40, 3), dtype=np.uint8),
               np.pad(np.ones((10, 10), np.uint8), ((5, 17), (5, 25))))
    support[1][20:25, 30:35] = 2
    frames = [rng.integers(0, 255, (32, 40, 3), dtype=np.uint8) for _ in range(120)]
    bounded = Tracker(EchoBackend(meta))
    full = Tracker(EchoBackend(meta), keep_all_memories=True)
    s_b = bounded.start_session([support])
    s_f = full.start_session([support])
    limit_mem = 1 + (meta.num_maskmem - 1)  # the support + recent memories
    limit_ptr = 1 + (meta.max_obj_ptrs - 1)
    for res_b, res_f in zip(bounded.track(s_b, frames), full.track(s_f, frames)):
        assert s_b.bank.num_memories <= limit_mem
        assert s_b.bank.num_pointers <= limit_ptr
        np.testing.assert_array_equal(res_b.logits, res_f.logits)
    assert s_f.bank.num_pointers == 121  # the reference keeps growing
    assert s_b.bank.nbytes < s_f.bank.nbytes / 5


def test_bad_supports_are_named(exported_repo):
    tracker = Tracker(EchoBackend(load_meta(exported_repo)), max_labels=2)
    img = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(InputError, match="mask is 20x30 but its image is 30x20"):
        tracker.start_session([(img, np.ones((30, 20), np.uint8))])
    with pytest.raises(InputError, match="no labels"):
        tracker.start_session([(img, np.zeros((20, 30), np.uint8))])
    many = np.zeros((20, 30), np.uint8)
    many[0, :3] = [1, 2, 3]
    with pytest.raises(InputError, match="3 labels, more than the cap of 2"):
        tracker.start_session([(img, many)])
    with pytest.raises(InputError, match="expected one of"):
        tracker.segment([(img, many[:, :] * 0 + 1)], [img], mode="sideways")


def test_labels_from_logits():
    logits = np.array([[[1.0, -1.0, 0.5]], [[2.0, -3.0, -0.1]]], np.float32)  # K=2, 1x3
    np.testing.assert_array_equal(labels_from_logits(logits, [7, 255]), [[255, 0, 7]])
    assert labels_from_logits(logits, [7, 300]).dtype == np.uint16


def test_resize_matches_torch():
    import torch
    import torch.nn.functional as F

    from sst.tracker.resize import resize_bilinear

    rng = np.random.default_rng(1)
    for src, dst in (((48, 64), (32, 32)), ((16, 16), (45, 70)), ((37, 91), (64, 64))):
        x = rng.normal(size=(2, *src)).astype(np.float32)
        for aa in (False, True):
            want = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear",
                                 align_corners=False, antialias=aa)[0].numpy()
            np.testing.assert_allclose(resize_bilinear(x, dst, aa), want, atol=1e-4)


def test_bf16_storage_matches_torch():
    import torch

    from sst.tracker.bank import from_bf16, to_bf16

    x = np.random.default_rng(2).normal(0, 50, 10000).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(from_bf16(to_bf16(x)), want)


def test_shared_beetle_mask_as_support(beetle_masks: Path, exported_repo):
    """A realistic support mask from the shared data set runs through the tracker."""
    from sst.tracker.io import load_mask

    mask_path = sorted(beetle_masks.glob("*/*.png"))[0]
    mask = load_mask(mask_path)
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
    tracker = Tracker(OrtBackend(exported_repo))
    res = tracker.segment([(img, mask)], [img], mode="independent")
    labels = sorted(int(v) for v in np.unique(mask) if v)
    assert res[0].labels == labels and res[0].mask.shape == mask.shape


def test_torch_engine_rebuilds_the_exported_weights(exported_repo):
    """--engine torch rebuilds the recorded weights and agrees with the ONNX graphs."""
    from sst.tracker.engine_choice import open_backend

    support = specimen(0)
    queries = [specimen(50)[0], specimen(51)[0]]
    a = Tracker(open_backend(exported_repo, "ort")).segment([support], queries)
    b = Tracker(open_backend(exported_repo, "torch")).segment([support], queries)
    for x, y in zip(a, b):
        assert np.abs(x.logits - y.logits).max() <= LOGIT_ATOL


class CountingBackend:
    """Counts the frames each component is given."""

    def __init__(self, inner):
        self.inner, self.meta = inner, inner.meta
        self.frames: dict[str, int] = {}

    def run(self, component, feeds):
        first = next(iter(feeds.values()))
        self.frames[component] = self.frames.get(component, 0) + int(first.shape[0])
        return self.inner.run(component, feeds)


def test_support_cache_primes_once_and_changes_nothing(exported_repo):
    """A support seen before is not encoded again; results are those of a fresh priming,
    in both modes, and sessions primed from the cache do not share recent memories."""
    support, q1, q2 = specimen(0), specimen(1)[0], specimen(2)[0]
    queries = [q1, q2, q1]
    plain = Tracker(OrtBackend(exported_repo))
    want_seq = plain.segment([support], queries, mode="sequential")
    want_ind = plain.segment([support], queries, mode="independent")
    be = CountingBackend(OrtBackend(exported_repo))
    cached = Tracker(be, support_cache_bytes=64 << 20)
    for _ in range(2):  # the second round primes from the cache
        for mode, want in (("sequential", want_seq), ("independent", want_ind)):
            got = cached.segment([support], queries, mode=mode)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.logits, w.logits)
    assert be.frames["image_encoder"] == 1 + 4 * len(queries)  # the support once
    assert cached.support_cache.hits == 3 and cached.support_cache.misses == 1
    other_mask = support[1].copy()
    other_mask[other_mask == 2] = 0  # same image, another mask: primed anew
    cached.start_session([(support[0], other_mask)])
    assert be.frames["image_encoder"] == 2 + 4 * len(queries)
    assert cached.support_cache.misses == 2 and len(cached.support_cache) == 2


def test_support_cache_is_bounded_in_bytes(exported_repo):
    meta = load_meta(exported_repo)
    one = Tracker(EchoBackend(meta), support_cache_bytes=1 << 30)
    s = one.start_session([specimen(0)])
    entry_bytes = s.bank.nbytes
    tight = Tracker(EchoBackend(meta), support_cache_bytes=entry_bytes)  # room for one
    tight.start_session([specimen(0)])
    tight.start_session([specimen(1)])
    assert len(tight.support_cache) == 1 and tight.support_cache.nbytes <= entry_bytes
    tight.start_session([specimen(0)])  # evicted: a miss again
    assert tight.support_cache.misses == 3 and tight.support_cache.hits == 0
    none = Tracker(EchoBackend(meta), support_cache_bytes=entry_bytes - 1)  # too big to keep
    none.start_session([specimen(0)])
    assert len(none.support_cache) == 0


def test_attention_budget_splits_objects_without_changing_results(exported_repo):
    """A score budget of one object per memory-attention call (the CPU's at 1024 px)
    gives the batched results."""
    calls = []

    class Recording(CountingBackend):
        def run(self, component, feeds):
            if component == "memory_attention":
                calls.append(int(feeds["memory"].shape[0]))
            return super().run(component, feeds)

    support, queries = specimen(0), [specimen(1)[0], specimen(2)[0]]
    K = len(np.unique(support[1])) - 1
    assert K >= 2
    ort_backend = OrtBackend(exported_repo)
    split = Tracker(Recording(ort_backend), attention_bytes=1)
    whole = Tracker(Recording(ort_backend), attention_bytes=0)
    for mode in ("sequential", "independent"):
        calls.clear()
        a = split.segment([support], queries, mode=mode)
        assert calls and set(calls) == {1}
        calls.clear()
        b = whole.segment([support], queries, mode=mode)
        assert max(calls) >= K
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.logits, y.logits, atol=LOGIT_ATOL)
