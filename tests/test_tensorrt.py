"""TensorRT engines (GPU only) and the profiles derived from the I/O specs (everywhere)."""

from __future__ import annotations

import pytest

from sst.export.specs import Geometry, component_specs
from sst.export.tensorrt import profile_shapes, tensorrt_missing


def test_profiles_follow_specs():
    specs = component_specs(Geometry(512), max_batch=8)
    prof = profile_shapes(specs["memory_attention"])
    lo, opt, hi = prof["memory"]
    assert lo == (1, 1, 64, 32, 32) and hi[0] == 8 and hi[1] >= 7
    assert prof["obj_ptrs"][0][1] == 0 and prof["obj_ptrs"][2][1] >= 16
    lo, opt, hi = profile_shapes(specs["mask_decoder"])["support_mask"]
    assert lo[2:] == (4, 4) and hi[2:] == (512, 512)
    for spec in specs.values():
        for name, (a, b, c) in profile_shapes(spec).items():
            assert all(x <= y <= z for x, y, z in zip(a, b, c)), (spec.name, name)


@pytest.mark.gpu
def test_tensorrt_engines_build(exported_repo):
    missing = tensorrt_missing()
    if missing:
        pytest.skip(f"TensorRT engines need a GPU: {missing}")
    from sst.export.onnx_export import run_export  # noqa: F401
    from sst.export.specs import COMPONENTS
    from sst.export.tensorrt import build_engines
    from sst.tracker.backends import load_meta

    meta = load_meta(exported_repo)
    specs = component_specs(Geometry(meta.image_size))
    report = build_engines(exported_repo, specs, list(COMPONENTS))
    for name in COMPONENTS:
        assert (exported_repo / name / "1" / "model.plan").stat().st_size > 0, name
        assert report[name]["fp16"] is True
