"""The client without a network: status-code mapping, retries on an injected clock,
re-priming, and sessions that always end (sync and asyncio)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from sst.client import (
    AccessDenied,
    AsyncClient,
    Client,
    ClientError,
    InvalidRequest,
    RequestTimeout,
    ResourceExhausted,
    ServerError,
    ServerUnavailable,
    SessionLost,
    TooManySessions,
)
from sst.client._client import END_TIMEOUT, TOKEN_HEADER, GrpcTransport
from sst.client.errors import BY_STATUS, convert
from sst.tracker.errors import Reason, tag

from .fakes import (
    FakeAsyncTransport,
    FakeClock,
    FakeServer,
    FakeTransport,
    image,
    mask,
    png,
    server_error,
)

SUPPORT, MASK, EMPTY_MASK = png(image(0)), png(mask()), png(np.zeros((24, 32), np.uint8))
QUERY = png(image(1, (20, 28)))


def _client(server: FakeServer, clock: FakeClock, **kw) -> Client:
    return Client("fake:0", transport=FakeTransport(server), clock=clock, sleep=clock.sleep,
                  **kw)


# --------------------------------------------------------------------------- status codes


@pytest.mark.parametrize("code, cls", [
    ("UNAVAILABLE", ServerUnavailable), ("DEADLINE_EXCEEDED", RequestTimeout),
    ("INVALID_ARGUMENT", InvalidRequest), ("NOT_FOUND", SessionLost),
    ("RESOURCE_EXHAUSTED", ResourceExhausted), ("UNAUTHENTICATED", AccessDenied),
    ("PERMISSION_DENIED", AccessDenied), ("INTERNAL", ServerError), ("UNKNOWN", ServerError),
    ("CANCELLED", ServerUnavailable),  # dropped by a stopping server: retried
])
def test_server_errors_map_by_status_code_and_keep_the_message(code, cls):
    err = convert(server_error(code, "QUERY_IMAGES[0]: image is 4x4; at least 8x8 needed"))
    assert type(err) is cls
    assert "QUERY_IMAGES[0]: image is 4x4; at least 8x8 needed" in str(err)
    assert BY_STATUS.get(code, ServerError) is cls


def test_the_code_decides_not_words_in_the_message():
    # messages that the old substring matching would have misread
    assert type(convert(server_error("INTERNAL", "unknown session 5"))) is ServerError
    assert type(convert(server_error("INVALID_ARGUMENT", "server is unavailable"))) \
        is InvalidRequest
    assert type(convert(server_error("UNAVAILABLE", "deadline exceeded"))) is ServerUnavailable
    # no code at all (a client-side error): never guessed from its words
    assert type(convert(Exception("connection refused"))) is ServerError
    assert type(convert(ConnectionRefusedError("refused"))) is ServerUnavailable


def test_known_answers_that_share_a_code_are_told_apart():
    lost = server_error("INVALID_ARGUMENT", "inference request for sequence 7 to model "
                        "'sst_tracker' must specify the START flag on the first request")
    assert type(convert(lost)) is SessionLost
    cap = server_error("UNAVAILABLE", tag(Reason.OVER_CAPACITY, "the server holds 64 "
                                          "sessions, its limit; end a session"))
    assert type(convert(cap)) is TooManySessions
    token = server_error("UNAVAILABLE", "This protocol is restricted, expecting header "
                         "'triton-grpc-protocol-sst-access-token'")
    assert type(convert(token)) is AccessDenied
    dead = server_error("INTERNAL", "Failed to process the request(s) for model instance "
                        "'sst_tracker_0_0', message: Stub process 'sst_tracker_0_0' is not "
                        "healthy.")
    assert type(convert(dead)) is ServerUnavailable  # retried while the server restarts
    going = server_error("NOT_FOUND", "Request for unknown model: 'sst_tracker' has no "
                         "available versions")
    assert type(convert(going)) is ServerUnavailable
    cut = server_error("UNKNOWN", "Stream removed (Data frame with END_STREAM flag "
                       "received)")
    assert type(convert(cut)) is ServerUnavailable  # a proxy's replica died mid-call
    assert type(convert(server_error("UNKNOWN", "model raised"))) is ServerError


def test_not_found_outside_a_session_is_a_server_error():
    err = convert(server_error("NOT_FOUND", "Request for unknown model: 'sst_segment'"),
                  in_session=False)
    assert type(err) is ServerError and "sst_segment" in str(err)


def test_raw_grpc_errors_are_converted_by_their_code():
    import grpc

    class RpcError(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self):
            return "too many"

    err = convert(RpcError())
    assert type(err) is ResourceExhausted and str(err) == "too many"


# --------------------------------------------------------------------------- retries


def test_unavailable_is_retried_with_backoff_until_retry_for():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE", "failed to connect")] * 100
    client = _client(server, clock, retry_for=10.0, backoff=0.5)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable, match="failed to connect"):
        client.segment([SUPPORT], [MASK], [QUERY])
    assert time.monotonic() - t0 < 1.0  # the injected clock, no real waiting
    assert clock.slept == [0.5, 1.0, 2.0, 4.0]  # the next 5 s would pass retry_for
    assert len(server.calls) == 5 and clock.now < 10.0


def test_backoff_is_capped_at_five_seconds():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE")] * 100
    with pytest.raises(ServerUnavailable):
        _client(server, clock, retry_for=30.0, backoff=1.0).segment([SUPPORT], [MASK], [QUERY])
    assert clock.slept == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]  # 27 s; one more passes 30


def test_a_server_that_comes_back_answers_the_retried_request():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE")] * 3
    [res] = _client(server, clock).segment([SUPPORT], [MASK], [QUERY])
    assert res.mask.shape == (20, 28) and res.labels == [1]
    assert clock.slept == [0.5, 1.0, 2.0] and len(server.calls) == 4


@pytest.mark.parametrize("exc, cls", [
    (server_error("RESOURCE_EXHAUSTED", "metadata too large"), ResourceExhausted),
    (server_error("RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 8)"),
     InvalidRequest),
    (server_error("UNAVAILABLE", tag(Reason.OVER_CAPACITY, "64 sessions")), TooManySessions),
    (server_error("UNAVAILABLE", "This protocol is restricted, expecting header 'x'"),
     AccessDenied),
    (server_error("INVALID_ARGUMENT", "bad"), InvalidRequest),
    (server_error("DEADLINE_EXCEEDED", "Deadline Exceeded"), RequestTimeout),
])
def test_errors_other_than_unavailable_are_not_retried(exc, cls):
    clock, server = FakeClock(), FakeServer()
    server.fail = [exc]
    with pytest.raises(cls):
        _client(server, clock).segment([SUPPORT], [MASK], [QUERY])
    assert clock.slept == [] and len(server.calls) == 1


def test_retry_for_zero_fails_at_once():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE")]
    with pytest.raises(ServerUnavailable):
        _client(server, clock, retry_for=0).segment([SUPPORT], [MASK], [QUERY])
    assert clock.slept == []


# --------------------------------------------------------------------------- re-priming


@pytest.mark.parametrize("lost", [
    None,  # the orchestrator's NOT_FOUND
    server_error("INVALID_ARGUMENT", "inference request for sequence 1 to model "
                 "'sst_tracker' must specify the START flag on the first request"),
])
def test_a_lost_session_is_primed_again_with_the_kept_supports(lost):
    clock, server = FakeClock(), FakeServer()
    client = _client(server, clock)
    session = client.open_session([SUPPORT], [MASK])
    session.segment(QUERY)
    server.restart()  # the server forgets every session
    if lost is not None:
        server.fail = [lost]
    res = session.segment(QUERY)
    sid = session.session_id
    assert res.mask.shape == (20, 28) and session.reprimes == 1
    assert server.kinds() == [("START", sid), ("QUERY", sid), ("QUERY", sid), ("START", sid),
                              ("QUERY", sid)]
    first, again = server.calls[0], server.calls[3]
    for name in ("SUPPORT_IMAGES", "SUPPORT_MASKS"):  # the very same support bytes
        assert [bytes(b) for b in again.inputs[name]] == [bytes(b) for b in first.inputs[name]]
    assert [bytes(b) for b in server.calls[4].inputs["QUERY_IMAGES"]] == [QUERY]


def test_a_session_lost_twice_in_a_row_raises():
    clock, server = FakeClock(), FakeServer()
    session = _client(server, clock).open_session([SUPPORT], [MASK])
    server.on_call = lambda call: server.restart() if call.kind == "QUERY" else None
    with pytest.raises(SessionLost, match="unknown session"):
        session.segment(QUERY)
    assert [k for k, _ in server.kinds()] == ["START", "QUERY", "START", "QUERY"]


# --------------------------------------------------------------------------- END


def test_a_failed_start_is_followed_by_an_end_for_the_same_session():
    clock, server = FakeClock(), FakeServer()
    client = _client(server, clock, timeout=60.0)
    with pytest.raises(InvalidRequest, match="no labels"):
        client.open_session([SUPPORT], [EMPTY_MASK])
    (start, sid), (end, sid2) = server.kinds()
    assert (start, end) == ("START", "END") and sid == sid2 != 0
    assert server.calls[1].timeout == END_TIMEOUT  # short, not the request timeout


def test_a_start_that_never_got_through_still_sends_end():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE")] * 50
    with pytest.raises(ServerUnavailable):
        _client(server, clock, retry_for=3.0).open_session([SUPPORT], [MASK])
    assert server.calls[-1].kind == "END"
    assert server.calls[-1].sequence_id == server.calls[0].sequence_id


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_leaving_the_session_block_by_an_exception_sends_end(exc):
    clock, server = FakeClock(), FakeServer()
    client = _client(server, clock)
    with pytest.raises(type(exc)):
        with client.open_session([SUPPORT], [MASK]) as session:
            session.segment(QUERY)
            raise exc
    sid = session.session_id
    assert server.kinds() == [("START", sid), ("QUERY", sid), ("END", sid)]
    assert server.sessions == {}
    with pytest.raises(ClientError, match="closed"):
        session.segment(QUERY)


def test_end_is_sent_once_and_best_effort():
    clock, server = FakeClock(), FakeServer()
    client = _client(server, clock)
    session = client.open_session([SUPPORT], [MASK])
    server.fail = [server_error("UNAVAILABLE")] * 10
    session.close()  # the server is gone: no retries, no error
    session.close()
    assert [k for k, _ in server.kinds()] == ["START", "END"] and clock.slept == []


def test_closing_the_client_ends_every_open_session():
    clock, server = FakeClock(), FakeServer()
    with _client(server, clock) as client:
        a = client.open_session([SUPPORT], [MASK])
        b = client.open_session([SUPPORT], [MASK])
        a.close()
    ends = [sid for kind, sid in server.kinds() if kind == "END"]
    assert ends == [a.session_id, b.session_id]  # a once (by itself), b by the client
    assert server.sessions == {} and server.closed


# --------------------------------------------------------------------------- transport


def test_grpc_transport_sends_the_token_and_uses_tls(monkeypatch, tmp_path):
    import tritonclient.grpc as grpcclient

    made: dict = {}
    sent: dict = {}

    class Recorder:
        def __init__(self, url, **kw):
            made.update(kw, url=url)

        def infer(self, *args, **kw):
            sent.update(kw)
            raise server_error("UNAVAILABLE", "no server")

    monkeypatch.setattr(grpcclient, "InferenceServerClient", Recorder)
    ca = tmp_path / "ca.pem"
    transport = GrpcTransport("h:1", root_certificates=str(ca), token="s3cret")
    assert made == {"url": "h:1", "ssl": True, "root_certificates": str(ca)}
    with pytest.raises(Exception, match="no server"):
        transport.infer("sst_segment", {"QUERY_IMAGES": np.array([QUERY], object)})
    assert sent["headers"][TOKEN_HEADER] == "s3cret"  # beside the session's routing header
    assert TOKEN_HEADER == "triton-grpc-protocol-sst-access-token"
    GrpcTransport("h:1")
    assert made["ssl"] is False and made["root_certificates"] is None


# --------------------------------------------------------------------------- asyncio


def _aclient(server: FakeServer, clock: FakeClock, **kw) -> AsyncClient:
    return AsyncClient("fake:0", transport=FakeAsyncTransport(server), clock=clock,
                       sleep=clock.async_sleep, **kw)


def test_async_unavailable_is_retried_on_the_injected_clock():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE")] * 100
    with pytest.raises(ServerUnavailable):
        asyncio.run(_aclient(server, clock, retry_for=10.0).segment([SUPPORT], [MASK], [QUERY]))
    assert clock.slept == [0.5, 1.0, 2.0, 4.0] and len(server.calls) == 5

    server.fail = [server_error("UNAVAILABLE")] * 2
    clock.slept.clear()
    [res] = asyncio.run(_aclient(server, clock).segment([SUPPORT], [MASK], [QUERY]))
    assert res.mask.shape == (20, 28) and clock.slept == [0.5, 1.0]

    server.fail = [server_error("RESOURCE_EXHAUSTED", "cap")]
    with pytest.raises(ResourceExhausted):
        asyncio.run(_aclient(server, clock).segment([SUPPORT], [MASK], [QUERY]))


def test_async_lost_session_is_primed_again():
    clock, server = FakeClock(), FakeServer()

    async def run():
        async with _aclient(server, clock) as client:
            session = await client.open_session([SUPPORT], [MASK])
            await session.segment(QUERY)
            server.restart()
            res = await session.segment(QUERY)
            return session, res

    session, res = asyncio.run(run())
    sid = session.session_id
    assert res.mask.shape == (20, 28) and session.reprimes == 1
    assert server.kinds() == [("START", sid), ("QUERY", sid), ("QUERY", sid), ("START", sid),
                              ("QUERY", sid), ("END", sid)]  # END by the client's close


def test_async_failed_start_and_exceptions_send_end():
    clock, server = FakeClock(), FakeServer()

    async def failed_start():
        with pytest.raises(InvalidRequest):
            await _aclient(server, clock).open_session([SUPPORT], [EMPTY_MASK])

    asyncio.run(failed_start())
    (k1, s1), (k2, s2) = server.kinds()
    assert (k1, k2) == ("START", "END") and s1 == s2

    server.calls.clear()

    async def raises():
        client = _aclient(server, clock)
        async with await client.open_session([SUPPORT], [MASK]) as session:
            await session.segment(QUERY)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(raises())
    assert [k for k, _ in server.kinds()] == ["START", "QUERY", "END"]


def test_async_cancelled_task_ends_its_session():
    clock, server = FakeClock(), FakeServer()
    started = asyncio.Event()

    async def worker(client):
        async with await client.open_session([SUPPORT], [MASK]) as session:
            started.set()
            while True:
                await session.segment(QUERY)
                await asyncio.sleep(0)

    async def run():
        client = _aclient(server, clock)
        task = asyncio.create_task(worker(client))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert server.calls[-1].kind == "END" and server.sessions == {}


# --------------------------------------------------------------------------- reasons


class _RpcError(Exception):
    """A raw gRPC error with trailing metadata, as the front door answers a refusal."""

    def __init__(self, code: str, details: str, trailers: tuple) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        import grpc

        return getattr(grpc.StatusCode, self._code)

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


@pytest.mark.parametrize("reason, code, cls", [
    (Reason.SESSION_EXPIRED, "NOT_FOUND", SessionLost),
    (Reason.UNKNOWN_SESSION, "NOT_FOUND", SessionLost),
    (Reason.OVER_CAPACITY, "UNAVAILABLE", TooManySessions),
    (Reason.BAD_KEY, "INVALID_ARGUMENT", InvalidRequest),
    (Reason.PIXEL_BUDGET, "INVALID_ARGUMENT", InvalidRequest),
    (Reason.REQUEST_TOO_LARGE, "INVALID_ARGUMENT", InvalidRequest),
    (Reason.DRAINING, "UNAVAILABLE", ServerUnavailable),  # START refused: start elsewhere
    (Reason.DRAINING, "NOT_FOUND", SessionLost),          # a later frame: prime again
])
def test_refusals_are_told_apart_by_their_reason_not_their_words(reason, code, cls):
    words = "words that say nothing of the reason"
    tagged = convert(server_error(code, tag(reason, words)))  # tritonserver reached directly
    trailed = convert(_RpcError(code, words, (("sst-reason", reason.value),)))  # front door
    for err in (tagged, trailed):
        assert type(err) is cls and err.reason == reason and err.reason == reason.value
        assert str(err) == words or str(err).endswith(words)
    assert "sst-reason" not in str(tagged)  # the tag is lifted off the message


def test_an_unknown_or_missing_reason_leaves_the_status_code_to_decide():
    assert convert(server_error("INVALID_ARGUMENT", "bad")).reason is None
    err = convert(server_error("UNAVAILABLE", "[sst-reason=no_such_reason] x"))
    assert type(err) is ServerUnavailable and err.reason is None


def test_a_stateless_call_is_not_in_a_session():
    from sst.client._client import in_session

    assert not in_session({"sequence_id": 7, "start": True, "end": True})  # stateless
    assert in_session({"sequence_id": 7, "start": True})  # a session's START
    assert in_session({"sequence_id": 7})
    assert not in_session({})


def test_a_stateless_request_answered_not_found_is_not_a_lost_session():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("NOT_FOUND", "Request for unknown model: 'sst_tracker'")]
    with pytest.raises(ServerError, match="unknown model"):
        _client(server, clock).segment([SUPPORT], [MASK], [QUERY])


# --------------------------------------------------------------------------- answer size


def test_queries_whose_masks_would_not_fit_one_answer_go_as_several_requests(monkeypatch):
    """Answers are bounded (the server's ``max_answer_bytes``, one byte per query pixel):
    the client groups queries by their headers' pixels, in order, into requests that
    fit, for a stateless call and a session alike, and gives the results in order."""
    import sst.client._client as client_module

    sizes = [(20, 28), (24, 30), (16, 20), (30, 30), (10, 12)]
    queries = [png(image(i, size)) for i, size in enumerate(sizes)]
    monkeypatch.setattr(client_module, "ANSWER_BYTES", 20 * 28 + 24 * 30)
    assert [len(c) for c in client_module.answer_chunks(queries)] == [2, 2, 1]
    assert client_module.answer_chunks([b"not an image"] * 3) == [[b"not an image"] * 3]
    clock, server = FakeClock(), FakeServer()
    client = _client(server, clock)
    got = client.segment([SUPPORT], [MASK], queries)
    assert [r.mask.shape for r in got] == sizes
    stateless = [c for c in server.calls if c.stateless]
    assert [len(c.inputs["QUERY_IMAGES"]) for c in stateless] == [2, 2, 1]
    server.calls.clear()
    with client.open_session([SUPPORT], [MASK]) as session:
        tracked = session.segment_many(queries)
    assert [r.mask.shape for r in tracked] == sizes
    frames = [c for c in server.calls if c.kind == "QUERY"]
    assert [len(c.inputs["QUERY_IMAGES"]) for c in frames] == [2, 2, 1]
    assert len({c.sequence_id for c in frames}) == 1


# --------------------------------------------------------------------------- no server

REFUSED = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: " \
          "Failed to connect to remote host: Connection refused"


def test_a_server_that_never_answered_fails_fast_naming_the_address():
    clock, server = FakeClock(), FakeServer()
    server.fail = [server_error("UNAVAILABLE", REFUSED)] * 100
    client = _client(server, clock, retry_for=180.0)
    with pytest.raises(ServerUnavailable) as err:
        client.segment([SUPPORT], [MASK], [QUERY])
    assert "no server at fake:0" in str(err.value) and "sst serve" in str(err.value)
    assert sum(clock.slept) <= 5.0 and len(server.calls) <= 5
    clock.slept.clear()
    server.fail = [server_error("UNAVAILABLE", REFUSED)] * 100
    with pytest.raises(ServerUnavailable, match="no server at fake:0"):
        asyncio.run(_aclient(server, clock, retry_for=180.0).segment([SUPPORT], [MASK],
                                                                     [QUERY]))
    assert sum(clock.slept) <= 5.0


def test_a_server_that_answered_before_is_waited_for_through_a_restart():
    clock, server = FakeClock(), FakeServer()
    client = _client(server, clock, retry_for=180.0)
    client.segment([SUPPORT], [MASK], [QUERY])  # it answered once
    server.fail = [server_error("UNAVAILABLE", REFUSED)] * 10
    [res] = client.segment([SUPPORT], [MASK], [QUERY])
    assert res.labels == [1] and sum(clock.slept) > 5.0  # past the first-contact grace


def test_a_server_behind_a_door_that_restarts_is_not_taken_for_no_server():
    """The front door answering that tritonserver behind it is down (a unix: socket)
    is a server that answered: retried for the whole budget."""
    clock, server = FakeClock(), FakeServer()
    behind = "failed to connect to all addresses; last error: UNKNOWN: unix:/tmp/s:1: " \
             "Connection refused"
    server.fail = [server_error("UNAVAILABLE", behind)] * 6
    [res] = _client(server, clock, retry_for=180.0).segment([SUPPORT], [MASK], [QUERY])
    assert res.labels == [1] and sum(clock.slept) > 5.0
