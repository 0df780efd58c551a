"""Model registry: names -> sam2 config and official checkpoint, and strict loading.

The model's hyper-parameters stay upstream in sam2's Hydra configs; this module only
maps our names onto them. Random weights are available only through an explicit
``random_weights=True`` (the CLI's ``--random-weights --seed N``), so an untrained model
can never be served by mistake.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst.tracker.errors import ModelError

if TYPE_CHECKING:  # torch and sam2 are imported lazily: they are slow to import
    import torch

__all__ = ["MODELS", "ModelInfo", "get_model_info", "build_sam2_model", "default_checkpoint"]

log = logging.getLogger(__name__)

_BASE = os.environ.get("SST_CHECKPOINT_BASE_URL", "https://dl.fbaipublicfiles.com/segment_anything_2")
_SAM21 = f"{_BASE}/092824/"
_SAM20 = f"{_BASE}/072824/"

#: Folder where checkpoints are looked up and fetched to (repo root ``checkpoints/``,
#: or ``$SST_CHECKPOINT_DIR``).
CHECKPOINT_DIR = Path(os.environ.get("SST_CHECKPOINT_DIR")
                      or Path(__file__).resolve().parent.parent / "checkpoints")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    config: str  # sam2 Hydra config, relative to the sam2 package
    checkpoint: str  # official checkpoint file name
    url: str

    @property
    def default_path(self) -> Path:
        return CHECKPOINT_DIR / self.checkpoint


def _entry(name: str, cfg: str, base: str) -> ModelInfo:
    return ModelInfo(name, cfg, f"{name}.pt", base + f"{name}.pt")


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        _entry("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", _SAM21),
        _entry("sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", _SAM21),
        _entry("sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", _SAM21),
        _entry("sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", _SAM21),
        _entry("sam2_hiera_tiny", "configs/sam2/sam2_hiera_t.yaml", _SAM20),
        _entry("sam2_hiera_small", "configs/sam2/sam2_hiera_s.yaml", _SAM20),
        _entry("sam2_hiera_base_plus", "configs/sam2/sam2_hiera_b+.yaml", _SAM20),
        _entry("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml", _SAM20),
    )
}


def get_model_info(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; expected one of: {', '.join(MODELS)}"
        ) from None


def default_checkpoint(name: str) -> Path:
    return get_model_info(name).default_path


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

    import sam2  # noqa: F401  (registers sam2's Hydra config module)
    import torch
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

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
    import torch

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
