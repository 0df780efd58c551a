"""The sst CLI end to end (embedded), and its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.client.cli import main

from .synthetic import specimen


@pytest.fixture()
def folder(tmp_path):
    img, mask = specimen(0)
    Image.fromarray(img).save(tmp_path / "support.jpg")
    Image.fromarray(np.where(mask == 3, 255, mask).astype(np.uint8)).save(tmp_path / "mask.png")
    q = tmp_path / "queries"
    q.mkdir()
    sizes = [(200, 300), (260, 180), (240, 320)]
    for i, size in zip((10, 2, 1), sizes):
        Image.fromarray(specimen(30 + i, size=size)[0]).save(q / f"img{i}.jpg")
    (q / "img5.jpg").write_bytes(b"\x89PNG broken")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "independent"])
def test_segment_writes_every_output(folder, exported_repo, mode, capsys):
    out = folder / "out"
    rc = main(["segment", "--support", str(folder / "support.jpg"), "--support-mask",
               str(folder / "mask.png"), "--queries", str(folder / "queries"), "--out", str(out),
               "--model-dir", str(exported_repo), "--mode", mode, "--save-logits",
               "--no-progress"])
    assert rc == 1  # one unreadable query: reported, others processed
    captured = capsys.readouterr()
    assert "img5.jpg" in captured.out and "1 failed" in captured.out
    assert "RANDOM WEIGHTS" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert [r["query"] for r in results["results"]][::3] == ["img1.jpg", "img2.jpg", "img10.jpg"]
    assert results["labels"] == [1, 2, 255] and results["random_weights"] is True
    for stem, (h, w) in (("img10", (200, 300)), ("img2", (260, 180)), ("img1", (240, 320))):
        with Image.open(out / f"{stem}.png") as lab:
            assert lab.mode == "P" and lab.size == (w, h)  # the query's own size
            values = set(np.unique(np.asarray(lab)).tolist())
        assert values <= {0, 1, 2, 255}
        logits = np.load(out / f"{stem}.npz")
        assert sorted(logits.files) == ["1", "2", "255"]
        assert logits["255"].shape == (h, w) and logits["255"].dtype == np.float32
        assert (out / "overlay" / f"{stem}.png").is_file()
    with Image.open(out / "segment.gif") as gif:
        assert gif.n_frames >= 1
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == ("query,label,area,object_score,iou,seconds,name,quality")
    assert len(csv_lines) == 10
    assert not list(out.rglob(".*"))  # no temp files left behind


def test_segment_bad_inputs_are_clear(folder, exported_repo, capsys):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small.png")
    rc = main(["segment", "--support", str(folder / "support.jpg"), "--support-mask",
               str(folder / "small.png"), "--queries", str(folder / "queries"),
               "--out", str(folder / "o"), "--model-dir", str(exported_repo), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "small.png" in err and "10x10" in err and "320x240" in err
    rc = main(["segment", "--support", str(folder / "support.jpg"), "--support-mask",
               str(folder / "mask.png"), "--queries", str(folder / "nothing-here"),
               "--out", str(folder / "o"), "--model-dir", str(exported_repo), "--no-progress"])
    assert rc == 2 and "nothing-here" in capsys.readouterr().err
    rc = main(["segment", "--support", str(folder / "support.jpg"), "--support-mask",
               str(folder / "mask.png"), "--queries", str(folder / "queries"),
               "--out", str(folder / "o"), "--model-dir", str(folder), "--no-progress"])
    assert rc == 2 and "not an exported model folder" in capsys.readouterr().err


def test_offline_checkpoint_message(tmp_path):
    """No checkpoint and no internet: the error says how to get one, or how to go offline."""
    env = {**os.environ, "SST_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "SST_CHECKPOINT_BASE_URL": (tmp_path / "no-such-mirror").as_uri(),
           "SST_CACHE": str(tmp_path / "cache")}
    (tmp_path / "ckpt").mkdir()
    img, mask = specimen(0)
    Image.fromarray(img).save(tmp_path / "s.jpg")
    Image.fromarray(mask).save(tmp_path / "m.png")
    res = subprocess.run([sys.executable, "-m", "sst.client.cli", "segment", "--support",
                          str(tmp_path / "s.jpg"), "--support-mask", str(tmp_path / "m.png"),
                          "--queries", str(tmp_path / "s.jpg"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "sam2.1_hiera_tiny.pt" in res.stderr
    assert "download_ckpts.sh" in res.stderr and "--random-weights" in res.stderr


def test_export_cli_reports_and_tensorrt_needs_gpu(tmp_path, capsys):
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU is present; the TensorRT build is covered by test_tensorrt")
    rc = main(["export", "--random-weights", "--seed", "0", "--image-size", "256",
               "--out", str(tmp_path / "x"), "--tensorrt"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "TensorRT" in err and ("tensorrt" in err or "GPU" in err)
    assert not (Path(tmp_path) / "x" / "image_encoder").exists()  # failed before exporting


def test_cached_export_is_reused_only_when_current(tmp_path, monkeypatch):
    """A passed export of the current format is reused; an older format is rebuilt."""
    import json

    from sst.export import meta, onnx_export
    from sst.export.cache import resolve_model_dir

    monkeypatch.setenv("SST_CACHE", str(tmp_path))
    calls = []

    def fake_export(model, out, **kw):
        calls.append(out)
        Path(out).mkdir(parents=True)
        (Path(out) / meta.REPORT_FILE).write_text(
            json.dumps({"passed": True, "format": meta.EXPORT_FORMAT}))
        return onnx_export.ExportResult(out_dir=Path(out), report={"passed": True}, files={})

    monkeypatch.setattr(onnx_export, "run_export", fake_export)
    first = resolve_model_dir("sam2.1_hiera_tiny", 256, random_weights=True, seed=3)
    assert len(calls) == 1 and first.name == "sam2.1_hiera_tiny-256-fp32-random-seed3"
    assert resolve_model_dir("sam2.1_hiera_tiny", 256, random_weights=True, seed=3) == first
    assert len(calls) == 1  # reused
    report = first / meta.REPORT_FILE
    report.write_text(json.dumps({"passed": True, "format": meta.EXPORT_FORMAT - 1}))
    assert resolve_model_dir("sam2.1_hiera_tiny", 256, random_weights=True, seed=3) == first
    assert len(calls) == 2  # an older format is exported again
    assert json.loads(report.read_text())["format"] == meta.EXPORT_FORMAT


def test_segment_with_no_server_listening_fails_fast_in_one_line(tmp_path):
    """Nothing listens at --server: one error line naming the address and `sst serve`,
    well before the retry budget a restarting server gets (it was 179 s and 38 lines)."""
    import socket
    import time

    rgb, labels = specimen(0)
    Image.fromarray(rgb).save(tmp_path / "s.png")
    Image.fromarray(labels).save(tmp_path / "m.png")
    (tmp_path / "q").mkdir()
    Image.fromarray(specimen(1)[0]).save(tmp_path / "q" / "a.png")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "sst.client.cli", "segment", "--server",
                          address, "--support", str(tmp_path / "s.png"), "--support-mask",
                          str(tmp_path / "m.png"), "--queries", str(tmp_path / "q"), "--out",
                          str(tmp_path / "out"), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 15
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"no server at {address}" in lines[0] and "sst serve" in lines[0]
