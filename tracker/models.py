"""Finding an exported model: a given folder, or a checkpoint exported once into a cache.

``sst segment`` without ``--model-dir`` resolves ``--model``/``--checkpoint`` (or
``--random-weights --seed N``) to a cached export, fetching the official checkpoint into
``checkpoints/`` first if it is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from sst.tracker.errors import ModelError

__all__ = ["cache_root", "ensure_checkpoint", "resolve_model_dir", "RANDOM_WEIGHTS_BANNER"]

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  RANDOM WEIGHTS: this run uses an UNTRAINED model. Its masks are MEANINGLESS.  !!\n"
    "!!  It only shows that the pipeline runs. Use a real checkpoint for real work.     !!\n"
    + "!" * 78 + "\n"
)


def cache_root() -> Path:
    base = os.environ.get("SST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sst-serve")
    return Path(base)


def ensure_checkpoint(model: str, checkpoint: str | Path | None) -> Path:
    """The checkpoint to use: the given file, or the official one in ``checkpoints/``
    (downloaded once if missing). Without internet, a :class:`ModelError` says what to do."""
    from sst.export.registry import CHECKPOINT_DIR, get_model_info

    info = get_model_info(model)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise ModelError(f"checkpoint {path} not found")
        return path
    path = info.default_path
    if path.is_file():
        return path
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".pt.part")
    log.info("fetching %s -> %s (once)", info.url, path)
    try:
        with urllib.request.urlopen(info.url, timeout=30) as resp, open(part, "wb") as fh:
            shutil.copyfileobj(resp, fh, length=1 << 20)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"{model}: checkpoint {path.name} is not in {CHECKPOINT_DIR} and could not be "
            f"downloaded ({exc}). On a machine with internet run "
            f"`bash checkpoints/download_ckpts.sh {model}` (or fetch {info.url}) and copy "
            f"the file into {CHECKPOINT_DIR}/; or pass --checkpoint FILE. To check the "
            f"pipeline offline, run with --random-weights --seed 0 (masks are meaningless)."
        ) from None
    part.replace(path)
    return path


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def resolve_model_dir(model: str, image_size: int, *, checkpoint: str | Path | None = None,
                      random_weights: bool = False, seed: int | None = None,
                      precision: str = "fp32") -> Path:
    """Export ``model`` once into the cache and return that folder (reused afterwards)."""
    from sst.export.onnx_export import EXPORT_FORMAT, REPORT_FILE, run_export

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
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    result = run_export(model, tmp, image_size=image_size, checkpoint=ckpt,
                        random_weights=random_weights, seed=seed, precision=precision)
    if not result.passed:
        raise ModelError(f"export of {model} failed its parity checks; see {tmp / REPORT_FILE}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
