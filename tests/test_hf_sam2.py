"""SAM 2.1 checkpoints in transformers' layout, read into sam2.

transformers' ``Sam2VideoModel`` (SAM 2.1 tiny) with random weights is saved with
``save_pretrained`` and loaded through ``build_sam2_model(checkpoint=...)``; sam2 and
transformers then give the same image features, prompt embeddings, mask-decoder outputs,
memory-encoder, memory-attention and object-pointer outputs on the same inputs (1e-4).
A checkpoint of another size, a folder without weights, and a file with a tensor that
nothing maps are refused.

Skipped where transformers (the ``edgetam`` extra) is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst.export.edgetam_model import importable_torchvision

try:
    importable_torchvision()
    from transformers import Sam2VideoConfig, Sam2VideoModel
except ImportError as exc:  # the extra is not installed
    pytest.skip(f"transformers is not installed: {exc}", allow_module_level=True)

import torch
from safetensors.torch import load_file, save_file

from sst.export.hf_sam2 import convert_hf_state_dict, hf_model_name
from sst.export.sam2_model import build_sam2_model
from sst.tracker.errors import ModelError
from tests.conftest import TEST_IMAGE_SIZE, TEST_MODEL

#: They build sam2 and transformers' models: outside the unit tier.
pytestmark = pytest.mark.slow

TOL = 1e-4
#: transformers' configuration of facebook/sam2.1-hiera-small's image encoder.
SMALL = {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]}


def _config(image_size: int, **backbone: object) -> Sam2VideoConfig:
    """transformers' SAM 2.1 configuration (tiny unless ``backbone`` says otherwise) at
    ``image_size``."""
    f = image_size // 16
    return Sam2VideoConfig(
        image_size=image_size,
        vision_config={"model_type": "sam2_vision_model",
                       "backbone_config": {"model_type": "sam2_hiera_det_model",
                                           "image_size": [image_size, image_size], **backbone},
                       "backbone_feature_sizes": [[4 * f, 4 * f], [2 * f, 2 * f], [f, f]]},
        prompt_encoder_config={"image_size": image_size},
        memory_attention_rope_feat_sizes=[f, f])


def _random_model(config: Sam2VideoConfig, seed: int = 0) -> Sam2VideoModel:
    """Random weights in every tensor (transformers sets some to zeros or ones, which
    would hide a mix-up): as in the published files, the two copies of the Fourier matrix
    are one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2VideoModel(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.02)
            model.shared_image_embedding.positional_embedding.copy_(
                model.prompt_encoder.shared_embedding.positional_embedding)
    return model


@pytest.fixture(scope="module")
def hf_tiny() -> Sam2VideoModel:
    return _random_model(_config(TEST_IMAGE_SIZE))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, hf_tiny) -> Path:
    folder = tmp_path_factory.mktemp("sam2.1-hiera-tiny")
    hf_tiny.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(hf_folder):
    """sam2's SAM 2.1 tiny loaded from the transformers folder."""
    return build_sam2_model(TEST_MODEL, checkpoint=hf_folder, image_size=TEST_IMAGE_SIZE)


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    err = (ours - theirs).abs().max().item()
    assert err <= TOL, f"{what}: max difference {err:.3g}"
    assert theirs.abs().max().item() > 1e-3, f"{what}: all zero, nothing compared"


@torch.no_grad()
def test_sam2_and_transformers_agree_after_conversion(converted, hf_tiny) -> None:
    ours, theirs = converted, hf_tiny
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, generator=gen)

    # image encoder (Hiera, FPN neck, the decoder's high-resolution projections)
    feats = ours.forward_image(image)["backbone_fpn"]
    their_feats = theirs.get_image_features(image).fpn_hidden_states
    for level, (a, b) in enumerate(zip(feats, their_feats, strict=True)):
        _close(a, b.permute(1, 2, 0).reshape(a.shape), f"image features, level {level}")

    # prompt encoder: two clicks in pixels
    coords = torch.tensor([[[60.0, 100.0], [180.0, 40.0]]])
    labels = torch.tensor([[1, 0]], dtype=torch.int32)
    sparse, dense = ours.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    their_sparse, their_dense = theirs.prompt_encoder(coords[:, None], labels[:, None], None,
                                                      None)
    _close(sparse, their_sparse[:, 0], "sparse prompt embeddings")
    _close(dense, their_dense, "dense prompt embeddings")

    # mask decoder, on the same features (each model's no-memory embedding added)
    c, f = feats[-1].shape[1], TEST_IMAGE_SIZE // 16
    top = feats[-1] + ours.no_mem_embed.view(1, c, 1, 1)
    their_top = feats[-1] + theirs.no_memory_embedding.view(1, c, 1, 1)
    masks, ious, _, scores = ours.sam_mask_decoder(
        image_embeddings=top, image_pe=ours.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
        repeat_image=False, high_res_features=feats[:2])
    their_pe = theirs.get_image_wide_positional_embeddings()
    their_masks, their_ious, _, their_scores = theirs.mask_decoder(
        image_embeddings=their_top, image_positional_embeddings=their_pe,
        sparse_prompt_embeddings=their_sparse, dense_prompt_embeddings=their_dense,
        multimask_output=True, high_resolution_features=feats[:2])
    _close(ours.sam_prompt_encoder.get_dense_pe(), their_pe, "image-wide positional encoding")
    _close(masks, their_masks[:, 0], "mask logits")
    _close(ious, their_ious[:, 0], "IoU predictions")
    _close(scores, their_scores[:, 0], "object scores")

    # memory encoder (on mask logits, so without sam2's sigmoid) and memory attention
    mask = torch.randn(1, 1, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, generator=gen) * 10
    mem = ours.memory_encoder(top, mask, skip_mask_sigmoid=True)
    their_mem, their_pos = theirs.memory_encoder(top, mask)
    _close(mem["vision_features"], their_mem, "memory features")
    memory = mem["vision_features"].flatten(2).permute(2, 0, 1)
    memory_pos = (mem["vision_pos_enc"][0].flatten(2).permute(2, 0, 1)
                  + ours.maskmem_tpos_enc[0].view(1, 1, -1))
    their_memory_pos = (their_pos.flatten(2).permute(2, 0, 1)
                        + theirs.memory_temporal_positional_encoding[0].view(1, 1, -1))
    _close(memory_pos, their_memory_pos, "memory positions")
    curr = feats[-1].flatten(2).permute(2, 0, 1)
    curr_pos = torch.randn(f * f, 1, c, generator=gen)
    out = ours.memory_attention(curr=curr, curr_pos=curr_pos, memory=memory,
                                memory_pos=memory_pos, num_obj_ptr_tokens=0)
    their_out = theirs.memory_attention(current_vision_features=curr, memory=memory,
                                        current_vision_position_embeddings=curr_pos,
                                        memory_posision_embeddings=their_memory_pos)
    _close(out, their_out[0].transpose(0, 1), "memory attention")  # (1, B, HW, C)

    # object pointers, the mask prompt's down-sampling, and the learnt embeddings
    tokens = torch.randn(3, c, generator=gen)
    _close(ours.obj_ptr_proj(tokens), theirs.object_pointer_proj(tokens), "object pointers")
    _close(ours.obj_ptr_tpos_proj(tokens),
           theirs.temporal_positional_encoding_projection_layer(tokens), "pointer positions")
    _close(ours.mask_downsample(mask), theirs.mask_downsample(mask), "mask down-sampling")
    for a, b in [(ours.no_obj_ptr, theirs.no_object_pointer),
                 (ours.no_obj_embed_spatial, theirs.occlusion_spatial_embedding_parameter),
                 (ours.no_mem_pos_enc, theirs.no_memory_positional_encoding),
                 (ours.maskmem_tpos_enc, theirs.memory_temporal_positional_encoding)]:
        assert torch.equal(a, b)


def test_conversion_covers_every_tensor(hf_tiny, converted) -> None:
    state = convert_hf_state_dict(hf_tiny.state_dict())
    own = converted.state_dict()
    assert set(state) == set(own)
    for key, value in state.items():
        assert torch.equal(value, own[key]), key
    assert len(own) == len(hf_tiny.state_dict()) + 3 - 1  # four point embeddings, one PE


def test_a_lone_safetensors_file_loads_too(hf_folder, converted, tmp_path) -> None:
    weights = hf_folder / "model.safetensors"
    model = build_sam2_model(TEST_MODEL, checkpoint=weights, image_size=TEST_IMAGE_SIZE)
    for (key, a), b in zip(model.state_dict().items(), converted.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b), key


def test_another_size_is_refused_naming_both(hf_folder, tmp_path) -> None:
    small = _random_model(_config(TEST_IMAGE_SIZE, **SMALL))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ModelError, match=r"sam2\.1_hiera_small.*sam2\.1_hiera_tiny"):
        build_sam2_model(TEST_MODEL, checkpoint=tmp_path / "small",
                         image_size=TEST_IMAGE_SIZE)
    # the tensors alone say so too
    with pytest.raises(ModelError, match=r"sam2\.1_hiera_small.*sam2\.1_hiera_tiny"):
        build_sam2_model(TEST_MODEL, checkpoint=tmp_path / "small" / "model.safetensors",
                         image_size=TEST_IMAGE_SIZE)
    assert hf_model_name(small.state_dict()) == "sam2.1_hiera_small"
    # SAM 2 (not 2.1): the configuration's flag
    config = json.loads((hf_folder / "config.json").read_text())
    config["enable_occlusion_spatial_embedding"] = False
    state = load_file(str(hf_folder / "model.safetensors"))
    assert hf_model_name(state, config) == "sam2_hiera_tiny"


def test_folders_and_files_that_are_not_checkpoints_are_refused(hf_folder, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(ModelError, match=r"has no model\.safetensors"):
        build_sam2_model(TEST_MODEL, checkpoint=empty, image_size=TEST_IMAGE_SIZE)

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").symlink_to(hf_folder / "model.safetensors")
    with pytest.raises(ModelError, match=r"type 'bert'"):
        build_sam2_model(TEST_MODEL, checkpoint=other, image_size=TEST_IMAGE_SIZE)

    state = load_file(str(hf_folder / "model.safetensors"))
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "surplus.weight": torch.zeros(2)}, str(extra))
    with pytest.raises(ModelError, match=r"1 tensors that no rule maps to sam2: surplus\.weight"):
        build_sam2_model(TEST_MODEL, checkpoint=extra, image_size=TEST_IMAGE_SIZE)
    save_file({**state, "memory_encoder.surplus.weight": torch.zeros(2)}, str(extra))
    with pytest.raises(ModelError, match=r"1 unexpected keys.*memory_encoder\.surplus\.weight"):
        build_sam2_model(TEST_MODEL, checkpoint=extra, image_size=TEST_IMAGE_SIZE)

    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("memory_attention.layer_norm")},
              str(missing))
    with pytest.raises(ModelError, match=r"2 missing keys.*memory_attention\.norm"):
        build_sam2_model(TEST_MODEL, checkpoint=missing, image_size=TEST_IMAGE_SIZE)

    differ = tmp_path / "differ.safetensors"
    pe = state["shared_image_embedding.positional_embedding"]
    save_file({**state, "shared_image_embedding.positional_embedding": pe + 1}, str(differ))
    with pytest.raises(ModelError, match=r"differ"):
        build_sam2_model(TEST_MODEL, checkpoint=differ, image_size=TEST_IMAGE_SIZE)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelError, match=r"not in transformers' SAM 2 layout"):
        build_sam2_model(TEST_MODEL, checkpoint=foreign, image_size=TEST_IMAGE_SIZE)
