"""A stand-in for the GPU machine's image: the pack that ``benchmarks/gpu/pack.sh`` makes,
installed as a device run installs it, runs ``python -m sst.benchmarks.gpu`` in a fresh
environment that holds only the image's packages (with the CPU build of torch).

The environment is cached between runs under ``$SST_STANDIN_CACHE`` (default
``~/.cache/sst-serve/gpu-standin``), in a folder named after its package list and Python,
and built from nothing where it is absent (about a minute: torch comes from a local wheel,
the rest from PyPI or pip's cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "benchmarks" / "gpu" / "pack.sh"

#: The GPU machine's image, as far as this project's GPU run touches it (torch 2.11 cu130,
#: numpy 2.5 there; the CPU build of torch and numpy 2 here). No tritonclient,
#: python-rapidjson, hydra-core, iopath, sam2 or pycocotools.
IMAGE_PACKAGES = ("torch==2.13.0", "numpy>=2", "onnx", "onnxruntime", "pillow", "psutil",
                  "matplotlib", "grpcio", "protobuf", "opencv-python-headless", "scipy",
                  "pyyaml", "tqdm", "portalocker")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None,
                                 reason="pack.sh needs bash and git")]


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _usable(venv: Path) -> bool:
    """Built to the end (its marker written) and its torch and numpy 2 import."""
    if not (venv / "complete").is_file():
        return False
    res = subprocess.run([str(_python(venv)), "-c", "import torch, numpy; "
                          "assert int(numpy.__version__.split('.')[0]) >= 2"],
                         capture_output=True, timeout=300)
    return res.returncode == 0


@pytest.fixture(scope="module")
def image_venv() -> Path:
    """A venv holding only :data:`IMAGE_PACKAGES` (cached; built when absent)."""
    key = hashlib.sha256("\n".join([sys.version, *IMAGE_PACKAGES]).encode()).hexdigest()[:16]
    base = Path(os.environ.get("SST_STANDIN_CACHE",
                               Path.home() / ".cache" / "sst-serve" / "gpu-standin"))
    venv = base / key
    if _usable(venv):
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    res = subprocess.run([str(_python(venv)), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", *IMAGE_PACKAGES],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.fail(f"could not build the stand-in environment: {res.stderr[-3000:]}")
    (venv / "complete").write_text("\n".join(IMAGE_PACKAGES) + "\n")
    print(f"stand-in environment built in {time.perf_counter() - t0:.0f} s: {venv}")
    return venv


def _pack(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PACK), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


def _install(venv: Path, wheels: Path, site: Path) -> None:
    whls = sorted(str(w) for w in wheels.glob("*.whl"))
    assert whls, f"{wheels} holds no wheels"
    res = subprocess.run([str(_python(venv)), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", "--no-index", "--no-deps",
                          "--target", str(site), *whls],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def _env(site: Path, home: Path) -> dict[str, str]:
    """Only the pack's site folder on the path; nothing from this checkout or its venv."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(site),
            "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1", "MPLCONFIGDIR": str(home),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_the_pack_runs_the_gpu_harness_in_the_images_packages(image_venv, tmp_path):
    """pack.sh's wheels, installed with ``pip install --no-index --no-deps --target``, run
    ``python -m sst.benchmarks.gpu --device cpu --quick --out RESULTS`` from outside the
    checkout; the JSON lands under RESULTS with the whole command line."""
    wheels, site, results = tmp_path / "wheels", tmp_path / "site", tmp_path / "results"
    res = _pack(wheels)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _size(wheels) <= 64 << 20
    _install(image_venv, wheels, site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _env(site, tmp_path)
    gone = subprocess.run([str(_python(image_venv)), "-c", "import tritonclient"],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert gone.returncode != 0, "the stand-in must lack tritonclient, as the image does"
    t0 = time.perf_counter()
    run = subprocess.run([str(_python(image_venv)), "-m", "sst.benchmarks.gpu", "--device",
                          "cpu", "--quick", "--out", str(results)],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)
    print(f"quick harness run in the stand-in: {time.perf_counter() - t0:.0f} s")
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    files = sorted(p.name for p in results.iterdir())
    assert "gpu_cpu_256_quick.json" in files and "gpu_cpu_256_quick.png" in files, files
    doc = json.loads((results / "gpu_cpu_256_quick.json").read_text())
    assert doc["argv"] == ["--device", "cpu", "--quick", "--out", str(results)]
    assert doc["command"].endswith(f"-m sst.benchmarks.gpu --device cpu --quick --out {results}")
    assert doc["parity"]["passed"]
    assert doc["environment"]["numpy"].split(".")[0] == "2"
    assert all(r["frames_per_s"] > 0 for r in doc["throughput"]["engine"]["fp32"]["sequential"])
    assert list(cwd.iterdir()) == []  # nothing written where it ran
    assert not list(site.rglob("gpu_*.json"))  # nor inside the installed package


def test_with_triton_the_client_imports_in_the_images_packages(image_venv, tmp_path):
    """``pack.sh --with-triton``: tritonclient's gRPC client and rapidjson import there."""
    py = subprocess.run([str(_python(image_venv)), "-c",
                         "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                        capture_output=True, text=True, timeout=60).stdout.strip()
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    res = _pack(wheels, "--with-triton", "--python-version", py)
    assert res.returncode == 0, res.stderr[-3000:]
    names = {w.name.split("-")[0].lower() for w in wheels.glob("*.whl")}
    assert {"tritonclient", "python_rapidjson"} <= names, names
    assert _size(wheels) <= 64 << 20
    _install(image_venv, wheels, site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    check = subprocess.run([str(_python(image_venv)), "-c",
                            "import tritonclient.grpc, rapidjson, sst.client; print('ok')"],
                           capture_output=True, text=True, env=_env(site, tmp_path), cwd=cwd,
                           timeout=300)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr[-3000:]
