"""benchmarks/gpu/pack.sh: syntax and the wheels it gathers (its --dry-run needs no network)."""

from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "pack.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_script_parses():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_lists_the_wheels_a_bare_torch_machine_needs():
    res = run("--dry-run")
    assert res.returncode == 0, res.stderr
    reqs = res.stdout.split()
    assert reqs == ["sam2==1.1.0", f"hydra-core=={md.version('hydra-core')}",
                    f"omegaconf=={md.version('omegaconf')}", "antlr4-python3-runtime==4.9.3",
                    f"iopath=={md.version('iopath')}", f"portalocker=={md.version('portalocker')}",
                    f"tifffile=={md.version('tifffile')}", f"natsort=={md.version('natsort')}",
                    f"platformdirs=={md.version('platformdirs')}",
                    f"sst-serve=={md.version('sst-serve')}"]


def test_with_triton_and_extras():
    res = run("--dry-run", "--with-triton", "--also", "PyYAML")
    assert res.returncode == 0, res.stderr
    names = [r.split("==")[0] for r in res.stdout.split()]
    assert names[-4:] == ["tritonclient", "python-rapidjson", "grpcio", "protobuf"]
    assert "PyYAML" in names and names.index("PyYAML") < names.index("sst-serve")
    server = run("--dry-run", "--with-tritonserver").stdout.split()
    assert [r.split("==")[0] for r in server][-1] == "nvidia-pytriton"


def test_bad_option_is_named():
    res = run("--wheels")
    assert res.returncode == 2 and "unknown option '--wheels'" in res.stderr


#: What the GPU machine's image lacks (it has torch, numpy, onnx, onnxruntime, pillow,
#: psutil, matplotlib, grpcio, protobuf, opencv, scipy, pyyaml, tqdm): the pack brings
#: sam2, hydra-core, omegaconf, iopath and platformdirs (where checkpoints and compiled
#: kernels are kept); nothing else may be needed on the harness's path.
ABSENT_ON_GPU_IMAGE = ("tritonclient", "rapidjson", "pycocotools", "pytriton", "natsort",
                       "nvidia_pytriton", "aiohttp", "gevent")

_BLOCK = """
import importlib.abc, sys
ABSENT = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not on the GPU machine")
sys.meta_path.insert(0, Absent())
import sst.benchmarks.gpu.harness, sst.tracker.torch_backend, sst.export.sst_reference
print("ok")
"""


def test_the_gpu_harness_imports_nothing_the_gpu_machine_lacks():
    """``python -m sst.benchmarks.gpu`` (and what its main imports) loads with Triton's
    client, rapidjson and pycocotools made unimportable."""
    res = subprocess.run([sys.executable, "-c", _BLOCK, ",".join(ABSENT_ON_GPU_IMAGE)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
