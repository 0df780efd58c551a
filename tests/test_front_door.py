"""The gRPC front door of ``sst serve``, in front of a stand-in server on loopback: calls
are forwarded byte for byte with their metadata and status, and a message over the cap
is refused without reaching the server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from sst.client.errors import InvalidRequest, convert
from sst.server_config.front_door import FrontDoor
from sst.server_config.profile import LOOPBACK, pick_free_ports

CAP = 1 << 20


class _Backend(grpc.GenericRpcHandler):
    """Echoes each request with the ``x-*`` metadata it got; ``/fail`` answers
    NOT_FOUND; the stream echoes each message. Records the sizes it received."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def service(self, details):
        if details.method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if details.method.endswith("/fail"):
            return grpc.unary_unary_rpc_method_handler(self._fail)
        return grpc.unary_unary_rpc_method_handler(self._echo)

    def _echo(self, request: bytes, context) -> bytes:
        self.received.append(len(request))
        meta = b";".join(f"{k}={v}".encode() for k, v in context.invocation_metadata()
                         if k.startswith("x-"))
        return meta + b"|" + request

    def _fail(self, request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such session")

    def _stream(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
        for r in requests:
            yield r[::-1]


@pytest.fixture
def door():
    backend = _Backend()
    server = grpc.server(futures.ThreadPoolExecutor(4),
                         options=[("grpc.max_receive_message_length", -1)])
    server.add_generic_rpc_handlers((backend,))
    inner = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    (port,) = pick_free_ports(LOOPBACK, 1)
    front = FrontDoor(LOOPBACK, port, f"{LOOPBACK}:{inner}", CAP)
    front.start()
    channel = grpc.insecure_channel(f"{LOOPBACK}:{port}",
                                    options=[("grpc.max_send_message_length", -1)])
    try:
        yield channel, backend
    finally:
        channel.close()
        front.stop()
        server.stop(0)


def test_calls_are_forwarded_with_metadata_and_status(door):
    channel, backend = door
    echo = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    assert echo(b"\x00\x01payload", metadata=[("x-token", "t1")], timeout=10) == (
        b"x-token=t1|\x00\x01payload")
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/inference.GRPCInferenceService/fail")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such session"
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    assert list(stream(iter([b"ab", b"cde"]), timeout=10)) == [b"ba", b"edc"]


def test_a_message_over_the_cap_never_reaches_the_server(door):
    channel, backend = door
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    assert call(b"x" * (CAP - 64), timeout=10).endswith(b"x")
    with pytest.raises(grpc.RpcError) as err:
        call(b"x" * (CAP + 1), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(convert(err.value), InvalidRequest)  # the request, not the sessions
    assert backend.received == [CAP - 64]
    assert call(b"after", timeout=10) == b"|after"  # and it keeps serving


def test_the_server_being_down_reads_as_unavailable():
    (port, dead) = pick_free_ports(LOOPBACK, 2)
    front = FrontDoor(LOOPBACK, port, f"{LOOPBACK}:{dead}", CAP)
    front.start()
    try:
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        front.stop()


def test_a_taken_port_is_refused_at_start():
    (port,) = pick_free_ports(LOOPBACK, 1)
    first = FrontDoor(LOOPBACK, port, f"{LOOPBACK}:1", CAP)
    first.start()
    try:
        with pytest.raises(Exception, match="cannot listen|Failed to bind"):
            FrontDoor(LOOPBACK, port, f"{LOOPBACK}:1", CAP).start()
    finally:
        first.stop()
