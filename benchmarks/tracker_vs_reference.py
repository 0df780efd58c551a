"""Per-frame time of the embedded tracker against sam2's SAM2VideoPredictor, side by side.

Same weights, same JPEG frames, same machine, one run. The reference is driven the way
SST drives it (``add_new_mask`` per label, ``propagate_in_video``); ours runs on the
exported ONNX graphs in ONNX Runtime, in ``sequential`` and ``independent`` mode.

    python -m sst.benchmarks.tracker_vs_reference --model-dir DIR [--frames N] [--labels K]

``DIR`` is an ``sst export`` folder; the reference is rebuilt with the same weights
(random weights: same seed; a checkpoint: pass ``--checkpoint``). Prints a table and
writes JSON to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["main", "machine_description"]


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def _frames(n: int, labels: int, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic specimen frames: textured background, ``labels`` elliptical parts."""
    out = []
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for i in range(n):
        rng = np.random.default_rng(i)
        img = rng.normal(128, 20, (H, W, 3)).astype(np.float32)
        mask = np.zeros((H, W), np.uint8)
        for k in range(labels):
            cy, cx = H * (0.3 + 0.4 * k / max(labels, 1)), W * (0.5 + 0.01 * i)
            inside = ((yy - cy) / (H * 0.12)) ** 2 + ((xx - cx) / (W * 0.2)) ** 2 <= 1
            mask[inside] = k + 1
            img[inside] = img[inside] * 0.3 + np.array([60 * k, 200 - 40 * k, 100]) * 0.7
        out.append((np.clip(img, 0, 255).astype(np.uint8), mask))
    return out


def memory_attention_flops(image_size: int, batch: int, frames: int, pointers: int,
                           layers: int = 4, C: int = 256, M: int = 64, mlp: int = 2048) -> float:
    """Multiply-adds x 2 of one memory-attention call as exported (late value
    projection in cross-attention); element-wise ops are not counted."""
    N = (image_size // 16) ** 2
    L = frames * N + pointers * (C // M)
    self_attn = 4 * 2 * N * C * C + 2 * 2 * N * N * C
    cross = (2 * 2 * N * C * C + 2 * L * M * C  # q, out; k projection
             + 2 * N * L * C + 2 * N * L * M + 2 * N * M * C)  # scores; weights @ raw values
    ffn = 2 * 2 * N * C * mlp
    return float(batch * layers * (self_attn + cross + ffn))


def fp32_peak_flops() -> tuple[float, str]:
    """Theoretical FP32 peak: cores x clock x 16 lanes (AVX-512) x 2 (FMA) x 1 FMA unit."""
    ghz = 2.6
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                ghz = float(line.split(":")[1]) / 1000
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    return cores * ghz * 1e9 * 32, f"{cores} cores x {ghz:.2f} GHz x 16 FP32 lanes x 2 (FMA)"


def _stats(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    return {"median_s": statistics.median(s), "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))],
            "images_per_s": len(s) / sum(s)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=6, help="query frames (after 1 support)")
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="independent-mode batch")
    ap.add_argument("--size", default="480x640", help="frame HxW")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--engines", default="ort,torch", help="embedded engines to measure")
    args = ap.parse_args(argv)

    import torch

    from sst.export.registry import build_sam2_model
    from sst.export.sst_reference import reference_from_images
    from sst.tracker.backends import OrtBackend, TorchBackend
    from sst.tracker.tracker import Tracker

    torch.set_num_threads(os.cpu_count() or 1)
    backend = OrtBackend(args.model_dir)
    meta = backend.meta
    if args.checkpoint is None and not meta.random_weights:
        ap.error("the export used a checkpoint: pass the same --checkpoint")
    model = build_sam2_model(meta.model, checkpoint=args.checkpoint,
                             random_weights=args.checkpoint is None, seed=args.seed,
                             image_size=meta.image_size)
    H, W = (int(v) for v in args.size.split("x"))
    frames = _frames(args.frames + 1, args.labels, (H, W))
    labels = list(range(1, args.labels + 1))
    work = Path(tempfile.mkdtemp(prefix="sst-bench-"))
    paths, ref = reference_from_images(model, [frames[0]], [f for f, _ in frames[1:]], labels,
                                       work)
    decoded = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    support = [(decoded[0], frames[0][1])]
    queries = decoded[1:]
    ref_s = [ref["seconds"][i] for i in range(1, len(paths))]  # frame 0 is the support

    results: dict[str, Any] = {"machine": machine_description(), "model": meta.model,
                               "image_size": meta.image_size, "labels": args.labels,
                               "frames": args.frames, "frame_size": [H, W]}
    # Per-frame times exclude the session start (support encoding) on both sides, and the
    # first tracked frame in sequential runs (warm caches).
    results["reference"] = _stats(ref_s[1:] if len(ref_s) > 2 else ref_s)
    peak, peak_how = fp32_peak_flops()
    results["fp32_peak_flops"] = {"value": peak, "how": peak_how}
    engines = {"ort": backend, "torch": TorchBackend(model)}
    rows = []
    for engine in [e for e in args.engines.split(",") if e]:
        tracker = Tracker(engines[engine])
        tracker.segment(support, queries[:1], mode="sequential")  # warm-up
        for mode in ("sequential", "independent"):
            tracker.timings.clear()
            tracker.attention_shapes.clear()
            t = time.perf_counter()
            out = tracker.segment(support, queries, mode=mode, batch=args.batch)
            total = time.perf_counter() - t
            per = [r.seconds for r in out]
            entry: dict[str, Any] = dict(
                _stats(per[1:] if mode == "sequential" and len(per) > 2 else per))
            entry["session_start_s"] = round(total - sum(per), 4)  # supports: not in img/s
            entry["components_s"] = {k: round(v / len(out), 4)
                                     for k, v in tracker.timings.items()}
            host = total - sum(tracker.timings.values())
            entry["components_s"]["host_overhead"] = round(host / len(out), 4)
            flops = sum(memory_attention_flops(meta.image_size, *s)
                        for s in tracker.attention_shapes)
            ma_s = tracker.timings.get("memory_attention", 0.0)
            entry["memory_attention_tflops"] = flops / ma_s / 1e12 if ma_s else 0.0
            entry["memory_attention_fraction_of_peak"] = flops / ma_s / peak if ma_s else 0.0
            worst = max(float(np.abs(r.logits - ref["logits"][i + 1]).max())
                        for i, r in enumerate(out)) if mode == "sequential" else None
            entry["max_abs_logit_diff_vs_reference"] = worst
            entry["speedup_per_frame"] = results["reference"]["median_s"] / entry["median_s"]
            entry["throughput_ratio"] = (entry["images_per_s"]
                                         / results["reference"]["images_per_s"])
            key = f"{mode} ({engine})"
            results[key] = entry
            rows.append(key)
    args.results.mkdir(parents=True, exist_ok=True)
    name = f"tracker_vs_reference_{meta.image_size}_{args.labels}labels.json"
    (args.results / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['machine']['cpu']} ({results['machine']['cores']} cores), "
          f"{meta.model} @ {meta.image_size}, {args.labels} labels, {args.frames} frames {H}x{W}")
    print(f"{'run':24s} {'median s/frame':>15s} {'p90':>8s} {'img/s':>7s} {'vs ref':>7s} "
          f"{'MA % peak':>9s}")
    e = results["reference"]
    print(f"{'sam2 SAM2VideoPredictor':24s} {e['median_s']:15.3f} {e['p90_s']:8.3f} "
          f"{e['images_per_s']:7.2f} {'1.00x':>7s}")
    for key in rows:
        e = results[key]
        print(f"{key:24s} {e['median_s']:15.3f} {e['p90_s']:8.3f} {e['images_per_s']:7.2f} "
              f"{e['throughput_ratio']:6.2f}x {100 * e['memory_attention_fraction_of_peak']:8.0f}%")
    for key in rows:
        print(f"{key}: per-frame components {results[key]['components_s']}"
              + (f", max |logit diff| vs sam2 {results[key]['max_abs_logit_diff_vs_reference']:.1e}"
                 if results[key]["max_abs_logit_diff_vs_reference"] is not None else ""))
    print(f"FP32 peak {peak / 1e12:.3f} TFLOP/s = {peak_how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
