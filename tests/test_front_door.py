"""The gRPC front door of ``sst serve``, in front of a stand-in server on loopback: calls
are forwarded byte for byte with their metadata and status, and a message over the cap
is refused without reaching the server."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from sst.client import Client
from sst.client._client import refusal_reason
from sst.client.errors import InvalidRequest, ServerUnavailable, convert
from sst.server_config.drain import SessionTable, end_request
from sst.server_config.front_door import FrontDoor
from sst.server_config.health import HealthServer, Probes
from sst.server_config.launch_settings import LOOPBACK, pick_free_ports
from sst.server_config.security import (
    GRPC_ACCESS_HEADER,
    GRPC_ADMIN_HEADER,
    Security,
    TokenGate,
)
from sst.tracker.errors import Reason, tag

from .fakes import FakeClock, image, mask, png
from .standin import StandIn, frame_request, serving, start_request

SUPPORT, MASK, QUERY = png(image(0)), png(mask()), png(image(1))

CAP = 1 << 20


class _Backend(grpc.GenericRpcHandler):
    """Echoes each request with the ``x-*`` metadata it got; ``/fail`` answers
    NOT_FOUND; the stream echoes each message. Records the sizes it received."""

    def __init__(self) -> None:
        self.received: list[int] = []
        #: the token headers each echoed call came with
        self.tokens: list[dict[str, str]] = []

    def service(self, details):
        if details.method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if details.method.endswith("/fail"):
            return grpc.unary_unary_rpc_method_handler(self._fail)
        if details.method.endswith("/tagged"):
            return grpc.unary_unary_rpc_method_handler(self._tagged)
        return grpc.unary_unary_rpc_method_handler(self._echo)

    def _echo(self, request: bytes, context) -> bytes:
        self.received.append(len(request))
        self.tokens.append({k: v for k, v in context.invocation_metadata()
                            if k.startswith("triton-grpc-protocol-")})
        meta = b";".join(f"{k}={v}".encode() for k, v in context.invocation_metadata()
                         if k.startswith("x-"))
        return meta + b"|" + request

    def _fail(self, request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such session")

    def _tagged(self, request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, tag(Reason.UNKNOWN_SESSION, "unknown session 5"))

    def _stream(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
        for r in requests:
            yield r[::-1]


@pytest.fixture
def door():
    backend = _Backend()
    with serving(backend, options=(("grpc.max_receive_message_length", -1),)) as inner:
        (port,) = pick_free_ports(LOOPBACK, 1)
        front = FrontDoor(LOOPBACK, port, inner, CAP)
        front.start()
        channel = grpc.insecure_channel(f"{LOOPBACK}:{port}",
                                        options=[("grpc.max_send_message_length", -1)])
        try:
            yield channel, backend
        finally:
            channel.close()
            front.stop()


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


def test_a_reason_in_the_message_is_lifted_into_the_trailing_metadata(door):
    channel, backend = door
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/inference.GRPCInferenceService/tagged")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "unknown session 5"  # the tag is not in the message
    assert ("sst-reason", "unknown_session") in tuple(err.value.trailing_metadata())
    assert convert(err.value).reason is Reason.UNKNOWN_SESSION


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


# --------------------------------------------------------------------------- drain


@pytest.fixture
def tracker_door():
    """A front door in front of a stand-in ``sst_tracker``; the sync client through it."""
    backend = StandIn()
    with serving(backend) as inner:
        (port,) = pick_free_ports(LOOPBACK, 1)
        front = FrontDoor(LOOPBACK, port, inner, CAP, headers={"x-door": "token"})
        front.start()
        try:
            yield front, backend, f"{LOOPBACK}:{port}"
        finally:
            front.stop()


def _metric(front: FrontDoor, name: str, **labels: str) -> float:
    value = front.sessions.registry.get_sample_value(name, labels or None)
    return float(value or 0.0)


def test_the_door_counts_sessions_and_frames(tracker_door):
    front, backend, url = tracker_door
    with Client(url, retry_for=5) as client:
        with client.open_session([SUPPORT], [MASK]) as session:
            session.segment(QUERY)
            session.segment(QUERY)
            assert set(front.sessions.open) == {session.session_id}
            assert front.sessions.open[session.session_id].key == session.key
        client.segment([SUPPORT], [MASK], [QUERY])
    assert front.sessions.open == {}
    assert _metric(front, "sst_door_starts_total") == 2  # the session, the stateless one
    assert _metric(front, "sst_door_frames_total", session="known") == 3  # 2 frames, END
    assert _metric(front, "sst_door_frames_total", session="unknown") == 0
    assert _metric(front, "sst_door_sessions_ended_total", by="client") == 1
    assert _metric(front, "sst_door_sessions_open") == 0


def test_a_draining_door_refuses_starts_and_ends_idle_sessions_itself(tracker_door):
    front, backend, url = tracker_door
    clock = FakeClock()
    client = Client(url, retry_for=3, clock=clock, sleep=clock.sleep)
    idle = client.open_session([SUPPORT], [MASK])
    idle.segment(QUERY)
    before = len(backend.calls)
    started = time.monotonic()
    assert front.drain(wait_s=0.3) == 1  # the idle session is ended by the door
    assert 0.3 <= time.monotonic() - started < 5
    end = backend.calls[before:]
    assert [(c.session_id, c.start, c.end, c.key) for c in end] == [
        (idle.session_id, False, True, idle.key)]  # an END with the session's own key
    assert backend.sessions == {}  # nothing left open for tritonserver to wait for
    # a new session is refused with the reason, under every fresh ID it tries
    with pytest.raises(ServerUnavailable, match="draining") as info:
        client.open_session([SUPPORT], [MASK])
    assert refusal_reason(info.value) == "draining"
    assert all(not c.start for c in backend.calls[before:])  # no START got through
    # the ended session's next frame is told to move (NOT_FOUND, reason draining); its
    # client primes it again, which the draining door refuses too: one replica, no move
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            call(frame_request(idle.session_id, idle.key, QUERY), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("sst-reason", "draining") in tuple(err.value.trailing_metadata())
    assert _metric(front, "sst_door_refused_total", reason="draining") >= 2
    assert _metric(front, "sst_door_sessions_ended_total", by="drain") == 1
    assert _metric(front, "sst_door_draining") == 1
    client.close()


def test_a_session_that_ends_during_the_drain_is_not_ended_twice(tracker_door):
    front, backend, url = tracker_door
    with Client(url, retry_for=5) as client:
        session = client.open_session([SUPPORT], [MASK])
        threading.Timer(0.2, session.close).start()
        assert front.drain(wait_s=10) == 0  # it returned once the session had ended
    ends = [c for c in backend.calls if c.end]
    assert len(ends) == 1


def test_health_probes_answer_live_ready_and_metrics():
    probes = Probes()
    table = SessionTable()
    health = HealthServer(LOOPBACK, 0, probes, table.registry)
    health.start()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str) -> tuple[int, str]:
        try:
            with opener.open(health.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    try:
        assert get("/live") == (200, "live")
        assert get("/ready") == (503, "not ready")  # not started yet
        probes.ready = True
        assert get("/ready") == (200, "ready")
        probes.draining = True
        assert get("/ready") == (503, "draining")
        assert get("/live") == (200, "live")  # draining is not dead
        status, text = get("/metrics")
        assert status == 200 and "sst_door_sessions_open 0.0" in text
        probes.live = False
        assert get("/live")[0] == 503
        assert get("/nothing")[0] == 404
    finally:
        health.stop()


# --------------------------------------------------------------------------- hostile clients

_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_failed_starts_hold_no_sequence(tracker_door):
    """Triton's batcher keeps a sequence open for every START it saw until an END: a
    START the model refused, never followed by END (a crashed client), held a slot until
    Triton's idle timeout. The door ends each itself, with the START's key."""
    front, backend, url = tracker_door
    backend.fail_starts = 20
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(_INFER)
        for session_id in range(1, 21):
            with pytest.raises(grpc.RpcError) as err:
                call(start_request(session_id, b"k%d" % session_id, SUPPORT, MASK), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _until(lambda: not backend.sequences), backend.sequences
    ends = [c for c in backend.calls if c.end]
    assert sorted((c.session_id, c.key) for c in ends) == [
        (session_id, b"k%d" % session_id) for session_id in range(1, 21)]
    assert _metric(front, "sst_door_sequences_ended_total", why="failed_start") == 20
    assert front.sessions.open == {} and front.sessions.starting == {}
    # and a session after them runs as before
    with Client(url, retry_for=5) as client, client.open_session([SUPPORT], [MASK]) as s:
        s.segment(QUERY)


def test_a_start_whose_client_gave_up_is_ended_once_answered(tracker_door):
    front, backend, url = tracker_door
    backend.start_delay_s = 0.5
    with grpc.insecure_channel(url) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(_INFER)(start_request(77, b"key", SUPPORT, MASK), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _until(lambda: any(c.end and c.session_id == 77 for c in backend.calls))
    assert _until(lambda: not backend.sequences and 77 not in backend.sessions)
    assert front.sessions.open == {} and front.sessions.starting == {}


def test_a_cancelled_restart_of_an_open_session_leaves_nothing_starting(tracker_door):
    """A re-START whose client gave up is counted as answered: an entry left among the
    STARTs in flight would keep its key guarding the ID after the session ended."""
    front, backend, url = tracker_door
    with Client(url, retry_for=5) as client, client.open_session([SUPPORT], [MASK]) as s:
        backend.start_delay_s = 0.5
        with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(_INFER)(
                start_request(s.session_id, s.key, SUPPORT, MASK), timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _until(lambda: not front.sessions.starting)
        assert s.session_id in front.sessions.open  # nor was it ended by the door
        backend.start_delay_s = 0.0
    assert front.sessions.open == {} and front.sessions.starting == {}


def test_a_failed_restart_of_an_open_session_leaves_it_open(tracker_door):
    front, backend, url = tracker_door
    with Client(url, retry_for=5) as client, client.open_session([SUPPORT], [MASK]) as s:
        backend.fail_starts = 1
        with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError):
            channel.unary_unary(_INFER)(
                start_request(s.session_id, s.key, SUPPORT, MASK), timeout=10)
        time.sleep(0.2)
        assert not any(c.end for c in backend.calls)  # the door ended nothing
        assert s.session_id in front.sessions.open
        s.segment(QUERY)


def test_a_keyed_session_is_refused_to_calls_without_its_key(tracker_door):
    """An END, a re-START or a stateless request on a keyed session's ID never reaches
    the server (Triton's batcher acts on the flags before the model refuses them)."""
    front, backend, url = tracker_door
    with Client(url, retry_for=5) as client, client.open_session([SUPPORT], [MASK]) as s:
        s.segment(QUERY)
        session_id, before = s.session_id, len(backend.calls)
        attacks = {
            "END without key": end_request("sst_tracker", session_id, b""),
            "END with a wrong key": end_request("sst_tracker", session_id, b"x" * 16),
            "re-START without key": start_request(session_id, b"", SUPPORT, MASK),
            "re-START with another key": start_request(session_id, b"mine", SUPPORT, MASK),
            "stateless on its ID": start_request(session_id, b"", SUPPORT, MASK, end=True),
            "stateless on its ID with its key": start_request(session_id, s.key, SUPPORT, MASK,
                                                              end=True),
            "frame without key": frame_request(session_id, b"", QUERY),
        }
        with grpc.insecure_channel(url) as channel:
            call = channel.unary_unary(_INFER)
            for what, raw in attacks.items():
                with pytest.raises(grpc.RpcError) as err:
                    call(raw, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                assert ("sst-reason", "bad_key") in tuple(err.value.trailing_metadata()), what
                assert "SESSION_KEY" in err.value.details(), what
        assert len(backend.calls) == before  # none reached the server
        assert set(front.sessions.open) == {session_id}  # the table did not change
        assert _metric(front, "sst_door_refused_total", reason="bad_key") == len(attacks)
        s.segment(QUERY)  # the session goes on
    assert front.sessions.open == {}  # its own END, with the key, ends it


def test_a_stream_may_not_start_a_session_nor_touch_a_keyed_one(tracker_door):
    front, backend, url = tracker_door
    with Client(url, retry_for=5) as client, client.open_session([SUPPORT], [MASK]) as s:
        with grpc.insecure_channel(url) as channel:
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            for raw in (start_request(5, b"", SUPPORT, MASK),
                        end_request("sst_tracker", s.session_id, b"")):
                with pytest.raises(grpc.RpcError) as err:
                    list(stream(iter([raw]), timeout=10))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not backend.sequences - {s.session_id}
        s.segment(QUERY)


class _Slow(_Backend):
    """Echoes after ``hold_s``, recording how many requests it held at once."""

    def __init__(self, hold_s: float) -> None:
        super().__init__()
        self.hold_s, self.now, self.most = hold_s, 0, 0
        self.lock = threading.Lock()

    def _echo(self, request: bytes, context) -> bytes:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.hold_s)
        with self.lock:
            self.now -= 1
        return super()._echo(request, context)


def test_large_requests_in_flight_are_bounded():
    backend = _Slow(hold_s=1.0)
    with serving(backend, options=(("grpc.max_receive_message_length", -1),)) as inner:
        (port,) = pick_free_ports(LOOPBACK, 1)
        front = FrontDoor(LOOPBACK, port, inner, 16 << 20, max_inflight_bytes=12 << 20)
        front.inflight.wait_s = 0.3
        front.start()
        results: list[object] = []

        def send(size: int) -> None:
            with grpc.insecure_channel(f"{LOOPBACK}:{port}", options=[
                    ("grpc.max_receive_message_length", -1)]) as channel:
                try:
                    results.append(len(channel.unary_unary(_INFER)(b"x" * size, timeout=20)))
                except grpc.RpcError as exc:
                    results.append(exc)

        try:
            threads = [threading.Thread(target=send, args=(8 << 20,)) for _ in range(3)]
            threads.append(threading.Thread(target=send, args=(1000,)))  # a frame
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            front.stop()
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(results) == 4 and len(refused) == 2, results
    for err in refused:
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # retried by the client
        assert ("sst-reason", "busy") in tuple(err.trailing_metadata())
    assert sorted(r for r in results if isinstance(r, int)) == [1 + 1000, 1 + (8 << 20)]
    assert sorted(backend.received) == [1000, 8 << 20]  # the small one was never held
    assert front.inflight.used == 0


def test_tokens_are_checked_at_the_door_and_exchanged_for_the_servers_own():
    user = Security(admin_token="admin-token-0123456789", access_token="access-token-0123456")
    internal = Security.internal()
    backend = _Backend()
    with serving(backend) as inner:
        (port,) = pick_free_ports(LOOPBACK, 1)
        front = FrontDoor(LOOPBACK, port, inner, CAP, gate=TokenGate(user, internal))
        front.start()
        try:
            with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
                live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
                index = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")
                access = [(GRPC_ACCESS_HEADER, user.access_token), ("x-a", "1")]
                admin = [(GRPC_ADMIN_HEADER, user.admin_token)]
                for call, metadata in ((live, []), (live, [(GRPC_ACCESS_HEADER, "wrong")]),
                                       (live, admin), (index, access), (index, [])):
                    with pytest.raises(grpc.RpcError) as err:
                        call(b"", metadata=metadata, timeout=10)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "protocol is restricted" in err.value.details()
                assert backend.received == []  # none reached the server
                echoed = live(b"p", metadata=access, timeout=10)
                assert echoed == b"x-a=1|p"
                assert backend.tokens == [{GRPC_ACCESS_HEADER: internal.access_token}]
                index(b"q", metadata=admin, timeout=10)
                assert backend.tokens[1] == {GRPC_ADMIN_HEADER: internal.admin_token}
                with pytest.raises(grpc.RpcError) as err:
                    channel.unary_unary("/inference.GRPCInferenceService/Other")(
                        b"", metadata=access, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            front.stop()


def test_the_health_port_bounds_its_connections_and_idle_ones():
    """3000 idle connections once made 3013 threads: now one event loop serves them, at
    most MAX_CONNECTIONS are held (the rest closed at once), each for the idle timeout."""
    import socket

    health = HealthServer(LOOPBACK, 0, Probes(ready=True))
    health.idle_timeout_s = 60.0  # (held while the test fills the cap, on a busy machine)
    health.start()
    threads = threading.active_count()
    idle = []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        for _ in range(HealthServer.MAX_CONNECTIONS + 20):
            idle.append(socket.create_connection((LOOPBACK, health.port), timeout=10))
        assert _until(lambda: health.peak_connections == HealthServer.MAX_CONNECTIONS, 10.0), (
            health.peak_connections, health.connections)
        assert health.connections == HealthServer.MAX_CONNECTIONS  # the rest were closed
        # no thread per connection (threads of earlier tests may end meanwhile, never
        # one more for any of these 256)
        assert threading.active_count() <= threads
        for sock in idle:
            sock.close()
        assert _until(lambda: health.connections == 0, 10.0)
        health.idle_timeout_s = 0.3  # one that sends nothing is closed after the timeout
        with socket.create_connection((LOOPBACK, health.port), timeout=10) as quiet:
            assert quiet.recv(100) == b""
        with opener.open(health.url + "/ready", timeout=5) as response:
            assert response.status == 200 and response.read() == b"ready"
        with socket.create_connection((LOOPBACK, health.port), timeout=5) as big:
            big.sendall(b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\n\r\n")  # over 8 KiB
            assert big.recv(100) == b""  # closed without an answer
    finally:
        for sock in idle:
            sock.close()
        health.stop()
