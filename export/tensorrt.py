"""TensorRT FP16 engines from the exported ONNX graphs (GPU machines only).

Optimisation profiles come from the same I/O specs as everything else: each symbolic
axis's ``(min, opt, max)`` in :attr:`ComponentSpec.axis_ranges`. Engines are written
beside the ONNX file as ``<component>/1/model.plan`` so that Triton's ``tensorrt_plan``
backend can serve them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sst.export.specs import ComponentSpec
from sst.tracker.errors import ModelError

__all__ = ["tensorrt_missing", "profile_shapes", "build_engine", "build_engines"]


def tensorrt_missing() -> str | None:
    """Why TensorRT engines cannot be built here, or ``None`` if they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("the tensorrt Python package is not installed "
                "(install the GPU extras: ./install.sh --gpu)")
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU found (nvidia-smi is not on PATH)"
    try:
        import tensorrt as trt

        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None or not builder.platform_has_fast_fp16:
            return "the GPU has no fast FP16 support"
    except Exception as exc:  # driver/CUDA problems surface here
        return f"TensorRT cannot create a builder: {exc}"
    return None


def profile_shapes(spec: ComponentSpec) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{input: (min_shape, opt_shape, max_shape)}`` for every input of ``spec``."""
    out = {}
    for t in spec.inputs:
        shapes = []
        for k in range(3):
            dims = {axis: rng[k] for axis, rng in spec.axis_ranges.items()}
            shapes.append(t.concrete_shape(dims))
        out[t.name] = tuple(shapes)
    return out


def build_engine(onnx_path: Path, spec: ComponentSpec, plan_path: Path,
                 fp16: bool = True, workspace_gib: float = 4.0) -> dict[str, Any]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    t = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ModelError(f"TensorRT failed to build an engine for {onnx_path}")
    plan_path.write_bytes(bytes(blob))
    return {"file": str(plan_path), "bytes": plan_path.stat().st_size,
            "build_seconds": round(time.perf_counter() - t, 1), "fp16": fp16}


def build_engines(out: Path, specs: Mapping[str, ComponentSpec],
                  components: Sequence[str]) -> dict[str, Any]:
    missing = tensorrt_missing()
    if missing:
        raise ModelError(f"cannot build TensorRT engines: {missing}")
    return {name: build_engine(out / name / "1" / "model.onnx", specs[name],
                               out / name / "1" / "model.plan") for name in components}
