"""Output-folder checks, clean write errors and the overlay legend.

* :func:`check_output_dir` creates the folder and writes, syncs and removes a probe file,
  so an unwritable, read-only or full folder is reported once, before any work starts.
* :func:`folders_to_create` and :func:`remove_if_empty`: a run that fails before writing
  anything takes back the output folder it created.
* :func:`write_errors` turns an ``OSError`` raised while writing outputs into one
  :class:`~sst.tracker.errors.InputError` naming the file and the reason.
* :func:`add_legend` puts a colour key of named labels under an overlay.
* :func:`mark_random_weights` puts a red band that reads "RANDOM WEIGHTS - MEANINGLESS"
  across the top of an overlay of an untrained model.
* :func:`review_rows` makes ``review.csv``: queries by their lowest label quality.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sst.tracker import io as sio
from sst.tracker.errors import InputError

__all__ = ["REVIEW_HEADER", "RANDOM_WEIGHTS_MARK", "add_legend", "check_output_dir",
           "folders_to_create", "mark_random_weights", "remove_if_empty", "review_rows",
           "write_errors"]

#: Bytes the probe file writes: enough to hit a full disk, small enough to be instant.
PROBE_BYTES = 64 * 1024


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way (expected a folder)"
    return exc.strerror or str(exc)


def check_output_dir(out: str | os.PathLike[str], what: str = "--out") -> Path:
    """Create ``out`` (and parents) and write + remove a probe file in it.

    Raises:
        InputError: ``"<what> <out>: cannot write there: <reason>"`` (permission denied,
            read-only file system, no space left, a file in the way, ...).
    """
    path = Path(out)
    probe = path / f".sst-write-probe-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise InputError(f"{what} {path}", f"cannot write there: {_reason(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


def folders_to_create(out: str | os.PathLike[str]) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first: what
    :func:`check_output_dir` creates (empty when ``out`` exists already)."""
    missing = []
    path = Path(out).absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (deepest first, as :func:`folders_to_create` lists them) while
    they are empty; a folder that holds anything stays, and so do the ones above it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def write_errors(out: str | os.PathLike[str]) -> Iterator[None]:
    """Inside the block, an ``OSError`` (disk full, folder removed, permissions changed)
    becomes ``InputError("<file>", "cannot write output: <reason>")``."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename else os.fspath(out)
        raise InputError(os.fspath(where), f"cannot write output: {_reason(exc)}") from None


def add_legend(image: np.ndarray, names: Mapping[int, str], row_height: int = 16
               ) -> np.ndarray:
    """``image [H,W,3]`` uint8 with a legend strip below it: one swatch in
    :func:`sio.label_palette` colour and the name per label, wrapped to the width.

    Returns:
        ``uint8 [H + rows * row_height + 4, W, 3]``.
    """
    h, w = image.shape[:2]
    font = ImageFont.load_default()
    palette = sio.label_palette(max(256, max(names, default=0) + 1))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = []
    for lab in sorted(names):
        text = f"{lab} {names[lab]}"
        x0, _, x1, _ = probe.textbbox((0, 0), text, font=font)
        items.append((lab, text, row_height + 14 + int(x1 - x0)))
    places, x, row = [], 4, 0
    for lab, text, width in items:
        if x > 4 and x + width > w:
            x, row = 4, row + 1
        places.append((lab, text, x, row))
        x += width
    rows = row + 1 if items else 0
    canvas = Image.new("RGB", (w, h + rows * row_height + (4 if rows else 0)), (32, 32, 32))
    canvas.paste(Image.fromarray(np.ascontiguousarray(image[:, :, :3])), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for lab, text, x, row in places:
        y = h + 2 + row * row_height
        colour = tuple(int(c) for c in palette[lab])
        draw.rectangle((x, y + 2, x + row_height - 4, y + row_height - 2), fill=colour)
        draw.text((x + row_height, y + 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


#: What the band over an overlay of an untrained model reads (shortened to what fits).
RANDOM_WEIGHTS_MARK = "RANDOM WEIGHTS - MEANINGLESS"
#: The band's colour (RGB).
MARK_COLOUR = (200, 0, 0)
_MARK_TEXTS = (RANDOM_WEIGHTS_MARK, "RANDOM WEIGHTS", "RANDOM")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the one bitmap size
        return ImageFont.load_default()


def mark_random_weights(image: np.ndarray) -> np.ndarray:
    """``image [H,W,3]`` uint8 with a red band across its top that reads
    :data:`RANDOM_WEIGHTS_MARK` (shortened where the picture is too narrow), so that an
    overlay of an untrained model never passes for a result. The band's text grows with
    the width; the picture keeps its size (the band covers its top rows).

    Returns:
        ``uint8 [H, W, 3]``.
    """
    h, w = image.shape[:2]
    font = _font(max(10, min(48, w // 24)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for text in _MARK_TEXTS:
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
        if x1 - x0 <= w - 4:
            break
    canvas = Image.fromarray(np.ascontiguousarray(image[:, :, :3]))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, w - 1, min(h, int(y1 - y0) + 8) - 1), fill=MARK_COLOUR)
    draw.text((max(2, (w - int(x1 - x0)) // 2) - int(x0), 4 - int(y0)), text,
              fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


REVIEW_HEADER = ["rank", "query", "quality_min", "worst_label", "flagged"]


def review_rows(quality: Mapping[str, Mapping[int, float]], names: Mapping[int, str],
                flag_below: float) -> tuple[list[str], list[list[Any]]]:
    """``review.csv`` header and rows: queries by their lowest label quality, worst first
    (ties in natural order of the names); ``flagged`` when that is below ``flag_below``;
    then one ``quality_<name>`` column per label."""
    labels = sorted(names)
    header = REVIEW_HEADER + [f"quality_{names[lab]}" for lab in labels]

    def worst(q: Mapping[int, float]) -> tuple[float, int]:
        lab = min(labels, key=lambda v: (q.get(v, 0.0), v))
        return q.get(lab, 0.0), lab

    order = sorted(quality, key=lambda name: (worst(quality[name])[0],
                                              sio.natural_key(name)))
    rows = []
    for rank, name in enumerate(order, start=1):
        q = quality[name]
        low, lab = worst(q)
        rows.append([rank, name, f"{low:.4f}", names[lab], "yes" if low < flag_below else "no"]
                    + [f"{q.get(v, 0.0):.4f}" for v in labels])
    return header, rows
