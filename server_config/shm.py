"""Shared-memory regions of Triton's Python backend, and removing the orphaned ones.

For every model instance the Python backend creates one POSIX shared-memory region,
``/dev/shm/triton_python_backend_shm_region_<uuid>``, which ``tritonserver`` and the
instance's stub process both map. A server that stops normally unlinks its regions;
one that is killed cannot, and the regions (a few MB each, in RAM) stay until reboot.

A region is **orphaned** when no live process maps it. Only orphaned regions are ever
removed, so the regions of other servers on the machine are safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import psutil

__all__ = ["REGION_PREFIX", "SHM_DIR", "mapped_regions", "regions", "remove_orphans"]

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
REGION_PREFIX = "triton_python_backend_shm_region_"


def regions(shm_dir: Path = SHM_DIR) -> set[str]:
    """Names of the Python backend's regions that exist now."""
    try:
        return {
            entry.name for entry in os.scandir(shm_dir) if entry.name.startswith(REGION_PREFIX)
        }
    except OSError:
        return set()


def _maps_of(proc: psutil.Process) -> set[str]:
    with contextlib.suppress(psutil.Error, OSError):
        return {m.path for m in proc.memory_maps(grouped=True)}
    return set()


def mapped_regions(
    shm_dir: Path = SHM_DIR, pids: Iterable[int] | None = None
) -> dict[str, set[int]]:
    """For each region mapped by a live process (of ``pids``, or any Triton process), the
    pids mapping it.

    A process whose maps cannot be read (another user's, or gone) counts as mapping
    nothing.
    """
    prefix = str(shm_dir / REGION_PREFIX)
    procs: Iterable[psutil.Process]
    if pids is None:
        # Only tritonserver and its Python-backend stubs map these regions.
        procs = (p for p in psutil.process_iter(["name"]) if "triton" in (p.info["name"] or ""))
    else:
        procs = (p for p in (_process(pid) for pid in pids) if p is not None)
    owners: dict[str, set[int]] = {}
    for proc in procs:
        for path in _maps_of(proc):
            if path.startswith(prefix):
                name = path[len(str(shm_dir)) + 1 :].removesuffix(" (deleted)")
                owners.setdefault(name, set()).add(proc.pid)
    return owners


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def remove_orphans(shm_dir: Path = SHM_DIR, candidates: Iterable[str] | None = None) -> list[str]:
    """Remove the regions (all, or ``candidates``) that no live process maps.

    Returns the names removed. Regions still mapped by a live process are kept.
    """
    present = regions(shm_dir)
    wanted = present if candidates is None else present & set(candidates)
    if not wanted:
        return []
    owned = mapped_regions(shm_dir)
    removed = []
    for name in sorted(wanted - owned.keys()):
        try:
            (shm_dir / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove orphaned shared memory %s: %s", shm_dir / name, exc)
            continue
        removed.append(name)
    if removed:
        log.info("removed %d orphaned Python-backend shared-memory region(s)", len(removed))
    return removed
