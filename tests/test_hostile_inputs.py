"""Headers are not trusted for width x height alone: samples, bytes per sample, depth and
pages are judged before anything is decoded, on the server and in ``sst segment`` /
``sst watch``; mask making counts labels x pixels; pages mean the same everywhere."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sst.benchmarks.hostile_inputs import crafted_tiffs, label_mask_png, solid_png, tiled_tiff
from sst.tracker import io as sio
from sst.tracker.errors import BudgetError, InputError, Reason
from sst.tracker.io.headers import MAX_PAGES, read_header
from sst.tracker.io.intensity import Intensity
from sst.tracker.io.queries import QueryReader
from sst.tracker.serving.limits import (
    ServiceConfig,
    check_mask_work,
    check_request,
    measure_request,
    read_images,
)

from .memory_probe import PEAK_PROBE
from .synthetic import specimen
from .test_orchestrator import _model, _Request, _stateless, pb  # noqa: F401 (fixture)
from .test_serving import _png


def _tiff(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the files


def test_crafted_tiffs_are_small_and_declare_gigabytes() -> None:
    files = crafted_tiffs()
    assert set(files) == {"depth100", "samples20_uint16", "samples8_float64"}
    declared = {name: read_header(data, name) for name, data in files.items()}
    assert all(len(data) < 20_000 for data in files.values())
    assert (declared["depth100"].depth, declared["depth100"].stored_bytes) == (100, 9 * 10**8)
    assert declared["samples20_uint16"].describe() == "7000x7000, 20 samples of 2 bytes"
    assert declared["samples8_float64"].stored_bytes == 5000 * 5000 * 8 * 8
    # the same construction, small, is a TIFF tifffile decodes
    small = tifffile.imread(io.BytesIO(tiled_tiff(70, 50, samples=5, dtype="uint16", tile=32)))
    assert small.shape == (50, 70, 5) and small.dtype == np.uint16 and not small.any()
    vol = tifffile.imread(io.BytesIO(tiled_tiff(40, 30, depth=7, tile=16, tile_depth=3)))
    assert vol.shape == (7, 30, 40)


def test_solid_png_and_label_masks() -> None:
    with Image.open(io.BytesIO(solid_png(300, 200))) as im:
        assert (im.size, im.mode) == ((300, 200), "RGB")
        assert np.unique(np.asarray(im).reshape(-1, 3), axis=0).tolist() == [[128, 96, 64]]
    assert len(solid_png(7000, 7000)) < 200_000
    mask = sio.load_mask_bytes(label_mask_png(300, 40, 16), max_labels=64)
    assert sio.mask_labels(mask) == list(range(1, 17))


_CHILD = r"""
import json, sys, time
from pathlib import Path
""" + PEAK_PROBE + r"""
from sst.tracker import io as sio
from sst.tracker.io.queries import QueryReader
from sst.tracker.serving.limits import ServiceConfig, check_request, decode_images, read_images

report = {}
for path in sorted(Path(sys.argv[1]).glob("*.tif")):
    data = path.read_bytes()
    calls = {
        "server": lambda: (check_request({"QUERY_IMAGES": [data]}, None, ServiceConfig(),
                                         queries="QUERY_IMAGES"),
                           read_images([data], "QUERY_IMAGES", ServiceConfig(), checked=True)),
        "decode_images": lambda: decode_images([data], "QUERY_IMAGES", ServiceConfig()),
        "segment": lambda: QueryReader()(path),
        "load_image": lambda: sio.load_image(path),
    }
    for name, call in calls.items():
        base = rss_kb()
        peak_kb()
        t = time.perf_counter()
        try:
            call()
            error = None
        except Exception as exc:
            error = str(exc)
        report[f"{path.stem}/{name}"] = {"seconds": time.perf_counter() - t, "error": error,
                                         "peak_mib": (peak_kb() - base) / 1024}
print(json.dumps(report))
"""


def test_crafted_tiffs_are_refused_fast_without_memory(tmp_path: Path) -> None:
    """Each crafted TIFF (0.9 to 2 GB declared) is refused from its header in well under
    a second and +100 MiB, on the server's path and in ``sst segment``'s reader."""
    for name, data in crafted_tiffs().items():
        (tmp_path / f"{name}.tif").write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report) == 12
    for key, row in report.items():
        assert row["error"] is not None, key
        assert row["seconds"] < 1.0 and row["peak_mib"] < 100, (key, row)
    assert "declares a volume" in report["depth100/server"]["error"]
    assert "ImageDepth 100" in report["depth100/segment"]["error"]
    for key in ("samples20_uint16/server", "samples20_uint16/segment"):
        assert "20 samples per pixel (7000x7000, 20 samples of 2 bytes)" in report[key]["error"]
    assert report["samples8_float64/server"]["error"].startswith("QUERY_IMAGES[0]: ")
    assert str(tmp_path / "samples8_float64.tif") in report["samples8_float64/segment"]["error"]


# ----------------------------------------------------------------------------- budgets


def test_decoded_bytes_per_image_are_judged_from_the_header(monkeypatch) -> None:
    """A header within the pixel cap whose samples decode to more than the image's byte
    limit (7000 x 7000 x 4 float64: 1.5 GiB) is refused before decoding, naming what it
    declares and the limit."""
    from sst.tracker.serving import limits as limits_mod

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    deep = tiled_tiff(7000, 7000, samples=4, dtype="float64")
    config = ServiceConfig()
    assert config.max_image_bytes == config.max_image_pixels * 8
    monkeypatch.setattr(limits_mod.sio, "read_pixels_bytes", no_decoding)
    with pytest.raises(BudgetError, match=r"QUERY_IMAGES\[0\]: image would decode to 1,495 MiB "
                                          r"\(7000x7000, 4 samples of 8 bytes\); the limit is "
                                          r"381 MiB per image") as err:
        check_request({"QUERY_IMAGES": [deep]}, None, config)
    assert err.value.reason is Reason.PIXEL_BUDGET
    monkeypatch.undo()
    # the readers of sst segment too, from the header (their limit: 100 MP x 8 bytes)
    with pytest.raises(BudgetError, match=r"q.tif: image would decode to 1,495 MiB"):
        sio.read_pixels_bytes(deep, "q.tif")


def test_decoded_bytes_per_request_are_summed() -> None:
    """Deep images count their bytes: six 6000 x 6000 16-bit RGB images (216 MP, under the
    pixel budget) declare 1.2 GiB of pixels, over the request's 3 bytes per budget pixel."""
    one = tiled_tiff(6000, 6000, samples=3, dtype="uint16")
    config = ServiceConfig()
    assert config.max_request_decoded_bytes == 3 * config.max_request_pixels
    size = measure_request({"QUERY_IMAGES": [one] * 5}, None, config)
    assert size.pixels == 5 * 36_000_000 and size.decoded_bytes == 5 * 216_000_000
    with pytest.raises(BudgetError, match=r"QUERY_IMAGES: 6 images whose headers declare "
                                          r"1,236 MiB of decoded pixels in all; the budget is "
                                          r"1,144 MiB per request") as err:
        check_request({"QUERY_IMAGES": [one] * 6}, None, config)
    assert err.value.reason is Reason.PIXEL_BUDGET
    # 8-bit images meet the pixel budget first, as before
    eight = measure_request({"QUERY_IMAGES": [solid_png(100, 100)]}, None, config)
    assert eight.decoded_bytes == 3 * eight.pixels


def test_labels_times_pixels_are_a_budget() -> None:
    config = ServiceConfig()
    # one query of the largest size with every label always fits; so does whatever fits
    # one answer (what the client library splits calls by)
    assert config.max_label_pixels >= config.max_image_pixels * config.max_labels
    assert config.max_label_pixels == config.max_answer_bytes * config.max_labels
    check_mask_work(7000 * 7000, 64, config, "QUERY_IMAGES")
    small = dataclasses.replace(config, max_label_pixels=10_000 * 3)
    blobs = {"QUERY_IMAGES": [solid_png(100, 100)]}
    assert measure_request(blobs, None, small, "QUERY_IMAGES", labels=3).answer_pixels == 10_000
    with pytest.raises(BudgetError, match=r"QUERY_IMAGES: masks of 0\.0 MP of queries x 4 "
                                          r"labels = 0\.00 G label-pixels; the limit is") as err:
        check_request(blobs, None, small, queries="QUERY_IMAGES", labels=4)
    assert err.value.reason is Reason.PIXEL_BUDGET


def test_in_process_sessions_count_labels_times_pixels(exported_repo) -> None:
    from sst.export.meta import load_meta
    from sst.tracker.engine import Engine
    from sst.tracker.null_backend import NullBackend
    from sst.tracker.serving.sessions import Request, SessionManager

    img, mask = specimen(0, size=(60, 80))  # 3 labels
    query = specimen(1, size=(60, 80))[0]
    limits = ServiceConfig(max_label_pixels=3 * 4800 * 2)  # two queries' worth
    mgr = SessionManager(Engine(NullBackend(load_meta(exported_repo))), limits)
    out = mgr.run([Request(session_id=5, start=True, supports=[(img, mask)], queries=[query] * 3),
                   Request(session_id=6, start=True, supports=[(img, mask)], queries=[query] * 2)])
    assert isinstance(out[0], BudgetError) and "x 3 labels" in str(out[0])
    assert not isinstance(out[1], Exception)
    assert 5 not in mgr and 6 in mgr and mgr.label_count(6) == 3  # the refused START holds nothing
    out = mgr.run([Request(session_id=6, queries=[query] * 3),
                   Request(session_id=6, queries=[query])])
    assert isinstance(out[0], BudgetError) and not isinstance(out[1], Exception)


# ----------------------------------------------------------------------------- pages


def test_the_server_refuses_a_stack_naming_its_pages() -> None:
    stack = _tiff(np.zeros((3, 20, 30), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match=r"QUERY_IMAGES\[1\]: a file of 3 pages; the server "
                                         r"reads one image per entry.*--pages"):
        check_request({"QUERY_IMAGES": [solid_png(30, 20), stack]}, None, ServiceConfig())
    with pytest.raises(InputError, match="a file of 3 pages"):
        read_images([stack], "SUPPORT_IMAGES", ServiceConfig())


def test_pages_are_counted_up_to_a_bound(tmp_path: Path) -> None:
    path = tmp_path / "many.tif"
    with tifffile.TiffWriter(path) as tif:
        for _ in range(40):
            tif.write(np.zeros((8, 8), np.uint8), photometric="minisblack")
    assert sio.page_count(path) == 40 and sio.page_count(path, bound=5) == 6
    assert read_header(path.read_bytes(), "many", page_bound=5).pages == 6
    assert read_header(path.read_bytes(), "many").pages == 40
    assert MAX_PAGES == 1000


def test_segment_caps_the_pages_of_one_file(tmp_path: Path) -> None:
    stack = np.random.default_rng(0).integers(0, 4096, (6, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "st.tif", stack, photometric="minisblack")
    with pytest.raises(InputError, match=r"st\.tif: has more than 5 pages, each a query; the "
                                         r"limit is 5 pages per file \(--max-pages\)"):
        QueryReader(max_pages=5).expand([tmp_path / "st.tif"])
    chosen = QueryReader(pages=[0, 4], max_pages=5).expand([tmp_path / "st.tif"])
    assert [p.name for p in chosen] == ["st_p0.tif", "st_p4.tif"]
    with pytest.raises(InputError, match=r"3 pages chosen \(--pages\)"):
        QueryReader(pages=[0, 1, 2], max_pages=2).expand([tmp_path / "st.tif"])
    assert len(QueryReader(max_pages=6).expand([tmp_path / "st.tif"])) == 6
    with pytest.raises(InputError, match="--max-pages"):
        QueryReader(max_pages=0)


def test_a_support_is_one_image(tmp_path: Path) -> None:
    """Which page of a stack a support would be is a guess (the server refuses the file):
    ``sst segment`` and ``sst watch`` refuse it, naming the pages."""
    from sst.client.segment_cli import load_supports

    img, mask = specimen(0, size=(40, 50))
    tifffile.imwrite(tmp_path / "s.tif", np.stack([img, img]), photometric="rgb")
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(InputError, match=r"s\.tif: has 2 pages; a support image is one image"):
        load_supports([(tmp_path / "s.tif", tmp_path / "m.png")])
    tifffile.imwrite(tmp_path / "one.tif", img, photometric="rgb")
    assert len(load_supports([(tmp_path / "one.tif", tmp_path / "m.png")]).supports) == 1


def test_segment_cli_has_a_page_cap_flag(tmp_path: Path, capsys) -> None:
    from sst.client.cli import main

    img, mask = specimen(0, size=(40, 50))
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    (tmp_path / "q").mkdir()
    tifffile.imwrite(tmp_path / "q" / "st.tif", np.zeros((4, 40, 50), np.uint8),
                     photometric="minisblack")
    args = ["segment", "--support", str(tmp_path / "s.png"), "--support-mask",
            str(tmp_path / "m.png"), "--queries", str(tmp_path / "q"), "--out",
            str(tmp_path / "out"), "--no-progress", "--server", "127.0.0.1:1"]
    assert main([*args, "--max-pages", "0"]) != 0
    assert "--max-pages: expected a number of pages >= 1, got 0" in capsys.readouterr().err
    assert main([*args, "--max-pages", "3"]) != 0  # refused before any server is called
    assert "st.tif: has more than 3 pages" in capsys.readouterr().err


def test_watch_makes_each_page_a_query_and_caps_them(tmp_path: Path) -> None:
    from sst.client import Client
    from sst.client.watch import JOURNAL, run_watch

    from .fakes import FakeClock, FakeServer, FakeTransport, image, mask, png

    (tmp_path / "support.png").write_bytes(png(image(0)))
    (tmp_path / "mask.png").write_bytes(png(mask()))
    folder = tmp_path / "rig"
    folder.mkdir()
    stack = np.random.default_rng(1).integers(0, 4096, (3, 24, 32), dtype=np.uint16)
    tifffile.imwrite(folder / "plate.tif", stack, photometric="minisblack")
    tifffile.imwrite(folder / "big.tif", np.zeros((5, 24, 32), np.uint8),
                     photometric="minisblack")
    server, clock = FakeServer(), FakeClock()
    tifffile.imwrite(tmp_path / "stack_support.tif", np.zeros((2, 24, 32), np.uint8),
                     photometric="minisblack")
    with pytest.raises(InputError, match="has 2 pages; a support image is one image"):
        run_watch(Client("fake:0", transport=FakeTransport(server)), folder,
                  [(tmp_path / "stack_support.tif", tmp_path / "mask.png")], tmp_path / "o2",
                  once=True)
    with Client("fake:0", transport=FakeTransport(server), clock=clock,
                sleep=clock.sleep) as client:
        run_watch(client, folder, [(tmp_path / "support.png", tmp_path / "mask.png")],
                  tmp_path / "out", clock=clock, sleep=clock.sleep, poll=0.5, settle=1.0,
                  decode_grace=2.0, once=True, max_pages=4)
    sent = [bytes(q) for c in server.calls if c.kind == "QUERY" for q in c.inputs["QUERY_IMAGES"]]
    assert len(sent) == 3  # the three pages of plate.tif, none of big.tif
    for page, blob in enumerate(sent):
        np.testing.assert_array_equal(tifffile.imread(io.BytesIO(blob)), stack[page])
    out = tmp_path / "out"
    assert all((out / f"plate_p{i}.png").is_file() for i in range(3))
    sidecar = json.loads((out / "plate.json").read_text())
    assert [p["output"] for p in sidecar["pages"]] == ["plate_p0", "plate_p1", "plate_p2"]
    journal = {e["name"]: e["status"] for e in
               map(json.loads, (out / JOURNAL).read_text().splitlines())}
    assert journal["plate.tif"] == "ok"
    assert "has more than 4 pages" in journal["big.tif"] and "--max-pages" in journal["big.tif"]


# ----------------------------------------------------------------------------- the orchestrator


def test_the_orchestrator_checks_labels_before_decoding_queries(pb, exported_repo,  # noqa: F811
                                                                monkeypatch) -> None:
    from sst.model_repository import orchestrator

    img, mask = specimen(0, size=(60, 80))  # 3 labels
    sup, msk = _png(img), _png(mask)
    query = _png(specimen(1, size=(60, 80))[0])
    read: list[str] = []
    real = orchestrator.read_images

    def counted(blobs, field, *args, **kwargs):
        read.append(field)
        return real(blobs, field, *args, **kwargs)

    monkeypatch.setattr(orchestrator, "read_images", counted)
    model = _model(pb, exported_repo)
    try:
        model.limits = dataclasses.replace(model.limits, max_label_pixels=3 * 4800 * 2)
        batch = [_stateless(21, sup, msk, [query] * 3)]
        model.execute(batch)
        over = batch[0].response()
        assert over.error is not None and "x 3 labels" in over.error.message()
        assert "QUERY_IMAGES" not in read  # refused before its queries were decoded
        start = _Request(22, True, False, SUPPORT_IMAGES=[sup], SUPPORT_MASKS=[msk])
        model.execute([start])
        assert start.response().error is None
        read.clear()
        later = [_Request(22, False, False, QUERY_IMAGES=[query] * 3)]
        model.execute(later)
        assert "x 3 labels" in later[0].response().error.message() and not read
        stack = _tiff(np.zeros((2, 60, 80), np.uint8), photometric="minisblack")
        pages = [_Request(22, False, False, QUERY_IMAGES=[stack])]
        model.execute(pages)
        assert "a file of 2 pages" in pages[0].response().error.message()
        crafted = [_stateless(23, sup, msk, [crafted_tiffs()["samples20_uint16"]])]
        model.execute(crafted)
        assert "20 samples per pixel" in crafted[0].response().error.message()
    finally:
        model.finalize()


# ----------------------------------------------------------------------------- intensity


def test_intensity_errors_quote_a_short_prefix_and_ranges_fit_float32() -> None:
    with pytest.raises(InputError) as err:
        Intensity.parse("x" * 10_000, field="INTENSITY")
    assert len(str(err.value)) < 200 and "(10,000 characters)" in str(err.value)
    for bad in ("range:-1e308,1e308", "range:0,1e39", "range:-3e38,3e38", "range:nan,1"):
        with pytest.raises(InputError, match="finite in float32"):
            Intensity.parse(bad)
    with pytest.raises(InputError, match=r"LO < HI \(in float32\)"):
        Intensity.parse("range:1,1.00000001")
    assert Intensity.parse("range:0,65535") == Intensity("range", 0.0, 65535.0)


def test_the_decode_budget_benchmark_reports_the_crafted_tiffs(tmp_path: Path) -> None:
    from sst.benchmarks.decode_budget import main

    assert main(["--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets_met"] is True
    assert set(report["crafted_tiffs"]) == {"depth100", "samples20_uint16", "samples8_float64"}
    assert all(row["server"]["answer"].startswith("refused")
               for row in report["crafted_tiffs"].values())
