"""COCO annotations in and out, and label names.

* **Label names** (:func:`parse_label_names`, :func:`names_for`): ``"1=head,2=pronotum"``,
  a JSON file (``{"1": "head"}``, ``[{"id": 1, "name": "head"}]`` or a COCO file's
  ``categories``). Label values stay as they are in the masks; names are only attached.
* **COCO in** (:func:`load_coco_supports`): support images and label masks from a COCO
  file, one label per category id (label value = category id). Polygons and RLE
  (uncompressed or compressed) are rasterised by ``pycocotools``.
* **COCO out** (:func:`coco_image`, :func:`coco_annotations`, :func:`coco_document`): one
  compressed-RLE annotation per label per query, with ``area``, ``bbox`` and, where a
  quality score was computed, ``score``.

Every unusable input raises :class:`sst.tracker.errors.InputError` naming the file (or
field) and the problem.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sst.tracker import io as sio
from sst.tracker.defaults import MAX_LABELS
from sst.tracker.errors import InputError

__all__ = [
    "CocoSupport",
    "coco_annotations",
    "coco_document",
    "coco_image",
    "decode_segmentation",
    "label_mask_from_coco",
    "load_coco_supports",
    "names_for",
    "parse_label_names",
]

log = logging.getLogger("sst.coco")
_MAX_LABEL = 65535


# =========================================================================== label names


def _check_label(value: Any, source: str, where: str) -> int:
    try:
        label = int(str(value).strip())
    except ValueError:
        raise InputError(source, f"{where}: label {value!r} is not an integer") from None
    if not 1 <= label <= _MAX_LABEL:
        raise InputError(source, f"{where}: label {label} is outside 1..{_MAX_LABEL} "
                                 "(0 is the background and has no name)")
    return label


def _check_names(names: dict[int, str], source: str) -> dict[int, str]:
    seen: dict[str, int] = {}
    for label, name in names.items():
        if not name:
            raise InputError(source, f"label {label} has an empty name")
        if name in seen:
            raise InputError(source, f"labels {seen[name]} and {label} are both named {name!r}; "
                                     "names must be unique")
        seen[name] = label
    return names


def _names_from_json(data: Any, source: str) -> dict[int, str]:
    if isinstance(data, dict) and "categories" in data:
        data = data["categories"]
    names: dict[int, str] = {}
    if isinstance(data, dict):
        for key, name in data.items():
            names[_check_label(key, source, f"key {key!r}")] = str(name).strip()
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "id" not in item or "name" not in item:
                raise InputError(source, f"entry {i}: expected {{\"id\": N, \"name\": ...}}, "
                                         f"got {item!r}")
            names[_check_label(item["id"], source, f"entry {i}")] = str(item["name"]).strip()
    else:
        raise InputError(source, "expected a JSON object {\"1\": \"head\", ...}, a list of "
                                 "{\"id\", \"name\"} or a COCO file with categories")
    return names


def parse_label_names(spec: str | os.PathLike[str]) -> dict[int, str]:
    """Label value -> name from ``"1=head,2=pronotum"`` or a JSON file.

    A JSON file may hold ``{"1": "head", ...}``, ``[{"id": 1, "name": "head"}, ...]`` or
    be a COCO file (its ``categories`` are used).

    Raises:
        InputError: unreadable file, bad JSON, a label outside 1..65535, an empty or
            repeated name.
    """
    text = os.fspath(spec)
    path = Path(text)
    if text.lower().endswith(".json") or path.is_file():
        data = _read_json(path, "label-names file")
        return _check_names(_names_from_json(data, text), text)
    names: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            raise InputError("--label-names", f"{part!r}: expected VALUE=NAME, e.g. 1=head")
        key, _, name = part.partition("=")
        names[_check_label(key, "--label-names", repr(part))] = name.strip()
    if not names:
        raise InputError("--label-names", "no names given; expected e.g. '1=head,2=pronotum'")
    return _check_names(names, "--label-names")


def names_for(labels: Sequence[int], names: Mapping[int, str] | None) -> dict[int, str]:
    """A name for every label: the given one, else ``label_<value>``. Names given for
    labels that no mask has are dropped (with a warning)."""
    names = dict(names or {})
    extra = sorted(set(names) - set(labels))
    if extra:
        log.warning("label names given for values no support mask has: %s", extra)
    return {lab: names.get(lab, f"label_{lab}") for lab in labels}


# =========================================================================== COCO in


@dataclass
class CocoSupport:
    """One support from a COCO file: the image file, its RGB pixels ``[H,W,3]`` and the
    label mask ``[H,W]`` (label value = category id)."""

    path: Path
    image: np.ndarray
    mask: np.ndarray
    #: The file's pixels came out as they are (8 bit, no ``range`` mapping): the file
    #: itself may be sent in place of ``image``.
    as_file: bool = True


def decode_segmentation(seg: Any, height: int, width: int, source: str) -> np.ndarray:
    """A COCO ``segmentation`` (polygon list, uncompressed RLE, compressed RLE) as a
    ``bool [H,W]`` mask, rasterised by ``pycocotools``."""
    try:
        if isinstance(seg, list):
            polys = [p for p in seg if isinstance(p, list)]
            if len(polys) != len(seg) or any(len(p) < 6 or len(p) % 2 for p in polys):
                raise InputError(source, "polygons must be lists of x,y pairs, 3 points or "
                                         "more each")
            rles = mask_utils.frPyObjects(polys, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            size = [int(v) for v in seg["size"]]
            if size != [height, width]:
                raise InputError(source, f"RLE size is {size} (HxW) but the image is "
                                         f"{height}x{width}")
            if isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                counts = seg["counts"]
                rle = {"size": size,
                       "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise InputError(source, "segmentation must be a polygon list or an RLE "
                                     "{\"size\", \"counts\"}")
        return np.asarray(mask_utils.decode(rle), dtype=bool)
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, UnicodeEncodeError) as exc:
        raise InputError(source, f"cannot decode segmentation: {exc}") from None


def label_mask_from_coco(anns: Sequence[Mapping[str, Any]], height: int, width: int,
                         source: str) -> np.ndarray:
    """Paint annotations (in order; later ones win where they overlap) into a label mask
    ``[H,W]`` whose values are the category ids."""
    top = max((int(a["category_id"]) for a in anns), default=0)
    mask = np.zeros((height, width), np.uint8 if top <= 255 else np.uint16)
    for a in anns:
        where = f"{source}: annotation {a.get('id', '?')}"
        if "segmentation" not in a:
            raise InputError(where, "has no segmentation")
        mask[decode_segmentation(a["segmentation"], height, width, where)] = int(a["category_id"])
    return mask


def _find_image(file_name: str, base: Path, source: str, where: str) -> Path:
    """``file_name`` under ``base``; by its base name anywhere below ``base`` when the
    relative path does not exist. Missing or ambiguous -> InputError."""
    direct = Path(file_name) if Path(file_name).is_absolute() else base / file_name
    if direct.is_file():
        return direct
    name = Path(file_name).name
    matches = sorted(p for p in base.rglob(name) if p.is_file()) if base.is_dir() else []
    if not matches:
        raise InputError(source, f"{where}: image {file_name!r} not found (looked for "
                                 f"{direct} and for {name!r} below {base})")
    if len(matches) > 1:
        shown = ", ".join(str(m) for m in matches[:4])
        raise InputError(source, f"{where}: image {file_name!r} is ambiguous: {len(matches)} "
                                 f"files named {name!r} below {base} ({shown}); give a path "
                                 "relative to the images folder")
    return matches[0]


def _read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; a missing, unreadable or malformed ``what`` is an
    :class:`InputError` naming the file."""
    source = os.fspath(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(source, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(source, f"cannot read {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(source, f"not valid JSON: {exc}") from None


def _load_json(path: Path) -> dict[str, Any]:
    source = os.fspath(path)
    data = _read_json(path, "COCO file")
    if not isinstance(data, dict):
        raise InputError(source, "expected a COCO object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(source, f"missing the {key!r} list")
    return data


def load_coco_supports(coco_file: str | os.PathLike[str], images_dir: str | os.PathLike[str]
                       | None = None, max_labels: int = MAX_LABELS,
                       intensity: sio.Normaliser | None = None
                       ) -> tuple[list[CocoSupport], dict[int, str]]:
    """Supports (one per image that has annotations) and category names from a COCO file.

    Images are looked up by ``file_name`` relative to ``images_dir`` (default: the COCO
    file's folder), or by base name below it. Label value = category id. Pixels deeper
    than 8 bit go through ``intensity`` (the session's Normaliser; default ``auto`` on
    each image alone), each file read once.

    Raises:
        InputError: naming the file and the problem: bad JSON or structure, an
            annotation of an unknown category or image, a missing or ambiguous image, an
            image whose size differs from the file's, a category without any pixels, more
            than ``max_labels`` categories, or no annotated image at all.
    """
    path = Path(coco_file)
    source = os.fspath(path)
    data = _load_json(path)
    base = Path(images_dir) if images_dir is not None else path.parent
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise InputError(source, f"categories[{i}]: expected {{\"id\", \"name\"}}")
        label = _check_label(cat["id"], source, f"categories[{i}]")
        names[label] = str(cat.get("name") or f"label_{label}")
    _check_names(names, source)
    if len(names) > max_labels:
        raise InputError(source, f"{len(names)} categories, more than the cap of {max_labels}")
    images: dict[int, dict[str, Any]] = {}
    by_name: dict[str, int] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise InputError(source, f"images[{i}]: expected id and file_name")
        fname = str(im["file_name"])
        if fname in by_name:
            raise InputError(source, f"images {by_name[fname]} and {im['id']} are both "
                                     f"{fname!r}: ambiguous image")
        by_name[fname] = im["id"]
        images[im["id"]] = im
    per_image: dict[int, list[dict[str, Any]]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(source, f"annotations[{i}]: expected an object")
        if ann.get("image_id") not in images:
            raise InputError(source, f"annotations[{i}]: image_id {ann.get('image_id')!r} is "
                                     "not in images")
        if ann.get("category_id") not in names:
            raise InputError(source, f"annotations[{i}]: category_id "
                                     f"{ann.get('category_id')!r} is not in categories")
        per_image.setdefault(ann["image_id"], []).append(ann)
    if not per_image:
        raise InputError(source, "no annotations: expected at least one annotated image")
    supports: list[CocoSupport] = []
    for image_id, anns in per_image.items():
        im = images[image_id]
        where = f"image {image_id}"
        img_path = _find_image(str(im["file_name"]), base, source, where)
        sio.check_single_page(img_path)
        raw = sio.read_pixels(img_path)
        norm = intensity if intensity is not None else sio.Normaliser()
        rgb = norm(raw, os.fspath(img_path))
        h, w = rgb.shape[:2]
        if ("width" in im and int(im["width"]) != w) or ("height" in im and int(im["height"]) != h):
            raise InputError(source, f"{where}: {img_path} is {w}x{h} but the COCO file says "
                                     f"{im.get('width')}x{im.get('height')} (WxH)")
        mask = label_mask_from_coco(anns, h, w, source)
        supports.append(CocoSupport(img_path, rgb, mask, norm.passes_through(raw)))
    present = {lab for s in supports for lab in sio.mask_labels(s.mask)}
    empty = sorted(set(names) - present)
    if empty:
        listed = ", ".join(f"{lab} ({names[lab]!r})" for lab in empty)
        raise InputError(source, f"category {listed} has no pixels in any annotation; remove "
                                 "it or annotate it")
    return supports, names


# =========================================================================== COCO out


def coco_image(image_id: int, file_name: str, height: int, width: int) -> dict[str, Any]:
    return {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)}


def coco_annotations(mask: np.ndarray, labels: Sequence[int], image_id: int, first_id: int,
                     scores: Mapping[int, float | None] | None = None) -> list[dict[str, Any]]:
    """One annotation per label of ``labels`` for the label mask ``[H,W]``: compressed RLE
    made by ``pycocotools.mask.encode`` (counts as text), ``area``, ``bbox [x,y,w,h]``,
    ``iscrowd`` 0 and ``score`` where ``scores`` has a value. A label absent from the
    mask gets an empty annotation (area 0), so its score is still reported. Ids run from
    ``first_id``."""
    if not labels:
        return []
    binary = np.asfortranarray(np.stack([mask == lab for lab in labels], axis=-1)
                               .astype(np.uint8))
    rles = mask_utils.encode(binary)
    out = []
    for k, (lab, rle) in enumerate(zip(labels, rles)):
        ann: dict[str, Any] = {
            "id": first_id + k, "image_id": image_id, "category_id": int(lab),
            "segmentation": {"size": [int(v) for v in rle["size"]],
                             "counts": rle["counts"].decode("ascii")},
            "area": int(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        }
        score = scores.get(lab) if scores is not None else None
        if score is not None:
            ann["score"] = round(float(score), 6)
        out.append(ann)
    return out


def coco_document(images: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]],
                  names: Mapping[int, str], description: str = "sst segment") -> dict[str, Any]:
    """A COCO object: ``info``, ``images``, ``annotations`` and ``categories`` (id = label
    value, name from ``names``)."""
    return {"info": {"description": description},
            "images": list(images), "annotations": list(annotations),
            "categories": [{"id": int(lab), "name": name, "supercategory": "part"}
                           for lab, name in sorted(names.items())]}
