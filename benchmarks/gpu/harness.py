"""The GPU path measured against sam2 on the same device, in one run.

``python -m sst.benchmarks.gpu [--device cuda] [--out DIR] [--budget-s S] [--quick]``

Needs only PyTorch, sam2 and this project (``benchmarks/gpu/pack.sh`` gathers the wheels
that a GPU host with PyTorch lacks; docs/gpu.md says how to run it there). Weights are
random (SAM 2.1 tiny, seed 0): the comparisons are like for like. Parts, in this order:

1. **parity**: the engine (:class:`~sst.tracker.torch_backend.TorchBackend`, FP32, TF32
   off) against sam2's ``SAM2VideoPredictor`` on the same frames: max |logit difference|
   per frame and mask IoU;
2. **precision**: the engine in BF16 (and FP16 on CUDA) against its FP32 run: mask IoU per
   label and frame (median, worst) and logit differences;
3. **sam2**: the predictor eager in FP32 and under bf16 autocast; its own bf16-vs-FP32
   mask IoU;
4. **engine**: per precision (and BF16 compiled: ``torch.compile`` of memory attention,
   the memory encoder and the mask decoder, its compile time recorded), 1, 8, 32 and 64
   concurrent sequential sessions stepping together, then independent-mode batches; the
   ratio to sam2 at the same precision;
5. **sam2 compiled** (``torch.compile`` of its image encoder) last, as time allows.

Both sides are timed from decoded frames in memory to masks on the host, support frame
excluded, after one untimed frame (:mod:`sst.benchmarks.gpu.timing`). Each configuration
runs in its own ``try``: an error is recorded in the JSON and the run goes on. The JSON
(and a PNG) under ``--out`` is rewritten after every part, so a run cut short keeps what
it measured. ``--budget-s`` skips a part whose estimated time would not fit, and says so.
``--device cpu --quick`` is a small run for CI, so that the harness never rots.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sst.benchmarks.common import save_figure
from sst.benchmarks.gpu.timing import (
    PARITY_ATOL,
    make_frames,
    mask_ious,
    parity,
    precision,
    time_engine,
    time_independent,
    time_predictor,
)

__all__ = ["DEFAULT_OUT", "MODEL", "PARITY_ATOL", "main"]

#: ``--out`` by default: a folder in the current directory (never inside the package).
DEFAULT_OUT = Path("sst-gpu-results")
MODEL = "sam2.1_hiera_tiny"
#: What ``torch.compile`` of sam2's image encoder is allowed on top of an eager run.
COMPILE_ALLOWANCE_S = 180.0


class Budget:
    """``--budget-s``: a part runs only if its estimate fits in what is left."""

    def __init__(self, seconds: float | None) -> None:
        self.total, self.t0 = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def refuse(self, estimate_s: float) -> str | None:
        """Why a part of ``estimate_s`` seconds is skipped (None: it runs)."""
        if self.total is None:
            return None
        left = self.total - self.elapsed()
        if estimate_s <= left:
            return None
        return (f"skipped: needs about {estimate_s:.0f} s, {max(left, 0):.0f} s left of "
                f"--budget-s {self.total:g}")


class Report:
    """The JSON (and PNG) of one run, rewritten after every part."""

    def __init__(self, out: Path, stem: str, doc: dict[str, Any]) -> None:
        self.json, self.png, self.doc = out / f"{stem}.json", out / f"{stem}.png", doc
        out.mkdir(parents=True, exist_ok=True)

    def error(self, part: str, exc: BaseException) -> dict[str, str]:
        msg = f"{type(exc).__name__}: {exc}"
        self.doc["errors"].append(f"{part}: {msg}")
        print(f"!! {part} failed: {msg}", flush=True)
        return {"error": msg}

    def save(self, part: str) -> None:
        self.doc["parts_done"].append(part)
        self.doc["ratios"] = ratios(self.doc["throughput"])
        self.doc["targets"] = targets(self.doc)
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.json)
        try:
            _plot(self.doc, self.png)
        except Exception as exc:  # a plot must never cost the figures
            self.doc["plot_error"] = f"{type(exc).__name__}: {exc}"


def _fps(entry: Any) -> float | None:
    return entry.get("frames_per_s") if isinstance(entry, dict) else None


def ratios(tp: dict[str, Any]) -> dict[str, Any]:
    """Engine frames/s (best session count) over sam2's at the same precision, and the
    engine's best over sam2's best (compiled included)."""
    out: dict[str, Any] = {}
    sam2: dict[str, float] = {k: float(v["frames_per_s"]) for k, v in tp["sam2"].items()
                              if _fps(v)}
    best_engine: tuple[float, str] | None = None
    for prec, runs in tp["engine"].items():
        seq = [r for r in runs.get("sequential", []) if _fps(r)]
        if not seq:
            continue
        top = max(seq, key=lambda r: r["frames_per_s"])
        if best_engine is None or top["frames_per_s"] > best_engine[0]:
            best_engine = (top["frames_per_s"], f"engine {prec}, {top['sessions']} sessions")
        if prec in sam2:
            out[f"engine_{prec}_vs_sam2_{prec}"] = top["frames_per_s"] / sam2[prec]
    if best_engine and sam2:
        name, fps = max(sam2.items(), key=lambda kv: kv[1])
        out["engine_best_vs_sam2_best"] = best_engine[0] / fps
        out["engine_best"], out["sam2_best"] = best_engine[1], f"sam2 {name}"
    return out


#: The GPU targets (H100/H200, SAM 2.1 tiny, 1024 px, 2 labels).
TARGET_FPS_32, TARGET_VS_SAM2, TARGET_P50_MS, TARGET_IOU = 200.0, 3.0, 15.0, 0.98
#: 64 sessions: about half of the BF16 matrix ceiling (a sequential frame is about
#: 1.25 TFLOP at 1024 px, memory attention over a full bank 0.55 TFLOP per object).
TARGET_FPS_64 = 320.0


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """Each target with the figure this run measured for it and whether it is met
    (targets with no figure yet are left out)."""
    out: dict[str, Any] = {}

    def put(name: str, value: float, target: float, met: bool) -> None:
        out[name] = {"value": value, "target": target, "met": bool(met)}

    engine = doc["throughput"]["engine"]
    seq = {(p, r["sessions"]): r for p, runs in engine.items() if isinstance(runs, dict)
           for r in runs.get("sequential", []) if _fps(r)}
    at32 = [r["frames_per_s"] for (_, n), r in seq.items() if n == 32]
    if at32:
        put("frames_per_s_at_32_sessions", max(at32), TARGET_FPS_32, max(at32) >= TARGET_FPS_32)
    at64 = [r["frames_per_s"] for (_, n), r in seq.items() if n == 64]
    if at64:
        put("frames_per_s_at_64_sessions", max(at64), TARGET_FPS_64, max(at64) >= TARGET_FPS_64)
    one = [r["p50_ms"] for (_, n), r in seq.items() if n == 1]
    if one:
        put("one_session_p50_ms", min(one), TARGET_P50_MS, min(one) <= TARGET_P50_MS)
    for key, value in doc["ratios"].items():
        if key.startswith("engine_") and key.endswith(("fp32", "bf16")) and "_vs_" in key:
            put(key, value, TARGET_VS_SAM2, value >= TARGET_VS_SAM2)
    sam2 = doc["precision"].get("sam2_bf16_vs_fp32", {}).get("median_mask_iou")
    for p in ("bf16", "fp16"):
        iou = doc["precision"].get(p, {}).get("median_mask_iou")
        if iou is not None:
            floor = max(TARGET_IOU, sam2) if sam2 is not None else TARGET_IOU
            put(f"engine_{p}_vs_fp32_median_mask_iou", iou, floor, iou >= floor)
    return out


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    tp = doc["throughput"]
    for prec, runs in tp["engine"].items():
        seq = [r for r in runs.get("sequential", []) if _fps(r)]
        if seq:
            ax.plot([r["sessions"] for r in seq], [r["frames_per_s"] for r in seq], "o-",
                    label=f"engine {prec}")
    styles = iter(["--", ":", "-.", (0, (5, 1, 1, 1))] * 4)
    for name, r in tp["sam2"].items():
        if _fps(r):
            ax.axhline(r["frames_per_s"], linestyle=next(styles), color="grey",
                       label=f"sam2 predictor ({name})")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("frames/s (all sessions)")
    ax.set_title(f"{doc['device']['name']}, {doc['image_size']} px, {doc['labels']} labels"
                 + (" (CPU: not a GPU figure)" if doc["device"]["type"] == "cpu" else ""))
    save_figure(fig, path, legend=bool(ax.get_legend_handles_labels()[0]))


def _device_info(torch: Any, device: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        info.update(name=platform.processor() or "cpu", cores=os.cpu_count())
    return info


def _environment() -> dict[str, str | None]:
    env: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "sam2", "sst-serve", "pillow"):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = None
    return env


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sst.benchmarks.gpu",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--frames", type=int, default=24, help="timed queries per session")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip the parts whose estimated time would not fit in this many "
                         "seconds (measured from the start; the skips are recorded)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip torch.compile: sam2's compiled image encoder and the engine's "
                         "bf16-compiled configuration")
    ap.add_argument("--quick", action="store_true",
                    help="a small run (256 px, 2 frames, 1-2 sessions), e.g. on the CPU in CI")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder for the JSON and PNG (default ./{DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.frames, args.sessions, args.batches = 256, 2, [1, 2], [2]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    budget = Budget(args.budget_s)
    import torch

    from sst.export.sam2_model import build_sam2_model
    from sst.tracker.torch_backend import TorchBackend

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu (e.g. --quick)")
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 (parity)
    torch.backends.cudnn.allow_tf32 = False
    labels = list(range(1, args.labels + 1))
    size = (480, 640) if not args.quick else (240, 320)
    support, queries = make_frames(args.frames, args.labels, size)
    out = args.out.resolve()
    stem = f"gpu_{device.type}_{args.image_size}" + ("_quick" if args.quick else "")
    doc: dict[str, Any] = {
        "command": "python -m sst.benchmarks.gpu" + (" " + shlex.join(argv) if argv else ""),
        "argv": argv, "device": _device_info(torch, device), "environment": _environment(),
        "model": f"{MODEL} (random weights, seed 0)", "image_size": args.image_size,
        "labels": args.labels, "frame_size": list(size), "timed_frames": args.frames,
        "budget_s": args.budget_s, "status": "running", "parts_done": [], "errors": [],
        "skipped": [], "parity": None, "precision": {},
        "throughput": {"sam2": {}, "engine": {}}, "ratios": {}, "targets": {}}
    if device.type != "cuda":
        doc["note"] = (f"a {device.type} run: it shows the harness runs end to end; its "
                       "timings and ratios say nothing about a GPU")
    report = Report(out, stem, doc)
    print(f"writing {report.json} after every part", flush=True)

    def model() -> Any:
        return build_sam2_model(MODEL, random_weights=True, seed=0,
                                image_size=args.image_size, device=str(device))

    def skipped(part: str, why: str) -> dict[str, str]:
        """Record and print why ``part`` is skipped; its entry for the JSON."""
        doc["skipped"].append(f"{part}: {why}")
        print(f"-- {part} {why}", flush=True)
        return {"skipped": why}

    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    backends: dict[str, Any] = {}
    for p in precisions:
        try:
            backends[p] = TorchBackend(model(), precision=p, device=str(device))
        except Exception as exc:
            doc["throughput"]["engine"][p] = report.error(f"engine {p} backend", exc)
    if device.type != "cuda":
        doc["throughput"]["engine"]["fp16"] = skipped("engine fp16", "fp16 runs on CUDA only")
    if args.no_compile:
        doc["throughput"]["engine"]["bf16-compiled"] = skipped("engine bf16-compiled",
                                                               "--no-compile")
    else:
        try:
            backends["bf16-compiled"] = TorchBackend(model(), precision="bf16",
                                                     device=str(device), compiled=True)
        except Exception as exc:
            doc["throughput"]["engine"]["bf16-compiled"] = report.error(
                "engine bf16-compiled backend", exc)

    # 1. parity (sam2 reads its JPEG frames; the engine gets the same decoded pixels)
    per_frame: dict[str, float] = {}
    sam2_frame_s = None
    try:
        t = time.perf_counter()
        few = queries[:8]
        par = parity(model(), backends["fp32"], support, few, labels)
        sam2_frame_s = (time.perf_counter() - t) / (2 * len(few))
        doc["parity"] = par
        print(f"parity vs sam2: max |logit diff| {par['max_abs_logit_diff']:.2e} "
              f"(tolerance {PARITY_ATOL}), min mask IoU {par['min_mask_iou']:.4f}", flush=True)
    except Exception as exc:
        doc["parity"] = report.error("parity", exc)
    report.save("parity")

    # 2. precision of the engine against its own FP32 run, over every query
    try:
        prec, per_frame = precision(backends, support, queries)
        doc["precision"].update(prec)
        engine_compiled = backends.get("bf16-compiled")
        if engine_compiled is not None:  # its first calls compiled (or loaded cached kernels)
            doc["compile_seconds"] = dict(engine_compiled.compile_seconds)
            print(f"engine bf16-compiled: first calls (compile) "
                  f"{engine_compiled.compile_seconds}", flush=True)
        for p, r in prec.items():
            print(f"engine {p} vs fp32: mask IoU median {r['median_mask_iou']:.4f} worst "
                  f"{r['worst_mask_iou']:.4f}, max |logit diff| {r['max_abs_logit_diff']:.3f}",
                  flush=True)
    except Exception as exc:
        doc["precision"]["error"] = report.error("precision", exc)["error"]
    report.save("precision")

    # 3. sam2's predictor, eager, FP32 and bf16 autocast
    sam2_masks: dict[str, Any] = {}
    sam2_est = (sam2_frame_s or per_frame.get("fp32", 1.0) * 3) * (args.frames + 2)

    def run_sam2(name: str, prec: str, make: Callable[[], Any], estimate: float) -> None:
        part = f"sam2 {name}"
        why = budget.refuse(estimate)
        if why:
            doc["throughput"]["sam2"][name] = skipped(part, why)
            return
        try:
            r, masks = time_predictor(make(), support, queries, labels, device, prec)
            doc["throughput"]["sam2"][name] = r
            sam2_masks[name] = masks
            print(f"{part}: p50 {r['p50_ms']:.1f} ms/frame, {r['frames_per_s']:.1f} frames/s",
                  flush=True)
        except Exception as exc:
            doc["throughput"]["sam2"][name] = report.error(part, exc)
        report.save(part)

    run_sam2("fp32", "fp32", model, sam2_est)
    run_sam2("bf16", "bf16", model, sam2_est)
    if "fp32" in sam2_masks and "bf16" in sam2_masks:
        doc["precision"]["sam2_bf16_vs_fp32"] = mask_ious(sam2_masks["bf16"], sam2_masks["fp32"])
        print(f"sam2 bf16 vs fp32: mask IoU median "
              f"{doc['precision']['sam2_bf16_vs_fp32']['median_mask_iou']:.4f}", flush=True)

    # 4. the engine, per precision: sequential sessions, then independent batches
    for p, backend in backends.items():
        runs: dict[str, list[Any]] = {"sequential": [], "independent": []}
        doc["throughput"]["engine"][p] = runs
        frame_s = per_frame.get(p, per_frame.get("fp32", 1.0))
        for n in args.sessions:
            part = f"engine {p} x{n}"
            why = budget.refuse(frame_s * n * (args.frames + 1))
            if why:
                runs["sequential"].append({"sessions": n, **skipped(part, why)})
                continue
            try:
                r = time_engine(backend, support, queries, n, device)
                frame_s = 1.0 / r["frames_per_s"]
                sam2 = _fps(doc["throughput"]["sam2"].get(p))
                if sam2:
                    r["vs_sam2_same_precision"] = r["frames_per_s"] / sam2
                print(f"{part}: p50 {r['p50_ms']:.1f} ms/step, {r['frames_per_s']:.1f} frames/s"
                      + (f" ({r['vs_sam2_same_precision']:.2f}x sam2 {p})" if sam2 else ""),
                      flush=True)
            except Exception as exc:
                r = {"sessions": n, **report.error(part, exc)}
            runs["sequential"].append(r)
            report.save(part)
        for b in args.batches:
            part = f"engine {p} independent x{b}"
            why = budget.refuse(frame_s * b * 4)
            if why:
                runs["independent"].append({"batch": b, **skipped(part, why)})
                continue
            try:
                r = time_independent(backend, support, queries, b, device)
                print(f"{part}: {r['frames_per_s']:.1f} frames/s", flush=True)
            except Exception as exc:
                r = {"batch": b, **report.error(part, exc)}
            runs["independent"].append(r)
            report.save(part)

    # 5. sam2 with a compiled image encoder, last (its compile time is the least certain)
    def compiled() -> Any:
        m = model()
        m.image_encoder = torch.compile(m.image_encoder)
        return m

    if args.quick or args.no_compile:
        doc["throughput"]["sam2"]["compiled_bf16"] = skipped(
            "sam2 compiled_bf16", "--quick" if args.quick else "--no-compile")
    else:
        fps = _fps(doc["throughput"]["sam2"].get("bf16"))
        est = ((args.frames + 2) / fps if fps else sam2_est) + COMPILE_ALLOWANCE_S
        run_sam2("compiled_bf16", "bf16", compiled, est)
    doc["seconds"] = budget.elapsed()
    doc["status"] = "complete"
    report.save("end")
    for k, v in doc["ratios"].items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    for k, t in doc["targets"].items():
        print(f"target {k}: {t['value']:.3g} (target {t['target']:.3g}) "
              + ("met" if t["met"] else "NOT met"))
    print(f"wrote {report.json} and {report.png.name} in {doc['seconds']:.0f} s"
          + (f"; {len(doc['errors'])} error(s), see 'errors'" if doc["errors"] else ""))
    return 0 if doc["parity"] and doc["parity"].get("passed") else 1
