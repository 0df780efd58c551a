"""The gRPC client library: sync :class:`Client` and :class:`AsyncClient`.

::

    client = Client("127.0.0.1:8001")
    session = client.open_session([support_png_bytes], [mask_png_bytes])
    result = session.segment(query_bytes_or_rgb_array)      # sequential SST, one query
    session.close()
    results = client.segment(supports, masks, queries)      # one stateless request

The transport is injectable (anything with :meth:`Transport.infer`), so the client is
tested without a network. Requests time out, UNAVAILABLE is retried with exponential
backoff for a bounded time, and a session the server has lost (restart, expiry) is primed
again from the support the session keeps, then the query is retried: nothing accepted is
lost. After a re-prime, tracking continues from the supports (the server lost the
earlier queries).
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sst.client.errors import ClientError, ServerUnavailable, SessionLost, convert

__all__ = ["Client", "AsyncClient", "ClientSession", "SegmentResult", "Transport",
           "GrpcTransport", "ImageLike", "to_image_bytes"]

log = logging.getLogger(__name__)

TRACKER_MODEL = "sst_tracker"
SEGMENT_MODEL = "sst_segment"
ImageLike = bytes | np.ndarray


@dataclass
class SegmentResult:
    """One query's answer: ``mask [H,W]`` uint8 label map at the query's size, and per
    label (``labels`` order) the object score logit, predicted IoU and area."""

    labels: list[int]
    mask: np.ndarray
    object_scores: np.ndarray
    ious: np.ndarray
    areas: np.ndarray

    def scores(self) -> list[dict[str, float | int]]:
        return [{"label": lab, "area": int(self.areas[k]),
                 "object_score": float(self.object_scores[k]), "iou": float(self.ious[k])}
                for k, lab in enumerate(self.labels)]


def to_image_bytes(image: ImageLike) -> bytes:
    """Encoded bytes pass through; ``uint8`` arrays (RGB or label masks) become PNG."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_results(out: Mapping[str, np.ndarray]) -> list[SegmentResult]:
    labels = [int(v) for v in out["LABELS"]]
    shapes = out["MASK_SHAPES"].reshape(-1, 2)
    flat = out["MASKS"]
    results, start = [], 0
    for q, (h, w) in enumerate(shapes):
        n = int(h) * int(w)
        results.append(SegmentResult(labels, flat[start:start + n].reshape(int(h), int(w)),
                                     out["OBJECT_SCORES"][q], out["IOUS"][q], out["AREAS"][q]))
        start += n
    return results


class Transport(Protocol):
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, sequence_id: int = 0,
              start: bool = False, end: bool = False, timeout: float | None = None
              ) -> dict[str, np.ndarray]:
        """Run one request; raise the transport's own errors (converted by the client)."""
        ...


_OUTPUTS = ["LABELS", "MASKS", "MASK_SHAPES", "OBJECT_SCORES", "IOUS", "AREAS"]


def _batched(model: str, arrays: Mapping[str, np.ndarray], add: bool
             ) -> dict[str, np.ndarray]:
    """``sst_tracker`` batches requests of many sessions (its tensors have a leading
    batch axis of 1 per request); ``sst_segment``'s tensors have none."""
    if model != TRACKER_MODEL:
        return dict(arrays)
    return {k: (v[None] if add else v[0]) for k, v in arrays.items()}


def _stateless_inputs(supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                      queries: Sequence[ImageLike]) -> dict[str, np.ndarray]:
    """A stateless request: sent to ``sst_tracker`` as a one-request sequence whose
    queries are each conditioned on the supports alone."""
    return {"SUPPORT_IMAGES": _bytes_array(to_image_bytes(s) for s in supports),
            "SUPPORT_MASKS": _bytes_array(to_image_bytes(m) for m in masks),
            "INDEPENDENT": np.ones(1, np.uint8), **_query_inputs(queries)}


def _infer_inputs(mod: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    out = []
    for name, arr in inputs.items():
        dtype = "BYTES" if arr.dtype == object else "UINT8"
        t = mod.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


class GrpcTransport:
    """``tritonclient.grpc`` transport (thread-safe: one channel, used concurrently)."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self._mod = grpcclient
        self.url = url
        self._client = grpcclient.InferenceServerClient(url)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, sequence_id: int = 0,
              start: bool = False, end: bool = False, timeout: float | None = None
              ) -> dict[str, np.ndarray]:
        g = self._mod
        res = self._client.infer(
            model, _infer_inputs(g, _batched(model, inputs, True)),
            outputs=[g.InferRequestedOutput(n) for n in _OUTPUTS],
            sequence_id=sequence_id, sequence_start=start, sequence_end=end,
            client_timeout=timeout)
        return _batched(model, {n: res.as_numpy(n) for n in _OUTPUTS}, False)

    def close(self) -> None:
        self._client.close()


def _bytes_array(items: Iterable[bytes]) -> np.ndarray:
    return np.array(list(items), dtype=object)


def _query_inputs(queries: Sequence[ImageLike]) -> dict[str, np.ndarray]:
    return {"QUERY_IMAGES": _bytes_array(to_image_bytes(q) for q in queries)}


class Client:
    """Synchronous client. ``timeout`` is per request (seconds). While the server is
    UNAVAILABLE (down, restarting, shutting down) a request is retried with exponential
    backoff from ``backoff`` seconds (capped at 5 s) for up to ``retry_for`` seconds;
    ``retry_for=0`` fails at once."""

    def __init__(self, url: str = "127.0.0.1:8001", *, timeout: float = 120.0,
                 retry_for: float = 180.0, backoff: float = 0.5,
                 transport: Transport | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff = backoff
        self.transport: Transport = transport or GrpcTransport(url)

    def _call(self, model: str, inputs: Mapping[str, np.ndarray], **kw: Any
              ) -> dict[str, np.ndarray]:
        delay = self.backoff
        give_up = time.monotonic() + self.retry_for
        while True:
            try:
                return self.transport.infer(model, inputs, timeout=self.timeout, **kw)
            except ClientError:
                raise
            except Exception as exc:
                err = convert(exc)
                if isinstance(err, ServerUnavailable) and time.monotonic() + delay < give_up:
                    log.warning("server unavailable (%s); retrying in %.1fs", err, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise err from None

    def segment(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                queries: Sequence[ImageLike]) -> list[SegmentResult]:
        """One stateless request: every query conditioned on the supports alone."""
        return decode_results(self._call(
            TRACKER_MODEL, _stateless_inputs(supports, masks, queries),
            sequence_id=secrets.randbits(63) or 1, start=True, end=True))

    def open_session(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike]
                     ) -> ClientSession:
        session = ClientSession(self, [to_image_bytes(s) for s in supports],
                                [to_image_bytes(m) for m in masks])
        session.prime()
        return session

    def segment_folder(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                       queries: Iterable[tuple[Any, Callable[[], ImageLike]]],
                       inflight: int = 4, batch: int = 1
                       ) -> Iterator[tuple[Any, SegmentResult | ClientError]]:
        """Pipelined stateless runner: keeps ``inflight`` requests of ``batch`` queries in
        flight; yields ``(key, result or error)`` in submission order. ``queries`` yields
        ``(key, loader)`` pairs; a loader error is yielded for that key."""
        sup = [to_image_bytes(s) for s in supports]
        msk = [to_image_bytes(m) for m in masks]

        def work(chunk: list[tuple[Any, Callable[[], ImageLike]]]
                 ) -> list[tuple[Any, SegmentResult | ClientError]]:
            loaded, out = [], []
            for key, load in chunk:
                try:
                    loaded.append((key, to_image_bytes(load())))
                except ClientError as exc:
                    out.append((key, exc))
                except Exception as exc:
                    out.append((key, ClientError(f"{key}: {exc}")))
            if loaded:
                try:
                    res = self.segment(sup, msk, [b for _, b in loaded])
                    out += [(k, r) for (k, _), r in zip(loaded, res)]
                except ClientError as exc:
                    out += [(k, exc) for k, _ in loaded]
            return out

        with ThreadPoolExecutor(max_workers=inflight) as pool:
            pending: list[Any] = []
            chunk: list[tuple[Any, Callable[[], ImageLike]]] = []
            for item in queries:
                chunk.append(item)
                if len(chunk) == batch:
                    pending.append(pool.submit(work, chunk))
                    chunk = []
                while len(pending) > inflight:
                    yield from pending.pop(0).result()
            if chunk:
                pending.append(pool.submit(work, chunk))
            for fut in pending:
                yield from fut.result()

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close:
            close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientSession:
    """A server-side SST session (sequential mode). Keeps its supports so that it can
    prime the server again if the server loses it."""

    def __init__(self, client: Client, supports: list[bytes], masks: list[bytes]) -> None:
        self.client = client
        self.supports = supports
        self.masks = masks
        self.session_id = secrets.randbits(63) or 1
        self.labels: list[int] = []
        self.reprimes = 0
        self.closed = False
        self._lock = threading.Lock()

    def prime(self) -> None:
        inputs = {"SUPPORT_IMAGES": _bytes_array(self.supports),
                  "SUPPORT_MASKS": _bytes_array(self.masks)}
        out = self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id, start=True)
        self.labels = [int(v) for v in out["LABELS"]]

    def segment(self, image: ImageLike) -> SegmentResult:
        """Track one query (the next frame of this session's pseudo-video)."""
        return self.segment_many([image])[0]

    def segment_many(self, images: Sequence[ImageLike]) -> list[SegmentResult]:
        if self.closed:
            raise ClientError(f"session {self.session_id} is closed")
        inputs = _query_inputs(images)
        with self._lock:
            try:
                out = self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id)
            except SessionLost as exc:
                log.warning("session %d lost (%s); priming it again", self.session_id, exc)
                self.reprimes += 1
                self.prime()
                out = self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id)
        return decode_results(out)

    def close(self) -> None:
        """End the session on the server (frees its state). Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client._call(TRACKER_MODEL, {"QUERY_IMAGES": _bytes_array([])},
                              sequence_id=self.session_id, end=True)
        except ClientError as exc:  # already gone: nothing to free
            log.debug("closing session %d: %s", self.session_id, exc)

    def __enter__(self) -> ClientSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client over ``tritonclient.grpc.aio`` with the same semantics as
    :class:`Client` (stateless requests and sessions)."""

    def __init__(self, url: str = "127.0.0.1:8001", *, timeout: float = 120.0,
                 retry_for: float = 180.0, backoff: float = 0.5) -> None:
        import tritonclient.grpc.aio as aio

        self._mod = aio
        self._client = aio.InferenceServerClient(url)
        self.timeout, self.retry_for, self.backoff = timeout, retry_for, backoff

    async def _call(self, model: str, inputs: Mapping[str, np.ndarray], *,
                    sequence_id: int = 0, start: bool = False, end: bool = False
                    ) -> dict[str, np.ndarray]:
        g = self._mod
        delay = self.backoff
        give_up = time.monotonic() + self.retry_for
        while True:
            try:
                res = await self._client.infer(
                    model, _infer_inputs(g, _batched(model, inputs, True)),
                    outputs=[g.InferRequestedOutput(n) for n in _OUTPUTS],
                    sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                    client_timeout=self.timeout)
                return _batched(model, {n: res.as_numpy(n) for n in _OUTPUTS}, False)
            except Exception as exc:
                err = convert(exc)
                if isinstance(err, ServerUnavailable) and time.monotonic() + delay < give_up:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise err from None

    async def segment(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike],
                      queries: Sequence[ImageLike]) -> list[SegmentResult]:
        return decode_results(await self._call(
            TRACKER_MODEL, _stateless_inputs(supports, masks, queries),
            sequence_id=secrets.randbits(63) or 1, start=True, end=True))

    async def open_session(self, supports: Sequence[ImageLike], masks: Sequence[ImageLike]
                           ) -> AsyncClientSession:
        s = AsyncClientSession(self, [to_image_bytes(x) for x in supports],
                               [to_image_bytes(m) for m in masks])
        await s.prime()
        return s

    async def close(self) -> None:
        await self._client.close()


class AsyncClientSession:
    def __init__(self, client: AsyncClient, supports: list[bytes], masks: list[bytes]) -> None:
        self.client, self.supports, self.masks = client, supports, masks
        self.session_id = secrets.randbits(63) or 1
        self.labels: list[int] = []
        self.reprimes = 0
        self._lock = asyncio.Lock()

    async def prime(self) -> None:
        out = await self.client._call(
            TRACKER_MODEL, {"SUPPORT_IMAGES": _bytes_array(self.supports),
                            "SUPPORT_MASKS": _bytes_array(self.masks)},
            sequence_id=self.session_id, start=True)
        self.labels = [int(v) for v in out["LABELS"]]

    async def segment(self, image: ImageLike) -> SegmentResult:
        inputs = _query_inputs([image])
        async with self._lock:
            try:
                out = await self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id)
            except SessionLost:
                self.reprimes += 1
                await self.prime()
                out = await self.client._call(TRACKER_MODEL, inputs, sequence_id=self.session_id)
        return decode_results(out)[0]

    async def close(self) -> None:
        try:
            await self.client._call(TRACKER_MODEL, {"QUERY_IMAGES": _bytes_array([])},
                                    sequence_id=self.session_id, end=True)
        except ClientError:
            pass
