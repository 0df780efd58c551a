"""Model registry: names -> sam2 config and official checkpoint, and strict loading.

The model's hyper-parameters stay upstream in sam2's Hydra configs; this module only
maps our names onto them. Random weights are available only through an explicit
``random_weights=True`` (the CLI's ``--random-weights --seed N``), so an untrained model
can never be served by mistake.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sst.export.families import model_names
from sst.export.folders import cache_root
from sst.tracker.errors import ModelError

__all__ = ["CHECKPOINT_DIR", "MODELS", "ModelInfo", "default_checkpoint", "ensure_checkpoint",
           "get_model_info", "verify_checkpoint"]

log = logging.getLogger(__name__)

_BASE = os.environ.get("SST_CHECKPOINT_BASE_URL", "https://dl.fbaipublicfiles.com/segment_anything_2")
_SAM21 = f"{_BASE}/092824/"
_SAM20 = f"{_BASE}/072824/"

def _default_checkpoint_dir() -> Path:
    """The source tree's ``checkpoints/`` when running from one; an installed package
    (no ``pyproject.toml`` above it) uses the user's cache folder instead, never its own
    folder in site-packages."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / "checkpoints"
    return cache_root() / "checkpoints"


#: Folder where checkpoints are looked up and fetched to (``$SST_CHECKPOINT_DIR``, else
#: the source tree's ``checkpoints/``, else ``<cache>/checkpoints``).
CHECKPOINT_DIR = Path(os.environ.get("SST_CHECKPOINT_DIR") or _default_checkpoint_dir())


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


def ensure_checkpoint(model: str, checkpoint: str | Path | None) -> Path:
    """The checkpoint to use: the given file (or folder of weights in transformers'
    layout), or the official one in ``checkpoints/`` (downloaded once if missing).
    Without internet, a :class:`ModelError` says what to do."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise ModelError(f"checkpoint {path} not found")
        return path
    if model not in MODELS and model in model_names():
        raise ModelError(f"{model}: no checkpoint is fetched for it; give --checkpoint FOLDER "
                         f"(its files in transformers' layout: config.json, "
                         f"model.safetensors), or --random-weights --seed N to check the "
                         f"pipeline (masks are meaningless)")
    info = get_model_info(model)
    path = info.default_path
    if path.is_file():
        return path
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".pt.part")
    log.info("fetching %s -> %s (once)", info.url, path)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(info.url, timeout=30) as resp, open(part, "wb") as fh:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"{model}: checkpoint {path.name} is not in {CHECKPOINT_DIR} and could not be "
            f"downloaded ({exc}). On a machine with internet run "
            f"`bash checkpoints/download_ckpts.sh {model}` (or fetch {info.url}) and copy "
            f"the file into {CHECKPOINT_DIR}/; or pass --checkpoint FILE. To check the "
            f"pipeline offline, run with --random-weights --seed 0 (masks are meaningless)."
        ) from None
    got = digest.hexdigest()
    pinned = (os.environ.get("SST_CHECKPOINT_SHA256") or "").strip().lower()
    if pinned and got != pinned:
        part.unlink(missing_ok=True)
        raise ModelError(f"{model}: the download of {info.url} has SHA-256 {got}, not the "
                         f"pinned {pinned} (SST_CHECKPOINT_SHA256); nothing was kept")
    part.replace(path)
    # Recorded beside the file: verify_checkpoint() finds a later change or truncation.
    path.with_name(path.name + ".sha256").write_text(f"{got}  {path.name}\n")
    log.info("%s: SHA-256 %s%s", path.name, got, " (matches the pin)" if pinned else "")
    return path


def verify_checkpoint(path: Path) -> None:
    """Check ``path`` against the SHA-256 recorded beside it (``<file>.sha256``, written by
    the download, or by hand as ``sha256sum`` prints it); no record, nothing to check.

    Raises:
        ModelError: the file's hash differs from the record.
    """
    record = path.with_name(path.name + ".sha256")
    if not record.is_file():
        return
    want = record.read_text().split()[0].lower()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != want:
        raise ModelError(f"checkpoint {path} has SHA-256 {digest.hexdigest()}, but {record} "
                         f"records {want}: the file changed or is incomplete; fetch it again")
