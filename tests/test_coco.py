"""COCO in and out, YOLO-seg polygons, label names and the output-folder checks of
``sst segment``."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from sst.client.cli import main
from sst.tracker import io as sio
from sst.tracker.errors import InputError
from sst.tracker.io import coco, outputs, yolo

from .synthetic import specimen


def _coco_masks(path: Path) -> dict[str, np.ndarray]:
    """file_name -> label mask painted from a COCO file's annotations (pycocotools)."""
    api = COCO(os.fspath(path))
    out = {}
    for img in api.dataset["images"]:
        mask = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in api.loadAnns(api.getAnnIds(imgIds=[img["id"]])):
            mask[api.annToMask(ann).astype(bool)] = ann["category_id"]
        out[img["file_name"]] = mask
    return out


def _rle(binary: np.ndarray, compressed: bool) -> dict:
    if compressed:
        r = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
        return {"size": r["size"], "counts": r["counts"].decode("ascii")}
    # COCO's uncompressed RLE: run lengths over the column-major pixels, starting with 0s
    flat = binary.astype(bool).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    counts = [0, *runs] if flat[0] else runs
    return {"size": list(binary.shape), "counts": counts}


def _write_coco(path: Path, images: list[dict], anns: list[dict], cats: dict[int, str]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": k, "name": v} for k, v in cats.items()]}))
    return path


# --------------------------------------------------------------------------- label names


def test_label_names_from_text_and_json(tmp_path):
    assert coco.parse_label_names("1=head, 2=pronotum,255=elytra") == {
        1: "head", 2: "pronotum", 255: "elytra"}
    (tmp_path / "a.json").write_text('{"1": "head", "3": "elytra"}')
    assert coco.parse_label_names(tmp_path / "a.json") == {1: "head", 3: "elytra"}
    (tmp_path / "b.json").write_text('[{"id": 2, "name": "pronotum"}]')
    assert coco.parse_label_names(tmp_path / "b.json") == {2: "pronotum"}
    (tmp_path / "c.json").write_text('{"categories": [{"id": 4, "name": "antenna"}]}')
    assert coco.parse_label_names(tmp_path / "c.json") == {4: "antenna"}
    assert coco.names_for([1, 2, 7], {1: "head", 9: "x"}) == {
        1: "head", 2: "label_2", 7: "label_7"}


@pytest.mark.parametrize("spec, words", [
    ("1=head,x=eye", ["'x'", "not an integer"]),
    ("0=background", ["outside 1..65535"]),
    ("1=head,2=head", ["labels 1 and 2", "'head'"]),
    ("head", ["expected VALUE=NAME"]),
    ("missing.json", ["missing.json", "not found"]),
])
def test_label_names_errors(spec, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        coco.parse_label_names(spec)
    for w in words:
        assert w in str(err.value)


# --------------------------------------------------------------------------- COCO out


def test_coco_annotations_decode_to_the_label_mask(tmp_path):
    _, mask = specimen(3)
    mask = mask.astype(np.uint16)
    mask[mask == 3] = 300  # a 16-bit label too
    labels = [1, 2, 300, 9]  # 9: absent -> an empty annotation
    anns = coco.coco_annotations(mask, labels, image_id=1, first_id=1,
                                 scores={1: 0.5, 2: None, 300: 0.25, 9: 0.0})
    doc = coco.coco_document([coco.coco_image(1, "q.png", *mask.shape)], anns,
                             {1: "head", 2: "pronotum", 300: "elytra", 9: "leg"})
    sio.save_json(tmp_path / "annotations.json", doc)
    api = COCO(os.fspath(tmp_path / "annotations.json"))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["head", "pronotum", "leg",
                                                                  "elytra"]
    got = {a["category_id"]: a for a in api.loadAnns(api.getAnnIds())}
    assert sorted(got) == [1, 2, 9, 300]
    for lab, a in got.items():
        assert np.array_equal(api.annToMask(a).astype(bool), mask == lab)
        assert a["area"] == int((mask == lab).sum())
        assert isinstance(a["segmentation"]["counts"], str)
    ys, xs = np.nonzero(mask == 1)
    assert got[1]["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                              ys.max() - ys.min() + 1]
    assert got[1]["score"] == 0.5 and "score" not in got[2] and got[9]["area"] == 0


# --------------------------------------------------------------------------- COCO in


def test_coco_supports_from_polygons_and_rle(tmp_path):
    img, mask = specimen(0)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(specimen(1)[0]).save(tmp_path / "b.png")
    h, w = mask.shape
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(mask == 1, True)},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _rle(mask == 2, False)},
        {"id": 3, "image_id": 1, "category_id": 3, "segmentation": _rle(mask == 3, True)},
        # a second support (k-shot): a square polygon of label 2
        {"id": 4, "image_id": 2, "category_id": 2,
         "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]]},
    ]
    path = _write_coco(tmp_path / "sup.json", [
        {"id": 1, "file_name": "a.png", "width": w, "height": h},
        {"id": 2, "file_name": "b.png", "width": w, "height": h}], anns,
        {1: "head", 2: "pronotum", 3: "elytra"})
    sups, names = coco.load_coco_supports(path)
    assert names == {1: "head", 2: "pronotum", 3: "elytra"}
    assert [s.path.name for s in sups] == ["a.png", "b.png"]
    assert np.array_equal(sups[0].image, img) and np.array_equal(sups[0].mask, mask)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        [[10, 10, 50, 10, 50, 40, 10, 40]], h, w))).astype(bool)
    assert np.array_equal(sups[1].mask == 2, expected) and set(np.unique(sups[1].mask)) == {0, 2}
    assert 1100 < expected.sum() < 1300  # ~40 x 30 pixels


@pytest.fixture()
def coco_dir(tmp_path):
    img, mask = specimen(0)
    Image.fromarray(img).save(tmp_path / "a.png")
    return tmp_path, mask


def _bad(tmp_path, images, anns, cats, images_dir=None):
    path = _write_coco(tmp_path / "bad.json", images, anns, cats)
    with pytest.raises(InputError) as err:
        coco.load_coco_supports(path, images_dir)
    assert "bad.json" in str(err.value)
    return str(err.value)


def test_bad_coco_inputs_are_clear(coco_dir):
    root, mask = coco_dir
    h, w = mask.shape
    seg = _rle(mask == 1, True)
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg}
    img = {"id": 1, "file_name": "a.png", "width": w, "height": h}
    msg = _bad(root, [{**img, "file_name": "nope.png"}], [ann], {1: "head"})
    assert "'nope.png' not found" in msg
    (root / "x").mkdir()
    (root / "y").mkdir()
    Image.fromarray(specimen(0)[0]).save(root / "x" / "s.png")
    Image.fromarray(specimen(0)[0]).save(root / "y" / "s.png")
    msg = _bad(root, [{**img, "file_name": "s.png"}], [ann], {1: "head"})
    assert "ambiguous" in msg and "2 files named 's.png'" in msg
    msg = _bad(root, [img, {**img, "id": 2}], [ann], {1: "head"})
    assert "images 1 and 2 are both 'a.png'" in msg
    msg = _bad(root, [img], [ann], {1: "head", 2: "pronotum"})
    assert "category 2 ('pronotum') has no pixels" in msg
    msg = _bad(root, [img], [{**ann, "segmentation": _rle(np.zeros_like(mask, bool), True)}],
               {1: "head"})
    assert "category 1 ('head') has no pixels" in msg
    msg = _bad(root, [img], [{**ann, "category_id": 7}], {1: "head"})
    assert "category_id 7 is not in categories" in msg
    msg = _bad(root, [{**img, "width": w + 1}], [ann], {1: "head"})
    assert f"is {w}x{h} but the COCO file says {w + 1}x{h}" in msg
    msg = _bad(root, [img], [{**ann, "segmentation": [[1, 2, 3]]}], {1: "head"})
    assert "annotation 1" in msg and "3 points or more" in msg
    msg = _bad(root, [img], [{**ann, "segmentation": {"size": [5, 5], "counts": [25]}}],
               {1: "head"})
    assert "RLE size is [5, 5]" in msg
    (root / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        coco.load_coco_supports(root / "bad.json")
    # --images-dir: looked up there, not next to the COCO file
    path = _write_coco(root / "ok.json", [img], [ann], {1: "head"})
    with pytest.raises(InputError, match="'a.png' not found"):
        coco.load_coco_supports(path, root / "x")
    assert coco.load_coco_supports(path, root)[0][0].path == root / "a.png"


def test_cli_reports_bad_coco_without_traceback(coco_dir, capsys):
    root, mask = coco_dir
    h, w = mask.shape
    path = _write_coco(root / "c.json", [{"id": 1, "file_name": "gone.png"}],
                       [{"id": 1, "image_id": 1, "category_id": 1,
                         "segmentation": _rle(mask == 1, True)}], {1: "head"})
    rc = main(["segment", "--support-coco", str(path), "--queries", str(root / "a.png"),
               "--out", str(root / "o"), "--model-dir", str(root), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "c.json" in err and "'gone.png' not found" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- YOLO


def _shapes() -> dict[str, np.ndarray]:
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    ellipse = ((yy - 120) / 70.0) ** 2 + ((xx - 150) / 110.0) ** 2 <= 1
    c, s = np.cos(0.5), np.sin(0.5)
    u, v = (xx - 160) * c + (yy - 120) * s, -(xx - 160) * s + (yy - 120) * c
    rotated = (np.abs(u) < 90) & (np.abs(v) < 25)
    ang = np.arctan2(yy - 120, xx - 160)
    star = np.hypot(yy - 120, xx - 160) < 60 + 35 * np.cos(5 * ang)
    pieces = np.zeros((h, w), bool)
    pieces[20:60, 20:90] = True
    pieces[150:220, 200:230] = True
    pieces[100:104, 40:300] = True  # a 4-px-wide bar
    return {"ellipse": ellipse, "rotated": rotated, "star": star, "pieces": pieces}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("name", ["ellipse", "rotated", "star", "pieces"])
def test_yolo_polygons_fill_back(name):
    shape = _shapes()[name]
    mask = shape.astype(np.uint8) * 5
    lines = yolo.yolo_lines(mask, [5])
    assert all(line.startswith("0 ") for line in lines)
    assert len(lines) == int(ndimage.label(shape)[1])  # one polygon per component
    coords = np.array([float(v) for line in lines for v in line.split()[1:]])
    assert coords.min() >= 0 and coords.max() <= 1
    back = yolo.rasterise_polygons(lines, *mask.shape, 1)[0]
    assert _iou(back, shape) >= 0.95, name


def test_yolo_on_real_beetle_masks(beetle_masks):
    paths = sorted(beetle_masks.rglob("*.png"))[::12]
    assert paths
    for p in paths:
        mask = sio.load_mask(p)
        labels = sio.mask_labels(mask)
        back = yolo.rasterise_polygons(yolo.yolo_lines(mask, labels), *mask.shape, len(labels))
        for k, lab in enumerate(labels):
            # holes cannot be drawn in YOLO-seg: compare with the hole-filled part
            assert _iou(back[k], ndimage.binary_fill_holes(mask == lab)) >= 0.95, (p, lab)


def test_data_yaml_names_in_sorted_label_order(tmp_path):
    import yaml

    yolo.save_data_yaml(tmp_path / "data.yaml", {3: "elytra", 1: "head", 2: "pronotum"})
    doc = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert doc == {"nc": 3, "names": {0: "head", 1: "pronotum", 2: "elytra"},
                   "sst_labels": {0: 1, 1: 2, 2: 3}}


# --------------------------------------------------------------------------- output folder


def test_unwritable_out_is_one_clear_message(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    img, mask = specimen(0)
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    args = ["segment", "--support", str(tmp_path / "s.png"), "--support-mask",
            str(tmp_path / "m.png"), "--queries", str(tmp_path / "s.png"),
            "--model-dir", str(tmp_path / "no-model"), "--no-progress"]
    # checked before the model is even opened (no-model does not exist)
    rc = main(args + ["--out", str(tmp_path / "file" / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "file/out" in err and "cannot write there" in err

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    rc = main(args + ["--out", str(tmp_path / "full")])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on the device" in err and err.count("\n") == 1
    assert not list((tmp_path / "full").iterdir())  # the probe is removed


def test_write_errors_become_input_errors(tmp_path):
    with pytest.raises(InputError, match="x.png: cannot write output: no space left"):
        with outputs.write_errors(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))


# --------------------------------------------------------------------------- end to end


@pytest.fixture()
def coco_folder(tmp_path):
    """support.png + mask.png (labels 1, 2, 3), the same support as sup.json (compressed
    RLE, named categories) and two queries of different sizes."""
    img, mask = specimen(0)
    Image.fromarray(img).save(tmp_path / "support.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    h, w = mask.shape
    _write_coco(tmp_path / "sup.json", [{"id": 5, "file_name": "support.png", "width": w,
                                         "height": h}],
                [{"id": k, "image_id": 5, "category_id": k,
                  "segmentation": _rle(mask == k, True)} for k in (1, 2, 3)],
                {1: "head", 2: "pronotum", 3: "elytra"})
    q = tmp_path / "queries"
    q.mkdir()
    Image.fromarray(specimen(31, shift=0.05)[0]).save(q / "q1.png")
    Image.fromarray(specimen(32, size=(200, 260))[0]).save(q / "q2.png")
    return tmp_path


def _check_coco_run(out: Path, reference: Path, names: list[str], with_quality: bool) -> None:
    decoded = _coco_masks(out / "annotations.json")
    assert sorted(decoded) == ["q1.png", "q2.png"]
    for name, mask in decoded.items():
        stem = Path(name).stem
        assert np.array_equal(mask, sio.load_mask(reference / f"{stem}.png"))
        assert np.array_equal(mask, sio.load_mask(out / f"{stem}.png"))
        lines = (out / "labels" / f"{stem}.txt").read_text().splitlines()
        back = yolo.rasterise_polygons(lines, *mask.shape, 3)
        for k, lab in enumerate((1, 2, 3)):
            if (mask == lab).sum() > 500:  # whole parts; specks may be dropped
                assert _iou(back[k], ndimage.binary_fill_holes(mask == lab)) >= 0.9
    doc = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in doc["categories"]] == names
    assert all(("score" in a) == with_quality for a in doc["annotations"])
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].endswith(",name,quality") and rows[1].split(",")[6] == names[0]
    assert (out / "review.csv").is_file() == with_quality
    assert not list(out.rglob(".*"))  # no temp files left behind


@pytest.mark.slow
def test_coco_round_trip_matches_label_png_path(coco_folder, exported_repo, capsys):
    """COCO file -> --support-coco -> --format coco decodes (pycocotools) to exactly the
    label PNGs of the same support given as --support/--support-mask."""
    root = coco_folder
    common = ["--queries", str(root / "queries"), "--model-dir", str(exported_repo),
              "--mode", "independent", "--no-progress"]
    assert main(["segment", "--support", str(root / "support.png"), "--support-mask",
                 str(root / "mask.png"), "--out", str(root / "png"), "--format", "png"]
                + common) == 0
    assert main(["segment", "--support-coco", str(root / "sup.json"), "--out",
                 str(root / "coco"), "--format", "png,overlay,json,coco,yolo", "--quality",
                 "--label-names", "3=wings"] + common) == 0
    assert "quality scores took" in capsys.readouterr().out
    _check_coco_run(root / "coco", root / "png", ["head", "pronotum", "wings"], True)
    with Image.open(root / "coco" / "overlay" / "q2.png") as ov:  # legend strip below
        assert ov.size[0] == 260 and ov.size[1] > 200
    doc = json.loads((root / "coco" / "annotations.json").read_text())
    results = json.loads((root / "coco" / "results.json").read_text())
    quality = {(r["query"], r["label"]): r["quality"] for r in results["results"]}
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    for a in doc["annotations"]:
        assert a["score"] == pytest.approx(quality[(files[a["image_id"]], a["category_id"])])
    yaml_text = (root / "coco" / "data.yaml").read_text()
    assert "0: head" in yaml_text and "2: wings" in yaml_text


class _InProcessServer:
    """Stands in for :class:`sst.client.Client`: decodes the bytes it is sent as the
    server does and answers with the embedded tracker's results."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.supports_seen: list[np.ndarray] = []

    def segment_folder(self, sup, msk, queries, inflight, batch, quality=False):
        from sst.client import FrameResult
        from sst.tracker.quality import quality_scores

        pairs = [(sio.load_image_bytes(s), sio.load_mask_bytes(m))
                 for s, m in zip(sup, msk)]
        self.supports_seen = [m for _, m in pairs]
        for key, load in queries:
            img = sio.load_image_bytes(load())
            res = self.tracker.segment(pairs, [img], mode="independent")[0]
            q = None
            if quality:
                (by_label,) = quality_scores(self.tracker, pairs, [img], [res.mask])
                q = np.asarray([by_label[lab] for lab in res.labels], np.float32)
            yield key, FrameResult(res.labels, res.mask, res.object_scores, res.ious,
                                   quality=q)


@pytest.mark.slow
def test_server_path_writes_coco_with_the_servers_scores(coco_folder, exported_repo):
    """The --server path: supports from a COCO file are sent as label PNGs, the answers
    become annotations.json, scored by the quality the server answers."""
    from sst.client.segment_cli import run_segment
    from sst.tracker.backends import OrtBackend
    from sst.tracker.tracker import Tracker

    root = coco_folder
    tracker = Tracker(OrtBackend(exported_repo))
    assert main(["segment", "--support", str(root / "support.png"), "--support-mask",
                 str(root / "mask.png"), "--out", str(root / "png"), "--format", "png",
                 "--queries", str(root / "queries"), "--model-dir", str(exported_repo),
                 "--mode", "independent", "--no-progress"]) == 0
    server = _InProcessServer(tracker)
    summary = run_segment(None, [], root / "queries", root / "srv", mode="independent",
                          formats=["png", "json", "coco", "yolo"], progress=False,
                          client=server, support_coco=root / "sup.json", quality=True)
    assert summary.ok and summary.processed == 2
    assert np.array_equal(server.supports_seen[0], sio.load_mask(root / "mask.png"))
    _check_coco_run(root / "srv", root / "png", ["head", "pronotum", "elytra"], True)


@pytest.mark.slow
def test_disk_full_mid_run_is_one_clear_error(coco_folder, exported_repo, capsys, monkeypatch):
    """A write that fails after the work started (here: the second query's YOLO file)
    stops the run with one line naming the file, exit status 2."""
    real = yolo.save_yolo_txt
    calls = []

    def fill_up(path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(yolo, "save_yolo_txt", fill_up)
    rc = main(["segment", "--support-coco", str(coco_folder / "sup.json"), "--queries",
               str(coco_folder / "queries"), "--out", str(coco_folder / "out"),
               "--model-dir", str(exported_repo), "--format", "png,yolo", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "q2.txt: cannot write output: no space left on the device" in err
    assert (coco_folder / "out" / "labels" / "q1.txt").is_file()
