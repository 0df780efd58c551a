"""Several replicas behind a session-affine proxy: affinity, spread, and no frame lost
when a replica dies.

N ``sst serve`` replicas on loopback ports and a stock proxy in front (nginx with
``hash $http_sst_session consistent``, or HAProxy; installed by
``deploy/install_proxy.sh`` when missing). S asyncio sessions run through the proxy at
once (START, F frames, END), each on queries of its own. With ``--kill-one`` the replica
holding the most open sessions is killed (``kill -9``: launcher and tritonserver) once
half of all frames are answered; with ``--drain-one`` it is sent SIGTERM instead (it
drains: new sessions refused, open ones ended after its drain period and moved).

Reported (JSON, ``benchmarks/results/scale_out_<N>x<S>[_kill|_drain].json`` under the
current directory, or ``--out``; never inside the installed package):

* sessions per replica from the replicas' own metrics (their front doors' START counts),
  the spread (most on one replica / mean), and per session the replicas that answered its
  calls (the proxy's access log);
* frames sent, answered, lost (sent but never answered), answered twice, and frames whose
  session was not held by the replica they reached (``sst_door_frames_total{session=
  "unknown"}`` over all replicas: 0 without a kill; after one, the one frame per moved
  session that finds it gone);
* re-primed sessions (the client primed them again on a surviving replica);
* per-frame p50/p99 before the kill and after it, and the recovery time of each moved
  session (from the kill to its next answer);
* every frame's mask against the embedded tracker's (ONNX Runtime in this process) on the
  same supports and queries; for a moved session, from the re-prime on, against an
  embedded session started on its remaining queries (the new replica primes it afresh).

    python -m sst.benchmarks.scale_out --model-dir DIR --replicas 3 --sessions 12 \
        [--kill-one | --drain-one] [--proxy nginx|haproxy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sst.benchmarks.common import (
    encode_jpeg,
    encode_png,
    latency_stats,
    log_progress,
    machine_description,
    synthetic_frame,
)
from sst.benchmarks.replicas import (
    Proxy,
    Replica,
    door_metrics,
    remove_left_regions,
    start_replicas,
)
from sst.benchmarks.serving_load import check_answer
from sst.client import AsyncClient
from sst.export.meta import load_meta
from sst.server_config import shm
from sst.tracker.backends import OrtBackend
from sst.tracker.io import load_image_bytes, load_mask_bytes
from sst.tracker.tracker import Tracker

#: Relative to the current directory (the repository's own folder when run from its root):
#: an installed package's folder is no place for results.
RESULTS = Path("benchmarks") / "results"
LABELS = (1, 2)
FAULTS = ("none", "kill", "drain")


@dataclass
class Work:
    """One support and, per session, its own F queries (a window of a shared pool)."""

    support: bytes
    mask: bytes
    pool: list[bytes]
    sizes: list[tuple[int, int]]
    frames: int

    def queries(self, session: int) -> list[bytes]:
        return self.pool[session:session + self.frames]

    def query_sizes(self, session: int) -> list[tuple[int, int]]:
        return self.sizes[session:session + self.frames]


def make_work(sessions: int, frames: int) -> Work:
    img, mask = synthetic_frame(0, labels=LABELS)
    pool, sizes = [], []
    for i in range(sessions + frames):
        size = (240 + 16 * (i % 3), 320 - 16 * (i % 2))
        q, _ = synthetic_frame(100 + i, size=size, shift=0.03 * ((i % 5) - 2), labels=LABELS)
        pool.append(encode_jpeg(q))
        sizes.append(size)
    return Work(encode_jpeg(img), encode_png(mask), pool, sizes, frames)


@dataclass
class Frame:
    session: int
    index: int
    started: float
    ended: float | None = None
    answers: int = 0
    error: str = ""
    mask: np.ndarray | None = None
    labels: list[int] = field(default_factory=list)
    reprimed: bool = False  # the session was primed again while this frame was sent


@dataclass
class Run:
    frames: list[Frame] = field(default_factory=list)
    session_ids: dict[int, int] = field(default_factory=dict)
    reprimes: dict[int, int] = field(default_factory=dict)
    moves: dict[int, int] = field(default_factory=dict)
    kill_at: float | None = None  # the kill -9 or the SIGTERM
    killed: int | None = None  # the replica killed or drained
    metrics_before_kill: list[dict[str, float]] = field(default_factory=list)
    #: the drained replica's last counters before it exited, its status and seconds taken
    drained_metrics: dict[str, float] = field(default_factory=dict)
    drain_exit: int | None = None
    drain_seconds: float | None = None


async def _sessions(url: str, work: Work, sessions: int, run: Run,
                    on_half: Any | None) -> None:
    client = AsyncClient(url, timeout=600.0, retry_for=120.0)
    total = sessions * work.frames
    answered = 0
    half = asyncio.Event()

    async def one(k: int) -> None:
        nonlocal answered
        async with await client.open_session([work.support], [work.mask]) as session:
            for j, query in enumerate(work.queries(k)):
                frame = Frame(k, j, time.perf_counter())
                run.frames.append(frame)
                before = session.reprimes
                try:
                    res = await session.segment(query)
                    frame.answers += 1
                    frame.mask, frame.labels = res.mask.copy(), list(res.labels)
                except Exception as exc:  # counted as lost, reported
                    frame.error = f"{type(exc).__name__}: {exc}"
                frame.ended = time.perf_counter()
                frame.reprimed = session.reprimes > before
                answered += 1
                if answered >= total // 2:
                    half.set()
            run.session_ids[k] = session.session_id
            run.reprimes[k] = session.reprimes
            run.moves[k] = session.moves

    async def killer() -> None:
        await half.wait()
        if on_half is not None:
            await asyncio.get_running_loop().run_in_executor(None, on_half)

    try:
        await asyncio.gather(killer(), *(one(k) for k in range(sessions)))
    finally:
        await client.close()


def _embedded_masks(model_dir: Path, work: Work, session: int, start: int
                    ) -> list[np.ndarray]:
    """The embedded tracker's masks for session ``session``'s queries from ``start`` on,
    in a session started on them (a re-primed session starts afresh)."""
    tracker = _tracker(model_dir)
    support = load_image_bytes(work.support)
    supports = [(support, load_mask_bytes(work.mask, image_size=(support.shape[1],
                                                                  support.shape[0])))]
    state = tracker.start_session(supports)
    out = []
    for q in work.queries(session)[start:]:
        (res,) = list(tracker.track(state, [load_image_bytes(q)]))
        out.append(res.mask.copy())
    return out


_TRACKERS: dict[Path, Tracker] = {}


def _tracker(model_dir: Path) -> Tracker:
    if model_dir not in _TRACKERS:
        _TRACKERS[model_dir] = Tracker(OrtBackend(model_dir))
    return _TRACKERS[model_dir]


def _check_masks(model_dir: Path, work: Work, run: Run) -> dict[str, Any]:
    verdicts: dict[str, int] = {}
    worst = 0
    per_session = {}
    for k in sorted({f.session for f in run.frames}):
        frames = sorted((f for f in run.frames if f.session == k), key=lambda f: f.index)
        # after a re-prime the session restarts from its supports on the new replica
        start = max((f.index for f in frames if f.reprimed), default=0)
        ref_from_start = _embedded_masks(model_dir, work, k, 0)
        ref_after = _embedded_masks(model_dir, work, k, start) if start else ref_from_start
        sizes = work.query_sizes(k)
        ok = True
        for f in frames:
            if f.mask is None:
                ok = False
                continue
            ref = ref_after[f.index - start] if start and f.index >= start else (
                ref_from_start[f.index])
            verdict, px = check_answer(f.labels, f.mask, list(LABELS), sizes[f.index], ref)
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
            worst = max(worst, px)
            ok = ok and verdict in ("exact", "near")
        per_session[k] = {"masks_equal": ok, "reprimed_at_frame": start or None}
    return {"verdicts": verdicts, "worst_differing_pixels": worst,
            "all_equal": all(s["masks_equal"] for s in per_session.values()),
            "per_session": per_session}


def _sum(metrics: Sequence[dict[str, float]], key: str) -> float:
    return sum(m.get(key, 0.0) for m in metrics)


def _latencies(frames: Sequence[Frame], kill_at: float | None) -> dict[str, Any]:
    done = [f for f in frames if f.ended is not None and not f.error]
    if kill_at is None:
        return {"all": latency_stats([f.ended - f.started for f in done])}  # type: ignore[operator]
    before = [f.ended - f.started for f in done if f.ended <= kill_at]  # type: ignore[operator]
    after = [f.ended - f.started for f in done if f.started >= kill_at]  # type: ignore[operator]
    return {"before_kill": latency_stats(before) if before else None,
            "after_kill": latency_stats(after) if after else None}


def _watch_drain(replica: Replica, run: Run) -> None:
    """Scrape a draining replica until it exits (bounded by its exit timeout)."""
    deadline = time.monotonic() + 120
    while replica.proc.poll() is None and time.monotonic() < deadline:
        try:
            run.drained_metrics = door_metrics(replica)
        except (OSError, RuntimeError):
            pass  # it stopped listening: exiting
        time.sleep(0.2)
    try:
        run.drain_exit = replica.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        run.drain_exit = None
    if run.kill_at is not None:
        run.drain_seconds = time.perf_counter() - run.kill_at


def run_scale_out(model_dir: Path, replicas: int, sessions: int, frames: int,
                  fault: str = "none", proxy_kind: str = "nginx") -> dict[str, Any]:
    """Start the replicas and the proxy, run the sessions through it, stop everything.
    ``fault``: ``kill`` (kill -9) or ``drain`` (SIGTERM) the replica holding the most
    open sessions half-way through, or ``none``."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {fault!r}")
    work = make_work(sessions, frames)
    regions_before = shm.regions()
    run = Run()
    started_at = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sst-scale-out-") as tmp:
        log_progress(f"starting {replicas} replicas ...")
        reps = start_replicas(replicas, model_dir, Path(tmp))
        proxy: Proxy | None = None
        exit_codes: list[int | None] = []
        try:
            rss = {r.index: round(r.rss_mib(), 1) for r in reps}
            log_progress(f"replicas ready (RSS MiB {rss}); starting {proxy_kind} ...")
            proxy = Proxy(proxy_kind, reps)
            lock = threading.Lock()

            watcher: threading.Thread | None = None

            def strike() -> None:
                nonlocal watcher
                with lock:
                    run.metrics_before_kill = [door_metrics(r) for r in reps]
                    victim = max(range(len(reps)), key=lambda i: run.metrics_before_kill[i]
                                 .get("sst_door_sessions_open", 0.0))
                    run.kill_at = time.perf_counter()
                    run.killed = victim
                    if fault == "kill":
                        reps[victim].kill()
                    else:
                        reps[victim].proc.send_signal(signal.SIGTERM)
                        watcher = threading.Thread(target=_watch_drain,
                                                   args=(reps[victim], run), daemon=True)
                        watcher.start()
                log_progress(f"{'killed (kill -9)' if fault == 'kill' else 'drained (SIGTERM)'}"
                             f" replica {victim}")

            log_progress(f"{sessions} sessions x {frames} frames through {proxy.url} ...")
            asyncio.run(_sessions(proxy.url, work, sessions, run,
                                  strike if fault != "none" else None))
            wall = time.perf_counter() - started_at
            if watcher is not None:
                watcher.join(timeout=150)
            metrics = [door_metrics(r) for i, r in enumerate(reps) if i != run.killed]
            access = proxy.access_log()
        finally:
            if proxy is not None:
                proxy.stop()
            for r in reps:
                exit_codes.append(None if r.killed else r.stop())
            if proxy is not None:
                proxy.cleanup()
            removed = remove_left_regions(regions_before)
    # regions made meanwhile that no live process maps (other servers on this machine,
    # started by others meanwhile, keep theirs mapped)
    live = shm.mapped_regions()
    left = sorted(r for r in shm.regions() - regions_before if r not in live)
    pids = [p for r in reps for p in (r.proc.pid, r.server_pid) if p is not None]
    if proxy is not None:
        pids.append(proxy.proc.pid)
    # every live replica's counters; the killed one's as scraped just before the kill, the
    # drained one's as last scraped before it exited
    all_metrics = list(metrics)
    if run.killed is not None:
        all_metrics.insert(run.killed, run.drained_metrics if fault == "drain"
                           else run.metrics_before_kill[run.killed])
    log_progress("checking masks against the embedded tracker ...")
    masks = _check_masks(model_dir, work, run)
    report = _report(replicas, sessions, frames, fault, proxy_kind, run, all_metrics,
                     access, masks, exit_codes, rss, wall)
    if fault == "drain" and run.killed is not None:
        at = run.metrics_before_kill[run.killed]
        last = run.drained_metrics
        report["drain"] = {
            "replica": run.killed, "exit_code": run.drain_exit,
            "seconds_to_exit": run.drain_seconds,
            "starts_taken_while_draining": last.get("sst_door_starts_total", 0.0)
            - at.get("sst_door_starts_total", 0.0),
            "starts_refused": last.get("sst_door_refused_total{reason=draining}", 0.0),
            "sessions_ended_by_the_server": last.get(
                "sst_door_sessions_ended_total{by=drain}", 0.0),
            "frames_answered_while_draining": last.get("sst_door_answered_total{kind=frame}",
                                                       0.0)
            - at.get("sst_door_answered_total{kind=frame}", 0.0),
        }
    report["shared_memory"] = {"removed_after_the_run": removed, "left": left}
    report["pids_started"] = pids
    return report


def _report(replicas: int, sessions: int, frames: int, fault: str, proxy_kind: str,
            run: Run, metrics: list[dict[str, float]], access: list[dict[str, str]],
            masks: dict[str, Any], exit_codes: list[int | None], rss: dict[int, float],
            wall: float) -> dict[str, Any]:
    starts = [m.get("sst_door_starts_total", 0.0) for m in metrics]
    before = run.metrics_before_kill or metrics
    starts_before = [m.get("sst_door_starts_total", 0.0) for m in before]
    mean = statistics.mean(starts_before) if starts_before else 0.0
    sent = len(run.frames)
    answered = sum(1 for f in run.frames if f.answers)
    moved = [k for k, n in run.reprimes.items() if n]
    # which replicas answered each session's calls (the proxy's access log, nginx)
    by_session: dict[str, set[str]] = {}
    ids = {str(v): k for k, v in run.session_ids.items()}
    for row in access:
        sid = row.get("session", "-")
        if sid in ids and row.get("status") == "200" and row.get("grpc") == "0":
            by_session.setdefault(sid, set()).add(row.get("replica", "?"))
    recovery = []
    if run.kill_at is not None:
        for k in moved:
            after = [f.ended for f in run.frames if f.session == k and f.ended is not None
                     and f.ended > run.kill_at and not f.error]
            if after:
                recovery.append(min(after) - run.kill_at)
    return {
        "benchmark": "scale_out", "machine": machine_description(),
        "command": " ".join(["python -m sst.benchmarks.scale_out", *sys.argv[1:]]),
        "settings": {"replicas": replicas, "sessions": sessions, "frames": frames,
                     "fault": fault, "proxy": proxy_kind, "labels": list(LABELS)},
        "replica_rss_mib": rss,
        "sessions_per_replica": starts_before,
        "starts_per_replica_final": starts,
        "spread_max_over_mean": (max(starts_before) / mean) if mean else None,
        "frames": {
            "sent": sent, "answered": answered, "lost": sent - answered,
            "answered_twice": sum(1 for f in run.frames if f.answers > 1),
            "processed_by_replicas": _sum(metrics, "sst_door_answered_total{kind=frame}"),
            "cross_replica": _sum(metrics, "sst_door_frames_total{session=unknown}"),
            "cross_replica_before_kill": _sum(before, "sst_door_frames_total{session=unknown}"),
            "errors": [f.error for f in run.frames if f.error][:5],
        },
        "affinity": {
            "sessions_on_one_replica": sum(1 for s in by_session.values() if len(s) == 1),
            "sessions_seen_in_proxy_log": len(by_session),
            "sessions_on_two_or_more": sorted(ids[s] for s, r in by_session.items()
                                              if len(r) > 1),
        },
        "killed_replica": run.killed if fault == "kill" else None,
        "reprimed_sessions": len(moved),
        "moved_by_drain": sum(run.moves.values()),
        "latency": _latencies(run.frames, run.kill_at),
        "recovery_s": latency_stats(recovery) if recovery else None,
        "masks": masks,
        "exit_codes": exit_codes,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sst.benchmarks.scale_out",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True,
                   help="an `sst export` folder (e.g. 256 px, to fit several replicas)")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--sessions", type=int, default=12)
    p.add_argument("--frames", type=int, default=8, help="frames per session (default 8)")
    faults = p.add_mutually_exclusive_group()
    faults.add_argument("--kill-one", action="store_true",
                       help="kill -9 the replica holding the most sessions half-way through")
    faults.add_argument("--drain-one", action="store_true",
                       help="SIGTERM (drain) the replica holding the most sessions half-way")
    p.add_argument("--proxy", choices=("nginx", "haproxy"), default="nginx")
    p.add_argument("--out", type=Path, help="JSON report (default: ./benchmarks/results/"
                                            "scale_out_<N>x<S>[_kill|_drain].json, under "
                                            "the current directory)")
    args = p.parse_args(argv)
    if args.replicas < 1 or args.sessions < 1 or args.frames < 2:
        p.error("--replicas and --sessions must be >= 1, --frames >= 2")
    fault = "kill" if args.kill_one else "drain" if args.drain_one else "none"
    if fault != "none" and args.replicas < 2:
        p.error(f"--{fault}-one needs at least 2 replicas (the sessions move to a survivor)")
    size = load_meta(args.model_dir).image_size
    result = run_scale_out(args.model_dir, args.replicas, args.sessions, args.frames,
                           fault, args.proxy)
    result["settings"]["image_size"] = size
    out = args.out or RESULTS / (f"scale_out_{args.replicas}x{args.sessions}"
                                 f"{'' if fault == 'none' else '_' + fault}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=list))
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "masks")},
                     indent=2, default=list))
    print(f"masks: {result['masks']['verdicts']} (all equal: {result['masks']['all_equal']})")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
