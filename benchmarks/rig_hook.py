"""How long a rig's acquisition loop is held by :meth:`sst.client.rig.RigHook.push`.

Pushes ``--frames`` 16-bit camera frames at ``--rate`` Hz into a model slower than the
camera (a stand-in that takes ``--model-ms`` per frame, or the real engine in process
with ``--model-dir``), under both back-pressure policies, and prints per policy: frames
back, frames dropped, whether the results kept push order, and the push time (max, p99,
median) against the 5 ms a rig can spare per frame.

    .venv/bin/python -m sst.benchmarks.rig_hook --frames 50 --rate 20 --model-ms 80
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sst.client.rig import POLICIES, FrameSession, RigHook
from sst.tracker.backends import OrtBackend
from sst.tracker.result import FrameResult
from sst.tracker.tracker import Tracker

BUDGET_MS = 5.0


def _stand_in(model_ms: float, mask: np.ndarray) -> FrameSession:
    def segment(rgb: np.ndarray) -> FrameResult:
        time.sleep(model_ms / 1000)
        return FrameResult([1], np.zeros(rgb.shape[:2], np.uint8), np.zeros(1), np.zeros(1))

    return FrameSession(segment, mask)


def _engine(model_dir: Path, support: np.ndarray, mask: np.ndarray) -> FrameSession:
    return FrameSession.in_process(Tracker(OrtBackend(model_dir)), support, mask)


def run(policy: str, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(0)
    size = (args.height, args.width)
    frames = [rng.integers(0, 4096, size, dtype=np.uint16) for _ in range(args.frames)]
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 4: size[0] // 2, size[1] // 4: size[1] // 2] = 1
    session = (_engine(args.model_dir, frames[0], mask) if args.model_dir
               else _stand_in(args.model_ms, mask))
    hook = RigHook(session, queue_size=args.queue, policy=policy)
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        delay = start + i / args.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        hook.push(frame, {"axes": {"t": i}})
    hook.close()
    push_ms = np.asarray(hook.push_seconds) * 1000
    done = [r.index for r in hook.results]
    return {"back": len(done), "dropped": len(hook.dropped),
            "in_order": float(done == sorted(done)),
            "max_ms": float(push_ms.max()), "p99_ms": float(np.percentile(push_ms, 99)),
            "median_ms": float(np.median(push_ms))}


def bare_copies(args: argparse.Namespace) -> dict[str, float]:
    """The floor: the same frames on the same schedule, each only copied (what a push
    must do), with no hook and no worker. Its max is this machine's scheduling jitter."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 4096, (args.height, args.width), dtype=np.uint16)
              for _ in range(args.frames)]
    took, kept = [], []
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        delay = start + i / args.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        kept.append(np.array(frame, copy=True))
        took.append(time.perf_counter() - t)
        del kept[:-args.queue]
    ms = np.asarray(took) * 1000
    return {"max_ms": float(ms.max()), "p99_ms": float(np.percentile(ms, 99)),
            "median_ms": float(np.median(ms))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--rate", type=float, default=20.0, help="frames per second pushed")
    p.add_argument("--model-ms", type=float, default=80.0, help="the stand-in model's time")
    p.add_argument("--model-dir", type=Path, help="the real engine (an export) instead")
    p.add_argument("--queue", type=int, default=4)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    args = p.parse_args(argv)
    model = f"engine {args.model_dir}" if args.model_dir else f"stand-in {args.model_ms:g} ms"
    print(f"{args.frames} frames {args.height}x{args.width} uint16 at {args.rate:g} Hz into "
          f"{model}, queue {args.queue}")
    floor = bare_copies(args)
    print(f"{'copy only':12s} (no hook: the machine's floor) max {floor['max_ms']:.2f} ms, "
          f"p99 {floor['p99_ms']:.2f} ms, median {floor['median_ms']:.2f} ms")
    for policy in POLICIES:
        r = run(policy, args)
        print(f"{policy:12s} back {r['back']:3.0f} dropped {r['dropped']:3.0f} in order "
              f"{'yes' if r['in_order'] else 'NO'}; push max {r['max_ms']:.2f} ms "
              f"(x{r['max_ms'] / BUDGET_MS:.2f} of {BUDGET_MS:g} ms), p99 {r['p99_ms']:.2f} "
              f"ms, median {r['median_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
