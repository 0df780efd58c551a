"""The harness of :mod:`sst.benchmarks.hostile`: ``sst serve`` as a process of its own,
its process tree's memory, raw ``tritonclient.grpc`` calls to ``sst_tracker``, and the
probes a local attacker would use (token-like strings in command lines, admin calls).

Every process is remembered by pid and only those are signalled; the Python-backend
shared memory a server's processes mapped is removed once no live process maps it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from PIL import Image

from sst.client.errors import reason_of
from sst.server_config import shm
from sst.server_config.launch_settings import LOOPBACK, pick_free_ports
from sst.tracker.serving.wire import (
    INDEPENDENT,
    QUERY_IMAGES,
    SESSION_KEY,
    SUPPORT_IMAGES,
    SUPPORT_MASKS,
)

__all__ = ["Sampler", "Server", "admin_calls", "door_sessions_open", "failed_start", "png",
           "raw_call", "repeated_peaks", "rgb_png", "rss_mib", "stateless", "token_candidates",
           "with_peak", "GRPC_PREFIX", "TOKEN_HEADERS"]

TRACKER = "sst_tracker"
MIB, GIB = 2**20, 2**30
#: gRPC metadata keys are the HTTP headers with Triton's restricted-protocol prefix.
GRPC_PREFIX = "triton-grpc-protocol-"
TOKEN_HEADERS = ("sst-admin-token", "sst-access-token")
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")
_SPEC = re.compile(r":([A-Za-z0-9_-]+)=([A-Za-z0-9._~+/-]{16,256})$")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rgb_png(side: int, seed: int = 0) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (side, side, 3)))


def _procs(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def rss_mib(pid: int, tree: bool = False) -> float:
    """RSS (MiB) of ``pid`` or, with ``tree``, summed over it and its descendants."""
    total = 0
    for p in _procs(pid) if tree else [psutil.Process(pid)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / MIB


def _vm_hwm_kib(pid: int) -> int | None:
    """The kernel's peak RSS (``VmHWM``, KiB) of ``pid``, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_hwm(pid: int) -> bool:
    """Reset ``pid``'s ``VmHWM`` to its current RSS (Linux's ``clear_refs`` value 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class Sampler:
    """Samples a tree's RSS and its root's every ``every_s`` s on a thread, keeping the
    peaks; with ``floor_gib``, calls ``on_low`` once if available memory falls under it.

    A sample can miss a peak shorter than its period (a full-size plane lives for tens of
    milliseconds), so where the kernel lets the peaks be reset, ``kernel_delta_mib`` is
    also kept: each process's own peak over its RSS at entry, from ``VmHWM``, summed over
    the tree (processes started inside count whole). A sum of peaks bounds the peak of the
    sum from above, and misses nothing."""

    def __init__(self, pid: int, every_s: float = 0.02, floor_gib: float | None = None,
                 on_low: Callable[[], None] | None = None) -> None:
        self.pid, self.every_s, self.floor, self.on_low = pid, every_s, floor_gib, on_low
        self.peak_mib = self.root_peak_mib = 0.0
        self.low_at_gib: float | None = None
        self.kernel_delta_mib: float | None = None
        self._entry_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_mib = max(self.peak_mib, rss_mib(self.pid, tree=True))
                self.root_peak_mib = max(self.root_peak_mib, rss_mib(self.pid))
            avail = psutil.virtual_memory().available / GIB
            if self.floor is not None and self.low_at_gib is None and avail < self.floor:
                self.low_at_gib = avail
                if self.on_low is not None:
                    self.on_low()
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._entry_kib = {}
        for p in _procs(self.pid):
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss // 1024
                if not _reset_hwm(p.pid):
                    self._entry_kib = {}
                    break
                self._entry_kib[p.pid] = rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if not self._entry_kib:
            return
        grown = 0
        for p in _procs(self.pid):
            hwm = _vm_hwm_kib(p.pid)
            if hwm is not None:
                grown += max(0, hwm - self._entry_kib.get(p.pid, 0))
        self.kernel_delta_mib = grown / 1024


def with_peak(srv: Server, floor_gib: float, call: Callable[[], dict[str, Any]]
              ) -> dict[str, Any]:
    """``call()``'s result with the tree's RSS before it, its peak while it ran (and over
    before: the kernel's peaks where they can be read, else the sampled one) and after
    it; the server is killed if available memory falls under ``floor_gib``."""
    before = rss_mib(srv.pid, tree=True)
    with Sampler(srv.pid, floor_gib=floor_gib, on_low=srv.kill_now) as sampler:
        res = call()
    time.sleep(0.5)
    sampled = max(0.0, sampler.peak_mib - before)
    res.update(before_mib=before, peak_mib=sampler.peak_mib, sampled_delta_mib=sampled,
               kernel_delta_mib=sampler.kernel_delta_mib,
               peak_delta_mib=sampled if sampler.kernel_delta_mib is None
               else sampler.kernel_delta_mib,
               after_mib=rss_mib(srv.pid, tree=True))
    if sampler.low_at_gib is not None:
        res["killed_by_guard"] = f"{sampler.low_at_gib:.1f} GiB available: server killed"
    return res


def repeated_peaks(srv: Server, floor_gib: float, repeats: int,
                   call: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], list[float]]:
    """``call`` made ``repeats`` times (fewer if one fails), each :func:`with_peak`: the
    failed or else the highest-peak result, and every peak."""
    runs: list[dict[str, Any]] = []
    while len(runs) < max(1, repeats) and (not runs or runs[-1]["ok"]):
        runs.append(with_peak(srv, floor_gib, call))
    return (max(runs, key=lambda r: (not r["ok"], r["peak_delta_mib"])),
            [r["peak_delta_mib"] for r in runs])


class Server:
    """``sst serve`` on free loopback ports in a process (and session) of its own,
    ready once its front door says tritonserver is. ``args``: more flags; ``env``: its
    whole environment; ``token``: the access token the readiness check sends. Stopped
    with SIGTERM; whatever of its tree outlives that is killed by pid, and the shared
    memory regions its processes mapped are removed once no live process maps them."""

    def __init__(self, model_dir: Path, *, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, token: str | None = None,
                 health: bool = False, max_sessions: int | None = None,
                 stop_wait_s: float = 90.0) -> None:
        grpc_port, http_port, metrics_port, health_port = pick_free_ports(LOOPBACK, 4)
        self.health_port = health_port if health else None
        self.url, self.token, self.stop_wait_s = f"{LOOPBACK}:{grpc_port}", token, stop_wait_s
        self.cmd = [sys.executable, "-m", "sst.client.cli", "serve", "--model-repository",
                    str(model_dir), "--grpc-port", str(grpc_port), "--http-port",
                    str(http_port), "--metrics-port", str(metrics_port), *args]
        if max_sessions is not None:
            self.cmd += ["--max-sessions", str(max_sessions)]
        if self.health_port is not None:
            self.cmd += ["--health-port", str(self.health_port)]
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}
        self.killed: list[int] = []
        self.regions: set[str] = set()
        self.stopped = False
        self._log = tempfile.TemporaryFile(prefix="sst-hostile-serve-")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def headers(self) -> dict[str, str]:
        return {GRPC_PREFIX + "sst-access-token": self.token} if self.token else {}

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        try:
            while not self._ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sst serve exited ({self.proc.returncode}) or was "
                                       f"not ready in 180 s: {self.log_tail()}")
                time.sleep(0.3)
        except BaseException:
            self.__exit__()
            raise
        self.note_tree()
        return self

    def _ready(self) -> bool:
        self.note_tree()
        client = grpcclient.InferenceServerClient(self.url)
        try:
            return bool(client.is_server_ready(headers=self.headers(), client_timeout=3))
        except Exception:  # not yet
            return False
        finally:
            client.close()

    def note_tree(self) -> list[psutil.Process]:
        """The tree's live processes (each remembered, to be killed by pid), and the
        shared memory regions they map."""
        procs = _procs(self.pid)
        for p in procs:
            self.seen.setdefault(p.pid, p)
        self.regions |= set(shm.mapped_regions(pids=[p.pid for p in procs]))
        return procs

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
            self._log.seek(max(0, self._log.seek(0, io.SEEK_END) - chars))
            return self._log.read().decode(errors="replace")
        return ""

    def kill_now(self) -> None:
        """Kill the whole tree at once (the memory guard)."""
        for p in _procs(self.pid):
            with contextlib.suppress(psutil.Error):
                p.kill()
                self.killed.append(p.pid)

    def stop(self) -> dict[str, Any]:
        """SIGTERM; then its exit status (None: killed), seconds, what had to be killed,
        the shared memory left, and ``[pid, create time]`` of every process it had."""
        code, t, self.stopped = None, time.perf_counter(), True
        if self.proc is not None:
            if self.proc.poll() is None:
                self.note_tree()
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=self.stop_wait_s)
        seconds = time.perf_counter() - t
        until = time.monotonic() + 10
        while time.monotonic() < until and any(p.is_running() for p in self.seen.values()):
            time.sleep(0.2)
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
                    self.killed.append(p.pid)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        left = sorted(self.regions & shm.regions())
        removed = shm.remove_orphans(candidates=left) if left else []
        ids = []
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                ids.append((p.pid, p.create_time()))
        return {"exit_code": code, "seconds": seconds, "killed_pids": list(self.killed),
                "shared_memory": {"left": left, "removed": removed,
                                  "still_present": sorted(self.regions & shm.regions())},
                "processes": ids}

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and not self.stopped:
                self.stop()
        finally:
            self._log.close()


def _tensor(name: str, values: Sequence[bytes]) -> Any:
    t = grpcclient.InferInput(name, [1, len(values)], "BYTES")
    t.set_data_from_numpy(np.array(list(values), dtype=object).reshape(1, len(values)))
    return t


def raw_call(url: str, *, supports: Sequence[bytes] = (), masks: Sequence[bytes] = (),
             queries: Sequence[bytes] | None = None, key: bytes | None = None,
             independent: bool = False, sequence_id: int = 0, start: bool = False,
             end: bool = False, timeout_s: float = 40.0) -> dict[str, Any]:
    """One ``sst_tracker`` request with ``tritonclient.grpc`` (a random sequence ID when
    0): ``ok``, ``seconds``, and ``status`` / ``message`` / ``reason`` when refused (a
    deadline: DEADLINE_EXCEEDED) or ``mask_shapes`` when answered."""
    inputs = [_tensor(SUPPORT_IMAGES, supports), _tensor(SUPPORT_MASKS, masks)] if supports else []
    if queries is not None:
        inputs.append(_tensor(QUERY_IMAGES, queries))
    if key is not None:
        inputs.append(_tensor(SESSION_KEY, [key]))
    if independent:
        flag = grpcclient.InferInput(INDEPENDENT, [1, 1], "UINT8")
        flag.set_data_from_numpy(np.ones((1, 1), np.uint8))
        inputs.append(flag)
    sequence_id = sequence_id or secrets.randbits(63) or 1
    client = grpcclient.InferenceServerClient(url)
    t = time.perf_counter()
    try:
        res = client.infer(TRACKER, inputs, sequence_id=sequence_id, sequence_start=start,
                           sequence_end=end, client_timeout=timeout_s,
                           headers={"sst-session": str(sequence_id)})
        shapes = res.as_numpy("MASK_SHAPES")
        return {"ok": True, "seconds": time.perf_counter() - t, "mask_shapes":
                None if shapes is None else np.asarray(shapes).reshape(-1, 2).tolist()}
    except Exception as exc:  # a refusal is the expected answer
        status = getattr(exc, "status", None)
        reason = reason_of(exc)[0]
        return {"ok": False, "seconds": time.perf_counter() - t,
                "status": str(status() if callable(status) else type(exc).__name__
                              ).removeprefix("StatusCode."),
                "message": str(exc)[:240], "reason": None if reason is None else reason.value}
    finally:
        client.close()


def failed_start(url: str, timeout_s: float) -> dict[str, Any]:
    """A START whose support mask is empty (8x8, every pixel 0): refused; no END follows."""
    return raw_call(url, supports=[rgb_png(8)], masks=[png(np.zeros((8, 8)))], start=True,
                    timeout_s=timeout_s)


def stateless(url: str, supports: Sequence[bytes], masks: Sequence[bytes], query: bytes,
               timeout_s: float) -> dict[str, Any]:
    return raw_call(url, supports=supports, masks=masks, queries=[query], independent=True,
                    start=True, end=True, timeout_s=timeout_s)


def token_candidates(cmdline: Sequence[str]) -> list[tuple[str | None, str]]:
    """``(header or None, string)``: a restricted-protocol spec's value with its header
    (``groups:header=value``), and every other 16-256 character run of token characters."""
    out: list[tuple[str | None, str]] = []
    for arg in cmdline:
        if spec := _SPEC.search(arg):
            out.append((spec.group(1), spec.group(2)))
        out += [(None, piece) for piece in re.split(r"[=:,\s]", arg)
                if _TOKEN_LIKE.fullmatch(piece) and not piece.startswith(("-", "/", "."))
                and not os.path.exists(piece)]
    return out


def admin_calls(port: int, header: str | None, value: str) -> dict[str, bool]:
    """Which admin calls answer on ``port`` with ``value`` in ``header`` (gRPC: Triton's
    prefixed key and the plain one; HTTP: the plain one)."""
    hdrs = {GRPC_PREFIX + header: value, header: value} if header else {}
    client = grpcclient.InferenceServerClient(f"{LOOPBACK}:{port}")
    out = {}
    for name, call in (("get_model_repository_index", lambda: client.get_model_repository_index(
            headers=hdrs, client_timeout=3)), ("update_log_settings", lambda: client
            .update_log_settings({"log_info": True}, headers=hdrs, client_timeout=3))):
        try:
            call()
            out[name] = True
        except Exception:  # refused
            out[name] = False
    client.close()
    req = urllib.request.Request(f"http://{LOOPBACK}:{port}/v2/repository/index", data=b"{}",
                                 headers={header: value} if header else {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            out["http_repository_index"] = resp.status == 200
    except Exception:  # refused, or not HTTP
        out["http_repository_index"] = False
    return out


def door_sessions_open(srv: Server) -> float | None:
    """The front door's ``sst_door_sessions_open`` (its health port's /metrics)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        url = f"http://{LOOPBACK}:{srv.health_port}/metrics"
        with urllib.request.urlopen(url, timeout=3) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("sst_door_sessions_open"):
                    return float(line.split()[-1])
    return None
