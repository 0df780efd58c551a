"""The folder a server runs from, so that serving never writes into an export.

``sst serve`` does not serve the export folder itself: it builds a run folder beside
nothing else, with the exported weights linked (never copied, never written) and the
serving configs (``config.pbtxt``, ``model.py``) written fresh for the profile and the
session knobs of this run::

    <run>/repository/<component>/1/model.onnx -> <export>/<component>/1/model.onnx
    <run>/repository/<component>/config.pbtxt     (written for this run)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sst.export.families import family_specs
from sst.export.meta import MODEL_META_FILE, load_meta
from sst.model_repository.configs import write_repository
from sst.tracker.serving.limits import ServiceConfig

__all__ = ["build_run_repository", "is_sst_export"]

log = logging.getLogger(__name__)

# Written for each run; never taken from the export.
_GENERATED = {"config.pbtxt", "model.py"}
# Weights are linked: large, and never written by the config writer.
_WEIGHT_SUFFIXES = {".onnx", ".plan", ".engine", ".data", ".bin", ".pb"}
_LINK_ABOVE_BYTES = 1 << 20


def is_sst_export(folder: Path) -> bool:
    """Whether ``folder`` was written by ``sst export``."""
    return (Path(folder) / MODEL_META_FILE).is_file()


def build_run_repository(
    export_dir: Path,
    dest: Path,
    profile: str,
    config: ServiceConfig | None = None,
    engine: str | None = None,
) -> Path:
    """Build a servable repository at ``dest`` from the export ``export_dir``.

    Weight files are symlinked, other small files copied, and every config written by
    :func:`sst.model_repository.configs.write_repository` for ``profile`` and the
    server's settings ``config`` (default: :class:`~sst.tracker.serving.limits.ServiceConfig`).
    ``engine`` (``auto``, ``ort`` or ``torch``) is the CPU profile's engine; None: the
    default one. ``export_dir`` is only read.

    Raises:
        ValueError: ``export_dir`` is not an SST export, or ``dest`` is not empty.
    """
    export_dir = Path(export_dir).absolute()
    dest = Path(dest).absolute()
    if not is_sst_export(export_dir):
        raise ValueError(f"{export_dir} is not an SST export (no {MODEL_META_FILE})")
    config = config if config is not None else ServiceConfig()
    if config.max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, not {config.max_sessions}")
    if config.idle_seconds <= 0:
        raise ValueError(f"session idle seconds must be > 0, not {config.idle_seconds:g}")
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"run folder {dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    linked = 0
    for src in sorted(export_dir.rglob("*")):
        rel = src.relative_to(export_dir)
        target = dest / rel
        if src.is_dir():
            target.mkdir(exist_ok=True)
        elif src.name not in _GENERATED:
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix in _WEIGHT_SUFFIXES or src.stat().st_size > _LINK_ABOVE_BYTES:
                target.symlink_to(src.resolve())
                linked += 1
            else:
                shutil.copy2(src, target)
    meta = load_meta(dest)
    cpu_engine = (engine, "cpu", "fp32") if engine and profile == "cpu" else None
    write_repository(dest, family_specs(meta.geometry), profile, config, engine=cpu_engine)
    log.info(
        "serving %s from the run folder %s (%d weight files linked, configs written for "
        "profile %s, max %d sessions, %gs idle); the export folder is not modified",
        export_dir,
        dest,
        linked,
        profile,
        config.max_sessions,
        config.idle_seconds,
    )
    return dest
