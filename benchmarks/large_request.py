"""Does the server give memory back after a request far over the byte cap?

Runs ``sst serve`` as users do (a process of its own: the launcher with its gRPC front
door, tritonserver and its model processes) on loopback, runs a short session (the
baseline), sends one stateless request with ``--mb`` MiB of query bytes (over the
per-request cap), runs the session again, and reports the RSS and PSS of that whole
process tree before and after, with how long the refusal took and what it said.

    python -m sst.benchmarks.large_request --model-dir DIR [--mb 300]
    python -m sst.benchmarks.large_request --model-dir DIR --pixels

``--pixels`` sends instead a stateless request of 16 PNGs of 7000x7000 (49 MP each,
a few KB in all: headers that claim the pixels), over the decoded-pixel budget, which
the server refuses from the headers before decoding anything.

``--accepted N`` sends instead a stateless request the server accepts and answers: ``N``
real PNGs of ``--side`` x ``--side`` pixels (smooth specimens, so a few MiB encoded;
12 of 5000 px are 300 MP, under the 400 MP budget), checks the answer is whole (every
mask at its query's size), and reports memory after it against the baseline (target:
within 10%) and the peak while it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from sst.benchmarks.common import log_progress, machine_description, save_results
from sst.benchmarks.serving_load import make_workload
from sst.client import Client
from sst.client.errors import reason_of
from sst.server_config.launch_settings import LOOPBACK, pick_free_ports
from sst.server_config.shm import REGION_PREFIX
from sst.tracker.serving.wire import QUERY_IMAGES

#: Under the current folder (the repository's own when run from its root), never the
#: installed package's.
RESULTS = Path("benchmarks") / "results"


def header_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def smooth_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG of smooth shading (compresses to a few hundred KiB)."""
    y, x = np.ogrid[:side, :side]
    phase = seed * 0.7
    red = (127 + 120 * np.sin(x * 6.0 / side + phase)).astype(np.uint8)
    green = (127 + 120 * np.cos(y * 5.0 / side - phase)).astype(np.uint8)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[..., 0] = red
    rgb[..., 1] = green
    rgb[..., 2] = ((red.astype(np.uint16) + green) // 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class PeakSampler:
    """Samples a process tree's memory every ``every_s`` seconds on a thread; ``peak``
    holds the largest RSS and PSS seen."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = {"rss_mib": 0.0, "pss_mib": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                now = _memory(self.pid)
                self.peak = {k: max(self.peak[k], now[k]) for k in now}
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _memory(pid: int) -> dict[str, float]:
    """MiB of RSS (shared pages counted once per process) and PSS of a process tree."""
    rss = pss = 0.0
    for mib in _by_process(pid).values():
        rss, pss = rss + mib["rss_mib"], pss + mib["pss_mib"]
    return {"rss_mib": rss, "pss_mib": pss}


def _by_process(pid: int) -> dict[str, dict[str, float]]:
    """RSS and PSS (MiB) of each process of the tree, by ``name pid`` (a Python backend
    stub is named by its model), with the part of its RSS that is Python-backend shared
    memory (``shm_rss_mib``: the stub and ``tritonserver`` both map a stub's region)."""
    out = {}
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        info = p.memory_full_info()
        args = p.cmdline()
        model = next((a.rsplit("/", 3)[-3] for a in args if a.endswith("/model.py")), None)
        shm = sum(m.rss for m in p.memory_maps() if REGION_PREFIX in m.path)
        out[f"{model or p.name()} {p.pid}"] = {"rss_mib": info.rss / 2**20,
                                              "pss_mib": info.pss / 2**20,
                                              "shm_rss_mib": shm / 2**20}
    return out


@contextlib.contextmanager
def serve_process(model_dir: Path, timeout_s: float = 300.0) -> Iterator[tuple[int, str]]:
    """``sst serve`` on free loopback ports in a process of its own: ``(its pid, gRPC
    url)`` once ready; stopped with SIGTERM (then killed) on the way out."""
    grpc_port, metrics_port = pick_free_ports(LOOPBACK, 2)
    cmd = [sys.executable, "-m", "sst.client.cli", "serve", "--model-repository",
           str(model_dir), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"sst serve exited with {proc.returncode}: {' '.join(cmd)}")
            probe = grpcclient.InferenceServerClient(f"{LOOPBACK}:{grpc_port}")
            try:
                if probe.is_server_ready(client_timeout=2):
                    break
            except InferenceServerException:
                pass  # not listening yet
            finally:
                probe.close()
            if time.monotonic() > deadline:
                raise SystemExit(f"sst serve was not ready within {timeout_s:.0f}s")
            time.sleep(0.5)
        yield proc.pid, f"{LOOPBACK}:{grpc_port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--mb", type=int, default=300, help="MiB of query bytes to send")
    ap.add_argument("--pixels", action="store_true",
                    help="16 images of 49 MP (from their headers) instead of --mb bytes")
    ap.add_argument("--accepted", type=int, default=0, metavar="N",
                    help="instead: one accepted request of N real PNGs of --side pixels")
    ap.add_argument("--side", type=int, default=5000, help="(--accepted) image side, px")
    ap.add_argument("--small-side", type=int, default=256,
                    help="(--accepted) side of the same request's small warm-up images")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    work = make_workload(3, labels=(1, 2))
    out: dict[str, Any] = {"machine": machine_description(),
                           "request": "16 x 7000x7000 PNG headers" if args.pixels
                           else f"{args.mb} MiB"}
    if args.accepted:
        out["request"] = (f"{args.accepted} x {args.side}x{args.side} PNG "
                          f"({args.accepted * args.side ** 2 / 1e6:.0f} MP), accepted")
        return _accepted(args, work, out)
    with serve_process(args.model_dir) as (pid, url):

        def session() -> None:
            with Client(url) as client:
                with client.open_session([work.support], [work.mask]) as s:
                    for q in work.queries:
                        s.segment(q)

        session()
        time.sleep(1.0)
        out["before"] = _memory(pid)
        blobs = [header_png(7000, 7000)] * 16 if args.pixels else [
            b"\x89PNG" + bytes(args.mb << 20)]
        out["request_bytes"] = sum(map(len, blobs))
        tensor = grpcclient.InferInput(QUERY_IMAGES, [1, len(blobs)], "BYTES")
        tensor.set_data_from_numpy(np.array([blobs], dtype=object))
        raw = grpcclient.InferenceServerClient(url)
        t = time.perf_counter()
        try:
            raw.infer("sst_tracker", [tensor], sequence_id=7, sequence_start=True,
                      sequence_end=True)
            out["answer"] = "accepted"
        except Exception as exc:  # the expected refusal
            out["answer"] = str(exc)[:300]
            reason = reason_of(exc)[0]
            out["reason"] = None if reason is None else reason.value
        out["answer_s"] = time.perf_counter() - t
        raw.close()
        session()
        time.sleep(2.0)
        out["after"] = _memory(pid)
    return _report(out, args.results / ("large_request_pixels.json" if args.pixels
                                        else "large_request.json"))


def _accepted(args: argparse.Namespace, work: Any, out: dict[str, Any]) -> int:
    blobs = [smooth_png(args.side, i) for i in range(args.accepted)]
    out["request_bytes"] = sum(map(len, blobs))
    with serve_process(args.model_dir) as (pid, url):
        with Client(url, timeout=1800.0) as client:

            def session() -> None:
                with client.open_session([work.support], [work.mask]) as s:
                    for q in work.queries:
                        s.segment(q)

            session()
            out["cold"] = _memory(pid)
            # the same request with small images first: the batch shapes the large one
            # uses are then warm (ONNX Runtime's arena keeps what a batch of frames
            # needed, whatever the images' size), so what is measured is what the
            # large images leave
            small = [smooth_png(args.small_side, i) for i in range(args.accepted)]
            client.segment([work.support], [work.mask], small)
            session()
            time.sleep(2.0)
            out["before"] = _memory(pid)
            out["before_by_process"] = _by_process(pid)
            t = time.perf_counter()
            with PeakSampler(pid) as sampler:
                results = client.segment([work.support], [work.mask], blobs)
            out["answer_s"] = time.perf_counter() - t
            out["peak"] = sampler.peak
            whole = (len(results) == len(blobs)
                     and all(r.mask.shape == (args.side, args.side) for r in results))
            out["answer"] = "whole" if whole else "INCOMPLETE"
            del results
            session()
            time.sleep(5.0)  # what the server frees, it frees at once; give it time anyway
            out["after"] = _memory(pid)
            out["after_by_process"] = _by_process(pid)
    code = _report(out, args.results / "large_request_accepted.json")
    return code if out["answer"] == "whole" else 1


def _report(out: dict[str, Any], path: Path) -> int:
    b, a = out["before"], out["after"]
    out["growth"] = {k: (a[k] - b[k]) / b[k] for k in b}
    log_progress(f"{out['request']} request: {out['answer']} ({out['answer_s']:.2f}s)")
    if "peak" in out:
        log_progress(f"server peak RSS {out['peak']['rss_mib']:.0f} MiB, PSS "
                     f"{out['peak']['pss_mib']:.0f} MiB while it ran")
    log_progress(f"server RSS {b['rss_mib']:.0f} -> {a['rss_mib']:.0f} MiB "
                 f"({out['growth']['rss_mib']:+.0%}), PSS {b['pss_mib']:.0f} -> "
                 f"{a['pss_mib']:.0f} MiB ({out['growth']['pss_mib']:+.0%}) after it")
    save_results(path.parent, path.name, out)
    log_progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
