"""Head-of-line blocking: streaming sessions while a large stateless request runs.

``python -m sst.benchmarks.batching --mixed`` runs, against one ``sst serve``:

1. *unloaded*: ``S`` primed sessions stream ``M`` frames each (one request per frame,
   the next sent when the last is answered), timed per frame;
2. *alone*: one client sends one stateless request of ``Q`` queries, timed;
3. *loaded*: the stateless request again, and once it is under way the same session load.

It prints JSON with ``session_p50_ms``/``session_p99_ms`` unloaded and loaded, their
ratio (target: loaded p99 <= 2x unloaded p99), and the stateless request's throughput
loaded against alone (target: within 10%), with the wall time of both together against
the sum of each alone (``together_vs_sum_alone``: whether sharing the engine lost work).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sst.benchmarks.common import latency_stats
from sst.benchmarks.serving_load import Workload
from sst.client import AsyncClient

__all__ = ["mixed_run"]


def _session_ms(seconds: list[float]) -> dict[str, float]:
    stats = latency_stats(seconds)
    return {"session_p50_ms": stats["p50_s"] * 1e3, "session_p99_ms": stats["p99_s"] * 1e3}


async def _sessions(url: str, work: Workload, sessions: int) -> list[float]:
    client = AsyncClient(url, timeout=900.0, retry_for=60.0)
    try:
        opened = await asyncio.gather(*(client.open_session([work.support], [work.mask])
                                        for _ in range(sessions)))

        async def stream(s: Any) -> list[float]:
            out = []
            for q in work.queries:
                t = time.perf_counter()
                await s.segment(q)
                out.append(time.perf_counter() - t)
            return out

        per = await asyncio.gather(*(stream(s) for s in opened))
        await asyncio.gather(*(s.close() for s in opened))
    finally:
        await client.close()
    return [v for lat in per for v in lat]


async def _stateless(url: str, work: Workload, queries: list[bytes],
                     started: asyncio.Event | None = None) -> float:
    client = AsyncClient(url, timeout=1800.0, retry_for=60.0)
    try:
        t = time.perf_counter()
        task = asyncio.ensure_future(client.segment([work.support], [work.mask], queries))
        if started is not None:
            await asyncio.sleep(1.0)  # let it be admitted and its first steps run
            started.set()
        res = await task
        assert len(res) == len(queries)
        return time.perf_counter() - t
    finally:
        await client.close()


async def _loaded(url: str, work: Workload, sessions: int, queries: list[bytes]
                  ) -> tuple[list[float], float, float, bool, float]:
    """Session latencies, the stateless request's seconds, the session load's wall
    time, whether it ran wholly beside the request, and the wall time of both."""
    started = asyncio.Event()
    t0 = time.perf_counter()
    big = asyncio.ensure_future(_stateless(url, work, queries, started))
    await started.wait()
    t = time.perf_counter()
    lat = await _sessions(url, work, sessions)
    sessions_wall = time.perf_counter() - t
    overlap = not big.done()  # the whole session load ran beside the stateless request
    stateless_s = await big
    return lat, stateless_s, sessions_wall, overlap, time.perf_counter() - t0


def mixed_run(url: str, work: Workload, sessions: int, stateless: list[bytes]
              ) -> dict[str, Any]:
    """The three runs against the server at ``url``; the report as a dict."""
    asyncio.run(_sessions(url, work, 2))  # warm up
    t = time.perf_counter()
    unloaded = asyncio.run(_sessions(url, work, sessions))
    unloaded_wall = time.perf_counter() - t
    alone = asyncio.run(_stateless(url, work, stateless))
    loaded, big, loaded_wall, overlap, both = asyncio.run(
        _loaded(url, work, sessions, stateless))
    u, lo = _session_ms(unloaded), _session_ms(loaded)
    return {
        "sessions": sessions, "frames_per_session": len(work.queries),
        "stateless_queries": len(stateless),
        "unloaded": u, "loaded": lo,
        "p99_ratio_loaded_vs_unloaded": lo["session_p99_ms"] / u["session_p99_ms"],
        "p50_ratio_loaded_vs_unloaded": lo["session_p50_ms"] / u["session_p50_ms"],
        "stateless_alone_s": alone, "stateless_loaded_s": big,
        "stateless_throughput_alone_per_s": len(stateless) / alone,
        "stateless_throughput_loaded_per_s": len(stateless) / big,
        "stateless_throughput_ratio": alone / big,
        "session_load_wall_unloaded_s": unloaded_wall,
        "session_load_wall_loaded_s": loaded_wall,
        "sessions_ran_wholly_beside_the_stateless_request": overlap,
        # whether sharing lost work: the wall time of both together against the sum of
        # each alone (<= 1: nothing lost; a compute-bound device cannot do better than
        # ~1, so there what the sessions get the stateless request must give up)
        "both_together_s": both,
        "together_vs_sum_alone": both / (alone + unloaded_wall),
    }
