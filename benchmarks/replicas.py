"""Several ``sst serve`` replicas and a session-affine proxy on loopback, for the
scale-out benchmark and its test.

Every process started here is remembered by PID and stopped by PID (SIGTERM, then
SIGKILL of that PID and of the replica's own tritonserver process group); shared-memory
regions made meanwhile that no live process maps are removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sst.benchmarks.common import tree_rss_kib
from sst.server_config import shm
from sst.server_config.launch_settings import LOOPBACK, pick_free_ports
from sst.server_config.proxy import NGINX_TEMP_DIRS, render_haproxy, render_nginx

__all__ = ["Replica", "Proxy", "start_replicas", "install_proxy", "door_metrics",
           "remove_left_regions", "alive"]

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "deploy" / "install_proxy.sh"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), ""


@dataclass
class Replica:
    """One ``sst serve`` process (the launcher) and what it printed once ready."""

    index: int
    proc: subprocess.Popen[str]
    endpoints: dict[str, str] = field(default_factory=dict)
    stderr_path: Path | None = None
    killed: bool = False

    @property
    def grpc_url(self) -> str:
        return self.endpoints["gRPC"]

    @property
    def health_url(self) -> str:
        return self.endpoints["health"]

    @property
    def server_pid(self) -> int | None:
        pid = self.endpoints.get("pid")
        return int(pid) if pid else None

    def rss_mib(self) -> float:
        """Resident memory of the launcher and everything under it (tritonserver, stubs)."""
        return sum(tree_rss_kib(self.proc.pid).values()) / 1024

    def kill(self) -> None:
        """``kill -9`` the replica: its launcher and its tritonserver's process group."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.server_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.server_pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdout.close()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (it drains and stops its server), then SIGKILL by PID if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.server_pid is not None and alive(self.server_pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.server_pid, signal.SIGKILL)
        self._close_pipe()
        return self.proc.returncode


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a reaped-but-listed zombie counts as gone
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _read_endpoints(replica: Replica, deadline: float) -> None:
    assert replica.proc.stdout is not None
    for line in replica.proc.stdout:
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            replica.endpoints[parts[0]] = parts[1].strip()
        if parts and parts[0] == "log" or time.monotonic() > deadline:
            return


def start_replicas(n: int, model_dir: Path, workdir: Path, timeout_s: float = 300.0,
                   extra_args: tuple[str, ...] = ()) -> list[Replica]:
    """Start ``n`` replicas of ``sst serve`` on free loopback ports (gRPC, HTTP,
    metrics, health), at once, and wait until every one is ready. On failure the ones
    started are stopped and the error names the replica and the end of its stderr."""
    replicas: list[Replica] = []
    try:
        for i in range(n):
            err = workdir / f"replica{i}.stderr"
            cmd = [sys.executable, "-m", "sst.server_config.launcher", "--model-repository",
                   str(model_dir), "--grpc-port", "0", "--metrics-port", "0", "--health-port",
                   "0", "--exit-timeout", "20", "--startup-timeout", str(int(timeout_s)),
                   *extra_args]
            with open(err, "w") as fh:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, text=True,
                                        stdin=subprocess.DEVNULL)
            replicas.append(Replica(i, proc, stderr_path=err))
        deadline = time.monotonic() + timeout_s
        readers = [threading.Thread(target=_read_endpoints, args=(r, deadline), daemon=True)
                   for r in replicas]
        for t in readers:
            t.start()
        for t in readers:
            t.join(max(1.0, deadline - time.monotonic()))
        for r in replicas:
            if "health" not in r.endpoints or "log" not in r.endpoints:
                tail = r.stderr_path.read_text()[-2000:] if r.stderr_path else ""
                raise RuntimeError(f"replica {r.index} did not become ready within "
                                   f"{timeout_s:g}s:\n{tail}")
            # keep draining its stdout so that it never blocks on a full pipe
            threading.Thread(target=_drain_stdout, args=(r.proc,), daemon=True).start()
        return replicas
    except BaseException:
        for r in replicas:
            r.stop(timeout_s=20)
        raise


def _drain_stdout(proc: subprocess.Popen[str]) -> None:
    if proc.stdout is not None:
        with contextlib.suppress(ValueError, OSError):
            for _ in proc.stdout:
                pass


def door_metrics(replica: Replica) -> dict[str, float]:
    """The replica's front-door counters: ``{"name{label=value}": value}``."""
    status, text = _get(replica.health_url + "/metrics")
    if status != 200:
        raise RuntimeError(f"replica {replica.index}: /metrics answered {status}")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def install_proxy(kind: str) -> str:
    """The proxy's binary, installed by ``deploy/install_proxy.sh`` when missing.

    Raises:
        RuntimeError: it is missing and cannot be installed here (the script says why).
    """
    binary = shutil.which(kind, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if binary:
        return binary
    res = subprocess.run(["bash", str(INSTALL_SCRIPT), kind], capture_output=True, text=True,
                         timeout=900)
    binary = shutil.which(kind, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if res.returncode != 0 or not binary:
        raise RuntimeError(f"{kind} is not installed and {INSTALL_SCRIPT.name} could not "
                           f"install it (status {res.returncode}): {res.stderr.strip()[-500:]}")
    return binary


class Proxy:
    """nginx or HAProxy in the foreground on a free loopback port, in front of
    ``replicas``; its access log says which replica took each call of each session
    (nginx)."""

    def __init__(self, kind: str, replicas: list[Replica]) -> None:
        if kind not in ("nginx", "haproxy"):
            raise ValueError(f"proxy must be nginx or haproxy, not {kind!r}")
        self.kind = kind
        self.binary = install_proxy(kind)
        (self.port,) = pick_free_ports(LOOPBACK, 1)
        self.url = f"{LOOPBACK}:{self.port}"
        self.prefix = Path(tempfile.mkdtemp(prefix=f"sst-{kind}-"))
        upstreams = []
        for r in replicas:
            host, port = r.grpc_url.rsplit(":", 1)
            health_port = int(r.health_url.rsplit(":", 1)[1])
            upstreams.append((host, int(port), health_port))
        if kind == "nginx":
            for sub in NGINX_TEMP_DIRS:
                (self.prefix / f"{sub}_temp").mkdir()
            conf = render_nginx(upstreams, self.url, prefix=self.prefix,
                                user="root" if os.geteuid() == 0 else None)
            self.config = self.prefix / "nginx.conf"
            cmd = [self.binary, "-p", str(self.prefix), "-c", str(self.config)]
        else:
            conf = render_haproxy(upstreams, self.url)
            self.config = self.prefix / "haproxy.cfg"
            cmd = [self.binary, "-db", "-f", str(self.config)]
        self.config.write_text(conf)
        self._log = open(self.prefix / "proxy.out", "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_listening(30.0)

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = (self.prefix / "proxy.out").read_text()[-2000:]
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{out}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (LOOPBACK, self.port), timeout=1.0):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on {self.url} within {timeout_s:g}s")

    def access_log(self) -> list[dict[str, str]]:
        """nginx's access log, one ``{session, replica, status, grpc}`` per call."""
        path = self.prefix / "access.log"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            rows.append(fields)
        return rows

    def stop(self) -> None:
        """Stop the proxy by its PID (its workers with it), and remove its folder."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers, should one outlive it
        self._log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)


def remove_left_regions(before: set[str]) -> list[str]:
    """Shared-memory regions made since ``before`` that no live process maps (a killed
    replica's): removed."""
    return sorted(shm.remove_orphans(candidates=shm.regions() - before))
