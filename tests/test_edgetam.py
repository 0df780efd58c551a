"""EdgeTAM on random weights against transformers' own code: the model builder, each export
wrapper (in PyTorch and exported to ONNX, run in ONNX Runtime), the SST reference run, and
the four wrappers chained as an SST step reproducing transformers' video session.

Skipped where the ``edgetam`` extra (transformers, timm) is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from sst.export.edgetam_model import importable_torchvision

try:
    importable_torchvision()
    import timm  # noqa: F401
    from transformers import EdgeTamVideoModel  # noqa: F401
except ImportError as exc:  # the extra is not installed
    pytest.skip(f"EdgeTAM needs the edgetam extra (transformers, timm): {exc}",
                allow_module_level=True)

import torch

from sst.export.edgetam_model import build_edgetam_model, check_image_size, edgetam_config
from sst.export.edgetam_reference import (
    edgetam_processor,
    reference_outputs,
    run_reference_sst,
)
from sst.export.edgetam_wrappers import (
    EdgeTamMaskDecoder,
    build_edgetam_wrappers,
    edgetam_component_specs,
    edgetam_geometry,
)
from sst.export.specs import COMPONENTS, dummy_inputs
from sst.tracker.errors import ModelError

SIZE = 256
TOL = 1e-4

#: Shapes other than the traced ones, and flag combinations, per component.
CASES: dict[str, list[tuple[dict[str, int], str]]] = {
    "image_encoder": [({"batch": 1}, "")],
    "memory_attention": [({"batch": 1, "num_frames": 1, "num_ptrs": 0}, ""),
                         ({"batch": 3, "num_frames": 3, "num_ptrs": 2}, ""),
                         ({"batch": 2, "num_frames": 7, "num_ptrs": 16}, "")],
    "mask_decoder": [({"batch": 3, "num_points": 4, "support_h": 4, "support_w": 4}, "points"),
                     ({"batch": 2, "num_points": 1, "support_h": 4, "support_w": 4}, "mask"),
                     ({"batch": 3, "num_points": 1, "support_h": SIZE, "support_w": SIZE},
                      "support")],
    "memory_encoder": [({"batch": 3}, "absent"),
                       ({"batch": 2, "mask_h": SIZE, "mask_w": SIZE}, "given")],
}


def _fix(x: dict[str, np.ndarray], how: str) -> None:
    if how == "points":
        x["has_mask_input"][:] = 0
        x["mask_from_support"][:] = 0
        x["multimask"][:, 0] = np.arange(len(x["multimask"])) % 2  # both selections
    elif how == "mask":
        x["point_labels"][:] = -1
        x["point_coords"][:] = 0
        x["has_mask_input"][:] = 1
        x["mask_from_support"][:] = 0
    elif how == "support":
        x["point_labels"][:] = -1
        x["point_coords"][:] = 0
        x["mask_from_support"][:] = 1
        x["multimask"][:] = 1  # as transformers makes a support's pointer
        x["support_mask"][-1] = 0  # a label absent from this support
    elif how == "absent":
        x["object_score_logits"][0] = -abs(x["object_score_logits"][0]) - 0.5
        x["binarize"][:, 0] = np.arange(len(x["binarize"])) % 2
    elif how == "given":  # a support's image-size mask, as the engine would give it
        x["mask_logits"] = np.where(x["mask_logits"] > 0, 10.0, -10.0).astype(np.float32)
        x["binarize"][:] = 1


def _inputs(name: str, geom, spec, i: int) -> dict[str, np.ndarray]:
    dims, how = CASES[name][i]
    x = dummy_inputs(spec, geom, dims, seed=200 + i)
    _fix(x, how)
    return x


def _max_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for k, w in want.items():
        assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
        valid = ~np.isnan(w)
        out[k] = float(np.abs(got[k][valid] - w[valid]).max()) if valid.any() else 0.0
    return out


def vivid_edgetam(size: int = SIZE):
    """EdgeTAM at ``size``, random weights (seed 0), with its learned embeddings (temporal
    encodings, no-object pointer and embedding, no-memory embedding) drawn large, so
    that a wrong slot or a missing term shows far above the tolerance; objects mostly
    present (object-score bias raised), so that tracked frames carry masks."""
    model = build_edgetam_model(random_weights=True, seed=0, image_size=size)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for p in (model.memory_temporal_positional_encoding, model.no_object_pointer,
                  model.occlusion_spatial_embedding_parameter, model.no_memory_embedding):
            p.normal_(0.0, 1.0)
        model.mask_decoder.pred_obj_score_head.proj_out.bias += 3.0
    return model


@pytest.fixture(scope="module")
def edgetam():
    """:func:`vivid_edgetam` at 256 px, with its geometry, specs and wrappers."""
    model = vivid_edgetam()
    geom = edgetam_geometry(model)
    return model, geom, edgetam_component_specs(geom), build_edgetam_wrappers(model)


def _run_torch(module, spec, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = module(*(torch.from_numpy(x[n]) for n in spec.input_names))
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(spec.output_names, out)}


# ------------------------------------------------------------------------------ building


def test_image_sizes_and_arguments_are_checked() -> None:
    for ok in (256, 512, 1024):
        check_image_size(ok)
    for bad in (128, 320, 1000):
        with pytest.raises(ModelError, match="multiple of 256"):
            check_image_size(bad)
    with pytest.raises(ModelError, match="exactly one"):
        build_edgetam_model(image_size=SIZE)
    with pytest.raises(ModelError, match="seed"):
        build_edgetam_model(random_weights=True, image_size=SIZE)
    cfg = edgetam_config(512)
    assert cfg.vision_config.backbone_feature_sizes == [[128, 128], [64, 64], [32, 32]]
    assert cfg.memory_attention_rope_feat_sizes == [32, 32]
    assert cfg.prompt_encoder_config.image_size == 512


def test_random_weights_are_seeded_and_a_weights_folder_loads(edgetam, tmp_path) -> None:
    model = edgetam[0]
    again = build_edgetam_model(random_weights=True, seed=0, image_size=SIZE)
    other = build_edgetam_model(random_weights=True, seed=1, image_size=SIZE)
    own, same, diff = model.state_dict(), again.state_dict(), other.state_dict()
    fixture_changed = {"memory_temporal_positional_encoding", "no_object_pointer",
                       "occlusion_spatial_embedding_parameter", "no_memory_embedding",
                       "mask_decoder.pred_obj_score_head.proj_out.bias"}
    assert all(torch.equal(own[k], same[k]) for k in own if k not in fixture_changed)
    assert not all(torch.equal(same[k], diff[k]) for k in same)
    # no parameter left at zero: every path carries signal
    assert all(p.any() for p in again.parameters())
    again.save_pretrained(tmp_path / "edgetam")
    loaded = build_edgetam_model(weights=tmp_path / "edgetam", image_size=512)
    assert loaded.image_size == 512 and not loaded.sst_random_weights
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in same.items()
               if "position_ids" not in k)
    with pytest.raises(ModelError, match="config.json"):
        build_edgetam_model(weights=tmp_path / "nowhere", image_size=SIZE)


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", COMPONENTS)
def test_wrapper_matches_transformers(edgetam, name: str) -> None:
    model, geom, specs, wrappers = edgetam
    for i in range(len(CASES[name])):
        x = _inputs(name, geom, specs[name], i)
        diffs = _max_diff(_run_torch(wrappers[name], specs[name], x),
                          reference_outputs(model, name, x))
        assert max(diffs.values()) <= TOL, (CASES[name][i], diffs)


def test_single_mask_output_stable_and_unstable(edgetam) -> None:
    """``multimask=0``: the stability fallback picks the best multimask output when the
    single-mask output is unstable (random weights: always) and keeps it when stable."""
    model, geom, specs, _ = edgetam
    dec = model.mask_decoder
    x = _inputs("mask_decoder", geom, specs["mask_decoder"], 0)
    x["multimask"][:] = 0
    saved = dec.dynamic_multimask_stability_thresh
    try:
        for thresh in (saved, 0.0):
            dec.dynamic_multimask_stability_thresh = thresh
            got = _run_torch(EdgeTamMaskDecoder(model).eval(), specs["mask_decoder"], x)
            diffs = _max_diff(got, reference_outputs(model, "mask_decoder", x))
            assert max(diffs.values()) <= TOL, (thresh, diffs)
    finally:
        dec.dynamic_multimask_stability_thresh = saved


@pytest.mark.parametrize("name", COMPONENTS)
def test_onnx_export_matches_transformers(edgetam, name: str, tmp_path) -> None:
    import onnxruntime as ort

    from sst.export.onnx_export import _export_one

    model, geom, specs, wrappers = edgetam
    spec = specs[name]
    path = tmp_path / f"{name}.onnx"
    _export_one(wrappers[name], spec, geom, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == spec.output_names
    for i in range(len(CASES[name])):
        x = _inputs(name, geom, spec, i)
        got = dict(zip(spec.output_names, sess.run(None, x)))
        diffs = _max_diff(got, reference_outputs(model, name, x))
        assert max(diffs.values()) <= TOL, (CASES[name][i], diffs)


# ------------------------------------------------------------------------------ SST runs


def _pseudo_video(side: int = SIZE) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(3)
    support = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 8: side // 2, side // 8: side // 2] = 2
    mask[side // 2: side - side // 8, side // 3: side - side // 16] = 5
    queries = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(2)]
    return support, mask, queries


def test_reference_sst_run_shapes_and_determinism(edgetam) -> None:
    model, geom = edgetam[0], edgetam[1]
    rng = np.random.default_rng(4)
    support = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[5:20, 5:30], mask[25:40, 30:60] = 1, 3
    queries = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(2)]
    low = run_reference_sst(model, support, mask, queries)
    assert low["labels"] == [1, 3]
    assert sorted(low["logits"]) == [0, 1, 2]
    for frame, logits in low["logits"].items():
        assert logits.shape == (2, geom.low_res, geom.low_res)
        assert low["object_scores"][frame].shape == (2,)
    np.testing.assert_array_equal(low["object_scores"][0], [10.0, 10.0])  # the support
    again = run_reference_sst(model, support, mask, queries)
    for frame in low["logits"]:
        np.testing.assert_array_equal(low["logits"][frame], again["logits"][frame])
    full = run_reference_sst(model, support, mask, queries, full_res=True)
    assert all(v.shape == (2, 48, 64) for v in full["logits"].values())
    with pytest.raises(ValueError, match="no labels"):
        run_reference_sst(model, support, mask * 0, queries)


def test_wrappers_chained_as_sst_steps_match_the_video_session(edgetam) -> None:
    """The engine's dataflow with EdgeTAM's components: prime the support (decoder with
    the mask as output, memory from the image-size mask, binarised), then per query:
    memory attention over the bank (conditioning memory, recent memories, pointers), the
    decoder (multimask), the memory encoder on its low-res logits. Logits equal the
    session's on every query frame."""
    model, geom, _, w = edgetam
    support, mask, queries = _pseudo_video()
    ref = run_reference_sst(model, support, mask, queries)
    labels, K, S, lo = ref["labels"], len(ref["labels"]), geom.image_size, geom.low_res
    proc = edgetam_processor(S)
    frames = [support, *queries]
    n = len(frames)
    pixels = torch.cat([proc.video_processor(videos=[f[None]], return_tensors="pt")
                        .pixel_values_videos[0] for f in frames])
    with torch.inference_mode():
        s0, s1, top = w["image_encoder"](pixels)
        rep = torch.zeros(K, dtype=torch.long)
        m = torch.stack([torch.from_numpy(mask == lab) for lab in labels])[:, None].float()
        dec = w["mask_decoder"](top[rep], s0[rep], s1[rep], torch.zeros(K, 1, 2),
                                -torch.ones(K, 1), torch.zeros(K, 1, lo, lo), m,
                                torch.ones(K, 1), torch.ones(K, 1), torch.zeros(K, 1),
                                torch.ones(K, 1))
        mem = w["memory_encoder"](top[rep], m * 20 - 10, dec[3], torch.ones(K, 1))
        bank = [(0, mem, dec[2])]  # (frame, memories [K,T,M], pointers [K,C])
        max_ptrs = min(n, geom.max_obj_ptrs)  # the session knows the video's length
        for t in range(1, n):
            recent = [e for e in bank[1:] if t - e[0] < geom.num_maskmem]
            memory = torch.stack([bank[0][1]] + [e[1] for e in recent], dim=1)
            tpos = torch.tensor([0] + [geom.num_maskmem - (t - e[0]) for e in recent])
            ptr_src = [bank[0]] + [e for e in bank[1:] if t - e[0] < max_ptrs]
            ptrs = torch.stack([e[2] for e in ptr_src], dim=1)
            ptr_tpos = torch.tensor([(t - e[0]) / (max_ptrs - 1) for e in ptr_src])
            rows = torch.full((K,), t, dtype=torch.long)
            cond = w["memory_attention"](top[rows], memory, tpos.expand(K, -1),
                                         ptrs, ptr_tpos.expand(K, -1).float())
            out = w["mask_decoder"](cond, s0[rows], s1[rows], torch.zeros(K, 1, 2),
                                    -torch.ones(K, 1), torch.zeros(K, 1, lo, lo),
                                    torch.zeros(K, 1, 4, 4), torch.zeros(K, 1),
                                    torch.zeros(K, 1), torch.zeros(K, 1), torch.ones(K, 1))
            diff = np.abs(out[0][:, 0].numpy() - ref["logits"][t]).max()
            assert diff <= TOL, (t, diff)
            bank.append((t, w["memory_encoder"](top[rows], out[0], out[3], torch.zeros(K, 1)),
                         out[2]))
    assert (np.stack([ref["object_scores"][t] for t in range(1, n)]) > 0).any()
