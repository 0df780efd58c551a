"""A first mask from an RGBA cut-out (saved by an external "cut out object" tool,
possibly rescaled): locate it in its image by multi-scale normalised cross-correlation
and paste its alpha as a label.

Conventions (as :mod:`sst.tracker.io`): images are ``uint8 [H,W,3]`` RGB, label maps are
integer ``[H,W]`` with 0 = background, boxes are ``(x0, y0, x1, y1)`` pixel boxes,
inclusive-exclusive, in the image's own coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft
from scipy.ndimage import maximum_filter

from sst.tracker import io as sio
from sst.tracker.apps.common import MAX_LABEL, label_dtype, mask_bbox
from sst.tracker.errors import InputError


@dataclass
class CutoutMatch:
    """Where a cut-out was found: ``quality`` = normalised cross-correlation in [-1, 1]
    of its opaque pixels with the image; ``scale`` = object size in the image / size in
    the cut-out; ``x, y`` = top-left of the scaled cut-out's opaque bounding box in the
    image; ``mask [H,W]`` bool = its alpha (>= 128) pasted there."""

    quality: float
    scale: float
    x: int
    y: int
    mask: np.ndarray


@dataclass
class _Template:
    """A cut-out at one scale and pyramid level: ``rgb [h,w,3]`` float64, ``opaque
    [h,w]`` bool, and the zero-mean opaque pixels ``tz [n,3]`` with their norm."""

    rgb: np.ndarray
    opaque: np.ndarray
    tz: np.ndarray
    norm: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.opaque.shape[0]), int(self.opaque.shape[1])


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(h', w')`` of an ``h x w`` picture scaled by exactly ``scale`` (whole pixels)."""
    return max(1, math.floor(h * scale + 1e-9)), max(1, math.floor(w * scale + 1e-9))


def _scale_rgba(rgba: np.ndarray, scale: float) -> np.ndarray:
    """``uint8 [h,w,4]`` scaled by exactly ``scale`` (not by a rounded size, which matters
    for small cut-outs): ``uint8 [h',w',4]`` (:func:`_scaled_size`), Pillow bilinear,
    alpha-premultiplied, antialiased when shrinking."""
    h, w = rgba.shape[:2]
    th, tw = _scaled_size(h, w, scale)
    if scale == 1.0:
        return rgba
    box = (0.0, 0.0, tw / scale, th / scale)  # within the source: tw <= w * scale
    return np.asarray(Image.fromarray(rgba, "RGBA").resize(
        (tw, th), Image.Resampling.BILINEAR, box=box))


def _template(rgba: np.ndarray, scale: float) -> _Template | None:
    """The cut-out ``rgba [h,w,4]`` resized by ``scale``; None if too few opaque pixels
    remain or its opaque pixels have no contrast."""
    t = _scale_rgba(rgba, scale)
    opaque = t[:, :, 3] >= 128
    n = int(np.count_nonzero(opaque))
    if n < 16:
        return None
    rgb = t[:, :, :3].astype(np.float64) / 255.0
    pix = rgb[opaque]
    tz = pix - pix.mean(axis=0)
    norm = float(np.sqrt((tz * tz).sum()))
    if norm < 1e-6 * math.sqrt(n):
        return None
    return _Template(rgb=rgb, opaque=opaque, tz=tz, norm=norm)


class _Correlator:
    """FFT correlation of one image ``[H,W,3]`` (float, values in [0, 1]) with many
    templates: the image's transforms are computed once.

    Kept by hand rather than ``cv2.matchTemplate(..., TM_CCOEFF_NORMED, mask=...)``, which
    computes the same masked, channel-pooled NCC (same peak, values within 6.5e-6,
    float32) but transforms the image again for every template, which makes a search
    over many scales slower (docs/benchmarks.md, "Tools").

    Only offsets where a template fits are needed, so a transform of the image's own
    (fast) size suffices: the circular wrap-around never reaches a valid offset.
    """

    def __init__(self, image: np.ndarray) -> None:
        self._fft = fft
        self.image = image - image.reshape(-1, 3).mean(axis=0)  # centred: smaller sums
        H, W = image.shape[:2]
        self.shape = (fft.next_fast_len(H, real=True), fft.next_fast_len(W, real=True))
        self.f_img = fft.rfft2(self.image, s=self.shape, axes=(0, 1))  # [., ., 3]
        self.f_sq = fft.rfft2((self.image ** 2).sum(axis=2), s=self.shape)

    def ncc_map(self, tpl: _Template) -> np.ndarray:
        """Masked, zero-mean normalised cross-correlation of ``tpl`` at every offset where
        it fits: ``[H-h+1, W-w+1]`` in [-1, 1] (0 on flat windows). Window means are
        taken per channel over the template's opaque pixels; the channels are pooled."""
        fft = self._fft
        H, W = self.image.shape[:2]
        h, w = tpl.shape
        vh, vw = H - h + 1, W - w + 1
        m = tpl.opaque.astype(np.float64)
        n = float(m.sum())
        tz = np.zeros((h, w, 3))
        tz[tpl.opaque] = tpl.tz
        f_t = np.conj(fft.rfft2(tz, s=self.shape, axes=(0, 1)))
        f_m = np.conj(fft.rfft2(m, s=self.shape))
        num = fft.irfft2((self.f_img * f_t).sum(axis=2), s=self.shape)[:vh, :vw]
        s1 = fft.irfft2(self.f_img * f_m[:, :, None], s=self.shape, axes=(0, 1))[:vh, :vw]
        s2 = fft.irfft2(self.f_sq * f_m, s=self.shape)[:vh, :vw]
        var = s2 - (s1 * s1).sum(axis=2) / n
        floor = 1e-8 * n
        ncc = np.where(var > floor, num / (np.sqrt(np.maximum(var, floor)) * tpl.norm), 0.0)
        return np.clip(ncc, -1.0, 1.0)


def _ncc_at(image: np.ndarray, tpl: _Template, x: int, y: int) -> float:
    """The correlation of :meth:`_Correlator.ncc_map` at one offset (``x, y`` = top-left
    of the template in ``image [H,W,3]``)."""
    h, w = tpl.shape
    pix = image[y:y + h, x:x + w][tpl.opaque]  # [n,3]
    n = len(pix)
    s1 = pix.sum(axis=0)
    var = float(np.einsum("ij,ij->", pix, pix) - s1 @ s1 / n)
    if var <= 1e-8 * n:
        return 0.0
    num = float(np.einsum("ij,ij->", pix, tpl.tz))  # tz sums to 0: no mean to remove
    return float(np.clip(num / (math.sqrt(var) * tpl.norm), -1.0, 1.0))


def _pyramid(rgb: np.ndarray, levels: int) -> list[np.ndarray]:
    """``[level 0 = full, level 1 = /2, ...]`` float64 ``[H_l,W_l,3]`` in [0, 1]
    (box-reduced by 2 per level)."""
    im = Image.fromarray(rgb)
    return [np.asarray(im.reduce(2 ** level) if level else im, dtype=np.float64) / 255.0
            for level in range(levels + 1)]


#: Scale step of the exhaustive coarse search, and the finest step of the refinement.
_COARSE_STEP = 1.04
_FINE_STEP = 1.0025


def match_cutout(image: np.ndarray, cutout: np.ndarray, *, min_scale: float = 0.8,
                 max_scale: float = 1.25, source: str = "--cutout") -> CutoutMatch:
    """Locate the RGBA ``cutout [h,w,4]`` in ``image [H,W,3]``.

    Coarse to fine: on an image pyramid (2x per level; the coarsest has a long side of
    ~160-320 px and the object a short side of >= 24 px), every scale in ``[min_scale,
    max_scale]`` (log-spaced, 4 % apart) is searched exhaustively by FFT correlation;
    the 3 best peaks at distinct positions are refined level by level down to full
    resolution (position +-2 px, scale step halved in log each time, down to 0.25 %),
    and the best refined one wins. Only the cut-out's opaque pixels (alpha >= 128) are
    compared; its transparent border is trimmed first.

    Raises:
        InputError: not RGBA, no opaque pixel, a flat (single-colour) cut-out, or a
            cut-out larger than the image at every searched scale.
    """

    if cutout.ndim != 3 or cutout.shape[2] != 4:
        raise InputError(source, "expected an RGBA cut-out (object opaque, background "
                         "transparent)")
    if not 0 < min_scale <= max_scale:
        raise InputError("--min-scale/--max-scale", f"expected 0 < min <= max, got "
                         f"{min_scale}, {max_scale}")
    box = mask_bbox(cutout[:, :, 3] >= 128)
    if box is None:
        raise InputError(source, "the cut-out has no opaque pixel (alpha >= 128)")
    x0, y0, x1, y1 = box
    rgba = np.ascontiguousarray(cutout[y0:y1, x0:x1])  # trim the transparent border
    h, w = rgba.shape[:2]
    H, W = image.shape[:2]
    sh, sw = _scaled_size(h, w, min_scale)
    if sh > H or sw > W:
        raise InputError(source, f"the cut-out's object ({w}x{h} px, at least {sw}x{sh} at "
                         f"scale {min_scale}) is larger than the image ({W}x{H})")
    levels = 0
    while (max(H, W) >> (levels + 1)) >= 160 and min(h, w) * min_scale / 2 ** (levels + 1) >= 24:
        levels += 1
    pyr = _pyramid(image[:, :, :3], levels)
    n_scales = max(1, math.ceil(math.log(max_scale / min_scale) / math.log(_COARSE_STEP)) + 1)
    scales = np.geomspace(min_scale, max_scale, n_scales)
    f = 2 ** levels
    coarse = _Correlator(pyr[levels])
    candidates: list[tuple[float, float, float, float]] = []  # (ncc, scale, centre x, y)
    for s in scales:
        tpl = _template(rgba, s / f)
        if tpl is None or tpl.shape[0] > pyr[levels].shape[0] or (
                tpl.shape[1] > pyr[levels].shape[1]):
            continue
        ncc = coarse.ncc_map(tpl)
        # two local maxima per scale, so a near miss of the true peak is refined too
        peaks = ncc == maximum_filter(ncc, size=5)
        ys, xs = np.nonzero(peaks)
        for k in np.argsort(-ncc[ys, xs], kind="stable")[:2]:
            th, tw = tpl.shape
            candidates.append((float(ncc[ys[k], xs[k]]), float(s),
                               (xs[k] + tw / 2) * f, (ys[k] + th / 2) * f))
    if not candidates:
        raise InputError(source, f"the cut-out ({w}x{h} px) cannot be located: it does not "
                         f"fit in the image ({W}x{H}) at any scale in [{min_scale}, "
                         f"{max_scale}], or it is a single flat colour")
    candidates.sort(key=lambda c: -c[0])
    # the 3 best peaks at distinct places (neighbouring scales peak at about the same
    # place: within a tenth of the object's size)
    near = max(2.0 * f, 0.1 * min(h, w) * min_scale)
    distinct: list[tuple[float, float, float, float]] = []
    for c in candidates:
        if all(abs(c[2] - d[2]) > near or abs(c[3] - d[3]) > near for d in distinct):
            distinct.append(c)
    best: tuple[float, float, int, int] | None = None
    for _, s, cx, cy in distinct[:3]:
        found = _refine(pyr, rgba, s, cx, cy, levels, min_scale, max_scale)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    if best is None:
        raise InputError(source, "the cut-out could not be located in the image")
    quality, s, x, y = best
    alpha = _scale_rgba(rgba, s)[:, :, 3] >= 128
    th, tw = alpha.shape
    mask = np.zeros((H, W), bool)
    mask[y:y + th, x:x + tw] = alpha
    return CutoutMatch(quality=quality, scale=s, x=x, y=y, mask=mask)


def _refine(pyr: Sequence[np.ndarray], rgba: np.ndarray, scale: float, cx: float, cy: float,
            levels: int, min_scale: float, max_scale: float
            ) -> tuple[float, float, int, int] | None:
    """Refine a coarse match (``scale``; object centre ``cx, cy`` in full-resolution
    pixels) from pyramid level ``levels - 1`` down to level 0, then keep refining the
    scale at full resolution. Returns ``(ncc, scale, x, y)`` (top-left at full
    resolution), or None when nothing fits."""
    h, w = rgba.shape[:2]
    schedule: list[tuple[int, float, int]] = []  # (level, scale step, radius)
    q = math.sqrt(_COARSE_STEP)
    for level in range(levels - 1, -1, -1):
        schedule.append((level, q, 2))
        q = math.sqrt(q)
    if not schedule:
        schedule.append((0, q, 1))
        q = math.sqrt(q)
    while q > _FINE_STEP * 0.999:
        schedule.append((0, q, 1))
        q = math.sqrt(q)
    best: tuple[float, float, int, int] | None = None
    for level, q, radius in schedule:
        img = pyr[level]
        f = 2 ** level
        tries = []  # (scale, template, guessed top-left x, y) at this level
        for s in sorted({min(max(v, min_scale), max_scale) for v in (scale / q, scale,
                                                                       scale * q)}):
            tpl = _template(rgba, s / f)
            if tpl is not None:
                th, tw = tpl.shape
                tries.append((s, tpl, round(cx / f - tw / 2), round(cy / f - th / 2)))
        if not tries:
            return None
        # one correlator over the region every placement of every scale falls in
        rx0 = max(0, min(gx for _, _, gx, _ in tries) - radius)
        ry0 = max(0, min(gy for _, _, _, gy in tries) - radius)
        rx1 = min(img.shape[1], max(gx + t.shape[1] for _, t, gx, _ in tries) + radius)
        ry1 = min(img.shape[0], max(gy + t.shape[0] for _, t, _, gy in tries) + radius)
        corr = _Correlator(img[ry0:ry1, rx0:rx1])
        best = None
        for s, tpl, gx, gy in tries:
            th, tw = tpl.shape
            if th > ry1 - ry0 or tw > rx1 - rx0:
                continue
            ncc = corr.ncc_map(tpl)
            # allowed offsets, relative to the region
            ax0, ay0 = max(0, gx - radius - rx0), max(0, gy - radius - ry0)
            ax1 = min(ncc.shape[1], gx + radius + 1 - rx0)
            ay1 = min(ncc.shape[0], gy + radius + 1 - ry0)
            if ax1 <= ax0 or ay1 <= ay0:
                continue
            win = ncc[ay0:ay1, ax0:ax1]
            k = int(np.argmax(win))
            v = float(win.flat[k])
            if best is None or v > best[0]:
                best = (v, s, rx0 + ax0 + k % win.shape[1], ry0 + ay0 + k // win.shape[1])
        if best is None:
            return None
        _, scale, bx, by = best
        th, tw = _scaled_size(h, w, scale / f)
        cx, cy = (bx + tw / 2) * f, (by + th / 2) * f
    if best is None:
        return None
    # the reported quality: evaluated directly, without FFT rounding
    _, scale, bx, by = best
    final = _template(rgba, scale)
    return None if final is None else (_ncc_at(pyr[0], final, bx, by), scale, bx, by)


def run_from_cutout(image: str | Path, cutout: str | Path, out: str | Path, *, label: int = 1,
                    min_quality: float = 0.8, min_scale: float = 0.8,
                    max_scale: float = 1.25) -> CutoutMatch:
    """``sst mask from-cutout``: find ``cutout`` in ``image``, write the label mask ``out``
    (value ``label`` on the cut-out's opaque pixels, 0 elsewhere).

    Raises:
        InputError: unreadable files, label out of 1..65535, a cut-out that cannot be
            located, or a best match below ``min_quality``.
    """
    if not 1 <= label <= MAX_LABEL:
        raise InputError("--label", f"expected a label in 1..{MAX_LABEL}, got {label}")
    if not -1.0 <= min_quality <= 1.0:
        raise InputError("--min-quality", f"expected a value in [-1, 1], got {min_quality}")
    rgb = sio.load_image(image)
    rgba = _load_rgba(cutout)
    match = match_cutout(rgb, rgba, min_scale=min_scale, max_scale=max_scale,
                         source=str(cutout))
    if match.quality < min_quality:
        raise InputError(str(cutout), f"best match quality {match.quality:.3f} (scale "
                         f"{match.scale:.3f} at x={match.x}, y={match.y}) is below "
                         f"--min-quality {min_quality}: is this cut-out from this image?")
    out_mask: np.ndarray = np.where(match.mask, label, 0).astype(label_dtype(label))
    sio.save_label_png(out, out_mask)
    return match


def _load_rgba(path: str | Path) -> np.ndarray:
    """An RGBA cut-out file as ``uint8 [h,w,4]``; InputError without an alpha channel."""
    source = str(path)
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode in ("P", "RGB", "L") and "transparency" in im.info)
            if not has_alpha:
                raise InputError(source, f"the cut-out has no transparency (mode {im.mode}); "
                                 "expected an RGBA PNG with a transparent background")
            return np.array(im.convert("RGBA"), dtype=np.uint8)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(source, "cut-out file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(source, f"cannot read the cut-out image: {exc}") from None
