"""Building EdgeTAM (``transformers``' ``EdgeTamVideoModel``) at a chosen image size, from
HF-format weights in a local folder or from random weights with a seed.

EdgeTAM is SAM 2's tracker with a RepViT image encoder (``timm``'s ``repvit_m1``) and a
spatial perceiver that compresses each memory frame to a fixed number of tokens. The
architecture fixes which image sizes it accepts: the perceiver's 2-D latents tile the
top-level feature map (``image_size // 16`` per side) into a ``g x g`` grid of equal
windows (``g = sqrt(perceiver_resampler_num_latents_2d)``, 16 in every published
configuration), so ``image_size`` must be a multiple of ``16 * g`` (256): 256, 512, 768,
1024, ... The memory-attention RoPE table of the queries follows the feature map's side;
that of the 2-D memory tokens is the fixed ``g x g`` grid.

``transformers`` and ``timm`` are imported inside the functions: they are the ``edgetam``
extra, never needed by the rest of the package.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from sst.tracker.errors import ModelError

__all__ = ["EDGETAM_BACKBONE", "build_edgetam_model", "build_for_family", "edgetam_config",
           "check_image_size", "importable_torchvision"]

log = logging.getLogger(__name__)

#: timm architecture of EdgeTAM's image encoder, with the four feature levels it returns.
EDGETAM_BACKBONE = "repvit_m1"
_BACKBONE_ARGS = {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
#: Standard deviation of the values given to parameters that transformers' initialiser
#: leaves at zero (random weights only).
_ZERO_INIT_STD = 0.02


def importable_torchvision() -> None:
    """Make ``torchvision`` importable beside a CPU build of torch.

    ``timm`` imports ``torchvision`` (for a norm layer and its image transforms). The
    only Linux build of torchvision on PyPI is a CUDA one, whose compiled operators
    cannot load beside a CPU torch; torchvision then stops at import, registering a
    shape function for ``torchvision::nms``, an operator that was never defined. Where
    that happens, the two operators it names are declared here (schemas only, with no
    kernel: nothing EdgeTAM runs calls them) and the import goes through, with
    torchvision's pure-Python parts working. Where torchvision imports, nothing is done.
    """
    try:
        import torchvision
        return
    except ImportError:
        return  # not installed: transformers' own import error names the extra
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _DECLARED.append(library)  # a Library undefines its operators when collected
    import torchvision

    log.info("torchvision %s imported without its compiled operators (a CUDA build beside "
             "a CPU torch); EdgeTAM does not use them", torchvision.__version__)


_DECLARED: list[Any] = []


def check_image_size(image_size: int, grid: int = 16) -> None:
    """Raise :class:`ModelError` unless ``image_size`` fits EdgeTAM's perceiver grid."""
    step = 16 * grid
    if image_size < step or image_size % step:
        raise ModelError(f"EdgeTAM needs an image size that is a multiple of {step} "
                         f"(256, 512, 768, 1024, ...), got {image_size}")


def edgetam_config(image_size: int = 1024, base: Any = None) -> Any:
    """An ``EdgeTamVideoConfig`` for ``image_size``: ``base`` (a loaded config) with its
    size-dependent fields set, or EdgeTAM's published architecture when ``base`` is None."""
    importable_torchvision()
    from transformers import (
        EdgeTamVideoConfig,
        EdgeTamVisionConfig,
        TimmWrapperConfig,
    )

    if base is None:
        backbone = TimmWrapperConfig(architecture=EDGETAM_BACKBONE, do_pooling=False,
                                     model_args=dict(_BACKBONE_ARGS))
        vision = EdgeTamVisionConfig(backbone_config=backbone)
        cfg: Any = EdgeTamVideoConfig(vision_config=vision)
    else:
        cfg = base.__class__.from_dict(base.to_dict())
    grid = int(round(cfg.perceiver_resampler_num_latents_2d ** 0.5))
    check_image_size(image_size, grid)
    f = image_size // 16
    cfg.image_size = image_size
    cfg.prompt_encoder_config.image_size = image_size
    cfg.vision_config.backbone_feature_sizes = [[4 * f, 4 * f], [2 * f, 2 * f], [f, f]]
    cfg.memory_attention_rope_feat_sizes = [f, f]
    return cfg


def build_edgetam_model(
    *,
    weights: str | Path | None = None,
    random_weights: bool = False,
    seed: int | None = None,
    image_size: int = 1024,
    device: str = "cpu",
) -> Any:
    """``EdgeTamVideoModel`` in eval mode, FP32.

    Exactly one of ``weights`` (a local folder in transformers' layout: ``config.json``
    and ``model.safetensors``; nothing is downloaded) or ``random_weights=True`` (with
    ``seed``) must be given. With random weights, the parameters that transformers'
    initialiser sets to zero (temporal encodings, no-object and no-memory embeddings,
    layer scales, biases) are drawn from N(0, 0.02) too, so that every path of the
    exported graphs carries signal; the same seed always gives the same model.
    """
    if (weights is None) == (not random_weights):
        raise ModelError("EdgeTAM: give exactly one of a weights folder or random_weights=True "
                         f"(got weights={weights!r}, random_weights={random_weights})")
    if random_weights and seed is None:
        raise ModelError("EdgeTAM: random weights need an explicit seed")
    import torch

    importable_torchvision()
    from transformers import EdgeTamVideoConfig, EdgeTamVideoModel

    model: Any
    if random_weights:
        assert seed is not None
        log.warning("building EdgeTAM with RANDOM weights (seed %d): its masks are meaningless",
                    seed)
        cfg = edgetam_config(image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EdgeTamVideoModel(cfg)
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0.0, _ZERO_INIT_STD)
    else:
        folder = Path(weights)  # type: ignore[arg-type]
        if not (folder / "config.json").is_file():
            raise ModelError(f"EdgeTAM: {folder} is not a transformers model folder "
                             f"(no config.json); give the folder of facebook/EdgeTAM's files")
        try:
            base = EdgeTamVideoConfig.from_pretrained(str(folder), local_files_only=True)
            cfg = edgetam_config(image_size, base)
            model = EdgeTamVideoModel.from_pretrained(str(folder), config=cfg,
                                                      local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"EdgeTAM: cannot load weights from {folder}: {exc}") from None
    model = model.to(device=device, dtype=torch.float32).eval()
    model.sst_model_name = "edgetam"
    model.sst_family = "edgetam"
    model.sst_random_weights = random_weights
    return model


def build_for_family(name: str, *, checkpoint: str | Path | None = None,
                     random_weights: bool = False, seed: int | None = None,
                     image_size: int = 1024, device: str = "cpu") -> Any:
    """:func:`build_edgetam_model` as the family registry calls it: ``checkpoint`` is the
    folder of HF-format weights (``config.json`` and ``model.safetensors``)."""
    if name != "edgetam":
        raise ModelError(f"unknown EdgeTAM model {name!r}; expected 'edgetam'")
    return build_edgetam_model(weights=checkpoint, random_weights=random_weights, seed=seed,
                               image_size=image_size, device=device)
