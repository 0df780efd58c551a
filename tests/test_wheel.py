"""The built wheel, installed into a fresh venv with no source tree beside it.

Base install: the client library and the CLI's client side work (a session and a stateless
request against a stand-in server on loopback), torch and onnxruntime are not installed,
the package data (demo specimens, the Triton model templates) and the ``sst`` entry point
are there, and no command writes into the installed package. With ``[all]``: ``sst demo
--random-weights`` runs from the installed package alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakes import image, mask, png
from .standin import StandIn, serving

pytestmark = [pytest.mark.heavy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
#: What the source tree ships as package data, relative to the installed ``sst`` folder.
DEMO = ROOT / "client" / "demo_specimens"
TEMPLATES = ROOT / "model_repository"


def _run(cmd: list[str], cwd: Path, timeout: float = 600, **env: str):
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ.update(PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=environ)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` but bytecode caches: size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                 cwd=out, timeout=900)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (whl,) = out.glob("sst_serve-*.whl")
    return whl


def _venv(where: Path, *installs: list[str], **env: str) -> tuple[Path, Path]:
    """A fresh venv and ``pip install`` of each of ``installs`` in turn; ``(bin, the
    installed sst folder)``."""
    made = _run([sys.executable, "-m", "venv", str(where)], cwd=where.parent)
    assert made.returncode == 0, made.stderr
    bin_ = where / "bin"
    for install in installs:
        done = _run([str(bin_ / "python"), "-m", "pip", "install", "--quiet", *install],
                    cwd=where.parent, timeout=1800, **env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    found = _run([str(bin_ / "python"), "-c",
                  "import sst.client, pathlib; print(pathlib.Path(sst.client.__file__)"
                  ".parent.parent)"], cwd=where.parent)
    assert found.returncode == 0, found.stderr
    return bin_, Path(found.stdout.strip())


@pytest.fixture(scope="module")
def base(wheel, tmp_path_factory) -> Iterator[tuple[Path, Path, Path]]:
    """``(bin, installed sst folder, an empty working folder)`` of a base install."""
    root = tmp_path_factory.mktemp("base")
    bin_, package = _venv(root / "venv", [str(wheel)])
    work = root / "work"
    work.mkdir()
    site = package.parent
    print(f"\nbase install: {_du(root / 'venv') / 1e6:.0f} MB in the venv, "
          f"{_du(site) / 1e6:.0f} MB in site-packages")
    yield bin_, package, work


def test_the_base_install_has_no_model_library(base) -> None:
    bin_, _, work = base
    listed = _run([str(bin_ / "python"), "-m", "pip", "list", "--format", "freeze"], cwd=work)
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    print("base install packages:", " ".join(sorted(names)))
    for heavy in ("torch", "onnxruntime", "onnx", "sam2", "nvidia-pytriton", "hydra-core",
                  "matplotlib", "zarr"):
        assert heavy not in names, f"{heavy} is installed by the base install"
    assert {"sst-serve", "numpy", "tritonclient", "grpcio"} <= names


def test_the_package_data_and_entry_point_are_installed(base) -> None:
    bin_, package, work = base
    assert (bin_ / "sst").is_file()
    demo = package / "client" / "demo_specimens"
    wanted = {p.relative_to(DEMO) for p in DEMO.rglob("*")
              if p.is_file() and (p.suffix in (".png", ".md") or p.name == "LICENSE")}
    assert wanted and {p.relative_to(demo) for p in demo.rglob("*") if p.is_file()} >= wanted
    templates = {p.relative_to(TEMPLATES) for p in TEMPLATES.rglob("*")
                 if p.suffix in (".py", ".pbtxt") and "__pycache__" not in p.parts}
    have = {p.relative_to(package / "model_repository")
            for p in (package / "model_repository").rglob("*") if p.is_file()}
    assert Path("sst_tracker/1/model.py") in templates
    assert templates <= have, templates - have
    for command in (["--help"], ["segment", "--help"], ["watch", "--help"],
                    ["serve", "--help"]):
        run = _run([str(bin_ / "sst"), *command], cwd=work)
        assert run.returncode == 0 and "usage: sst" in run.stdout, run.stderr
    version = _run([str(bin_ / "python"), "-c",
                    "import importlib.metadata as m; print(m.version('sst-serve'))"], cwd=work)
    assert version.stdout.strip() == "0.1.0"


def test_the_client_answers_from_the_base_install_and_writes_nothing_into_it(base) -> None:
    bin_, package, work = base
    before = _snapshot(package.parent)
    script = work / "client_call.py"
    script.write_text(textwrap.dedent("""
        import sys, importlib.util
        from sst.client import Client
        assert importlib.util.find_spec("torch") is None
        assert importlib.util.find_spec("onnxruntime") is None
        support, mask, query = (open(p, "rb").read() for p in sys.argv[2:5])
        with Client(sys.argv[1]) as client:
            with client.open_session([support], [mask]) as session:
                one = session.segment(query)
            many = client.segment([support], [mask], [query, query])
        print(one.mask.shape, one.labels, len(many))
    """))
    for name, array in (("s.png", image(1)), ("m.png", mask()), ("q.png", image(2))):
        (work / name).write_bytes(png(array))
    handler = StandIn()
    with serving(handler) as address:
        run = _run([str(bin_ / "python"), str(script), address, "s.png", "m.png", "q.png"],
                   cwd=work, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("(", 1)[1].startswith("24, 32) [1] 2"), run.stdout
    assert any(seen.start for seen in handler.calls)
    # a command that needs an extra says which, in one line
    needs = _run([str(bin_ / "sst"), "export", "--random-weights", "--out", "x"], cwd=work)
    assert needs.returncode == 2 and "Traceback" not in needs.stderr, needs.stderr
    assert "pip install 'sst-serve[export]'" in needs.stderr
    assert _snapshot(package.parent) == before, "something wrote into site-packages"


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="no C compiler for the packages built from source")
def test_sst_demo_runs_from_the_all_install(wheel, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("all")
    # as install.sh does: torch's CPU build, then sam2 built against it, then the wheel
    bin_, package = _venv(root / "venv", ["torch==2.13.0", "setuptools", "wheel"],
                          ["--no-deps", "--no-build-isolation", "sam2==1.1.0"],
                          [f"{wheel}[all]"], SAM2_BUILD_CUDA="0")
    work = root / "work"
    work.mkdir()
    before = _snapshot(package.parent)
    demo = _run([str(bin_ / "sst"), "demo", "--random-weights", "--out", "sst-demo"],
                cwd=work, timeout=1500, SST_CACHE=str(root / "cache"), SST_ENGINE="ort",
                SST_CHECKPOINT_DIR=str(root / "checkpoints"), OMP_NUM_THREADS="2")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert (work / "sst-demo" / "results.json").is_file()
    assert _snapshot(package.parent) == before, "the demo wrote into site-packages"
