"""Backends a model repository needs against those a tritonserver has."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from sst.export.specs import COMPONENTS, Geometry, component_specs
from sst.model_repository.configs import ORCHESTRATORS, component_config, orchestrator_config
from sst.server_config.backends_check import (
    available_backends,
    check_backends,
    model_backends,
    require_backends,
)
from sst.server_config.launcher import LauncherError, TritonInstall, find_tritonserver

GEOM = Geometry(256)
META = json.dumps({"geometry": asdict(GEOM)})


def _repo(root: Path, profile: str, plans: tuple[str, ...] = ()) -> Path:
    """Configs as ``sst export`` writes them (no weights: only configs are read)."""
    specs = component_specs(GEOM)
    for name in COMPONENTS:
        (root / name / "1").mkdir(parents=True)
        text = component_config(specs[name], profile, plan=name in plans, model_meta=META)
        (root / name / "config.pbtxt").write_text(text)
    for name in ORCHESTRATORS:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(orchestrator_config(name))
    # files at the root are not models; the meta records the profile the configs are for
    (root / "sst_model.json").write_text(json.dumps({**json.loads(META),
                                                     "serving_profile": profile}))
    return root


def _backends(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / f"libtriton_{name}.so").write_bytes(b"")
    return root


def test_needs_come_from_configs(tmp_path):
    repo = _repo(tmp_path / "repo", "gpu-native", plans=("mask_decoder",))
    assert model_backends(repo) == {
        "image_encoder": "onnxruntime", "memory_attention": "onnxruntime",
        "memory_encoder": "onnxruntime", "mask_decoder": "tensorrt",
        "sst_segment": "python", "sst_tracker": "python"}
    cpu = _repo(tmp_path / "cpu", "cpu")
    assert set(model_backends(cpu).values()) == {"python"}


def test_model_files_and_odd_configs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "by_file" / "1").mkdir(parents=True)
    (repo / "by_file" / "1" / "model.plan").write_bytes(b"")
    (repo / "ens").mkdir()
    (repo / "ens" / "config.pbtxt").write_text('name: "ens"\nplatform: "ensemble"\n')
    assert model_backends(repo) == {"by_file": "tensorrt"}  # an ensemble needs no backend
    (repo / "by_file" / "1" / "model.onnx").write_bytes(b"")
    with pytest.raises(LauncherError, match="by_file: cannot tell which backend"):
        model_backends(repo)
    (repo / "by_file" / "config.pbtxt").write_text('name: "by_file"\nplatfrom: "x"\n')
    with pytest.raises(LauncherError, match=r"by_file/config.pbtxt: not a readable Triton"):
        model_backends(repo)
    (repo / "by_file" / "config.pbtxt").write_text('platform: "caffe2_netdef"\n')
    with pytest.raises(LauncherError, match="unknown platform 'caffe2_netdef'"):
        model_backends(repo)
    with pytest.raises(LauncherError, match="is not a directory"):
        model_backends(tmp_path / "missing")


def test_fake_full_install_has_everything(tmp_path):
    backends = _backends(tmp_path / "backends", "python", "onnxruntime", "tensorrt")
    (backends / "half_installed").mkdir()  # no library: not a backend
    (backends / "pybased").mkdir()
    (backends / "pybased" / "model.py").write_text("")
    assert available_backends(backends) == {"python", "onnxruntime", "tensorrt", "pybased"}
    repo = _repo(tmp_path / "repo", "gpu-native", plans=("image_encoder",))
    report = require_backends(backends, repo)
    assert report.missing == {} and set(report.needs.values()) == {
        "python", "onnxruntime", "tensorrt"}


def test_missing_backends_are_named(tmp_path):
    backends = _backends(tmp_path / "backends", "python", "onnxruntime")
    install = TritonInstall(binary=tmp_path / "bin" / "tritonserver", backends_dir=backends)
    repo = _repo(tmp_path / "repo", "gpu-native", plans=("mask_decoder", "memory_encoder"))
    report = check_backends(install, repo)
    assert report.missing == {"tensorrt": ["mask_decoder", "memory_encoder"]}
    with pytest.raises(LauncherError) as err:
        require_backends(install, repo)
    msg = str(err.value)
    assert msg.startswith("the gpu-native profile's models need the tensorrt backend "
                          "(tensorrt: mask_decoder, memory_encoder)")
    assert f"the tritonserver at {install.binary} has only: onnxruntime, python" in msg
    assert "--tritonserver PATH" in msg


def test_the_wheels_tritonserver_serves_cpu_and_gpu_but_not_gpu_native(tmp_path):
    try:
        install = find_tritonserver()
    except LauncherError as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    if install.kind != "pytriton":
        pytest.skip(f"tritonserver at {install.binary} is not the nvidia-pytriton wheel's")
    assert available_backends(install.backends_dir) == {"python"}
    require_backends(install, _repo(tmp_path / "cpu", "cpu"))
    require_backends(install, _repo(tmp_path / "gpu0", "gpu"))  # the engine on CUDA only
    with pytest.raises(LauncherError) as err:
        require_backends(install, _repo(tmp_path / "gpu", "gpu-native",
                                        plans=("mask_decoder",)))
    msg = str(err.value)
    assert msg.startswith("the gpu-native profile's models need the onnxruntime and "
                          "tensorrt backends")
    assert f"the tritonserver at {install.binary} has only: python" in msg
