"""``sst export``: a model's four components to ONNX, checked against its family's own
reference (sam2 itself for SAM 2, transformers for EdgeTAM).

:func:`run_export` is the typed entry point; the CLI only parses arguments and calls it.
It writes a Triton model-repository layout::

    <out>/<component>/1/model.onnx        image_encoder, memory_attention, mask_decoder,
                                          memory_encoder
    <out>/sst_model.json                  model name, geometry, precision, weights origin
    <out>/export_report.json              parity per component (and per case)

Parity compares each graph, run in ONNX Runtime, with the reference's own code path
(:mod:`sst.export.reference`, :mod:`sst.export.edgetam_reference`) on shapes other than
the traced ones. Every case runs; all
failures are collected before the export fails.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from sst.export.families import family, family_of_model
from sst.export.meta import EXPORT_FORMAT, MODEL_META_FILE, REPORT_FILE
from sst.export.specs import (
    COMPONENTS,
    FP16_COMPONENTS,
    ComponentSpec,
    Geometry,
    dummy_inputs,
)
from sst.export.tensorrt import build_engines, tensorrt_missing
from sst.tracker.errors import ModelError

__all__ = ["ExportResult", "run_export", "parity_cases", "check_parity", "TOLERANCES",
           "default_serving_profile"]

log = logging.getLogger(__name__)

OPSET = 17

#: Max absolute difference allowed against sam2, per component and precision. FP32
#: graphs differ from sam2 by float reassociation only: 1-4e-6 measured at 256, 512 and
#: 1024 px with random weights (every component); the gate is 1e-4, room for the larger
#: activations of trained weights. FP16 graphs are bounded by half precision on
#: activations of order 10-100.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"image_encoder": 1e-4, "memory_attention": 1e-4, "mask_decoder": 1e-4,
             "memory_encoder": 1e-4},
    "fp16": {"image_encoder": 0.05, "memory_attention": 0.05, "memory_encoder": 0.05},
}


def default_serving_profile() -> str:
    """``gpu`` where an NVIDIA driver is installed (``nvidia-smi`` on the PATH), else ``cpu``."""
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


@dataclass
class ExportResult:
    out_dir: Path
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


def parity_cases(name: str, geom: Geometry) -> list[tuple[str, dict[str, int], Callable | None]]:
    """Shapes (other than the traced ones) at which each component is compared.

    Returns ``(label, axis sizes, input fixer)``; the fixer makes flag combinations that
    the case is about (point-only, mask-only, support rows).
    """
    S = geom.image_size
    if name == "image_encoder":
        return [("batch1", {"batch": 1}, None), ("batch3", {"batch": 3}, None)]
    if name == "memory_attention":
        return [(f"b{b}_frames{fr}_ptrs{p}", {"batch": b, "num_frames": fr, "num_ptrs": p}, None)
                for b, fr, p in ((1, 1, 0), (3, 3, 2), (2, 7, 16))]
    if name == "mask_decoder":
        def points_only(x: dict[str, np.ndarray]) -> None:
            x["has_mask_input"][:] = 0
            x["mask_from_support"][:] = 0
            x["multimask"][:, 0] = np.arange(len(x["multimask"])) % 2  # both selections

        def mask_only(x: dict[str, np.ndarray]) -> None:
            x["point_labels"][:] = -1
            x["point_coords"][:] = 0
            x["has_mask_input"][:] = 1
            x["mask_from_support"][:] = 0

        def support(x: dict[str, np.ndarray]) -> None:
            x["point_labels"][:] = -1
            x["point_coords"][:] = 0
            x["mask_from_support"][:] = 1
            x["multimask"][:] = 0
            x["support_mask"][-1] = 0  # a label absent from this support

        small = {"support_h": 4, "support_w": 4}
        return [
            ("points_only_b1", {"batch": 1, "num_points": 1, **small}, points_only),
            ("points_only_b3", {"batch": 3, "num_points": 4, **small}, points_only),
            ("mask_only_b2", {"batch": 2, "num_points": 1, **small}, mask_only),
            ("support_b3", {"batch": 3, "num_points": 1, "support_h": S, "support_w": S},
             support),
        ]
    if name == "memory_encoder":
        def some_absent(x: dict[str, np.ndarray]) -> None:
            x["object_score_logits"][0] = -abs(x["object_score_logits"][0]) - 0.5

        return [("batch1", {"batch": 1}, None), ("batch3", {"batch": 3}, some_absent)]
    raise KeyError(name)


def _max_abs_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for k, w in want.items():
        g = got[k].astype(np.float64)
        if g.shape != w.shape:
            out[k] = float("inf")
            continue
        valid = ~np.isnan(w)
        out[k] = float(np.abs(g[valid] - w[valid]).max()) if valid.any() else 0.0
    return out


def check_parity(
    model: Any, name: str, spec: ComponentSpec, geom: Geometry, onnx_path: Path,
    tolerance: float, providers: Iterable[str] = ("CPUExecutionProvider",),
) -> dict[str, Any]:
    """Run every parity case of one component against its family's reference (the
    family ``geom`` names); never raises on a mismatch."""
    fam = family(geom.family)
    result: dict[str, Any] = {"tolerance": tolerance, "cases": {}}
    worst = 0.0
    errors: list[str] = []
    try:
        sess = ort.InferenceSession(str(onnx_path), providers=list(providers))
    except Exception as exc:
        return {**result, "max_abs_diff": float("inf"), "passed": False,
                "errors": [f"cannot load {onnx_path}: {exc}"]}
    got_names = [o.name for o in sess.get_outputs()]
    if got_names != spec.output_names:
        errors.append(f"outputs {got_names} != spec {spec.output_names}")
    for i, (label, dims, fix) in enumerate(fam.parity_cases(name, geom)):
        x = dummy_inputs(spec, geom, dims, seed=100 + i)
        if fix is not None:
            fix(x)
        try:
            got = dict(zip(got_names, sess.run(None, x)))
            want = fam.reference(model, name, x)
            diffs = _max_abs_diff(got, want)
        except Exception as exc:  # collect, keep checking the other cases
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        case_max = max(diffs.values())
        worst = max(worst, case_max)
        result["cases"][label] = {"dims": dims, "max_abs_diff": diffs,
                                  "passed": case_max <= tolerance}
        if case_max > tolerance:
            errors.append(f"{label}: max |diff| {case_max:.3g} > {tolerance:g} ({diffs})")
    result.update(max_abs_diff=worst, passed=not errors, errors=errors)
    return result


def _export_one(module: Any, spec: ComponentSpec, geom: Geometry, path: Path) -> None:
    x = dummy_inputs(spec, geom)
    args = tuple(torch.from_numpy(x[n]) for n in spec.input_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about sam2's shape asserts
        torch.onnx.export(
            module, args, str(tmp), input_names=spec.input_names,
            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
            opset_version=OPSET, dynamo=False, do_constant_folding=True)
    _stamp_spec_shapes(tmp, spec)
    tmp.replace(path)


def _stamp_spec_shapes(path: Path, spec: ComponentSpec) -> None:
    """Write the spec's shapes onto the graph's inputs and outputs, so that no
    exporter-generated axis name (``Convfeat_s0_dim_2``) leaks into serving configs."""
    model = onnx.load(str(path))
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        for v, t in zip(values, tensors):
            dims = v.type.tensor_type.shape.dim
            if len(dims) != len(t.shape):
                raise ModelError(f"{spec.name}.{t.name}: graph rank {len(dims)} != spec "
                                 f"{t.shape}")
            for d, want in zip(dims, t.shape):
                if isinstance(want, str):
                    d.dim_param = want
                else:
                    d.dim_value = want
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


#: Ops kept in FP32 in FP16 graphs: normalisations and reductions whose intermediate
#: sums overflow or lose precision in half.
FP16_BLOCK = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax",
              "Pow", "Sqrt", "Erf", "Sigmoid", "Resize", "Sin", "Cos", "Range", "CumSum",
              "ArgMax", "GatherElements", "Where", "Min", "Max", "TopK", "Upsample"]


def _inline_identity_initializers(model: Any) -> None:
    """Replace ``Identity(initializer)`` nodes (the exporter's way of sharing equal
    weights) by copies of the initializer, so that the FP16 pass sees plain weights."""
    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _to_fp16(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    _inline_identity_initializers(model)
    # sam2's LayerNorm2d is exported as loose ops (ReduceMean, Sub, Pow, ...); keep every
    # node of a scope that takes a mean in FP32, or x - mean cancels catastrophically.
    def scope(name: str) -> str:
        return name.rsplit("/", 1)[0]

    norm_scopes = {scope(n.name) for n in model.graph.node if n.op_type == "ReduceMean"}
    keep_fp32 = [n.name for n in model.graph.node if scope(n.name) in norm_scopes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_BLOCK,
                                        node_block_list=keep_fp32)
    # A value that feeds several FP32-kept ops gets one identical Cast per consumer;
    # keep the first (ONNX allows one definition per name).
    defined: set[str] = set()
    nodes = []
    for node in half.graph.node:
        if node.op_type == "Cast" and node.output[0] in defined:
            continue
        defined.update(node.output)
        nodes.append(node)
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    onnx.save(half, str(dst))


def run_export(
    model_name: str,
    out: str | Path,
    *,
    image_size: int = 1024,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    seed: int | None = None,
    precision: str = "fp32",
    tensorrt: bool = False,
    components: Iterable[str] = COMPONENTS,
    check: bool = True,
    model: Any = None,
    serving_profile: str | None = None,
) -> ExportResult:
    """Export, check parity, write the report. See the module docstring for the layout.

    ``model`` may be a prebuilt model (tests); otherwise ``model_name``'s family
    (:mod:`sst.export.families`) builds it with ``checkpoint`` or
    ``random_weights``/``seed``. When all four
    ``serving_profile`` (``cpu``, ``gpu``, ``gpu-native``; None: ``gpu`` where
    ``nvidia-smi`` exists) is recorded in ``sst_model.json``: it is the profile the
    repository's configs are written for (:func:`sst.model_repository.configs.write_repository`)
    and ``sst serve`` starts with unless told otherwise.
    """
    if precision not in ("fp32", "fp16"):
        raise ModelError(f"precision must be fp32 or fp16, got {precision!r}")
    if tensorrt:
        missing = tensorrt_missing()
        if missing:  # fail before spending minutes on the ONNX export
            raise ModelError(f"--tensorrt: cannot build TensorRT engines here: {missing}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fam = family_of_model(model_name)
    if model is None:
        model = fam.build(model_name, checkpoint=checkpoint, random_weights=random_weights,
                          seed=seed, image_size=image_size)
    geom = fam.geometry(model)
    specs = fam.specs(geom)
    wrappers = fam.wrappers(model)
    report: dict[str, Any] = {
        "model": model_name, "family": fam.name, "image_size": geom.image_size,
        "precision": precision,
        "random_weights": bool(getattr(model, "sst_random_weights", random_weights)),
        "opset": OPSET, "format": EXPORT_FORMAT, "components": {},
    }
    files: dict[str, Path] = {}
    for name in components:
        spec = specs[name]
        path = out / name / "1" / "model.onnx"
        t = time.perf_counter()
        _export_one(wrappers[name], spec, geom, path)
        graph_precision = "fp16" if precision == "fp16" and name in FP16_COMPONENTS else "fp32"
        if graph_precision == "fp16":
            _to_fp16(path, path)
        export_s = time.perf_counter() - t
        entry: dict[str, Any] = {"file": str(path.relative_to(out)),
                                 "precision": graph_precision,
                                 "bytes": path.stat().st_size,
                                 "export_seconds": round(export_s, 2)}
        if check:
            t = time.perf_counter()
            entry.update(check_parity(model, name, spec, geom, path,
                                      TOLERANCES[graph_precision][name]))
            entry["check_seconds"] = round(time.perf_counter() - t, 2)
        log.info("%s: %.1f MB in %.1fs%s", name, entry["bytes"] / 1e6, export_s,
                 f", max |diff| {entry['max_abs_diff']:.2e}" if check else "")
        report["components"][name] = entry
        files[name] = path
    meta = {"model": model_name, "precision": precision, "geometry": asdict(geom),
            "random_weights": report["random_weights"], "components": list(files),
            "seed": seed if report["random_weights"] else None,
            "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
            "serving_profile": serving_profile or default_serving_profile()}
    (out / MODEL_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tensorrt:
        report["tensorrt"] = build_engines(out, specs, list(files))
    report["serving_profile"] = meta["serving_profile"]
    report["passed"] = all(c.get("passed", True) for c in report["components"].values())
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(out, report, files)
