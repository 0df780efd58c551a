"""Image, mask and result file I/O for the tracker.

Everything that turns user files into arrays (or arrays into files) lives here, so
the rest of the tracker only ever sees these conventions:

* images are ``uint8`` arrays of shape ``[H, W, 3]`` in RGB order;
* masks / label maps are 2-D integer arrays ``[H, W]`` (``uint8``, or ``uint16``
  when a label exceeds 255) where ``0`` is background and every other value is
  one label;
* sizes passed around as ``image_size`` are ``(width, height)`` like Pillow's.

Every unusable input raises :class:`sst.tracker.errors.InputError` naming the file
(or field) and saying what was expected. Writers go through :func:`atomic_write`,
so a crash never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import secrets
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sst.tracker.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "atomic_write",
    "collect_queries",
    "label_palette",
    "label_png_bytes",
    "load_image",
    "load_image_bytes",
    "load_mask",
    "load_mask_bytes",
    "mask_labels",
    "mask_to_rle",
    "natural_key",
    "overlay",
    "rle_to_mask",
    "save_csv",
    "save_gif",
    "save_json",
    "save_label_png",
    "save_npz",
    "save_png",
    "validate_mask",
]

StrPath: TypeAlias = str | os.PathLike[str]

#: File extensions (lower case, with dot) treated as images by :func:`collect_queries`.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
)

#: Largest image (width x height) the loaders decode unless told otherwise. Checked from
#: the file header, before any pixel is decoded.
MAX_PIXELS = 100_000_000

_MODES_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_MAX_LABEL = 65535
_GOLDEN = 0.6180339887498949

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


# --------------------------------------------------------------------------- reading


def _check_pixels(im: Image.Image, source: str, what: str, max_pixels: int | None) -> None:
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(
            source, f"{what} is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels"
        )


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
                _check_pixels(im, source, what, max_pixels)
                return ImageOps.exif_transpose(im), im.format
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(source, f"{what} file not found") from None
    except IsADirectoryError:
        raise InputError(source, f"is a directory, expected an {what} file") from None
    except PermissionError:
        raise InputError(source, f"permission denied reading the {what} file") from None
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


def _image_to_rgb(im: Image.Image, source: str) -> np.ndarray:
    """Convert a decoded Pillow image to a ``uint8`` ``[H, W, 3]`` RGB array.

    16-bit greyscale (``I;16*``) keeps its high byte (0..65535 -> 0..255); 32-bit
    integer ``I`` is clipped to 0..65535 first. Everything else goes through
    ``Image.convert("RGB")`` (which drops alpha), so plain RGB files decode exactly
    like ``Image.open(p).convert("RGB")``.
    """
    mode = im.mode
    if mode in _MODES_16BIT or mode == "I":
        values = np.asarray(im)
        if mode == "I":
            values = np.clip(values, 0, _MAX_LABEL)
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise InputError(
            source, "32-bit float images are not supported; expected 8- or 16-bit integer pixels"
        )
    try:
        if mode in ("P", "PA") and "transparency" in im.info:
            # P + tRNS -> RGB directly makes Pillow warn; going through RGBA is silent
            # and gives the same colours.
            im = im.convert("RGBA")
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise InputError(source, f"cannot convert image mode {mode!r} to RGB: {exc}") from None
    return np.array(rgb, dtype=np.uint8)


def load_image(path: StrPath, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Load an image file as RGB.

    Args:
        path: any format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, ...). The EXIF
            orientation tag is applied. Accepted modes: RGB, RGBA (alpha dropped),
            L / LA, P, 1-bit, 16-bit greyscale (``I;16``, ``I;16B``, ``I``: scaled to
            8 bit by ``>> 8``), and 16-bit RGB where Pillow decodes it (as 8 bit).
        max_pixels: largest width x height accepted, checked from the header before
            decoding (None: Pillow's own decompression-bomb bound only).

    Returns:
        ``uint8`` array ``[H, W, 3]``, RGB order, C-contiguous and writable.

    Raises:
        InputError: the file is missing, unreadable, corrupt, too large or of an
            unsupported mode.
    """
    source = os.fspath(path)
    im, _ = _decode(source, _open_path(path), "image", max_pixels)
    return _image_to_rgb(im, source)


def load_image_bytes(
    data: bytes, source: str = "<bytes>", *, max_pixels: int | None = MAX_PIXELS
) -> np.ndarray:
    """Like :func:`load_image`, from encoded file bytes (PNG, JPEG, ...).

    Returns:
        ``uint8`` array ``[H, W, 3]`` RGB. ``source`` names the data in errors.
    """
    im, _ = _decode(source, _open_bytes(bytes(data)), "image", max_pixels)
    return _image_to_rgb(im, source)


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
    max_labels: int = 255,
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
    max_labels: int = 255,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Like :func:`load_mask`, from encoded file bytes.

    Returns:
        2-D array ``[H, W]``, ``uint8`` or ``uint16``.
    """
    return _load_mask_from(
        source, _open_bytes(bytes(data)), image_size, max_labels, max_pixels
    )


def _as_label_array(values: Any, source: str) -> np.ndarray:
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
    mask = _as_label_array(values, source)
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
    max_labels: int = 255,
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


def mask_labels(mask: np.ndarray) -> list[int]:
    """Sorted distinct non-zero values of an integer ``[H, W]`` label array."""
    values = np.unique(np.asarray(mask))
    return [int(v) for v in values if v != 0]


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: StrPath) -> Iterator[Path]:
    """Write a file all-or-nothing.

    Yields a temporary path in the target's directory (hidden: its name starts with
    ``"."``, and it ends with the target's suffix so writers that pick a format by
    extension still work). Write the file there; when the block ends normally it is
    moved onto ``path`` with :func:`os.replace`, and if the block raises it is deleted
    and ``path`` is left untouched. Parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def label_palette(n: int = 256) -> np.ndarray:
    """Deterministic colours for label values ``0..n-1``.

    Entry 0 (background) is black; entry ``k`` walks the hue circle by the golden
    ratio, alternating saturation and brightness, so neighbouring labels contrast.

    Returns:
        ``uint8`` array ``[n, 3]`` (RGB).
    """
    if n < 1:
        raise InputError("label_palette", f"expected n >= 1, got {n}")
    k = np.arange(n, dtype=np.float64)
    hue = (0.05 + k * _GOLDEN) % 1.0
    sat = np.where(np.arange(n) % 2 == 0, 0.95, 0.7)
    val = np.where((np.arange(n) // 2) % 2 == 0, 1.0, 0.82)
    # vectorised colorsys.hsv_to_rgb
    sector = np.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    idx = sector.astype(np.int64) % 6
    choices = np.stack(
        [
            np.stack([val, t, p], axis=1),
            np.stack([q, val, p], axis=1),
            np.stack([p, val, t], axis=1),
            np.stack([p, q, val], axis=1),
            np.stack([t, p, val], axis=1),
            np.stack([val, p, q], axis=1),
        ]
    )
    rgb = choices[idx, np.arange(n)]
    palette = np.round(rgb * 255.0).astype(np.uint8)
    palette[0] = 0
    return palette


def save_label_png(path: StrPath, labels: np.ndarray) -> None:
    """Write a label map as a PNG whose pixel values are the labels.

    Args:
        path: output file (written as PNG whatever the suffix).
        labels: 2-D ``[H, W]`` non-negative integer (or bool) array; may be all zero.

    Labels <= 255 are written as a palette (``"P"``) PNG coloured by
    :func:`label_palette`, so viewers show distinct colours while reading the pixel
    values back gives the labels. Larger labels (up to 65535) fall back to a 16-bit
    greyscale (``"I;16"``) PNG. :func:`load_mask` reads both back exactly.
    """
    data = label_png_bytes(labels, os.fspath(path))
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def label_png_bytes(labels: np.ndarray, source: str = "<labels>") -> bytes:
    """The PNG file :func:`save_label_png` writes, as bytes (e.g. to send a mask made in
    memory to a server). ``source`` names the array in errors."""
    arr = _as_label_array(labels, source)
    height, width = arr.shape
    if arr.dtype == np.uint8:
        im = Image.frombytes("P", (width, height), np.ascontiguousarray(arr).tobytes())
        im.putpalette(label_palette(256).tobytes(), "RGB")
    else:
        data = np.ascontiguousarray(arr, dtype="<u2").tobytes()
        im = Image.frombytes("I;16", (width, height), data)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _as_uint8_picture(image: Any, source: str, channels: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(source, f"expected a uint8 image, got dtype {arr.dtype}")
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in channels)
    if not shape_ok:
        wanted = " or ".join(f"[H, W, {c}]" for c in channels)
        raise InputError(source, f"expected an image of shape [H, W] or {wanted}, got {arr.shape}")
    return np.ascontiguousarray(arr)


def save_png(path: StrPath, image: np.ndarray) -> None:
    """Write a ``uint8`` image ``[H, W, 3]`` (RGB), ``[H, W, 4]`` (RGBA) or ``[H, W]``
    (grey) as a PNG, atomically."""
    arr = _as_uint8_picture(image, os.fspath(path), (3, 4))
    with atomic_write(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def save_json(path: StrPath, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON (indent 2, trailing newline), atomically.

    NumPy scalars/arrays and paths are converted to plain JSON values.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_csv(path: StrPath, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file (UTF-8, header line first), atomically.

    Raises:
        InputError: a row has a different number of fields than ``header``.
    """
    source = os.fspath(path)
    table = [list(row) for row in rows]
    for number, row in enumerate(table, start=1):
        if len(row) != len(header):
            raise InputError(
                source, f"row {number} has {len(row)} fields, expected {len(header)} (header)"
            )
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(header))
            writer.writerows(table)


def save_npz(path: StrPath, **arrays: Any) -> None:
    """Write arrays with :func:`numpy.savez_compressed`, atomically (no ``.npz`` is
    appended to ``path``)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour the labelled pixels of an image.

    Args:
        image: ``uint8`` ``[H, W, 3]`` RGB (``[H, W]`` grey and ``[H, W, 4]`` RGBA
            are accepted; alpha is dropped).
        labels: integer ``[H, W]`` label map, 0 = background.
        alpha: weight of the label colour in the blend, 0..1.

    Returns:
        ``uint8`` ``[H, W, 3]``: background pixels unchanged, labelled pixels blended
        with ``label_palette()[label]``, and the 1-pixel inner boundary of every
        label region (where a 4-neighbour has another value) in full label colour.
    """
    rgb = _as_uint8_picture(image, "overlay image", (3, 4))
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    rgb = rgb[:, :, :3]
    lab = _as_label_array(labels, "overlay labels")
    if lab.shape != rgb.shape[:2]:
        raise InputError(
            "overlay labels", f"expected shape {rgb.shape[:2]} (the image's), got {lab.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InputError("alpha", f"expected a value in 0..1, got {alpha}")
    out = rgb.copy()
    labelled = lab != 0
    if not labelled.any():
        return out
    palette = label_palette(max(256, int(lab.max()) + 1))
    colours = palette[lab]
    blend = rgb.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
    out[labelled] = np.clip(np.round(blend[labelled]), 0, 255).astype(np.uint8)
    padded = np.pad(lab, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    boundary = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    ) & labelled
    out[boundary] = colours[boundary]
    return out


def save_gif(
    path: StrPath, frames: Sequence[np.ndarray], duration_ms: int = 500, max_side: int = 512
) -> None:
    """Write an animated, looping GIF, atomically.

    Args:
        frames: ``uint8`` images ``[H, W, 3]`` (or ``[H, W]`` / ``[H, W, 4]``); sizes may
            differ. Each is shrunk (never enlarged) so its longer side is at most
            ``max_side``, then centred on a black canvas as large as the largest frame.
        duration_ms: display time per frame.
        max_side: longest side of a frame after resizing.

    Note: GIF encoders merge consecutive identical frames (their durations add up).
    """
    source = os.fspath(path)
    if not frames:
        raise InputError(source, "no frames to write; expected at least one")
    if duration_ms <= 0:
        raise InputError("duration_ms", f"expected a positive duration, got {duration_ms}")
    if max_side < 1:
        raise InputError("max_side", f"expected max_side >= 1, got {max_side}")
    pictures: list[Image.Image] = []
    for number, frame in enumerate(frames):
        arr = _as_uint8_picture(frame, f"{source} frame {number}", (3, 4))
        im = Image.fromarray(arr).convert("RGB")
        width, height = im.size
        scale = min(1.0, max_side / max(width, height, 1))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR)
        pictures.append(im)
    canvas_w = max(p.width for p in pictures)
    canvas_h = max(p.height for p in pictures)
    padded: list[Image.Image] = []
    for picture in pictures:
        canvas = Image.new("RGB", (canvas_w, canvas_h))
        canvas.paste(picture, ((canvas_w - picture.width) // 2, (canvas_h - picture.height) // 2))
        padded.append(canvas)
    with atomic_write(path) as tmp:
        padded[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=padded[1:],
            duration=duration_ms,
            loop=0,
        )


# --------------------------------------------------------------------------- queries

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple[tuple[int | str, ...], str]:
    """Sort key putting ``"img2"`` before ``"img10"``, case-insensitively.

    Digit runs compare as numbers, text case-folded; exact ties (``"a01"`` vs
    ``"a1"``, ``"A"`` vs ``"a"``) are broken by the raw string so the order is total.
    """
    parts = _DIGITS.split(name)
    # re.split with a capture group alternates text (even) / digits (odd), so parts
    # at the same position always have the same type.
    key = tuple(int(part) if i % 2 else part.casefold() for i, part in enumerate(parts))
    return key, name


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _sorted_naturally(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (natural_key(p.name), natural_key(str(p))))


def _read_list_file(list_path: Path, source: str) -> list[Path]:
    if not list_path.is_file():
        raise InputError(source, f"list file not found: {list_path}")
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(source, f"cannot read list file: {exc}") from None
    base = list_path.parent
    found: list[Path] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        if not entry.is_absolute():
            entry = base / entry
        if not entry.is_file():
            raise InputError(
                list_path, f"line {number}: {line!r} is not an existing file ({entry})"
            )
        found.append(entry)
    return found


def collect_queries(spec: StrPath, exclude: Iterable[StrPath] = ()) -> list[Path]:
    """Resolve a query specification to a list of image files.

    Args:
        spec: one of

            * a directory: its image files (extensions in :data:`IMAGE_EXTENSIONS`,
              any case), not recursive, hidden files skipped;
            * a glob pattern such as ``"imgs/*.jpg"`` (image extensions only);
            * a list file, ``"@list.txt"`` or any ``*.txt`` file: one path per line,
              relative to the list file's folder, blank and ``#`` lines ignored;
            * a single image file.

            Directories and globs come back in :func:`natural_key` order of the file
            names; list files keep their order.
        exclude: files to drop (compared by resolved path), e.g. the support image.

    Returns:
        The query image paths.

    Raises:
        InputError: ``spec`` names nothing usable, or nothing is left after exclusion.
    """
    text = os.fspath(spec)
    path = Path(text)
    if text.startswith("@"):
        found = _read_list_file(Path(text[1:]).expanduser(), text)
    elif path.is_dir():
        found = _sorted_naturally(
            p
            for p in path.iterdir()
            if not p.name.startswith(".") and p.is_file() and _is_image_name(p)
        )
    elif path.is_file():
        if path.suffix.lower() == ".txt":
            found = _read_list_file(path, text)
        elif _is_image_name(path):
            found = [path]
        else:
            raise InputError(
                text,
                "expected a directory, a glob pattern, a .txt list file or an image file "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))})",
            )
    elif any(ch in text for ch in "*?["):
        found = _sorted_naturally(
            p
            for p in map(Path, glob.glob(text, recursive=True))
            if p.is_file() and _is_image_name(p)
        )
    else:
        raise InputError(text, "no such file or directory")

    excluded = {Path(p).resolve() for p in exclude}
    queries = [p for p in found if p.resolve() not in excluded]
    if not queries:
        extra = f" ({len(found)} excluded)" if found else ""
        raise InputError(
            text,
            f"no query images found{extra}; expected image files with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}",
        )
    return queries


# --------------------------------------------------------------------------- RLE


def mask_to_rle(binary: np.ndarray) -> dict[str, list[int]]:
    """Encode a binary mask as COCO-style uncompressed RLE.

    Args:
        binary: ``[H, W]`` bool array (or integer array of 0/1).

    Returns:
        ``{"size": [H, W], "counts": [...]}``: run lengths over the pixels in
        column-major (Fortran) order, alternating 0-runs and 1-runs and starting with
        a 0-run (which is 0 when the first pixel is set).
    """
    arr = np.asarray(binary)
    if arr.ndim != 2:
        raise InputError("mask_to_rle", f"expected a 2-D [H, W] mask, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise InputError("mask_to_rle", "expected a binary mask (bool or 0/1 values)")
        arr = arr != 0
    height, width = arr.shape
    flat = arr.ravel(order="F")
    counts: list[int] = []
    if flat.size:
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate(([0], changes, [flat.size]))
        counts = [int(c) for c in np.diff(bounds)]
        if flat[0]:
            counts.insert(0, 0)
    return {"size": [int(height), int(width)], "counts": counts}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode :func:`mask_to_rle` output (COCO uncompressed RLE).

    Returns:
        ``bool`` array ``[H, W]`` (C-contiguous).

    Raises:
        InputError: malformed RLE, compressed (string) counts, or counts that do not
            add up to ``H * W``.
    """
    source = "rle"
    try:
        size = rle["size"]
        counts = rle["counts"]
    except (KeyError, TypeError):
        raise InputError(source, "expected a mapping with 'size' and 'counts'") from None
    if isinstance(counts, (str, bytes)):
        raise InputError(
            source, "compressed RLE (string counts) is not supported; expected a list of ints"
        )
    try:
        height, width = (int(v) for v in size)
        runs = np.asarray([int(c) for c in counts], dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(
            source, f"expected size [H, W] and integer counts, got size {size!r}"
        ) from None
    if height < 0 or width < 0 or (runs < 0).any():
        raise InputError(source, "size and counts must be non-negative")
    if int(runs.sum()) != height * width:
        raise InputError(
            source, f"counts add up to {int(runs.sum())}, expected H*W = {height * width}"
        )
    values = np.arange(runs.size) % 2 == 1
    flat = np.repeat(values, runs)
    return np.ascontiguousarray(flat.reshape((height, width), order="F"))
