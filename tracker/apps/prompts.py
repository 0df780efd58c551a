"""A first mask from points and/or a box: SAM 2's image-prompt path (no memory) on the
exported graphs.

Conventions (as :mod:`sst.tracker.io`): images are ``uint8 [H,W,3]`` RGB, label maps are
integer ``[H,W]`` with 0 = background, boxes are ``(x0, y0, x1, y1)`` pixel boxes,
inclusive-exclusive, in the image's own coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sst.export.families import family
from sst.tracker import io as sio
from sst.tracker.apps.common import MAX_LABEL, label_dtype, load_label_map
from sst.tracker.backends import Backend
from sst.tracker.errors import InputError
from sst.tracker.ops import NumpyOps
from sst.tracker.result import FrameResult


def _check_prompts(points: Sequence[tuple[float, float, int]],
                   box: tuple[float, float, float, float] | None,
                   size: tuple[int, int]) -> None:
    H, W = size
    if not points and box is None:
        raise InputError("--point/--box", "give at least one point or a box")
    for x, y, lab in points:
        if lab not in (0, 1):
            raise InputError("--point", f"point label must be 1 (positive) or 0 (negative), "
                             f"got {lab} at ({x:g}, {y:g})")
        if not (0 <= x < W and 0 <= y < H):
            raise InputError("--point", f"point ({x:g}, {y:g}) is outside the image "
                             f"({W}x{H}: x in [0, {W}), y in [0, {H}))")
    if box is not None:
        x0, y0, x1, y1 = box
        for name, v, lim in (("x0", x0, W), ("y0", y0, H), ("x1", x1, W), ("y1", y1, H)):
            if not 0 <= v <= lim:
                raise InputError("--box", f"box {name}={v:g} is outside the image ({W}x{H}: "
                                 f"x in [0, {W}], y in [0, {H}])")
        if x1 <= x0 or y1 <= y0:
            raise InputError("--box", f"expected x0 < x1 and y0 < y1, got {box}")


def prompt_feeds(feats: Mapping[str, np.ndarray], image_size: int, low_res: int,
                 points: Sequence[tuple[float, float, int]],
                 box: tuple[float, float, float, float] | None,
                 size: tuple[int, int]) -> dict[str, np.ndarray]:
    """``mask_decoder`` feeds for one image prompted as sam2's ``add_new_points_or_box``
    prompts a first frame without memory.

    ``feats``: encoder outputs of the image (batch 1); ``points``: ``(x, y, label)`` in
    image pixels; ``box``: ``(x0, y0, x1, y1)`` in image pixels (two leading points with
    labels 2 and 3); ``size = (H, W)`` of the image. Coordinates are scaled to model
    pixels (``x * S / W``, ``y * S / H``). Multimask iff exactly one point in total.
    """
    H, W = size
    S = image_size
    coords: list[tuple[float, float]] = []
    labels: list[float] = []
    if box is not None:
        coords += [(box[0], box[1]), (box[2], box[3])]
        labels += [2.0, 3.0]
    coords += [(x, y) for x, y, _ in points]
    labels += [float(lab) for _, _, lab in points]
    # as sam2: normalise by the video size in float32, then scale by the model size
    xy = np.asarray(coords, np.float32) / np.asarray([W, H], np.float32)
    xy = (xy * np.float32(S)).astype(np.float32)
    one = np.ones((1, 1), np.float32)
    zero = np.zeros((1, 1), np.float32)
    return {
        "image_embed": feats["feat_top"], "feat_s0": feats["feat_s0"],
        "feat_s1": feats["feat_s1"],
        "point_coords": xy[None], "point_labels": np.asarray([labels], np.float32),
        "mask_input": np.zeros((1, 1, low_res, low_res), np.float32),
        "support_mask": np.zeros((1, 1, 4, 4), np.float32),
        "has_mask_input": zero, "mask_from_support": zero, "no_memory": one,
        "multimask": one if prompt_multimask(points, box) else zero,
    }


def prompt_multimask(points: Sequence[tuple[float, float, int]],
                     box: tuple[float, float, float, float] | None) -> bool:
    """Whether sam2 takes the best of its 3 mask outputs for these prompts: exactly one
    point in total (a box counts as two)."""
    return len(points) + (2 if box is not None else 0) == 1


def segment_prompt(backend: Backend, rgb: np.ndarray,
                   points: Sequence[tuple[float, float, int]] = (),
                   box: tuple[float, float, float, float] | None = None) -> FrameResult:
    """SAM 2's image-prompt path on ``rgb [H,W,3]``: ``image_encoder`` then
    ``mask_decoder`` with the prompts (see :func:`prompt_feeds`). The result has one
    label, 1: ``mask [H,W]`` is 1 where its ``logits [1,H,W]`` (the low-res logits
    resized bilinearly, as sam2) are positive; ``ious``/``object_scores`` hold the
    decoder's predicted IoU and object score logit. Arrays stay where the backend keeps
    them (its ``ops``: numpy on the host, torch tensors on its device) until the mask,
    scores and logits are brought to the host.

    Raises:
        InputError: no prompt, a point label not 0/1, a point/box outside the image.
    """
    H, W = int(rgb.shape[0]), int(rgb.shape[1])
    _check_prompts(points, box, (H, W))
    S = backend.meta.image_size
    ops = getattr(backend, "ops", None) or NumpyOps()
    resample = family(backend.meta.family).traits.resample
    feats = backend.run("image_encoder", {"image": ops.preprocess([rgb], S, resample)})
    feeds = prompt_feeds(feats, S, backend.meta.low_res, points, box, (H, W))
    dec = backend.run("mask_decoder", feeds)
    low = dec["mask_logits"][0]  # [1, lo, lo]
    mask = (ops.logits(low, (H, W))[0] > 0).astype(np.uint8)
    return FrameResult(labels=[1], mask=mask,
                       object_scores=ops.to_host(dec["object_score_logits"][0]),
                       ious=ops.to_host(dec["iou"][0]), low_res=low, ops=ops)


def paint_label(existing: np.ndarray | None, new: np.ndarray, label: int, *,
                overwrite: bool = False, source: str = "--mask") -> np.ndarray:
    """Paint the bool ``new [H,W]`` with ``label`` into ``existing [H,W]`` (or into a new
    all-zero map). New pixels take ``label`` whatever they held; other pixels keep their
    value. A label already in ``existing`` needs ``overwrite``: its old pixels are then
    cleared first (the label is replaced).

    Returns:
        ``[H,W]`` ``uint8`` (``uint16`` if a label exceeds 255), a new array.
    """
    if not 1 <= label <= MAX_LABEL:
        raise InputError("--label", f"expected a label in 1..{MAX_LABEL} (0 is the "
                         f"background), got {label}")
    new = np.asarray(new, dtype=bool)
    if existing is None:
        base = np.zeros(new.shape, np.int64)
    else:
        if existing.shape != new.shape:
            raise InputError(source, f"mask is {existing.shape[1]}x{existing.shape[0]} but "
                             f"the image is {new.shape[1]}x{new.shape[0]}")
        base = existing.astype(np.int64)
        present = sio.mask_labels(existing)
        if label in present:
            if not overwrite:
                raise InputError("--label", f"label {label} is already in {source} (labels "
                                 f"present: {present}); choose another --label or pass "
                                 "--overwrite to replace it")
            base[base == label] = 0
    base[new] = label
    return base.astype(label_dtype(int(base.max(initial=0))))


def run_from_prompts(backend: Backend, image: str | Path, out: str | Path, *,
                     points: Sequence[tuple[float, float, int]] = (),
                     box: tuple[float, float, float, float] | None = None, label: int = 1,
                     existing: str | Path | None = None,
                     overwrite: bool = False) -> tuple[FrameResult, np.ndarray]:
    """``sst mask from-prompts``: prompt SAM 2 on ``image`` and write the label map
    ``out`` (the new object painted into ``existing`` if given). Nothing is written when
    the prediction is empty.

    Returns:
        ``(the prompt's result, label map [H,W])``.
    """
    if not 1 <= label <= MAX_LABEL:
        raise InputError("--label", f"expected a label in 1..{MAX_LABEL} (0 is the "
                         f"background), got {label}")
    rgb = sio.load_image(image)
    old = None
    if existing is not None:
        old = load_label_map(existing, image_size=(rgb.shape[1], rgb.shape[0]))
        present = sio.mask_labels(old)
        if label in present and not overwrite:  # fail before running the model
            raise InputError("--label", f"label {label} is already in {existing} (labels "
                             f"present: {present}); choose another --label or pass "
                             "--overwrite to replace it")
    result = segment_prompt(backend, rgb, points, box)
    labels = paint_label(old, result.mask == 1, label, overwrite=overwrite,
                         source=str(existing) if existing is not None else "--mask")
    if result.mask.any():
        sio.save_label_png(out, labels)
    return result, labels
