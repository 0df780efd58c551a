"""In-memory stand-ins for the server side of the client: a transport that records every
request and answers like the ``sst_tracker``/``sst_segment`` models, a fake clock, and an
entry point that runs the ``sst`` CLI on that transport (for signal tests in a child
process). No network, no waiting."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException


def server_error(code: str, message: str = "") -> InferenceServerException:
    """The exception tritonclient raises for a gRPC status ``code`` (e.g. "UNAVAILABLE")."""
    return InferenceServerException(msg=message or code.lower(), status=f"StatusCode.{code}")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def image(seed: int, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def mask(size: tuple[int, int] = (24, 32), label: int = 1) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[4:12, 6:20] = label
    return m


def answer(queries: list[bytes], labels: list[int]) -> dict[str, np.ndarray]:
    """The wire outputs for ``queries``: each mask at its query's size, label ``labels[0]``
    on the top-left quarter."""
    masks, shapes = [], []
    for q in queries:
        with Image.open(io.BytesIO(q)) as im:
            w, h = im.size
        m = np.zeros((h, w), np.uint8)
        m[: h // 2, : w // 2] = labels[0]
        masks.append(m.ravel())
        shapes.append((h, w))
    n, k = len(queries), len(labels)
    return {"LABELS": np.asarray(labels, np.int32),
            "MASKS": np.concatenate(masks) if masks else np.zeros(0, np.uint8),
            "MASK_SHAPES": np.asarray(shapes, np.int32).reshape(-1, 2),
            "OBJECT_SCORES": np.full((n, k), 3.0, np.float32),
            "IOUS": np.full((n, k), 0.9, np.float32),
            "AREAS": np.asarray([[int(m.astype(bool).sum())] * k for m in masks],
                                np.int64).reshape(-1, k)}


@dataclass
class Call:
    model: str
    inputs: dict[str, np.ndarray]
    sequence_id: int
    start: bool
    end: bool
    timeout: float | None

    @property
    def stateless(self) -> bool:
        """``sst_segment``, or a one-request ``sst_tracker`` sequence with INDEPENDENT."""
        return self.model == "sst_segment" or (
            self.start and self.end and "INDEPENDENT" in self.inputs)

    @property
    def kind(self) -> str:
        if self.stateless:
            return "SEGMENT"
        return "START" if self.start else "END" if self.end else "QUERY"


@dataclass
class FakeServer:
    """Answers like the orchestrator models: sessions by sequence ID, NOT_FOUND for a
    session it does not hold, INVALID_ARGUMENT for an empty support mask. ``fail`` holds
    exceptions raised (in order) by the next requests instead of answering them;
    ``on_call`` runs first on every request."""

    sessions: dict[int, list[int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    fail: list[BaseException] = field(default_factory=list)
    on_call: Callable[[Call], None] | None = None
    closed: bool = False

    def kinds(self) -> list[tuple[str, int]]:
        return [(c.kind, c.sequence_id) for c in self.calls]

    def restart(self) -> None:
        self.sessions.clear()

    def handle(self, call: Call) -> dict[str, np.ndarray]:
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        if self.fail:
            raise self.fail.pop(0)
        queries = [bytes(q) for q in call.inputs.get("QUERY_IMAGES", np.zeros(0, object))]
        if call.stateless or call.start:
            labels = []
            for blob in call.inputs["SUPPORT_MASKS"]:
                with Image.open(io.BytesIO(bytes(blob))) as im:
                    labels += [int(v) for v in np.unique(np.asarray(im)) if v]
            if not labels:
                raise server_error("INVALID_ARGUMENT", "SUPPORT_MASKS[0]: the mask has no "
                                   "labels (all pixels are 0)")
            if call.stateless:
                return answer(queries, sorted(set(labels)))
            self.sessions[call.sequence_id] = sorted(set(labels))
        held = self.sessions.get(call.sequence_id)
        if call.end:
            self.sessions.pop(call.sequence_id, None)
        if held is None:
            raise server_error("NOT_FOUND", f"unknown session {call.sequence_id}: it expired, "
                               "ended, or the server restarted; start it again (START)")
        return answer(queries, held)


class FakeTransport:
    """:class:`sst.client._client.Transport` over a :class:`FakeServer`."""

    def __init__(self, server: FakeServer | None = None) -> None:
        self.server = server or FakeServer()

    def infer(self, model: str, inputs: Any, *, sequence_id: int = 0, start: bool = False,
              end: bool = False, timeout: float | None = None) -> dict[str, np.ndarray]:
        return self.server.handle(Call(model, dict(inputs), sequence_id, start, end, timeout))

    def close(self) -> None:
        self.server.closed = True


class FakeAsyncTransport(FakeTransport):
    async def infer(self, model: str, inputs: Any, *, sequence_id: int = 0,  # type: ignore[override]
                    start: bool = False, end: bool = False, timeout: float | None = None
                    ) -> dict[str, np.ndarray]:
        return self.server.handle(Call(model, dict(inputs), sequence_id, start, end, timeout))

    async def close(self) -> None:  # type: ignore[override]
        self.server.closed = True


class FakeClock:
    """A monotonic clock that only moves when ``sleep`` is called. ``at(t, fn)`` runs
    ``fn`` once the clock reaches ``t`` (files landing, writers resuming...)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._events: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._events.append((t, fn))
        self._events.sort(key=lambda e: e[0])

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        while self._events and self._events[0][0] <= self.now:
            self._events.pop(0)[1]()

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def run_cli_on_fake_server(record: str, query_delay: float, argv: list[str]) -> int:
    """Run ``sst <argv>`` with every gRPC transport replaced by a :class:`FakeServer`; each
    request is appended to ``record`` as a JSON line when it arrives, and query requests
    take ``query_delay`` seconds. Used as a child process by the signal tests."""
    import sst.client._client as client_module
    from sst.client.cli import main

    def on_call(call: Call) -> None:
        with open(record, "a") as fh:
            fh.write(json.dumps({"kind": call.kind, "sequence_id": call.sequence_id}) + "\n")
        if call.kind in ("QUERY", "SEGMENT"):
            time.sleep(query_delay)

    def transport(url: str, **kw: Any) -> FakeTransport:
        return FakeTransport(FakeServer(on_call=on_call))

    client_module.GrpcTransport = transport  # type: ignore[assignment, misc]
    return main(argv)


if __name__ == "__main__":  # python -m tests.fakes RECORD DELAY sst-args...
    sys.exit(run_cli_on_fake_server(sys.argv[1], float(sys.argv[2]), sys.argv[3:]))
