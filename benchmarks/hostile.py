"""A hostile or crashing client against a real ``sst serve``: items 1-7 of issue 24.

Each section starts its own ``sst serve`` (as users run it: the launcher with its gRPC
front door, tritonserver and its model processes) on free loopback ports, attacks it as
a buggy rig script or a local attacker would, and reports figures; ``targets`` says per
item whether its target was met (None: not measured).

1. ``slots``: a session (START + 1 frame + END) and a stateless request, timed on the
   fresh server and after ``--failed-starts`` STARTs with an empty 8x8 mask never ENDed
   (raw calls), each with a deadline (a locked server shows as a timeout). Target: 2x.
2. ``labels``: peak RSS of the server tree for one ``--side``^2 solid PNG query against
   K labels, each K of ``--labels``. Target: +1.5 GiB at most, or refused from the
   headers in under 1 s; and no growth with K. A memory guard first sends a header-only
   PNG of that size (refused from its header, or failing to decode, costs nothing);
   unless refused, K is sent only if its cost, extrapolated from the Ks measured (else
   the old ``[K,H,W]`` float32 stack's), fits the available memory less ``--margin-gib``,
   and the server is killed if available memory falls under half that margin.
3. ``tiff``: the crafted TIFFs of ``sst.benchmarks.hostile_inputs`` as queries. Target:
   refused in under 1 s, peak +100 MiB at most.
4. ``tokens``: tokens given through ``SST_TOKEN`` / ``SST_ADMIN_TOKEN``, then through
   ``--token`` / ``--admin-token``: any token in a ``/proc/<pid>/cmdline`` of the tree,
   and admin calls on every TCP port the tree listens on with token-like strings read
   from those command lines. Target: none in a command line the server made, no call.
5. ``keys``: a keyed session tracks 5 frames; between them: END without its key, END with
   a wrong key, re-START without it, a stateless START+END on its ID. Target: 5 masks
   equal an undisturbed run's, 0 re-primes.
6. ``door_heap``: RSS of the front door (the launcher) and the tree, before and
   ``--settle`` s after ``--flood-requests`` concurrent requests of ``--flood-mib`` MiB of
   random bytes as a query (refused as unreadable). Target: within 25%.
7. ``sigterm``: one failed START never ENDed, then SIGTERM. Target: exit status 0.

    python -m sst.benchmarks.hostile --model-dir DIR [--out FILE] [--sections 1,3,7]

JSON on stdout unless ``--out``; progress on stderr. Only processes it started are
signalled (by pid), and the shared memory its servers left is removed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import sst.tracker
from sst.benchmarks.common import log_progress, machine_description
from sst.benchmarks.hostile_harness import (
    TOKEN_HEADERS,
    Sampler,
    Server,
    admin_calls,
    door_sessions_open,
    failed_start,
    raw_call,
    repeated_peaks,
    rgb_png,
    rss_mib,
    stateless,
    token_candidates,
    with_peak,
)
from sst.benchmarks.hostile_inputs import crafted_tiffs, label_mask_png, solid_png
from sst.benchmarks.large_request import header_png
from sst.benchmarks.serving_load import check_answer, make_workload
from sst.client import Client

__all__ = ["SECTIONS", "Settings", "run_hostile", "targets", "main"]

#: Section names in the issue's order (item n is ``SECTIONS[n - 1]``).
SECTIONS = ("slots", "labels", "tiff", "tokens", "keys", "door_heap", "sigterm")
MIB = 2**20
#: The old mask making's cost per label and pixel (0.44 GB per label at 7000^2 is 2.2
#: float32 planes), with room.
OLD_BYTES_PER_LABEL_PIXEL = 4 * 2.4
#: Streaming over labels grows by far less than this much of a float32 plane per label.
PER_LABEL_PLANES = 0.25


@dataclass
class Settings:
    """What the sections send and wait for (the defaults are the issue's figures)."""

    failed_starts: int = 1000
    deadline_s: float = 40.0  # per legitimate call
    attack_timeout_s: float = 5.0  # per attacking call
    attack_stall: int = 3  # the attack stops after this many timeouts in a row
    repeats: int = 3
    side: int = 7000
    labels: tuple[int, ...] = (2, 16, 64)
    support_side: int = 256
    margin_gib: float = 6.0
    frames: int = 5
    flood_requests: int = 8
    flood_mib: int = 60
    flood_rounds: int = 2
    settle_s: float = 10.0
    max_sessions: int | None = None  # of every server (Triton's slots: 4x + 64)
    stop_wait_s: float = 90.0  # after SIGTERM, before the tree is killed


def _server(model_dir: Path, s: Settings, **kw: Any) -> Server:
    return Server(model_dir, max_sessions=s.max_sessions, stop_wait_s=s.stop_wait_s, **kw)


def _timed(fn: Callable[[], Any]) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        fn()
        return {"ok": True, "seconds": time.perf_counter() - t}
    except Exception as exc:  # a timeout or refusal is a result
        return {"ok": False, "seconds": time.perf_counter() - t,
                "error": f"{type(exc).__name__}: {str(exc)[:240]}"}


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}


def section_slots(model_dir: Path, s: Settings) -> dict[str, Any]:
    work = make_workload(1, labels=(1, 2))

    def session(url: str) -> None:
        with Client(url, timeout=s.deadline_s, retry_for=0) as client:
            with client.open_session([work.support], [work.mask]) as sess:
                sess.segment(work.queries[0])

    def stateless(url: str) -> None:
        with Client(url, timeout=s.deadline_s, retry_for=0) as client:
            client.segment([work.support], [work.mask], [work.queries[0]])

    def measure(url: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn in (("session", session), ("stateless", stateless)):
            calls: list[dict[str, Any]] = []
            while len(calls) < s.repeats and (not calls or calls[-1]["ok"]):
                calls.append(_timed(functools.partial(fn, url)))
            ok = all(c["ok"] for c in calls)
            out[name] = {"median_s": statistics.median(c["seconds"] for c in calls)
                         if ok else None, "calls": calls}
        return out

    out: dict[str, Any] = {}
    with _server(model_dir, s) as srv:
        _timed(functools.partial(session, srv.url))  # warm
        out["before"] = measure(srv.url)
        log_progress(f"slots: fresh: {out['before']['session']['median_s']} s (session), "
                     f"{out['before']['stateless']['median_s']} s (stateless); "
                     f"{s.failed_starts} failed STARTs ...")
        attack: dict[str, Any] = {"sent": 0, "timed_out": 0, "statuses": {}}
        t, stall = time.perf_counter(), 0
        for _ in range(s.failed_starts):
            res = failed_start(srv.url, s.attack_timeout_s)
            status = "OK" if res["ok"] else res["status"]
            attack["sent"] += 1
            attack["statuses"][status] = attack["statuses"].get(status, 0) + 1
            attack.setdefault("example", res.get("message"))
            stall = stall + 1 if status == "DEADLINE_EXCEEDED" else 0
            attack["timed_out"] += stall > 0
            if stall >= s.attack_stall:
                attack["stopped"] = (f"{stall} failed STARTs in a row timed out "
                                     f"({s.attack_timeout_s:g} s each)")
                break
        attack["seconds"] = time.perf_counter() - t
        out["attack"] = attack
        out["after"] = measure(srv.url)
        for name in ("session", "stateless"):
            b, a = out["before"][name]["median_s"], out["after"][name]["median_s"]
            out[f"{name}_ratio"] = a / b if a is not None and b else None
        log_progress(f"slots: attack {attack}; after: {out['after']['session']['median_s']}"
                     f" s, {out['after']['stateless']['median_s']} s")
        out["stop"] = srv.stop()
    return out


def _refused_from_headers(res: Mapping[str, Any]) -> bool:
    """A refusal that names a budget or limit (not a decoding failure)."""
    if res.get("ok") or res.get("status") == "DEADLINE_EXCEEDED":
        return False
    message = str(res.get("message", "")).lower()
    return res.get("reason") is not None or any(
        w in message for w in ("budget", "limit", "too large", "too many"))


def _estimate_mib(k: int, side: int, measured: Sequence[tuple[int, float]]
                  ) -> tuple[float, str]:
    """The peak (MiB over before) K labels would cost: extrapolated from the last two Ks
    measured, else the old ``[K,H,W]`` float32 stack's."""
    if len(measured) >= 2:
        (k1, m1), (k2, m2) = measured[-2:]
        return m2 + max(0.0, (m2 - m1) / (k2 - k1)) * (k - k2), f"from K={k1} and K={k2}"
    return k * side * side * OLD_BYTES_PER_LABEL_PIXEL / MIB, "a [K,H,W] float32 stack"


def section_labels(model_dir: Path, s: Settings) -> dict[str, Any]:
    side, sup = s.side, s.support_side
    query, probe, small = solid_png(side, side), header_png(side, side), solid_png(sup, sup)
    support = rgb_png(sup, seed=1)
    out: dict[str, Any] = {"side": side, "query_bytes": len(query), "per_k": {},
                           "plane_mib": side * side * 4 / MIB}
    measured: list[tuple[int, float]] = []
    model: list[tuple[int, float]] = []
    with _server(model_dir, s) as srv:
        for k in s.labels:
            row: dict[str, Any] = {}
            out["per_k"][str(k)] = row
            if not srv.alive():
                row["skipped"] = "the server was killed by the memory guard"
                continue
            try:
                send = functools.partial(stateless, srv.url, [support],
                                         [label_mask_png(sup, sup, k)],
                                         timeout_s=max(s.deadline_s, 120.0))
                row["warm"] = send(small)
                row["probe"] = send(probe)
                if not _refused_from_headers(row["probe"]):
                    est, how = _estimate_mib(k, side, measured)
                    avail = psutil.virtual_memory().available / MIB
                    row.update(estimate_mib=est, estimate_from=how, available_mib=avail)
                    if est > avail - s.margin_gib * 1024:
                        row["skipped"] = (f"estimated +{est / 1024:.1f} GiB ({how}) is over "
                                          f"{avail / 1024:.1f} GiB available less "
                                          f"{s.margin_gib:g} GiB")
                        log_progress(f"labels: K={k}: {row['skipped']}")
                        continue
                # Both queries are sent 1 + `repeats` times; growth in K is taken from
                # each K's median peak after the first call at that K (the allocator may
                # reuse a few freed planes in one call and not in another), less the
                # small query's, which is the model's own cost per object. The bounds on
                # the peak take the highest of all calls.
                big, peaks = repeated_peaks(srv, s.margin_gib / 2, 1 + s.repeats,
                                            functools.partial(send, query))
                _, small_peaks = repeated_peaks(srv, s.margin_gib / 2, 1 + s.repeats,
                                                functools.partial(send, small))
                row.update(big, peaks_mib=peaks, small_peaks_mib=small_peaks)
                if row["ok"]:
                    measured.append((k, statistics.median(peaks[1:] or peaks)))
                    model.append((k, statistics.median(small_peaks[1:] or small_peaks)))
                log_progress(f"labels: K={k}: ok={row['ok']} {row['seconds']:.2f} s, peaks "
                             + ", ".join(f"+{p:.0f}" for p in peaks) + " MiB (at "
                             f"{sup} px: " + ", ".join(f"+{p:.0f}" for p in small_peaks) + ")")
            except Exception as exc:  # reported; the next K goes on
                row.update(_error(exc))
        if len(measured) >= 2:
            slope = {name: (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
                     for name, pts in (("query", measured), ("model", model))}
            out["growth_per_label_mib"] = slope["query"] - slope["model"]
            out["raw_growth_per_label_mib"] = slope["query"]
            out["model_growth_per_label_mib"] = slope["model"]
        out["stop"] = srv.stop()
    return out


def section_tiff(model_dir: Path, s: Settings) -> dict[str, Any]:
    work = make_workload(1, labels=(1, 2))
    out: dict[str, Any] = {"files": {}}
    with _server(model_dir, s) as srv:
        send = functools.partial(stateless, srv.url, [work.support], [work.mask],
                                 timeout_s=max(s.deadline_s, 60.0))
        send(work.queries[0])  # warm
        for name, blob in crafted_tiffs().items():
            try:
                res = with_peak(srv, s.margin_gib / 2, functools.partial(send, blob))
                res["file_bytes"] = len(blob)
            except Exception as exc:
                res = _error(exc)
            out["files"][name] = res
            log_progress(f"tiff: {name}: {res.get('seconds', 0):.2f} s, peak "
                         f"+{res.get('peak_delta_mib', 0):.0f} MiB, ok={res.get('ok')}")
        out["stop"] = srv.stop()
    return out


def _token_run(model_dir: Path, s: Settings, via: str) -> dict[str, Any]:
    tokens = {"access": secrets.token_hex(24), "admin": secrets.token_hex(24)}
    env = {k: v for k, v in os.environ.items() if k not in ("SST_TOKEN", "SST_ADMIN_TOKEN")}
    args: list[str] = []
    if via == "env":
        env.update(SST_TOKEN=tokens["access"], SST_ADMIN_TOKEN=tokens["admin"])
    else:
        args = ["--token", tokens["access"], "--admin-token", tokens["admin"]]
    out: dict[str, Any] = {"via": via, "processes": []}
    with _server(model_dir, s, args=args, env=env, token=tokens["access"]) as srv:
        time.sleep(1.0)
        candidates: dict[tuple[str | None, str], str] = {}
        ports: dict[int, str] = {}
        for p in srv.note_tree():
            try:
                cmd, name = p.cmdline(), p.name()
                listening = [c.laddr.port for c in p.net_connections(kind="tcp")
                             if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
            by = "us" if p.pid == srv.pid else "server"
            out["processes"].append({"pid": p.pid, "name": name, "started_by": by,
                                     "tokens_in_cmdline": sorted(
                                         t for t, v in tokens.items() if v in "\0".join(cmd))})
            ports.update({int(port): f"{name} {p.pid}" for port in listening})
            for cand in token_candidates(cmd):
                candidates.setdefault(cand, by)
        rows = out["processes"]
        out["tokens_in_server_made_cmdlines"] = sorted(
            {t for r in rows if r["started_by"] == "server" for t in r["tokens_in_cmdline"]})
        out["tokens_in_launcher_cmdline"] = [t for r in rows if r["started_by"] == "us"
                                             for t in r["tokens_in_cmdline"]]
        out["listening_ports"] = {str(k): v for k, v in sorted(ports.items())}
        which = {v: k for k, v in tokens.items()}
        out["admin_without_token"] = {str(port): admin_calls(port, None, "") for port in ports}
        succeeded: list[dict[str, Any]] = []
        attempts = 0
        for port in sorted(ports):
            for (header, value), found_in in candidates.items():
                for h in [header] if header else TOKEN_HEADERS:
                    for call, ok in admin_calls(port, h, value).items():
                        attempts += 1
                        row = {"port": port, "listener": ports[port], "call": call,
                               "header": h, "string": which.get(value, value[:4] + "..."),
                               "found_in": found_in}
                        if ok and row not in succeeded:
                            succeeded.append(row)
        out.update(candidates=len(candidates), admin_attempts=attempts,
                   admin_succeeded=succeeded, admin_succeeded_with_server_made_cmdlines=[
                       r for r in succeeded if r["found_in"] == "server"])
        out["stop"] = srv.stop()
    return out


def section_tokens(model_dir: Path, s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for via in ("env", "flags"):
        try:
            out[via] = _token_run(model_dir, s, via)
        except Exception as exc:
            out[via] = _error(exc)
        log_progress(f"tokens ({via}): in server-made command lines "
                     f"{out[via].get('tokens_in_server_made_cmdlines')}, admin calls "
                     f"answered {len(out[via].get('admin_succeeded', []))}")
    return out


def section_keys(model_dir: Path, s: Settings) -> dict[str, Any]:
    work = make_workload(s.frames, labels=(1, 2))
    out: dict[str, Any] = {"frames": s.frames, "per_frame": []}
    with _server(model_dir, s, health=True) as srv, Client(
            srv.url, timeout=s.deadline_s, retry_for=30.0) as client:
        for queries in (work.queries[:1], work.queries):  # a warm-up, the undisturbed run
            with client.open_session([work.support], [work.mask]) as ref:
                reference = [ref.segment(q).mask.copy() for q in queries]
        with client.open_session([work.support], [work.mask]) as victim:
            call = functools.partial(raw_call, srv.url, sequence_id=victim.session_id,
                                     timeout_s=s.deadline_s)
            sup = {"supports": [work.support], "masks": [work.mask]}
            attacks: list[tuple[str, dict[str, Any]]] = [
                ("end_without_key", {"queries": [], "end": True}),
                ("end_with_wrong_key", {"queries": [], "end": True,
                                        "key": secrets.token_hex(16).encode()}),
                ("restart_without_key", {**sup, "start": True}),
                ("stateless_on_its_id", {**sup, "queries": [work.queries[0]],
                                         "independent": True, "start": True, "end": True})]
            out["gauge_before_attacks"] = door_sessions_open(srv)
            for i, q in enumerate(work.queries):
                frame: dict[str, Any] = {}
                if 0 < i <= len(attacks):
                    name, kw = attacks[i - 1]
                    frame["attack_before"] = {"name": name, **call(**kw)}
                before = victim.reprimes
                try:
                    got = victim.segment(q)
                    verdict, px = check_answer(got.labels, got.mask, [1, 2], work.sizes[i],
                                               reference[i])
                    frame.update(verdict=verdict, differing_pixels=px,
                                 equal=bool(np.array_equal(got.mask, reference[i])))
                except Exception as exc:  # a lost frame
                    frame.update(equal=False, **_error(exc))
                frame["reprimed"] = victim.reprimes > before
                out["per_frame"].append(frame)
            out["gauge_after_attacks"] = door_sessions_open(srv)
            out["reprimes"] = victim.reprimes
        out["gauge_after_end"] = door_sessions_open(srv)
        frames = out["per_frame"]
        out["frames_equal"] = sum(1 for f in frames if f.get("equal"))
        out["attacks_answered"] = [f["attack_before"]["name"] for f in frames
                                   if f.get("attack_before", {}).get("ok")]
        log_progress(f"keys: {out['frames_equal']}/{s.frames} frames equal, "
                     f"{out['reprimes']} re-primes")
        out["stop"] = srv.stop()
    return out


def section_door_heap(model_dir: Path, s: Settings) -> dict[str, Any]:
    work = make_workload(1, labels=(1, 2))
    junk = np.random.default_rng(6).bytes(s.flood_mib * MIB)
    out: dict[str, Any] = {"rounds": []}
    with _server(model_dir, s) as srv:
        with Client(srv.url, timeout=s.deadline_s) as client:
            with client.open_session([work.support], [work.mask]) as session:
                session.segment(work.queries[0])
            client.segment([work.support], [work.mask], [work.queries[0]])
        time.sleep(2.0)
        door0, tree0 = rss_mib(srv.pid), rss_mib(srv.pid, tree=True)
        out["before"] = {"door_mib": door0, "tree_mib": tree0}
        send = functools.partial(stateless, srv.url, [work.support], [work.mask], junk,
                                 max(s.deadline_s, 60.0))
        for r in range(s.flood_rounds):
            t = time.perf_counter()
            with Sampler(srv.pid, every_s=0.05) as sampler, ThreadPoolExecutor(
                    s.flood_requests) as pool:
                answers = list(pool.map(lambda _: send(), range(s.flood_requests)))
            seconds = time.perf_counter() - t
            time.sleep(s.settle_s)
            door, tree = rss_mib(srv.pid), rss_mib(srv.pid, tree=True)
            statuses: dict[str, int] = {}
            for a in answers:
                key = "OK" if a["ok"] else f"{a['status']}: {a['message'][:80]}"
                statuses[key] = statuses.get(key, 0) + 1
            out["rounds"].append({
                "seconds": seconds, "answers": statuses, "door_peak_mib": sampler.root_peak_mib,
                "tree_peak_mib": sampler.peak_mib, "door_after_mib": door,
                "tree_after_mib": tree, "door_ratio": door / door0, "tree_ratio": tree / tree0})
            log_progress(f"door_heap: round {r + 1}: door {door0:.0f} -> {door:.0f} MiB, "
                         f"tree {tree0:.0f} -> {tree:.0f} MiB; {statuses}")
        out["stop"] = srv.stop()
    return out


def section_sigterm(model_dir: Path, s: Settings) -> dict[str, Any]:
    with _server(model_dir, s) as srv:
        failed = failed_start(srv.url, s.attack_timeout_s)
        time.sleep(0.5)
        out = {"failed_start": failed, **srv.stop(), "log_tail": srv.log_tail(600)}
    log_progress(f"sigterm: exit {out['exit_code']} after {out['seconds']:.1f} s")
    return out


def _all(values: Sequence[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if not values or any(v is None for v in values) else True


def targets(report: Mapping[str, Any]) -> dict[str, Any]:
    """Per item: ``met`` (True, False, or None when not measured) and what was judged."""
    out: dict[str, Any] = {}
    sec = report.get("sections", {})
    if "slots" in sec:
        r = sec["slots"]
        ratios = [r.get("session_ratio"), r.get("stateless_ratio")]
        out["slots"] = {"met": None if "error" in r else all(
            x is not None and x <= 2.0 for x in ratios), "session_ratio": ratios[0],
            "stateless_ratio": ratios[1], "target": "after the failed STARTs, a session and "
            "a stateless request answered within 2x of the fresh server's time"}
    if "labels" in sec:
        r = sec["labels"]
        per: dict[str, bool | None] = {}
        for k, row in r.get("per_k", {}).items():
            if "seconds" not in row or "error" in row or "skipped" in row:
                per[k] = None
            else:
                per[k] = row["peak_delta_mib"] <= 1.5 * 1024 and (row["ok"] or (
                    _refused_from_headers(row) and row["seconds"] < 1.0))
        growth = r.get("growth_per_label_mib")
        flat = None if growth is None else growth <= PER_LABEL_PLANES * r["plane_mib"]
        out["labels"] = {
            "met": None if "error" in r else _all([*per.values(), *(
                [] if flat is None else [flat])]),
            "per_k": per, "growth_per_label_mib": growth, "flat_in_k": flat,
            "target": "peak at most +1.5 GiB at every K, or refused from the headers in "
            f"under 1 s; from the first to the last K answered, at most {PER_LABEL_PLANES:g}"
            " of a float32 plane of the query more per label (each K's median peak of its "
            "repeated query after the first, less that of a query at the support's size)"}
    if "tiff" in sec:
        r = sec["tiff"]
        files = {n: None if "error" in row else (
            not row["ok"] and row["status"] != "DEADLINE_EXCEEDED" and row["seconds"] < 1.0
            and row["peak_delta_mib"] <= 100) for n, row in r.get("files", {}).items()}
        out["tiff"] = {"met": None if "error" in r else _all(list(files.values())),
                       "per_file": files,
                       "target": "each refused in under 1 s, peak at most +100 MiB"}
    if "tokens" in sec:
        runs: dict[str, bool | None] = {}
        for via in ("env", "flags"):
            row = sec["tokens"].get(via, {})
            runs[via] = None if "processes" not in row or "error" in row else not (
                row["tokens_in_server_made_cmdlines"]
                or row["admin_succeeded_with_server_made_cmdlines"]
                or (via == "env" and row["tokens_in_launcher_cmdline"]))
        out["tokens"] = {"met": _all(list(runs.values())), "per_run": runs,
                         "target": "no token in a command line the server made (with the "
                         "environment: in none of the tree), no admin call answered with a "
                         "string read from one"}
    if "keys" in sec:
        r = sec["keys"]
        out["keys"] = {"met": None if "error" in r else (
            r["frames_equal"] == r["frames"] and r["reprimes"] == 0),
            "frames_equal": r.get("frames_equal"), "reprimes": r.get("reprimes"),
            "target": "every frame equal to an undisturbed run's, 0 re-primes"}
    if "door_heap" in sec:
        rows = sec["door_heap"].get("rounds", [])
        out["door_heap"] = {
            "met": all(x["door_ratio"] <= 1.25 and x["tree_ratio"] <= 1.25 for x in rows)
            if rows else None, "door_ratios": [x["door_ratio"] for x in rows],
            "tree_ratios": [x["tree_ratio"] for x in rows],
            "target": "door and tree RSS within 25% of before, after every round"}
    if "sigterm" in sec:
        r = sec["sigterm"]
        out["sigterm"] = {"met": None if "error" in r else r["exit_code"] == 0,
                          "exit_code": r.get("exit_code"),
                          "target": "exit status 0 after SIGTERM"}
    return out


_RUNNERS: dict[str, Callable[[Path, Settings], dict[str, Any]]] = {
    "slots": section_slots, "labels": section_labels, "tiff": section_tiff,
    "tokens": section_tokens, "keys": section_keys, "door_heap": section_door_heap,
    "sigterm": section_sigterm}


def run_hostile(model_dir: Path, settings: Settings | None = None,
                sections: Sequence[str] = SECTIONS) -> dict[str, Any]:
    """Run ``sections`` (each against servers of its own) and report them, with
    ``targets``; a section's failure is reported in it (``error``) and the run goes on."""
    s = settings or Settings()
    if unknown := [n for n in sections if n not in _RUNNERS]:
        raise ValueError(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    report: dict[str, Any] = {
        "benchmark": "hostile", "machine": machine_description(),
        "code": str(Path(sst.tracker.__file__).resolve().parent.parent),
        "model_dir": str(model_dir), "settings": asdict(s), "sections": {}}
    started = time.perf_counter()
    for name in sections:
        log_progress(f"== {name} ==")
        t = time.perf_counter()
        try:
            result = _RUNNERS[name](model_dir, s)
        except Exception as exc:  # one section's failure is its result
            result = _error(exc)
            log_progress(f"{name}: {result['error']}")
        result["section_seconds"] = time.perf_counter() - t
        report["sections"][name] = result
    report["seconds"] = time.perf_counter() - started
    report["targets"] = targets(report)
    return report


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, help="write the JSON report here (default: stdout)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated names or item numbers 1-7 (default: all)")
    ap.add_argument("--note", default="", help="a note kept in the report (e.g. the commit)")
    defaults = Settings()
    for f in fields(Settings):
        value = getattr(defaults, f.name)
        kind: Callable[[str], Any] = (
            (lambda t: tuple(int(v) for v in t.split(","))) if isinstance(value, tuple)
            else int if value is None else type(value))
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        ap.add_argument("--" + f.name.removesuffix("_s").replace("_", "-"), dest=f.name,
                        type=kind, default=value, help=f"default: {shown}")
    args = ap.parse_args(argv)
    return args, Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})


def main(argv: list[str] | None = None) -> int:
    args, settings = _parse(argv)
    names = [SECTIONS[int(p) - 1] if p.strip().isdigit() else p.strip()
             for p in args.sections.split(",") if p.strip()]
    report = run_hostile(args.model_dir, settings, names)
    report["command"] = " ".join(["python -m sst.benchmarks.hostile",
                                  *(sys.argv[1:] if argv is None else argv)])
    if args.note:
        report["note"] = args.note
    text = json.dumps(report, indent=2, default=str) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        log_progress(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    words = {True: "met", False: "NOT met", None: "not measured"}
    for name, t in report["targets"].items():
        log_progress(f"{name}: target {words[t['met']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
