"""Writing result files, each all-or-nothing through :func:`atomic_write`, so a crash
never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sst.tracker.errors import InputError
from sst.tracker.io.images import StrPath, as_label_array, as_uint8_picture
from sst.tracker.io.visualise import label_palette


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
    arr = as_label_array(labels, source)
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


def save_png(path: StrPath, image: np.ndarray) -> None:
    """Write a ``uint8`` image ``[H, W, 3]`` (RGB), ``[H, W, 4]`` (RGBA) or ``[H, W]``
    (grey) as a PNG, atomically."""
    arr = as_uint8_picture(image, os.fspath(path), (3, 4))
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
        arr = as_uint8_picture(frame, f"{source} frame {number}", (3, 4))
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
