"""SAM 2 and SAM 2.1 checkpoints in ``transformers``' layout, read into sam2's own.

The published ``facebook/sam2.1-hiera-tiny|small|base-plus|large`` files (and the SAM 2
ones) hold the state dict of ``transformers``' ``Sam2VideoModel``: a folder with
``config.json`` and ``model.safetensors``, or that ``model.safetensors`` alone. Given
either as a checkpoint, it is converted here into the keys and shapes of sam2's
``SAM2VideoPredictor`` and then loaded as strictly as sam2's own ``.pt`` files, so that
no second download is needed. Nothing is fetched.

Most tensors only change name. The rest:

* the prompt encoder's four point embeddings are one ``(4, C)`` table in transformers
  and four ``(1, C)`` embeddings in sam2: split by rows;
* the random Fourier matrix of positional encoding is one buffer in sam2 and two equal
  copies in transformers (the prompt encoder's and the image-wide one): they must be
  equal, and become one;
* the multi-layer perceptrons (``proj_in``, ``layers.i``, ``proj_out`` in transformers)
  are one ``layers`` list in sam2 (``layers.0``, ``layers.i+1``, ``layers.n-1``); the
  convolution stacks of the mask down-samplers and of the mask decoder's up-scaling are
  numbered ``nn.Sequential`` entries in sam2, activations included.

Every tensor must map: a key of the file that no rule knows is an error naming it, and
so (when the model is loaded) is a tensor of sam2 that the file did not provide. The
fused query-key-value projections of Hiera, the memory attention's projections (its
RoPE rotates the same channel pairs in both) and the order of the temporal encodings
are laid out alike in both and are copied unchanged.

``safetensors`` and torch are imported inside the functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sst.tracker.errors import ModelError

__all__ = ["HF_CONFIG", "HF_WEIGHTS", "convert_hf_state_dict", "hf_model_name",
           "is_hf_checkpoint", "read_hf_checkpoint"]

#: The files of a transformers model folder that are read.
HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
#: ``model_type`` of the configurations whose weights fit sam2's video predictor.
_MODEL_TYPES = ("sam2_video",)
#: Hiera's width and number of blocks -> the size in the registry's names.
_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
#: Keys of the image-wide and the prompt encoder's copy of the Fourier matrix.
_IMAGE_PE = "shared_image_embedding.positional_embedding"
_PROMPT_PE = "prompt_encoder.shared_embedding.positional_embedding"
_POINTS = "prompt_encoder.point_embed.weight"

#: Whole keys (tensors held by the model itself), transformers -> sam2.
_WHOLE = {
    "no_memory_embedding": "no_mem_embed",
    "no_memory_positional_encoding": "no_mem_pos_enc",
    "memory_temporal_positional_encoding": "maskmem_tpos_enc",
    "no_object_pointer": "no_obj_ptr",
    "occlusion_spatial_embedding_parameter": "no_obj_embed_spatial",
    _PROMPT_PE: "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
}
#: Sub-modules, transformers -> sam2; the first prefix a key starts with is used.
_MODULES = (
    ("vision_encoder.backbone.", "image_encoder.trunk."),
    ("vision_encoder.neck.", "image_encoder.neck."),
    ("prompt_encoder.", "sam_prompt_encoder."),
    ("mask_decoder.", "sam_mask_decoder."),
    ("memory_attention.", "memory_attention."),
    ("memory_encoder.", "memory_encoder."),
    ("object_pointer_proj.", "obj_ptr_proj."),
    ("temporal_positional_encoding_projection_layer.", "obj_ptr_tpos_proj."),
    ("mask_downsample.", "mask_downsample."),
)
#: Renames inside a sub-module (the key after its prefix), applied in this order.
_RENAMES: tuple[tuple[str, str], ...] = (
    # Hiera: patch embedding; FPN neck: each level's 1x1 convolution sits in a ``conv``
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^convs\.(\d+)\.", r"convs.\1.conv."),
    # the prompt encoder's mask embedding: Sequential(conv, LN, GELU, conv, LN, GELU, conv)
    (r"^mask_embed\.conv1\.", "mask_downscaling.0."),
    (r"^mask_embed\.layer_norm1\.", "mask_downscaling.1."),
    (r"^mask_embed\.conv2\.", "mask_downscaling.3."),
    (r"^mask_embed\.layer_norm2\.", "mask_downscaling.4."),
    (r"^mask_embed\.conv3\.", "mask_downscaling.6."),
    # the mask decoder's up-scaling: Sequential(convT, LN, GELU, convT, GELU)
    (r"^upscale_conv1\.", "output_upscaling.0."),
    (r"^upscale_layer_norm\.", "output_upscaling.1."),
    (r"^upscale_conv2\.", "output_upscaling.3."),
    (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
    # the memory encoder
    (r"^feature_projection\.", "pix_feat_proj."),
    (r"^projection\.", "out_proj."),
    (r"^memory_fuser\.layers\.(\d+)\.depthwise_conv\.", r"fuser.layers.\1.dwconv."),
    (r"^memory_fuser\.layers\.(\d+)\.pointwise_conv(\d)\.", r"fuser.layers.\1.pwconv\2."),
    (r"^memory_fuser\.layers\.(\d+)\.scale$", r"fuser.layers.\1.gamma"),
    (r"^memory_fuser\.", "fuser."),
    # everywhere: layer norms and attention output projections
    (r"(^|\.)layer_norm(\d?)\.", r"\1norm\2."),
    (r"\.o_proj\.", ".out_proj."),
)
_MLP_TAIL = re.compile(r"^(.*?)(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$")
_DOWNSAMPLER = re.compile(r"^mask_downsampler\.(?:layers\.(\d+)\.(conv|layer_norm)|final_conv)\.")


def is_hf_checkpoint(path: Path) -> bool:
    """Whether ``path`` is given in transformers' layout: a folder (a model folder, whose
    files :func:`read_hf_checkpoint` then checks) or a ``.safetensors`` file."""
    return path.is_dir() or (path.is_file() and path.suffix == ".safetensors")


def read_hf_checkpoint(path: Path, model_name: str) -> dict[str, Any]:
    """The state dict of sam2's ``model_name`` from a transformers-layout checkpoint.

    Raises:
        ModelError: no ``model.safetensors`` in the folder, a file that cannot be read or
            is not a transformers SAM 2 video model, a model of another architecture than
            ``model_name``, or a tensor that no rule maps.
    """
    folder = path if path.is_dir() else None
    weights = path / HF_WEIGHTS if folder is not None else path
    if not weights.is_file():
        listed = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise ModelError(
            f"{model_name}: checkpoint folder {path} has no {HF_WEIGHTS} (it holds {listed}). "
            f"Give the folder of a transformers SAM 2 model (facebook/sam2.1-hiera-*: "
            f"{HF_CONFIG} and {HF_WEIGHTS}), that {HF_WEIGHTS} itself, or a sam2 .pt file")
    config = _read_config(path / HF_CONFIG, model_name) if folder is not None else None
    state = _read_safetensors(weights, model_name)
    if not any(k.startswith("vision_encoder.") for k in state):
        raise ModelError(
            f"{model_name}: {weights} is not in transformers' SAM 2 layout (its keys start "
            f"{', '.join(sorted(state)[:3])}; expected vision_encoder.*, mask_decoder.*, "
            f"memory_attention.*, ...)")
    try:
        found = hf_model_name(state, config)
    except ModelError as exc:
        raise ModelError(f"{model_name}: checkpoint {path}: {exc}") from None
    if found != model_name:
        raise ModelError(
            f"checkpoint {path} holds {found} (transformers' layout), but the model asked "
            f"for is {model_name}: choose --model {found}, or give the checkpoint of "
            f"{model_name}")
    try:
        return convert_hf_state_dict(state)
    except ModelError as exc:
        raise ModelError(f"{model_name}: checkpoint {path}: {exc}") from None


def hf_model_name(state: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """The registry's name of the architecture that a transformers SAM 2 checkpoint holds
    (``sam2.1_hiera_small``, ...), from its configuration where it states it, else from
    its tensors (Hiera's width and number of blocks; SAM 2.1's occlusion embedding)."""
    vision = (config or {}).get("vision_config") or {}
    backbone = vision.get("backbone_config") or {}
    width = backbone.get("hidden_size")
    if width is None:
        patch = state.get("vision_encoder.backbone.patch_embed.projection.weight")
        width = None if patch is None else int(patch.shape[0])
    if backbone.get("blocks_per_stage"):
        blocks = int(sum(backbone["blocks_per_stage"]))
    else:
        found = {int(m.group(1)) for k in state
                 if (m := re.match(r"vision_encoder\.backbone\.blocks\.(\d+)\.", k))}
        blocks = len(found)
    if config is not None and "enable_occlusion_spatial_embedding" in config:
        v21 = bool(config["enable_occlusion_spatial_embedding"])
    else:
        v21 = "occlusion_spatial_embedding_parameter" in state
    size = _SIZES.get((width, blocks)) if width is not None else None
    if size is None:
        raise ModelError(f"a transformers SAM 2 checkpoint of no published size (Hiera width "
                         f"{width}, {blocks} blocks; known: tiny, small, base_plus, large)")
    return f"{'sam2.1' if v21 else 'sam2'}_hiera_{size}"


def convert_hf_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (keys of transformers' ``Sam2VideoModel``) in sam2's keys and shapes.

    Raises:
        ModelError: keys that no rule maps (all named), two keys mapped onto one, or the
            two copies of the positional-encoding matrix differing.
    """
    import torch

    state = dict(state)
    out: dict[str, Any] = {}
    image_pe = state.pop(_IMAGE_PE, None)
    if image_pe is not None:
        prompt_pe = state.get(_PROMPT_PE)
        if prompt_pe is None:
            state[_PROMPT_PE] = image_pe
        elif not torch.equal(image_pe, prompt_pe):
            raise ModelError(f"{_IMAGE_PE} and {_PROMPT_PE} differ; sam2 has one "
                             f"positional-encoding matrix for both")
    points = state.pop(_POINTS, None)
    if points is not None:
        for i, row in enumerate(points.split(1, dim=0)):
            out[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = row.clone()
    mlps = _mlp_depths(state)
    down = _downsampler_layers(state)
    unmapped = []
    for key, value in state.items():
        ours = _convert_key(key, mlps, down)
        if ours is None:
            unmapped.append(key)
        elif ours in out:
            raise ModelError(f"{key} maps onto {ours}, which another key already gave")
        else:
            out[ours] = value
    if unmapped:
        raise ModelError(f"{len(unmapped)} tensors that no rule maps to sam2: "
                         + ", ".join(sorted(unmapped)))
    return out


def _convert_key(key: str, mlps: Mapping[str, int], down: int) -> str | None:
    if key in _WHOLE:
        return _WHOLE[key]
    module = next((m for m in _MODULES if key.startswith(m[0])), None)
    if module is None:
        return None
    theirs, ours = module
    rest = key[len(theirs):]
    m = _MLP_TAIL.match(rest)
    if m and theirs + m.group(1) in mlps:
        depth = mlps[theirs + m.group(1)]
        index = {"proj_in": 0, "proj_out": depth - 1}.get(m.group(2))
        if index is None:
            index = int(m.group(3)) + 1
        rest = f"{m.group(1)}layers.{index}.{m.group(4)}"
    rest = _DOWNSAMPLER.sub(_downsampler_index(down), rest)
    for pattern, repl in _RENAMES:
        rest = re.sub(pattern, repl, rest)
    return ours + rest


def _mlp_depths(state: Mapping[str, Any]) -> dict[str, int]:
    """Each perceptron of transformers (``<module>.proj_in``) -> its number of layers."""
    modules = [k[: -len("proj_in.weight")] for k in state if k.endswith(".proj_in.weight")]
    depths = {}
    for module in modules:
        hidden = re.compile(re.escape(module) + r"layers\.(\d+)\.(weight|bias)$")
        depths[module] = len({m.group(1) for k in state if (m := hidden.match(k))}) + 2
    return depths


def _downsampler_layers(state: Mapping[str, Any]) -> int:
    return len({m.group(1) for k in state
                if (m := re.match(r"memory_encoder\.mask_downsampler\.layers\.(\d+)\.", k))})


def _downsampler_index(layers: int) -> Callable[[re.Match[str]], str]:
    """sam2's mask down-sampler is one Sequential of (conv, LN, GELU) per layer and a
    final 1x1 convolution."""
    def index(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return f"mask_downsampler.encoder.{3 * layers}."
        return f"mask_downsampler.encoder.{3 * int(m.group(1)) + (m.group(2) != 'conv')}."
    return index


def _read_config(path: Path, model_name: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_name}: cannot read {path}: {exc}") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in _MODEL_TYPES:
        raise ModelError(
            f"{model_name}: {path} describes a transformers model of type {kind!r}, not "
            f"{' or '.join(_MODEL_TYPES)} (the SAM 2 video model, facebook/sam2.1-hiera-*)")
    return config


def _read_safetensors(path: Path, model_name: str) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError(f"{model_name}: reading {path} needs the safetensors package "
                         f"(pip install safetensors, or the edgetam extra)") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # corrupt, truncated, or not a safetensors file
        raise ModelError(f"{model_name}: cannot read checkpoint {path}: {exc}") from None
    if not state:
        raise ModelError(f"{model_name}: checkpoint {path} holds no tensors")
    return state
