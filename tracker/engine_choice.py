"""``--engine auto``: the engine that runs a model fastest on this machine, measured once.

The speed of each engine depends on the processor: on a CPU with AMX-BF16 the PyTorch
engine in BF16 is several times ONNX Runtime in FP32, on an AVX2 CPU BF16 does not pay.
So the choice is measured, not assumed. On the first use of a model on a machine,
:func:`choose_engine` times each candidate (:data:`CANDIDATES`, those this machine can
run) on a short sequential pseudo-video of the model's own size, checks each
lower-precision candidate against ONNX Runtime FP32 (the exported graphs, checked
against sam2 at export) with :data:`GATE`, and keeps the fastest that passes. A
candidate other than ONNX Runtime FP32 must beat it by :data:`MARGIN`, so that timing
noise never makes ``auto`` slower than the default it replaces.

The decision is cached in ``<cache>/engine-choice/<key>.json``; the key holds what
makes the timings valid: the CPU model and its vector flags, the thread count, the
versions of torch, ONNX Runtime and this package, and a hash of the model's files. A
changed machine or model is measured again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sst.export.cache import cache_root
from sst.export.meta import load_meta
from sst.tracker.backends import Backend, OrtBackend
from sst.tracker.defaults import ENGINES, ENV_ENGINE
from sst.tracker.errors import ModelError
from sst.tracker.tracker import Tracker

__all__ = ["Candidate", "EngineChoice", "CANDIDATES", "ENGINES", "GATE", "MARGIN",
           "choose_engine", "open_backend", "engine_record", "open_candidate", "machine_key",
           "model_hash", "gate_check", "probe_frames", "bf16_native", "compiled_ready",
           "compiled_packages", "PACKAGES_COMPLETE"]

log = logging.getLogger("sst.engine")


@dataclass(frozen=True)
class Candidate:
    """One way to run the components: ``engine`` (``ort`` | ``torch``), ``precision``
    and, for torch, whether the components are compiled (``torch.compile``)."""

    engine: str
    precision: str = "fp32"
    compiled: bool = False

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.precision}" + ("-compiled" if self.compiled else "")

    @classmethod
    def parse(cls, name: str) -> Candidate:
        parts = name.split("-")
        if not 2 <= len(parts) <= 3 or parts[0] not in ("ort", "torch") or (
                len(parts) == 3 and parts[2] != "compiled"):
            raise ModelError(f"engine candidate {name!r}: expected ENGINE-PRECISION[-compiled]")
        return cls(parts[0], parts[1], len(parts) == 3)


#: What ``auto`` considers, in this order (the first is the reference the others are
#: checked against and must beat). The compiled BF16 engine is measured where its
#: packages are already built for this model and machine, or where ``--compile`` asks
#: for them to be built (about a minute and a half at 512 px on 2 cores, once).
CANDIDATES = (Candidate("ort"), Candidate("torch"), Candidate("torch", "bf16"),
              Candidate("torch", "bf16", compiled=True))
#: A lower-precision candidate passes when its logits are within ``max_abs_logit`` of the
#: reference's, and its masks agree with the reference's on at least ``min_agreement`` of
#: the pixels where the reference is confident (``|logit| > confident``).
GATE = {"max_abs_logit": 0.05, "min_agreement": 0.995, "confident": 1.0}
#: A candidate must be this much faster than the reference to be chosen over it.
MARGIN = 0.05
#: Sequential query frames timed per candidate (after one warm-up frame).
PROBE_FRAMES = 3
_CHOICE_VERSION = 1


@dataclass
class EngineChoice:
    """What ``auto`` chose and why."""

    candidate: str
    reason: str
    seconds_per_frame: dict[str, float] = field(default_factory=dict)
    gate: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    key: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    tuning_seconds: float = 0.0

    @property
    def chosen(self) -> Candidate:
        return Candidate.parse(self.candidate)

    def record(self) -> dict[str, Any]:
        """The JSON form (results.json, the server's MODEL output and the cache)."""
        return {"engine": self.candidate, "reason": self.reason, "cached": self.cached,
                "seconds_per_frame": self.seconds_per_frame, "gate": self.gate,
                "skipped": self.skipped}


def engine_record(backend: Any) -> dict[str, Any]:
    """What ran the components (``results.json``'s and the ``MODEL`` record's
    ``engine``): ``--engine auto``'s choice with its reason and measurements, else the
    engine named (``ort-fp32``, ``torch-bf16`` ...) and, for torch, its device."""
    backend = getattr(backend, "inner", backend)  # an instrumented backend's own
    choice = getattr(backend, "engine_choice", None)
    if choice is not None:
        return dict(choice.record())
    record = {"engine": getattr(backend, "engine_name", type(backend).__name__),
              "reason": "named"}
    if hasattr(backend, "device"):
        record["device"] = str(backend.device)
    return record


# --------------------------------------------------------------------------- the cache key


def _cpu() -> tuple[str, list[str]]:
    name, flags = "", list[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
              "amx_int8", "asimd", "sve", "bf16")
    return (name or platform.processor() or platform.machine(),
            sorted(f for f in set(flags) if f in wanted))


def bf16_native() -> bool:
    """Whether this CPU has BF16 matrix instructions (AMX-BF16 or AVX512-BF16); without
    them BF16 is emulated and never pays."""
    _, flags = _cpu()
    return bool({"amx_bf16", "avx512_bf16", "bf16"} & set(flags))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_hash(model_dir: str | Path) -> str:
    """SHA-256 over the export's metadata and every graph and weight file. Computed once
    per process for files of the same names, sizes and times (a start asks several
    times: the choice's key, the compiled packages' folder)."""
    root = Path(model_dir)
    files = sorted([root / "sst_model.json", *root.glob("*/1/model.onnx*")])
    stamps = tuple((str(p.relative_to(root)), st.st_size, st.st_mtime_ns)
                   for p in files if p.is_file() for st in (p.stat(),))
    return _hash_files(str(root.resolve()), stamps)


@functools.lru_cache(maxsize=16)
def _hash_files(root: str, stamps: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamps:
        h.update(name.encode())
        with (Path(root) / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def machine_key(model_dir: str | Path, threads: int | None = None) -> dict[str, Any]:
    """What a cached choice is valid for."""
    cpu, flags = _cpu()
    return {"version": _CHOICE_VERSION, "cpu": cpu, "flags": flags,
            "threads": threads or os.cpu_count() or 1,
            "torch": _version("torch"), "onnxruntime": _version("onnxruntime"),
            "sst": _version("sst-serve"), "model": model_hash(model_dir)}


def _cache_path(key: dict[str, Any], cache_dir: Path | None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (cache_dir or cache_root() / "engine-choice") / f"{digest}.json"


# --------------------------------------------------------------------------- measuring


def probe_frames(image_size: int, count: int, labels: int = 2
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A support image, its mask and ``count`` queries: a textured field with one
    elliptical part per label, drifting a little from frame to frame, at the model's own
    size (so no resampling is timed)."""
    S = image_size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    images, mask = [], np.zeros((S, S), np.uint8)
    for i in range(count + 1):
        rng = np.random.default_rng(100 + i)
        img = rng.normal(120, 25, (S, S, 3)).astype(np.float32)
        for k in range(labels):
            cy, cx = 0.3 + 0.4 * k / max(labels, 1), 0.5 + 0.02 * i
            inside = ((yy - cy) / 0.14) ** 2 + ((xx - cx) / 0.22) ** 2 <= 1
            img[inside] = img[inside] * 0.3 + np.array([70 * k, 190 - 50 * k, 90]) * 0.7
            if i == 0:
                mask[inside] = k + 1
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images[0], mask, images[1:]


def gate_check(logits: Sequence[np.ndarray], reference: Sequence[np.ndarray],
               gate: dict[str, float] = GATE) -> dict[str, Any]:
    """The largest logit difference and the confident-pixel agreement of a candidate's
    logits against the reference's, and whether they pass ``gate``."""
    worst, agree, confident = 0.0, 0, 0
    for a, b in zip(logits, reference):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
        sure = np.abs(b) > gate["confident"]
        confident += int(sure.sum())
        agree += int(((a > 0) == (b > 0))[sure].sum())
    agreement = agree / confident if confident else 1.0
    return {"max_abs_logit": worst, "agreement": agreement,
            "passed": worst <= gate["max_abs_logit"] and agreement >= gate["min_agreement"]}


Opener = Callable[[Candidate], Any]


def _probe(backend: Any, support: Any, queries: list[np.ndarray]
           ) -> tuple[float, list[np.ndarray]]:
    """Median seconds per sequential frame (the first, warm-up, frame not counted) and
    every frame's logits."""
    out = Tracker(backend).segment([support], queries, mode="sequential")
    seconds = [r.seconds for r in out[1:]] or [out[0].seconds]
    return statistics.median(seconds), [np.asarray(r.logits) for r in out]


def choose_engine(model_dir: str | Path, open_candidate: Opener,
                  candidates: Sequence[Candidate] = CANDIDATES, *,
                  frames: int = PROBE_FRAMES, cache_dir: Path | None = None,
                  use_cache: bool = True, key_extra: dict[str, Any] | None = None
                  ) -> tuple[EngineChoice, Any]:
    """The fastest candidate that passes the gate, and its backend (None when the choice
    came from the cache: open it with ``open_candidate(choice.chosen)``).

    ``open_candidate`` opens a candidate's backend and raises ``RuntimeError`` (the
    reason) where this machine cannot run it. The first candidate is the reference.
    ``key_extra``: more of what the choice depends on (whether compiled packages exist),
    so that a cached choice is measured again when it changes."""
    model_dir = Path(model_dir)
    meta = load_meta(model_dir)
    key = machine_key(model_dir)
    key["candidates"] = [c.name for c in candidates]
    key.update(key_extra or {})
    path = _cache_path(key, cache_dir)
    if use_cache and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                choice = EngineChoice(**{**saved["choice"], "cached": True, "key": key})
                log.info("engine auto: %s (cached: %s)", choice.candidate, choice.reason)
                return choice, None
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache file is measured again
    started = time.perf_counter()
    support_img, support_mask, queries = probe_frames(meta.image_size, frames + 1)
    support = (support_img, support_mask)
    seconds: dict[str, float] = {}
    gates: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    reference: list[np.ndarray] | None = None
    best: tuple[float, Candidate, Any] | None = None
    for cand in candidates:
        try:
            backend = open_candidate(cand)
        except RuntimeError as exc:
            skipped[cand.name] = str(exc)
            continue
        s, logits = _probe(backend, support, queries)
        seconds[cand.name] = round(s, 4)
        if reference is None:
            reference = logits
        else:
            gates[cand.name] = gate_check(logits, reference)
            if not gates[cand.name]["passed"]:
                continue
        limit = best[0] * (1 - MARGIN) if best is not None else float("inf")
        if best is None or s < limit:
            best = (s, cand, backend)
        del backend
    if best is None:
        raise ModelError(f"engine auto: no candidate could run here ({skipped})")
    s, chosen, backend = best
    ref_name = candidates[0].name
    parts = [f"{n} {v:.3f} s/frame" for n, v in seconds.items()]
    reason = (f"fastest of {', '.join(parts)}"
              f"{'' if chosen.name == ref_name else f' (at least {MARGIN:.0%} under {ref_name})'}"
              + "".join(f"; {n} gate max|dlogit| {g['max_abs_logit']:.3g} agreement "
                        f"{g['agreement']:.4f} {'passed' if g['passed'] else 'FAILED'}"
                        for n, g in gates.items())
              + "".join(f"; {n} skipped: {why}" for n, why in skipped.items()))
    choice = EngineChoice(candidate=chosen.name, reason=reason, seconds_per_frame=seconds,
                          gate=gates, skipped=skipped, key=key,
                          tuning_seconds=round(time.perf_counter() - started, 1))
    log.info("engine auto: %s for %s@%d on %s (%d threads): %s; measured in %.0f s, cached "
             "in %s", chosen.name, meta.model, meta.image_size, key["cpu"], key["threads"],
             reason, choice.tuning_seconds, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "choice": {
            k: v for k, v in asdict(choice).items() if k not in ("key", "cached")}},
            indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:  # a read-only cache only costs the next start a measurement
        log.warning("engine auto: could not cache the choice in %s: %s", path, exc)
    return choice, backend


# --------------------------------------------------------------------------- opening


def _compile_cache() -> Path:
    """Where the torch engine keeps its compiled packages between runs."""
    return cache_root() / "torch-compile"


#: Written into a compiled engine's package folder once every package is built.
PACKAGES_COMPLETE = "complete"
#: Raised when what a compiled package holds changes (its folder name includes it).
_COMPILE_VERSION = 1


def compiled_packages(model_dir: str | Path, precision: str = "bf16", device: str = "cpu",
                      cache: Path | None = None) -> Path:
    """The folder of the compiled torch engine's packages for this export, precision and
    device on this machine: named by a hash of the export, the processor and its
    instruction sets (or the GPU), and torch's and sst's versions."""
    key = machine_key(model_dir)
    identity = {k: key[k] for k in ("cpu", "flags", "torch", "sst", "model")}
    identity.update(precision=precision, device=device, version=_COMPILE_VERSION)
    if device.startswith("cuda"):
        import torch

        identity["gpu"] = torch.cuda.get_device_name(torch.device(device))
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return (cache or _compile_cache()) / f"aoti-{digest}"


def compiled_ready(model_dir: str | Path, precision: str = "bf16") -> bool:
    """Whether the compiled torch engine's packages are built for this model here."""
    return (compiled_packages(model_dir, precision) / PACKAGES_COMPLETE).is_file()


def open_candidate(model_dir: str | Path, cand: Candidate, *, memory_arena: bool = True,
                   build: bool = False) -> Backend:
    """The backend of ``cand`` on this CPU; ``RuntimeError`` (the reason) where this
    machine cannot run it. A compiled candidate whose packages are not built yet is
    built only with ``build``."""
    if cand.engine == "ort":
        return OrtBackend(model_dir, memory_arena=memory_arena)
    try:
        # torch is imported only by the engine that needs it (seconds at start-up)
        from sst.tracker.torch_backend import torch_backend
    except ImportError as exc:
        raise RuntimeError(f"PyTorch is not installed ({exc})") from None
    if cand.precision == "bf16" and not bf16_native():
        raise RuntimeError("this CPU has no BF16 matrix instructions (AMX-BF16 or "
                           "AVX512-BF16): BF16 would be emulated")
    if cand.compiled and not build and not compiled_ready(model_dir, cand.precision):
        raise RuntimeError("not built for this model on this machine yet (--compile builds "
                           "it once: about a minute and a half at 512 px on 2 cores)")
    try:
        return torch_backend(model_dir, precision=cand.precision, compiled=cand.compiled,
                             compile_cache=_compile_cache())
    except ModelError as exc:
        raise RuntimeError(str(exc)) from None


def open_backend(model_dir: str | Path, engine: str | None = None,
                 providers: Sequence[str] = ("cpu",), device: str = "cpu",
                 precision: str | None = None, compiled: bool = False,
                 memory_arena: bool = True) -> Backend:
    """The backend for an exported model folder.

    ``engine`` None: ``$SST_ENGINE``, else ``auto``. ``ort`` runs its ONNX graphs on
    ``providers``; ``torch`` rebuilds the same weights (checkpoint or seed recorded at
    export) and runs the export wrappers in PyTorch on
    ``device`` in ``precision`` (default fp32), ``compiled`` or eager; ``auto`` (on the
    CPU) measures once which of :data:`CANDIDATES` is fastest here and passes the gate
    (:func:`choose_engine`), and the backend carries the choice as ``engine_choice``;
    ``compiled`` with ``auto`` builds the compiled candidate's packages where they are
    missing, so that it is measured too.
    ``auto`` with an accelerator named (``providers`` other than the CPU, or a ``device``
    other than ``cpu``) is not measured: ONNX Runtime on those providers, or the torch
    engine on that device (BF16 unless ``precision`` says otherwise)."""
    engine = engine or os.environ.get(ENV_ENGINE) or "auto"
    if engine not in ENGINES:
        raise ModelError(f"engine must be one of {ENGINES}, got {engine!r}"
                         f"{f' (from ${ENV_ENGINE})' if os.environ.get(ENV_ENGINE) else ''}")
    on_cpu = [p.lower() for p in providers] in (["cpu"], ["cpuexecutionprovider"])
    if engine == "auto" and not on_cpu:
        engine = "ort"
    elif engine == "auto" and device != "cpu":
        engine, precision = "torch", precision or "bf16"
    if engine == "ort":
        if compiled or precision not in (None, "fp32") or device != "cpu":
            raise ModelError("--device, --precision and --compile are for the torch engine; "
                             "ONNX Runtime takes --providers and an FP16 export")
        return OrtBackend(model_dir, providers=providers, memory_arena=memory_arena)
    if engine == "torch":
        from sst.tracker.torch_backend import torch_backend

        return torch_backend(model_dir, precision=precision or "fp32", device=device,
                             compiled=compiled, compile_cache=_compile_cache())
    if precision is not None:
        raise ModelError("--precision chooses a torch engine; with --engine auto it is "
                         "measured, not given")
    ready = compiled or (bf16_native() and compiled_ready(model_dir))
    choice, backend = choose_engine(
        model_dir, lambda c: open_candidate(model_dir, c, memory_arena=memory_arena,
                                            build=compiled),
        key_extra={"compiled_packages": ready})
    if backend is None:  # from the cache
        try:
            backend = open_candidate(model_dir, choice.chosen, memory_arena=memory_arena,
                                     build=compiled)
        except RuntimeError as exc:
            raise ModelError(f"engine auto chose {choice.candidate} (cached), which cannot "
                             f"open now: {exc}") from None
    backend.engine_choice = choice
    return backend
