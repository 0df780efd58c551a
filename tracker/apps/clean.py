"""Mask clean-up: relabel values, fill holes, drop specks.

Conventions (as :mod:`sst.tracker.io`): images are ``uint8 [H,W,3]`` RGB, label maps are
integer ``[H,W]`` with 0 = background, boxes are ``(x0, y0, x1, y1)`` pixel boxes,
inclusive-exclusive, in the image's own coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from sst.tracker import io as sio
from sst.tracker.apps.common import MAX_LABEL, label_dtype, load_label_map
from sst.tracker.errors import InputError


def parse_relabel(spec: str) -> tuple[int, int]:
    """``"255:1"`` -> ``(255, 1)``: value ``255`` becomes ``1`` (0..65535 each)."""
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        src, dst = int(parts[0]), int(parts[1])
    except ValueError:
        raise InputError("--relabel", f"expected OLD:NEW integer values, got {spec!r}") from None
    for v in (src, dst):
        if not 0 <= v <= MAX_LABEL:
            raise InputError("--relabel", f"values must be in 0..{MAX_LABEL}, got {spec!r}")
    return src, dst


def relabel(mask: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Replace values of ``mask [H,W]`` all at once (``{1: 2, 2: 1}`` swaps); values
    not in ``mapping`` are kept. Returns ``[H,W]`` ``uint8``/``uint16``."""
    out = np.asarray(mask).astype(np.int64)
    src = np.asarray(mask)
    for old, new in mapping.items():
        out[src == old] = new
    return out.astype(label_dtype(int(out.max(initial=0))))


_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_EIGHT = np.ones((3, 3), bool)


def fill_holes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill background regions enclosed by one label.

    A hole is a 4-connected region of zeros that does not touch the image border and
    whose 4-neighbours all carry the same label; it takes that label. Regions touching
    two labels (say a gap between two parts) stay background.

    Returns:
        ``(filled [H,W] same dtype, number of pixels filled)``.
    """

    lab = np.asarray(mask)
    bg = lab == 0
    comps, n = ndimage.label(bg, structure=_FOUR)
    if n == 0:
        return lab.copy(), 0
    # Components touching the border are never holes.
    border = np.unique(np.concatenate([comps[0], comps[-1], comps[:, 0], comps[:, -1]]))
    # (component, neighbouring label) pairs over the 4 neighbour directions.
    pairs = []
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        for p, q in ((a, b), (b, a)):
            cp, lq = comps[p], lab[q]
            sel = (cp > 0) & (lq != 0)
            pairs.append(np.stack([cp[sel].astype(np.int64), lq[sel].astype(np.int64)], 1))
    both = np.unique(np.concatenate(pairs), axis=0)
    counts = np.bincount(both[:, 0], minlength=n + 1)
    fill_value = np.zeros(n + 1, np.int64)
    single = counts == 1
    fill_value[both[single[both[:, 0]], 0]] = both[single[both[:, 0]], 1]
    fill_value[border] = 0
    fill_value[0] = 0
    add = fill_value[comps]
    out = lab.copy()
    holes = add > 0
    out[holes] = add[holes].astype(out.dtype)
    return out, int(np.count_nonzero(holes))


def remove_small_components(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, int, int]:
    """Set to 0 every 8-connected component of a label with fewer than ``min_size``
    pixels.

    Returns:
        ``(cleaned [H,W] same dtype, components removed, pixels removed)``.

    ``scipy.ndimage.label`` does the work, as it does inside scikit-image's
    ``remove_small_objects``; that would add a dependency of its own for what are these
    few lines, and it removes components of a boolean mask, not per label value.
    """

    if min_size < 0:
        raise InputError("--min-size", f"expected a size >= 0 pixels, got {min_size}")
    out = np.asarray(mask).copy()
    removed = pixels = 0
    if min_size <= 1:
        return out, 0, 0
    for value in sio.mask_labels(out):
        comps, n = ndimage.label(out == value, structure=_EIGHT)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        small = sizes < min_size
        small[0] = False
        if small.any():
            drop = small[comps]
            out[drop] = 0
            removed += int(small.sum())
            pixels += int(drop.sum())
    return out, removed, pixels


@dataclass
class CleanReport:
    """What :func:`clean_mask` changed."""

    relabelled: dict[int, int] = field(default_factory=dict)  # old value -> pixels changed
    components_removed: int = 0
    pixels_removed: int = 0
    pixels_filled: int = 0
    labels: list[int] = field(default_factory=list)  # labels of the result


def clean_mask(mask: np.ndarray, *, mapping: Mapping[int, int] | None = None,
               fill: bool = False, min_size: int = 0) -> tuple[np.ndarray, CleanReport]:
    """Relabel, then drop components smaller than ``min_size``, then fill holes (so a
    dropped speck inside a part becomes part of it).

    Args:
        mask: ``[H,W]`` integer label map.

    Returns:
        ``(cleaned [H,W] uint8/uint16, report)``.
    """
    report = CleanReport()
    out = np.asarray(mask)
    if mapping:
        for old in mapping:
            report.relabelled[int(old)] = int(np.count_nonzero(out == old))
        out = relabel(out, mapping)
    out, report.components_removed, report.pixels_removed = remove_small_components(
        out, min_size)
    if fill:
        out, report.pixels_filled = fill_holes(out)
    out = out.astype(label_dtype(int(out.max(initial=0))))
    report.labels = sio.mask_labels(out)
    return out, report


def run_clean(mask: str | Path, out: str | Path, *, relabels: Sequence[str] = (),
              fill: bool = False, min_size: int = 0) -> CleanReport:
    """``sst mask clean``: read ``mask``, clean it (:func:`clean_mask`), write ``out``.
    ``relabels`` are ``"OLD:NEW"`` strings, applied all at once."""
    mapping: dict[int, int] = {}
    for spec in relabels:
        src, dst = parse_relabel(spec)
        if src in mapping and mapping[src] != dst:
            raise InputError("--relabel", f"value {src} is relabelled twice ({mapping[src]} "
                             f"and {dst})")
        mapping[src] = dst
    lab = load_label_map(mask)
    cleaned, report = clean_mask(lab, mapping=mapping, fill=fill, min_size=min_size)
    sio.save_label_png(out, cleaned)
    return report
