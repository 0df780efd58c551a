"""What one server request may carry, checked before the work it would cost.

Every default of the service is written once, in :class:`ServiceConfig`: the launcher,
the run folder, the orchestrator's ``config.pbtxt`` and the orchestrator itself read it.

A request is checked in order of cost: the number of images and their encoded bytes,
then every image's header (:func:`header_size`, no pixel decoded): its width and height
against the per-image cap, what it declares it decodes to (width x height x samples x
bytes per sample x depth, :class:`~sst.tracker.io.headers.ImageHeader`) against
:attr:`ServiceConfig.max_image_bytes`, and a file of several pages is refused (the
server reads one image per entry: clients send each page as its own query, as ``sst
segment`` does). Summed, the decoded pixels against ``max_request_pixels``, the decoded
bytes against :attr:`ServiceConfig.max_request_decoded_bytes`, the answer's mask bytes
(one per query pixel) against ``max_answer_bytes`` and, once the labels are known (the
session's, or the support masks' on START, decoded before the queries), the mask making
(query pixels x labels, :func:`check_mask_work`) against ``max_label_pixels``; only then
are the queries decoded. The answer bound is what bounds the server's memory after a
request: Triton's Python backend keeps its shared memory at the largest answer it ever
sent. The client library splits larger calls into requests that fit.

Pixels deeper than 8 bits are read in their own type (:func:`read_images`) and mapped to
8-bit RGB by the session's :class:`~sst.tracker.io.intensity.Normaliser`
(:func:`normalise_images`): one mapping per session, fitted on its support.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sst.tracker import io as sio
from sst.tracker.defaults import IDLE_SECONDS, MAX_LABELS
from sst.tracker.errors import BudgetError, InputError, Reason
from sst.tracker.io.headers import (
    MAX_BYTES_PER_PIXEL,
    MAX_PAGES,
    RGB_BYTES,
    ImageHeader,
    check_header,
    read_header,
)
from sst.tracker.io.intensity import Normaliser, as_channels

__all__ = ["ServiceConfig", "header_size", "check_request", "RequestSize",
           "measure_request", "check_mask_work", "read_images", "normalise_images",
           "decode_images", "decode_masks", "check_raw_image", "response_bytes"]


@dataclass(frozen=True)
class ServiceConfig:
    """The service's limits and defaults (one place): sessions held at once, their idle
    expiry, per-image and per-request caps, labels per support."""

    max_sessions: int = 64
    idle_seconds: float = IDLE_SECONDS
    max_image_pixels: int = 50_000_000
    max_images_per_request: int = 256
    max_labels: int = MAX_LABELS
    max_request_bytes: int = 64 * 2**20
    #: Decoded pixels (width x height, summed over every image and mask) per request.
    max_request_pixels: int = 400_000_000
    #: Bytes of masks one answer may carry (one byte per query pixel). It bounds what
    #: the server holds and sends per request: Triton's Python backend keeps its shared
    #: memory at the largest answer it ever sent. The client library splits larger
    #: requests to fit. At least ``max_image_pixels`` (one query always fits).
    max_answer_bytes: int = 64 * 2**20
    #: Query pixels x labels one request's masks may cost: mask making upsamples every
    #: label's logits to each query's full size (one label at a time: its memory does
    #: not grow with the labels, its time does). ``max_answer_bytes x max_labels``, so
    #: that what fits one answer (as the client library splits calls) fits this too.
    max_label_pixels: int = 64 * 2**20 * 64

    @property
    def max_image_bytes(self) -> int:
        """Bytes one image may decode to, as its header declares them:
        ``max_image_pixels`` pixels of the deepest kind read in full
        (:data:`~sst.tracker.io.headers.MAX_BYTES_PER_PIXEL`: 16-bit RGBA, float64 grey)."""
        return self.max_image_pixels * MAX_BYTES_PER_PIXEL

    @property
    def max_request_decoded_bytes(self) -> int:
        """Bytes a request's images may decode to, summed: the pixel budget's worth of
        8-bit RGB (each image counts the larger of its pixels as stored and the RGB they
        become, so that 8-bit images meet the pixel budget first)."""
        return self.max_request_pixels * RGB_BYTES



def header_size(blob: bytes, field: str) -> ImageHeader:
    """``(width, height)`` of an encoded image read from its header alone, carrying what
    else the header declares (samples, bytes per sample, depth, pages: an
    :class:`~sst.tracker.io.headers.ImageHeader`)."""
    return read_header(blob, field, page_bound=MAX_PAGES)


@dataclass(frozen=True)
class RequestSize:
    """What a checked request will decode: ``pixels`` and ``decoded_bytes`` over every
    image, ``answer_pixels`` of the queries (and the raw image)."""

    pixels: int
    decoded_bytes: int
    answer_pixels: int


def check_request(blobs: dict[str, Sequence[bytes]], raw: np.ndarray | None,
                  config: ServiceConfig, queries: str | None = None, labels: int = 0) -> int:
    """Check one request's encoded images (field name -> blobs) and raw image before any
    decoding (:func:`measure_request`); returns the request's decoded pixels. Raises
    :class:`BudgetError` naming the limit, :class:`InputError` naming what no reader
    takes."""
    return measure_request(blobs, raw, config, queries, labels).pixels


def measure_request(blobs: dict[str, Sequence[bytes]], raw: np.ndarray | None,
                    config: ServiceConfig, queries: str | None = None, labels: int = 0
                    ) -> RequestSize:
    """Check one request's encoded images (field name -> blobs) and raw image before any
    decoding: their number, their total bytes, every image's header (pixels against
    ``max_image_pixels``, a volume or more than 4 samples refused, decoded bytes against
    :attr:`~ServiceConfig.max_image_bytes`, more than one page refused) and, summed,
    pixels against ``max_request_pixels`` and decoded bytes against
    :attr:`~ServiceConfig.max_request_decoded_bytes`; with ``queries`` (the field of the
    query images), the answer's mask bytes (those queries' pixels and the raw image's)
    against ``max_answer_bytes`` and, with ``labels`` (K, when known), the mask making
    (:func:`check_mask_work`)."""
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
    decoded = pixels * RGB_BYTES
    answer = pixels
    for name, v in blobs.items():
        for i, blob in enumerate(v):
            where = f"{name}[{i}]"
            header = header_size(bytes(blob), where)
            w, h = header
            if w * h > config.max_image_pixels:
                raise BudgetError(where, f"image is {w}x{h} = {w * h:,} pixels; the "
                                  f"limit is {config.max_image_pixels:,} pixels per image",
                                  Reason.PIXEL_BUDGET)
            check_header(header, where, max_bytes=config.max_image_bytes)
            if header.pages > 1:
                count_text = (f"more than {MAX_PAGES}" if header.pages > MAX_PAGES
                              else str(header.pages))
                raise InputError(where, f"a file of {count_text} pages; the server reads "
                                 f"one image per entry: send each page as its own entry "
                                 f"(sst segment splits stacks into pages, --pages chooses "
                                 f"them)")
            pixels += w * h
            decoded += header.decoded_bytes
            answer += w * h if name == queries else 0
    if pixels > config.max_request_pixels:
        raise BudgetError(source, f"{count} images of {pixels / 1e6:,.0f} MP decoded in "
                          f"all; the budget is {config.max_request_pixels / 1e6:,.0f} MP "
                          f"per request (sst serve --max-request-mp): send fewer or smaller "
                          f"images per request", Reason.PIXEL_BUDGET)
    if decoded > config.max_request_decoded_bytes:
        raise BudgetError(source, f"{count} images whose headers declare "
                          f"{decoded / 2**20:,.0f} MiB of decoded pixels in all; the budget "
                          f"is {config.max_request_decoded_bytes / 2**20:,.0f} MiB per "
                          f"request (3 bytes per pixel of sst serve --max-request-mp): send "
                          f"fewer, smaller or shallower images per request",
                          Reason.PIXEL_BUDGET)
    if queries is not None and answer > config.max_answer_bytes:
        raise BudgetError(queries, f"the answer would carry {answer / 2**20:,.1f} MiB of masks "
                          f"(one byte per query pixel); the limit is "
                          f"{config.max_answer_bytes / 2**20:,.0f} MiB per answer: send fewer "
                          f"queries per request (the client library splits them)",
                          Reason.PIXEL_BUDGET)
    if queries is not None and labels:
        check_mask_work(answer, labels, config, queries)
    return RequestSize(pixels, decoded, answer)


def check_mask_work(query_pixels: int, labels: int, config: ServiceConfig,
                    field: str) -> None:
    """Mask making costs query pixels x labels (every label's logits upsampled to every
    query's size): refuse a request over ``max_label_pixels``, naming ``field``."""
    work = query_pixels * labels
    if work > config.max_label_pixels:
        raise BudgetError(field, f"masks of {query_pixels / 1e6:,.1f} MP of queries x "
                          f"{labels} labels = {work / 1e9:,.2f} G label-pixels; the limit is "
                          f"{config.max_label_pixels / 1e9:,.2f} G per request: send fewer "
                          f"or smaller queries per request, or fewer labels",
                          Reason.PIXEL_BUDGET)


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
