"""What an image file declares about its pixels, read from its header alone, and the
checks every reader makes on it before a pixel is decoded.

A header can declare far more than its file holds: a tiled TIFF of a few KB whose tiles
all point at one small compressed blob may claim 7000 x 7000 pixels of 20 samples of
16 bit (2 GB once decoded). What decoding one page will allocate is
``width x height x samples x bytes per sample x depth`` (:attr:`ImageHeader.stored_bytes`);
that, the samples and the depth are judged here, from the header, never from the pixels.

* TIFF (and OME-TIFF) through tifffile's tag parsing: ImageWidth, ImageLength,
  SamplesPerPixel, BitsPerSample / SampleFormat (the decoded dtype), ImageDepth, and the
  page count (counted up to a bound, so that a chain of a million pages is not walked);
* every other format through Pillow's header: the mode gives the bands and their depth.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import tifffile
from PIL import Image, UnidentifiedImageError

from sst.tracker.errors import BudgetError, InputError, Reason

__all__ = ["ImageHeader", "read_header", "tiff_header", "pillow_header", "check_header",
           "count_pages", "MAX_BYTES_PER_PIXEL", "MAX_SAMPLES", "RGB_BYTES", "MAX_PAGES"]

#: Bytes per pixel an image at the per-image pixel limit may decode to: 16-bit RGBA, or
#: one float64 channel. An image's limit in decoded bytes is its pixel limit times this.
MAX_BYTES_PER_PIXEL = 8
#: Samples per pixel a reader accepts: grey, grey + alpha, RGB, RGBA.
MAX_SAMPLES = 4
#: Bytes per pixel of the 8-bit RGB every image becomes.
RGB_BYTES = 3
#: Pages of one multi-page file made into queries, unless told otherwise
#: (``sst segment --max-pages``, ``sst watch --max-pages``); also how far a server
#: counts the pages of a file it refuses.
MAX_PAGES = 1000

_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_MODE_SAMPLE_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4,
                      "I;32": 4, "I;32L": 4, "I;32B": 4}


class ImageHeader(tuple[int, int]):
    """``(width, height)`` as read from an image's header, carrying what else the header
    declares: ``samples`` per pixel, ``sample_bytes`` (bytes of one decoded sample),
    ``depth`` (TIFF ImageDepth: planes of a volume in one page), ``pages`` (counted up to
    a bound: ``pages > bound`` means at least that many) and ``kind`` (``"TIFF"``,
    ``"PNG"``, ...)."""

    samples: int
    sample_bytes: int
    depth: int
    pages: int
    kind: str

    def __new__(cls, width: int, height: int, samples: int = 3, sample_bytes: int = 1,
                depth: int = 1, pages: int = 1, kind: str = "") -> ImageHeader:
        self = super().__new__(cls, (int(width), int(height)))
        self.samples, self.sample_bytes = int(samples), int(sample_bytes)
        self.depth, self.pages, self.kind = int(depth), int(pages), kind
        return self

    @property
    def width(self) -> int:
        return self[0]

    @property
    def height(self) -> int:
        return self[1]

    @property
    def pixels(self) -> int:
        return self[0] * self[1]

    @property
    def stored_bytes(self) -> int:
        """Bytes one page decodes to as stored: width x height x samples x bytes per
        sample x depth."""
        return self.pixels * self.samples * self.sample_bytes * self.depth

    @property
    def decoded_bytes(self) -> int:
        """What reading one page allocates at least: its pixels as stored, or the 8-bit
        RGB they become, whichever is larger."""
        return max(self.stored_bytes, self.pixels * RGB_BYTES)

    def describe(self) -> str:
        """What the header declares, e.g. ``"7000x7000, 20 samples of 2 bytes"``."""
        text = (f"{self[0]}x{self[1]}, {self.samples} sample{'s' * (self.samples != 1)} of "
                f"{self.sample_bytes} byte{'s' * (self.sample_bytes != 1)}")
        return text + (f", depth {self.depth}" if self.depth != 1 else "")


def count_pages(tif: tifffile.TiffFile, bound: int) -> int:
    """Pages of ``tif``, walking at most ``bound + 1`` of them: ``bound + 1`` stands for
    "more than ``bound``"."""
    try:
        tif.pages[bound]
    except IndexError:
        return max(1, len(tif.pages))
    return bound + 1


def tiff_header(tif: tifffile.TiffFile, page: int = 0, page_bound: int | None = MAX_PAGES
                ) -> ImageHeader:
    """The header of page ``page`` of an open TIFF (tags only: nothing is decoded), its
    pages counted up to ``page_bound`` (None: not counted, ``pages`` is 1). Raises
    IndexError when there is no such page."""
    p: Any = tif.pages[page]
    if not isinstance(p, tifffile.TiffPage):
        p = p.aspage()
    dtype = p.dtype
    sample_bytes = dtype.itemsize if dtype is not None else max(1, (p.bitspersample + 7) // 8)
    return ImageHeader(p.imagewidth, p.imagelength, max(1, p.samplesperpixel), sample_bytes,
                       max(1, p.imagedepth),
                       1 if page_bound is None else count_pages(tif, page_bound), "TIFF")


def pillow_header(im: Image.Image) -> ImageHeader:
    """The header of an image Pillow has opened (and not yet loaded)."""
    bands = len(im.getbands())
    return ImageHeader(im.size[0], im.size[1], bands, _MODE_SAMPLE_BYTES.get(im.mode, 1),
                       kind=str(im.format or ""))


def read_header(src: bytes | str | os.PathLike[str], source: str, what: str = "image",
                page_bound: int = MAX_PAGES) -> ImageHeader:
    """The header of an encoded image (file bytes or a path), without decoding a pixel.
    TIFFs through tifffile (Pillow when tifffile cannot parse one), the rest through
    Pillow. Raises :class:`InputError` naming ``source`` when nothing can read it, and
    :class:`BudgetError` when Pillow will not even open it (past twice its own bomb
    bound)."""
    data: bytes | None = None
    path: str | os.PathLike[str] | None = None
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        head = data[:4]
    else:
        path = src
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
        except FileNotFoundError:
            raise InputError(source, f"{what} file not found") from None
        except IsADirectoryError:
            raise InputError(source, f"is a directory, expected an {what} file") from None
        except PermissionError:
            raise InputError(source, f"permission denied reading the {what} file") from None

    def stream() -> Any:
        return io.BytesIO(data) if data is not None else path

    if head in _TIFF_MAGIC:
        try:
            with tifffile.TiffFile(stream()) as tif:
                return tiff_header(tif, 0, page_bound)
        except Exception:  # Pillow's turn, then named below
            pass
    try:
        with warnings.catch_warnings():  # a size over Pillow's own bound is ours to judge
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream()) as im:
                return pillow_header(im)
    except Image.DecompressionBombError as exc:
        raise BudgetError(source, f"{what} too large to open ({exc})", Reason.PIXEL_BUDGET
                          ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        pass
    raise InputError(source, f"cannot read {what}: not a recognised image format, or the "
                     "file is corrupt")


def check_header(header: ImageHeader, source: str, what: str = "image",
                 max_pixels: int | None = None, max_bytes: int | None = None) -> None:
    """Refuse, before decoding, an image whose header declares more than a reader takes:
    more than ``max_pixels`` (width x height), a volume (depth > 1), more than
    :data:`MAX_SAMPLES` samples per pixel, or a page that decodes to more than
    ``max_bytes``. The error names ``source``, what the header declares and the limit."""
    w, h = header
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(source, f"{what} is {w}x{h} = {w * h:,} pixels; the limit is "
                                 f"{max_pixels:,} pixels")
    if header.depth > 1:
        raise InputError(source, f"{what} declares a volume ({header.describe()}: ImageDepth "
                                 f"{header.depth}); expected one plane per page: save the "
                                 f"planes as pages of a stack")
    if header.samples > MAX_SAMPLES:
        raise InputError(source, f"{what} declares {header.samples} samples per pixel "
                                 f"({header.describe()}); expected 1 (grey), 2 (grey + "
                                 f"alpha), 3 (RGB) or 4 (RGBA)")
    if max_bytes is not None and header.stored_bytes > max_bytes:
        raise BudgetError(source, f"{what} would decode to {header.stored_bytes / 2**20:,.0f} "
                                  f"MiB ({header.describe()}); the limit is "
                                  f"{max_bytes / 2**20:,.0f} MiB per image",
                          Reason.PIXEL_BUDGET)
