"""Finding an exported model: a given folder, or a checkpoint exported once into a cache.

``sst segment`` without ``--model-dir`` resolves ``--model``/``--checkpoint`` (or
``--random-weights --seed N``) to a cached export, fetching the official checkpoint into
``checkpoints/`` first if it is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from sst.export.folders import cache_root
from sst.export.meta import EXPORT_FORMAT, REPORT_FILE
from sst.export.registry import ensure_checkpoint, verify_checkpoint
from sst.tracker.errors import ModelError

__all__ = ["cache_root", "resolve_model_dir", "RANDOM_WEIGHTS_BANNER"]

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_BANNER = (
    "\n" + "!" * 84 + "\n"
    "!!  RANDOM WEIGHTS: this run uses an UNTRAINED model. Its masks are MEANINGLESS.  !!\n"
    "!!  It only shows that the pipeline runs. Use a real checkpoint for real work.    !!\n"
    + "!" * 84 + "\n"
)


def _fingerprint(path: Path) -> str:
    """Name, size and time of a checkpoint file; of a weights folder, its weights file's
    (a folder's own time does not change when a file in it is rewritten)."""
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def resolve_model_dir(model: str, image_size: int, *, checkpoint: str | Path | None = None,
                      random_weights: bool = False, seed: int | None = None,
                      precision: str = "fp32") -> Path:
    """Export ``model`` once into the cache and return that folder (reused afterwards)."""
    if random_weights:
        if seed is None:
            raise ModelError("--random-weights needs --seed N")
        key = f"random-seed{seed}"
        ckpt = None
    else:
        ckpt = ensure_checkpoint(model, checkpoint)
        key = _fingerprint(ckpt)
    out = cache_root() / f"{model}-{image_size}-{precision}-{key}"
    report = out / REPORT_FILE
    if report.is_file():
        done = json.loads(report.read_text())
        if done.get("passed") and done.get("format") == EXPORT_FORMAT:
            return out
        if done.get("passed"):
            log.info("the cached export in %s predates export format %d; exporting again",
                     out, EXPORT_FORMAT)
    log.info("exporting %s at %d px into %s (once; a few minutes)", model, image_size, out)
    if ckpt is not None:
        verify_checkpoint(ckpt)
    # torch and sam2 (1.7 s to import) only when an export is actually made
    from sst.export.onnx_export import run_export

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    result = run_export(model, tmp, image_size=image_size, checkpoint=ckpt,
                        random_weights=random_weights, seed=seed, precision=precision)
    if not result.passed:
        raise ModelError(f"export of {model} failed its parity checks; see {tmp / REPORT_FILE}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
