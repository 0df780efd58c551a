"""Acquisition hooks (sst.client.rig): frames pushed by a rig loop into a slower model come
back in order (``block``) or with the stated drops (``drop-oldest``), with their metadata;
the pycro-manager and pymmcore-plus adapters; one real in-process run.

The "slower server" is the real client (sessions, PNG encoding, END) over the in-memory
FakeServer of tests/fakes.py, each query answered after a delay. The push-latency figures
(the 5 ms bound) are measured by ``benchmarks/rig_hook.py``, not asserted here.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.client import Client
from sst.client.rig import FrameSession, RigHook, mda_metadata, pycromanager_metadata
from sst.tracker.errors import InputError
from sst.tracker.result import FrameResult

from .fakes import Call, FakeServer, FakeTransport
from .synthetic import specimen

FRAMES = 50
RATE_HZ = 20.0


def _frame(i: int, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """A 12-bit camera frame in uint16 whose top-left pixel encodes ``i``."""
    f = np.random.default_rng(i).integers(0, 4096, size, dtype=np.uint16)
    f[0, 0] = i
    return f


def _support() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((24, 32), np.uint8)
    mask[4:12, 6:20] = 1
    return _frame(1000), mask


def _blank(rgb: np.ndarray) -> FrameResult:
    """What a model that finds nothing returns for ``rgb``."""
    return FrameResult([1], np.zeros(rgb.shape[:2], np.uint8), np.zeros(1), np.zeros(1))


def _held_model() -> tuple[Callable[[np.ndarray], FrameResult], threading.Event,
                           threading.Event]:
    """A model that sets ``entered`` and then waits (up to 30 s) for ``release``."""
    release, entered = threading.Event(), threading.Event()

    def model(rgb: np.ndarray) -> FrameResult:
        entered.set()
        release.wait(30)
        return _blank(rgb)

    return model, release, entered


def _slow_server(delay: float) -> tuple[FakeServer, Client]:
    def on_call(call: Call) -> None:
        if call.kind == "QUERY":
            time.sleep(delay)

    server = FakeServer(on_call=on_call)
    return server, Client(transport=FakeTransport(server), retry_for=0.0)


def _push_at_rate(hook: RigHook, frames: int = FRAMES) -> None:
    """Push ``frames`` frames on a 20 Hz schedule (as a camera would)."""
    start = time.perf_counter()
    for i in range(frames):
        delay = start + i / RATE_HZ - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        hook.push(_frame(i), {"axes": {"t": i}, "position": {"x": 0.5 * i, "y": 2.0},
                              "timestamp": 1000.0 * i / RATE_HZ})


def _query_images(server: FakeServer) -> list[np.ndarray]:
    out = []
    for call in server.calls:
        if call.kind == "QUERY":
            for blob in call.inputs["QUERY_IMAGES"]:
                with Image.open(io.BytesIO(bytes(blob))) as im:
                    out.append(np.asarray(im))
    return out


def test_block_returns_every_frame_in_order_from_a_slower_server() -> None:
    """50 frames at 20 Hz into a server answering in 80 ms: all 50 come back, in push
    order, each with its metadata; the queue (4) held the rig back instead of dropping."""
    server, client = _slow_server(0.08)
    sup, mask = _support()
    frames = FrameSession.on_server(client, sup, mask)
    waiting: list[int] = []
    hook = RigHook(frames, queue_size=4, policy="block",
                   on_result=lambda r: waiting.append(hook.queued))
    _push_at_rate(hook)
    hook.close()
    assert [r.index for r in hook.results] == list(range(FRAMES))
    assert hook.dropped == [] and all(r.error is None for r in hook.results)
    assert max(waiting) <= 4
    assert [r.metadata["axes"]["t"] for r in hook.results] == list(range(FRAMES))
    assert hook.results[7].metadata["position"] == {"x": 3.5, "y": 2.0}
    assert hook.results[0].name == "frame000000"
    # the server saw the frames in order, normalised once for the session (the support's
    # percentiles): frame i's pixels are the same mapping of its 12-bit values
    sent = _query_images(server)
    assert len(sent) == FRAMES and sent[0].dtype == np.uint8 and sent[0].shape == (24, 32, 3)
    for i in (0, 17, 49):
        np.testing.assert_array_equal(sent[i], frames.intensity(_frame(i)))
    rec = hook.results[-1].intensity
    assert rec["mode"] == "auto" and rec["fitted_on"] == "support"
    assert server.kinds()[0][0] == "START" and server.kinds()[-1][0] == "END"


def test_drop_oldest_states_its_drops_and_keeps_order() -> None:
    """The same 50 frames into a server answering in 150 ms with room for 3: the oldest
    queued frames are dropped, the rest come back in order, the last one always."""
    server, client = _slow_server(0.15)
    sup, mask = _support()
    hook = RigHook(FrameSession.on_server(client, sup, mask), queue_size=3,
                   policy="drop-oldest")
    _push_at_rate(hook)
    hook.close()
    done = [r.index for r in hook.results]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert sorted(done + hook.dropped) == list(range(FRAMES))
    assert len(hook.dropped) >= 10  # 20 Hz into ~6.7 frames/s
    assert FRAMES - 1 in done  # what is queued at close is drained
    assert len(_query_images(server)) == len(done)
    # each frame segmented is the one pushed under its index
    assert all(r.metadata["axes"]["t"] == r.index for r in hook.results)


def test_drop_oldest_push_does_not_wait_for_a_stuck_model() -> None:
    """With the model stuck, 30 pushes still all return (the 3 newest stay queued)."""
    stuck, release, entered = _held_model()
    hook = RigHook(FrameSession(stuck, _support()[1]), queue_size=3, policy="drop-oldest")
    hook.push(_frame(0))
    assert entered.wait(10)  # frame 0 is in the model, which now hangs
    pusher = threading.Thread(target=lambda: [hook.push(_frame(i)) for i in range(1, 30)])
    pusher.start()
    pusher.join(10)
    finished = not pusher.is_alive()
    release.set()
    hook.close()
    assert finished, "a drop-oldest push waited for the model"
    assert len(hook.dropped) == 30 - 1 - 3  # one in the model, three queued
    assert [r.index for r in hook.results] == [0, 27, 28, 29]


def test_block_push_waits_for_room() -> None:
    slow, release, entered = _held_model()
    hook = RigHook(FrameSession(slow, _support()[1]), queue_size=2, policy="block")
    hook.push(_frame(0))
    assert entered.wait(10)
    pushed: list[int] = []
    pusher = threading.Thread(target=lambda: [pushed.append(hook.push(_frame(i)))
                                              for i in range(1, 5)])
    pusher.start()
    deadline = time.monotonic() + 10
    while len(pushed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    pusher.join(0.5)
    assert pusher.is_alive() and pushed == [1, 2]  # 1 in the model + 2 queued: push 3 waits
    release.set()
    pusher.join(10)
    hook.close()
    assert [r.index for r in hook.results] == [0, 1, 2, 3, 4] and hook.dropped == []


def test_failures_bad_options_and_closed_hook() -> None:
    calls = {"n": 0}

    def flaky(rgb: np.ndarray) -> FrameResult:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("camera glitch")
        return _blank(rgb)

    with RigHook(FrameSession(flaky, _support()[1])) as hook:
        for i in range(3):
            hook.push(_frame(i))
        hook.push(np.zeros((4, 4, 7), np.uint16))  # 7 channels: refused by the normaliser
    assert [r.error is None for r in hook.results] == [True, False, True, False]
    assert "camera glitch" in (hook.results[1].error or "")
    assert "(4, 4, 7)" in (hook.results[3].error or "")
    with pytest.raises(InputError, match="closed"):
        hook.push(_frame(0))
    with pytest.raises(InputError, match="policy"):
        RigHook(FrameSession(flaky, _support()[1]), policy="newest")
    with pytest.raises(InputError, match="queue_size"):
        RigHook(FrameSession(flaky, _support()[1]), queue_size=0)


# ------------------------------------------------------------------------- adapters


def test_pycromanager_image_process_fn_passes_the_image_on() -> None:
    """pycro-manager calls ``image_process_fn(image, metadata)`` and saves what it
    returns; its metadata names axes, stage position and elapsed time like this."""
    seen: list = []
    hook = RigHook(FrameSession(_blank, _support()[1]), on_result=seen.append)
    img = _frame(3)
    md = {"Axes": {"time": 3, "channel": "DAPI"}, "XPosition_um_Intended": 12.5,
          "YPositionUm": -4, "ZPositionUm": None, "ElapsedTime-ms": "150.5", "Camera": "Cam"}
    assert hook.image_process_fn(img, md) == (img, md)
    hook.close()
    assert seen[0].metadata == {"axes": {"time": 3, "channel": "DAPI"},
                                "position": {"x": 12.5, "y": -4.0}, "timestamp": 150.5}
    assert pycromanager_metadata({}) == {"axes": {}}


@dataclass
class _MDAEvent:
    """Stands in for useq's MDAEvent: the attributes pymmcore-plus's frameReady carries."""

    index: dict = field(default_factory=dict)
    x_pos: float | None = None
    y_pos: float | None = None
    z_pos: float | None = None


def test_pymmcore_plus_frame_ready_signature() -> None:
    """Stage positions (the MDA run below has no stage): the handler driven with the
    frameReady signal's own arguments ``(img, event, meta)``, the event's and the frame
    metadata's positions."""
    seen: list = []
    hook = RigHook(FrameSession(_blank, _support()[1]), on_result=seen.append)
    event = _MDAEvent({"t": 2, "p": 1, "c": 0}, x_pos=100.0, y_pos=200.0, z_pos=5.0)
    hook.frame_ready(_frame(1), event, {"runner_time_ms": 2500.0, "exposure_ms": 10.0})
    hook.frame_ready(_frame(2), event, {"position": {"x": 101.0, "y": 201.0}})
    hook.close()
    assert seen[0].metadata == {"axes": {"t": 2, "p": 1, "c": 0},
                                "position": {"x": 100.0, "y": 200.0, "z": 5.0},
                                "timestamp": 2500.0}
    assert seen[1].metadata["position"] == {"x": 101.0, "y": 201.0, "z": 5.0}
    assert mda_metadata(None, None) == {"axes": {}}


def test_pymmcore_plus_mda_runner_feeds_the_hook(monkeypatch) -> None:
    """pymmcore-plus's own MDA runner, on its pure-Python core (UniMMCore) with a Python
    camera device: Micro-Manager's demo configuration needs its binary device adapters,
    a download this machine cannot make, so the camera is a SimpleCameraDevice here.
    Frames reach the hook through ``core.mda.events.frameReady`` with the event's index."""
    monkeypatch.setenv("PYMM_LOG_FILE", "0")
    pytest.importorskip("pymmcore_plus")
    useq = pytest.importorskip("useq")
    from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore

    class Camera(SimpleCameraDevice):
        """12-bit frames whose top-left pixel counts the snaps."""

        def __init__(self) -> None:
            super().__init__()
            self.exposure, self.snaps = 10.0, 0

        def get_exposure(self) -> float:
            return self.exposure

        def set_exposure(self, exposure: float) -> None:
            self.exposure = exposure

        def dtype(self) -> type:
            return np.uint16

        def sensor_shape(self) -> tuple[int, int]:
            return (24, 32)

        def snap(self, buffer: np.ndarray) -> dict:
            buffer[:] = _frame(self.snaps)
            self.snaps += 1
            return {}

    core = UniMMCore()
    core.loadPyDevice("Camera", Camera())
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    sent: list[np.ndarray] = []

    def model(rgb: np.ndarray) -> FrameResult:
        sent.append(rgb)
        return _blank(rgb)

    session = FrameSession(model, _support()[1])
    session.intensity(_support()[0], "support")  # fit auto on the support, as on_server does
    hook = RigHook(session, queue_size=2, policy="block")
    core.mda.events.frameReady.connect(hook.frame_ready)
    core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 4}))
    hook.close()
    assert [r.metadata["axes"] for r in hook.results] == [{"t": t} for t in range(4)]
    assert all("timestamp" in r.metadata for r in hook.results)
    json.dumps([r.metadata for r in hook.results])  # plain JSON (no enum keys)
    for i, rgb in enumerate(sent):
        np.testing.assert_array_equal(rgb, session.intensity(_frame(i)))


# ------------------------------------------------------------------------- in process


@pytest.mark.slow
def test_in_process_hook_matches_the_tracker_and_writes_metadata(tmp_path: Path,
                                                                 exported_repo) -> None:
    """The engine in this process behind the hook: 16-bit frames give the masks a session
    of the Tracker gives their normalised pixels, and the outputs carry the metadata."""
    from sst.tracker.backends import OrtBackend
    from sst.tracker.io.omezarr import read_query_zarr
    from sst.tracker.tracker import Tracker

    tracker = Tracker(OrtBackend(exported_repo))
    img, mask = specimen(0)
    sup16 = (img.astype(np.uint16) * 16).mean(axis=2).astype(np.uint16)  # 12-bit grey
    frames16 = [(specimen(30 + i)[0].astype(np.uint16) * 16).mean(axis=2).astype(np.uint16)
                for i in range(3)]
    session = FrameSession.in_process(tracker, sup16, mask)
    with RigHook(session, out=tmp_path / "out", formats=("png", "json", "ome-zarr"),
                 label_names={1: "head", 2: "pronotum", 3: "elytra"}) as hook:
        for i, f in enumerate(frames16):
            hook.push(f, {"axes": {"t": i}, "position": {"x": 1.0 * i}, "timestamp": 10.0 * i})
    assert [r.error for r in hook.results] == [None] * 3
    norm = session.intensity
    ref_session = tracker.start_session([(norm(sup16), mask)])
    expected = list(tracker.track(ref_session, [norm(f) for f in frames16]))
    for got, want in zip(hook.results, expected):
        assert got.result is not None
        np.testing.assert_array_equal(got.result.mask, want.mask)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["intensity"]["mode"] == "auto" and doc["intensity"]["fitted_on"] == "support"
    assert doc["processed"] == 3
    assert {r["query"]: r["metadata"]["axes"]["t"] for r in doc["results"]} == {
        "frame000000": 0, "frame000001": 1, "frame000002": 2}
    back = read_query_zarr(tmp_path / "out" / "ome-zarr" / "frame000002.ome.zarr")
    assert back["attrs"]["metadata"] == {"axes": {"t": 2}, "position": {"x": 2.0},
                                         "timestamp": 20.0}
    np.testing.assert_array_equal(back["mask"], hook.results[2].result.mask)
    assert back["properties"][2]["name"] == "pronotum"
