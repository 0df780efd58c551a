"""Tests for sst.tracker.io (tiny synthetic files only)."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.tracker.errors import InputError
from sst.tracker.io import (
    atomic_write,
    collect_queries,
    label_palette,
    load_image,
    load_image_bytes,
    load_mask,
    load_mask_bytes,
    mask_labels,
    natural_key,
    overlay,
    read_pixels,
    save_csv,
    save_gif,
    save_json,
    save_label_png,
    save_npz,
    save_png,
    validate_mask,
)
from sst.tracker.io.intensity import Normaliser

# ----------------------------------------------------------------------------- helpers


def _rgb(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png_rgb16(path: Path, pixels: np.ndarray) -> None:
    """Hand-write a 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- load_image


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide x 20 high: left half red, right half blue.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, format="JPEG", exif=exif, quality=95)

    out = load_image(path)
    assert out.shape == (40, 20, 3)
    assert out.dtype == np.uint8
    # Rotating clockwise puts the (red) left half on top.
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_exif_orientation_applies_to_masks(tmp_path: Path) -> None:
    mask = np.zeros((2, 4), np.uint8)
    mask[0, 0] = 7
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path, format="PNG", exif=exif)
    out = load_mask(path)
    assert out.shape == (4, 2)
    assert out[0, 1] == 7  # top-left moves to top-right under a clockwise turn
    assert mask_labels(out) == [7]


def test_plain_rgb_png_matches_pillow_convert(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.fromarray(_rgb()).save(path)
    ours = load_image(path)
    with Image.open(path) as im:
        ref = np.asarray(im.convert("RGB"))
    assert ours.dtype == np.uint8 and ours.shape == (6, 8, 3)
    np.testing.assert_array_equal(ours, ref)
    assert ours.flags.writeable and ours.flags.c_contiguous


def test_plain_rgb_jpeg_matches_pillow_convert(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    Image.fromarray(_rgb(16, 16)).save(path, quality=90)
    with Image.open(path) as im:
        ref = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(load_image(path), ref)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., :3] = _rgb(3, 4)
    rgba[..., 3] = 17
    path = tmp_path / "a.png"
    Image.fromarray(rgba).save(path)
    out = load_image(path)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgba[..., :3])


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_greyscale_loads_as_three_equal_channels(tmp_path: Path, mode: str) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    im = Image.fromarray(grey)
    if mode == "LA":
        im = im.convert("LA")
    path = tmp_path / f"g_{mode}.png"
    im.save(path)
    out = load_image(path)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_palette_and_one_bit(tmp_path: Path) -> None:
    pal = Image.frombytes("P", (2, 1), bytes([0, 1]))
    pal.putpalette([10, 20, 30, 200, 100, 50])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[0], [[10, 20, 30], [200, 100, 50]])

    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    bits.save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[0, :, 0], [255, 0, 255])
    assert out.shape == (1, 3, 3)


def test_palette_with_transparency_loads_without_warning(tmp_path: Path) -> None:
    pal = Image.frombytes("P", (2, 1), bytes([0, 1]))
    pal.putpalette([10, 20, 30, 200, 100, 50])
    path = tmp_path / "pt.png"
    pal.save(path, transparency=bytes([0, 255]))
    # filterwarnings=error would turn Pillow's transparency warning into a failure
    np.testing.assert_array_equal(load_image(path)[0], [[10, 20, 30], [200, 100, 50]])


def test_16bit_greyscale_png_highbyte_and_auto(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256], [4660, 40000, 65535]], dtype=np.uint16)
    im = Image.frombytes("I;16", (3, 2), values.astype("<u2").tobytes())
    path = tmp_path / "g16.png"
    im.save(path)
    out = load_image(path, intensity=Normaliser("highbyte"))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], values >> 8)
    np.testing.assert_array_equal(out[..., 2], values >> 8)
    auto = load_image(path)  # default: this image's own 0.5-99.5 percentiles
    lo, hi = np.percentile(values, [0.5, 99.5])
    expected = np.clip(np.rint((values - lo) * 255 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(auto[..., 1], expected)


def test_16bit_big_endian_tiff_keeps_its_values(tmp_path: Path) -> None:
    values = np.array([[0, 512, 65535]], dtype=np.uint16)
    im = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    path = tmp_path / "g16b.tif"
    im.save(path)
    raw = read_pixels(path)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, values)
    out = load_image(path, intensity=Normaliser("highbyte"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 2, 255])
    out = load_image(path, intensity=Normaliser("range:0,1024"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])


def test_32bit_int_image_is_clipped_then_scaled_by_highbyte(tmp_path: Path) -> None:
    values = np.array([[-5, 512, 70000, 65535]], dtype=np.int32)
    im = Image.fromarray(values)
    assert im.mode == "I"
    path = tmp_path / "i32.tif"
    im.save(path)
    out = load_image(path, intensity=Normaliser("highbyte"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 2, 255, 255])


def test_16bit_rgb_png(tmp_path: Path) -> None:
    pixels = np.array([[[0, 0x1234, 0xFFFF], [0x8000, 0x00FF, 0x0100]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    _png_rgb16(path, pixels)
    out = load_image(path)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels >> 8)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothere.png") as err:
        load_image(tmp_path / "nothere.png")
    assert "not found" in str(err.value)
    with pytest.raises(InputError, match="gone_mask.png"):
        load_mask(tmp_path / "gone_mask.png")


def test_corrupt_and_truncated_files_name_them(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(InputError, match="garbage.png"):
        load_image(garbage)

    full = _png_bytes(Image.fromarray(_rgb(64, 64)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_image(cut)

    with pytest.raises(InputError, match="a directory"):
        load_image(tmp_path)


def test_load_image_bytes() -> None:
    arr = _rgb()
    np.testing.assert_array_equal(load_image_bytes(_png_bytes(Image.fromarray(arr))), arr)
    with pytest.raises(InputError, match="upload.png"):
        load_image_bytes(b"\x89PNG junk", source="upload.png")


# ----------------------------------------------------------------------------- masks


def _save_mask(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_mask_ok_with_image_size(tmp_path: Path) -> None:
    arr = np.zeros((4, 5), np.uint8)
    arr[1:3, 1:3] = 2
    arr[0, 4] = 9
    out = load_mask(_save_mask(tmp_path / "m.png", arr), image_size=(5, 4))
    assert out.dtype == np.uint8 and out.shape == (4, 5)
    np.testing.assert_array_equal(out, arr)
    assert mask_labels(out) == [2, 9]


def test_mask_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    arr = np.zeros((480, 640), np.uint8)
    arr[0, 0] = 1
    path = _save_mask(tmp_path / "big.png", arr)
    with pytest.raises(InputError) as err:
        load_mask(path, image_size=(800, 600))
    msg = str(err.value)
    assert "big.png" in msg and "640x480" in msg and "800x600" in msg


def test_empty_mask_rejected(tmp_path: Path) -> None:
    path = _save_mask(tmp_path / "empty.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match="no labels"):
        load_mask(path)


def test_too_many_labels(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)  # 11 non-zero labels
    path = _save_mask(tmp_path / "many.png", arr)
    with pytest.raises(InputError, match=r"11 distinct.*at most 10"):
        load_mask(path, max_labels=10)
    assert mask_labels(load_mask(path, max_labels=11)) == list(range(1, 12))


def test_colour_mask_rejected_but_grey_rgb_accepted(tmp_path: Path) -> None:
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(InputError, match="colour") as err:
        load_mask(_save_mask(tmp_path / "colour.png", colour))
    assert "single-channel" in str(err.value) and "colour.png" in str(err.value)

    grey = np.zeros((2, 2, 4), np.uint8)
    grey[0, 1, :3] = 3
    grey[..., 3] = 255
    out = load_mask(_save_mask(tmp_path / "grey_rgba.png", grey))
    np.testing.assert_array_equal(out, [[0, 3], [0, 0]])


def test_binary_0_255_mask_has_label_255(tmp_path: Path) -> None:
    arr = np.zeros((3, 3), np.uint8)
    arr[1, 1] = 255
    out = load_mask(_save_mask(tmp_path / "bin.png", arr))
    assert mask_labels(out) == [255]
    assert out.dtype == np.uint8


def test_palette_and_one_bit_masks(tmp_path: Path) -> None:
    pal = Image.frombytes("P", (3, 1), bytes([0, 4, 4]))
    pal.putpalette([0, 0, 0] * 4 + [255, 255, 0])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), [[0, 4, 4]])

    Image.fromarray(np.array([[False, True]])).save(tmp_path / "one.png")
    out = load_mask(tmp_path / "one.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1]])


def test_16bit_mask_keeps_values(tmp_path: Path) -> None:
    values = np.array([[0, 300], [1, 65535]], dtype=np.uint16)
    im = Image.frombytes("I;16", (2, 2), values.astype("<u2").tobytes())
    path = tmp_path / "m16.png"
    im.save(path)
    out = load_mask(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, values)


def test_load_mask_bytes() -> None:
    arr = np.array([[0, 5]], np.uint8)
    data = _png_bytes(Image.fromarray(arr))
    np.testing.assert_array_equal(load_mask_bytes(data, "upload"), arr)
    with pytest.raises(InputError, match=r"upload: mask is 2x1 but its image is 3x1"):
        load_mask_bytes(data, "upload", image_size=(3, 1))


def test_validate_mask_arrays() -> None:
    out = validate_mask(np.array([[True, False]]))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[1, 0]])

    np.testing.assert_array_equal(validate_mask(np.array([[0.0, 3.0]])), [[0, 3]])
    assert validate_mask(np.array([[0, 256]], dtype=np.int64)).dtype == np.uint16
    with pytest.raises(InputError, match="non-integer"):
        validate_mask(np.array([[0.0, 0.5]]))
    with pytest.raises(InputError, match="2-D"):
        validate_mask(np.ones((2, 2, 1), np.uint8))
    with pytest.raises(InputError, match="negative"):
        validate_mask(np.array([[-1, 1]]))
    with pytest.raises(InputError, match="65535"):
        validate_mask(np.array([[0, 70000]]))
    with pytest.raises(InputError, match=r"^frame3: mask has no labels"):
        validate_mask(np.zeros((2, 2), np.uint8), "frame3")
    with pytest.raises(InputError, match="3x2"):
        validate_mask(np.ones((2, 3), np.uint8), "m", image_size=(2, 3))


def test_mask_labels() -> None:
    assert mask_labels(np.array([[0, 7, 7], [2, 0, 300]])) == [2, 7, 300]
    assert mask_labels(np.zeros((2, 2), np.uint8)) == []


# ----------------------------------------------------------------------------- writing


def test_save_label_png_round_trip_palette(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [255, 17, 0]], dtype=np.uint8)
    path = tmp_path / "out" / "labels.png"
    save_label_png(path, labels)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), labels)
        palette = np.frombuffer(bytes(im.getpalette() or []), np.uint8).reshape(-1, 3)
    assert tuple(palette[0]) == (0, 0, 0)
    used = palette[[1, 2, 17, 255]]
    assert len({tuple(c) for c in used}) == 4
    np.testing.assert_array_equal(load_mask(path), labels)


def test_save_label_png_all_zero_allowed(tmp_path: Path) -> None:
    save_label_png(tmp_path / "z.png", np.zeros((2, 2), np.uint8))
    with Image.open(tmp_path / "z.png") as im:
        assert im.mode == "P" and not np.asarray(im).any()


def test_save_label_png_uint16_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [256, 40000]], dtype=np.uint16)
    path = tmp_path / "l16.png"
    save_label_png(path, labels)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = load_mask(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)


def test_atomic_write_success_replaces_target(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "result.png"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".") and tmp.suffix == ".png"
        assert not target.exists()
        Image.fromarray(_rgb()).save(tmp)  # format picked from the suffix
    assert target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["result.png"]


def test_atomic_write_failure_keeps_old_target(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_save_png_json_csv_npz(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 3] = 200
    save_png(tmp_path / "a.png", rgba)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "RGBA" and im.size == (3, 2)
    with pytest.raises(InputError, match="uint8"):
        save_png(tmp_path / "f.png", np.zeros((2, 2, 3), np.float32))

    save_json(tmp_path / "r.json", {"n": np.int64(3), "xs": np.arange(2), "p": tmp_path})
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "n": 3,
        "xs": [0, 1],
        "p": str(tmp_path),
    }

    save_csv(tmp_path / "r.csv", ["name", "score"], [["a", 0.5], ["b, c", 1]])
    with open(tmp_path / "r.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [["name", "score"], ["a", "0.5"], ["b, c", "1"]]
    with pytest.raises(InputError, match="row 1"):
        save_csv(tmp_path / "bad.csv", ["a", "b"], [[1]])

    save_npz(tmp_path / "arrays.data", masks=np.ones((2, 2), bool), ids=np.arange(3))
    assert not (tmp_path / "arrays.data.npz").exists()
    with np.load(tmp_path / "arrays.data") as npz:
        np.testing.assert_array_equal(npz["ids"], [0, 1, 2])
        assert npz["masks"].all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_label_palette() -> None:
    pal = label_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0)
    assert len({tuple(c) for c in pal}) == 256
    assert (pal[1:].max(axis=1) >= 200).all()  # every label is clearly visible
    np.testing.assert_array_equal(label_palette(300)[:256], pal)
    np.testing.assert_array_equal(label_palette(8), pal[:8])


def test_overlay() -> None:
    image = _rgb(6, 6)
    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:5] = 3
    out = overlay(image, labels, alpha=0.5)
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8
    colour = label_palette()[3]
    background = labels == 0
    np.testing.assert_array_equal(out[background], image[background])
    # boundary of the square: full colour
    np.testing.assert_array_equal(out[1, 1], colour)
    np.testing.assert_array_equal(out[4, 2], colour)
    # interior: half-way blend
    expected = np.round(image[2, 2].astype(float) * 0.5 + colour.astype(float) * 0.5)
    np.testing.assert_allclose(out[2, 2], expected, atol=1)
    # the input is not modified, and alpha=0 leaves the interior untouched
    np.testing.assert_array_equal(overlay(image, labels, alpha=0.0)[2:4, 2:4], image[2:4, 2:4])
    with pytest.raises(InputError, match="shape"):
        overlay(image, labels[:5])


def test_save_gif_frames_and_canvas(tmp_path: Path) -> None:
    frames = [
        np.full((20, 40, 3), 30, np.uint8),
        np.full((50, 10, 3), 120, np.uint8),
        np.full((8, 8, 3), 250, np.uint8),
    ]
    path = tmp_path / "anim.gif"
    save_gif(path, frames, duration_ms=100, max_side=25)
    with Image.open(path) as im:
        assert getattr(im, "n_frames", 1) == 3
        # frame 1 is 50x10 -> 25x5 after fitting max_side; frame 0 40x20 -> 25x12
        assert im.size == (25, 25)
    with pytest.raises(InputError, match="no frames"):
        save_gif(tmp_path / "none.gif", [])


# ----------------------------------------------------------------------------- queries


def test_natural_key_order() -> None:
    names = ["img10.png", "IMG2.png", "img1.png", "img2.png", "img01.png", "a.png"]
    assert sorted(names, key=natural_key) == [
        "a.png",
        "img01.png",
        "img1.png",
        "IMG2.png",
        "img2.png",
        "img10.png",
    ]


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_collect_queries_directory(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    _touch(
        d / "img10.png",
        d / "img2.JPG",
        d / "img1.tif",
        d / ".hidden.png",
        d / "notes.txt",
        d / "sub" / "img3.png",
    )
    assert [p.name for p in collect_queries(d)] == ["img1.tif", "img2.JPG", "img10.png"]
    assert [p.name for p in collect_queries(str(d))] == ["img1.tif", "img2.JPG", "img10.png"]


def test_collect_queries_excludes_support(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    _touch(d / "support.png", d / "q1.png", d / "q2.png")
    # an equivalent but differently spelled path still matches
    support = tmp_path / "imgs" / ".." / "imgs" / "support.png"
    found = collect_queries(d, exclude=[support])
    assert [p.name for p in found] == ["q1.png", "q2.png"]


def test_collect_queries_glob(tmp_path: Path) -> None:
    _touch(tmp_path / "f10.jpg", tmp_path / "f9.jpg", tmp_path / "f1.png")
    found = collect_queries(str(tmp_path / "*.jpg"))
    assert [p.name for p in found] == ["f9.jpg", "f10.jpg"]


def test_collect_queries_list_file_keeps_order(tmp_path: Path) -> None:
    _touch(tmp_path / "data" / "b.png", tmp_path / "data" / "a.png", tmp_path / "abs.png")
    lst = tmp_path / "lists" / "queries.txt"
    lst.parent.mkdir()
    lst.write_text(
        "# queries\n../data/b.png\n\n   \n" + str(tmp_path / "abs.png") + "\n../data/a.png\n"
    )
    expected = ["b.png", "abs.png", "a.png"]
    assert [p.name for p in collect_queries(lst)] == expected
    assert [p.name for p in collect_queries("@" + str(lst))] == expected
    assert [p.name for p in collect_queries(lst, exclude=[tmp_path / "abs.png"])] == [
        "b.png",
        "a.png",
    ]

    bad = tmp_path / "bad.txt"
    bad.write_text("missing.png\n")
    with pytest.raises(InputError, match=r"bad.txt: line 1"):
        collect_queries(bad)


def test_collect_queries_no_match(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty"):
        collect_queries(empty)
    pattern = str(tmp_path / "*.webp")
    with pytest.raises(InputError) as err:
        collect_queries(pattern)
    assert pattern in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        collect_queries(tmp_path / "nope")
    only = tmp_path / "only"
    _touch(only / "support.png")
    with pytest.raises(InputError, match="excluded"):
        collect_queries(only, exclude=[only / "support.png"])
