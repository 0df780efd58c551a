"""The install sets: the base install is the client, the extras add the rest, and a command
that needs a missing extra names it in one line.

The base install is simulated in a child process that refuses to import every module that
only an extra provides (the test of the built wheel, ``test_wheel.py``, installs the real
base set into a fresh venv).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from sst.client.arguments import _Handler

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

#: Distribution -> the top-level module it installs, for those that differ or matter here.
MODULE_OF = {"torch": "torch", "hydra-core": "hydra", "iopath": "iopath",
             "onnxscript": "onnxscript", "onnxruntime": "onnxruntime", "onnx": "onnx",
             "nvidia-pytriton": "pytriton", "prometheus-client": "prometheus_client",
             "setproctitle": "setproctitle", "psutil": "psutil", "ome-zarr": "ome_zarr",
             "zarr": "zarr", "matplotlib": "matplotlib", "tensorrt": "tensorrt",
             "polygraphy": "polygraphy", "onnxruntime-gpu": "onnxruntime"}
#: Modules that only the extras (or install.sh, for sam2) bring: refused in the child.
EXTRA_ONLY = sorted(set(_Handler._EXTRAS) | {"sam2"})


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def _extra(name: str) -> set[str]:
    """Distribution names of an extra, self-references (``sst-serve[a,b]``) followed."""
    names: set[str] = set()
    for req in PROJECT["optional-dependencies"][name]:
        if _name(req) == "sst-serve":
            for inner in req.split("[", 1)[1].split("]", 1)[0].split(","):
                names |= _extra(inner.strip())
        else:
            names.add(_name(req))
    return names


def _base_only(code: str) -> str:
    """``code`` to run after a meta-path hook that refuses every extra-only module."""
    return textwrap.dedent(f"""
        import sys
        REFUSED = {set(EXTRA_ONLY)!r}

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in REFUSED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Refuse())
        for loaded in [m for m in sys.modules if m.split(".")[0] in REFUSED]:
            del sys.modules[loaded]
    """) + textwrap.dedent(code)


def _sst_base_only(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = f"""
        from sst.client.cli import main
        sys.exit(main({list(args)!r}))
    """
    return subprocess.run([sys.executable, "-c", _base_only(code)], cwd=cwd, text=True,
                          capture_output=True, timeout=120)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("support.png", "q1.png"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 12:40] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


# ------------------------------------------------------------------------------ the sets


def test_base_install_has_no_model_or_server_library() -> None:
    base = {_name(r) for r in PROJECT["dependencies"]}
    for heavy in ("torch", "onnxruntime", "onnx", "sam2", "nvidia-pytriton", "hydra-core",
                  "onnxruntime-gpu", "tensorrt", "matplotlib", "zarr"):
        assert heavy not in base, f"{heavy} is in the base install"
    for client in ("numpy", "pillow", "tifffile", "grpcio", "tritonclient", "natsort",
                   "platformdirs", "tqdm"):
        assert client in base, f"{client} is missing from the base install"


def test_all_extra_holds_every_runtime_extra_and_install_sh_uses_it() -> None:
    extras = PROJECT["optional-dependencies"]
    runtime = set(extras) - {"all", "dev", "gpu"}
    assert runtime >= {"export", "server"}
    assert _extra("all") == set().union(*(_extra(e) for e in runtime))
    assert "extras=(all)" in (ROOT / "install.sh").read_text()


def test_the_hint_table_names_an_extra_that_installs_the_module() -> None:
    extras = PROJECT["optional-dependencies"]
    for module, named in _Handler._EXTRAS.items():
        for extra in named:
            assert extra in extras, f"{module}: no extra [{extra}]"
            provides = {MODULE_OF.get(d, d) for d in _extra(extra)}
            assert module in provides or module in {"omegaconf", "numcodecs"} and \
                {"hydra", "zarr"} & provides, f"[{extra}] does not install {module}"
    # and every extra-only distribution of the runtime extras has a hint
    for extra in ("export", "server", "ome-zarr", "bench", "gpu"):
        for dist in _extra(extra):
            assert MODULE_OF.get(dist, dist) in _Handler._EXTRAS, f"no hint for {dist}"


# ------------------------------------------------------------------------------ the hint


def test_a_missing_extra_is_named_in_one_line_with_exit_status_2(images: Path) -> None:
    run = _sst_base_only("segment", "--support", "support.png", "--support-mask", "mask.png",
                         "--queries", "q1.png", "--out", "out", "--model-dir", "nowhere",
                         cwd=images)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("sst segment: error: ")
    assert "pip install 'sst-serve[export]'" in lines[0]


def test_sst_serve_names_the_server_extra(tmp_path: Path) -> None:
    run = _sst_base_only("serve", "--model-repository", str(tmp_path), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "pip install 'sst-serve[server]'" in run.stderr.strip().splitlines()[-1]


def test_sst_export_names_the_export_extra_for_torch(tmp_path: Path) -> None:
    run = _sst_base_only("export", "--random-weights", "--image-size", "256",
                         "--out", str(tmp_path / "repo"), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert re.search(r"needs (torch|sam2|hydra|onnx|onnxruntime),", run.stderr), run.stderr
    assert "pip install 'sst-serve[export]'" in run.stderr


def test_sam2_hint_says_how_install_sh_builds_it() -> None:
    hint = _Handler("sst.client.cli", "cmd_export").missing_extra_hint("sam2.build_sam")
    assert hint is not None and "--no-build-isolation sam2==1.1.0" in hint


def test_a_module_no_extra_provides_is_not_hidden() -> None:
    handler = _Handler("sst.client.no_such_module_here", "cmd")
    with pytest.raises(ModuleNotFoundError):
        handler(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the client


def test_client_library_imports_from_the_base_install() -> None:
    run = subprocess.run([sys.executable, "-c", _base_only("""
        import sst.client
        from sst.client import AsyncClient, Client
        print("ok")
    """)], text=True, capture_output=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_sst_watch_with_server_needs_no_extra(images: Path) -> None:
    port = _closed_port()
    (images / "incoming").mkdir()
    run = _sst_base_only("watch", "incoming", "--server", f"127.0.0.1:{port}",
                         "--support", "support.png", "--support-mask", "mask.png",
                         "--out", "out", "--once", cwd=images)
    assert "base install leaves out" not in run.stderr, run.stderr
    assert "No module named" not in run.stderr, run.stderr
    assert f"127.0.0.1:{port}" in run.stderr, run.stderr


def test_sst_segment_with_server_needs_no_extra(images: Path) -> None:
    """The embedded engine's libraries (onnxruntime, onnx) are imported only when a
    backend runs, so the server path of `sst segment` needs none of them."""
    port = _closed_port()
    run = _sst_base_only("segment", "--server", f"127.0.0.1:{port}", "--support",
                         "support.png", "--support-mask", "mask.png", "--queries", "q1.png",
                         "--out", "out", cwd=images)
    assert "base install leaves out" not in run.stderr, run.stderr
    assert "No module named" not in run.stderr, run.stderr
    # it got as far as the connection: the refusal names the address it tried
    assert run.returncode != 0 and f"127.0.0.1:{port}" in run.stderr, run.stderr


def test_rig_hook_imports_from_the_base_install() -> None:
    """The rig hook imports sst.client.segment_cli: it too needs no extra."""
    run = subprocess.run([sys.executable, "-c", _base_only("""
        import sst.client.rig
        print("ok")
    """)], text=True, capture_output=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_benchmark_results_default_under_the_current_directory() -> None:
    """An installed package's folder is no place for results (site-packages)."""
    from sst.benchmarks.scale_out import RESULTS

    assert not RESULTS.is_absolute() and RESULTS.parts[0] == "benchmarks"
