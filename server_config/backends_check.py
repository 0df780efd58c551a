"""Which Triton backends a model repository needs, and whether a ``tritonserver`` has them.

The ``tritonserver`` of the nvidia-pytriton wheel has only the ``python`` backend: it
serves the ``cpu`` profile, but the ``gpu`` profile's ``onnxruntime_onnx`` and
``tensorrt_plan`` models need a full Triton install (NVIDIA's container). Starting such
a server anyway fails model by model, deep in its log; :func:`require_backends` says
so before the server starts::

    report = require_backends(find_tritonserver(), Path("model_repository"))

Each model's backend comes from its ``config.pbtxt`` (``backend``, or the one its
``platform`` implies), else from its model file's extension, as Triton itself decides.
A backend is present when the server's backends folder holds ``<name>/libtriton_<name>.so``
(or, for Python-based backends, ``<name>/model.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sst.export.meta import MODEL_META_FILE
from sst.server_config.install import LauncherError, TritonInstall

__all__ = ["BackendReport", "PLATFORM_BACKENDS", "available_backends", "check_backends",
           "model_backends", "require_backends"]

#: ``platform`` values and the backend that serves each.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
}
#: Model files Triton recognises without a ``backend`` or ``platform`` in the config.
_FILE_BACKENDS = {"model.onnx": "onnxruntime", "model.plan": "tensorrt", "model.pt": "pytorch",
                  "model.py": "python", "model.savedmodel": "tensorflow",
                  "model.graphdef": "tensorflow"}


@dataclass(frozen=True)
class BackendReport:
    """Backends a repository needs against those a server has.

    Attributes:
        backends_dir: The server's backends folder.
        needs: Model name -> backend it runs on (ensembles, which need none, are left out).
        available: Backends present in ``backends_dir``.
    """

    backends_dir: Path
    needs: Mapping[str, str]
    available: frozenset[str]

    @property
    def missing(self) -> dict[str, list[str]]:
        """Missing backend -> the models that need it (both sorted)."""
        out: dict[str, list[str]] = {}
        for model, backend in sorted(self.needs.items()):
            if backend not in self.available:
                out.setdefault(backend, []).append(model)
        return dict(sorted(out.items()))


def _config_backend(config_file: Path) -> str | None:
    try:
        cfg = text_format.Parse(config_file.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise LauncherError(f"{config_file}: not a readable Triton model config ({exc})") from None
    if cfg.backend:
        return str(cfg.backend)
    if cfg.platform == "ensemble":
        return ""
    if cfg.platform:
        if cfg.platform not in PLATFORM_BACKENDS:
            raise LauncherError(f"{config_file}: unknown platform {cfg.platform!r} (expected "
                                f"one of {sorted(PLATFORM_BACKENDS)}, or a backend)")
        return PLATFORM_BACKENDS[cfg.platform]
    if cfg.default_model_filename in _FILE_BACKENDS:
        return _FILE_BACKENDS[cfg.default_model_filename]
    return None


def model_backends(repo: str | Path) -> dict[str, str]:
    """Model name -> backend for every model folder of ``repo`` (ensembles left out)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise LauncherError(f"model repository {repo} is not a directory")
    out = {}
    for model in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = model / "config.pbtxt"
        backend = _config_backend(config) if config.is_file() else None
        if backend is None:  # as Triton does: by the model file in a version folder
            files = {f.name for v in model.iterdir() if v.is_dir() and v.name.isdigit()
                     for f in v.iterdir()}
            found = sorted({_FILE_BACKENDS[f] for f in files if f in _FILE_BACKENDS})
            if len(found) != 1:
                raise LauncherError(
                    f"{model}: cannot tell which backend serves it (no backend or platform in "
                    f"{config.name}, model files: {sorted(files) or 'none'})")
            backend = found[0]
        if backend:
            out[model.name] = backend
    return out


def available_backends(backends_dir: str | Path) -> frozenset[str]:
    """Backends present in a Triton ``backends/`` folder."""
    backends_dir = Path(backends_dir)
    if not backends_dir.is_dir():
        return frozenset()
    return frozenset(d.name for d in backends_dir.iterdir() if d.is_dir() and (
        (d / f"libtriton_{d.name}.so").is_file() or (d / "model.py").is_file()))


def check_backends(install: TritonInstall | str | Path, repo: str | Path) -> BackendReport:
    """Compare what ``repo``'s models need with what ``install`` (or a backends folder)
    has; never raises for missing backends (see :func:`require_backends`)."""
    backends_dir = install.backends_dir if isinstance(install, TritonInstall) else Path(install)
    return BackendReport(backends_dir, model_backends(repo), available_backends(backends_dir))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def require_backends(install: TritonInstall | str | Path, repo: str | Path) -> BackendReport:
    """:func:`check_backends`, raising :class:`LauncherError` if any backend is missing:
    the message names them, the models that need them, and what the server has."""
    report = check_backends(install, repo)
    missing = report.missing
    if not missing:
        return report
    meta_file = Path(repo) / MODEL_META_FILE
    try:
        profile = str(json.loads(meta_file.read_text()).get("serving_profile") or "")
    except (OSError, ValueError):
        profile = ""
    whose = f"the {profile} profile's models" if profile else f"the models in {repo}"
    names = list(missing)
    which = "; ".join(f"{b}: {', '.join(models)}" for b, models in missing.items())
    server = install.binary if isinstance(install, TritonInstall) else report.backends_dir
    have = ", ".join(sorted(report.available)) or "no backends at all"
    raise LauncherError(
        f"{whose} need the {_and(names)} backend{'s' if len(names) > 1 else ''} ({which}); "
        f"the tritonserver at {server} has only: {have} (in {report.backends_dir}); use a full "
        "Triton install (NVIDIA's container, /opt/tritonserver) with --tritonserver PATH")
