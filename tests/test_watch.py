"""``sst watch`` on a fake server and a fake clock: the journal is keyed by path and
content, same-stem files get their own outputs, slow writers are waited for, and the
session ends however the watcher stops."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.client import Client
from sst.client.watch import JOURNAL, run_watch

from .fakes import FakeClock, FakeServer, FakeTransport, image, mask, png


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def rig(tmp_path: Path) -> dict:
    (tmp_path / "support.png").write_bytes(png(image(0)))
    (tmp_path / "mask.png").write_bytes(png(mask()))
    folder = tmp_path / "rig"
    folder.mkdir()
    return {"folder": folder, "out": tmp_path / "out", "server": FakeServer(),
            "clock": FakeClock(), "supports": [(tmp_path / "support.png", tmp_path / "mask.png")]}


def _watch(rig: dict, **kw) -> None:
    clock = rig["clock"]
    client = Client("fake:0", transport=FakeTransport(rig["server"]), clock=clock,
                    sleep=clock.sleep)
    kw = {"poll": 0.5, "settle": 1.0, **kw}
    with client:
        run_watch(client, rig["folder"], rig["supports"], rig["out"], clock=clock,
                  sleep=clock.sleep, **kw)


def _journal(rig: dict) -> list[dict]:
    return [json.loads(x) for x in (rig["out"] / JOURNAL).read_text().splitlines()]


def _queried(rig: dict) -> list[bytes]:
    return [bytes(q) for c in rig["server"].calls if c.kind == "QUERY"
            for q in c.inputs["QUERY_IMAGES"]]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_same_stem_file_is_segmented_too_and_gets_its_own_outputs(rig):
    jpg, pngb = _jpeg(image(1, (24, 32))), png(image(2, (20, 28)))
    (rig["folder"] / "dup.jpg").write_bytes(jpg)
    _watch(rig, once=True)
    (rig["folder"] / "dup.png").write_bytes(pngb)  # lands after dup.jpg is done
    _watch(rig, once=True)

    assert _queried(rig) == [jpg, pngb]  # each segmented once, dup.png not skipped
    lines = _journal(rig)
    assert [(x["name"], x["status"], x["output"], x["sha256"]) for x in lines] == [
        ("dup.jpg", "ok", "dup", _sha(jpg)), ("dup.png", "ok", "dup.png", _sha(pngb))]
    out = rig["out"]
    with Image.open(out / "dup.png") as a, Image.open(out / "dup.png.png") as b:
        assert a.size == (32, 24) and b.size == (28, 20)  # neither overwrote the other
    assert (out / "overlay" / "dup.png").is_file() and (out / "overlay" / "dup.png.png").is_file()
    assert json.loads((out / "dup.png.json").read_text())["query"] == "dup.png"
    assert json.loads((out / "dup.json").read_text())["sha256"] == _sha(jpg)


def test_same_stem_files_present_together_do_not_overwrite_each_other(rig):
    for name, data in [("spec.png", png(image(1))), ("spec.tif", png(image(2)))]:
        (rig["folder"] / name).write_bytes(data)
    _watch(rig, once=True)
    outputs = sorted(x["output"] for x in _journal(rig))
    assert len(outputs) == 2 and outputs[0] == "spec" and outputs[1] in ("spec.png", "spec.tif")
    assert len(_queried(rig)) == 2


def test_a_restarted_watcher_processes_nothing_twice(rig):
    for i in range(3):
        (rig["folder"] / f"img{i}.png").write_bytes(png(image(10 + i)))
    _watch(rig, once=True)
    assert len(_queried(rig)) == 3
    _watch(rig, once=True)
    _watch(rig, once=True)
    assert len(_queried(rig)) == 3 and len(_journal(rig)) == 3


def test_a_file_rewritten_with_new_content_is_segmented_again(rig):
    path = rig["folder"] / "a.png"
    path.write_bytes(png(image(1)))
    _watch(rig, once=True)
    new = png(image(2, (20, 28)))
    path.write_bytes(new)
    _watch(rig, once=True)
    assert _queried(rig)[-1] == new and len(_queried(rig)) == 2
    assert [x["output"] for x in _journal(rig)] == ["a", "a"]  # the same name, updated
    with Image.open(rig["out"] / "a.png") as im:
        assert im.size == (28, 20)


def _half_then_rest(rig: dict, name: str, data: bytes, resume_at: float) -> None:
    path = rig["folder"] / name
    path.write_bytes(data[: len(data) // 2])
    rig["clock"].at(resume_at, lambda: path.write_bytes(data))


def test_a_writer_pausing_seven_seconds_is_waited_for(rig):
    data = png(image(3, (64, 64)))
    _half_then_rest(rig, "slow.png", data, resume_at=7.0)
    _watch(rig, idle_exit=20.0)
    lines = _journal(rig)
    assert [(x["name"], x["status"], x["sha256"]) for x in lines] == [
        ("slow.png", "ok", _sha(data))]  # never marked failed on the way
    assert _queried(rig) == [data]


def test_a_writer_pausing_past_the_grace_period_is_not_failed_forever(rig):
    data = png(image(4, (64, 64)))
    _half_then_rest(rig, "slower.png", data, resume_at=30.0)
    _watch(rig, idle_exit=40.0, decode_grace=10.0)
    lines = _journal(rig)
    assert [x["status"].split(":")[0] for x in lines] == ["failed", "ok"]
    assert lines[0]["sha256"] == _sha(data[: len(data) // 2]) and lines[1]["sha256"] == _sha(data)
    assert _queried(rig) == [data]


def test_a_broken_file_is_failed_once_it_stayed_unchanged_for_the_grace_period(rig):
    (rig["folder"] / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (rig["folder"] / "good.png").write_bytes(png(image(5)))
    _watch(rig, once=True, decode_grace=10.0)
    status = {x["name"]: x["status"] for x in _journal(rig)}
    assert status["good.png"] == "ok"
    assert status["broken.jpg"].startswith("failed: ") and "broken" not in status["good.png"]
    assert rig["clock"].now >= 1.0 + 10.0  # settled, tried, then waited the grace period
    assert len(_queried(rig)) == 1


def test_outputs_written_before_a_crash_are_recovered_from_the_sidecar(rig):
    data = png(image(6))
    (rig["folder"] / "a.png").write_bytes(data)
    _watch(rig, once=True)
    (rig["out"] / JOURNAL).unlink()  # a crash after the outputs, before the journal line
    _watch(rig, once=True)
    [line] = _journal(rig)
    assert line["recovered"] is True and line["sha256"] == _sha(data)
    assert len(_queried(rig)) == 1


def test_journal_lines_without_hashes_still_count_as_done(rig):
    (rig["folder"] / "old.png").write_bytes(png(image(7)))
    rig["out"].mkdir()
    (rig["out"] / JOURNAL).write_text(json.dumps({"name": "old.png", "status": "ok"}) + "\n")
    _watch(rig, once=True)
    assert _queried(rig) == [] and len(_journal(rig)) == 1


def test_the_session_ends_when_the_watcher_is_interrupted(rig):
    (rig["folder"] / "a.png").write_bytes(png(image(8)))

    def interrupt() -> None:
        raise KeyboardInterrupt

    rig["clock"].at(3.0, interrupt)
    with pytest.raises(KeyboardInterrupt):
        _watch(rig)
    kinds = rig["server"].kinds()
    assert [k for k, _ in kinds] == ["START", "QUERY", "END"]
    assert len({sid for _, sid in kinds}) == 1 and rig["server"].sessions == {}


def test_independent_mode_uses_stateless_requests(rig):
    (rig["folder"] / "a.png").write_bytes(png(image(9)))
    _watch(rig, once=True, mode="independent")
    assert [k for k, _ in rig["server"].kinds()] == ["SEGMENT"]
    assert _journal(rig)[0]["status"] == "ok"
