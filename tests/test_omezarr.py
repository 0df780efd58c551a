"""OME-Zarr output: each query an OME-Zarr image with its labels and image-label
metadata, read back with the ome-zarr library's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.client.cli import main
from sst.tracker.io import label_palette
from sst.tracker.io.omezarr import read_query_zarr, write_query_zarr

from .synthetic import specimen


def test_round_trip_through_the_ome_zarr_reader(tmp_path: Path) -> None:
    img, _ = specimen(3, size=(60, 80))
    mask = np.zeros((60, 80), np.uint16)
    mask[5:20, 10:30] = 2
    mask[30:50, 40:70] = 300  # a label past 255: the label image stays uint16
    scores = [{"label": 2, "area": 300, "object_score": 4.5, "iou": 0.8},
              {"label": 300, "area": 600, "object_score": 1.25, "iou": 0.7}]
    path = write_query_zarr(tmp_path / "z" / "q1.ome.zarr", img, mask, [2, 7, 300],
                            {2: "head", 7: "leg", 300: "elytra"}, scores, {2: 0.9, 300: 0.4},
                            {"query": "q1.png", "metadata": {"position": [1.5, 2.0]}})
    back = read_query_zarr(path)
    np.testing.assert_array_equal(back["image"], img)
    np.testing.assert_array_equal(back["mask"], mask)
    assert back["mask"].dtype == np.uint16
    assert sorted(back["properties"]) == [2, 7, 300]
    assert back["properties"][2] == {"name": "head", "area": 300, "object_score": 4.5,
                                     "iou": 0.8, "quality": 0.9}
    assert back["properties"][7] == {"name": "leg"}  # absent from this query
    palette = label_palette(301)
    assert back["colors"][300] == pytest.approx([c / 255 for c in palette[300][:3]] + [1.0])
    assert back["attrs"] == {"query": "q1.png", "metadata": {"position": [1.5, 2.0]}}
    meta = json.loads((path / "labels" / "sst" / "zarr.json").read_text())
    assert meta["attributes"]["ome"]["version"] == "0.5"
    assert meta["attributes"]["ome"]["image-label"]["source"] == {"image": "../../"}
    # writing again replaces it whole and leaves no temporary folder
    write_query_zarr(path, img, np.zeros_like(mask), [2], {2: "head"})
    assert not read_query_zarr(path)["mask"].any()
    assert [p.name for p in (tmp_path / "z").iterdir()] == ["q1.ome.zarr"]


@pytest.mark.slow
def test_segment_writes_one_ome_zarr_per_query(tmp_path: Path, exported_repo) -> None:
    sup, mask = specimen(0)
    Image.fromarray(sup).save(tmp_path / "support.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "q").mkdir()
    for i in (1, 2):
        Image.fromarray(specimen(20 + i)[0]).save(tmp_path / "q" / f"spec{i}.jpg")
    out = tmp_path / "out"
    assert main(["segment", "--support", str(tmp_path / "support.png"), "--support-mask",
                 str(tmp_path / "mask.png"), "--queries", str(tmp_path / "q"), "--out",
                 str(out), "--model-dir", str(exported_repo), "--format", "png,json,ome-zarr",
                 "--label-names", "1=head,2=pronotum,3=elytra", "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    for i in (1, 2):
        back = read_query_zarr(out / "ome-zarr" / f"spec{i}.ome.zarr")
        with Image.open(out / f"spec{i}.png") as png:
            np.testing.assert_array_equal(back["mask"], np.asarray(png))
        with Image.open(tmp_path / "q" / f"spec{i}.jpg") as jpg:
            np.testing.assert_array_equal(back["image"], np.asarray(jpg.convert("RGB")))
        assert {k: v["name"] for k, v in back["properties"].items()} == {
            1: "head", 2: "pronotum", 3: "elytra"}
        areas = {r["label"]: r["area"] for r in rows if r["query"] == f"spec{i}.jpg"}
        assert {k: v["area"] for k, v in back["properties"].items()} == areas
        assert back["attrs"] == {"query": f"spec{i}.jpg"}
