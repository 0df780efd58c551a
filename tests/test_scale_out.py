"""Replicas behind the session-affine proxy (nginx, and HAProxy for the kill, installed
by deploy/install_proxy.sh when missing): reduced ``sst.benchmarks.scale_out`` runs with
one replica killed and one drained."""

from __future__ import annotations

from pathlib import Path

import pytest

from sst.benchmarks.replicas import alive, install_proxy
from sst.benchmarks.scale_out import run_scale_out


def _installed(kind: str) -> str:
    try:
        return install_proxy(kind)
    except RuntimeError as exc:
        pytest.skip(f"no {kind} here and none could be installed: {exc}")


@pytest.fixture(scope="module")
def nginx() -> str:
    return _installed("nginx")


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_sessions_stay_on_one_replica_and_survive_a_killed_one(exported_repo: Path,
                                                              proxy: str) -> None:
    _installed(proxy)
    report = run_scale_out(exported_repo, replicas=2, sessions=4, frames=6, fault="kill",
                           proxy_kind=proxy)
    frames = report["frames"]
    assert frames["sent"] == 4 * 6
    assert frames["lost"] == 0 and frames["answered_twice"] == 0, frames["errors"]
    # affinity: before the kill no frame reached a replica that did not hold its session
    assert frames["cross_replica_before_kill"] == 0
    moved = report["reprimed_sessions"]
    # the killed replica held the most open sessions (at least half of them)
    assert moved >= 2
    # after it: one frame per moved session found its new replica without it, and was
    # answered there after the client primed the session again
    assert frames["cross_replica"] == moved
    if proxy == "nginx":  # (the per-session replicas come from nginx's access log)
        assert len(report["affinity"]["sessions_on_two_or_more"]) == moved
        assert report["affinity"]["sessions_on_one_replica"] == 4 - moved
    assert report["masks"]["all_equal"], report["masks"]
    assert sum(report["masks"]["verdicts"].values()) == 4 * 6
    survivors = [c for i, c in enumerate(report["exit_codes"]) if i != report["killed_replica"]]
    assert survivors == [0]
    assert report["shared_memory"]["left"] == []
    assert not any(alive(pid) for pid in report["pids_started"]), report["pids_started"]


@pytest.mark.triton
@pytest.mark.slow
def test_a_drained_replica_takes_no_new_session_loses_nothing_and_exits_0(
        exported_repo: Path, nginx: str) -> None:
    report = run_scale_out(exported_repo, replicas=2, sessions=4, frames=6, fault="drain",
                           proxy_kind="nginx")
    frames = report["frames"]
    assert frames["lost"] == 0 and frames["answered_twice"] == 0, frames["errors"]
    assert frames["cross_replica_before_kill"] == 0
    drain = report["drain"]
    assert drain["exit_code"] == 0
    # the replicas' drain (--exit-timeout / 4) then their --exit-timeout (20 s); exit 0
    # above says the exit timeout did not run out
    assert drain["seconds_to_exit"] < 25
    assert drain["starts_taken_while_draining"] == 0  # no new START reached it
    # its open sessions either ended by themselves or were ended by it and moved
    assert report["reprimed_sessions"] <= drain["sessions_ended_by_the_server"]
    assert report["masks"]["all_equal"], report["masks"]
    assert report["shared_memory"]["left"] == []
    assert not any(alive(pid) for pid in report["pids_started"]), report["pids_started"]
