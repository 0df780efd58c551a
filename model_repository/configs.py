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
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sst.export.meta import MODEL_META_FILE
from sst.export.ort_providers import (
    TRT_CACHE_DIR,
    WORKSPACE_BYTES,
    fp16_component,
    trt_profile_options,
)
from sst.export.specs import COMPONENTS, ComponentSpec, Geometry
from sst.export.tensorrt import (
    PlanMismatch,
    batch_buckets,
    check_plan,
    profile_shapes,
    tensorrt_missing,
)
from sst.tracker.defaults import SEGMENT_MODEL, SUPPORT_CACHE_MB, TRACKER_MODEL
from sst.tracker.serving.limits import ServiceConfig
from sst.tracker.serving.wire import CORRID, END, INPUTS, OUTPUTS, START

__all__ = ["component_config", "orchestrator_config", "write_repository", "PROFILES", "ENGINES",
           "ORCHESTRATORS", "TRACKER_MODEL", "SEGMENT_MODEL"]

#: Serving profiles: where the engine runs (``sst_tracker``) and how the component models
#: are served. ``cpu``: the engine on the CPU (``--engine auto``: the fastest measured
#: here, ONNX Runtime or PyTorch). ``gpu``: the engine in
#: PyTorch on CUDA (FP16 autocast), served by any tritonserver with the python backend
#: (the nvidia-pytriton wheel's). ``gpu-native``: the same engine, and the component
#: models in Triton's onnxruntime (TensorRT accelerator) or tensorrt_plan backends, which
#: need a full Triton install (``sst serve --tritonserver PATH``). In ``cpu`` and ``gpu``
#: the component models are python-backend ONNX Runtime models on the CPU.
PROFILES = ("cpu", "gpu", "gpu-native")
#: ``sst_tracker``'s engine per profile: (engine, device, precision). The CPU profile's
#: engine is the default one (``$SST_ENGINE``, else ``auto``: measured once per machine
#: and model, :mod:`sst.tracker.engine_choice`) unless ``sst serve --engine`` names one.
ENGINES = {"cpu": ("", "cpu", ""), "gpu": ("torch", "cuda", "fp16"),
           "gpu-native": ("torch", "cuda", "fp16")}
ORCHESTRATORS = (TRACKER_MODEL, SEGMENT_MODEL)
_HERE = Path(__file__).resolve().parent
#: Seconds Triton keeps an idle sequence beyond twice the engine's idle limit.
TRITON_IDLE_GRACE_S = 60.0
log = logging.getLogger(__name__)


def component_config(spec: ComponentSpec, profile: str, *, plan: bool = False,
                     instances: int = 1, queue_delay_us: int = 2000,
                     threads: int = 0, model_meta: str | None = None,
                     model_dir: str | Path | None = None, precision: str = "fp16",
                     geometry: Geometry | None = None) -> str:
    """``config.pbtxt`` of one component, derived from its spec.

    ``cpu`` and ``gpu`` profiles: a python-backend model on ONNX Runtime (CPU).
    ``gpu-native`` profile, ONNX graph: Triton's ``onnxruntime`` backend with the TensorRT
    accelerator: FP16 for the components an FP16 export converts (``precision``), one
    optimisation profile per batch bucket (:func:`sst.export.tensorrt.profile_shapes`,
    for which ``geometry`` or ``model_meta`` must give the model's geometry), and the
    engine and timing caches in ``<model_dir>/trt_cache`` when ``model_dir`` (this
    component's folder) is given; without it no engine is cached and each load builds
    them again. ``gpu-native`` profile, ``plan``: ``tensorrt_plan``, its instances free to use
    every profile the plan was built with."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    max_batch = spec.axis_ranges["batch"][2]
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=max_batch)
    python = profile != "gpu-native"
    if python:
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
                                   if python else mc.ModelInstanceGroup.KIND_GPU)
    if python:
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


def orchestrator_config(name: str, config: ServiceConfig | None = None, *,
                        components: str = "inline", support_cache_mb: int = SUPPORT_CACHE_MB,
                        max_batch: int = 64, queue_delay_us: int = 2000, forwarders: int = 2,
                        engine: tuple[str, str, str] = ENGINES["cpu"]) -> str:
    """``config.pbtxt`` of ``sst_tracker`` (the engine: sessions and stateless requests)
    or ``sst_segment`` (stateless requests, forwarded to ``sst_tracker``), from the wire
    contract (:mod:`sst.tracker.serving.wire`).

    ``sst_tracker`` runs one instance (one engine per device) behind Triton's sequence
    batcher with the ``oldest`` strategy: one ``execute()`` receives up to ``max_batch``
    requests of different sessions (ragged: the python backend takes each request as it
    is), which step together. Triton's candidate slots exceed ``max_sessions`` so that
    the engine, not Triton's backlog, answers a START over the cap, at once.
    ``components``: ``inline`` (in the engine's process) or ``bls`` (the component
    models). ``support_cache_mb``: primed supports kept by content. ``config``: the
    server's settings, whole (sessions, idle time, request budgets; default
    :class:`~sst.tracker.serving.limits.ServiceConfig`). ``engine``:
    ``(ort|torch, device, precision)`` of the engine (see :data:`ENGINES`)."""
    config = config if config is not None else ServiceConfig()
    tracker = name == TRACKER_MODEL
    if not tracker and name != SEGMENT_MODEL:
        raise ValueError(f"unknown orchestrator {name!r}")
    if components not in ("inline", "bls"):
        raise ValueError(f"components must be 'inline' or 'bls', got {components!r}")
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch if tracker else 0)
    for t in INPUTS:
        if tracker or not t.tracker_only:
            cfg.input.add(name=t.name, data_type=mc.DataType.Value(t.triton_dtype),
                          dims=list(t.dims), optional=True, allow_ragged_batch=tracker)
    for t in OUTPUTS:
        cfg.output.add(name=t.name, data_type=mc.DataType.Value(t.triton_dtype),
                       dims=list(t.dims))
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU,
                           count=1 if tracker else forwarders)
    if not tracker:
        return text_format.MessageToString(cfg)
    seq = cfg.sequence_batching
    # One session clock, the engine's: Triton's own idle timeout is set past it (its
    # expiry would answer a later frame with a message, not a reason), so the engine
    # expires a session first and answers session_expired.
    seq.max_sequence_idle_microseconds = int((2 * config.idle_seconds
                                              + TRITON_IDLE_GRACE_S) * 1e6)
    ctl = mc.ModelSequenceBatching.Control
    for tensor, kind in ((START, ctl.CONTROL_SEQUENCE_START),
                         (END, ctl.CONTROL_SEQUENCE_END)):
        seq.control_input.add(name=tensor).control.add(kind=kind, fp32_false_true=[0, 1])
    seq.control_input.add(name=CORRID).control.add(kind=ctl.CONTROL_SEQUENCE_CORRID,
                                                     data_type=mc.TYPE_UINT64)
    seq.oldest.max_candidate_sequences = 4 * config.max_sessions + 64
    seq.oldest.max_queue_delay_microseconds = queue_delay_us
    params = {"max_sessions": str(config.max_sessions),
              "session_idle_seconds": str(config.idle_seconds),
              "components": components, "support_cache_mb": str(support_cache_mb),
              "max_request_bytes": str(config.max_request_bytes),
              "max_request_pixels": str(config.max_request_pixels),
              "engine": engine[0], "device": engine[1], "precision": engine[2]}
    for k, v in params.items():
        if v:  # an empty engine or precision: the default one, decided where it runs
            cfg.parameters[k].string_value = v
    return text_format.MessageToString(cfg)


def _usable_plan(version: Path) -> bool:
    """Serve ``model.plan`` only if its manifest matches its ONNX graph and this machine's
    TensorRT and GPU; where TensorRT is absent the plan cannot be checked here, and the
    server's own TensorRT decides. A stale plan falls back to the ONNX graph, loudly."""
    plan = version / "model.plan"
    if not plan.is_file():
        return False
    if tensorrt_missing() is not None:
        return True
    try:
        check_plan(plan, version / "model.onnx")
    except PlanMismatch as exc:
        log.warning("not serving %s: %s", plan, exc)
        return False
    return True


def write_repository(root: str | Path, specs: Mapping[str, ComponentSpec], profile: str = "cpu",
                     config: ServiceConfig | None = None, *, components: str = "inline",
                     engine: tuple[str, str, str] | None = None) -> list[Path]:
    """(Re)write every ``config.pbtxt`` and ``model.py`` of an exported repository for a
    serving ``profile``; ``engine`` overrides the profile's (:data:`ENGINES`)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    root = Path(root)
    written = []
    meta_file = root / MODEL_META_FILE
    record = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    meta = json.dumps(record) if record is not None else None
    for name in COMPONENTS:
        version = root / name / "1"
        if not (version / "model.onnx").is_file():
            raise FileNotFoundError(f"{version / 'model.onnx'} missing: run `sst export` first")
        plan = profile == "gpu-native" and _usable_plan(version)
        cfg = root / name / "config.pbtxt"
        cfg.write_text(component_config(specs[name], profile, plan=plan, model_meta=meta,
                                        model_dir=root / name))
        written.append(cfg)
        model_py = version / "model.py"
        if profile != "gpu-native":
            shutil.copyfile(_HERE / "ort_component.py", model_py)
            written.append(model_py)
        elif model_py.exists():
            model_py.unlink()
    for name in ORCHESTRATORS:
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        cfg = root / name / "config.pbtxt"
        cfg.write_text(orchestrator_config(name, config, components=components,
                                           engine=engine or ENGINES[profile]))
        shutil.copyfile(_HERE / name / "1" / "model.py", root / name / "1" / "model.py")
        written += [cfg, root / name / "1" / "model.py"]
    if record is not None:  # the profile the configs are for, recorded with the export
        if record.get("serving_profile") != profile or meta_file.is_symlink():
            record["serving_profile"] = profile
            # replaced, not written through: in a view of links the export stays as it is
            tmp = meta_file.with_name(f".{meta_file.name}.tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, meta_file)
    return written
