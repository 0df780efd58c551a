"""``--tls-ca`` / ``--token`` (and ``SST_TLS_CA`` / ``SST_TOKEN``) on every command with
``--server``, and the client really speaking TLS with the token header to a loopback gRPC
server that answers like Triton's restricted inference protocol."""

from __future__ import annotations

import logging
import shutil
import subprocess
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest

from sst.client import AccessDenied, Client, ServerUnavailable
from sst.client._client import TOKEN_HEADER
from sst.client.cli import build_parser
from sst.client.server_args import client_from_args, connection_options
from sst.tracker.errors import InputError

from .fakes import image, mask, png

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(PEM)
    return path


def _watch_args(*extra: str):
    return build_parser().parse_args(["watch", "in", "--server", "10.0.0.5:8001", "--support",
                                      "s.png", "--support-mask", "m.png", "--out", "o",
                                      *extra])


def test_watch_and_the_tools_take_tls_ca_and_token(ca, monkeypatch):
    monkeypatch.delenv("SST_TOKEN", raising=False)
    monkeypatch.delenv("SST_TLS_CA", raising=False)
    args = _watch_args("--tls-ca", str(ca), "--token", "s3cret")
    assert connection_options(args) == {"ssl": True, "root_certificates": str(ca),
                                        "token": "s3cret"}
    args = build_parser().parse_args(["retrieve", "--server", "h:1", "--tls-ca", str(ca),
                                      "--token", "t", "--support", "s", "--support-mask", "m",
                                      "--trait", "1", "--queries", "q", "--out", "o"])
    assert connection_options(args)["token"] == "t" and connection_options(args)["ssl"]
    plain = _watch_args()
    assert connection_options(plain) == {"ssl": False, "root_certificates": None,
                                         "token": None}


def test_the_environment_gives_the_defaults_and_flags_win(ca, tmp_path, monkeypatch):
    monkeypatch.setenv("SST_TOKEN", "from-env")
    monkeypatch.setenv("SST_TLS_CA", str(ca))
    assert connection_options(_watch_args()) == {"ssl": True, "root_certificates": str(ca),
                                                 "token": "from-env"}
    other = tmp_path / "other.pem"
    other.write_bytes(PEM)
    opts = connection_options(_watch_args("--token", "flag", "--tls-ca", str(other)))
    assert opts["token"] == "flag" and opts["root_certificates"] == str(other)


def test_a_bad_ca_bundle_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SST_TLS_CA", raising=False)
    with pytest.raises(InputError, match=r"--tls-ca: CA bundle .*missing.pem not found"):
        connection_options(_watch_args("--tls-ca", str(tmp_path / "missing.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InputError, match="--tls-ca: .*junk.pem holds no PEM certificate"):
        connection_options(_watch_args("--tls-ca", str(junk)))


def test_a_token_sent_in_clear_to_another_host_is_warned_about(caplog, monkeypatch):
    monkeypatch.delenv("SST_TLS_CA", raising=False)
    with caplog.at_level(logging.WARNING, logger="sst"):
        connection_options(_watch_args("--token", "t"))
    assert "without TLS" in caplog.text
    caplog.clear()
    args = build_parser().parse_args(["watch", "in", "--server", "127.0.0.1:8001",
                                      "--support", "s", "--support-mask", "m", "--out", "o",
                                      "--token", "t"])
    with caplog.at_level(logging.WARNING, logger="sst"):
        connection_options(args)
    assert caplog.text == ""


# --------------------------------------------------------------------------- real gRPC


def _outputs() -> list[tuple[str, str, list[int], bytes]]:
    m = np.zeros((4, 4), np.uint8)
    m[:2, :2] = 1
    # as sst_tracker answers: a leading batch axis of 1
    return [("LABELS", "INT32", [1, 1], np.int32([1]).tobytes()),
            ("MASKS", "UINT8", [1, 16], m.tobytes()),
            ("MASK_SHAPES", "INT32", [1, 1, 2], np.int32([4, 4]).tobytes()),
            ("OBJECT_SCORES", "FP32", [1, 1, 1], np.float32([2.5]).tobytes()),
            ("IOUS", "FP32", [1, 1, 1], np.float32([0.75]).tobytes()),
            ("AREAS", "INT64", [1, 1, 1], np.int64([4]).tobytes())]


@pytest.fixture
def tls_server(tmp_path: Path):
    """A loopback gRPC server with Triton's inference service over TLS (self-signed
    certificate), restricted like
    ``--grpc-restricted-protocol=inference:sst-access-token=s3cret``."""
    grpc = pytest.importorskip("grpc")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    seen: list[dict[str, str]] = []

    class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):  # the gRPC method name
            headers = dict(context.invocation_metadata())
            seen.append(headers)
            if headers.get(TOKEN_HEADER) != "s3cret":
                context.abort(grpc.StatusCode.UNAVAILABLE, "This protocol is restricted, "
                              f"expecting header '{TOKEN_HEADER}'")
            response = service_pb2.ModelInferResponse(model_name=request.model_name)
            for name, dtype, shape, raw in _outputs():
                out = response.outputs.add()
                out.name, out.datatype = name, dtype
                out.shape.extend(shape)
                response.raw_output_contents.append(raw)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(), server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield {"url": f"127.0.0.1:{port}", "ca": cert, "seen": seen}
    finally:
        server.stop(0)


def test_the_client_speaks_tls_and_sends_the_token(tls_server, monkeypatch):
    monkeypatch.delenv("SST_TLS_CA", raising=False)
    monkeypatch.setenv("SST_TOKEN", "s3cret")
    args = build_parser().parse_args(["watch", "in", "--server", tls_server["url"], "--support",
                                      "s", "--support-mask", "m", "--out", "o", "--tls-ca",
                                      str(tls_server["ca"])])
    with client_from_args(args, retry_for=0, timeout=20) as client:
        [res] = client.segment([png(image(0))], [png(mask())], [png(image(1))])
    assert res.labels == [1] and res.mask.shape == (4, 4) and int(res.areas[0]) == 4
    assert tls_server["seen"][-1][TOKEN_HEADER] == "s3cret"


def test_a_wrong_token_is_access_denied_without_retries(tls_server):
    n = len(tls_server["seen"])
    with Client(tls_server["url"], root_certificates=str(tls_server["ca"]), token="wrong",
                retry_for=60, timeout=20) as client:
        with pytest.raises(AccessDenied, match="expecting header"):
            client.segment([png(image(0))], [png(mask())], [png(image(1))])
    assert len(tls_server["seen"]) == n + 1  # one request: not retried for 60 s


def test_plaintext_to_a_tls_server_does_not_get_through(tls_server):
    with Client(tls_server["url"], token="s3cret", retry_for=0, timeout=5) as client:
        with pytest.raises(ServerUnavailable):
            client.segment([png(image(0))], [png(mask())], [png(image(1))])
    assert tls_server["seen"] == []
