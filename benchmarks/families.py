"""Model families side by side: EdgeTAM in this project's engine against transformers'
own EdgeTAM video session, and against this project's SAM 2.1 tiny, in one run.

    python -m sst.benchmarks.families [--size 1024] [--frames 4] [--labels 2]
                                      [--engines torch,torch-bf16]

Random weights of one seed for both families (the arithmetic of the trained models).
The same synthetic specimen frames (a support with ``--labels`` parts, then the queries)
go through: transformers' ``EdgeTamVideoModel`` in its video inference session (FP32,
sequential, as its own code runs a video); and, per engine asked for, this project's
engine on EdgeTAM and on SAM 2.1 tiny, in sequential and independent mode. Each entry
gives the median seconds per query frame (the first query, a warm-up, not counted), the
share of it in memory attention, and the ratios: EdgeTAM against transformers' EdgeTAM
(its target is 2x) and EdgeTAM against SAM 2.1 tiny on the same engine. Writes
``families_<size>_<labels>labels.json`` under ``--results``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from sst.benchmarks.common import machine_description, save_results
from sst.benchmarks.tracker_vs_reference import _frames
from sst.export.families import family_of_model
from sst.tracker.instrument import InstrumentedBackend
from sst.tracker.tracker import Tracker

__all__ = ["main"]

ENGINES = ("torch", "torch-bf16")
FAMILY_MODELS = {"edgetam": "edgetam", "sam2.1_hiera_tiny": "sam2"}


def _model(name: str, size: int, seed: int) -> Any:
    return family_of_model(name).build(name, random_weights=True, seed=seed, image_size=size)


def _engine_run(model: Any, engine: str, support: tuple[np.ndarray, np.ndarray],
                queries: list[np.ndarray]) -> dict[str, Any]:
    from sst.tracker.torch_backend import TorchBackend

    backend = TorchBackend(model, precision="bf16" if engine.endswith("bf16") else "fp32")
    timed = InstrumentedBackend(backend)
    tracker = Tracker(timed)
    tracker.segment([support], queries[:1], mode="sequential")  # warm-up
    out: dict[str, Any] = {}
    for mode in ("sequential", "independent"):
        timed.reset()
        started = time.perf_counter()
        results = tracker.segment([support], queries, mode=mode)
        total = time.perf_counter() - started
        per = [r.seconds for r in results[1:]] or [results[0].seconds]
        out[mode] = {"median_s": statistics.median(per),
                     "memory_attention_share": timed.seconds.get("memory_attention", 0.0)
                     / total,
                     "components_s": {k: round(v / len(queries), 4)
                                      for k, v in timed.seconds.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="model image size")
    ap.add_argument("--frames", type=int, default=4, help="query frames (after 1 support)")
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed")
    ap.add_argument("--frame-size", default="480x640", help="frame HxW")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated, of {','.join(ENGINES)}")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ENGINES]:
        ap.error(f"--engines: unknown {bad}; expected some of {list(ENGINES)}")
    H, W = (int(v) for v in args.frame_size.split("x"))
    frames = _frames(args.frames + 1, args.labels, (H, W))
    support, queries = frames[0], [img for img, _ in frames[1:]]

    from sst.export.edgetam_reference import run_reference_sst

    doc: dict[str, Any] = {"machine": machine_description(), "image_size": args.size,
                           "labels": args.labels, "frames": args.frames,
                           "frame_size": [H, W], "seed": args.seed, "runs": {}}
    models = {name: _model(name, args.size, args.seed) for name in FAMILY_MODELS}
    run_reference_sst(models["edgetam"], support[0], support[1], queries[:1])  # warm-up
    ref = run_reference_sst(models["edgetam"], support[0], support[1], queries)
    ref_s = statistics.median([ref["seconds"][t] for t in range(2, args.frames + 1)]
                              or [ref["seconds"][1]])
    doc["transformers_edgetam_fp32"] = {"median_s": ref_s}
    print(f"transformers EdgeTAM FP32, sequential: {ref_s:.3f} s/frame", flush=True)
    for engine in engines:
        for name in FAMILY_MODELS:
            doc["runs"][f"{name} ({engine})"] = _engine_run(models[name], engine, support,
                                                            queries)
        for mode in ("sequential", "independent"):
            edge = doc["runs"][f"edgetam ({engine})"][mode]
            sam = doc["runs"][f"sam2.1_hiera_tiny ({engine})"][mode]
            edge["vs_transformers_edgetam"] = ref_s / edge["median_s"]
            edge["vs_sam2.1_tiny_same_engine"] = sam["median_s"] / edge["median_s"]
            print(f"{engine:10s} {mode:11s} EdgeTAM {edge['median_s']:.3f} s/frame "
                  f"(memory attention {edge['memory_attention_share']:.0%}), SAM 2.1 tiny "
                  f"{sam['median_s']:.3f} s/frame ({sam['memory_attention_share']:.0%}): "
                  f"EdgeTAM {edge['vs_transformers_edgetam']:.2f}x transformers' EdgeTAM, "
                  f"{edge['vs_sam2.1_tiny_same_engine']:.2f}x SAM 2.1 tiny", flush=True)
    path = save_results(args.results, f"families_{args.size}_{args.labels}labels.json", doc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
