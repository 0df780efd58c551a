"""What one server request may carry, checked before the work it would cost.

Every default of the service is written once, in :class:`ServiceConfig`: the launcher,
the run folder, the orchestrator's ``config.pbtxt`` and the orchestrator itself read it.

A request is checked in order of cost: the number of images and their encoded bytes,
then every image's width and height from its header (:func:`header_size`, no pixel
decoded) against the per-image cap and the request's decoded-pixel budget
(``max_request_pixels``) and, summed over the queries, the answer's mask bytes (one
per query pixel) against ``max_answer_bytes``; only then is anything decoded. The
answer bound is what bounds the server's memory after a request: Triton's Python
backend keeps its shared memory at the largest answer it ever sent. The client library
splits larger calls into requests that fit.

Pixels deeper than 8 bits are read in their own type (:func:`read_images`) and mapped to
8-bit RGB by the session's :class:`~sst.tracker.io.intensity.Normaliser`
(:func:`normalise_images`): one mapping per session, fitted on its support.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from sst.tracker import io as sio
from sst.tracker.errors import BudgetError, InputError, Reason
from sst.tracker.io.intensity import Normaliser, as_channels

__all__ = ["ServiceConfig", "ServiceLimits", "header_size", "check_request",
           "read_images", "normalise_images", "decode_images", "decode_masks",
           "check_raw_image", "response_bytes"]


@dataclass(frozen=True)
class ServiceConfig:
    """The service's limits and defaults (one place): sessions held at once, their idle
    expiry, per-image and per-request caps, labels per support."""

    max_sessions: int = 64
    idle_seconds: float = 600.0
    max_image_pixels: int = 50_000_000
    max_images_per_request: int = 256
    max_labels: int = 64
    max_request_bytes: int = 64 * 2**20
    #: Decoded pixels (width x height, summed over every image and mask) per request.
    max_request_pixels: int = 400_000_000
    #: Bytes of masks one answer may carry (one byte per query pixel). It bounds what
    #: the server holds and sends per request: Triton's Python backend keeps its shared
    #: memory at the largest answer it ever sent. The client library splits larger
    #: requests to fit. At least ``max_image_pixels`` (one query always fits).
    max_answer_bytes: int = 64 * 2**20


#: The name the session manager and the tests have always used.
ServiceLimits = ServiceConfig


def header_size(blob: bytes, field: str) -> tuple[int, int]:
    """``(width, height)`` of an encoded image read from its header alone."""
    try:
        with warnings.catch_warnings():  # a size over Pillow's own bomb limit is ours to judge
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise BudgetError(field, f"image too large to open ({exc})", Reason.PIXEL_BUDGET
                          ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    if blob[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):  # a TIFF Pillow cannot open
        try:
            with tifffile.TiffFile(io.BytesIO(blob)) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 (any failure: unreadable, named below)
            pass
    raise InputError(field, "cannot read image: not a recognised image format, or the file "
                     "is corrupt")


def check_request(blobs: dict[str, Sequence[bytes]], raw: np.ndarray | None,
                  config: ServiceConfig, queries: str | None = None) -> int:
    """Check one request's encoded images (field name -> blobs) and raw image before any
    decoding: their number, their total bytes, and every image's pixels from its header
    against ``max_image_pixels`` and, summed, ``max_request_pixels``; with ``queries``
    (the field of the query images), the answer's mask bytes (those queries' pixels and
    the raw image's) against ``max_answer_bytes``. Returns the request's decoded pixels.
    Raises :class:`BudgetError` naming the limit."""
    count = sum(len(v) for v in blobs.values())
    for name, v in blobs.items():
        if len(v) > config.max_images_per_request:
            raise BudgetError(name, f"{len(v)} images in one request; the limit is "
                              f"{config.max_images_per_request}")
    total = sum(len(b) for v in blobs.values() for b in v) + (
        0 if raw is None else int(raw.nbytes))
    source = next(iter(blobs)) if len(blobs) == 1 and raw is None else "request"
    _check_bytes(count, total, source, config)
    pixels = 0 if raw is None else int(np.prod(raw.shape[-3:-1]))
    answer = pixels
    for name, v in blobs.items():
        for i, blob in enumerate(v):
            w, h = header_size(bytes(blob), f"{name}[{i}]")
            if w * h > config.max_image_pixels:
                raise BudgetError(f"{name}[{i}]", f"image is {w}x{h} = {w * h:,} pixels; the "
                                  f"limit is {config.max_image_pixels:,} pixels per image",
                                  Reason.PIXEL_BUDGET)
            pixels += w * h
            answer += w * h if name == queries else 0
    if pixels > config.max_request_pixels:
        raise BudgetError(source, f"{count} images of {pixels / 1e6:,.0f} MP decoded in "
                          f"all; the budget is {config.max_request_pixels / 1e6:,.0f} MP "
                          f"per request (sst serve --max-request-mp): send fewer or smaller "
                          f"images per request", Reason.PIXEL_BUDGET)
    if queries is not None and answer > config.max_answer_bytes:
        raise BudgetError(queries, f"the answer would carry {answer / 2**20:,.1f} MiB of masks "
                          f"(one byte per query pixel); the limit is "
                          f"{config.max_answer_bytes / 2**20:,.0f} MiB per answer: send fewer "
                          f"queries per request (the client library splits them)",
                          Reason.PIXEL_BUDGET)
    return pixels


def response_bytes(query_sizes: Sequence[tuple[int, int]], num_labels: int) -> int:
    """Bytes of the answer to queries of ``(H, W)`` with ``num_labels`` labels."""
    return sum(h * w + 8 for h, w in query_sizes) + 24 * len(query_sizes) * num_labels


def _check_bytes(count: int, total: int, source: str, config: ServiceConfig) -> None:
    """``count`` encoded images of ``total`` bytes against ``max_request_bytes``."""
    if total > config.max_request_bytes:
        raise BudgetError(source, f"{count} encoded images of {total / 2**20:.1f} MiB in all; "
                          f"the limit is {config.max_request_bytes / 2**20:.1f} MiB per "
                          f"request: send fewer or smaller images per request")


def read_images(blobs: Sequence[bytes], field: str, config: ServiceConfig, *,
                checked: bool = False) -> list[np.ndarray]:
    """Decode encoded images to their pixels as stored: 8-bit ones as ``uint8 [H,W,3]``
    RGB, deeper ones (16-bit, float) in their own type as ``[H,W,1|3]``, for a session's
    :class:`~sst.tracker.io.intensity.Normaliser` (:func:`normalise_images`). Their number,
    bytes and header pixels are checked first (:func:`check_request`) unless ``checked``
    says the caller has already checked this request (each header is then read once)."""
    if not checked:
        check_request({field: blobs}, None, config)
    eight = Normaliser("auto")  # 8-bit pixels only: passed through as RGB
    out = []
    for i, blob in enumerate(blobs):
        source = f"{field}[{i}]"
        img = as_channels(sio.read_pixels_bytes(bytes(blob), source,
                                                max_pixels=config.max_image_pixels), source)
        if img.dtype == np.uint8:
            img = eight(img, source)
        out.append(_check_size(img, source, config))
    return out


def normalise_images(images: Sequence[np.ndarray], field: str, normaliser: Normaliser
                     ) -> list[np.ndarray]:
    """Images of :func:`read_images` as ``uint8 [H,W,3]`` RGB through ``normaliser`` (8-bit
    ones pass through unchanged unless it maps a ``range``); errors name ``field[i]``."""
    return [normaliser(img, f"{field}[{i}]") for i, img in enumerate(images)]


def decode_images(blobs: Sequence[bytes], field: str, config: ServiceConfig, *,
                  checked: bool = False, normaliser: Normaliser | None = None
                  ) -> list[np.ndarray]:
    """Decode encoded images to ``uint8 [H,W,3]`` RGB: :func:`read_images` (checked before
    any decoding unless ``checked``), then deeper pixels through ``normaliser`` (default:
    one ``auto`` mapping fitted on the first deep image of ``blobs``)."""
    return normalise_images(read_images(blobs, field, config, checked=checked), field,
                            normaliser if normaliser is not None else Normaliser("auto"))


def check_raw_image(img: np.ndarray, field: str, config: ServiceConfig) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(field, f"expected a uint8 [H,W,3] image, got {img.dtype} {img.shape}")
    return _check_size(img, field, config)


def _check_size(img: np.ndarray, field: str, config: ServiceConfig) -> np.ndarray:
    if img.shape[0] * img.shape[1] > config.max_image_pixels:
        raise BudgetError(field, f"image is {img.shape[1]}x{img.shape[0]} pixels; the limit "
                          f"is {config.max_image_pixels} pixels", Reason.PIXEL_BUDGET)
    if min(img.shape[:2]) < 8:
        raise InputError(field, f"image is {img.shape[1]}x{img.shape[0]}; at least 8x8 needed")
    return img


def decode_masks(blobs: Sequence[bytes], images: Sequence[np.ndarray], field: str,
                 config: ServiceConfig) -> list[np.ndarray]:
    if len(blobs) != len(images):
        raise InputError(field, f"{len(blobs)} masks for {len(images)} support images; "
                         f"give one mask per support")
    _check_bytes(len(blobs), sum(len(b) for b in blobs), field, config)
    masks = []
    for i, (blob, img) in enumerate(zip(blobs, images)):
        mask = sio.load_mask_bytes(bytes(blob), source=f"{field}[{i}]",
                                   image_size=(img.shape[1], img.shape[0]),
                                   max_labels=config.max_labels,
                                   max_pixels=config.max_image_pixels)
        if mask.max() > 255:
            raise InputError(f"{field}[{i}]", f"label {int(mask.max())} does not fit the uint8 "
                             f"wire format (labels must be 1..255)")
        masks.append(mask)
    return masks
