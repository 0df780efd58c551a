"""Acquisition hooks: an imaging rig pushes camera frames, labels come back, and the
acquisition loop is never held up by the model.

::

    frames = FrameSession.in_process(tracker, support_pixels, support_mask)   # or
    frames = FrameSession.on_server(client, support_pixels, support_mask)
    with RigHook(frames, queue_size=8, policy="drop-oldest", out="run1",
                 formats=("png", "json", "ome-zarr")) as hook:
        for image, meta in camera:              # the rig's own loop
            hook.push(image, {"axes": {"t": t}, "position": {"x": x, "y": y},
                              "timestamp": stamp})
    hook.results     # RigResult per segmented frame, in push order

* :class:`FrameSession`: one SST session fed raw frames (8/12/16-bit or float, grey or
  RGB, ``[H, W]`` or ``[H, W, C]``): each frame is normalised by the session's
  :class:`~sst.tracker.io.intensity.Normaliser` (``auto`` fits its percentiles on the
  support, so every frame gets the same mapping) and tracked as the next frame of the
  session, in process (the engine's :class:`~sst.tracker.tracker.Tracker`) or on a server
  (a :class:`~sst.client.ClientSession`; the normalised pixels are sent). Any callable
  ``rgb [H, W, 3] uint8 -> FrameResult`` can stand in for the model (tests use a slow
  fake).
* :class:`RigHook`: a bounded queue and one background thread in front of a
  FrameSession. :meth:`RigHook.push` copies the frame, queues it and returns; when the
  queue is full the ``policy`` decides: ``block`` waits for room (no frame is lost, the
  rig slows to the model's pace), ``drop-oldest`` drops the oldest queued frame (the
  push never waits; :attr:`RigHook.dropped` lists what was dropped). Results keep push
  order, carry the frame's metadata (axes, position, timestamp) and, with ``out``, are
  written as ``sst segment`` writes them (label PNGs, results.json rows with the
  metadata, OME-Zarr with the metadata as its ``sst`` attribute).
* Adapters: :meth:`RigHook.image_process_fn` is pycro-manager's
  ``Acquisition(image_process_fn=...)`` callback ``(image, metadata) -> (image,
  metadata)``; :meth:`RigHook.frame_ready` is pymmcore-plus's MDA ``frameReady(img,
  event, meta)`` signal handler (``core.mda.events.frameReady.connect(hook.frame_ready)``).
  Neither package is imported: they call the hook with their own arguments.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sst.client._client import Client, to_image_bytes
from sst.client.segment_cli import SegmentSummary
from sst.client.segment_outputs import OutputSet
from sst.tracker import io as sio
from sst.tracker.defaults import MAX_LABELS
from sst.tracker.errors import InputError
from sst.tracker.io import coco, outputs
from sst.tracker.result import FrameResult
from sst.tracker.tracker import Tracker

__all__ = ["POLICIES", "FrameSession", "RigHook", "RigResult", "mda_metadata",
           "pycromanager_metadata"]

log = logging.getLogger("sst.rig")

#: Back-pressure policies of :class:`RigHook`.
POLICIES = ("block", "drop-oldest")


@dataclass
class RigResult:
    """One pushed frame's outcome: ``result`` (None when it failed: ``error`` says why),
    its push ``index``, ``name``, ``metadata``, the seconds the model took (``seconds``)
    and from push to result (``latency``), and the session's intensity mapping."""

    index: int
    name: str
    metadata: dict[str, Any]
    result: FrameResult | None
    error: str | None = None
    seconds: float = 0.0
    latency: float = 0.0
    intensity: dict[str, Any] = field(default_factory=dict)


class FrameSession:
    """One SST session over raw camera frames (see the module docstring).

    Args:
        segment: ``rgb uint8 [H, W, 3] -> FrameResult``, the next frame of the session.
        support: the support's ``uint8 [H, W, 3]`` pixels (already normalised).
        mask: its label mask ``[H, W]``.
        intensity: the session's Normaliser (already fitted on the support).
        close: ends the session (a server session's END).
    """

    def __init__(self, segment: Callable[[np.ndarray], FrameResult], mask: np.ndarray,
                 intensity: sio.Normaliser | None = None,
                 close: Callable[[], None] | None = None, meta: Any = None,
                 server: str | None = None) -> None:
        self._segment = segment
        self.labels = sio.mask_labels(mask)
        self.intensity = intensity if intensity is not None else sio.Normaliser()
        self._close = close
        #: The model's export metadata in process (results.json's model), None on a server.
        self.meta = meta
        #: The server's address (None in process); its answers say which model it serves.
        self.server = server

    @staticmethod
    def _support(image: Any, mask: Any, intensity: str | sio.Intensity, max_labels: int
                 ) -> tuple[np.ndarray, np.ndarray, sio.Normaliser]:
        norm = sio.Normaliser(intensity)
        rgb = norm(image, "support")  # an auto mapping is fitted here, on the support
        lab = sio.validate_mask(mask, "support mask", (rgb.shape[1], rgb.shape[0]), max_labels)
        return rgb, lab, norm

    @classmethod
    def in_process(cls, tracker: Tracker, image: Any, mask: Any,
                   intensity: str | sio.Intensity = "auto") -> FrameSession:
        """A session of the engine in this process (its Tracker facade)."""
        rgb, lab, norm = cls._support(image, mask, intensity, tracker.max_labels)
        session = tracker.start_session([(rgb, lab)])

        def segment(frame: np.ndarray) -> FrameResult:
            return next(iter(tracker.track(session, [frame])))

        return cls(segment, lab, norm, meta=tracker.meta)

    @classmethod
    def on_server(cls, client: Client, image: Any, mask: Any,
                  intensity: str | sio.Intensity = "auto", max_labels: int = MAX_LABELS
                  ) -> FrameSession:
        """A session on an ``sst serve`` server (re-primed by the client if the server
        loses it); frames are sent as their normalised 8-bit pixels."""
        rgb, lab, norm = cls._support(image, mask, intensity, max_labels)
        session = client.open_session([to_image_bytes(rgb)], [sio.label_png_bytes(lab)])
        return cls(session.segment, lab, norm, close=session.close,
                   server=getattr(client, "url", None))

    def segment(self, frame: Any, metadata: Mapping[str, Any] | None = None,
                name: str = "frame", index: int = 0) -> RigResult:
        """Normalise and segment one frame now (in the caller's thread)."""
        return self.run(frame, metadata, name, index)[1]

    def run(self, frame: Any, metadata: Mapping[str, Any] | None = None,
            name: str = "frame", index: int = 0) -> tuple[np.ndarray | None, RigResult]:
        """:meth:`segment`, also returning the normalised ``uint8 [H, W, 3]`` pixels (None
        when the frame could not be normalised)."""
        t = time.perf_counter()
        rgb: np.ndarray | None = None
        try:
            rgb = self.intensity(frame, name)
            res: FrameResult | None = self._segment(rgb)
            error = None
        except Exception as exc:  # reported per frame; the session goes on
            res, error = None, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t
        if res is not None:
            res.seconds = seconds
        return rgb, RigResult(index, name, dict(metadata or {}), res, error, seconds,
                              intensity=self.intensity.record())

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


@dataclass
class _Queued:
    index: int
    name: str
    image: np.ndarray
    metadata: dict[str, Any]
    pushed: float


class RigHook:
    """A frame queue in front of a :class:`FrameSession` (see the module docstring).

    Args:
        session: the FrameSession frames go to.
        queue_size: frames waiting at most (>= 1).
        policy: ``block`` or ``drop-oldest`` when the queue is full.
        on_result: called with each :class:`RigResult`, in push order, on the
            background thread (keep it short; an exception it raises is logged).
        out: a folder to write results to, as ``sst segment`` does (``formats`` among
            :data:`sst.client.segment_outputs.FORMATS`; ``label_names`` for the legend
            and the outputs).
        copy: copy each frame on push (a camera may reuse its buffer); False when the
            caller hands over a frame it will not touch again.
        name_format: frame names from the push index.
        keep_results: keep every RigResult in :attr:`results` (False for a long
            acquisition that takes its results through ``on_result`` or ``out``).
    """

    def __init__(self, session: FrameSession, *, queue_size: int = 8, policy: str = "block",
                 on_result: Callable[[RigResult], None] | None = None,
                 out: str | Path | None = None, formats: Sequence[str] = ("png", "json"),
                 label_names: Mapping[int, str] | None = None, copy: bool = True,
                 name_format: str = "frame{:06d}", keep_results: bool = True) -> None:
        if policy not in POLICIES:
            raise InputError("policy", f"expected one of {POLICIES}, got {policy!r}")
        if queue_size < 1:
            raise InputError("queue_size", f"expected an integer >= 1, got {queue_size}")
        self.session, self.policy, self.queue_size = session, policy, queue_size
        self.on_result, self.copy, self.name_format = on_result, copy, name_format
        self.keep_results = keep_results
        #: Frames done: segmented or failed (not counting those dropped).
        self.done = 0
        self.writer: OutputSet | None = None
        if out is not None:
            folder = outputs.check_output_dir(out)
            names = coco.names_for(session.labels, dict(label_names or {}))
            self.writer = OutputSet(folder, list(formats), session.labels, names,
                                    legend=bool(label_names), intensity=session.intensity,
                                    random_weights=getattr(session.meta, "random_weights",
                                                           None),
                                    server=getattr(session, "server", None))
        self.summary = SegmentSummary()
        #: Results in push order (dropped frames have none).
        self.results: list[RigResult] = []
        #: Push indices of the frames dropped (``drop-oldest``, or queued at a close
        #: without draining).
        self.dropped: list[int] = []
        #: Seconds each push took (the time the acquisition loop was held).
        self.push_seconds: list[float] = []
        self._queue: collections.deque[_Queued] = collections.deque()
        self._cond = threading.Condition()
        self._next = 0
        self._closing = False
        self._busy = False
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._work, name="sst-rig", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the rig's side

    def push(self, image: Any, metadata: Mapping[str, Any] | None = None,
             name: str | None = None) -> int:
        """Queue one frame; returns its index. ``block``: waits while the queue is full;
        ``drop-oldest``: never waits (the oldest queued frame makes room).

        Raises:
            InputError: the hook is closed.
        """
        t = time.perf_counter()
        frame = np.array(image, copy=True) if self.copy else np.asarray(image)
        with self._cond:
            if self._closing:
                raise InputError("push", "the rig hook is closed")
            index = self._next
            self._next += 1
            if len(self._queue) >= self.queue_size:
                if self.policy == "block":
                    while len(self._queue) >= self.queue_size and not self._closing:
                        self._cond.wait()
                else:
                    old = self._queue.popleft()
                    self.dropped.append(old.index)
                    log.info("queue full: dropped frame %d (%s)", old.index, old.name)
            self._queue.append(_Queued(index, name or self.name_format.format(index), frame,
                                       dict(metadata or {}), t))
            self._cond.notify_all()
        self.push_seconds.append(time.perf_counter() - t)
        return index

    def image_process_fn(self, image: np.ndarray, metadata: dict[str, Any]
                         ) -> tuple[np.ndarray, dict[str, Any]]:
        """pycro-manager's ``image_process_fn``: pushes the frame (with the axes, position
        and time of its metadata) and hands the image on unchanged to be saved."""
        self.push(image, pycromanager_metadata(metadata))
        return image, metadata

    def frame_ready(self, img: np.ndarray, event: Any = None, meta: Any = None) -> None:
        """pymmcore-plus's MDA ``frameReady(img, event, meta)`` handler."""
        self.push(img, mda_metadata(event, meta))

    # ------------------------------------------------------------------ results

    @property
    def queued(self) -> int:
        """Frames waiting in the queue now."""
        with self._cond:
            return len(self._queue)

    def wait(self, count: int, timeout: float | None = None) -> bool:
        """Wait until ``count`` frames are done (segmented, failed or dropped); False on
        timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.done + len(self.dropped) < count:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking frames; ``drain``: segment those queued first (else they are
        dropped). Writes the summaries (``out``) and ends the session. Safe to call
        twice."""
        with self._cond:
            if self._closing and not self._thread.is_alive():
                return
            self._closing = True
            if not drain:
                self.dropped += [q.index for q in self._queue]
                self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise InputError("close", f"frames still being segmented after {timeout}s")
        self.summary.seconds = time.perf_counter() - self._started
        try:
            if self.writer is not None:
                self.writer.write_summary(self.summary, "sequential", self.session.meta)
        finally:
            self.session.close()

    def __enter__(self) -> RigHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._cond.notify_all()  # a blocked push has room now
            rgb, out = self.session.run(item.image, item.metadata, item.name, item.index)
            out.latency = time.perf_counter() - item.pushed
            self._deliver(rgb, out)

    def _deliver(self, rgb: np.ndarray | None, out: RigResult) -> None:
        if out.result is None:
            self.summary.failed.append((out.name, out.error or "failed"))
            log.error("frame %d (%s) failed: %s", out.index, out.name, out.error)
        elif self.writer is not None and rgb is not None:
            try:
                self.writer.write_query(out.name, rgb, out.result, None, out.metadata)
                self.summary.rows += [
                    {**row, "metadata": out.metadata}
                    for row in self.writer.rows_for(out.name, out.result.scores(),
                                                    out.seconds, None)]
            except Exception as exc:  # a write that fails is this frame's error
                out.error = (str(exc) if isinstance(exc, InputError)
                             else f"{type(exc).__name__}: {exc}")
                self.summary.failed.append((out.name, f"outputs not written: {out.error}"))
                log.error("frame %d: %s", out.index, out.error)
        if out.result is not None:
            self.summary.processed += 1
        if self.on_result is not None:
            try:
                self.on_result(out)
            except Exception:  # the rig's callback must not stop the hook
                log.exception("on_result raised for frame %d", out.index)
        with self._cond:
            if self.keep_results:
                self.results.append(out)
            self.done += 1
            self._cond.notify_all()


# ---------------------------------------------------------------------- metadata


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _position(x: Any, y: Any, z: Any) -> dict[str, float]:
    return {k: v for k, v in (("x", _number(x)), ("y", _number(y)), ("z", _number(z)))
            if v is not None}


def pycromanager_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``axes``, ``position`` (stage, µm) and ``timestamp`` (ms since the acquisition
    started) of a pycro-manager image's metadata (``Axes``, ``XPosition_um_Intended`` or
    ``XPositionUm`` ..., ``ElapsedTime-ms``)."""
    md = dict(metadata or {})

    def first(*keys: str) -> Any:
        return next((md[k] for k in keys if md.get(k) is not None), None)

    out: dict[str, Any] = {"axes": dict(md.get("Axes") or {})}
    pos = _position(first("XPosition_um_Intended", "XPositionUm"),
                    first("YPosition_um_Intended", "YPositionUm"),
                    first("ZPosition_um_Intended", "ZPositionUm"))
    if pos:
        out["position"] = pos
    stamp = _number(first("ElapsedTime-ms", "TimeReceivedByCore"))
    if stamp is not None:
        out["timestamp"] = stamp
    return out


def mda_metadata(event: Any, meta: Any) -> dict[str, Any]:
    """``axes`` (the event's index), ``position`` (the frame's stage position, else the
    event's) and ``timestamp`` (``runner_time_ms``) of a pymmcore-plus MDA frame."""
    md = dict(meta or {})
    index = getattr(event, "index", None) or {}
    # useq's axis keys are str enums (Axis.TIME == "t"): stored as their plain letters
    out: dict[str, Any] = {"axes": {str(getattr(k, "value", k)): v for k, v in index.items()}}
    where = md.get("position") or {}
    pos = _position(where.get("x", getattr(event, "x_pos", None)),
                    where.get("y", getattr(event, "y_pos", None)),
                    where.get("z", getattr(event, "z_pos", None)))
    if pos:
        out["position"] = pos
    stamp = _number(md.get("runner_time_ms"))
    if stamp is not None:
        out["timestamp"] = stamp
    return out
