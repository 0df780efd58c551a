"""Random weights are loud on every path: the export records them, ``sst serve`` prints
the banner, every answer carries the fact (``MODEL``), the client decodes it, and
``sst segment --server`` / ``sst watch`` print the banner, write it into results.json,
review.html and each overlay (a red band), as in-process runs do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from sst.client import Client
from sst.client.banner import ServerBanner
from sst.client.cli import main
from sst.client.segment_outputs import OutputSet
from sst.client.server_stream import ServerSource
from sst.client.watch import run_watch
from sst.export.meta import MODEL_META_FILE, ModelMeta, random_weights_reason
from sst.export.specs import COMPONENTS
from sst.server_config import launcher
from sst.server_config.run_folder import build_run_repository
from sst.tracker.io.outputs import MARK_COLOUR, mark_random_weights
from sst.tracker.result import FrameResult
from sst.tracker.serving.wire import MODEL, OUTPUT_NAMES, decode_results, encode_results

from .conftest import TEST_MODEL, TEST_SEED
from .fakes import FakeClock, FakeServer, FakeTransport, image, mask, png
from .synthetic import specimen
from .test_launcher import _end_launcher, _read_endpoints

RECORD = {"model": "sam2.1_hiera_tiny", "image_size": 256, "precision": "fp32",
          "random_weights": True, "seed": 7}


def _is_band(overlay: np.ndarray, rows: int = 4) -> bool:
    """The top rows are the mark's red band (its text is white: count the red share)."""
    top = overlay[:rows].reshape(-1, 3)
    return bool((np.all(top == MARK_COLOUR, axis=1)).mean() > 0.5)


class _RandomServer(FakeServer):
    """A fake server whose answers say its model has random weights."""

    def handle(self, call):  # type: ignore[no-untyped-def]
        out = super().handle(call)
        out[MODEL] = np.array([json.dumps(RECORD).encode()], dtype=object)
        return out


# --------------------------------------------------------------------------- the record


def test_the_meta_record_and_its_reason() -> None:
    meta = ModelMeta(image_size=256, model="m", random_weights=True, seed=3)
    record = meta.record()
    assert record == {"model": "m", "image_size": 256, "precision": "fp32",
                      "random_weights": True, "seed": 3}
    assert json.loads(json.dumps(record)) == record  # sent as JSON
    reason = random_weights_reason(record, "the server at h:1")
    assert reason is not None and reason.startswith("the server at h:1 (m) has RANDOM weights")
    assert "seed 3" in reason and "meaningless" in reason
    assert random_weights_reason({**record, "random_weights": False}) is None
    assert random_weights_reason(None) is None


def test_every_answer_carries_the_model_and_the_client_decodes_it() -> None:
    assert OUTPUT_NAMES[-1] == MODEL
    res = FrameResult([1], np.ones((2, 3), np.uint8), np.zeros(1), np.zeros(1))
    out = encode_results([1], [res], model=RECORD)
    (got,) = decode_results(out)
    assert got.served_model == RECORD and got.random_weights is True
    (trained,) = decode_results(encode_results([1], [res], model={**RECORD,
                                                                  "random_weights": False}))
    assert trained.random_weights is False
    old = {k: v for k, v in out.items() if k != MODEL}  # a server from before MODEL
    (unknown,) = decode_results(old)
    assert unknown.served_model is None and unknown.random_weights is None
    assert res.random_weights is None  # in process: the backend's meta says
    bad = {**out, MODEL: np.array([b"[1, 2]"], dtype=object)}
    with pytest.raises(ValueError, match="MODEL: expected a JSON object"):
        decode_results(bad)


def test_the_client_exposes_random_weights_from_a_server_that_sends_them() -> None:
    sup, msk, query = png(image(0)), png(mask()), png(image(1))
    with Client("fake:0", transport=FakeTransport(_RandomServer())) as client:
        (stateless,) = client.segment([sup], [msk], [query])
        with client.open_session([sup], [msk]) as session:
            tracked = session.segment(query)
    assert stateless.random_weights is True and tracked.random_weights is True
    assert tracked.served_model == RECORD
    with Client("fake:0", transport=FakeTransport(FakeServer())) as client:
        (older,) = client.segment([sup], [msk], [query])
    assert older.random_weights is None


# --------------------------------------------------------------------------- outputs


def test_the_mark_is_a_red_band_across_the_top() -> None:
    picture = np.full((60, 300, 3), 90, np.uint8)
    marked = mark_random_weights(picture)
    assert marked.shape == picture.shape  # the overlay keeps the query's size
    band = int(np.all(marked[:, 0] == MARK_COLOUR, axis=1).sum())
    assert 10 <= band < 40 and _is_band(marked)
    np.testing.assert_array_equal(marked[band:], picture[band:])  # the rest untouched
    assert (marked[:band].reshape(-1, 3) == 255).all(axis=1).any()  # white letters
    assert mark_random_weights(np.zeros((5, 8, 3), np.uint8)).shape == (5, 8, 3)  # tiny


def _result(served: dict | None) -> FrameResult:
    m = np.zeros((30, 40), np.uint8)
    m[5:20, 5:25] = 1
    return FrameResult([1], m, np.ones(1, np.float32), np.ones(1, np.float32),
                       served_model=served)


@pytest.mark.parametrize("where", ["server", "in-process", "trained"])
def test_output_set_marks_overlays_and_writes_the_reason(tmp_path: Path, where: str) -> None:
    """Server answers that say random weights, or an in-process model that has them:
    every overlay carries the band, results.json and review.html say so; a trained model
    gets neither."""
    served = RECORD if where == "server" else None
    writer = OutputSet(tmp_path, ["png", "overlay", "gif", "json", "html"], [1], {1: "body"},
                       random_weights=True if where == "in-process" else None,
                       server="127.0.0.1:9" if where == "server" else None)
    res = _result(served)
    writer.write_query("q.png", np.zeros((30, 40, 3), np.uint8), res, None)
    rows = writer.rows_for("q.png", res.scores(), 0.1, None)
    meta = None if where == "server" else SimpleNamespace(
        model="m", image_size=256, seed=0, random_weights=where == "in-process")
    writer.write_summary(SimpleNamespace(rows=rows, failed=[], processed=1, seconds=1.0,
                                         quality_seconds=0.0), "sequential", meta)
    results = json.loads((tmp_path / "results.json").read_text())
    page = (tmp_path / "review.html").read_text()
    overlay = np.asarray(Image.open(tmp_path / "overlay" / "q.png").convert("RGB"))
    if where == "trained":
        assert results["random_weights"] is False and results["random_weights_reason"] is None
        assert 'id="random-weights"' not in page
        assert not _is_band(overlay)
        return
    assert results["random_weights"] is True
    assert "RANDOM weights" in results["random_weights_reason"]
    assert 'id="random-weights"' in page
    assert overlay.shape[:2] == (30, 40) and _is_band(overlay)
    if where == "server":
        assert results["model"] == RECORD["model"] and results["server"] == "127.0.0.1:9"
        assert "the server at 127.0.0.1:9" in results["random_weights_reason"]
        assert "seed 7" in results["random_weights_reason"]


def test_a_server_that_does_not_say_is_recorded_as_unknown(tmp_path: Path) -> None:
    writer = OutputSet(tmp_path, ["json"], [1], {1: "body"}, server="h:1")
    res = _result(None)
    writer.write_query("q.png", np.zeros((30, 40, 3), np.uint8), res, None)
    writer.write_summary(SimpleNamespace(rows=[], failed=[], processed=1, seconds=1.0,
                                         quality_seconds=0.0), "sequential", None)
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["model"], results["random_weights"]) == ("server", None)


def test_server_banner_prints_once(capsys: pytest.CaptureFixture[str]) -> None:
    banner = ServerBanner("h:1")
    banner.see(None)
    banner.see({**RECORD, "random_weights": False})
    assert banner.reason is None and capsys.readouterr().err == ""
    banner.see(RECORD)
    banner.see(RECORD)
    err = capsys.readouterr().err
    assert err.count("RANDOM WEIGHTS") == 1 and "the server at h:1" in err


def test_watch_prints_the_banner_once_and_marks_its_overlays(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "support.png").write_bytes(png(image(0)))
    (tmp_path / "mask.png").write_bytes(png(mask()))
    folder = tmp_path / "rig"
    folder.mkdir()
    for i in range(3):
        (folder / f"spec{i}.png").write_bytes(png(image(10 + i)))
    clock = FakeClock()
    client = Client("fake:0", transport=FakeTransport(_RandomServer()), clock=clock,
                    sleep=clock.sleep)
    with client:
        run_watch(client, folder, [(tmp_path / "support.png", tmp_path / "mask.png")],
                  tmp_path / "out", once=True, poll=0.5, settle=1.0, clock=clock,
                  sleep=clock.sleep)
    err = capsys.readouterr().err
    assert err.count("RANDOM WEIGHTS") == 1 and "the server at fake:0" in err
    for i in range(3):
        overlay = np.asarray(Image.open(tmp_path / "out" / "overlay" / f"spec{i}.png"))
        assert _is_band(overlay[:, :, :3])
        sidecar = json.loads((tmp_path / "out" / f"spec{i}.json").read_text())
        assert "RANDOM weights" in sidecar["random_weights_reason"]


def test_crop_on_a_server_prints_the_banner_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sst crop --server`` streams through :class:`ServerSource`, which watches the
    answers as ``sst segment --server`` does."""
    (tmp_path / "s.png").write_bytes(png(image(0)))
    for i in range(2):
        (tmp_path / f"q{i}.png").write_bytes(png(image(5 + i)))
    with Client("fake:0", transport=FakeTransport(_RandomServer())) as client:
        source = ServerSource(client)
        got = list(source.stream((tmp_path / "s.png", image(0), mask()),
                                 [tmp_path / "q0.png", tmp_path / "q1.png"], "sequential",
                                 1, []))
    assert len(got) == 2 and all(res.random_weights for _, _, res in got)
    assert source.banner.reason is not None
    assert capsys.readouterr().err.count("RANDOM WEIGHTS") == 1


# --------------------------------------------------------------------------- sst serve


def _fake_export(root: Path, random_weights: bool = True) -> Path:
    """An export's files without its weights (empty graphs): enough to build a run folder
    and print the banner, not to serve."""
    root.mkdir()
    meta = {"model": TEST_MODEL, "geometry": {"image_size": 256},
            "random_weights": random_weights, "seed": 5, "serving_profile": "cpu"}
    (root / MODEL_META_FILE).write_text(json.dumps(meta))
    for name in COMPONENTS:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(b"")
    return root


def test_serve_banner_names_the_export_and_its_seed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = _fake_export(tmp_path / "export")
    launcher.random_weights_banner(export)
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS" in err and f"the export {export}" in err and "seed 5" in err
    launcher.random_weights_banner(_fake_export(tmp_path / "trained", random_weights=False))
    launcher.random_weights_banner(tmp_path / "not-an-export")
    assert capsys.readouterr().err == ""


def test_a_run_folder_serves_the_model_output_from_an_older_export(tmp_path: Path) -> None:
    """Configs written by an older version lack MODEL: ``sst serve`` writes this version's
    configs into its run folder, so both orchestrators declare it."""
    export = _fake_export(tmp_path / "export")
    for name in ("sst_tracker", "sst_segment"):
        (export / name / "1").mkdir(parents=True)
        (export / name / "config.pbtxt").write_text(f'name: "{name}"\n')  # an older config
    run = build_run_repository(export, tmp_path / "run", "cpu")
    for name in ("sst_tracker", "sst_segment"):
        cfg = text_format.Parse((run / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert [o.name for o in cfg.output][-1] == MODEL
        assert (export / name / "config.pbtxt").read_text() == f'name: "{name}"\n'


@pytest.mark.triton
@pytest.mark.slow
def test_segment_against_a_served_random_weight_export_is_loud(
        exported_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sst serve`` on the random-weight export prints the banner naming it and its
    seed; ``sst segment --server`` against it prints the banner, writes
    ``random_weights: true`` and the reason into results.json, the warning into
    review.html and the band onto every overlay."""
    cmd = [sys.executable, "-m", "sst.client.cli", "serve", "--model-repository",
           str(exported_repo), "--grpc-port", "0", "--metrics-port", "0",
           "--startup-timeout", "180"]
    sup, msk = specimen(0)
    Image.fromarray(sup).save(tmp_path / "support.png")
    Image.fromarray(msk).save(tmp_path / "mask.png")
    queries = tmp_path / "queries"
    queries.mkdir()
    for i in range(2):
        Image.fromarray(specimen(40 + i)[0]).save(queries / f"q{i}.png")
    out = tmp_path / "out"
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        endpoints: dict[str, str] = {}
        try:
            _read_endpoints(proc, endpoints)
            assert "gRPC" in endpoints, proc.stderr.read() if proc.stderr else ""
            rc = main(["segment", "--server", endpoints["gRPC"], "--support",
                       str(tmp_path / "support.png"), "--support-mask",
                       str(tmp_path / "mask.png"), "--queries", str(queries), "--out",
                       str(out), "--format", "png,overlay,json,html", "--no-progress"])
            proc.terminate()
            proc.wait(timeout=60)
        finally:
            _end_launcher(proc, int(endpoints["pid"]) if "pid" in endpoints else None)
        serve_err = proc.stderr.read() if proc.stderr else ""
    assert rc == 0
    assert "RANDOM WEIGHTS" in serve_err and f"the export {exported_repo}" in serve_err
    assert f"seed {TEST_SEED}" in serve_err
    err = capsys.readouterr().err
    assert err.count("RANDOM WEIGHTS") == 2  # at the first answer and after the summary
    assert f"the server at {endpoints['gRPC']} ({TEST_MODEL}) has RANDOM weights" in err
    results = json.loads((out / "results.json").read_text())
    assert results["random_weights"] is True and results["model"] == TEST_MODEL
    assert f"seed {TEST_SEED}" in results["random_weights_reason"]
    assert results["server"] == endpoints["gRPC"]
    page = (out / "review.html").read_text()
    assert 'id="random-weights"' in page and "RANDOM WEIGHTS" in page
    for i in range(2):
        overlay = np.asarray(Image.open(out / "overlay" / f"q{i}.png").convert("RGB"))
        assert overlay.shape[:2] == (240, 320) and _is_band(overlay)
