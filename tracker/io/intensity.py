"""Pixels as microscope cameras write them, normalised to the 8-bit RGB the model reads.

A camera gives 8-, 12- or 16-bit integers (12-bit values in a 16-bit container: 0..4095)
or 32-bit floats, grey or RGB. The model reads ``uint8 [H, W, 3]`` RGB, so every other
pixel type goes through one stated mapping, chosen with ``--intensity``:

* ``auto`` (the default): 8-bit pixels as they are; anything deeper is stretched per
  channel from its 0.5th to its 99.5th percentile to 0..255. The percentiles are computed
  once, on the first deep image of a session (the support, which is read first) and
  reused for every query, so that one session sees one mapping;
* ``range:LO,HI``: ``LO`` -> 0 and ``HI`` -> 255 for every channel, clipped outside
  (also applied to 8-bit pixels: it was asked for explicitly);
* ``highbyte``: integers keep their high byte (``>> 8``; 0..65535 -> 0..255): a 12-bit
  image becomes 0..15, almost black. Refused for floats.

:meth:`Normaliser.record` is what ``results.json`` (and a rig's results) carry: the mode,
the percentiles and the ranges used, and which image they were computed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sst.tracker.errors import InputError

__all__ = ["INTENSITY_MODES", "Intensity", "Normaliser", "as_channels", "shown"]

INTENSITY_MODES = ("auto", "range:LO,HI", "highbyte")
#: Percentiles of ``auto``: the darkest and brightest 0.5 % of a channel saturate.
AUTO_PERCENTILES = (0.5, 99.5)
_MAX_16BIT = 65535


#: Characters of a bad value an error quotes (an error travels in a gRPC status, whose
#: metadata is bounded: a 10 KB value would not fit).
SHOWN_CHARS = 64


def shown(value: object) -> str:
    """``value`` as an error quotes it: its repr, cut to :data:`SHOWN_CHARS` characters
    with ``"…"`` and its length when longer."""
    text = str(value)
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}… ({len(text):,} characters)"


@dataclass(frozen=True)
class Intensity:
    """A parsed ``--intensity`` value: ``mode`` is ``auto``, ``range`` or ``highbyte``;
    ``low``/``high`` the range of ``range``."""

    mode: str = "auto"
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def parse(cls, text: str | Intensity, field: str = "--intensity") -> Intensity:
        """``auto``, ``highbyte`` or ``range:LO,HI`` (case-insensitive). A range must be
        two numbers finite in float32 (the type pixels are mapped in) with ``LO < HI``
        there too. Errors quote at most :data:`SHOWN_CHARS` characters of ``text``."""
        if isinstance(text, Intensity):
            return text
        value = str(text).strip().lower()
        if value in ("auto", "highbyte"):
            return cls(value)
        if value.startswith("range:"):
            parts = value[len("range:"):].split(",")
            try:
                low, high = (float(p) for p in parts)
            except ValueError:
                raise InputError(field, f"expected range:LO,HI with two numbers, got "
                                        f"{shown(text)}") from None
            top = float(np.finfo(np.float32).max)
            if not (all(np.isfinite(v) and abs(v) <= top for v in (low, high))
                    and abs(high - low) <= top):
                raise InputError(field, f"expected range:LO,HI with LO and HI finite in "
                                        f"float32 (|LO|, |HI| and HI - LO <= {top:.4g}), got "
                                        f"{shown(text)}")
            if not np.float32(low) < np.float32(high):
                raise InputError(field, f"expected range:LO,HI with LO < HI (in float32), got "
                                        f"{shown(text)}")
            return cls("range", low, high)
        raise InputError(field, f"expected one of {', '.join(INTENSITY_MODES)}, got "
                                f"{shown(text)}")

    def __str__(self) -> str:
        return f"range:{self.low:g},{self.high:g}" if self.mode == "range" else self.mode


def as_channels(raw: Any, source: str) -> np.ndarray:
    """``raw`` as ``[H, W, 1]`` (grey) or ``[H, W, 3]`` (RGB): an alpha channel is dropped
    (grey + alpha, RGBA). Other shapes are refused, naming the shape."""
    arr = np.asarray(raw)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(source, f"expected integer or float pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        return arr[:, :, :1] if arr.shape[2] <= 2 else arr[:, :, :3]
    raise InputError(source, f"expected pixels [H, W] (grey) or [H, W, 3|4] (RGB/RGBA), got "
                             f"shape {arr.shape}; select one plane (a page of a stack)")


def _stretch(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    scale = 255.0 / np.maximum(high - low, 1e-12)
    out = (values.astype(np.float32) - low.astype(np.float32)) * scale.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _rgb(channels: np.ndarray) -> np.ndarray:
    if channels.shape[2] == 1:
        # (concatenate copies without holding the GIL, and is 3x faster than np.repeat,
        # which held it ~6 ms per 1 MP frame: a rig thread pushing frames waited as long)
        return np.concatenate([channels] * 3, axis=2)
    return np.ascontiguousarray(channels)


class Normaliser:
    """One session's mapping of camera pixels to ``uint8 [H, W, 3]`` RGB (see the module
    docstring). Call it on each image, the support first::

        norm = Normaliser("auto")
        support_rgb = norm(support_pixels, "support.tif")   # fits the percentiles
        query_rgb = norm(query_pixels, "q1.tif")            # reuses them
        norm.record()   # {"mode": "auto", "percentiles": [0.5, 99.5], "ranges": ..., ...}
    """

    def __init__(self, intensity: str | Intensity = "auto",
                 percentiles: tuple[float, float] = AUTO_PERCENTILES) -> None:
        self.intensity = Intensity.parse(intensity)
        self.percentiles = percentiles
        #: ``auto``: per-channel ``(low, high)`` once fitted (1 entry for grey, 3 for RGB).
        self.ranges: list[tuple[float, float]] | None = None
        #: ``auto``: the image the ranges were computed on.
        self.fitted_on: str | None = None
        #: dtypes seen, e.g. ``{"uint16"}``.
        self.dtypes: set[str] = set()

    def fit(self, raw: Any, source: str) -> None:
        """Compute the ``auto`` ranges on ``raw`` (normally the support), replacing any."""
        ch = as_channels(raw, source)
        finite = [c[np.isfinite(c)] if np.issubdtype(c.dtype, np.floating) else c.ravel()
                  for c in (ch[:, :, k] for k in range(ch.shape[2]))]
        if any(f.size == 0 for f in finite):
            raise InputError(source, "no finite pixel values to compute the intensity range on")
        lo_p, hi_p = self.percentiles
        ranges = []
        for values in finite:
            low, high = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
            ranges.append((low, high if high > low else low + 1.0))
        self.ranges, self.fitted_on = ranges, source

    def __call__(self, raw: Any, source: str = "<array>") -> np.ndarray:
        """``raw`` (``[H, W]``, ``[H, W, 1|2|3|4]``; any integer or float dtype) as
        ``uint8 [H, W, 3]`` RGB."""
        ch = as_channels(raw, source)
        self.dtypes.add(str(ch.dtype))
        mode = self.intensity.mode
        if mode == "range":
            low = np.float32(self.intensity.low)
            high = np.float32(self.intensity.high)
            return _rgb(_stretch(ch, np.asarray(low), np.asarray(high)))
        if ch.dtype == np.uint8:
            return _rgb(ch)
        floating = np.issubdtype(ch.dtype, np.floating)
        if mode == "highbyte":
            if floating:
                raise InputError(source, f"--intensity highbyte needs integer pixels, got "
                                         f"{ch.dtype}; use auto or range:LO,HI")
            clipped = np.clip(ch, 0, _MAX_16BIT).astype(np.uint16)
            return _rgb((clipped >> 8).astype(np.uint8))
        if floating and not np.isfinite(ch).all():
            big = float(np.finfo(np.float32).max)
            ch = np.nan_to_num(ch, nan=0.0, posinf=big, neginf=-big)
        if self.ranges is None:
            self.fit(ch, source)
        assert self.ranges is not None
        lows = np.array([r[0] for r in self.ranges], np.float64)
        highs = np.array([r[1] for r in self.ranges], np.float64)
        if ch.shape[2] == 1 and len(lows) == 3:  # a grey query after an RGB support
            lows, highs = lows.min(keepdims=True), highs.max(keepdims=True)
        return _rgb(_stretch(ch, lows, highs))

    def passes_through(self, raw: np.ndarray) -> bool:
        """Whether ``raw``'s pixels come out as they are: 8 bit and no ``range`` asked
        for (a file holding them can then be sent itself)."""
        return raw.dtype == np.uint8 and self.intensity.mode != "range"

    def record(self) -> dict[str, Any]:
        """What was done, for ``results.json``: ``mode`` (``auto``, ``range``,
        ``highbyte``), ``input_dtypes``, and for ``auto`` the ``percentiles``, the
        per-channel ``ranges`` and the image they were ``fitted_on`` (null when every
        image was 8-bit and passed through), for ``range`` its ``range``."""
        out: dict[str, Any] = {"mode": self.intensity.mode,
                               "input_dtypes": sorted(self.dtypes)}
        if self.intensity.mode == "auto":
            out["percentiles"] = list(self.percentiles)
            out["ranges"] = (None if self.ranges is None
                             else [[round(lo, 6), round(hi, 6)] for lo, hi in self.ranges])
            out["fitted_on"] = self.fitted_on
        elif self.intensity.mode == "range":
            out["range"] = [self.intensity.low, self.intensity.high]
        return out
