"""Routing metadata and moving off a draining replica, through real gRPC on loopback.

A stand-in for tritonserver (Triton's own protobuf messages, answers like
``sst_tracker``) records the metadata of every call; the sync and asyncio clients talk
to it through their real gRPC transports. It can refuse STARTs as a draining front door
does: UNAVAILABLE with the trailing metadata ``sst-reason: draining``.
"""

from __future__ import annotations

import asyncio
import io
import random

import pytest
from PIL import Image

from sst.client import AsyncClient, Client
from sst.client._client import Backoff, new_session_id
from sst.client.errors import ServerUnavailable

from .fakes import FakeClock, image, mask, png
from .standin import Seen, StandIn, serving

SUPPORT, MASK = png(image(0)), png(mask())
QUERY = png(image(1))


@pytest.fixture
def stand_in():
    handler = StandIn()
    with serving(handler) as url:
        yield handler, url


def _check_session_calls(calls: list[Seen]) -> None:
    sessions = [c for c in calls if not (c.start and c.end)]
    assert [(c.start, c.end) for c in sessions] == [(True, False), (False, False),
                                                   (False, False), (False, True)]
    assert {c.session_header for c in sessions} == {str(sessions[0].session_id)}
    stateless = [c for c in calls if c.start and c.end]
    assert len(stateless) == 2
    headers = {c.session_header for c in stateless}
    assert len(headers) == 2 and str(sessions[0].session_id) not in headers
    assert all(c.session_header == str(c.session_id) for c in stateless)


def test_every_call_of_a_session_names_it_and_stateless_calls_get_fresh_ids(stand_in):
    handler, url = stand_in
    with Client(url, retry_for=5) as client:
        with client.open_session([SUPPORT], [MASK]) as session:
            assert session.segment(QUERY).mask.shape == (24, 32)
            session.segment(QUERY)
        client.segment([SUPPORT], [MASK], [QUERY])
        client.segment([SUPPORT], [MASK], [QUERY])
    _check_session_calls(handler.calls)


def test_the_asyncio_client_names_sessions_the_same_way(stand_in):
    handler, url = stand_in

    async def run() -> None:
        async with AsyncClient(url, retry_for=5) as client:
            session = await client.open_session([SUPPORT], [MASK])
            async with session:
                await session.segment(QUERY)
                await session.segment(QUERY)
            await client.segment([SUPPORT], [MASK], [QUERY])
            await client.segment([SUPPORT], [MASK], [QUERY])

    asyncio.run(run())
    _check_session_calls(handler.calls)


def test_a_start_refused_by_a_draining_replica_moves_to_a_fresh_id(stand_in):
    handler, url = stand_in
    handler.refuse_starts = 2
    clock = FakeClock()
    with Client(url, retry_for=60, clock=clock, sleep=clock.sleep,
                rng=random.Random(0)) as client:
        with client.open_session([SUPPORT], [MASK]) as session:
            session.segment(QUERY)
            assert session.moves == 2
    starts = [c for c in handler.calls if c.start]
    assert len(starts) == 3
    assert len({c.session_id for c in starts}) == 3  # a fresh ID each time
    assert all(c.session_header == str(c.session_id) for c in handler.calls)
    later = [c for c in handler.calls if not c.start]
    assert {c.session_id for c in later} == {starts[-1].session_id}  # frames follow the move
    # jittered: each delay in the upper half of the doubling schedule (0.5 s, then 1 s)
    assert len(clock.slept) == 2
    assert 0.25 <= clock.slept[0] <= 0.5 and 0.5 <= clock.slept[1] <= 1.0
    assert clock.slept[0] != 0.5 or clock.slept[1] != 1.0


def test_a_stateless_request_refused_by_a_draining_replica_moves_too(stand_in):
    handler, url = stand_in
    handler.refuse_starts = 1
    clock = FakeClock()

    async def run() -> None:
        async with AsyncClient(url, retry_for=60, clock=clock,
                               sleep=clock.async_sleep) as client:
            assert len(await client.segment([SUPPORT], [MASK], [QUERY])) == 1

    asyncio.run(run())
    assert len(handler.calls) == 2
    assert handler.calls[0].session_id != handler.calls[1].session_id


def test_a_replica_that_keeps_draining_is_not_stormed(stand_in):
    handler, url = stand_in
    handler.refuse_starts = 10_000
    clock = FakeClock()
    with Client(url, retry_for=30, clock=clock, sleep=clock.sleep) as client:
        with pytest.raises(ServerUnavailable, match="draining") as info:
            client.open_session([SUPPORT], [MASK])
    assert getattr(info.value, "reason", "") == "draining"
    starts = [c for c in handler.calls if c.start]
    # 0.5, 1, 2, 4, 5, 5, ... (jittered) within 30 s: a handful of tries, not a storm
    assert 5 <= len(starts) <= 12
    assert sum(clock.slept) <= 30


def test_jitter_spreads_clients_refused_together():
    clock = FakeClock()
    rng = random.Random(1)
    first = [Backoff(1.0, 60, clock, rng).jittered() for _ in range(50)]
    assert all(d is not None and 0.5 <= d <= 1.0 for d in first)
    assert len({round(d or 0, 3) for d in first}) > 40
    assert new_session_id() != new_session_id()


def test_a_png_answer_decodes(stand_in):
    """The stand-in's answers are what the client decodes (masks at the query's size)."""
    handler, url = stand_in
    with Client(url, retry_for=5) as client:
        (result,) = client.segment([SUPPORT], [MASK], [QUERY])
    with Image.open(io.BytesIO(QUERY)) as im:
        assert result.mask.shape == (im.height, im.width)
    assert result.mask[0, 0] == 1 and result.mask[-1, -1] == 0
