"""Model families through the one seam (:mod:`sst.export.families`).

* EdgeTAM, the second family, end to end: exported to ONNX with parity against
  transformers, then an SST run (a support with 2 labels and 5 queries) through this
  project's engine, on ONNX Runtime and on the torch engine, equal to transformers' own
  video inference session: low-res logits within 1e-4, masks equal.
* A toy third family (SAM 2.1 tiny at 128 px under its own family name) registered in
  the registry alone, with no other change: exported, parity-checked and tracked.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sst.export import families
from sst.export.families import ModelFamily, family_of_model
from sst.export.meta import load_meta
from sst.tracker.backends import OrtBackend
from sst.tracker.errors import ModelError
from sst.tracker.tracker import Tracker

torch = pytest.importorskip("torch")

SIZE = 256
TOL = 1e-4
ROOT = Path(__file__).resolve().parent.parent


def _edgetam_or_skip() -> None:
    from sst.export.edgetam_model import importable_torchvision

    try:
        importable_torchvision()
        import timm  # noqa: F401
        from transformers import EdgeTamVideoModel  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"EdgeTAM needs the edgetam extra (transformers, timm): {exc}")


@pytest.fixture(scope="module")
def edgetam_export(tmp_path_factory):
    """EdgeTAM at 256 px as tests/test_edgetam.py makes it (random weights, learned
    embeddings drawn large, objects mostly present), exported."""
    _edgetam_or_skip()
    from sst.export.onnx_export import run_export
    from tests.test_edgetam import vivid_edgetam

    model = vivid_edgetam(SIZE)
    out = tmp_path_factory.mktemp("edgetam")
    result = run_export("edgetam", out, image_size=SIZE, random_weights=True, seed=0,
                        model=model)
    assert result.passed, result.report
    return model, out


def _pseudo_video() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(6)]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[30:120, 40:200], mask[150:230, 60:180] = 1, 2
    return frames[0], mask, frames[1:]


def test_edgetam_export_records_its_family(edgetam_export) -> None:
    _, out = edgetam_export
    meta = load_meta(out)
    assert (meta.family, meta.model, meta.mem_tokens) == ("edgetam", "edgetam", 512)
    specs = families.family_specs(meta)
    assert specs["memory_encoder"].tensor("maskmem_features").shape == ("batch", 512, 64)
    from sst.model_repository.configs import write_repository

    write_repository(out, specs, "cpu")  # as `sst export` does: a Triton repository
    config = (out / "memory_attention" / "config.pbtxt").read_text()
    assert re.search(r'name: "memory"\s+data_type: TYPE_FP32\s+dims: -1\s+dims: 512\s+'
                     r'dims: 64\s', config), config


@pytest.mark.parametrize("engine", ["ort", "torch"])
def test_edgetam_sst_run_matches_transformers_video_session(edgetam_export, engine) -> None:
    from sst.export.edgetam_reference import run_reference_sst
    from sst.tracker.torch_backend import TorchBackend

    model, out = edgetam_export
    support, mask, queries = _pseudo_video()
    ref = run_reference_sst(model, support, mask, queries)
    backend = OrtBackend(out) if engine == "ort" else TorchBackend(model)
    assert backend.meta.family == "edgetam"
    results = Tracker(backend).segment([(support, mask)], queries, mode="sequential")
    assert [r.labels for r in results] == [[1, 2]] * len(queries)
    for t, r in enumerate(results, start=1):
        ours, theirs = np.asarray(r.low_res), ref["logits"][t]
        assert ours.shape == theirs.shape
        assert float(np.abs(ours - theirs).max()) <= TOL, t
        np.testing.assert_array_equal(ours > 0, theirs > 0)
    assert (np.stack([ref["object_scores"][t] for t in range(1, 6)]) > 0).all()


# ------------------------------------------------------------------ a toy third family


def build_toy(name: str, **kwargs: Any) -> Any:
    """SAM 2.1 tiny at the toy's size, marked as the toy family's."""
    from sst.export.sam2_model import build_sam2_model

    kwargs["image_size"] = 128
    model = build_sam2_model("sam2.1_hiera_tiny", **kwargs)
    model.sst_model_name, model.sst_family = name, "toy"
    return model


def toy_geometry(model: Any) -> Any:
    from sst.export.wrappers import geometry_of

    return replace(geometry_of(model), family="toy")


@pytest.mark.slow  # builds and exports a model: outside the unit tier
def test_a_third_family_needs_only_its_registry_entry(monkeypatch, tmp_path) -> None:
    from sst.export.onnx_export import run_export
    from sst.tracker.torch_backend import TorchBackend

    sam2 = families.FAMILIES["sam2"]
    toy = ModelFamily(
        name="toy", models={"toy_sam2_128": 128},
        build_fn="tests.test_families:build_toy", geometry_fn="tests.test_families:toy_geometry",
        specs_fn=sam2.specs_fn, wrappers_fn=sam2.wrappers_fn, reference_fn=sam2.reference_fn,
        parity_cases_fn=sam2.parity_cases_fn)
    monkeypatch.setitem(families.FAMILIES, "toy", toy)
    assert family_of_model("toy_sam2_128") is toy
    assert "toy_sam2_128" in families.model_names()

    result = run_export("toy_sam2_128", tmp_path, image_size=128, random_weights=True, seed=0)
    assert result.passed and result.report["family"] == "toy"
    meta = load_meta(tmp_path)
    assert (meta.family, meta.image_size) == ("toy", 128)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 120, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((96, 120), np.uint8)
    mask[20:60, 30:90] = 4
    for backend in (OrtBackend(tmp_path), TorchBackend(build_toy("toy_sam2_128",
                                                                 random_weights=True, seed=0))):
        assert backend.meta.family == "toy"
        out = Tracker(backend).segment([(frames[0], mask)], frames[1:], mode="sequential")
        assert [r.labels for r in out] == [[4], [4]]


def needs_a_missing_library(name: str, **kwargs: Any) -> Any:
    import sst_no_such_library  # noqa: F401  (a library the family's extra would install)


def test_a_family_whose_library_is_missing_names_its_extra() -> None:
    fam = ModelFamily(name="lost", models={"lost": 64},
                      build_fn="tests.test_families:needs_a_missing_library", geometry_fn="",
                      specs_fn="", wrappers_fn="", reference_fn="", parity_cases_fn="",
                      extra="lost-extra")
    with pytest.raises(ModelError, match=r"lost cannot load: No module named "
                       r"'sst_no_such_library' \(install the extra: pip install "
                       r"'sst-serve\[lost-extra\]'\)"):
        fam.build("lost")


def test_the_architecture_doc_lists_what_a_new_family_touches() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = re.search(r"## How to add a model family\n(.*?)(\n## |\Z)", doc, re.S)
    assert section, "docs/architecture.md has no 'How to add a model family' section"
    named = set(re.findall(r"`((?:export|tests)/[\w/<>.-]+)`", section.group(1)))
    assert {"export/families.py", "tests/test_families.py"} <= named, named
    for path in named - {p for p in named if "<" in p}:
        assert (ROOT / path).exists(), path


@pytest.mark.slow
def test_the_families_benchmark_compares_edgetam_with_its_reference_and_sam2(tmp_path):
    _edgetam_or_skip()
    import json

    from sst.benchmarks import families as bench

    assert bench.main(["--size", "256", "--frames", "2", "--labels", "2", "--engines",
                       "torch", "--frame-size", "96x128", "--results", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "families_256_2labels.json").read_text())
    assert doc["transformers_edgetam_fp32"]["median_s"] > 0
    for name in ("edgetam (torch)", "sam2.1_hiera_tiny (torch)"):
        for mode in ("sequential", "independent"):
            run = doc["runs"][name][mode]
            assert run["median_s"] > 0 and 0 < run["memory_attention_share"] < 1
    edge = doc["runs"]["edgetam (torch)"]["sequential"]
    assert edge["vs_transformers_edgetam"] == pytest.approx(
        doc["transformers_edgetam_fp32"]["median_s"] / edge["median_s"])
