"""``sst_tracker``: the Triton adapter of the engine (one engine per device).

Triton's sequence batcher (``oldest`` strategy, ``max_batch_size`` > 1, ragged inputs)
hands ``execute()`` the pending requests of many sessions at once. ``execute()`` only
decodes them and hands them to the engine loop (:class:`sst.tracker.serving.loop.EngineLoop`,
one thread and one scheduler for the model's life) and returns None; the loop answers
each request through its response sender (the Python backend's response sender, in its
default, non-decoupled mode: exactly one final response per request) as soon as its own
frames are done. Requests of later ``execute()`` calls join the steps already under
way, so every live session's next frame goes through each component together, and a
large request no longer holds the frames that arrive after it. The correlation ID is
the session; START carries the support image(s) and mask(s) (and may carry queries);
later requests carry query images, tracked in ``sequential`` mode; END frees the state.
A request with START, END and ``INDEPENDENT`` set is stateless: its queries are each
conditioned on its supports alone (``sst_segment`` forwards its requests that way).

Pixels deeper than 8 bits (16-bit PNG/TIFF, float TIFF) go through the session's one
mapping to 8 bits (``INTENSITY`` on START: ``auto`` by default, fitted on the support;
:mod:`sst.tracker.serving.sessions`): a START or stateless request's images are mapped
here, while decoding, and so are a later request's queries once the session's mapping is
settled (fitted, or not ``auto``; the session manager maps them otherwise, on the engine
loop's thread). Every answer carries the mapping's record (``INTENSITY``, JSON), and the
served model's (``MODEL``, JSON: whether its weights are random, read from the export's
``sst_model.json`` at start).

State stays here, with the models: the memory banks and primed supports live in the
engine, on its device. Per frame only image bytes come in and masks and scores go out.
Images are decoded in a thread pool. The components run in this process: on the CPU the
default engine (``auto``: the fastest measured here, recorded with its reason in the
``MODEL`` record; or the one ``sst serve --engine`` named), or PyTorch on ``device`` in
``precision`` (``engine=torch``, the GPU path); with ``components=bls`` they run as the
Triton component models instead (a decomposed deployment, for comparison).

Metrics (Prometheus, on the server's metrics port): ``sst_component_calls_total`` and
``sst_component_items_total`` per component, ``sst_sessions_live``,
``sst_sessions_expired_total``, ``sst_support_cache_hits_total``,
``sst_support_cache_misses_total`` and ``sst_bank_bytes``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from sst.export.meta import ModelMeta, load_meta
from sst.tracker.defaults import SUPPORT_CACHE_MB
from sst.tracker.engine import Engine, FrameResult
from sst.tracker.engine_choice import engine_record, open_backend
from sst.tracker.errors import (
    ComponentUnavailable,
    InputError,
    RequestCancelled,
    SessionError,
    SessionLimitError,
    SSTError,
    UnknownSessionError,
    tag,
)
from sst.tracker.instrument import InstrumentedBackend
from sst.tracker.io.intensity import Intensity, Normaliser
from sst.tracker.ops import mask_labels
from sst.tracker.serving import wire
from sst.tracker.serving.limits import check_mask_work, measure_request
from sst.tracker.serving.loop import EngineLoop, ServerStopping
from sst.tracker.serving.memory import trim_heap
from sst.tracker.serving.sessions import (
    Request,
    ServiceConfig,
    SessionManager,
    check_raw_image,
    decode_masks,
    encode_results,
    normalise_images,
    read_images,
    settled,
)

__all__ = ["BlsBackend", "TrackerModel", "COMPONENT_OUTPUTS"]

log = logging.getLogger(__name__)


COMPONENT_OUTPUTS = {"image_encoder": ["feat_s0", "feat_s1", "feat_top"],
                     "memory_attention": ["conditioned"],
                     "mask_decoder": ["mask_logits", "iou", "obj_ptr", "object_score_logits"],
                     "memory_encoder": ["maskmem_features"]}


class BlsBackend:
    """Runs the components as Triton models through BLS, in chunks of their max batch
    (decomposed deployments). Outputs are asked for in CPU memory, so that GPU
    component models (TensorRT, ONNX Runtime on CUDA) hand back host arrays."""

    def __init__(self, meta: ModelMeta, max_batch: Mapping[str, int], pb_utils: Any) -> None:
        self.meta = meta
        self.engine_name = "triton-components"
        self.max_batch = dict(max_batch)
        self.pb = pb_utils
        self._cpu = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self.pb
        n = next(iter(feeds.values())).shape[0]
        step = self.max_batch.get(component, n) or n
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, n, step):
            req = pb.InferenceRequest(
                model_name=component, requested_output_names=COMPONENT_OUTPUTS[component],
                inputs=[pb.Tensor(k, np.ascontiguousarray(v[s:s + step]))
                        for k, v in feeds.items()], preferred_memory=self._cpu)
            resp = req.exec()
            if resp.has_error():
                err = resp.error()
                if err.code() == pb.TritonError.UNAVAILABLE:
                    raise ComponentUnavailable(f"{component} is unavailable: {err.message()}")
                raise SSTError(f"{component}: {err.message()}")
            parts.append({k: pb.get_output_tensor_by_name(resp, k).as_numpy()
                          for k in COMPONENT_OUTPUTS[component]})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def error_code(pb: Any, exc: Exception) -> Any:
    """The one exception -> status code table of the server."""
    if isinstance(exc, UnknownSessionError):
        return pb.TritonError.NOT_FOUND
    if isinstance(exc, RequestCancelled):  # CANCELLED where this Triton has it
        return getattr(pb.TritonError, "CANCELLED", pb.TritonError.INTERNAL)
    if isinstance(exc, SessionLimitError | ComponentUnavailable | ServerStopping):
        return pb.TritonError.UNAVAILABLE
    if isinstance(exc, InputError | SessionError):
        return pb.TritonError.INVALID_ARG
    return pb.TritonError.INTERNAL


class _Metrics:
    """The engine's counters as Triton custom metrics (pushed after every batch)."""

    def __init__(self, pb: Any) -> None:
        fam = pb.MetricFamily
        counter, gauge = fam.COUNTER, fam.GAUGE
        calls = fam(name="sst_component_calls_total", kind=counter,
                    description="Calls of each component (one call is one batch)")
        items = fam(name="sst_component_items_total", kind=counter,
                    description="Items through each component: frames for the image "
                                "encoder, objects for the others")
        self.calls = {c: calls.Metric(labels={"component": c}) for c in COMPONENT_OUTPUTS}
        self.items = {c: items.Metric(labels={"component": c}) for c in COMPONENT_OUTPUTS}
        # a family must outlive its metrics: keep every family referenced here
        self.families = [calls, items] + [fam(name=n, kind=k, description=d) for n, k, d in (
            ("sst_sessions_live", gauge, "Sessions held by the engine"),
            ("sst_sessions_expired_total", counter, "Sessions dropped for idling"),
            ("sst_support_cache_hits_total", counter, "Supports primed from the cache"),
            ("sst_support_cache_misses_total", counter, "Supports encoded and primed"),
            ("sst_bank_bytes", gauge, "Bytes held by the live sessions' memory banks"))]
        self.live, self.expired, self.hits, self.misses, self.bank = (
            f.Metric(labels={}) for f in self.families[2:])
        self._sent: dict[str, float] = {}

    def _add(self, key: str, metric: Any, total: float) -> None:
        delta = total - self._sent.get(key, 0.0)
        if delta > 0:
            metric.increment(delta)
        self._sent[key] = total

    def update(self, manager: SessionManager, backend: InstrumentedBackend) -> None:
        for c in COMPONENT_OUTPUTS:
            self._add("calls:" + c, self.calls[c], backend.calls[c])
            self._add("items:" + c, self.items[c], backend.items[c])
        cache = manager.engine.support_cache
        if cache is not None:
            self._add("hits", self.hits, cache.hits)
            self._add("misses", self.misses, cache.misses)
        self._add("expired", self.expired, manager.expired_total)
        self.live.set(len(manager))
        self.bank.set(manager.bank_bytes)


#: A request with more bytes than this leaves freed heap behind: return it to the system.
_RELEASE_AFTER_BYTES = 16 << 20


def _release_memory() -> None:
    """Collect garbage and hand the free C heap pages back (:func:`trim_heap`)."""
    gc.collect()
    trim_heap()


class TrackerModel:
    """``sst_tracker``: sessions and stateless requests over one engine."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self._large = False
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        root = Path(args["model_repository"]).parent
        meta = load_meta(root)
        #: Sent with every answer (``MODEL``): an untrained model never answers unmarked.
        self.model_record = meta.record()
        if meta.random_weights:
            log.warning("serving %s with RANDOM weights (seed %s): every answer is "
                        "meaningless, and says so", meta.model, meta.seed)
        d = ServiceConfig()
        self.limits = ServiceConfig(
            max_sessions=int(params.get("max_sessions", d.max_sessions)),
            idle_seconds=float(params.get("session_idle_seconds", d.idle_seconds)),
            max_request_bytes=int(params.get("max_request_bytes", d.max_request_bytes)),
            max_request_pixels=int(params.get("max_request_pixels", d.max_request_pixels)))
        inner: Any
        if params.get("components", "inline") == "bls":
            max_batch = {}
            for comp in COMPONENT_OUTPUTS:
                cfg = text_format.Parse((root / comp / "config.pbtxt").read_text(),
                                        model_config_pb2.ModelConfig())
                max_batch[comp] = int(cfg.max_batch_size)
            inner = BlsBackend(meta, max_batch, pb_utils)
        elif params.get("engine") == "torch":
            inner = open_backend(root, "torch", device=params.get("device", "cuda"),
                                 precision=params.get("precision") or "fp16")
        else:
            # no CPU arena: what a large or many-query request needed goes back after it
            # (with the arena the process kept its high-water mark for good)
            inner = open_backend(root, params.get("engine") or None, memory_arena=False)
        #: The engine, in every answer's MODEL record: what runs, and why it was chosen.
        self.model_record["engine"] = engine_record(inner)
        self.backend = InstrumentedBackend(inner)
        cache_bytes = int(float(params.get("support_cache_mb", SUPPORT_CACHE_MB)) * 2**20)
        engine = Engine(self.backend, max_labels=self.limits.max_labels,
                        support_cache_bytes=cache_bytes)
        self.manager = SessionManager(engine, self.limits)
        self.decoders = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)),
                                           thread_name_prefix="sst-decode")
        self.metrics = _Metrics(pb_utils)
        self.loop = EngineLoop(self.manager, self._answer, self._after_step)

    # ----------------------------------------------------------------- decoding
    def _strings(self, req: Any, name: str) -> list[bytes]:
        t = self.pb.get_input_tensor_by_name(req, name)
        if t is None:
            return []
        return [bytes(x) for x in t.as_numpy().reshape(-1)]

    def _flag(self, req: Any, name: str) -> bool:
        t = self.pb.get_input_tensor_by_name(req, name)
        return t is not None and float(t.as_numpy().reshape(-1)[0]) > 0.5

    def _intensity(self, req: Any) -> Intensity | None:
        values = self._strings(req, wire.INTENSITY)
        if not values:
            return None
        if len(values) != 1:
            raise InputError(wire.INTENSITY, f"expected one value, got {len(values)}")
        try:
            text = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(wire.INTENSITY, f"expected UTF-8 text, got {values[0][:40]!r}"
                             ) from None
        return Intensity.parse(text, field=wire.INTENSITY)

    def _parse(self, req: Any) -> Request | Exception:
        """One wire request -> :class:`Request` (images decoded), or its error."""
        pb = self.pb
        try:
            if req.is_cancelled():
                return RequestCancelled("the request was cancelled before it ran")
            corrid = pb.get_input_tensor_by_name(req, wire.CORRID)
            session_id = int(corrid.as_numpy().reshape(-1)[0])
            parsed = Request(session_id=session_id, start=self._flag(req, wire.START),
                             end=self._flag(req, wire.END),
                             independent=self._flag(req, wire.INDEPENDENT),
                             key=b"".join(self._strings(req, wire.SESSION_KEY)),
                             quality=self._flag(req, wire.QUALITY),
                             intensity=self._intensity(req))
            blobs = {n: self._strings(req, n)
                     for n in wire.IMAGE_INPUTS}
            raw_t = pb.get_input_tensor_by_name(req, wire.QUERY_IMAGE_RAW)
            raw = None if raw_t is None else raw_t.as_numpy()
            total = sum(len(b) for v in blobs.values() for b in v) + (
                0 if raw is None else int(raw.nbytes))
            self._sizes.append(total)  # list.append: safe from the decoding threads
            # bytes, counts and every header (pixels, decoded bytes, pages) against the
            # budgets, before decoding (read once: the decoders below are told so); the
            # mask making (query pixels x labels) with the session's labels, or on START
            # with the support masks', decoded before the queries
            size = measure_request(blobs, raw, self.limits, queries=wire.QUERY_IMAGES,
                                   labels=0 if parsed.start
                                   else self.manager.label_count(session_id))
            images = read_images(blobs[wire.SUPPORT_IMAGES], wire.SUPPORT_IMAGES,
                                 self.limits, checked=True)
            masks = decode_masks(blobs[wire.SUPPORT_MASKS], images, wire.SUPPORT_MASKS,
                                 self.limits) if images else []
            if masks:
                labels = set().union(*(mask_labels(m) for m in masks))
                check_mask_work(size.answer_pixels, len(labels), self.limits, wire.QUERY_IMAGES)
            queries = read_images(blobs[wire.QUERY_IMAGES], wire.QUERY_IMAGES, self.limits,
                                  checked=True)
            if raw is not None:
                queries.append(check_raw_image(raw.reshape(raw.shape[-3:]),
                                               wire.QUERY_IMAGE_RAW, self.limits))
            norm: Normaliser | None
            if parsed.start:  # the mapping is chosen and fitted here: supports first
                norm = Normaliser(parsed.intensity or Intensity())
                images = normalise_images(images, wire.SUPPORT_IMAGES, norm)
            else:  # the session's, when it is settled (else the manager maps them)
                norm = self.manager.normaliser(session_id)
                if norm is not None and (not settled(norm) or (
                        parsed.intensity is not None and parsed.intensity != norm.intensity)):
                    norm = None
            if norm is not None:
                queries = normalise_images(queries, wire.QUERY_IMAGES, norm)
                parsed.normaliser = norm
            parsed.queries = queries
            if images:
                parsed.supports = list(zip(images, masks))
            return parsed
        except Exception as exc:
            return exc.with_traceback(None)  # keep no frames (and their buffers) alive

    # ----------------------------------------------------------------- responses
    def _response(self, labels: list[int], results: list[FrameResult],
                  quality: np.ndarray | None, intensity: dict[str, Any] | None) -> Any:
        out = encode_results(labels, results, quality, intensity, self.model_record)
        return self.pb.InferenceResponse(
            output_tensors=[self.pb.Tensor(k, v[None]) for k, v in out.items()])

    def _error(self, exc: Exception) -> Any:
        if isinstance(exc, SSTError):
            msg = tag(exc.reason, str(exc))
        else:
            msg = f"internal error: {type(exc).__name__}: {exc}"
            log.error("request failed: %s", msg)
        return self.pb.InferenceResponse(error=self.pb.TritonError(msg, error_code(self.pb,
                                                                                    exc)))

    def _answer(self, token: tuple[Any, Request | Exception], outcome: Any) -> None:
        """Send one request's answer (on the engine loop's thread); ``token`` is its
        response sender and its parsed request (whose mapping the answer records)."""
        sender, parsed = token
        norm = parsed.normaliser if isinstance(parsed, Request) else None
        if isinstance(outcome, Exception):
            response = self._error(outcome)
        else:
            labels, results, quality = outcome
            response = self._response(labels, results, quality,
                                      None if norm is None else norm.record())
        sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _after_step(self) -> None:
        self.metrics.update(self.manager, self.backend)
        if self._large:  # a large request went through: heap back once it is freed
            self._large = False
            threading.Timer(0.5, _release_memory).start()

    def execute(self, requests: list[Any]) -> None:
        """Decode the batch and hand it to the engine loop, which answers each request
        through its response sender as soon as its own frames are done; Triton can call
        again meanwhile, and those requests join the same steps."""
        self._sizes: list[int] = []  # bytes of each request of this batch
        senders = [req.get_response_sender() for req in requests]
        parsed = list(self.decoders.map(self._parse, requests))
        if max(self._sizes, default=0) > _RELEASE_AFTER_BYTES:
            self._large = True
        self.loop.submit(parsed, list(zip(senders, parsed)))
        return None

    def finalize(self) -> None:
        self.loop.stop()
        self.decoders.shutdown(wait=False)
        del self.manager
        del self.metrics  # metrics before their families
