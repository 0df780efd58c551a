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
                    f"sst-serve=={md.version('sst-serve')}"]


def test_with_triton_and_extras():
    res = run("--dry-run", "--with-triton", "--also", "PyYAML")
    assert res.returncode == 0, res.stderr
    names = [r.split("==")[0] for r in res.stdout.split()]
    assert names[-4:] == ["nvidia-pytriton", "tritonclient", "grpcio", "protobuf"]
    assert "PyYAML" in names and names.index("PyYAML") < names.index("sst-serve")


def test_bad_option_is_named():
    res = run("--wheels")
    assert res.returncode == 2 and "unknown option '--wheels'" in res.stderr
