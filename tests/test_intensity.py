"""Microscope pixels: 12/16-bit and float images, their normalisation to 8 bit (recorded),
and multi-page TIFF / OME-TIFF stacks as one query per page."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sst.client.cli import main
from sst.tracker import io as sio
from sst.tracker.errors import InputError
from sst.tracker.io.intensity import Intensity, Normaliser
from sst.tracker.io.queries import QueryReader, page_name, parse_pages

from .synthetic import specimen

# ----------------------------------------------------------------------------- parsing


def test_intensity_parse_and_errors() -> None:
    assert Intensity.parse("auto") == Intensity("auto")
    assert Intensity.parse("HighByte").mode == "highbyte"
    r = Intensity.parse("range:100,4000")
    assert (r.mode, r.low, r.high, str(r)) == ("range", 100.0, 4000.0, "range:100,4000")
    for bad in ("range:5", "range:9,3", "range:a,b", "gamma", "range:0,inf"):
        with pytest.raises(InputError, match="--intensity"):
            Intensity.parse(bad)


def test_parse_pages() -> None:
    assert parse_pages(None) is None and parse_pages("all") is None
    assert parse_pages("0,2,5-7,2") == [0, 2, 5, 6, 7]
    for bad in ("x", "3-1", "-1", "1,,2"):
        with pytest.raises(InputError, match="--pages"):
            parse_pages(bad)


def test_page_names() -> None:
    assert page_name(Path("run/stack.ome.tif"), 3) == Path("run/stack_p3.tif")
    assert page_name(Path("a.v2.tiff"), 0) == Path("a.v2_p0.tiff")


# ----------------------------------------------------------------------------- Normaliser


def test_auto_fits_on_the_first_deep_image_and_reuses_it() -> None:
    rng = np.random.default_rng(0)
    support = rng.integers(100, 4096, (40, 50), dtype=np.uint16)
    norm = Normaliser("auto")
    out = norm(support, "support.tif")
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    lo, hi = np.percentile(support, [0.5, 99.5])
    assert norm.ranges == [(pytest.approx(lo), pytest.approx(hi))]
    # a darker query keeps the support's mapping (not its own stretch)
    dark = (support // 2).astype(np.uint16)
    np.testing.assert_array_equal(
        norm(dark, "q.tif")[..., 0],
        np.clip(np.rint((dark.astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255))
    rec = norm.record()
    assert rec["mode"] == "auto" and rec["fitted_on"] == "support.tif"
    assert rec["percentiles"] == [0.5, 99.5] and rec["input_dtypes"] == ["uint16"]
    assert rec["ranges"][0] == [pytest.approx(lo), pytest.approx(hi)]


def test_auto_passes_8bit_through_and_fits_rgb_per_channel() -> None:
    rgb8 = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    norm = Normaliser()
    np.testing.assert_array_equal(norm(rgb8), rgb8)
    assert norm.record()["ranges"] is None  # nothing deep seen: nothing fitted
    rgb16 = np.stack([np.full((4, 4), v, np.uint16) for v in (10, 1000, 60000)], axis=2)
    rgb16[0, 0] = (0, 0, 0)
    norm(rgb16, "rgb16")
    assert len(norm.ranges or []) == 3
    assert norm.ranges is not None and norm.ranges[2][1] == pytest.approx(60000)


def test_float_images_and_highbyte_refusing_them() -> None:
    img = np.linspace(-1.0, 1.0, 200, dtype=np.float32).reshape(10, 20)
    img[0, 0] = np.nan
    out = Normaliser("auto")(img, "f32")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(Normaliser("range:-1,1")(np.float32([[0.0]]))[0, 0], 128)
    with pytest.raises(InputError, match="f32.tif.*highbyte needs integer pixels"):
        Normaliser("highbyte")(img, "f32.tif")


def test_shapes_grey_alpha_and_refused_channel_counts() -> None:
    grey_alpha = np.zeros((3, 4, 2), np.uint16)
    grey_alpha[..., 0] = 4095
    assert Normaliser("highbyte")(grey_alpha).tolist()[0][0] == [15, 15, 15]
    with pytest.raises(InputError, match=r"stack.tif.*\(3, 4, 7\)"):
        Normaliser()(np.zeros((3, 4, 7), np.uint16), "stack.tif")


# ----------------------------------------------------------------------------- TIFF files


def test_tifffile_reads_16bit_float_planar_rgb_and_pages(tmp_path: Path) -> None:
    stack = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7) * 10
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, metadata={"axes": "TYX"}, ome=True)
    assert sio.page_count(tmp_path / "s.ome.tif") == 5
    np.testing.assert_array_equal(sio.read_pixels(tmp_path / "s.ome.tif", page=3), stack[3])
    with pytest.raises(InputError, match="has 5 page.*page 9 does not exist"):
        sio.read_pixels(tmp_path / "s.ome.tif", page=9)
    planar = np.random.default_rng(2).integers(0, 4096, (3, 8, 9), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(sio.read_pixels(tmp_path / "p.tif"),
                                  np.moveaxis(planar, 0, -1))
    flt = np.random.default_rng(3).random((8, 9), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", flt)
    raw = sio.read_pixels(tmp_path / "f.tif")
    assert raw.dtype == np.float32
    assert sio.load_image(tmp_path / "f.tif").shape == (8, 9, 3)
    data = (tmp_path / "s.ome.tif").read_bytes()
    np.testing.assert_array_equal(sio.read_pixels_bytes(data, page=1), stack[1])


def test_compressed_tiff_falls_back_to_pillow(tmp_path: Path) -> None:
    """LZW needs imagecodecs in tifffile; Pillow decodes it instead."""
    rgb = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(sio.load_image(tmp_path / "lzw.tif"), rgb)
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(InputError, match="bad.tif"):
        sio.load_image(tmp_path / "bad.tif")


def test_query_reader_expands_stacks_and_chooses_payloads(tmp_path: Path) -> None:
    stack = np.random.default_rng(5).integers(0, 4096, (3, 6, 8), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "st.tif", stack, photometric="minisblack")
    rgb = np.random.default_rng(6).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    reader = QueryReader(Normaliser("auto"), pages=[0, 2, 7])
    paths = reader.expand([tmp_path / "plain.png", tmp_path / "st.tif"])
    assert [p.name for p in paths] == ["plain.png", "st_p0.tif", "st_p2.tif", "st_p7.tif"]
    with pytest.raises(InputError, match="has 3 page"):
        reader(paths[3])
    reader = QueryReader(Normaliser("auto"))
    paths = reader.expand([tmp_path / "plain.png", tmp_path / "st.tif"])
    assert [p.name for p in paths] == ["plain.png", "st_p0.tif", "st_p1.tif", "st_p2.tif"]
    first = reader(paths[0])
    np.testing.assert_array_equal(first, rgb)
    assert reader.payload(paths[0], first) == (tmp_path / "plain.png").read_bytes()
    page = reader(paths[2])
    assert reader.source(paths[2]) == (tmp_path / "st.tif", 1)
    assert isinstance(reader.payload(paths[2], page), np.ndarray)
    # fitted on the first deep image read
    assert reader.intensity.record()["fitted_on"] == f"{tmp_path / 'st.tif'} page 1"


# ----------------------------------------------------------------------------- segmenting


def _twelve_bit(seed: int, size: tuple[int, int] = (240, 320)) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit camera frame of a specimen (0..4095, using the whole range) and its mask."""
    img, mask = specimen(seed, size=size)
    grey = img.astype(np.float64) @ np.array([0.3, 0.5, 0.2])
    lo, hi = np.percentile(grey, [0.5, 99.5])
    return np.clip(np.rint((grey - lo) * 4095 / (hi - lo)), 0, 4095).astype(np.uint16), mask


def _rescale8(v12: np.ndarray) -> np.ndarray:
    return np.rint(v12.astype(np.float64) * 255 / 4095).astype(np.uint8)


def _iou_per_label(a: np.ndarray, b: np.ndarray, labels: list[int]) -> list[float]:
    out = []
    for lab in labels:
        inter = np.count_nonzero((a == lab) & (b == lab))
        union = np.count_nonzero((a == lab) | (b == lab))
        out.append(1.0 if union == 0 else inter / union)
    return out


@pytest.mark.slow
def test_12bit_tiff_segments_like_its_8bit_rescale(tmp_path: Path, exported_repo) -> None:
    """A 12-bit image in a 16-bit TIFF segments the same as its 8-bit rescale (same
    random weights): IoU >= 0.99 per label with ``auto`` (the support's percentiles) and
    with ``range:0,4095``; ``highbyte`` makes it almost black (0..15). The mapping used is
    in results.json."""
    sup16, mask = _twelve_bit(0)
    queries16 = [_twelve_bit(40 + i)[0] for i in range(2)]
    deep, flat = tmp_path / "deep", tmp_path / "flat"
    for folder in (deep / "q", flat / "q"):
        folder.mkdir(parents=True)
    tifffile.imwrite(deep / "support.tif", sup16)
    Image.fromarray(_rescale8(sup16)).save(flat / "support.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for i, q in enumerate(queries16):
        tifffile.imwrite(deep / "q" / f"q{i}.tif", q)
        Image.fromarray(_rescale8(q)).save(flat / "q" / f"q{i}.png")
    # the 8-bit pixels auto gives the 12-bit ones are those of the 8-bit rescale, +-1
    norm = Normaliser("auto")
    diff = norm(sup16).astype(int)[..., 0] - _rescale8(sup16)
    assert np.abs(diff).max() <= 1

    def run(folder: Path, out: str, *extra: str) -> dict:
        sup = folder / ("support.tif" if folder == deep else "support.png")
        assert main(["segment", "--support", str(sup), "--support-mask",
                     str(tmp_path / "mask.png"), "--queries", str(folder / "q"),
                     "--out", str(tmp_path / out), "--model-dir", str(exported_repo),
                     "--format", "png,json", "--no-progress", *extra]) == 0
        return json.loads((tmp_path / out / "results.json").read_text())

    reference = run(flat, "ref")
    assert reference["intensity"]["mode"] == "auto"
    assert reference["intensity"]["ranges"] is None  # 8-bit: passed through
    labels = reference["labels"]
    for mode in ("auto", "range:0,4095"):
        res = run(deep, mode.replace(":", "_"), "--intensity", mode)
        for i in range(2):
            a = np.asarray(Image.open(tmp_path / "ref" / f"q{i}.png"))
            b = np.asarray(Image.open(tmp_path / mode.replace(":", "_") / f"q{i}.png"))
            ious = _iou_per_label(a, b, labels)
            assert min(ious) >= 0.99, (mode, i, ious)
        assert res["intensity"]["input_dtypes"] == ["uint16"]
    assert res["intensity"] == {"mode": "range", "range": [0.0, 4095.0],
                                "input_dtypes": ["uint16"]}
    auto = json.loads((tmp_path / "auto" / "results.json").read_text())["intensity"]
    assert auto["fitted_on"] == str(deep / "support.tif")
    assert auto["ranges"][0] == [pytest.approx(v, abs=1) for v in (0, 4095)]
    high = Normaliser("highbyte")(sio.read_pixels(deep / "support.tif"))
    assert high.max() <= 15 and high.mean() < 8  # almost black
    assert run(deep, "high", "--intensity", "highbyte")["intensity"]["mode"] == "highbyte"
    a = np.asarray(Image.open(tmp_path / "ref" / "q0.png"))
    b = np.asarray(Image.open(tmp_path / "high" / "q0.png"))
    assert min(_iou_per_label(a, b, labels)) < 0.9  # the almost black image segments badly


@pytest.mark.slow
def test_five_page_ome_tiff_gives_five_named_queries(tmp_path: Path, exported_repo) -> None:
    sup, mask = specimen(0)
    Image.fromarray(sup).save(tmp_path / "support.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    stack = np.stack([_twelve_bit(60 + i, size=(120, 160))[0] for i in range(5)])
    (tmp_path / "q").mkdir()
    tifffile.imwrite(tmp_path / "q" / "plate.ome.tif", stack, metadata={"axes": "TYX"},
                     ome=True)
    assert main(["segment", "--support", str(tmp_path / "support.png"), "--support-mask",
                 str(tmp_path / "mask.png"), "--queries", str(tmp_path / "q"),
                 "--out", str(tmp_path / "out"), "--model-dir", str(exported_repo),
                 "--format", "png,json", "--no-progress", "--mode", "independent"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    names = [f"plate_p{i}.tif" for i in range(5)]
    assert list(dict.fromkeys(r["query"] for r in res["results"])) == names
    for i in range(5):
        with Image.open(tmp_path / "out" / f"plate_p{i}.png") as im:
            assert im.size == (160, 120)
    assert main(["segment", "--support", str(tmp_path / "support.png"), "--support-mask",
                 str(tmp_path / "mask.png"), "--queries", str(tmp_path / "q"),
                 "--out", str(tmp_path / "sel"), "--model-dir", str(exported_repo),
                 "--format", "json", "--no-progress", "--pages", "1,3"]) == 0
    res = json.loads((tmp_path / "sel" / "results.json").read_text())
    assert list(dict.fromkeys(r["query"] for r in res["results"])) == ["plate_p1.tif",
                                                                         "plate_p3.tif"]


def test_server_run_sends_normalised_pages_and_records_the_mapping(tmp_path: Path) -> None:
    """``sst segment --server`` on a 16-bit support and a 3-page 12-bit stack: the client
    sends the pixels it normalised (PNG; the support too), one request per page, and
    results.json records the mapping; a plain 8-bit query is sent as its file."""
    from sst.client import Client
    from sst.client.segment_cli import run_segment

    from .fakes import FakeServer, FakeTransport

    sup16, mask = _twelve_bit(0, size=(60, 80))
    tifffile.imwrite(tmp_path / "support.tif", sup16)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "q").mkdir()
    stack = np.stack([_twelve_bit(70 + i, size=(60, 80))[0] for i in range(3)])
    tifffile.imwrite(tmp_path / "q" / "stack.tif", stack, photometric="minisblack")
    plain = specimen(5, size=(60, 80))[0]
    Image.fromarray(plain).save(tmp_path / "q" / "plain.png")
    server = FakeServer()
    with Client(transport=FakeTransport(server)) as client:
        summary = run_segment(None, [(tmp_path / "support.tif", tmp_path / "mask.png")],
                              tmp_path / "q", tmp_path / "out", client=client,
                              formats=["png", "json"], progress=False)
    assert summary.ok and summary.processed == 4
    norm = Normaliser("auto")
    norm(sup16, "support")

    def decoded(blob: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(blob)) as im:
            return np.asarray(im)

    start = next(c for c in server.calls if c.kind == "START")
    np.testing.assert_array_equal(decoded(bytes(start.inputs["SUPPORT_IMAGES"][0])),
                                  norm(sup16))
    sent = [q for c in server.calls if c.kind == "QUERY" for q in c.inputs["QUERY_IMAGES"]]
    assert bytes(sent[0]) == (tmp_path / "q" / "plain.png").read_bytes()
    for page in range(3):
        np.testing.assert_array_equal(decoded(bytes(sent[1 + page])), norm(stack[page]))
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(dict.fromkeys(r["query"] for r in doc["results"])) == [
        "plain.png", "stack_p0.tif", "stack_p1.tif", "stack_p2.tif"]
    assert doc["intensity"]["fitted_on"] == str(tmp_path / "support.tif")
    assert doc["intensity"]["ranges"] == [[pytest.approx(lo), pytest.approx(hi)]
                                          for lo, hi in norm.ranges or []]


def test_coco_supports_with_deep_pixels_fit_the_session_mapping(tmp_path: Path) -> None:
    from sst.client.segment_cli import load_supports

    sup16, _ = _twelve_bit(2, size=(40, 50))
    Image.fromarray(sup16).save(tmp_path / "sup.png")  # 16-bit greyscale PNG
    doc = {"images": [{"id": 1, "file_name": "sup.png", "width": 50, "height": 40}],
           "categories": [{"id": 1, "name": "head"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "segmentation": [[5, 5, 30, 5, 30, 20, 5, 20]],
                            "area": 375, "bbox": [5, 5, 25, 15]}]}
    (tmp_path / "sup.json").write_text(json.dumps(doc))
    loaded = load_supports([], tmp_path / "sup.json", intensity="range:0,4095")
    assert loaded.names == {1: "head"}
    [support] = loaded.supports
    np.testing.assert_array_equal(support.image, Normaliser("range:0,4095")(sup16))
    assert not support.as_file  # a server is sent these pixels, not the file
    auto = load_supports([], tmp_path / "sup.json")
    assert auto.intensity.fitted_on == str(tmp_path / "sup.png")
