"""Host overhead of the engine: CPU time and host<->device bytes per frame, no model math.

Runs the engine over :class:`~sst.tracker.null_backend.NullBackend`: every component
answers with zeros of the right shape at once, and pre/post-processing (device work) is
free, so what is measured is the engine's own host work per frame (scheduling, memory
selection, book-keeping; image decoding excluded: frames are given as arrays) and the
bytes that cross between host and device (images in; label masks and scores out).

Beside it, from the same run, the bytes that go through the component calls: what a
deployment that runs each component as its own model (BLS, the earlier design) moves
per frame, and what stays on the device in the engine.

    python -m sst.benchmarks.host_overhead [--image-size 1024] [--labels 2] [--quick]

Writes ``benchmarks/results/host_overhead.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sst.benchmarks.common import machine_description, save_results
from sst.export.meta import ModelMeta
from sst.tracker.engine import Engine, Frame
from sst.tracker.null_backend import NullBackend
from sst.tracker.scheduler import Scheduler

#: Under the current folder (the repository's own when run from its root), never the
#: installed package's.
RESULTS = Path("benchmarks") / "results"


def _nbytes(arrays: Mapping[str, Any]) -> int:
    return sum(int(np.prod(a.shape)) * a.itemsize for a in arrays.values())


class _CallBytes(NullBackend):
    """Counts the bytes of every component call's inputs and outputs."""

    def __init__(self, meta: ModelMeta) -> None:
        super().__init__(meta)
        self.call_bytes = 0

    def run(self, component: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = super().run(component, feeds)
        self.call_bytes += _nbytes(feeds) + _nbytes(out)
        return out


def _support(size: tuple[int, int], labels: int) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((*size, 3), np.uint8)
    mask = np.zeros(size, np.uint8)
    h = size[0] // (labels + 1)
    for k in range(labels):
        mask[h * k + 4:h * (k + 1), 8:size[1] // 2] = k + 1
    return img, mask


def measure(image_size: int, labels: int, sessions: int, frames: int, warm: int,
            frame_size: tuple[int, int] = (480, 640)) -> dict[str, Any]:
    """Host CPU ms and bytes per frame with ``sessions`` sessions stepping together, after
    ``warm`` frames each (a full bank: 7 memories, 16 pointers, from frame 16 on)."""
    backend = _CallBytes(ModelMeta(image_size=image_size))
    engine = Engine(backend)
    ops = backend.ops
    support = _support(frame_size, labels)
    query = np.zeros((*frame_size, 3), np.uint8)
    live = [engine.open_session([support]) for _ in range(sessions)]
    sched = Scheduler(engine)

    def run(n: int) -> None:
        for _ in range(n):
            for s in live:
                sched.submit(Frame(s, query))
            for _ in sched.drain():
                pass

    run(warm)
    bank = live[0].bank
    ops.bytes_in = ops.bytes_out = backend.call_bytes = 0
    cpu, wall = time.process_time(), time.perf_counter()
    run(frames)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = frames * sessions
    return {
        "sessions": sessions, "frames_per_session": frames, "labels": labels,
        "image_size": image_size, "frame_size_hw": list(frame_size),
        "bank": {"memories": bank.num_memories, "pointers": bank.num_pointers},
        "host_cpu_ms_per_frame": 1e3 * cpu / n,
        "host_wall_ms_per_frame": 1e3 * wall / n,
        "bytes_per_frame_host_device": (ops.bytes_in + ops.bytes_out) / n,
        "bytes_per_frame_in": ops.bytes_in / n, "bytes_per_frame_out": ops.bytes_out / n,
        "bytes_per_frame_through_component_calls": backend.call_bytes / n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--frames", type=int, default=40, help="measured frames per session")
    ap.add_argument("--quick", action="store_true", help="a few frames (CI)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    frames, warm = (4, 17) if args.quick else (args.frames, 20)
    runs = [measure(args.image_size, args.labels, s, frames, warm) for s in args.sessions]
    for r in runs:
        print(f"{r['sessions']:>3} sessions, {r['image_size']} px, {r['labels']} labels, "
              f"bank {r['bank']['memories']} memories/{r['bank']['pointers']} pointers: "
              f"host CPU {r['host_cpu_ms_per_frame']:.2f} ms/frame, host<->device "
              f"{r['bytes_per_frame_host_device'] / 1e6:.2f} MB/frame (through component "
              f"calls, kept on the device: "
              f"{r['bytes_per_frame_through_component_calls'] / 1e6:.1f} MB/frame)")
    out = {"machine": machine_description(), "runs": runs,
           "command": "python -m sst.benchmarks.host_overhead" + (" --quick" if args.quick
                                                                  else "")}
    path = save_results(args.results, "host_overhead_quick.json" if args.quick else
                        "host_overhead.json", out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
