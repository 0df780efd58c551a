"""Triton ``config.pbtxt`` files derived from the export I/O specs, and repository layout.

A repository written by ``sst export --out DIR`` (or :func:`write_repository`) is
complete and servable::

    DIR/<component>/config.pbtxt, DIR/<component>/1/model.onnx (+ model.py on CPU,
                                                            model.plan with TensorRT)
    DIR/sst_tracker/config.pbtxt, DIR/sst_tracker/1/model.py    sessions (sequence batcher)
    DIR/sst_segment/config.pbtxt, DIR/sst_segment/1/model.py    stateless requests

Profiles: ``cpu`` runs each component in a Python-backend model that calls ONNX Runtime
(the Triton build in the nvidia-pytriton wheel has no onnxruntime backend); ``gpu`` uses
Triton's ``onnxruntime`` backend with the TensorRT accelerator in FP16, or
``tensorrt_plan`` when ``model.plan`` engines exist.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from sst.export.specs import COMPONENTS, ComponentSpec, Geometry

__all__ = ["component_config", "orchestrator_config", "write_repository", "PROFILES",
           "ORCHESTRATORS", "TRACKER_MODEL", "SEGMENT_MODEL"]

PROFILES = ("cpu", "gpu")
TRACKER_MODEL = "sst_tracker"
SEGMENT_MODEL = "sst_segment"
ORCHESTRATORS = (TRACKER_MODEL, SEGMENT_MODEL)
_HERE = Path(__file__).resolve().parent


def component_config(spec: ComponentSpec, profile: str, *, plan: bool = False,
                     instances: int = 1, queue_delay_us: int = 2000,
                     threads: int = 0, model_meta: str | None = None,
                     model_dir: str | Path | None = None, precision: str = "fp16",
                     geometry: Geometry | None = None) -> str:
    """``config.pbtxt`` of one component, derived from its spec.

    ``gpu`` profile, ONNX graph: Triton's ``onnxruntime`` backend with the TensorRT
    accelerator: FP16 for the components an FP16 export converts (``precision``), one
    optimisation profile per batch bucket (:func:`sst.export.tensorrt.profile_shapes`,
    for which ``geometry`` or ``model_meta`` must give the model's geometry), and the
    engine and timing caches in ``<model_dir>/trt_cache`` when ``model_dir`` (this
    component's folder) is given; without it no engine is cached and each load builds
    them again. ``gpu`` profile, ``plan``: ``tensorrt_plan``, its instances free to use
    every profile the plan was built with."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from sst.export.ort_providers import (
        TRT_CACHE_DIR,
        WORKSPACE_BYTES,
        fp16_component,
        trt_profile_options,
    )
    from sst.export.tensorrt import batch_buckets, profile_shapes

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    max_batch = spec.axis_ranges["batch"][2]
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=max_batch)
    if profile == "cpu":
        cfg.backend = "python"
    elif plan:
        cfg.platform, cfg.default_model_filename = "tensorrt_plan", "model.plan"
    else:
        cfg.platform, cfg.default_model_filename = "onnxruntime_onnx", "model.onnx"
    for tensors, field in ((spec.inputs, cfg.input), (spec.outputs, cfg.output)):
        for t in tensors:  # dims without the batch axis; symbolic axes are -1
            field.add(name=t.name, data_type=mc.DataType.Value(t.triton_dtype),
                      dims=[-1 if isinstance(d, str) else d for d in t.shape[1:]])
    cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    group = cfg.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU
                                   if profile == "cpu" else mc.ModelInstanceGroup.KIND_GPU)
    if profile == "cpu":
        for key, value in (("onnx_file", "model.onnx"), ("intra_op_threads", str(threads)),
                           ("allow_spinning", "0")):
            cfg.parameters[key].string_value = value
    elif plan:
        group.profile.extend(str(i) for i in range(len(batch_buckets(max_batch))))
    else:
        if geometry is None:
            if model_meta is None:
                raise ValueError(f"{spec.name}: the gpu profile's TensorRT profiles need the "
                                 "model geometry: pass geometry= or model_meta=")
            geometry = Geometry(**json.loads(model_meta)["geometry"])
        trt = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt")
        params = {"max_workspace_size_bytes": str(WORKSPACE_BYTES)}
        if fp16_component(spec.name, precision):
            params.update(precision_mode="FP16", trt_layer_norm_fp32_fallback="1")
        if model_dir is not None:
            cache = str(Path(model_dir).resolve() / TRT_CACHE_DIR)
            params.update(trt_engine_cache_enable="1", trt_engine_cache_path=cache,
                          trt_timing_cache_enable="1", trt_timing_cache_path=cache)
        params.update(trt_profile_options(profile_shapes(spec, geometry)))
        for key, value in params.items():
            trt.parameters[key] = value
    if model_meta is not None:  # lets remote clients learn the model's geometry
        cfg.parameters["sst_model_meta"].string_value = model_meta
    return text_format.MessageToString(cfg)


_ORCH_IO = """input [
  { name: "SUPPORT_IMAGES" data_type: TYPE_STRING dims: [ -1 ] optional: true },
  { name: "SUPPORT_MASKS" data_type: TYPE_STRING dims: [ -1 ] optional: true },
  { name: "QUERY_IMAGES" data_type: TYPE_STRING dims: [ -1 ] optional: true },
  { name: "QUERY_IMAGE_RAW" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] optional: true }
]
output [
  { name: "LABELS" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "MASKS" data_type: TYPE_UINT8 dims: [ -1 ] },
  { name: "MASK_SHAPES" data_type: TYPE_INT32 dims: [ -1, 2 ] },
  { name: "OBJECT_SCORES" data_type: TYPE_FP32 dims: [ -1, -1 ] },
  { name: "IOUS" data_type: TYPE_FP32 dims: [ -1, -1 ] },
  { name: "AREAS" data_type: TYPE_INT64 dims: [ -1, -1 ] }
]
"""


def orchestrator_config(name: str, *, instances: int = 1, max_sessions: int = 64,
                        idle_seconds: float = 600.0, inline_ort: bool = False,
                        support_cache_mb: int = 256) -> str:
    """``config.pbtxt`` of ``sst_tracker`` (sessions) or ``sst_segment`` (stateless).
    ``support_cache_mb``: primed supports kept by content (0 = prime every time)."""
    params = {"max_sessions": str(max_sessions), "session_idle_seconds": str(idle_seconds),
              "inline_ort": "1" if inline_ort else "0",
              "support_cache_mb": str(support_cache_mb)}
    out = f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n' + _ORCH_IO
    if name == TRACKER_MODEL:
        idle_us = int(idle_seconds * 1e6)
        out += (
            "sequence_batching {\n"
            f"  max_sequence_idle_microseconds: {idle_us}\n"
            "  control_input [\n"
            '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START '
            "fp32_false_true: [ 0, 1 ] } ] },\n"
            '    { name: "END" control [ { kind: CONTROL_SEQUENCE_END '
            "fp32_false_true: [ 0, 1 ] } ] },\n"
            '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID '
            "data_type: TYPE_UINT64 } ] }\n"
            "  ]\n"
            "  oldest { max_candidate_sequences: %d }\n"
            "}\n" % max(4, max_sessions))
    elif name != SEGMENT_MODEL:
        raise ValueError(f"unknown orchestrator {name!r}")
    out += f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
    for k, v in params.items():
        out += f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
    return out


def write_repository(root: str | Path, specs: Mapping[str, ComponentSpec], profile: str = "cpu",
                     *, max_sessions: int = 64, idle_seconds: float = 600.0,
                     inline_ort: bool = False, orchestrator_instances: int = 2) -> list[Path]:
    """(Re)write every ``config.pbtxt`` and ``model.py`` of an exported repository.

    Each orchestrator runs ``orchestrator_instances`` instances (processes), so that one
    session's host work (decoding, resizing, memory selection) overlaps another's model
    time; Triton keeps every request of a session on the instance that started it. The
    ``max_sessions`` cap is split evenly between the instances."""
    root = Path(root)
    written = []
    meta_file = root / "sst_model.json"
    meta = json.dumps(json.loads(meta_file.read_text())) if meta_file.is_file() else None
    for name in COMPONENTS:
        version = root / name / "1"
        if not (version / "model.onnx").is_file():
            raise FileNotFoundError(f"{version / 'model.onnx'} missing: run `sst export` first")
        plan = (version / "model.plan").is_file()
        cfg = root / name / "config.pbtxt"
        cfg.write_text(component_config(specs[name], profile, plan=plan, model_meta=meta))
        written.append(cfg)
        model_py = version / "model.py"
        if profile == "cpu":
            shutil.copyfile(_HERE / "ort_component.py", model_py)
            written.append(model_py)
        elif model_py.exists():
            model_py.unlink()
    instances = max(1, min(orchestrator_instances, max_sessions))
    per_instance = -(-max_sessions // instances)
    for name in ORCHESTRATORS:
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        cfg = root / name / "config.pbtxt"
        cfg.write_text(orchestrator_config(name, instances=instances, max_sessions=per_instance,
                                           idle_seconds=idle_seconds, inline_ort=inline_ort))
        shutil.copyfile(_HERE / name / "1" / "model.py", root / name / "1" / "model.py")
        written += [cfg, root / name / "1" / "model.py"]
    (root / ".sst_profile").write_text(profile + "\n")
    return written
