"""``sst_tracker``'s Triton model (:class:`TrackerModel`) with a stand-in for Triton's
``triton_python_backend_utils``: one ``execute()`` is one batch, each request gets its own
answer or its own error with its status code, and a cancelled or oversized request fails
alone, before anything of it is decoded."""

from __future__ import annotations

import json
import sys
import threading
import types
from typing import Any

import numpy as np
import pytest

from sst.model_repository.configs import orchestrator_config
from sst.tracker.engine_choice import open_backend
from sst.tracker.io import load_image_bytes, load_mask_bytes
from sst.tracker.serving.limits import ServiceConfig
from sst.tracker.tracker import Tracker

from .synthetic import specimen
from .test_serving import _jpeg, _png

FINAL = 1  # TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self._array = name, np.asarray(array)

    def as_numpy(self) -> np.ndarray:
        return self._array


class _TritonError:
    INTERNAL, NOT_FOUND, INVALID_ARG = "INTERNAL", "NOT_FOUND", "INVALID_ARG"
    UNAVAILABLE, CANCELLED = "UNAVAILABLE", "CANCELLED"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None,
                 error: _TritonError | None = None) -> None:
        self.outputs = {t.name: t.as_numpy() for t in output_tensors or ()}
        self.error = error


class _Metric:
    def __init__(self, labels: dict[str, str]) -> None:
        self.value = 0.0

    def increment(self, delta: float) -> None:
        self.value += delta

    def set(self, value: float) -> None:
        self.value = value


class _MetricFamily:
    COUNTER, GAUGE = "counter", "gauge"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str]) -> _Metric:  # Triton's name
        return _Metric(labels)


class _Request:
    """A request of the batch: its tensors (with ``sst_tracker``'s batch axis) and the
    sequence controls Triton adds."""

    def __init__(self, session_id: int, start: bool, end: bool, cancelled: bool = False,
                 **tensors: Any) -> None:
        self.tensors = {"CORRID": np.array([[session_id]], np.uint64),
                        "START": np.array([[int(start)]], np.int32),
                        "END": np.array([[int(end)]], np.int32)}
        for name, value in tensors.items():
            if isinstance(value, list):  # encoded images: a BYTES tensor [1, n]
                self.tensors[name] = np.array([value], dtype=object)
            else:
                self.tensors[name] = np.asarray(value)[None]
        self.cancelled = cancelled
        self.sent: list[tuple[_Response, int]] = []
        self.answered = threading.Event()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def get_response_sender(self) -> _Request:
        return self

    def send(self, response: _Response, flags: int = 0) -> None:  # the response sender
        self.sent.append((response, flags))
        self.answered.set()

    def response(self, timeout: float = 120.0) -> _Response:
        """The one final answer the model sent for this request (waits for it)."""
        assert self.answered.wait(timeout), "no answer"
        ((response, flags),) = self.sent
        assert flags == FINAL
        return response


@pytest.fixture
def pb(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = _Tensor
    fake.TritonError = _TritonError
    fake.InferenceResponse = _Response
    fake.MetricFamily = _MetricFamily
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    fake.get_input_tensor_by_name = lambda req, name: (
        _Tensor(name, req.tensors[name]) if name in req.tensors else None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake


def _model(pb, exported_repo, **config: Any):
    from sst.model_repository.orchestrator import TrackerModel

    cfg = json.loads(json.dumps({"parameters": {}}))
    text = orchestrator_config("sst_tracker", ServiceConfig(**config))
    for line in text.splitlines():  # the parameters, as Triton hands them over in JSON
        if line.strip().startswith("key:"):
            key = line.split('"')[1]
        elif "string_value" in line:
            cfg["parameters"][key] = {"string_value": line.split('"')[1]}
    model = TrackerModel()
    model.initialize({"model_config": json.dumps(cfg),
                      "model_repository": str(exported_repo / "sst_tracker")})
    return model


@pytest.fixture(scope="module")
def images():
    img, mask = specimen(0)
    return _jpeg(img), _png(mask), [_jpeg(specimen(40 + i, shift=0.02 * i)[0])
                                    for i in range(2)]


def _stateless(session_id: int, sup: bytes, msk: bytes, queries: list[bytes],
               **kw: Any) -> _Request:
    return _Request(session_id, True, True, SUPPORT_IMAGES=[sup], SUPPORT_MASKS=[msk],
                    QUERY_IMAGES=queries, INDEPENDENT=np.array([1], np.uint8), **kw)


def test_a_batch_answers_each_request_on_its_own(pb, exported_repo, images):
    sup, msk, queries = images
    model = _model(pb, exported_repo, max_request_bytes=2 << 20)
    try:
        bad_mask = _png(np.zeros((5, 5), np.uint8) + 1)
        batch = [_stateless(11, sup, msk, queries),
                 _stateless(12, sup, msk, queries, cancelled=True),
                 _stateless(13, sup, bad_mask, queries),
                 _stateless(14, sup, msk, [b"\x89PNG" + bytes(3 << 20)]),
                 _Request(15, False, False, QUERY_IMAGES=[queries[0]])]
        assert model.execute(batch) is None  # answered through the response senders
        ok, cancelled, bad, big, unknown = [req.response() for req in batch]
    finally:
        model.finalize()
    assert ok.error is None and list(ok.outputs["LABELS"][0]) == [1, 2, 3]
    tracker = Tracker(open_backend(exported_repo))
    want = tracker.segment([(load_image_bytes(sup), load_mask_bytes(msk))],
                           [load_image_bytes(q) for q in queries], mode="independent")
    shapes = ok.outputs["MASK_SHAPES"][0]
    flat, start = ok.outputs["MASKS"][0], 0
    for (h, w), res in zip(shapes, want):
        np.testing.assert_array_equal(flat[start:start + h * w].reshape(h, w), res.mask)
        start += h * w
    assert (cancelled.error.code(), cancelled.error.message()) == (
        "CANCELLED", "the request was cancelled before it ran")
    assert bad.error.code() == "INVALID_ARG" and "SUPPORT_MASKS[0]" in bad.error.message()
    assert big.error.code() == "INVALID_ARG"
    assert "the limit is 2.0 MiB per request" in big.error.message()
    assert unknown.error.code() == "NOT_FOUND"
