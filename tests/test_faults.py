"""Faults of a supervised server on loopback: a dead model process, a killed server.

One supervised server on the exported 256-px repository, served from a run folder, for the
whole module. Each test kills only processes that server started (by pid) and checks that
it came back within the bound, and that no shared memory of the killed processes is left.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from sst.client import Client
from sst.server_config import shm
from sst.server_config.launcher import TritonServer, cpu_settings
from sst.server_config.run_folder import build_run_repository
from sst.server_config.supervisor import Supervisor
from sst.tracker.serving.limits import ServiceConfig

from .synthetic import specimen

pytestmark = [pytest.mark.triton, pytest.mark.slow]

#: Ready again after a fault, at most: a restart of the full repository takes 5-10 s on
#: two idle cores; the bound leaves room for a loaded CI machine (it says the server
#: comes back by itself, not how fast: the supervisor's startup timeout is 180 s).
RECOVERY_BOUND_S = 60.0


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime, sha256 of the first MiB) of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read(1 << 20)).hexdigest()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture(scope="module")
def run_repo(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    before = _snapshot(exported_repo)
    repo = build_run_repository(
        exported_repo,
        tmp_path_factory.mktemp("run") / "repository",
        "cpu",
        ServiceConfig(max_sessions=6, idle_seconds=45),
    )
    yield repo
    assert _snapshot(exported_repo) == before, "serving modified the export folder"


@pytest.fixture(scope="module")
def supervised(
    run_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonServer, Supervisor]]:
    work = tmp_path_factory.mktemp("work")
    # (the full repository's models need more than 5 s to unload on a loaded machine;
    # a SIGTERM with a session open waits the whole timeout, see the sigterm fault)
    settings = cpu_settings(grpc_port=0, http_port=0, metrics_port=0, exit_timeout=15)
    server = TritonServer(run_repo, settings, workdir=work, log_path=work / "server.log")
    sup = Supervisor(server, startup_timeout_s=180, poll_s=0.25, max_restarts=8)
    stop, ready = threading.Event(), threading.Event()
    result: dict[str, int] = {}

    def run() -> None:
        result["code"] = sup.run(stop, on_ready=ready.set)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(200), "server did not become ready"
        yield server, sup
    finally:
        stop.set()
        thread.join(60)
        if thread.is_alive() or server.is_running():
            server.stop(timeout_s=5)
    assert result.get("code") == 0, result


@pytest.fixture(scope="module")
def data() -> tuple[bytes, bytes, list[bytes]]:
    support, mask = specimen(0)
    queries = [_png(specimen(50 + i, size=(240, 260))[0]) for i in range(3)]
    return _png(support), _png(mask), queries


def _watch_readiness(
    server: TritonServer, stop: threading.Event, seen: list[tuple[float, bool]]
) -> None:
    """Record (time, ready) every 0.1 s until ``stop``; down counts as not ready."""
    import tritonclient.grpc as grpcclient

    url = server.grpc_url
    # A private subchannel: no reconnect backoff carried over from earlier channels.
    private = [("grpc.use_local_subchannel_pool", 1)]
    while not stop.is_set():
        client = grpcclient.InferenceServerClient(url, channel_args=private)
        try:
            ok = bool(client.is_server_ready(client_timeout=1))
        except Exception:
            ok = False
        finally:
            client.close()
        seen.append((time.monotonic(), ok))
        stop.wait(0.1)


def _recover(
    server: TritonServer, kill: Callable[[], None], data: tuple[bytes, bytes, list[bytes]]
) -> tuple[float, float, float]:
    """Kill something with ``kill()`` mid-session; return (kill time, s to ready, s to answer)."""
    support, mask, queries = data
    seen: list[tuple[float, bool]] = []
    stop = threading.Event()
    with Client(server.grpc_url, retry_for=RECOVERY_BOUND_S + 30) as client:
        with client.open_session([support], [mask]) as session:
            first = session.segment(queries[0])
            watcher = threading.Thread(target=_watch_readiness, args=(server, stop, seen))
            watcher.start()
            try:
                killed_at = time.monotonic()
                kill()
                # the session was lost with the server: the client primes it again
                again = session.segment(queries[1])
                answered = time.monotonic() - killed_at
                deadline = time.monotonic() + 10
                while not (seen and seen[-1][1]) and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                stop.set()
                watcher.join(10)
    assert again.labels == first.labels and again.mask.shape == first.mask.shape
    ready_at = next(t for t, ok in seen if ok and t > _first_down(seen))
    return killed_at, ready_at - killed_at, answered


def _first_down(seen: list[tuple[float, bool]]) -> float:
    downs = [t for t, ok in seen if not ok]
    assert downs, "the server never reported not-ready while it restarted"
    return downs[0]


def test_run_folder_carries_the_session_knobs(
    supervised: tuple[TritonServer, Supervisor], run_repo: Path, exported_repo: Path
) -> None:
    import tritonclient.grpc as grpcclient

    server, _ = supervised
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        config = client.get_model_config("sst_tracker", as_json=True)["config"]
    finally:
        client.close()
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert float(params["session_idle_seconds"]) == 45
    instances = sum(int(g["count"]) for g in config["instance_group"])
    assert int(params["max_sessions"]) * instances >= 6 > (int(params["max_sessions"]) - 1) * (
        instances
    )
    weights = run_repo / "image_encoder" / "1" / "model.onnx"
    assert weights.is_symlink()
    assert weights.resolve() == (exported_repo / "image_encoder" / "1" / "model.onnx").resolve()
    assert not (run_repo / "image_encoder" / "config.pbtxt").is_symlink()


def test_dead_stub_restarts_the_server_within_bound(
    supervised: tuple[TritonServer, Supervisor], data: tuple[bytes, bytes, list[bytes]]
) -> None:
    server, sup = supervised
    old_pid = server.pid
    stubs = server.stub_pids()
    assert len(stubs) >= 6  # four components and two orchestrators, at least
    regions = set(shm.mapped_regions(pids=stubs))
    assert regions
    # the engine's process (sst_tracker), a stub of the server this module started: its
    # sessions die with it
    (victim,) = [p for p in stubs
                 if any("/sst_tracker/" in a for a in psutil.Process(p).cmdline())]
    restarts = len(sup.restarts)

    killed_at, to_ready, to_answer = _recover(server, lambda: os.kill(victim, signal.SIGKILL), data)
    print(f"\ndead stub: detected after {sup.detected[-1] - killed_at:.1f}s, ready again "
          f"after {to_ready:.1f}s, session answered after {to_answer:.1f}s "
          f"(restart itself: {sup.restarts[-1]:.1f}s)")
    # (a killed stub may be seen twice: Triton restarting it races the supervisor)
    assert next(t for t in sup.detected if t >= killed_at) - killed_at < 5
    assert to_ready <= RECOVERY_BOUND_S
    assert len(sup.restarts) > restarts
    assert server.pid != old_pid and server.is_running()
    assert not regions & shm.regions(), "regions of the killed server were left behind"


def test_killed_server_leaves_no_shared_memory(
    supervised: tuple[TritonServer, Supervisor], data: tuple[bytes, bytes, list[bytes]]
) -> None:
    server, sup = supervised
    pid = server.pid
    assert pid is not None
    regions = set(shm.mapped_regions(pids={pid}))
    assert regions

    def kill_group() -> None:
        os.killpg(pid, signal.SIGKILL)  # the group of the server this module started

    killed_at, to_ready, to_answer = _recover(server, kill_group, data)
    print(f"\nkilled server: detected after {sup.detected[-1] - killed_at:.1f}s, ready again "
          f"after {to_ready:.1f}s, session answered after {to_answer:.1f}s")
    assert to_ready <= RECOVERY_BOUND_S
    assert server.pid != pid
    assert not regions & shm.regions(), "the killed server's regions were not removed"


def test_run_folder_refuses_bad_input(exported_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is not an SST export \(no sst_model.json\)"):
        build_run_repository(tmp_path, tmp_path / "run", "cpu")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        build_run_repository(exported_repo, busy, "cpu")
    with pytest.raises(ValueError, match="max_sessions must be >= 1"):
        build_run_repository(exported_repo, tmp_path / "r2", "cpu", ServiceConfig(max_sessions=0))


def test_sst_serve_serves_a_run_folder_and_keeps_the_token_private(
    exported_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sst.server_config import launcher

    seen: dict[str, object] = {}

    def fake_serve(server: TritonServer, supervisor: Supervisor, health_port=None) -> int:
        repo = server.model_repository
        seen["repo"] = repo
        seen["tracker_config"] = (repo / "sst_tracker" / "config.pbtxt").read_text()
        token_file = repo.parent / "admin-token"
        seen["token"] = token_file.read_text().strip()
        seen["mode"] = token_file.stat().st_mode & 0o777
        seen["admin"] = server.settings.security.admin_token
        return 0

    monkeypatch.setattr(launcher, "serve_forever", fake_serve)
    monkeypatch.delenv("SST_ADMIN_TOKEN", raising=False)
    args = ["--model-repository", str(exported_repo), "--max-sessions", "5",
            "--session-idle-seconds", "30", "--grpc-port", "0"]
    assert launcher.main(args) == 0
    repo = seen["repo"]
    assert isinstance(repo, Path) and repo.name == "repository"
    assert not repo.is_relative_to(exported_repo)
    assert re.search(r'session_idle_seconds.*?string_value: "30', str(seen["tracker_config"]),
                     re.S)
    assert seen["token"] == seen["admin"] and seen["mode"] == 0o600
    assert not repo.parent.exists()  # the temporary run folder is gone

    kept = tmp_path / "run"
    assert launcher.main([*args, "--run-dir", str(kept)]) == 0
    assert (kept / "repository" / "sst_tracker" / "config.pbtxt").is_file()
    assert launcher.main([*args, "--run-dir", str(kept)]) == 2  # not empty: refused (a usage error)


def _journal_counts(out: Path) -> dict[str, int]:
    """How often the watcher journaled each image as segmented (``ok``)."""
    from sst.client.watch import JOURNAL

    counts: dict[str, int] = {}
    journal = out / JOURNAL
    for line in (journal.read_text().splitlines() if journal.exists() else []):
        rec = json.loads(line)
        if rec.get("status") == "ok" and not rec.get("recovered"):
            counts[rec["name"]] = counts.get(rec["name"], 0) + 1
    return counts


@pytest.mark.parametrize("fault", ["kill-stub", "kill-server", "sigterm-server",
                                   "restart-watcher"])
def test_twenty_images_none_lost_or_done_twice(
    supervised: tuple[TritonServer, Supervisor], tmp_path: Path, fault: str
) -> None:
    """`sst watch` over 20 images; after the 5th, a fault: the engine's process killed,
    the server killed, the server stopped with SIGTERM (the supervisor restarts it), or
    the watcher itself stopped and started again. Every image ends segmented once."""
    from sst.client.watch import run_watch

    server, sup = supervised
    restarts = len(sup.restarts)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    support, mask = specimen(0)
    (tmp_path / "s.png").write_bytes(_png(support))
    (tmp_path / "m.png").write_bytes(_png(mask))
    names = [f"img{i:02d}.png" for i in range(20)]

    def land(batch: list[str]) -> None:  # images arrive as a rig writes them
        for name in batch:
            i = names.index(name)
            (folder / name).write_bytes(_png(specimen(60 + i, shift=0.01 * (i % 5))[0]))

    land(names[:5])
    supports = [(tmp_path / "s.png", tmp_path / "m.png")]
    injected = threading.Event()
    deadline = time.monotonic() + 240

    def stop() -> bool:
        """The watcher's stop() hook, between its passes: once the first 5 images are
        done, the other 15 land and the fault strikes; stop when all 20 are done."""
        done = len(_journal_counts(out))
        if not injected.is_set() and done >= 5:
            injected.set()
            land(names[5:])
            if fault == "kill-stub":
                (victim,) = [p for p in server.stub_pids() if any(
                    "/sst_tracker/" in a for a in psutil.Process(p).cmdline())]
                os.kill(victim, signal.SIGKILL)
            elif fault == "kill-server":
                os.killpg(server.pid, signal.SIGKILL)  # type: ignore[arg-type]
            elif fault == "sigterm-server":
                stopping = psutil.Process(server.pid)  # type: ignore[arg-type]
                stopping.terminate()
                # drained and gone (the open session holds it its exit timeout): the next
                # images meet the outage
                stopping.wait(server.settings.exit_timeout + 30)
            else:  # restart-watcher: this watcher stops here, a new one takes over
                return True
        return done >= 20 or time.monotonic() > deadline

    with Client(server.grpc_url, retry_for=RECOVERY_BOUND_S + 30) as client:
        run_watch(client, folder, supports, out, settle=0.2, poll=0.1, stop=stop,
                  formats=("png",))
        assert injected.is_set()
        if fault == "restart-watcher":
            run_watch(client, folder, supports, out, settle=0.2, poll=0.1, stop=stop,
                      formats=("png",))
    if fault != "restart-watcher":  # the supervisor brought the server back (once, or
        # twice when Triton's own stub restart races its detection)
        assert len(sup.restarts) > restarts and server.is_running()
    counts = _journal_counts(out)
    assert sorted(counts) == names, f"lost: {sorted(set(names) - set(counts))}"
    assert set(counts.values()) == {1}, f"done twice: {[n for n, c in counts.items() if c > 1]}"
    assert sorted(p.name for p in out.glob("*.png")) == names
