"""The server's mapping of pixels deeper than 8 bits (``INTENSITY``), through
``sst_tracker``'s Triton model with the stand-in ``pb`` of :mod:`tests.test_orchestrator`:
a session's 16-bit images go through one mapping fitted on its support (not one per
image), the answer records it, ``INTENSITY`` chooses it on START, and a bad or changed
value is refused naming the field."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from sst.client import Client
from sst.tracker.defaults import SEGMENT_MODEL, TRACKER_MODEL
from sst.tracker.errors import InputError
from sst.tracker.io.intensity import Normaliser
from sst.tracker.serving import limits
from sst.tracker.serving.wire import (
    INDEPENDENT,
    INTENSITY,
    QUERY_IMAGES,
    SUPPORT_IMAGES,
    SUPPORT_MASKS,
    decode_intensity,
    decode_results,
)

from .fakes import FakeTransport
from .fakes import image as fake_image
from .fakes import mask as fake_mask
from .test_intensity import _iou_per_label, _rescale8, _twelve_bit
from .test_orchestrator import _model, _Request, _stateless, pb  # noqa: F401 (fixture)
from .test_serving import _png, server  # noqa: F401 (fixture)


def _text(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=object)


def _capture(model: Any) -> dict[int, list[np.ndarray]]:
    """The pixels each query frame reaches the engine with, by session, in order."""
    frames: dict[int, list[np.ndarray]] = {}
    submit = model.manager.scheduler.submit

    def spy(frame: Any) -> None:
        origin = frame.tag
        if not origin.reverse:
            frames.setdefault(origin.ticket.request.session_id, []).append(
                np.array(frame.image, copy=True))
        submit(frame)

    model.manager.scheduler.submit = spy
    return frames


def _masks(response: Any) -> list[np.ndarray]:
    return [r.mask for r in decode_results({k: v[0] for k, v in response.outputs.items()})]


def _record(response: Any) -> dict[str, Any]:
    assert response.error is None, response.error.message()
    return json.loads(response.outputs[INTENSITY][0][0])


@pytest.fixture(scope="module")
def deep() -> dict[str, Any]:
    """A 12-bit support (0..4095 in 16 bits) with its mask, a 12-bit query and a dim one
    (0..1023): mapped with its own percentiles the dim one would be stretched 4x."""
    sup, mask = _twelve_bit(0)
    bright = _twelve_bit(40)[0]
    dim = _twelve_bit(41)[0] // 4
    return {"sup": sup, "mask": mask, "queries": [bright, dim]}


def test_a_session_maps_16bit_images_with_its_support_mapping(pb, exported_repo, deep):  # noqa: F811
    sup, mask, queries = deep["sup"], deep["mask"], deep["queries"]
    assert _png(sup)[:8] == b"\x89PNG\r\n\x1a\n" and sup.dtype == np.uint16
    model = _model(pb, exported_repo)
    frames = _capture(model)
    try:
        start = _Request(21, True, False, SUPPORT_IMAGES=[_png(sup)], SUPPORT_MASKS=[_png(mask)])
        model.execute([start])
        first = _Request(21, False, False, QUERY_IMAGES=[_png(queries[0])])
        model.execute([first])
        # the same value as the session's is accepted on a later request
        second = _Request(21, False, True, QUERY_IMAGES=[_png(queries[1])],
                          INTENSITY=_text("auto"))
        model.execute([second])
        # the 8-bit rescale of the same frames, as a session of its own
        flat = [_Request(22, True, False, SUPPORT_IMAGES=[_png(_rescale8(sup))],
                         SUPPORT_MASKS=[_png(mask)])]
        model.execute(flat)
        for i, q in enumerate(queries):
            flat.append(_Request(22, False, i == 1, QUERY_IMAGES=[_png(_rescale8(q))]))
            model.execute(flat[-1:])
        answers = [r.response() for r in (start, first, second, *flat)]
    finally:
        model.finalize()
    # the server's pixels: the support's percentiles, for both queries
    fitted = Normaliser("auto")
    fitted(sup, "support")
    assert len(frames[21]) == 2
    for got, query in zip(frames[21], queries):
        np.testing.assert_array_equal(got, fitted(query, "query"))
    own = Normaliser("auto")(queries[1], "dim")
    assert frames[21][1].max() <= 70 < own.max()  # not stretched to its own range
    records = [_record(a) for a in answers[:3]]
    for rec in records:
        assert rec["mode"] == "auto" and rec["fitted_on"] == "SUPPORT_IMAGES[0]"
        assert rec["percentiles"] == [0.5, 99.5] and rec["input_dtypes"] == ["uint16"]
        assert rec["ranges"] == [[pytest.approx(0, abs=1), pytest.approx(4095, abs=1)]]
    assert records[0] == records[1] == records[2]  # one mapping for the whole session
    flat_record = _record(answers[3])
    assert flat_record["ranges"] is None and flat_record["input_dtypes"] == ["uint8"]
    # the same masks as the 8-bit rescale (within +-1 grey level of it)
    labels = [1, 2, 3]
    for deep_answer, flat_answer in zip(answers[1:3], answers[4:6]):
        (a,), (b,) = _masks(deep_answer), _masks(flat_answer)
        assert min(_iou_per_label(a, b, labels)) >= 0.99
    # the client's decoded results carry the record
    (result,) = decode_results({k: v[0] for k, v in answers[2].outputs.items()})
    assert result.intensity == records[2]


def test_intensity_input_chooses_refuses_and_is_kept(pb, exported_repo, deep,  # noqa: F811
                                                     monkeypatch):
    sup, mask, (bright, _) = deep["sup"], deep["mask"], deep["queries"]
    reads: list[str] = []
    real = limits.header_size
    monkeypatch.setattr(limits, "header_size",
                        lambda blob, field: reads.append(field) or real(blob, field))
    model = _model(pb, exported_repo)
    frames = _capture(model)
    try:
        high = _stateless(31, _png(sup), _png(mask), [_png(bright)],
                          INTENSITY=_text("HighByte"))
        ranged = _stateless(32, _png(sup), _png(mask), [_png(bright)],
                            INTENSITY=_text("range:0,4095"))
        bad = _stateless(33, _png(sup), _png(mask), [_png(bright)],
                         INTENSITY=_text("median"))
        model.execute([high, ranged, bad])
        answers = [r.response() for r in (high, ranged, bad)]
        # every image's header is read once (the refused request's not at all)
        assert sorted(reads) == sorted(["QUERY_IMAGES[0]", "SUPPORT_IMAGES[0]",
                                        "SUPPORT_MASKS[0]"] * 2)
        start = _Request(34, True, False, SUPPORT_IMAGES=[_png(sup)], SUPPORT_MASKS=[_png(mask)],
                         INTENSITY=_text("highbyte"))
        model.execute([start])
        changed = _Request(34, False, False, QUERY_IMAGES=[_png(bright)],
                           INTENSITY=_text("auto"))
        model.execute([changed])
        kept = _Request(34, False, True, QUERY_IMAGES=[_png(bright)])
        model.execute([kept])
        # an 8-bit support leaves auto unfitted: the first deep query fits it
        start8 = _Request(35, True, False, SUPPORT_IMAGES=[_png(_rescale8(sup))],
                          SUPPORT_MASKS=[_png(mask)])
        model.execute([start8])
        deep_q = [_Request(35, False, i == 1, QUERY_IMAGES=[_png(bright)]) for i in range(2)]
        for r in deep_q:
            model.execute([r])
        later = [r.response() for r in (start, changed, kept, start8, *deep_q)]
    finally:
        model.finalize()
    np.testing.assert_array_equal(frames[31][0], np.dstack([bright >> 8] * 3))
    assert frames[31][0].max() <= 15  # a 12-bit image's high byte: almost black
    assert _record(answers[0]) == {"mode": "highbyte", "input_dtypes": ["uint16"]}
    assert _record(answers[1]) == {"mode": "range", "range": [0.0, 4095.0],
                                   "input_dtypes": ["uint16"]}
    np.testing.assert_array_equal(frames[32][0][..., 0], _rescale8(bright))
    assert answers[2].error.code() == "INVALID_ARG"
    message = answers[2].error.message()
    assert "INTENSITY" in message and "'median'" in message and "highbyte" in message
    assert _record(later[0])["mode"] == "highbyte"
    assert later[1].error.code() == "INVALID_ARG"
    assert "INTENSITY" in later[1].error.message() and "session 34" in later[1].error.message()
    assert _record(later[2])["mode"] == "highbyte"  # the session's mapping, kept
    np.testing.assert_array_equal(frames[34][0], np.dstack([bright >> 8] * 3))
    assert _record(later[3])["ranges"] is None  # nothing deep yet
    for answer in later[4:]:
        assert _record(answer)["fitted_on"] == "QUERY_IMAGES[0]"
        assert _record(answer)["input_dtypes"] == ["uint16", "uint8"]
    own = Normaliser("auto")(bright, "q")
    np.testing.assert_array_equal(frames[35][0], own)
    np.testing.assert_array_equal(frames[35][1], own)


class _Recording(FakeTransport):
    """The fake server, answering ``INTENSITY`` the way ``sst_tracker`` does: the record
    of the mapping its START (or stateless request) asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: dict[int, str] = {}

    def infer(self, model: str, inputs: Any, **kw: Any) -> dict[str, np.ndarray]:
        out = super().infer(model, inputs, **kw)
        session_id = kw.get("sequence_id", 0)
        if INTENSITY in inputs:
            self.modes[session_id] = bytes(inputs[INTENSITY][0]).decode()
        record = {"mode": self.modes.get(session_id, "auto"), "input_dtypes": ["uint16"]}
        return {**out, INTENSITY: np.array([json.dumps(record).encode()], dtype=object)}


def test_the_client_sends_intensity_and_returns_the_servers_record():
    transport = _Recording()
    client = Client("fake:0", transport=transport, retry_for=0)
    sup, msk = fake_image(0), fake_mask()
    (res,) = client.segment([sup], [msk], [fake_image(1)], intensity="Range:0,4095")
    assert res.intensity == {"mode": "range:0,4095", "input_dtypes": ["uint16"]}
    with client.open_session([sup], [msk], intensity="highbyte") as session:
        assert session.intensity == {"mode": "highbyte", "input_dtypes": ["uint16"]}
        assert session.segment(fake_image(2)).intensity["mode"] == "highbyte"
        # a later request does not send it again: the session keeps its START's
        sent = [c.inputs for c in transport.server.calls if c.sequence_id == session.session_id]
        assert [INTENSITY in i for i in sent] == [True, False]
    with pytest.raises(InputError, match="intensity: expected one of auto"):
        client.open_session([sup], [msk], intensity="median")
    (plain,) = client.segment([sup], [msk], [fake_image(1)])
    assert INTENSITY not in transport.server.calls[-1].inputs
    assert plain.intensity is not None and plain.intensity["mode"] == "auto"


@pytest.mark.triton
@pytest.mark.slow
def test_a_real_server_maps_16bit_pngs_and_answers_the_record(server, deep):  # noqa: F811
    """Through tritonserver (the generated config.pbtxt, the BYTES input and output) with
    the client library, and through ``sst_segment``, which forwards ``INTENSITY``."""
    sup, mask, (bright, dim) = deep["sup"], deep["mask"], deep["queries"]
    with Client(server.grpc_url, retry_for=0) as client:
        with client.open_session([_png(sup)], [_png(mask)]) as session:
            tracked = [session.segment(_png(q)) for q in (bright, dim)]
            assert session.intensity == tracked[-1].intensity
        deep_res = client.segment([_png(sup)], [_png(mask)], [_png(bright)])
        flat_res = client.segment([_png(_rescale8(sup))], [_png(mask)],
                                  [_png(_rescale8(bright))])
        (high,) = client.segment([_png(sup)], [_png(mask)], [_png(bright)],
                                 intensity="highbyte")
        with pytest.raises(InferenceServerException,
                           match=r"INVALID_ARGUMENT\] INTENSITY: expected one of auto.*'gamma'"):
            client.transport.infer(TRACKER_MODEL, {
                SUPPORT_IMAGES: np.array([_png(sup)], dtype=object),
                SUPPORT_MASKS: np.array([_png(mask)], dtype=object),
                QUERY_IMAGES: np.array([_png(bright)], dtype=object),
                INDEPENDENT: np.ones(1, np.uint8), INTENSITY: _text("gamma")},
                sequence_id=77, start=True, end=True)
        forwarded = client.transport.infer(SEGMENT_MODEL, {
            SUPPORT_IMAGES: np.array([_png(sup)], dtype=object),
            SUPPORT_MASKS: np.array([_png(mask)], dtype=object),
            QUERY_IMAGES: np.array([_png(bright)], dtype=object),
            INTENSITY: _text("range:0,4095")})
    for res in tracked:
        rec = res.intensity
        assert rec["mode"] == "auto" and rec["fitted_on"] == "SUPPORT_IMAGES[0]"
        assert rec["input_dtypes"] == ["uint16"]
        assert rec["ranges"] == [[pytest.approx(0, abs=1), pytest.approx(4095, abs=1)]]
    assert flat_res[0].intensity["input_dtypes"] == ["uint8"]
    assert min(_iou_per_label(deep_res[0].mask, flat_res[0].mask, [1, 2, 3])) >= 0.99
    assert high.intensity == {"mode": "highbyte", "input_dtypes": ["uint16"]}
    assert decode_intensity(forwarded) == {"mode": "range", "range": [0.0, 4095.0],
                                           "input_dtypes": ["uint16"]}
