"""Small files that declare large images, for the hostile-client checks and tests.

* :func:`crafted_tiffs`: tiled TIFFs of a few KB whose every tile points at one small
  zlib blob of zeros, declaring a volume (ImageDepth), 20 samples of uint16 or 8 samples
  of float64: each would decode to 0.9 to 2 GB;
* :func:`solid_png`: a ``w x h`` RGB PNG of one colour (about 160 KB at 7000 x 7000);
* :func:`label_mask_png`: a ``w x h`` grey PNG label mask of ``k`` labels (vertical
  stripes 1..k).

Every file is written row by row or tile by tile: none is ever held decoded.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

__all__ = ["crafted_tiffs", "tiled_tiff", "solid_png", "label_mask_png"]

# TIFF field types
_SHORT, _LONG = 3, 4


def tiled_tiff(width: int, height: int, *, samples: int = 1, dtype: str = "uint8",
               depth: int = 1, tile: int = 512, tile_depth: int = 1) -> bytes:
    """A little-endian tiled TIFF (deflate, one page) declaring ``width x height`` pixels
    of ``samples`` samples of ``dtype``, ``depth`` planes deep (ImageDepth), whose tiles
    all point at one compressed tile of zeros. It is a valid TIFF: tifffile decodes it
    (to zeros), allocating the whole declared size."""
    dt = np.dtype(dtype)
    if dt.kind not in "uif":
        raise ValueError(f"expected an integer or float dtype, got {dtype}")
    tile_depth = min(tile_depth, depth)
    one_tile = tile_depth * tile * tile * samples * dt.itemsize
    comp = zlib.compressobj(9)
    chunk = bytes(min(one_tile, 1 << 20))
    parts, left = [], one_tile
    while left > 0:
        n = min(left, len(chunk))
        parts.append(comp.compress(chunk[:n]))
        left -= n
    blob = b"".join(parts) + comp.flush()
    tiles = (math.ceil(depth / tile_depth) * math.ceil(height / tile)
             * math.ceil(width / tile))
    fmt = {"u": 1, "i": 2, "f": 3}[dt.kind]
    entries: list[tuple[int, int, list[int]]] = [
        (256, _LONG, [width]),
        (257, _LONG, [height]),
        (258, _SHORT, [dt.itemsize * 8] * samples),
        (259, _SHORT, [8]),  # Adobe deflate
        (262, _SHORT, [1]),  # min-is-black
        (277, _SHORT, [samples]),
        (284, _SHORT, [1]),  # contiguous samples
        (322, _LONG, [tile]),
        (323, _LONG, [tile]),
        (324, _LONG, [0] * tiles),  # offsets: filled below
        (325, _LONG, [len(blob)] * tiles),
    ]
    if samples > 1:
        entries.append((338, _SHORT, [0] * (samples - 1)))  # unspecified extra samples
    entries.append((339, _SHORT, [fmt] * samples))
    if depth > 1:
        entries += [(32997, _LONG, [depth]), (32998, _LONG, [tile_depth])]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = ifd_at + ifd_size
    blob_at = data_at
    extra = bytearray()
    cursor = blob_at + len(blob)
    packed: list[bytes] = []
    for tag, kind, values in entries:
        if tag == 324:
            values = [blob_at] * tiles
        size = 2 if kind == _SHORT else 4
        raw = struct.pack(f"<{len(values)}{'H' if kind == _SHORT else 'I'}", *values)
        if len(values) * size <= 4:
            field = raw.ljust(4, b"\0")
        else:
            field = struct.pack("<I", cursor + len(extra))
            extra += raw
            if len(extra) % 2:
                extra += b"\0"
        packed.append(struct.pack("<HHI", tag, kind, len(values)) + field)
    ifd = struct.pack("<H", len(entries)) + b"".join(packed) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_at) + ifd + blob + bytes(extra)


def crafted_tiffs() -> dict[str, bytes]:
    """The three hostile TIFFs of issue 24, by name: ``depth100`` (3000 x 3000, ImageDepth
    100, uint8: 0.9 GB decoded), ``samples20_uint16`` (7000 x 7000, 20 samples of uint16:
    1.96 GB) and ``samples8_float64`` (5000 x 5000, 8 samples of float64: 1.6 GB); each
    file is a few KB."""
    return {
        "depth100": tiled_tiff(3000, 3000, depth=100, tile_depth=20),
        "samples20_uint16": tiled_tiff(7000, 7000, samples=20, dtype="uint16"),
        "samples8_float64": tiled_tiff(5000, 5000, samples=8, dtype="float64"),
    }


def _png(width: int, height: int, bit_depth: int, colour: int, row: bytes) -> bytes:
    """A PNG of ``height`` copies of ``row`` (its pixels, without the filter byte)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    comp = zlib.compressobj(9)
    line = b"\0" + row
    idat = b"".join(comp.compress(line) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def solid_png(w: int, h: int, rgb: tuple[int, int, int] = (128, 96, 64)) -> bytes:
    """A ``w x h`` 8-bit RGB PNG of one colour (about 160 KB at 7000 x 7000)."""
    return _png(w, h, 8, 2, bytes(rgb) * w)


def label_mask_png(w: int, h: int, k: int) -> bytes:
    """A ``w x h`` 8-bit grey PNG label mask holding labels ``1..k`` (``k <= 255``,
    ``k <= w``) as vertical stripes of equal width."""
    if not 1 <= k <= min(255, w):
        raise ValueError(f"expected 1 <= k <= min(255, w={w}), got {k}")
    row = ((np.arange(w) * k) // w + 1).astype(np.uint8).tobytes()
    return _png(w, h, 8, 0, row)
