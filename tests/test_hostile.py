"""A hostile or crashing client against a real ``sst serve`` (issue 24, items 1-7): a
reduced ``sst.benchmarks.hostile`` run whose every target must hold.

Reduced: 100 failed STARTs against a server of 8 sessions (Triton's sequence slots are
4 x 8 + 64 = 96, so 100 are more than it has), 2000 px queries at K = 2 and 16 labels,
one round of the 60 MiB flood; the crafted TIFFs, the tokens, the keyed session and the
SIGTERM are the issue's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from sst.benchmarks.hostile import SECTIONS, Settings, run_hostile
from sst.tracker.defaults import ENV_ENGINE

SETTINGS = Settings(failed_starts=100, max_sessions=8, deadline_s=10.0, attack_timeout_s=3.0,
                    attack_stall=2, repeats=3, side=2000, labels=(2, 16), margin_gib=4.0,
                    frames=5, flood_requests=8, flood_mib=60, flood_rounds=1, settle_s=10.0)


@pytest.fixture(scope="module")
def report(exported_repo: Path) -> dict[str, Any]:
    return run_hostile(exported_repo, SETTINGS)


def _details(report: dict[str, Any], name: str) -> str:
    section = {k: {kk: vv for kk, vv in v.items() if kk != "processes"}
               if isinstance(v, dict) else v
               for k, v in report["sections"][name].items() if k != "processes"}
    return json.dumps({"target": report["targets"][name], "section": section},
                      indent=1, default=str)[:6000]


def _met(report: dict[str, Any], name: str) -> None:
    assert "error" not in report["sections"][name], _details(report, name)
    assert report["targets"][name]["met"] is True, _details(report, name)


@pytest.mark.triton
@pytest.mark.slow
def test_failed_starts_never_ended_leave_sessions_and_requests_as_fast(
        report: dict[str, Any]) -> None:
    _met(report, "slots")
    attack = report["sections"]["slots"]["attack"]
    assert attack["sent"] == SETTINGS.failed_starts and attack["timed_out"] == 0, attack


@pytest.mark.triton
@pytest.mark.slow
def test_mask_memory_does_not_grow_with_labels(report: dict[str, Any]) -> None:
    _met(report, "labels")
    assert report["targets"]["labels"]["flat_in_k"] is not None, _details(report, "labels")


@pytest.mark.triton
@pytest.mark.slow
def test_mask_memory_does_not_grow_with_labels_on_the_torch_engine(
        exported_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch engine (``auto``'s choice on many machines) makes its masks its own
    way; the suite's other servers run ONNX Runtime."""
    monkeypatch.setenv(ENV_ENGINE, "torch")
    report = run_hostile(exported_repo, SETTINGS, sections=("labels",))
    _met(report, "labels")
    assert report["targets"]["labels"]["flat_in_k"] is True, _details(report, "labels")


@pytest.mark.triton
@pytest.mark.slow
def test_crafted_tiffs_are_refused_from_their_headers(report: dict[str, Any]) -> None:
    _met(report, "tiff")


@pytest.mark.triton
@pytest.mark.slow
def test_no_token_on_a_command_line_and_no_admin_call_with_one(
        report: dict[str, Any]) -> None:
    _met(report, "tokens")
    for via in ("env", "flags"):
        run = report["sections"]["tokens"][via]
        assert run["admin_attempts"] > 0, run
        assert not run["admin_succeeded_with_server_made_cmdlines"], run


@pytest.mark.triton
@pytest.mark.slow
def test_attacks_on_a_keyed_session_id_change_nothing(report: dict[str, Any]) -> None:
    _met(report, "keys")
    assert report["sections"]["keys"]["attacks_answered"] == [], _details(report, "keys")


@pytest.mark.triton
@pytest.mark.slow
def test_the_door_gives_back_the_memory_of_large_bad_requests(
        report: dict[str, Any]) -> None:
    _met(report, "door_heap")


@pytest.mark.triton
@pytest.mark.slow
def test_sigterm_after_a_failed_start_exits_0(report: dict[str, Any]) -> None:
    _met(report, "sigterm")


@pytest.mark.triton
@pytest.mark.slow
def test_every_server_stopped_whole_and_left_no_shared_memory(
        report: dict[str, Any]) -> None:
    stops = []
    for name in SECTIONS:
        section = report["sections"][name]
        for key in ("stop", "env", "flags"):
            if isinstance(section.get(key), dict):
                stops.append(section[key].get("stop", section[key]))
        if name == "sigterm":
            stops.append(section)
    assert len(stops) == 8, [s.keys() for s in stops]
    for stop in stops:
        assert stop["shared_memory"]["still_present"] == [], stop["shared_memory"]
        for pid, created in stop["processes"]:
            try:
                alive = psutil.Process(pid).create_time() == created
            except psutil.Error:
                alive = False
            assert not alive, f"process {pid} of a stopped server is still running"
