"""Triton's perf_analyzer for the serving benchmarks: its input data (made from the
orchestrator's wire contract, :func:`sst.tracker.serving.wire.perf_analyzer_inputs`),
finding the binary, one run per concurrency level, and its CSV."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst.benchmarks.common import log_progress
from sst.tracker.serving.wire import perf_analyzer_inputs

if TYPE_CHECKING:
    from sst.benchmarks.serving_load import Settings, Workload


SETUP_SCRIPT = Path(__file__).resolve().parent / "setup_perf_analyzer.sh"
TOOLS_WRAPPER = Path(__file__).resolve().parent / ".tools-venv" / "bin" / "perf_analyzer.sh"
ENV_PERF_ANALYZER = "SST_PERF_ANALYZER"
_LATENCY_COLUMN = re.compile(r"(p\d+|avg) latency")


def segment_input_data(work: Workload) -> dict[str, Any]:
    """``sst_segment`` requests (used round-robin): the support and one query each."""
    return {"data": [perf_analyzer_inputs(SUPPORT_IMAGES=[work.support],
                                          SUPPORT_MASKS=[work.mask], QUERY_IMAGES=[q])
                     for q in work.queries]}


def sequence_input_data(work: Workload) -> dict[str, Any]:
    """One ``sst_tracker`` data stream: the START step carries the support, each later
    step one query; replayed for every sequence (length ``1 + len(queries)``)."""
    start = perf_analyzer_inputs(SUPPORT_IMAGES=[work.support], SUPPORT_MASKS=[work.mask])
    return {"data": [[start, *(perf_analyzer_inputs(QUERY_IMAGES=[q]) for q in work.queries)]]}


def _csv_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_perf_csv(text: str) -> list[dict[str, float]]:
    """Rows of a perf_analyzer ``-f`` CSV, sorted by concurrency, latencies in seconds.

    Each row has ``concurrency``, ``throughput_per_s`` and ``p50_s``/``p90_s``/``p95_s``/
    ``p99_s`` (and ``avg_s`` when present), plus every other numeric column under its
    own name (server-side columns stay in microseconds, as perf_analyzer writes them).
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    rows = []
    for raw in csv.DictReader(io.StringIO("\n".join(lines))):
        row: dict[str, float] = {}
        for key, value in raw.items():
            if key is None or value is None:
                continue
            number = _csv_number(value.strip())
            if number is None:
                continue
            name = key.strip()
            lower = name.lower()
            if lower == "concurrency":
                row["concurrency"] = number
            elif lower == "inferences/second":
                row["throughput_per_s"] = number
            elif _LATENCY_COLUMN.fullmatch(lower):
                row[f"{lower.split()[0]}_s"] = number / 1e6
            else:
                row[name] = number
        if "concurrency" in row and "throughput_per_s" in row:
            rows.append(row)
    return sorted(rows, key=lambda r: r["concurrency"])


def _runs(binary: Path) -> bool:
    try:
        res = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and "perf analyzer" in (res.stdout + res.stderr).lower()


def find_perf_analyzer(explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """A working perf_analyzer: ``explicit``, ``$SST_PERF_ANALYZER``, the setup script's
    wrapper, then ``perf_analyzer`` on PATH. Returns ``(path or None, message)``."""
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("--perf-analyzer", Path(explicit)))
    if os.environ.get(ENV_PERF_ANALYZER):
        candidates.append((f"${ENV_PERF_ANALYZER}", Path(os.environ[ENV_PERF_ANALYZER])))
    candidates.append(("benchmarks/.tools-venv", TOOLS_WRAPPER))
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(("PATH", Path(on_path)))
    tried = []
    for origin, path in candidates:
        if path.is_file() and _runs(path):
            return path, f"perf_analyzer: {path} ({origin})"
        tried.append(f"{path} ({origin})")
    return None, ("perf_analyzer is not available (tried: " + ", ".join(tried) + "). "
                  f"Install it with `bash {SETUP_SCRIPT}` (Debian's libb64-0d and the "
                  "tritonclient 2.41.0 wheel, which carries the binary, in a tools venv); "
                  "skipping the perf_analyzer sweeps.")


def _loopback_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        parts = [p for p in env.get(key, "").split(",") if p]
        env[key] = ",".join([*parts, "127.0.0.1", "localhost"])
    return env


def perf_analyzer_command(binary: Path, url: str, model: str, input_json: Path,
                          concurrency: int, csv_path: Path, window_requests: int,
                          sequence_length: int | None = None,
                          sequence_ids: tuple[int, int] | None = None,
                          headers: Mapping[str, str] | None = None) -> list[str]:
    """One perf_analyzer run at one concurrency: gRPC, count windows, 3 windows taken as
    they come (a huge stability percentage) so that the run time stays bounded.
    ``headers``: sent with its calls (the admin token: it reads the server statistics,
    which `sst serve` keeps behind it)."""
    cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(input_json),
           "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-mode", "count_windows",
           "--measurement-request-count", str(window_requests),
           "--max-trials", "3", "--stability-percentage", "999", "-f", str(csv_path)]
    if sequence_length is not None:
        cmd += ["--sequence-length", str(sequence_length), "--sequence-length-variation", "0"]
    if sequence_ids is not None:
        cmd += ["--sequence-id-range", f"{sequence_ids[0]}:{sequence_ids[1]}"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}:{value}"]
    return cmd


def run_perf_sweep(binary: Path, url: str, model: str, input_json: Path,
                   settings: Settings, workdir: Path, sequence_length: int | None = None,
                   headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """perf_analyzer once per concurrency level; failures are recorded, not raised."""
    levels: list[dict[str, float]] = []
    errors: list[str] = []
    for i, c in enumerate(settings.concurrency):
        csv_path = workdir / f"{model}_c{c}.csv"
        ids = None
        if sequence_length is not None:
            # Fresh correlation IDs for every run (a run may stop with sequences still
            # open on the server); perf_analyzer parses them as 32-bit ints.
            ids = (1 + i * 1_000_000, (i + 1) * 1_000_000)
        cmd = perf_analyzer_command(binary, url, model, input_json, c, csv_path,
                                    settings.window_requests, sequence_length, ids, headers)
        t = time.perf_counter()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=_loopback_env(),
                                 timeout=settings.perf_timeout_s)
        except subprocess.TimeoutExpired:
            errors.append(f"concurrency {c}: no result within {settings.perf_timeout_s:g}s")
            continue
        took = time.perf_counter() - t
        rows = parse_perf_csv(csv_path.read_text()) if csv_path.is_file() else []
        if res.returncode != 0 or not rows:
            tail = (res.stdout + res.stderr).strip().splitlines()[-6:]
            errors.append(f"concurrency {c}: exit {res.returncode}: " + " | ".join(tail))
            continue
        row = dict(rows[0])
        row["wall_s"] = took
        levels.append(row)
        log_progress(f"  perf_analyzer {model} c={c}: p50 {row.get('p50_s', float('nan')):.2f}s, "
             f"{row['throughput_per_s']:.2f}/s ({took:.0f}s)")
    return {"model": model, "levels": levels, "errors": errors,
            "command_example": " ".join(perf_analyzer_command(
                Path("perf_analyzer"), url, model, Path(input_json.name),
                settings.concurrency[0], Path("out.csv"), settings.window_requests,
                sequence_length))}


