"""``--engine auto``: the fastest candidate that passes the gate, measured once per
machine and model, cached, and measured again when either changes.

The candidates here are stand-in backends of the right shapes whose logits and speed
are set: a fast one whose logits are perturbed past the gate must lose to the slower
reference, a fast one within the gate must win."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sst.export.meta import ModelMeta
from sst.export.specs import Geometry
from sst.tracker import engine_choice
from sst.tracker.engine_choice import Candidate, choose_engine, gate_check, open_backend
from sst.tracker.errors import ModelError
from sst.tracker.null_backend import NullBackend
from sst.tracker.ops import NumpyOps

REF, BF16 = Candidate("ort"), Candidate("torch", "bf16")


class _Stand(NullBackend):
    """Outputs of the right shapes with mask logits ``base + offset``, ``delay`` seconds
    per component call."""

    def __init__(self, meta: ModelMeta, offset: float, delay: float) -> None:
        super().__init__(meta)
        self.ops = NumpyOps()
        self.offset, self.delay = offset, delay

    def run(self, component: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        time.sleep(self.delay)
        B = int(next(iter(feeds.values())).shape[0])
        out = {k: np.zeros((B, *s), np.float32) for k, s in self._shapes[component].items()}
        if component == "mask_decoder":
            lo = out["mask_logits"].shape[-1]
            ramp = np.linspace(-4, 4, lo, dtype=np.float32)
            out["mask_logits"][:] = ramp[None, None, None, :] + self.offset
        return out


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    """A folder with an export's metadata and a graph file (what the key hashes)."""
    root = tmp_path / "export"
    (root / "image_encoder" / "1").mkdir(parents=True)
    (root / "image_encoder" / "1" / "model.onnx").write_bytes(b"graph v1")
    geometry = asdict(Geometry(image_size=64))
    (root / "sst_model.json").write_text(json.dumps(
        {"geometry": geometry, "model": "stand-in", "random_weights": True, "seed": 0}))
    return root


def _opener(meta_dir: Path, bf16_offset: float, opened: list[str]) -> Any:
    meta = ModelMeta(**asdict(Geometry(image_size=64)), model="stand-in")

    def open_candidate(c: Candidate) -> Any:
        opened.append(c.name)
        if c == REF:
            return _Stand(meta, 0.0, 0.02)
        return _Stand(meta, bf16_offset, 0.001)
    return open_candidate


def test_auto_keeps_the_reference_when_the_fast_candidate_fails_its_gate(export, tmp_path):
    opened: list[str] = []
    choice, backend = choose_engine(export, _opener(export, 0.2, opened), (REF, BF16),
                                    frames=2, cache_dir=tmp_path / "cache")
    assert choice.candidate == "ort-fp32" and backend.offset == 0.0
    assert choice.seconds_per_frame["torch-bf16"] < choice.seconds_per_frame["ort-fp32"]
    gate = choice.gate["torch-bf16"]
    assert not gate["passed"] and gate["max_abs_logit"] == pytest.approx(0.2, abs=1e-5)
    assert "FAILED" in choice.reason and "torch-bf16" in choice.reason


def test_auto_takes_a_faster_candidate_within_the_gate(export, tmp_path):
    opened: list[str] = []
    choice, backend = choose_engine(export, _opener(export, 0.01, opened), (REF, BF16),
                                    frames=2, cache_dir=tmp_path / "cache")
    assert choice.candidate == "torch-bf16" and backend.offset == 0.01
    assert choice.gate["torch-bf16"]["passed"] and not choice.cached
    assert choice.record()["engine"] == "torch-bf16"


def test_the_choice_is_cached_and_measured_again_when_model_or_machine_change(
        export, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    opened: list[str] = []
    first, _ = choose_engine(export, _opener(export, 0.01, opened), (REF, BF16), frames=2,
                             cache_dir=cache)
    assert opened == ["ort-fp32", "torch-bf16"] and len(list(cache.iterdir())) == 1
    opened.clear()
    again, backend = choose_engine(export, _opener(export, 0.01, opened), (REF, BF16),
                                   frames=2, cache_dir=cache)
    assert again.cached and backend is None and opened == []  # nothing measured
    assert again.candidate == first.candidate and again.reason == first.reason

    (export / "image_encoder" / "1" / "model.onnx").write_bytes(b"graph v2")  # new model
    changed, _ = choose_engine(export, _opener(export, 0.01, opened), (REF, BF16),
                               frames=2, cache_dir=cache)
    assert not changed.cached and opened == ["ort-fp32", "torch-bf16"]

    opened.clear()
    cpu, flags = engine_choice._cpu()
    monkeypatch.setattr(engine_choice, "_cpu", lambda: (cpu + " (other)", flags))
    moved, _ = choose_engine(export, _opener(export, 0.01, opened), (REF, BF16), frames=2,
                             cache_dir=cache)
    assert not moved.cached and opened == ["ort-fp32", "torch-bf16"]
    assert len(list(cache.iterdir())) == 3


def test_a_candidate_that_cannot_run_here_is_skipped_with_its_reason(export, tmp_path):
    meta = ModelMeta(**asdict(Geometry(image_size=64)), model="stand-in")

    def open_candidate(c: Candidate) -> Any:
        if c != REF:
            raise RuntimeError("no BF16 units here")
        return _Stand(meta, 0.0, 0.001)
    choice, _ = choose_engine(export, open_candidate, (REF, BF16), frames=1,
                              cache_dir=tmp_path / "cache")
    assert choice.candidate == "ort-fp32"
    assert choice.skipped == {"torch-bf16": "no BF16 units here"}


def test_gate_counts_confident_pixels_only() -> None:
    ref = np.array([[5.0, -5.0, 0.5, -0.5]], np.float32)
    flipped_unsure = np.array([[5.0, -5.0, -0.5, 0.5]], np.float32)
    g = gate_check([flipped_unsure], [ref], {"max_abs_logit": 2.0, "min_agreement": 1.0,
                                              "confident": 1.0})
    assert g["agreement"] == 1.0 and g["passed"]
    flipped_sure = np.array([[-5.0, -5.0, 0.5, -0.5]], np.float32)
    g = gate_check([flipped_sure], [ref])
    assert g["agreement"] == 0.5 and not g["passed"]


def test_engine_names_are_checked(export, monkeypatch) -> None:
    monkeypatch.setenv("SST_ENGINE", "fastest")
    with pytest.raises(ModelError, match=r"SST_ENGINE"):
        open_backend(export)
    with pytest.raises(ModelError, match="torch engine"):
        open_backend(export, "ort", precision="bf16")
    assert Candidate.parse("torch-bf16-compiled") == Candidate("torch", "bf16", True)
    with pytest.raises(ModelError):
        Candidate.parse("onnx")


def test_segment_with_engine_auto_records_its_choice(exported_repo, tmp_path, monkeypatch,
                                                     caplog):
    """On the real model: ``sst segment --engine auto`` measures the candidates this
    machine runs, says what it chose in one log line and in results.json; a second run
    reuses the choice; the masks stay within the gate of ONNX Runtime FP32's."""
    import logging

    from PIL import Image

    from sst.client.cli import main

    from .synthetic import specimen

    monkeypatch.delenv("SST_ENGINE", raising=False)
    monkeypatch.setenv("SST_CACHE", str(tmp_path / "cache"))
    img, mask = specimen(0)
    (tmp_path / "q").mkdir()
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    for i in range(2):
        Image.fromarray(specimen(i + 1)[0]).save(tmp_path / "q" / f"q{i}.png")
    args = ["segment", "--support", str(tmp_path / "s.png"), "--support-mask",
            str(tmp_path / "m.png"), "--queries", str(tmp_path / "q"),
            "--model-dir", str(exported_repo), "--save-logits", "--engine", "auto",
            "--no-progress"]
    with caplog.at_level(logging.INFO, logger="sst.engine"):
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
    lines = [r.getMessage() for r in caplog.records if "engine auto" in r.getMessage()]
    assert len(lines) == 1 and "fastest of" in lines[0]
    record = json.loads((tmp_path / "a" / "results.json").read_text())["engine"]
    assert record["engine"] in {"ort-fp32", "torch-fp32", "torch-bf16"} and not record["cached"]
    assert "ort-fp32" in record["seconds_per_frame"]
    assert record["gate"].get(record["engine"], {"passed": True})["passed"]  # chosen: passed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sst.engine"):
        assert main([*args, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())["engine"]
    assert again["cached"] and again["engine"] == record["engine"]
    ort = tmp_path / "c"
    assert main([*args[:-3], "--engine", "ort", "--no-progress", "--out", str(ort)]) == 0
    for q in ("q0", "q1"):  # within the gate on these frames too
        a, c = np.load(tmp_path / "a" / f"{q}.npz"), np.load(ort / f"{q}.npz")
        for label in c.files:
            assert gate_check([a[label]], [c[label]], {**engine_choice.GATE,
                                                       "max_abs_logit": 0.1})["passed"]


def test_sst_serve_engine_reaches_the_trackers_config(exported_repo, tmp_path):
    """``sst serve --engine`` is written into the run folder's ``sst_tracker`` config
    (the CPU profile); without it the config leaves the engine to the default."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from sst.server_config.run_folder import build_run_repository

    def engine_param(run: Path) -> str:
        cfg = text_format.Parse((run / "sst_tracker" / "config.pbtxt").read_text(),
                                model_config_pb2.ModelConfig())
        return cfg.parameters["engine"].string_value

    named = build_run_repository(exported_repo, tmp_path / "a", "cpu", engine="torch")
    assert engine_param(named) == "torch"
    default = build_run_repository(exported_repo, tmp_path / "b", "cpu")
    assert engine_param(default) == ""


def test_the_compiled_candidate_waits_for_its_packages_unless_asked_to_build(
        export, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_choice, "cache_root", lambda: tmp_path / "cache-root")
    monkeypatch.setattr(engine_choice, "bf16_native", lambda: True)
    compiled = Candidate("torch", "bf16", compiled=True)
    assert compiled in engine_choice.CANDIDATES
    with pytest.raises(RuntimeError, match="not built for this model on this machine yet"):
        engine_choice.open_candidate(export, compiled)
    assert not engine_choice.compiled_ready(export)
    folder = engine_choice.compiled_packages(export)
    folder.mkdir(parents=True)
    (folder / engine_choice.PACKAGES_COMPLETE).touch()
    assert engine_choice.compiled_ready(export)
    # the folder is the export's: another model (or machine) has none
    (export / "image_encoder" / "1" / "model.onnx").write_bytes(b"graph v2")
    assert not engine_choice.compiled_ready(export)
    assert engine_choice.compiled_packages(export) != folder
