"""Limits are checked before work: image sizes from the header before any pixel is
decoded, and the bytes of a request before any image is decoded."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sst.benchmarks.large_request import header_png
from sst.tracker import io as sio
from sst.tracker.errors import BudgetError, InputError, Reason
from sst.tracker.serving.limits import (
    ServiceConfig,
    check_request,
    header_size,
    response_bytes,
)
from sst.tracker.serving.sessions import decode_images, decode_masks

from .fakes import image, mask, png
from .memory_probe import PEAK_PROBE


def bomb_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid greyscale PNG of zeros, compressed row by row (never held whole)."""
    row = b"\0" * ((width * bit_depth + 7) // 8 + 1)  # filter byte + pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png(13000, 13000))
    return path


_CHILD = r"""
import json, sys, time
from sst.tracker import io as sio
from sst.tracker.errors import InputError
from sst.tracker.serving.sessions import ServiceConfig, decode_images
""" + PEAK_PROBE + r"""
bomb, control = sys.argv[1], sys.argv[2]
data = open(bomb, "rb").read()
report = {}
for name, load in [
        ("load_image", lambda: sio.load_image(bomb)),
        ("load_image_bytes", lambda: sio.load_image_bytes(data, "bomb.png")),
        ("load_mask", lambda: sio.load_mask(bomb)),
        ("decode_images", lambda: decode_images([data], "QUERY_IMAGES", ServiceConfig()))]:
    peak_kb()
    before, t = rss_kb(), time.perf_counter()
    try:
        load()
        error = None
    except InputError as exc:
        error = str(exc)
    report[name] = {"seconds": time.perf_counter() - t, "grew_kb": peak_kb() - before,
                    "error": error}
peak_kb()
before = rss_kb()
img = sio.load_image(control)  # an allowed 4000x4000 image: the measure sees it
report["control"] = {"grew_kb": peak_kb() - before, "shape": list(img.shape)}
print(json.dumps(report))
"""


def test_a_png_bomb_is_refused_from_its_header_fast_and_without_allocating(bomb, tmp_path):
    assert bomb.stat().st_size < 200_000  # ~160 KB on disk, 169 megapixels inside
    control = tmp_path / "control.png"
    control.write_bytes(bomb_png(4000, 4000))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(bomb), str(control)],
                         capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    for name in ("load_image", "load_image_bytes", "load_mask", "decode_images"):
        r = report[name]
        assert r["error"] is not None and "13000x13000" in r["error"], (name, r)
        assert r["seconds"] < 1.0, (name, r)
        # decoding would take 169 MB (grey) and 507 MB (RGB); the header is all we read
        assert r["grew_kb"] < 20_000, (name, r)
    assert "limit is 100,000,000 pixels" in report["load_image"]["error"]
    assert "QUERY_IMAGES[0]" in report["decode_images"]["error"]
    assert "limit is 50,000,000 pixels" in report["decode_images"]["error"]
    assert report["control"]["shape"] == [4000, 4000, 3]
    assert report["control"]["grew_kb"] > 40_000  # 48 MB of RGB: the measure works


def test_the_pixel_limit_is_the_callers(bomb):
    with pytest.raises(InputError, match="bomb.png: image is 13000x13000 = 169,000,000 "
                                         "pixels; the limit is 1,000 pixels"):
        sio.load_image(bomb, max_pixels=1000)
    small = png(image(0, (40, 30)))
    with pytest.raises(InputError, match="30x40 = 1,200 pixels; the limit is 1,000"):
        sio.load_image_bytes(small, "q", max_pixels=1000)
    assert sio.load_image_bytes(small, "q", max_pixels=1200).shape == (40, 30, 3)


def test_past_pillows_own_bound_is_a_clear_input_error(tmp_path):
    huge = tmp_path / "huge.png"  # 400 MP: Pillow itself refuses it while opening
    huge.write_bytes(bomb_png(20000, 20000, bit_depth=1))
    with pytest.raises(InputError, match="huge.png: image is too large to decode safely"):
        sio.load_image(huge, max_pixels=None)
    with pytest.raises(InputError, match=r"\(400000000 pixels\).*the limit is 100,000,000"):
        sio.load_image(huge)


def test_a_request_over_the_byte_budget_is_refused_before_decoding():
    assert ServiceConfig().max_request_bytes == 64 * 2**20
    limits = ServiceConfig(max_request_bytes=1000)
    garbage = [b"\x89PNG not really" * 40, b"x" * 500]  # would fail to decode
    with pytest.raises(InputError, match=r"QUERY_IMAGES: 2 encoded images of 0.0 MiB in all; "
                                         r"the limit is 0.0 MiB per request"):
        decode_images(garbage, "QUERY_IMAGES", limits)
    sup = png(image(0))
    images = decode_images([sup], "SUPPORT_IMAGES", ServiceConfig(max_request_bytes=len(sup)))
    with pytest.raises(InputError, match="SUPPORT_MASKS: 1 encoded images"):
        decode_masks([png(mask()) + b"\0" * 2000], images, "SUPPORT_MASKS", limits)
    ok = decode_masks([png(mask())], images, "SUPPORT_MASKS", limits)
    assert ok[0].shape == (24, 32) and int(ok[0].max()) == 1


def test_default_budget_admits_a_normal_request():
    blobs = [png(image(i, (64, 64))) for i in range(8)]
    out = decode_images(blobs, "QUERY_IMAGES", ServiceConfig())
    assert [o.shape for o in out] == [(64, 64, 3)] * 8
    assert all(np.array_equal(a, sio.load_image_bytes(b)) for a, b in zip(out, blobs))


def test_a_request_over_the_decoded_pixel_budget_is_refused_from_its_headers(monkeypatch):
    from sst.tracker.serving import limits as limits_mod

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(limits_mod.sio, "read_pixels_bytes", no_decoding)
    config = ServiceConfig()
    assert config.max_request_pixels == 400_000_000
    blobs = [header_png(7000, 7000)] * 16  # 16 x 49 MP = 784 MP, a few KB in all
    assert sum(map(len, blobs)) < 16_000
    with pytest.raises(BudgetError, match=r"QUERY_IMAGES: 16 images of 784 MP decoded in "
                                          r"all; the budget is 400 MP per request") as err:
        decode_images(blobs, "QUERY_IMAGES", config)
    assert err.value.reason is Reason.PIXEL_BUDGET
    assert "--max-request-mp" in str(err.value)
    # the orchestrator's check counts every field of the request together
    with pytest.raises(BudgetError, match=r"request: 16 images of 784 MP") as err:
        check_request({"QUERY_IMAGES": blobs[:8], "SUPPORT_IMAGES": blobs[8:]}, None, config)
    assert check_request({"QUERY_IMAGES": blobs[:8]}, None, config) == 8 * 49_000_000
    # one image over the per-image cap names that cap
    with pytest.raises(BudgetError, match=r"QUERY_IMAGES\[0\]: image is 8000x8000 = "
                                          r"64,000,000 pixels; the limit is 50,000,000") as err:
        check_request({"QUERY_IMAGES": [header_png(8000, 8000)]}, None, config)
    assert err.value.reason is Reason.PIXEL_BUDGET
    with pytest.raises(InputError, match=r"QUERY_IMAGES\[0\]: cannot read image"):
        check_request({"QUERY_IMAGES": [b"GIF89a..."]}, None, config)
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, np.zeros((30, 40), np.float32))  # a TIFF only tifffile reads
    assert header_size(tiff.getvalue(), "t") == (40, 30)
    # the raw image counts too
    raw = np.zeros((100, 100, 3), np.uint8)
    small = ServiceConfig(max_request_pixels=10_000 + 3 * 49)
    assert check_request({"QUERY_IMAGES": [header_png(7, 7)] * 3}, raw, small) == 10_147
    with pytest.raises(BudgetError, match="request: 4 images of 0 MP"):
        check_request({"QUERY_IMAGES": [header_png(7, 7)] * 4}, raw, small)


def test_the_answer_is_bounded_by_its_queries_pixels() -> None:
    """One byte of mask per query pixel: queries (and the raw image) whose masks would
    pass ``max_answer_bytes`` are refused from their headers, naming the field and the
    limit; supports do not count, and without ``queries`` nothing is checked."""
    config = ServiceConfig(max_answer_bytes=3 * 100 * 100)
    blobs = {"QUERY_IMAGES": [header_png(100, 100)] * 3,
             "SUPPORT_IMAGES": [header_png(500, 500)]}
    assert check_request(blobs, None, config, queries="QUERY_IMAGES") == 3 * 10_000 + 250_000
    raw = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(BudgetError, match=r"QUERY_IMAGES: the answer would carry 0\.0 MiB "
                       r"of masks .* the limit is 0 MiB per answer") as refused:
        check_request(blobs, raw, config, queries="QUERY_IMAGES")
    assert refused.value.reason is Reason.PIXEL_BUDGET
    assert check_request(blobs, raw, config) == 3 * 10_000 + 250_000 + 100


def test_each_header_is_read_once_and_deep_images_share_one_mapping(monkeypatch):
    from sst.tracker.serving import limits as limits_mod

    reads: list[str] = []
    real = limits_mod.header_size

    def counted(blob: bytes, field: str) -> tuple[int, int]:
        reads.append(field)
        return real(blob, field)

    monkeypatch.setattr(limits_mod, "header_size", counted)
    blobs = [png(image(i, (40, 48))) for i in range(3)]
    config = ServiceConfig()
    # checked by the caller (the orchestrator's check_request): no header read again
    check_request({"QUERY_IMAGES": blobs}, None, config)
    assert reads == ["QUERY_IMAGES[0]", "QUERY_IMAGES[1]", "QUERY_IMAGES[2]"]
    out = decode_images(blobs, "QUERY_IMAGES", config, checked=True)
    assert len(reads) == 3 and [o.shape for o in out] == [(40, 48, 3)] * 3
    # unchecked (a caller on its own): checked here, each header once
    assert len(decode_images(blobs, "QUERY_IMAGES", config)) == 3 and len(reads) == 6
    # 16-bit images: one mapping for the call, fitted on the first, not one per image
    grey = np.tile(np.arange(48, dtype=np.uint16) * 80, (40, 1))  # 0..3760
    deep = [png(grey), png(grey // 2)]
    raw = limits_mod.read_images(deep, "QUERY_IMAGES", config)
    assert [r.dtype for r in raw] == [np.uint16, np.uint16]
    first, second = decode_images(deep, "QUERY_IMAGES", config)
    assert first.max() == 255 and 120 <= second.max() <= 135  # the first one's range
    # a mapping's own checks name the image
    with pytest.raises(InputError, match=r"QUERY_IMAGES\[0\]: --intensity highbyte"):
        tiff = io.BytesIO()
        tifffile.imwrite(tiff, np.ones((16, 16), np.float32))
        decode_images([tiff.getvalue()], "QUERY_IMAGES", config,
                      normaliser=sio.Normaliser("highbyte"))


def test_the_budget_bounds_the_answer():
    # masks are one byte per query pixel: an answer is at most the budget plus scores
    sizes = [(7000, 7000)] * 8
    assert response_bytes(sizes, 3) == 8 * 49_000_000 + 8 * 8 + 24 * 8 * 3
    assert response_bytes(sizes, 3) < ServiceConfig().max_request_pixels + 1000
