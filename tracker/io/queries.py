"""Turning a query specification (folder, glob, list file, single image) into files, and
the files (pages of a stack included) into 8-bit RGB queries (:class:`QueryReader`)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from natsort import natsort_keygen, ns

from sst.tracker.errors import InputError
from sst.tracker.io.headers import MAX_PAGES
from sst.tracker.io.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    StrPath,
    check_pages,
    page_count,
    read_pixels,
)
from sst.tracker.io.intensity import Normaliser

_NATURAL = natsort_keygen(alg=ns.IGNORECASE)


def natural_key(name: str) -> tuple[Any, str]:
    """Sort key putting ``"img2"`` before ``"img10"``, case-insensitively (natsort's),
    with exact ties (``"a01"`` vs ``"a1"``, ``"A"`` vs ``"a"``) broken by the raw string
    so that the order is total."""
    return _NATURAL(name), name


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


def parse_pages(text: str | None, field: str = "--pages") -> list[int] | None:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]`` (pages count from 0, in the order given,
    repeats dropped); None or ``"all"`` -> None (every page)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    pages: list[int] = []
    for part in text.split(","):
        item = part.strip()
        try:
            if "-" in item:
                first, last = (int(v) for v in item.split("-"))
                chosen = list(range(first, last + 1))
                if not chosen:
                    raise ValueError(item)
            else:
                chosen = [int(item)]
        except ValueError:
            raise InputError(field, f"expected page numbers from 0 such as '0,2,5-7' or "
                                    f"'all', got {text!r}") from None
        if any(p < 0 for p in chosen):
            raise InputError(field, f"page numbers count from 0, got {text!r}")
        pages += [p for p in chosen if p not in pages]
    return pages


def page_name(path: Path, page: int) -> Path:
    """The query name of one page of a stack: ``<stem>_p<N>`` with the file's suffix, in
    the stack's folder (``run/stack.ome.tif`` page 3 -> ``run/stack_p3.tif``). It names
    no file: :class:`QueryReader` maps it back to its stack and page."""
    name = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return path.with_name(f"{name[: -len(ext)]}_p{page}{ext[4:]}")
    return path.with_name(f"{path.stem}_p{page}{path.suffix}")


class QueryReader:
    """Reads a run's queries as 8-bit RGB through one session-wide
    :class:`~sst.tracker.io.intensity.Normaliser`, a multi-page TIFF as one query per page
    (at most ``max_pages`` of one file, counted from its header before anything is read).

    :meth:`expand` turns files into query paths (a stack's pages under their
    :func:`page_name`); calling the reader on a query path gives its ``uint8 [H, W, 3]``
    pixels; :meth:`payload` is what a server is sent for it: the file itself when it is
    an 8-bit file read as it is, else the normalised pixels (encoded as PNG by the client).
    """

    def __init__(self, intensity: Normaliser | None = None, pages: list[int] | None = None,
                 max_pixels: int | None = MAX_PIXELS, max_pages: int = MAX_PAGES) -> None:
        if max_pages < 1:
            raise InputError("--max-pages", f"expected a number of pages >= 1, got {max_pages}")
        self.intensity = intensity if intensity is not None else Normaliser("auto")
        self.pages = pages
        self.max_pixels = max_pixels
        self.max_pages = max_pages
        self._page_of: dict[Path, tuple[Path, int]] = {}
        self._as_file: set[Path] = set()

    def expand(self, paths: Iterable[Path]) -> list[Path]:
        """Query paths: each single-page file as it is, each page of a stack (every page,
        or the ``pages`` chosen, which may name pages a stack lacks: reading them reports
        it) under its page name. A stack of more than ``max_pages`` pages (all of them
        queries) is refused, naming ``--max-pages`` and ``--pages``."""
        out: list[Path] = []
        for path in paths:
            count = page_count(path, bound=self.max_pages)
            if count <= 1:
                out.append(path)
                continue
            check_pages(path, count, self.max_pages,
                        None if self.pages is None else len(self.pages))
            for page in self.pages if self.pages is not None else range(count):
                name = page_name(path, page)
                self._page_of[name] = (path, page)
                out.append(name)
        return out

    def source(self, query: Path) -> tuple[Path, int]:
        """``(file, page)`` a query path reads from."""
        return self._page_of.get(query, (query, 0))

    def __call__(self, query: Path) -> np.ndarray:
        path, page = self.source(query)
        where = f"{path} page {page}" if query in self._page_of else os.fspath(path)
        raw = read_pixels(path, page=page, max_pixels=self.max_pixels)
        rgb = self.intensity(raw, where)
        if query not in self._page_of and self.intensity.passes_through(raw):
            self._as_file.add(query)
        return rgb

    def payload(self, query: Path, rgb: np.ndarray) -> bytes | np.ndarray:
        """What to send a server for ``query`` once read: its file's bytes when the
        pixels are the file's own, else ``rgb``."""
        return query.read_bytes() if query in self._as_file else rgb
