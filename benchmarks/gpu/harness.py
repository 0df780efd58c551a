"""The GPU path measured against sam2 on the same device, in one run.

``python -m sst.benchmarks.gpu [--device cuda] [--image-size 1024] [--labels 2] [--quick]``

Needs only PyTorch, sam2 and this project (``benchmarks/gpu/pack.sh`` gathers the wheels
a bare GPU machine lacks). Weights are random (SAM 2.1 tiny, seed 0): the comparisons
are like for like. Parts:

(a) **parity**: our engine (:class:`~sst.tracker.torch_backend.TorchBackend`, FP32, TF32 off)
    against sam2's ``SAM2VideoPredictor`` on the same frames: max |logit difference|
    per frame and mask IoU;
(b) **precision**: the engine in FP16 and BF16 against its FP32 run: mask IoU per label
    and frame (median, worst) and logit differences;
(c) **throughput**: sam2's predictor (eager; compiled image encoder if it builds) against
    the engine with 1, 8 and 32 concurrent sequential sessions stepping together, and
    independent-mode batches: per-frame latency p50/p90, frames/s, peak device memory.

Writes ``gpu_<device>_<size>.json`` and a PNG to ``--out`` (``benchmarks/results/gpu``).
``--device cpu --quick`` is a small run for CI, so that the harness never rots.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sst.benchmarks.common import save_figure, synthetic_frame
from sst.tracker.engine import Engine, Frame, Scheduler
from sst.tracker.tracker import Tracker

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gpu"
MODEL = "sam2.1_hiera_tiny"
#: The engine must match sam2 on the same device within this (FP32).
PARITY_ATOL = 1e-3


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(torch: Any, device: Any) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _reset_peak(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    s = np.asarray(seconds, np.float64)
    return {"p50_ms": float(np.percentile(s, 50) * 1e3),
            "p90_ms": float(np.percentile(s, 90) * 1e3),
            "mean_ms": float(s.mean() * 1e3), "frames": int(s.size)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def make_frames(n: int, labels: int, size: tuple[int, int]
                ) -> tuple[tuple[np.ndarray, np.ndarray], list[np.ndarray]]:
    """A support (image, label mask) and ``n`` drifting queries."""
    labs = tuple(range(1, labels + 1))
    support = synthetic_frame(0, size=size, labels=labs)
    queries = [synthetic_frame(100 + i, size=size, shift=0.02 * ((i % 7) - 3), labels=labs)[0]
               for i in range(n)]
    return support, queries


def parity(predictor: Any, backend: Any, support: tuple[np.ndarray, np.ndarray],
           queries: list[np.ndarray], labels: list[int]) -> dict[str, Any]:
    """(a): sam2's predictor and the engine (FP32) on the same JPEG frames."""
    from sst.export.sst_reference import reference_from_images
    with tempfile.TemporaryDirectory(prefix="sst-gpu-") as tmp:
        paths, ref = reference_from_images(predictor, [support], queries, labels, Path(tmp))
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    ours = Tracker(backend).segment([(frames[0], support[1])], frames[1:])
    diffs, ious = [], []
    for i, res in enumerate(ours):
        want = ref["logits"][i + 1]
        diffs.append(float(np.abs(res.logits - want).max()))
        ious += [_iou(res.logits[k] > 0, want[k] > 0) for k in range(len(labels))]
    return {"max_abs_logit_diff": max(diffs), "per_frame_max_abs_logit_diff": diffs,
            "min_mask_iou": min(ious), "tolerance": PARITY_ATOL,
            "passed": max(diffs) <= PARITY_ATOL, "frames": frames}


def precision(backends: dict[str, Any], support: tuple[np.ndarray, np.ndarray],
              queries: list[np.ndarray]) -> dict[str, Any]:
    """(b): FP16/BF16 engines against the FP32 engine, sequential mode."""
    runs = {p: Tracker(b).segment([support], queries) for p, b in backends.items()}
    base = runs.pop("fp32")
    out: dict[str, Any] = {}
    for p, res in runs.items():
        ious, diffs = [], []
        for r, b in zip(res, base):
            lo, lb = r.logits, b.logits
            diffs.append(float(np.abs(lo - lb).max()))
            ious += [_iou(lo[k] > 0, lb[k] > 0) for k in range(lo.shape[0])]
        out[p] = {"median_mask_iou": float(np.median(ious)), "worst_mask_iou": min(ious),
                  "max_abs_logit_diff": max(diffs),
                  "median_max_abs_logit_diff": float(np.median(diffs))}
    return out


def _time_predictor(predictor: Any, support: tuple[np.ndarray, np.ndarray],
                    queries: list[np.ndarray], labels: list[int], device: Any
                    ) -> dict[str, Any]:
    """Per-frame latency of ``propagate_in_video`` (masks brought to the host, as ours)."""
    import torch

    from sst.export.sst_reference import write_jpeg_video

    with tempfile.TemporaryDirectory(prefix="sst-gpu-") as tmp:
        write_jpeg_video([support[0], *queries], Path(tmp))
        with torch.inference_mode():
            state = predictor.init_state(video_path=tmp)
            for lab in labels:
                predictor.add_new_mask(state, frame_idx=0, obj_id=lab, mask=support[1] == lab)
            _reset_peak(torch, device)
            seconds = []
            _sync(torch, device)
            t0 = t = time.perf_counter()
            for _, _, masks in predictor.propagate_in_video(state):
                (masks > 0).cpu()
                now = time.perf_counter()
                seconds.append(now - t)
                t = now
            wall = time.perf_counter() - t0
    per = seconds[1:]  # frame 0 is the support
    return {**_stats(per[1:] if len(per) > 2 else per), "frames_per_s": len(per) / wall,
            "peak_mib": _peak_mib(torch, device)}


def _time_engine(backend: Any, support: tuple[np.ndarray, np.ndarray],
                 queries: list[np.ndarray], sessions: int, device: Any) -> dict[str, Any]:
    """``sessions`` sequential sessions stepping together over the same queries."""
    import torch

    engine = Engine(backend)
    live = engine.open_sessions([[support]] * sessions)
    sched = Scheduler(engine)
    warm = engine.open_session([support])
    engine.step([Frame(warm, queries[0])])  # allocations and kernels, untimed
    _reset_peak(torch, device)
    steps = []
    t0 = time.perf_counter()
    for q in queries:
        for s in live:
            sched.submit(Frame(s, q))
        t = time.perf_counter()
        n = len(sched.step())
        assert n == sessions
        steps.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"sessions": sessions, **_stats(steps[1:] if len(steps) > 2 else steps),
            "frames_per_s": sessions * len(queries) / wall, "peak_mib": _peak_mib(torch, device)}


def _time_independent(backend: Any, support: tuple[np.ndarray, np.ndarray],
                      queries: list[np.ndarray], batch: int, device: Any) -> dict[str, Any]:
    import torch

    engine = Engine(backend)
    session = engine.open_session([support])
    engine.step([Frame(session, queries[0], independent=True)])
    _reset_peak(torch, device)
    frames = (queries * (batch // len(queries) + 1))[:batch]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        engine.step([Frame(session, q, independent=True) for q in frames])
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"batch": batch, "step_ms": best * 1e3, "frames_per_s": batch / best,
            "peak_mib": _peak_mib(torch, device)}


def throughput(predictors: dict[str, Callable[[], Any]], backends: dict[str, Any],
               support: tuple[np.ndarray, np.ndarray], queries: list[np.ndarray],
               labels: list[int], sessions: Sequence[int], batches: Sequence[int],
               device: Any) -> dict[str, Any]:
    """(c): the predictor(s) and the engine per precision, side by side."""
    out: dict[str, Any] = {"sam2": {}, "engine": {}}
    for name, make in predictors.items():
        try:
            out["sam2"][name] = _time_predictor(make(), support, queries, labels, device)
        except Exception as exc:  # e.g. torch.compile unavailable on this machine
            out["sam2"][name] = {"skipped": f"{type(exc).__name__}: {exc}"}
    for prec, backend in backends.items():
        out["engine"][prec] = {
            "sequential": [_time_engine(backend, support, queries, n, device) for n in sessions],
            "independent": [_time_independent(backend, support, queries, b, device)
                            for b in batches]}
    eager = out["sam2"].get("eager", {}).get("frames_per_s")
    if eager:
        for runs in out["engine"].values():
            for r in runs["sequential"]:
                r["vs_sam2_eager"] = r["frames_per_s"] / eager
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    tp = results["throughput"]
    for prec, runs in tp["engine"].items():
        seq = runs["sequential"]
        ax.plot([r["sessions"] for r in seq], [r["frames_per_s"] for r in seq], "o-",
                label=f"engine {prec}")
    for name, r in tp["sam2"].items():
        if "frames_per_s" in r:
            ax.axhline(r["frames_per_s"], linestyle="--", color="grey",
                       label=f"sam2 predictor ({name})")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("frames/s (all sessions)")
    ax.set_title(f"{results['device']['name']}, {results['image_size']} px, "
                 f"{results['labels']} labels")
    save_figure(fig, path)


def _device_info(torch: Any, device: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__,
                            "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        info["name"] = platform.processor() or "cpu"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--frames", type=int, default=24, help="queries per session")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--quick", action="store_true",
                    help="a small run (256 px, few frames and sessions), e.g. on the CPU in CI")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    from sst.export.sam2_model import build_sam2_model
    from sst.tracker.torch_backend import TorchBackend

    if args.quick:
        args.image_size, args.frames, args.sessions, args.batches = 256, 3, [1, 2], [2]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu (e.g. --quick)")
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 (parity)
    torch.backends.cudnn.allow_tf32 = False
    labels = list(range(1, args.labels + 1))
    size = (480, 640) if not args.quick else (240, 320)
    support, queries = make_frames(args.frames, args.labels, size)

    def model() -> Any:
        return build_sam2_model(MODEL, random_weights=True, seed=0,
                                image_size=args.image_size, device=str(device))

    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    backends = {p: TorchBackend(model(), precision=p, device=str(device)) for p in precisions}
    results: dict[str, Any] = {"device": _device_info(torch, device),
                               "image_size": args.image_size, "labels": args.labels,
                               "model": f"{MODEL} (random weights, seed 0)",
                               "command": "python -m sst.benchmarks.gpu "
                                          + " ".join(argv if argv is not None else [])}
    t = time.perf_counter()
    par = parity(model(), backends["fp32"], support, queries[:min(8, len(queries))], labels)
    frames = par.pop("frames")
    results["parity"] = par
    print(f"(a) parity vs sam2: max |logit diff| {par['max_abs_logit_diff']:.2e} "
          f"(tolerance {PARITY_ATOL}), min mask IoU {par['min_mask_iou']:.4f}")
    sup_jpeg = (frames[0], support[1])
    results["precision"] = precision(backends, sup_jpeg, frames[1:])
    for p, r in results["precision"].items():
        print(f"(b) {p} vs fp32: mask IoU median {r['median_mask_iou']:.4f} worst "
              f"{r['worst_mask_iou']:.4f}, max |logit diff| {r['max_abs_logit_diff']:.3f}")

    def compiled() -> Any:
        from sst.export.sam2_model import build_sam2_model as build

        m = build(MODEL, random_weights=True, seed=0, image_size=args.image_size,
                  device=str(device))
        m.image_encoder = torch.compile(m.image_encoder)
        return m

    predictors = {"eager": model} if args.quick else {"eager": model, "compiled": compiled}
    results["throughput"] = throughput(predictors, backends, support, queries, labels,
                                       args.sessions, args.batches, device)
    for name, r in results["throughput"]["sam2"].items():
        print(f"(c) sam2 predictor ({name}): " + (
            f"p50 {r['p50_ms']:.1f} ms/frame, {r['frames_per_s']:.1f} frames/s"
            if "frames_per_s" in r else r["skipped"]))
    for prec, runs in results["throughput"]["engine"].items():
        for r in runs["sequential"]:
            print(f"(c) engine {prec}, {r['sessions']} sessions: p50 {r['p50_ms']:.1f} "
                  f"ms/step, {r['frames_per_s']:.1f} frames/s"
                  + (f" ({r['vs_sam2_eager']:.2f}x sam2)" if "vs_sam2_eager" in r else ""))
        for r in runs["independent"]:
            print(f"(c) engine {prec}, independent batch {r['batch']}: "
                  f"{r['frames_per_s']:.1f} frames/s")
    results["seconds"] = time.perf_counter() - t
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu_{device.type}_{args.image_size}" + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0 if par["passed"] else 1
