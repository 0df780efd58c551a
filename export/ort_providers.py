"""ONNX Runtime execution-provider options for the exported components on a GPU.

:func:`provider_options` gives the ``providers`` list for ``onnxruntime.InferenceSession``
of one component: the TensorRT provider, the CUDA provider and the CPU provider, in the
order asked for. The TensorRT provider gets:

* its engine cache in ``<model_dir>/<component>/trt_cache`` (inside the exported model
  folder, so it lives as long as the graph it was built from, and is found again by the
  next session or process: engines are built once, not at every start);
* the TensorRT timing cache in the same folder (rebuilds re-time only new layers);
* explicit optimisation profiles, one per batch bucket, from
  :func:`sst.export.tensorrt.profile_shapes` (the same ones ``sst export --tensorrt``
  builds into plans): without them the provider builds an engine for the first shapes
  it sees and builds again whenever a later call falls outside them;
* FP16 for the components an FP16 export converts (image encoder, memory attention,
  memory encoder), with LayerNorm's power and reductions kept in FP32; the mask decoder
  stays FP32 (in half precision its mask-prompt logits overflow, see
  :data:`sst.export.specs.FP16_COMPONENTS`).

Triton's ``onnxruntime`` backend takes the same TensorRT options as accelerator
parameters (:func:`trt_profile_options` is shared with
:func:`sst.model_repository.configs.component_config`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sst.export.families import family_specs
from sst.export.specs import COMPONENTS, FP16_COMPONENTS, Geometry
from sst.export.tensorrt import (
    DEFAULT_MAX_SUPPORTS,
    Shapes,
    profile_max_rows,
    profile_shapes,
    read_geometry,
)

__all__ = ["PROVIDER_NAMES", "TRT_CACHE_DIR", "WORKSPACE_BYTES", "provider_options",
           "trt_cache_dir", "trt_profile_options", "fp16_component"]

#: Short names accepted for the providers (full ONNX Runtime names work too).
PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "cpu": "CPUExecutionProvider"}
#: Folder, inside each component's model folder, for TensorRT engines and timing caches.
TRT_CACHE_DIR = "trt_cache"
#: TensorRT workspace limit per engine.
WORKSPACE_BYTES = 4 << 30


def fp16_component(component: str, precision: str) -> bool:
    """Whether ``component`` runs in FP16 at model precision ``precision``."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    return precision == "fp16" and component in FP16_COMPONENTS


def trt_cache_dir(model_dir: str | Path, component: str) -> Path:
    """``<model_dir>/<component>/trt_cache``, absolute (Triton and ONNX Runtime take it
    as given, whatever their working directory)."""
    return Path(model_dir).resolve() / component / TRT_CACHE_DIR


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def trt_profile_options(profiles: Sequence[Mapping[str, Shapes]]) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` for ONNX Runtime's TensorRT provider:
    ``"name:AxBxC,other:DxE,..."``; an input named once per profile (ONNX Runtime reads
    the n-th mention of every input as profile n)."""
    out = {}
    for k, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes",
                             "trt_profile_max_shapes")):
        out[key] = ",".join(f"{name}:{_dims(shapes[k])}"
                            for profile in profiles for name, shapes in profile.items())
    return out


def provider_options(model_dir: str | Path, component: str, precision: str,
                     providers: Sequence[str] = ("tensorrt", "cuda", "cpu"), *,
                     device_id: int = 0, geometry: Geometry | None = None,
                     max_supports: int = DEFAULT_MAX_SUPPORTS) -> list[tuple[str, dict[str, str]]]:
    """``[(provider, options), ...]`` for one component's ``InferenceSession``.

    ``precision`` is the model's (``sst_model.json``'s ``precision``); ``geometry``
    defaults to the one recorded in ``model_dir``. The TensorRT cache folder is created."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    fp16 = fp16_component(component, precision)
    model_dir = Path(model_dir)
    out: list[tuple[str, dict[str, str]]] = []
    for p in providers:
        name = PROVIDER_NAMES.get(p.lower(), p)
        if name == "TensorrtExecutionProvider":
            geom = geometry or read_geometry(model_dir)
            spec = family_specs(geom)[component]
            cache = trt_cache_dir(model_dir, component)
            cache.mkdir(parents=True, exist_ok=True)
            opts = {"device_id": str(device_id),
                    "trt_max_workspace_size": str(WORKSPACE_BYTES),
                    "trt_fp16_enable": "1" if fp16 else "0",
                    "trt_layer_norm_fp32_fallback": "1" if fp16 else "0",
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": "1",
                    "trt_timing_cache_path": str(cache),
                    **trt_profile_options(profile_shapes(spec, geom, max_supports,
                                                         profile_max_rows(spec)))}
        elif name == "CUDAExecutionProvider":
            # HEURISTIC: batch sizes change from call to call, and an exhaustive cuDNN
            # search runs again for every new shape. TF32 off: FP32 parts stay FP32.
            opts = {"device_id": str(device_id),
                    "arena_extend_strategy": "kSameAsRequested",
                    "cudnn_conv_algo_search": "HEURISTIC",
                    "do_copy_in_default_stream": "1",
                    "use_tf32": "0"}
        elif name == "CPUExecutionProvider":
            opts = {}
        else:
            raise ValueError(f"unknown execution provider {p!r}: expected one of "
                             f"{sorted(PROVIDER_NAMES)} or their ONNX Runtime names")
        out.append((name, opts))
    return out
