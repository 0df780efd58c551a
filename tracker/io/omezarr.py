"""OME-Zarr output (``sst segment --format ome-zarr``): one OME-Zarr 0.5 image per query,
the form microscopy viewers (napari, the OME viewers) read labels in.

``<out>/ome-zarr/<stem>.ome.zarr`` holds, through the ``ome-zarr`` library:

* the query's 8-bit RGB pixels as the image (axes ``c, y, x``, one resolution);
* ``labels/sst``: the label map (axes ``y, x``, the support's label values) with its
  ``image-label`` metadata: a ``colors`` entry per label (the overlay colours) and a
  ``properties`` entry per label: ``label-value``, ``name``, ``area`` (pixels),
  ``object_score``, ``iou`` and, when computed, ``quality``;
* the group attribute ``sst``: the query's name and whatever metadata came with it (a
  rig's axes, position and timestamp).

Each image is written into a temporary folder next to its place and renamed into it, so
that a reader never sees half an image. ``zarr`` and ``ome_zarr`` take seconds to import:
only this module imports them, when this format is asked for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

from sst.tracker.io.visualise import label_palette

with warnings.catch_warnings():
    # ome_zarr.writer builds a deprecated default Scaler when it is imported; nothing here
    # uses it (labels are written with scaler=None and no pyramid).
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_image, write_labels

__all__ = ["LABEL_NAME", "read_query_zarr", "write_query_zarr"]

#: Name of the label image under ``labels/``.
LABEL_NAME = "sst"


def _label_metadata(labels: Sequence[int], names: Mapping[int, str],
                    scores: Sequence[Mapping[str, Any]],
                    quality: Mapping[int, float] | None) -> dict[str, Any]:
    palette = label_palette(max(256, max(labels, default=0) + 1))
    by_label = {int(s["label"]): s for s in scores}
    colors, properties = [], []
    for lab in labels:
        colors.append({"label-value": int(lab),
                       "rgba": [int(c) for c in palette[lab][:3]] + [255]})
        prop: dict[str, Any] = {"label-value": int(lab), "name": names.get(lab, str(lab))}
        score = by_label.get(int(lab))
        if score is not None:
            prop.update(area=int(score["area"]), object_score=float(score["object_score"]),
                        iou=float(score["iou"]))
        if quality is not None and lab in quality:
            prop["quality"] = float(quality[lab])
        properties.append(prop)
    # "source" points a viewer from the label image back to the image it labels
    return {"colors": colors, "properties": properties, "source": {"image": "../../"}}


def write_query_zarr(path: str | os.PathLike[str], image: np.ndarray, mask: np.ndarray,
                     labels: Sequence[int], names: Mapping[int, str],
                     scores: Sequence[Mapping[str, Any]] = (),
                     quality: Mapping[int, float] | None = None,
                     attrs: Mapping[str, Any] | None = None) -> Path:
    """Write one query as an OME-Zarr image with its labels (see the module docstring).

    Args:
        path: the ``<stem>.ome.zarr`` folder (replaced if it exists).
        image: ``uint8 [H, W, 3]`` RGB.
        mask: ``[H, W]`` label values (``uint8`` or ``uint16``).
        labels: every label value of the run (each gets a colour and properties, also
            when absent from this mask).
        names: label value -> name.
        scores: the query's rows of :meth:`FrameResult.scores` (area, scores).
        quality: label -> quality, when computed.
        attrs: stored as the group attribute ``sst`` (JSON-serialisable).

    Returns:
        ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
    try:
        root = zarr.open_group(str(tmp), mode="w")
        write_image(np.ascontiguousarray(np.moveaxis(np.asarray(image), -1, 0)), root,
                    axes="cyx", scale_factors=[])
        write_labels(np.ascontiguousarray(mask), root, name=LABEL_NAME, axes="yx",
                     scaler=None, scale_factors=[],
                     label_metadata=_label_metadata(labels, names, scores, quality))
        root.attrs["sst"] = dict(attrs or {})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_query_zarr(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a query written by :func:`write_query_zarr` back through ``ome-zarr``'s reader.

    Returns:
        ``{"image": uint8 [H, W, 3], "mask": [H, W], "colors": {value: rgba 0..1},
        "properties": {value: {...}}, "attrs": the group's sst attribute}``.
    """
    location = parse_url(os.fspath(path))
    if location is None:
        raise FileNotFoundError(f"{path}: not an OME-Zarr folder")
    out: dict[str, Any] = {}
    for node in Reader(location)():
        specs = {type(s) for s in node.specs}
        if Label in specs:
            out["mask"] = np.asarray(node.data[0])
            out["colors"] = node.metadata.get("color", {})
            out["properties"] = node.metadata.get("properties", {})
        elif Multiscales in specs and "image" not in out:
            out["image"] = np.moveaxis(np.asarray(node.data[0]), 0, -1)
    attrs = zarr.open_group(os.fspath(path), mode="r").attrs.get("sst", {})
    out["attrs"] = dict(attrs) if isinstance(attrs, Mapping) else {}
    return out
