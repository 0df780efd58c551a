"""TensorRT profiles and plan manifests (everywhere), engine builds (GPU with TensorRT only)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import numpy as np
import pytest

from sst.export import tensorrt as trt_mod
from sst.export.specs import COMPONENTS, Geometry, component_specs
from sst.export.tensorrt import (
    BuildEnv,
    PlanMismatch,
    batch_buckets,
    bucket_index,
    check_plan,
    make_manifest,
    manifest_path,
    onnx_precision,
    profile_shapes,
    read_manifest,
    tensorrt_missing,
    write_manifest,
)
from sst.tracker.errors import ModelError

GEOM = Geometry(512)


def test_batch_buckets_cover_every_batch_once():
    assert batch_buckets(16) == ((1, 1), (2, 4), (5, 8), (9, 16))
    assert batch_buckets(4) == ((1, 1), (2, 4))
    assert batch_buckets(6) == ((1, 1), (2, 4), (5, 6))
    for n in range(1, 140):
        buckets = batch_buckets(n)
        covered = [b for lo, hi in buckets for b in range(lo, hi + 1)]
        assert covered == list(range(1, n + 1)), n
        assert all(bucket_index(b, buckets) == next(i for i, (lo, hi) in enumerate(buckets)
                                                     if lo <= b <= hi) for b in covered)
    with pytest.raises(ValueError, match="at least 1"):
        batch_buckets(0)
    with pytest.raises(ValueError, match="batch 17 is outside"):
        bucket_index(17, batch_buckets(16))


@pytest.mark.parametrize("name", COMPONENTS)
def test_one_profile_per_bucket_with_every_input(name):
    spec = component_specs(GEOM)[name]
    profiles = profile_shapes(spec, GEOM)
    buckets = batch_buckets(spec.axis_ranges["batch"][2])
    assert len(profiles) == len(buckets)
    for (lo, hi), prof in zip(buckets, profiles):
        assert list(prof) == spec.input_names
        for t in spec.inputs:
            low, opt, high = prof[t.name]
            assert (low[0], opt[0], high[0]) == (lo, hi, hi)
            assert len(low) == len(opt) == len(high) == len(t.shape)
            assert all(a <= b <= c for a, b, c in zip(low, opt, high)), (t.name, prof[t.name])
            fixed = [d for d in t.shape if isinstance(d, int)]
            assert [d for d, s in zip(high, t.shape) if isinstance(s, int)] == fixed


@pytest.mark.parametrize("name", COMPONENTS)
def test_engine_profiles_reach_the_rows_the_engine_sends(name):
    """Triton's batcher sends at most the spec's batch (16 rows); the in-process engine
    sends up to 64 objects (32 sessions x 2 labels) or 16 images per call: its profiles
    (``max_rows=profile_max_rows``) cover those, bucket by bucket."""
    spec = component_specs(GEOM)[name]
    assert profile_shapes(spec, GEOM)[-1][spec.input_names[0]][2][0] == \
        spec.axis_ranges["batch"][2]
    rows = trt_mod.profile_max_rows(spec)
    assert rows == (16 if name == "image_encoder" else 64)
    profiles = profile_shapes(spec, GEOM, max_rows=rows)
    buckets = batch_buckets(rows)
    assert [(p[spec.input_names[0]][0][0], p[spec.input_names[0]][2][0]) for p in profiles] \
        == list(buckets)
    assert all(bucket_index(b, buckets) >= 0 for b in (1, rows // 2, rows))


def test_memory_attention_ranges_follow_geometry_and_supports():
    for geom, supports in ((GEOM, 8), (Geometry(256, num_maskmem=5, max_obj_ptrs=8), 2)):
        spec = component_specs(geom)["memory_attention"]
        profiles = profile_shapes(spec, geom, max_supports=supports)
        for prof in profiles:
            low, opt, high = prof["memory"]
            assert (low[1], opt[1], high[1]) == (1, geom.num_maskmem,
                                                 supports + geom.num_maskmem - 1)
            low, opt, high = prof["obj_ptrs"]
            assert (low[1], opt[1], high[1]) == (0, geom.max_obj_ptrs,
                                                 supports + geom.max_obj_ptrs - 1)
            assert prof["memory_tpos"][2][1] == prof["memory"][2][1]
        # not one profile up to the largest batch with the largest bank
        assert profiles[0]["memory"][2][0] == 1 and len(profiles) > 1
    with pytest.raises(ValueError, match="max_supports"):
        profile_shapes(spec, geom, max_supports=0)


@pytest.mark.parametrize("name", COMPONENTS)
def test_parity_and_trace_shapes_fall_inside_a_profile(name):
    """The shapes the export is checked at are shapes the engines accept."""
    from sst.export.onnx_export import parity_cases
    from sst.export.specs import dummy_inputs

    spec = component_specs(GEOM)[name]
    profiles = profile_shapes(spec, GEOM)
    cases = [dict(spec.trace_dims)] + [dims for _, dims, _ in parity_cases(name, GEOM)]
    for dims in cases:
        feeds = dummy_inputs(spec, GEOM, dims)
        batch = next(iter(feeds.values())).shape[0]
        prof = profiles[bucket_index(batch, batch_buckets(spec.axis_ranges["batch"][2]))]
        for k, v in feeds.items():
            low, _, high = prof[k]
            assert all(a <= d <= c for a, d, c in zip(low, v.shape, high)), (dims, k, v.shape)


def _tiny_onnx(path, fp16: bool):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dtype = np.float16 if fp16 else np.float32
    w = numpy_helper.from_array(np.ones((1, 4), dtype), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16 if fp16
                              else TensorProto.FLOAT),
             helper.make_node("Add", ["xh", "w"], ["yh"]),
             helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_precision_reads_the_graph(tmp_path):
    assert onnx_precision(_tiny_onnx(tmp_path / "a.onnx", fp16=False)) == "fp32"
    assert onnx_precision(_tiny_onnx(tmp_path / "b.onnx", fp16=True)) == "fp16"


ENV = BuildEnv("10.5.0", "NVIDIA H200", "9.0")


@pytest.fixture
def built(tmp_path):
    """A fake plan beside a real ONNX file, with the manifest a build would write."""
    onnx_path = _tiny_onnx(tmp_path / "model.onnx", fp16=True)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")
    profiles = profile_shapes(component_specs(GEOM)["memory_encoder"], GEOM)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    manifest = make_manifest(plan, onnx_path, ENV, profiles, "fp16", 12.34, built_at=when)
    write_manifest(plan, manifest)
    return plan, onnx_path


def test_manifest_records_what_the_plan_is_tied_to(built):
    plan, onnx_path = built
    m = read_manifest(plan)
    assert manifest_path(plan).name == "model.plan.json"
    assert m["onnx_sha256"] == trt_mod.sha256_file(onnx_path)
    assert m["plan_sha256"] == trt_mod.sha256_file(plan)
    assert m["tensorrt_version"] == "10.5.0"
    assert m["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert m["precision"] == "fp16" and m["strongly_typed"] is True
    assert m["built_at"] == "2026-01-02T03:04:05+00:00" and m["build_seconds"] == 12.3
    assert len(m["profiles"]) == 4
    assert m["profiles"][3]["feat_top"]["max"] == [16, 256, 32, 32]
    check_plan(plan, onnx_path, ENV)  # same ONNX, TensorRT and GPU: usable


def test_check_plan_names_each_difference(built):
    plan, onnx_path = built
    with pytest.raises(PlanMismatch, match=r"TensorRT 10\.5\.0, this is TensorRT 10\.7\.0"):
        check_plan(plan, onnx_path, BuildEnv("10.7.0", "NVIDIA H200", "9.0"))
    with pytest.raises(PlanMismatch, match=r"built for NVIDIA H200 \(compute capability 9\.0\), "
                                           r"this GPU is NVIDIA A100.*8\.0"):
        check_plan(plan, onnx_path, BuildEnv("10.5.0", "NVIDIA A100-SXM4-40GB", "8.0"))
    _tiny_onnx(onnx_path, fp16=False)  # re-exported since
    with pytest.raises(PlanMismatch) as err:
        check_plan(plan, onnx_path, BuildEnv("10.7.0", "NVIDIA H200", "9.0"))
    msg = str(err.value)
    assert "stale" in msg and "model.onnx changed" in msg and "TensorRT 10.7.0" in msg
    assert "sst export --tensorrt" in msg


def test_check_plan_refuses_unverifiable_plans(built):
    plan, onnx_path = built
    plan.write_bytes(b"another engine")
    with pytest.raises(PlanMismatch, match="not the file its manifest describes"):
        check_plan(plan, onnx_path, ENV)
    manifest_path(plan).write_text("{not json")
    with pytest.raises(PlanMismatch, match="not valid JSON"):
        check_plan(plan, onnx_path, ENV)
    manifest_path(plan).write_text(json.dumps({"onnx_sha256": "x"}))
    with pytest.raises(PlanMismatch, match="expected the fields"):
        check_plan(plan, onnx_path, ENV)
    manifest_path(plan).unlink()
    with pytest.raises(PlanMismatch, match="no manifest model.plan.json"):
        check_plan(plan, onnx_path, ENV)
    with pytest.raises(PlanMismatch, match="no such plan"):
        check_plan(plan.with_name("other.plan"), onnx_path, ENV)


def test_gpu_identity_from_nvidia_smi(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("PyTorch sees a GPU here, so nvidia-smi is not asked")
    monkeypatch.setattr(trt_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="NVIDIA H200, 9.0\n", stderr="")

    assert trt_mod.gpu_identity(1, run=run) == ("NVIDIA H200", "9.0")
    assert "--id=1" in calls[0]

    def broken(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 9, stdout="", stderr="driver not loaded")

    with pytest.raises(ModelError, match="driver not loaded"):
        trt_mod.gpu_identity(0, run=broken)


def test_check_plan_without_tensorrt_says_so(built):
    if tensorrt_missing() is None:
        pytest.skip("TensorRT is usable here")
    plan, onnx_path = built
    with pytest.raises(ModelError, match="tensorrt|GPU"):
        check_plan(plan, onnx_path)


@pytest.mark.gpu
def test_tensorrt_engines_build(request, tmp_path):
    missing = tensorrt_missing()
    if missing:
        pytest.skip(f"TensorRT engines need a GPU: {missing}")
    import shutil

    exported_repo = request.getfixturevalue("exported_repo")  # only where it is used

    from sst.export.tensorrt import TIMING_CACHE_FILE, build_engines, current_env

    repo = tmp_path / "repo"  # plans beside the shared export would change its serving config
    for name in COMPONENTS:
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(exported_repo / name / "1" / "model.onnx", repo / name / "1")
    shutil.copy(exported_repo / "sst_model.json", repo)
    exported_repo = repo
    meta = json.loads((exported_repo / "sst_model.json").read_text())
    geom = Geometry(**meta["geometry"])
    specs = component_specs(geom)
    report = build_engines(exported_repo, specs, list(COMPONENTS))
    assert (exported_repo / TIMING_CACHE_FILE).stat().st_size > 0
    env = current_env()
    for name in COMPONENTS:
        plan = exported_repo / name / "1" / "model.plan"
        onnx_path = plan.with_name("model.onnx")
        assert plan.stat().st_size > 0, name
        assert report[name]["precision"] == onnx_precision(onnx_path)
        assert report[name]["profiles"] == len(profile_shapes(specs[name], geom))
        check_plan(plan, onnx_path, env)
        assert read_manifest(plan)["tensorrt_version"] == env.tensorrt_version
