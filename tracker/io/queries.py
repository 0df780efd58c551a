"""Turning a query specification (folder, glob, list file, single image) into files."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from natsort import natsort_keygen, ns

from sst.tracker.errors import InputError
from sst.tracker.io.images import IMAGE_EXTENSIONS, StrPath

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
