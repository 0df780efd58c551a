"""``sst retrieve``, ``sst crop`` and ``sst mask ...`` (issue 5): library and CLI.

Tracker-based commands run on the random-weight export (``exported_repo``): their masks
are meaningless, so those tests check structure (files, shapes, columns, ordering) and
agreement with the tracker's own results. ``from-prompts`` is checked logit for logit
against sam2's ``add_new_points_or_box``; the mask tools on realistic beetle masks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sst.client.cli import main
from sst.export.specs import NO_OBJ_SCORE
from sst.tracker.apps import (
    RetrievalItem,
    binary_iou,
    clean_mask,
    cycle_consistency,
    fill_holes,
    make_crop,
    mask_bbox,
    match_cutout,
    paint_label,
    prompt_feeds,
    rank_items,
    run_crop,
    run_from_cutout,
    run_from_prompts,
    run_retrieve,
    segment_prompt,
)
from sst.tracker.backends import OrtBackend
from sst.tracker.errors import InputError
from sst.tracker.io import load_mask, mask_labels
from sst.tracker.tracker import Tracker

from .synthetic import specimen

#: Logit tolerance of the prompt path against sam2 (measured ~1e-6 at 256 px).
PROMPT_ATOL = 1e-5


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def backend(exported_repo) -> OrtBackend:
    return OrtBackend(exported_repo)


@pytest.fixture(scope="module")
def tracker(backend) -> Tracker:
    return Tracker(backend)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """support.png + mask.png (labels 1, 2, 3) and queries/: a copy of the support
    (``self.png``), two identical images (``dup2``, ``dup10``) and one of another size."""
    root = tmp_path_factory.mktemp("tools")
    img, mask = specimen(0)
    Image.fromarray(img).save(root / "support.png")
    Image.fromarray(mask).save(root / "mask.png")
    q = root / "queries"
    q.mkdir()
    Image.fromarray(img).save(q / "self.png")
    dup = specimen(31, shift=0.05)[0]
    Image.fromarray(dup).save(q / "dup10.png")
    Image.fromarray(dup).save(q / "dup2.png")
    Image.fromarray(specimen(32, size=(200, 260))[0]).save(q / "other.png")
    return root


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class _Blanking:
    """Wraps a backend; on the chosen calls of the mask decoder without support masks
    (1 = the first such call), the chosen rows come back as "object absent"."""

    def __init__(self, inner, calls: dict[int, list[int] | None]) -> None:
        self.inner, self.meta, self.calls, self.seen = inner, inner.meta, calls, 0

    def run(self, component, feeds):
        out = self.inner.run(component, feeds)
        if component == "mask_decoder" and not feeds["mask_from_support"].any():
            self.seen += 1
            if self.seen in self.calls:
                rows = self.calls[self.seen]
                rows = slice(None) if rows is None else rows
                out = {k: v.copy() for k, v in out.items()}
                out["mask_logits"][rows] = NO_OBJ_SCORE
                out["object_score_logits"][rows] = -10.0
        return out


# --------------------------------------------------------------------------- retrieve


@pytest.mark.slow
def test_retrieve_ranks_by_cycle_consistency(folder, tracker, capsys):
    out = folder / "retrieve"
    rc = main(["retrieve", "--support", str(folder / "support.png"), "--support-mask",
               str(folder / "mask.png"), "--trait", "2", "--queries", str(folder / "queries"),
               "--top-k", "2", "--out", str(out), "--model-dir",
               str(tracker.backend.model_dir)])
    assert rc == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    rows = _csv(out / "ranking.csv")
    assert list(rows[0]) == ["rank", "query", "score", "forward_object_score", "forward_area"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert sorted(r["query"] for r in rows) == ["dup10.png", "dup2.png", "other.png", "self.png"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    by_name = {r["query"]: r for r in rows}
    # identical images score the same and tie in natural name order
    assert by_name["dup2.png"]["score"] == by_name["dup10.png"]["score"]
    names = [r["query"] for r in rows]
    assert names.index("dup2.png") == names.index("dup10.png") - 1
    # top-k overlays (named by rank) and the GIF
    for r in rows[:2]:
        stem = Path(r["query"]).stem
        ov = out / f"rank_{r['rank']}_{stem}.png"
        assert _load(ov).shape == _load(folder / "queries" / r["query"]).shape
    assert len(list(out.glob("rank_*.png"))) == 2
    with Image.open(out / "top_k.gif") as gif:
        assert gif.n_frames >= 1

    # the support's own copy: its score is the round trip computed from FrameResults
    sup, mask = _load(folder / "support.png"), load_mask(folder / "mask.png")
    target = mask == 2
    fwd = tracker.segment([(sup, target.astype(np.uint8))], [sup], mode="independent")[0]
    assert fwd.labels == [1]
    fwd_mask = fwd.mask == 1
    assert fwd_mask.any()
    back = tracker.segment([(sup, fwd_mask.astype(np.uint8))], [sup], mode="independent")[0]
    want = binary_iou(back.mask == 1, target)
    assert float(by_name["self.png"]["score"]) == pytest.approx(want, abs=1e-6)
    assert int(by_name["self.png"]["forward_area"]) == int(fwd_mask.sum())
    assert float(by_name["self.png"]["forward_object_score"]) == pytest.approx(
        float(fwd.object_scores[0]), abs=1e-4)


def test_cycle_consistency_empty_forward_scores_zero(folder, tracker):
    sup, mask = _load(folder / "support.png"), load_mask(folder / "mask.png")
    queries = [_load(folder / "queries" / n) for n in ("other.png", "dup2.png")]
    # first decoder call without support = the forward pass: blank query 0
    blanking = Tracker(_Blanking(tracker.backend, {1: [0]}))
    items = cycle_consistency(blanking, sup, mask, 3, queries, names=["other", "dup2"])
    plain = cycle_consistency(tracker, sup, mask, 3, queries, names=["other", "dup2"])
    assert [it.name for it in items] == ["other", "dup2"]
    assert items[0].score == 0.0 and items[0].forward_area == 0 and items[0].backward is None
    assert items[0].forward.shape == queries[0].shape[:2]
    assert items[1].score == plain[1].score and items[1].backward is not None
    assert items[1].backward.shape == sup.shape[:2]
    assert np.array_equal(items[1].forward, plain[1].forward)


def test_rank_items_is_deterministic():
    def item(i: int, name: str, score: float) -> RetrievalItem:
        return RetrievalItem(index=i, name=name, score=score, forward_object_score=0.0,
                             forward_area=0, forward=np.zeros((1, 1), bool))

    items = [item(0, "b10.png", 0.5), item(1, "b2.png", 0.5), item(2, "a.png", 0.1),
             item(3, "z.png", 0.9), item(4, "B3.png", 0.5)]
    ranked = rank_items(items)
    assert [it.name for it in ranked] == ["z.png", "b2.png", "B3.png", "b10.png", "a.png"]
    assert [it.name for it in rank_items(items[::-1])] == [it.name for it in ranked]


def test_retrieve_bad_inputs(folder, tracker, capsys):
    with pytest.raises(InputError) as err:
        run_retrieve(tracker, folder / "support.png", folder / "mask.png", 7,
                     folder / "queries", folder / "r")
    assert "label 7" in str(err.value) and "[1, 2, 3]" in str(err.value)
    rc = main(["retrieve", "--support", str(folder / "support.png"), "--support-mask",
               str(folder / "mask.png"), "--trait", "1", "--queries", str(folder / "queries"),
               "--out", str(folder / "r"), "--server", "127.0.0.1:1"])
    assert rc == 2 and "cannot use the server at 127.0.0.1:1" in capsys.readouterr().err
    assert not (folder / "r").exists()


# --------------------------------------------------------------------------- crop


@pytest.mark.slow
def test_crop_matches_the_predicted_masks(folder, tracker, capsys):
    out = folder / "crop"
    (folder / "crop.txt").write_text("queries/other.png\nqueries/dup2.png\n")
    rc = main(["crop", "--support", str(folder / "support.png"), "--support-mask",
               str(folder / "mask.png"), "--queries", f"@{folder / 'crop.txt'}",
               "--out", str(out), "--model-dir", str(tracker.backend.model_dir)])
    assert rc == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    rows = _csv(out / "crops.csv")
    assert list(rows[0]) == ["query", "x0", "y0", "x1", "y1", "area"]
    names = ["other.png", "dup2.png"]  # the list file's order
    assert [r["query"] for r in rows] == names
    sup, mask = _load(folder / "support.png"), load_mask(folder / "mask.png")
    images = [_load(folder / "queries" / n) for n in names]
    results = tracker.segment([(sup, mask)], images, mode="sequential")
    for row, img, res in zip(rows, images, results):
        union = res.mask != 0
        assert int(row["area"]) == int(union.sum())
        box = mask_bbox(union)
        crop_file = out / f"{Path(row['query']).stem}.png"
        if box is None:
            assert row["x0"] == "" and not crop_file.exists()
            continue
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert (x0, y0, x1, y1) == box
        crop = np.asarray(Image.open(crop_file))
        assert crop.shape == (y1 - y0, x1 - x0, 4)
        inside = union[y0:y1, x0:x1]
        assert np.array_equal(crop[:, :, 3] == 255, inside)
        assert (crop[:, :, 3][~inside] == 0).all()
        assert np.array_equal(crop[:, :, :3][inside], img[y0:y1, x0:x1][inside])


def test_crop_margin_background_labels_and_empty(folder, tracker):
    out = folder / "crop2"
    summary = run_crop(tracker, folder / "support.png", folder / "mask.png",
                       folder / "queries" / "other.png", out, mode="independent",
                       background="white", margin=500, labels=[2])
    assert summary.labels == [2]
    sup, mask = _load(folder / "support.png"), load_mask(folder / "mask.png")
    img = _load(folder / "queries" / "other.png")
    res = tracker.segment([(sup, mask)], [img], mode="independent")[0]
    assert [r.query for r in summary.rows] == ["other.png"]
    row = summary.rows[0]
    keep = res.mask == 2
    assert row.area == int(keep.sum())
    if row.bbox is not None:  # a huge margin clamps to the whole image
        assert row.bbox == (0, 0, img.shape[1], img.shape[0])
        crop = np.asarray(Image.open(out / "other.png"))
        assert crop.shape == img.shape
        assert (crop[~keep] == 255).all() and np.array_equal(crop[keep], img[keep])
    # everything predicted absent: empty rows, no crop files, no crash
    blank = Tracker(_Blanking(tracker.backend, {i: None for i in range(1, 20)}))
    out3 = folder / "crop3"
    summary = run_crop(blank, folder / "support.png", folder / "mask.png",
                       str(folder / "queries" / "d*.png"), out3, mode="independent")
    assert [r.bbox for r in summary.rows] == [None, None] and summary.ok
    assert [r.area for r in summary.rows] == [0, 0]
    rows = _csv(out3 / "crops.csv")
    assert [r["query"] for r in rows] == ["dup2.png", "dup10.png"]
    assert [(r["x0"], r["y1"], r["area"]) for r in rows] == [("", "", "0")] * 2
    assert sorted(p.name for p in out3.iterdir()) == ["crops.csv"]
    with pytest.raises(InputError, match=r"label\(s\) \[9\].*\[1, 2, 3\]"):
        run_crop(tracker, folder / "support.png", folder / "mask.png", folder / "queries",
                 out3, labels=[2, 9])


def test_make_crop_and_clamped_margin():
    rgb = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    mask = np.zeros((6, 8), bool)
    mask[1:3, 5:8] = True
    box = mask_bbox(mask)
    assert box == (5, 1, 8, 3)
    from sst.tracker.apps import expand_bbox

    assert expand_bbox(box, 2, (6, 8)) == (3, 0, 8, 5)
    rgba = make_crop(rgb, mask, (3, 0, 8, 5))
    assert rgba.shape == (5, 5, 4) and rgba[1, 2, 3] == 255 and rgba[0, 0, 3] == 0
    black = make_crop(rgb, mask, (3, 0, 8, 5), "black")
    assert black.shape == (5, 5, 3) and (black[0, 0] == 0).all()
    assert np.array_equal(black[1, 2], rgb[1, 5])
    assert mask_bbox(np.zeros((3, 3), bool)) is None


# --------------------------------------------------------------------------- from prompts


@pytest.mark.slow
def test_from_prompts_matches_sam2(tmp_path, sam2_tiny, backend):
    import torch

    from sst.export.sst_reference import write_jpeg_video

    img, _ = specimen(3)
    frames = tmp_path / "video"
    paths = write_jpeg_video([img], frames)
    rgb = _load(paths[0])
    H, W = rgb.shape[:2]
    cases = [([(160.0, 120.0, 1)], None),
             ([(160.0, 120.0, 1), (40.5, 30.0, 0)], None),
             ([(150.0, 118.0, 1)], (100.0, 60.0, 230.0, 190.0))]
    worst = 0.0
    with torch.inference_mode():
        state = sam2_tiny.init_state(video_path=str(frames))
    for obj, (points, box) in enumerate(cases):
        with torch.inference_mode():  # one object per prompt (objects do not interact)
            _, obj_ids, masks = sam2_tiny.add_new_points_or_box(
                state, frame_idx=0, obj_id=obj + 1,
                points=np.array([p[:2] for p in points], np.float32),
                labels=np.array([p[2] for p in points], np.int32), box=box)
        assert list(obj_ids)[obj] == obj + 1
        ref = masks[obj, 0].float().numpy()
        assert ref.shape == (H, W) and float(ref.std()) > 0
        res = segment_prompt(backend, rgb, points, box)
        feeds = prompt_feeds({k: np.zeros(1) for k in ("feat_top", "feat_s0", "feat_s1")},
                             backend.meta.image_size, backend.meta.low_res, points, box, (H, W))
        assert bool(feeds["multimask"][0, 0]) == (len(points) + 2 * (box is not None) == 1)
        assert res.labels == [1] and res.logits.shape == (1, H, W)
        assert res.logits.dtype == np.float32
        diff = float(np.abs(res.logits[0] - ref).max())
        worst = max(worst, diff)
        assert diff <= PROMPT_ATOL, (points, box, diff)
        assert binary_iou(res.mask, ref > 0) >= 0.999
    print(f"from-prompts max |logit diff| vs sam2: {worst:.2e}")


def test_from_prompts_cli_paints_and_refuses(folder, backend, capsys, tmp_path):
    img_path = folder / "support.png"
    out = tmp_path / "m.png"
    rc = main(["mask", "from-prompts", "--image", str(img_path), "--point", "160,120",
               "--point", "20,20,0", "--box", "100,60,230,190", "--label", "4",
               "--out", str(out), "--model-dir", str(backend.model_dir)])
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS" in captured.err
    res = segment_prompt(backend, _load(img_path), [(160, 120, 1), (20, 20, 0)],
                         (100, 60, 230, 190))
    new = res.mask == 1
    if new.any():
        assert rc == 0
        written = load_mask(out)
        assert np.array_equal(written == 4, new) and mask_labels(written) == [4]
    else:
        assert rc == 1 and not out.exists() and "empty" in captured.err
    # painting into an existing mask: new pixels take the label, others keep theirs
    existing = load_mask(folder / "mask.png")
    painted = paint_label(existing, new, 7)
    assert np.array_equal(painted[new], np.full(int(new.sum()), 7))
    assert np.array_equal(painted[~new], existing[~new])
    # an existing label needs --overwrite, which replaces it
    with pytest.raises(InputError, match="label 2 is already in.*--overwrite"):
        run_from_prompts(backend, img_path, tmp_path / "x.png", points=[(10, 10, 1)],
                         label=2, existing=folder / "mask.png")
    res2, labels = run_from_prompts(backend, img_path, tmp_path / "x.png",
                                    points=[(10, 10, 1)], label=2,
                                    existing=folder / "mask.png", overwrite=True)
    new2 = res2.mask == 1
    assert np.array_equal(labels == 2, new2)
    kept = np.where(existing == 2, 0, existing)
    assert np.array_equal(labels[~new2], kept[~new2])
    for bad, pattern in (({"label": 0}, "0 is the background"),
                         ({"points": [(320, 5, 1)]}, r"\(320, 5\).*320x240"),
                         ({"points": [(5, -1, 1)]}, r"\(5, -1\).*320x240"),
                         ({"box": (10, 10, 330, 50)}, "x1=330.*320x240"),
                         ({"points": []}, "at least one point or a box")):
        kwargs = {"points": [(10, 10, 1)], "label": 5, **bad}
        with pytest.raises(InputError, match=pattern):
            run_from_prompts(backend, img_path, tmp_path / "y.png", **kwargs)
    assert not (tmp_path / "y.png").exists()
    rc = main(["mask", "from-prompts", "--image", str(img_path), "--point", "1,1",
               "--label", "0", "--out", str(out), "--model-dir", str(backend.model_dir)])
    assert rc == 2 and "--label" in capsys.readouterr().err
    rc = main(["mask", "from-prompts", "--image", str(img_path), "--point", "1,1",
               "--label", "1", "--out", str(out), "--server", "127.0.0.1:1"])
    assert rc == 2 and "cannot use the server at 127.0.0.1:1" in capsys.readouterr().err


# --------------------------------------------------------------------------- from a cut-out


def _textured(shape: tuple[int, int], seed: int, sigma: float = 2.0) -> np.ndarray:
    """Smooth random colour texture ``[H,W,3]`` float in [0, 1]."""
    noise = np.random.default_rng(seed).normal(0, 1, (*shape, 3))
    sm = ndimage.gaussian_filter(noise, (sigma, sigma, 0))
    return (sm - sm.min()) / (sm.max() - sm.min())


def _scene(obj: np.ndarray, seed: int, pad: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """An image ``[H,W,3]`` with a textured object of the shape ``obj`` on a textured
    background, and the object's mask ``[H,W]`` in it."""
    big = np.pad(obj, pad)
    bg = _textured(big.shape, seed, 3) * 120 + 60
    fg = _textured(big.shape, seed + 1) * 200 + 30
    return np.where(big[..., None], fg, bg).astype(np.uint8), big


def _cutout(img: np.ndarray, mask: np.ndarray, scale: float, pad: int = 3) -> np.ndarray:
    """What a "cut out object" tool saves: the object's box (plus a transparent border)
    as RGBA, resized by ``scale``."""
    x0, y0, x1, y1 = mask_bbox(mask)
    sl = np.s_[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
    rgba = np.concatenate([img[sl], np.where(mask[sl], 255, 0).astype(np.uint8)[..., None]], 2)
    h, w = rgba.shape[:2]
    return np.asarray(Image.fromarray(rgba, "RGBA").resize((round(w * scale), round(h * scale)),
                                                           Image.Resampling.BILINEAR))


def test_from_cutout_beetles(beetle_masks, tmp_path, capsys):
    files = sorted(beetle_masks.glob("*/*.png"))[::60][:2]
    assert files
    for k, f in enumerate(files):
        obj = np.asarray(Image.open(f)) > 0
        img, truth = _scene(obj, seed=10 + k)
        cut = _cutout(img, truth, 0.9)
        match = match_cutout(img, cut)
        assert match.quality >= 0.8
        assert match.scale == pytest.approx(1 / 0.9, rel=0.02)
        assert binary_iou(match.mask, truth) >= 0.9, f
    # through the CLI, with a label value
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(cut, "RGBA").save(tmp_path / "cut.png")
    rc = main(["mask", "from-cutout", "--image", str(tmp_path / "img.png"), "--cutout",
               str(tmp_path / "cut.png"), "--label", "3", "--out", str(tmp_path / "m.png")])
    assert rc == 0 and "quality" in capsys.readouterr().out
    written = load_mask(tmp_path / "m.png")
    assert mask_labels(written) == [3] and binary_iou(written == 3, truth) >= 0.9


def test_from_cutout_synthetic_and_bad_inputs(tmp_path):
    _, body = specimen(0, size=(120, 160))
    img, truth = _scene(body > 0, seed=3)
    Image.fromarray(img).save(tmp_path / "img.png")
    cut = _cutout(img, truth, 1.2)
    Image.fromarray(cut, "RGBA").save(tmp_path / "cut.png")
    match = run_from_cutout(tmp_path / "img.png", tmp_path / "cut.png", tmp_path / "m.png")
    # a small object: whole-pixel offsets limit the precision of the scale
    assert match.scale == pytest.approx(1 / 1.2, rel=0.03) and match.quality >= 0.9
    assert binary_iou(load_mask(tmp_path / "m.png") == 1, truth) >= 0.9
    # a cut-out from another image: below the quality threshold
    other = cut.copy()
    other[..., :3] = (_textured(cut.shape[:2], 99) * 255).astype(np.uint8)
    Image.fromarray(other, "RGBA").save(tmp_path / "other.png")
    with pytest.raises(InputError, match="below --min-quality 0.8"):
        run_from_cutout(tmp_path / "img.png", tmp_path / "other.png", tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()
    # fully transparent, larger than the image, no alpha channel at all
    clear = cut.copy()
    clear[..., 3] = 0
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(InputError, match="no opaque pixel"):
        run_from_cutout(tmp_path / "img.png", tmp_path / "clear.png", tmp_path / "o.png")
    huge = np.full((400, 500, 4), 255, np.uint8)
    huge[..., :3] = (_textured((400, 500), 5) * 255).astype(np.uint8)
    Image.fromarray(huge, "RGBA").save(tmp_path / "huge.png")
    with pytest.raises(InputError, match="larger than the image"):
        run_from_cutout(tmp_path / "img.png", tmp_path / "huge.png", tmp_path / "o.png")
    Image.fromarray(cut[..., :3]).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="no transparency"):
        run_from_cutout(tmp_path / "img.png", tmp_path / "rgb.png", tmp_path / "o.png")


# --------------------------------------------------------------------------- clean


def _interior(region: np.ndarray, depth: int) -> np.ndarray:
    return ndimage.binary_erosion(region, iterations=depth, border_value=0)


def test_clean_beetle_mask_with_holes_and_specks(beetle_masks, tmp_path, capsys):
    f = sorted(beetle_masks.glob("*/*.png"))[7]
    base, _ = clean_mask(load_mask(f), fill=True, min_size=30)
    assert len(mask_labels(base)) >= 2
    damaged = base.copy()
    rng = np.random.default_rng(0)
    holes = 0
    for lab in mask_labels(base):  # 3x3 holes deep inside every label
        ys, xs = np.nonzero(_interior(base == lab, 4))
        for i in rng.choice(len(ys), size=min(2, len(ys)), replace=False):
            damaged[ys[i] - 1:ys[i] + 2, xs[i] - 1:xs[i] + 2] = 0
            holes += 1
    ys, xs = np.nonzero(_interior(base == 0, 4))
    for i in rng.choice(len(ys), size=5, replace=False):  # 2x2 specks in the background
        damaged[ys[i]:ys[i] + 2, xs[i]:xs[i] + 2] = mask_labels(base)[0]
    assert holes >= 2 and not np.array_equal(damaged, base)
    cleaned, report = clean_mask(damaged, fill=True, min_size=30)
    assert np.array_equal(cleaned, base)
    assert report.components_removed >= 1 and report.pixels_filled >= 9
    # through the CLI, relabelled (two labels swapped at once)
    a, b = mask_labels(base)[:2]
    Image.fromarray(damaged).save(tmp_path / "in.png")
    rc = main(["mask", "clean", "--mask", str(tmp_path / "in.png"), "--out",
               str(tmp_path / "out.png"), "--relabel", f"{a}:{b}", "--relabel", f"{b}:{a}",
               "--fill-holes", "--min-size", "30"])
    assert rc == 0 and "filled" in capsys.readouterr().out
    swapped = np.where(base == a, b, np.where(base == b, a, base))
    assert np.array_equal(load_mask(tmp_path / "out.png"), swapped)


def test_fill_holes_only_fills_what_one_label_encloses():
    m = np.zeros((12, 20), np.uint8)
    m[1:8, 1:8] = 1
    m[3:5, 3:5] = 0  # enclosed by 1: filled
    m[1:8, 10:14] = 1
    m[1:8, 14:18] = 2
    m[3:5, 13:15] = 0  # between 1 and 2: kept
    m[9:12, 1:6] = 3
    m[10:12, 2:4] = 0  # touches the border: kept
    out, filled = fill_holes(m)
    assert filled == 4
    assert (out[3:5, 3:5] == 1).all() and (out[3:5, 13:15] == 0).all()
    assert (out[10:12, 2:4] == 0).all()
    assert np.array_equal(out[out != m], np.ones(4, np.uint8))
    # relabel 255 -> 1 and drop a 2-pixel speck
    m2 = np.zeros((6, 6), np.uint8)
    m2[1:4, 1:4] = 255
    m2[5, 4:6] = 9
    out2, report = clean_mask(m2, mapping={255: 1}, min_size=3)
    assert mask_labels(out2) == [1] and report.relabelled == {255: 9}
    assert report.components_removed == 1 and report.pixels_removed == 2


def test_clean_bad_arguments(tmp_path, capsys):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
    rc = main(["mask", "clean", "--mask", str(tmp_path / "empty.png"), "--out",
               str(tmp_path / "o.png"), "--relabel", "255-1"])
    assert rc == 2 and "OLD:NEW" in capsys.readouterr().err
    rc = main(["mask", "clean", "--mask", str(tmp_path / "empty.png"), "--out",
               str(tmp_path / "o.png"), "--relabel", "1:70000"])
    assert rc == 2 and "0..65535" in capsys.readouterr().err
    rc = main(["mask", "clean", "--mask", str(tmp_path / "empty.png"), "--out",
               str(tmp_path / "o.png"), "--min-size", "5"])  # an all-zero mask is fine
    assert rc == 0 and mask_labels(np.asarray(Image.open(tmp_path / "o.png"))) == []
