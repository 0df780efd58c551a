"""The compiled torch engine on the CPU: memory attention, the memory encoder and the
mask decoder run from AOTInductor packages built once into a folder and loaded from it
afterwards; each gives the eager BF16 engine's outputs at batch and bank sizes other than
those it was captured at, the tracker runs on it in both modes, and a call in a dtype the
package was not built for is refused instead of being read wrongly."""

from __future__ import annotations

import numpy as np
import pytest

from sst.export.specs import dummy_inputs
from sst.tracker.engine_choice import PACKAGES_COMPLETE, bf16_native, probe_frames
from sst.tracker.errors import ModelError
from sst.tracker.tracker import Tracker
from tests.conftest import TEST_IMAGE_SIZE

torch = pytest.importorskip("torch")
from sst.tracker.torch_backend import COMPILED_ON_CPU, TorchBackend  # noqa: E402

#: Largest difference from the eager engine: BF16 rounding in memory attention and the
#: memory encoder (their outputs are of order 1); the mask decoder runs in float32.
TOLERANCE = {"memory_attention": 0.05, "memory_encoder": 0.05, "mask_decoder": 1e-3}


def _feeds(backend, component, dims):
    spec = backend.specs[component]
    feeds = {k: torch.from_numpy(np.asarray(v, np.float32) if v.dtype == np.float64 else v)
             for k, v in dummy_inputs(spec, backend.meta.geometry, dims).items()}
    if component == "memory_attention":  # gathered from the bank in BF16
        feeds["memory"], feeds["obj_ptrs"] = (feeds["memory"].bfloat16(),
                                              feeds["obj_ptrs"].bfloat16())
    return feeds


@pytest.mark.skipif(not bf16_native(), reason="no BF16 matrix instructions on this CPU")
def test_compiled_packages_are_built_once_and_keep_the_bf16_logits(sam2_tiny, tmp_path):
    folder = tmp_path / "packages"
    image, mask, queries = probe_frames(TEST_IMAGE_SIZE, 3)
    eager = TorchBackend(sam2_tiny, precision="bf16")
    built = TorchBackend(sam2_tiny, precision="bf16", compiled=True, compile_cache=folder)
    assert built.compiled is not None and sorted(built.compiled.built) == sorted(COMPILED_ON_CPU)
    assert (folder / PACKAGES_COMPLETE).is_file()
    assert built.engine_name == "torch-bf16-compiled"
    S = TEST_IMAGE_SIZE
    for dims in ({"batch": 1, "num_frames": 1, "num_ptrs": 1, "num_points": 1},
                 {"batch": 3, "num_frames": 7, "num_ptrs": 16, "num_points": 2}):
        for component in COMPILED_ON_CPU:
            feeds = _feeds(eager, component, {**dims, "support_h": S, "support_w": S})
            want, got = eager.run(component, feeds), built.run(component, feeds)
            for name, w in want.items():
                assert got[name].shape == w.shape, (component, name, dims)
                diff = float((got[name].float() - w.float()).abs().max())
                assert diff <= TOLERANCE[component], (component, name, dims, diff)
    checked = 0
    for mode in ("sequential", "independent"):
        # the engine's own feeds (flags broadcast from one value, rows taken from
        # batches): the same frames as the eager engine's, where both find the object
        got = Tracker(built).segment([(image, mask)], queries, mode=mode)
        want = Tracker(eager).segment([(image, mask)], queries, mode=mode)
        assert len(got) == 3
        for g, w in zip(got, want):
            present = (np.asarray(g.object_scores) > 0) & (np.asarray(w.object_scores) > 0)
            diff = np.abs(np.asarray(g.low_res) - np.asarray(w.low_res))[present]
            assert diff.size == 0 or float(diff.max()) <= 0.01, (mode, float(diff.max()))
            checked += diff.size
    assert checked, "no frame where both engines found an object"

    loaded = TorchBackend(sam2_tiny, precision="bf16", compiled=True, compile_cache=folder)
    assert loaded.compiled is not None and loaded.compiled.built == []
    assert set(loaded.compile_seconds) == set(COMPILED_ON_CPU)
    assert all(s < 10 for s in loaded.compile_seconds.values()), loaded.compile_seconds

    f = TEST_IMAGE_SIZE // 16
    wrong = [torch.zeros(2, 256, f, f, dtype=torch.float64), torch.zeros(2, 1, 4 * f, 4 * f),
             torch.zeros(2, 1)]
    with pytest.raises(ModelError, match="input feat_top is torch.float64"):
        loaded.compiled("memory_encoder", *wrong)
    wrong[0] = torch.zeros(2, 256, f + 1, f + 1)  # a size the package holds as a constant
    with pytest.raises(ModelError, match=r"input feat_top has shape \(2, 256, 17, 17\)"):
        loaded.compiled("memory_encoder", *wrong)
