"""ONNX Runtime provider options for the GPU (checked as dictionaries; no GPU needed)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from sst.export.ort_providers import (
    provider_options,
    trt_cache_dir,
    trt_profile_options,
)
from sst.export.specs import COMPONENTS, Geometry, component_specs
from sst.export.tensorrt import ENGINE_MAX_ROWS, profile_max_rows, profile_shapes
from sst.tracker.errors import ModelError

GEOM = Geometry(256, num_maskmem=7, max_obj_ptrs=16)


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "sst_model.json").write_text(json.dumps({"model": "m", "precision": "fp16",
                                                         "geometry": asdict(GEOM)}))
    return tmp_path


def _parse_profiles(text: str) -> dict[str, list[tuple[int, ...]]]:
    """ONNX Runtime's reading of a profile string: the n-th mention of an input is profile n."""
    out: dict[str, list[tuple[int, ...]]] = {}
    for item in text.split(","):
        name, dims = item.split(":")
        out.setdefault(name, []).append(tuple(int(d) for d in dims.split("x")))
    return out


def test_profile_strings_round_trip():
    spec = component_specs(GEOM)["memory_attention"]
    profiles = profile_shapes(spec, GEOM)
    opts = trt_profile_options(profiles)
    assert set(opts) == {"trt_profile_min_shapes", "trt_profile_opt_shapes",
                         "trt_profile_max_shapes"}
    for k, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes",
                             "trt_profile_max_shapes")):
        parsed = _parse_profiles(opts[key])
        assert set(parsed) == set(spec.input_names)
        for name in spec.input_names:
            assert parsed[name] == [p[name][k] for p in profiles]
    assert _parse_profiles(opts["trt_profile_max_shapes"])["memory"][-1] == (16, 14, 64, 16, 16)


@pytest.mark.parametrize("component", COMPONENTS)
def test_tensorrt_provider_options(model_dir, component):
    [(name, trt), (cuda_name, cuda), (cpu_name, cpu)] = provider_options(
        model_dir, component, "fp16")
    assert (name, cuda_name, cpu_name) == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                           "CPUExecutionProvider")
    fp16 = component != "mask_decoder"  # the decoder overflows in half precision
    assert trt["trt_fp16_enable"] == ("1" if fp16 else "0")
    assert trt["trt_layer_norm_fp32_fallback"] == ("1" if fp16 else "0")
    cache = model_dir.resolve() / component / "trt_cache"
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_timing_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(cache)
    assert cache.is_dir() and cache == trt_cache_dir(model_dir, component)
    spec = component_specs(GEOM)[component]
    want = trt_profile_options(profile_shapes(spec, GEOM, max_rows=profile_max_rows(spec)))
    assert {k: trt[k] for k in want} == want
    # the in-process engine's calls fit: 64 objects (32 sessions x 2 labels), 16 images
    top = max(dims[0] for dims in _parse_profiles(trt["trt_profile_max_shapes"])[
        spec.input_names[0]])
    assert top == ENGINE_MAX_ROWS[component] == (16 if component == "image_encoder" else 64)
    assert all(isinstance(v, str) for v in (*trt.values(), *cuda.values()))
    assert cuda["device_id"] == "0" and cuda["use_tf32"] == "0" and cpu == {}


def test_precision_order_and_errors(model_dir):
    opts = provider_options(model_dir, "image_encoder", "fp32",
                            ["cuda", "TensorrtExecutionProvider"], device_id=2)
    assert [n for n, _ in opts] == ["CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert opts[1][1]["trt_fp16_enable"] == "0" and opts[1][1]["device_id"] == "2"
    assert provider_options(model_dir, "image_encoder", "fp16", ["cpu"]) == [
        ("CPUExecutionProvider", {})]
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'"):
        provider_options(model_dir, "image_encoder", "fp16", ["rocm"])
    with pytest.raises(ValueError, match="precision must be fp32 or fp16, got 'int8'"):
        provider_options(model_dir, "image_encoder", "int8")
    with pytest.raises(ValueError, match="component must be one of"):
        provider_options(model_dir, "decoder", "fp16")


def test_geometry_comes_from_the_model_folder(model_dir, tmp_path):
    from sst.tracker.errors import ModelError

    other = Geometry(256, num_maskmem=5)
    a = provider_options(model_dir, "memory_attention", "fp16", ["tensorrt"])[0][1]
    b = provider_options(model_dir, "memory_attention", "fp16", ["tensorrt"], geometry=other)[0][1]
    assert _parse_profiles(a["trt_profile_max_shapes"])["memory"][0][1] == 8 + 7 - 1
    assert _parse_profiles(b["trt_profile_max_shapes"])["memory"][0][1] == 8 + 5 - 1
    with pytest.raises(ModelError, match="sst_model.json: cannot read the model geometry"):
        provider_options(tmp_path / "nowhere", "memory_attention", "fp16", ["tensorrt"])


class _Counted:
    """An InferenceSession that counts its calls and the rows of each."""

    def __init__(self, session):
        self.session, self.rows = session, []

    def run(self, names, feeds):
        self.rows.append({len(v) for v in feeds.values()})
        return self.session.run(names, feeds)


@pytest.mark.parametrize("component", ["memory_encoder", "mask_decoder"])
def test_ort_backend_splits_calls_to_its_max_rows(exported_repo, component):
    """A call over ``max_rows`` runs as several calls of at most that many rows; the
    outputs are those of one call."""
    from sst.export.meta import load_meta
    from sst.export.specs import dummy_inputs
    from sst.tracker.backends import OrtBackend

    geom = load_meta(exported_repo).geometry
    spec = component_specs(geom)[component]
    feeds = dummy_inputs(spec, geom, {"batch": 5}, seed=3)
    whole = OrtBackend(exported_repo)
    split = OrtBackend(exported_repo, max_rows={component: 2})
    assert whole.max_rows[component] == 0 and split.max_rows[component] == 2
    counted = split.sessions[component] = _Counted(split.sessions[component])
    got, want = split.run(component, feeds), whole.run(component, feeds)
    assert counted.rows == [{2}, {2}, {1}]
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    counted.rows.clear()
    split.run(component, dummy_inputs(spec, geom, {"batch": 2}, seed=4))
    assert counted.rows == [{2}]  # at the limit: one call
    with pytest.raises(ModelError, match="unknown component"):
        OrtBackend(exported_repo, max_rows={"decoder": 2})


def test_profile_max_rows_covers_the_engine_and_the_spec():
    specs = component_specs(GEOM)
    assert {n: profile_max_rows(s) for n, s in specs.items()} == ENGINE_MAX_ROWS
    big = component_specs(GEOM, max_batch=128)
    assert profile_max_rows(big["memory_encoder"]) == 128
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        profile_shapes(specs["memory_encoder"], GEOM, max_rows=0)


def test_ort_backend_without_the_cpu_arena_gives_the_same_outputs(exported_repo):
    """``memory_arena=False`` (the server's setting, so that a large request's buffers
    are freed after it) turns ONNX Runtime's CPU arena off in every session and changes
    no output."""
    from sst.export.meta import load_meta
    from sst.export.specs import dummy_inputs
    from sst.tracker.backends import OrtBackend

    geom = load_meta(exported_repo).geometry
    kept, freed = OrtBackend(exported_repo), OrtBackend(exported_repo, memory_arena=False)
    for name, session in freed.sessions.items():
        assert session.get_session_options().enable_cpu_mem_arena is False, name
        assert kept.sessions[name].get_session_options().enable_cpu_mem_arena is True, name
    feeds = dummy_inputs(component_specs(geom)["mask_decoder"], geom, {"batch": 3}, seed=5)
    got, want = freed.run("mask_decoder", feeds), kept.run("mask_decoder", feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
