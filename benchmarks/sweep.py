"""Tracker against sam2's predictor over image sizes and label counts, side by side.

    python -m sst.benchmarks.sweep [--quick]

For each image size (default 512 and 1024; ``--quick``: 256 and 512) a random-weight
SAM 2.1 tiny is exported once (parity-checked, cached like ``sst segment`` does), then
:mod:`sst.benchmarks.tracker_vs_reference` runs for each label count (default 1, 3, 5;
quick: 2) on the engines of ``--engines`` (default: embedded ONNX Runtime, the server
over gRPC, and the CUDA/TensorRT providers). An independent-mode batch sweep follows at
the smallest size. The default run takes about 20 minutes on 2 cores (exports are cached
after the first run). Results go to ``benchmarks/results/sweep.json`` and ``sweep.png``.
On a machine with an NVIDIA GPU the CUDA and TensorRT runs are repeated on an FP16
export; without one they are reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from sst.benchmarks import tracker_vs_reference as tvr
from sst.benchmarks.common import save_figure, save_results, synthetic_frame
from sst.export.cache import resolve_model_dir
from sst.tracker.backends import OrtBackend
from sst.tracker.tracker import Tracker

__all__ = ["main"]


def _batch_sweep(model_dir: Path, batches: list[int], queries: int) -> list[dict[str, Any]]:
    tracker = Tracker(OrtBackend(model_dir))
    support = synthetic_frame(0)
    frames = [synthetic_frame(10 + i)[0] for i in range(queries)]
    session = tracker.start_session([support])
    list(tracker.segment_independent(session, frames[:1], batch=1))  # warm-up
    rows = []
    for b in batches:
        t = time.perf_counter()
        out = list(tracker.segment_independent(session, frames, batch=b))
        dt = time.perf_counter() - t
        assert all(isinstance(r.mask, np.ndarray) for r in out)
        rows.append({"batch": b, "images_per_s": len(out) / dt})
    return rows


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    keys = [k for k in runs[0] if k.startswith(("sequential (", "independent ("))]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(keys))
    xs = range(len(runs))
    for i, k in enumerate(keys):
        ax.bar([x + i * width for x in xs], [r[k]["throughput_ratio"] for r in runs],
               width, label=k)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in xs])
    ax.set_xticklabels([f"{r['image_size']} px\n{r['labels']} labels" for r in runs])
    ax.set_ylabel("images/s relative to sam2's predictor")
    ax.set_title(f"SST tracker vs SAM2VideoPredictor ({results['machine']['cpu']}, "
                 f"{results['machine']['cores']} cores)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", help="image sizes, e.g. 512,1024")
    ap.add_argument("--labels", help="label counts, e.g. 1,3,5")
    ap.add_argument("--frames", type=int, help="query frames per run")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--engines", default="ort,server,cuda,tensorrt",
                    help="engines of tracker_vs_reference (add torch for the PyTorch modules)")
    args = ap.parse_args(argv)

    sizes = [int(v) for v in (args.sizes or ("256,512" if args.quick else "512,1024"))
             .split(",")]
    labels = [int(v) for v in (args.labels or ("2" if args.quick else "1,3,5")).split(",")]
    frames = args.frames or (3 if args.quick else 4)
    args.results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"machine": tvr.machine_description(), "runs": []}
    gpu = shutil.which("nvidia-smi") is not None
    if not gpu:
        results["gpu"] = "skipped: no NVIDIA GPU here (CUDA/TensorRT providers and FP16 need one)"
        print(results["gpu"])
    gpu_engines = ",".join(e for e in args.engines.split(",") if e in ("cuda", "tensorrt"))
    for size in sizes:
        passes = [("fp32", args.engines)]
        if gpu and gpu_engines:
            passes.append(("fp16", gpu_engines))
        for precision, engines in passes:
            model_dir = resolve_model_dir("sam2.1_hiera_tiny", size, random_weights=True,
                                          seed=0, precision=precision)
            for k in labels:
                tvr.main(["--model-dir", str(model_dir), "--frames", str(frames),
                          "--labels", str(k), "--results", str(args.results),
                          "--engines", engines])
                name = f"tracker_vs_reference_{size}_{k}labels.json"
                if precision != "fp32":
                    name = name.replace(".json", f"_{precision}.json")
                results["runs"].append(json.loads((args.results / name).read_text()))
    smallest = resolve_model_dir("sam2.1_hiera_tiny", sizes[0], random_weights=True, seed=0)
    batches = [1, 2, 4]
    results["independent_batch_sweep"] = {
        "image_size": sizes[0], "rows": _batch_sweep(smallest, batches, max(batches))}
    for row in results["independent_batch_sweep"]["rows"]:
        print(f"independent (ort) @ {sizes[0]}: batch {row['batch']}: "
              f"{row['images_per_s']:.2f} img/s")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    save_results(args.results, "sweep.json", results)
    _plot(results, args.results / "sweep.png")
    print(f"\n{'size':>5s} {'labels':>6s} " + " ".join(
        f"{k:>20s}" for k in results["runs"][0] if k.startswith(("sequential (",
                                                                  "independent ("))))
    for r in results["runs"]:
        keys = [k for k in r if k.startswith(("sequential (", "independent ("))]
        floor = r.get("floor", {})
        print(f"{r['image_size']:5d} {r['labels']:6d} "
              + " ".join(f"{r[k]['throughput_ratio']:19.2f}x" for k in keys)
              + "   at best " + " / ".join(f"{m} {f['best_possible_ratio_vs_reference']:.2f}x"
                                           for m, f in floor.items()))
    print(f"(images/s relative to sam2's predictor; {results['seconds']:.0f}s in all; "
          f"{args.results / 'sweep.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
