"""Files in and out: images and masks to arrays (:mod:`.images`), what a file's header
declares before any pixel is decoded (:mod:`.headers`), deep camera pixels to 8 bit
(:mod:`.intensity`), result files (:mod:`.files`), colours and overlays
(:mod:`.visualise`), query lists and stacks' pages (:mod:`.queries`); COCO, YOLO,
OME-Zarr, the per-run output bundle and the review page in :mod:`.coco`, :mod:`.yolo`,
:mod:`.omezarr`, :mod:`.outputs`, :mod:`.review_page`.

May import: :mod:`sst.tracker.errors`, :mod:`sst.tracker.defaults`, :mod:`sst.export`
and the core :mod:`sst.tracker` modules, never :mod:`sst.tracker.serving`, the apps, the
client or the server (``tests/test_layout.py`` holds the layers)."""

from sst.tracker.io.files import (
    atomic_write,
    label_png_bytes,
    save_csv,
    save_gif,
    save_json,
    save_label_png,
    save_npz,
    save_png,
)
from sst.tracker.io.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    StrPath,
    as_label_array,
    check_single_page,
    load_image,
    load_image_bytes,
    load_mask,
    load_mask_bytes,
    mask_labels,
    page_count,
    read_pixels,
    read_pixels_bytes,
    validate_mask,
)
from sst.tracker.io.intensity import Intensity, Normaliser
from sst.tracker.io.queries import collect_queries, natural_key
from sst.tracker.io.visualise import label_palette, overlay

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_PIXELS", "StrPath", "as_label_array", "atomic_write",
    "collect_queries", "label_palette", "label_png_bytes", "load_image", "load_image_bytes",
    "load_mask", "load_mask_bytes", "mask_labels", "natural_key", "overlay", "save_csv",
    "save_gif", "save_json", "save_label_png", "save_npz", "save_png", "validate_mask",
    "Intensity", "Normaliser", "page_count", "read_pixels", "read_pixels_bytes",
    "check_single_page",
]
