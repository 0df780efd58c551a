"""Serving under load: perf_analyzer sweeps, an asyncio session load test, the embedded tracker.

    python -m sst.benchmarks.serving_load --model-dir DIR [--quick]

``DIR`` is an ``sst export`` folder (it holds the Triton configs); it is served in place
and never written. The harness starts ``tritonserver`` on free loopback ports, then:

(a) runs Triton's ``perf_analyzer`` (install it with ``benchmarks/setup_perf_analyzer.sh``)
    against ``sst_segment`` (stateless requests: support + one query each) and against
    ``sst_tracker`` in sequence mode (START carries the support, then one query per
    request, END on the last), one run per concurrency level (1,2,4,8; quick: 1,2),
    and reads p50/p95/p99 latency and throughput from its CSV;
(b) runs its own asyncio load test with :class:`sst.client.AsyncClient`: 1 and then N
    concurrent sessions, each sending the same M queries; every answer is checked (labels
    equal the support's, mask size equals the query's, mask equals the answer a single
    warm session got for that query), and every request is timed;
(c) times the embedded tracker (``OrtBackend`` on ``DIR``, in this process) on the same
    queries, single stream, so that the report gives the ratios "server latency at
    concurrency 1 / embedded latency" and "server throughput at concurrency 4 / embedded
    single-stream throughput".

Without perf_analyzer it says how to get it and still runs (b) and (c). Writes
``serving_load_<size>[_quick].json`` and ``.png`` (latency against throughput, one point
per concurrency) to ``--results``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sst.benchmarks.common import (
    dir_changes,
    encode_jpeg,
    encode_png,
    latency_stats,
    log_progress,
    machine_description,
    save_figure,
    save_results,
    snapshot_dir,
    synthetic_frame,
)
from sst.benchmarks.perf_analyzer import (
    find_perf_analyzer,
    run_perf_sweep,
    segment_input_data,
    sequence_input_data,
)
from sst.benchmarks.server import serve
from sst.client import AsyncClient, Client
from sst.export.meta import load_meta
from sst.tracker.backends import OrtBackend
from sst.tracker.engine_choice import open_backend
from sst.tracker.io import load_image_bytes, load_mask_bytes
from sst.tracker.tracker import Tracker

__all__ = [
    "Settings",
    "Workload",
    "check_answer",
    "main",
    "make_workload",
]

#: A mask "nearly" equals the reference when at most this fraction of its pixels differ
#: (label ties within float noise when the server batches components differently).
NEAR_FRACTION = 1e-3


@dataclass(frozen=True)
class Settings:
    """How much load to generate."""

    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    sessions: int = 4
    queries: int = 4
    embedded_passes: int = 2
    window_requests: int = 4
    perf_timeout_s: float = 240.0


DEFAULT = Settings()
QUICK = Settings(concurrency=(1, 2), sessions=4, queries=2, embedded_passes=2,
                 window_requests=3, perf_timeout_s=150.0)


# --------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------


@dataclass
class Workload:
    """One support (JPEG + PNG label mask) and M JPEG queries of varied sizes."""

    support: bytes
    mask: bytes
    labels: list[int]
    queries: list[bytes]
    sizes: list[tuple[int, int]]


def make_workload(num_queries: int, labels: Sequence[int] = (1, 2, 3)) -> Workload:
    """Synthetic specimens: the support at 240x320, queries drifting and resized a bit."""
    img, mask = synthetic_frame(0, labels=labels)
    queries, sizes = [], []
    for i in range(num_queries):
        size = (240 + 16 * (i % 3), 320 - 16 * (i % 2))
        q, _ = synthetic_frame(100 + i, size=size, shift=0.03 * ((i % 5) - 2), labels=labels)
        queries.append(encode_jpeg(q))
        sizes.append(size)
    return Workload(encode_jpeg(img), encode_png(mask), sorted(int(v) for v in labels),
                    queries, sizes)


# --------------------------------------------------------------------------------------
# Answers: reference, checks
# --------------------------------------------------------------------------------------


def check_answer(labels: Sequence[int], mask: np.ndarray, want_labels: Sequence[int],
                 size: tuple[int, int], reference: np.ndarray | None) -> tuple[str, int]:
    """Judge one answer: ``("exact"|"near"|"wrong labels"|"wrong size"|"wrong mask",
    differing pixels)``. ``near`` allows :data:`NEAR_FRACTION` of the pixels to differ."""
    if list(labels) != list(want_labels):
        return "wrong labels", -1
    if tuple(mask.shape) != tuple(size):
        return "wrong size", -1
    if reference is None:
        return "exact", 0
    differ = int(np.count_nonzero(mask != reference))
    if differ == 0:
        return "exact", 0
    return ("near" if differ <= NEAR_FRACTION * mask.size else "wrong mask"), differ


def reference_answers(url: str, work: Workload) -> tuple[list[np.ndarray], list[float]]:
    """The answer of a single warm session for every query (one request per query)."""
    with Client(url, timeout=600.0) as client:
        with client.open_session([work.support], [work.mask]) as warm:
            warm.segment(work.queries[0])
        masks, seconds = [], []
        with client.open_session([work.support], [work.mask]) as session:
            for q in work.queries:
                t = time.perf_counter()
                masks.append(session.segment(q).mask.copy())
                seconds.append(time.perf_counter() - t)
    return masks, seconds


@dataclass
class _Tally:
    """Outcome counts of the answer checks."""

    counts: dict[str, int] = field(default_factory=dict)
    worst_pixels: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, verdict: str, pixels: int, where: str) -> None:
        self.counts[verdict] = self.counts.get(verdict, 0) + 1
        self.worst_pixels = max(self.worst_pixels, pixels)
        if verdict not in ("exact", "near") and len(self.failures) < 10:
            self.failures.append(f"{where}: {verdict}")


async def _session_load(url: str, work: Workload, sessions: int,
                        reference: Sequence[np.ndarray], tally: _Tally) -> dict[str, Any]:
    """``sessions`` concurrent sessions, each START then the M queries, then END."""
    client = AsyncClient(url, timeout=900.0, retry_for=60.0)
    try:
        async def opened() -> tuple[Any, float]:
            t = time.perf_counter()
            s = await client.open_session([work.support], [work.mask])
            return s, time.perf_counter() - t

        started = await asyncio.gather(*(opened() for _ in range(sessions)))

        async def run_queries(k: int, session: Any) -> list[float]:
            seconds = []
            for j, q in enumerate(work.queries):
                t = time.perf_counter()
                res = await session.segment(q)
                seconds.append(time.perf_counter() - t)
                verdict, px = check_answer(res.labels, res.mask, work.labels, work.sizes[j],
                                           reference[j])
                tally.add(verdict, px, f"{sessions} sessions, session {k} query {j}")
            return seconds

        t0 = time.perf_counter()
        per_session = await asyncio.gather(*(run_queries(k, s) for k, (s, _) in enumerate(started)))
        wall = time.perf_counter() - t0
        await asyncio.gather(*(s.close() for s, _ in started))
    finally:
        await client.close()
    seconds = [v for lat in per_session for v in lat]
    return {"concurrency": sessions, **latency_stats(seconds),
            "throughput_per_s": len(seconds) / wall, "query_phase_wall_s": wall,
            "start_latency": latency_stats([s for _, s in started]),
            "reprimes": sum(s.reprimes for s, _ in started)}


def asyncio_load(url: str, work: Workload, settings: Settings,
                 reference: Sequence[np.ndarray]) -> dict[str, Any]:
    """(b): 1 session, then ``settings.sessions`` concurrent sessions."""
    tally = _Tally()
    levels = []
    for n in sorted({1, settings.sessions}):
        level = asyncio.run(_session_load(url, work, n, reference, tally))
        levels.append(level)
        log_progress(f"  asyncio {n} session(s): p50 {level['p50_s']:.2f}s, "
             f"{level['throughput_per_s']:.2f} queries/s")
    checked = sum(tally.counts.values())
    return {"levels": levels, "answers_checked": checked, "verdicts": tally.counts,
            "worst_differing_pixels": tally.worst_pixels, "failures": tally.failures,
            "all_correct": checked > 0 and not tally.failures}


# --------------------------------------------------------------------------------------
# Embedded tracker
# --------------------------------------------------------------------------------------


def embedded(model_dir: Path, work: Workload, passes: int, engine: str = "ort"
             ) -> dict[str, Any]:
    """(c): single stream in this process; each request is decode + track of one query
    (on ``engine``: a server's answers are checked against the same engine's)."""
    tracker = Tracker(OrtBackend(model_dir) if engine == "ort" else
                      open_backend(model_dir, engine))
    support = load_image_bytes(work.support)
    supports = [(support, load_mask_bytes(work.mask, image_size=(support.shape[1],
                                                                  support.shape[0])))]
    warm = tracker.start_session(supports)
    list(tracker.track(warm, [load_image_bytes(work.queries[0])]))
    seconds: list[float] = []
    masks: list[np.ndarray] = []
    for p in range(passes):
        session = tracker.start_session(supports)
        for q in work.queries:
            t = time.perf_counter()
            (res,) = list(tracker.track(session, [load_image_bytes(q)]))
            seconds.append(time.perf_counter() - t)
            if p == 0:
                masks.append(res.mask.copy())
    return {"latency": latency_stats(seconds), "throughput_per_s": len(seconds) / sum(seconds),
            "masks": masks}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _level(levels: Sequence[Mapping[str, Any]], c: int) -> Mapping[str, Any] | None:
    return next((lv for lv in levels if int(lv["concurrency"]) == c), None)


def compute_ratios(results: Mapping[str, Any]) -> dict[str, Any]:
    """Server against embedded: latency at concurrency 1, throughput at concurrency 4."""
    emb = results["embedded"]
    emb_p50, emb_tput = emb["latency"]["p50_s"], emb["throughput_per_s"]
    out: dict[str, Any] = {}
    sources: dict[str, Sequence[Mapping[str, Any]]] = {
        "asyncio_sessions": results["asyncio"]["levels"]}
    for sweep in results.get("perf_analyzer", {}).get("sweeps", []):
        sources[f"perf_analyzer_{sweep['model']}"] = sweep["levels"]
    for name, levels in sources.items():
        c1, c4 = _level(levels, 1), _level(levels, 4)
        out[name] = {
            "latency_c1_over_embedded": _ratio(c1["p50_s"] if c1 else None, emb_p50),
            "throughput_c4_over_embedded": _ratio(c4["throughput_per_s"] if c4 else None,
                                                  emb_tput)}
    return out


def plot(results: Mapping[str, Any], path: Path) -> None:
    """Latency (p50 dot, p95 tick, bar up to p99) against throughput, one point per
    concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    series: list[tuple[str, Sequence[Mapping[str, Any]]]] = [
        ("asyncio sessions (sst_tracker, queries)", results["asyncio"]["levels"])]
    for sweep in results.get("perf_analyzer", {}).get("sweeps", []):
        series.append((f"perf_analyzer {sweep['model']}", sweep["levels"]))
    for label, levels in series:
        pts = [lv for lv in levels if "p50_s" in lv]
        if not pts:
            continue
        x = [lv["throughput_per_s"] for lv in pts]
        y = [lv["p50_s"] for lv in pts]
        line = ax.plot(x, y, "o-", label=label)[0]
        for lv, xi, yi in zip(pts, x, y):
            ax.vlines(xi, yi, lv.get("p99_s", yi), colors=line.get_color(), alpha=0.5)
            ax.plot([xi], [lv.get("p95_s", yi)], "_", color=line.get_color(), markersize=10)
            ax.annotate(f"c={int(lv['concurrency'])}", (xi, yi), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    emb = results["embedded"]
    ax.plot([emb["throughput_per_s"]], [emb["latency"]["p50_s"]], "k*", markersize=14,
            label="embedded tracker (single stream)")
    m = results["machine"]
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (s): dot p50, tick p95, bar top p99")
    ax.set_title(f"SST Serve on {m['cores']} CPU cores: {results['model']} @ "
                 f"{results['image_size']} px", fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _fmt(v: float | None, spec: str = ".2f", missing: str = "-") -> str:
    """``v`` formatted, ``missing`` if it is ``None``; ratios (the default spec) get an x."""
    if v is None:
        return missing
    return format(v, spec) + ("x" if spec == ".2f" else "")


def print_report(results: Mapping[str, Any]) -> None:
    """The human-readable table (the JSON holds everything)."""
    m = results["machine"]
    print(f"{m['cpu']} ({m['cores']} cores, load {m.get('loadavg_1_5_15')}), "
          f"{results['model']} @ {results['image_size']} px, {results['settings']['queries']} "
          f"queries/session, frames ~240x320")
    print(f"{'run':34s} {'conc':>4s} {'p50 s':>7s} {'p95 s':>7s} {'p99 s':>7s} {'req/s':>7s}")
    emb = results["embedded"]
    print(f"{'embedded tracker (single stream)':34s} {1:4d} {emb['latency']['p50_s']:7.3f} "
          f"{emb['latency']['p95_s']:7.3f} {emb['latency']['p99_s']:7.3f} "
          f"{emb['throughput_per_s']:7.2f}")
    rows: list[tuple[str, Sequence[Mapping[str, Any]]]] = [
        ("asyncio sessions (sst_tracker)", results["asyncio"]["levels"])]
    for sweep in results.get("perf_analyzer", {}).get("sweeps", []):
        rows.append((f"perf_analyzer {sweep['model']}", sweep["levels"]))
    for name, levels in rows:
        for lv in levels:
            print(f"{name:34s} {int(lv['concurrency']):4d} {_fmt(lv.get('p50_s'), '7.3f')} "
                  f"{_fmt(lv.get('p95_s'), '7.3f')} {_fmt(lv.get('p99_s'), '7.3f')} "
                  f"{lv['throughput_per_s']:7.2f}")
    a = results["asyncio"]
    print(f"answers checked: {a['answers_checked']} {a['verdicts']}, all correct: "
          f"{a['all_correct']}; embedded vs server reference: "
          f"{results['embedded']['differing_pixels_vs_server']} differing pixels")
    for name, r in results["ratios"].items():
        lat = _fmt(r["latency_c1_over_embedded"], missing="n/a (no c=1 level)")
        tput = _fmt(r["throughput_c4_over_embedded"], missing="n/a (no c=4 level)")
        print(f"{name}: server latency c=1 / embedded = {lat}, "
              f"server throughput c=4 / embedded = {tput}")
    pa = results.get("perf_analyzer", {})
    if not pa.get("available"):
        print(pa.get("message", ""))
    for sweep in pa.get("sweeps", []):
        for err in sweep["errors"]:
            print(f"perf_analyzer {sweep['model']}: {err}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 1 if any answer was wrong or DIR was modified."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True,
                    help="an `sst export` folder (served in place, never written)")
    ap.add_argument("--quick", action="store_true", help="concurrency 1,2 and fewer queries")
    ap.add_argument("--concurrency", help="perf_analyzer levels, e.g. 1,2,4,8")
    ap.add_argument("--sessions", type=int, help="concurrent sessions of the asyncio test")
    ap.add_argument("--queries", type=int, help="queries per session (M)")
    ap.add_argument("--perf-analyzer", help="perf_analyzer binary or wrapper")
    ap.add_argument("--no-perf-analyzer", action="store_true", help="skip (a)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    base = QUICK if args.quick else DEFAULT
    settings = Settings(
        concurrency=(tuple(int(c) for c in args.concurrency.split(","))
                     if args.concurrency else base.concurrency),
        sessions=args.sessions or base.sessions, queries=args.queries or base.queries,
        embedded_passes=base.embedded_passes, window_requests=base.window_requests,
        perf_timeout_s=base.perf_timeout_s)
    model_dir = args.model_dir.resolve()
    meta = load_meta(model_dir)
    before = snapshot_dir(model_dir)
    t_all = time.perf_counter()
    work = make_workload(settings.queries)
    results: dict[str, Any] = {
        "machine": machine_description(), "model": meta.model, "image_size": meta.image_size,
        "random_weights": meta.random_weights, "model_dir": str(model_dir), "quick": args.quick,
        "settings": asdict(settings), "query_sizes": work.sizes, "labels": work.labels}

    log_progress("(c) embedded tracker ...")
    emb = embedded(model_dir, work, settings.embedded_passes)
    emb_masks = emb.pop("masks")
    results["embedded"] = emb

    binary, message = (None, "perf_analyzer skipped (--no-perf-analyzer)")
    if not args.no_perf_analyzer:
        binary, message = find_perf_analyzer(args.perf_analyzer)
    log_progress(message)
    log_progress("starting tritonserver ...")
    t = time.perf_counter()
    with serve(model_dir) as server:
        results["server_start_s"] = time.perf_counter() - t
        url = server.grpc_url
        reference, ref_s = reference_answers(url, work)
        results["reference_latency_s"] = ref_s
        results["embedded"]["differing_pixels_vs_server"] = int(sum(
            np.count_nonzero(a != b) for a, b in zip(emb_masks, reference)))
        pa: dict[str, Any] = {"available": binary is not None, "message": message,
                              "sweeps": []}
        if binary is not None:
            with tempfile.TemporaryDirectory(prefix="sst-perf-") as tmp:
                work_dir = Path(tmp)
                seg_json = work_dir / "sst_segment_input.json"
                seq_json = work_dir / "sst_tracker_input.json"
                seg_json.write_text(json.dumps(segment_input_data(work)))
                seq_json.write_text(json.dumps(sequence_input_data(work)))
                log_progress("(a) perf_analyzer sst_segment ...")
                admin = server.settings.security.admin_headers("grpc")
                pa["sweeps"].append(run_perf_sweep(binary, url, "sst_segment", seg_json,
                                                   settings, work_dir, headers=admin))
                log_progress("(a) perf_analyzer sst_tracker (sequences) ...")
                pa["sweeps"].append(run_perf_sweep(
                    binary, url, "sst_tracker", seq_json, settings, work_dir,
                    sequence_length=1 + settings.queries, headers=admin))
        pa["note"] = ("sst_tracker sequences are 1 START request (support) + M query "
                      "requests; perf_analyzer counts all of them")
        results["perf_analyzer"] = pa
        log_progress("(b) asyncio load test ...")
        results["asyncio"] = asyncio_load(url, work, settings, reference)
    results["ratios"] = compute_ratios(results)
    changed = dir_changes(before, snapshot_dir(model_dir))
    results["model_dir_unchanged"] = not changed
    results["total_s"] = time.perf_counter() - t_all

    stem = f"serving_load_{meta.image_size}{'_quick' if args.quick else ''}"
    save_results(args.results, f"{stem}.json", results)
    plot(results, args.results / f"{stem}.png")
    print_report(results)
    print(f"wrote {args.results / stem}.json and .png in {results['total_s']:.0f}s")
    if changed:
        print(f"error: {model_dir} was modified: {changed[:5]}", file=sys.stderr)
    ok = results["asyncio"]["all_correct"] and not changed
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
