"""Shared fixtures: a random-weight SAM 2.1 tiny at a small image size, and its export.

Random weights appear only here (and behind the CLI's explicit --random-weights flag).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Small enough to keep the suite fast on 2 CPU cores, large enough for Hiera's windows.
TEST_IMAGE_SIZE = 256
TEST_MODEL = "sam2.1_hiera_tiny"
TEST_SEED = 0
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The default engine is measured per machine (``auto``): the suite pins ONNX Runtime, the
# engine its exactness checks hold against (servers it starts inherit the variable), and
# the tests of ``auto`` itself clear it.
os.environ["SST_ENGINE"] = "ort"


#: Fixtures that build or export a model (tens of seconds on 2 cores): a test using one,
#: directly or through another fixture, is not in the unit tier.
MODEL_FIXTURES = frozenset({"sam2_tiny", "exported_repo", "edgetam", "edgetam_export"})
#: Markers of tests outside the unit tier: a real tritonserver, a GPU, a long run, a
#: container image built and run.
NOT_UNIT_MARKERS = ("triton", "gpu", "slow", "heavy", "container")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the unit tier (``pytest -m unit``): every test that needs no exported model,
    no server, no GPU and no long run (mypy and the like are marked ``heavy``)."""
    for item in items:
        heavy = (MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))
                 or any(item.get_closest_marker(m) for m in NOT_UNIT_MARKERS))
        if not heavy:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def sam2_tiny():
    """sam2's SAM2VideoPredictor (SST configuration) with seeded random weights."""
    from sst.export.sam2_model import build_sam2_model

    return build_sam2_model(TEST_MODEL, random_weights=True, seed=TEST_SEED,
                            image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory, sam2_tiny) -> Path:
    """The four graphs exported (with parity checks) from ``sam2_tiny`` via ``run_export``."""
    from sst.export.onnx_export import run_export

    out = tmp_path_factory.mktemp("repo")
    result = run_export(TEST_MODEL, out, image_size=TEST_IMAGE_SIZE, model=sam2_tiny,
                        random_weights=True, seed=TEST_SEED)
    assert result.passed, result.report
    return out


@pytest.fixture(scope="session")
def beetle_masks() -> Path:
    path = SHARED_DATA / "neon_beetles_masks" / "masks"
    if not path.is_dir():
        pytest.skip(f"shared data not present at {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def no_leaked_shared_memory():
    """Fails the run if a server this suite started left Python-backend shared memory."""
    yield
    from sst.server_config.process import noted_regions
    from sst.server_config.shm import regions

    leaked = noted_regions() & regions()
    assert not leaked, f"servers of this test run left shared memory in /dev/shm: {leaked}"
