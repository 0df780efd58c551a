"""``sst demo``: the bundled specimens (licensed, small, rebuilt bit for bit by their
generator), which weights it takes (the checkpoint; random ones only behind a flag), and
a whole offline run from an empty cache writing every output format and the review page."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from sst.client import demo
from sst.client.demo_data import (
    DEMO_DIR,
    LABEL_NAMES,
    QUERIES,
    SUPPORT,
    build,
    demo_files,
    paint_specimen,
)
from sst.client.segment_outputs import FORMATS
from sst.tracker import io as sio
from sst.tracker.errors import ModelError


def test_bundled_data_is_small_licensed_and_rebuilds_exactly(tmp_path):
    files = demo_files()
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total <= 2 * 1024 * 1024, f"demo data is {total} bytes"
    assert "MIT" in (DEMO_DIR / "ATTRIBUTION.md").read_text()
    assert "Imageomics Institute" in (DEMO_DIR / "LICENSE").read_text()
    assert files.support.stem == SUPPORT and [p.stem for p in files.queries] == list(QUERIES)
    (tmp_path / "masks").mkdir()
    for p in [files.support_mask, *files.truth]:
        (tmp_path / "masks" / p.name).write_bytes(p.read_bytes())
    rebuilt = build(tmp_path)
    for path in rebuilt:
        shipped = np.asarray(Image.open(DEMO_DIR / "images" / path.name))
        again = np.asarray(Image.open(path))
        mask = sio.load_mask(DEMO_DIR / "masks" / path.name)
        assert shipped.shape == mask.shape + (3,)
        np.testing.assert_array_equal(again, shipped, err_msg=path.name)
        assert set(np.unique(mask)) == {0, *LABEL_NAMES}


def test_paint_specimen_gives_each_part_its_own_look():
    mask = sio.load_mask(demo_files().support_mask)
    img = paint_specimen(mask, seed=0).astype(float)
    means = {lab: img[mask == lab].mean(axis=0) for lab in (0, *LABEL_NAMES)}
    for a in means:
        for b in means:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 8, (a, b, means[a], means[b])
    assert not np.array_equal(paint_specimen(mask, 1), paint_specimen(mask, 0))


def test_which_weights(monkeypatch, tmp_path):
    """The checkpoint when it can be had; random weights only with --random-weights, or
    with --random-weights-if-offline when it cannot; otherwise an error naming the flag."""
    calls = []

    def resolve(model, size, **kw):
        calls.append(kw)
        return tmp_path / "export"

    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    monkeypatch.setattr(demo, "resolve_model_dir", resolve)
    monkeypatch.setattr(demo, "ensure_checkpoint", lambda model, given: ckpt)
    assert demo.demo_model_dir("sam2.1_hiera_tiny", 512) == (tmp_path / "export", False)
    assert calls[-1] == {"checkpoint": ckpt}
    assert demo.demo_model_dir("sam2.1_hiera_tiny", 512, random_if_offline=True)[1] is False
    assert demo.demo_model_dir("m", 512, random_weights=True, seed=3)[1] is True
    assert calls[-1] == {"random_weights": True, "seed": 3}
    assert demo.demo_model_dir("m", 512, model_dir=tmp_path) == (tmp_path, False)

    def offline(model, given):
        raise ModelError("checkpoint x.pt could not be downloaded")

    monkeypatch.setattr(demo, "ensure_checkpoint", offline)
    with pytest.raises(ModelError, match="--random-weights-if-offline"):
        demo.demo_model_dir("sam2.1_hiera_tiny", 512)
    with pytest.raises(ModelError, match="could not be downloaded"):  # a given file: no fallback
        demo.demo_model_dir("m", 512, checkpoint=ckpt, random_if_offline=True)
    assert demo.demo_model_dir("m", 512, random_if_offline=True) == (tmp_path / "export", True)
    assert calls[-1] == {"random_weights": True, "seed": 0}


def _offline_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    return {**os.environ, "SST_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
            "SST_CHECKPOINT_BASE_URL": (tmp_path / "no-such-mirror").as_uri(),
            "SST_CACHE": str(tmp_path / "cache")}


def test_offline_without_the_flag_says_what_to_do(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sst.client.cli", "demo", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True,
                         env=_offline_env(tmp_path), timeout=120)
    assert res.returncode == 2, res.stderr
    assert "sam2.1_hiera_tiny.pt" in res.stderr and "--random-weights-if-offline" in res.stderr
    assert not (tmp_path / "cache").exists()  # nothing exported


@pytest.mark.slow
def test_demo_offline_from_an_empty_cache(tmp_path):
    """What the README's first command does on a fresh offline machine: every output,
    loudly marked as coming from random weights."""
    out = tmp_path / "out"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sst.client.cli", "demo", "--out", str(out),
                          "--random-weights-if-offline", "--no-progress"],
                         capture_output=True, text=True, env=_offline_env(tmp_path),
                         timeout=900)
    seconds = time.perf_counter() - t0
    print(f"sst demo, offline, empty cache: {seconds:.1f}s")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("RANDOM WEIGHTS") >= 2 and "going on with RANDOM WEIGHTS" in res.stderr
    assert f"review page  {(out / 'review.html').as_uri()}" in res.stdout
    assert re.search(r"segmented 7 beetle picture\(s\).*\(0 failed\)", res.stdout)

    files = demo_files()
    names = [p.name for p in files.queries]
    for q in files.queries:
        with Image.open(q) as im:
            size = im.size
        with Image.open(out / f"{q.stem}.png") as lab:
            assert lab.size == size
            assert set(np.unique(np.asarray(lab))) <= {0, *LABEL_NAMES}
        with Image.open(out / "overlay" / f"{q.stem}.png") as ov:
            assert ov.size[0] == size[0] and ov.size[1] > size[1]  # with its legend below
        assert (out / "labels" / f"{q.stem}.txt").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["random_weights"] is True and results["quality"] is True
    assert results["label_names"] == {str(k): v for k, v in LABEL_NAMES.items()}
    assert sorted({r["query"] for r in results["results"]}) == sorted(names)
    assert len(results["results"]) == len(names) * len(LABEL_NAMES)
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 7
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(LABEL_NAMES.values())
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert list(data["names"].values()) == list(LABEL_NAMES.values())
    with Image.open(out / "segment.gif") as gif:
        assert gif.n_frames == 7
    with open(out / "review.csv", newline="") as fh:
        review = [row["query"] for row in csv.DictReader(fh)]
    page = (out / "review.html").read_text()
    assert re.findall(r'data-query="([^"]+)"', page) == review  # same order, worst first
    assert "RANDOM WEIGHTS" in page
    for link in set(re.findall(r'(?:src|href)="([^"]+)"', page)):
        assert (out / link).is_file(), link
    assert "ome-zarr" in FORMATS
    for q in files.queries:
        assert (out / "ome-zarr" / f"{q.stem}.ome.zarr" / "zarr.json").is_file(), q.stem

    # the demo's folder handed to `sst serve` by mistake: one line, status 2, at once
    t0 = time.perf_counter()
    serve = subprocess.run([sys.executable, "-m", "sst.client.cli", "serve",
                            "--model-repository", str(out), "--grpc-port", "0",
                            "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t0 < 10 and serve.returncode == 2, serve.stderr
    assert len((serve.stdout + serve.stderr).strip().splitlines()) == 1, serve.stderr
    assert "results of `sst segment` or `sst demo`" in serve.stderr


def test_a_query_where_nothing_is_found_is_scored_not_refused(monkeypatch, tmp_path):
    """A model that finds no object in a query (EdgeTAM's random weights do) writes an
    all-zero mask: the demo scores it (IoU 0), where reading it as a prompt mask refused
    it ("mask has no labels")."""
    from sst.export.meta import ModelMeta
    from sst.tracker.null_backend import NullBackend

    def segment(tracker, supports, queries, out, **kw):
        files = demo_files()
        for q, truth in zip(files.queries, files.truth):
            shape = sio.load_mask(truth).shape
            Image.fromarray(np.zeros(shape, np.uint8)).save(out / f"{q.stem}.png")
        return demo.SegmentSummary(processed=len(QUERIES), failed=[], seconds=0.0)

    monkeypatch.setattr(demo, "demo_model_dir", lambda *a, **kw: (tmp_path, True))
    monkeypatch.setattr(demo, "open_backend",
                        lambda d: NullBackend(ModelMeta(image_size=64, random_weights=True)))
    monkeypatch.setattr(demo, "run_segment", segment)
    result = demo.run_demo(tmp_path / "out", progress=False)
    assert len(result.truth_iou) == len(QUERIES)
    assert all(v == 0.0 for q in result.truth_iou.values() for v in q.values())
