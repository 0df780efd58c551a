"""Tests for sst.server_config.launcher (the ``triton`` ones start a real tritonserver)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sst.client import Client
from sst.client._client import refusal_reason
from sst.client.errors import ServerUnavailable
from sst.server_config import install as install_mod
from sst.server_config import launcher
from sst.server_config.launcher import (
    LauncherError,
    LaunchSettings,
    TritonServer,
    cpu_settings,
    find_tritonserver,
    gpu_settings,
    prepare_backend_dir,
)

from .fakes import image, mask, png

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
STUB = "triton_python_backend_stub"

MODEL_CONFIG = """\
name: "double"
backend: "python"
max_batch_size: 8
dynamic_batching { }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

MODEL_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


SLEEPY_CONFIG = MODEL_CONFIG.replace('name: "double"', 'name: "sleepy"')

# Sleeps INPUT0[0] seconds, then answers: an in-flight request that a stop must wait for.
SLEEPY_PY = """\
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # touched when a request is inside the model (a test waits for it)
        self.entered = Path(args["model_repository"]) / "entered"

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            self.entered.touch()
            time.sleep(float(x.flat[0]))
            out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

# Kills its own tritonserver (the stub's parent) while loading: a start that dies hard.
KILLER_PY = """\
import os
import signal


class TritonPythonModel:
    def initialize(self, args):
        os.kill(os.getppid(), signal.SIGKILL)
"""


def _wheel_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _write_repo(root: Path, models: dict[str, tuple[str, str]] | None = None) -> Path:
    """A repository of Python models, name -> (config.pbtxt, model.py); default: double."""
    for name, (config, code) in (models or {"double": (MODEL_CONFIG, MODEL_PY)}).items():
        model = root / name
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(config)
        (model / "1" / "model.py").write_text(code)
    return root


def _free_settings(**overrides: object) -> LaunchSettings:
    # (stop() returns once the server is gone; the timeout only leaves room to unload on
    # a loaded machine, where tritonserver would exit 1 if it ran out)
    return cpu_settings(grpc_port=0, http_port=0, metrics_port=0, exit_timeout=30, **overrides)


def _end_launcher(proc: subprocess.Popen, server_pid: int | None) -> None:
    """After a failed check: end the launcher we started (SIGTERM, so that it stops its
    server; SIGKILL after 30 s), then its tritonserver's process group if that outlived
    it (started with a session of its own, it is not in the launcher's group)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if server_pid is not None and not _pid_gone(server_pid):
        os.killpg(server_pid, signal.SIGKILL)


def _listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(fd) if fd.is_symlink() else ""
        match = re.fullmatch(r"socket:\[(\d+)\]", with_target)
        if match:
            inodes.add(match.group(1))
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc/net stores the address as native-endian 32-bit words
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            family = socket.AF_INET if width == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, words), int(hex_port, 16)))
    return found


def _group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _read_endpoints(proc: subprocess.Popen, endpoints: dict[str, str]) -> None:
    """Read into ``endpoints`` what ``sst serve`` prints, one ``NAME VALUE`` line each, up
    to its log (filled as it goes, so a caller's cleanup sees the pid however it ends)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        key, value = line.split(maxsplit=1)
        endpoints[key] = value.strip()
        if key == "log":
            break


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---------------------------------------------------------------------------------------
# Locating and preparing an installation (no server)
# ---------------------------------------------------------------------------------------


def test_find_tritonserver_finds_wheel_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(launcher.ENV_TRITONSERVER, raising=False)
    install = find_tritonserver()
    wheel = _wheel_dir()
    assert install.binary == wheel / "tritonserver" / "bin" / "tritonserver"
    assert install.kind == "pytriton"
    assert install.backends_dir == wheel / "tritonserver" / "backends"
    assert wheel.parent / "nvidia_pytriton.libs" in install.lib_dirs
    assert install.python_stub == wheel / "tritonserver" / "python_backend_stubs" / PY / STUB
    assert os.access(install.binary, os.X_OK)


def test_find_tritonserver_explicit_bad_path(tmp_path: Path) -> None:
    bad = tmp_path / "no" / "such" / "tritonserver"
    with pytest.raises(LauncherError, match=re.escape(str(bad))) as info:
        find_tritonserver(bad)
    assert "pip install nvidia-pytriton" in str(info.value)


def test_find_tritonserver_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "tritonserver"
    link.symlink_to(_wheel_dir() / "tritonserver" / "bin" / "tritonserver")
    monkeypatch.setenv(launcher.ENV_TRITONSERVER, str(link))
    install = find_tritonserver()
    assert install.binary == link
    assert install.kind == "pytriton"  # layout detected through the symlink
    assert launcher.ENV_TRITONSERVER in install.origin

    monkeypatch.setenv(launcher.ENV_TRITONSERVER, str(tmp_path / "missing"))
    with pytest.raises(LauncherError, match=launcher.ENV_TRITONSERVER):
        find_tritonserver()


def test_find_tritonserver_nothing_found_lists_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(launcher.ENV_TRITONSERVER, raising=False)
    monkeypatch.setattr(install_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(install_mod, "_CONTAINER_BINARY", tmp_path / "opt" / "tritonserver")
    with pytest.raises(LauncherError) as info:
        find_tritonserver()
    message = str(info.value)
    for place in ("SST_TRITONSERVER", "nvidia-pytriton", "PATH", str(tmp_path / "opt")):
        assert place in message
    assert "pip install nvidia-pytriton" in message
    assert "container" in message


def test_prepare_backend_dir_places_stub_and_is_idempotent(tmp_path: Path) -> None:
    install = find_tritonserver(_wheel_dir() / "tritonserver" / "bin" / "tritonserver")
    dest = tmp_path / "backends"
    result = prepare_backend_dir(install, dest)
    assert result == dest
    stub = dest / "python" / STUB
    assert (dest / "python" / "libtriton_python.so").is_file()
    assert stub.is_file() and os.access(stub, os.X_OK)
    assert install.python_stub is not None
    assert stub.read_bytes() == install.python_stub.read_bytes()
    assert not (install.backends_dir / "python" / STUB).exists()  # wheel left untouched

    sentinel = dest / "python" / "sentinel"
    sentinel.write_text("still here")
    inode = stub.stat().st_ino
    assert prepare_backend_dir(install, dest) == dest
    assert sentinel.read_text() == "still here"  # reused, not copied again
    assert stub.stat().st_ino == inode


def test_prepare_backend_dir_errors(tmp_path: Path) -> None:
    install = find_tritonserver(_wheel_dir() / "tritonserver" / "bin" / "tritonserver")
    no_stub = dataclasses.replace(install, python_stub=None)
    with pytest.raises(LauncherError, match=rf"no Python backend stub for Python {PY}"):
        prepare_backend_dir(no_stub, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(LauncherError, match="refusing to overwrite"):
        prepare_backend_dir(install, foreign)
    assert (foreign / "precious.txt").read_text() == "x"


def test_launch_settings() -> None:
    cpu = cpu_settings()
    assert (cpu.name, cpu.host, cpu.model_control) == ("cpu", "127.0.0.1", "none")
    assert (cpu.grpc_port, cpu.http_port, cpu.metrics_port) == (8001, 8000, 8002)
    gpu = gpu_settings(grpc_port=9001, extra_args=["--log-info=false"])
    assert (gpu.name, gpu.grpc_port, gpu.extra_args) == ("gpu", 9001, ("--log-info=false",))
    with pytest.raises(ValueError, match="explicit model control"):
        cpu_settings(model_control="explicit")
    with pytest.raises(ValueError, match="set by the launcher"):
        cpu_settings(extra_args=("--grpc-address=0.0.0.0",))
    with pytest.raises(ValueError, match="must differ"):
        cpu_settings(http_port=8001)


def test_gpu_settings_without_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi reachable
    server = TritonServer(tmp_path, gpu_settings(), workdir=tmp_path / "work")
    with pytest.raises(LauncherError, match=re.escape("no NVIDIA GPU found (nvidia-smi missing)")):
        server.start()
    assert server.pid is None


def test_serve_starts_with_the_profile_the_export_recorded(tmp_path) -> None:
    import json

    export = tmp_path / "export"
    export.mkdir()
    meta = {"model": "m", "geometry": {"image_size": 256}, "serving_profile": "gpu"}
    (export / "sst_model.json").write_text(json.dumps(meta))
    assert launcher._recorded_profile(export) == "gpu"
    (export / "sst_model.json").write_text(json.dumps({**meta, "serving_profile": None}))
    assert launcher._recorded_profile(export) == "cpu"  # exports from before the field
    assert launcher._recorded_profile(tmp_path / "plain") == "cpu"  # not an export


def test_arg_parser_defaults() -> None:
    import argparse

    from sst.client.arguments import add_serve_args

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(["--model-repository", "repo"])
    assert (args.profile, args.host) == (None, "127.0.0.1")  # None: the export's own
    assert (args.grpc_port, args.http_port, args.metrics_port) == (8001, None, 8002)
    assert args.model_repository == Path("repo")
    assert (args.max_sessions, args.session_idle_seconds, args.exit_timeout) == (64, 600.0, 10)
    assert (args.token, args.admin_token, args.tls_cert, args.insecure) == (None, None, None, False)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --model-repository is required
    for bad in (["--max-sessions", "0"], ["--session-idle-seconds", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--model-repository", "repo", *bad])


def test_serve_refuses_network_bind_without_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SST_TOKEN", raising=False)
    repo = ["--model-repository", str(tmp_path)]
    assert launcher.main([*repo, "--host", "0.0.0.0"]) == 2  # a usage error
    err = capsys.readouterr().err
    assert "binding 0.0.0.0" in err and "TLS (--tls-cert and --tls-key)" in err
    assert "--insecure" in err
    assert launcher.main([*repo, "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    # --insecure is allowed, loudly; this run then stops at the missing tritonserver
    missing = tmp_path / "no-tritonserver"
    args = [*repo, "--host", "0.0.0.0", "--insecure", "--tritonserver", str(missing)]
    assert launcher.main(args) == 1
    err = capsys.readouterr().err
    assert "WARNING: --insecure: serving 0.0.0.0 without TLS and an access token" in err
    assert f"tritonserver not found at {missing}" in err


class _FakeServer:
    """Stands in for a TritonServer: a process that lives and has stubs as told."""

    def __init__(self) -> None:
        self.running = True
        self.stubs = {11, 12, 13}
        self.pid = 10

    def is_running(self) -> bool:
        return self.running

    def stub_pids(self) -> set[int]:
        return set(self.stubs)


def test_supervisor_detects_lost_processes_and_bounds_restarts() -> None:
    from sst.server_config.supervisor import Supervisor

    fake = _FakeServer()
    now = [0.0]
    sup = Supervisor(fake, max_restarts=2, restart_window_s=60,  # type: ignore[arg-type]
                     clock=lambda: now[0])
    known = fake.stub_pids()
    assert sup.check(known) is None
    fake.stubs.add(14)  # a new stub is taken in, not a problem
    assert sup.check(known) is None and 14 in known
    fake.stubs -= {12}
    assert sup.check(known) == "Python-backend stub process(es) 12 of tritonserver died"
    assert sup.check(known) is None  # reported once
    fake.running = False
    assert sup.check(known) == "tritonserver (pid 10) exited"

    assert sup._allow_restart() and sup._allow_restart()
    assert not sup._allow_restart()  # a third restart within 60 s: give up
    now[0] = 61.0
    assert sup._allow_restart()  # the window has moved on


# ---------------------------------------------------------------------------------------
# Real servers on loopback
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("work")
    srv = TritonServer(repo, _free_settings(), workdir=work)
    srv.start(timeout_s=90)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.triton
def test_infer_doubles_input(server: TritonServer) -> None:
    import tritonclient.grpc as grpcclient

    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_model_ready("double")
        result = client.infer("double", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
        out = result.as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, x * 2)
        assert out.dtype == np.float32
        # explicit model control is not exposed to clients
        with pytest.raises(grpcclient.InferenceServerException):
            client.unload_model("double")
        assert client.is_model_ready("double")
    finally:
        client.close()


@pytest.mark.triton
def test_server_binds_loopback_only(server: TritonServer) -> None:
    assert server.pid is not None
    assert server.grpc_url.startswith("127.0.0.1:")
    assert "--metrics-address=127.0.0.1" in server.command
    assert "--model-control-mode=none" in server.command
    # behind the front door tritonserver listens on a Unix socket only this user opens,
    # and serves no HTTP
    assert "--allow-http=false" in server.command
    assert server.triton_grpc_url.startswith("unix:")
    socket_dir = Path(server.triton_grpc_url[len("unix:"):]).parent
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    with pytest.raises(LauncherError, match="gRPC only"):
        server.http_url  # noqa: B018 (the property raises)

    listening = _listening_addresses(server.pid)
    metrics_port = int(server.metrics_url.rsplit(":", 1)[1].split("/")[0])
    assert {port for _, port in listening} == {metrics_port}, listening
    assert {addr for addr, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    # clients reach it through the front door, which this process runs, on loopback too
    front = _listening_addresses(os.getpid())
    assert (("127.0.0.1", int(server.grpc_url.rsplit(":", 1)[1])) in front
            or ("::ffff:127.0.0.1", int(server.grpc_url.rsplit(":", 1)[1])) in front), front

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.metrics_url, timeout=5) as response:
        assert response.status == 200
        assert b"nv_inference_request_success" in response.read()


@pytest.mark.triton
def test_stop_after_sigterm_is_clean(repo: Path, tmp_path: Path) -> None:
    with TritonServer(repo, _free_settings(), workdir=tmp_path) as srv:
        pid = srv.pid
        assert pid is not None and srv.is_running()
        assert len(_group_members(pid)) >= 2  # tritonserver + Python backend stub
    assert srv.returncode == 0
    assert _pid_gone(pid)
    assert _group_members(pid) == []  # stub processes gone too
    assert srv.stop() == 0  # idempotent
    assert "Signal (15) received" in "\n".join(srv.log_tail())


@pytest.mark.triton
def test_bad_model_repository_reports_log(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    srv = TritonServer(missing, _free_settings(), workdir=tmp_path / "work")
    with pytest.raises(LauncherError) as info:
        srv.start(timeout_s=60)
    message = str(info.value)
    assert "exited with code" in message
    assert f"failed to stat file {missing}" in message  # a line from the server log
    assert "Last " in message and "  | " in message
    assert srv.pid is not None and _pid_gone(srv.pid)


@pytest.mark.triton
def test_cli_module_stops_on_sigterm(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    cmd = [
        sys.executable,
        "-m",
        "sst.server_config.launcher",
        "--model-repository",
        str(repo),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--log-file",
        str(log),
        "--startup-timeout",
        "90",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        endpoints: dict[str, str] = {}
        try:
            deadline = time.monotonic() + 90
            while "log" not in endpoints and time.monotonic() < deadline:
                try:
                    key, value = lines.get(timeout=1).split(maxsplit=1)
                except queue.Empty:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    continue
                endpoints[key] = value.strip()
            assert {"gRPC", "metrics", "pid"} <= endpoints.keys(), endpoints
            assert "HTTP" not in endpoints  # gRPC only
            assert endpoints["gRPC"].startswith("127.0.0.1:")
            import tritonclient.grpc as grpcclient

            ready = grpcclient.InferenceServerClient(endpoints["gRPC"])
            try:
                assert ready.is_server_ready()
            finally:
                ready.close()

            server_pid = int(endpoints["pid"])
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            _end_launcher(proc, int(endpoints["pid"]) if "pid" in endpoints else None)
            reader.join(timeout=10)
        assert code == 0, proc.stderr.read() if proc.stderr else ""
        assert elapsed < 10
        assert _pid_gone(server_pid)
    assert "Signal (15) received" in log.read_text()


@pytest.mark.triton
def test_failed_start_leaves_no_shared_memory(tmp_path: Path) -> None:
    from sst.server_config import shm

    killer = MODEL_CONFIG.replace('name: "double"', 'name: "killer"')
    repo = _write_repo(tmp_path / "repo", {"killer": (killer, KILLER_PY)})
    before = shm.regions()
    srv = TritonServer(repo, _free_settings(), workdir=tmp_path / "work")
    with pytest.raises(LauncherError, match=r"exited with code -9 before becoming ready"):
        srv.start(timeout_s=60)
    assert srv.pid is not None and _pid_gone(srv.pid)
    live = shm.mapped_regions()  # other servers on this machine keep theirs
    assert {r for r in shm.regions() - before if r not in live} == set()


@pytest.mark.triton
def test_sigterm_drains_in_flight_request(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    repo = _write_repo(tmp_path / "repo", {"sleepy": (SLEEPY_CONFIG, SLEEPY_PY)})
    cmd = [sys.executable, "-m", "sst.server_config.launcher", "--model-repository", str(repo),
           "--grpc-port", "0", "--metrics-port", "0",
           "--exit-timeout", "10", "--startup-timeout", "90"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        endpoints: dict[str, str] = {}
        try:
            _read_endpoints(proc, endpoints)
            assert "gRPC" in endpoints, proc.stderr.read() if proc.stderr else ""
            client = grpcclient.InferenceServerClient(endpoints["gRPC"])
            x = np.full((1, 1), 3.0, dtype=np.float32)  # the model sleeps 3 s
            inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
            inp.set_data_from_numpy(x)
            answers: list[object] = []
            request = threading.Thread(
                target=lambda: answers.append(client.infer("sleepy", [inp], client_timeout=20))
            )
            request.start()
            entered = repo / "sleepy" / "entered"
            deadline = time.monotonic() + 30
            while not entered.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert entered.exists(), "the request never reached the model"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            elapsed = time.monotonic() - started
            request.join(10)
            client.close()
        finally:
            _end_launcher(proc, int(endpoints["pid"]) if "pid" in endpoints else None)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert len(answers) == 1, "the in-flight request did not get its answer"
    np.testing.assert_array_equal(answers[0].as_numpy("OUTPUT0"), x * 2)  # type: ignore[attr-defined]
    assert 1.0 < elapsed < 10.0  # waited for the request, within the bound


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


@pytest.mark.triton
@pytest.mark.slow
def test_sigterm_drains_open_sessions_and_exits_0_within_the_exit_timeout(
        exported_repo: Path) -> None:
    """Before the drain, one idle open session made SIGTERM wait the whole exit timeout
    and exit 1 ("Exit timeout expired": tritonserver counts an open sequence as in
    flight). Now new sessions are refused (reason draining), frames of open ones are
    still answered during the drain, the rest are ended by the server, and it exits 0."""
    exit_timeout, drain = 20, 5  # (unloading the models takes 3-8 s of the rest)
    cmd = [sys.executable, "-m", "sst.server_config.launcher", "--model-repository",
           str(exported_repo), "--grpc-port", "0", "--metrics-port", "0",
           "--health-port", "0", "--exit-timeout", str(exit_timeout), "--drain-seconds",
           str(drain), "--startup-timeout", "120"]
    support, support_mask, query = png(image(0, (64, 64))), png(mask((64, 64))), png(image(1))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        endpoints: dict[str, str] = {}
        try:
            _read_endpoints(proc, endpoints)
            assert "health" in endpoints, proc.stderr.read() if proc.stderr else ""
            health = endpoints["health"]
            assert _get(health + "/ready") == 200 and _get(health + "/live") == 200
            client = Client(endpoints["gRPC"], retry_for=2.0, timeout=60)
            idle = client.open_session([support], [support_mask])
            idle.segment(query)
            live = client.open_session([support], [support_mask])
            live.segment(query)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            deadline = started + 5
            while _get(health + "/ready") != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _get(health + "/ready") == 503  # out of the proxy's rotation at once
            assert _get(health + "/live") == 200
            live.segment(query)  # an open session is still served while it drains
            assert live.reprimes == 0
            with pytest.raises(ServerUnavailable) as refused:
                client.open_session([support], [support_mask])
            assert refusal_reason(refused.value) == "draining"
            assert time.monotonic() - started < drain  # all of it inside the drain period
            code = proc.wait(timeout=exit_timeout + 30)
            elapsed = time.monotonic() - started
            client.close()
        finally:
            _end_launcher(proc, int(endpoints["pid"]) if "pid" in endpoints else None)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert elapsed < drain + exit_timeout, (elapsed, stderr)  # (code 0: it did not run out)
    assert "ended 2 open session(s)" in stderr  # the idle one and the live one
    assert _pid_gone(int(endpoints["pid"]))


def _serve_cli(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sst.client.cli", "serve",
                           "--model-repository", str(repo), "--grpc-port", "0",
                           "--metrics-port", "0"], capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_folder_it_cannot_serve_in_one_line(tmp_path: Path) -> None:
    """A missing path, an empty folder, a folder of results and one without a model: one
    line naming the folder and what was expected, status 2, and tritonserver never ran."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.json").write_text("{}")
    (tmp_path / "nomodel" / "x").mkdir(parents=True)
    cases = {tmp_path / "missing": "no such folder", tmp_path / "empty": "the folder is empty",
             tmp_path / "results": "this folder holds the results of `sst segment`",
             tmp_path / "nomodel": "no model in it"}
    for repo, what in cases.items():
        started = time.monotonic()
        res = _serve_cli(repo)
        assert time.monotonic() - started < 10
        assert res.returncode == 2, res.stderr
        lines = (res.stdout + res.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: --model-repository {repo}: {what}"), lines
        assert "`sst export` folder" in lines[0]


@pytest.mark.triton
def test_serve_names_a_model_that_cannot_load_in_one_line(tmp_path: Path) -> None:
    """A Python model without its model.py: tritonserver waits for it forever; the
    launcher sees the stub's failure in the log and stops at once, naming it."""
    repo = _write_repo(tmp_path / "repo")
    next((repo / "double" / "1").glob("model.py")).unlink()
    started = time.monotonic()
    res = _serve_cli(repo)
    assert time.monotonic() - started < 45
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.py" in errors[0], res.stderr
    assert "  | " not in res.stderr  # the log's tail stays in the log
