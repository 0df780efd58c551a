"""TensorRT engines from the exported ONNX graphs, their optimisation profiles, and the
manifest that says when an engine may still be used.

* **Profiles** (no TensorRT needed): one optimisation profile per batch bucket
  (:data:`BATCH_BUCKET_EDGES`: 1, 2-4, 5-8, 9-16, ...), up to the component's largest
  batch in its I/O spec (what Triton's batcher sends) or, for the in-process engine's
  TensorRT provider, up to the rows that engine sends (:func:`profile_max_rows`: 64
  objects at 32 sessions x 2 labels). The other symbolic axes take their spec ranges, except the
  memory-attention bank, which takes what the tracker can really send: ``1 ..
  supports + num_maskmem - 1`` memories and ``0 .. supports + max_obj_ptrs - 1``
  pointers (optimised for one support and a full bank), from the model's geometry.
  :func:`profile_shapes` is the one source for engines built here, ONNX Runtime's
  TensorRT provider (:mod:`sst.export.ort_providers`) and Triton configs; an engine
  that batches requests can pick its bucket with :func:`bucket_index`.
* **Manifest** (no TensorRT needed): ``model.plan.json`` beside each ``model.plan``
  records the ONNX file's SHA-256, the TensorRT version, the GPU (name and compute
  capability), the profiles, the precision and the build time. :func:`check_plan`
  refuses a plan whose ONNX changed, or that another TensorRT or another GPU built.
* **Build** (:func:`build_engine`, GPU machines with the ``gpu`` extras): a timing
  cache file (:data:`TIMING_CACHE_FILE` at the repository root) is loaded before and
  saved after every build, so rebuilding after an export or for a second component
  re-times only layers it has not seen.

Precision: engines are built from **strongly typed** networks. TensorRT then keeps
every tensor in the type the ONNX graph gives it, so an FP16 export
(``sst export --precision fp16``) gives an FP16 engine whose FP32 islands (LayerNorm,
softmax, reductions, and the whole mask decoder) are the ones the export chose and
checked against sam2 in ONNX Runtime. The alternative, an FP32 graph built with the
FP16 flag plus ``OBEY_PRECISION_CONSTRAINTS`` on chosen layers, would need a second
list of FP32 layers written in TensorRT terms (sam2's LayerNorm2d reaches the parser as
loose ReduceMean/Sub/Pow ops that the export finds by scope), and every layer not on
that list would be free to run in FP16. An FP32 graph gives an FP32 engine, with TF32
off so that it stays at parity with the FP32 export.

Engines are written beside the ONNX file as ``<component>/1/model.plan`` so that
Triton's ``tensorrt_plan`` backend can serve them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sst.export.meta import MODEL_META_FILE
from sst.export.specs import ComponentSpec, Geometry
from sst.tracker.errors import ModelError, PlanMismatch

__all__ = ["BATCH_BUCKET_EDGES", "DEFAULT_MAX_SUPPORTS", "TIMING_CACHE_FILE", "MANIFEST_SUFFIX",
           "BuildEnv", "PlanMismatch", "Shapes", "batch_buckets", "bucket_index",
           "axis_ranges", "profile_shapes", "profile_max_rows", "ENGINE_MAX_ROWS",
           "onnx_precision", "sha256_file", "manifest_path",
           "make_manifest", "write_manifest", "read_manifest", "plan_mismatches", "check_plan",
           "gpu_identity", "current_env", "tensorrt_missing", "build_engine", "build_engines"]

#: Upper edges of the batch buckets: 1, 2-4, 5-8, 9-16, 17-32, 33-64 (rows per call:
#: objects, or images for the encoder). A component's last bucket ends at its largest
#: batch; beyond 64 one more bucket takes the rest.
BATCH_BUCKET_EDGES = (1, 4, 8, 16, 32, 64)
#: The most rows the in-process engine sends one component per call on a GPU (32 sessions
#: x 2 labels of objects; 16 frames per image-encoder call): its TensorRT provider's
#: profiles reach this far, and :class:`~sst.tracker.backends.OrtBackend` splits larger
#: calls to fit.
ENGINE_MAX_ROWS = {"image_encoder": 16, "memory_attention": 64, "mask_decoder": 64,
                   "memory_encoder": 64}
#: Support images (k-shot) a session may attend to at once; sizes the memory-attention
#: profiles (``supports + num_maskmem - 1`` memories at most).
DEFAULT_MAX_SUPPORTS = 8
#: Timing cache, shared by all components of a repository (a file: Triton takes every
#: folder at the repository root for a model).
TIMING_CACHE_FILE = "tensorrt_timing.cache"
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = 1

#: ``(min, opt, max)`` shape of one input in one profile.
Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


# ---------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------


def batch_buckets(max_batch: int) -> tuple[tuple[int, int], ...]:
    """``((lo, hi), ...)`` covering ``1..max_batch`` without gaps, cut at
    :data:`BATCH_BUCKET_EDGES`; e.g. 16 -> ``((1, 1), (2, 4), (5, 8), (9, 16))``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    out = []
    lo = 1
    for edge in BATCH_BUCKET_EDGES:
        if lo > max_batch:
            break
        out.append((lo, min(edge, max_batch)))
        lo = edge + 1
    if lo <= max_batch:
        out.append((lo, max_batch))
    return tuple(out)


def bucket_index(batch: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket (= optimisation profile) that holds ``batch`` rows."""
    for i, (lo, hi) in enumerate(buckets):
        if lo <= batch <= hi:
            return i
    raise ValueError(f"batch {batch} is outside every bucket {list(buckets)}")


def profile_max_rows(spec: ComponentSpec) -> int:
    """The largest batch the profiles of ``spec`` take: its spec's largest batch, or the
    rows the engine sends (:data:`ENGINE_MAX_ROWS`) where that is more."""
    return max(int(spec.axis_ranges["batch"][2]), ENGINE_MAX_ROWS.get(spec.name, 0))


def axis_ranges(spec: ComponentSpec, geom: Geometry,
                max_supports: int = DEFAULT_MAX_SUPPORTS) -> dict[str, tuple[int, int, int]]:
    """``(min, opt, max)`` of every non-batch symbolic axis of ``spec`` as engines see it.

    The memory-attention bank holds the supports' memories plus the last
    ``num_maskmem - 1`` frames', and their pointers plus the last ``max_obj_ptrs - 1``
    frames'; ``opt`` is one support with a full bank (sequential SST's steady state)."""
    if max_supports < 1:
        raise ValueError(f"max_supports must be at least 1, got {max_supports}")
    out = {k: v for k, v in spec.axis_ranges.items() if k != "batch"}
    if "num_frames" in out:
        out["num_frames"] = (1, geom.num_maskmem, max_supports + geom.num_maskmem - 1)
    if "num_ptrs" in out:
        out["num_ptrs"] = (0, geom.max_obj_ptrs, max_supports + geom.max_obj_ptrs - 1)
    missing = {a for t in spec.inputs for a in t.symbolic_axes().values()} - set(out) - {"batch"}
    if missing:
        raise ModelError(f"{spec.name}: no range for symbolic axes {sorted(missing)} in its spec")
    return out


def profile_shapes(spec: ComponentSpec, geom: Geometry,
                   max_supports: int = DEFAULT_MAX_SUPPORTS,
                   max_rows: int | None = None) -> list[dict[str, Shapes]]:
    """One ``{input: (min_shape, opt_shape, max_shape)}`` per batch bucket of ``spec`` up to
    ``max_rows`` (default: the spec's largest batch, what Triton's batcher sends; the
    in-process engine's TensorRT provider takes :func:`profile_max_rows`); ``opt`` batch is
    the bucket's top, so TensorRT tunes for the costliest calls in it."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    others = axis_ranges(spec, geom, max_supports)
    profiles = []
    for lo, hi in batch_buckets(max_rows or int(spec.axis_ranges["batch"][2])):
        ranges = {"batch": (lo, hi, hi), **others}
        low, opt, high = ({a: r[k] for a, r in ranges.items()} for k in range(3))
        profiles.append({t.name: (t.concrete_shape(low), t.concrete_shape(opt),
                                  t.concrete_shape(high)) for t in spec.inputs})
    return profiles


def onnx_precision(onnx_path: str | Path) -> str:
    """``"fp16"`` if the graph holds any FP16 weight or value, else ``"fp32"``."""
    import onnx  # only for a graph's precision: the client install has no onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    g = model.graph
    if any(i.data_type == fp16 for i in g.initializer):
        return "fp16"
    for v in (*g.input, *g.output, *g.value_info):
        if v.type.tensor_type.elem_type == fp16:
            return "fp16"
    for node in g.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


# ---------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildEnv:
    """What a plan is tied to besides its ONNX file."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path(plan_path: str | Path) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + MANIFEST_SUFFIX)


def make_manifest(plan_path: str | Path, onnx_path: str | Path, env: BuildEnv,
                  profiles: Sequence[Mapping[str, Shapes]], precision: str,
                  build_seconds: float, built_at: _dt.datetime | None = None) -> dict[str, Any]:
    """The manifest of a freshly built plan (see the module docstring)."""
    built_at = built_at or _dt.datetime.now(_dt.timezone.utc)
    return {
        "format": MANIFEST_FORMAT,
        "plan": Path(plan_path).name,
        "plan_sha256": sha256_file(plan_path),
        "onnx": Path(onnx_path).name,
        "onnx_sha256": sha256_file(onnx_path),
        "tensorrt_version": env.tensorrt_version,
        "gpu": {"name": env.gpu_name, "compute_capability": env.compute_capability},
        "precision": precision,
        "strongly_typed": True,
        "profiles": [{name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                      for name, s in p.items()} for p in profiles],
        "built_at": built_at.isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 1),
    }


def write_manifest(plan_path: str | Path, manifest: Mapping[str, Any]) -> Path:
    path = manifest_path(plan_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(plan_path: str | Path) -> dict[str, Any]:
    path = manifest_path(plan_path)
    if not path.is_file():
        raise PlanMismatch(f"{plan_path}: no manifest {path.name} beside it, so nothing says "
                           "which ONNX, TensorRT and GPU built it; rebuild it with "
                           "`sst export --tensorrt`")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise PlanMismatch(f"{path}: not valid JSON ({exc}); rebuild the plan") from None
    need = ("onnx_sha256", "plan_sha256", "tensorrt_version", "gpu")
    if not isinstance(raw, dict) or any(k not in raw for k in need):
        raise PlanMismatch(f"{path}: expected the fields {list(need)}, got "
                           f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}; "
                           "rebuild the plan")
    return raw


def plan_mismatches(manifest: Mapping[str, Any], plan_path: str | Path,
                    onnx_path: str | Path, env: BuildEnv) -> list[str]:
    """Every reason the plan described by ``manifest`` must not be used with
    ``onnx_path`` under ``env`` (empty: it may)."""
    out = []
    if not Path(onnx_path).is_file():
        out.append(f"its ONNX file {onnx_path} is missing")
    elif sha256_file(onnx_path) != manifest["onnx_sha256"]:
        out.append(f"stale: {onnx_path} changed since the plan was built "
                   f"(sha256 {sha256_file(onnx_path)[:12]}, plan built from "
                   f"{str(manifest['onnx_sha256'])[:12]})")
    if sha256_file(plan_path) != manifest["plan_sha256"]:
        out.append(f"{Path(plan_path).name} is not the file its manifest describes "
                   "(sha256 differs)")
    if manifest["tensorrt_version"] != env.tensorrt_version:
        out.append(f"built by TensorRT {manifest['tensorrt_version']}, this is TensorRT "
                   f"{env.tensorrt_version}")
    gpu = manifest["gpu"]
    built_for = (gpu.get("name"), str(gpu.get("compute_capability")))
    if built_for != (env.gpu_name, env.compute_capability):
        out.append(f"built for {built_for[0]} (compute capability {built_for[1]}), this GPU is "
                   f"{env.gpu_name} (compute capability {env.compute_capability})")
    return out


def check_plan(plan_path: str | Path, onnx_path: str | Path, env: BuildEnv | None = None) -> None:
    """Raise :class:`PlanMismatch` naming each difference (stale ONNX, another TensorRT,
    another GPU) unless the plan at ``plan_path`` may be used; ``env`` defaults to this
    machine's (:func:`current_env`)."""
    if not Path(plan_path).is_file():
        raise PlanMismatch(f"{plan_path}: no such plan; build it with `sst export --tensorrt`")
    manifest = read_manifest(plan_path)
    problems = plan_mismatches(manifest, plan_path, onnx_path, env or current_env())
    if problems:
        raise PlanMismatch(f"{plan_path} cannot be used: " + "; ".join(problems)
                           + ". Rebuild it with `sst export --tensorrt` on this machine.")


def gpu_identity(device: int = 0,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run
                 ) -> tuple[str, str]:
    """``(name, "major.minor")`` of CUDA device ``device``: from PyTorch when it sees the
    GPU, else from ``nvidia-smi``."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    if shutil.which("nvidia-smi") is None:
        raise ModelError("no NVIDIA GPU found (PyTorch sees no CUDA device and nvidia-smi "
                         "is not on PATH)")
    res = run(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap",
               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    fields = [f.strip() for f in res.stdout.strip().split(",")]
    if res.returncode != 0 or len(fields) != 2:
        raise ModelError(f"nvidia-smi could not name GPU {device}: "
                         f"{(res.stderr or res.stdout).strip()}")
    return fields[0], fields[1]


def current_env(device: int = 0) -> BuildEnv:
    """This machine's TensorRT version and GPU (needs the ``tensorrt`` package)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ModelError("the tensorrt Python package is not installed "
                         "(install the GPU extras: ./install.sh --gpu)") from None
    name, cc = gpu_identity(device)
    return BuildEnv(str(trt.__version__), name, cc)


# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------


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

        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:
            return "TensorRT cannot create a builder (no usable CUDA device)"
    except Exception as exc:  # driver/CUDA problems surface here
        return f"TensorRT cannot create a builder: {exc}"
    return None


def read_geometry(repo: Path) -> Geometry:
    """The geometry recorded in an export folder's ``sst_model.json``."""
    path = repo / MODEL_META_FILE
    try:
        return Geometry(**json.loads(path.read_text())["geometry"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: cannot read the model geometry ({exc}); "
                         f"re-run `sst export` into {repo}") from None


def build_engine(onnx_path: Path, spec: ComponentSpec, geom: Geometry, plan_path: Path, *,
                 timing_cache: Path | None = None, workspace_gib: float = 4.0,
                 max_supports: int = DEFAULT_MAX_SUPPORTS) -> dict[str, Any]:
    """Build ``plan_path`` (and its manifest) from ``onnx_path``: strongly typed, one
    profile per batch bucket; ``timing_cache`` is read first (if present) and saved after."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errs}")
    precision = onnx_precision(onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False) and cache_bytes:
        # written by another TensorRT or GPU: time every layer again, then overwrite it
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    profiles = profile_shapes(spec, geom, max_supports)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    t = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ModelError(f"TensorRT failed to build an engine for {onnx_path}")
    seconds = time.perf_counter() - t
    plan_path.write_bytes(bytes(blob))
    if timing_cache is not None:
        tmp = timing_cache.with_name(timing_cache.name + ".tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, timing_cache)
    manifest = make_manifest(plan_path, onnx_path, current_env(), profiles, precision, seconds)
    write_manifest(plan_path, manifest)
    return {"file": str(plan_path), "bytes": plan_path.stat().st_size,
            "build_seconds": manifest["build_seconds"], "precision": precision,
            "profiles": len(profiles), "manifest": str(manifest_path(plan_path))}


def build_engines(out: Path, specs: Mapping[str, ComponentSpec], components: Sequence[str], *,
                  geom: Geometry | None = None,
                  max_supports: int = DEFAULT_MAX_SUPPORTS) -> dict[str, Any]:
    """Build ``out/<component>/1/model.plan`` for each of ``components``, sharing one
    timing cache (``out/`` :data:`TIMING_CACHE_FILE`). ``geom`` defaults to the one
    ``sst export`` recorded in ``out``."""
    missing = tensorrt_missing()
    if missing:
        raise ModelError(f"cannot build TensorRT engines: {missing}")
    geom = geom or read_geometry(out)
    cache = out / TIMING_CACHE_FILE
    return {name: build_engine(out / name / "1" / "model.onnx", specs[name], geom,
                               out / name / "1" / "model.plan", timing_cache=cache,
                               max_supports=max_supports)
            for name in components}
