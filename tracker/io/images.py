"""Reading images and label masks into arrays, with their checks.

The conventions every other module relies on:

* images are ``uint8`` arrays ``[H, W, 3]`` in RGB order; files with deeper pixels
  (12/16-bit, float; TIFF and OME-TIFF stacks through tifffile) are read in their own type
  by :func:`read_pixels` and mapped to 8 bit by a :class:`~sst.tracker.io.intensity.Normaliser`;
* masks / label maps are 2-D integer arrays ``[H, W]`` (``uint8``, or ``uint16`` when a
  label exceeds 255); ``0`` is background and every other value is one label;
* sizes passed around as ``image_size`` are ``(width, height)`` like Pillow's.

Every unusable input raises :class:`sst.tracker.errors.InputError` naming the file (or
field) and saying what was expected. Limits are checked from the header, before any pixel
is decoded (:mod:`~sst.tracker.io.headers`): width x height against ``max_pixels``, the
bytes a page decodes to (width x height x samples x bytes per sample x depth) against
``max_pixels x`` :data:`~sst.tracker.io.headers.MAX_BYTES_PER_PIXEL`, and the samples and
depth a reader takes at all.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from sst.tracker.defaults import MAX_LABELS
from sst.tracker.errors import InputError
from sst.tracker.io.headers import (
    MAX_BYTES_PER_PIXEL,
    MAX_PAGES,
    check_header,
    count_pages,
    pillow_header,
    tiff_header,
)
from sst.tracker.io.intensity import Normaliser
from sst.tracker.ops import mask_labels

StrPath: TypeAlias = str | os.PathLike[str]

#: File extensions (lower case, with dot) treated as images by :func:`collect_queries`.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
)

#: Largest image (width x height) the loaders decode unless told otherwise. Checked from
#: the file header, before any pixel is decoded, with the bytes it decodes to (at most
#: ``MAX_BYTES_PER_PIXEL`` per pixel of this).
MAX_PIXELS = 100_000_000

_MODES_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_MAX_LABEL = 65535

# Errors Pillow (or its plugins) raise on unreadable, truncated or corrupt data.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
# ... and those tifffile raises on a TIFF it cannot parse.
_TIFF_ERRORS: tuple[type[BaseException], ...] = (
    tifffile.TiffFileError, *_DECODE_ERRORS, IndexError, KeyError)


def _file_problem(exc: OSError, source: str, what: str) -> InputError:
    """The error that names why a file could not be opened at all."""
    if isinstance(exc, IsADirectoryError):
        return InputError(source, f"is a directory, expected an {what} file")
    if isinstance(exc, PermissionError):
        return InputError(source, f"permission denied reading the {what} file")
    return InputError(source, f"{what} file not found")


def _no_page(source: str, count: int, page: int) -> InputError:
    """The error for a page past the end of a stack of ``count``."""
    return InputError(source, f"has {count} page(s); page {page} does not exist "
                              f"(pages count from 0)")


def _max_bytes(max_pixels: int | None) -> int | None:
    """Decoded bytes one image may take under a limit of ``max_pixels``."""
    return None if max_pixels is None else max_pixels * MAX_BYTES_PER_PIXEL


def _decode(
    source: str, opener: Callable[[], Image.Image], what: str, max_pixels: int | None = MAX_PIXELS
) -> tuple[Image.Image, str | None]:
    """Open, check the size, fully decode and EXIF-orient an image; map every failure to
    InputError.

    Pillow opens lazily: only the header is read until the pixels are needed, so an image
    over ``max_pixels`` (a decompression bomb: a few KB of PNG that inflate to GBs) is
    refused before any pixel memory is allocated. Returns a detached, loaded
    :class:`PIL.Image.Image` (the file is closed) and the file format Pillow detected
    (``"PNG"``, ``"JPEG"``, ...).
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns from its own bound on (89 MP); the size is checked right after
            # opening, against ``max_pixels``, with an error that names the limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with opener() as im:
                check_header(pillow_header(im), source, what, max_pixels,
                             _max_bytes(max_pixels))
                return ImageOps.exif_transpose(im), im.format
    except InputError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise _file_problem(exc, source, what) from None
    except UnidentifiedImageError:
        raise InputError(
            source, f"cannot read {what}: not a recognised image format, or the file is corrupt"
        ) from None
    except Image.DecompressionBombError as exc:  # past twice Pillow's bound, refused in open
        limit = "" if max_pixels is None else f"; the limit is {max_pixels:,} pixels"
        raise InputError(source, f"{what} is too large to decode safely ({exc}){limit}") from None
    except _DECODE_ERRORS as exc:
        raise InputError(
            source, f"cannot decode {what} (corrupt or truncated file?): {exc}"
        ) from None


def _open_path(path: StrPath) -> Callable[[], Image.Image]:
    return lambda: Image.open(path)


def _open_bytes(data: bytes) -> Callable[[], Image.Image]:
    return lambda: Image.open(io.BytesIO(data))


def _pillow_pixels(im: Image.Image, source: str) -> np.ndarray:
    """The pixels of a decoded Pillow image: 16-bit greyscale (``I;16*``) as ``uint16``,
    32-bit ``I`` as ``int32`` and ``F`` as ``float32`` ``[H, W]``; everything else through
    ``Image.convert("RGB")`` (which drops alpha) as ``uint8 [H, W, 3]``, so plain RGB
    files decode exactly like ``Image.open(p).convert("RGB")``."""
    mode = im.mode
    if mode in _MODES_16BIT:
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        return np.asarray(im).astype(np.int32)
    if mode == "F":
        return np.asarray(im).astype(np.float32)
    try:
        if mode in ("P", "PA") and "transparency" in im.info:
            # P + tRNS -> RGB directly makes Pillow warn; going through RGBA is silent
            # and gives the same colours.
            im = im.convert("RGBA")
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise InputError(source, f"cannot convert image mode {mode!r} to RGB: {exc}") from None
    return np.array(rgb, dtype=np.uint8)


def _is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _tiff_pixels(source: str, src: Any, page: int, what: str, max_pixels: int | None
                 ) -> np.ndarray | None:
    """Page ``page`` of a TIFF (``src``: a path or a binary file) in its own dtype,
    ``[H, W]`` or ``[H, W, S]``; None when tifffile cannot decode it here (palette or
    inverted grey, or a compression it needs imagecodecs for): Pillow reads those."""
    try:
        with tifffile.TiffFile(src) as tif:
            count = len(tif.pages)
            if not 0 <= page < count:
                raise _no_page(source, count, page)
            # the header's pixels, samples, depth and bytes, before any tile is decoded
            check_header(tiff_header(tif, page, None), source, what, max_pixels,
                         _max_bytes(max_pixels))
            p = tif.pages[page]
            if not isinstance(p, tifffile.TiffPage):
                p = p.aspage()
            if p.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK,
                                     tifffile.PHOTOMETRIC.RGB):
                return None
            try:
                arr = p.asarray()
            except ValueError as exc:
                if "imagecodecs" in str(exc) and page == 0:
                    return None
                raise
            if arr.ndim == 3 and p.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                arr = np.moveaxis(arr, 0, -1)
            return np.ascontiguousarray(arr)
    except InputError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise _file_problem(exc, source, what) from None
    except _TIFF_ERRORS as exc:
        if page == 0:
            return None  # Pillow's turn; it names the problem if it cannot read it either
        raise InputError(source, f"cannot decode page {page} of the {what} (corrupt or "
                                 f"truncated file?): {exc}") from None


def _pillow_page(source: str, opener: Callable[[], Image.Image], page: int, what: str,
                 max_pixels: int | None) -> np.ndarray:
    def open_page() -> Image.Image:
        im = opener()
        try:
            im.seek(page)
        except EOFError:
            count = getattr(im, "n_frames", 1)
            im.close()
            raise _no_page(source, count, page) from None
        return im

    im, _ = _decode(source, opener if page == 0 else open_page, what, max_pixels)
    return _pillow_pixels(im, source)


def read_pixels(path: StrPath, *, page: int = 0, max_pixels: int | None = MAX_PIXELS
                ) -> np.ndarray:
    """The pixels of an image file in the camera's own type, not yet normalised.

    TIFF (and OME-TIFF, multi-page stacks) through tifffile: ``page`` of the file, 8/16/32-bit
    integer or float, grey ``[H, W]`` or RGB(A) ``[H, W, 3|4]``. Other formats, and TIFFs
    tifffile cannot decode without optional codecs (LZW, JPEG) or with a palette, through
    Pillow (EXIF orientation applied): 16-bit grey as ``uint16``, 32-bit as ``int32`` or
    ``float32``, the rest as ``uint8 [H, W, 3]``.

    Raises:
        InputError: missing, unreadable, corrupt or too large, or no such page.
    """
    source = os.fspath(path)
    if Path(source).suffix.lower() in (".tif", ".tiff"):
        arr = _tiff_pixels(source, source, page, "image", max_pixels)
        if arr is not None:
            return arr
    return _pillow_page(source, _open_path(path), page, "image", max_pixels)


def read_pixels_bytes(data: bytes, source: str = "<bytes>", *, page: int = 0,
                      max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Like :func:`read_pixels`, from encoded file bytes (a TIFF is recognised by its
    header)."""
    data = bytes(data)
    if _is_tiff(data):
        arr = _tiff_pixels(source, io.BytesIO(data), page, "image", max_pixels)
        if arr is not None:
            return arr
    return _pillow_page(source, _open_bytes(data), page, "image", max_pixels)


def page_count(path: StrPath, bound: int | None = None) -> int:
    """Pages (images) in a file: those of a TIFF stack, 1 for every other file (and for a
    file that cannot be read: reading it reports the problem). With ``bound``, at most
    ``bound + 1`` pages are walked: ``bound + 1`` means "more than ``bound``"."""
    source = os.fspath(path)
    if Path(source).suffix.lower() not in (".tif", ".tiff"):
        return 1
    try:
        with tifffile.TiffFile(source) as tif:
            return max(1, len(tif.pages)) if bound is None else count_pages(tif, bound)
    except _TIFF_ERRORS:
        return 1


def check_pages(path: StrPath, count: int, max_pages: int = MAX_PAGES,
                chosen: int | None = None) -> None:
    """Refuse a stack whose pages would make more than ``max_pages`` queries: its
    ``count`` pages (as :func:`page_count` with ``bound=max_pages`` counts them), or the
    ``chosen`` ones (``--pages``)."""
    if chosen is not None and chosen > max_pages:
        raise InputError(path, f"{chosen} pages chosen (--pages), each a query; the limit is "
                               f"{max_pages} pages per file (--max-pages)")
    if chosen is None and count > max_pages:
        raise InputError(path, f"has more than {max_pages} pages, each a query; the limit is "
                               f"{max_pages} pages per file (--max-pages): raise it, or "
                               f"choose pages with --pages")


def check_single_page(path: StrPath, what: str = "support image") -> None:
    """Refuse a multi-page file where one image is meant (a support): which page to take
    would be a guess, and a server refuses such a file too."""
    count = page_count(path, bound=MAX_PAGES)
    if count > 1:
        shown = f"more than {MAX_PAGES}" if count > MAX_PAGES else str(count)
        raise InputError(path, f"has {shown} pages; a {what} is one image: save the page to "
                               f"use as a file of its own")


def _normalised(raw: np.ndarray, source: str, intensity: Normaliser | None) -> np.ndarray:
    return (intensity if intensity is not None else Normaliser("auto"))(raw, source)


def load_image(path: StrPath, *, max_pixels: int | None = MAX_PIXELS,
               intensity: Normaliser | None = None, page: int = 0) -> np.ndarray:
    """Load an image file as 8-bit RGB.

    Args:
        path: any format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, ...), TIFF / OME-TIFF
            through tifffile (see :func:`read_pixels`). The EXIF orientation tag is
            applied (Pillow formats). 8-bit pixels (RGB, RGBA with alpha dropped, L / LA,
            P, 1-bit) come back as they are; deeper ones (12/16-bit, 32-bit integer or
            float) through ``intensity``.
        max_pixels: largest width x height accepted, checked from the header before
            decoding (None: Pillow's own decompression-bomb bound only).
        intensity: the session's :class:`~sst.tracker.io.intensity.Normaliser`; default:
            ``auto`` on this image alone (its own 0.5-99.5 percentiles).
        page: the page of a multi-page TIFF (from 0).

    Returns:
        ``uint8`` array ``[H, W, 3]``, RGB order, C-contiguous and writable.

    Raises:
        InputError: the file is missing, unreadable, corrupt, too large or of an
            unsupported mode.
    """
    source = os.fspath(path)
    raw = read_pixels(path, page=page, max_pixels=max_pixels)
    return _normalised(raw, source, intensity)


def load_image_bytes(
    data: bytes, source: str = "<bytes>", *, max_pixels: int | None = MAX_PIXELS,
    intensity: Normaliser | None = None
) -> np.ndarray:
    """Like :func:`load_image`, from encoded file bytes (PNG, JPEG, TIFF, ...).

    Returns:
        ``uint8`` array ``[H, W, 3]`` RGB. ``source`` names the data in errors.
    """
    raw = read_pixels_bytes(data, source, max_pixels=max_pixels)
    return _normalised(raw, source, intensity)


def _image_to_labels(im: Image.Image, source: str) -> np.ndarray:
    """Raw 2-D label values of a decoded mask image (not yet validated).

    L / P (palette indices) / 1 (bool) / I;16* / I / F give their pixel values; LA and
    PA their first channel; RGB(A) only when R == G == B (alpha is ignored).
    """
    mode = im.mode
    if mode in ("L", "P", "1", "I", "F") or mode in _MODES_16BIT:
        return np.asarray(im)
    if mode in ("LA", "PA"):
        return np.asarray(im)[:, :, 0]
    if mode in ("RGB", "RGBA", "RGBX"):
        values = np.asarray(im)
        red = values[:, :, 0]
        if not (np.array_equal(red, values[:, :, 1]) and np.array_equal(red, values[:, :, 2])):
            raise InputError(
                source,
                f"mask is colour ({mode} with differing channels); expected single-channel "
                "label values (greyscale or palette PNG, 0 = background)",
            )
        return red
    raise InputError(
        source,
        f"unsupported mask image mode {mode!r}; expected single-channel label values "
        "(L, P, 1, I;16 or grey RGB)",
    )


def _load_mask_from(
    source: str,
    opener: Callable[[], Image.Image],
    image_size: tuple[int, int] | None,
    max_labels: int,
    max_pixels: int | None,
) -> np.ndarray:
    im, fmt = _decode(source, opener, "mask", max_pixels)
    hint = ""
    if fmt == "JPEG":
        hint = " (JPEG is lossy and invents labels at edges; save masks as PNG)"
    return _validate(_image_to_labels(im, source), source, image_size, max_labels, hint)


def load_mask(
    path: StrPath,
    *,
    image_size: tuple[int, int] | None = None,
    max_labels: int = MAX_LABELS,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Load a label mask: 0 is background, every other value is one label.

    Args:
        path: image file holding label values. Modes L, P (palette indices are the
            labels), 1, I;16 / I (integer values kept) and RGB/RGBA whose R, G and B
            are equal everywhere (grey stored as colour). EXIF orientation applied.
        image_size: ``(width, height)`` of the image the mask belongs to; the mask
            must have the same size.
        max_labels: most distinct non-zero labels allowed.
        max_pixels: largest width x height accepted, checked before decoding.

    Returns:
        2-D array ``[H, W]``, ``uint8`` (``uint16`` if a label exceeds 255).

    Raises:
        InputError: unreadable file, colour mask, size mismatch, no labels, too many
            labels, too many pixels, or values outside 0..65535.
    """
    return _load_mask_from(
        os.fspath(path), _open_path(path), image_size, max_labels, max_pixels
    )


def load_mask_bytes(
    data: bytes,
    source: str = "<bytes>",
    *,
    image_size: tuple[int, int] | None = None,
    max_labels: int = MAX_LABELS,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Like :func:`load_mask`, from encoded file bytes.

    Returns:
        2-D array ``[H, W]``, ``uint8`` or ``uint16``.
    """
    return _load_mask_from(
        source, _open_bytes(bytes(data)), image_size, max_labels, max_pixels
    )


def as_label_array(values: Any, source: str) -> np.ndarray:
    """Check that ``values`` is a 2-D array of non-negative integral labels <= 65535.

    Returns:
        ``uint8`` ``[H, W]`` if every value fits, else ``uint16`` ``[H, W]`` (a copy).
    """
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise InputError(source, f"mask must be a 2-D [H, W] array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
            raise InputError(
                source, f"mask has non-integer values ({arr.dtype}); expected integer labels"
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(source, f"mask must hold integer labels, got dtype {arr.dtype}")
    if arr.size == 0:
        return arr.astype(np.uint8)
    low, high = int(arr.min()), int(arr.max())
    if low < 0:
        raise InputError(source, f"mask has negative values (min {low}); expected labels >= 0")
    if high > _MAX_LABEL:
        raise InputError(
            source, f"mask has label {high}; expected labels in 0..{_MAX_LABEL} (16 bit)"
        )
    return arr.astype(np.uint8 if high <= 255 else np.uint16)


def _validate(
    values: Any,
    source: str,
    image_size: tuple[int, int] | None,
    max_labels: int,
    hint: str = "",
) -> np.ndarray:
    if max_labels < 1:
        raise InputError("max_labels", f"expected an integer >= 1, got {max_labels}")
    mask = as_label_array(values, source)
    height, width = mask.shape
    if image_size is not None:
        if len(image_size) != 2:
            raise InputError("image_size", f"expected (width, height), got {image_size!r}")
        img_w, img_h = int(image_size[0]), int(image_size[1])
        if (width, height) != (img_w, img_h):
            raise InputError(
                source, f"mask is {width}x{height} but its image is {img_w}x{img_h} (WxH)"
            )
    labels = mask_labels(mask)
    if not labels:
        raise InputError(source, "mask has no labels: every pixel is 0")
    if len(labels) > max_labels:
        raise InputError(
            source,
            f"mask has {len(labels)} distinct non-zero labels, expected at most {max_labels}{hint}",
        )
    return mask


def validate_mask(
    mask: np.ndarray,
    source: str | os.PathLike[str] = "<mask>",
    image_size: tuple[int, int] | None = None,
    max_labels: int = MAX_LABELS,
) -> np.ndarray:
    """Check a label array and normalise its dtype.

    Args:
        mask: 2-D ``[H, W]`` array. Integer dtypes as is; ``bool`` becomes 0/1; float
            only if every value is integral.
        source: name used in error messages.
        image_size: ``(width, height)`` the mask must match.
        max_labels: most distinct non-zero labels allowed.

    Returns:
        ``[H, W]`` ``uint8`` (``uint16`` if a label exceeds 255), always a new array.

    Raises:
        InputError: wrong shape/dtype, negative or > 65535 values, size mismatch, no
            non-zero label, or more than ``max_labels`` labels.
    """
    return _validate(mask, os.fspath(source), image_size, max_labels)


def as_uint8_picture(image: Any, source: str, channels: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(source, f"expected a uint8 image, got dtype {arr.dtype}")
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in channels)
    if not shape_ok:
        wanted = " or ".join(f"[H, W, {c}]" for c in channels)
        raise InputError(source, f"expected an image of shape [H, W] or {wanted}, got {arr.shape}")
    return np.ascontiguousarray(arr)
