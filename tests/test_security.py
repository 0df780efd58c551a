"""TLS, access and admin tokens of ``sst serve`` (the ``triton`` ones start a real server)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from sst.server_config.launch_settings import check_ports_free
from sst.server_config.launcher import LauncherError, TritonServer, cpu_settings
from sst.server_config.security import (
    ACCESS_HEADER,
    ADMIN_API_GROUPS,
    ADMIN_HEADER,
    CLIENT_API_GROUPS,
    ENV_ADMIN_TOKEN,
    ENV_TOKEN,
    GRPC_ACCESS_HEADER,
    GRPC_ADMIN_HEADER,
    Security,
    TlsFiles,
    is_loopback,
)

from .test_launcher import _write_repo

ACCESS = "access-token-0123456789"
ADMIN = "admin-token-0123456789"


# ---------------------------------------------------------------------------------------
# Without a server
# ---------------------------------------------------------------------------------------


def _pem_files(root: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, a server certificate it signed (127.0.0.1, localhost) and a client
    certificate it signed (``root/client.pem``, ``root/client.key``).

    Returns (CA, server certificate, server key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey):
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (root / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (root / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("sst test CA", name("sst test CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = (
        builder("localhost", ca.subject, server_key)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write("server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client", builder("sst test client", ca.subject, client_key).sign(
        ca_key, hashes.SHA256()), client_key)
    return root / "ca.pem", root / "server.pem", root / "server.key"


def test_network_bind_needs_tls_and_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TLS \(--tls-cert and --tls-key\) and an access token"):
        cpu_settings(host="0.0.0.0")
    ca, cert, key = _pem_files(tmp_path)
    tls = TlsFiles(cert, key)
    with pytest.raises(ValueError, match="an access token") as info:
        cpu_settings(host="0.0.0.0", security=Security(tls=tls))
    assert "TLS" not in str(info.value)
    with pytest.raises(ValueError, match="TLS"):
        cpu_settings(host="192.0.2.1", security=Security(access_token=ACCESS))
    settings = cpu_settings(host="0.0.0.0", security=Security(tls=tls, access_token=ACCESS))
    assert settings.local_host == "127.0.0.1"  # HTTP has no TLS: it stays on loopback
    insecure = cpu_settings(host="0.0.0.0", security=Security(insecure=True))
    assert insecure.local_host == "127.0.0.1"  # behind the front door HTTP stays local
    direct = cpu_settings(host="0.0.0.0", security=Security(insecure=True),
                         max_request_bytes=None)
    assert direct.local_host == "0.0.0.0"  # tritonserver serving every protocol itself
    assert cpu_settings(host="::1").security.access_token is None  # loopback: allowed
    assert [is_loopback(h) for h in ("127.0.0.2", "::1", "localhost", "0.0.0.0", "lab")] == [
        True, True, True, False, False,
    ]


def test_security_flags_and_tokens(tmp_path: Path) -> None:
    ca, cert, key = _pem_files(tmp_path)
    sec = Security(admin_token=ADMIN, access_token=ACCESS, tls=TlsFiles(cert, key, ca))
    args = sec.triton_args()
    assert "--grpc-use-ssl=true" in args and "--grpc-use-ssl-mutual=true" in args
    assert f"--grpc-server-cert={cert}" in args and f"--grpc-root-cert={ca}" in args
    admin = f"{','.join(ADMIN_API_GROUPS)}:{ADMIN_HEADER}={ADMIN}"
    client = f"{','.join(CLIENT_API_GROUPS)}:{ACCESS_HEADER}={ACCESS}"
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        assert f"{flag}={admin}" in args and f"{flag}={client}" in args
    assert sec.redact(f"x {ADMIN} {ACCESS}") == "x *** ***"
    behind_door = sec.triton_args(tls=False)  # the front door does TLS; Triton the tokens
    assert not any(a.startswith("--grpc-use-ssl") for a in behind_door)
    assert [a for a in args if "restricted" in a] == [a for a in behind_door if "restricted" in a]

    loopback = Security()
    assert len(loopback.admin_token) >= 32 and loopback.admin_token != Security().admin_token
    assert not any(ACCESS_HEADER in a for a in loopback.triton_args())  # client APIs open

    env = Security.from_env(environ={"SST_TOKEN": ACCESS, "SST_ADMIN_TOKEN": ADMIN})
    assert (env.access_token, env.admin_token) == (ACCESS, ADMIN)
    assert Security.from_env(access_token="other-token-0123456789", environ={
        "SST_TOKEN": ACCESS}).access_token == "other-token-0123456789"
    with pytest.raises(ValueError, match="16-256 characters"):
        Security(access_token="short")
    with pytest.raises(ValueError, match="16-256 characters"):
        Security(admin_token="has:colon=and,comma-0123456789")
    with pytest.raises(ValueError, match="must differ"):
        Security(admin_token=ADMIN, access_token=ADMIN)
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ValueError, match=r"not PEM"):
        TlsFiles(tmp_path / "not.pem", key)
    with pytest.raises(ValueError, match="is not a file"):
        TlsFiles(cert, tmp_path / "missing.key")


def test_busy_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LauncherError, match=rf"gRPC port {port} on 127.0.0.1 cannot be "
                           r"bound: it is already in use.*--grpc-port"):
            check_ports_free({"gRPC": ("127.0.0.1", port)})
        settings = cpu_settings(grpc_port=0, metrics_port=port)
        srv = TritonServer(_write_repo(tmp_path / "repo"), settings, workdir=tmp_path / "w")
        with pytest.raises(LauncherError, match=rf"metrics port {port} .*--metrics-port"):
            srv.start(timeout_s=30)
        assert srv.pid is None  # refused before tritonserver ran


# ---------------------------------------------------------------------------------------
# A TLS server with both tokens, on loopback
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    root = tmp_path_factory.mktemp("secure")
    ca, cert, key = _pem_files(root)
    security = Security(admin_token=ADMIN, access_token=ACCESS, tls=TlsFiles(cert, key))
    settings = cpu_settings(grpc_port=0, http_port=0, metrics_port=0, exit_timeout=30,
                          security=security)
    srv = TritonServer(_write_repo(root / "repo"), settings, workdir=root / "work")
    srv.start(timeout_s=90)
    try:
        yield srv, ca
    finally:
        assert srv.stop() == 0


def _tls_client(server: TritonServer, ca: Path):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(
        server.grpc_url, ssl=True, root_certificates=str(ca)
    )


def _refused(call: Callable[[], object]) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value)


@pytest.mark.triton
def test_tls_client_with_ca_works_and_plaintext_is_refused(
    secure: tuple[TritonServer, Path],
) -> None:
    import tritonclient.grpc as grpcclient

    server, ca = secure
    client = _tls_client(server, ca)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        out = client.infer("double", [inp], headers={GRPC_ACCESS_HEADER: ACCESS})
        np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), x * 2)
        assert client.is_server_ready(headers={GRPC_ACCESS_HEADER: ACCESS})
        # the access token is checked: none, or a wrong one, is refused
        wrong = "wrong-token-0123456789"
        for headers in ({}, {GRPC_ACCESS_HEADER: wrong}, {GRPC_ADMIN_HEADER: ADMIN}):
            message = _refused(lambda h=headers: client.infer("double", [inp], headers=h))
            assert "restricted" in message.lower() or "permission" in message.lower(), message
        _refused(lambda: client.is_server_ready())
        _refused(lambda: client.get_model_config("double"))
    finally:
        client.close()

    plain = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        _refused(lambda: plain.is_server_live(headers={GRPC_ACCESS_HEADER: ACCESS},
                                              client_timeout=5))
    finally:
        plain.close()


@pytest.mark.triton
def test_admin_apis_need_the_admin_token(secure: tuple[TritonServer, Path]) -> None:
    from tritonclient.utils import shared_memory as shm

    server, ca = secure
    client = _tls_client(server, ca)
    region = shm.create_shared_memory_region("sst_test", "/sst_test_admin_region", 64)
    calls: dict[str, Callable[[dict[str, str]], object]] = {
        "shared-memory status": lambda h: client.get_system_shared_memory_status(headers=h),
        "shared-memory register": lambda h: client.register_system_shared_memory(
            "sst_test", "/sst_test_admin_region", 64, headers=h),
        "model-repository index": lambda h: client.get_model_repository_index(headers=h),
        "log settings": lambda h: client.get_log_settings(headers=h),
        "log settings update": lambda h: client.update_log_settings(
            {"log_verbose_level": 0}, headers=h),
        "trace settings": lambda h: client.get_trace_settings(headers=h),
        "statistics": lambda h: client.get_inference_statistics(headers=h),
    }
    try:
        for what, call in calls.items():
            wrong = "wrong-token-0123456789"
            for headers in ({}, {GRPC_ACCESS_HEADER: ACCESS}, {GRPC_ADMIN_HEADER: wrong}):
                message = _refused(lambda c=call, h=headers: c(h))
                assert "restricted" in message.lower(), (what, message)
            call({GRPC_ADMIN_HEADER: ADMIN})  # allowed
        client.unregister_system_shared_memory("sst_test", headers={GRPC_ADMIN_HEADER: ADMIN})
        # model load passes the token check, then meets model control mode "none"
        admin = {GRPC_ADMIN_HEADER: ADMIN}
        message = _refused(lambda: client.load_model("double", headers=admin))
        assert "restricted" not in message.lower(), message
        assert "restricted" in _refused(lambda: client.load_model("double")).lower()
    finally:
        client.close()
        shm.destroy_shared_memory_region(region)

    # tritonserver itself serves no HTTP and no TCP gRPC: the admin APIs are reachable
    # through the front door only, and no user token is on any command line
    assert server.pid is not None
    tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    ports = {c.laddr.port for p in tree for c in p.net_connections("tcp")
             if c.status == psutil.CONN_LISTEN}
    assert ports == {int(server.metrics_url.rsplit(":", 1)[1].split("/")[0])}, ports
    for proc in [psutil.Process(), *tree]:
        cmdline = " ".join(proc.cmdline())
        assert ADMIN not in cmdline and ACCESS not in cmdline, proc


@pytest.mark.triton
def test_loopback_default_keeps_admin_apis_closed(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    settings = cpu_settings(grpc_port=0, http_port=0, metrics_port=0, exit_timeout=5)
    with TritonServer(_write_repo(tmp_path / "repo"), settings, workdir=tmp_path / "w") as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            assert client.is_model_ready("double")  # client APIs open on loopback
            assert "restricted" in _refused(client.get_inference_statistics).lower()
            assert "restricted" in _refused(client.get_model_repository_index).lower()
            stats = client.get_inference_statistics(headers=srv.admin_headers, as_json=True)
            assert "model_stats" in stats
        finally:
            client.close()


@pytest.mark.triton
def test_mutual_tls_needs_a_client_certificate(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    ca, cert, key = _pem_files(tmp_path)
    security = Security(tls=TlsFiles(cert, key, client_ca=ca))
    settings = cpu_settings(grpc_port=0, http_port=0, metrics_port=0, exit_timeout=5,
                          security=security)
    with TritonServer(_write_repo(tmp_path / "repo"), settings, workdir=tmp_path / "w") as srv:
        with_cert = grpcclient.InferenceServerClient(
            srv.grpc_url, ssl=True, root_certificates=str(ca),
            private_key=str(tmp_path / "client.key"),
            certificate_chain=str(tmp_path / "client.pem"))
        without = grpcclient.InferenceServerClient(srv.grpc_url, ssl=True,
                                                   root_certificates=str(ca))
        try:
            assert with_cert.is_model_ready("double")
            _refused(lambda: without.is_server_live(client_timeout=5))
        finally:
            with_cert.close()
            without.close()


def _serve_until_ready(repo: Path, extra: list[str], env: dict[str, str]
                       ) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``python -m sst.server_config.launcher`` on free ports; its endpoint lines."""
    cmd = [sys.executable, "-m", "sst.server_config.launcher", "--model-repository",
           str(repo), "--grpc-port", "0", "--metrics-port", "0", "--startup-timeout", "90",
           "--exit-timeout", "10", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})
    assert proc.stdout is not None
    endpoints: dict[str, str] = {}
    deadline = time.monotonic() + 90
    while "log" not in endpoints and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        key, _, value = line.partition(" ")
        endpoints[key] = value.strip()
    return proc, endpoints


@pytest.mark.triton
def test_no_token_is_on_any_command_line_and_tritonserver_is_ours_alone(tmp_path: Path) -> None:
    """Tokens through the environment and through flags: no process of the server's tree
    shows one in ``/proc/PID/cmdline`` (readable by every local user); tritonserver's own
    keys are random per run, and its gRPC socket opens for this user only."""
    import tritonclient.grpc as grpcclient

    from .test_launcher import _end_launcher

    repo = _write_repo(tmp_path / "repo")
    runs = {"environment": ([], {ENV_TOKEN: ACCESS, ENV_ADMIN_TOKEN: ADMIN}),
            "flags": (["--token", ACCESS, "--admin-token", ADMIN], {})}
    for how, (flags, env) in runs.items():
        proc, endpoints = _serve_until_ready(repo, flags, env)
        server_pid = int(endpoints["pid"]) if "pid" in endpoints else None
        try:
            assert server_pid is not None, (how, endpoints)
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True),
                    *psutil.Process(server_pid).children(True), psutil.Process(server_pid)]
            for p in tree:
                raw = Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
                assert ACCESS not in raw and ADMIN not in raw, (how, p.name(), raw)
            client = grpcclient.InferenceServerClient(endpoints["gRPC"])
            try:  # the user's tokens work at the door
                assert client.is_model_ready("double", headers={GRPC_ACCESS_HEADER: ACCESS})
                client.get_model_repository_index(headers={GRPC_ADMIN_HEADER: ADMIN})
                index = client.get_model_repository_index
                assert "restricted" in _refused(
                    lambda i=index: i(headers={GRPC_ACCESS_HEADER: ACCESS})).lower()
            finally:
                client.close()
            triton_cmd = psutil.Process(server_pid).cmdline()
            [address] = [a.split("=", 1)[1] for a in triton_cmd
                         if a.startswith("--grpc-address=")]
            assert address.startswith("unix:")
            socket_dir = Path(address[len("unix:"):]).parent
            assert socket_dir.stat().st_mode & 0o777 == 0o700
            system_python = shutil.which("python3", path="/usr/bin:/bin")
            if os.geteuid() == 0 and system_python:  # another user cannot reach the socket
                probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); "
                         "s.connect(sys.argv[1])")
                sock = next(iter(socket_dir.iterdir()))
                other = subprocess.run([system_python, "-c", probe, str(sock)],
                                       user=65534, capture_output=True, text=True, timeout=30)
                assert other.returncode != 0 and "Permission denied" in other.stderr, other
        finally:
            _end_launcher(proc, server_pid)
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == 0, how
