"""The asyncio client: :class:`AsyncClient`, with the semantics of
:class:`sst.client.Client` (timeouts, retries of UNAVAILABLE with backoff, session
re-priming, END on failure, on leaving ``async with`` and on close).

::

    async with AsyncClient() as client:
        async with await client.open_session([support], [mask]) as session:
            result = await session.segment(query)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import tritonclient.grpc.aio as aio

from sst.client._client import (
    END_TIMEOUT,
    TRACKER_MODEL,
    Backoff,
    GrpcChannel,
    ImageLike,
    SessionState,
    _end_inputs,
    _keyed,
    _outputs,
    _query_inputs,
    _retry_delay,
    _stateless_inputs,
    _support_inputs,
    answer_chunks,
    new_session_id,
    refused_connection,
    to_image_bytes,
)
from sst.client.errors import ClientError, SessionLost, convert
from sst.tracker.defaults import DEFAULT_SERVER
from sst.tracker.io.intensity import Intensity
from sst.tracker.result import FrameResult
from sst.tracker.serving.wire import LABELS, decode_intensity, decode_results

__all__ = ["AsyncClient", "AsyncClientSession", "AsyncTransport", "AsyncGrpcTransport"]

log = logging.getLogger(__name__)


class AsyncTransport(Protocol):
    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *,
                    sequence_id: int = 0, start: bool = False, end: bool = False,
                    timeout: float | None = None) -> dict[str, np.ndarray]:
        """Run one request; raise the transport's own errors (converted by the client)."""
        ...


class AsyncGrpcTransport(GrpcChannel):
    """``tritonclient.grpc.aio`` transport; TLS and token as :class:`GrpcTransport`."""

    _module = aio

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *,
                    sequence_id: int = 0, start: bool = False, end: bool = False,
                    timeout: float | None = None) -> dict[str, np.ndarray]:
        return _outputs(model, await self._client.infer(
            **self._request(model, inputs, sequence_id, start, end, timeout)))

    async def close(self) -> None:
        await self._client.close()


class AsyncClient:
    """asyncio twin of :class:`sst.client.Client` (same arguments; ``sleep`` is awaited)."""

    def __init__(self, url: str = DEFAULT_SERVER, *, timeout: float = 120.0,
                 retry_for: float = 180.0, backoff: float = 0.5,
                 transport: AsyncTransport | None = None, ssl: bool = False,
                 root_certificates: str | None = None, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.url = url
        self.timeout, self.retry_for, self.backoff = timeout, retry_for, backoff
        self.clock, self.sleep = clock, sleep
        self.rng = rng or random.Random()
        self.transport: AsyncTransport = transport or AsyncGrpcTransport(
            url, ssl=ssl, root_certificates=root_certificates, token=token)
        self._open: set[AsyncClientSession] = set()  # ended by close()
        #: whether the server has answered this client (see FIRST_CONTACT_S)
        self.answered = False

    async def _call(self, model: str, inputs: Mapping[str, np.ndarray],
                    rekey: Callable[[], int] | None = None, **kw: Any
                    ) -> dict[str, np.ndarray]:
        """See :meth:`sst.client.Client._call`."""
        backoff = Backoff(self.backoff, self.retry_for, self.clock, self.rng,
                          first_contact=None if self.answered else self.url)
        while True:
            try:
                out = await self.transport.infer(model, inputs, timeout=self.timeout, **kw)
                self.answered = True
                return out
            except Exception as exc:
                self.answered = self.answered or not refused_connection(exc)
                await self.sleep(_retry_delay(backoff, exc, rekey, kw))

    async def _end(self, session_id: int, key: bytes = b"") -> None:
        """END a session: one try with a short timeout; failures are only logged."""
        limit = min(self.timeout, END_TIMEOUT)
        try:
            await asyncio.wait_for(
                self.transport.infer(TRACKER_MODEL, _keyed(_end_inputs(), key),
                                     sequence_id=session_id, end=True, timeout=limit),
                limit + 1.0)
        except Exception as exc:
            log.debug("ending session %d: %s", session_id, convert(exc))

    async def segment(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                      queries: Sequence[ImageLike], quality: bool = False,
                      intensity: str | Intensity | None = None) -> list[FrameResult]:
        """One stateless request: every query conditioned on the supports alone
        (``intensity``: see :meth:`sst.client.Client.segment`; split as it splits)."""
        sup, msk = [to_image_bytes(s) for s in supports], [to_image_bytes(m) for m in masks]
        results: list[FrameResult] = []
        for chunk in answer_chunks([to_image_bytes(q) for q in queries]):
            results += decode_results(await self._call(
                TRACKER_MODEL, _stateless_inputs(sup, msk, chunk, quality, intensity),
                rekey=new_session_id, sequence_id=new_session_id(), start=True, end=True))
        return results

    async def open_session(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                           intensity: str | Intensity | None = None) -> AsyncClientSession:
        """START a session; if the START fails, END is sent before the error is raised."""
        s = AsyncClientSession(self, [to_image_bytes(x) for x in supports],
                               [to_image_bytes(m) for m in masks], intensity)
        try:
            await s.prime()
        except BaseException:
            await s.close()
            raise
        self._open.add(s)
        return s

    async def close(self) -> None:
        """END every session still open, then close the transport."""
        for session in list(self._open):
            await session.close()
        close = getattr(self.transport, "close", None)
        if close:
            await close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClientSession(SessionState):
    """A server-side session over :class:`AsyncClient` (see :class:`ClientSession`)."""

    def __init__(self, client: AsyncClient, supports: list[bytes], masks: list[bytes],
                 intensity: str | Intensity | None = None) -> None:
        super().__init__(supports, masks, intensity)
        self.client = client
        self._lock = asyncio.Lock()

    async def prime(self) -> None:
        inputs = _keyed(_support_inputs(self.supports, self.masks, self.intensity_mode),
                        self.key)
        out = await self.client._call(TRACKER_MODEL, inputs, rekey=self.rekey,
                                      sequence_id=self.session_id, start=True)
        self.labels = [int(v) for v in out[LABELS]]
        self.intensity = decode_intensity(out)

    async def segment(self, image: ImageLike, quality: bool = False) -> FrameResult:
        """Track one query (the next frame of this session's pseudo-video)."""
        return (await self.segment_many([image], quality))[0]

    async def segment_many(self, images: Sequence[ImageLike], quality: bool = False
                           ) -> list[FrameResult]:
        """Track ``images`` in order (split as :meth:`sst.client.ClientSession.segment_many`
        splits)."""
        results: list[FrameResult] = []
        for chunk in answer_chunks([to_image_bytes(i) for i in images]):
            results += await self._segment_chunk(chunk, quality)
        return results

    async def _segment_chunk(self, images: Sequence[bytes], quality: bool
                             ) -> list[FrameResult]:
        if self.closed:
            raise ClientError(f"session {self.session_id} is closed")
        inputs = _keyed(_query_inputs(images, quality), self.key)
        async with self._lock:
            try:
                out = await self.client._call(TRACKER_MODEL, inputs,
                                              sequence_id=self.session_id)
            except SessionLost as exc:
                log.warning("session %d lost (%s); priming it again", self.session_id, exc)
                self.reprimes += 1
                await self.prime()
                out = await self.client._call(TRACKER_MODEL, inputs,
                                              sequence_id=self.session_id)
        results = decode_results(out)
        self.intensity = decode_intensity(out)
        return results

    async def close(self) -> None:
        """End the session on the server: once, best effort. Safe to call twice."""
        if self.close_once():
            self.client._open.discard(self)
            await self.client._end(self.session_id, self.key)

    async def __aenter__(self) -> AsyncClientSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
