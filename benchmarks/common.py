"""Helpers shared by the benchmarks: synthetic frames, statistics, RSS, plots, folders.

Everything here is light (numpy, PIL and psutil): the GPU harness imports it on a machine
without Triton's client. The server for the serving benchmarks is in
:mod:`sst.benchmarks.server`.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

__all__ = [
    "DirSnapshot",
    "child_pids",
    "dir_changes",
    "encode_jpeg",
    "encode_png",
    "latency_stats",
    "log_progress",
    "link_repository",
    "machine_description",
    "process_tree",
    "read_rss_kib",
    "save_figure",
    "snapshot_dir",
    "synthetic_frame",
    "tree_rss_kib",
]

#: ``relative path -> (size, mtime_ns)`` of every file below a folder.
DirSnapshot = dict[str, tuple[int, int]]


def log_progress(msg: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def save_results(folder: Path, name: str, doc: Any) -> Path:
    """Write a benchmark's results as indented JSON to ``folder/name`` (the folder made
    when missing); the path written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def machine_description() -> dict[str, Any]:
    """CPU, cores and Python (as the other harnesses print them) plus the load average,
    since other work may share this machine while a benchmark runs."""
    out: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(),
                           "python": platform.python_version()}
    try:
        out["loadavg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    out["mem_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    return out


# --------------------------------------------------------------------------------------
# Synthetic specimen-like frames
# --------------------------------------------------------------------------------------


def synthetic_frame(seed: int, size: tuple[int, int] = (240, 320), shift: float = 0.0,
                    labels: Sequence[int] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """A specimen-like frame: ``(rgb [H,W,3] uint8, label mask [H,W] uint8)``.

    A striped, noisy background of a seeded colour, and one elliptical part per label
    stacked along a vertical body axis; ``shift`` moves the body sideways (a fraction of
    the width), so consecutive frames look like a specimen drifting in the field.
    """
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = rng.integers(50, 190, 3).astype(np.float32) + rng.normal(0, 10, (H, W, 3))
    stripes = np.sin(xx / (6.0 + seed % 4) + yy / 23.0)[..., None]
    img = img + 25.0 * stripes * np.array([0.9, 0.6, 0.3], np.float32)
    mask = np.zeros((H, W), np.uint8)
    n = len(labels)
    cx, cy = W * (0.5 + shift), H * 0.5
    for k, lab in enumerate(labels):
        oy = (k - (n - 1) / 2) * H * 0.21
        ry, rx = H * (0.08 + 0.025 * k), W * (0.11 + 0.025 * k)
        inside = ((yy - cy - oy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        mask[inside] = lab
        colour = np.array([50 + 55 * k, 190 - 45 * k, 80 + 50 * (k % 2)], np.float32)
        img[inside] = 0.35 * img[inside] + 0.65 * colour
    return np.clip(img, 0, 255).astype(np.uint8), mask


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    """JPEG bytes of an RGB ``uint8`` image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` image or label mask."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """``count``, ``mean_s``, ``p50_s``, ``p95_s``, ``p99_s``, ``max_s`` of latencies."""
    if not seconds:
        raise ValueError("no latencies to summarise")
    s = sorted(float(v) for v in seconds)
    return {"count": len(s), "mean_s": sum(s) / len(s), "p50_s": _percentile(s, 50),
            "p95_s": _percentile(s, 95), "p99_s": _percentile(s, 99), "max_s": s[-1]}


# --------------------------------------------------------------------------------------
# Resident memory (psutil)
# --------------------------------------------------------------------------------------


def read_rss_kib(pid: int | None = None) -> int | None:
    """Resident set size of a process in KiB (``None`` if it is gone)."""
    try:
        return int(psutil.Process(pid).memory_info().rss) // 1024
    except psutil.Error:
        return None


def child_pids(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children, grandchildren, ...)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all its descendants."""
    return [pid, *child_pids(pid)]


def tree_rss_kib(pid: int) -> dict[int, int]:
    """Resident set size in KiB of ``pid`` and of each live descendant (the server's
    stubs)."""
    out: dict[int, int] = {}
    for p in process_tree(pid):
        rss = read_rss_kib(p)
        if rss is not None:
            out[p] = rss
    return out


# --------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------


def snapshot_dir(root: Path) -> DirSnapshot:
    """Sizes and modification times of every file below ``root`` (to prove it untouched)."""
    out: DirSnapshot = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def dir_changes(before: Mapping[str, tuple[int, int]],
                after: Mapping[str, tuple[int, int]]) -> list[str]:
    """Files added, removed or modified between two :func:`snapshot_dir` calls."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def link_repository(model_dir: Path, dest: Path) -> Path:
    """Mirror ``model_dir`` under ``dest`` as real folders holding symlinks to its files.

    Triton's Python-backend stubs write ``__pycache__`` next to each ``model.py`` (they
    ignore ``PYTHONDONTWRITEBYTECODE``); serving this view keeps the export folder
    untouched without copying its (large) graphs. Existing ``__pycache__`` folders are
    not mirrored.
    """
    model_dir = model_dir.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if "__pycache__" in rel.parts:
            continue
        target = dest / rel
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.symlink_to(path)
    return dest


def save_figure(fig: Any, path: Path, legend: bool = True) -> None:
    """Finish a benchmark plot: the legend of each axis (small), tight layout, a PNG at
    110 dpi; the figure is closed."""
    if legend:
        for ax in fig.axes:
            ax.legend(fontsize=8)
    import matplotlib.pyplot as plt  # plots only: the harnesses choose the backend first

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
