"""The files ``sst segment`` writes: per query as results arrive, and the summaries at the
end (``results.json/csv``, ``annotations.json``, ``data.yaml``, ``review.csv``).

Every file is written atomically (:func:`sst.tracker.sio.atomic_write`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sst.export.meta import random_weights_reason
from sst.tracker import io as sio
from sst.tracker.io import coco, outputs, review_page, yolo
from sst.tracker.io.outputs import review_rows

__all__ = ["FORMATS", "DEFAULT_FORMATS", "OutputSet", "thumb"]

FORMATS = ("png", "overlay", "gif", "json", "coco", "yolo", "html", "ome-zarr")
DEFAULT_FORMATS = ("png", "overlay", "gif", "json")
RESULTS_HEADER = ["query", "label", "area", "object_score", "iou", "seconds", "name", "quality"]


def thumb(img: np.ndarray, max_side: int = 384) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s >= 1.0:
        return img
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s)))))


@dataclass
class OutputSet:
    """Collects what the summaries need while per-query files are written.

    ``names``: label value -> name for every label; ``legend``: draw the names under the
    overlays (when names were given); ``flag_below``: review threshold."""

    out: Path
    formats: Sequence[str]
    labels: list[int]
    names: dict[int, str]
    legend: bool = False
    save_logits: bool = False
    flag_below: float = 0.5
    #: The session's :class:`~sst.tracker.io.intensity.Normaliser` (recorded in results.json).
    intensity: sio.Normaliser | None = None
    #: In process: whether the model has random weights (every overlay is then marked).
    #: Against a server its answers say so (each result's ``served_model``).
    random_weights: bool | None = None
    #: The server's address, on a server run (named in results.json).
    server: str | None = None
    #: The server's model record, from its latest answer (None: it sent none).
    served_model: dict[str, Any] | None = None
    #: The engine that ran the queries in process, and why
    #: (:func:`sst.tracker.engine_choice.engine_record`).
    engine: dict[str, Any] | None = None
    gif_frames: list[np.ndarray] = field(default_factory=list)
    coco_images: list[dict[str, Any]] = field(default_factory=list)
    coco_anns: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, dict[int, float]] = field(default_factory=dict)

    def write_query(self, name: str, image: np.ndarray, res: Any,
                    quality: Mapping[int, float] | None,
                    metadata: Mapping[str, Any] | None = None) -> None:
        """Per-query files for ``res`` (a FrameResult or a server answer: ``labels``,
        ``mask [H,W]``, ``logits [K,H,W]`` when embedded). ``metadata`` (a rig's axes,
        position, timestamp) goes where a format has room for it (OME-Zarr)."""
        out, formats, stem = self.out, self.formats, Path(name).stem
        record = getattr(res, "served_model", None)
        if record is not None:
            self.served_model = record
        untrained = bool(self.random_weights or getattr(res, "random_weights", None))
        with outputs.write_errors(out):
            if "png" in formats:
                sio.save_label_png(out / f"{stem}.png", res.mask)
            if "overlay" in formats or "gif" in formats or "html" in formats:
                ov = sio.overlay(image, res.mask)
                if self.legend:
                    ov = outputs.add_legend(ov, self.names)
                if untrained:
                    ov = outputs.mark_random_weights(ov)
                if "overlay" in formats or "html" in formats:  # the review page shows them
                    sio.save_png(out / "overlay" / f"{stem}.png", ov)
                if "gif" in formats:
                    self.gif_frames.append(thumb(ov))
            if self.save_logits:
                sio.save_npz(out / f"{stem}.npz",
                                 **{str(lab): res.logits[k] for k, lab in enumerate(res.labels)})
            if "yolo" in formats:
                yolo.save_yolo_txt(out / "labels" / f"{stem}.txt", res.mask, self.labels)
            if "ome-zarr" in formats:
                from sst.tracker.io import omezarr  # zarr takes seconds to import

                omezarr.write_query_zarr(
                    out / "ome-zarr" / f"{stem}.ome.zarr", image, res.mask, self.labels,
                    self.names, res.scores(), quality,
                    {"query": name, **({"metadata": dict(metadata)} if metadata else {})})
        if "coco" in formats:
            image_id = len(self.coco_images) + 1
            h, w = res.mask.shape
            self.coco_images.append(coco.coco_image(image_id, name, h, w))
            self.coco_anns.extend(coco.coco_annotations(
                res.mask, self.labels, image_id, len(self.coco_anns) + 1, quality))
        if quality is not None:
            self.quality[name] = dict(quality)

    def rows_for(self, name: str, scores: Sequence[Mapping[str, Any]], seconds: float,
                 quality: Mapping[int, float] | None) -> list[dict[str, Any]]:
        """``results`` rows of one query: its label scores plus name, quality, seconds."""
        return [{"query": name, **s, "name": self.names.get(int(s["label"]), ""),
                 "quality": None if quality is None else round(quality[int(s["label"])], 6),
                 "seconds": round(seconds, 4)} for s in scores]

    def write_summary(self, summary: Any, mode: str, meta: Any) -> None:
        """results.json/csv, segment.gif, annotations.json, data.yaml and review.csv (each
        when its format is asked for, review.csv when quality was computed)."""
        out, formats = self.out, self.formats
        with outputs.write_errors(out):
            if "gif" in formats and self.gif_frames:
                sio.save_gif(out / "segment.gif", self.gif_frames)
            model = self.model_fields(meta)
            if "json" in formats:
                sio.save_json(out / "results.json", {
                    "model": model["model"], "image_size": model["image_size"], "mode": mode,
                    "random_weights": model["random_weights"],
                    "random_weights_reason": model["random_weights_reason"],
                    "engine": (self.engine if self.engine is not None else
                               (self.served_model or {}).get("engine")),
                    "server": self.server,
                    "labels": self.labels,
                    "label_names": {str(k): v for k, v in self.names.items()},
                    "quality": bool(self.quality),
                    "intensity": None if self.intensity is None else self.intensity.record(),
                    "processed": summary.processed,
                    "failed": [{"query": q, "problem": p} for q, p in summary.failed],
                    "seconds": round(summary.seconds, 3),
                    "quality_seconds": round(summary.quality_seconds, 3),
                    "results": summary.rows})
                sio.save_csv(out / "results.csv", RESULTS_HEADER, [
                    [r["query"], r["label"], r["area"], f"{r['object_score']:.4f}",
                     f"{r['iou']:.4f}", r["seconds"], r["name"],
                     "" if r["quality"] is None else f"{r['quality']:.4f}"]
                    for r in summary.rows])
            if "coco" in formats:
                sio.save_json(out / "annotations.json", coco.coco_document(
                    self.coco_images, self.coco_anns, self.names))
            if "yolo" in formats:
                yolo.save_data_yaml(out / "data.yaml", self.names)
            if self.quality:
                header, rows = review_rows(self.quality, self.names, self.flag_below)
                sio.save_csv(out / "review.csv", header, rows)
            if "html" in formats:
                review_page.write_review_page(
                    out / "review.html", summary.rows, self.names, flag_below=self.flag_below,
                    mask_links="png" in formats, failed=summary.failed,
                    random_weights=model["random_weights"])

    def model_fields(self, meta: Any) -> dict[str, Any]:
        """``model``, ``image_size``, ``random_weights`` and ``random_weights_reason`` of
        results.json: from ``meta`` (the export's, in process), else from the server's
        answers (``model`` is ``"server"`` and ``random_weights`` None when its answers
        did not say)."""
        if meta is not None:
            record = {"model": getattr(meta, "model", None), "seed": getattr(meta, "seed", None),
                      "random_weights": bool(getattr(meta, "random_weights", False))}
            return {**record, "image_size": getattr(meta, "image_size", None),
                    "random_weights_reason": random_weights_reason(record)}
        rec = self.served_model
        if rec is None:
            return {"model": "server", "image_size": None, "random_weights": None,
                    "random_weights_reason": None}
        where = f"the server at {self.server}" if self.server else "the server"
        return {"model": rec.get("model"), "image_size": rec.get("image_size"),
                "random_weights": bool(rec.get("random_weights")),
                "random_weights_reason": random_weights_reason(rec, where)}
