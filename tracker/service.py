"""Session bookkeeping and request handling for serving, independent of Triton.

The Triton orchestrator models (``model_repository/sst_tracker`` and ``sst_segment``)
are thin adapters: they turn ``pb_utils`` tensors into the plain numpy values used here
and turn :class:`~sst.tracker.errors.SSTError` into per-request error responses.

Wire format (all models):

* images: encoded PNG/JPEG bytes (``BYTES`` tensors), or one raw ``uint8 [H,W,3]`` array;
* support masks: encoded PNG label images (0 = background);
* results: label masks concatenated flat (``MASKS uint8 [sum H*W]``) with their shapes
  (``MASK_SHAPES int32 [Q,2]``), ``LABELS int32 [K]``, and per query and label
  ``OBJECT_SCORES``/``IOUS float32 [Q,K]`` and ``AREAS int64 [Q,K]``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sst.tracker import imageio
from sst.tracker.errors import InputError, SessionError
from sst.tracker.tracker import FrameResult, Session, Tracker

__all__ = ["SessionManager", "ServiceLimits", "encode_results", "decode_images",
           "decode_masks", "new_session_id", "SessionLimitError", "UnknownSessionError"]


class UnknownSessionError(SessionError):
    """The session is not (or no longer) held by the server: prime it again."""


class SessionLimitError(SessionError):
    """The server holds as many sessions as it may."""


def new_session_id() -> int:
    """A random non-zero 63-bit session (correlation) ID: never sequential."""
    return secrets.randbits(63) or 1


@dataclass(frozen=True)
class ServiceLimits:
    max_sessions: int = 64
    idle_seconds: float = 600.0
    max_image_pixels: int = 50_000_000
    max_images_per_request: int = 256
    max_labels: int = 64
    max_request_bytes: int = 64 * 2**20


def _check_bytes(blobs: Sequence[bytes], field: str, limits: ServiceLimits) -> None:
    total = sum(len(b) for b in blobs)
    if total > limits.max_request_bytes:
        raise InputError(field, f"{len(blobs)} encoded images of {total / 2**20:.1f} MiB in "
                         f"all; the limit is {limits.max_request_bytes / 2**20:.1f} MiB per "
                         f"request: send fewer or smaller images per request")


def decode_images(blobs: Sequence[bytes], field: str, limits: ServiceLimits) -> list[np.ndarray]:
    """Decode encoded images after checking, before any decoding, their number, their total
    bytes (``max_request_bytes``) and each one's pixels from its header
    (``max_image_pixels``)."""
    if len(blobs) > limits.max_images_per_request:
        raise InputError(field, f"{len(blobs)} images in one request; the limit is "
                         f"{limits.max_images_per_request}")
    _check_bytes(blobs, field, limits)
    out = []
    for i, blob in enumerate(blobs):
        img = imageio.load_image_bytes(bytes(blob), source=f"{field}[{i}]",
                                       max_pixels=limits.max_image_pixels)
        check_raw_image(img, f"{field}[{i}]", limits)
        out.append(img)
    return out


def check_raw_image(img: np.ndarray, field: str, limits: ServiceLimits) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(field, f"expected a uint8 [H,W,3] image, got {img.dtype} {img.shape}")
    if img.shape[0] * img.shape[1] > limits.max_image_pixels:
        raise InputError(field, f"image is {img.shape[1]}x{img.shape[0]} pixels; the limit is "
                         f"{limits.max_image_pixels} pixels")
    if min(img.shape[:2]) < 8:
        raise InputError(field, f"image is {img.shape[1]}x{img.shape[0]}; at least 8x8 needed")
    return img


def decode_masks(blobs: Sequence[bytes], images: Sequence[np.ndarray], field: str,
                 limits: ServiceLimits) -> list[np.ndarray]:
    if len(blobs) != len(images):
        raise InputError(field, f"{len(blobs)} masks for {len(images)} support images; "
                         f"give one mask per support")
    _check_bytes(blobs, field, limits)
    masks = []
    for i, (blob, img) in enumerate(zip(blobs, images)):
        mask = imageio.load_mask_bytes(bytes(blob), source=f"{field}[{i}]",
                                       image_size=(img.shape[1], img.shape[0]),
                                       max_labels=limits.max_labels,
                                       max_pixels=limits.max_image_pixels)
        if mask.max() > 255:
            raise InputError(f"{field}[{i}]", f"label {int(mask.max())} does not fit the uint8 "
                             f"wire format (labels must be 1..255)")
        masks.append(mask)
    return masks


def encode_results(labels: Sequence[int], results: Sequence[FrameResult]) -> dict[str, np.ndarray]:
    """Results of ``Q`` queries as the wire tensors described in the module docstring."""
    K = len(labels)
    flat = [r.mask.astype(np.uint8).ravel() for r in results]
    return {
        "LABELS": np.asarray(labels, np.int32),
        "MASKS": np.concatenate(flat) if flat else np.zeros(0, np.uint8),
        "MASK_SHAPES": np.asarray([r.mask.shape for r in results], np.int32).reshape(-1, 2),
        "OBJECT_SCORES": np.asarray([r.object_score_logits for r in results],
                                    np.float32).reshape(-1, K),
        "IOUS": np.asarray([r.iou for r in results], np.float32).reshape(-1, K),
        "AREAS": np.asarray([[r.areas[lab] for lab in labels] for r in results],
                            np.int64).reshape(-1, K),
    }


class SessionManager:
    """Live sessions by ID, with an idle expiry and a cap. Thread-safe."""

    def __init__(self, tracker: Tracker, limits: ServiceLimits = ServiceLimits()) -> None:
        self.tracker = tracker
        self.limits = limits
        self._sessions: OrderedDict[int, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.expired_total = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self, now: float | None = None) -> list[int]:
        """Drop sessions idle for longer than the limit; returns their IDs."""
        now = time.monotonic() if now is None else now
        gone = []
        with self._lock:
            for sid, s in list(self._sessions.items()):
                if now - s.last_used > self.limits.idle_seconds:
                    del self._sessions[sid]
                    gone.append(sid)
        self.expired_total += len(gone)
        return gone

    def start(self, sid: int, supports: Sequence[tuple[np.ndarray, np.ndarray]]) -> Session:
        self.expire()
        with self._lock:
            if sid not in self._sessions and len(self._sessions) >= self.limits.max_sessions:
                raise SessionLimitError(
                    f"the server holds {len(self._sessions)} sessions, its limit; end a session "
                    f"(send END) or wait for idle ones to expire "
                    f"({self.limits.idle_seconds:.0f}s)")
        session = self.tracker.start_session(supports)
        with self._lock:
            self._sessions[sid] = session
        return session

    def get(self, sid: int) -> Session:
        self.expire()
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            raise UnknownSessionError(
                f"unknown session {sid}: it expired, ended, or the server restarted; "
                f"start it again with its support (START)")
        session.last_used = time.monotonic()
        return session

    def end(self, sid: int) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def track(self, sid: int, images: Sequence[np.ndarray]) -> tuple[Session, list[FrameResult]]:
        session = self.get(sid)
        return session, list(self.tracker.track(session, images))

    def stateless(self, supports: Sequence[tuple[np.ndarray, np.ndarray]],
                  queries: Sequence[np.ndarray], batch: int = 4
                  ) -> tuple[list[int], list[FrameResult]]:
        """Independent mode over one request's supports and queries; nothing is kept."""
        session = self.tracker.start_session(supports, num_queries=len(queries))
        return session.labels, list(self.tracker.segment_independent(session, queries,
                                                                      batch=batch))
