"""In-flight batching under load: concurrent sessions against ``sst serve``, read from its
metrics, beside the embedded single stream, in one run.

For each concurrency level N, N asyncio sessions (sequential SST: START, M queries, END)
run at once. Reported per level: images/s, per-query p50/p90, the ratio to the embedded
tracker's single stream on the same queries, every answer checked against that
stream's masks, and the mean batch of each component read from the server's
Prometheus metrics (``sst_component_items_total / sst_component_calls_total``, deltas
over the level): frames per encoder call, objects per memory-attention, decoder and
memory-encoder call.

    python -m sst.benchmarks.batching --model-dir DIR [--concurrency 1 4 8 16] [--queries 8]

``--engines ort,auto`` runs the whole load once per CPU engine (the server started with
``SST_ENGINE`` set to each; the embedded stream on the same engine), in one run, and
reports each level's throughput against the first engine's.

``--url HOST:PORT`` measures a server that is already running instead (an earlier
version, say), with ``--metrics-url`` if it exports the metrics. Writes
``benchmarks/results/batching_<size>.json``.

``--mixed`` measures head-of-line blocking instead (:mod:`sst.benchmarks.mixed_load`):
``--mixed-sessions`` sessions streaming ``--queries`` frames each, alone and while one
client's stateless request of ``--mixed-queries`` queries runs; writes
``batching_mixed_<size>.json``::

    python -m sst.benchmarks.batching --model-dir DIR --mixed [--queries 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sst.benchmarks.common import log_progress, machine_description, save_results
from sst.benchmarks.mixed_load import mixed_run
from sst.benchmarks.server import serve
from sst.benchmarks.serving_load import _session_load, _Tally, embedded, make_workload
from sst.export.meta import load_meta
from sst.tracker.defaults import ENV_ENGINE

#: Under the current folder (the repository's own when run from its root), never the
#: installed package's.
RESULTS = Path("benchmarks") / "results"
COMPONENTS = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")
_LINE = re.compile(r'^(sst_component_(?:calls|items)_total)\{component="(\w+)"\}\s+(\S+)$')


def scrape(metrics_url: str) -> dict[str, dict[str, float]]:
    """``{"calls"|"items": {component: total}}`` from a Prometheus text page."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[str, dict[str, float]] = {"calls": {}, "items": {}}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            kind = "calls" if m.group(1).endswith("calls_total") else "items"
            out[kind][m.group(2)] = float(m.group(3))
    return out


def mean_batches(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
                 ) -> dict[str, float | None]:
    """Mean items per call of each component between two scrapes."""
    out: dict[str, float | None] = {}
    for c in COMPONENTS:
        calls = after["calls"].get(c, 0.0) - before["calls"].get(c, 0.0)
        items = after["items"].get(c, 0.0) - before["items"].get(c, 0.0)
        out[c] = items / calls if calls else None
    return out


@contextmanager
def _target(args: argparse.Namespace, front_door: bool = True
            ) -> Iterator[tuple[str, str | None]]:
    if args.url:
        yield args.url, args.metrics_url
        return
    with serve(args.model_dir, front_door=front_door) as server:
        yield server.grpc_url, server.metrics_url


def _levels(args: argparse.Namespace, work: Any, reference: Any, emb: dict[str, Any],
            tally: _Tally, front_door: bool = True) -> list[dict[str, Any]]:
    levels = []
    with _target(args, front_door) as (url, metrics_url):
        for n in args.concurrency:
            log_progress(f"{n} concurrent sessions{'' if front_door else ', no front door'} ...")
            before = scrape(metrics_url) if metrics_url else None
            level = asyncio.run(_session_load(url, work, n, reference, tally))
            if before is not None and metrics_url:
                level["mean_batch"] = mean_batches(before, scrape(metrics_url))
            level["throughput_vs_embedded"] = level["throughput_per_s"] / emb[
                "throughput_per_s"]
            levels.append(level)
            mb = level.get("mean_batch") or {}
            log_progress(f"  {level['throughput_per_s']:.2f} images/s "
                         f"({level['throughput_vs_embedded']:.2f}x embedded), p50 "
                         f"{level['p50_s']:.2f}s; mean batch: " + ", ".join(
                             f"{c} {v:.1f}" for c, v in mb.items() if v is not None))
    return levels


def _mixed(args: argparse.Namespace, image_size: int) -> int:
    work = make_workload(args.queries, labels=tuple(range(1, args.labels + 1)))
    stateless = [work.queries[i % len(work.queries)] for i in range(args.mixed_queries)]
    with _target(args) as (url, _):
        log_progress(f"{args.mixed_sessions} sessions x {args.queries} frames, alone and "
                     f"beside a {len(stateless)}-query stateless request ...")
        report = mixed_run(url, work, args.mixed_sessions, stateless)
    report = {"machine": machine_description(), "image_size": image_size,
              "server": args.url or "sst serve (this version)", **report}
    print(json.dumps(report, indent=1))
    path = save_results(args.results, f"batching_mixed_{image_size}{args.name}.json", report)
    log_progress(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--queries", type=int, default=8, help="queries per session")
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--url", help="an already running server (gRPC HOST:PORT)")
    ap.add_argument("--metrics-url", help="its Prometheus page (with --url)")
    ap.add_argument("--name", default="", help="suffix of the results file")
    ap.add_argument("--compare-front-door", action="store_true",
                    help="also run the load against tritonserver's own gRPC port, side by "
                         "side, and report what the front door costs")
    ap.add_argument("--engines", default="",
                    help="comma-separated CPU engines to compare in one run, e.g. ort,auto "
                         "(default: the server's default engine only)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--mixed", action="store_true",
                    help="head-of-line blocking: sessions streaming while a large stateless "
                         "request runs")
    ap.add_argument("--mixed-sessions", type=int, default=8)
    ap.add_argument("--mixed-queries", type=int, default=128,
                    help="queries of the stateless request")
    args = ap.parse_args(argv)
    meta = load_meta(args.model_dir)
    if args.mixed:
        return _mixed(args, meta.image_size)
    work = make_workload(args.queries, labels=tuple(range(1, args.labels + 1)))
    if args.engines:
        return _per_engine(args, work, meta.image_size)
    log_progress("embedded single stream ...")
    emb = embedded(args.model_dir, work, passes=1)
    reference = emb.pop("masks")
    tally = _Tally()
    levels = _levels(args, work, reference, emb, tally)
    door: dict[str, Any] = {}
    if args.compare_front_door and not args.url:
        # the same load against tritonserver's own gRPC: what the front door costs
        direct = _levels(args, work, reference, emb, tally, front_door=False)
        door = {"levels_without_front_door": direct, "front_door_ratio": [
            {"concurrency": a["concurrency"],
             "throughput": a["throughput_per_s"] / b["throughput_per_s"],
             "p50": a["p50_s"] / b["p50_s"]} for a, b in zip(levels, direct)]}
        for r in door["front_door_ratio"]:
            log_progress(f"front door / direct at {r['concurrency']} sessions: throughput "
                         f"{r['throughput']:.3f}x, p50 latency {r['p50']:.3f}x")
    results = {"machine": machine_description(), "image_size": meta.image_size,
               "labels": args.labels, "queries_per_session": args.queries,
               "server": args.url or "sst serve (this version)", "embedded": emb,
               "levels": levels, "answers_checked": sum(tally.counts.values()),
               "verdicts": tally.counts, "failures": tally.failures, **door}
    print(json.dumps({k: results[k] for k in ("levels", "verdicts")}, indent=1))
    path = save_results(args.results, f"batching_{meta.image_size}{args.name}.json", results)
    log_progress(f"wrote {path}")
    return 0 if not tally.failures else 1


def _per_engine(args: argparse.Namespace, work: Any, image_size: int) -> int:
    """The load once per engine, the server started with ``SST_ENGINE`` set to it."""
    runs: dict[str, Any] = {}
    tally = _Tally()
    saved = os.environ.get(ENV_ENGINE)
    try:
        for engine in [e for e in args.engines.split(",") if e]:
            os.environ[ENV_ENGINE] = engine  # the server inherits it
            log_progress(f"engine {engine}: embedded single stream ...")
            emb = embedded(args.model_dir, work, passes=1, engine=engine)
            reference = emb.pop("masks")
            runs[engine] = {"embedded": emb, "levels": _levels(args, work, reference, emb,
                                                                tally)}
    finally:
        if saved is None:
            os.environ.pop(ENV_ENGINE, None)
        else:
            os.environ[ENV_ENGINE] = saved
    first = next(iter(runs.values()))["levels"]
    for engine, run in runs.items():
        for level, base in zip(run["levels"], first):
            level["throughput_vs_first_engine"] = (level["throughput_per_s"]
                                                   / base["throughput_per_s"])
            log_progress(f"{engine} at {level['concurrency']} sessions: "
                         f"{level['throughput_per_s']:.2f} images/s "
                         f"({level['throughput_vs_first_engine']:.2f}x {next(iter(runs))})")
    results = {"machine": machine_description(), "image_size": image_size,
               "labels": args.labels, "queries_per_session": args.queries,
               "engines": runs, "answers_checked": sum(tally.counts.values()),
               "verdicts": tally.counts, "failures": tally.failures}
    path = save_results(args.results, f"batching_{image_size}_engines{args.name}.json",
                        results)
    log_progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
