"""Building sam2's video predictor as SST configures it, from a checkpoint or from random
weights with a seed. Importing this module imports torch and sam2."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sam2  # noqa: F401  (registers sam2's Hydra config module)
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sst.export.hf_sam2 import is_hf_checkpoint, read_hf_checkpoint
from sst.export.registry import CHECKPOINT_DIR, ModelInfo, get_model_info
from sst.tracker.errors import ModelError

__all__ = ["build_sam2_model"]

log = logging.getLogger(__name__)


def build_sam2_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    seed: int | None = None,
    image_size: int = 1024,
    device: str = "cpu",
) -> Any:
    """Build sam2's ``SAM2VideoPredictor`` as SST configures it (``apply_postprocessing=False``).

    Exactly one of ``checkpoint`` or ``random_weights=True`` (with ``seed``) must be given.
    ``checkpoint`` is sam2's ``.pt`` file or one in transformers' layout (a model folder or
    its ``model.safetensors``; :mod:`sst.export.hf_sam2`).
    Checkpoint loading is strict: missing or unexpected keys, or mismatched shapes,
    raise :class:`ModelError` naming the file and the model.
    """
    info = get_model_info(name)
    if (checkpoint is None) == (not random_weights):
        raise ModelError(
            f"{name}: give exactly one of a checkpoint file or random_weights=True "
            f"(got checkpoint={checkpoint!r}, random_weights={random_weights})"
        )
    if random_weights and seed is None:
        raise ModelError(f"{name}: random weights need an explicit seed")
    if image_size % 16 or image_size < 128:
        raise ModelError(f"image size must be a multiple of 16 and >= 128, got {image_size}")

    ckpt_path = None if checkpoint is None else Path(checkpoint)
    state = None
    if ckpt_path is not None:
        state = _read_checkpoint(ckpt_path, info)
    overrides = [
        "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
        f"++model.image_size={image_size}",
    ]
    cfg = compose(config_name=info.config, overrides=overrides)
    OmegaConf.resolve(cfg)
    if random_weights:
        assert seed is not None
        log.warning("building %s with RANDOM weights (seed %d): its masks are meaningless",
                    name, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = instantiate(cfg.model, _recursive_=True)
    else:
        model = instantiate(cfg.model, _recursive_=True)
        assert state is not None and ckpt_path is not None
        _load_strict(model, state, ckpt_path, info)
    model = model.to(device).eval()
    model.sst_model_name = name
    model.sst_random_weights = random_weights
    return model


def _read_checkpoint(path: Path, info: ModelInfo) -> dict[str, torch.Tensor]:
    if is_hf_checkpoint(path):  # transformers' layout (facebook/sam2.1-hiera-*)
        return read_hf_checkpoint(path, info.name)
    if not path.is_file():
        raise ModelError(
            f"{info.name}: checkpoint {path} not found. Fetch it with "
            f"`bash checkpoints/download_ckpts.sh {info.name}` (or download {info.url} "
            f"into {CHECKPOINT_DIR}/), or run with --random-weights --seed N to test the "
            f"pipeline offline (its masks are meaningless)."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file
        raise ModelError(f"{info.name}: cannot read checkpoint {path}: {exc}") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{info.name}: checkpoint {path} holds no state dict "
                         f"(expected a dict with key 'model')")
    return state


def _load_strict(model: Any, state: dict[str, Any], path: Path, info: ModelInfo) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise ModelError(
            f"checkpoint {path} does not fit model {info.name}: " + "; ".join(problems)
            + ". Is it the checkpoint of another model?"
        )
    model.load_state_dict(state, strict=True)
