"""Find a ``tritonserver`` installation and prepare its backends folder.

The launcher works with two kinds of Triton installation:

* the ``tritonserver`` binary shipped inside the ``nvidia-pytriton`` wheel
  (``<site-packages>/pytriton/tritonserver``). It runs on a CPU-only machine once its
  bundled shared libraries (``<site-packages>/nvidia_pytriton.libs``) are on
  ``LD_LIBRARY_PATH`` and the Python backend stub matching the running interpreter has
  been placed beside ``libtriton_python.so`` in a private copy of ``backends/``;
* a system install such as NVIDIA's container (``/opt/tritonserver``), used as is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sst.tracker.defaults import ENV_TRITONSERVER
from sst.tracker.errors import LauncherError

__all__ = [
    "ENV_TRITONSERVER",
    "LauncherError",
    "TritonInstall",
    "find_tritonserver",
    "prepare_backend_dir",
]


_CONTAINER_BINARY = Path("/opt/tritonserver/bin/tritonserver")
_CONTAINER_BACKENDS = Path("/opt/tritonserver/backends")
_STUB_NAME = "triton_python_backend_stub"
_PYTHON_BACKEND_LIB = "libtriton_python.so"
_MARKER_NAME = ".sst-backends.json"
_HOW_TO_GET = (
    "Install one with `pip install nvidia-pytriton` (ships a CPU-capable tritonserver), "
    "use NVIDIA's container (nvcr.io/nvidia/tritonserver:<xx.yy>-py3, binary in "
    f"{_CONTAINER_BINARY}), or point {ENV_TRITONSERVER} / --tritonserver at a binary."
)


# --------------------------------------------------------------------------------------
# Locating an installation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` installation the launcher can run.

    Attributes:
        binary: Path of the ``tritonserver`` executable.
        backends_dir: The install's ``backends/`` directory (read-only for pytriton).
        lib_dirs: Directories to put on ``LD_LIBRARY_PATH`` when running the binary.
        python_stub: ``triton_python_backend_stub`` for the running Python version, or
            ``None`` if the install has none.
        kind: ``"pytriton"`` for the nvidia-pytriton wheel layout, ``"system"`` otherwise.
        stubs_dir: For the pytriton layout, the ``python_backend_stubs`` directory.
        origin: Where the binary was found (for messages).
    """

    binary: Path
    backends_dir: Path
    lib_dirs: tuple[Path, ...] = ()
    python_stub: Path | None = None
    kind: Literal["pytriton", "system"] = "system"
    stubs_dir: Path | None = None
    origin: str = ""


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _resolve_binary_path(path: Path) -> Path | None:
    """Return the ``tritonserver`` executable for ``path`` (a binary or install dir)."""
    path = path.expanduser()
    candidates = [path]
    if path.is_dir():
        candidates = [path / "bin" / "tritonserver", path / "tritonserver"]
    for candidate in candidates:
        if _is_executable_file(candidate):
            return candidate.absolute()
    return None


def _install_from_binary(binary: Path, origin: str) -> TritonInstall:
    """Describe the installation that ``binary`` belongs to."""
    root = binary.resolve().parent.parent
    stubs_dir = root / "python_backend_stubs"
    if stubs_dir.is_dir():
        # nvidia-pytriton layout: <site>/pytriton/tritonserver/{bin,backends,...}
        lib_dirs = tuple(
            d
            for d in (root.parent.parent / "nvidia_pytriton.libs", root / "external_libs")
            if d.is_dir()
        )
        stub = stubs_dir / _python_version() / _STUB_NAME
        return TritonInstall(
            binary=binary,
            backends_dir=root / "backends",
            lib_dirs=lib_dirs,
            python_stub=stub if stub.is_file() else None,
            kind="pytriton",
            stubs_dir=stubs_dir,
            origin=origin,
        )
    backends = root / "backends"
    if not backends.is_dir() and _CONTAINER_BACKENDS.is_dir():
        backends = _CONTAINER_BACKENDS
    system_stub = backends / "python" / _STUB_NAME
    return TritonInstall(
        binary=binary,
        backends_dir=backends,
        lib_dirs=tuple(d for d in (root / "lib",) if d.is_dir()),
        python_stub=system_stub if system_stub.is_file() else None,
        kind="system",
        origin=origin,
    )


def _pytriton_binary() -> tuple[Path | None, str]:
    """Locate the wheel's binary without importing pytriton; return (binary, place)."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, "nvidia-pytriton wheel (package `pytriton` not installed)"
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    binary = package_dir / "tritonserver" / "bin" / "tritonserver"
    found = binary if _is_executable_file(binary) else None
    return found, f"nvidia-pytriton wheel ({binary})"


def find_tritonserver(explicit: str | Path | None = None) -> TritonInstall:
    """Find a ``tritonserver`` installation.

    Search order:

    1. ``explicit`` (a binary or an install directory); an invalid path is an error;
    2. the ``SST_TRITONSERVER`` environment variable; an invalid value is an error;
    3. the binary inside the ``nvidia-pytriton`` wheel (found with
       :func:`importlib.util.find_spec`, without importing pytriton);
    4. ``tritonserver`` on ``PATH``;
    5. ``/opt/tritonserver/bin/tritonserver`` (NVIDIA's containers).

    Raises:
        LauncherError: nothing was found; the message lists every place looked.
    """
    env_value = os.environ.get(ENV_TRITONSERVER, "")
    for value, given_by, origin in (
            (str(explicit or ""), "explicit path", f"explicit path {explicit}"),
            (env_value, f"from ${ENV_TRITONSERVER}", f"${ENV_TRITONSERVER}={env_value}")):
        if not value:
            continue
        binary = _resolve_binary_path(Path(value))
        if binary is None:
            raise LauncherError(
                f"tritonserver not found at {value} ({given_by}): not an executable "
                f"file nor a directory containing bin/tritonserver. {_HOW_TO_GET}"
            )
        return _install_from_binary(binary, origin)

    looked = [f"${ENV_TRITONSERVER} (not set)"]
    wheel_binary, wheel_place = _pytriton_binary()
    if wheel_binary is not None:
        return _install_from_binary(wheel_binary, wheel_place)
    looked.append(wheel_place)

    on_path = shutil.which("tritonserver")
    if on_path is not None:
        return _install_from_binary(Path(on_path).absolute(), f"PATH ({on_path})")
    looked.append("`tritonserver` on PATH")

    if _is_executable_file(_CONTAINER_BINARY):
        return _install_from_binary(_CONTAINER_BINARY, f"NVIDIA container ({_CONTAINER_BINARY})")
    looked.append(str(_CONTAINER_BINARY))

    places = "\n".join(f"  - {place}" for place in looked)
    raise LauncherError(f"tritonserver not found. Looked in:\n{places}\n{_HOW_TO_GET}")


def _file_signature(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_prepared(dest: Path, expected: Mapping[str, object]) -> bool:
    try:
        marker = json.loads((dest / _MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker == dict(expected)
        and (dest / "python" / _PYTHON_BACKEND_LIB).is_file()
        and _is_executable_file(dest / "python" / _STUB_NAME)
    )


def prepare_backend_dir(install: TritonInstall, dest: Path) -> Path:
    """Return a ``--backend-directory`` usable by ``install``.

    For the nvidia-pytriton layout, ``backends/`` is copied into ``dest`` and the
    ``triton_python_backend_stub`` built for the running Python (major.minor) is placed
    beside ``libtriton_python.so``. The copy is made once: a ``dest`` prepared earlier
    from the same source is reused as is. For a system install the install's own
    backends directory is returned and ``dest`` is not touched.

    Raises:
        LauncherError: no stub for this Python, the source is incomplete, or ``dest``
            exists with content the launcher did not create.
    """
    if install.kind != "pytriton":
        if not install.backends_dir.is_dir():
            raise LauncherError(
                f"backends directory {install.backends_dir} of {install.binary} does not exist"
            )
        return install.backends_dir

    version = _python_version()
    stub = install.python_stub
    if stub is None or not stub.is_file():
        available = (
            sorted(p.parent.name for p in install.stubs_dir.glob(f"*/{_STUB_NAME}"))
            if install.stubs_dir is not None
            else []
        )
        raise LauncherError(
            f"no Python backend stub for Python {version} in {install.stubs_dir or install.binary}"
            f" (available: {', '.join(available) or 'none'}). Run with a Python version "
            "the installed nvidia-pytriton supports, or use NVIDIA's container."
        )
    source_lib = install.backends_dir / "python" / _PYTHON_BACKEND_LIB
    if not source_lib.is_file():
        raise LauncherError(f"{source_lib} is missing; the nvidia-pytriton install is broken")

    expected: dict[str, object] = {
        "backends": str(install.backends_dir),
        "python": version,
        "stub": _file_signature(stub),
        "lib": _file_signature(source_lib),
    }
    dest = dest.absolute()
    if _is_prepared(dest, expected):
        return dest
    if dest.exists():
        if (dest / _MARKER_NAME).exists():
            shutil.rmtree(dest)  # an older copy made by the launcher
        elif dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            raise LauncherError(
                f"{dest} exists and was not prepared by the launcher; refusing to overwrite it"
            )

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copytree(
            install.backends_dir,
            tmp,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        target = tmp / "python" / _STUB_NAME
        shutil.copy2(stub, target)
        target.chmod(0o755)
        (tmp / _MARKER_NAME).write_text(json.dumps(expected, indent=2, sort_keys=True))
        try:
            os.rename(tmp, dest)
        except OSError:
            # Someone else prepared ``dest`` concurrently; accept their copy if it matches.
            if not _is_prepared(dest, expected):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
