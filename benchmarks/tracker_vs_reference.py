"""Per-frame time of the embedded tracker against sam2's SAM2VideoPredictor, side by side.

Same weights, same JPEG frames, same machine, one run. The reference is driven the way
SST drives it (``add_new_mask`` per label, ``propagate_in_video``); ours runs on the
exported ONNX graphs, in ``sequential`` and ``independent`` mode, on each engine asked
for: ``auto`` (what ``--engine auto`` chooses on this machine, measured afresh: the
entry names it), ``ort`` (ONNX Runtime, CPU), ``torch`` (the same graphs' PyTorch
modules), ``torch-bf16`` and ``torch-bf16-compiled``,
``server`` (``sst serve`` on loopback, over gRPC: sessions for sequential mode,
stateless requests for independent mode), and on a GPU ``cuda`` / ``tensorrt`` (ONNX
Runtime providers; skipped, with the reason, where they are missing).

    python -m sst.benchmarks.tracker_vs_reference --model-dir DIR [--frames N] [--labels K]

``DIR`` is an ``sst export`` folder; the reference is rebuilt with the same weights
(random weights: same seed; a checkpoint: pass ``--checkpoint``). The reference runs
twice, in FP32 and under BF16 autocast (``median_s_bf16``), and every entry is compared
with both (``throughput_ratio``, ``throughput_ratio_vs_sam2_bf16``). Prints a table and
writes JSON to ``--results``.

Besides times, it counts the work: GFLOP per image (encoder counted by PyTorch's
FLOP counter on sam2's own module, memory attention from its shapes, decoder and memory
encoder counted on our modules) and divides by the machine's measured matrix-multiply
rate. That gives the *floor*: the time per image if every FLOP ran at large-GEMM speed,
which bounds the speed-up any implementation of the same arithmetic can reach here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sst.benchmarks.common import encode_png, machine_description, save_results
from sst.benchmarks.server import serve
from sst.client import Client
from sst.export.meta import load_meta
from sst.export.specs import component_specs, dummy_inputs
from sst.tracker.backends import OrtBackend
from sst.tracker.engine_choice import choose_engine, open_candidate
from sst.tracker.errors import ModelError
from sst.tracker.instrument import InstrumentedBackend
from sst.tracker.tracker import Tracker

__all__ = ["main"]


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
    """Theoretical FP32 peak: cores x clock x SIMD lanes x 2 (FMA) x 2 FMA pipes.

    Lanes come from the CPU flags (AVX-512: 16, AVX2: 8, else 4). Two FMA pipes per
    core is what current x86 server cores have (Zen 2-4, Xeon Gold/Platinum)."""
    mhz: float | None = None
    flags = set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":")[1])
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ghz = 2.6 if mhz is None else mhz / 1000
    lanes, isa = ((16, "AVX-512") if "avx512f" in flags else (8, "AVX2") if "avx2" in flags
                  else (4, "SSE"))
    cores = os.cpu_count() or 1
    return (cores * ghz * 1e9 * lanes * 2 * 2,
            f"{cores} cores x {ghz:.2f} GHz x {lanes} FP32 lanes ({isa}) x 2 (FMA) x 2 FMA pipes")


def gemm_flops_per_s(n: int = 2048, repeats: int = 3) -> float:
    """Measured FP32 matrix-multiply rate (MKL/oneDNN through PyTorch, all cores): the
    practical ceiling for the large GEMMs that dominate every component."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def component_flops(model: Any, image_size: int) -> dict[str, float]:
    """FLOPs of one image through sam2's image encoder, and per object of our mask
    decoder and memory encoder modules, counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sst.export.wrappers import build_wrappers, geometry_of

    def count(fn: Any, *args: Any) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(*args)
        return float(counter.get_total_flops())

    geom = geometry_of(model)
    specs = component_specs(geom)
    wrappers = build_wrappers(model)
    out = {"image_encoder": count(model.forward_image,
                                  torch.zeros(1, 3, image_size, image_size))}
    for name in ("mask_decoder", "memory_encoder"):
        spec = specs[name]
        x = dummy_inputs(spec, geom, {"batch": 1})
        out[name] = count(wrappers[name], *(torch.from_numpy(x[n]) for n in spec.input_names))
    return out


def _stats(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    return {"median_s": statistics.median(s), "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))],
            "images_per_s": len(s) / sum(s)}


#: Engines and how they run: embedded backends, or the server over gRPC.
#: ``torch-bf16``: the torch engine under BF16 autocast on the CPU (a speed mode where the
#: CPU has AVX512-BF16/AMX units; its accuracy shows against sam2 and ``ort``).
ENGINES = ("auto", "ort", "torch", "torch-bf16", "torch-bf16-compiled", "server", "cuda",
           "tensorrt")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _backend(engine: str, model_dir: Path, model: Any, build: bool = False) -> Any:
    """The embedded backend of ``engine``; raises ``RuntimeError`` (the skip reason) when
    this machine cannot run it."""
    from sst.tracker.torch_backend import TorchBackend

    if engine == "ort":
        return OrtBackend(model_dir)
    if engine == "torch":
        return TorchBackend(model)
    if engine == "torch-bf16":
        return TorchBackend(model, precision="bf16")
    if engine == "torch-bf16-compiled":
        return TorchBackend(model, precision="bf16", compiled=True)
    if engine == "auto":  # measured afresh here, not taken from an earlier run's cache
        with tempfile.TemporaryDirectory(prefix="sst-auto-") as cache:
            choice, backend = choose_engine(
                model_dir, lambda c: open_candidate(model_dir, c, build=build),
                cache_dir=Path(cache))
        backend.engine_choice = choice
        return backend
    if shutil.which("nvidia-smi") is None:
        raise RuntimeError(f"no NVIDIA GPU here ({engine} needs one)")
    chain = ("tensorrt", "cuda", "cpu") if engine == "tensorrt" else ("cuda", "cpu")
    try:  # OrtBackend names a missing provider and how to install it
        return OrtBackend(model_dir, providers=chain)
    except ModelError as exc:
        raise RuntimeError(str(exc)) from None


def _run_embedded(backend: Any, support: list[tuple[np.ndarray, np.ndarray]],
                  queries: list[np.ndarray], batch: int
                  ) -> dict[str, tuple[list[float], float, Any, list[Any]]]:
    """Per mode: per-image seconds, session start seconds, tracker (timings), results."""
    timed = InstrumentedBackend(backend, record_attention=True)
    tracker = Tracker(timed)
    tracker.segment(support, queries[:1], mode="sequential")  # warm-up
    runs = {}
    for mode in ("sequential", "independent"):
        timed.reset()
        t = time.perf_counter()
        out = tracker.segment(support, queries, mode=mode, batch=batch)
        total = time.perf_counter() - t
        per = [r.seconds for r in out]
        choice = getattr(backend, "engine_choice", None)
        runs[mode] = (per, total - sum(per), {"timings": dict(timed.seconds),
                                              "shapes": list(timed.attention_shapes or []),
                                              "total": total,
                                              "engine": None if choice is None else
                                              choice.candidate}, out)
    return runs


def _run_server(model_dir: Path, support: list[tuple[np.ndarray, np.ndarray]],
                queries: list[np.ndarray], batch: int
                ) -> dict[str, tuple[list[float], float, Any, list[Any]]]:
    """The same work through ``sst serve`` on loopback: a session (sequential) and
    stateless requests of ``batch`` queries (independent). Images go as PNG (lossless)."""
    sup = [encode_png(img) for img, _ in support]
    masks = [encode_png(m) for _, m in support]
    qs = [encode_png(q) for q in queries]
    runs = {}
    with serve(model_dir) as server, Client(server.grpc_url, timeout=900.0) as client:
        with client.open_session(sup, masks) as warm:  # warm-up, as for the embedded runs
            warm.segment(qs[0])
        client.segment(sup, masks, qs[:1])
        t0 = time.perf_counter()
        with client.open_session(sup, masks) as session:
            start = time.perf_counter() - t0
            per, out = [], []
            for q in qs:
                t = time.perf_counter()
                out.append(session.segment(q))
                per.append(time.perf_counter() - t)
        runs["sequential"] = (per, start, None, out)
        per, out = [], []
        for i in range(0, len(qs), batch):
            t = time.perf_counter()
            got = client.segment(sup, masks, qs[i:i + batch])
            dt = (time.perf_counter() - t) / len(got)
            per += [dt] * len(got)
            out += got
        runs["independent"] = (per, 0.0, None, out)
    return runs


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
    ap.add_argument("--compile", action="store_true",
                    help="auto may build the compiled engine's packages where they are "
                         "missing, as `sst segment --compile` does (once per model and "
                         "machine), so that it is among the candidates measured")
    ap.add_argument("--engines", default="auto,ort,torch,server,cuda,tensorrt",
                    help=f"engines to measure, of {','.join(ENGINES)}")
    args = ap.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        ap.error(f"--engines: unknown {bad}; expected some of {list(ENGINES)}")

    import torch

    from sst.export.sam2_model import build_sam2_model
    from sst.export.sst_reference import reference_from_images

    torch.set_num_threads(os.cpu_count() or 1)
    meta = load_meta(args.model_dir)
    if args.checkpoint is None and not meta.random_weights:
        ap.error("the export used a checkpoint: pass the same --checkpoint")
    model = build_sam2_model(meta.model, checkpoint=args.checkpoint,
                             random_weights=args.checkpoint is None, seed=args.seed,
                             image_size=meta.image_size)
    H, W = (int(v) for v in args.size.split("x"))
    frames = _frames(args.frames + 1, args.labels, (H, W))
    labels = list(range(1, args.labels + 1))
    with tempfile.TemporaryDirectory(prefix="sst-bench-") as work:  # sam2 reads JPEG files
        paths, ref = reference_from_images(model, [frames[0]], [f for f, _ in frames[1:]],
                                           labels, Path(work))
        decoded = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    support = [(decoded[0], frames[0][1])]
    queries = decoded[1:]
    ref_s = [ref["seconds"][i] for i in range(1, len(paths))]  # frame 0 is the support
    with tempfile.TemporaryDirectory(prefix="sst-bench-") as work, \
            torch.autocast("cpu", dtype=torch.bfloat16):  # sam2 as it runs fastest here
        _, ref16 = reference_from_images(model, [frames[0]], [f for f, _ in frames[1:]],
                                         labels, Path(work))
    ref16_s = [ref16["seconds"][i] for i in range(1, len(paths))]

    results: dict[str, Any] = {"machine": machine_description(), "model": meta.model,
                               "image_size": meta.image_size, "precision": meta.precision,
                               "labels": args.labels, "frames": args.frames,
                               "frame_size": [H, W]}
    # Per-frame times exclude the session start (support encoding) on both sides, and the
    # first tracked frame in sequential runs (warm caches).
    results["reference"] = _stats(ref_s[1:] if len(ref_s) > 2 else ref_s)
    ref16_stats = _stats(ref16_s[1:] if len(ref16_s) > 2 else ref16_s)
    results["reference"]["median_s_bf16"] = ref16_stats["median_s"]
    results["reference"]["images_per_s_bf16"] = ref16_stats["images_per_s"]
    results["reference"]["max_abs_logit_diff_bf16_vs_fp32"] = max(
        float(np.abs(np.asarray(ref16["logits"][i], np.float32) - ref["logits"][i]).max())
        for i in range(1, len(paths)))
    peak, peak_how = fp32_peak_flops()
    gemm = gemm_flops_per_s()
    results["fp32_peak_flops"] = {"value": peak, "how": peak_how}
    results["gemm_flops_per_s"] = {"value": gemm, "how": "FP32 2048^3 matmul, all cores"}
    counted = component_flops(model, meta.image_size)
    results["gflop"] = {"image_encoder_per_image": counted["image_encoder"] / 1e9,
                        "mask_decoder_per_object": counted["mask_decoder"] / 1e9,
                        "memory_encoder_per_object": counted["memory_encoder"] / 1e9}
    rows, skipped = [], {}
    shapes: dict[str, list[Any]] = {}
    embedded_masks: dict[str, list[np.ndarray]] = {}
    for engine in engines:
        try:
            if engine == "server":
                runs = _run_server(args.model_dir, support, queries, args.batch)
            else:
                runs = _run_embedded(_backend(engine, args.model_dir, model, args.compile),
                                     support, queries,
                                     args.batch)
        except RuntimeError as exc:
            skipped[engine] = f"skipped: {exc}"
            print(f"{engine}: {skipped[engine]}")
            continue
        for mode, (per, start, info, out) in runs.items():
            entry: dict[str, Any] = dict(
                _stats(per[1:] if mode == "sequential" and len(per) > 2 else per))
            entry["session_start_s"] = round(start, 4)  # supports: not in img/s
            if info is not None:  # embedded: where the time goes
                n = len(out)
                entry["components_s"] = {k: round(v / n, 4) for k, v in info["timings"].items()}
                host = info["total"] - sum(info["timings"].values())
                entry["components_s"]["host_overhead"] = round(host / n, 4)
                shapes.setdefault(mode, info["shapes"])
                ma_s = info["timings"].get("memory_attention", 0.0)
                ma_flops = sum(memory_attention_flops(meta.image_size, *sh)
                               for sh in info["shapes"])
                entry["memory_attention_tflops"] = ma_flops / ma_s / 1e12 if ma_s else 0.0
                entry["memory_attention_fraction_of_peak"] = (ma_flops / ma_s / peak
                                                              if ma_s else 0.0)
            if mode == "sequential" and hasattr(out[0], "logits"):
                entry["max_abs_logit_diff_vs_reference"] = max(
                    float(np.abs(r.logits - ref["logits"][i + 1]).max())
                    for i, r in enumerate(out))
            masks = [r.mask for r in out]
            if engine == "ort":
                embedded_masks[mode] = masks
            elif mode in embedded_masks:
                entry["pixels_differing_from_ort"] = int(sum(
                    int((a != b).sum()) for a, b in zip(masks, embedded_masks[mode])))
                entry["min_label_iou_vs_ort"] = min(
                    _iou(a == lab, b == lab) for a, b in zip(masks, embedded_masks[mode])
                    for lab in range(1, args.labels + 1))
            entry["speedup_per_frame"] = results["reference"]["median_s"] / entry["median_s"]
            entry["throughput_ratio"] = (entry["images_per_s"]
                                         / results["reference"]["images_per_s"])
            entry["throughput_ratio_vs_sam2_bf16"] = (
                entry["images_per_s"] / results["reference"]["images_per_s_bf16"])
            if info is not None and info.get("engine") is not None:
                entry["engine"] = info["engine"]
            key = f"{mode} ({engine})"
            results[key] = entry
            rows.append((key, mode))
    results["skipped"] = skipped
    # The floor: this run's arithmetic at the measured GEMM rate.
    floors = {}
    for mode, sh in shapes.items():
        n = len(queries)
        gf = (counted["image_encoder"]
              + sum(memory_attention_flops(meta.image_size, *x) for x in sh) / n
              + args.labels * counted["mask_decoder"]
              + (args.labels * counted["memory_encoder"] if mode == "sequential" else 0.0))
        floors[mode] = {"gflop_per_image": gf / 1e9, "floor_s": gf / gemm,
                        "best_possible_ratio_vs_reference":
                            results["reference"]["median_s"] * gemm / gf}
    results["floor"] = floors
    for key, mode in rows:
        if mode in floors:
            results[key]["fraction_of_floor"] = floors[mode]["floor_s"] / results[key]["median_s"]

    args.results.mkdir(parents=True, exist_ok=True)
    name = f"tracker_vs_reference_{meta.image_size}_{args.labels}labels.json"
    if meta.precision != "fp32":
        name = name.replace(".json", f"_{meta.precision}.json")
    save_results(args.results, name, results)
    print(f"{results['machine']['cpu']} ({results['machine']['cores']} cores), "
          f"{meta.model} @ {meta.image_size} {meta.precision}, {args.labels} labels, "
          f"{args.frames} frames {H}x{W}")
    print(f"{'run':24s} {'median s/frame':>15s} {'p90':>8s} {'img/s':>7s} {'vs ref':>7s} "
          f"{'MA % peak':>9s} {'floor/time':>10s}")
    e = results["reference"]
    print(f"{'sam2 SAM2VideoPredictor':24s} {e['median_s']:15.3f} {e['p90_s']:8.3f} "
          f"{e['images_per_s']:7.2f} {'1.00x':>7s}")
    print(f"{'sam2 under BF16 autocast':24s} {e['median_s_bf16']:15.3f} {'':8s} "
          f"{e['images_per_s_bf16']:7.2f} {e['images_per_s_bf16'] / e['images_per_s']:6.2f}x"
          f"  (max |logit diff| vs FP32 {e['max_abs_logit_diff_bf16_vs_fp32']:.1e})")
    for key, _ in rows:
        e = results[key]
        ma = (f"{100 * e['memory_attention_fraction_of_peak']:8.0f}%"
              if "memory_attention_fraction_of_peak" in e else f"{'':9s}")
        fl = f"{100 * e['fraction_of_floor']:9.0f}%" if "fraction_of_floor" in e else ""
        print(f"{key:24s} {e['median_s']:15.3f} {e['p90_s']:8.3f} {e['images_per_s']:7.2f} "
              f"{e['throughput_ratio']:6.2f}x {ma} {fl}  "
              f"{e['throughput_ratio_vs_sam2_bf16']:.2f}x sam2-bf16"
              + (f"  (auto chose {e['engine']})" if e.get("engine") else ""))
    for key, _ in rows:
        e = results[key]
        extra = []
        if "components_s" in e:
            extra.append(f"per-frame components {e['components_s']}")
        if e.get("max_abs_logit_diff_vs_reference") is not None:
            extra.append(f"max |logit diff| vs sam2 {e['max_abs_logit_diff_vs_reference']:.1e}")
        if "pixels_differing_from_ort" in e:
            extra.append(f"{e['pixels_differing_from_ort']} mask pixels differ from ort "
                         f"(worst label IoU {e['min_label_iou_vs_ort']:.4f})")
        if extra:
            print(f"{key}: " + "; ".join(extra))
    for mode, f in floors.items():
        print(f"{mode}: {f['gflop_per_image']:.0f} GFLOP/image -> floor {f['floor_s']:.2f} s at "
              f"the GEMM rate = at best {f['best_possible_ratio_vs_reference']:.2f}x the reference")
    print(f"FP32 peak {peak / 1e12:.3f} TFLOP/s = {peak_how}; measured GEMM "
          f"{gemm / 1e12:.3f} TFLOP/s ({gemm / peak:.0%} of peak)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
