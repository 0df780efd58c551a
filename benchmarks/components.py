"""Each component's time on each engine, side by side: where a frame's time goes.

    python -m sst.benchmarks.components --model-dir DIR [--engines ort,torch,torch-bf16]

Every engine runs the same inputs, at the shapes of a sequential frame late in a
session: the image encoder on one frame, memory attention over a full bank
(``num_maskmem`` memories, ``--pointers`` object pointers) and the mask decoder and
memory encoder for ``--objects`` objects. Each is timed ``--repeats`` times after one
untimed call (the best is reported: other work may share the machine); the engines
alternate call by call, so that a burst of load hits all of them. Writes
``components_<size>.json`` under ``--results``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from sst.benchmarks.common import machine_description, save_results
from sst.export.families import family_specs
from sst.export.meta import load_meta
from sst.export.specs import COMPONENTS, dummy_inputs
from sst.tracker.backends import OrtBackend

__all__ = ["main"]

ENGINES = ("ort", "torch", "torch-bf16", "torch-bf16-compiled")


def _backend(name: str, model_dir: Path, model: Any) -> Any:
    from sst.tracker.torch_backend import TorchBackend

    if name == "ort":
        return OrtBackend(model_dir)
    precision = "bf16" if "bf16" in name else "fp32"
    return TorchBackend(model, precision=precision, compiled=name.endswith("compiled"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--engines", default="ort,torch,torch-bf16",
                    help=f"comma-separated, of {','.join(ENGINES)}")
    ap.add_argument("--objects", type=int, default=2, help="objects (labels) per call")
    ap.add_argument("--pointers", type=int, default=16, help="object pointers in the bank")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed (no checkpoint)")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ENGINES]:
        ap.error(f"--engines: unknown {bad}; expected some of {list(ENGINES)}")

    import torch

    from sst.export.sam2_model import build_sam2_model

    meta = load_meta(args.model_dir)
    model = build_sam2_model(meta.model, checkpoint=args.checkpoint,
                             random_weights=args.checkpoint is None, seed=args.seed,
                             image_size=meta.image_size)
    specs = family_specs(meta.geometry)
    dims = {"image_encoder": {"batch": 1},
            "memory_attention": {"batch": args.objects, "num_frames": meta.num_maskmem,
                                 "num_ptrs": args.pointers},
            "mask_decoder": {"batch": args.objects},
            "memory_encoder": {"batch": args.objects}}
    feeds = {c: {k: (v.astype(np.float32) if v.dtype == np.float64 else v)
                 for k, v in dummy_inputs(specs[c], meta.geometry, dims[c]).items()}
             for c in COMPONENTS}
    backends = {e: _backend(e, args.model_dir, model) for e in engines}
    best: dict[str, dict[str, float]] = {e: {} for e in engines}
    first: dict[str, dict[str, float]] = {e: {} for e in engines}
    for c in COMPONENTS:
        for e, b in backends.items():
            t = time.perf_counter()
            b.run(c, feeds[c])
            first[e][c] = round(time.perf_counter() - t, 4)
        for _ in range(args.repeats):
            for e, b in backends.items():
                t = time.perf_counter()
                b.run(c, feeds[c])
                s = time.perf_counter() - t
                best[e][c] = round(min(best[e].get(c, s), s), 4)
    results = {"machine": machine_description(), "torch_threads": torch.get_num_threads(),
               "model": meta.model, "image_size": meta.image_size, "objects": args.objects,
               "bank": {"memories": meta.num_maskmem, "pointers": args.pointers},
               "best_s": best, "first_call_s": first}
    ref = engines[0]
    print(f"{results['machine']['cpu']} ({results['machine']['cores']} cores), {meta.model} "
          f"@ {meta.image_size}, {args.objects} objects, full bank; best of {args.repeats} s")
    print(f"{'component':18s}" + "".join(f"{e:>22s}" for e in engines))
    for c in COMPONENTS:
        print(f"{c:18s}" + "".join(
            f"{best[e][c]:12.4f} ({best[ref][c] / best[e][c]:5.2f}x)" for e in engines))
    print(f"{'sum':18s}" + "".join(f"{sum(best[e].values()):22.4f}" for e in engines))
    print(f"wrote {save_results(args.results, f'components_{meta.image_size}.json', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
