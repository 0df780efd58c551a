"""The one result type: what the engine answers for a query, what the client decodes from
the wire, and what every writer (masks, CSV, COCO, YOLO, review) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FrameResult"]


@dataclass
class FrameResult:
    """One query's result.

    ``mask [H,W]``: label values at the query's own size (0 = background). Per label, in
    ``labels`` order: ``object_scores [K]`` (object score logits), ``ious [K]`` (predicted
    IoU), ``areas [K]`` (pixels; counted from ``mask`` when not given) and, when asked
    for, ``quality [K]`` (cycle IoU, else None). ``seconds``: time spent on the query.

    From the engine only: ``logits`` (``float32 [K,H,W]``, made on demand from the
    low-res logits ``low_res`` that stay on the device), and ``features`` (the frame's
    encoder outputs, kept when the frame asked for them). A result decoded from the wire
    carries neither.
    """

    labels: list[int]
    mask: np.ndarray
    object_scores: np.ndarray
    ious: np.ndarray
    areas: np.ndarray = None  # type: ignore[assignment]  # counted in __post_init__
    quality: np.ndarray | None = None
    seconds: float = 0.0
    low_res: Any = field(default=None, repr=False)  # [K, lo, lo] on the device
    ops: Any = field(default=None, repr=False)
    features: dict[str, Any] | None = field(default=None, repr=False)
    #: From the wire: the server's mapping of deeper-than-8-bit pixels (its
    #: ``Normaliser.record()``), None in-process or from a server that sends none.
    intensity: dict[str, Any] | None = field(default=None, repr=False)
    #: From the wire: the server's record of the model it serves (its ``MODEL`` output:
    #: model, image_size, precision, random_weights, seed), None in-process or from a
    #: server that sends none.
    served_model: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.areas is None:
            counts = np.bincount(np.asarray(self.mask).ravel(),
                                 minlength=max(self.labels, default=0) + 1)
            self.areas = counts[self.labels].astype(np.int64)

    @property
    def random_weights(self) -> bool | None:
        """From the wire: whether the server's model has RANDOM weights (its masks are
        then meaningless); None in-process (the backend's ``meta`` says) or from a server
        that does not say."""
        if self.served_model is None:
            return None
        return bool(self.served_model.get("random_weights"))

    @property
    def logits(self) -> np.ndarray:
        if self.low_res is None:
            raise ValueError("this result has no logits: the server sends masks and scores "
                             "only (run in-process for logits)")
        return self.ops.logits(self.low_res, self.mask.shape)

    def quality_by_label(self) -> dict[int, float] | None:
        if self.quality is None:
            return None
        return {lab: float(self.quality[k]) for k, lab in enumerate(self.labels)}

    def scores(self) -> list[dict[str, float | int]]:
        """One row per label: ``label``, ``area``, ``object_score``, ``iou``."""
        return [{"label": lab, "area": int(self.areas[k]),
                 "object_score": float(self.object_scores[k]), "iou": float(self.ious[k])}
                for k, lab in enumerate(self.labels)]
