"""The specimens ``sst demo`` segments, and how they were made.

``client/demo_specimens/`` holds eight real part masks of ground beetles of one species
(the set's ``dubius`` folder) from the NEON beetle part-mask set (Imageomics Institute,
MIT licence: see ``LICENSE`` and ``ATTRIBUTION.md`` there) and, for each, an RGB picture
painted from it (:func:`paint_specimen`: every part its own colour and texture on a
paper-like background). The first is the support; the others are the queries. The masks of the
queries are shipped too, as the truth the demo compares its masks with.

Rebuild the pictures (bit for bit) from the masks with::

    python -m sst.client.demo_data [--masks DIR]

``--masks`` (the set's ``masks/`` folder) copies the masks in first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sst.tracker import io as sio
from sst.tracker.errors import InputError

__all__ = ["DEMO_DIR", "LABEL_NAMES", "SPECIES", "SUPPORT", "QUERIES", "DemoFiles",
           "demo_files", "paint_specimen", "build"]

#: The bundled data, beside this module (installed as package data).
DEMO_DIR = Path(__file__).resolve().parent / "demo_specimens"
SPECIES = "dubius"
#: Mask file stems in the source set (``masks/dubius/<stem>.png``): support first.
SUPPORT = "beetle_151_511"
QUERIES = ("beetle_201_56", "beetle_207_38", "beetle_212_1011", "beetle_226_1269",
           "beetle_227_1010", "beetle_238_271", "beetle_216_1080")
#: Part names of the mask values (the order inferred for the set; see ATTRIBUTION.md).
LABEL_NAMES = {1: "head", 2: "pronotum", 3: "elytra", 4: "antenna", 5: "legs"}

#: Per part: base RGB colour, texture kind, texture period in pixels.
_PARTS = {
    1: ((92, 52, 30), "dots", 3.0),
    2: ((120, 70, 36), "bands", 5.0),
    3: ((150, 96, 44), "striae", 4.0),
    4: ((40, 28, 20), "flat", 1.0),
    5: ((170, 60, 34), "flat", 1.0),
}


@dataclass(frozen=True)
class DemoFiles:
    """Paths of the bundled support (picture and mask) and queries (pictures and the
    masks they were painted from), queries in the order of :data:`QUERIES`."""

    support: Path
    support_mask: Path
    queries: list[Path]
    truth: list[Path]


def demo_files(root: Path = DEMO_DIR) -> DemoFiles:
    """The bundled files under ``root``.

    Raises:
        InputError: a file is missing (an install without the package data).
    """
    files = DemoFiles(root / "images" / f"{SUPPORT}.png", root / "masks" / f"{SUPPORT}.png",
                      [root / "images" / f"{q}.png" for q in QUERIES],
                      [root / "masks" / f"{q}.png" for q in QUERIES])
    missing = [p for p in (files.support, files.support_mask, *files.queries, *files.truth)
               if not p.is_file()]
    if missing:
        raise InputError(str(missing[0]), f"demo data missing ({len(missing)} file(s)); "
                         "reinstall sst-serve with its package data")
    return files


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in -1..1: a coarse random grid, bilinearly upsampled to ``[h, w]``."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1.0, 1.0, (gh, gw))
    y = np.arange(h) / cell
    x = np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def paint_specimen(mask: np.ndarray, seed: int) -> np.ndarray:
    """An RGB picture of a part mask ``[H, W]`` (values 0..5): a pale paper background
    with soft blotches; head with dots, pronotum with bands, elytra with striae along
    the body's long axis, dark antennae and reddish legs; each part shaded towards its
    edges; a little grain. ``seed`` varies the colours slightly per specimen.

    Returns:
        ``uint8 [H, W, 3]``, the same for the same mask and seed.
    """
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    img[:] = (222.0, 214.0, 196.0)
    img += 10.0 * _smooth_noise(rng, h, w, 24)[..., None]
    body = mask > 0
    if body.any():  # the body's long axis, for the striae
        cy, cx = yy[body].mean(), xx[body].mean()
        cov = np.cov(np.stack([xx[body] - cx, yy[body] - cy]))
        vx, vy = np.linalg.eigh(cov)[1][:, -1]
    else:
        vx, vy = 1.0, 0.0
    along, across = xx * vx + yy * vy, -xx * vy + yy * vx
    tint = rng.uniform(-12.0, 12.0, 3)
    for lab, (colour, kind, period) in _PARTS.items():
        region = mask == lab
        if not region.any():
            continue
        if kind == "dots":
            tex = np.sin(xx * 2.1 / period) * np.sin(yy * 2.1 / period)
        elif kind == "bands":
            tex = np.sin(along * 2 * np.pi / (period * 3))
        elif kind == "striae":
            tex = np.sin(across * 2 * np.pi / period)
        else:
            tex = np.zeros((h, w))
        part = np.asarray(colour, float) + tint + 22.0 * tex[..., None]
        img = np.where(region[..., None], part, img)
    # darker towards each part's outline: distance to the background, cheaply
    inside = body.astype(np.float64)
    shade = inside.copy()
    for _ in range(4):
        padded = np.pad(shade, 1, mode="edge")
        shade = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2]
                 + padded[1:-1, 2:] + 4 * shade) / 8
    img *= np.where(body, 0.75 + 0.25 * shade, 1.0)[..., None]
    img += rng.normal(0.0, 2.0, (h, w, 1))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def build(root: Path = DEMO_DIR, masks_source: Path | None = None) -> list[Path]:
    """(Re)write ``root/images/<stem>.png`` from ``root/masks/<stem>.png``; with
    ``masks_source`` (the set's ``masks/`` folder) copy the masks from
    ``<masks_source>/dubius/`` first. Returns the pictures written."""
    stems = (SUPPORT, *QUERIES)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if masks_source is not None:
        for stem in stems:
            src = masks_source / SPECIES / f"{stem}.png"
            if not src.is_file():
                raise InputError(str(src), "mask not found; expected the NEON beetle set's "
                                 "masks/ folder")
            shutil.copyfile(src, root / "masks" / f"{stem}.png")
    written = []
    for i, stem in enumerate(stems):
        mask = sio.load_mask(root / "masks" / f"{stem}.png")
        path = root / "images" / f"{stem}.png"
        sio.save_png(path, paint_specimen(mask, seed=i))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sst.client.demo_data",
                                description="rebuild the pictures of sst demo's specimens")
    p.add_argument("--masks", type=Path, help="the NEON beetle set's masks/ folder to copy "
                                             "the masks from first")
    p.add_argument("--out", type=Path, default=DEMO_DIR)
    args = p.parse_args(argv)
    for path in build(args.out, args.masks):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
