"""Resident memory over many frames: the server, the embedded tracker, sam2's own predictor.

    python -m sst.benchmarks.memory --model-dir DIR [--quick] [--seed N | --checkpoint F]

``DIR`` is an ``sst export`` folder, served in place (never written). Frames are small
synthetic specimens (240x320, 3 labels), JPEG-encoded, drawn from a pool.

(a) the server: ``tritonserver`` on free loopback ports; the RSS (``VmRSS``) of the server
    process plus its children (the Python-backend stubs, where the models run) is read
    after every frame while one session tracks 500 frames (quick: 100), then while 50
    sessions of 10 frames each (quick: 10x10) start, track and end, and also sampled
    every second in the background. Target: RSS after the last frame of the long session
    within 5% of the RSS after frame 50.
(b) the embedded tracker (``OrtBackend`` on ``DIR``) in this process, over the same frames.
(c) sam2's ``SAM2VideoPredictor`` (rebuilt with the export's weights: the same random seed,
    or ``--checkpoint``) on a JPEG-folder pseudo-video of 100 frames (quick: 30) at the
    export's image size, in a child process: its state keeps every frame, so it grows.

Writes ``memory.json`` and ``memory.png`` (RSS against frames for all three) to
``--results``. Exits 1 if (a) or (b) misses the 5% target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from sst.benchmarks.common import (
    dir_changes,
    encode_jpeg,
    encode_png,
    log_progress,
    machine_description,
    read_rss_kib,
    save_figure,
    snapshot_dir,
    synthetic_frame,
    tree_rss_kib,
)
from sst.benchmarks.server import serve
from sst.client import Client
from sst.export.meta import load_meta
from sst.tracker.backends import OrtBackend
from sst.tracker.io import load_image_bytes, load_mask_bytes
from sst.tracker.tracker import Tracker

__all__ = ["Plan", "RssSampler", "frame_pool", "growth", "main", "propagation_growth",
           "server_breakdown"]

#: Allowed growth between the RSS after ``check_at`` frames and after the last frame.
TARGET_GROWTH = 0.05


@dataclass(frozen=True)
class Plan:
    """How many frames each part runs."""

    frames: int = 500
    sessions: int = 50
    session_frames: int = 10
    sam2_frames: int = 100
    check_at: int = 50
    pool: int = 16


DEFAULT = Plan()
QUICK = Plan(frames=100, sessions=10, session_frames=10, sam2_frames=30)


def _mib(kib: float) -> float:
    return round(kib / 1024.0, 1)


def frame_pool(n: int, size: tuple[int, int] = (240, 320)
               ) -> tuple[bytes, bytes, list[bytes], list[Any]]:
    """``(support JPEG, mask PNG, n query JPEGs, their RGB arrays)``: a drifting specimen."""
    img, mask = synthetic_frame(0, size=size)
    arrays = [synthetic_frame(200 + i, size=size, shift=0.04 * ((i % 7) - 3))[0]
              for i in range(n)]
    return encode_jpeg(img), encode_png(mask), [encode_jpeg(a) for a in arrays], arrays


def growth(series: Sequence[int], at: int) -> dict[str, Any]:
    """RSS after frame ``at`` (1-based) against after the last frame of ``series``
    (one KiB value per frame)."""
    if not series:
        return {}
    ref_i = min(at, len(series)) - 1
    ref, last = series[ref_i], series[-1]
    rel = (last - ref) / ref if ref else 0.0
    return {"at_frame": ref_i + 1, "rss_mib_at": _mib(ref), "last_frame": len(series),
            "rss_mib_last": _mib(last), "growth": rel, "within_target": rel <= TARGET_GROWTH}


class RssSampler(threading.Thread):
    """Samples ``measure()`` (KiB) every ``interval`` seconds until :meth:`stop`, tagging
    each sample with the elapsed time and the caller's current ``frames`` count."""

    def __init__(self, measure: Callable[[], int], interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.measure = measure
        self.interval = interval
        self.frames = 0
        self.samples: list[tuple[float, int, int]] = []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop_event.is_set():
            self.samples.append((round(time.monotonic() - self._t0, 2), self.frames,
                                 self.measure()))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[tuple[float, int, int]]:
        """Stop sampling and return ``(seconds, frames, KiB)`` samples."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)
        return self.samples


def server_breakdown(pid: int, model_dir: Path) -> dict[str, float]:
    """RSS in MiB per server process, named by the model a stub serves."""
    out: dict[str, float] = {}
    for p, kib in tree_rss_kib(pid).items():
        name = "tritonserver" if p == pid else f"pid {p}"
        try:
            args = psutil.Process(p).cmdline()
        except psutil.Error:
            args = []
        for text in args:
            if text.startswith(str(model_dir)):
                name = Path(text).relative_to(model_dir).parts[0]
                break
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name} #{n}"
        out[key] = _mib(kib)
    return out


# --------------------------------------------------------------------------------------
# (a) the server
# --------------------------------------------------------------------------------------


def server_memory(model_dir: Path, plan: Plan, support: bytes, mask: bytes,
                  pool: Sequence[bytes]) -> dict[str, Any]:
    """One long session, then many short ones, against a fresh server."""
    with serve(model_dir) as server:
        return _drive_server(server, plan, support, mask, pool)


def _drive_server(server: Any, plan: Plan, support: bytes, mask: bytes,
                  pool: Sequence[bytes]) -> dict[str, Any]:
    pid = server.pid
    assert pid is not None

    def total() -> int:
        return sum(tree_rss_kib(pid).values())

    ready = total()
    sampler = RssSampler(total)
    sampler.start()
    per_frame: list[int] = []
    per_session: list[int] = []
    try:
        t = time.perf_counter()
        with Client(server.grpc_url, timeout=600.0) as client:
            session = client.open_session([support], [mask])
            after_start = total()
            for i in range(plan.frames):
                session.segment(pool[i % len(pool)])
                sampler.frames += 1
                per_frame.append(total())
                if (i + 1) % 50 == 0:
                    log_progress(f"  server: {i + 1} frames, RSS {_mib(per_frame[-1])} MiB")
            session.close()
            long_s = time.perf_counter() - t
            for s in range(plan.sessions):
                with client.open_session([support], [mask]) as short:
                    for j in range(plan.session_frames):
                        short.segment(pool[(s + j) % len(pool)])
                        sampler.frames += 1
                per_session.append(total())
            log_progress(f"  server: {plan.sessions} sessions, RSS {_mib(per_session[-1])} MiB")
        breakdown = server_breakdown(pid, server.model_repository)
    finally:
        samples = sampler.stop()
    return {
        "rss_mib_ready": _mib(ready), "rss_mib_after_start": _mib(after_start),
        "per_frame_mib": [_mib(v) for v in per_frame],
        "per_session_mib": [_mib(v) for v in per_session],
        "long_session": growth(per_frame, plan.check_at),
        "sessions": {"first_mib": _mib(per_session[0]), "last_mib": _mib(per_session[-1]),
                     "growth": (per_session[-1] - per_session[0]) / per_session[0]}
        if per_session else {},
        "seconds_per_frame_long_session": long_s / max(1, plan.frames),
        "breakdown_mib": breakdown,
        "timeline": [{"t_s": t, "frames": f, "rss_mib": _mib(k)} for t, f, k in samples]}


# --------------------------------------------------------------------------------------
# (b) the embedded tracker
# --------------------------------------------------------------------------------------


def embedded_memory(model_dir: Path, plan: Plan, support: bytes, mask: bytes,
                    pool: Sequence[bytes]) -> dict[str, Any]:
    """The in-process tracker over the same frames; RSS of this process."""
    before = read_rss_kib() or 0
    tracker = Tracker(OrtBackend(model_dir))
    img = load_image_bytes(support)
    session = tracker.start_session(
        [(img, load_mask_bytes(mask, image_size=(img.shape[1], img.shape[0])))])
    after_start = read_rss_kib() or 0
    per_frame: list[int] = []
    t = time.perf_counter()
    for i in range(plan.frames):
        list(tracker.track(session, [load_image_bytes(pool[i % len(pool)])]))
        per_frame.append(read_rss_kib() or 0)
        if (i + 1) % 100 == 0:
            log_progress(f"  embedded: {i + 1} frames, RSS {_mib(per_frame[-1])} MiB")
    took = time.perf_counter() - t
    del session, tracker
    return {"rss_mib_before": _mib(before), "rss_mib_after_start": _mib(after_start),
            "per_frame_mib": [_mib(v) for v in per_frame],
            "long_session": growth(per_frame, plan.check_at),
            "seconds_per_frame": took / max(1, plan.frames)}


# --------------------------------------------------------------------------------------
# (c) sam2's predictor, in a child process
# --------------------------------------------------------------------------------------


def _sam2_child(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: build the predictor, init on the JPEG folder, add the
    support mask per label on frame 0, propagate; RSS after each stage and frame."""
    import torch

    from sst.export.sam2_model import build_sam2_model

    torch.set_num_threads(os.cpu_count() or 1)
    rss: dict[str, Any] = {"start_mib": _mib(read_rss_kib() or 0)}
    predictor = build_sam2_model(spec["model"], checkpoint=spec["checkpoint"],
                                 random_weights=spec["checkpoint"] is None, seed=spec["seed"],
                                 image_size=spec["image_size"])
    rss["built_mib"] = _mib(read_rss_kib() or 0)
    mask = np.asarray(Image.open(spec["mask"]))
    labels = [int(v) for v in np.unique(mask) if v]
    per_frame: list[int] = []
    t = time.perf_counter()
    with torch.inference_mode():
        state = predictor.init_state(video_path=spec["frames_dir"])
        rss["after_init_state_mib"] = _mib(read_rss_kib() or 0)
        for lab in labels:
            predictor.add_new_mask(state, frame_idx=0, obj_id=lab, mask=(mask == lab))
        rss["after_add_mask_mib"] = _mib(read_rss_kib() or 0)
        for _frame_idx, _ids, _masks in predictor.propagate_in_video(state):
            per_frame.append(read_rss_kib() or 0)
    rss["per_frame_mib"] = [_mib(v) for v in per_frame]
    rss["seconds_per_frame"] = (time.perf_counter() - t) / max(1, len(per_frame))
    rss["frames_in_state"] = int(state["num_frames"])
    return rss


def _sam2_child_main() -> None:
    """Entry point of the child process: spec JSON in ``argv[1]``, result JSON to ``argv[2]``."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(_sam2_child(spec)))


def propagation_growth(per_frame_mib: Sequence[float], skip: int = 5) -> dict[str, float]:
    """Growth over propagation, leaving out the first ``skip`` frames (allocator warm-up):
    ``growth_mib_over_propagation`` (last minus frame ``skip + 1``) and
    ``growth_kib_per_frame`` (least-squares slope)."""
    ys = list(per_frame_mib)
    if len(ys) < 2 * skip:
        skip = 0
    ys = ys[skip:]
    if len(ys) < 2:
        return {"growth_mib_over_propagation": 0.0, "growth_kib_per_frame": 0.0}
    slope = float(np.polyfit(np.arange(len(ys), dtype=np.float64), ys, 1)[0])
    return {"growth_from_frame": skip + 1,
            "growth_mib_over_propagation": round(ys[-1] - ys[0], 1),
            "growth_kib_per_frame": round(slope * 1024.0, 1)}


def sam2_memory(model: str, image_size: int, seed: int, checkpoint: Path | None,
                frames: int, support: bytes, mask: bytes, arrays: Sequence[Any],
                timeout_s: float = 1800.0) -> dict[str, Any]:
    """(c): writes the pseudo-video (support + queries) and runs :func:`_sam2_child`."""
    with tempfile.TemporaryDirectory(prefix="sst-mem-sam2-") as tmp:
        root = Path(tmp)
        video = root / "frames"
        video.mkdir()
        (video / "00000.jpg").write_bytes(support)
        for i in range(1, frames):
            Image.fromarray(arrays[(i - 1) % len(arrays)]).save(video / f"{i:05d}.jpg",
                                                                  quality=92)
        (root / "mask.png").write_bytes(mask)
        spec = {"model": model, "image_size": image_size, "seed": seed,
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "frames_dir": str(video), "mask": str(root / "mask.png")}
        (root / "spec.json").write_text(json.dumps(spec))
        code = ("from sst.benchmarks.memory import _sam2_child_main; _sam2_child_main()")
        res = subprocess.run([sys.executable, "-c", code, str(root / "spec.json"),
                              str(root / "out.json")], capture_output=True, text=True,
                             timeout=timeout_s)
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"sam2 child failed ({res.returncode}):\n{tail}")
        out: dict[str, Any] = json.loads((root / "out.json").read_text())
    out.update(propagation_growth(out["per_frame_mib"]))
    # init_state decodes and keeps every frame of the video (plus torch buffers).
    out["init_state_growth_mib"] = round(out["after_init_state_mib"] - out["built_mib"], 1)
    return out


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def plot(results: Mapping[str, Any], path: Path) -> None:
    """RSS against frames (absolute, and relative to the check frame) for all three."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(1, 2, figsize=(12, 5))
    srv, emb, ref = results["server"], results["embedded"], results.get("sam2")
    n = len(srv["per_frame_mib"])
    curves: list[tuple[str, list[float], list[float], str]] = [
        ("server (tritonserver + stubs), one session", list(range(1, n + 1)),
         srv["per_frame_mib"], "-")]
    plan = results["plan"]
    if srv["per_session_mib"]:
        xs = [n + (k + 1) * plan["session_frames"] for k in range(len(srv["per_session_mib"]))]
        curves.append((f"server, then {plan['sessions']} sessions x {plan['session_frames']}",
                       xs, srv["per_session_mib"], "--"))
    curves.append(("embedded tracker (this process)",
                   list(range(1, len(emb["per_frame_mib"]) + 1)), emb["per_frame_mib"], "-"))
    if ref:
        curves.append(("sam2 SAM2VideoPredictor (child process)",
                       list(range(1, len(ref["per_frame_mib"]) + 1)), ref["per_frame_mib"],
                       "-"))
    colours: dict[str, Any] = {}
    for label, xs, ys, style in curves:
        key = label.split(",")[0].split(" (")[0]
        line = ax.plot(xs, ys, style, label=label, color=colours.get(key))[0]
        colours.setdefault(key, line.get_color())
        # Relative to the check frame, or to the first frame of a shorter run (sam2).
        base = None
        if style == "-" and ys:
            base = ys[plan["check_at"] - 1] if len(ys) >= plan["check_at"] else ys[0]
        if base:
            rel.plot(xs, [100.0 * (y - base) / base for y in ys], style, color=line.get_color(),
                     label=label)
    if ref:
        ax.scatter([0, 0], [ref["built_mib"], ref["after_init_state_mib"]], marker="x",
                   color=colours.get("sam2 SAM2VideoPredictor"),
                   label="sam2: model built / after init_state (all frames loaded)")
    ax.set_xlabel("frames processed")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("resident memory", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    rel.axhline(100 * TARGET_GROWTH, color="grey", linestyle=":", label="+5% target")
    rel.set_xlabel("frames processed")
    rel.set_ylabel(f"RSS change vs frame {plan['check_at']} (%)\n(shorter runs: vs their "
                   "first frame)")
    rel.set_title("growth (one long session)", fontsize=10)
    rel.grid(alpha=0.3)
    rel.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"{results['model']} @ {results['image_size']} px, 240x320 frames, 3 labels "
                 f"({m['cores']} cores)", fontsize=10)
    save_figure(fig, path, legend=False)


def _verdict(g: Mapping[str, Any]) -> str:
    if not g:
        return "n/a"
    ok = "PASS" if g["within_target"] else "FAIL"
    return (f"{g['rss_mib_at']:.1f} MiB after frame {g['at_frame']} -> {g['rss_mib_last']:.1f} "
            f"MiB after frame {g['last_frame']} ({100 * g['growth']:+.2f}%, target <= "
            f"{100 * TARGET_GROWTH:.0f}%: {ok})")


def print_report(results: Mapping[str, Any]) -> None:
    """The human-readable summary."""
    m = results["machine"]
    print(f"{m['cpu']} ({m['cores']} cores, load {m.get('loadavg_1_5_15')}), "
          f"{results['model']} @ {results['image_size']} px, 240x320 frames, 3 labels")
    srv, emb, ref = results["server"], results["embedded"], results.get("sam2")
    print(f"server RSS (tritonserver + {len(srv['breakdown_mib']) - 1} stubs): ready "
          f"{srv['rss_mib_ready']:.1f} MiB; {_verdict(srv['long_session'])}")
    s = srv["sessions"]
    if s:
        print(f"server, {results['plan']['sessions']} sessions x "
              f"{results['plan']['session_frames']} frames: {s['first_mib']:.1f} -> "
              f"{s['last_mib']:.1f} MiB ({100 * s['growth']:+.2f}%)")
    print(f"server per process (MiB): {srv['breakdown_mib']}")
    print(f"embedded tracker RSS: {_verdict(emb['long_session'])}")
    if ref:
        print(f"sam2 SAM2VideoPredictor, {ref['frames_in_state']} frames: built "
              f"{ref['built_mib']:.1f} MiB, after init_state {ref['after_init_state_mib']:.1f} "
              f"MiB (+{ref['init_state_growth_mib']:.1f}: it loads every frame), then "
              f"{ref['growth_mib_over_propagation']:+.1f} MiB over propagation from frame "
              f"{ref.get('growth_from_frame', 1)} ({ref['growth_kib_per_frame']:+.0f} KiB/frame "
              "fitted)")
    elif "sam2_error" in results:
        print(f"sam2 predictor: failed: {results['sam2_error']}")
    print(f"s/frame: server {srv['seconds_per_frame_long_session']:.2f}, embedded "
          f"{emb['seconds_per_frame']:.2f}"
          + (f", sam2 {ref['seconds_per_frame']:.2f}" if ref else ""))


def main(argv: list[str] | None = None) -> int:
    """Run (a), (b), (c); write JSON and PNG; exit 1 if (a) or (b) misses the target."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True,
                    help="an `sst export` folder (served in place, never written)")
    ap.add_argument("--quick", action="store_true", help="100 frames, 10x10 sessions, sam2 30")
    ap.add_argument("--seed", type=int, default=0, help="random-weight seed of the export")
    ap.add_argument("--checkpoint", type=Path, help="the export's checkpoint (if not random)")
    ap.add_argument("--frames", type=int, help="frames of the long session")
    ap.add_argument("--sam2-frames", type=int, help="frames of sam2's pseudo-video")
    ap.add_argument("--skip-sam2", action="store_true", help="skip (c)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    base = QUICK if args.quick else DEFAULT
    plan = Plan(frames=args.frames or base.frames, sessions=base.sessions,
                session_frames=base.session_frames,
                sam2_frames=args.sam2_frames or base.sam2_frames, check_at=base.check_at,
                pool=base.pool)
    model_dir = args.model_dir.resolve()
    meta = load_meta(model_dir)
    if args.checkpoint is None and not meta.random_weights and not args.skip_sam2:
        ap.error("the export used a checkpoint: pass the same --checkpoint (or --skip-sam2)")
    before = snapshot_dir(model_dir)
    t_all = time.perf_counter()
    support, mask, pool, arrays = frame_pool(plan.pool)
    results: dict[str, Any] = {
        "machine": machine_description(), "model": meta.model, "image_size": meta.image_size,
        "random_weights": meta.random_weights, "seed": args.seed, "quick": args.quick,
        "plan": asdict(plan), "frame_size": [240, 320], "labels": 3}

    log_progress(f"(a) server: 1 session x {plan.frames} frames, then {plan.sessions} x "
         f"{plan.session_frames} ...")
    results["server"] = server_memory(model_dir, plan, support, mask, pool)
    log_progress(f"(b) embedded tracker: {plan.frames} frames ...")
    results["embedded"] = embedded_memory(model_dir, plan, support, mask, pool)
    if not args.skip_sam2:
        log_progress(f"(c) sam2 SAM2VideoPredictor: {plan.sam2_frames} frames ...")
        try:
            results["sam2"] = sam2_memory(meta.model, meta.image_size, args.seed,
                                          args.checkpoint, plan.sam2_frames, support, mask,
                                          arrays)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            results["sam2_error"] = str(exc)
    changed = dir_changes(before, snapshot_dir(model_dir))
    results["model_dir_unchanged"] = not changed
    results["total_s"] = time.perf_counter() - t_all

    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.results / "memory.png")
    print_report(results)
    print(f"wrote {args.results / 'memory.json'} and memory.png in {results['total_s']:.0f}s")
    if changed:
        print(f"error: {model_dir} was modified: {changed[:5]}", file=sys.stderr)
    ok = (results["server"]["long_session"].get("within_target", False)
          and results["embedded"]["long_session"].get("within_target", False))
    return 0 if ok and not changed else 1


if __name__ == "__main__":
    raise SystemExit(main())
