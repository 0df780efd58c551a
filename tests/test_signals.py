"""SIGTERM to the ``sst`` CLI ends its server session (END is sent) before it exits.

Each test runs the CLI in a child process whose gRPC transport is a fake server
(``tests/fakes.py``) that journals every request to a file; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .fakes import image, mask, png

ROOT = Path(__file__).resolve().parents[1]


def _requests(record: Path) -> list[dict]:
    if not record.is_file():
        return []
    return [json.loads(x) for x in record.read_text().splitlines() if x.strip()]


def _run_until(record: Path, kind: str, argv: list[str], delay: float
               ) -> tuple[subprocess.Popen, list[dict]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes", str(record), str(delay),
                             *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["kind"] == kind for r in _requests(record)):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"the CLI exited early ({proc.returncode}): {out}\n{err}")
    return proc, _requests(record)


def _stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the CLI did not stop within 30 s of SIGTERM")
    return proc.returncode, out, err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "s.png").write_bytes(png(image(0)))
    (tmp_path / "m.png").write_bytes(png(mask()))
    queries = tmp_path / "queries"
    queries.mkdir()
    for i in range(30):
        (queries / f"q{i}.png").write_bytes(png(image(100 + i)))
    return {"root": tmp_path, "support": tmp_path / "s.png", "mask": tmp_path / "m.png",
            "queries": queries, "record": tmp_path / "requests.jsonl"}


def test_sigterm_stops_sst_watch_after_ending_its_session(files):
    argv = ["watch", str(files["queries"]), "--server", "127.0.0.1:1", "--support",
            str(files["support"]), "--support-mask", str(files["mask"]), "--out",
            str(files["root"] / "out"), "--poll", "0.05", "--settle", "0.05"]
    proc, seen = _run_until(files["record"], "QUERY", argv, delay=0.2)
    rc, out, err = _stop(proc)
    requests = _requests(files["record"])
    assert rc == 0, err  # stopping is how a watcher ends
    assert "stopped (SIGTERM)" in out
    assert requests[0]["kind"] == "START" and requests[-1]["kind"] == "END"
    assert requests[-1]["sequence_id"] == requests[0]["sequence_id"] != 0
    assert len(requests) < 2 + 30  # it stopped long before the folder was done


def test_sigterm_stops_sst_segment_with_143_after_ending_its_session(files):
    argv = ["segment", "--server", "127.0.0.1:1", "--support", str(files["support"]),
            "--support-mask", str(files["mask"]), "--queries", str(files["queries"]),
            "--out", str(files["root"] / "out"), "--no-progress"]
    proc, seen = _run_until(files["record"], "QUERY", argv, delay=0.2)
    rc, out, err = _stop(proc)
    requests = _requests(files["record"])
    assert rc == 143, err
    assert "interrupted (SIGTERM)" in err
    assert [r["kind"] for r in requests][-1] == "END"
    assert {r["sequence_id"] for r in requests} == {requests[0]["sequence_id"]}
