"""Component ``config.pbtxt`` files, parsed back with Triton's own protobuf schema."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sst.export.ort_providers import trt_profile_options
from sst.export.specs import COMPONENTS, Geometry, component_specs
from sst.export.tensorrt import batch_buckets, profile_shapes
from sst.model_repository.configs import component_config, write_repository

GEOM = Geometry(512)
SPECS = component_specs(GEOM)
META = json.dumps({"model": "sam2.1_hiera_tiny", "geometry": asdict(GEOM)})


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("name", COMPONENTS)
@pytest.mark.parametrize("profile,plan", [("cpu", False), ("gpu", False), ("gpu-native", False),
                                          ("gpu-native", True)])
def test_tensors_and_batching_follow_the_spec(name, profile, plan, tmp_path):
    spec = SPECS[name]
    cfg = parse(component_config(spec, profile, plan=plan, model_meta=META, instances=2,
                                 model_dir=tmp_path / name))
    assert cfg.name == name and cfg.max_batch_size == spec.axis_ranges["batch"][2]
    for tensors, got in ((spec.inputs, cfg.input), (spec.outputs, cfg.output)):
        assert [t.name for t in got] == [t.name for t in tensors]
        for t, g in zip(tensors, got):
            assert mc.DataType.Name(g.data_type) == t.triton_dtype
            assert list(g.dims) == [-1 if isinstance(d, str) else d for d in t.shape[1:]]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    [group] = cfg.instance_group
    assert group.count == 2
    # cpu and gpu: python-backend ONNX Runtime models (any tritonserver); gpu-native: GPU
    assert group.kind == (mc.ModelInstanceGroup.KIND_GPU if profile == "gpu-native"
                          else mc.ModelInstanceGroup.KIND_CPU)
    assert json.loads(cfg.parameters["sst_model_meta"].string_value)["geometry"] == asdict(GEOM)


def test_cpu_profile_runs_onnx_runtime_in_python():
    cfg = parse(component_config(SPECS["image_encoder"], "cpu", threads=3))
    assert cfg.backend == "python" and not cfg.platform
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "onnx_file": "model.onnx", "intra_op_threads": "3", "allow_spinning": "0"}
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator


def _profiles_in(params) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """The profiles as ONNX Runtime reads the accelerator's three strings."""
    per_key = []
    for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        seen: dict[str, list[tuple[int, ...]]] = {}
        for item in params[key].split(","):
            n, dims = item.split(":")
            seen.setdefault(n, []).append(tuple(int(d) for d in dims.split("x")))
        per_key.append(seen)
    count = len(next(iter(per_key[0].values())))
    return [{n: tuple(per_key[k][n][i] for k in range(3)) for n in per_key[0]}
            for i in range(count)]


@pytest.mark.parametrize("name", COMPONENTS)
def test_gpu_onnx_uses_the_tensorrt_accelerator_with_cache_and_profiles(name, tmp_path):
    spec = SPECS[name]
    cfg = parse(component_config(spec, "gpu-native", model_meta=META, model_dir=tmp_path / name))
    assert (cfg.platform, cfg.default_model_filename) == ("onnxruntime_onnx", "model.onnx")
    [acc] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    params = dict(acc.parameters)
    cache = str((tmp_path / name / "trt_cache").resolve())
    assert params["trt_engine_cache_enable"] == "1" and params["trt_timing_cache_enable"] == "1"
    assert params["trt_engine_cache_path"] == params["trt_timing_cache_path"] == cache
    fp16 = name != "mask_decoder"
    assert params.get("precision_mode") == ("FP16" if fp16 else None)
    assert params.get("trt_layer_norm_fp32_fallback") == ("1" if fp16 else None)
    assert int(params["max_workspace_size_bytes"]) == 4 << 30
    profiles = profile_shapes(spec, GEOM)
    assert {k: params[k] for k in trt_profile_options(profiles)} == trt_profile_options(profiles)
    parsed = _profiles_in(params)
    assert parsed == profiles
    assert [p[spec.input_names[0]][2][0] for p in parsed][-1] == cfg.max_batch_size
    assert len(parsed) == len(batch_buckets(cfg.max_batch_size))


def test_gpu_fp32_and_missing_inputs(tmp_path):
    spec = SPECS["image_encoder"]
    cfg = parse(component_config(spec, "gpu-native", geometry=GEOM, precision="fp32"))
    params = dict(cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    assert "precision_mode" not in params
    # without the model folder there is nowhere lasting to cache engines
    assert not any(k.startswith(("trt_engine_cache", "trt_timing_cache")) for k in params)
    assert "trt_profile_min_shapes" in params
    with pytest.raises(ValueError, match="need the model geometry"):
        component_config(spec, "gpu-native")
    with pytest.raises(ValueError, match="profile must be one of"):
        component_config(spec, "tpu")


@pytest.mark.parametrize("name", COMPONENTS)
def test_tensorrt_plan_instances_may_use_every_profile(name):
    spec = SPECS[name]
    cfg = parse(component_config(spec, "gpu-native", plan=True))
    assert (cfg.platform, cfg.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    [group] = cfg.instance_group
    n = len(profile_shapes(spec, GEOM))  # what build_engine puts into the plan
    assert list(group.profile) == [str(i) for i in range(n)]


def test_write_repository_records_its_profile_with_the_export(tmp_path):
    """The profile the configs are written for is recorded in ``sst_model.json`` (which
    ``sst serve`` reads), not in a marker of its own."""
    for name in COMPONENTS:
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"")  # only its presence is read
    (tmp_path / "sst_model.json").write_text(META)
    for profile in ("gpu-native", "cpu"):
        write_repository(tmp_path, SPECS, profile)
        record = json.loads((tmp_path / "sst_model.json").read_text())
        assert record["serving_profile"] == profile
        assert record["geometry"] == asdict(GEOM)  # the rest of the record is kept
        cfg = parse((tmp_path / "image_encoder" / "config.pbtxt").read_text())
        runs_on = cfg.backend or cfg.platform
        assert runs_on == ("onnxruntime_onnx" if profile == "gpu-native" else "python")
    assert not list(tmp_path.glob(".*"))


def test_write_repository_never_writes_through_a_linked_record(tmp_path):
    """A view of links to an export (as the benchmarks serve it) gets its own record."""
    export, view = tmp_path / "export", tmp_path / "view"
    export.mkdir()
    (export / "sst_model.json").write_text(META)
    for name in COMPONENTS:
        (view / name / "1").mkdir(parents=True)
        (view / name / "1" / "model.onnx").write_bytes(b"")
    (view / "sst_model.json").symlink_to(export / "sst_model.json")
    write_repository(view, SPECS, "cpu")
    assert (export / "sst_model.json").read_text() == META
    assert not (view / "sst_model.json").is_symlink()
    assert json.loads((view / "sst_model.json").read_text())["serving_profile"] == "cpu"
