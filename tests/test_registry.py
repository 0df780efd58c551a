"""Model registry and strict checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from sst.export.registry import MODELS, get_model_info
from sst.export.sam2_model import build_sam2_model
from sst.tracker.errors import ModelError

from .conftest import TEST_IMAGE_SIZE, TEST_MODEL


def test_registry_names_and_configs():
    import importlib.resources

    for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
                 "sam2.1_hiera_large", "sam2_hiera_tiny", "sam2_hiera_large"):
        info = get_model_info(name)
        assert info.checkpoint == f"{name}.pt" and info.url.endswith(info.checkpoint)
        assert (importlib.resources.files("sam2") / info.config).is_file(), info.config
    assert len(MODELS) == 8
    with pytest.raises(ModelError, match="unknown model 'sam3'.*sam2.1_hiera_tiny"):
        get_model_info("sam3")


def test_weights_must_be_chosen_explicitly(tmp_path):
    with pytest.raises(ModelError, match="exactly one of"):
        build_sam2_model(TEST_MODEL, image_size=TEST_IMAGE_SIZE)
    with pytest.raises(ModelError, match="explicit seed"):
        build_sam2_model(TEST_MODEL, random_weights=True, image_size=TEST_IMAGE_SIZE)
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelError, match=r"nope\.pt not found.*download_ckpts\.sh"):
        build_sam2_model(TEST_MODEL, checkpoint=missing, image_size=TEST_IMAGE_SIZE)


def test_checkpoint_roundtrip_and_strict_keys(tmp_path, sam2_tiny):
    sd = sam2_tiny.state_dict()
    good = tmp_path / "good.pt"
    torch.save({"model": sd}, good)
    loaded = build_sam2_model(TEST_MODEL, checkpoint=good, image_size=TEST_IMAGE_SIZE)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k

    partial = tmp_path / "partial.pt"
    torch.save({"model": {k: v for k, v in sd.items() if "memory_encoder" not in k}}, partial)
    with pytest.raises(ModelError, match=r"partial\.pt does not fit model sam2\.1_hiera_tiny.*"
                                         r"missing keys.*memory_encoder"):
        build_sam2_model(TEST_MODEL, checkpoint=partial, image_size=TEST_IMAGE_SIZE)

    # The tiny checkpoint is not the small model's: shapes differ somewhere.
    with pytest.raises(ModelError, match=r"good\.pt does not fit model sam2\.1_hiera_small"):
        build_sam2_model("sam2.1_hiera_small", checkpoint=good, image_size=TEST_IMAGE_SIZE)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"cannot read checkpoint .*junk\.pt"):
        build_sam2_model(TEST_MODEL, checkpoint=junk, image_size=TEST_IMAGE_SIZE)
