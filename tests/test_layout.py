"""The package's shape, checked from the source: imports sit at module top (only the heavy
or optional ones are deferred), modules import each other without cycles, and each layer
imports only the layers below it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Folder -> package, as pyproject.toml's ``package-dir``.
PACKAGES = {"export": "sst.export", "tracker": "sst.tracker", "client": "sst.client",
            "server_config": "sst.server_config", "model_repository": "sst.model_repository",
            "benchmarks": "sst.benchmarks"}
#: Imports that may be deferred into a function: torch and what builds on it (1.7 s of
#: start-up that the client, the server's ONNX Runtime engine and the CLI never need),
#: TensorRT (the ``gpu`` extra), Triton's stub module (exists only inside Triton) and
#: matplotlib (benchmark plots only; its backend is chosen before pyplot is imported);
#: zarr and ome_zarr (seconds of start-up, for the ome-zarr output only); ONNX Runtime and
#: onnx, which the client install (talking to servers only) does not have; transformers and
#: timm (the ``edgetam`` extra: EdgeTAM's reference and image encoder); safetensors (comes
#: with transformers; reads checkpoints in its layout).
DEFERRABLE = {"torch", "torchvision", "sam2", "hydra", "omegaconf", "tensorrt", "onnxruntime",
              "onnx",
              "triton_python_backend_utils", "matplotlib", "zarr", "ome_zarr",
              "transformers", "timm", "safetensors"}
#: Lower layers first; a module may import its own layer and the ones before it.
LAYERS = [
    {"sst.tracker.errors", "sst.tracker.defaults"},
    {"sst.export"},
    {"sst.tracker"},
    {"sst.tracker.io", "sst.tracker.serving"},
    {"sst.tracker.apps", "sst.model_repository"},
    {"sst.client", "sst.server_config"},
    {"sst.benchmarks"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if any(part.startswith(".") or part in ("__pycache__",) for part in rel.parts):
                continue
            if rel.parts[-1] == "model.py" and len(rel.parts) == 3:  # Triton's entry points
                continue
            parts = [package, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(tree: ast.AST, top_only: bool) -> Iterator[tuple[str, ast.AST]]:
    """``(module, node)`` for each import; ``top_only``: not inside a def or class."""
    def walk(node: ast.AST, nested: bool) -> Iterator[tuple[str, ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                         | ast.ClassDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child, nested
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    yield (full if full in MODULES else child.module), child, nested
            if not isinstance(child, ast.If) or not _is_type_checking(child):
                yield from walk(child, inner)

    for name, node, nested in walk(tree, False):
        if nested != top_only:
            yield name, node


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _trees() -> dict[str, ast.AST]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


TREES = _trees()


def _top_level_graph() -> dict[str, set[str]]:
    return {name: {dep for dep, _ in _imports(tree, top_only=True)}
            for name, tree in TREES.items()}


def _heavy_modules(graph: dict[str, set[str]]) -> set[str]:
    """sst modules that import a deferrable package at import time, directly or not."""
    heavy: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, deps in graph.items():
            if name in heavy:
                continue
            if any(d.split(".")[0] in DEFERRABLE or d in heavy for d in deps):
                heavy.add(name)
                changed = True
    return heavy


def test_imports_are_at_module_top_unless_heavy() -> None:
    heavy = _heavy_modules(_top_level_graph())
    bad = []
    for name, tree in TREES.items():
        for dep, node in _imports(tree, top_only=False):
            if dep.split(".")[0] in DEFERRABLE or dep in heavy:
                continue
            bad.append(f"{MODULES[name].relative_to(ROOT)}:{node.lineno} imports {dep}")
    assert not bad, "imports inside functions of light modules:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = {n: {d for d in deps if d in MODULES} for n, deps in _top_level_graph().items()}
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, members in enumerate(LAYERS):
        for prefix in members:
            if module == prefix or module.startswith(prefix + "."):
                if len(prefix) > best:
                    best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer"
    return rank


@pytest.mark.parametrize("deferred", [False, True], ids=["top", "deferred"])
def test_layers_import_only_downwards(deferred: bool) -> None:
    bad = []
    for name, tree in TREES.items():
        for dep, node in _imports(tree, top_only=not deferred):
            if dep in MODULES and _layer(dep) > _layer(name):
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{node.lineno} ({name}) imports "
                           f"{dep}, a layer above it")
    assert not bad, "\n".join(bad)


def test_files_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > 620}
    assert not big, f"modules over 620 lines: {big}"
