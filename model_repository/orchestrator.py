"""The orchestrator models: thin Triton adapters over the core tracker.

``sst_tracker`` serves sessions through Triton's sequence batcher: the correlation ID
is the session; START carries the support image(s) and mask(s) (and may carry queries);
later requests carry query images, tracked in ``sequential`` mode; END frees the state.
``sst_segment`` serves stateless requests: supports and a batch of queries in, all
their masks out (``independent`` mode).

The components run through BLS calls to the component models (so that on a GPU they
run in native backends and are batched across sessions), or, with the model parameter
``inline_ort=1``, in ONNX Runtime inside this process (for comparison).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sst.tracker.backends import ModelMeta, OrtBackend, load_meta
from sst.tracker.errors import InputError, SessionError, SSTError
from sst.tracker.service import (
    ServiceLimits,
    SessionLimitError,
    SessionManager,
    UnknownSessionError,
    check_raw_image,
    decode_images,
    decode_masks,
    encode_results,
)
from sst.tracker.tracker import Tracker

__all__ = ["BlsBackend", "TrackerModel", "SegmentModel"]

log = logging.getLogger(__name__)

class ComponentUnavailable(SSTError):
    """A component model cannot run now (server starting or shutting down): retry."""


_OUTPUTS = {"image_encoder": ["feat_s0", "feat_s1", "feat_top"],
            "memory_attention": ["conditioned"],
            "mask_decoder": ["mask_logits", "iou", "obj_ptr", "object_score_logits"],
            "memory_encoder": ["maskmem_features"]}


class BlsBackend:
    """Runs the components as Triton models through BLS, in chunks of their max batch."""

    def __init__(self, meta: ModelMeta, max_batch: Mapping[str, int], pb_utils: Any) -> None:
        self.meta = meta
        self.max_batch = dict(max_batch)
        self.pb = pb_utils
        self.attention_batch = 0

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self.pb
        n = next(iter(feeds.values())).shape[0]
        step = self.max_batch.get(component, n) or n
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, n, step):
            req = pb.InferenceRequest(
                model_name=component, requested_output_names=_OUTPUTS[component],
                inputs=[pb.Tensor(k, np.ascontiguousarray(v[s:s + step]))
                        for k, v in feeds.items()])
            resp = req.exec()
            if resp.has_error():
                msg = resp.error().message()
                if "not ready" in msg.lower() or "unavailable" in msg.lower():
                    raise ComponentUnavailable(f"{component} is unavailable: {msg}")
                raise SSTError(f"{component}: {msg}")
            parts.append({k: pb.get_output_tensor_by_name(resp, k).as_numpy()
                          for k in _OUTPUTS[component]})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _error_code(pb: Any, exc: Exception) -> Any:
    if isinstance(exc, UnknownSessionError):
        return pb.TritonError.NOT_FOUND
    if isinstance(exc, SessionLimitError | ComponentUnavailable):
        return pb.TritonError.UNAVAILABLE
    if isinstance(exc, (InputError, SessionError)):
        return pb.TritonError.INVALID_ARG
    return pb.TritonError.INTERNAL


class _Base:
    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        root = Path(args["model_repository"]).parent
        meta = load_meta(root)
        self.limits = ServiceLimits(max_sessions=int(params.get("max_sessions", 64)),
                                    idle_seconds=float(params.get("session_idle_seconds", 600)))
        backend: Any
        if params.get("inline_ort", "0") == "1":
            backend = OrtBackend(root)
        else:
            configs = {comp: (root / comp / "config.pbtxt").read_text() for comp in _OUTPUTS}
            max_batch = {}
            for comp, text in configs.items():
                for line in text.splitlines():
                    if line.startswith("max_batch_size:"):
                        max_batch[comp] = int(line.split(":")[1])
            backend = BlsBackend(meta, max_batch, pb_utils)
            if 'backend: "python"' in configs["memory_attention"]:
                backend.attention_batch = 1  # ONNX Runtime on the CPU: one object per call
        cache_bytes = int(float(params.get("support_cache_mb", 256)) * 2**20)
        self.manager = SessionManager(Tracker(backend, max_labels=self.limits.max_labels,
                                              support_cache_bytes=cache_bytes), self.limits)

    def _strings(self, req: Any, name: str) -> list[bytes]:
        t = self.pb.get_input_tensor_by_name(req, name)
        if t is None:
            return []
        return [bytes(x) for x in t.as_numpy().reshape(-1)]

    def _queries(self, req: Any) -> list[np.ndarray]:
        images = decode_images(self._strings(req, "QUERY_IMAGES"), "QUERY_IMAGES", self.limits)
        raw = self.pb.get_input_tensor_by_name(req, "QUERY_IMAGE_RAW")
        if raw is not None:
            images.append(check_raw_image(raw.as_numpy(), "QUERY_IMAGE_RAW", self.limits))
        return images

    def _supports(self, req: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        images = decode_images(self._strings(req, "SUPPORT_IMAGES"), "SUPPORT_IMAGES",
                               self.limits)
        if not images:
            raise InputError("SUPPORT_IMAGES", "no support image given")
        masks = decode_masks(self._strings(req, "SUPPORT_MASKS"), images, "SUPPORT_MASKS",
                             self.limits)
        return list(zip(images, masks))

    def _response(self, outputs: Mapping[str, np.ndarray]) -> Any:
        return self.pb.InferenceResponse(
            output_tensors=[self.pb.Tensor(k, v) for k, v in outputs.items()])

    def _error(self, exc: Exception) -> Any:
        if isinstance(exc, SSTError):
            msg = str(exc)
        else:
            msg = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("request failed")
        return self.pb.InferenceResponse(error=self.pb.TritonError(msg, _error_code(self.pb, exc)))

    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for req in requests:
            try:
                out.append(self._response(self.handle(req)))
            except Exception as exc:  # every request gets its own answer
                out.append(self._error(exc))
        return out

    def handle(self, req: Any) -> Mapping[str, np.ndarray]:
        raise NotImplementedError

    def finalize(self) -> None:
        del self.manager


class TrackerModel(_Base):
    """``sst_tracker``: sessions over Triton's sequence batcher."""

    def handle(self, req: Any) -> Mapping[str, np.ndarray]:
        pb = self.pb

        def control(name: str) -> float:
            t = pb.get_input_tensor_by_name(req, name)
            return 0.0 if t is None else float(t.as_numpy().reshape(-1)[0])

        sid = int(pb.get_input_tensor_by_name(req, "CORRID").as_numpy().reshape(-1)[0])
        start, end = control("START") > 0.5, control("END") > 0.5
        try:
            queries = self._queries(req)
            if start:
                session = self.manager.start(sid, self._supports(req))
            elif self._strings(req, "SUPPORT_IMAGES"):
                raise InputError("SUPPORT_IMAGES", "supports are only accepted on the START "
                                 "request of a session")
            session, results = self.manager.track(sid, queries)
            return encode_results(session.labels, results)
        finally:
            if end:
                self.manager.end(sid)


class SegmentModel(_Base):
    """``sst_segment``: one stateless request with supports and queries (independent)."""

    def handle(self, req: Any) -> Mapping[str, np.ndarray]:
        supports = self._supports(req)
        queries = self._queries(req)
        labels, results = self.manager.stateless(supports, queries)
        return encode_results(labels, results)
